"""SOPs run by `exoacq daemon --simulated`: steps in order in run.state, the hardware left safe."""
from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest

from conftest import ROOT, laser_settings, load_schema, run_cli
from test_daemon import drain, plain_subscriber

pytestmark = pytest.mark.slow

SOP = """
name = "test SOP: temperature, pump, laser, 3 captures"
method = "nta"

[[steps]]
step = "temperature"
set_c = 25.0
tolerance_c = 0.2
hold_s = 1.0
timeout_s = 120.0

[[steps]]
step = "pump"
flush_ul = 10.0
flush_rate_ul_min = 600.0
rate_ul_min = 3.0

[[steps]]
step = "laser"
on = true
power_mw = 40.0
warmup_s = 0.5

[[steps]]
step = "capture"
count = 3
duration_s = 2.0
advance_ul = 4.0
advance_rate_ul_min = 600.0

[[steps]]
step = "laser"
on = false

[[steps]]
step = "analyse"

[[steps]]
step = "export"
"""


def test_a_sop_runs_its_steps_in_order_and_leaves_the_laser_off(daemon, tmp_path):
    sop = tmp_path / "sop.toml"
    sop.write_text(SOP)
    with plain_subscriber(daemon.endpoints["results"], b"run.state") as sub:
        proc = run_cli("acquire", "nta", "--sop", str(sop), "--sample", "sop", "--json", "--control", daemon.control,
                       timeout=180)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        docs = [d for d in drain(sub, 1.0) if d["run_id"] == result["run_id"]]
    schema = load_schema("run.state")
    for doc in docs:
        jsonschema.validate(doc, schema)
    states = [d["state"] for d in docs if d["state"] != d["previous"] or d["state"] == "queued"]
    assert states == ["queued", "preparing", "acquiring", "processing", "done"]
    steps = [d["step"] for d in docs if d["step"] is not None and d["state"] == d["previous"] == "acquiring"]
    first_of_each = []
    for step in steps:
        if not first_of_each or first_of_each[-1][0] != step["index"]:
            first_of_each.append((step["index"], step["step"]))
    assert first_of_each == [(1, "temperature"), (2, "pump"), (3, "laser"), (4, "capture"), (5, "laser"),
                             (6, "analyse"), (7, "export")]
    assert all(s["of"] == 7 for s in steps)
    advances = [s["detail"] for s in steps if s["index"] == 4 and "advanc" in s["detail"]]
    assert len(advances) >= 2, steps  # fresh sample before the second and the third capture

    assert [c["capture"] for c in result["captures"]] == [1, 2, 3]
    assert result["settings"]["acquisition"]["sop"]["name"].startswith("test SOP")
    assert result["files"]["summary_csv"].endswith("ExperimentSummary.csv")
    with open(result["files"]["report"], encoding="utf-8") as report:
        assert "<html" in report.read().lower()
    status = json.loads(run_cli("status", "--json", "--control", daemon.control).stdout)
    assert laser_settings(status)["emission"] is False
    pump = status["instruments"]["nta"]["devices"]["pump"]["settings"]
    assert pump["status"] == "stopped", pump
    temperature = status["instruments"]["nta"]["devices"]["temperature"]["settings"]
    assert temperature["setpoint_c"] == pytest.approx(25.0)


def test_a_nanosight_script_runs_as_a_sop(daemon, tmp_path):
    script = tmp_path / "nanosight.txt"
    script.write_text("SETTEMP 25\nREPEATSTART\nCAPTURE 1\nDELAY 1\nREPEAT 1\nPROCESSSINGLESETTING\n")
    proc = run_cli("acquire", "nta", "--sop", str(script), "--json", "--control", daemon.control, timeout=180)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["captures"]) == 2 and result["settings"]["acquisition"]["captures"] == 2


def test_commands_exoacq_cannot_honour_are_refused_by_name_before_anything_moves(daemon, tmp_path):
    script = tmp_path / "levels.txt"
    script.write_text("CAMERALEVEL 14\nSETTEMP 25\nCAPTURE 60\nSETFOCUS 200\n")
    before = json.loads(run_cli("runs", "--json", "--control", daemon.control).stdout)
    proc = run_cli("acquire", "nta", "--sop", str(script), "--control", daemon.control)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "CAMERALEVEL" in proc.stderr and "SETFOCUS" in proc.stderr and "line 1" in proc.stderr
    after = json.loads(run_cli("runs", "--json", "--control", daemon.control).stdout)
    assert len(after) == len(before)  # no run was created
    both = run_cli("acquire", "nta", "--sop", str(ROOT / "exoacq" / "sops" / "nanosight-standard.toml"),
                   "--captures", "2", "--control", daemon.control)
    assert both.returncode == 1 and "the SOP states its captures" in both.stderr


def test_the_shipped_sops_parse_and_fit_the_simulated_instrument():
    for path in sorted((ROOT / "exoacq" / "sops").iterdir()):
        proc = subprocess.run([sys.executable, "-c", "from exoacq.sop import load_sop; import sys; "
                               "s = load_sop(sys.argv[1]); print(sorted(s.required_devices()))", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (path, proc.stderr)
        assert set(json.loads(proc.stdout.replace("'", '"'))) <= {"laser", "pump", "temperature-controller"}
