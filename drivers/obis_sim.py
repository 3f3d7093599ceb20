"""An emulated Coherent OBIS LX laser serving its serial protocol on a pseudo-terminal.

It answers the documented command set of the Coherent OBIS LX/LS Operator's
Manual, Appendix: Commands and queries (IEEE 488.2 commands, system
information, session control, system state, operational and optional
commands), not only what :mod:`exoacq.drivers.obis` sends, so that a driver
written from the manual works against it unchanged. Give
:attr:`ObisSimulator.port` to the driver.

Syntax, as in the manual: commands end with CR, LF or CR LF; every mnemonic in
its short (``SYST``) or long (``SYSTEM``) form, any case; an optional leading
colon; a numeric suffix on the first mnemonic selects the device (manual,
"Device selection syntax": none or 0 is the laser on this port, so ``SYST1``
answers ``ERR-241`` device unavailable, as a laser on its own USB port does).
With handshaking on (the power-up default) a command is answered by its data
line, if any, then ``OK``; with handshaking off ``OK`` is left out; an error
is always answered by ``ERR-nnn`` alone and also queued for
``SYST:ERR:NEXT?``.

Where the manual's text was not at hand, the simulator makes a stated choice:
``*TST?`` answers the fault word in the format of ``SYST:FAUL?`` (0: passed);
``SYST:ERR:NEXT?`` answers SCPI's ``<code>,"<text>"`` (``0,"No error"`` when
empty); dates are ``YYYY-MM-DD``; ``SYST:COMM:PROM ON`` is stored and reported
but no prompt string is sent; a queued error does not set status bit 6 (the
driver's tests assert the status word after a refusal).

Error numbers and bits are the driver's tables, so both stay in step.
"""
from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from exoacq.drivers.obis import ERRORS, FAULT_BITS, STATUS_BITS
from exoacq.drivers.serial_sim import PtySimulator


@dataclass(frozen=True)
class Command:
    """One row of the manual's table. ``query`` names the method answering
    ``<header>?``, ``set`` the one taking ``<header> <argument>``, ``run`` the
    one for a command without argument. ``values`` are the literal arguments in
    the manual's notation (short form in capitals: ``DIGital``); a numeric
    argument is in ``unit`` within ``limits`` (names of two simulator attributes)."""

    query: str | None = None
    set: str | None = None
    run: str | None = None
    values: tuple[str, ...] = ()
    unit: str = ""
    limits: tuple[str, str] | None = None


ON_OFF = ("ON", "OFF")

# Coherent OBIS LX/LS Operator's Manual, Appendix: Commands and queries,
# written as the manual writes them (short form in capitals).
COMMANDS: dict[str, Command] = {
    # IEEE 488.2 mandated and optional commands
    "*IDN": Command(query="identity_reply"),  # Coherent, Inc - <model> - <firmware> - <date>
    "*RST": Command(run="warm_boot"),
    "*TST": Command(query="self_test"),
    # System information queries
    "SYSTem:INFormation:MODel": Command(query="model"),
    "SYSTem:INFormation:MDATe": Command(query="manufacture_date"),
    "SYSTem:INFormation:CDATe": Command(query="calibration_date"),
    "SYSTem:INFormation:SNUMber": Command(query="serial_number_reply"),
    "SYSTem:INFormation:PNUMber": Command(query="part_number_reply"),
    "SYSTem:INFormation:FVERsion": Command(query="firmware_reply"),
    "SYSTem:INFormation:PVERsion": Command(query="protocol_version"),
    "SYSTem:INFormation:WAVelength": Command(query="wavelength", unit="nm"),
    "SYSTem:INFormation:POWer": Command(query="nominal_power", unit="W"),
    "SYSTem:INFormation:TYPe": Command(query="device_type"),  # DDL (LX), OPSL (LS)
    "SOURce:POWer:NOMinal": Command(query="nominal_power", unit="W"),
    "SOURce:POWer:LIMit:LOW": Command(query="power_limit_low", unit="W"),
    "SOURce:POWer:LIMit:HIGH": Command(query="power_limit_high", unit="W"),
    # Analog modulation input impedance: 1 = 50 ohm, 2 = 2 kohm.
    "SYSTem:INFormation:AMODulation:TYPe": Command(query="amod_type", set="set_amod_type",
                                                   values=("1", "2")),
    # Session control commands
    "SYSTem:COMMunicate:HANDshaking": Command(query="handshaking", set="set_handshaking",
                                              values=ON_OFF),
    "SYSTem:COMMunicate:PROMpt": Command(query="prompt", set="set_prompt", values=ON_OFF),
    "SYSTem:AUTostart": Command(query="autostart", set="set_autostart", values=ON_OFF),
    "SYSTem:STATus": Command(query="status_word", unit="hex word"),
    "SYSTem:FAULt": Command(query="fault_word", unit="hex word"),
    "SYSTem:INDicator:LASer": Command(query="indicator", set="set_indicator", values=ON_OFF),
    "SYSTem:ERRor:COUNt": Command(query="error_count"),
    "SYSTem:ERRor:NEXT": Command(query="next_error"),
    "SYSTem:ERRor:CLEar": Command(run="clear_errors"),
    # System state queries
    "SYSTem:CYCLes": Command(query="cycles"),
    "SYSTem:HOURs": Command(query="system_hours", unit="h"),  # powered-on time
    "SYSTem:DIODe:HOURs": Command(query="diode_hours", unit="h"),  # emission time
    "SOURce:POWer:LEVel": Command(query="measured_power", unit="W"),
    "SOURce:POWer:CURRent": Command(query="diode_current", unit="A"),
    "SOURce:TEMPerature:BASeplate": Command(query="baseplate_temperature", unit="C"),
    # Operational commands
    "SOURce:AM:INTernal": Command(set="set_internal_mode", values=("CWP", "CWC")),
    "SOURce:AM:EXTernal": Command(set="set_external_mode",
                                  values=("DIGital", "ANALog", "MIXed", "DIGSO", "MIXSO")),
    "SOURce:AM:SOURce": Command(query="operating_mode"),
    "SOURce:POWer:LEVel:IMMediate:AMPLitude": Command(
        query="power_setpoint", set="set_power_setpoint", unit="W",
        limits=("min_power_w", "max_power_w")),
    "SOURce:AM:STATe": Command(query="emission", set="set_emission", values=ON_OFF),
    # CDRH ON: emission starts cdrh_delay_s (5 s) after it is asked for.
    "SYSTem:CDRH": Command(query="cdrh", set="set_cdrh", values=ON_OFF),
    # Optional commands: APRobe OFF is the sleep mode (diode TEC off, no emission).
    "SOURce:TEMPerature:APRobe": Command(query="aprobe", set="set_aprobe", values=ON_OFF),
    "SOURce:TEMPerature:DIODe": Command(query="diode_temperature", unit="C"),
    "SOURce:TEMPerature:DSETpoint": Command(query="diode_setpoint", unit="C"),
    "SOURce:TEMPerature:INTernal": Command(query="internal_temperature", unit="C"),
    "SOURce:TEMPerature:PROTection:BASeplate:HIGH": Command(query="baseplate_high", unit="C"),
    "SOURce:TEMPerature:PROTection:BASeplate:LOW": Command(query="baseplate_low", unit="C"),
    "SOURce:TEMPerature:PROTection:DIODe:HIGH": Command(query="diode_high", unit="C"),
    "SOURce:TEMPerature:PROTection:DIODe:LOW": Command(query="diode_low", unit="C"),
    "SOURce:TEMPerature:PROTection:INTernal:HIGH": Command(query="internal_high", unit="C"),
    "SOURce:TEMPerature:PROTection:INTernal:LOW": Command(query="internal_low", unit="C"),
    "SOURce:CURRent:LIMit:HIGH": Command(query="current_limit_high", unit="A"),
    "SOURce:CURRent:LIMit:LOW": Command(query="current_limit_low", unit="A"),
}

EXTERNAL_MODES = ("DIGITAL", "ANALOG", "MIXED", "DIGSO", "MIXSO")
ERROR_QUEUE_LENGTH = 16

_BIT = {name: bit for table in (FAULT_BITS, STATUS_BITS) for bit, name in table.items()}
_LASER_READY_FAULT = _BIT["laser ready fault (failed to emit at the set power)"]
_FIRST = re.compile(r"(\*?[A-Z]+)(\d*)")


def _forms(mnemonic: str) -> tuple[str, str]:
    """``SYSTem`` -> (``SYST``, ``SYSTEM``): the manual's capitals are the short form."""
    short = re.match(r"\*?[A-Z0-9]*", mnemonic).group()  # type: ignore[union-attr]
    return short, mnemonic.upper()


def _matches(token: str, mnemonic: str) -> bool:
    return token.upper() in _forms(mnemonic)


_NODES: dict[str, list[str]] = {header: header.split(":") for header in COMMANDS}


class _Err(Exception):
    def __init__(self, code: int):
        self.code = code


def _lookup(header: str) -> tuple[str, int] | None:
    """``:syst1:inf:mod`` -> (``SYSTem:INFormation:MODel``, 1); None if unknown."""
    tokens = header.removeprefix(":").upper().split(":")
    first = _FIRST.fullmatch(tokens[0])
    if first is None:
        return None
    tokens[0], suffix = first.group(1), int(first.group(2) or 0)
    for key, nodes in _NODES.items():
        if len(nodes) == len(tokens) and all(map(_matches, tokens, nodes)):
            return key, suffix
    return None


def _on_off(on: bool) -> str:
    return "ON" if on else "OFF"


def _celsius(value: float) -> str:
    return f"{value:.2f}C"  # LX/LS append C to temperatures


class ObisSimulator(PtySimulator):
    """An OBIS LX laser on a pty. ``with ObisSimulator() as sim: ObisLaser(sim.port)``.

    Physics, simple but plausible: while emitting, the measured power is the set
    point (times ``modulation``, the external input 0..1, in an external mode;
    plus ``ripple`` x a deterministic sine, 0 by default), the diode current is
    ``threshold_current_a`` + power / ``slope_w_per_a``; otherwise both are 0.
    Emission starts ``cdrh_delay_s`` after it is asked for while CDRH is on, and
    not before ``warmup_s`` after power-up. ``SYST:DIOD:HOUR?`` advances with
    emission time, ``SYST:HOUR?`` with powered time. An open interlock refuses
    emission with ERR-221 and sets the laser-ready fault bit.

    :meth:`power_cycle` simulates switching the laser off and on: session
    settings (handshaking on, prompt off, error queue) return to their
    power-up state and, with autostart on, emission starts by itself after the
    warm-up and the CDRH delay. ``clock`` (seconds, monotonic) may be replaced
    to test timing without waiting.
    """

    name = "obis"

    def __init__(self, *, wavelength_nm: int = 488, max_power_w: float = 0.050,
                 nominal_power_w: float | None = None, serial_number: str = "SIM-0001",
                 part_number: str = "1000001", firmware: str = "V1.0.1",
                 firmware_date: str = "Dec 14 2010", device_type: str = "DDL",
                 base_temperature_c: float = 25.0, diode_setpoint_c: float = 30.0,
                 cdrh_delay_s: float = 5.0, warmup_s: float = 0.0,
                 system_hours: float = 123.45, diode_hours: float = 67.89,
                 ripple: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.wavelength_nm = wavelength_nm
        self.max_power_w = max_power_w
        self.min_power_w = 0.0
        self.nominal_power_w = max_power_w if nominal_power_w is None else nominal_power_w
        self.serial_number = serial_number
        self.part_number = part_number
        self.firmware = firmware
        self.model_name = f"OBIS {wavelength_nm}nm LX {max_power_w * 1000:g}mW"
        self.identity = f"Coherent, Inc - {self.model_name} - {firmware} - {firmware_date}"
        self.manufacture_date_text = "2010-12-14"
        self.calibration_date_text = "2010-12-20"
        self.type_name = device_type
        self.base_temperature_c = base_temperature_c
        self.diode_setpoint_c = diode_setpoint_c
        self.cdrh_delay_s = cdrh_delay_s
        self.warmup_s = warmup_s
        self.threshold_current_a = 0.030
        self.slope_w_per_a = 0.8
        self.current_limit_a = 0.110
        self.modulation = 1.0
        self.ripple = ripple
        self.clock = clock
        super().__init__()
        # stored settings (kept over a power cycle)
        self._cdrh = True
        self._autostart = False
        self._mode = "CWP"
        self._amod_type = "2"
        self._indicator = True
        self._aprobe = True
        self._setpoint_w = 0.0
        # counters
        self._cycles = 1
        self._powered_s = system_hours * 3600.0
        self._diode_s = diode_hours * 3600.0
        self._powered_since = clock()
        # state of this power-up
        self._handshake = True
        self._prompt = False
        self._errors: deque[int] = deque()
        self._emission = False
        self._emission_since = 0.0
        self._warm_until = self._powered_since
        self._fault = 0
        self._interlock_open = False
        self._reads = 0

    # -- test and bench controls ----------------------------------------------
    @property
    def emitted_power_mw(self) -> float:
        """Optical power leaving the laser now, in mW (0 when not emitting)."""
        with self._lock:
            return self._output_w(self.clock()) * 1000.0

    @property
    def interlock_open(self) -> bool:
        return self._interlock_open

    @interlock_open.setter
    def interlock_open(self, is_open: bool) -> None:
        """Opening the interlock stops emission; closing it clears the fault."""
        with self._lock:
            self._interlock_open = bool(is_open)
            if is_open:
                self._stop_emission(self.clock())
            else:
                self._fault &= ~_LASER_READY_FAULT

    def power_cycle(self) -> None:
        """Switch the laser off and on again (the power-up sequence)."""
        with self._lock:
            self._cycles += 1
            self._boot()

    # -- emulated laser --------------------------------------------------------
    def _boot(self) -> None:
        now = self.clock()
        self._stop_emission(now)
        self._powered_s += now - self._powered_since
        self._powered_since = now
        self._warm_until = now + self.warmup_s
        self._handshake, self._prompt = True, False
        self._errors.clear()
        self._fault = 0
        if self._autostart and not self._interlock_open and self._aprobe:
            self._emission, self._emission_since = True, now

    def _light_from(self) -> float:
        """When the requested emission starts: after warm-up and the CDRH delay."""
        delay = self.cdrh_delay_s if self._cdrh else 0.0
        return max(self._emission_since, self._warm_until) + delay

    def _emitting(self, now: float) -> bool:
        return (self._emission and not self._interlock_open and self._aprobe
                and now >= self._light_from())

    def _stop_emission(self, now: float) -> None:
        if self._emitting(now):
            self._diode_s += now - self._light_from()
        self._emission = False

    def _output_w(self, now: float) -> float:
        if not self._emitting(now):
            return 0.0
        return self._setpoint_w * (self.modulation if self._mode in EXTERNAL_MODES else 1.0)

    def _status_word(self, now: float) -> int:
        word = 0
        warming = now < self._warm_until
        if self._emitting(now):
            word |= _BIT["laser emission"]
        elif self._emission and not warming:
            word |= _BIT["CDRH delay"]
        if not self._emission:
            word |= _BIT["laser standby"]
        if self._fault:
            word |= _BIT["laser fault"]
        if warming:
            word |= _BIT["laser warming up"]
        if self._mode in EXTERNAL_MODES:
            word |= _BIT["external operating mode"]
        if self._interlock_open:
            word |= _BIT["interlock open"]
        elif not (self._fault or warming or not self._aprobe):
            word |= _BIT["laser ready"]
        return word

    # -- queries (one per row of COMMANDS) ---------------------------------------
    def identity_reply(self) -> str:
        return self.identity

    def self_test(self) -> str:
        return f"{self._fault:08X}"

    def model(self) -> str:
        return self.model_name

    def manufacture_date(self) -> str:
        return self.manufacture_date_text

    def calibration_date(self) -> str:
        return self.calibration_date_text

    def serial_number_reply(self) -> str:
        return self.serial_number

    def part_number_reply(self) -> str:
        return self.part_number

    def firmware_reply(self) -> str:
        return self.firmware

    def protocol_version(self) -> str:
        return "1.0"

    def wavelength(self) -> str:
        return f"{self.wavelength_nm:.1f}"

    def nominal_power(self) -> str:
        return f"{self.nominal_power_w:.5f}"

    def power_limit_low(self) -> str:
        return f"{self.min_power_w:.5f}"

    def power_limit_high(self) -> str:
        return f"{self.max_power_w:.5f}"

    def device_type(self) -> str:
        return self.type_name

    def amod_type(self) -> str:
        return self._amod_type

    def handshaking(self) -> str:
        return _on_off(self._handshake)

    def prompt(self) -> str:
        return _on_off(self._prompt)

    def autostart(self) -> str:
        return _on_off(self._autostart)

    def status_word(self) -> str:
        return f"{self._status_word(self.clock()):08X}"

    def fault_word(self) -> str:
        return f"{self._fault:08X}"

    def indicator(self) -> str:
        return _on_off(self._indicator)

    def error_count(self) -> str:
        return str(len(self._errors))

    def next_error(self) -> str:
        if not self._errors:
            return '0,"No error"'
        code = self._errors.popleft()
        text = ERRORS.get(code, "unknown error")
        return f'-{code},"{text[:1].upper()}{text[1:]}"'

    def cycles(self) -> str:
        return str(self._cycles)

    def system_hours(self) -> str:
        now = self.clock()
        return f"{(self._powered_s + now - self._powered_since) / 3600.0:.2f}"

    def diode_hours(self) -> str:
        now = self.clock()
        running = now - self._light_from() if self._emitting(now) else 0.0
        return f"{(self._diode_s + running) / 3600.0:.2f}"

    def measured_power(self) -> str:
        self._reads += 1
        watts = self._output_w(self.clock())
        return f"{watts * (1.0 + self.ripple * math.sin(self._reads)):.5f}"

    def diode_current(self) -> str:
        now = self.clock()
        amps = (self.threshold_current_a + self._output_w(now) / self.slope_w_per_a
                if self._emitting(now) else 0.0)
        return f"{amps:.5f}"

    def baseplate_temperature(self) -> str:
        return _celsius(self.base_temperature_c)

    def operating_mode(self) -> str:
        return self._mode

    def power_setpoint(self) -> str:
        return f"{self._setpoint_w:.5f}"

    def emission(self) -> str:
        return _on_off(self._emission)

    def cdrh(self) -> str:
        return _on_off(self._cdrh)

    def aprobe(self) -> str:
        return _on_off(self._aprobe)

    def diode_temperature(self) -> str:
        # The TEC holds the diode at its set point unless the laser sleeps.
        return _celsius(self.diode_setpoint_c if self._aprobe else self.base_temperature_c)

    def diode_setpoint(self) -> str:
        return _celsius(self.diode_setpoint_c)

    def internal_temperature(self) -> str:
        return _celsius(self.base_temperature_c + 7.0)

    def baseplate_high(self) -> str:
        return _celsius(50.0)

    def baseplate_low(self) -> str:
        return _celsius(10.0)

    def diode_high(self) -> str:
        return _celsius(self.diode_setpoint_c + 5.0)

    def diode_low(self) -> str:
        return _celsius(self.diode_setpoint_c - 5.0)

    def internal_high(self) -> str:
        return _celsius(65.0)

    def internal_low(self) -> str:
        return _celsius(5.0)

    def current_limit_high(self) -> str:
        return f"{self.current_limit_a:.5f}"

    def current_limit_low(self) -> str:
        return f"{0.0:.5f}"

    # -- commands ---------------------------------------------------------------
    def warm_boot(self) -> None:
        self._boot()

    def set_amod_type(self, value: str) -> None:
        self._amod_type = value

    def set_handshaking(self, value: str) -> None:
        self._handshake = value == "ON"

    def set_prompt(self, value: str) -> None:
        self._prompt = value == "ON"

    def set_autostart(self, value: str) -> None:
        self._autostart = value == "ON"

    def set_indicator(self, value: str) -> None:
        self._indicator = value == "ON"

    def clear_errors(self) -> None:
        self._errors.clear()

    def set_internal_mode(self, value: str) -> None:
        self._mode = value

    def set_external_mode(self, value: str) -> None:
        self._mode = value

    def set_power_setpoint(self, watts: float) -> None:
        self._setpoint_w = watts

    def set_emission(self, value: str) -> None:
        now = self.clock()
        if value == "OFF":
            self._stop_emission(now)
            return
        if self._interlock_open:
            self._fault |= _LASER_READY_FAULT
            raise _Err(221)
        if not self._aprobe:
            raise _Err(221)  # asleep: SOUR:TEMP:APR ON first
        if not self._emission:
            self._emission, self._emission_since = True, now

    def set_cdrh(self, value: str) -> None:
        self._cdrh = value == "ON"

    def set_aprobe(self, value: str) -> None:
        if value == "OFF":
            self._stop_emission(self.clock())
        self._aprobe = value == "ON"

    # -- protocol ------------------------------------------------------------------
    def reply(self, line: str) -> list[str]:
        """The lines the laser sends back for one received line."""
        try:
            data = self._execute(line)
        except _Err as err:
            if len(self._errors) >= ERROR_QUEUE_LENGTH:
                self._errors[-1] = 350  # queue overflow replaces the newest
            else:
                self._errors.append(err.code)
            return [f"ERR-{err.code}"]
        return ([] if data is None else [data]) + (["OK"] if self._handshake else [])

    def _execute(self, line: str) -> str | None:
        header, *rest = line.split(None, 1)
        argument = rest[0].strip() if rest else ""
        is_query = header.endswith("?")
        found = _lookup(header.removesuffix("?"))
        if found is None:
            raise _Err(100)
        key, device = found
        command = COMMANDS[key]
        if is_query:
            if command.query is None:
                raise _Err(100)
            if argument:
                raise _Err(102)
        elif command.set is None and command.run is None:
            raise _Err(100)
        if device != 0:
            raise _Err(241)  # no such device behind this port
        if is_query:
            return getattr(self, command.query)()
        if command.run is not None:
            if argument:
                raise _Err(102)
            getattr(self, command.run)()
            return None
        if not argument:
            raise _Err(109)
        getattr(self, command.set)(self._argument(command, argument))  # type: ignore[arg-type]
        return None

    def _argument(self, command: Command, argument: str) -> str | float:
        """The argument as the manual's value (long form, capitals) or a number in range."""
        if command.values:
            for value in command.values:
                if _matches(argument, value):
                    return value.upper()
            raise _Err(220)
        try:
            number = float(argument)
        except ValueError:
            raise _Err(102) from None
        low, high = (getattr(self, name) for name in command.limits or ())
        if not low <= number <= high:  # also refuses nan
            raise _Err(220)
        return number
