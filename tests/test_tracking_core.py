"""The tracking core's parts: the linker's ordering, and workers local or 'remote' (separate processes)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from conftest import run_cli
from exoacq.bus import ControlClient, loads
from exoacq.nta.bench import simulated_instrument_toml
from exoacq.demo import start_daemon, stop_daemon
from exoacq.nta.parameters import TrackingParameters
from exoacq.nta.tracker import ROWS_PREFIX, TRACK_ROWS_COLUMNS, Linker, decode_rows, encode_rows

# realtime: these assert that live tracking keeps up with no dropped frame (they run alone, see Makefile)
pytestmark = pytest.mark.realtime


def event_of(message: bytes) -> dict:
    """A linker event as the daemon reads it: linked rows binary (exoacq.nta.tracker.encode_rows), the rest JSON."""
    return decode_rows(message) if message.startswith(ROWS_PREFIX) else loads(message)


def _params() -> dict:
    return TrackingParameters(25.0, 0.0, 0.166, 25.0, 0.89, min_track_length=3, search_range_px=5.0).to_dict()


@pytest.fixture
def linker():
    """A linker in this process, and the PULL socket its events go to (``linker.events_in``)."""
    ctx = zmq.Context()
    events = ctx.socket(zmq.PULL)
    port = events.bind_to_random_port("tcp://127.0.0.1")
    linker = Linker(f"tcp://127.0.0.1:{port}", context=ctx)
    linker.events_in = events
    try:
        yield linker
    finally:
        linker.close()
        events.close(linger=0)
        ctx.term()


def test_linker_orders_features_from_several_workers(tmp_path, linker):
    events = linker.events_in
    # a fast worker's first features may arrive before run.begin; later frames out of order
    frames = [(seq, {"y": np.array([10.0 + seq]), "x": np.array([20.0]), "mass": np.array([500.0])})
              for seq in range(6)]
    order = [1, 0, 3, 2, 5, 4]
    first = frames[order[0]]
    linker.on_features({"run_id": "r1", "seq": first[0], "frame_number": first[0], "timestamp": 1.0}, first[1])
    linker.on_begin({"run_id": "r1", "params": _params(), "output_dir": str(tmp_path)})
    for seq in order[1:]:
        linker.on_features({"run_id": "r1", "seq": seq, "frame_number": seq, "timestamp": 1.0 + seq}, frames[seq][1])
    assert linker.runs["r1"].order.next_seq == 6
    linker.on_end({"run_id": "r1", "frames_sent": 6, "temperature_c": 30.0})
    assert "r1" not in linker.runs
    received = []
    while events.poll(1000):
        received.append(event_of(events.recv()))
        if received[-1]["event"] == "result":
            break
    result = received[-1]
    assert result["event"] == "result" and result["frames_processed"] == 6
    # one particle moving 1 px per frame: one track of six points, linked in frame order
    assert result["summary"]["tracks"] == {"total": 1, "used": 1, "min_length_frames": 3, "below_threshold": 0}
    assert result["tracking"]["temperature_c"] == 30.0
    tracks = (tmp_path / "tracks.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in tracks[1:]] == ["0", "1", "2", "3", "4", "5"]
    # the linked positions for run.h5, as float64 rows in TRACK_ROWS_COLUMNS order (capture first)
    rows = np.concatenate([e["rows"] for e in received if e["event"] == "rows"])
    assert rows.shape == (6, len(TRACK_ROWS_COLUMNS)) and rows[:, 0].tolist() == [1.0] * 6
    assert rows[:, 1].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_local_workers_share_the_frames(tmp_path):
    config = tmp_path / "two.toml"
    config.write_text(simulated_instrument_toml(settings={"calibration": "calibrations/nta/simulated-camera.toml"},
                                                tracking={"workers": 2}))
    process, control = start_daemon(tmp_path / "data", tmp_path / "daemon.log", extra=["--config", str(config)])
    try:
        with ControlClient(control) as client:
            assert len(client.request("status")["instruments"]["nta"]["service"]["tracker"]["workers"]["local"]) == 2
        proc = run_cli("acquire", "nta", "--duration", "3", "--captures", "1", "--json", "--control", control)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
    finally:
        assert stop_daemon(process) == 0
    assert result["frames"]["processed"] == result["frames"]["acquired"] == 75
    assert result["tracks"]["used"] > 20
    assert result["size_nm"]["mean"] == pytest.approx(100.0, rel=0.15)


@pytest.mark.slow
def test_a_worker_started_elsewhere_serves_the_daemon(tmp_path):
    frames, features = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    config = tmp_path / "remote.toml"
    config.write_text(simulated_instrument_toml(tracking={"workers": 0, "frames": frames, "features": features}))
    process, control = start_daemon(tmp_path / "data", tmp_path / "daemon.log", extra=["--config", str(config)])
    worker = subprocess.Popen([sys.executable, "-m", "exoacq", "worker", "--frames", frames, "--features", features])
    try:
        with ControlClient(control) as client:
            deadline = time.monotonic() + 60
            while client.request("status")["instruments"]["nta"]["service"]["tracker"]["workers"]["ready"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        proc = run_cli("acquire", "nta", "--duration", "2", "--captures", "1", "--json", "--control", control)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["frames"]["processed"] == result["frames"]["acquired"] == 50
    finally:
        worker.terminate()
        assert worker.wait(timeout=5) == 0
        assert stop_daemon(process) == 0


@pytest.mark.slow
def test_daemon_and_offline_analysis_agree_on_the_same_frames(tmp_path):
    config = tmp_path / "save.toml"
    config.write_text(simulated_instrument_toml(settings={"calibration": "calibrations/nta/simulated-camera.toml"}))
    process, control = start_daemon(tmp_path / "data", tmp_path / "daemon.log", extra=["--config", str(config)])
    try:
        proc = run_cli("acquire", "nta", "--duration", "4", "--captures", "1", "--dilution", "10", "--json", "--control", control)
        assert proc.returncode == 0, proc.stderr
        live = json.loads(proc.stdout)
    finally:
        assert stop_daemon(process) == 0
    assert live["frames"]["dropped"] == 0
    video = tmp_path / "data" / "runs" / live["run_id"] / "video.zst"  # kept by default (lossless: Zstandard)
    from exoacq.nta.video import open_video
    kept = open_video(video)
    assert (kept.frame_count, kept.height, kept.width) == (100, 480, 640)
    from conftest import ROOT
    proc = run_cli("analyze", "nta", str(video), "--fps", "25", "--pixel-size-um", "0.166", "--exposure-ms", "15",
                   "--temperature-c", repr(live["temperature_c"]), "--dilution", "10",
                   "--calibration", str(ROOT / "calibrations" / "nta" / "simulated-camera.toml"), "--json")
    assert proc.returncode == 0, proc.stderr
    offline = json.loads(proc.stdout)
    for key in ("size_nm", "tracks", "diffusion_um2_s"):
        assert offline[key] == pytest.approx(live[key]), key
    for key in ("bin_centres_nm", "counts", "concentration_per_ml"):
        assert offline["histogram"][key] == pytest.approx(live["histogram"][key]), key
    for key in ("particles_per_frame", "concentration_per_ml", "viscosity_mpa_s"):
        assert offline[key] == pytest.approx(live[key], rel=1e-12), key


def test_linker_finishes_a_capture_whose_last_features_come_after_the_next_began(tmp_path, linker):
    events = linker.events_in
    def features(run_id, seq):
        linker.on_features({"run_id": run_id, "seq": seq, "frame_number": seq, "timestamp": 1.0},
                           {"y": np.array([10.0 + seq]), "x": np.array([20.0]), "mass": np.array([500.0])})

    linker.on_begin({"run_id": "r/1", "params": _params(), "output_dir": str(tmp_path / "1")})
    for seq in range(3):
        features("r/1", seq)
    linker.on_end({"run_id": "r/1", "frames_sent": 4, "temperature_c": 25.0})
    linker.on_begin({"run_id": "r/2", "params": _params(), "output_dir": str(tmp_path / "2")})
    features("r/2", 0)
    features("r/1", 3)  # a slow worker's last frame of capture 1
    results = []
    while events.poll(1000):
        event = event_of(events.recv())
        if event["event"] == "result":
            results.append(event)
            break
    assert [(r["run_id"], r["frames_processed"]) for r in results] == [("r/1", 4)]
    assert list(linker.runs) == ["r/2"] and linker.runs["r/2"].order.next_seq == 1


def test_rows_events_round_trip_and_malformed_ones_are_refused():
    rows = np.array([[1, 7, 3, 10.5, 20.25, 812.0], [1, 8, 3, 11.0, 20.5, 790.5]])
    event = decode_rows(encode_rows("r/1", "nta/tracks", rows))
    assert (event["event"], event["run_id"], event["dataset"]) == ("rows", "r/1", "nta/tracks")
    assert np.array_equal(event["rows"], rows)
    for bad in (ROWS_PREFIX + b"no header", ROWS_PREFIX + b'{"event": "rows"}\n',
                encode_rows("r/1", "nta/tracks", rows)[:-3]):
        with pytest.raises(ValueError):
            decode_rows(bad)
