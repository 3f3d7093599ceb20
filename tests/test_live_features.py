"""What a live viewer gets from a real daemon during an NTA run: the tracking core's features and track tails
on the frames socket (topic ``features``), the running size histogram in ``nta.progress``, and the run's files
through the read-only ``run_files`` / ``run_file`` commands (chunks that reassemble to the bytes on disk,
paths kept inside the run's folder)."""
from __future__ import annotations

import base64
import json
import os
import threading
import time

import jsonschema
import numpy as np
import pytest
import zmq

from conftest import RunningDaemon, load_schema
from exoacq.bus import ControlClient
from exoacq.dls.service import progress_fit
from exoacq.errors import ExoacqError
from exoacq.nta.analysis import PILOT_FRAMES, TAIL_POINTS

DURATION_S = 6.0  # past the pilot's 100 frames at 25 frames/s


def _collect(address: str, topics: list[bytes], stop: threading.Event, into: list) -> threading.Thread:
    """A thread with its own SUB socket: every (topic, JSON) message of ``topics`` until ``stop``."""
    ready = threading.Event()

    def run() -> None:
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(address)
        for topic in topics:
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        ready.set()
        try:
            while not stop.is_set():
                if sub.poll(100):
                    topic, payload = sub.recv_multipart()[:2]
                    into.append((topic.decode(), json.loads(payload), time.monotonic()))
        finally:
            sub.close(linger=0)
            ctx.term()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(5)
    return thread


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """A daemon, one NTA capture with every features document and progress document heard, the result."""
    daemon = RunningDaemon(tmp_path_factory.mktemp("live"))
    frames, documents, stop = [], [], threading.Event()
    threads = [_collect(daemon.endpoints["frames"], [b"features"], stop, frames),
               _collect(daemon.endpoints["results"], [b"nta.", b"run.state"], stop, documents)]
    time.sleep(0.5)  # the subscriptions reach the publishers
    try:
        with ControlClient(daemon.control, timeout_s=10.0) as client:
            run_id = client.request("acquire", method="nta", duration_s=DURATION_S, captures=1,
                                    sample="live features")["run_id"]
            deadline = time.monotonic() + 60
            while not any(t == "nta.result" and d["run_id"] == run_id for t, d, _ in documents):
                assert time.monotonic() < deadline, daemon.log.read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(0.3)
            stop.set()
            for thread in threads:
                thread.join(5)
            yield {"daemon": daemon, "client": client, "run_id": run_id,
                   "features": [d for t, d, _ in frames if d["run_id"] == run_id],
                   "received": [s for t, d, s in frames if d["run_id"] == run_id],
                   "progress": [d for t, d, _ in documents if t == "nta.progress" and d["run_id"] == run_id],
                   "result": next(d for t, d, _ in documents if t == "nta.result" and d["run_id"] == run_id)}
    finally:
        stop.set()
        if daemon.process.poll() is None:
            assert daemon.stop() == 0
        assert "Traceback" not in daemon.log.read_text(), daemon.log.read_text()


@pytest.mark.slow
def test_features_documents_carry_the_linked_features_and_track_tails(live_run):
    docs, result = live_run["features"], live_run["result"]
    # at most 15 a second (the linker's limit), over the capture and its processing
    assert len(docs) >= 0.5 * DURATION_S * 15 * 0.5, len(docs)
    span_s = live_run["received"][-1] - live_run["received"][0]
    assert len(docs) <= 15 * span_s * 1.2 + 3
    seqs = [d["seq"] for d in docs]
    assert seqs == sorted(set(seqs))
    numbers = [d["frame_number"] for d in docs]
    assert numbers == sorted(set(numbers)) and numbers[-1] < result["frames"]["processed"]
    for d in docs:
        assert d["instrument"] == "nta" and d["capture"] == 1 and isinstance(d["timestamp"], float)
        assert d["minmass"] == pytest.approx(result["threshold"]["minmass"])
        assert len(d["features"]["x"]) == len(d["features"]["y"]) == len(d["features"]["mass"])
        assert all(m >= d["minmass"] for m in d["features"]["mass"])
    counts = np.array([len(d["features"]["x"]) for d in docs])
    assert counts.mean() == pytest.approx(result["particles_per_frame"], rel=0.3)

    search_px = result["link_search_range_px"]
    pilot = [d for d in docs if d["frame_number"] < PILOT_FRAMES]
    after = [d for d in docs if d["frame_number"] >= PILOT_FRAMES]
    assert pilot and after and any(d["tails"] for d in pilot)  # the provisional tracks during the pilot
    long_tails = 0
    for d in after:
        ends = {(x, y) for x, y in zip(d["features"]["x"], d["features"]["y"])}
        assert 0 < len(d["tails"]) <= len(ends)
        for tail in d["tails"]:
            assert len(tail) % 2 == 0 and 4 <= len(tail) <= 2 * TAIL_POINTS
            xy = np.reshape(tail, (-1, 2))
            assert tuple(xy[-1]) in ends  # each tail ends at a feature of this frame
            steps = np.hypot(*np.diff(xy, axis=0).T)
            assert steps.max() <= search_px + 0.02  # links within the search range chosen by the pilot
            long_tails += len(xy) == TAIL_POINTS
    assert long_tails > 0


@pytest.mark.slow
def test_progress_carries_the_running_histogram(live_run):
    schema = load_schema("nta.progress")
    progress = live_run["progress"]
    for document in progress:
        jsonschema.validate(document, schema)
    with_tracks = [d for d in progress if d["tracks"]["used"] > 0]
    assert with_tracks
    for d in progress:
        h = d["histogram"]
        assert h["bin_width_nm"] == 5.0 and len(h["bin_centres_nm"]) == len(h["counts"])
        if d["tracks"]["used"] == 0:
            assert h["counts"] == []
    last = with_tracks[-1]
    h = last["histogram"]
    centres, counts = np.array(h["bin_centres_nm"]), np.array(h["counts"])
    # the same tracks as size_nm: (nearly) every used track in a bin, and the binned mean within half a bin
    assert 0.95 * last["tracks"]["used"] <= counts.sum() <= last["tracks"]["used"]
    assert np.sum(centres * counts) / counts.sum() == pytest.approx(last["size_nm"]["mean"], abs=2.6)
    assert centres[0] == 2.5 and np.allclose(np.diff(centres), 5.0)


@pytest.mark.slow
def test_run_files_are_listed_and_read_in_chunks(live_run):
    client, run_id, daemon = live_run["client"], live_run["run_id"], live_run["daemon"]
    folder = daemon.data_dir / "runs" / run_id
    files = {f["path"]: f for f in client.request("run_files", run_id=run_id)}
    assert "tracks.csv" in files and "result.json" in files
    for path, info in files.items():
        assert info["bytes"] == (folder / path).stat().st_size and info["modified"].endswith("Z")

    def fetch(path: str, length: int) -> bytes:
        data, offset = b"", 0
        while True:
            chunk = client.request("run_file", run_id=run_id, path=path, offset=offset, length=length)
            assert chunk["offset"] == offset and chunk["path"] == path
            data += base64.b64decode(chunk["data"])
            offset = len(data)
            if chunk["eof"]:
                assert chunk["bytes"] == len(data)
                return data

    assert fetch("tracks.csv", 65536) == (folder / "tracks.csv").read_bytes()
    biggest = max(files, key=lambda p: files[p]["bytes"])
    if files[biggest]["bytes"] > 1024 * 1024:  # the default (largest) chunk, several of them
        assert fetch(biggest, 1024 * 1024) == (folder / biggest).read_bytes()

    # nothing outside the run's folder, nothing that is not a regular file
    (folder / "outside").symlink_to("/etc/hostname")
    os.mkfifo(folder / "pipe")
    for path in ("../../audit.jsonl", "/etc/passwd", "a/../../x", "..", "outside", "pipe", ".", "C:\\x"):
        with pytest.raises(ExoacqError) as refused:
            client.request("run_file", run_id=run_id, path=path)
        assert refused.value.code == "bad_request", (path, refused.value)
    assert "pipe" not in {f["path"] for f in client.request("run_files", run_id=run_id)}
    for request, code in [({"path": "no-such.csv"}, "unknown_file"), ({"path": "tracks.csv", "length": 0}, "out_of_range"),
                          ({"path": "tracks.csv", "length": 2 * 1024 * 1024}, "out_of_range"),
                          ({"path": "tracks.csv", "offset": 10 ** 12}, "out_of_range"),
                          ({"path": "tracks.csv", "offset": "0"}, "bad_request")]:
        with pytest.raises(ExoacqError) as refused:
            client.request("run_file", run_id=run_id, **request)
        assert refused.value.code == code, (request, refused.value)
    for command, params in (("run_files", {}), ("run_file", {"path": "tracks.csv"})):
        with pytest.raises(ExoacqError) as refused:
            client.request(command, run_id="nta-00000000-000000-0000", **params)
        assert refused.value.code == "unknown_run"
    # read-only: recorded in the audit trail as acts: false
    entries = [json.loads(line) for line in (daemon.data_dir / "audit.jsonl").read_text().splitlines()]
    reads = [e for e in entries if e["kind"] == "control" and e["payload"]["command"] in ("run_files", "run_file")]
    assert reads and all(e["payload"]["acts"] is False and "reply" not in e["payload"] for e in reads)


@pytest.mark.slow
def test_preview_frames_carry_their_detection_threshold(live_run):
    from exoacq.bus import decode_frame

    client = live_run["client"]
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(live_run["daemon"].endpoints["frames"])
    sub.setsockopt(zmq.SUBSCRIBE, b"frame")
    time.sleep(0.3)
    try:
        client.request("preview", on=True, instrument="nta")
        assert sub.poll(15_000)
        header, _ = decode_frame(sub.recv_multipart(copy=False))
        assert header["preview"] is True and header["minmass"] > 0
        assert header["features"]["mass"] and min(header["features"]["mass"]) >= header["minmass"]
    finally:
        client.request("preview", on=False, instrument="nta")
        sub.close(linger=0)
        ctx.term()


def test_dls_progress_fit_is_the_cumulant_fit_of_the_curve_so_far():
    """A 100 nm curve (g2 - 1 = 0.9 exp(-2 Gamma tau)) at 90 degrees, its longest lags not filled yet."""
    from exoacq.dls.cumulants import scattering_vector_per_nm
    from exoacq.physics import stokes_einstein_diffusion_um2_s

    q = scattering_vector_per_nm(90.0, 633.0, 1.332)
    gamma = stokes_einstein_diffusion_um2_s(100.0, 25.0, 0.89) * 1e6 * q ** 2  # 1/s
    lag = 25e-9 * np.cumprod(np.r_[1.0, np.full(199, 1.09)])
    y = 0.9 * np.exp(-2.0 * gamma * lag)
    y[150:] = np.nan  # no data there yet
    fit = progress_fit(lag, y, q_per_nm=q, temperature_c=25.0, viscosity_mpa_s=0.89, fit_fraction=0.1)
    assert fit["z_average_nm"] == pytest.approx(100.0, rel=1e-3) and abs(fit["pdi"]) < 1e-3
    assert fit["lag_s"][0] == pytest.approx(25e-9) and len(fit["lag_s"]) == len(fit["g2_minus_1"]) >= 8
    assert np.allclose(fit["g2_minus_1"], 0.9 * np.exp(-2.0 * gamma * np.array(fit["lag_s"])), rtol=1e-6)
    # noise only (a blank), or too few lags yet: nothing to fit
    noise = np.random.default_rng(1).normal(0.0, 1e-3, lag.size)
    assert progress_fit(lag, noise, q_per_nm=q, temperature_c=25.0, viscosity_mpa_s=0.89, fit_fraction=0.1) is None
    assert progress_fit(lag[:5], y[:5], q_per_nm=q, temperature_c=25.0, viscosity_mpa_s=0.89,
                        fit_fraction=0.1) is None
