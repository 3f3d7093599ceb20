"""An emulated Thorlabs TED4015 TEC controller serving SCPI on a loopback TCP socket.

The real controller speaks SCPI over USBTMC; this twin speaks the same
command set over a raw TCP socket on 127.0.0.1, so that its address is a VISA
resource string (``TCPIP0::127.0.0.1::<port>::SOCKET``) and the real driver,
or any program written from the manual, talks to it through pyvisa.

Commands and replies follow the Thorlabs "Series 4000 (LDC40xx, TED4015,
ITC40xx) SCPI Programmer's Reference Manual": LF-terminated program messages,
short or long mnemonics in any case, optional nodes (``[SOURce[1]]``,
``[:SCALar]``, ``[:STATe]``...), the channel suffix 1, several units in one
message separated by ``;`` (a unit without a leading ``:`` continues the
path of the one before, e.g. ``SOUR:TEMP:LCON:GAIN 1;INT 0.1``), queries with
``MIN``/``MAX``/``DEF``, numbers with an optional unit suffix (``25C``,
``300K``, ``500mA``), and the SCPI error queue (10 entries, ``SYST:ERR?``,
``+0,"No error"`` when empty, cleared by ``*CLS``, not by ``*RST``). A query
that cannot be answered sends nothing and queues its error, as a SCPI
instrument does.

Simulated physics: a first-order sample holder. With the output on (constant
temperature mode) the sample temperature approaches the set point,
``T += (Tset - T)(1 - exp(-dt/tau))``, evaluated against ``time.monotonic``
whenever it is read; with the output off it relaxes to ``ambient_c`` with the
same time constant. In constant current mode (``SOUR:FUNC CURR``) it
approaches the temperature that current holds. The TEC current reported by
``MEAS:CURR?`` is what a regulator would drive: a holding term against the
losses to ambient plus the loop gain (``SOUR:TEMP:LCON:GAIN``, A/K) times the
error, clipped at the TEC current limit (``SOUR:CURR:LIM``); Thorlabs'
convention (MTD415T data sheet) is that a positive TEC current cools and a
negative one heats. The sensor is a 10 kOhm NTC thermistor: the sample temperature gives its
resistance (``MEAS:TSEN?``) and the configured thermistor constants
(``SENS:TEMP:THER:...``) turn that back into the temperature displayed, so a
wrongly configured sensor reads wrong, as on the bench.

Not emulated (answered with ``-113,"Undefined header"``): the auto-PID
procedure (``SOUR:TEMP:ATUN...``), sensor type selection, the temperature
window and protection settings, the operation/questionable/auxiliary status
registers, ``*SAV``/``*RCL``, and anything else not in the command table
built in ``__init__``.
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from exoacq.drivers.socket_sim import ScpiError as _Err, SocketSimulator, one_parameter as _one, \
    scpi_boolean as _boolean

# Series 4000 SCPI Programmer's Reference, chapter 4 (SCPI error messages).
ERRORS: dict[int, str] = {
    -100: "Command error", -102: "Syntax error", -104: "Data type error",
    -108: "Parameter not allowed", -109: "Missing parameter", -113: "Undefined header",
    -114: "Header suffix out of range", -131: "Invalid suffix", -200: "Execution error",
    -221: "Settings conflict", -222: "Data out of range", -224: "Illegal parameter value",
    -350: "Error queue overflow",
}
NO_ERROR = '+0,"No error"'
ERROR_QUEUE_LENGTH = 10  # manual, chapter 4: "A record of up to 10 errors"

# Manual, 3.14.3 Measurement Register Group: the bits that concern a TED.
MEASUREMENT_BITS: dict[int, str] = {
    1: "keylock protection active", 256: "temperature protection active",
    512: "temperature window failure", 1024: "temperature sensor failure",
    2048: "TEC compliance voltage reached", 4096: "TEC connection failure",
    16384: "over temperature",
}
_SENSOR_FAILURE = next(bit for bit, name in MEASUREMENT_BITS.items()
                       if name == "temperature sensor failure")

# IEEE 488.2 Standard Event Status Register bits.
_ESR_OPC, _ESR_QYE, _ESR_DDE, _ESR_EXE, _ESR_CME = 1, 4, 8, 16, 32

#: Range a set point limit may take (thermistor sensor), in C.
SENSOR_RANGE_C = (-45.0, 145.0)
#: TED4015 bipolar TEC current range (+-15 A, 225 W).
TEC_CURRENT_MAX_A = 15.0
DEFAULT_SETPOINT_C = 25.0
#: SOUR:TEMP:LCON defaults: gain A/K, integral A/(K s), derivative A s/K, period s.
DEFAULT_LOOP = {"GAIN": 1.0, "INT": 0.1, "DER": 0.0, "PER": 1.0}
_LOOP_RANGE = (0.0, 1e5)
#: Holding current per kelvin of difference to ambient (the losses), A/K.
HOLD_A_PER_K = 0.05
#: TEC module resistance (MEAS:VOLT? = I R).
TEC_RESISTANCE_OHM = 1.5
#: Sensor signal reported when the sensor is open (SCPI "not a number").
NOT_A_NUMBER = 9.91e37

_NUMBER = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)")
_NODE = re.compile(r"(\[)?:?([A-Za-z][A-Za-z0-9]*)(\[1\])?(\])?")
_TEMPERATURE_SUFFIX = {"": None, "C": "C", "CEL": "C", "K": "K", "F": "F", "FAR": "F"}
_CURRENT_SUFFIX = {"": 1.0, "A": 1.0, "MA": 1e-3, "UA": 1e-6}
_PLAIN = {"": 1.0}
_KEYWORDS = {"MIN": "MIN", "MINIMUM": "MIN", "MAX": "MAX", "MAXIMUM": "MAX",
             "DEF": "DEF", "DEFAULT": "DEF"}



@dataclass(frozen=True)
class _Node:
    """One mnemonic of a command header as the manual writes it (``[SOURce[1]]``)."""

    short: str
    long: str
    optional: bool
    suffix: bool

    def matches(self, token: str) -> bool:
        word = token.upper()
        if word in (self.short, self.long):
            return True
        stem = word.rstrip("0123456789")
        return self.suffix and word[len(stem):] == "1" and stem in (self.short, self.long)


def _pattern(text: str) -> tuple[_Node, ...]:
    """``[SOURce[1]]:TEMPerature[:SPOint]`` -> its nodes."""
    nodes = []
    for opening, name, suffix, _ in _NODE.findall(text):
        short = "".join(c for c in name if c.isupper() or c.isdigit())
        nodes.append(_Node(short, name.upper(), bool(opening), bool(suffix)))
    return tuple(nodes)


def _match(nodes: tuple[_Node, ...], tokens: list[str]) -> bool:
    if not nodes:
        return not tokens
    if tokens and nodes[0].matches(tokens[0]) and _match(nodes[1:], tokens[1:]):
        return True
    return nodes[0].optional and _match(nodes[1:], tokens)


def _fmt(value: float) -> str:
    """Numeric response data as the controller sends it (NR3, 7 digits)."""
    return f"{value + 0.0:.6E}"


def _none(params: list[str]) -> None:
    if params:
        raise _Err(-108)


def _no_args(action: Callable[[], str | None]) -> Callable[[list[str]], str | None]:
    """The handler of a header that takes no parameter."""
    def handler(params: list[str]) -> str | None:
        _none(params)
        return action()
    return handler



def _keyword(params: list[str]) -> str | None:
    """The MIN/MAX/DEF argument of a query, None without one."""
    if not params:
        return None
    word = _KEYWORDS.get(_one(params).upper())
    if word is None:
        raise _Err(-224)
    return word


def _number(text: str, suffixes: dict[str, float]) -> float:
    match = _NUMBER.fullmatch(text.strip())
    if match is None:
        raise _Err(-104)
    scale = suffixes.get(match.group(2).upper())
    if scale is None:
        raise _Err(-131)
    return float(match.group(1)) * scale



def _to_c(value: float, unit: str) -> float:
    return {"C": value, "K": value - 273.15, "F": (value - 32.0) / 1.8}[unit]


def _from_c(value_c: float, unit: str) -> float:
    return {"C": value_c, "K": value_c + 273.15, "F": value_c * 1.8 + 32.0}[unit]


class TED4015Simulator(SocketSimulator):
    """A TED4015 on a loopback socket. ``with TED4015Simulator() as sim: TED4015(sim.address)``.

    ``tau_s`` is the sample holder's thermal time constant and ``ambient_c``
    the temperature it relaxes to with the output off (tests use ``tau_s``
    ~0.2 s). One client (VISA session) is served at a time; the next is
    accepted when it disconnects. ``transcript`` holds ("rx", line) and
    ("tx", reply) pairs without terminators. Fault injection: ``silent =
    True`` reads commands and answers none; :meth:`unplug` drops the
    connection and the port as a pulled USB cable does; ``sensor_open =
    True`` makes the thermistor read open (the output switches off);
    :meth:`push_error` queues an error as the front panel would.
    """

    name = "ted4015"

    def __init__(self, *, tau_s: float = 20.0, ambient_c: float = 22.0,
                 setpoint_c: float = DEFAULT_SETPOINT_C, current_limit_a: float = 2.0,
                 limit_low_c: float = 0.0, limit_high_c: float = 60.0,
                 serial_number: str = "M00123456", firmware: str = "1.4.0/2.0.3/1.6.0",
                 thermistor_r0_ohm: float = 10_000.0, thermistor_t0_c: float = 25.0,
                 thermistor_beta: float = 3988.0) -> None:
        if not tau_s > 0:
            raise ValueError("tau_s must be positive")
        if not SENSOR_RANGE_C[0] <= limit_low_c <= setpoint_c <= limit_high_c <= SENSOR_RANGE_C[1]:
            raise ValueError("need sensor min <= limit_low_c <= setpoint_c <= limit_high_c <= sensor max")
        self.tau_s = float(tau_s)
        self.ambient_c = float(ambient_c)
        self.identity = f"THORLABS,TED4015,{serial_number},{firmware}"
        # The thermistor actually mounted (the configured constants may differ).
        self._sensor = (thermistor_r0_ohm, thermistor_t0_c, thermistor_beta)
        super().__init__()
        # -- instrument state ------------------------------------------------
        self._temperature_c = self.ambient_c
        self._updated = time.monotonic()
        self._setpoint_c = float(setpoint_c)
        self._limit_low_c, self._limit_high_c = float(limit_low_c), float(limit_high_c)
        self._current_limit_a = float(current_limit_a)
        self._current_setpoint_a = 0.0
        self._function = "TEMP"
        self._output = False
        self._unit = "C"
        self._loop = dict(DEFAULT_LOOP)
        self._method = "EXP"
        self._exp = {"R0": thermistor_r0_ohm, "T0": thermistor_t0_c, "BETA": thermistor_beta}
        # Steinhart-Hart constants of a 10 kOhm thermistor (Thorlabs' example values).
        self._shh = {"A": 1.129242e-3, "B": 2.341077e-4, "C": 8.765e-8}
        self._configured = "TEMP"
        self._fetched: dict[str, float] = {}
        self._sensor_open = False
        self._condition = 0
        self._event = 0
        self._measurement_enable = 0
        self._errors: list[str] = []
        self._esr = self._ese = self._sre = 0
        self._line_frequency_hz = 50
        self._commands: list[tuple[tuple[_Node, ...], bool, Callable[[list[str]], str | None]]] = []
        self._common: dict[str, Callable[[list[str]], str | None]] = {
            "*IDN?": _no_args(lambda: self.identity),
            "*RST": _no_args(lambda: self._reset()),
            "*CLS": _no_args(lambda: self._clear_status()),
            "*TST?": _no_args(lambda: "0"),
            "*OPC": _no_args(lambda: self._set_esr(_ESR_OPC)),
            "*OPC?": _no_args(lambda: "1"),
            "*WAI": _no_args(lambda: None),
            "*ESR?": _no_args(lambda: self._read_esr()),
            "*ESE": lambda p: setattr(self, "_ese", self._register(p)),
            "*ESE?": _no_args(lambda: str(self._ese)),
            "*SRE": lambda p: setattr(self, "_sre", self._register(p)),
            "*SRE?": _no_args(lambda: str(self._sre)),
            "*STB?": _no_args(lambda: str(self._status_byte())),
        }
        add = self._add
        # System subsystem (manual 3.2).
        add("SYSTem:ERRor[:NEXT]?", self._next_error)
        add("SYSTem:VERSion?", _no_args(lambda: "1999.0"))
        add("SYSTem:BEEPer[:IMMediate]", _no_args(lambda: None))
        add("SYSTem:LFRequency", self._set_line_frequency)
        add("SYSTem:LFRequency?", _no_args(lambda: str(self._line_frequency_hz)))
        # Measurement commands (manual 3.3).
        for quantity in ("TEMPerature", "CURRent[:DC]", "VOLTage[:DC]", "POWer", "TSENsor"):
            key = _pattern(quantity)[0].short
            add(f"MEASure[:SCALar]:{quantity}?", _no_args(lambda k=key: self._measure(k)))
            add(f"CONFigure[:SCALar]:{quantity}", _no_args(lambda k=key: self._configure(k)))
            add(f"FETCh[:SCALar]:{quantity}?", _no_args(lambda k=key: self._fetch(k)))
            add(f"READ[:SCALar]:{quantity}?", _no_args(lambda k=key: self._read(k)))
        add("CONFigure?", _no_args(lambda: self._configured))
        add("INITiate[:IMMediate]", _no_args(lambda: self._initiate()))
        add("ABORt", _no_args(lambda: None))
        add("FETCh[:SCALar]?", _no_args(lambda: self._fetch(self._configured)))
        add("READ[:SCALar]?", _no_args(lambda: self._read(self._configured)))
        # TEC output (OUTPut[1][:STATe]).
        add("OUTPut[1][:STATe]", lambda p: self._set_output(_boolean(_one(p))))
        add("OUTPut[1][:STATe]?", _no_args(lambda: "1" if self._output else "0"))
        # TEC source: operating mode, current limit and set point, temperature set point.
        add("[SOURce[1]]:FUNCtion[:MODE]", self._set_function)
        add("[SOURce[1]]:FUNCtion[:MODE]?", _no_args(lambda: self._function))
        add("[SOURce[1]]:CURRent:LIMit[:AMPLitude]", self._set_current_limit)
        add("[SOURce[1]]:CURRent:LIMit[:AMPLitude]?", self._get_current_limit)
        add("[SOURce[1]]:CURRent[:LEVel][:IMMediate][:AMPLitude]", self._set_current)
        add("[SOURce[1]]:CURRent[:LEVel][:IMMediate][:AMPLitude]?", self._get_current)
        add("[SOURce[1]]:TEMPerature[:SPOint]", self._set_setpoint)
        add("[SOURce[1]]:TEMPerature[:SPOint]?", self._get_setpoint)
        add("[SOURce[1]]:TEMPerature:LIMit:LOW", lambda p: self._set_limit(p, low=True))
        add("[SOURce[1]]:TEMPerature:LIMit:LOW?", lambda p: self._get_limit(p, low=True))
        add("[SOURce[1]]:TEMPerature:LIMit[:HIGH]", lambda p: self._set_limit(p, low=False))
        add("[SOURce[1]]:TEMPerature:LIMit[:HIGH]?", lambda p: self._get_limit(p, low=False))
        for term in ("GAIN", "INTegral", "DERivative", "PERiod"):
            key = _pattern(term)[0].short
            add(f"[SOURce[1]]:TEMPerature:LCONstants:{term}", lambda p, k=key: self._set_loop(k, p))
            add(f"[SOURce[1]]:TEMPerature:LCONstants:{term}?", lambda p, k=key: self._get_loop(k, p))
        # Temperature sensor: thermistor calculation method and constants.
        add("SENSe[1]:TEMPerature:THERmistor:METHod", self._set_method)
        add("SENSe[1]:TEMPerature:THERmistor:METHod?", _no_args(lambda: self._method))
        for group, names in (("EXPonential", ("R0", "T0", "BETA")), ("SHH", ("A", "B", "C"))):
            table = self._exp if group == "EXPonential" else self._shh
            for constant in names:
                add(f"SENSe[1]:TEMPerature:THERmistor:{group}:{constant}",
                    lambda p, t=table, c=constant: t.__setitem__(c, _number(_one(p), _PLAIN)))
                add(f"SENSe[1]:TEMPerature:THERmistor:{group}:{constant}?",
                    _no_args(lambda t=table, c=constant: _fmt(t[c])))
        add("UNIT:TEMPerature", self._set_unit)
        add("UNIT:TEMPerature?", _no_args(lambda: self._unit))
        # Status subsystem: measurement register group (manual 3.14.3).
        add("STATus:MEASurement[:EVENt]?", _no_args(lambda: self._read_event()))
        add("STATus:MEASurement:CONDition?", _no_args(lambda: str(self._condition)))
        add("STATus:MEASurement:ENABle",
            lambda p: setattr(self, "_measurement_enable", self._register(p)))
        add("STATus:MEASurement:ENABle?", _no_args(lambda: str(self._measurement_enable)))

    # -- public API ----------------------------------------------------------
    @property
    def temperature_c(self) -> float:
        """The modelled sample temperature now, in C (read by other simulators)."""
        with self._lock:
            self._advance()
            return self._temperature_c

    def start_at(self, temperature_c: float) -> None:
        """A simulation's initial condition: the holder (and the room around it) at ``temperature_c``."""
        with self._lock:
            self.ambient_c = self._temperature_c = float(temperature_c)
            self._updated = time.monotonic()

    @property
    def output_on(self) -> bool:
        with self._lock:
            return self._output

    @property
    def sensor_open(self) -> bool:
        return self._sensor_open

    @sensor_open.setter
    def sensor_open(self, is_open: bool) -> None:
        """An open thermistor: the measurement reads 9.91E37 and the output switches off."""
        with self._lock:
            self._advance()
            self._sensor_open = bool(is_open)
            if is_open:
                self._output = False
                self._condition |= _SENSOR_FAILURE
                self._event |= _SENSOR_FAILURE
            else:
                self._condition &= ~_SENSOR_FAILURE

    def push_error(self, code: int) -> None:
        """Queue an error as the instrument does for an operation of its own."""
        with self._lock:
            self._push(code)

    def reply(self, line: str) -> list[str]:
        """The response messages to one received program message (called with the lock held)."""
        self._advance()
        answers: list[str] = []
        path: list[str] = []
        for unit in line.split(";"):
            unit = unit.strip()
            if not unit:
                continue
            try:
                answer, path = self._execute(unit, path)
            except _Err as err:
                self._push(err.code)
                if err.code > -200:  # a command error discards the rest of the message
                    break
                continue
            if answer is not None:
                answers.append(answer)
        return [";".join(answers)] if answers else []

    # -- parsing ---------------------------------------------------------------
    def _add(self, pattern: str, handler: Callable[[list[str]], str | None]) -> None:
        self._commands.append((_pattern(pattern), pattern.endswith("?"), handler))

    def _execute(self, unit: str, path: list[str]) -> tuple[str | None, list[str]]:
        header, _, argument = unit.partition(" ")
        params = [p.strip() for p in argument.split(",")] if argument.strip() else []
        if header.startswith("*"):
            handler = self._common.get(header.upper())
            if handler is None:
                raise _Err(-113)
            return handler(params), path
        query = header.endswith("?")
        text = header.removesuffix("?")
        tokens = text.removeprefix(":").split(":")
        if not all(tokens):
            raise _Err(-102)
        if not text.startswith(":"):
            tokens = path + tokens
        for nodes, is_query, handler in self._commands:
            if is_query == query and _match(nodes, tokens):
                return handler(params), tokens[:-1]
        plain = [token.rstrip("0123456789") or token for token in tokens]
        if plain != tokens and any(q == query and _match(n, plain) for n, q, _ in self._commands):
            raise _Err(-114)  # e.g. SOUR2: the TED4015 has channel 1 only
        raise _Err(-113)

    def _register(self, params: list[str]) -> int:
        value = _number(_one(params), _PLAIN)
        if not (0 <= value <= 65535 and value == int(value)):
            raise _Err(-222)
        return int(value)

    def _push(self, code: int) -> None:
        if len(self._errors) >= ERROR_QUEUE_LENGTH:
            self._errors[-1] = f'-350,"{ERRORS[-350]}"'
        else:
            self._errors.append(f'{code:+d},"{ERRORS.get(code, "Unknown error")}"')
        if -199 <= code <= -100:
            self._esr |= _ESR_CME
        elif -299 <= code <= -200:
            self._esr |= _ESR_EXE
        elif -399 <= code <= -300:
            self._esr |= _ESR_DDE
        elif -499 <= code <= -400:
            self._esr |= _ESR_QYE

    # -- IEEE 488.2 and system -------------------------------------------------
    def _next_error(self, params: list[str]) -> str:
        _none(params)
        return self._errors.pop(0) if self._errors else NO_ERROR

    def _clear_status(self) -> None:
        self._errors.clear()
        self._esr = 0
        self._event = 0

    def _set_esr(self, bits: int) -> None:
        self._esr |= bits

    def _read_esr(self) -> str:
        value, self._esr = self._esr, 0
        return str(value)

    def _status_byte(self) -> int:
        byte = 4 if self._errors else 0
        if self._event & self._measurement_enable:
            byte |= 128  # operation/measurement summary
        if self._esr & self._ese:
            byte |= 32
        if byte & self._sre & ~64:
            byte |= 64
        return byte

    def _read_event(self) -> str:
        value, self._event = self._event, 0
        return str(value)

    def _reset(self) -> None:
        """*RST: output off, default set point, constant temperature mode, unit C.
        Set point limits, current limit and sensor constants are kept."""
        self._output = False
        self._setpoint_c = min(max(DEFAULT_SETPOINT_C, self._limit_low_c), self._limit_high_c)
        self._current_setpoint_a = 0.0
        self._function = "TEMP"
        self._unit = "C"
        self._loop = dict(DEFAULT_LOOP)
        self._configured = "TEMP"
        self._fetched.clear()

    def _set_line_frequency(self, params: list[str]) -> None:
        value = _number(_one(params), {"": 1.0, "HZ": 1.0})
        if value not in (50.0, 60.0):
            raise _Err(-222)
        self._line_frequency_hz = int(value)

    # -- TEC source and output -----------------------------------------------
    def _set_output(self, on: bool) -> None:
        if on and self._sensor_open:
            raise _Err(-221)
        self._output = on

    def _set_function(self, params: list[str]) -> None:
        word = _one(params).upper()
        mode = {"TEMP": "TEMP", "TEMPERATURE": "TEMP", "CURR": "CURR", "CURRENT": "CURR"}.get(word)
        if mode is None:
            raise _Err(-224)
        if self._output and mode != self._function:
            raise _Err(-221)  # the mode changes only with the output off
        self._function = mode

    def _set_current_limit(self, params: list[str]) -> None:
        value = self._current_value(params, (0.0, TEC_CURRENT_MAX_A), default=2.0)
        if not 0.0 <= value <= TEC_CURRENT_MAX_A:
            raise _Err(-222)
        self._current_limit_a = value
        self._current_setpoint_a = max(-value, min(value, self._current_setpoint_a))

    def _get_current_limit(self, params: list[str]) -> str:
        word = _keyword(params)
        return _fmt({None: self._current_limit_a, "MIN": 0.0, "MAX": TEC_CURRENT_MAX_A,
                     "DEF": 2.0}[word])

    def _set_current(self, params: list[str]) -> None:
        limit = self._current_limit_a
        value = self._current_value(params, (-limit, limit), default=0.0)
        if not -limit <= value <= limit:
            raise _Err(-222)
        self._current_setpoint_a = value

    def _get_current(self, params: list[str]) -> str:
        word = _keyword(params)
        limit = self._current_limit_a
        return _fmt({None: self._current_setpoint_a, "MIN": -limit, "MAX": limit, "DEF": 0.0}[word])

    @staticmethod
    def _current_value(params: list[str], bounds: tuple[float, float], *, default: float) -> float:
        text = _one(params)
        word = _KEYWORDS.get(text.upper())
        if word is not None:
            return {"MIN": bounds[0], "MAX": bounds[1], "DEF": default}[word]
        return _number(text, _CURRENT_SUFFIX)

    def _temperature_value(self, params: list[str], bounds_c: tuple[float, float],
                           default_c: float) -> float:
        """A temperature argument in C: a number in the present unit or with a
        unit suffix (``25C``, ``298.15K``), or MIN/MAX/DEF."""
        text = _one(params)
        word = _KEYWORDS.get(text.upper())
        if word is not None:
            return {"MIN": bounds_c[0], "MAX": bounds_c[1], "DEF": default_c}[word]
        match = _NUMBER.fullmatch(text)
        if match is None:
            raise _Err(-104)
        suffix = match.group(2).upper()
        if suffix not in _TEMPERATURE_SUFFIX:
            raise _Err(-131)
        return _to_c(float(match.group(1)), _TEMPERATURE_SUFFIX[suffix] or self._unit)

    def _set_setpoint(self, params: list[str]) -> None:
        low, high = self._limit_low_c, self._limit_high_c
        value = self._temperature_value(params, (low, high), DEFAULT_SETPOINT_C)
        if not low - 1e-9 <= value <= high + 1e-9:
            raise _Err(-222)
        self._setpoint_c = value

    def _get_setpoint(self, params: list[str]) -> str:
        word = _keyword(params)
        value = {None: self._setpoint_c, "MIN": self._limit_low_c, "MAX": self._limit_high_c,
                 "DEF": DEFAULT_SETPOINT_C}[word]
        return _fmt(_from_c(value, self._unit))

    def _set_limit(self, params: list[str], *, low: bool) -> None:
        default = 0.0 if low else 60.0
        value = self._temperature_value(params, SENSOR_RANGE_C, default)
        if not SENSOR_RANGE_C[0] <= value <= SENSOR_RANGE_C[1]:
            raise _Err(-222)
        if (low and value > self._limit_high_c) or (not low and value < self._limit_low_c):
            raise _Err(-221)
        if low:
            self._limit_low_c = value
        else:
            self._limit_high_c = value
        self._setpoint_c = min(max(self._setpoint_c, self._limit_low_c), self._limit_high_c)

    def _get_limit(self, params: list[str], *, low: bool) -> str:
        word = _keyword(params)
        present = self._limit_low_c if low else self._limit_high_c
        value = {None: present, "MIN": SENSOR_RANGE_C[0], "MAX": SENSOR_RANGE_C[1],
                 "DEF": 0.0 if low else 60.0}[word]
        return _fmt(_from_c(value, self._unit))

    def _set_loop(self, key: str, params: list[str]) -> None:
        text = _one(params)
        word = _KEYWORDS.get(text.upper())
        value = ({"MIN": _LOOP_RANGE[0], "MAX": _LOOP_RANGE[1], "DEF": DEFAULT_LOOP[key]}[word]
                 if word else _number(text, {"": 1.0, "S": 1.0} if key == "PER" else _PLAIN))
        if not _LOOP_RANGE[0] <= value <= _LOOP_RANGE[1]:
            raise _Err(-222)
        self._loop[key] = value

    def _get_loop(self, key: str, params: list[str]) -> str:
        word = _keyword(params)
        return _fmt({None: self._loop[key], "MIN": _LOOP_RANGE[0], "MAX": _LOOP_RANGE[1],
                     "DEF": DEFAULT_LOOP[key]}[word])

    def _set_method(self, params: list[str]) -> None:
        word = _one(params).upper()
        method = {"EXP": "EXP", "EXPONENTIAL": "EXP", "SHH": "SHH"}.get(word)
        if method is None:
            raise _Err(-224)
        self._method = method

    def _set_unit(self, params: list[str]) -> None:
        unit = _TEMPERATURE_SUFFIX.get(_one(params).upper())
        if unit is None:
            raise _Err(-224)
        self._unit = unit

    # -- measurements ----------------------------------------------------------
    def _measure(self, quantity: str) -> str:
        value = self._value(quantity)
        self._fetched[quantity] = value
        return _fmt(value)

    def _configure(self, quantity: str) -> None:
        self._configured = quantity

    def _initiate(self) -> None:
        self._fetched[self._configured] = self._value(self._configured)

    def _fetch(self, quantity: str) -> str:
        if quantity not in self._fetched:
            raise _Err(-221)  # nothing measured yet
        return _fmt(self._fetched[quantity])

    def _read(self, quantity: str) -> str:
        self._configured = quantity
        self._initiate()
        return self._fetch(quantity)

    def _value(self, quantity: str) -> float:
        current = self._tec_current_a()
        if quantity == "TEMP":
            temperature = self._displayed_temperature_c()
            return NOT_A_NUMBER if temperature is None else _from_c(temperature, self._unit)
        if quantity == "TSEN":
            return NOT_A_NUMBER if self._sensor_open else self._resistance_ohm()
        if quantity == "CURR":
            return current
        if quantity == "VOLT":
            return current * TEC_RESISTANCE_OHM
        return current * current * TEC_RESISTANCE_OHM  # POW

    def _resistance_ohm(self) -> float:
        r0, t0_c, beta = self._sensor
        kelvin = self._temperature_c + 273.15
        return r0 * math.exp(beta * (1.0 / kelvin - 1.0 / (t0_c + 273.15)))

    def _displayed_temperature_c(self) -> float | None:
        """The temperature the controller computes from the sensor resistance."""
        if self._sensor_open:
            return None
        resistance = self._resistance_ohm()
        if self._method == "EXP":
            r0, t0_c, beta = self._exp["R0"], self._exp["T0"], self._exp["BETA"]
            if r0 <= 0 or beta == 0:
                return None
            inverse = 1.0 / (t0_c + 273.15) + math.log(resistance / r0) / beta
        else:
            log_r = math.log(resistance)
            inverse = self._shh["A"] + self._shh["B"] * log_r + self._shh["C"] * log_r ** 3
        return 1.0 / inverse - 273.15 if inverse > 0 else None

    # -- thermal model -----------------------------------------------------------
    def _target_c(self) -> float:
        if not self._output:
            return self.ambient_c
        if self._function == "TEMP":
            return self._setpoint_c
        return self.ambient_c - self._current_setpoint_a / HOLD_A_PER_K  # positive current cools

    def _advance(self) -> None:
        now = time.monotonic()
        dt, self._updated = now - self._updated, now
        target = self._target_c()
        self._temperature_c += (target - self._temperature_c) * (1.0 - math.exp(-dt / self.tau_s))

    def _tec_current_a(self) -> float:
        """TEC current in A, Thorlabs' sign: positive cools, negative heats."""
        if not self._output:
            return 0.0
        limit = self._current_limit_a
        if self._function == "CURR":
            return self._current_setpoint_a
        heating = (HOLD_A_PER_K * (self._setpoint_c - self.ambient_c)
                   + self._loop["GAIN"] * (self._setpoint_c - self._temperature_c))
        return -max(-limit, min(limit, heating))
