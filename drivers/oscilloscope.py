"""A digitizing oscilloscope over VISA as the digitizer of a nano flow cytometer: detector
traces (side scatter, fluorescence) read as IEEE 488.2 binary blocks.

Two command sets, chosen by ``model``:

- ``"rigol-ds1000z"``: Rigol "MSO1000Z/DS1000Z Series Programming Guide" (2015). Repeated
  single shots (``:SINGle``, then ``:TRIGger:STATus?`` until ``STOP``) of ``memory_depth``
  points (``:ACQuire:MDEPth``, set in RUN state; 3 or 4 channels on allow 3k, 30k, 300k, 3M,
  6M), each channel read in RAW mode, BYTE format, in pages of at most 250,000 points
  (``:WAVeform:STARt``/``:STOP``, the guide's limit for BYTE), scaled by ``:WAVeform:PREamble?``:
  V = (code - yorigin - yreference) x yincrement. The guide's formula subtracts yorigin (in
  codes); it is not Keysight's.
- ``"keysight-infiniivision"``: Keysight "InfiniiVision 3000T X-Series Oscilloscopes
  Programmer's Guide" (the 2000X/4000X guides have the same :WAVeform and :ACQuire
  subsystems). ``:WAVeform:FORMat WORD``, ``:BYTeorder LSBFirst``, ``:UNSigned ON``,
  ``:POINts:MODE RAW``: 16-bit codes, V = (code - yreference) x yincrement + yorigin.
  Single shots (``:SINGle``, then ``:OPERegister:CONDition?`` until its Run bit 3 clears;
  ``:DIGitize`` would block the session until a trigger and leave no way to return None),
  optionally into segmented memory (``:ACQuire:MODE SEGMented``, ``:ACQuire:SEGMented:COUNt``):
  each segment (``:ACQuire:SEGMented:INDex i``) becomes its own block, timed by
  ``:WAVeform:SEGMented:TTAG?``.

Just after ``:SINGle`` a scope may still report the stopped state it was in, so a shot counts
as done when the status reads stopped after it read armed, or ``ARM_SETTLE_S`` after arming.

Every block is int16 codes minus the preamble's yreference (0 = the scope's reference level,
not the detector's baseline), with the per-channel ``volts_per_count`` and ``offset_v`` that
turn them into volts. Single shots are not contiguous (the scope re-arms and waits for a
trigger between them): ``start_s`` is when the shot was armed (``time.monotonic`` since
:meth:`Oscilloscope.start`), plus the segment's TTAG for segments.

Set commands at connect are each followed by ``:SYSTem:ERRor?`` (as drivers/ted4015.py); a
refused one raises ScopeError with the scope's text. A query the scope does not answer is
explained from the error queue. The acquisition loop does not read the error queue after each
command (it would double the exchanges); a refused query there still names the error.
"""
from __future__ import annotations

import math
import os
import re
import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np
import pyvisa
from pydantic import Field, field_validator

from exoacq.devices import TraceBlock
from exoacq.errors import DeviceError
from exoacq.registry import Driver, DriverOptions

DEVICE = "oscilloscope"
TERMINATOR = "\n"
MODELS = ("rigol-ds1000z", "keysight-infiniivision")
#: The maker *IDN? names, by model.
MAKERS = {"rigol-ds1000z": ("RIGOL",), "keysight-infiniivision": ("KEYSIGHT", "AGILENT")}
#: Rigol: points per RAW read in BYTE format (programming guide, :WAVeform:DATA?).
RIGOL_POINTS_PER_READ = 250_000
MAX_ERRORS = 32
_ERROR_REPLY = re.compile(r'([+-]?\d+)\s*,\s*"(.*)"')
#: How often a waiting read asks whether the shot has triggered.
POLL_S = 0.002
#: A stopped status this long after :SINGle means done even if "armed" was never seen.
ARM_SETTLE_S = 0.1


class ScopeError(DeviceError):
    """The scope queued a SCPI error; ``scpi_code`` is its number."""

    def __init__(self, message: str, scpi_code: int):
        super().__init__(message)
        self.scpi_code = scpi_code


class NoReply(DeviceError):
    """The scope did not answer within the timeout."""


def _reason(exc: BaseException) -> str:
    number = getattr(exc, "errno", None)
    if isinstance(number, int) and number > 0:
        return os.strerror(number)
    if isinstance(exc, pyvisa.errors.VisaIOError):
        return f"{exc.abbreviation}: {exc.description}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def scale(preamble: str, *, rigol: bool, where: str) -> tuple[int, float, float, float]:
    """``:WAVeform:PREamble?`` -> (points, volts_per_count, offset_v, yreference) such that
    V = (code - yreference) x volts_per_count + offset_v in either dialect."""
    fields = preamble.split(",")
    try:
        points, yinc, yorig, yref = int(fields[2]), float(fields[7]), float(fields[8]), float(fields[9])
    except (ValueError, IndexError):
        raise DeviceError(f"{DEVICE}: unreadable preamble {preamble!r} {where} "
                          "(expected 10 comma-separated fields)") from None
    if len(fields) != 10 or not (yinc > 0 and math.isfinite(yorig) and math.isfinite(yref)):
        raise DeviceError(f"{DEVICE}: unreadable preamble {preamble!r} {where} "
                          "(expected 10 fields, yincrement > 0)")
    # Rigol: V = (code - yorigin - yreference) yinc; Keysight: V = (code - yreference) yinc + yorigin.
    return points, yinc, (-yorig * yinc if rigol else yorig) + 0.0, yref


class Oscilloscope:
    """A Rigol DS1000Z or Keysight InfiniiVision as a Digitizer (design.md): ``channels`` maps
    detector names to scope inputs (``{"SSC": 1, "FL1": 2, "FL2": 3}``). ``history`` keeps the
    last text lines exchanged."""

    def __init__(self, resource: str, *, model: str, channels: dict[str, int], memory_depth: int = 30_000,
                 sample_rate_hz: float | None = None, volts_per_division: float | dict[str, float] | None = None,
                 segments: int = 1, timeout_s: float = 2.0, visa_library: str = "@py",
                 clock: Callable[[], float] = time.monotonic):
        if model not in MODELS:
            raise DeviceError(f"{DEVICE}: model {model!r} is not one of {MODELS}")
        self.resource, self.model, self.rigol = resource, model, model == "rigol-ds1000z"
        self.channels = list(channels)
        self._inputs = [int(channels[name]) for name in self.channels]
        self.memory_depth = int(memory_depth)
        self.requested_sample_rate_hz = sample_rate_hz
        self.sample_rate_hz = math.nan  # read from the scope at connect
        if isinstance(volts_per_division, dict):
            self._vdiv = {name: volts_per_division.get(name) for name in self.channels}
        else:
            self._vdiv = {name: volts_per_division for name in self.channels}
        self.segments = int(segments)
        if self.segments > 1 and self.rigol:
            raise DeviceError(f"{DEVICE}: segmented memory is a Keysight option here, not {model}")
        self.timeout_s, self.visa_library, self._clock = timeout_s, visa_library, clock
        self._manager: Any = None
        self._instrument: Any = None
        self._lock = threading.RLock()
        self._identity = ""
        self._t0: float | None = None
        self._armed_at: float | None = None
        self._seen_busy = False
        self._pending: deque[TraceBlock] = deque()
        self.history: deque[tuple[str, str]] = deque(maxlen=256)

    # -- connection ---------------------------------------------------------
    def connect(self) -> None:
        """Open the session, check ``*IDN?``, ``*CLS``, switch the channels on (and their V/div),
        set the record length (and timebase, segments), the waveform format, read the sample rate."""
        if self._instrument is not None:
            return
        try:
            manager = pyvisa.ResourceManager(self.visa_library)
        except Exception as exc:
            raise DeviceError(f"{DEVICE}: cannot load the VISA library {self.visa_library!r} ({_reason(exc)})") from None
        milliseconds = max(1, round(self.timeout_s * 1000))
        try:
            instrument = manager.open_resource(self.resource, read_termination=TERMINATOR,
                                               write_termination=TERMINATOR, timeout=milliseconds,
                                               open_timeout=milliseconds)
        except Exception as exc:
            _close_quietly(manager)
            raise DeviceError(f"{DEVICE}: cannot open VISA resource {self.resource} ({_reason(exc)})") from None
        with self._lock:
            self._manager, self._instrument = manager, instrument
        try:
            self._identity = self._query("*IDN?")
            if not self._identity.upper().startswith(MAKERS[self.model]):
                raise DeviceError(f"{DEVICE}: {self.resource} is not a {self.model} "
                                  f"(*IDN? answered {self._identity!r})")
            self.write("*CLS")
            self._configure()
            self.sample_rate_hz = self._number(":ACQ:SRAT?" if self.rigol else ":ACQuire:SRATe?")
        except BaseException:
            self._release()
            raise

    def _configure(self) -> None:
        chan = ":CHAN{}:" if self.rigol else ":CHANnel{}:"
        for name, number in zip(self.channels, self._inputs):
            self.write(chan.format(number) + ("DISP ON" if self.rigol else "DISPlay ON"))
            if self._vdiv[name] is not None:
                self.write(chan.format(number) + ("SCAL " if self.rigol else "SCALe ") + f"{self._vdiv[name]:g}")
        depth = self.memory_depth
        if self.rigol:
            self.write(":RUN")  # the memory depth is set in RUN state only
            self.write(f":ACQ:MDEP {depth}")
            if self.requested_sample_rate_hz:  # 12 divisions of record
                self.write(f":TIM:SCAL {depth / (12 * self.requested_sample_rate_hz):.6g}")
            for command in (":STOP", ":WAV:MODE RAW", ":WAV:FORM BYTE"):
                self.write(command)
            return
        self.write(":STOP")
        if self.requested_sample_rate_hz:  # 10 divisions of record
            self.write(f":TIMebase:RANGe {depth / self.requested_sample_rate_hz:.6g}")
        if self.segments > 1:
            self.write(":ACQuire:MODE SEGMented")
            self.write(f":ACQuire:SEGMented:COUNt {self.segments}")
        else:
            self.write(":ACQuire:MODE RTIMe")
        for command in (":WAVeform:FORMat WORD", ":WAVeform:BYTeorder LSBFirst", ":WAVeform:UNSigned ON",
                        ":WAVeform:POINts:MODE RAW", f":WAVeform:POINts {depth}"):
            self.write(command)

    def close(self) -> None:
        """Stop the acquisition (best effort) and release the session. Idempotent; never raises."""
        if self._instrument is not None:
            try:
                self._send(":STOP")
            except DeviceError:
                pass
        self._release()

    def describe(self) -> dict[str, Any]:
        parts = [part.strip() for part in self._identity.split(",")]
        return {"model": parts[1] if len(parts) > 1 else self._identity,
                "serial_number": parts[2] if len(parts) > 2 else "", "firmware": parts[3] if len(parts) > 3 else "",
                "resource": self.resource, "command_set": self.model,
                "channels": dict(zip(self.channels, self._inputs)), "memory_depth": self.memory_depth,
                "segments": self.segments, "sample_rate_hz": self.sample_rate_hz,
                "requested_sample_rate_hz": self.requested_sample_rate_hz}

    # -- Digitizer -----------------------------------------------------------
    def start(self) -> None:
        """Start timing blocks from now; the first read arms the first shot."""
        self._session()
        self._t0, self._armed_at = self._clock(), None
        self._pending.clear()

    def stop(self) -> None:
        """``:STOP``; blocks not yet read are dropped."""
        self._t0, self._armed_at = None, None
        self._pending.clear()
        self.write(":STOP")

    def read(self, timeout_s: float = 1.0) -> TraceBlock | None:
        """The next block; None when the armed shot did not trigger within ``timeout_s``
        (it stays armed: the next read waits on)."""
        if self._t0 is None:
            raise DeviceError(f"{DEVICE}: read() before start() on {self.resource}")
        if self._pending:
            return self._pending.popleft()
        with self._lock:
            if self._armed_at is None:
                self._send(":SING" if self.rigol else ":SINGle")
                self._armed_at, self._seen_busy = self._clock() - self._t0, False
            deadline = self._clock() + timeout_s
            while not self._triggered():
                if self._clock() >= deadline:
                    return None
                time.sleep(POLL_S)
            armed_at, self._armed_at = self._armed_at, None
            self._pending.extend(self._fetch_rigol(armed_at) if self.rigol else self._fetch_keysight(armed_at))
        return self._pending.popleft() if self._pending else None

    def _triggered(self) -> bool:
        """The armed shot is complete: the scope reports stopped after it reported armed (just
        after :SINGle it may still report the stop it was in), or ARM_SETTLE_S after arming."""
        if self.rigol:
            busy = self._query(":TRIG:STAT?").upper() != "STOP"
        else:
            busy = bool(int(self._number(":OPERegister:CONDition?")) & 8)  # bit 3: Run
        if busy:
            self._seen_busy = True
            return False
        assert self._t0 is not None and self._armed_at is not None
        return self._seen_busy or self._clock() - self._t0 - self._armed_at >= ARM_SETTLE_S

    def _fetch_rigol(self, armed_at: float) -> list[TraceBlock]:
        n = self.memory_depth
        samples = np.empty((len(self._inputs), n), dtype=np.int16)
        gains, offsets = np.empty(len(self._inputs)), np.empty(len(self._inputs))
        for k, number in enumerate(self._inputs):
            self._send(f":WAV:SOUR CHAN{number}")
            # The record length is memory_depth (each block's length is checked): whether the
            # preamble's points count the record or the STARt..STOP window differs by firmware.
            _, gains[k], offsets[k], yref = scale(self._query(":WAV:PRE?"), rigol=True,
                                                  where=f"for CHAN{number} on {self.resource}")
            for first in range(1, n + 1, RIGOL_POINTS_PER_READ):  # pages of at most 250,000 points
                last = min(first + RIGOL_POINTS_PER_READ - 1, n)
                self._send(f":WAV:STAR {first}")
                self._send(f":WAV:STOP {last}")
                codes = self._block(":WAV:DATA?", "B", last - first + 1)
                samples[k, first - 1:last] = codes.astype(np.int16) - np.int16(round(yref))
        return [TraceBlock(samples, gains, offsets, armed_at, False)]

    def _fetch_keysight(self, armed_at: float) -> list[TraceBlock]:
        count = 1
        if self.segments > 1:
            count = int(self._number(":WAVeform:SEGMented:COUNt?"))
        blocks = []
        scaling: dict[int, tuple[float, float, float]] = {}
        for index in range(1, count + 1):
            ttag_s = 0.0
            if self.segments > 1:
                self._send(f":ACQuire:SEGMented:INDex {index}")
                ttag_s = self._number(":WAVeform:SEGMented:TTAG?")
            rows = []
            for number in self._inputs:
                self._send(f":WAVeform:SOURce CHANnel{number}")
                if number not in scaling:
                    points, gain, offset, yref = scale(self._query(":WAVeform:PREamble?"), rigol=False,
                                                       where=f"for CHANnel{number} on {self.resource}")
                    scaling[number] = (gain, offset, yref)
                codes = self._block(":WAVeform:DATA?", "H", None)
                rows.append((codes.astype(np.int32) - int(round(scaling[number][2]))).astype(np.int16))
            n = min(row.size for row in rows)
            gains = np.array([scaling[number][0] for number in self._inputs])
            offsets = np.array([scaling[number][1] for number in self._inputs])
            blocks.append(TraceBlock(np.stack([row[:n] for row in rows]), gains, offsets, armed_at + ttag_s, False))
        return blocks

    # -- raw access (service and tests) --------------------------------------
    def write(self, command: str) -> None:
        """Send a command, then ``:SYSTem:ERRor?``; a queued error raises ScopeError."""
        if "?" in command:
            raise DeviceError(f"{DEVICE}: {command!r} is a query; send it with ask()")
        with self._lock:
            self._send(command)
            self._check(command)

    def ask(self, query: str) -> str:
        """Send a query and return its reply (a refused one: ScopeError with the scope's text)."""
        return self._query(query)

    def errors(self) -> list[str]:
        """Drain the error queue, oldest first."""
        with self._lock:
            return [text for _, text in self._drain_errors()]

    # -- exchange ------------------------------------------------------------
    def _number(self, query: str) -> float:
        reply = self._query(query)
        try:
            value = float(reply)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DeviceError(f"{DEVICE}: unreadable reply {reply!r} to {query!r} on {self.resource}")
        return value

    def _check(self, command: str) -> None:
        errors = self._drain_errors()
        if errors:
            text = "; ".join(message for _, message in errors)
            raise ScopeError(f"{DEVICE}: {command!r} refused by {self.resource}: {text}", errors[0][0])

    def _drain_errors(self) -> list[tuple[int, str]]:
        errors: list[tuple[int, str]] = []
        for _ in range(MAX_ERRORS):
            reply = self._exchange(":SYST:ERR?" if self.rigol else ":SYSTem:ERRor?")
            match = _ERROR_REPLY.fullmatch(reply.strip())
            if match is None:
                raise DeviceError(f"{DEVICE}: unreadable reply {reply!r} to the error query on {self.resource}")
            if int(match.group(1)) == 0:
                return errors
            errors.append((int(match.group(1)), reply.strip()))
        raise DeviceError(f"{DEVICE}: the error queue of {self.resource} does not empty (last: {errors[-1][1]})")

    def _send(self, command: str) -> None:
        with self._lock:
            instrument = self._session()
            try:
                instrument.write(command)
            except Exception as exc:
                raise self._io_error(command, exc) from None
            self.history.append(("tx", command))

    def _exchange(self, query: str) -> str:
        with self._lock:
            self._send(query)
            try:
                reply = self._session().read()
            except Exception as exc:
                raise self._io_error(query, exc) from None
            self.history.append(("rx", reply))
            return reply.strip()

    def _query(self, query: str) -> str:
        """A query; when it times out, the error queue says why (ScopeError) if the scope answers that."""
        with self._lock:
            try:
                return self._exchange(query)
            except NoReply as no_reply:
                self._explain(query, no_reply)
                raise

    def _explain(self, query: str, no_reply: NoReply) -> None:
        try:
            self._check(query)
        except ScopeError:
            raise
        except DeviceError:
            raise no_reply from None

    def _block(self, query: str, datatype: str, points: int | None) -> np.ndarray:
        """An IEEE 488.2 definite-length block of unsigned codes ('B' bytes, 'H' LSB-first words)."""
        with self._lock:
            instrument = self._session()
            self.history.append(("tx", query))
            try:
                codes = instrument.query_binary_values(query, datatype=datatype, is_big_endian=False,
                                                       container=np.array, header_fmt="ieee")
            except Exception as exc:
                error = self._io_error(query, exc)
                if isinstance(error, NoReply):
                    self._explain(query, error)
                raise error from None
        if points is not None and codes.size != points:
            raise DeviceError(f"{DEVICE}: {query!r} returned {codes.size} points, expected {points}, "
                              f"on {self.resource}")
        return codes

    def _session(self) -> Any:
        if self._instrument is None:
            raise DeviceError(f"{DEVICE}: not connected to {self.resource} (call connect() first)")
        return self._instrument

    def _io_error(self, command: str, exc: BaseException) -> DeviceError:
        if isinstance(exc, pyvisa.errors.VisaIOError) and exc.error_code == pyvisa.constants.StatusCode.error_timeout:
            return NoReply(f"{DEVICE}: did not answer {command!r} within {self.timeout_s:g} s on {self.resource}")
        if isinstance(exc, UnicodeDecodeError):
            return DeviceError(f"{DEVICE}: garbled reply to {command!r} on {self.resource} (not ASCII)")
        if isinstance(exc, pyvisa.errors.InvalidSession):
            return DeviceError(f"{DEVICE}: not connected to {self.resource} (session closed)")
        if isinstance(exc, ValueError):  # pyvisa's block parser: no '#', bad length
            return DeviceError(f"{DEVICE}: malformed binary block in the reply to {command!r} on "
                               f"{self.resource} ({_reason(exc)})")
        return DeviceError(f"{DEVICE}: VISA I/O failed on {self.resource} ({_reason(exc)})")

    def _release(self) -> None:
        with self._lock:
            instrument, self._instrument = self._instrument, None
            manager, self._manager = self._manager, None
            self._t0 = self._armed_at = None
        _close_quietly(instrument)
        _close_quietly(manager)


def _close_quietly(closable: Any) -> None:
    if closable is None:
        return
    try:
        closable.close()
    except Exception:
        pass


# -- registry declaration --------------------------------------------------------
class OscilloscopeOptions(DriverOptions):
    #: VISA resource string (USB0::0x1AB1::0x04CE::<serial>::INSTR for a DS1000Z, TCPIP0::<host>::INSTR...).
    resource: str = "USB0::0x1AB1::0x04CE::DS1ZA000000000::INSTR"
    model: str = "rigol-ds1000z"
    #: Detector channel name -> scope input (1-4).
    channels: dict[str, int] = {"SSC": 1, "FL1": 2, "FL2": 3}
    #: Points per record (Rigol: one of the depths allowed for the channels on).
    memory_depth: int = Field(30_000, ge=100, le=24_000_000)
    #: Requested sample rate; the timebase is set for it and the scope's actual rate is read back.
    sample_rate_hz: float | None = Field(None, gt=0, le=5e9)
    volts_per_division: float | None = Field(None, gt=0, le=100)
    #: Keysight segmented memory: segments per acquisition (1: off).
    segments: int = Field(1, ge=1, le=1000)
    timeout_s: float = Field(2.0, gt=0, le=60)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"model must be one of {MODELS}")
        return value

    @field_validator("channels")
    @classmethod
    def _inputs(cls, value: dict[str, int]) -> dict[str, int]:
        if not value:
            raise ValueError("channels: at least one detector channel")
        if any(not 1 <= number <= 4 for number in value.values()) or len(set(value.values())) != len(value):
            raise ValueError("channels: each detector on its own scope input 1-4")
        return value


def _open(options: OscilloscopeOptions, address: str | None, context: dict[str, Any]) -> Oscilloscope:
    """The driver; when simulated and the instrument's simulation offers a waveform source
    (``context["flow_source"]``, a callable n_samples -> int16 [channels, n]), the twin listening
    at ``address`` (found in ``context["simulators"]``) takes its signal from it."""
    source = context.get("flow_source")
    if address is not None and callable(source):
        for simulator in context.get("simulators", {}).values():
            if getattr(simulator, "address", None) == address and hasattr(simulator, "set_source"):
                simulator.set_source(source)
    return Oscilloscope(address or options.resource, model=options.model, channels=options.channels,
                        memory_depth=options.memory_depth, sample_rate_hz=options.sample_rate_hz,
                        volts_per_division=options.volts_per_division, segments=options.segments,
                        timeout_s=options.timeout_s)


def _simulator(options: OscilloscopeOptions) -> Any:
    from exoacq.drivers.oscilloscope_sim import OscilloscopeSimulator  # loaded when simulated
    return OscilloscopeSimulator(model=options.model, sample_rate_hz=options.sample_rate_hz or 10e6,
                                 channels=max(options.channels.values()), realtime=True)


DRIVER = Driver(name="oscilloscope", kind="digitizer", options=OscilloscopeOptions, open=_open,
                simulator=_simulator,
                description="digitizing oscilloscope for detector traces (Rigol DS1000Z or Keysight "
                            "InfiniiVision SCPI over VISA: preamble, IEEE 488.2 blocks, segmented memory)")
