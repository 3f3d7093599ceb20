"""Coherent OBIS LX/LS laser over a serial port (USB virtual COM port or RS-232).

The command set, the reply format, the error numbers and the fault bits are
those of the Coherent OBIS LX/LS Operator's Manual, Appendix: Commands and
queries. Commands end with CR LF; with handshaking on (``SYST:COMM:HAND ON``)
the laser answers every command with an optional data line and then ``OK``, or
with ``ERR-nnn`` instead of ``OK``. Power is in watts on the wire and in
milliwatts in this class.
"""
from __future__ import annotations

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

TERMINATOR = "\r\n"


# Coherent OBIS LX/LS Operator's Manual, Appendix: Commands and queries.
COMMANDS: dict[str, Command] = {
    "identity": Command(None, "*IDN?"),
    "serial_number": Command(None, "SYST:INF:SNUM?"),
    "handshake": Command("SYST:COMM:HAND {}", "SYST:COMM:HAND?", values=("ON", "OFF")),
    # CDRH ON delays emission by 5 s after SOUR:AM:STAT ON.
    "cdrh": Command("SYST:CDRH {}", "SYST:CDRH?", values=("ON", "OFF")),
    # Internal modulation: CWP constant power, CWC constant current.
    "operating_mode": Command("SOUR:AM:INT {}", "SOUR:AM:SOUR?", values=("CWP", "CWC")),
    "emission": Command("SOUR:AM:STAT {}", "SOUR:AM:STAT?", values=("ON", "OFF")),
    "power_setpoint": Command("SOUR:POW:LEV:IMM:AMPL {}", "SOUR:POW:LEV:IMM:AMPL?",
                              unit="W", limits="0..SOUR:POW:LIM:HIGH?"),
    "power": Command(None, "SOUR:POW:LEV?", unit="W"),
    "max_power": Command(None, "SOUR:POW:LIM:HIGH?", unit="W"),
    "base_temperature": Command(None, "SOUR:TEMP:BAS?", unit="C"),
    "status": Command(None, "SYST:STAT?", unit="hex word"),
    "fault": Command(None, "SYST:FAUL?", unit="hex word"),
}

# Manual, error codes (the same table in Coherent's Scientific Remote manual).
ERRORS: dict[int, str] = {
    0: "no error", 100: "unrecognized command/query", 102: "syntax error",
    109: "parameter missing", 200: "execution error", 203: "command protected",
    220: "invalid parameter", 221: "settings conflict", 241: "device unavailable",
    256: "file does not exist", 257: "file to open not named", 310: "system error",
    321: "out of memory", 350: "queue overflow", 400: "query unavailable",
    500: "Coherent Connection bus fault", 510: "I2C bus fault",
    520: "controller time out", 900: "Coherent Connection bus message timed out",
}

# Manual, SYST:FAUL? fault code bits.
FAULT_BITS: dict[int, str] = {
    0x000001: "base plate temperature out of range", 0x000002: "diode temperature out of range",
    0x000004: "internal temperature out of range",
    0x000008: "laser power supply fault (no power to the diode)", 0x000010: "I2C bus error",
    0x000020: "diode over current", 0x000040: "EEPROM checksum error",
    0x000080: "EEPROM restored to default settings", 0x000100: "bus message buffer overflow",
    0x000200: "warm-up time limit exceeded", 0x000400: "TE controller driver error",
    0x000800: "Coherent Connection bus error",
    0x001000: "diode temperature more than 5 C from set point",
    0x002000: "laser ready fault (failed to emit at the set power)",
    0x004000: "photodiode fault (negative readout)", 0x008000: "fatal fault",
    0x010000: "start-up fault", 0x020000: "watchdog timer reset",
    0x040000: "field calibration error", 0x100000: "output power above limit",
}

# Manual, SYST:STAT? status bits 0-12; the interlock bit is read from the
# status words real LX/LS lasers report with the interlock open (C8... -> CC...).
STATUS_BITS: dict[int, str] = {
    0x00000001: "laser fault", 0x00000002: "laser emission", 0x00000004: "laser ready",
    0x00000008: "laser standby", 0x00000010: "CDRH delay", 0x00000020: "laser hardware fault",
    0x00000040: "laser error queued", 0x00000080: "within factory power calibration",
    0x00000100: "laser warming up", 0x00000200: "laser noise over 30%",
    0x00000400: "external operating mode", 0x00000800: "field calibration in progress",
    0x00001000: "12 V laser power voltage", 0x04000000: "interlock open",
}
STATUS_FAULTS = 0x04000000  # status conditions faults() reports besides SYST:FAUL?


class ObisError(DeviceError):
    """The laser answered ``ERR-nnn``; ``err`` is the number."""

    def __init__(self, message: str, err: int):
        super().__init__(message)
        self.err = err


def _bits(word: int, names: dict[int, str]) -> list[str]:
    return [names.get(1 << i, f"unknown bit 0x{1 << i:08X}") for i in range(32) if word >> i & 1]


class ObisLaser:
    """Coherent OBIS LX/LS laser; implements :class:`exoacq.devices.Laser`.

    ``port`` is a device path (``/dev/ttyACM0``) or a pyserial URL
    (``socket://host:port``). Every exchange holds a lock, so one instance can
    be shared between threads. ``history`` keeps the last lines exchanged.
    """

    #: What an operator may change live: the output power set point.
    settings: dict[str, Setting] = {
        "power_mw": Setting(get="power_setpoint_mw", set="set_power_mw", unit="mW",
                            minimum=0.0, maximum="max_power_mw",
                            description="output power set point (SOUR:POW:LEV:IMM:AMPL)"),
    }

    def __init__(self, port: str, *, baudrate: int = 115200, timeout_s: float = 1.0,
                 power_mw: float | None = None) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self._initial_power_mw = power_mw
        self._serial: serial.SerialBase | None = None
        self._lock = threading.Lock()
        self._identity = self._serial_number = ""
        self._max_power_w: float | None = None
        self.history: deque[tuple[str, str]] = deque(maxlen=256)

    # -- connection ---------------------------------------------------------
    def connect(self) -> None:
        """Open the port, switch handshaking on and the CDRH delay off, select
        constant-power mode, read identity and maximum power, apply ``power_mw``."""
        if self._serial is not None:
            return
        port = open_port(self.port, baudrate=self.baudrate, timeout_s=self.timeout_s, device="laser")
        self._serial = port
        try:
            self._set("handshake", "ON")
            self._set("cdrh", "OFF")
            self._set("operating_mode", "CWP")
            self._identity = self._get("identity")
            self._serial_number = self._get("serial_number")
            self._max_power_w = self._number("max_power")
            if self._initial_power_mw is not None:
                self.set_power_mw(self._initial_power_mw)
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        """Switch emission off (best effort) and release the port. Idempotent."""
        if self._serial is None:
            return
        try:
            self._set("emission", "OFF")
        except Exception:  # a dead or silent port must not stop the shutdown
            pass
        finally:
            self._release()

    # -- one method per command ----------------------------------------------
    def identify(self) -> str:
        """``*IDN?``: e.g. ``Coherent, Inc - OBIS 488nm LX 50mW - V1.0.1 - Dec 14 2010``."""
        return self._get("identity")

    @property
    def max_power_mw(self) -> float:
        """``SOUR:POW:LIM:HIGH?`` as read at connect, in mW."""
        if self._max_power_w is None:
            raise DeviceError(f"laser: not connected to port {self.port} (call connect() first)")
        return round(self._max_power_w * 1000.0, 6)

    def set_power_mw(self, power_mw: float) -> None:
        """``SOUR:POW:LEV:IMM:AMPL <W>``, refused here unless 0 <= power_mw <= max."""
        value = checked(power_mw, 0.0, self.max_power_mw, what="laser: power", unit="mW",
                        where=f"on port {self.port}")
        self._set("power_setpoint", watts(value))

    def power_setpoint_mw(self) -> float:
        """``SOUR:POW:LEV:IMM:AMPL?``: the set point, in mW."""
        return round(self._number("power_setpoint") * 1000.0, 6)

    def power_mw(self) -> float:
        """``SOUR:POW:LEV?``: the measured output power, in mW."""
        return round(self._number("power") * 1000.0, 6)

    def set_emission(self, on: bool) -> None:
        """``SOUR:AM:STAT ON|OFF``; a refusal is reported with the active faults."""
        try:
            self._set("emission", "ON" if on else "OFF")
        except ObisError as exc:
            if not on:
                raise
            try:
                faults = "; ".join(self.faults()) or "none"
            except DeviceError:
                faults = "unknown"
            raise ObisError(f"{exc} (active faults: {faults})", exc.err) from None

    def emission(self) -> bool:
        """``SOUR:AM:STAT?``."""
        return self._get("emission") == "ON"

    def base_temperature_c(self) -> float:
        """``SOUR:TEMP:BAS?``: base plate temperature in C (LX/LS append ``C``)."""
        return self._number("base_temperature")

    def status(self) -> list[str]:
        """``SYST:STAT?`` decoded to the names of the bits set."""
        return _bits(int(self._number("status", hex_word=True)), STATUS_BITS)

    def faults(self) -> list[str]:
        """``SYST:FAUL?`` decoded, plus the fault conditions of ``SYST:STAT?``."""
        faults = _bits(int(self._number("fault", hex_word=True)), FAULT_BITS)
        status = int(self._number("status", hex_word=True))
        return faults + _bits(status & STATUS_FAULTS, STATUS_BITS)

    def interlock_open(self) -> bool:
        """The interlock bit of ``SYST:STAT?``."""
        return bool(int(self._number("status", hex_word=True)) & STATUS_FAULTS)

    def describe(self) -> dict[str, Any]:
        """Identity and present settings for run records."""
        parts = [p.strip() for p in self._identity.split(" - ")]  # maker - model - firmware - date
        return {
            "model": parts[1] if len(parts) > 1 else self._identity,
            "serial_number": self._serial_number, "firmware": parts[2] if len(parts) > 2 else "",
            "port": self.port, "power_setpoint_mw": self.power_setpoint_mw(),
            "power_mw": self.power_mw(), "max_power_mw": self.max_power_mw,
            "emission": self.emission(), "base_temperature_c": self.base_temperature_c(),
        }

    # -- raw access (service and tests) --------------------------------------
    def write(self, command: str) -> None:
        """Send a command that returns no data; ``ERR-nnn`` raises ObisError."""
        self._exchange(command, expect_data=False)

    def ask(self, command: str) -> str:
        """Send a query and return its data line."""
        return self._exchange(command, expect_data=True) or ""

    # -- exchange ------------------------------------------------------------
    def _set(self, name: str, argument: str) -> None:
        command = COMMANDS[name]
        assert command.set is not None, name
        if command.values and argument not in command.values:
            raise DeviceError(f"laser: {argument!r} is not one of {command.values} for "
                              f"{command.set.format('')} on port {self.port}")
        self._exchange(command.set.format(argument), expect_data=False)

    def _get(self, name: str) -> str:
        query = COMMANDS[name].get
        assert query is not None, name
        return self._exchange(query, expect_data=True) or ""

    def _number(self, name: str, *, hex_word: bool = False) -> float:
        """A query's reply as a number: decimal (unit suffix dropped) or a hex word."""
        reply = self._get(name)
        try:
            return int(reply, 16) if hex_word else float(reply.removesuffix(COMMANDS[name].unit))
        except ValueError:
            raise DeviceError(f"laser: unreadable reply {reply!r} to {COMMANDS[name].get} "
                              f"on port {self.port}") from None

    def _exchange(self, command: str, *, expect_data: bool) -> str | None:
        """Send one command and read its data line (if any) and ``OK``."""
        with self._lock:
            port = self._serial
            if port is None:
                raise DeviceError(f"laser: not connected to port {self.port} "
                                  "(call connect() first)")
            data: str | None = None
            try:
                port.reset_input_buffer()
                port.write((command + TERMINATOR).encode("ascii"))
                self.history.append(("tx", command))
                while (line := self._read_line(port, command)) != "OK":
                    if line.startswith("ERR"):
                        number = int(line[4:]) if line[4:].isdigit() else -1
                        text = ERRORS.get(number, "unknown error")
                        raise ObisError(f"laser: {command!r} refused on port {self.port}: "
                                        f"{line} {text}", number)
                    if data is not None:
                        raise DeviceError(f"laser: unexpected extra reply {line!r} to "
                                          f"{command!r} on port {self.port}")
                    data = line
            except SERIAL_ERRORS as exc:
                raise DeviceError(f"laser: serial I/O failed on port {self.port} "
                                  f"({reason(exc)})") from None
        if expect_data and data is None:
            raise DeviceError(f"laser: no data in the reply to {command!r} on port {self.port}")
        if not expect_data and data is not None:
            raise DeviceError(f"laser: unexpected reply {data!r} to {command!r} "
                              f"on port {self.port}")
        return data

    def _read_line(self, port: serial.SerialBase, command: str) -> str:
        raw = port.read_until(b"\n")
        if not raw.endswith(b"\n"):
            raise DeviceError(f"laser: did not answer {command!r} within {self.timeout_s:g} s "
                              f"on port {self.port}")
        line = raw.decode("ascii", errors="replace").strip()
        self.history.append(("rx", line))
        return line

    def _release(self) -> None:
        with self._lock:
            port, self._serial = self._serial, None
        close_quietly(port)


# -- registry declaration -------------------------------------------------------
class ObisOptions(DriverOptions):
    """Configuration keys of a Coherent OBIS laser."""

    port: str = "/dev/ttyUSB0"  # device path or pyserial URL
    timeout_s: float = Field(1.0, gt=0, le=30)
    power_mw: float | None = Field(None, gt=0, le=1000)  # applied at connect when given


def _open(options: ObisOptions, address: str | None, context: dict[str, Any]) -> ObisLaser:
    return ObisLaser(address or options.port, timeout_s=options.timeout_s,
                     power_mw=options.power_mw)


def _simulator(options: ObisOptions) -> Any:
    from exoacq.drivers.obis_sim import ObisSimulator  # the simulator imports this module

    return ObisSimulator()


DRIVER = Driver(name="obis", kind="laser", options=ObisOptions, open=_open,
                simulator=_simulator, description="Coherent OBIS LX/LS laser (serial)")
