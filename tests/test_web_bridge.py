"""The web console's link to the daemon (exoacq.web.bridge) and its frame pipeline (exoacq.web.live).

live.py on synthetic frames whose right answer is known; the bridge against a real
``exoacq daemon --simulated`` on loopback: requests and their errors (compared with
exoacq.bus.ControlClient's), the preview's frames, an NTA run's documents, frames with
features and track tails, and a daemon restart on other ports.
"""
from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from conftest import run_cli
from exoacq.bus import ControlClient, dumps
from exoacq.demo import free_tcp_endpoint
from exoacq.errors import ExoacqError
from exoacq.security import ClientKeys, load_client_keys
from exoacq.web.bridge import DaemonBridge
from exoacq.web.live import LEVEL_MIN_SPAN_NOISE, LEVEL_PERCENTILES, display_image, encode_jpeg, focus_score

RNG = np.random.default_rng(13)


def spots(sigma_px: float, amplitude: float = 1.0, shape=(256, 320), n: int = 30, seed: int = 1) -> np.ndarray:
    """A scatter image: ``n`` Gaussian spots of width ``sigma_px`` on a noisy background (uint16);
    each spot carries 2e4 * amplitude counts of light whatever its width."""
    rng = np.random.default_rng(seed)
    image = rng.normal(200.0, 5.0, shape)
    half = int(6 * sigma_px) + 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    for r, c in zip(rng.uniform(20, shape[0] - 20, n), rng.uniform(20, shape[1] - 20, n)):
        r0, c0 = int(r), int(c)
        dy, dx = yy + r0 - r, xx + c0 - c
        image[r0 - half:r0 + half + 1, c0 - half:c0 + half + 1] += (
            2e4 * amplitude * np.exp(-(dy ** 2 + dx ** 2) / (2 * sigma_px ** 2)) / (2 * np.pi * sigma_px ** 2))
    return np.clip(image, 0, 65535).astype(np.uint16)


# -- live.py ------------------------------------------------------------------------------------------
def test_display_image_bins_by_block_means_and_maps_the_levels():
    frame = spots(1.0, shape=(1024, 1280), n=300)
    image, scale, (lo, hi) = display_image(frame, 960)
    assert image.dtype == np.uint8 and image.shape == (512, 640) and scale == 0.5
    binned = frame.astype(np.float64).reshape(512, 2, 640, 2).mean(axis=(1, 3))
    true_lo, true_hi = np.percentile(binned, LEVEL_PERCENTILES)  # the background's median; particles
    assert abs(lo - true_lo) <= 1.0 and abs(hi - true_hi) < 0.1 * (true_hi - true_lo)  # from a subsample
    expected = np.clip((binned - lo) * 255 / (hi - lo), 0, 255)
    assert np.abs(image - expected).max() <= 1.5  # block means rounded to counts, then to 8 bits
    assert (image == 255).mean() == pytest.approx(1 - LEVEL_PERCENTILES[1] / 100, abs=0.0003)
    # no particle: white well above the noise (binned 2 x 2: sigma 2.5 counts), not full-contrast snow
    noise = RNG.normal(200.0, 5.0, (1024, 1280)).astype(np.uint16)
    image, _, (lo, hi) = display_image(noise, 960)
    assert lo == pytest.approx(200, abs=1) and hi - lo == pytest.approx(LEVEL_MIN_SPAN_NOISE * 2.5, rel=0.25)
    assert np.percentile(image, 99.95) < 0.5 * 255


def test_display_image_other_shapes_types_and_flat_frames():
    frame = RNG.normal(0.0, 1.0, size=(750, 1000))  # float64, not a whole number of blocks
    image, scale, _ = display_image(frame, 300)
    assert image.shape == (187, 250) and scale == 0.25
    small = RNG.integers(0, 255, size=(48, 64), dtype=np.uint8)
    image, scale, (lo, hi) = display_image(small, 960)
    assert image.shape == (48, 64) and scale == 1.0 and lo == np.median(small) < hi
    image, scale, (lo, hi) = display_image(np.full((100, 100), 7, np.int32), 50)
    assert image.shape == (50, 50) and (lo, hi) == (7.0, 8.0) and not image.any()
    with pytest.raises(ValueError, match="2-D"):
        display_image(np.zeros((4, 4, 3), np.uint8), 960)


def test_jpeg_decodes_to_the_display_image():
    image, _, _ = display_image(spots(1.0, shape=(1024, 1280)), 960)
    data = encode_jpeg(image, quality=90)
    assert data[:2] == b"\xff\xd8"
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == image.shape == (512, 640)
    assert np.abs(decoded.astype(float) - image).mean() < 2.0
    with pytest.raises(ValueError, match="8-bit"):
        encode_jpeg(np.zeros((8, 8), np.uint16))


def test_focus_score_is_higher_for_sharp_spots_and_ignores_brightness():
    sharp, soft, blurred = (focus_score(spots(s)) for s in (0.8, 1.6, 3.0))
    # The brightest pixel of a Gaussian spot of width s (sampled at pixel centres) holds 1 / (2 pi s^2)
    # of its light when the spot is centred on that pixel (24.9 % at s = 0.8), exp(-1 / (4 s^2)) times
    # that on a pixel corner (11.4 %); a wide spot overflows the 7-pixel box, which holds
    # erf(3.5 / (s sqrt 2))^2 of its light.
    assert 11.4 < sharp < 24.9
    share = 1 / (2 * math.pi * 3.0 ** 2) / math.erf(3.5 / (3.0 * math.sqrt(2))) ** 2
    assert blurred == pytest.approx(100 * share, rel=0.1)
    assert sharp > 2 * soft > 4 * blurred
    assert focus_score(spots(1.6, amplitude=4.0)) == pytest.approx(soft, rel=0.1)
    assert focus_score(RNG.normal(200, 5, (256, 320)).astype(np.uint16)) == 0.0  # no particle: 0


def test_live_pipeline_time_for_a_1280x1024_frame():
    frame = spots(1.2, shape=(1024, 1280), n=150)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        image, _, _ = display_image(frame, 960)
        encode_jpeg(image)
        focus_score(frame)
        times.append(time.perf_counter() - t)
    median_ms = 1000 * float(np.median(times))
    print(f"display_image + encode_jpeg + focus_score, 1280x1024 uint16: median {median_ms:.1f} ms")
    assert median_ms < 20.0


# -- the bridge without a daemon --------------------------------------------------------------------
def test_bridge_errors_without_a_daemon():
    with pytest.raises(ExoacqError) as bad:
        DaemonBridge("nonsense").start()
    assert bad.value.code == "usage" and "not a ZeroMQ endpoint" in str(bad.value)
    with pytest.raises(ExoacqError) as bad:
        DaemonBridge("tcp://127.0.0.1:5555", operator=" ")
    assert bad.value.code == "bad_operator"
    endpoint = free_tcp_endpoint()
    bridge = DaemonBridge(endpoint)
    bridge.start()  # nothing answers: not an error, it keeps asking
    try:
        with pytest.raises(ExoacqError) as none:
            bridge.request("ping", timeout_s=0.3)
        assert none.value.code == "no_daemon" and endpoint in str(none.value)
        assert bridge.endpoints is None
    finally:
        bridge.close()


def frame_message(header: dict, pixels: bytes) -> list[zmq.Frame]:
    return [zmq.Frame(b"frame"), zmq.Frame(dumps(header)), zmq.Frame(pixels)]


def test_the_focus_score_is_measured_again_at_most_every_focus_interval():
    """~8 ms of CPU per 1280x1024 frame: measured 5 times a second, not on every frame shown."""
    from exoacq.web.bridge import FOCUS_INTERVAL_S

    bridge = DaemonBridge("tcp://127.0.0.1:5555")
    sharp, blurred = spots(0.8, shape=(120, 160)), spots(3.0, shape=(120, 160), seed=2)
    header = {"instrument": "nta", "run_id": "r1", "capture": 1, "frame_number": 1, "timestamp": time.time(),
              "exposure_ms": 10.0, "shape": [120, 160], "dtype": "<u2", "seq": 1}
    bridge._on_frames_message(frame_message(header, sharp.tobytes()))
    first, _ = asyncio.run(bridge.next_frame("nta", 0, timeout_s=0.5))
    bridge._on_frames_message(frame_message({**header, "frame_number": 2, "seq": 2}, blurred.tobytes()))
    second, _ = asyncio.run(bridge.next_frame("nta", 1, timeout_s=0.5))
    assert first["focus_score"] == second["focus_score"] == focus_score(sharp)  # within the interval
    measured_at, value = bridge._focus["nta"]
    bridge._focus["nta"] = (measured_at - FOCUS_INTERVAL_S, value)  # the interval has passed
    bridge._on_frames_message(frame_message({**header, "frame_number": 3, "seq": 3}, blurred.tobytes()))
    third, _ = asyncio.run(bridge.next_frame("nta", 2, timeout_s=0.5))
    assert third["focus_score"] == focus_score(blurred) < focus_score(sharp)


def test_frames_messages_are_checked_and_only_the_newest_is_encoded():
    bridge = DaemonBridge("tcp://127.0.0.1:5555")  # not started: messages handed in as the thread does
    frame = spots(1.0, shape=(120, 160))
    header = {"instrument": "nta", "run_id": "r1", "capture": 1, "frame_number": 7, "timestamp": time.time(),
              "exposure_ms": 10.0, "shape": [120, 160], "dtype": "<u2", "seq": 41}
    bad = [frame_message({**header, "dtype": "|O"}, frame.tobytes()),  # not pixels
           frame_message(header, frame.tobytes()[:-2]),  # short buffer
           frame_message({**header, "shape": [120]}, frame.tobytes()),
           [zmq.Frame(b"frame"), zmq.Frame(b"{not json"), zmq.Frame(frame.tobytes())],
           [zmq.Frame(b"features"), zmq.Frame(dumps({"run_id": "r1"}))]]  # no instrument
    for message in bad:
        bridge._on_frames_message(message)
    assert bridge.counters["malformed"] == len(bad) and bridge.counters["frames"] == 0
    older = spots(3.0, shape=(120, 160), seed=2)
    bridge._on_frames_message(frame_message({**header, "seq": 40}, older.tobytes()))
    bridge._on_frames_message(frame_message(header, frame.tobytes()))
    bridge._on_frames_message([zmq.Frame(b"features"), zmq.Frame(dumps({
        "instrument": "nta", "run_id": "r1", "capture": 1, "frame_number": 6, "seq": 3, "minmass": 250.0,
        "features": {"x": [10.5, 20.25], "y": [30.0, 40.0], "mass": [900.0, 800.0]},
        "tails": [[1.0, 2.0, 3.0, 4.0]]}))])
    got = asyncio.run(bridge.next_frame("nta", 0, max_width=80, timeout_s=0.5))
    assert got is not None
    head, jpeg = got
    image, scale, levels = display_image(frame, 80)
    assert head["seq"] == 41 and head["display_shape"] == [60, 80] and head["scale"] == scale == 0.5
    assert head["levels"] == list(levels) and head["focus_score"] == focus_score(frame)
    assert head["features"]["x"] == [10.5, 20.25] and head["count"] == 2 and head["minmass"] == 250.0
    assert head["features_frame_number"] == 6 and head["tails"] == [[1.0, 2.0, 3.0, 4.0]]
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED).shape == (60, 80)
    assert asyncio.run(bridge.next_frame("nta", 41, timeout_s=0.2)) is None  # nothing newer
    assert asyncio.run(bridge.next_frame("dls", 0, timeout_s=0.1)) is None


# -- the bridge on a real daemon --------------------------------------------------------------------
def wildcard(endpoint: str) -> str:
    """A free loopback endpoint as a bind on every interface (reachable off the host: CurveZMQ on)."""
    return endpoint.replace("tcp://127.0.0.1:", "tcp://0.0.0.0:")


class Daemon:
    """``exoacq daemon --simulated`` reachable off its host, so with CurveZMQ keys (its clients
    connect over loopback); on a given control port, so that it can come back on it."""

    def __init__(self, data_dir: Path, control: str, keys_dir: Path, keys: ClientKeys):
        self.data_dir, self.control, self.keys_dir, self.keys = data_dir, control, keys_dir, keys
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log = self.data_dir.parent / f"daemon-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "exoacq", "daemon", "--simulated", "--data-dir", str(self.data_dir),
                 "--keys-dir", str(self.keys_dir), "--control", wildcard(self.control),
                 "--results", wildcard(free_tcp_endpoint()), "--frames", wildcard(free_tcp_endpoint()),
                 "--metrics", "off"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        with ControlClient(self.control, timeout_s=1.0, keys=self.keys) as client:
            while True:
                assert self.process.poll() is None, self.log.read_text()
                try:
                    if client.request("status")["ready"]:
                        return
                except ExoacqError:
                    pass
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=10) == 0, self.log.read_text()
        assert "Traceback" not in self.log.read_text(), self.log.read_text()


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bridge")
    for argv in (["init"], ["add", "console"]):
        made = run_cli("keys", "--dir", str(tmp / "keys"), *argv)
        assert made.returncode == 0, made.stderr
    keys = load_client_keys(tmp / "keys" / "clients" / "console.key_secret", tmp / "keys" / "server.key")
    daemon = Daemon(tmp / "data", free_tcp_endpoint(), tmp / "keys", keys)
    daemon.start()
    bridge = DaemonBridge(daemon.control, keys=keys, operator="h2-tester")
    bridge.start()
    yield daemon, bridge
    bridge.close()
    daemon.stop()


@pytest.mark.slow
def test_request_errors_are_the_daemons_own(console):
    daemon, bridge = console
    assert bridge.request("ping")["pid"] == daemon.process.pid
    with ControlClient(daemon.control, keys=daemon.keys) as client:
        for command, params in [("acquire", {"method": "nta", "dilution": 0}),
                                ("acquire", {"method": "nta", "duration_s": "long"}),
                                ("preview", {"on": True}),  # several instruments: name one
                                ("set", {"instrument": "nta", "device": "camera", "setting": "exposure_ms",
                                         "value": -1}),
                                ("frobnicate", {})]:
            with pytest.raises(ExoacqError) as direct:
                client.request(command, **params)
            with pytest.raises(ExoacqError) as bridged:
                bridge.request(command, **params)
            assert (bridged.value.code, str(bridged.value)) == (direct.value.code, str(direct.value))
    # the operator stated, for the audit trail
    with pytest.raises(ExoacqError):
        bridge.request("stop", instrument="nta", operator="someone-else")
    entries = [json.loads(line) for line in (daemon.data_dir / "audit.jsonl").read_text().splitlines()]
    control = [e for e in entries if e["kind"] == "control"]
    assert {e["payload"]["command"] for e in control if e["claimed_operator"] == "h2-tester"} >= {
        "ping", "acquire", "preview", "set"}
    assert control[-1]["payload"]["command"] == "stop" and control[-1]["claimed_operator"] == "someone-else"
    assert control[-1]["operator"] == "console" and control[-1]["authenticated"] is True
    # a console without the keys gets nothing, and is told why
    keyless = DaemonBridge(daemon.control)
    try:
        with pytest.raises(ExoacqError) as refused:
            keyless.request("ping", timeout_s=1.0)
        assert refused.value.code == "no_daemon" and "CurveZMQ keys" in str(refused.value)
    finally:
        keyless.close()


@pytest.mark.slow
def test_preview_frames_come_with_their_features(console):
    daemon, bridge = console
    camera = bridge.request("status")["instruments"]["nta"]["devices"]["camera"]["settings"]
    assert bridge.request("preview", instrument="nta", on=True) == {"instrument": "nta", "preview": True}
    try:
        time.sleep(0.5)
        assert bridge.counters["frames"] == 0  # nobody watched yet: the frames socket is not connected

        async def watch(count: int) -> list[tuple[dict, bytes]]:
            got, seq = [], 0
            deadline = time.monotonic() + 15
            while len(got) < count and time.monotonic() < deadline:
                frame = await bridge.next_frame("nta", seq, max_width=320, timeout_s=2.0)
                if frame is not None:
                    got.append(frame)
                    seq = frame[0]["seq"]
            return got

        frames = asyncio.run(watch(10))
    finally:
        bridge.request("preview", instrument="nta", on=False)
    assert len(frames) == 10
    seqs = [h["seq"] for h, _ in frames]
    assert seqs == sorted(set(seqs))
    rows, columns = frames[-1][0]["shape"]
    assert [rows, columns] == [camera["height_px"], camera["width_px"]]
    factor = -(-columns // 320)
    for header, jpeg in frames:
        assert header["preview"] is True and header["run_id"] is None and header["instrument"] == "nta"
        assert header["display_shape"] == [rows // factor, columns // factor] and header["scale"] == 1 / factor
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
        assert list(image.shape) == header["display_shape"]
        assert header["levels"][0] < header["levels"][1] and header["focus_score"] > 0
        assert header["count"] == len(header["features"]["x"]) == len(header["features"]["mass"]) > 0
        assert header["features_frame_number"] == header["frame_number"] and header["minmass"] > 0
        assert all(0 <= x < columns for x in header["features"]["x"])
        assert header["encoded"] - header["timestamp"] < 2.0


@pytest.mark.slow
def test_a_run_publishes_states_progress_and_live_features(console):
    daemon, bridge = console

    async def follow() -> tuple:
        everything, few = bridge.events(maxsize=10_000), bridge.events(maxsize=3)
        reply = await asyncio.to_thread(bridge.request, "acquire", method="nta", instrument="nta",
                                        duration_s=2, captures=1, sample="bridge test")
        run_id, docs, headers = reply["run_id"], [], []

        async def frames() -> None:
            seq = 0
            while True:
                got = await bridge.next_frame("nta", seq, timeout_s=1.0)
                if got is not None:
                    headers.append(got[0])
                    seq = got[0]["seq"]

        task = asyncio.create_task(frames())
        try:
            while True:
                topic, doc = await asyncio.wait_for(everything.get(), 60)
                docs.append((topic, doc))
                if topic == "run.state" and doc["run_id"] == run_id and doc["state"] in ("done", "failed", "aborted"):
                    break
        finally:
            task.cancel()
        await asyncio.sleep(0.2)  # the last documents reach the small subscription too
        while everything.qsize():
            docs.append(await everything.get())
        kept = [await few.get() for _ in range(few.qsize())]
        everything.close()
        few.close()
        return run_id, docs, headers, everything.dropped, few, kept

    run_id, docs, headers, dropped, few, kept = asyncio.run(follow())
    assert dropped == 0
    states = [d["state"] for t, d in docs if t == "run.state" and d["run_id"] == run_id]
    assert states[-1] == "done" and "acquiring" in states
    progress = [d for t, d in docs if t == "nta.progress" and d["run_id"] == run_id]
    assert progress and all(d["instrument"] == "nta" for d in progress)
    # the small subscription kept the newest 3 and counted the rest as dropped
    assert few.dropped + len(kept) == len(docs) and len(kept) == 3
    assert [t for t, _ in kept] == [t for t, _ in docs[-3:]]
    snapshot = bridge.snapshot()
    assert snapshot["states"][run_id]["state"] == "done"
    assert snapshot["progress"]["nta"]["run_id"] == run_id
    assert snapshot["heartbeat"]["schema"].startswith("exoacq.daemon.heartbeat")
    # live frames of the run, with the tracking core's features and track tails
    ours = [h for h in headers if h["run_id"] == run_id]
    assert len(ours) >= 10 and not any(h["preview"] for h in ours)
    tracked = [h for h in ours if h["count"] > 0]
    assert tracked, "no live features during the run"
    assert any(h["tails"] for h in tracked)
    for h in tracked:
        assert h["count"] == len(h["features"]["x"]) and h["minmass"] > 0
        # the newest linked frame: a little behind the frame shown (or, the two travelling by their own
        # paths, a frame ahead)
        assert -3 <= h["frame_number"] - h["features_frame_number"] < 50
        assert all(len(tail) % 2 == 0 and 2 <= len(tail) <= 20 for tail in h["tails"])
    assert bridge.counters["malformed"] == 0


@pytest.mark.slow
def test_the_bridge_follows_a_restarted_daemon(console):
    daemon, bridge = console
    boot, frames_endpoint = bridge.boot_id, bridge.endpoints["frames"]
    assert boot is not None
    daemon.stop()
    with pytest.raises(ExoacqError) as gone:
        bridge.request("ping", timeout_s=0.5)
    assert gone.value.code == "no_daemon"
    daemon.start()  # the same control endpoint; results and frames on other ports
    deadline = time.monotonic() + 15
    while (bridge.boot_id == boot or bridge.endpoints["frames"] == frames_endpoint) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert bridge.boot_id != boot and bridge.counters["restarts"] == 1
    assert bridge.endpoints["frames"] != frames_endpoint
    assert bridge.request("ping")["pid"] == daemon.process.pid
    bridge.request("preview", instrument="nta", on=True)
    try:
        # the new daemon numbers its frames from 1 again: the viewer's old seq is not "newer"
        got = asyncio.run(bridge.next_frame("nta", 10 ** 6, timeout_s=5.0))
    finally:
        bridge.request("preview", instrument="nta", on=False)
    assert got is not None and got[0]["preview"] is True and got[0]["seq"] < 10 ** 6
