"""A recorded video played back as a camera (driver ``video-file``).

Whatever :func:`exoacq.nta.video.open_video` reads (AVI/MOV/MP4/MKV through OpenCV's
FFmpeg backend, a multi-page TIFF, a folder of PNG/TIFF frames, a frame stack ``.npy``
saved by the daemon) is delivered through the Camera Protocol, so that the whole live
pipeline (acquisition engine, tracker, viewers) runs on known data: a demonstration
without hardware, a regression test against an offline analysis, the replay of a run.

Timing, ``realtime = True`` (the default): frame n's exposure starts at start() + n / fps
and the frame is ready at the end of its exposure, as a camera's would be; fill() sleeps
until then. Frames wait in a ring of ``buffer_frames`` buffers, as a camera's driver holds
them (OpenCV's V4L2 backend queues 4); a consumer later than that loses the oldest, as a
camera's ring buffer overruns: they are decoded and discarded (the position in the file
stays right) and counted in ``frames_dropped``, as SimulatedNTACamera does with
``realtime=True``. ``realtime = False``: every frame in order, as fast as fill() is
called, none dropped (for a comparison with an offline analysis of the same file).
Timestamps are start time + n / fps either way.

What a recording does not say is declared and recorded in ``describe()``: the frame rate
of a TIFF stack, a folder or an ``.npy`` (``frame_rate_hz`` is then required), the
exposure (no container records it: the whole frame interval is assumed unless
``exposure_ms`` is given, as ``exoacq analyze`` does), the bit depth inside 16-bit data.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from exoacq.devices import Setting, ring_overrun
from exoacq.errors import DeviceError, ExoacqError
from exoacq.nta.video import Video, open_video
from exoacq.registry import Driver, DriverOptions

#: Sample types a camera delivers (the pipeline's buffers are one of these).
DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


class VideoFileCamera:
    """A recording as a camera: ``connect`` opens it, ``start`` rewinds to frame 0."""

    driver = "video-file"
    #: Nothing of a recording can be changed while previewing.
    settings: dict[str, Setting] = {}

    def __init__(self, path: str | Path, *, pixel_size_um: float, frame_rate_hz: float | None = None,
                 exposure_ms: float | None = None, loop: bool = False, invert: bool = False,
                 realtime: bool = True, bit_depth: int | None = None, buffer_frames: int = 4):
        if not (isinstance(pixel_size_um, int | float) and math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise ValueError(f"pixel_size_um = {pixel_size_um!r}: must be the object-plane pixel size in um (> 0)")
        if frame_rate_hz is not None and not (math.isfinite(frame_rate_hz) and frame_rate_hz > 0):
            raise ValueError(f"frame_rate_hz = {frame_rate_hz!r}: must be > 0")
        if exposure_ms is not None and not (math.isfinite(exposure_ms) and exposure_ms > 0):
            raise ValueError(f"exposure_ms = {exposure_ms!r}: must be > 0")
        if bit_depth is not None and not (isinstance(bit_depth, int) and 1 <= bit_depth <= 16):
            raise ValueError(f"bit_depth = {bit_depth!r}: must be an integer 1..16")
        if not (isinstance(buffer_frames, int) and 1 <= buffer_frames <= 1024):
            raise ValueError(f"buffer_frames = {buffer_frames!r}: must be an integer 1..1024")
        self.buffer_frames = buffer_frames
        self.path = Path(path)
        self.pixel_size_um = float(pixel_size_um)
        self.loop, self.invert, self.realtime = bool(loop), bool(invert), bool(realtime)
        self._frame_rate_option, self._exposure_option, self._bit_depth_option = frame_rate_hz, exposure_ms, bit_depth
        # The Protocol's attributes, known for sure after connect().
        self.width = self.height = 0
        self.dtype = np.dtype(np.uint8)
        self.bit_depth = bit_depth or 8
        self.frame_rate_hz = float(frame_rate_hz or 0.0)
        self.exposure_ms = float(exposure_ms or 0.0)
        self.frames_dropped = 0
        self._video: Video | None = None
        self._frames: Iterator[np.ndarray] | None = None
        self._t0_mono: float | None = None
        self._t0_unix = 0.0
        self._n = 0  # frames delivered or dropped since start()
        self._in_pass = 0  # frames taken from the file since it was (re)opened
        self._ended: str | None = None  # why playback ended (the end of the file), until start()
        self._frame_rate_source = self._exposure_source = self._bit_depth_source = ""

    # -- Device ---------------------------------------------------------------
    def connect(self) -> None:
        """Open the recording, read its first frame (size, sample type) and its frame rate."""
        if self._video is not None:
            return
        try:
            video = open_video(self.path)
            frames = video.frames()
            try:
                first = next(frames, None)
            finally:
                frames.close()  # releases the decoder
        except ExoacqError as exc:
            raise DeviceError(f"camera: video {exc}") from None
        if first is None:
            raise DeviceError(f"camera: video {self.path} has no frame")
        if first.dtype not in DTYPES:
            raise DeviceError(f"camera: video {self.path} holds {first.dtype} samples; a camera delivers "
                              "uint8 or uint16")
        container_bits = first.dtype.itemsize * 8
        if self._bit_depth_option is not None and self._bit_depth_option > container_bits:
            raise DeviceError(f"camera: bit_depth = {self._bit_depth_option} does not fit the "
                              f"{container_bits}-bit samples of video {self.path}")
        if self._frame_rate_option is not None:
            fps = float(self._frame_rate_option)
            self._frame_rate_source = ("configured" if video.fps is None
                                       else f"configured (the file says {video.fps:g} frames/s)")
        elif video.fps is not None:
            fps, self._frame_rate_source = float(video.fps), "the file"
        else:
            raise DeviceError(f"camera: video {self.path} records no frame rate (a TIFF stack, a folder of "
                              "frames or a frame stack has none): set frame_rate_hz")
        interval_ms = 1000.0 / fps
        if self._exposure_option is not None:
            if self._exposure_option > interval_ms * (1 + 1e-9):
                raise DeviceError(f"camera: exposure_ms = {self._exposure_option:g} is longer than the frame "
                                  f"interval {interval_ms:.4g} ms of video {self.path} at {fps:g} frames/s")
            exposure, self._exposure_source = float(self._exposure_option), "configured"
        else:
            exposure = interval_ms
            self._exposure_source = ("assumed: the whole frame interval (the file records no exposure; "
                                     "set exposure_ms)")
        self.height, self.width = first.shape
        self.dtype = first.dtype
        self.bit_depth = self._bit_depth_option or container_bits
        self._bit_depth_source = "configured" if self._bit_depth_option else "the sample type of the data"
        self.frame_rate_hz, self.exposure_ms = fps, exposure
        self._video = video

    def close(self) -> None:
        """Stop and release the recording. Idempotent, never raises."""
        try:
            self.stop()
        finally:
            self._video = None

    def describe(self) -> dict[str, Any]:
        video = self._video
        return {
            "model": "VideoFileCamera", "driver": self.driver, "playback": True, "path": str(self.path),
            "connected": video is not None, "width_px": self.width, "height_px": self.height,
            "pixel_size_um": self.pixel_size_um,
            "field_um": [self.width * self.pixel_size_um, self.height * self.pixel_size_um],
            "frame_rate_hz": self.frame_rate_hz, "frame_rate_source": self._frame_rate_source,
            "exposure_ms": self.exposure_ms, "exposure_source": self._exposure_source,
            "dtype": self.dtype.name, "bit_depth": self.bit_depth, "bit_depth_source": self._bit_depth_source,
            "frame_count": video.frame_count if video else None,
            "file_frame_rate_hz": video.fps if video else None,
            "invert": self.invert, "loop": self.loop, "realtime": self.realtime, "buffer_frames": self.buffer_frames,
            "frames_dropped": self.frames_dropped, "warnings": list(video.warnings) if video else [],
        }

    # -- Camera ---------------------------------------------------------------
    def get_exposure_ms(self) -> float:
        """The exposure recorded for the file (configured, or the frame interval assumed)."""
        return self.exposure_ms

    @property
    def max_adu(self) -> int:
        return 2 ** self.bit_depth - 1

    def start(self) -> None:
        """Rewind to frame 0 and start the frame clock: frame n's exposure starts n / fps from now."""
        if self._video is None:
            raise DeviceError(f"camera: video {self.path} is not open: call connect() first")
        self.stop()
        self._frames, self._ended = self._video.frames(), None
        self._n = self._in_pass = 0
        self._t0_mono, self._t0_unix = time.monotonic(), time.time()

    def stop(self) -> None:
        frames, self._frames, self._t0_mono = self._frames, None, None
        if frames is not None:
            try:
                frames.close()  # type: ignore[attr-defined]  # a generator: releases the decoder
            except Exception:  # noqa: BLE001 - stopping must not fail
                pass

    def fill(self, buffer: np.ndarray) -> float:
        """Write the next frame into ``buffer`` (height x width, ``dtype``), in real time
        unless ``realtime`` is off; return its exposure start (start time + n / fps)."""
        if self._video is None:
            raise DeviceError(f"camera: video {self.path} is not open: call connect() first")
        if self._ended:
            raise DeviceError(self._ended)
        if self._t0_mono is None:
            raise DeviceError(f"camera: video {self.path} is not playing: call start() first")
        if buffer.shape != (self.height, self.width) or buffer.dtype != self.dtype:
            raise ValueError(f"buffer is {buffer.dtype} {buffer.shape}; needs {self.dtype} "
                             f"({self.height}, {self.width})")
        interval, exposure = 1.0 / self.frame_rate_hz, self.exposure_ms * 1e-3
        if self.realtime:
            ready = self._t0_mono + self._n * interval + exposure
            for _ in range(ring_overrun(time.monotonic(), ready, interval, self.buffer_frames)):
                self._next_frame()  # overrun: the frame is lost
                self._n += 1
                self.frames_dropped += 1
        frame = self._next_frame()
        start_unix = self._t0_unix + self._n * interval
        ready_mono = self._t0_mono + self._n * interval + exposure
        if self.invert:  # bright field: dark particles on a bright background become bright
            np.subtract(self.max_adu, np.minimum(frame, self.max_adu), out=buffer, casting="unsafe")
        elif self.bit_depth < self.dtype.itemsize * 8:
            np.minimum(frame, self.max_adu, out=buffer)
        else:
            np.copyto(buffer, frame)
        self._n += 1
        if self.realtime and (wait := ready_mono - time.monotonic()) > 0:
            time.sleep(wait)
        return start_unix

    def _next_frame(self) -> np.ndarray:
        """The next frame of the file; at its end, the first again (``loop``) or DeviceError."""
        assert self._frames is not None and self._video is not None
        try:
            frame = next(self._frames, None)
            if frame is None:
                if not self.loop or self._in_pass == 0:
                    self._ended = f"camera: video {self.path} ended after {self._in_pass} frames"
                    raise DeviceError(self._ended)
                self._frames, self._in_pass = self._video.frames(), 0
                frame = next(self._frames, None)
                if frame is None:
                    raise DeviceError(f"camera: video {self.path} has no frame on its second reading")
        except ExoacqError as exc:
            if isinstance(exc, DeviceError):
                raise
            raise DeviceError(f"camera: video {exc}") from None
        self._in_pass += 1
        if frame.shape != (self.height, self.width) or frame.dtype != self.dtype:
            raise DeviceError(f"camera: video {self.path}: frame {self._in_pass} is {frame.dtype} "
                              f"{frame.shape[1]}x{frame.shape[0]}, the first was {self.dtype} "
                              f"{self.width}x{self.height}")
        return frame


class VideoFileOptions(DriverOptions):
    #: The recording: a video file, a multi-page TIFF, a folder of PNG/TIFF frames, a frame stack .npy.
    path: str
    #: Object-plane size of one pixel (camera pixel / magnification), um.
    pixel_size_um: float = Field(gt=0, le=100)
    #: Default: the container's; required for a TIFF stack, a folder or an .npy (they record none).
    frame_rate_hz: float | None = Field(None, gt=0, le=100000)
    #: Default: unknown, the whole frame interval assumed (no container records it).
    exposure_ms: float | None = Field(None, gt=0, le=60000)
    #: Start again at frame 0 at the end of the file (else the end is a DeviceError).
    loop: bool = False
    #: Bright field: deliver (2^bit_depth - 1) - value, so that dark particles become bright.
    invert: bool = False
    #: Frames at the file's frame rate, a late consumer losing frames; false: as fast as asked, none lost.
    realtime: bool = True
    #: Significant bits of the data (e.g. 12 in 16-bit samples); default: the sample type's (8 or 16).
    bit_depth: int | None = Field(None, ge=1, le=16)
    #: Frames the ring holds for a late consumer (realtime), as a camera's driver does (V4L2: 4).
    buffer_frames: int = Field(4, ge=1, le=1024)


def _open(options: VideoFileOptions, address: str | None, context: dict[str, Any]) -> VideoFileCamera:
    return VideoFileCamera(options.path, pixel_size_um=options.pixel_size_um, frame_rate_hz=options.frame_rate_hz,
                           exposure_ms=options.exposure_ms, loop=options.loop, invert=options.invert,
                           realtime=options.realtime, bit_depth=options.bit_depth,
                           buffer_frames=options.buffer_frames)


DRIVER = Driver(name="video-file", kind="camera", options=VideoFileOptions, open=_open, simulator=None,
                description="A recording (AVI/MOV/MP4, TIFF stack, folder of frames, .npy) played back as a "
                            "camera at its own frame rate", simulation_only=False)
