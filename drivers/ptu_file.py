"""A PicoQuant PTU (T2) file played back as a photon counter (driver ``ptu-file``).

The photons of one detector channel of a T2-mode PTU file (read by
:func:`exoacq.dls.ptu.read_ptu`: PicoHarp, HydraHarp, TimeHarp 260, MultiHarp records) are
delivered through the PhotonCounter Protocol, so that the live DLS pipeline (the software
correlator, the live curves, the analysis) runs on recorded data.

Timing, ``realtime = True`` (the default): the file's clock runs from ``start()``; a read
returns the photons whose time has come since the last read and waits up to ``timeout_s``
for one. ``realtime = False``: each read returns the next ``chunk_s`` of the file's time at
once, as fast as read. Ticks are the file's, in its own resolution
(``MeasDesc_GlobalResolution``), counted from ``start()``: the first ``start()`` delivers
the file's ticks unchanged.

``stop()`` pauses the playback (the photons up to then stay readable); a new ``start()``
continues where it stopped, its ticks counted from 0 again (as a detector would: the next
sub-run sees the next photons). ``rewind()`` goes back to the beginning of the file.

End of file: once every photon has been delivered, ``finished`` becomes True and ``read``
returns an empty array at once (no DeviceError: the end of a recording is not a fault; a
consumer that wants more photons than the file holds checks ``finished``). With
``loop = True`` the file plays again and again instead, its ticks continuing (each pass
shifted by the file's duration) and ``finished`` never becomes True.

A PTU file does not record the optics: ``angle_deg`` and ``wavelength_nm`` are options.
"""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import Field

from exoacq.devices import Setting
from exoacq.errors import DeviceError, ExoacqError
from exoacq.registry import Driver, DriverOptions

NAME = "ptu-file"


class PTUFilePhotonCounter:
    """A PTU file's photons as a PhotonCounter (exoacq.devices)."""

    driver = NAME
    #: Nothing of a recording can be changed while previewing.
    settings: dict[str, Setting] = {}

    def __init__(self, path: str | Path, *, angle_deg: float = 90.0, wavelength_nm: float = 633.0,
                 channel: int | None = 0, realtime: bool = True, chunk_s: float = 0.1, loop: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        if not (isinstance(angle_deg, (int, float)) and 0 < angle_deg < 180):
            raise ValueError(f"angle_deg = {angle_deg!r}: must be a scattering angle in (0, 180) degrees")
        if not (isinstance(wavelength_nm, (int, float)) and 100 <= wavelength_nm <= 3000):
            raise ValueError(f"wavelength_nm = {wavelength_nm!r}: must be a laser wavelength in [100, 3000] nm")
        if not (isinstance(chunk_s, (int, float)) and math.isfinite(chunk_s) and chunk_s > 0):
            raise ValueError(f"chunk_s = {chunk_s!r}: must be > 0 s")
        self.path = Path(path)
        self.angle_deg = float(angle_deg)
        self.wavelength_nm = float(wavelength_nm)
        self.channel = channel
        self.realtime, self.loop = bool(realtime), bool(loop)
        self.chunk_s = float(chunk_s)
        #: Known after connect(): the file's tick.
        self.resolution_s = 0.0
        self._clock = clock
        self._lock = threading.Lock()
        self._ticks: np.ndarray | None = None
        self._period = 1          # ticks of one pass of the file (its duration)
        self._record_type = ""
        self._position = 0        # playback position: file ticks (extended over passes) already delivered
        self._origin = 0          # position at start()
        self._t0 = 0.0
        self._running = False
        self._stop_position: int | None = None

    # -- connection ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Read the file (all its photons are held in memory)."""
        from exoacq.dls.ptu import read_ptu

        if not self.path.is_file():
            raise DeviceError(f"{NAME}: no file {self.path}")
        try:
            record = read_ptu(self.path, channel=self.channel)
        except ExoacqError as exc:
            raise DeviceError(f"{NAME}: cannot play {self.path}: {exc}") from None
        if record.ticks.size == 0:
            present = self._channels_present()
            raise DeviceError(f"{NAME}: {self.path} holds no photon on channel {self.channel} "
                              f"(channels with photons: {present or 'none'})")
        self.resolution_s = float(record.resolution_s)
        self._ticks = np.ascontiguousarray(record.ticks, dtype=np.int64)
        last = int(self._ticks[-1]) + 1
        duration = record.duration_s
        self._period = max(last, int(round(duration / self.resolution_s)) if duration else 0)
        self._record_type = record.record_type
        self._position = self._origin = 0

    def _channels_present(self) -> str:
        from exoacq.dls.ptu import read_ptu
        try:
            return ", ".join(str(c) for c in np.unique(read_ptu(self.path).channels))
        except ExoacqError:
            return ""

    def close(self) -> None:
        """Stop the playback and release the photons. Idempotent, never raises."""
        with self._lock:
            self._running = False
            self._ticks = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"driver": NAME, "path": str(self.path), "angle_deg": self.angle_deg,
                                "wavelength_nm": self.wavelength_nm, "channel": self.channel,
                                "realtime": self.realtime, "loop": self.loop}
        if self._ticks is not None:
            info.update({"record_type": self._record_type, "resolution_s": self.resolution_s,
                         "photons": int(self._ticks.size), "duration_s": self._period * self.resolution_s,
                         "count_rate_hz": self._ticks.size / (self._period * self.resolution_s)})
        return info

    def _photons(self) -> np.ndarray:
        if self._ticks is None:
            raise DeviceError(f"{NAME}: {self.path} is not open (call connect() first)")
        return self._ticks

    # -- playback ------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True once every photon of the file has been delivered (never with ``loop``)."""
        return (self._ticks is not None and not self.loop
                and self._position > int(self._ticks[-1]))

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        """Start (or resume) the playback; ticks count from 0 at this position of the file."""
        with self._lock:
            self._photons()
            self._origin = self._position
            self._stop_position = None
            self._running = True
            self._t0 = self._clock()

    def stop(self) -> None:
        """Pause the playback; the photons that came before now stay readable."""
        with self._lock:
            if self._running:
                self._stop_position = self._target() if self.realtime else self._position
                self._running = False

    def rewind(self) -> None:
        """Back to the beginning of the file (while stopped)."""
        with self._lock:
            if self._running:
                raise DeviceError(f"{NAME}: cannot rewind {self.path} while playing: stop first")
            self._position = self._origin = 0
            self._stop_position = None

    def _target(self) -> int:
        if self.realtime:
            return self._origin + int((self._clock() - self._t0) / self.resolution_s)
        return self._position + max(1, int(round(self.chunk_s / self.resolution_s)))

    def _between(self, begin: int, end: int) -> np.ndarray:
        """The photons at file positions [begin, end), passes of the file repeated when looping."""
        ticks = self._photons()
        if not self.loop:
            a, b = np.searchsorted(ticks, [begin, end])
            return ticks[a:b]
        parts = []
        for k in range(begin // self._period, (end - 1) // self._period + 1):
            shift = k * self._period
            a, b = np.searchsorted(ticks, [begin - shift, end - shift])
            parts.append(ticks[a:b] + shift)
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def read(self, timeout_s: float = 0.5) -> np.ndarray:
        """The photons that came since the last read (int64 ticks since start(), ascending); in real
        time waits up to ``timeout_s`` for one; an empty array at once when stopped or finished."""
        deadline = self._clock() + max(0.0, float(timeout_s))
        while True:
            with self._lock:
                self._photons()
                playing = self._running and not self.finished
                if self._running:
                    target = self._target()
                else:
                    target = self._stop_position if self._stop_position is not None else self._position
                if not self.loop:
                    target = min(target, int(self._photons()[-1]) + 1)
                out = np.empty(0, np.int64)
                if target > self._position:
                    out = self._between(self._position, target) - self._origin
                    self._position = target
            now = self._clock()
            if out.size or not playing or not self.realtime or now >= deadline or self.finished:
                return out
            time.sleep(min(deadline - now, 0.005))


# -- as the daemon finds it (exoacq.registry) ------------------------------------------------------
class PTUFileOptions(DriverOptions):
    #: The recording: a T2-mode PTU file.
    path: str
    #: The optics the file was recorded with (a PTU file does not say).
    angle_deg: float = Field(90.0, gt=0.0, lt=180.0)
    wavelength_nm: float = Field(633.0, ge=100.0, le=3000.0)
    #: Detector input (0: the first); None: all inputs merged.
    channel: int | None = Field(0, ge=-1, le=63)
    #: Photons at the file's own pace; false: each read returns the next chunk_s of the file at once.
    realtime: bool = True
    chunk_s: float = Field(0.1, gt=0.0, le=60.0)
    #: Play the file again and again (ticks continuing) instead of finishing.
    loop: bool = False


def _open(options: PTUFileOptions, address: str | None, context: dict[str, Any]) -> PTUFilePhotonCounter:
    return PTUFilePhotonCounter(options.path, angle_deg=options.angle_deg, wavelength_nm=options.wavelength_nm,
                                channel=options.channel, realtime=options.realtime, chunk_s=options.chunk_s,
                                loop=options.loop)


DRIVER = Driver(name=NAME, kind="photon-counter", options=PTUFileOptions, open=_open, simulator=None,
                description="A PicoQuant PTU (T2) file's photons played back as a photon counter, in real time "
                            "or as fast as read", simulation_only=False)
