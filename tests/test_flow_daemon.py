"""Nano flow cytometry on the daemon and the command line: a simulated acquisition through the real
oscilloscope driver over VISA, live progress and a result that validate, an FCS 3.1 file per run that
FlowKit opens, controls attached by run id, a cytometer's export folder, and the CLI verbs on real files."""
from __future__ import annotations

import json
import shutil
import threading
import time

import jsonschema
import pytest

from conftest import TESTDATA, load_schema, run_cli
from exoacq.bus import without_transport
from test_daemon import plain_subscriber

FLOW = TESTDATA / "flow"
needs_testdata = pytest.mark.skipif(not FLOW.is_dir(), reason=f"real FCS files not found at {FLOW}")
CALIBRATION = "calibrations/flow/simulated-cytometer.toml"


def _acquire(daemon, *args: str) -> dict:
    proc = run_cli("acquire", "flow", *args, "--json", "--control", daemon.control, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_simulated_flow_run_publishes_progress_and_one_valid_result_and_writes_fcs(daemon):
    import flowkit

    received: list[tuple[str, dict]] = []
    with plain_subscriber(daemon.endpoints["results"], b"flow.") as sub:
        stop = threading.Event()

        def collect():
            while not stop.is_set():
                if sub.poll(100):
                    topic, payload = sub.recv_multipart()
                    received.append((topic.decode(), json.loads(payload)))

        collector = threading.Thread(target=collect)
        collector.start()
        try:
            result = _acquire(daemon, "--duration", "3", "--dilution", "200", "--sample", "MSC-EV lot 7")
            time.sleep(0.5)
        finally:
            stop.set()
            collector.join()
    assert result["instrument"] == "flow" and result["sample"] == "MSC-EV lot 7" and result["control"] is None
    jsonschema.validate(result, load_schema("flow.result"))
    progress = [d for t, d in received if t == "flow.progress" and d["run_id"] == result["run_id"]]
    assert len(progress) >= 3
    schema = load_schema("flow.progress")
    for document in progress:
        jsonschema.validate(document, schema)
    live = [d for d in progress if d["events"]]
    assert live and live[-1]["dot_plot"]["x"] and live[-1]["trigger"]["threshold_counts"] > 0
    assert max(d["live_time_s"] for d in progress) == pytest.approx(3.0)
    finals = [d for t, d in received if t == "flow.result" and d["run_id"] == result["run_id"]]
    assert [without_transport(d) for d in finals] == [result]  # the CLI prints the result as stored

    # 3 s of the default simulated sample (2e10 EVs/mL, median 80 nm) diluted x200 at 1 uL/min:
    # ~1,250 particles/s above the ~63 nm detection limit (accuracy: tests/test_flow_accuracy.py)
    assert result["events"]["total"] > 2500 and result["acquisition"]["live_time_s"] == pytest.approx(3.0)
    assert result["volume_ul"] == pytest.approx(1.0 * 3.0 / 60.0)
    assert result["concentration_per_ml"] == pytest.approx(1.5e10, rel=0.15)
    assert 55 < result["detection_limit_nm"] < 70 and 75 < result["size_nm"]["median"] < 100
    assert set(result["markers"]) == {"CD63", "CD81"}
    assert result["calibration"]["source"].startswith("simulated cytometer")
    assert result["calibration"]["spillover"] == ["FL1-H", "FL2-H"]

    fcs = daemon.data_dir / "runs" / result["run_id"] / "events.fcs"
    assert result["files"]["fcs"] == str(fcs)
    sample = flowkit.Sample(str(fcs))
    assert sample.version == "3.1" and sample.event_count == result["events"]["total"]
    assert {"Diameter", "FL1-MESF", "FL2-MESF", "SSC-H"} <= set(sample.pnn_labels)
    keywords = sample.get_metadata()
    assert keywords["exoacq_run_id"] == result["run_id"] and float(keywords["exoacq_dilution"]) == 200.0
    assert float(keywords["vol"]) == pytest.approx(50.0, rel=1e-6)  # nL: 1 uL/min x 3 s
    assert keywords["p{}calibration".format(sample.pnn_labels.index("Diameter") + 1)] == "1,nm"
    assert "spillover" in keywords


@pytest.mark.slow
def test_controls_attach_by_run_id_and_are_reported(daemon):
    unstained = _acquire(daemon, "--duration", "2", "--dilution", "200", "--control-run", "unstained")
    lysed = _acquire(daemon, "--duration", "2", "--dilution", "200", "--control-run", "lysed")
    buffer = _acquire(daemon, "--duration", "2", "--dilution", "200", "--control-run", "buffer")
    assert unstained["control"] == "unstained" and buffer["events"]["total"] < 10
    assert lysed["events"]["total"] < 0.01 * unstained["events"]["total"]  # EVs dissolve in detergent
    sample = _acquire(daemon, "--duration", "2", "--dilution", "200", "--unstained", unstained["run_id"],
                      "--lysed", lysed["run_id"], "--buffer", buffer["run_id"])
    jsonschema.validate(sample, load_schema("flow.result"))
    assert sample["controls"]["unstained"]["events"] == unstained["events"]["total"]
    assert sample["controls"]["lysed"]["non_vesicular"] is False
    assert sample["controls"]["buffer"]["subtracted"] is True
    assert all("unstained" in t["method"] for t in sample["marker_thresholds"].values())
    # the default simulated sample: 40 % CD63+, 25 % CD81+ (2 pp accuracy: tests/test_flow_accuracy.py)
    assert sample["markers"]["CD63"] == pytest.approx(0.40, abs=0.05)
    assert sample["markers"]["CD81"] == pytest.approx(0.25, abs=0.05)

    missing = run_cli("acquire", "flow", "--duration", "1", "--unstained", "20260101-000000-dead",
                      "--control", daemon.control)
    assert missing.returncode != 0 and "no events file" in missing.stderr and "Traceback" not in missing.stderr
    bad = run_cli("acquire", "flow", "--duration", "1", "--control-run", "lysed", "--unstained",
                  unstained["run_id"], "--control", daemon.control)
    assert bad.returncode != 0 and "a control run takes no controls" in bad.stderr


@pytest.mark.slow
def test_run_h5_gets_the_events_as_acquired_and_ends_with_those_of_the_fcs_file(daemon):
    import flowio
    import h5py
    import numpy as np

    from exoacq.bus import ControlClient
    from exoacq.runfile import RUN_FILE

    with ControlClient(daemon.control) as client:
        run_id = client.request("acquire", method="flow", duration_s=3, dilution=200, sample="durable")["run_id"]
        path = daemon.data_dir / "runs" / run_id / RUN_FILE
        seen_while_acquiring, deadline = 0, time.monotonic() + 60
        while (record := client.request("run", run_id=run_id))["state"] not in ("done", "failed", "aborted"):
            assert time.monotonic() < deadline, record["state"]
            if record["state"] == "acquiring" and path.exists() and not seen_while_acquiring:
                try:  # as another program reads a run file being written: SWMR, up to the last checkpoint
                    with h5py.File(path, "r", libver="latest", swmr=True) as f:
                        checkpoints = f["checkpoints"][:]
                    rows = int(checkpoints[-1]["flow/events"]) if len(checkpoints) else 0
                except (OSError, KeyError):  # being created
                    rows = 0
                if rows and client.request("run", run_id=run_id)["state"] == "acquiring":
                    seen_while_acquiring = rows
            time.sleep(0.1)
    assert record["state"] == "done", record["error"]
    total = record["result"]["events"]["total"]
    assert 0 < seen_while_acquiring < total  # written (and checkpointed) while the run was acquiring

    fcs = flowio.FlowData(str(path.with_name("events.fcs")))
    names = list(fcs.pnn_labels)
    values = fcs.as_array(preprocess=False)  # the stored float32 values ($TIMESTEP 1: Time in s)
    with h5py.File(path, "r") as f:
        table = f["flow/events"]
        events, units = table[:], table.attrs["units"]
    assert record["data_file"]["rows"]["flow/events"] == len(events) == fcs.event_count == total
    assert set(events.dtype.names) == {"Time", "SSC-H", "SSC-A", "SSC-W", "FL1-H", "FL1-A", "FL2-H", "FL2-A",
                                       "Coincident", "Saturated"} and set(events.dtype.names) <= set(names)
    assert events.dtype["Time"] == np.float64 and events.dtype["SSC-H"] == np.float32
    assert {"Time: s", "SSC-H: counts", "SSC-A: counts*us", "SSC-W: us", "FL2-A: counts*us",
            "Coincident: 1"} <= set(units.split("; "))
    for name in events.dtype.names:  # the same events, in the same order, with the same values
        stored = values[:, names.index(name)]
        if name == "Time":  # float64 in run.h5, float32 in the FCS file
            np.testing.assert_allclose(events[name], stored, rtol=1e-6)
        else:
            assert np.array_equal(events[name].astype(np.float64), stored), name
    assert np.all(np.diff(events["Time"]) >= 0)  # s since the digitizer started (gaps between blocks included)


@pytest.mark.slow
def test_a_sample_100x_too_concentrated_is_flagged_as_swarm(daemon):
    # dilution 2 instead of 200: unresolved EVs raise the side-scatter baseline under every pulse
    result = _acquire(daemon, "--duration", "1", "--dilution", "2")
    jsonschema.validate(result, load_schema("flow.result"))
    swarm = result["swarm"]
    assert swarm["flag"] is True and any("baseline" in r for r in swarm["reasons"]), swarm
    reference = swarm["baseline"]["reference"]
    assert reference["source"] == "the calibration's bead run"
    assert swarm["baseline"]["noise_counts"] > 10 * reference["noise_counts"]
    assert any(w.startswith("possible swarm") for w in result["warnings"])


@needs_testdata
@pytest.mark.slow
def test_cytometer_exports_are_analysed_and_published_as_they_appear(tmp_path):
    from exoacq.demo import start_daemon, stop_daemon

    folder = tmp_path / "exports"
    folder.mkdir()
    config = tmp_path / "attune.toml"
    config.write_text(f"""
[instruments.attune]
method = "flow"
[instruments.attune.devices.cytometer]
driver = "fcs-folder"
path = "{folder}"
settle_s = 0.3
instrument = "Attune NxT"
[instruments.attune.settings]
watch_interval_s = 0.2
markers = {{}}
""")
    process, control = start_daemon(tmp_path / "data", tmp_path / "daemon.log", extra=["--config", str(config)],
                                    simulated=False)
    try:
        status = json.loads(run_cli("status", "--json", "--control", control).stdout)
        with plain_subscriber(status["endpoints"]["results"], b"flow.result") as sub:
            shutil.copy(FLOW / "G11.fcs", folder / "G11.fcs")
            (folder / "cut.fcs").write_bytes((FLOW / "G11.fcs").read_bytes()[:3000])
            documents = []
            deadline = time.monotonic() + 30
            while len(documents) < 2 and time.monotonic() < deadline:
                if sub.poll(500):
                    documents.append(json.loads(sub.recv_multipart()[1]))
        by_file = {d["source"].rsplit("/", 1)[-1]: d for d in documents}
        assert set(by_file) == {"G11.fcs", "cut.fcs"}
        for document in documents:
            jsonschema.validate(document, load_schema("flow.result"))
        good, broken = by_file["G11.fcs"], by_file["cut.fcs"]
        assert good["run_id"] is None and good["instrument"] == "attune" and good["events"]["total"] == 5785
        # $VOL 46,000 nL: 5,785 events in 46 uL
        assert good["concentration_per_ml"] == pytest.approx(5785 / 46e-3, rel=1e-6)
        assert broken["complete"] is False and "cut.fcs" in broken["error"]
        refused = run_cli("acquire", "flow", "--control", control)
        assert refused.returncode == 1 and "analysed and published as they appear" in refused.stderr
    finally:
        assert stop_daemon(process) == 0
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()


@needs_testdata
def test_analyze_flow_lists_every_real_file_or_says_what_is_wrong(tmp_path):
    expected = {"G11.fcs": (5785, 12), "B01_KC-A-W---91-US.fcs": (1589, 14), "data1.fcs": (13367, 8),
                "3FITC_4PE_004.fcs": (94569, 4), "test_comp_example.fcs": (10703, 18),
                "index_sorted_example.fcs": (384, 13)}
    for path in sorted(FLOW.glob("*.fcs")):
        proc = run_cli("analyze", "flow", str(path), "--json")
        assert "Traceback" not in proc.stderr, proc.stderr
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and path.name in lines[0], proc.stderr
            continue
        document = json.loads(proc.stdout)
        if path.name in expected:
            assert (document["events"]["total"], len(document["parameters"])) == expected[path.name]
        if path.name == "data_start_offset_discrepancy_example.fcs":  # never silently: it says what it did
            assert any("5555" in w and "6081" in w for w in document["warnings"])
    text = run_cli("analyze", "flow", str(FLOW / "G11.fcs"))
    assert text.returncode == 0 and "Parameters: " in text.stdout and "BL1-A" in text.stdout

    garbage = tmp_path / "notes.fcs"
    garbage.write_text("not an FCS file at all\n")
    for bad in (garbage, tmp_path / "missing.fcs"):
        proc = run_cli("analyze", "flow", str(bad))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith("exoacq: error: ") and bad.name in lines[0]


@pytest.mark.slow
def test_simulate_calibrate_and_analyze_flow_on_the_command_line(tmp_path):
    import flowkit

    calibration = tmp_path / "cal.toml"
    proc = run_cli("calibrate", "flow", "--simulated", "--seed", "5", "-o", str(calibration))
    assert proc.returncode == 0, proc.stderr
    assert "SSC-H" in proc.stdout and "[spillover]" in calibration.read_text()
    assert "warning" not in proc.stderr  # the beads lie on the fitted curve
    if TESTDATA.is_dir():  # cell data, not beads: written (the operator decides) with a warning
        proc = run_cli("calibrate", "flow", str(TESTDATA / "flow" / "G11.fcs"), "-o", str(tmp_path / "cells.toml"))
        assert proc.returncode == 0, proc.stderr
        assert "warning: a bead lies +80.5 % off the fitted Mie curve (more than 15 %)" in proc.stderr
    sample, unstained = tmp_path / "s.fcs", tmp_path / "u.fcs"
    for path, extra in ((sample, []), (unstained, ["--control", "unstained"])):
        proc = run_cli("simulate", "flow", str(path), "--duration", "2", "--dilution", "200", "--seed", "9", *extra)
        assert proc.returncode == 0, proc.stderr
    out = tmp_path / "calibrated.fcs"
    proc = run_cli("analyze", "flow", str(sample), "--calibration", str(calibration), "--marker", "CD63=FL1-H",
                   "--marker", "CD81=FL2-H", "--unstained", str(unstained), "--gate", "Diameter:50-1000",
                   "--export-fcs", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    for key in ("parameters", "events", "concentration_per_ml", "size_nm", "markers", "warnings"):
        assert key in document
    assert set(document["size_nm"]) >= {"median", "d10", "d90"}
    assert document["events"]["gated"] <= document["events"]["total"]
    assert document["concentration_per_ml"] == pytest.approx(1.5e10, rel=0.15)
    written = flowkit.Sample(str(out))
    assert written.event_count == document["events"]["total"] and "Diameter" in written.pnn_labels

    series = run_cli("analyze", "flow", str(sample), str(unstained), "--dilution-series", "--dilutions", "200,400")
    assert series.returncode == 0 and "Dilution series" in series.stdout


def test_bench_flow_reports_both_figures_as_json():
    proc = run_cli("bench", "flow", "--seconds", "0.2", "--events", "200000", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["samples_per_s"] > 0 and figures["events_per_s"] > 0
    assert figures["simulator_realtime_factor"] > 0 and figures["scatter_inversions_per_s"] > 0
    assert figures["targets"] == {"samples_per_s": 200e6, "events_per_s": 2e6}
