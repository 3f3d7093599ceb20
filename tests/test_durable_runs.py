"""Durable runs (issue 12): run.h5 written as the run goes; SIGKILL of the daemon then restart; a full disk.

Real daemons (``exoacq daemon --simulated`` subprocesses), real HDF5 files, a real tmpfs for the
full disk (skipped where mounting is not permitted).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import laser_settings, run_cli
from exoacq.bus import ControlClient
from exoacq.demo import start_daemon, stop_daemon
from exoacq.runfile import INTERRUPTED_SUFFIX, RUN_FILE, RunFile, Table, read_events

pytestmark = pytest.mark.slow

#: The simulated camera's image (exoacq.nta.settings: 640 x 480 px).
WIDTH_PX, HEIGHT_PX = 640, 480
FINAL = ("done", "failed", "aborted", "interrupted")


def wait_final(client: ControlClient, run_id: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = client.request("run", run_id=run_id)
        if record["state"] in FINAL:
            return record
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end within {timeout_s} s: {record['state']}")


def checkpointed_tracks(path: Path) -> int:
    """The track rows the last checkpoint of a run file being written covers (read with SWMR)."""
    if not path.exists():
        return 0
    try:
        with h5py.File(path, "r", libver="latest", swmr=True) as f:
            checkpoints = f["checkpoints"]
            return int(checkpoints[-1]["nta/tracks"]) if checkpoints.shape[0] else 0
    except (OSError, KeyError):  # being created
        return 0


@pytest.fixture(scope="module")
def killed_and_restarted(tmp_path_factory):
    """A daemon SIGKILLed during a 30 s NTA capture, once a checkpoint covers track rows; then a new
    daemon on the same data directory (kept for the next test)."""
    tmp = tmp_path_factory.mktemp("durable")
    data = tmp / "data"
    process, control = start_daemon(data, tmp / "first.log")
    try:
        with ControlClient(control) as client:
            run_id = client.request("acquire", method="nta", duration_s=30, captures=1, sample="kill me")["run_id"]
        path = data / "runs" / run_id / RUN_FILE
        deadline = time.monotonic() + 25
        while checkpointed_tracks(path) == 0:  # the pilot holds the first 100 frames (4 s) before linking
            assert time.monotonic() < deadline, "no checkpoint with track rows within 25 s"
            time.sleep(0.2)
        time.sleep(0.5)  # rows after the checkpoint: written, maybe not flushed
    finally:
        process.kill()
        process.wait()
    process, control = start_daemon(data, tmp / "second.log")
    yield {"data": data, "run_id": run_id, "control": control, "log": tmp / "second.log"}
    assert stop_daemon(process) == 0
    assert "Traceback" not in (tmp / "second.log").read_text()


def test_sigkill_mid_run_then_restart_keeps_data_up_to_the_last_checkpoint(killed_and_restarted):
    run_id, control = killed_and_restarted["run_id"], killed_and_restarted["control"]
    with ControlClient(control) as client:
        record = client.request("run", run_id=run_id)
    assert record["state"] == "interrupted", record
    kept = record["data_file"]
    assert kept["state"] == "recovered" and kept["rows"]["nta/tracks"] > 0 and kept["last_checkpoint"], kept
    path = Path(kept["path"])
    assert path.with_name(RUN_FILE + INTERRUPTED_SUFFIX).exists()  # the damaged original, kept
    with h5py.File(path, "r") as f:  # a plain open: any HDF5 tool reads it now
        assert f.attrs["run_id"] == run_id and f.attrs["method"] == "nta" and f.attrs["sample"] == "kill me"
        tracks = f["nta/tracks"][:]
        assert "x_px: px" in f["nta/tracks"].attrs["units"]
        events = read_events(f)
    assert len(tracks) == kept["rows"]["nta/tracks"]
    assert np.all(np.diff(tracks["frame"]) >= 0) and tracks["frame"][-1] > tracks["frame"][0]
    assert np.all((tracks["x_px"] >= 0) & (tracks["x_px"] < WIDTH_PX))
    assert np.all((tracks["y_px"] >= 0) & (tracks["y_px"] < HEIGHT_PX))
    assert np.all(tracks["mass"] > 0) and np.all(tracks["capture"] == 1)
    assert [e["state"] for e in events if e["schema"].startswith("exoacq.run.state")][:2] == ["preparing", "acquiring"]
    assert all(e["run_id"] == run_id for e in events)
    assert any(e["schema"].startswith("exoacq.nta.progress") for e in events)

    shown = run_cli("runs", "show", run_id, "--control", control)
    assert shown.returncode == 0, shown.stderr
    assert "interrupted" in shown.stdout
    assert f"data file: {path}" in shown.stdout and "recovered" in shown.stdout
    assert f"nta/tracks {kept['rows']['nta/tracks']}" in shown.stdout, shown.stdout


def test_a_normal_run_file_is_complete_and_matches_tracks_csv(killed_and_restarted):
    with ControlClient(killed_and_restarted["control"]) as client:
        run_id = client.request("acquire", method="nta", duration_s=6, captures=1, sample="normal")["run_id"]
        dls_id = client.request("acquire", method="dls", duration_s=2, runs=2, sample="normal")["run_id"]  # meanwhile
        record = wait_final(client, run_id)
        dls = wait_final(client, dls_id)
    assert record["state"] == "done", record["error"]
    assert dls["state"] == "done", dls["error"]
    with h5py.File(Path(dls["directory"]) / RUN_FILE, "r") as f:  # the DLS sub-runs' curves
        curves = f["dls/correlations"][:]
        assert f["dls/correlations"].attrs["units"] == "subrun: 1; lag_s: s; g2_minus_1: 1"
    assert sorted(set(curves["subrun"].tolist())) == [1, 2]
    assert np.all(np.diff(curves["lag_s"][curves["subrun"] == 1]) > 0)
    assert dls["data_file"]["rows"]["dls/correlations"] == len(curves)
    kept = record["data_file"]
    assert kept["state"] == "complete", kept
    run_dir = Path(record["directory"])
    csv = pd.read_csv(run_dir / "tracks.csv")
    with h5py.File(run_dir / RUN_FILE, "r") as f:
        tracks = f["nta/tracks"][:]
        events = read_events(f)
        last = f["checkpoints"][-1]
    assert len(tracks) == len(csv) == kept["rows"]["nta/tracks"] == last["nta/tracks"] > 0
    for column in ("frame", "particle", "x_px", "y_px", "mass"):
        np.testing.assert_allclose(tracks[column], csv[column].to_numpy(), atol=1e-4)
    states = [e["state"] for e in events if e["schema"].startswith("exoacq.run.state")]
    assert states == ["preparing", "acquiring", "processing", "done"]
    assert sum(e["schema"].startswith("exoacq.nta.result") for e in events) == 1


@pytest.fixture
def tiny_filesystem(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 3 MB tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_data_directory_stops_the_run_cleanly(tiny_filesystem, tmp_path):
    data = tiny_filesystem / "data"
    process, control = start_daemon(data, tmp_path / "daemon.log")
    try:
        with ControlClient(control) as client:
            # the raw video (kept by default, ~4 MB/s) fills 3 MB within a second or two
            run_id = client.request("acquire", method="nta", duration_s=20, captures=1, sample="fills")["run_id"]
            record = wait_final(client, run_id, timeout_s=30)
            assert record["state"] == "failed"
            assert record["error"].startswith("data directory full: ") and str(data) in record["error"], record
            listed = next(r for r in client.request("runs") if r["run_id"] == run_id)
            assert listed["state"] == "failed" and listed["error"] == record["error"]
            assert client.request("status")["ready"]  # still serving
            assert laser_settings(client.request("status"))["emission"] is False  # the laser is off
        db = sqlite3.connect(data / "runs.sqlite")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            db.close()
        with h5py.File(Path(record["data_file"]["path"]), "r") as f:  # readable up to its last checkpoint
            assert [e["state"] for e in read_events(f)][:1] == ["preparing"]
    finally:
        assert stop_daemon(process) == 0
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()  # a full disk is no internal error


def test_a_write_error_in_the_run_file_keeps_what_the_last_checkpoint_covers(tiny_filesystem):
    """h5py on a disk that fills: the write raises (no chunk cache), the file closes cut back to its
    last checkpoint, and every row it counts is the row that was written."""
    path = tiny_filesystem / RUN_FILE
    table = Table((("n", "i8", "1"), ("x_px", "f8", "px")))
    runfile = RunFile(path, {"t": table}, {"run_id": "r"})
    runfile.append("t", [[i, i / 2] for i in range(2000)])
    runfile.checkpoint()
    filler = os.open(tiny_filesystem / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(filler, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(filler)
    with pytest.raises(OSError, match="No space left|errno = 28|Errno 28"):
        runfile.append("t", [[i, i / 2] for i in range(2000, 40000)])
        runfile.checkpoint()
    runfile.abandon()
    with h5py.File(path, "r") as f:
        rows = f["t"][:]
        assert f["checkpoints"][-1]["t"] == len(rows) == 2000
    np.testing.assert_array_equal(rows["n"], np.arange(2000))
    assert shutil.disk_usage(tiny_filesystem).free < 65536
