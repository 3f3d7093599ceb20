"""An emulated Coherent OBIS LX laser serving its serial protocol on a pseudo-terminal.

It answers the commands of the Coherent OBIS LX/LS Operator's Manual,
Appendix: Commands and queries, that :mod:`exoacq.drivers.obis` uses, in short
or long SCPI form, any case; give :attr:`ObisSimulator.port` to the real
driver. Error numbers and bits are the driver's tables, so both stay in step.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

from exoacq.drivers.obis import FAULT_BITS, STATUS_BITS
from exoacq.drivers.serial_sim import PtySimulator

# Short form of every mnemonic, keyed by short and long form (SCPI).
_SHORT: dict[str, str] = {
    form: short
    for short, *long in (
        ("SOUR", "SOURCE"), ("POW", "POWER"), ("LEV", "LEVEL"), ("IMM", "IMMEDIATE"),
        ("AMPL", "AMPLITUDE"), ("AM",), ("STAT", "STATE", "STATUS"), ("INT", "INTERNAL"),
        ("LIM", "LIMIT"), ("HIGH",), ("LOW",), ("TEMP", "TEMPERATURE"), ("BAS", "BASEPLATE"),
        ("SYST", "SYSTEM"), ("FAUL", "FAULT"), ("CDRH",), ("COMM", "COMMUNICATE"),
        ("HAND", "HANDSHAKE"), ("INF", "INFORMATION"), ("SNUM", "SNUMBER"),
        ("WAV", "WAVELENGTH"),
    )
    for form in (short, *long)
}
_BIT = {name: bit for table in (FAULT_BITS, STATUS_BITS) for bit, name in table.items()}
_LASER_READY_FAULT = _BIT["laser ready fault (failed to emit at the set power)"]


class _Err(Exception):
    def __init__(self, code: int):
        self.code = code


def _canonical(header: str) -> str | None:
    """``source:power:LEVel?`` -> ``SOUR:POW:LEV?``; None if a mnemonic is unknown."""
    query = "?" if header.endswith("?") else ""
    header = header.removesuffix("?")
    if header.startswith("*"):
        return header.upper() + query
    shorts = [_SHORT.get(token.upper()) for token in header.removeprefix(":").split(":")]
    return None if None in shorts else ":".join(shorts) + query  # type: ignore[arg-type]


def _on_off(argument: str) -> bool:
    if argument.upper() not in ("ON", "OFF"):
        raise _Err(220)
    return argument.upper() == "ON"


class ObisSimulator(PtySimulator):
    """An OBIS LX laser on a pty. ``with ObisSimulator() as sim: ObisLaser(sim.port)``.

    Measured power equals the set point while emitting (plus ``ripple`` x a
    deterministic sine, 0 by default) and 0 otherwise. The CDRH delay holds
    emission off for ``cdrh_delay_s`` after ``SOUR:AM:STAT ON``. An open
    interlock refuses emission with ERR-221 and sets the laser-ready fault bit.
    """

    name = "obis"

    def __init__(self, *, wavelength_nm: int = 488, max_power_w: float = 0.050,
                 serial_number: str = "SIM-0001", firmware: str = "V1.0.1",
                 base_temperature_c: float = 25.0, cdrh_delay_s: float = 5.0,
                 ripple: float = 0.0) -> None:
        self.wavelength_nm = wavelength_nm
        self.max_power_w = max_power_w
        self.serial_number = serial_number
        self.identity = (f"Coherent, Inc - OBIS {wavelength_nm}nm LX {max_power_w * 1000:g}mW"
                         f" - {firmware} - Dec 14 2010")
        self.base_temperature_c = base_temperature_c
        self.cdrh_delay_s = cdrh_delay_s
        self.ripple = ripple
        super().__init__()
        self._handshake = True
        self._cdrh = True
        self._mode = "CWP"
        self._emission = False
        self._emission_since = 0.0
        self._setpoint_w = 0.0
        self._fault = 0
        self._interlock_open = False
        self._reads = 0
        self._handlers: dict[str, Callable[[str], str | None]] = {
            "*IDN?": lambda _: self.identity,
            "SYST:INF:SNUM?": lambda _: self.serial_number,
            "SYST:INF:WAV?": lambda _: f"{self.wavelength_nm:.1f}",
            "SYST:COMM:HAND": lambda a: setattr(self, "_handshake", _on_off(a)),
            "SYST:COMM:HAND?": lambda _: "ON" if self._handshake else "OFF",
            "SYST:CDRH": lambda a: setattr(self, "_cdrh", _on_off(a)),
            "SYST:CDRH?": lambda _: "ON" if self._cdrh else "OFF",
            "SOUR:AM:INT": self._set_mode,
            "SOUR:AM:SOUR?": lambda _: self._mode,
            "SOUR:AM:STAT": self._set_emission,
            "SOUR:AM:STAT?": lambda _: "ON" if self._emission else "OFF",
            "SOUR:POW:LEV:IMM:AMPL": self._set_power,
            "SOUR:POW:LEV:IMM:AMPL?": lambda _: f"{self._setpoint_w:.5f}",
            "SOUR:POW:LEV?": self._measured_power,
            "SOUR:POW:LIM:HIGH?": lambda _: f"{self.max_power_w:.5f}",
            "SOUR:POW:LIM:LOW?": lambda _: "0.00000",
            "SOUR:TEMP:BAS?": lambda _: f"{self.base_temperature_c:.2f}C",
            "SYST:STAT?": lambda _: f"{self._status_word():08X}",
            "SYST:FAUL?": lambda _: f"{self._fault:08X}",
        }

    @property
    def emitted_power_mw(self) -> float:
        """Optical power leaving the laser now, in mW (0 when not emitting)."""
        with self._lock:
            return self._setpoint_w * 1000.0 if self._emitting() else 0.0

    @property
    def interlock_open(self) -> bool:
        return self._interlock_open

    @interlock_open.setter
    def interlock_open(self, is_open: bool) -> None:
        """Opening the interlock stops emission; closing it clears the fault."""
        with self._lock:
            self._interlock_open = bool(is_open)
            if is_open:
                self._emission = False
            else:
                self._fault &= ~_LASER_READY_FAULT

    # -- emulated laser --------------------------------------------------------
    def _emitting(self) -> bool:
        delay = self.cdrh_delay_s if self._cdrh else 0.0
        return (self._emission and not self._interlock_open
                and time.monotonic() - self._emission_since >= delay)

    def _status_word(self) -> int:
        word = _BIT["laser emission"] if self._emitting() else 0
        if self._emission and not self._emitting():
            word |= _BIT["CDRH delay"]
        if not self._emission:
            word |= _BIT["laser standby"]
        if self._fault:
            word |= _BIT["laser fault"]
        if self._interlock_open:
            word |= _BIT["interlock open"]
        elif not self._fault:
            word |= _BIT["laser ready"]
        return word

    def _set_mode(self, argument: str) -> None:
        if argument.upper() not in ("CWP", "CWC"):
            raise _Err(220)
        self._mode = argument.upper()

    def _set_emission(self, argument: str) -> None:
        on = _on_off(argument)
        if on and self._interlock_open:
            self._fault |= _LASER_READY_FAULT
            raise _Err(221)
        if on and not self._emission:
            self._emission_since = time.monotonic()
        self._emission = on

    def _set_power(self, argument: str) -> None:
        try:
            watts = float(argument)
        except ValueError:
            raise _Err(102) from None
        if not 0.0 <= watts <= self.max_power_w:
            raise _Err(220)
        self._setpoint_w = watts

    def _measured_power(self, _: str) -> str:
        self._reads += 1
        watts = self._setpoint_w if self._emitting() else 0.0
        return f"{watts * (1.0 + self.ripple * math.sin(self._reads)):.5f}"

    def reply(self, line: str) -> list[str]:
        """The lines the laser sends back for one received line."""
        header, _, argument = line.partition(" ")
        key = _canonical(header)
        handler = self._handlers.get(key) if key else None
        if handler is None:
            return ["ERR-100"]
        argument = argument.strip()
        if key.endswith("?") == bool(argument):  # type: ignore[union-attr]
            return ["ERR-102" if argument else "ERR-109"]
        try:
            data = handler(argument)
        except _Err as err:
            return [f"ERR-{err.code}"]
        return ([] if data is None else [data]) + (["OK"] if self._handshake else [])
