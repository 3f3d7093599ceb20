"""New Era NE-1000 family syringe pump (NE-1000, NE-300, NE-500, NE-1010...) over RS-232.

The commands, the reply format, the status and alarm characters and the error
replies are those of the New Era "NE-1000 Multi-Phaser" user manual
(Publication #1200-01), section "RS-232 Communications", Basic mode; the NE-500
and NE-4000 manuals give the same command set. Factory settings: 19200 baud,
8N1, network address 0, Basic mode.

A command is ``[<address>] <command> [<parameters>] CR``; the pump strips spaces
and control characters and converts to upper case. Every command is answered by
one packet ``STX <address:2 digits> <status> [<data>] ETX``. ``<status>`` is a
prompt (``I`` infusing, ``W`` withdrawing, ``S`` stopped, ``P`` paused, ``T``
timed pause phase, ``U`` waiting for a trigger, ``X`` purging) or an alarm
``A?R|S|T|E|O``. A refused command has ``?``, ``?NA``, ``?OOR``, ``?COM`` or
``?IGN`` as its data. Numbers have at most 4 digits and 3 decimals.

This class speaks in uL and uL/min. It chooses the wire units itself: rates in
``UM`` or ``UH`` (``MM``/``MH`` only above 9999 uL/min), whichever keeps more
of the value in 4 digits; target volumes in ``UL`` (``ML`` above 9999 uL).
"""
from __future__ import annotations

import math
import re
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import serial
from pydantic import Field

from exoacq.devices import Setting
from exoacq.drivers.serial_port import SERIAL_ERRORS, close_quietly, open_port, reason
from exoacq.errors import DeviceError
from exoacq.registry import Driver, DriverOptions

TERMINATOR = "\r"
STX, ETX = "\x02", "\x03"


@dataclass(frozen=True)
class Command:
    """One command of the manual's command set: ``syntax`` of its parameters as
    the manual writes them (empty: none; a bare mnemonic is the query)."""

    mnemonic: str
    syntax: str = ""
    unit: str = ""
    limits: str = ""


# NE-1000 user manual, RS-232 command set (Basic mode). "*" commands are
# system commands, accepted whatever the pump's network address.
COMMANDS: dict[str, Command] = {
    # Pumping program (the current phase)
    "diameter": Command("DIA", "[<float>]", "mm", "0.1..50; set only while stopped; sets the "
                        "volume units (UL at or below 14 mm, ML above) and clears DIS"),
    "phase": Command("PHN", "[<phase 1..41>]"),
    "function": Command("FUN", "[RAT | ...]"),
    "rate": Command("RAT", "[<float> [UM | MM | UH | MH]]", "uL/min, mL/min, uL/h, mL/h",
                    "plunger speed limits x syringe area; units not changeable while pumping"),
    "volume": Command("VOL", "[<float> | UL | ML]", "UL or ML", "0 (pump until stopped)..9999"),
    "direction": Command("DIR", "[INF | WDR | REV]"),
    # Operation
    "run": Command("RUN", "[<phase>]"),
    "purge": Command("PUR"),
    "stop": Command("STP", "", "", "pumping: pause (P); paused: stop (S)"),
    "dispensed": Command("DIS", "", "I<float>W<float><UL|ML>"),
    "clear_dispensed": Command("CLD", "INF | WDR"),
    # Configuration and I/O
    "safe_mode": Command("SAF", "[<time out 0..255>]", "s", "0 = Basic mode"),
    "alarm_mode": Command("AL", "[0 | 1]"),
    "power_failure": Command("PF", "[0 | 1]"),
    "keypad_lockout": Command("LOC", "[0 | 1]"),
    "key_beep": Command("BP", "[0 | 1]"),
    "trigger": Command("TRG", "[FT | FH | F2 | LE | LH | L2 | ST | T2 | SE]"),
    "ttl_direction": Command("DIN", "[0 | 1]"),
    "motor_output": Command("ROM", "[0 | 1]"),
    "ttl_input": Command("IN", "<pin 2 | 3 | 4 | 6>"),
    "ttl_output": Command("OUT", "5 <0 | 1>"),
    "buzzer": Command("BUZ", "[0 | 1 [<count 1..99>]]"),
    "version": Command("VER", "", "NE<model>V<n>.<n>"),
    # System commands
    "address": Command("*ADR", "[<address 0..99> [B <baud>]] [DUAL | RECP]"),
    "reset": Command("*RESET", "", "", "clears program memory; Basic mode; address 0"),
}

STATUS: dict[str, str] = {
    "I": "infusing", "W": "withdrawing", "S": "stopped", "P": "paused",
    "T": "timed pause phase", "U": "waiting for a trigger", "X": "purging",
}
MOVING = "IWX"  # the plunger moves
ALARMS: dict[str, str] = {
    "R": "pump was reset (power was interrupted)", "S": "pump motor stalled",
    "T": "safe mode communications time out", "E": "pumping program error",
    "O": "pumping program phase out of range",
}
ERRORS: dict[str, str] = {
    "?": "command not recognised", "?NA": "not applicable now", "?OOR": "out of range",
    "?COM": "invalid communications packet", "?IGN": "ignored (a new phase started)",
}
RATE_UNITS: dict[str, float] = {"UM": 1.0, "UH": 1.0 / 60.0, "MM": 1000.0, "MH": 1000.0 / 60.0}
VOLUME_UNITS: dict[str, float] = {"UL": 1.0, "ML": 1000.0}
BAUD_RATES = (19200, 9600, 2400, 1200, 300)

DIAMETER_MM = (0.1, 50.0)
#: Volumes count in uL at or below this inside diameter, in mL above it.
UL_DIAMETER_MM = 14.0
MAX_NUMBER = 9999.0  # 4 digits
ROUNDING = 5e-4  # relative error of a number rounded to 4 digits
# Specifications: 1506 mL/h with a B-D 60 mL syringe (26.59 mm), 0.73 uL/h with a
# B-D 1 mL syringe (4.699 mm): the plunger speed limits, in mm/min.
MAX_SPEED_MM_MIN = 1506e3 / 60.0 / (math.pi / 4.0 * 26.59 ** 2)
MIN_SPEED_MM_MIN = 0.73 / 60.0 / (math.pi / 4.0 * 4.699 ** 2)


def rate_limits_ul_min(diameter_mm: float) -> tuple[float, float]:
    """The pumping-rate range of a syringe of this inside diameter, in uL/min."""
    area_mm2 = math.pi / 4.0 * diameter_mm ** 2
    return area_mm2 * MIN_SPEED_MM_MIN, area_mm2 * MAX_SPEED_MM_MIN


def volume_units_for(diameter_mm: float) -> str:
    return "UL" if diameter_mm <= UL_DIAMETER_MM + 1e-9 else "ML"


def number(value: float) -> str:
    """A number as the pump prints it: 4 digits, at most 3 decimals (``4.699``,
    ``26.59``, ``783.9``, ``1506.``); ValueError above 9999."""
    for decimals in (3, 2, 1, 0):
        text = f"{value:.{decimals}f}"
        if sum(c.isdigit() for c in text) <= 4:
            return text if decimals else text + "."
    raise ValueError(f"{value!r} does not fit in 4 digits")


def argument(value: float) -> str:
    """A number as this driver sends it: :func:`number` without trailing zeros."""
    text = number(value)
    return text.rstrip("0").rstrip(".") if "." in text else text


def _parse_number(text: str) -> float:
    if not re.fullmatch(r"\d+\.?\d*|\.\d+", text):
        raise ValueError(text)
    return float(text)


def _best(value: float, units: dict[str, float], order: tuple[str, ...]) -> tuple[str, str] | None:
    """(argument, units) representing ``value`` (in the base unit) most exactly in 4 digits."""
    best: tuple[float, str, str] | None = None
    for unit in order:
        scaled = value / units[unit]
        if scaled > MAX_NUMBER + 0.5:
            continue
        try:
            text = argument(scaled)
        except ValueError:
            continue
        if float(text) == 0.0 and value > 0:
            continue
        error = abs(float(text) * units[unit] - value)
        if best is None or error < best[0] - 1e-9 * value:  # a tie keeps the earlier unit
            best = (error, text, unit)
    return None if best is None else (best[1], best[2])


class NE1000Error(DeviceError):
    """The pump refused a command; ``error`` is its reply (``?OOR``...)."""

    def __init__(self, message: str, error: str):
        super().__init__(message)
        self.error = error


class NE1000Alarm(DeviceError):
    """The pump answered with an alarm status (``A?S``...); ``alarm`` is its letter.
    The alarm is acknowledged by that reply; the command was not carried out."""

    def __init__(self, message: str, alarm: str):
        super().__init__(message)
        self.alarm = alarm


_REPLY = re.compile(r"\x02(\d\d)([IWSPTUX]|A\?[A-Z])(.*)\x03", re.DOTALL)
_RATE = re.compile(r"([\d.]+)(UM|MM|UH|MH)")
_VOLUME = re.compile(r"([\d.]+)(UL|ML)")
_DISPENSED = re.compile(r"I([\d.]+)W([\d.]+)(UL|ML)")


class NE1000Pump:
    """New Era NE-1000 family syringe pump; implements :class:`exoacq.devices.Pump`.

    ``port`` is a device path (``/dev/ttyUSB0``) or a pyserial URL
    (``socket://host:port`` for a serial-to-Ethernet adapter). Every command is
    prefixed with ``network_address`` (0-99) so that the right pump of a daisy
    chain answers. Every exchange holds a lock, so one instance can be shared
    between threads. ``history`` keeps the last lines exchanged (replies without
    STX/ETX).
    """

    settings: dict[str, Setting] = {
        "rate_ul_min": Setting("rate_ul_min", "set_rate_ul_min", "uL/min", "min_rate_ul_min", "max_rate_ul_min",
                               "pumping rate (RAT); the limits depend on the syringe diameter"),
    }

    def __init__(self, port: str, *, baudrate: int = 19200, network_address: int = 0,
                 timeout_s: float = 1.0, diameter_mm: float | None = None,
                 rate_ul_min: float | None = None) -> None:
        if not 0 <= network_address <= 99:
            raise DeviceError(f"pump: network address {network_address} is not 0..99")
        self.port = port
        self.baudrate = baudrate
        self.network_address = network_address
        self.timeout_s = timeout_s
        self._initial_diameter_mm = diameter_mm
        self._initial_rate_ul_min = rate_ul_min
        self._serial: serial.SerialBase | None = None
        self._lock = threading.Lock()
        self._version = ""
        self._diameter_mm: float | None = None
        self._rate_units: str | None = None
        self._status = "S"
        self.history: deque[tuple[str, str]] = deque(maxlen=256)

    # -- connection ---------------------------------------------------------
    def connect(self) -> None:
        """Open the port, read ``VER`` (acknowledging the power-up alarm ``A?R``)
        and ``DIA``, then apply ``diameter_mm`` and ``rate_ul_min`` when given.
        The pump is not started or stopped."""
        if self._serial is not None:
            return
        port = open_port(self.port, baudrate=self.baudrate, timeout_s=self.timeout_s, device="pump")
        self._serial = port
        try:
            try:
                self._version = self.firmware()
            except NE1000Alarm as alarm:
                if alarm.alarm != "R":
                    raise
                self._version = self.firmware()  # the reset alarm is acknowledged now
            if self._initial_diameter_mm is not None:
                self.set_diameter_mm(self._initial_diameter_mm)
            else:
                self.diameter_mm()
            if self._initial_rate_ul_min is not None:
                self.set_rate_ul_min(self._initial_rate_ul_min)
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        """Stop the pump (``STP`` until stopped, best effort) and release the port. Idempotent."""
        if self._serial is None:
            return
        try:
            self.stop()
        except Exception:  # a dead or silent port must not stop the shutdown
            pass
        finally:
            self._release()

    # -- syringe and program ---------------------------------------------------
    def set_diameter_mm(self, diameter_mm: float) -> None:
        """``DIA <mm>``: syringe inside diameter, 0.1..50 mm, only while stopped. The
        pump then counts volumes in uL (<= 14 mm) or mL and clears the dispensed volumes."""
        value = self._finite(diameter_mm)
        low, high = DIAMETER_MM
        if not low <= value <= high:
            raise DeviceError(f"pump: syringe diameter {self._shown(diameter_mm)} mm is out of "
                              f"range {low:g}..{high:g} mm on port {self.port}")
        self._command("DIA " + argument(value))
        self._diameter_mm = float(argument(value))

    def diameter_mm(self) -> float:
        """``DIA``: the syringe inside diameter in mm."""
        reply = self._query("DIA")
        try:
            self._diameter_mm = _parse_number(reply.rstrip("."))
        except ValueError:
            raise self._unreadable(reply, "DIA") from None
        return self._diameter_mm

    @property
    def min_rate_ul_min(self) -> float:
        """Lowest rate for the syringe diameter last set or read, uL/min."""
        return float(f"{rate_limits_ul_min(self._known_diameter())[0]:.4g}")

    @property
    def max_rate_ul_min(self) -> float:
        """Highest rate for the syringe diameter last set or read, uL/min."""
        return float(f"{rate_limits_ul_min(self._known_diameter())[1]:.4g}")

    def set_rate_ul_min(self, rate_ul_min: float) -> None:
        """``RAT <v> UM|UH``: pumping rate, validated against the syringe's limits.
        While pumping the pump keeps its rate units, so they are kept here too."""
        value = self._finite(rate_ul_min)
        low, high = rate_limits_ul_min(self._known_diameter())
        if not low * (1 - 1e-9) <= value <= high * (1 + 1e-9):
            raise DeviceError(f"pump: rate {self._shown(rate_ul_min)} uL/min is out of range "
                              f"{low:.4g}..{high:.4g} uL/min for a {self._diameter_mm:g} mm "
                              f"syringe on port {self.port}")
        order: tuple[str, ...] = ("UM", "UH")
        if self._status in MOVING and self._rate_units:
            order = (self._rate_units,)
        choice = _best(value, RATE_UNITS, order) or _best(value, RATE_UNITS, ("MM", "MH"))
        if choice is None or (self._status in MOVING and choice[1] not in order):
            raise DeviceError(f"pump: rate {value:g} uL/min cannot be set in {order[0]} while "
                              f"pumping on port {self.port} (stop the pump first)")
        text, units = choice
        if not low * (1 - ROUNDING) <= float(text) * RATE_UNITS[units] <= high * (1 + ROUNDING):
            raise DeviceError(f"pump: rate {value:g} uL/min would be sent as {text} {units}, out "
                              f"of range {low:.4g}..{high:.4g} uL/min on port {self.port}")
        self._command(f"RAT {text} {units}")
        self._rate_units = units

    def rate_ul_min(self) -> float:
        """``RAT``: the pumping rate (e.g. ``3.000UM``), in uL/min."""
        reply = self._query("RAT")
        match = _RATE.fullmatch(reply)
        if not match:
            raise self._unreadable(reply, "RAT")
        self._rate_units = match[2]
        return _tidy(float(match[1]) * RATE_UNITS[match[2]])

    def set_direction(self, infuse: bool) -> None:
        """``DIR INF|WDR``: infuse (push sample through the cell) or withdraw."""
        self._command("DIR INF" if infuse else "DIR WDR")

    def infusing(self) -> bool:
        """``DIR``: True when the direction is infuse."""
        reply = self._query("DIR")
        if reply not in ("INF", "WDR"):
            raise self._unreadable(reply, "DIR")
        return reply == "INF"

    def set_volume_ul(self, volume_ul: float | None) -> None:
        """``VOL UL|ML`` then ``VOL <v>``: stop by itself after this volume; None
        or 0 (``VOL 0``): pump until stopped."""
        if volume_ul is None or volume_ul == 0:
            self._command("VOL 0")
            return
        value = self._finite(volume_ul)
        limit = MAX_NUMBER * VOLUME_UNITS["ML"]
        choice = _best(value, VOLUME_UNITS, ("UL", "ML")) if 0 < value <= limit else None
        if choice is None:
            raise DeviceError(f"pump: volume {self._shown(volume_ul)} uL is out of range "
                              f"0..{limit:.0f} uL on port {self.port}")
        text, units = choice
        self._command(f"VOL {units}")
        self._command(f"VOL {text}")

    def volume_ul(self) -> float | None:
        """``VOL``: the target volume in uL; None when pumping until stopped."""
        reply = self._query("VOL")
        match = _VOLUME.fullmatch(reply)
        if not match:
            raise self._unreadable(reply, "VOL")
        volume = float(match[1]) * VOLUME_UNITS[match[2]]
        return _tidy(volume) if volume > 0 else None

    # -- operation ---------------------------------------------------------------
    def run(self) -> None:
        """``RUN``: start the pumping program, or resume it when paused."""
        self._command("RUN")

    def pause(self) -> None:
        """``STP`` once: a pumping pump pauses (status P); ``run()`` resumes it."""
        self._command("STP")

    def stop(self) -> None:
        """``STP``, and ``STP`` again if that only paused the pump: stopped (status S)."""
        if self._command("STP") == "P":
            self._command("STP")

    def status(self) -> str:
        """Status query (the address alone): ``stopped``, ``infusing``, ``paused``..."""
        return STATUS[self._exchange("", name="status query")[0]]

    def running(self) -> bool:
        """Status query: True while the plunger moves (infusing, withdrawing, purging)."""
        return self._exchange("", name="status query")[0] in MOVING

    def _dispensed(self) -> tuple[float, float]:
        reply = self._query("DIS")
        match = _DISPENSED.fullmatch(reply)
        if not match:
            raise self._unreadable(reply, "DIS")
        factor = VOLUME_UNITS[match[3]]
        return _tidy(float(match[1]) * factor), _tidy(float(match[2]) * factor)

    def dispensed_ul(self) -> float:
        """``DIS``: infused minus withdrawn since the counters were cleared, in uL."""
        infused, withdrawn = self._dispensed()
        return _tidy(infused - withdrawn)

    def infused_ul(self) -> float:
        """``DIS``: the volume infused since ``CLD INF``, in uL."""
        return self._dispensed()[0]

    def withdrawn_ul(self) -> float:
        """``DIS``: the volume withdrawn since ``CLD WDR``, in uL."""
        return self._dispensed()[1]

    def clear_volumes(self) -> None:
        """``CLD INF`` and ``CLD WDR``: zero both dispensed-volume counters."""
        self._command("CLD INF")
        self._command("CLD WDR")

    def firmware(self) -> str:
        """``VER``: model and firmware, e.g. ``NE1000V3.928``."""
        return self._query("VER")

    def describe(self) -> dict[str, Any]:
        """Identity and present settings for run records."""
        match = re.fullmatch(r"NE(\d+)V(.+)", self._version)
        infused, withdrawn = self._dispensed()
        return {
            "model": f"NE-{match[1]}" if match else self._version,
            "firmware": match[2] if match else "", "port": self.port,
            "network_address": self.network_address, "diameter_mm": self.diameter_mm(),
            "rate_ul_min": self.rate_ul_min(), "min_rate_ul_min": self.min_rate_ul_min,
            "max_rate_ul_min": self.max_rate_ul_min,
            "direction": "infuse" if self.infusing() else "withdraw",
            "volume_ul": self.volume_ul(), "infused_ul": infused, "withdrawn_ul": withdrawn,
            "status": self.status(),
        }

    # -- raw access (service and tests) --------------------------------------
    def ask(self, command: str) -> str:
        """Send one command (the network address is prepended unless it starts
        with ``*``) and return the data of the reply; refusals raise NE1000Error."""
        return self._exchange(command)[1]

    # -- exchange ------------------------------------------------------------
    def _command(self, command: str) -> str:
        """A set command: the reply must be status only. Returns the status."""
        status, data = self._exchange(command)
        if data:
            raise DeviceError(f"pump: unexpected reply data {data!r} to {command!r} "
                              f"on port {self.port}")
        return status

    def _query(self, command: str) -> str:
        status, data = self._exchange(command)
        if not data:
            raise DeviceError(f"pump: no data in the reply to {command!r} on port {self.port}")
        return data

    def _exchange(self, command: str, *, name: str | None = None) -> tuple[str, str]:
        """Send one command and read its reply packet: (status character, data)."""
        shown = repr(command) if name is None else name
        wire = command if command.startswith("*") else f"{self.network_address}{command}"
        with self._lock:
            port = self._serial
            if port is None:
                raise DeviceError(f"pump: not connected to port {self.port} (call connect() first)")
            try:
                port.reset_input_buffer()
                port.write((wire + TERMINATOR).encode("ascii"))
                self.history.append(("tx", wire))
                raw = port.read_until(ETX.encode())
            except SERIAL_ERRORS as exc:
                raise DeviceError(f"pump: serial I/O failed on port {self.port} "
                                  f"({reason(exc)})") from None
            text = raw.decode("latin-1")
            self.history.append(("rx", text.strip(STX + ETX)))
        if not raw:
            raise DeviceError(f"pump: did not answer {shown} within {self.timeout_s:g} s "
                              f"on port {self.port}")
        match = _REPLY.fullmatch(text)
        if not match:
            raise DeviceError(f"pump: unreadable reply {text!a} to {shown} on port {self.port}")
        address, status, data = match[1], match[2], match[3]
        if int(address) != self.network_address:
            raise DeviceError(f"pump: reply {text!a} to {shown} came from address {address}, "
                              f"not {self.network_address:02d}, on port {self.port}")
        if status.startswith("A?"):
            self._status = "S"
            letter = status[2]
            raise NE1000Alarm(f"pump: alarm {status} {ALARMS.get(letter, 'unknown alarm')} in "
                              f"reply to {shown} on port {self.port} (the command was not "
                              "carried out)", letter)
        self._status = status
        if data.startswith("?"):
            meaning = ERRORS.get(data, "unknown error")
            if data == "?NA":
                meaning += f" (pump {STATUS[status]})"
            raise NE1000Error(f"pump: {shown} refused on port {self.port}: {data} {meaning}", data)
        return status, data

    # -- helpers -------------------------------------------------------------------
    def _known_diameter(self) -> float:
        if self._diameter_mm is None:
            raise DeviceError(f"pump: not connected to port {self.port} (call connect() first)")
        return self._diameter_mm

    def _unreadable(self, reply: str, command: str) -> DeviceError:
        return DeviceError(f"pump: unreadable reply {reply!a} to {command!r} on port {self.port}")

    @staticmethod
    def _finite(value: Any) -> float:
        try:
            result = float(value)
        except (TypeError, ValueError):
            return math.nan
        return result if math.isfinite(result) and not isinstance(value, bool) else math.nan

    @staticmethod
    def _shown(value: Any) -> str:
        return f"{value:g}" if isinstance(value, int | float) else repr(value)

    def _release(self) -> None:
        with self._lock:
            port, self._serial = self._serial, None
        close_quietly(port)


def _tidy(value: float) -> float:
    """Drop binary noise from unit conversions of 4-digit numbers."""
    return float(f"{value:.6g}")


# -- registry declaration --------------------------------------------------------
class NE1000Options(DriverOptions):
    port: str = "/dev/ttyUSB0"  # device path or pyserial URL
    baudrate: Literal[19200, 9600, 2400, 1200, 300] = 19200
    network_address: int = Field(0, ge=0, le=99)  # the pump's address (Setup menu "Ad:nn")
    timeout_s: float = Field(1.0, gt=0, le=30)
    diameter_mm: float | None = Field(None, ge=0.1, le=50)  # applied at connect when given
    rate_ul_min: float | None = Field(None, gt=0)  # applied at connect when given


def _open(options: NE1000Options, address: str | None, context: dict[str, Any]) -> NE1000Pump:
    return NE1000Pump(address or options.port, baudrate=options.baudrate,
                      network_address=options.network_address, timeout_s=options.timeout_s,
                      diameter_mm=options.diameter_mm, rate_ul_min=options.rate_ul_min)


def _simulator(options: NE1000Options) -> Any:
    from exoacq.drivers.ne1000_sim import NE1000Simulator  # the simulator imports this module
    return NE1000Simulator(address=options.network_address)


DRIVER = Driver(name="ne1000", kind="pump", options=NE1000Options, open=_open,
                simulator=_simulator,
                description="New Era NE-1000 family syringe pump (RS-232, Basic mode)")
