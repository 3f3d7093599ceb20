"""Cobolt 06-series laser (06-01 series: 06-MLD, 06-DPL) over a serial port.

The command set, the replies, the fault codes and the operating states are
those of the Cobolt 06-01 Series Owner's Manual (D0136), chapter
Communication commands: a command is a short lower-case word, an argument
follows after one space (ASCII 32), and the line ends with CR. The laser
answers every command with exactly one line (ending CR LF): ``OK``, the value
asked for, or an error text beginning ``Syntax error:``. Power is in watts on
the wire (``p``, ``p?``, ``pa?``) except the maximum (``gmlp?``, mW); this
class speaks milliwatts.

Autostart: with autostart enabled (``@cobas 1``, the factory setting on CDRH
lasers) the laser refuses ``l1`` ("Syntax error: not allowed in autostart
mode.") and starts only through its autostart sequence. A control program
drives the laser directly, so :meth:`CoboltLaser.connect` disables autostart
(``@cobas 0``) and selects constant-power mode (``cp``); it does not touch
emission.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

import serial
from pydantic import Field

from exoacq.devices import Setting
from exoacq.drivers.serial_port import SERIAL_ERRORS, close_quietly, open_port, reason
from exoacq.drivers.commands import Command, checked, watts
from exoacq.errors import DeviceError
from exoacq.registry import Driver, DriverOptions

TERMINATOR = "\r"  # the laser accepts CR, LF or CR LF; it ends its replies with CR LF


# Cobolt 06-01 Series Owner's Manual, Communication commands.
COMMANDS: dict[str, Command] = {
    "ready": Command(None, "?"),                          # replies OK: the laser is listening
    "emission": Command("l{}", "l?", values=("1", "0")),  # l1 needs autostart disabled; l? 0 off, 1 on
    "autostart": Command("@cobas {}", "@cobas?", values=("0", "1")),
    # Laser ON after interlock: runs the autostart sequence whatever @cobas says.
    "autostart_sequence": Command("@cob{}", None, values=("1", "0")),
    "direct_control": Command("@cobasdr {}", "@cobasdr?", values=("0", "1")),  # 5 V direct input (OEM)
    "key_switch": Command(None, "@cobasks?"),             # 0 off, 1 on
    "interlock": Command(None, "ilk?"),                   # 0 closed (OK), 1 open
    "operating_state": Command(None, "gom?"),             # OPERATING_STATES
    "run_mode": Command("{}", "gam?", values=("cp", "ci", "em")),  # RUN_MODES
    "fault": Command(None, "f?"),                         # FAULTS
    "clear_fault": Command("cf", None),
    "serial_number": Command(None, "sn?"),
    "model": Command(None, "glm?"),
    "firmware": Command(None, "gfv?"),
    "operating_hours": Command(None, "hrs?", unit="h"),
    "power_setpoint": Command("p {}", "p?", unit="W", limits="0..gmlp?"),
    "power": Command(None, "pa?", unit="W"),             # measured output power
    "max_power": Command(None, "gmlp?", unit="mW"),
    "current_setpoint": Command("slc {}", "glc?", unit="mA", limits="0..gmlc?"),  # constant current
    "current": Command(None, "i?", unit="mA"),           # measured drive current
    "max_current": Command(None, "gmlc?", unit="mA"),
    "modulation_power": Command("slmp {}", "glmp?", unit="mW", limits="0..gmlp?"),
}

# Manual, ``f?`` (get operating fault).
FAULTS: dict[int, str] = {
    0: "no errors", 1: "temperature error", 3: "interlock error", 4: "constant power time out",
}

# Manual, ``gom?`` (get operating mode: the state of the laser's start sequence).
OPERATING_STATES: dict[int, str] = {
    0: "off", 1: "waiting for key", 2: "continuous", 3: "on/off modulation",
    4: "modulation", 5: "fault", 6: "aborted",
}

# ``gam?``: the run mode selected by ``ci``, ``cp`` or ``em``.
RUN_MODES: dict[int, str] = {0: "constant current", 1: "constant power", 2: "modulation"}

# The replies (manual; error texts as the lasers send them).
OK = "OK"
ERROR_PREFIX = "Syntax error"
ILLEGAL_COMMAND = "Syntax error: illegal command"
OUT_OF_RANGE = "Syntax error: Value is out of range."
NOT_IN_AUTOSTART = "Syntax error: not allowed in autostart mode."


class CoboltError(DeviceError):
    """The laser answered ``Syntax error: ...``; ``reply`` is that line."""

    def __init__(self, message: str, reply: str):
        super().__init__(message)
        self.reply = reply


class CoboltLaser:
    """Cobolt 06-series laser; implements :class:`exoacq.devices.Laser`.

    ``port`` is a device path (``/dev/ttyUSB0``; the 06-01 USB port is a
    virtual COM port, 115200 baud 8N1) or a pyserial URL. Every exchange holds
    a lock, so one instance can be shared between threads. ``history`` keeps
    the last lines exchanged. :meth:`close` switches emission off (``l0``).
    """

    settings: dict[str, Setting] = {
        "power_mw": Setting(get="power_setpoint_mw", set="set_power_mw", unit="mW", minimum=0.0,
                            maximum="max_power_mw", description="output power set point (p)"),
    }

    def __init__(self, port: str, *, baudrate: int = 115200, timeout_s: float = 1.0,
                 power_mw: float | None = None) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self._initial_power_mw = power_mw
        self._serial: serial.SerialBase | None = None
        self._lock = threading.Lock()
        self._serial_number = ""
        self._max_power_mw: float | None = None
        self.history: deque[tuple[str, str]] = deque(maxlen=256)

    # -- connection ---------------------------------------------------------
    def connect(self) -> None:
        """Open the port, disable autostart (``@cobas 0``) so that ``l1``/``l0``
        control emission, select constant power (``cp``), read ``sn?`` and the
        maximum power (``gmlp?``), apply ``power_mw``. Emission is left as it is."""
        if self._serial is not None:
            return
        port = open_port(self.port, baudrate=self.baudrate, timeout_s=self.timeout_s, device="laser")
        self._serial = port
        try:
            self._set("autostart", "0")
            self._set("run_mode", "cp")
            self._serial_number = self._get("serial_number")
            max_mw = self._number("max_power")
            if not 0.0 < max_mw < math.inf:
                raise DeviceError(f"laser: implausible maximum power {max_mw:g} mW from "
                                  f"'gmlp?' on port {self.port}")
            self._max_power_mw = max_mw
            if self._initial_power_mw is not None:
                self.set_power_mw(self._initial_power_mw)
        except BaseException:
            self._max_power_mw = None
            self._release()
            raise

    def close(self) -> None:
        """Switch emission off (``l0``, best effort) and release the port. Idempotent.
        Autostart stays disabled and the set point stays as it was."""
        if self._serial is None:
            return
        try:
            self._set("emission", "0")
        except Exception:  # a dead or silent port must not stop the shutdown
            pass
        finally:
            self._release()

    # -- the Laser protocol ----------------------------------------------------
    def identify(self) -> str:
        """``glm?``, ``sn?``, ``gfv?``: e.g. ``Cobolt 0488-06-01-0100-100 s/n 17706 firmware 9.001``."""
        model, number, firmware = self._get("model"), self._get("serial_number"), self._get("firmware")
        return f"Cobolt {model} s/n {number} firmware {firmware}"

    @property
    def max_power_mw(self) -> float:
        """``gmlp?`` as read at connect, in mW."""
        if self._max_power_mw is None:
            raise DeviceError(f"laser: not connected to port {self.port} (call connect() first)")
        return self._max_power_mw

    def set_power_mw(self, power_mw: float) -> None:
        """``p <W>``, refused here unless 0 <= power_mw <= max_power_mw."""
        value = checked(power_mw, 0.0, self.max_power_mw, what="laser: power", unit="mW",
                        where=f"on port {self.port}")
        self._set("power_setpoint", watts(value))

    def power_setpoint_mw(self) -> float:
        """``p?``: the constant-power set point, in mW."""
        return round(self._number("power_setpoint") * 1000.0, 6)

    def power_mw(self) -> float:
        """``pa?``: the measured output power, in mW."""
        return round(self._number("power") * 1000.0, 6)

    def set_emission(self, on: bool) -> None:
        """``l1`` / ``l0``. After ``l1`` the state is read back (``l?``): a laser
        that stays off (interlock open, a fault, key switch off) raises
        DeviceError naming the faults (``f?``) and the interlock (``ilk?``)."""
        if not on:
            self._set("emission", "0")
            return
        self._set("emission", "1")
        if self.emission():
            return
        reasons: list[str] = []
        try:
            reasons += self.faults()
            if self.interlock_open() and "interlock error" not in reasons:
                reasons.append("interlock open")
        except DeviceError:
            reasons.append("fault state unreadable")
        detail = "; ".join(reasons) or "no fault reported; key switch off?"
        raise DeviceError(f"laser: emission stayed off after 'l1' on port {self.port} ({detail})")

    def emission(self) -> bool:
        """``l?``: True while the laser is on."""
        return self._flag("emission")

    def faults(self) -> list[str]:
        """``f?`` decoded: [] when the laser reports 0 (no errors)."""
        code = int(self._number("fault", integer=True))
        if code == 0:
            return []
        return [FAULTS.get(code, f"unknown fault code {code}")]

    def interlock_open(self) -> bool:
        """``ilk?``: True while the interlock is open."""
        return self._flag("interlock")

    def describe(self) -> dict[str, Any]:
        """Identity and present settings for run records."""
        return {
            "model": self._get("model"), "serial_number": self._serial_number,
            "firmware": self._get("firmware"), "port": self.port,
            "power_setpoint_mw": self.power_setpoint_mw(), "power_mw": self.power_mw(),
            "max_power_mw": self.max_power_mw, "emission": self.emission(),
            "operating_state": self.operating_state(), "drive_current_ma": self.drive_current_ma(),
            "operating_hours_h": self.operating_hours(),
        }

    # -- further commands of the manual ------------------------------------------
    def serial_number(self) -> str:
        """``sn?``."""
        return self._get("serial_number")

    def operating_hours(self) -> float:
        """``hrs?``: system operating hours."""
        return self._number("operating_hours")

    def clear_fault(self) -> None:
        """``cf``."""
        self._set("clear_fault")

    def operating_state(self) -> str:
        """``gom?`` decoded (off, waiting for key, continuous, ..., fault, aborted)."""
        code = int(self._number("operating_state", integer=True))
        if code not in OPERATING_STATES:
            raise DeviceError(f"laser: unknown operating state {code} from 'gom?' on port {self.port}")
        return OPERATING_STATES[code]

    def drive_current_ma(self) -> float:
        """``i?``: the measured diode drive current, in mA."""
        return self._number("current")

    def autostart(self) -> bool:
        """``@cobas?``: True when autostart is enabled (``l1`` is then refused)."""
        return self._flag("autostart")

    # -- raw access (service and tests) --------------------------------------
    def write(self, command: str) -> None:
        """Send a command answered by ``OK``; ``Syntax error: ...`` raises CoboltError."""
        reply = self._exchange(command)
        if reply != OK:
            raise DeviceError(f"laser: unexpected reply {reply!r} to {command!r} on port {self.port}")

    def ask(self, command: str) -> str:
        """Send a query and return its reply line."""
        return self._exchange(command)

    # -- exchange ------------------------------------------------------------
    def _set(self, name: str, argument: str = "") -> None:
        command = COMMANDS[name]
        assert command.set is not None, name
        if command.values and argument not in command.values:
            raise DeviceError(f"laser: {argument!r} is not one of {command.values} for "
                              f"{command.set.format('').strip()!r} on port {self.port}")
        self.write(command.set.format(argument))

    def _get(self, name: str) -> str:
        query = COMMANDS[name].get
        assert query is not None, name
        return self._exchange(query)

    def _number(self, name: str, *, integer: bool = False) -> float:
        """A query's reply as a finite number."""
        reply = self._get(name)
        try:
            value = float(int(reply)) if integer else float(reply)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DeviceError(f"laser: unreadable reply {reply!r} to {COMMANDS[name].get!r} "
                              f"on port {self.port}")
        return value

    def _flag(self, name: str) -> bool:
        reply = self._get(name)
        if reply not in ("0", "1"):
            raise DeviceError(f"laser: unreadable reply {reply!r} to {COMMANDS[name].get!r} "
                              f"on port {self.port} (expected 0 or 1)")
        return reply == "1"

    def _exchange(self, command: str) -> str:
        """Send one command and read its one reply line."""
        if not command.isascii() or "\r" in command or "\n" in command:
            raise DeviceError(f"laser: {command!r} is not a one-line ASCII command (port {self.port})")
        with self._lock:
            port = self._serial
            if port is None:
                raise DeviceError(f"laser: not connected to port {self.port} (call connect() first)")
            try:
                port.reset_input_buffer()
                port.write((command + TERMINATOR).encode("ascii"))
                self.history.append(("tx", command))
                raw = port.read_until(b"\n")
            except SERIAL_ERRORS as exc:
                raise DeviceError(f"laser: serial I/O failed on port {self.port} "
                                  f"({reason(exc)})") from None
            if not raw.endswith(b"\n"):
                raise DeviceError(f"laser: did not answer {command!r} within {self.timeout_s:g} s "
                                  f"on port {self.port}")
            reply = raw.decode("ascii", errors="replace").strip()
            self.history.append(("rx", reply))
        if reply.startswith(ERROR_PREFIX):
            raise CoboltError(f"laser: {command!r} refused on port {self.port}: {reply}", reply)
        return reply

    def _release(self) -> None:
        with self._lock:
            port, self._serial = self._serial, None
        close_quietly(port)


# -- registry declaration --------------------------------------------------------
class CoboltOptions(DriverOptions):
    port: str = "/dev/ttyUSB0"  # device path or pyserial URL
    timeout_s: float = Field(1.0, gt=0, le=30)
    power_mw: float | None = Field(None, ge=0, le=10000)  # applied at connect when given


def _open(options: CoboltOptions, address: str | None, context: dict[str, Any]) -> CoboltLaser:
    return CoboltLaser(address or options.port, timeout_s=options.timeout_s, power_mw=options.power_mw)


def _simulator(options: CoboltOptions) -> Any:
    from exoacq.drivers.cobolt_sim import CoboltSimulator  # the simulator imports this module's tables
    return CoboltSimulator()


DRIVER = Driver(name="cobolt", kind="laser", options=CoboltOptions, open=_open,
                simulator=_simulator, description="Cobolt 06-series laser (serial)")
