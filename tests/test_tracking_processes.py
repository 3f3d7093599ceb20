"""The tracking core's processes on their own, over real ZeroMQ sockets on loopback: a locate worker
(``python -m exoacq.nta.worker``: the detector it compiles before saying hello, ``--detector``, which the daemon
passes from its instrument's ``settings.detector``, and frames that ask for either detector) and the linker's
start (``python -m exoacq.nta.tracker``: its endpoint first, then ready)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trackpy
import zmq

from exoacq.bus import ControlClient, loads, send_frame
from exoacq.demo import start_daemon, stop_daemon
from exoacq.nta.bench import simulated_instrument_toml
from exoacq.nta.detect import locate_fast
from exoacq.nta.worker import COLUMNS

WAIT_MS = 60_000  # a worker's start (imports, numba's cache) on a loaded 2-core machine


def spots_frame() -> np.ndarray:
    """A 96 x 128 uint16 frame: Poisson background and six Gaussian spots of different brightness."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[:96, :128]
    image = np.full((96, 128), 20.0)
    for k, (cy, cx) in enumerate([(20.3, 30.6), (25.8, 90.1), (50.5, 60.2), (70.1, 20.9), (75.6, 100.4), (48.2, 110.7)]):
        image += (150 + 60 * k) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 1.6**2))
    return rng.poisson(image).astype(np.uint16)


def test_a_worker_that_compiled_only_the_fast_detector_serves_trackpy_frames_too():
    ctx = zmq.Context()
    frames, features = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for socket in (frames, features):
        socket.setsockopt(zmq.LINGER, 0)
    frames_port = frames.bind_to_random_port("tcp://127.0.0.1")
    features_port = features.bind_to_random_port("tcp://127.0.0.1")
    worker = subprocess.Popen([sys.executable, "-m", "exoacq.nta.worker", "--frames", f"tcp://127.0.0.1:{frames_port}",
                               "--features", f"tcp://127.0.0.1:{features_port}", "--detector", "fast"])
    try:
        assert features.poll(WAIT_MS), "the worker did not say hello"
        topic, hello = features.recv_multipart()
        assert topic == b"hello" and loads(hello)["pid"] == worker.pid
        frame = spots_frame()
        for seq, detector in enumerate(("fast", "trackpy")):
            locate = {"diameter_px": 7, "minmass": 100.0, "invert": False, "detector": detector}
            send_frame(frames, {"run_id": "r1", "seq": seq, "frame_number": seq, "timestamp": 1.0 + seq,
                                "locate": locate}, frame)
        tables = {}
        for _ in range(2):
            assert features.poll(WAIT_MS), "no features from the worker"
            topic, header, data = features.recv_multipart()
            header = loads(header)
            assert topic == b"features" and header["worker"] == worker.pid and tuple(header["columns"]) == COLUMNS
            tables[header["seq"]] = np.frombuffer(data, dtype=np.float64).reshape(header["n"], len(COLUMNS))
    finally:
        worker.terminate()
        code = worker.wait(timeout=10)
        frames.close()
        features.close()
        ctx.term()
    assert code == 0
    fast = locate_fast(frame, 7, 100.0)[list(COLUMNS)].to_numpy(np.float64)
    slow = trackpy.locate(frame, 7, minmass=100.0, engine="numba")[list(COLUMNS)].to_numpy(np.float64)
    assert len(fast) == len(slow) == 6
    np.testing.assert_array_equal(tables[0], fast)
    np.testing.assert_array_equal(tables[1], slow)  # trackpy's kernels, compiled at this first frame


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the worker's command line from /proc")
def test_the_daemon_starts_its_workers_with_its_instruments_detector(tmp_path):
    config = tmp_path / "trackpy.toml"
    config.write_text(simulated_instrument_toml(settings={"detector": "trackpy"}, tracking={"workers": 2}))
    process, control = start_daemon(tmp_path / "data", tmp_path / "daemon.log", extra=["--config", str(config)])
    try:
        with ControlClient(control) as client:
            workers = client.request("status")["instruments"]["nta"]["service"]["tracker"]["workers"]["local"]
        argvs = [Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") for pid in workers]
    finally:
        assert stop_daemon(process) == 0
    assert len(argvs) == 2
    for argv in argvs:
        assert argv[argv.index("--detector") + 1] == "trackpy", argv


def test_the_linker_gives_its_endpoint_before_its_warm_up_then_says_ready():
    ctx = zmq.Context()
    events = ctx.socket(zmq.PULL)
    events.setsockopt(zmq.LINGER, 0)
    port = events.bind_to_random_port("tcp://127.0.0.1")
    linker = subprocess.Popen([sys.executable, "-m", "exoacq.nta.tracker", "--events", f"tcp://127.0.0.1:{port}"])
    try:
        received = []
        while len(received) < 2:
            assert events.poll(WAIT_MS), f"the linker said only {received}"
            received.append(loads(events.recv()))
    finally:
        linker.terminate()
        code = linker.wait(timeout=10)
        events.close()
        ctx.term()
    bound, ready = received
    # bound: at once, so that the daemon starts its workers while the linker imports and compiles
    assert bound["event"] == "bound" and bound["pid"] == linker.pid
    assert bound["features"].startswith("tcp://127.0.0.1:")
    assert ready == {"event": "ready", "pid": linker.pid, "features": bound["features"]}
    assert code == 0
