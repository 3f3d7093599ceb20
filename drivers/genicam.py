"""GenICam cameras (GigE Vision, USB3 Vision, CoaXPress...) through a GenTL producer (driver ``genicam``).

The transport is the camera maker's GenTL producer (a ``.cti`` library: Basler pylon,
Allied Vision Vimba, FLIR Spinnaker, IDS peak, Baumer, MATRIX VISION mvGenTL...), driven
through the ``harvesters`` package (an optional extra: ``pip install 'exoacq[genicam]'``;
imported when the camera connects, so exoacq runs without it). Following the harvesters
tutorial: ``Harvester().add_file(cti)``, ``update()``, ``device_info_list``,
``create({...})``, ``remote_device.node_map``, ``start()``, ``fetch()`` and
``buffer.payload.components[0].data``, ``stop()``, ``destroy()``, ``reset()``.

Settings are GenICam features with the SFNC (Standard Features Naming Convention) names
of table ``FEATURES``: ``ExposureTime`` (us; after ``ExposureAuto = Off``), ``Gain``
(after ``GainAuto = Off``; SFNC: dB), ``AcquisitionFrameRate`` (after
``AcquisitionFrameRateEnable = true``), ``Width``/``Height``/``OffsetX``/``OffsetY``
(the ROI, on the sensor: only those pixels travel), ``PixelFormat`` (``Mono8`` ...
``Mono16``: the pipeline takes one channel). Pre-SFNC-2 names (``ExposureTimeAbs``,
``AcquisitionFrameRateAbs``, ``GainRaw``) are used when the standard ones are missing.
Each write is read back: what the camera refused or changed (range, increment) is in
``describe()["refused"]`` and logged as one warning.

Timestamps: the buffer's device timestamp (``timestamp_ns``), anchored to UNIX time at the
first frame after start() (so frame intervals are the camera's); without it, the time of
fetch. Dropped frames: gaps in the GenTL frame id of consecutive buffers (frames the camera
or the producer dropped: a slow consumer, a lost packet).
"""
from __future__ import annotations

import glob
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from exoacq.devices import Setting
from exoacq.errors import DeviceError
from exoacq.registry import Driver, DriverOptions

log = logging.getLogger(__name__)

#: Environment variable of the GenTL standard: directories holding 64-bit producers.
GENTL_PATH_VARIABLE = "GENICAM_GENTL64_PATH"
HARVESTERS_MISSING = "camera: the genicam driver needs the 'harvesters' package (pip install 'exoacq[genicam]')"

#: One-channel pixel formats (PFNC) and their significant bits.
MONO_FORMATS: dict[str, int] = {"Mono8": 8, "Mono10": 10, "Mono12": 12, "Mono14": 14, "Mono16": 16}


@dataclass(frozen=True)
class Feature:
    """A GenICam feature: its SFNC name, older names tried when it is missing, its unit,
    ``scale`` (feature value = ours x scale), the feature to switch off/on first."""

    name: str
    unit: str
    scale: float = 1.0
    fallbacks: tuple[str, ...] = ()
    before: tuple[str, Any] | None = None
    rel_tol: float = 1e-3


# SFNC 2.x, Acquisition Control, Analog Control and Image Format Control.
FEATURES: dict[str, Feature] = {
    "pixel_format": Feature("PixelFormat", ""),
    "width": Feature("Width", "px"),
    "height": Feature("Height", "px"),
    "offset_x": Feature("OffsetX", "px"),
    "offset_y": Feature("OffsetY", "px"),
    "exposure_ms": Feature("ExposureTime", "ms", 1e3, ("ExposureTimeAbs",), ("ExposureAuto", "Off")),
    "gain": Feature("Gain", "dB", 1.0, ("GainRaw",), ("GainAuto", "Off")),
    "frame_rate_hz": Feature("AcquisitionFrameRate", "frames/s", 1.0, ("AcquisitionFrameRateAbs",),
                             ("AcquisitionFrameRateEnable", True), rel_tol=0.01),
}
#: Read-only: the frame rate the camera actually reaches (vendor names; SFNC has none).
RESULTING_FRAME_RATE = ("ResultingFrameRate", "ResultingFrameRateAbs", "AcquisitionResultingFrameRate")
IDENTITY = {"vendor": "DeviceVendorName", "model": "DeviceModelName", "serial_number": "DeviceSerialNumber",
            "firmware": "DeviceFirmwareVersion"}


def find_producers(cti: str | None) -> list[str]:
    """The producer given, or every ``.cti`` in the directories of GENICAM_GENTL64_PATH."""
    if cti:
        path = Path(cti)
        if path.is_dir():
            return sorted(str(p) for p in path.glob("*.cti"))
        if not path.is_file():
            raise DeviceError(f"camera: GenTL producer {cti}: no such file")
        return [str(path)]
    found: list[str] = []
    for directory in filter(None, os.environ.get(GENTL_PATH_VARIABLE, "").split(os.pathsep)):
        found.extend(sorted(glob.glob(os.path.join(directory, "*.cti"))))
    return found


def _info(entry: Any, key: str) -> str:
    try:
        value = getattr(entry, key, None)
        if value is None and isinstance(entry, dict):
            value = entry.get(key)
    except Exception:  # noqa: BLE001 - a producer that cannot answer this
        value = None
    return "" if value is None else str(value)


def _describe_devices(infos: list[Any]) -> str:
    return ", ".join(f"{_info(i, 'model') or '?'} (serial number {_info(i, 'serial_number') or '?'})"
                     for i in infos) or "none"


Roi = tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)],
            Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]


class GenICamCamera:
    """One GenICam camera through harvesters; mono frames into the buffers it is handed."""

    driver = "genicam"
    settings: dict[str, Setting] = {
        "exposure_ms": Setting("get_exposure_ms", "set_exposure_ms", "ms", "min_exposure_ms", "max_exposure_ms",
                               "ExposureTime (us on the wire)"),
        "gain": Setting("get_gain", "set_gain", "dB", "min_gain", "max_gain", "Gain (SFNC: dB)"),
    }

    def __init__(self, *, pixel_size_um: float, cti: str | None = None, serial_number: str | None = None,
                 model: str | None = None, exposure_ms: float | None = None, gain: float | None = None,
                 frame_rate_hz: float | None = None, roi: tuple[int, int, int, int] | list[int] | None = None,
                 pixel_format: str | None = None, timeout_s: float = 2.0):
        if not (isinstance(pixel_size_um, int | float) and math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise ValueError(f"pixel_size_um = {pixel_size_um!r}: must be the object-plane pixel size in um (> 0)")
        if pixel_format is not None and pixel_format not in MONO_FORMATS:
            raise ValueError(f"pixel_format = {pixel_format!r}: must be one of {', '.join(MONO_FORMATS)}")
        self.cti, self.serial_number, self.model = cti, serial_number, model
        self.pixel_size_um, self.timeout_s = float(pixel_size_um), float(timeout_s)
        self.roi = tuple(int(v) for v in roi) if roi is not None else None
        self._requested: dict[str, Any] = {k: v for k, v in (
            ("pixel_format", pixel_format), ("exposure_ms", exposure_ms), ("gain", gain),
            ("frame_rate_hz", frame_rate_hz)) if v is not None}
        # The Protocol's attributes; the camera's own values after connect().
        self.width, self.height = (self.roi[2], self.roi[3]) if self.roi else (0, 0)
        self.dtype = np.dtype(np.uint8)
        self.bit_depth = 8
        self.frame_rate_hz = float(frame_rate_hz or 0.0)
        self._exposure_ms = float(exposure_ms or 0.0)
        self._gain = math.nan  # read back at connect
        self.frames_dropped = 0
        self.refused: dict[str, str] = {}
        self.applied: dict[str, Any] = {}
        self.identity: dict[str, str] = {}
        self.producers: list[str] = []
        self._harvester: Any = None
        self._acquirer: Any = None
        self._lock = threading.Lock()
        self._acquiring = False
        self._anchor: float | None = None
        self._last_id: int | None = None
        self._frame_rate_source = self._exposure_source = ""

    @property
    def label(self) -> str:
        if self.identity.get("model"):
            return f"{self.identity['model']} (serial number {self.identity.get('serial_number', '?')})"
        if self.serial_number:
            return f"GenICam device with serial number {self.serial_number}"
        return f"GenICam device {self.model}" if self.model else "GenICam device"

    # -- Device ---------------------------------------------------------------
    def connect(self) -> None:
        """Load the producer(s), find the device, open it, apply the requested features."""
        if self._acquirer is not None:
            return
        try:
            from harvesters.core import Harvester
        except ImportError:
            raise DeviceError(HARVESTERS_MISSING) from None
        self.producers = find_producers(self.cti)
        if not self.producers:
            raise DeviceError(f"camera: no GenTL producer (.cti) found: set cti = ... or {GENTL_PATH_VARIABLE}")
        harvester = Harvester()
        self._harvester = harvester
        try:
            for producer in self.producers:
                try:
                    harvester.add_file(producer)
                except Exception as exc:  # noqa: BLE001 - genicam's LoadLibraryException and the like
                    raise DeviceError(f"camera: GenTL producer {producer} cannot be loaded "
                                      f"({type(exc).__name__}: {exc})") from None
            try:
                harvester.update()
            except Exception as exc:  # noqa: BLE001
                raise DeviceError(f"camera: listing GenICam devices through {', '.join(self.producers)} failed "
                                  f"({type(exc).__name__}: {exc})") from None
            index = self._choose(list(harvester.device_info_list))
            create = getattr(harvester, "create", None) or harvester.create_image_acquirer
            try:
                self._acquirer = create(index)
            except Exception as exc:  # noqa: BLE001 - access denied, device in use...
                raise DeviceError(f"camera: cannot open {self.label} ({type(exc).__name__}: {exc}; "
                                  "is another program using it?)") from None
            self._setup()
        except BaseException:
            self._release()
            raise

    def _choose(self, infos: list[Any]) -> int:
        """The index of the device asked for (serial number, then model) in ``device_info_list``."""
        if not infos:
            raise DeviceError(f"camera: no GenICam device found through {', '.join(self.producers)}")
        matches = list(range(len(infos)))
        if self.serial_number is not None:
            matches = [i for i in matches if _info(infos[i], "serial_number") == str(self.serial_number)]
            if not matches:
                raise DeviceError(f"camera: no GenICam device with serial number {self.serial_number}; "
                                  f"found: {_describe_devices(infos)}")
        if self.model is not None:
            matches = [i for i in matches if _info(infos[i], "model") == self.model]
            if not matches:
                raise DeviceError(f"camera: no GenICam device of model {self.model}"
                                  + (f" with serial number {self.serial_number}" if self.serial_number else "")
                                  + f"; found: {_describe_devices(infos)}")
        if len(matches) > 1:
            raise DeviceError(f"camera: {len(matches)} GenICam devices match: "
                              f"{_describe_devices([infos[i] for i in matches])}; set serial_number")
        return matches[0]

    def _node(self, name: str) -> Any:
        try:
            return getattr(self._acquirer.remote_device.node_map, name)
        except Exception:  # noqa: BLE001 - genicam raises its own LogicalErrorException
            return None

    def _feature(self, name: str) -> tuple[str, Any]:
        feature = FEATURES[name]
        for node_name in (feature.name, *feature.fallbacks):
            node = self._node(node_name)
            if node is not None:
                return node_name, node
        return feature.name, None

    def _setup(self) -> None:
        self.refused, self.applied = {}, {}
        for key, node_name in IDENTITY.items():
            node = self._node(node_name)
            try:
                self.identity[key] = str(node.value) if node is not None else ""
            except Exception:  # noqa: BLE001
                self.identity[key] = ""
        if "pixel_format" in self._requested:
            self._note("pixel_format", self._apply("pixel_format", self._requested["pixel_format"]))
        if self.roi:
            x, y, w, h = self.roi
            # Offsets to 0 first, so that the new size fits; then the offsets.
            for name, value in (("offset_x", 0), ("offset_y", 0), ("width", w), ("height", h),
                                ("offset_x", x), ("offset_y", y)):
                problem = self._apply(name, value)
                if problem and (value or name in ("width", "height")):
                    self._note(name, problem)
        for name in ("exposure_ms", "gain", "frame_rate_hz"):
            if name in self._requested:
                self._note(name, self._apply(name, self._requested[name]))
        fmt = self._read("pixel_format")
        if fmt not in MONO_FORMATS:
            node = self._node("PixelFormat")
            try:
                available = [s for s in node.symbolics if s in MONO_FORMATS]
            except Exception:  # noqa: BLE001
                available = []
            raise DeviceError(f"camera: {self.label} sends {fmt or 'an unknown pixel format'}; set pixel_format to "
                              f"one channel: {', '.join(available) or ', '.join(MONO_FORMATS)}")
        self.bit_depth = MONO_FORMATS[fmt]
        self.dtype = np.dtype(np.uint8 if self.bit_depth == 8 else np.uint16)
        self.width, self.height = int(self._read("width")), int(self._read("height"))
        self._settle_frame_rate()
        exposure = self._read("exposure_ms")
        if exposure is not None:
            self._exposure_ms, self._exposure_source = float(exposure), "the camera (read back)"
        else:
            self._exposure_ms = 1000.0 / self.frame_rate_hz
            self._exposure_source = "assumed: the whole frame interval (the camera has no ExposureTime)"
        gain = self._read("gain")
        self._gain = math.nan  # read back at connect
        if self.refused:
            log.warning("camera: %s did not take every setting: %s", self.label,
                        "; ".join(f"{k}: {v}" for k, v in self.refused.items()))

    def _note(self, name: str, problem: str | None) -> None:
        if problem:
            self.refused[name] = problem

    def _settle_frame_rate(self) -> None:
        for node_name in RESULTING_FRAME_RATE:
            node = self._node(node_name)
            try:
                fps = float(node.value) if node is not None else 0.0
            except Exception:  # noqa: BLE001
                fps = 0.0
            if fps > 0:
                self.frame_rate_hz, self._frame_rate_source = fps, f"the camera ({node_name})"
                return
        fps = self._read("frame_rate_hz")
        if fps:
            self.frame_rate_hz, self._frame_rate_source = float(fps), "the camera (AcquisitionFrameRate)"
        elif "frame_rate_hz" in self._requested:
            self.frame_rate_hz = float(self._requested["frame_rate_hz"])
            self._frame_rate_source = "configured (the camera reports no frame rate)"
        else:
            raise DeviceError(f"camera: {self.label} reports no frame rate: set frame_rate_hz")

    def _read(self, name: str) -> Any:
        """A feature's value in our units; None if the camera has no such feature."""
        node_name, node = self._feature(name)
        if node is None:
            return None
        try:
            value = node.value
        except Exception:  # noqa: BLE001 - not readable now
            return None
        return value / FEATURES[name].scale if isinstance(value, int | float) and FEATURES[name].scale != 1 else value

    def _apply(self, name: str, value: Any) -> str | None:
        """Write one feature (auto mode off first), read it back, keep what the camera uses;
        return what went wrong, or None."""
        feature = FEATURES[name]
        node_name, node = self._feature(name)
        if node is None:
            return f"the camera has no {node_name} feature"
        if feature.before:
            before_name, before_value = feature.before
            before = self._node(before_name)
            if before is not None:
                try:
                    before.value = before_value
                except Exception as exc:  # noqa: BLE001
                    return f"{before_name} = {before_value} refused ({type(exc).__name__}: {exc})"
        wire = value * feature.scale if isinstance(value, int | float) and feature.scale != 1 else value
        if isinstance(wire, float) and node_name in ("Width", "Height", "OffsetX", "OffsetY", "GainRaw"):
            wire = int(round(wire))
        try:
            lo, hi = node.min, node.max
            if isinstance(wire, int | float) and not lo <= wire <= hi:
                return f"{node_name} = {wire:g} is outside the camera's range {lo:g}..{hi:g}"
        except (AttributeError, TypeError):
            pass
        except Exception:  # noqa: BLE001 - a node without limits
            pass
        try:
            node.value = wire
        except Exception as exc:  # noqa: BLE001 - OutOfRange, AccessException...
            return f"{node_name} = {wire} refused ({type(exc).__name__}: {exc})"
        got = self._read(name)
        self.applied[name] = got
        if name == "exposure_ms" and got is not None:
            self._exposure_ms = float(got)
        elif name == "gain" and got is not None:
            self._gain = float(got)
        if isinstance(value, str) or got is None or isinstance(got, str):
            return None if got == value else f"asked {value}, the camera uses {got}"
        if not math.isclose(float(got), float(value), rel_tol=feature.rel_tol, abs_tol=1e-9):
            return f"asked {value:g} {feature.unit}, the camera uses {float(got):g} {feature.unit}".rstrip()
        return None

    def close(self) -> None:
        """Stop acquiring, release the device and the producers. Idempotent, never raises."""
        try:
            self.stop()
        except Exception:  # noqa: BLE001
            pass
        self._release()

    def _release(self) -> None:
        acquirer, self._acquirer = self._acquirer, None
        harvester, self._harvester = self._harvester, None
        for action in (lambda: acquirer.destroy(), lambda: harvester.reset()):
            try:
                action()
            except Exception:  # noqa: BLE001 - already gone
                pass

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.identity.get("model") or "GenICam camera", "driver": self.driver,
            "vendor": self.identity.get("vendor", ""), "serial_number": self.identity.get("serial_number", ""),
            "firmware": self.identity.get("firmware", ""), "producers": list(self.producers),
            "connected": self._acquirer is not None, "width_px": self.width, "height_px": self.height,
            "roi_px": list(self.roi) if self.roi else None,
            "roi_applied_by": "the camera (OffsetX/OffsetY/Width/Height)" if self.roi else None,
            "pixel_size_um": self.pixel_size_um,
            "field_um": [self.width * self.pixel_size_um, self.height * self.pixel_size_um],
            "frame_rate_hz": self.frame_rate_hz, "frame_rate_source": self._frame_rate_source,
            "exposure_ms": self._exposure_ms, "exposure_source": self._exposure_source,
            "gain_db": None if math.isnan(self._gain) else self._gain,
            "pixel_format": self._read("pixel_format") if self._acquirer is not None else None,
            "dtype": self.dtype.name, "bit_depth": self.bit_depth, "frames_dropped": self.frames_dropped,
            "requested": dict(self._requested), "applied": dict(self.applied), "refused": dict(self.refused),
        }

    # -- settings -------------------------------------------------------------
    @property
    def exposure_ms(self) -> float:
        return self._exposure_ms

    @exposure_ms.setter
    def exposure_ms(self, value: float) -> None:
        self.set_exposure_ms(value)

    def _limit(self, name: str, which: str) -> float | None:
        """The ``min``/``max`` of a feature's node, in our units; None if unknown."""
        if self._acquirer is None:
            return None
        _, node = self._feature(name)
        try:
            return float(getattr(node, which)) / FEATURES[name].scale
        except Exception:  # noqa: BLE001 - no node, or a node without limits
            return None

    @property
    def min_exposure_ms(self) -> float:
        """The camera's ExposureTime minimum (1 us if unknown)."""
        low = self._limit("exposure_ms", "min")
        return low if low is not None else 0.001

    @property
    def min_gain(self) -> float:
        low = self._limit("gain", "min")
        return low if low is not None else 0.0

    @property
    def max_exposure_ms(self) -> float:
        """The camera's ExposureTime maximum, at most the frame interval."""
        interval = 1000.0 / self.frame_rate_hz if self.frame_rate_hz > 0 else 1000.0
        high = self._limit("exposure_ms", "max")
        return min(high, interval) if high is not None else interval

    @property
    def max_gain(self) -> float:
        """The camera's Gain maximum (48 dB if unknown)."""
        high = self._limit("gain", "max")
        return high if high is not None else 48.0

    def get_exposure_ms(self) -> float:
        """``ExposureTime`` as read back, in ms."""
        return self._exposure_ms

    def set_exposure_ms(self, exposure_ms: float) -> None:
        """``ExposureAuto = Off``, ``ExposureTime = <us>``; read back."""
        self._live_set("exposure_ms", exposure_ms, self.min_exposure_ms, self.max_exposure_ms)

    def get_gain(self) -> float:
        """``Gain`` as read back (SFNC: dB); NaN if the camera has none."""
        return self._gain

    def set_gain(self, gain: float) -> None:
        """``GainAuto = Off``, ``Gain = <dB>``; read back."""
        self._live_set("gain", gain, self.min_gain, self.max_gain)

    def _live_set(self, name: str, value: float, lo: float, hi: float) -> None:
        unit = FEATURES[name].unit
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        if not lo <= v <= hi:
            shown = f"{v:g}" if math.isfinite(v) else repr(value)
            raise DeviceError(f"camera: {name} {shown} {unit} is out of range {lo:g}..{hi:g} {unit} on {self.label}")
        if self._acquirer is None:
            raise DeviceError(f"camera: {self.label} is not open (call connect() first)")
        with self._lock:
            problem = self._apply(name, v)
        if problem:
            raise DeviceError(f"camera: {name} {v:g} {unit} not taken by {self.label}: {problem}")

    # -- Camera ---------------------------------------------------------------
    def start(self) -> None:
        """``AcquisitionStart`` (harvesters ``start()``): the camera streams into the producer's buffers."""
        if self._acquirer is None:
            raise DeviceError(f"camera: {self.label} is not open (call connect() first)")
        if self._acquiring:
            return
        start = getattr(self._acquirer, "start", None) or self._acquirer.start_acquisition
        try:
            start()
        except Exception as exc:  # noqa: BLE001
            raise DeviceError(f"camera: {self.label} did not start acquiring ({type(exc).__name__}: {exc})") from None
        self._acquiring, self._anchor, self._last_id = True, None, None

    def stop(self) -> None:
        """``AcquisitionStop`` (harvesters ``stop()``)."""
        if not self._acquiring or self._acquirer is None:
            self._acquiring = False
            return
        self._acquiring = False
        stop = getattr(self._acquirer, "stop", None) or self._acquirer.stop_acquisition
        try:
            stop()
        except Exception as exc:  # noqa: BLE001
            raise DeviceError(f"camera: {self.label} did not stop acquiring ({type(exc).__name__}: {exc})") from None

    def _fetch(self) -> Any:
        acquirer = self._acquirer
        try:
            if hasattr(acquirer, "try_fetch"):
                return acquirer.try_fetch(timeout=self.timeout_s)
            fetch = getattr(acquirer, "fetch", None) or acquirer.fetch_buffer
            return fetch(timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - genicam.gentl.TimeoutException and transport errors
            if type(exc).__name__ == "TimeoutException":
                return None
            raise DeviceError(f"camera: no frame from {self.label} ({type(exc).__name__}: {exc})") from None

    def fill(self, buffer: np.ndarray) -> float:
        """Fetch the next buffer, copy its image (height x width, ``dtype``) into ``buffer``,
        queue the GenTL buffer again; return the frame's time (UNIX s)."""
        if self._acquirer is None:
            raise DeviceError(f"camera: {self.label} is not open (call connect() first)")
        if not self._acquiring:
            raise DeviceError(f"camera: {self.label} is not acquiring (call start() first)")
        if buffer.shape != (self.height, self.width) or buffer.dtype != self.dtype:
            raise ValueError(f"buffer is {buffer.dtype} {buffer.shape}; needs {self.dtype} "
                             f"({self.height}, {self.width})")
        fetched = self._fetch()
        arrival = time.time()
        if fetched is None:
            raise DeviceError(f"camera: no frame from {self.label} (none within {self.timeout_s:g} s)")
        try:
            component = fetched.payload.components[0]
            data = np.asarray(component.data)
            if data.size != self.height * self.width:
                raise DeviceError(f"camera: {self.label} sent {data.size} pixels, expected "
                                  f"{self.width}x{self.height}")
            if data.dtype != self.dtype:
                raise DeviceError(f"camera: {self.label} sent {data.dtype} pixels, expected {self.dtype}")
            np.copyto(buffer, data.reshape(self.height, self.width))
            stamp_ns = self._buffer_value(fetched, "timestamp_ns")
            frame_id = self._buffer_value(fetched, "frame_id")
        finally:
            try:
                fetched.queue()
            except Exception:  # noqa: BLE001 - the buffer goes back to the producer in any case at stop()
                pass
        if frame_id is not None:
            if self._last_id is not None and frame_id > self._last_id + 1:
                self.frames_dropped += frame_id - self._last_id - 1
            self._last_id = frame_id
        if stamp_ns:
            if self._anchor is None:
                self._anchor = arrival - stamp_ns * 1e-9
            return self._anchor + stamp_ns * 1e-9
        return arrival

    @staticmethod
    def _buffer_value(fetched: Any, name: str) -> int | None:
        """``timestamp_ns``/``frame_id`` of a harvesters Buffer (or of its GenTL buffer, where
        harvesters versions keep the frame id); None when the producer has none."""
        for holder in (fetched, getattr(fetched, "_buffer", None)):
            try:
                value = getattr(holder, name, None)
            except Exception:  # noqa: BLE001 - GenTL NotImplemented / NotAvailable
                value = None
            if isinstance(value, int | np.integer):
                return int(value)
        return None


class GenICamOptions(DriverOptions):
    #: GenTL producer (.cti file, or a directory of them); default: the directories of GENICAM_GENTL64_PATH.
    cti: str | None = None
    #: The camera to open (DeviceSerialNumber); needed when several are found.
    serial_number: str | None = None
    #: Or its model name (DeviceModelName), when it is the only one of its model.
    model: str | None = None
    #: Object-plane size of one pixel (camera pixel / magnification), um.
    pixel_size_um: float = Field(gt=0, le=100)
    #: ExposureTime, ms (us on the wire); auto exposure switched off.
    exposure_ms: float | None = Field(None, gt=0, le=60000)
    #: Gain (SFNC: dB); auto gain switched off.
    gain: float | None = Field(None, ge=0, le=1000)
    #: AcquisitionFrameRate (AcquisitionFrameRateEnable switched on).
    frame_rate_hz: float | None = Field(None, gt=0, le=100000)
    #: [x, y, width, height] px on the sensor (OffsetX, OffsetY, Width, Height).
    roi: Roi | None = None
    pixel_format: Literal["Mono8", "Mono10", "Mono12", "Mono14", "Mono16"] | None = None
    #: fill() waits this long for a frame before a DeviceError.
    timeout_s: float = Field(2.0, gt=0, le=60)

    @model_validator(mode="after")
    def _exposure_fits(self) -> "GenICamOptions":
        if self.exposure_ms and self.frame_rate_hz and self.exposure_ms > 1000.0 / self.frame_rate_hz:
            raise ValueError(f"exposure_ms = {self.exposure_ms} is longer than the frame interval "
                             f"{1000.0 / self.frame_rate_hz:.3g} ms at frame_rate_hz = {self.frame_rate_hz}")
        return self


def _open(options: GenICamOptions, address: str | None, context: dict[str, Any]) -> GenICamCamera:
    return GenICamCamera(pixel_size_um=options.pixel_size_um, cti=options.cti, serial_number=options.serial_number,
                         model=options.model, exposure_ms=options.exposure_ms, gain=options.gain,
                         frame_rate_hz=options.frame_rate_hz, roi=options.roi, pixel_format=options.pixel_format,
                         timeout_s=options.timeout_s)


DRIVER = Driver(name="genicam", kind="camera", options=GenICamOptions, open=_open, simulator=None,
                description="GenICam camera (GigE Vision, USB3 Vision) through a GenTL producer and harvesters",
                simulation_only=False)
