"""Any OpenCV ``cv2.VideoCapture`` source as a camera (driver ``opencv``).

Sources: a UVC/V4L2 camera by index (``source = 0``) or device path (``/dev/video0``),
a network stream or a file the FFmpeg backend opens (``rtsp://...``, ``http://...``,
``/data/run.avi``), a GStreamer pipeline (``backend = "gstreamer"``).

Settings are OpenCV capture properties (table ``CONTROLS``). At connect each requested one
is written with ``cap.set`` and read back with ``cap.get``; what the backend refused or
changed is listed in ``describe()["refused"]`` and logged as one warning. The values used
afterwards are the read-back ones, never the requested ones.

Exposure units depend on the backend (OpenCV passes the number through):

- V4L2 (Linux): ``CAP_PROP_EXPOSURE`` is ``V4L2_CID_EXPOSURE_ABSOLUTE``, in 100 us units
  (V4L2 camera-control reference); it only acts in manual mode, so
  ``CAP_PROP_AUTO_EXPOSURE`` is set to 1 (``V4L2_EXPOSURE_MANUAL``; 3 is aperture
  priority, the UVC "auto") first. 15 ms is written as 150.
- DirectShow / Media Foundation (Windows, ``backend = "any"``): log2 of seconds, so only
  powers of two (15 ms is written as -6, i.e. 15.6 ms: reported as changed).
- FFmpeg, GStreamer and the rest: no exposure control; a requested exposure is reported
  as refused. ``exposure_ms`` is then the whole frame interval, and describe() says so.

Gain (``CAP_PROP_GAIN``) is in the device's own units (V4L2: ``V4L2_CID_GAIN``); OpenCV
does not report a control's range (``v4l2-ctl --list-ctrls`` does): ``max_gain``.

ROI: OpenCV has no region-of-interest property, so ``roi = [x, y, w, h]`` crops each frame
in software (the device still sends whole frames; describe() says so).

Frames: colour frames are reduced to one channel (``grayscale = true``: BT.601 luma, as
exoacq.nta.video); 8-bit frames are uint8, 16-bit ones (e.g. ``fourcc = "Y16 "`` on V4L2,
where CAP_PROP_CONVERT_RGB is switched off for one-channel formats) uint16: detected from
the first frame.

Timestamps (``describe()["timestamp_source"]``): V4L2 reports each buffer's kernel
timestamp (CLOCK_MONOTONIC) as ``CAP_PROP_POS_MSEC``: converted to UNIX time ("device").
FFmpeg and GStreamer report the stream position: anchored to the UNIX time of the first
frame after start() ("stream"). Otherwise the time the frame was grabbed ("arrival").

Dropped frames (``frames_dropped``, cumulative), as far as they can be known:

- live sources (``latest_only``, the default for devices and network streams): a reader
  thread grabs every frame the source sends and keeps only the newest (a ring of one, as
  pymmcore-plus does); a frame overwritten before fill() took it is counted;
- with device or stream timestamps: a gap of more than 1.5 frame intervals between two
  consecutive frames counts the frames missing in it (lost by the driver or the network).
  Frames a device drops without a timestamp gap cannot be seen through OpenCV.
Files are read on demand (``latest_only`` false by default): every frame, in order.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np
from pydantic import Field

from exoacq.devices import Setting
from exoacq.errors import DeviceError
from exoacq.nta.video import GRAY_FOURCCS, to_gray
from exoacq.registry import Driver, DriverOptions

log = logging.getLogger(__name__)

#: The ``backend`` option: OpenCV's API preference passed to VideoCapture.
BACKENDS: dict[str, int] = {"any": cv2.CAP_ANY, "v4l2": cv2.CAP_V4L2, "ffmpeg": cv2.CAP_FFMPEG,
                            "gstreamer": cv2.CAP_GSTREAMER}

# V4L2 camera-control reference: V4L2_CID_EXPOSURE_AUTO values, and the exposure unit.
V4L2_EXPOSURE_MANUAL, V4L2_EXPOSURE_APERTURE_PRIORITY = 1, 3
V4L2_EXPOSURE_UNIT_MS = 0.1

#: Schemes of network streams (live: read by the reader thread).
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtp", "srt", "udp", "tcp", "http", "https", "mms")


@dataclass(frozen=True)
class Control:
    """One capture property: ``prop`` the cv2.CAP_PROP_* id, ``unit`` ours, the tolerances
    of the read-back check (relative, absolute), ``note`` what it is on the backends."""

    prop: int
    prop_name: str
    unit: str
    rel_tol: float = 0.0
    abs_tol: float = 0.0
    note: str = ""


CONTROLS: dict[str, Control] = {
    "fourcc": Control(cv2.CAP_PROP_FOURCC, "CAP_PROP_FOURCC", "",
                      note="pixel format, four characters (V4L2 VIDIOC_S_FMT)"),
    "width": Control(cv2.CAP_PROP_FRAME_WIDTH, "CAP_PROP_FRAME_WIDTH", "px",
                     note="V4L2 VIDIOC_S_FMT: the driver answers with the nearest size it has"),
    "height": Control(cv2.CAP_PROP_FRAME_HEIGHT, "CAP_PROP_FRAME_HEIGHT", "px",
                      note="V4L2 VIDIOC_S_FMT: the driver answers with the nearest size it has"),
    "frame_rate_hz": Control(cv2.CAP_PROP_FPS, "CAP_PROP_FPS", "frames/s", rel_tol=0.01,
                             note="V4L2 VIDIOC_S_PARM (time per frame); files and streams: read only"),
    "auto_exposure": Control(cv2.CAP_PROP_AUTO_EXPOSURE, "CAP_PROP_AUTO_EXPOSURE", "",
                             note="V4L2 V4L2_CID_EXPOSURE_AUTO: 1 manual, 3 aperture priority (auto)"),
    "exposure_ms": Control(cv2.CAP_PROP_EXPOSURE, "CAP_PROP_EXPOSURE", "ms", rel_tol=0.01,
                           abs_tol=V4L2_EXPOSURE_UNIT_MS / 2,
                           note="V4L2 V4L2_CID_EXPOSURE_ABSOLUTE, 100 us units, in manual mode; "
                                "DirectShow/MSMF: log2 of seconds"),
    "gain": Control(cv2.CAP_PROP_GAIN, "CAP_PROP_GAIN", "device units", rel_tol=0.01, abs_tol=0.5,
                    note="V4L2 V4L2_CID_GAIN, the sensor's own scale"),
    "convert_rgb": Control(cv2.CAP_PROP_CONVERT_RGB, "CAP_PROP_CONVERT_RGB", "",
                           note="0: one-channel formats (GREY, Y16) delivered as they are"),
}


def exposure_to_device(backend: str, exposure_ms: float) -> float | None:
    """``CAP_PROP_EXPOSURE`` for ``exposure_ms`` on ``backend`` (OpenCV's name); None: no known unit."""
    if backend == "V4L2":
        return float(max(1, round(exposure_ms / V4L2_EXPOSURE_UNIT_MS)))
    if backend in ("DSHOW", "MSMF"):
        return float(round(math.log2(exposure_ms * 1e-3)))
    return None


def exposure_from_device(backend: str, value: float) -> float | None:
    """``exposure_ms`` from a ``CAP_PROP_EXPOSURE`` read back; None when it means nothing."""
    if backend == "V4L2":
        return value * V4L2_EXPOSURE_UNIT_MS if value > 0 else None
    if backend in ("DSHOW", "MSMF"):
        return 2.0 ** value * 1e3 if -20 < value < 10 else None
    return None


def _fourcc_text(code: float) -> str:
    n = int(code)
    return "".join(chr((n >> 8 * i) & 0xFF) for i in range(4)) if n > 0 else ""


def _is_live(source: int | str) -> bool:
    """Devices, network streams and GStreamer pipelines are live; a file is not."""
    if isinstance(source, int) or source.startswith("/dev/") or "!" in source:
        return True
    scheme = urlsplit(source).scheme.lower()
    return scheme in STREAM_SCHEMES or (scheme not in ("", "file") and len(scheme) > 1)


def _label(source: int | str) -> str:
    """The source as shown to operators: an index named as such, a URL without its password."""
    if isinstance(source, int):
        return f"camera index {source}"
    parts = urlsplit(source)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return source


Roi = tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)],
            Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]


class OpenCVCamera:
    """A ``cv2.VideoCapture`` source delivering mono frames into the buffers it is handed.

    ``capture_factory(source, api_preference)`` makes the capture (default
    ``cv2.VideoCapture``; tests inject a fake one at this boundary)."""

    driver = "opencv"
    settings: dict[str, Setting] = {
        "exposure_ms": Setting("get_exposure_ms", "set_exposure_ms", "ms", V4L2_EXPOSURE_UNIT_MS,
                               "max_exposure_ms", "exposure time (V4L2: 100 us steps, manual mode)"),
        "gain": Setting("get_gain", "set_gain", "device units", 0.0, "max_gain",
                        "sensor gain in the device's own scale"),
    }

    def __init__(self, source: int | str = 0, *, pixel_size_um: float, backend: str = "any",
                 width: int | None = None, height: int | None = None, frame_rate_hz: float | None = None,
                 exposure_ms: float | None = None, gain: float | None = None, max_gain: float = 255.0,
                 roi: tuple[int, int, int, int] | list[int] | None = None, grayscale: bool = True,
                 fourcc: str | None = None, latest_only: bool | None = None, timeout_s: float = 5.0,
                 capture_factory: Callable[..., Any] = cv2.VideoCapture):
        if isinstance(source, str) and source.strip().isdigit():
            source = int(source)
        if backend not in BACKENDS:
            raise ValueError(f"backend = {backend!r}: must be one of {', '.join(BACKENDS)}")
        if not (isinstance(pixel_size_um, int | float) and math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise ValueError(f"pixel_size_um = {pixel_size_um!r}: must be the object-plane pixel size in um (> 0)")
        if roi is not None:
            roi = tuple(int(v) for v in roi)
            if len(roi) != 4 or roi[0] < 0 or roi[1] < 0 or roi[2] <= 0 or roi[3] <= 0:
                raise ValueError(f"roi = {list(roi)}: must be [x, y, width, height] in px, x, y >= 0, sizes > 0")
        if fourcc is not None and len(fourcc) != 4:
            raise ValueError(f"fourcc = {fourcc!r}: must be four characters (pad with spaces: 'Y16 ')")
        self.source, self.source_label, self.backend = source, _label(source), backend
        self.pixel_size_um = float(pixel_size_um)
        self.roi = roi
        self.grayscale, self.fourcc = bool(grayscale), fourcc
        self.latest_only = _is_live(source) if latest_only is None else bool(latest_only)
        self.timeout_s = float(timeout_s)
        self.max_gain = float(max_gain)
        self._capture_factory = capture_factory
        self._requested: dict[str, Any] = {k: v for k, v in (
            ("fourcc", fourcc), ("width", width), ("height", height), ("frame_rate_hz", frame_rate_hz),
            ("exposure_ms", exposure_ms), ("gain", gain)) if v is not None}
        # The Protocol's attributes; the device's own values after connect().
        self.width, self.height = (roi[2], roi[3]) if roi else (width or 0, height or 0)
        self.dtype = np.dtype(np.uint8)
        self.bit_depth = 8
        self.frame_rate_hz = float(frame_rate_hz or 0.0)
        self._exposure_ms = float(exposure_ms or 0.0)
        self._gain: float | None = None  # read back at connect
        self.frames_dropped = 0
        self.refused: dict[str, str] = {}
        self.applied: dict[str, Any] = {}
        self._frame_rate_source = self._exposure_source = self._timestamp_source = ""
        self._backend_name = self._fourcc_actual = ""
        self._frame_shape = (0, 0)  # (rows, columns) of the frames the source sends
        self._cap: Any = None
        self._cap_lock = threading.Lock()  # VideoCapture is not thread-safe
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, float, float | None] | None = None  # frame, POS_MSEC, arrival
        self._failure: str | None = None
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._running = False
        self._grabbed = 0
        self._last_pos: float | None = None
        self._anchor: float | None = None  # stream clock: UNIX time of position 0
        self._mono_to_unix = 0.0
        self._start_unix = 0.0

    # -- Device ---------------------------------------------------------------
    def connect(self) -> None:
        """Open the capture, apply the requested properties (read back, refusals reported),
        read one frame to learn the frame size and sample type."""
        if self._cap is not None:
            return
        try:
            cap = self._capture_factory(self.source, BACKENDS[self.backend])
        except Exception as exc:  # noqa: BLE001 - an OpenCV error or a bad source
            raise DeviceError(f"camera: cannot open {self.source_label} with the {self.backend} backend "
                              f"({type(exc).__name__}: {exc})") from None
        if not cap.isOpened():
            raise DeviceError(f"camera: cannot open {self.source_label} with the {self.backend} backend "
                              "(no such device or file, no permission, or the backend cannot read it)")
        self._cap = cap
        try:
            self._setup()
        except BaseException:
            self._release()
            raise

    def _setup(self) -> None:
        cap = self._cap
        try:
            self._backend_name = str(cap.getBackendName()).upper()
        except Exception:  # noqa: BLE001 - a backend without a name
            self._backend_name = self.backend.upper()
        self.refused, self.applied = {}, {}
        for name in ("fourcc", "width", "height", "frame_rate_hz", "exposure_ms", "gain"):
            if name in self._requested:
                problem = self._apply(name, self._requested[name])
                if problem:
                    self.refused[name] = problem
        fourcc = self._fourcc_actual = _fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))
        if fourcc in GRAY_FOURCCS:  # one channel on the wire: hand it over unconverted (8 or 16 bit)
            cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
        ok, frame, pos, arrival = self._grab()
        if not ok:
            raise DeviceError(f"camera: no frame from {self.source_label} (the first read failed)")
        if frame.ndim == 3 and frame.shape[2] > 1 and not self.grayscale:
            raise DeviceError(f"camera: {self.source_label} sends colour frames ({frame.shape[2]} channels); "
                              "set grayscale = true (BT.601 luma) or a one-channel fourcc")
        frame = to_gray(frame)
        if frame.dtype not in (np.uint8, np.uint16):
            raise DeviceError(f"camera: {self.source_label} sends {frame.dtype} frames; a camera delivers "
                              "uint8 or uint16")
        rows, cols = frame.shape
        self._frame_shape = (rows, cols)
        for name, got in (("width", cols), ("height", rows)):
            if name in self._requested and self._requested[name] != got and name not in self.refused:
                self.refused[name] = f"asked {self._requested[name]} px, frames are {got} px"
            self.applied[name] = got
        if self.roi:
            x, y, w, h = self.roi
            if x + w > cols or y + h > rows:
                raise DeviceError(f"camera: roi = {list(self.roi)} does not fit the {cols}x{rows} frames of "
                                  f"{self.source_label}")
            self.width, self.height = w, h
        else:
            self.width, self.height = cols, rows
        self.dtype = frame.dtype
        self.bit_depth = 8 * frame.dtype.itemsize
        self._settle_frame_rate()
        self._settle_exposure()
        gain = float(cap.get(cv2.CAP_PROP_GAIN))  # what the device uses, asked for or not
        self._gain = gain if math.isfinite(gain) and gain >= 0 else None
        self._timestamp_source = self._choose_clock(pos)
        if not self.latest_only:
            self._latest = (frame, pos, None)  # the first frame delivered, its arrival time at delivery
        if self.refused:
            log.warning("camera: %s did not take every setting: %s", self.source_label,
                        "; ".join(f"{k}: {v}" for k, v in self.refused.items()))

    def _settle_frame_rate(self) -> None:
        fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        valid = math.isfinite(fps) and 0 < fps <= 10000
        asked = self._requested.get("frame_rate_hz")
        if valid:
            self.frame_rate_hz, self._frame_rate_source = fps, "the device (read back)"
        elif asked is not None:
            self.frame_rate_hz = float(asked)
            self._frame_rate_source = "configured (the backend reports no frame rate)"
        else:
            raise DeviceError(f"camera: {self.source_label} reports no frame rate (CAP_PROP_FPS = {fps:g}): "
                              "set frame_rate_hz")

    def _settle_exposure(self) -> None:
        interval_ms = 1000.0 / self.frame_rate_hz
        value = float(self._cap.get(cv2.CAP_PROP_EXPOSURE))
        exposure = exposure_from_device(self._backend_name, value)
        auto = (self._backend_name == "V4L2"
                and self._cap.get(cv2.CAP_PROP_AUTO_EXPOSURE) == V4L2_EXPOSURE_APERTURE_PRIORITY)
        if exposure is not None and not auto and exposure > interval_ms * 1.001:
            self.refused["exposure_ms"] = (f"the device reports {exposure:g} ms, longer than the frame interval "
                                           f"{interval_ms:.4g} ms at {self.frame_rate_hz:g} frames/s: the frame "
                                           "interval is assumed (the device may be slower than it reports)")
            self._exposure_ms, self._exposure_source = interval_ms, "assumed: the whole frame interval"
        elif exposure is not None and not auto:
            self._exposure_ms, self._exposure_source = exposure, "the device (read back)"
        else:
            self._exposure_ms = interval_ms
            why = ("the camera's automatic exposure is on" if auto
                   else f"OpenCV's {self._backend_name or self.backend} backend reports no exposure")
            self._exposure_source = f"assumed: the whole frame interval ({why})"

    def _choose_clock(self, pos_ms: float) -> str:
        if self._backend_name == "V4L2" and pos_ms > 0 and abs(pos_ms * 1e-3 - time.monotonic()) < 60:
            return "device"  # the kernel's buffer timestamp, CLOCK_MONOTONIC
        if self._backend_name in ("FFMPEG", "GSTREAMER") and pos_ms >= 0:
            return "stream"
        return "arrival"

    def close(self) -> None:
        """Stop the reader and release the capture. Idempotent, never raises."""
        try:
            self.stop()
        except Exception:  # noqa: BLE001 - closing must not fail
            pass
        self._release()

    def _release(self) -> None:
        with self._cap_lock:
            cap, self._cap = self._cap, None
            try:
                if cap is not None:
                    cap.release()
            except Exception:  # noqa: BLE001 - a device already gone
                pass
        self._latest = None

    def describe(self) -> dict[str, Any]:
        rows, cols = self._frame_shape
        return {
            "model": "OpenCV VideoCapture", "driver": self.driver, "source": self.source_label,
            "backend": self._backend_name or self.backend, "connected": self._cap is not None,
            "width_px": self.width, "height_px": self.height, "frame_width_px": cols, "frame_height_px": rows,
            "roi_px": list(self.roi) if self.roi else None,
            "roi_applied_by": "software crop (OpenCV has no ROI control; the device sends whole frames)"
                              if self.roi else None,
            "pixel_size_um": self.pixel_size_um,
            "field_um": [self.width * self.pixel_size_um, self.height * self.pixel_size_um],
            "frame_rate_hz": self.frame_rate_hz, "frame_rate_source": self._frame_rate_source,
            "exposure_ms": self._exposure_ms, "exposure_source": self._exposure_source,
            "exposure_control": self._exposure_control(), "gain": self._gain, "max_gain": self.max_gain,
            "dtype": self.dtype.name, "bit_depth": self.bit_depth, "grayscale": self.grayscale,
            "fourcc": self._fourcc_actual, "latest_only": self.latest_only,
            "timestamp_source": self._timestamp_source, "frames_dropped": self.frames_dropped,
            "requested": dict(self._requested), "applied": dict(self.applied), "refused": dict(self.refused),
        }

    def _exposure_control(self) -> str:
        if self._backend_name == "V4L2":
            return ("CAP_PROP_EXPOSURE = V4L2_CID_EXPOSURE_ABSOLUTE in 100 us units, after "
                    "CAP_PROP_AUTO_EXPOSURE = 1 (manual)")
        if self._backend_name in ("DSHOW", "MSMF"):
            return "CAP_PROP_EXPOSURE = log2 of the exposure in seconds"
        return f"none (OpenCV's {self._backend_name or self.backend} backend has no exposure control)"

    # -- settings -------------------------------------------------------------
    @property
    def exposure_ms(self) -> float:
        return self._exposure_ms

    @exposure_ms.setter
    def exposure_ms(self, value: float) -> None:
        self.set_exposure_ms(value)

    @property
    def max_exposure_ms(self) -> float:
        """The frame interval (a longer exposure would slow the frame rate)."""
        return 1000.0 / self.frame_rate_hz if self.frame_rate_hz > 0 else 1000.0

    def get_exposure_ms(self) -> float:
        """The exposure read back from the device (or the frame interval, assumed: describe())."""
        return self._exposure_ms

    def set_exposure_ms(self, exposure_ms: float) -> None:
        """``CAP_PROP_AUTO_EXPOSURE`` = 1 then ``CAP_PROP_EXPOSURE`` (V4L2: 100 us units); read back."""
        self._live_set("exposure_ms", exposure_ms, V4L2_EXPOSURE_UNIT_MS, self.max_exposure_ms)

    def get_gain(self) -> float:
        """``CAP_PROP_GAIN`` as read back (device units); NaN if the device has none."""
        return math.nan if self._gain is None else self._gain

    def set_gain(self, gain: float) -> None:
        """``CAP_PROP_GAIN`` (device units, 0..max_gain); read back."""
        self._live_set("gain", gain, 0.0, self.max_gain)

    def _live_set(self, name: str, value: float, lo: float, hi: float) -> None:
        unit = CONTROLS[name].unit
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        if not lo <= v <= hi:
            shown = f"{v:g}" if math.isfinite(v) else repr(value)
            raise DeviceError(f"camera: {name} {shown} {unit} is out of range {lo:g}..{hi:g} {unit} "
                              f"on {self.source_label}")
        if self._cap is None:
            raise DeviceError(f"camera: {self.source_label} is not open (call connect() first)")
        problem = self._apply(name, v)
        if problem:
            raise DeviceError(f"camera: {name} {v:g} {unit} not taken by {self.source_label}: {problem}")

    def _apply(self, name: str, value: Any) -> str | None:
        """Write one setting, read it back, keep what the device uses; return what went wrong."""
        control, backend = CONTROLS[name], self._backend_name
        if name == "fourcc":
            self._write(control, cv2.VideoWriter_fourcc(*value))
            got = _fourcc_text(self._read(control))
            self.applied[name] = got
            return None if got == value else f"asked {value!r}, the device uses {got!r}"
        if name == "exposure_ms":
            device_value = exposure_to_device(backend, value)
            if device_value is None:
                return f"OpenCV's {backend} backend has no exposure control in known units; not set"
            if backend == "V4L2":
                auto = CONTROLS["auto_exposure"]
                if not self._write(auto, V4L2_EXPOSURE_MANUAL):
                    return (f"{auto.prop_name} = {V4L2_EXPOSURE_MANUAL} (manual) refused by the V4L2 backend: "
                            "exposure stays automatic")
        else:
            device_value = float(value)
        ok = self._write(control, device_value)
        raw = self._read(control)
        got = exposure_from_device(backend, raw) if name == "exposure_ms" else raw
        shown = f"{control.prop_name} = {device_value:g}"
        if not ok:
            return f"{shown} refused by the {backend} backend (it reads {raw:g})"
        if got is None or not math.isfinite(got) or (got < 0 and name != "exposure_ms"):
            return f"{shown} accepted but it reads {raw:g}: the device has no such control"
        if name in ("width", "height"):
            got = int(got)
        self.applied[name] = got
        if name == "exposure_ms":
            self._exposure_ms, self._exposure_source = got, "the device (read back)"
        elif name == "gain":
            self._gain = got
        elif name == "frame_rate_hz":
            self.frame_rate_hz = got
        if not math.isclose(got, float(value), rel_tol=control.rel_tol, abs_tol=control.abs_tol):
            return f"asked {value:g} {control.unit}, the device uses {got:g} {control.unit}".rstrip()
        return None

    def _write(self, control: Control, value: float) -> bool:
        with self._cap_lock:
            return bool(self._cap.set(control.prop, value))

    def _read(self, control: Control) -> float:
        with self._cap_lock:
            return float(self._cap.get(control.prop))

    # -- Camera ---------------------------------------------------------------
    def start(self) -> None:
        """Start delivering: live sources start the reader thread (ring of one)."""
        if self._cap is None:
            raise DeviceError(f"camera: {self.source_label} is not open (call connect() first)")
        if self._running:
            return
        self._mono_to_unix = time.time() - time.monotonic()
        self._start_unix = time.time()
        self._anchor, self._last_pos, self._failure = None, None, None
        self._running = True
        if self.latest_only:
            self._latest = None  # the frame read at connect is stale now
            self._stopping.clear()
            self._reader = threading.Thread(target=self._read_loop, name=f"opencv-camera {self.source_label}",
                                            daemon=True)
            self._reader.start()

    def stop(self) -> None:
        """Stop the reader thread (waits for its grab to return)."""
        self._running = False
        self._stopping.set()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.join()
            with self._cond:
                self._latest = None

    def _grab(self) -> tuple[bool, np.ndarray, float, float]:
        """One frame from the capture: (ok, frame, CAP_PROP_POS_MSEC, time.time() at grab)."""
        with self._cap_lock:
            if self._cap is None:
                return False, np.empty((0, 0), np.uint8), 0.0, time.time()
            ok = bool(self._cap.grab())
            arrival = time.time()
            pos = float(self._cap.get(cv2.CAP_PROP_POS_MSEC)) if ok else 0.0
            if ok:
                ok, frame = self._cap.retrieve()
                ok = bool(ok) and frame is not None
        if not ok:
            return False, np.empty((0, 0), np.uint8), pos, arrival
        self._grabbed += 1
        return True, frame, pos, arrival

    def _account(self, pos_ms: float) -> None:
        """Frames missing between two consecutive timestamps (device or stream clock)."""
        if self._timestamp_source == "stream" and self._last_pos is not None and pos_ms <= self._last_pos:
            log.info("camera: %s: stream positions do not advance; timestamps are arrival times from now",
                     self.source_label)
            self._timestamp_source = "arrival"
        if self._timestamp_source in ("device", "stream") and self._last_pos is not None:
            gap_s = (pos_ms - self._last_pos) * 1e-3
            if gap_s > 1.5 / self.frame_rate_hz:
                self.frames_dropped += round(gap_s * self.frame_rate_hz) - 1
        self._last_pos = pos_ms

    def _timestamp(self, pos_ms: float, arrival: float) -> float:
        if self._timestamp_source == "device":
            return pos_ms * 1e-3 + self._mono_to_unix
        if self._timestamp_source == "stream":
            if self._anchor is None:
                self._anchor = arrival - pos_ms * 1e-3
            return self._anchor + pos_ms * 1e-3
        return arrival

    def _read_loop(self) -> None:
        """The reader thread: grab every frame, keep the newest, count the overwritten ones."""
        reason = "the stream ended or the device stopped sending"
        try:
            while not self._stopping.is_set():
                ok, frame, pos, arrival = self._grab()
                if not ok:
                    break
                if (self._timestamp_source == "device"
                        and self._timestamp(pos, arrival) < self._start_unix - 1.0 / self.frame_rate_hz):
                    continue  # queued in the driver before start(): not part of this acquisition
                with self._cond:
                    self._account(pos)
                    if self._latest is not None:
                        self.frames_dropped += 1  # overwritten before fill() took it
                    self._latest = (frame, pos, arrival)
                    self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - reported by fill(), never lost
            reason = f"{type(exc).__name__}: {exc}"
        with self._cond:
            if not self._stopping.is_set():
                self._failure = f"{reason}, after {self._grabbed} frames"
            self._cond.notify_all()

    def fill(self, buffer: np.ndarray) -> float:
        """Block until the next frame (the newest, for live sources), write it as
        height x width ``dtype`` into ``buffer``; return its timestamp (UNIX s)."""
        if self._cap is None:
            raise DeviceError(f"camera: {self.source_label} is not open (call connect() first)")
        if not self._running:
            raise DeviceError(f"camera: {self.source_label} is not acquiring (call start() first)")
        if buffer.shape != (self.height, self.width) or buffer.dtype != self.dtype:
            raise ValueError(f"buffer is {buffer.dtype} {buffer.shape}; needs {self.dtype} "
                             f"({self.height}, {self.width})")
        if self.latest_only:
            timeout = max(self.timeout_s, 3.0 / self.frame_rate_hz)
            deadline = time.monotonic() + timeout
            with self._cond:
                while self._latest is None:
                    if self._failure:
                        raise DeviceError(f"camera: no frame from {self.source_label} ({self._failure})")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise DeviceError(f"camera: no frame from {self.source_label} (none within {timeout:g} s)")
                    self._cond.wait(remaining)
                frame, pos, arrival = self._latest
                self._latest = None
                stamp = self._timestamp(pos, arrival if arrival is not None else time.time())
        else:
            if self._latest is not None:
                frame, pos, arrival = self._latest
                self._latest = None
            else:
                ok, frame, pos, arrival = self._grab()
                if not ok:
                    raise DeviceError(f"camera: no frame from {self.source_label} (the read failed after "
                                      f"{self._grabbed} frames: the end of the stream, or the device is gone)")
            self._account(pos)
            stamp = self._timestamp(pos, arrival if arrival is not None else time.time())
        self._deliver(frame, buffer)
        return stamp

    def _deliver(self, frame: np.ndarray, buffer: np.ndarray) -> None:
        frame = to_gray(frame)
        if frame.shape != self._frame_shape:
            raise DeviceError(f"camera: {self.source_label} changed its frame size from "
                              f"{self._frame_shape[1]}x{self._frame_shape[0]} to {frame.shape[1]}x{frame.shape[0]}")
        if frame.dtype != self.dtype:
            raise DeviceError(f"camera: {self.source_label} changed its sample type from {self.dtype} to {frame.dtype}")
        if self.roi:
            x, y, w, h = self.roi
            frame = frame[y:y + h, x:x + w]
        np.copyto(buffer, frame)


class OpenCVOptions(DriverOptions):
    #: UVC/V4L2 index (0), device path (/dev/video0), URL (rtsp://, http://), file, or GStreamer pipeline.
    source: int | str = 0
    backend: Literal["any", "v4l2", "ffmpeg", "gstreamer"] = "any"
    #: Object-plane size of one pixel (camera pixel / magnification), um.
    pixel_size_um: float = Field(gt=0, le=100)
    #: Requested frame size, px (the device picks the nearest it has: read back, reported).
    width: int | None = Field(None, gt=0, le=16384)
    height: int | None = Field(None, gt=0, le=16384)
    frame_rate_hz: float | None = Field(None, gt=0, le=10000)
    #: Manual exposure (V4L2: 100 us steps; auto exposure switched off).
    exposure_ms: float | None = Field(None, gt=0, le=60000)
    #: CAP_PROP_GAIN, in the device's own units.
    gain: float | None = Field(None, ge=0, le=100000)
    #: Upper limit of gain for live changes (OpenCV cannot read the control's range; v4l2-ctl can).
    max_gain: float = Field(255.0, gt=0, le=100000)
    #: [x, y, width, height] px, cropped in software (OpenCV has no ROI control).
    roi: Roi | None = None
    #: Colour frames reduced to one channel (BT.601 luma); false: the source must send one channel.
    grayscale: bool = True
    #: Pixel format to ask for, four characters: "GREY", "Y16 ", "YUYV", "MJPG".
    fourcc: str | None = Field(None, min_length=4, max_length=4)
    #: Ring of one (a reader thread keeps the newest frame, counts overwritten ones);
    #: default: on for devices and network streams, off for files (every frame, in order).
    latest_only: bool | None = None
    #: fill() waits this long for a frame before a DeviceError.
    timeout_s: float = Field(5.0, gt=0, le=120)


def _open(options: OpenCVOptions, address: str | None, context: dict[str, Any]) -> OpenCVCamera:
    return OpenCVCamera(options.source, pixel_size_um=options.pixel_size_um, backend=options.backend,
                        width=options.width, height=options.height, frame_rate_hz=options.frame_rate_hz,
                        exposure_ms=options.exposure_ms, gain=options.gain, max_gain=options.max_gain,
                        roi=options.roi, grayscale=options.grayscale, fourcc=options.fourcc,
                        latest_only=options.latest_only, timeout_s=options.timeout_s)


DRIVER = Driver(name="opencv", kind="camera", options=OpenCVOptions, open=_open, simulator=None,
                description="Any OpenCV VideoCapture source: UVC/V4L2 camera, network stream, video file",
                simulation_only=False)
