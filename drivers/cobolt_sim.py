"""An emulated Cobolt 06-MLD laser serving its serial protocol on a pseudo-terminal.

It answers the commands of the Cobolt 06-01 Series Owner's Manual (D0136),
Communication commands, not only those :mod:`exoacq.drivers.cobolt` sends:
identity (``sn?``, ``gsn?``, ``glm?``, ``gfv?``, ``ver?``), ``hrs?``,
emission (``l1``, ``l0``, ``l?``), autostart (``@cobas``, ``@cob1``,
``@cob0``, ``restart``, ``abort``), ``@cobasdr``, ``@cobasks?``, ``ilk?``,
``f?``/``cf``, ``gom?``, ``leds?``, run modes (``cp``, ``ci``, ``em`` and
``gam?``), power (``p``, ``@cobasp``, ``p?``, ``pa?``, ``gmlp?``), current
(``slc``, ``glc?``, ``i?``, ``gmlc?``), modulation (``slmp``/``glmp?``,
``sdmes``/``gdmes?``, ``sames``/``games?``, ``salis``/``galis?``,
``eoom``/``xoom``), ``rbpt?`` and ``?``. Commands end with CR, LF or CR LF,
any case; the argument follows after a space (``p 0.01``; ``p0.01`` is
accepted too). Every command gets exactly one reply line ending CR LF.

Behaviour, kept simple:

* Emission needs the interlock closed, no fault and the key switch on.
  Opening the interlock (``sim.interlock_open = True``) stops emission and
  latches fault 3 (interlock error); it stays until ``cf`` (or ``@cob1``)
  with the interlock closed. Setting ``sim.fault`` (e.g. 1, temperature
  error) stops emission the same way.
* Autostart disabled (``@cobas 0``): ``l1`` switches emission on at once
  (the laser is taken to be warm); with a fault, an open interlock or the key
  off it answers ``OK`` and stays off (``l?`` 0). Autostart enabled (the
  factory setting): ``l1`` is refused with "Syntax error: not allowed in
  autostart mode.".
* ``@cob1`` (or ``restart``) runs the autostart sequence whatever ``@cobas``
  says: with the key switch off it waits for the key, then it warms up for
  ``warmup_s`` and switches emission on. ``gom?`` reports 1 (the manual's
  codes have no separate warm-up state) until the sequence completes, then 2
  (continuous), 3 (on/off modulation) or 4 (modulation); 5 while a fault is
  latched, 6 after ``abort``, 0 when off.
* Measured power (``pa?``): the set point in constant power, the modulation
  power in modulation mode, ``slope_mw_per_ma`` x (current - threshold) in
  constant current; 0 when not emitting. ``ripple`` adds a deterministic
  relative sine (0 by default). ``i?`` follows the same diode line.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

from exoacq.drivers.cobolt import (FAULTS, ILLEGAL_COMMAND, NOT_IN_AUTOSTART, OK,
                                   OPERATING_STATES, OUT_OF_RANGE)
from exoacq.drivers.serial_sim import PtySimulator

_STATE = {name: code for code, name in OPERATING_STATES.items()}
_INTERLOCK_ERROR = next(code for code, name in FAULTS.items() if name == "interlock error")
_RUN_MODES = {"ci": 0, "cp": 1, "em": 2}


class _Reply(Exception):
    """An error reply (one of the ``Syntax error: ...`` texts)."""


def _flag(argument: str) -> bool:
    if argument not in ("0", "1"):
        raise _Reply(OUT_OF_RANGE if argument.lstrip("-").isdigit() else ILLEGAL_COMMAND)
    return argument == "1"


def _number(argument: str, low: float, high: float) -> float:
    try:
        value = float(argument)
    except ValueError:
        raise _Reply(ILLEGAL_COMMAND) from None
    if not math.isfinite(value):
        raise _Reply(ILLEGAL_COMMAND)
    if not low <= value <= high:
        raise _Reply(OUT_OF_RANGE)
    return value


class CoboltSimulator(PtySimulator):
    """A Cobolt 06-MLD on a pty. ``with CoboltSimulator() as sim: CoboltLaser(sim.port)``.

    Test hooks: :attr:`interlock_open`, :attr:`key_switch_on`, :attr:`fault`,
    :attr:`direct_input_high`, :attr:`emitted_power_mw`, ``warmup_s``,
    ``ripple`` (and the base class's ``silent`` and :meth:`unplug`).
    """

    name = "cobolt"

    def __init__(self, *, wavelength_nm: int = 488, max_power_mw: float = 100.0,
                 serial_number: str = "17706", firmware: str = "9.001",
                 operating_hours: float = 1234.56, warmup_s: float = 3.0,
                 threshold_ma: float = 35.0, slope_mw_per_ma: float = 0.8,
                 base_plate_temperature_c: float = 25.0, ripple: float = 0.0) -> None:
        self.wavelength_nm = wavelength_nm
        self.max_power_mw = max_power_mw
        self.serial_number = serial_number
        self.model = f"{wavelength_nm:04d}-06-01-{max_power_mw:04.0f}-100"
        self.firmware = firmware
        self.warmup_s = warmup_s
        self.threshold_ma = threshold_ma
        self.slope_mw_per_ma = slope_mw_per_ma
        self.max_current_ma = round(threshold_ma + 1.2 * max_power_mw / slope_mw_per_ma, 1)
        self.base_plate_temperature_c = base_plate_temperature_c
        self.ripple = ripple
        super().__init__()
        self._hours_base = operating_hours
        self._on_since: float | None = None      # emission start (monotonic), None when off
        self._autostart = True                   # factory setting of CDRH lasers
        self._direct_control = False
        self._sequence: str | None = None        # None, "key" (waiting for key) or "warmup"
        self._warm_at = 0.0
        self._aborted = False
        self._fault = 0
        self._interlock_open = False
        self._key_switch_on = True
        self._direct_input_high = True
        self._mode = "cp"
        self._on_off_modulation = False
        self._digital_modulation = False
        self._analog_modulation = False
        self._analog_low_impedance = False
        self._setpoint_w = 0.0
        self._current_ma = 0.0
        self._modulation_mw = 0.0
        self._reads = 0
        # name -> (takes an argument, handler)
        self._commands: dict[str, tuple[bool, Callable[[str], str]]] = {
            "?": (False, lambda _: OK),
            "sn?": (False, lambda _: self.serial_number),
            "gsn?": (False, lambda _: self.serial_number),
            "glm?": (False, lambda _: self.model),
            "gfv?": (False, lambda _: self.firmware),
            "ver?": (False, lambda _: self.firmware),
            "hrs?": (False, lambda _: f"{self._hours():.2f}"),
            "l?": (False, lambda _: "1" if self._emitting() else "0"),
            "l1": (False, self._l1),
            "l0": (False, lambda _: self._off()),
            "@cob1": (False, lambda _: self._start_sequence()),
            "restart": (False, lambda _: self._start_sequence()),
            "@cob0": (False, lambda _: self._off()),
            "abort": (False, self._abort),
            "@cobas": (True, self._set_autostart),
            "@cobas?": (False, lambda _: "1" if self._autostart else "0"),
            "@cobasdr": (True, self._set_direct_control),
            "@cobasdr?": (False, lambda _: "1" if self._direct_control else "0"),
            "@cobasks?": (False, lambda _: "1" if self._key_switch_on else "0"),
            "ilk?": (False, lambda _: "1" if self._interlock_open else "0"),
            "f?": (False, lambda _: str(self._fault)),
            "cf": (False, self._clear_fault),
            "gom?": (False, lambda _: str(self._state())),
            "leds?": (False, lambda _: str(self._leds())),
            "cp": (False, lambda _: self._set_mode("cp")),
            "ci": (False, lambda _: self._set_mode("ci")),
            "em": (False, lambda _: self._set_mode("em")),
            "gam?": (False, lambda _: str(_RUN_MODES[self._mode])),
            "eoom": (False, lambda _: self._set_attr("_on_off_modulation", True)),
            "xoom": (False, lambda _: self._set_attr("_on_off_modulation", False)),
            "p": (True, self._set_power),
            "@cobasp": (True, self._set_power),
            "p?": (False, lambda _: f"{self._setpoint_w:.4f}"),
            "pa?": (False, self._measured_power),
            "gmlp?": (False, lambda _: f"{self.max_power_mw:.6f}"),
            "slc": (True, self._set_current),
            "glc?": (False, lambda _: f"{self._current_ma:.1f}"),
            "i?": (False, lambda _: f"{self._drive_current_ma():.1f}"),
            "gmlc?": (False, lambda _: f"{self.max_current_ma:.1f}"),
            "slmp": (True, self._set_modulation_power),
            "glmp?": (False, lambda _: f"{self._modulation_mw:.1f}"),
            "sdmes": (True, lambda a: self._set_attr("_digital_modulation", _flag(a))),
            "gdmes?": (False, lambda _: "1" if self._digital_modulation else "0"),
            "sames": (True, lambda a: self._set_attr("_analog_modulation", _flag(a))),
            "games?": (False, lambda _: "1" if self._analog_modulation else "0"),
            "salis": (True, lambda a: self._set_attr("_analog_low_impedance", _flag(a))),
            "galis?": (False, lambda _: "1" if self._analog_low_impedance else "0"),
            "rbpt?": (False, lambda _: f"{self.base_plate_temperature_c:.1f}"),
        }
        self._with_argument = sorted((name for name, (takes, _) in self._commands.items() if takes),
                                     key=len, reverse=True)

    # -- test hooks ----------------------------------------------------------------
    @property
    def emitted_power_mw(self) -> float:
        """Optical power leaving the laser now, in mW (0 when not emitting)."""
        with self._lock:
            self._advance()
            return self._power_mw() if self._emitting() else 0.0

    @property
    def interlock_open(self) -> bool:
        return self._interlock_open

    @interlock_open.setter
    def interlock_open(self, is_open: bool) -> None:
        """Opening stops emission and latches fault 3; closing leaves the fault latched."""
        with self._lock:
            self._interlock_open = bool(is_open)
            if is_open:
                self._trip(_INTERLOCK_ERROR)

    @property
    def fault(self) -> int:
        return self._fault

    @fault.setter
    def fault(self, code: int) -> None:
        """Raise a fault (``f?`` code, e.g. 1 temperature error): emission stops."""
        with self._lock:
            if code:
                self._trip(int(code))
            else:
                self._fault = 0

    @property
    def key_switch_on(self) -> bool:
        return self._key_switch_on

    @key_switch_on.setter
    def key_switch_on(self, on: bool) -> None:
        """Off stops emission (a running autostart sequence then waits for the key);
        on continues a sequence waiting for the key."""
        with self._lock:
            self._advance()
            self._key_switch_on = bool(on)
            if not on:
                was_started = self._emitting() or self._sequence is not None
                self._stop_emission()
                self._sequence = "key" if was_started and self._autostart else None
            elif self._sequence == "key":
                self._sequence, self._warm_at = "warmup", time.monotonic() + self.warmup_s

    @property
    def direct_input_high(self) -> bool:
        return self._direct_input_high

    @direct_input_high.setter
    def direct_input_high(self, high: bool) -> None:
        """The 5 V direct input: with direct control on, emission follows it."""
        with self._lock:
            self._direct_input_high = bool(high)

    # -- emulated laser --------------------------------------------------------------
    def _advance(self) -> None:
        """Complete the warm-up once its time has come."""
        if self._sequence == "warmup" and time.monotonic() >= self._warm_at:
            self._sequence = None
            self._on_since = time.monotonic()

    def _emitting(self) -> bool:
        return (self._on_since is not None
                and (self._direct_input_high or not self._direct_control))

    def _can_emit(self) -> bool:
        return not self._fault and not self._interlock_open and self._key_switch_on

    def _stop_emission(self) -> None:
        if self._on_since is not None:
            self._hours_base += (time.monotonic() - self._on_since) / 3600.0
        self._on_since = None

    def _trip(self, code: int) -> None:
        self._stop_emission()
        self._sequence = None
        self._fault = code

    def _hours(self) -> float:
        running = time.monotonic() - self._on_since if self._on_since is not None else 0.0
        return self._hours_base + running / 3600.0

    def _state(self) -> int:
        if self._fault:
            return _STATE["fault"]
        if self._aborted:
            return _STATE["aborted"]
        if self._sequence is not None:
            return _STATE["waiting for key"]
        if self._on_since is None:
            return _STATE["off"]
        if self._mode == "em":
            return _STATE["on/off modulation" if self._on_off_modulation else "modulation"]
        return _STATE["continuous"]

    def _leds(self) -> int:
        """Bit 0 power on, 1 laser on, 2 laser lock (emitting), 3 error."""
        emitting = self._emitting()
        return 1 | (2 if self._on_since is not None or self._sequence else 0) \
            | (4 if emitting else 0) | (8 if self._fault else 0)

    def _power_mw(self) -> float:
        if self._mode == "cp":
            return self._setpoint_w * 1000.0
        if self._mode == "em":
            return self._modulation_mw
        return min(max(0.0, (self._current_ma - self.threshold_ma) * self.slope_mw_per_ma),
                   1.1 * self.max_power_mw)

    def _drive_current_ma(self) -> float:
        if not self._emitting():
            return 0.0
        if self._mode == "ci":
            return self._current_ma
        return self.threshold_ma + self._power_mw() / self.slope_mw_per_ma

    def _l1(self, _: str) -> str:
        if self._autostart:
            raise _Reply(NOT_IN_AUTOSTART)
        self._aborted = False
        if self._can_emit() and self._on_since is None:
            self._sequence = None
            self._on_since = time.monotonic()
        return OK

    def _off(self) -> str:
        self._stop_emission()
        self._sequence = None
        self._aborted = False
        return OK

    def _start_sequence(self) -> str:
        """``@cob1``: laser on after interlock, through the autostart sequence."""
        self._aborted = False
        if self._interlock_open:
            self._trip(_INTERLOCK_ERROR)
            return OK
        self._fault = 0
        if self._on_since is not None:
            return OK
        if self._key_switch_on:
            self._sequence, self._warm_at = "warmup", time.monotonic() + self.warmup_s
        else:
            self._sequence = "key"
        return OK

    def _abort(self, _: str) -> str:
        self._off()
        self._aborted = True
        return OK

    def _clear_fault(self, _: str) -> str:
        self._fault = _INTERLOCK_ERROR if self._interlock_open else 0
        return OK

    def _set_autostart(self, argument: str) -> str:
        self._autostart = _flag(argument)
        return OK

    def _set_direct_control(self, argument: str) -> str:
        self._direct_control = _flag(argument)
        return OK

    def _set_mode(self, mode: str) -> str:
        self._mode = mode
        return OK

    def _set_attr(self, name: str, value: bool) -> str:
        setattr(self, name, value)
        return OK

    def _set_power(self, argument: str) -> str:
        self._setpoint_w = _number(argument, 0.0, self.max_power_mw / 1000.0)
        return OK

    def _set_current(self, argument: str) -> str:
        self._current_ma = _number(argument, 0.0, self.max_current_ma)
        return OK

    def _set_modulation_power(self, argument: str) -> str:
        self._modulation_mw = _number(argument, 0.0, self.max_power_mw)
        return OK

    def _measured_power(self, _: str) -> str:
        self._reads += 1
        watts = self._power_mw() / 1000.0 if self._emitting() else 0.0
        return f"{watts * (1.0 + self.ripple * math.sin(self._reads)):.4f}"

    # -- protocol ------------------------------------------------------------------
    def _parse(self, line: str) -> tuple[str, str] | None:
        """``p 0.01`` -> ("p", "0.01"); also ``p0.01``; None if no such command."""
        head, _, argument = line.partition(" ")
        head, argument = head.lower(), argument.strip()
        if head in self._commands:
            return head, argument
        for name in self._with_argument:
            if head.startswith(name) and not argument:
                return name, head[len(name):]
        return None

    def reply(self, line: str) -> list[str]:
        """The one line the laser sends back for one received line."""
        self._advance()
        parsed = self._parse(line)
        if parsed is None:
            return [ILLEGAL_COMMAND]
        name, argument = parsed
        takes_argument, handler = self._commands[name]
        if takes_argument != bool(argument):
            return [ILLEGAL_COMMAND]
        try:
            return [handler(argument)]
        except _Reply as error:
            return [str(error)]
