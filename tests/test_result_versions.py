"""Result versions: a stored run re-processed through the daemon (`reprocess`), every version kept
and retrievable, version 1 unchanged byte for byte, the operator's pick (`select_version`).

The generic path uses a lab's own method plugin (as tests/test_plugins.py does) whose engine reads a
real (simulated Cobolt) laser's measured power into a CSV file and whose ``reprocess`` hook
recomputes the run's statistic from that file with another threshold.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import RunningDaemon, load_schema
from exoacq.bus import ControlClient, loads, subscribe
from exoacq.errors import ExoacqError
from exoacq.storage import RunStore

LAB_METHOD = '''
"""A lab's own method: step a laser's power 1, 2, ... N mW, read the measured power back each
time (readings.csv), and report the mean of the readings at or above a threshold."""
import csv
import json
import time
from pathlib import Path

from exoacq.errors import ExoacqError, ProtocolError
from exoacq.methods import Method, MethodService, Role


def summarise(path, threshold_mw):
    """The readings of a run's file: how many, how many at or above ``threshold_mw``, their mean (mW)."""
    with open(path, newline="") as f:
        readings = [float(row["power_mw"]) for row in csv.DictReader(f)]
    kept = [r for r in readings if r >= threshold_mw]
    return {"readings": len(readings), "kept": len(kept), "threshold_mw": threshold_mw,
            "mean_power_mw": sum(kept) / len(kept) if kept else None}


def document(run_id, settings, summary):
    return {"schema": "lab.meter.result/1", "run_id": run_id, "method": "meter", "sample": settings["sample"],
            **summary}


class MeterService(MethodService):
    def setup(self, run):
        self.instrument.device("laser").set_power_mw(0.0)

    def exec(self, run):
        laser = self.instrument.device("laser")
        laser.set_emission(True)
        with open(Path(run.output_dir) / "readings.csv", "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["step", "power_mw"])
            for step in range(1, run.settings["steps"] + 1):
                if run.abort.is_set():
                    break
                laser.set_power_mw(float(step))
                time.sleep(0.02)
                out.writerow([step, laser.power_mw()])
        return {"steps": run.settings["steps"]}

    def teardown(self, run):
        self.instrument.device("laser").set_emission(False)

    def on_processing(self, status):
        run = status.run
        summary = summarise(Path(run.output_dir) / "readings.csv", run.settings["threshold_mw"])
        self.context.finish(status, document(run.run_id, run.settings, summary))


class MeterMethod(Method):
    name = "meter"
    description = "a laser's measured power above a threshold (a lab's own method)"
    roles = {"laser": Role(("laser",), description="any laser")}
    topics = {"meter.progress": "lab.meter.progress/1", "meter.result": "lab.meter.result/1"}

    def validate_request(self, params, instrument=None, sop=None):
        steps = params.get("steps", 8)
        if not isinstance(steps, int) or not 1 <= steps <= 50:
            raise ProtocolError(f"steps = {steps!r}: must be a whole number from 1 to 50")
        return {"steps": steps, "threshold_mw": 0.0, "sample": params.get("sample", "unnamed"),
                "dilution": params.get("dilution", 1.0)}

    def service(self, instrument, context):
        return MeterService(instrument, context)

    def simulated_instrument(self):
        return {"method": "meter", "devices": {"laser": {"driver": "cobolt", "simulated": True}}}

    def reprocess(self, record, overrides, output_dir):
        unknown = sorted(set(overrides) - {"threshold_mw"})
        if unknown:
            raise ExoacqError(f"overrides: unknown setting {', '.join(unknown)}; meter re-processes threshold_mw")
        threshold = overrides.get("threshold_mw", record["settings"]["threshold_mw"])
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
            raise ExoacqError(f"threshold_mw = {threshold!r}: must be a power in mW")
        summary = summarise(Path(record["directory"]) / "readings.csv", float(threshold))
        (Path(output_dir) / "summary.json").write_text(json.dumps(summary))
        return document(record["run_id"], record["settings"], summary)

    def format_result(self, document):
        return f"{document['kept']} of {document['readings']} readings >= {document['threshold_mw']:g} mW: " \\
               f"mean {document['mean_power_mw']} mW"


METHOD = MeterMethod()
'''


@pytest.fixture(scope="module")
def lab_env(tmp_path_factory):
    """The method as an installed distribution outside exoacq: a module and its dist-info with the entry point."""
    site = tmp_path_factory.mktemp("site")
    (site / "labmeter.py").write_text(textwrap.dedent(LAB_METHOD))
    info = site / "labmeter-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labmeter\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[exoacq.methods]\nmeter = labmeter:METHOD\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def lab_daemon(tmp_path_factory, lab_env):
    d = RunningDaemon(tmp_path_factory.mktemp("versions"), env=lab_env)
    yield d
    if d.process.poll() is None:
        assert d.stop() == 0, d.log.read_text()
    assert "Traceback" not in d.log.read_text(), d.log.read_text()


def cli(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "exoacq", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def wait_done(client, run_id, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = client.request("run", run_id=run_id)
        if record["state"] in ("done", "failed", "aborted"):
            return record
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish")


def wait_version(client, run_id, version, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entry = next(v for v in client.request("run", run_id=run_id)["versions"] if v["version"] == version)
        if entry["state"] != "processing":
            return entry
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} version {version} was not made")


def catalog_text(data_dir: Path, run_id: str, version: int) -> str:
    """A version's text in the catalog, read directly (not through the daemon)."""
    db = sqlite3.connect(f"file:{data_dir / 'runs.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT result FROM results WHERE run_id = ? AND version = ?",
                          (run_id, version)).fetchone()[0]
    finally:
        db.close()


@pytest.fixture(scope="module")
def meter_run(lab_daemon):
    """One finished run of the lab method: 8 readings of 1..8 mW, all kept (threshold 0)."""
    with ControlClient(lab_daemon.control) as client:
        run_id = client.request("acquire", method="meter", steps=8, sample="laser check")["run_id"]
        record = wait_done(client, run_id)
    assert record["state"] == "done", record
    return record


def test_reprocessing_makes_new_versions_and_keeps_the_first_byte_for_byte(lab_daemon, meter_run):
    run_id = meter_run["run_id"]
    run_dir = Path(meter_run["directory"])
    first_file = (run_dir / "result.json").read_bytes()
    first_catalog = catalog_text(lab_daemon.data_dir, run_id, 1)
    assert first_file.decode() == first_catalog
    v1 = meter_run["result"]
    # The measured power of the simulated Cobolt in constant-power mode is its set point: 1..8 mW.
    assert (v1["readings"], v1["kept"], v1["mean_power_mw"]) == (8, 8, pytest.approx(4.5))
    assert meter_run["current_version"] == 1 and [v["version"] for v in meter_run["versions"]] == [1]
    assert meter_run["versions"][0]["reason"] == "acquired" and "version" not in v1

    sub = subscribe(lab_daemon.endpoints["results"], ["run.version", "meter.result"])
    try:
        time.sleep(0.3)
        with ControlClient(lab_daemon.control) as client:
            # Same settings: the same numbers. Then a threshold of 4.5 mW keeps 5, 6, 7, 8 mW.
            same = client.request("reprocess", run_id=run_id)
            other = client.request("reprocess", run_id=run_id, overrides={"threshold_mw": 4.5},
                                   reason="threshold per SOP rev. B")
            assert (same["version"], same["state"], other["version"]) == (2, "processing", 3)
            assert wait_version(client, run_id, 3)["state"] == "done"
            documents = []
            deadline = time.monotonic() + 5
            while len(documents) < 6 and time.monotonic() < deadline:  # 2 x (processing, done, result)
                if sub.poll(200):
                    topic, payload = sub.recv_multipart()
                    documents.append((topic.decode(), loads(payload)))
            record = client.request("run", run_id=run_id)
            v2 = client.request("run", run_id=run_id, version=2)["result"]
            v3 = client.request("run", run_id=run_id, version=3)["result"]
            again_v1 = client.request("run", run_id=run_id, version=1)
    finally:
        sub.close(linger=0)

    assert {k: v for k, v in v2.items() if k != "version"} == v1 and v2["version"] == 2
    assert (v3["kept"], v3["mean_power_mw"], v3["threshold_mw"], v3["version"]) == (4, pytest.approx(6.5), 4.5, 3)
    assert again_v1["result"] == v1 and again_v1["version"] == 1
    # The newest version is the run's result; every version is listed with why and what changed.
    assert record["result"] == v3 and record["current_version"] == 3 and record["picked_version"] is None
    assert [(v["version"], v["state"], v["current"], v["overrides"], v["reason"]) for v in record["versions"]] == [
        (1, "done", False, {}, "acquired"), (2, "done", False, {}, "reprocessed"),
        (3, "done", True, {"threshold_mw": 4.5}, "threshold per SOP rev. B")]
    # Files: version 1 untouched, each later version beside it, the hook's files in vN/.
    assert (run_dir / "result.json").read_bytes() == first_file
    assert catalog_text(lab_daemon.data_dir, run_id, 1) == first_catalog
    assert json.loads((run_dir / "result-v3.json").read_text()) == v3
    assert (run_dir / "result-v3.json").read_text() == catalog_text(lab_daemon.data_dir, run_id, 3)
    assert json.loads((run_dir / "v3" / "summary.json").read_text())["kept"] == 4
    # Published: run.version processing -> done, and the method's result with its version.
    schema = load_schema("run.version")
    states = [(d["version"], d["state"]) for t, d in documents if t == "run.version"]
    assert sorted(states) == [(2, "done"), (2, "processing"), (3, "done"), (3, "processing")]
    for topic, document in documents:
        if topic == "run.version":
            jsonschema.validate(document, schema)
    assert sorted(d["version"] for t, d in documents if t == "meter.result") == [2, 3]


def test_the_operator_picks_the_runs_result(lab_daemon, lab_env):
    with ControlClient(lab_daemon.control) as client:
        run_id = client.request("acquire", method="meter", steps=4)["run_id"]
        assert wait_done(client, run_id)["state"] == "done"
        version = client.request("reprocess", run_id=run_id, overrides={"threshold_mw": 2.5})["version"]
        assert wait_version(client, run_id, version)["state"] == "done"
        assert client.request("run", run_id=run_id)["result"]["kept"] == 2  # 3 and 4 mW
        picked = client.request("select_version", run_id=run_id, version=1)
        assert picked == {"run_id": run_id, "current_version": 1, "picked_version": 1}
        # A pick holds against newer versions: a released result does not change by itself.
        newer = client.request("reprocess", run_id=run_id, overrides={"threshold_mw": 3.5})["version"]
        assert wait_version(client, run_id, newer)["current"] is False
        assert client.request("run", run_id=run_id)["result"]["kept"] == 4
        with pytest.raises(ExoacqError, match="no result version 9"):
            client.request("select_version", run_id=run_id, version=9)
        with pytest.raises(ExoacqError, match="version = 0"):
            client.request("select_version", run_id=run_id, version=0)
    proc = cli(lab_env, "runs", "show", run_id, "--control", lab_daemon.control)
    assert proc.returncode == 0, proc.stderr
    assert "picked by the operator" in proc.stdout and "4 of 4 readings >= 0 mW" in proc.stdout
    assert "threshold_mw=3.5" in proc.stdout
    proc = cli(lab_env, "runs", "pick", run_id, "newest", "--control", lab_daemon.control)
    assert proc.returncode == 0 and f"run {run_id}: its result is version 3 (the newest)" in proc.stdout
    proc = cli(lab_env, "runs", "show", run_id, "--version", "2", "--json", "--control", lab_daemon.control)
    assert json.loads(proc.stdout)["result"]["kept"] == 2
    proc = cli(lab_env, "runs", "pick", run_id, "two", "--control", lab_daemon.control)
    assert proc.returncode == 2 and "version 'two': must be a version number" in proc.stderr


def test_the_reprocess_verb_waits_for_the_version_and_prints_it(lab_daemon, meter_run, lab_env):
    run_id = meter_run["run_id"]
    proc = cli(lab_env, "reprocess", run_id, "--set", "threshold_mw=7", "--reason", "cli", "--json",
               "--control", lab_daemon.control)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert (document["kept"], document["mean_power_mw"]) == (2, pytest.approx(7.5))  # 7 and 8 mW
    assert f"run {run_id}: version {document['version']} processing" in proc.stderr
    proc = cli(lab_env, "reprocess", run_id, "--set", "threshold_mw=8", "--control", lab_daemon.control)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 8 readings >= 8 mW: mean 8.0 mW" in proc.stdout and "threshold_mw=8" in proc.stdout


def test_a_failed_reprocessing_is_recorded_and_changes_nothing(lab_daemon, meter_run, lab_env):
    run_id = meter_run["run_id"]
    with ControlClient(lab_daemon.control) as client:
        before = client.request("run", run_id=run_id)
    proc = cli(lab_env, "reprocess", run_id, "--set", "gain=3", "--control", lab_daemon.control)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("exoacq: error: run ") and \
        "failed: overrides: unknown setting gain; meter re-processes threshold_mw" in proc.stderr
    with ControlClient(lab_daemon.control) as client:
        after = client.request("run", run_id=run_id)
        failed = after["versions"][-1]
        assert (failed["state"], failed["current"], failed["overrides"]) == ("failed", False, {"gain": 3})
        assert after["result"] == before["result"] and after["current_version"] == before["current_version"]
        with pytest.raises(ExoacqError, match=f"version {failed['version']} is failed: overrides: unknown"):
            client.request("run", run_id=run_id, version=failed["version"])
        with pytest.raises(ExoacqError, match="only a finished version"):
            client.request("select_version", run_id=run_id, version=failed["version"])
        with pytest.raises(ExoacqError, match="overrides = 3: must be an object"):
            client.request("reprocess", run_id=run_id, overrides=3)
        with pytest.raises(ExoacqError, match="no run with id 'nope'"):
            client.request("reprocess", run_id="nope")
        # A run still recording cannot be re-processed.
        busy = client.request("acquire", method="meter", steps=40)["run_id"]
        with pytest.raises(ExoacqError, match=f"run {busy} is (queued|preparing|acquiring) without a result"):
            client.request("reprocess", run_id=busy)
        wait_done(client, busy)


def test_versions_in_the_catalog_survive_a_crash_and_older_catalogs(tmp_path):
    """Without a daemon: a catalog from before versions gets its results as version 1, unchanged;
    a version left `processing` by a daemon that died is marked failed at the next start."""
    data = tmp_path / "data"
    data.mkdir()
    old = sqlite3.connect(data / "runs.sqlite")
    old.executescript("""CREATE TABLE runs (run_id TEXT PRIMARY KEY, method TEXT NOT NULL, sample TEXT NOT NULL,
        settings TEXT NOT NULL, state TEXT NOT NULL, created TEXT NOT NULL, started TEXT, finished TEXT,
        result TEXT, error TEXT);""")
    text = '{"schema":"exoacq.nta.result/1","run_id":"nta-old","size_nm":{"mean":101.25}}'
    old.execute("INSERT INTO runs VALUES ('nta-old', 'nta', 's', '{}', 'done', '2025-01-01T00:00:00Z', "
                "'2025-01-01T00:00:01Z', '2025-01-01T00:01:00Z', ?, NULL)", (text,))
    old.commit()
    old.close()
    store = RunStore(data)
    store.run_dir("nta-old").mkdir()
    record = store.get("nta-old")
    assert record["result"]["size_nm"]["mean"] == 101.25 and record["current_version"] == 1
    assert record["versions"] == [{"version": 1, "state": "done", "created": "2025-01-01T00:01:00Z",
                                   "reason": "acquired", "overrides": {}, "current": True, "error": None}]
    assert store.reserve_version("nta-old", "reprocessed", {"minmass": 300}) == 2
    with pytest.raises(ExoacqError, match="never rewritten"):
        store.save_result("nta-old", {"schema": "x"})
    store.close()
    store = RunStore(data)
    assert store.fail_unfinished_versions("the daemon stopped") == [("nta-old", 2)]
    assert store.get("nta-old")["versions"][1]["error"] == "the daemon stopped"
    assert store.reserve_version("nta-old", "reprocessed", {"minmass": 400}) == 3
    store.save_version("nta-old", 3, {"schema": "exoacq.nta.result/1", "version": 3})
    store.select_version("nta-old", 1)
    store.close()
    store = RunStore(data)  # a restarted daemon: the pick holds, version 1 is the text first stored
    record = store.get("nta-old")
    assert (record["current_version"], record["picked_version"]) == (1, 1)
    assert [(v["version"], v["state"], v["current"]) for v in record["versions"]] == [
        (1, "done", True), (2, "failed", False), (3, "done", False)]
    assert store._db.execute("SELECT result FROM runs").fetchone()[0] == text
    assert store.get("nta-old", version=3)["result"]["version"] == 3
    store.close()


@pytest.mark.slow
def test_an_nta_run_reprocessed_with_another_minmass_keeps_both_versions(lab_daemon):
    with ControlClient(lab_daemon.control) as client:
        run_id = client.request("acquire", method="nta", duration_s=3, captures=2, sample="versions")["run_id"]
        record = wait_done(client, run_id, timeout_s=90)
        assert record["state"] == "done", record
        run_dir = Path(record["directory"])
        first = (run_dir / "result.json").read_bytes()
        v1 = record["result"]
        minmass = v1["settings"]["tracking"]["minmass"]
        same = client.request("reprocess", run_id=run_id)["version"]
        version = client.request("reprocess", run_id=run_id, overrides={"minmass": minmass * 3})["version"]
        entry = wait_version(client, run_id, version, timeout_s=120)
        assert entry["state"] == "done" and wait_version(client, run_id, same)["state"] == "done", entry
        again = client.request("run", run_id=run_id, version=same)["result"]
        v3 = client.request("run", run_id=run_id, version=version)["result"]
        assert client.request("run", run_id=run_id, version=1)["result"] == v1
    jsonschema.validate(v3, load_schema("nta.result"))
    assert (run_dir / "result.json").read_bytes() == first
    assert catalog_text(lab_daemon.data_dir, run_id, 1) == first.decode()
    # The original settings reproduce every number of the live result.
    assert numbers(again) == numbers(v1)
    assert v3["version"] == version and v3["reprocessed"]["overrides"] == {"minmass": minmass * 3}
    # A threshold three times higher detects fewer, brighter particles.
    assert v3["particles_per_frame"] < v1["particles_per_frame"]


def numbers(document):
    """A result without what differs between analyses of the same data: time, file paths, provenance."""
    if isinstance(document, dict):
        return {k: numbers(v) for k, v in document.items() if k not in ("time", "files", "reprocessed", "version")}
    if isinstance(document, list):
        return [numbers(v) for v in document]
    return document
