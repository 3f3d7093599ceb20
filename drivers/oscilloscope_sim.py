"""An emulated digitizing oscilloscope serving SCPI on a loopback TCP socket: a Rigol DS1000Z
or a Keysight InfiniiVision, reading detector traces from a waveform source.

Like drivers/ted4015_sim.py, the twin listens on 127.0.0.1 so that its address is a VISA
resource string (``TCPIP0::127.0.0.1::<port>::SOCKET``) and the real driver, through pyvisa,
talks to it. The dialect (``model``) follows the programming guides:

- Rigol "MSO1000Z/DS1000Z Series Programming Guide" (2015): ``:WAVeform:SOURce CHANnel<n>``,
  ``:WAVeform:MODE NORMal|MAXimum|RAW``, ``:WAVeform:FORMat BYTE|WORD|ASCii``,
  ``:WAVeform:STARt``/``:STOP`` (a RAW read returns at most 250,000 points in BYTE, 125,000
  in WORD), ``:WAVeform:PREamble?`` (format,type,points,count,xincrement,xorigin,xreference,
  yincrement,yorigin,yreference; V = (code - yorigin - yreference) x yincrement, yincrement =
  V/div / 25, yreference 127), ``:WAVeform:DATA?`` (IEEE 488.2 block ``#9000250000...``
  then LF), ``:SINGle``/``:RUN``/``:STOP``, ``:TRIGger:STATus?`` (WAIT until the single
  shot triggered, then STOP), ``:ACQuire:MDEPth`` (only the depths allowed for the number
  of channels on: 12k..24M with one, 6k..12M with two, 3k..6M with three or four),
  ``:ACQuire:SRATe?``, ``:SYSTem:ERRor[:NEXT]?`` (``0,"No error"``).
- Keysight "InfiniiVision 3000T X-Series Oscilloscopes Programmer's Guide":
  ``:WAVeform:SOURce``, ``:FORMat WORD``, ``:BYTeorder LSBFirst``, ``:UNSigned``,
  ``:POINts:MODE RAW``, ``:POINts``, ``:PREamble?`` (V = (code - yreference) x yincrement +
  yorigin), ``:DATA?`` (``#8...`` block), ``:DIGitize``/``:SINGle``/``:RUN``/``:STOP``,
  ``:OPERegister:CONDition?`` (bit 3, value 8: running), segmented memory
  (``:ACQuire:MODE SEGMented``, ``:ACQuire:SEGMented:COUNt``/``:INDex``,
  ``:WAVeform:SEGMented:COUNt?`` and ``:TTAG?``: the segment's trigger time after the first
  one's, in s), ``:SYSTem:ERRor?`` (``+0,"No error"``).

Both scopes have four analog inputs, short or long mnemonics in any case, ``;``-separated
units, and a SCPI error queue; a query that cannot be answered sends nothing and queues its
error (``-113,"Undefined header"``, ``-114,"Header suffix out of range"`` for CHANnel5,
``-221,"Settings conflict"``, ``-222,"Data out of range"``, ``-224,"Illegal parameter value"``).

The signal: ``source(n_samples) -> int16 [n_channels, n_samples]`` in counts of a 16-bit
ADC (``volts_per_count`` each; row k feeds CHANnel k+1, inputs without a row read 0 V). A
source returning a tuple (the flow simulator's ``traces``: block and truth) is used through its
first element. Without a source, :class:`TestPattern`: Gaussian pulses with Poisson arrivals
and Gaussian noise. Each trigger takes the next record from the source, so records are
consecutive pieces of the source's signal; a segmented acquisition also draws the re-arm gap
(``rearm_s``) between segments, so TTAG times are source times. The scope triggers as soon as
it is armed (it models the digitizer, not the trigger comparator); ``no_trigger = True`` makes
it wait until :meth:`fire`. Codes are quantised at acquisition with the channel's V/div and offset:
Rigol BYTE 8 bits (yincrement = V/div / 25), Keysight WORD 16 bits (yincrement = 8 V/div /
65536, so at the default 0.1 V/div a source count is exactly one code). The sample rate is
``sample_rate_hz`` whatever the timebase (timebase commands are accepted and stored).

Binary replies appear in the transcript as their block header and length: ``#9000250000<250000 bytes>``.
Fault injection as in the TED4015 twin: ``silent``, :meth:`unplug`, :meth:`push_error`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from exoacq.drivers.socket_sim import ScpiError as _Err, SocketSimulator, one_parameter as _one, \
    scpi_boolean as _boolean

MODELS = ("rigol-ds1000z", "keysight-infiniivision")
IDENTITY = {"rigol-ds1000z": "RIGOL TECHNOLOGIES,DS1104Z,DS1ZA000000001,00.04.04.SP4",
            "keysight-infiniivision": "KEYSIGHT TECHNOLOGIES,DSOX3034T,MY00000001,07.50.2021102830"}
NO_ERROR = {"rigol-ds1000z": '0,"No error"', "keysight-infiniivision": '+0,"No error"'}
ERRORS = {-102: "Syntax error", -108: "Parameter not allowed", -109: "Missing parameter",
          -113: "Undefined header", -114: "Header suffix out of range", -221: "Settings conflict",
          -222: "Data out of range", -224: "Illegal parameter value", -350: "Queue overflow"}
ANALOG_CHANNELS = 4
ERROR_QUEUE_LENGTH = 30
#: Rigol DS1000Z memory depths by the number of channels on (programming guide, :ACQuire:MDEPth).
RIGOL_DEPTHS = {1: (12_000, 120_000, 1_200_000, 12_000_000, 24_000_000),
                2: (6_000, 60_000, 600_000, 6_000_000, 12_000_000),
                3: (3_000, 30_000, 300_000, 3_000_000, 6_000_000)}
#: Points one Rigol RAW read returns at most, by format.
RIGOL_MAX_READ = {"BYTE": 250_000, "WORD": 125_000, "ASC": 15_625}
DEFAULT_VOLTS_PER_DIV = 0.1
#: Keysight segmented memory: re-arm time between segments (3000T data sheet: < 1 us).
REARM_S = 1e-6

Source = Callable[[int], Any]

# Long mnemonics; the short form is the upper-case part (SCPI-99, 6.2.1).
_MNEMONICS = ("WAVeform SOURce MODE FORMat STARt STOP PREamble DATA SINGle RUN TRIGger STATus "
              "ACQuire MDEPth SRATe SYSTem ERRor NEXT CHANnel DISPlay SCALe OFFSet TIMebase MAIN "
              "RANGe BYTeorder UNSigned POINts DIGitize OPERegister CONDition SEGMented COUNt "
              "INDex TTAG")
_SHORT = {}
for _word in _MNEMONICS.split():
    _SHORT[_word.upper()] = _SHORT["".join(c for c in _word if c.isupper())] = \
        "".join(c for c in _word if c.isupper())



class TestPattern:
    """Gaussian pulses on ``channels`` rows: Poisson arrivals (``rate_per_s``), height
    log-normal around ``height_counts`` on row 0 and a random fraction of it on the others,
    ``sigma_s`` wide, on ``baseline_counts`` with Gaussian noise ``noise_counts``."""

    __test__ = False  # not a pytest class

    def __init__(self, channels: int = 3, *, sample_rate_hz: float = 10e6, rate_per_s: float = 5_000.0,
                 height_counts: float = 8_000.0, sigma_s: float = 1e-6, baseline_counts: float = 100.0,
                 noise_counts: float = 20.0, seed: int | None = 1):
        self.channels, self.sample_rate_hz = channels, sample_rate_hz
        self.rate_per_s, self.height_counts, self.sigma_s = rate_per_s, height_counts, sigma_s
        self.baseline_counts, self.noise_counts = baseline_counts, noise_counts
        self._rng = np.random.default_rng(seed)

    def __call__(self, n_samples: int) -> np.ndarray:
        rng, rate = self._rng, self.sample_rate_hz
        trace = np.full((self.channels, n_samples), self.baseline_counts)
        trace += rng.normal(0.0, self.noise_counts, trace.shape)
        count = rng.poisson(self.rate_per_s * n_samples / rate)
        sigma = self.sigma_s * rate
        half = int(5 * sigma) + 1
        shape = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
        for centre in rng.integers(half, max(half + 1, n_samples - half), count):
            height = self.height_counts * rng.lognormal(0.0, 0.3)
            ratios = np.concatenate(([1.0], rng.uniform(0.0, 0.5, self.channels - 1)))
            trace[:, centre - half:centre + half + 1] += np.outer(height * ratios, shape)[:, :n_samples]
        return np.clip(np.rint(trace), -32768, 32767).astype(np.int16)


class OscilloscopeSimulator(SocketSimulator):
    """A scope on a loopback socket. ``with OscilloscopeSimulator(model=...) as sim: Oscilloscope(sim.address, ...)``."""

    name = "oscilloscope"

    def __init__(self, *, model: str = "rigol-ds1000z", source: Source | None = None,
                 sample_rate_hz: float = 10e6, channels: int = 3, volts_per_count: float | None = None,
                 rearm_s: float = REARM_S, seed: int | None = 1, realtime: bool = False):
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}")
        if not sample_rate_hz > 0:
            raise ValueError("sample_rate_hz must be positive")
        super().__init__()
        self.model = model
        self.rigol = model == "rigol-ds1000z"
        self.identity = IDENTITY[model]
        self.sample_rate_hz = float(sample_rate_hz)
        #: Volts of one source count (default: 16 bits over 8 divisions at 0.1 V/div).
        self.volts_per_count = volts_per_count or 8 * DEFAULT_VOLTS_PER_DIV / 65536
        self.rearm_s = float(rearm_s)
        #: True: a record takes its own duration (points / sample rate) to fill, as on a real scope.
        self.realtime = bool(realtime)
        self._source: Source = source or TestPattern(channels, sample_rate_hz=sample_rate_hz, seed=seed)
        self.no_trigger = False
        self._errors: list[str] = []
        self._display = [True] + [False] * (ANALOG_CHANNELS - 1)
        self._scale = [DEFAULT_VOLTS_PER_DIV] * ANALOG_CHANNELS
        self._offset = [0.0] * ANALOG_CHANNELS
        self._timebase = {"SCAL": 1e-6, "RANG": 1e-5}
        self._running = True
        self._armed = False
        self._just_armed = False  # the first status query after arming reports it armed
        self._done_at = 0.0       # monotonic time at which the record being acquired is complete
        self._mdepth: int | None = None  # Rigol AUTO until set
        self._wave = {"SOUR": 1, "MODE": "NORM", "FORM": "BYTE", "STAR": 1, "STOP": 1200,
                      "BYT": "LSBF", "UNS": True, "POIN": 1000, "PMOD": "NORM"}
        self._segmented = False
        self._segment_count = 2
        self._segment_index = 1
        # Last acquisition: per segment, codes [ANALOG_CHANNELS, n] and the trigger time tag in s.
        self._records: list[np.ndarray] = []
        self._ttags: list[float] = []
        self._scaling: list[tuple[float, float, float]] = []  # per channel (yincrement, yorigin, yreference)
        self._table = self._handlers()

    # -- public API ----------------------------------------------------------
    def set_source(self, source: Source) -> None:
        """Take the signal from ``source`` from the next trigger on (e.g. the instrument's flow simulation)."""
        with self._lock:
            self._source = source

    def fire(self) -> None:
        """A particle triggers the armed scope now (after ``no_trigger`` held it waiting)."""
        with self._lock:
            if self._armed:
                self._acquire()

    def push_error(self, code: int) -> None:
        """Queue an error as the scope does for an operation of its own."""
        with self._lock:
            self._push(code)

    def reply(self, line: str) -> list[str | bytes]:
        """The responses to one program message (called with the lock held)."""
        answers: list[str | bytes] = []
        for unit in line.split(";"):
            unit = unit.strip()
            if not unit:
                continue
            try:
                answer = self._execute(unit)
            except _Err as err:
                self._push(err.code)
                if err.code > -200:
                    break
                continue
            if answer is not None:
                answers.append(answer)
        if any(isinstance(a, bytes) for a in answers):
            return answers  # a block is its own response message
        return [";".join(answers)] if answers else []  # type: ignore[arg-type]

    # -- parsing ---------------------------------------------------------------
    def _execute(self, unit: str) -> str | bytes | None:
        header, _, argument = unit.partition(" ")
        params = [p.strip() for p in argument.split(",")] if argument.strip() else []
        upper = header.upper()
        if upper.startswith("*"):
            common = {"*IDN?": lambda: self.identity, "*CLS": self._errors.clear, "*OPC?": lambda: "1",
                      "*RST": self._reset}
            if upper not in common:
                raise _Err(-113)
            return common[upper]()
        query = upper.endswith("?")
        tokens, channel = [], None
        for token in upper.removesuffix("?").removeprefix(":").split(":"):
            stem = token.rstrip("0123456789")
            if stem != token:
                if _SHORT.get(stem) != "CHAN":
                    raise _Err(-113)
                channel = int(token[len(stem):])
                if not 1 <= channel <= ANALOG_CHANNELS:
                    raise _Err(-114)
            if stem not in _SHORT:
                raise _Err(-113)
            tokens.append(_SHORT[stem])
        key = ":".join(tokens) + ("?" if query else "")
        key = key.replace("SYST:ERR:NEXT", "SYST:ERR").replace("TIM:MAIN", "TIM")
        handler = self._table.get(key)
        if handler is None:
            raise _Err(-113)
        return handler(channel, params)

    def _handlers(self) -> dict[str, Callable[[int | None, list[str]], Any]]:
        w = self._wave

        def setter(name: str, convert: Callable[[str], Any]) -> Callable[[int | None, list[str]], None]:
            def handler(_: int | None, params: list[str]) -> None:
                w[name] = convert(_one(params))
            return handler

        out: dict[str, Callable[[int | None, list[str]], Any]] = {
            "SYST:ERR?": lambda c, p: self._errors.pop(0) if self._errors else NO_ERROR[self.model],
            "RUN": lambda c, p: self._run(True), "STOP": lambda c, p: self._run(False),
            "SING": lambda c, p: self._single(), "ACQ:SRAT?": lambda c, p: f"{self.sample_rate_hz:.6E}",
            "CHAN:DISP": lambda c, p: self._display.__setitem__(c - 1, _boolean(_one(p))),
            "CHAN:DISP?": lambda c, p: "1" if self._display[c - 1] else "0",
            "CHAN:SCAL": lambda c, p: self._scale.__setitem__(c - 1, _positive(_one(p))),
            "CHAN:SCAL?": lambda c, p: f"{self._scale[c - 1]:.6E}",
            "CHAN:OFFS": lambda c, p: self._offset.__setitem__(c - 1, _float(_one(p))),
            "CHAN:OFFS?": lambda c, p: f"{self._offset[c - 1]:.6E}",
            "WAV:SOUR": setter("SOUR", _source_channel),
            "WAV:SOUR?": lambda c, p: f"CHAN{w['SOUR']}",
            "WAV:FORM": setter("FORM", lambda t: _choice(t, ("BYTE", "WORD", "ASC"))),
            "WAV:FORM?": lambda c, p: w["FORM"],
            "WAV:PRE?": lambda c, p: self._preamble(),
            "WAV:DATA?": lambda c, p: self._data(),
        }
        if self.rigol:
            out.update({
                "TRIG:STAT?": lambda c, p: "WAIT" if self._busy() else ("RUN" if self._running else "STOP"),
                "ACQ:MDEP": lambda c, p: self._set_depth(_one(p)),
                "ACQ:MDEP?": lambda c, p: "AUTO" if self._mdepth is None else str(self._mdepth),
                "TIM:SCAL": lambda c, p: self._timebase.__setitem__("SCAL", _positive(_one(p))),
                "TIM:SCAL?": lambda c, p: f"{self._timebase['SCAL']:.6E}",
                "WAV:MODE": setter("MODE", lambda t: _choice(t, ("NORM", "MAX", "RAW"))),
                "WAV:STAR": setter("STAR", _index), "WAV:STOP": setter("STOP", _index),
            })
        else:
            out.update({
                "DIG": lambda c, p: self._single(), "TIM:RANG": lambda c, p: self._timebase.__setitem__(
                    "RANG", _positive(_one(p))),
                "OPER:COND?": lambda c, p: "8" if self._running or self._busy() else "0",
                "ACQ:MODE": lambda c, p: setattr(self, "_segmented", _choice(_one(p), ("RTIM", "SEGM")) == "SEGM"),
                "ACQ:MODE?": lambda c, p: "SEGM" if self._segmented else "RTIM",
                "ACQ:SEGM:COUN": lambda c, p: setattr(self, "_segment_count", _segments(_one(p))),
                "ACQ:SEGM:COUN?": lambda c, p: str(self._segment_count),
                "ACQ:SEGM:IND": lambda c, p: self._set_index(_one(p)),
                "ACQ:SEGM:IND?": lambda c, p: str(self._segment_index),
                "WAV:BYT": setter("BYT", lambda t: _choice(t, ("LSBF", "MSBF"))),
                "WAV:UNS": setter("UNS", _boolean), "WAV:POIN:MODE": setter("PMOD", lambda t: _choice(t, ("NORM", "MAX", "RAW"))),
                "WAV:POIN": setter("POIN", _index), "WAV:POIN?": lambda c, p: str(w["POIN"]),
                "WAV:SEGM:COUN?": lambda c, p: str(len(self._records) if self._segmented else 0),
                "WAV:SEGM:TTAG?": lambda c, p: f"{self._ttags[self._segment_index - 1]:.12E}"
                if self._segmented and self._records else "0.000000000000E+00",
            })
        return out

    # -- acquisition -----------------------------------------------------------
    def _run(self, running: bool) -> None:
        self._running, self._armed = running, False

    def _busy(self) -> bool:
        """Armed and waiting, or still recording; a scope reports this at least once after :SINGle,
        even when a trigger comes at once (the status query is answered before the acquisition ends)."""
        busy, self._just_armed = self._armed or self._just_armed, False
        return busy or time.monotonic() < self._done_at

    def _set_depth(self, text: str) -> None:
        on = min(3, sum(self._display))
        if text.upper() == "AUTO":
            self._mdepth = None
            return
        depth = int(_float(text))
        if depth not in RIGOL_DEPTHS[max(on, 1)]:
            raise _Err(-224)
        if not self._running:
            raise _Err(-221)  # the guide: settable in RUN state only
        self._mdepth = depth

    def _record_points(self) -> int:
        if self.rigol:
            on = max(1, min(3, sum(self._display)))
            return self._mdepth or RIGOL_DEPTHS[on][0]
        return int(self._wave["POIN"])

    def _single(self) -> None:
        self._running, self._armed, self._just_armed = False, True, True
        if not self.no_trigger:
            self._acquire()

    def _acquire(self) -> None:
        n = self._record_points()
        count = self._segment_count if (self._segmented and not self.rigol) else 1
        gap = int(round(self.rearm_s * self.sample_rate_hz))
        self._scaling = [self._channel_scaling(k) for k in range(ANALOG_CHANNELS)]
        self._records, self._ttags = [], []
        for index in range(count):
            volts = self._signal(n) * self.volts_per_count
            codes = np.empty((ANALOG_CHANNELS, n), dtype=np.int64)
            for k, (yinc, yorig, yref) in enumerate(self._scaling):
                zero = yref + (yorig if self.rigol else -yorig / yinc)
                codes[k] = np.rint(volts[k] / yinc + zero)
            top = 255 if self.rigol else 65535
            self._records.append(np.clip(codes, 0, top).astype(np.uint16))
            self._ttags.append(index * (n + gap) / self.sample_rate_hz)
            if index < count - 1 and gap:
                self._signal(gap)  # the re-arm dead time passes in the source too
        self._armed = False
        self._segment_index = 1
        # A record takes its own duration to fill: the scope reports it busy until then (real time).
        if self.realtime:
            self._done_at = time.monotonic() + count * (n + gap) / self.sample_rate_hz

    def _signal(self, n: int) -> np.ndarray:
        block = self._source(n)
        if isinstance(block, tuple):
            block = block[0]
        block = np.asarray(block)
        out = np.zeros((ANALOG_CHANNELS, n))
        rows = min(ANALOG_CHANNELS, block.shape[0])
        out[:rows] = block[:rows, :n]
        return out

    def _channel_scaling(self, k: int) -> tuple[float, float, float]:
        """(yincrement, yorigin, yreference) of channel k+1 in this dialect."""
        if self.rigol:
            yinc = self._scale[k] / 25.0
            return yinc, float(round(self._offset[k] / yinc)), 127.0
        return 8 * self._scale[k] / 65536, self._offset[k] + 0.0, 32768.0

    def _set_index(self, text: str) -> None:
        index = int(_float(text))
        if not 1 <= index <= max(1, len(self._records)):
            raise _Err(-222)
        self._segment_index = index

    def _record(self) -> np.ndarray:
        """The codes of the waveform source channel (Keysight: of the current segment)."""
        if not self._records or self._armed:
            raise _Err(-221)  # nothing acquired yet, or waiting for the trigger
        channel = self._wave["SOUR"]
        if not self._display[channel - 1]:
            raise _Err(-221)
        return self._records[0 if self.rigol else self._segment_index - 1][channel - 1]

    def _selection(self) -> np.ndarray:
        """The codes a DATA? returns now (Rigol RAW: STARt..STOP, at most 250,000 in BYTE)."""
        record = self._record()
        if not self.rigol:
            return record
        if self._wave["MODE"] != "RAW":  # the screen: 1200 points
            return record[:: max(1, record.size // 1200)][:1200]
        start, stop = self._wave["STAR"], min(self._wave["STOP"], record.size)
        if start > stop or stop - start + 1 > RIGOL_MAX_READ[self._wave["FORM"]]:
            raise _Err(-222)
        return record[start - 1:stop]

    def _preamble(self) -> str:
        """Points: the whole record in Rigol RAW mode and for Keysight, else the screen's."""
        record = self._record()
        count = record.size if (not self.rigol or self._wave["MODE"] == "RAW") else self._selection().size
        yinc, yorig, yref = self._scaling[self._wave["SOUR"] - 1]
        form = {"BYTE": 0, "WORD": 1, "ASC": 2 if self.rigol else 4}[self._wave["FORM"]]
        kind = (2 if self._wave["MODE"] == "RAW" else 0) if self.rigol else 0
        xinc = 1.0 / self.sample_rate_hz
        return (f"{form},{kind},{count},1,{xinc:.6E},{-count / 2 * xinc:.6E},0,"
                f"{yinc:.10E},{yorig:.6E},{yref:g}")

    def _data(self) -> bytes:
        codes = self._selection()
        form = self._wave["FORM"]
        if form == "ASC":
            yinc, yorig, yref = self._scaling[self._wave["SOUR"] - 1]
            volts = (codes - yorig - yref) * yinc if self.rigol else (codes - yref) * yinc + yorig
            payload = ",".join(f"{v:.6E}" for v in volts).encode("ascii")
        elif form == "BYTE":
            payload = (codes >> (0 if self.rigol else 8)).astype(np.uint8).tobytes()
        else:
            words = codes.astype(np.int32) if self._wave["UNS"] or self.rigol else codes.astype(np.int32) - 32768
            order = ">" if self._wave["BYT"] == "MSBF" else "<"
            payload = words.astype(f"{order}{'u2' if self._wave['UNS'] or self.rigol else 'i2'}").tobytes()
        digits = 9 if self.rigol else 8
        return b"#" + str(digits).encode() + f"{len(payload):0{digits}d}".encode() + payload

    def _reset(self) -> None:
        self._display = [True] + [False] * (ANALOG_CHANNELS - 1)
        self._scale = [DEFAULT_VOLTS_PER_DIV] * ANALOG_CHANNELS
        self._offset = [0.0] * ANALOG_CHANNELS
        self._running, self._armed, self._segmented, self._mdepth = True, False, False, None

    def _push(self, code: int) -> None:
        if len(self._errors) >= ERROR_QUEUE_LENGTH:
            self._errors[-1] = f'-350,"{ERRORS[-350]}"'
        else:
            self._errors.append(f'{code:+d},"{ERRORS.get(code, "Unknown error")}"')



# -- argument parsing ----------------------------------------------------------------

def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _Err(-224) from None


def _positive(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise _Err(-222)
    return value


def _index(text: str) -> int:
    value = _float(text)
    if value != int(value) or value < 1:
        raise _Err(-222)
    return int(value)


def _segments(text: str) -> int:
    value = _index(text)
    if not 2 <= value <= 1000:
        raise _Err(-222)
    return value



def _choice(text: str, allowed: tuple[str, ...]) -> str:
    """A keyword argument in short or long form (RAW, NORMal, SEGMented, LSBFirst...)."""
    word = text.upper()
    for short in allowed:
        if word.startswith(short) and len(word) <= len(short) + 9:
            return short
    raise _Err(-224)


def _source_channel(text: str) -> int:
    word = text.upper()
    stem = word.rstrip("0123456789")
    if stem not in ("CHAN", "CHANNEL") or stem == word:
        raise _Err(-224)
    channel = int(word[len(stem):])
    if not 1 <= channel <= ANALOG_CHANNELS:
        raise _Err(-224)
    return channel
