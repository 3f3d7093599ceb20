"""Camera drivers: a recording played back as a camera, any OpenCV VideoCapture source,
GenICam cameras through harvesters.

Videos are written here with cv2.VideoWriter (MJPG in AVI, FFV1 when the FFmpeg build
has it: lossless, so frames compare exactly). The OpenCV camera reads a real file
through OpenCV's FFmpeg backend (the code path of a network stream); what needs a USB
camera (property refusals, the V4L2 exposure mapping, the reader thread of a live
source) runs against a fake VideoCapture injected at the ``capture_factory`` boundary.
harvesters is an optional extra: its absence is tested, and the driver runs against a
fake harvesters module with the API the harvesters tutorial documents.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from exoacq.devices import Camera
from exoacq.drivers import genicam, opencv_camera, video_file_camera
from exoacq.drivers.genicam import GenICamCamera
from exoacq.drivers.opencv_camera import OpenCVCamera
from exoacq.drivers.video_file_camera import VideoFileCamera
from exoacq.errors import DeviceError

W, H = 64, 48


def levels(n: int, step: int = 10) -> list[np.ndarray]:
    """Frame i is uniform at i * step: its content names it, even after lossy coding."""
    return [np.full((H, W), i * step, np.uint8) for i in range(n)]


def write_video(path: Path, frames: list[np.ndarray], fps: float, fourcc: str) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H), True)
    if not writer.isOpened():
        pytest.skip(f"this OpenCV build cannot write {fourcc}")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def ffv1(tmp_path: Path, frames: list[np.ndarray], fps: float = 50.0) -> Path:
    return write_video(tmp_path / "lossless.avi", frames, fps, "FFV1")


def index_of(frame: np.ndarray, step: int = 10) -> int:
    return int(round(float(frame.mean()) / step))


def play(cam: Any, n: int) -> tuple[list[np.ndarray], list[float]]:
    frames, stamps = [], []
    for _ in range(n):
        buffer = np.empty((cam.height, cam.width), cam.dtype)
        stamps.append(cam.fill(buffer))
        frames.append(buffer)
    return frames, stamps


# -- VideoFileCamera ----------------------------------------------------------------------------

@pytest.mark.parametrize("fourcc", ["FFV1", "MJPG"])
def test_video_file_plays_every_frame_in_order(tmp_path: Path, fourcc: str) -> None:
    rng = np.random.default_rng(1)
    if fourcc == "FFV1":  # lossless: random content must come back bit for bit
        source = [rng.integers(0, 256, (H, W), dtype=np.uint8) for _ in range(8)]
    else:
        source = levels(8, step=30)
    path = write_video(tmp_path / f"v-{fourcc}.avi", source, 25.0, fourcc)
    cam = VideoFileCamera(path, pixel_size_um=0.166, realtime=False)
    assert isinstance(cam, Camera)
    cam.connect()
    assert (cam.width, cam.height, cam.dtype, cam.bit_depth) == (W, H, np.uint8, 8)
    assert cam.frame_rate_hz == 25.0 and cam.exposure_ms == pytest.approx(40.0)
    cam.start()
    t0 = time.time()
    frames, stamps = play(cam, 8)
    for got, want in zip(frames, source):
        if fourcc == "FFV1":
            np.testing.assert_array_equal(got, want)
        else:
            assert abs(float(got.mean()) - float(want.mean())) < 4
    assert stamps[0] == pytest.approx(t0, abs=0.1)
    assert np.diff(stamps) == pytest.approx([0.04] * 7, abs=1e-6)  # start + n / fps
    with pytest.raises(DeviceError, match=rf"^camera: video {path} ended after 8 frames$"):
        cam.fill(np.empty((H, W), np.uint8))
    with pytest.raises(DeviceError, match="ended after 8 frames"):  # and stays ended
        cam.fill(np.empty((H, W), np.uint8))
    assert cam.frames_dropped == 0
    info = cam.describe()
    assert info["frame_rate_source"] == "the file" and "assumed: the whole frame interval" in info["exposure_source"]
    cam.close()
    cam.close()  # idempotent


def test_video_file_real_time_rate(tmp_path: Path) -> None:
    path = ffv1(tmp_path, levels(10), fps=50.0)
    cam = VideoFileCamera(path, pixel_size_um=0.1, exposure_ms=10.0)
    cam.connect()
    cam.start()
    t_start = time.time()
    delivered, stamps = [], []
    for _ in range(10):
        buffer = np.empty((H, W), np.uint8)
        stamps.append(cam.fill(buffer))
        delivered.append(time.time())
        assert index_of(buffer) == len(stamps) - 1
    for n, (stamp, at) in enumerate(zip(stamps, delivered)):
        assert stamp == pytest.approx(t_start + n * 0.02, abs=0.01)
        assert at >= stamp + 0.010 - 0.002  # never before the end of its exposure
    elapsed = delivered[-1] - t_start
    assert 0.18 < elapsed < 0.6, elapsed  # 9 intervals + the exposure = 0.19 s
    assert cam.frames_dropped == 0


def test_video_file_slow_consumer_loses_and_counts_frames(tmp_path: Path) -> None:
    path = ffv1(tmp_path, levels(20), fps=50.0)
    cam = VideoFileCamera(path, pixel_size_um=0.1)
    cam.connect()
    cam.start()
    seen = []
    with pytest.raises(DeviceError, match="ended after 20 frames"):
        while True:
            buffer = np.empty((H, W), np.uint8)
            cam.fill(buffer)
            seen.append(index_of(buffer))
            time.sleep(0.05)  # 2.5 frame intervals of work per frame
    gaps = sum(b - a - 1 for a, b in zip(seen, seen[1:])) + (19 - seen[-1])
    assert seen == sorted(set(seen)) and seen[0] == 0
    assert cam.frames_dropped == gaps > 0
    assert len(seen) + cam.frames_dropped == 20
    assert cam.describe()["frames_dropped"] == cam.frames_dropped


def test_video_file_ring_holds_buffer_frames_for_a_late_consumer(tmp_path: Path) -> None:
    """A consumer up to ``buffer_frames`` intervals late loses nothing, as with a camera's ring."""
    path = ffv1(tmp_path, levels(10), fps=50.0)
    cam = VideoFileCamera(path, pixel_size_um=0.1, buffer_frames=4)
    cam.connect()
    cam.start()
    buffer = np.empty((H, W), np.uint8)
    cam.fill(buffer)
    time.sleep(0.06)  # 3 intervals of 20 ms: frames 1-3 wait in the ring
    seen = []
    for _ in range(4):
        cam.fill(buffer)
        seen.append(index_of(buffer))
    assert seen == [1, 2, 3, 4] and cam.frames_dropped == 0
    assert cam.describe()["buffer_frames"] == 4
    with pytest.raises(ValueError, match="buffer_frames"):
        VideoFileCamera(path, pixel_size_um=0.1, buffer_frames=0)


def test_video_file_loop_rewind_and_invert(tmp_path: Path) -> None:
    path = ffv1(tmp_path, levels(5), fps=50.0)
    cam = VideoFileCamera(path, pixel_size_um=0.1, loop=True, invert=True, realtime=False)
    cam.connect()
    cam.start()
    frames, stamps = play(cam, 12)
    assert [255 - int(f.mean()) for f in frames] == [10 * (i % 5) for i in range(12)]
    assert np.diff(stamps) == pytest.approx([0.02] * 11, abs=1e-6)  # the clock runs on across the loop
    cam.start()  # rewinds to frame 0
    frames, _ = play(cam, 2)
    assert [255 - int(f.mean()) for f in frames] == [0, 10]
    cam.close()


def test_video_file_tiff_stack_needs_a_frame_rate(tmp_path: Path) -> None:
    stack = [np.full((H, W), 1000 + 100 * i, np.uint16) for i in range(3)]
    path = tmp_path / "stack.tif"
    assert cv2.imwritemulti(str(path), stack)
    with pytest.raises(DeviceError, match=rf"^camera: video {path} records no frame rate .*: set frame_rate_hz$"):
        VideoFileCamera(path, pixel_size_um=0.1).connect()
    cam = VideoFileCamera(path, pixel_size_um=0.1, frame_rate_hz=10.0, bit_depth=12, invert=True, realtime=False)
    cam.connect()
    assert (cam.dtype, cam.bit_depth, cam.frame_rate_hz) == (np.uint16, 12, 10.0)
    cam.start()
    frames, _ = play(cam, 3)
    assert [int(f[0, 0]) for f in frames] == [4095 - 1000, 4095 - 1100, 4095 - 1200]
    assert cam.describe()["bit_depth_source"] == "configured"


def test_video_file_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.avi"
    with pytest.raises(DeviceError, match=rf"^camera: video {missing}: no such file or directory$"):
        VideoFileCamera(missing, pixel_size_um=0.1).connect()
    path = ffv1(tmp_path, levels(3), fps=50.0)
    with pytest.raises(DeviceError, match="exposure_ms = 30 is longer than the frame interval 20 ms"):
        VideoFileCamera(path, pixel_size_um=0.1, exposure_ms=30).connect()
    cam = VideoFileCamera(path, pixel_size_um=0.1)
    with pytest.raises(DeviceError, match="not open: call connect"):
        cam.start()
    cam.connect()
    with pytest.raises(DeviceError, match="not playing: call start"):
        cam.fill(np.empty((H, W), np.uint8))


# -- OpenCVCamera on a real file through the FFmpeg backend ---------------------------------------

def test_opencv_camera_reads_a_file_through_ffmpeg(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", levels(10, step=20), 20.0, "MJPG")
    cam = OpenCVCamera(str(path), backend="ffmpeg", pixel_size_um=0.166)
    assert isinstance(cam, Camera) and cam.latest_only is False  # a file: every frame, in order
    cam.connect()
    assert (cam.width, cam.height, cam.dtype) == (W, H, np.uint8)
    info = cam.describe()
    assert info["backend"] == "FFMPEG" and info["frame_rate_hz"] == 20.0
    assert info["timestamp_source"] == "stream"
    assert "assumed: the whole frame interval" in info["exposure_source"] and cam.exposure_ms == 50.0
    cam.start()
    frames, stamps = play(cam, 10)
    assert all(f.shape == (H, W) and f.dtype == np.uint8 for f in frames)  # mono, not BGR
    assert [index_of(f, 20) for f in frames] == list(range(10))
    assert np.diff(stamps) == pytest.approx([0.05] * 9, abs=2e-3)  # the stream's own clock
    with pytest.raises(DeviceError, match=rf"^camera: no frame from {path} \(the read failed after 10 frames"):
        cam.fill(np.empty((H, W), np.uint8))
    cam.close()


def test_opencv_camera_file_as_a_live_stream_with_roi(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", levels(10, step=20), 20.0, "MJPG")
    cam = OpenCVCamera(str(path), backend="ffmpeg", pixel_size_um=0.1, latest_only=True, roi=[8, 4, 32, 16])
    cam.connect()
    assert (cam.width, cam.height) == (32, 16)
    assert cam.describe()["roi_applied_by"].startswith("software crop")
    cam.start()
    seen = []
    with pytest.raises(DeviceError, match=rf"^camera: no frame from {path} \(the stream ended"):
        while True:
            buffer = np.empty((16, 32), np.uint8)
            cam.fill(buffer)
            seen.append(index_of(buffer, 20))
    # The frame read at connect is stale at start(); of the 9 after it, each was delivered or counted.
    assert seen == sorted(set(seen)) and len(seen) + cam.frames_dropped == 9
    cam.close()


def test_opencv_camera_cannot_open(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match=r"^camera: cannot open .*nothing\.avi with the ffmpeg backend"):
        OpenCVCamera(str(tmp_path / "nothing.avi"), backend="ffmpeg", pixel_size_um=0.1).connect()


# -- OpenCVCamera against a fake VideoCapture (a USB camera cannot run here) -----------------------

P = cv2


class FakeCapture:
    """What OpenCV shows of a camera: properties a driver clamps or refuses, frames at a
    frame rate, POS_MSEC on the device clock (V4L2: CLOCK_MONOTONIC, in ms)."""

    def __init__(self, *, backend: str = "V4L2", refuse: tuple[int, ...] = (), clamp: dict[int, Any] | None = None,
                 fps: float = 30.0, frames: int | None = None, positions: list[float] | None = None,
                 opened: bool = True, grab_delay_s: float = 0.0):
        self.backend, self.refuse, self.clamp, self.opened = backend, refuse, clamp or {}, opened
        self.limit, self.positions, self.grab_delay_s = frames, positions, grab_delay_s
        self.props: dict[int, float] = {P.CAP_PROP_FRAME_WIDTH: 640, P.CAP_PROP_FRAME_HEIGHT: 480,
                                        P.CAP_PROP_FPS: fps, P.CAP_PROP_AUTO_EXPOSURE: 3, P.CAP_PROP_EXPOSURE: 156,
                                        P.CAP_PROP_GAIN: 16, P.CAP_PROP_FOURCC: cv2.VideoWriter_fourcc(*"YUYV"),
                                        P.CAP_PROP_POS_MSEC: 0}
        self.sets: list[tuple[int, float]] = []
        self.opened_with: tuple[Any, int] | None = None
        self.n = 0
        self.released = False
        self.next_due = time.monotonic()

    def __call__(self, source: Any, api: int) -> "FakeCapture":  # the capture_factory
        self.opened_with = (source, api)
        return self

    def isOpened(self) -> bool:
        return self.opened

    def getBackendName(self) -> str:
        return self.backend

    def set(self, prop: int, value: float) -> bool:
        self.sets.append((prop, value))
        if prop in self.refuse:
            return False
        self.props[prop] = self.clamp[prop](value) if prop in self.clamp else value
        return True

    def get(self, prop: int) -> float:
        return float(self.props.get(prop, -1.0))

    def grab(self) -> bool:
        if self.limit is not None and self.n >= self.limit:
            return False
        time.sleep(self.grab_delay_s)
        wait = self.next_due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.next_due = max(self.next_due, time.monotonic()) + 1.0 / self.props[P.CAP_PROP_FPS]
        self.props[P.CAP_PROP_POS_MSEC] = (self.positions[self.n] if self.positions
                                           else time.monotonic() * 1e3)
        self.n += 1
        return True

    def retrieve(self) -> tuple[bool, np.ndarray]:
        h, w = int(self.props[P.CAP_PROP_FRAME_HEIGHT]), int(self.props[P.CAP_PROP_FRAME_WIDTH])
        frame = np.zeros((h, w, 3), np.uint8)
        frame[:] = (self.n - 1) % 256  # BGR, equal channels: its gray value is its number
        frame[0, 0] = (255, 0, 0)  # one blue pixel: BT.601 luma 0.114 * 255 = 29
        return True, frame

    def release(self) -> None:
        self.released = True


def test_opencv_camera_reports_refused_and_changed_properties(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeCapture(refuse=(P.CAP_PROP_FPS,),
                       clamp={P.CAP_PROP_FRAME_HEIGHT: lambda v: min(v, 720), P.CAP_PROP_GAIN: lambda v: min(v, 255)})
    cam = OpenCVCamera("/dev/video2", backend="v4l2", pixel_size_um=0.2, width=1280, height=1024,
                       frame_rate_hz=60, exposure_ms=15, gain=300, capture_factory=fake)
    assert isinstance(cam, Camera) and cam.latest_only is True  # a device: ring of one
    with caplog.at_level(logging.WARNING, logger="exoacq.drivers.opencv_camera"):
        cam.connect()
    assert fake.opened_with == ("/dev/video2", cv2.CAP_V4L2)
    # Each requested property written once, in order; V4L2 manual exposure mode before the exposure,
    # 15 ms written as 150 (100 us units).
    assert fake.sets == [(P.CAP_PROP_FRAME_WIDTH, 1280), (P.CAP_PROP_FRAME_HEIGHT, 1024), (P.CAP_PROP_FPS, 60.0),
                         (P.CAP_PROP_AUTO_EXPOSURE, 1), (P.CAP_PROP_EXPOSURE, 150.0), (P.CAP_PROP_GAIN, 300.0)]
    info = cam.describe()
    assert info["refused"] == {
        "height": "asked 1024 px, the device uses 720 px",
        "frame_rate_hz": "CAP_PROP_FPS = 60 refused by the V4L2 backend (it reads 30)",
        "gain": "asked 300 device units, the device uses 255 device units",
    }
    assert info["applied"]["exposure_ms"] == pytest.approx(15.0) and cam.exposure_ms == pytest.approx(15.0)
    assert info["exposure_source"] == "the device (read back)" and "100 us units" in info["exposure_control"]
    assert (cam.width, cam.height, cam.frame_rate_hz, cam.get_gain()) == (1280, 720, 30.0, 255.0)
    assert info["timestamp_source"] == "device"
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage().startswith("camera: /dev/video2 did not take every setting: height: asked 1024 px")
    # Live changes through the Setting names: written, read back, refused loudly.
    setting = OpenCVCamera.settings["exposure_ms"]
    fake.sets.clear()
    getattr(cam, setting.set)(20.0)
    assert fake.sets == [(P.CAP_PROP_AUTO_EXPOSURE, 1), (P.CAP_PROP_EXPOSURE, 200.0)]
    assert getattr(cam, setting.get)() == pytest.approx(20.0)
    assert setting.limit(cam) == pytest.approx(1000 / 30)
    with pytest.raises(DeviceError, match=r"^camera: exposure_ms 50 ms is out of range 0.1..33.3+ ms on /dev/video2$"):
        cam.set_exposure_ms(50)
    fake.clamp[P.CAP_PROP_GAIN] = lambda v: min(v, 200)
    with pytest.raises(DeviceError, match=r"^camera: gain 250 device units not taken by /dev/video2: asked 250 "
                                          r"device units, the device uses 200 device units$"):
        cam.set_gain(250)
    assert cam.get_gain() == 200  # what the device uses, never the value asked
    cam.close()
    assert fake.released


def test_opencv_camera_without_exposure_control_says_so() -> None:
    fake = FakeCapture(backend="GSTREAMER")
    cam = OpenCVCamera("videotestsrc ! appsink", backend="gstreamer", pixel_size_um=0.2, exposure_ms=10,
                       capture_factory=fake)
    cam.connect()
    assert fake.sets == []  # no unit known: nothing written
    assert cam.describe()["refused"] == {
        "exposure_ms": "OpenCV's GSTREAMER backend has no exposure control in known units; not set"}
    assert cam.exposure_ms == pytest.approx(1000 / 30)
    assert "assumed: the whole frame interval" in cam.describe()["exposure_source"]


def test_opencv_camera_ring_of_one_counts_overwritten_frames() -> None:
    fake = FakeCapture(fps=200.0)
    cam = OpenCVCamera(0, pixel_size_um=0.2, roi=[1, 0, 8, 4], capture_factory=fake)
    assert cam.source_label == "camera index 0" and cam.latest_only
    cam.connect()
    assert fake.opened_with == (0, cv2.CAP_ANY)
    cam.start()
    seen, stamps = [], []
    for _ in range(8):
        buffer = np.empty((4, 8), np.uint8)
        stamps.append(cam.fill(buffer))
        assert (buffer == buffer[0, 0]).all()  # cropped past the blue pixel at (0, 0)
        seen.append(int(buffer[0, 0]))
        time.sleep(0.02)  # 4 frame intervals
    dropped = cam.frames_dropped
    cam.stop()
    assert seen == sorted(set(seen))
    assert dropped >= sum(b - a - 1 for a, b in zip(seen, seen[1:])) > 0
    assert all(abs(s - time.time()) < 1.0 for s in stamps) and stamps == sorted(stamps)  # V4L2 clock -> UNIX
    cam.close()


def test_opencv_camera_counts_timestamp_gaps() -> None:
    # A stream whose frames 3 and 4 never arrived (positions jump by three intervals).
    fake = FakeCapture(backend="FFMPEG", fps=25.0, frames=5, positions=[0.0, 40.0, 80.0, 200.0, 240.0])
    cam = OpenCVCamera("rtsp://viewer:secret@10.0.0.7:554/live", pixel_size_um=0.2, latest_only=False,
                       capture_factory=fake)
    assert cam.source_label == "rtsp://viewer:***@10.0.0.7:554/live"
    cam.connect()
    cam.start()
    frames, stamps = play(cam, 5)
    assert [int(f[1, 1]) for f in frames] == [0, 1, 2, 3, 4]
    assert np.diff(stamps) == pytest.approx([0.04, 0.04, 0.12, 0.04], abs=1e-6)
    assert cam.frames_dropped == 2
    with pytest.raises(DeviceError, match=r"^camera: no frame from rtsp://viewer:\*\*\*@10.0.0.7:554/live "
                                          r"\(the read failed after 5 frames"):
        cam.fill(np.empty((480, 640), np.uint8))


def test_opencv_camera_grab_failures_are_device_errors() -> None:
    with pytest.raises(DeviceError, match=r"^camera: cannot open camera index 3 with the v4l2 backend"):
        OpenCVCamera(3, backend="v4l2", pixel_size_um=0.2, capture_factory=FakeCapture(opened=False)).connect()
    with pytest.raises(DeviceError, match=r"^camera: no frame from camera index 0 \(the first read failed\)$"):
        OpenCVCamera(0, pixel_size_um=0.2, capture_factory=FakeCapture(frames=0)).connect()
    cam = OpenCVCamera(0, pixel_size_um=0.2, capture_factory=FakeCapture(frames=4, fps=100.0))
    cam.connect()
    cam.start()
    with pytest.raises(DeviceError, match=r"^camera: no frame from camera index 0 \(the stream ended or the "
                                          r"device stopped sending, after 4 frames\)$"):
        for _ in range(10):
            cam.fill(np.empty((480, 640), np.uint8))
    cam.close()
    slow = FakeCapture(fps=100.0)
    cam = OpenCVCamera(0, pixel_size_um=0.2, timeout_s=0.1, capture_factory=slow)
    cam.connect()
    slow.grab_delay_s = 0.4
    cam.start()
    with pytest.raises(DeviceError, match=r"^camera: no frame from camera index 0 \(none within 0.1 s\)$"):
        cam.fill(np.empty((480, 640), np.uint8))
    cam.close()


def test_opencv_camera_colour_needs_grayscale() -> None:
    with pytest.raises(DeviceError, match=r"sends colour frames \(3 channels\); set grayscale = true"):
        OpenCVCamera(0, pixel_size_um=0.2, grayscale=False, capture_factory=FakeCapture()).connect()


# -- GenICamCamera -------------------------------------------------------------------------------

def test_genicam_without_harvesters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "harvesters", None)  # the import fails even if it is installed
    monkeypatch.setitem(sys.modules, "harvesters.core", None)
    cam = GenICamCamera(pixel_size_um=0.1, serial_number="21712345")
    assert isinstance(cam, Camera)
    with pytest.raises(DeviceError) as error:
        cam.connect()
    assert str(error.value) == ("camera: the genicam driver needs the 'harvesters' package "
                                "(pip install 'exoacq[genicam]')")
    cam.close()  # never raises


class Node:
    """A GenICam feature node: value, limits; ``refuse`` makes writes fail like genicam's exceptions."""

    def __init__(self, value: Any, lo: float | None = None, hi: float | None = None, *,
                 symbolics: tuple[str, ...] = (), refuse: bool = False, inc: int = 1):
        self._value, self.min, self.max, self.symbolics, self.refuse, self.inc = value, lo, hi, symbolics, refuse, inc
        self.writes: list[Any] = []

    @property
    def value(self) -> Any:
        return self._value

    @value.setter
    def value(self, v: Any) -> None:
        self.writes.append(v)
        if self.refuse or (self.symbolics and v not in self.symbolics):
            raise RuntimeError("AccessException: node is not writable")
        self._value = v - (v % self.inc) if isinstance(v, int) and self.inc > 1 else v


class FakeBuffer:
    def __init__(self, data: np.ndarray, frame_id: int, timestamp_ns: int, log: list[str]):
        self.payload = types.SimpleNamespace(components=[types.SimpleNamespace(
            data=data.ravel(), width=data.shape[1], height=data.shape[0], data_format="Mono12")])
        self.frame_id, self.timestamp_ns, self.log = frame_id, timestamp_ns, log

    def queue(self) -> None:
        self.log.append(f"queue {self.frame_id}")


def fake_harvesters(monkeypatch: pytest.MonkeyPatch, devices: list[dict[str, str]],
                    node_map: Any = None, buffers: list[FakeBuffer] | None = None) -> list[str]:
    """Install a harvesters module with the tutorial's API; return its call log."""
    calls: list[str] = []

    class Acquirer:
        remote_device = types.SimpleNamespace(node_map=node_map)

        def start(self) -> None:
            calls.append("start")

        def stop(self) -> None:
            calls.append("stop")

        def try_fetch(self, timeout: float) -> FakeBuffer | None:
            return buffers.pop(0) if buffers else None

        def destroy(self) -> None:
            calls.append("destroy")

    class Harvester:
        device_info_list = [types.SimpleNamespace(**d) for d in devices]

        def add_file(self, path: str) -> None:
            calls.append(f"add_file {Path(path).name}")

        def update(self) -> None:
            calls.append("update")

        def create(self, search_key: Any) -> Acquirer:
            calls.append(f"create {search_key}")
            return Acquirer()

        def reset(self) -> None:
            calls.append("reset")

    package, core = types.ModuleType("harvesters"), types.ModuleType("harvesters.core")
    core.Harvester = Harvester  # type: ignore[attr-defined]
    package.core = core  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "harvesters", package)
    monkeypatch.setitem(sys.modules, "harvesters.core", core)
    return calls


def test_genicam_needs_a_producer_and_the_right_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [{"model": "acA1920-155um", "serial_number": "21700001", "vendor": "Basler"},
               {"model": "BFS-U3-16S2M", "serial_number": "19800002", "vendor": "FLIR"}]
    calls = fake_harvesters(monkeypatch, devices)
    monkeypatch.delenv("GENICAM_GENTL64_PATH", raising=False)
    with pytest.raises(DeviceError) as error:
        GenICamCamera(pixel_size_um=0.1).connect()
    assert str(error.value) == "camera: no GenTL producer (.cti) found: set cti = ... or GENICAM_GENTL64_PATH"
    (tmp_path / "ProducerU3V.cti").write_bytes(b"")
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(tmp_path))
    with pytest.raises(DeviceError) as error:
        GenICamCamera(pixel_size_um=0.1, serial_number="12345").connect()
    assert str(error.value) == ("camera: no GenICam device with serial number 12345; found: acA1920-155um "
                                "(serial number 21700001), BFS-U3-16S2M (serial number 19800002)")
    assert calls == ["add_file ProducerU3V.cti", "update", "reset"]
    with pytest.raises(DeviceError, match=r"^camera: 2 GenICam devices match: .*; set serial_number$"):
        GenICamCamera(pixel_size_um=0.1).connect()
    with pytest.raises(DeviceError, match=r"^camera: GenTL producer /no/such\.cti: no such file$"):
        GenICamCamera(pixel_size_um=0.1, cti="/no/such.cti").connect()


def test_genicam_applies_features_and_fills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    nodes = types.SimpleNamespace(
        DeviceVendorName=Node("Basler"), DeviceModelName=Node("acA1920-155um"),
        DeviceSerialNumber=Node("21700001"), DeviceFirmwareVersion=Node("1.2"),
        PixelFormat=Node("Mono8", symbolics=("Mono8", "Mono12", "BayerRG8")),
        Width=Node(1920, 16, 1920, inc=16), Height=Node(1200, 1, 1200), OffsetX=Node(0, 0, 1904),
        OffsetY=Node(0, 0, 1184), ExposureAuto=Node("Continuous"), ExposureTime=Node(5000.0, 20.0, 1e6),
        GainAuto=Node("Continuous"), Gain=Node(0.0, 0.0, 24.0),
        AcquisitionFrameRateEnable=Node(False), AcquisitionFrameRate=Node(100.0, 1.0, 164.0),
        ResultingFrameRate=Node(50.0))
    log: list[str] = []
    frame = np.arange(320, dtype=np.uint16).reshape(10, 32) * 13
    buffers = [FakeBuffer(frame, i, 1_000_000_000 + i * 20_000_000, log) for i in (7, 8, 11)]
    calls = fake_harvesters(monkeypatch, [{"model": "acA1920-155um", "serial_number": "21700001"}], nodes, buffers)
    cti = tmp_path / "Producer.cti"
    cti.write_bytes(b"")
    cam = GenICamCamera(pixel_size_um=0.1, cti=str(cti), serial_number="21700001", pixel_format="Mono12",
                        roi=[100, 50, 40, 10], exposure_ms=15.0, gain=30.0, frame_rate_hz=50.0)
    with caplog.at_level(logging.WARNING, logger="exoacq.drivers.genicam"):
        cam.connect()
    assert calls[:3] == ["add_file Producer.cti", "update", "create 0"]
    assert nodes.ExposureAuto.value == "Off" and nodes.ExposureTime.value == 15000.0  # us on the wire
    assert nodes.AcquisitionFrameRateEnable.value is True and nodes.AcquisitionFrameRate.value == 50.0
    assert nodes.OffsetX.writes == [0, 100] and nodes.Width.writes == [40]
    assert cam.describe()["refused"] == {
        "gain": "Gain = 30 is outside the camera's range 0..24",
        "width": "asked 40 px, the camera uses 32 px",  # Width in steps of 16
    }
    assert caplog.records[-1].getMessage() == (
        "camera: acA1920-155um (serial number 21700001) did not take every setting: width: asked 40 px, "
        "the camera uses 32 px; gain: Gain = 30 is outside the camera's range 0..24")
    assert (cam.dtype, cam.bit_depth, cam.frame_rate_hz, cam.exposure_ms) == (np.uint16, 12, 50.0, 15.0)
    assert (cam.width, cam.height) == (32, 10)
    info = cam.describe()
    assert info["model"] == "acA1920-155um" and info["serial_number"] == "21700001"
    cam.start()
    t0 = time.time()
    stamps = []
    for _ in range(3):
        buffer = np.empty((10, 32), np.uint16)
        stamps.append(cam.fill(buffer))
        np.testing.assert_array_equal(buffer, frame)
    assert log == ["queue 7", "queue 8", "queue 11"]  # every GenTL buffer goes back to the producer
    assert cam.frames_dropped == 2  # frame ids 9 and 10 never came
    assert stamps[0] == pytest.approx(t0, abs=0.5)
    assert np.diff(stamps) == pytest.approx([0.02, 0.06], abs=1e-6)  # the camera's clock, 9 and 10 missing
    with pytest.raises(DeviceError, match=r"^camera: no frame from acA1920-155um \(serial number 21700001\) "
                                          r"\(none within 2 s\)$"):
        cam.fill(np.empty((10, 32), np.uint16))
    exposure = GenICamCamera.settings["exposure_ms"]
    assert (exposure.low(cam), exposure.limit(cam)) == (0.02, 20.0)  # ExposureTime min 20 us; 1 / 50 frames/s
    getattr(cam, exposure.set)(10.0)
    assert nodes.ExposureTime.value == 10000.0 and getattr(cam, exposure.get)() == 10.0
    with pytest.raises(DeviceError, match=r"^camera: gain 30 dB is out of range 0..24 dB on acA1920-155um"):
        cam.set_gain(30.0)
    cam.close()
    assert calls[-3:] == ["stop", "destroy", "reset"]


# -- registry declarations -------------------------------------------------------------------------

@pytest.mark.parametrize("module, name, options", [
    (opencv_camera, "opencv", {"source": "/dev/video0", "pixel_size_um": 0.1, "roi": [0, 0, 64, 48]}),
    (video_file_camera, "video-file", {"path": "/data/run.avi", "pixel_size_um": 0.1}),
    (genicam, "genicam", {"serial_number": "21700001", "pixel_size_um": 0.1, "exposure_ms": 15}),
])
def test_driver_declarations(module: Any, name: str, options: dict[str, Any]) -> None:
    driver = module.DRIVER
    assert (driver.name, driver.kind, driver.simulator, driver.simulation_only) == (name, "camera", None, False)
    cam = driver.open(driver.options(**options), None, {})
    assert isinstance(cam, Camera)
    assert cam.describe()["connected"] is False  # open() does not connect
    for setting in type(cam).settings.values():
        assert callable(getattr(cam, setting.get)) and callable(getattr(cam, setting.set))
        assert setting.limit(cam) > setting.low(cam)
    with pytest.raises(ValidationError, match="pixel_size_um"):
        driver.options(**{k: v for k, v in options.items() if k != "pixel_size_um"})


def test_option_validation() -> None:
    with pytest.raises(ValidationError, match="roi"):
        opencv_camera.OpenCVOptions(pixel_size_um=0.1, roi=[0, 0, 0, 48])
    with pytest.raises(ValidationError, match="backend"):
        opencv_camera.OpenCVOptions(pixel_size_um=0.1, backend="dshow")
    with pytest.raises(ValidationError, match="longer than the frame interval"):
        genicam.GenICamOptions(pixel_size_um=0.1, exposure_ms=30, frame_rate_hz=50)
    with pytest.raises(ValidationError, match="pixel_format"):
        genicam.GenICamOptions(pixel_size_um=0.1, pixel_format="BayerRG8")


def test_reader_threads_end_with_the_camera(tmp_path: Path) -> None:
    before = threading.active_count()
    cam = OpenCVCamera(0, pixel_size_um=0.2, capture_factory=FakeCapture(fps=200.0))
    cam.connect()
    cam.start()
    cam.fill(np.empty((480, 640), np.uint8))
    cam.close()
    assert threading.active_count() == before
