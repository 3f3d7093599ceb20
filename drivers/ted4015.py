"""Thorlabs TED4015 TEC temperature controller over VISA (USBTMC, or any VISA resource).

The command set, the reply formats and the error messages are those of the
Thorlabs "Series 4000 (LDC40xx, TED4015, ITC40xx) SCPI Programmer's Reference
Manual". Program and response messages end with LF; numbers come back as
NR3 (``2.500000E+01``); an instrument that cannot execute a command queues a
SCPI error (``-222,"Data out of range"``) instead of answering, and
``SYST:ERR?`` reads the queue (``+0,"No error"`` when empty). So every set
command here is followed by ``SYST:ERR?`` and a queued error is raised as a
DeviceError naming the command. The TED4015 is a single-channel controller:
its TEC source and output are ``SOURce[1]`` and ``OUTPut[1]`` (suffix
omitted here). Temperatures are in degrees Celsius on the wire too: connect()
sends ``UNIT:TEMP C`` so a unit chosen on the front panel cannot turn
readings into kelvin or Fahrenheit.

The USB identity of the TED4015 is vendor 0x1313 (Thorlabs), product 0x8048
(Thorlabs' own TED4015 examples open ``USB0::0x1313::0x8048::<serial>::INSTR``).
With the pure-Python VISA backend (``@py``) a USB resource also needs PyUSB
and libusb on the host.
"""
from __future__ import annotations

import math
import os
import re
import threading
from collections import deque
from typing import Any

import pyvisa
from pydantic import Field

from exoacq.devices import Setting
from exoacq.drivers.commands import Command, checked
from exoacq.errors import DeviceError
from exoacq.registry import Driver, DriverOptions

DEVICE = "temperature controller"
TERMINATOR = "\n"
#: Thorlabs USB vendor id and the TED4015's product id.
USB_VENDOR_ID, USB_PRODUCT_ID = 0x1313, 0x8048
DEFAULT_RESOURCE = "USB0::0x1313::0x8048::M00000000::INSTR"
#: The error queue holds 10 entries (manual, chapter 4); read at most this many.
MAX_ERRORS = 16
#: SCPI's "not a number" (9.91E37) and anything beyond it is no reading.
_NOT_A_NUMBER = 9.9e37
_ERROR_REPLY = re.compile(r'([+-]?\d+)\s*,\s*"(.*)"')


# Series 4000 SCPI Programmer's Reference Manual, chapter 3 (commands by subsystem).
COMMANDS: dict[str, Command] = {
    # 3.1 IEEE-488.2: *IDN? -> THORLABS,TED4015,<serial>,<fw>/<front panel fw>/<TEC board fw>
    "identity": Command(None, "*IDN?"),
    "clear_status": Command("*CLS", None),   # also empties the error queue
    # 3.2 System: the error queue, FIFO, 10 entries.
    "error": Command(None, "SYST:ERR?"),
    "temperature_unit": Command("UNIT:TEMP {}", "UNIT:TEMP?", values=("C", "K", "F")),
    # [SOURce[1]]:TEMPerature[:SPOint]; the set point is kept within the set point
    # limits (SOUR:TEMP:LIM:LOW/HIGH), which SOUR:TEMP? MIN / MAX report.
    "setpoint": Command("SOUR:TEMP {}", "SOUR:TEMP?", unit="C",
                        limits="SOUR:TEMP? MIN..SOUR:TEMP? MAX"),
    "setpoint_min": Command(None, "SOUR:TEMP? MIN", unit="C"),
    "setpoint_max": Command(None, "SOUR:TEMP? MAX", unit="C"),
    # OUTPut[1][:STATe] ON|OFF; the query answers 1 or 0.
    "output": Command("OUTP {}", "OUTP?", values=("ON", "OFF")),
    # 3.3 Measurement: MEASure[:SCALar]:...
    "temperature": Command(None, "MEAS:TEMP?", unit="C"),
    "tec_current": Command(None, "MEAS:CURR?", unit="A"),   # positive cools, negative heats
    "tec_voltage": Command(None, "MEAS:VOLT?", unit="V"),
    # [SOURce[1]]:CURRent:LIMit[:AMPLitude]: TEC current limit.
    "current_limit": Command(None, "SOUR:CURR:LIM?", unit="A"),
}


class NoReply(DeviceError):
    """The controller did not answer within the timeout."""


class TedError(DeviceError):
    """The controller queued a SCPI error for a command; ``code`` is its number."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _reason(exc: BaseException) -> str:
    """The operating-system reason of an I/O error, else the first line of its message."""
    number = getattr(exc, "errno", None)
    if isinstance(number, int) and number > 0:
        return os.strerror(number)
    if isinstance(exc, pyvisa.errors.VisaIOError):
        return f"{exc.abbreviation}: {exc.description}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _celsius(value_c: float) -> str:
    """A temperature as the set command takes it: plain decimal, 1 mK resolution."""
    text = f"{value_c:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


class TED4015:
    """Thorlabs TED4015 TEC controller; implements :class:`exoacq.devices.TemperatureController`.

    ``resource`` is a VISA resource string (``USB0::0x1313::0x8048::M00...::INSTR``,
    or ``TCPIP0::host::port::SOCKET`` for the simulator). Every exchange holds a
    lock, so one instance can be shared between threads; ``history`` keeps the
    last lines exchanged.

    :meth:`close` leaves the TEC output as it is (on, at its set point, or
    off). The controller regulates on its own; a sample holder that jumped to
    ambient whenever the daemon restarted or was updated would spoil the
    sample and the measurement series it belongs to, and a TEC held at a set
    point inside the controller's own set point limits is not a hazard the way
    an emitting laser is. Switch it off explicitly with ``set_output(False)``.
    """

    settings: dict[str, Setting] = {
        # Aqueous samples freeze below 0 C; the controller's own limits
        # (SOUR:TEMP? MIN/MAX, read at connect) are checked as well.
        "setpoint_c": Setting(get="setpoint_c", set="set_setpoint_c", unit="C", minimum=0.0,
                              maximum="setpoint_max_c", description="sample temperature set point"),
    }

    def __init__(self, resource: str, *, timeout_s: float = 1.0, setpoint_c: float | None = None,
                 output_on_connect: bool = False, visa_library: str = "@py") -> None:
        self.resource = resource
        self.timeout_s = timeout_s
        self.visa_library = visa_library
        self._initial_setpoint_c = setpoint_c
        self._output_on_connect = output_on_connect
        self._manager: Any = None
        self._instrument: Any = None
        self._stale = False  # a reply may still be on its way after a timeout
        self._lock = threading.RLock()
        self._identity = ""
        self._limits_c: tuple[float, float] | None = None
        self.history: deque[tuple[str, str]] = deque(maxlen=256)

    # -- connection ---------------------------------------------------------
    def connect(self) -> None:
        """Open the VISA session, read ``*IDN?``, clear the status (``*CLS``), select
        Celsius (``UNIT:TEMP C``), read the set point limits (``SOUR:TEMP? MIN``/``MAX``),
        then apply ``setpoint_c`` and ``output_on_connect``. Nothing else changes:
        a running controller keeps regulating."""
        if self._instrument is not None:
            return
        try:
            manager = pyvisa.ResourceManager(self.visa_library)
        except Exception as exc:  # a missing or broken VISA library
            raise DeviceError(f"{DEVICE}: cannot load the VISA library {self.visa_library!r} "
                              f"({_reason(exc)})") from None
        milliseconds = max(1, round(self.timeout_s * 1000))
        try:
            instrument = manager.open_resource(
                self.resource, read_termination=TERMINATOR, write_termination=TERMINATOR,
                timeout=milliseconds, open_timeout=milliseconds)
        except Exception as exc:  # pyvisa and its backends raise many kinds
            _close_quietly(manager)
            raise DeviceError(f"{DEVICE}: cannot open VISA resource {self.resource} "
                              f"({_reason(exc)})") from None
        with self._lock:
            self._manager, self._instrument, self._stale = manager, instrument, False
        try:
            self._identity = self._get("identity")
            parts = self._identity.split(",")
            if len(parts) < 4 or not parts[1].strip().upper().startswith("TED4"):
                raise DeviceError(f"{DEVICE}: {self.resource} is not a Thorlabs TED4000 "
                                  f"controller (*IDN? answered {self._identity!r})")
            self._set("clear_status")
            self._set("temperature_unit", "C")
            low, high = self._number("setpoint_min"), self._number("setpoint_max")
            if low > high:
                raise DeviceError(f"{DEVICE}: set point limits {low:g}..{high:g} C read from "
                                  f"{self.resource} are inverted")
            self._limits_c = (low, high)
            if self._initial_setpoint_c is not None:
                self.set_setpoint_c(self._initial_setpoint_c)
            if self._output_on_connect:
                self.set_output(True)
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        """Release the VISA session, leaving the TEC output as it is (see the class
        docstring). Idempotent; never raises."""
        self._release()

    # -- one method per command ----------------------------------------------
    def identify(self) -> str:
        """``*IDN?``: e.g. ``THORLABS,TED4015,M00123456,1.4.0/2.0.3/1.6.0``."""
        return self._get("identity")

    @property
    def setpoint_min_c(self) -> float:
        """``SOUR:TEMP? MIN`` as read at connect, in C."""
        return self._limits()[0]

    @property
    def setpoint_max_c(self) -> float:
        """``SOUR:TEMP? MAX`` as read at connect, in C."""
        return self._limits()[1]

    def temperature_c(self) -> float:
        """``MEAS:TEMP?``: the measured sample temperature, in C."""
        return self._number("temperature")

    def set_setpoint_c(self, setpoint_c: float) -> None:
        """``SOUR:TEMP <C>``, refused here unless within ``SOUR:TEMP? MIN..MAX``."""
        low, high = self._limits()
        value = checked(setpoint_c, low, high, what=f"{DEVICE}: set point", unit="C", where=f"on {self.resource}")
        self._set("setpoint", _celsius(value))

    def setpoint_c(self) -> float:
        """``SOUR:TEMP?``: the set point, in C."""
        return self._number("setpoint")

    def set_output(self, on: bool) -> None:
        """``OUTP ON|OFF``: switch the TEC current (the regulation) on or off."""
        self._set("output", "ON" if on else "OFF")

    def output(self) -> bool:
        """``OUTP?``: True while the TEC output is on."""
        reply = self._get("output")
        state = {"1": True, "ON": True, "0": False, "OFF": False}.get(reply.strip().upper())
        if state is None:
            raise DeviceError(f"{DEVICE}: unreadable reply {reply!r} to 'OUTP?' on {self.resource}")
        return state

    def tec_current_a(self) -> float:
        """``MEAS:CURR?``: the TEC current in A (Thorlabs' sign: positive cools, negative heats)."""
        return self._number("tec_current")

    def tec_voltage_v(self) -> float:
        """``MEAS:VOLT?``: the TEC voltage in V."""
        return self._number("tec_voltage")

    def current_limit_a(self) -> float:
        """``SOUR:CURR:LIM?``: the TEC current limit in A."""
        return self._number("current_limit")

    def errors(self) -> list[str]:
        """Drain the error queue (``SYST:ERR?`` until ``+0,"No error"``); oldest first,
        e.g. ``['-113,"Undefined header"']``."""
        with self._lock:
            return [text for _, text in self._drain_errors()]

    def describe(self) -> dict[str, Any]:
        """Identity and present settings for run records."""
        parts = [part.strip() for part in self._identity.split(",")]  # maker, model, serial, fw
        return {
            "model": parts[1] if len(parts) > 1 else self._identity,
            "serial_number": parts[2] if len(parts) > 2 else "",
            "firmware": parts[3] if len(parts) > 3 else "",
            "resource": self.resource,
            "setpoint_c": self.setpoint_c(), "temperature_c": self.temperature_c(),
            "output": self.output(), "tec_current_a": self.tec_current_a(),
            "current_limit_a": self.current_limit_a(),
            "setpoint_min_c": self.setpoint_min_c, "setpoint_max_c": self.setpoint_max_c,
        }

    # -- raw access (service and tests) --------------------------------------
    def write(self, command: str) -> None:
        """Send a command, then ``SYST:ERR?``; a queued error raises TedError."""
        if "?" in command:  # its reply would be read as the error queue's
            raise DeviceError(f"{DEVICE}: {command!r} is a query; send it with ask()")
        with self._lock:
            self._send(command)
            self._check(command)

    def ask(self, query: str) -> str:
        """Send a query and return its reply. A query the controller refuses is
        not answered: after the timeout ``SYST:ERR?`` tells why, and TedError says so."""
        with self._lock:
            try:
                return self._query(query)
            except NoReply as no_reply:
                try:
                    self._check(query)  # TedError when the controller refused the query
                except TedError:
                    raise
                except DeviceError:  # it does not answer SYST:ERR? either
                    pass
                raise no_reply

    # -- exchange ------------------------------------------------------------
    def _limits(self) -> tuple[float, float]:
        if self._limits_c is None:
            raise DeviceError(f"{DEVICE}: not connected to {self.resource} (call connect() first)")
        return self._limits_c

    def _set(self, name: str, argument: str | None = None) -> None:
        command = COMMANDS[name]
        assert command.set is not None, name
        if command.values and argument not in command.values:
            raise DeviceError(f"{DEVICE}: {argument!r} is not one of {command.values} for "
                              f"{command.set.format('').strip()} on {self.resource}")
        self.write(command.set.format(argument) if argument is not None else command.set)

    def _get(self, name: str) -> str:
        query = COMMANDS[name].get
        assert query is not None, name
        return self._query(query)

    def _number(self, name: str) -> float:
        """A query's reply as a number (SCPI NR1/NR2/NR3)."""
        reply = self._get(name)
        query = COMMANDS[name].get
        try:
            value = float(reply)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DeviceError(f"{DEVICE}: unreadable reply {reply!r} to {query!r} on {self.resource}")
        if abs(value) >= _NOT_A_NUMBER:  # e.g. an open or missing temperature sensor
            raise DeviceError(f"{DEVICE}: no valid reading ({reply}) in the reply to {query!r} "
                              f"on {self.resource}")
        return value

    def _check(self, command: str) -> None:
        """Read the error queue after ``command``; raise TedError if it holds errors."""
        errors = self._drain_errors()
        if errors:
            text = "; ".join(message for _, message in errors)
            raise TedError(f"{DEVICE}: {command!r} refused by {self.resource}: {text}", errors[0][0])

    def _drain_errors(self) -> list[tuple[int, str]]:
        errors: list[tuple[int, str]] = []
        for _ in range(MAX_ERRORS):
            reply = self._get("error")
            match = _ERROR_REPLY.fullmatch(reply.strip())
            if match is None:
                raise DeviceError(f"{DEVICE}: unreadable reply {reply!r} to 'SYST:ERR?' "
                                  f"on {self.resource}")
            code = int(match.group(1))
            if code == 0:
                return errors
            errors.append((code, reply.strip()))
        raise DeviceError(f"{DEVICE}: the error queue of {self.resource} does not empty "
                          f"(last: {errors[-1][1]})")

    def _send(self, command: str) -> None:
        with self._lock:
            instrument = self._session()
            try:
                if self._stale:  # drop a late reply to an exchange that timed out
                    instrument.clear()
                    self._stale = False
                instrument.write(command)
            except Exception as exc:
                raise self._io_error(command, exc) from None
            self.history.append(("tx", command))

    def _query(self, query: str) -> str:
        with self._lock:
            self._send(query)
            try:
                reply = self._session().read()
            except Exception as exc:
                raise self._io_error(query, exc) from None
            self.history.append(("rx", reply))
            return reply.strip()

    def _session(self) -> Any:
        if self._instrument is None:
            raise DeviceError(f"{DEVICE}: not connected to {self.resource} (call connect() first)")
        return self._instrument

    def _io_error(self, command: str, exc: BaseException) -> DeviceError:
        if isinstance(exc, pyvisa.errors.VisaIOError):
            if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                self._stale = True
                return NoReply(f"{DEVICE}: did not answer {command!r} within "
                                   f"{self.timeout_s:g} s on {self.resource}")
        if isinstance(exc, UnicodeDecodeError):
            self._stale = True
            return DeviceError(f"{DEVICE}: garbled reply to {command!r} on {self.resource} "
                               "(not ASCII)")
        if isinstance(exc, pyvisa.errors.InvalidSession):
            return DeviceError(f"{DEVICE}: not connected to {self.resource} (session closed)")
        return DeviceError(f"{DEVICE}: VISA I/O failed on {self.resource} ({_reason(exc)})")

    def _release(self) -> None:
        with self._lock:
            instrument, self._instrument = self._instrument, None
            manager, self._manager = self._manager, None
            self._limits_c = None
        _close_quietly(instrument)
        _close_quietly(manager)


def _close_quietly(closable: Any) -> None:
    if closable is None:
        return
    try:
        closable.close()
    except Exception:  # already gone, or never opened
        pass


# -- registry declaration --------------------------------------------------------
class TED4015Options(DriverOptions):
    #: VISA resource string; the TED4015 is USB vendor 0x1313, product 0x8048.
    resource: str = DEFAULT_RESOURCE
    timeout_s: float = Field(1.0, gt=0, le=30)
    #: Applied at connect when given (checked against the controller's limits).
    setpoint_c: float | None = Field(None, ge=-45, le=145)
    #: Switch the TEC output on at connect (after applying setpoint_c).
    output_on_connect: bool = False


def _open(options: TED4015Options, address: str | None, context: dict[str, Any]) -> TED4015:
    return TED4015(address or options.resource, timeout_s=options.timeout_s,
                   setpoint_c=options.setpoint_c, output_on_connect=options.output_on_connect)


def _simulator(options: TED4015Options) -> Any:
    from exoacq.drivers.ted4015_sim import TED4015Simulator  # stdlib only; loaded when simulated
    return TED4015Simulator()


DRIVER = Driver(name="ted4015", kind="temperature-controller", options=TED4015Options, open=_open,
                simulator=_simulator,
                description="Thorlabs TED4015 TEC temperature controller (SCPI over VISA/USBTMC)")
