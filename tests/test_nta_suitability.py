"""System suitability (issue #15): bead checks against a certified standard, calibration expiry,
the ``suitability`` of the next sample's result, its HTML report and the bead-check trend.

The documents are real: two short NTA runs (5 s and 3 s, one capture) on the simulated daemon,
whose sample is 100 nm polystyrene at 3e8 particles/mL (SimulationConfig defaults). The first is the
bead check (judged against a copy of calibrations/nta/beads-100nm.toml, and against a 200 nm
standard for a check that must fail), the second the next sample. Until the daemon judges bead
checks itself (the first run is asked for with ``bead_check``; refused, it is repeated without), the
tests add ``bead_check`` to the stored record as the service will; the last test checks what the
daemon made once it does.
"""
from __future__ import annotations

import copy
import re
import tomllib
from datetime import date, timedelta

import jsonschema
import pytest

from conftest import ROOT, load_schema, run_cli
from exoacq.bus import ControlClient
from exoacq.errors import ConfigError, ExoacqError, ProtocolError
from exoacq.nta.calibration import load_nta_calibration, nta_calibration_text
from exoacq.nta.export import write_html_report
from exoacq.nta.settings import SimulationConfig
from exoacq.nta.suitability import (assess, bead_check_records, bead_check_setting, bead_check_trend,
                                    evaluate_bead_check, format_bead_check_table, load_bead_standard, reassess)

pytestmark = pytest.mark.slow  # a real daemon and two short runs (~20 s for the module)

BEADS = ROOT / "calibrations" / "nta" / "beads-100nm.toml"
CALIBRATION = ROOT / "calibrations" / "nta" / "simulated-camera.toml"


def _parse(text: str):
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _standard_copy(tmp_path, filename: str, **replace: str):
    """The shipped standard with some lines replaced (``key = value`` lines, by key)."""
    text = BEADS.read_text(encoding="utf-8")
    for key, value in replace.items():
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
        assert n == 1, key
    path = tmp_path / filename
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def standards(tmp_path_factory):
    """Standards for a check of one short capture, and one of the wrong size (200 nm).

    The shipped limits (+/- 5 % size, +/- 20 % concentration) are for a check of several captures
    of a minute. One 3-s capture sizes ~40 tracks of ~13 frames and counts ~22 particles per frame
    in a sheet refilled about twice: over 13 runs here its mean scattered 95-114 nm and its
    concentration 71-126 % of the truth; 8 runs of 5 s on a fresh daemon read 96-113 nm and 75-153 %
    (the ~20 particles in the field hardly change in 5 s: ~25 % SD). The bead-check run here is 5 s
    and the copy's limits are +/- 25 % on size and +/- 100 % on concentration (4 SD each: the test
    is of the verdicts, not of the instrument); a 200 nm certificate still fails by far (~ -50 %)."""
    tmp_path = tmp_path_factory.mktemp("standards")
    limits = {"mean_diameter_pct": "25.0", "mode_diameter_pct": "25.0", "concentration_pct": "100.0"}
    good = _standard_copy(tmp_path, "beads-100nm-3s.toml", **limits)
    wrong = _standard_copy(tmp_path, "beads-200nm.toml", mean_diameter_nm="200.0",
                           name='"nominal 200 nm polystyrene (wrong size for the simulated sample)"', **limits)
    return bead_check_setting(str(good)), bead_check_setting(str(wrong))


@pytest.fixture(scope="module")
def runs(daemon, standards):
    """A bead-check run (5 s) and the next sample's run (3 s), one capture each, with their stored records.
    The first is asked for as a bead check (acquire parameter ``bead_check``); until the daemon takes
    it, it is a plain run and the tests judge it themselves."""
    from exoacq.client import follow_run

    out = {}
    with ControlClient(daemon.control) as client:
        for name in ("beads", "sample"):
            request = {"method": "nta", "sample": name, "duration_s": 5.0 if name == "beads" else 3.0,
                       "captures": 1}
            if name == "beads":
                request["bead_check"] = standards[0]["file"]
            try:
                document = follow_run(client, request, timeout_s=60)
            except ExoacqError as exc:
                if "unknown parameter(s)" not in str(exc) or "bead_check" not in str(exc):
                    raise
                del request["bead_check"]
                document = follow_run(client, request, timeout_s=60)
            out[name] = (document, client.request("run", run_id=document["run_id"]))
    return out


def _as_bead_check(record, setting):
    """The stored record of a bead-check run, as the service makes it."""
    record = copy.deepcopy(record)
    record["settings"]["bead_check"] = setting
    record["result"]["bead_check"] = evaluate_bead_check(record["result"], setting)
    return record


def test_shipped_standard_matches_the_simulated_sample():
    std = load_bead_standard(BEADS)
    truth = SimulationConfig()
    assert std.standard.nominal and std.standard.kind == "nta.beads" and std.standard.lot
    assert std.standard.mean_diameter_nm == truth.components[0].diameter_nm == 100.0
    assert std.standard.refractive_index == truth.components[0].refractive_index
    assert std.standard.concentration_per_ml == truth.concentration_per_ml
    assert (std.acceptance.mean_diameter_pct, std.acceptance.mode_diameter_pct,
            std.acceptance.concentration_pct) == (5.0, 5.0, 20.0)
    # the shipped simulated calibration never expires (a test run in any year must not find it expired)
    shipped = load_nta_calibration(CALIBRATION)
    assert shipped.calibration.expires is None and not shipped.calibration.expired(date(2100, 1, 1))


def test_calibration_written_with_an_expiry_reads_back(tmp_path):
    shipped = load_nta_calibration(CALIBRATION)
    path = tmp_path / "cal.toml"
    path.write_text(nta_calibration_text(volume_nl=0.075, uncertainty_nl=0.0015, frames=20, optics=shipped.optics,
                                         standard=shipped.standard, instrument="sim", method="beads",
                                         expires=date(2027, 6, 30)), encoding="utf-8")
    info = load_nta_calibration(path).calibration
    assert info.expires == date(2027, 6, 30)
    assert not info.expired(date(2027, 6, 30)) and info.expired(date(2027, 7, 1))  # valid through that day


def test_bad_standard_files_are_one_line_errors(tmp_path):
    wrong_kind = _standard_copy(tmp_path, "k.toml", kind='"flow.beads.scatter"')
    with pytest.raises(ConfigError, match=r"k\.toml: standard\.kind"):
        load_bead_standard(wrong_kind)
    negative = _standard_copy(tmp_path, "n.toml", mean_diameter_nm="-100.0")
    with pytest.raises(ConfigError, match=r"n\.toml: standard\.mean_diameter_nm"):
        load_bead_standard(negative)
    with pytest.raises(ProtocolError, match=r"bead_check: bead standard nope\.toml not found"):
        bead_check_setting("nope.toml")
    with pytest.raises(ProtocolError, match="must be the path of a bead standard file"):
        bead_check_setting(3)
    setting = bead_check_setting("calibrations/nta/beads-100nm.toml")  # relative to the project root
    assert setting["file"] == str(BEADS) and setting["standard"]["acceptance"]["mean_diameter_pct"] == 5.0


def test_bead_check_passes_for_the_right_standard_and_fails_for_the_wrong_size(runs, standards):
    document = runs["beads"][0]
    good, wrong = standards
    check = evaluate_bead_check(document, good)
    by = {c["quantity"]: c for c in check["checks"]}
    assert check["passed"], check["problems"]
    assert check["lot"] == "SIM-PS100-2026-001" and check["file"] == good["file"]
    mean = by["mean_diameter_nm"]
    assert mean["measured"] == document["size_nm"]["mean"] and mean["limit"] == pytest.approx([75.0, 125.0])
    assert mean["deviation_pct"] == pytest.approx(100 * (document["size_nm"]["mean"] / 100.0 - 1))
    assert abs(by["mode_diameter_nm"]["deviation_pct"]) < 25
    assert by["concentration_per_ml"]["limit"] == pytest.approx([0.0, 6.0e8])
    assert by["concentration_per_ml"]["measured"] == document["concentration_per_ml"]

    failed = evaluate_bead_check(document, wrong)
    by = {c["quantity"]: c for c in failed["checks"]}
    assert not failed["passed"]
    # 100 nm beads against a 200 nm certificate: about -50 %, far outside +/- 25 %
    assert by["mean_diameter_nm"]["deviation_pct"] == pytest.approx(100 * (document["size_nm"]["mean"] / 200 - 1))
    assert by["mean_diameter_nm"]["deviation_pct"] < -25  # the 100 nm check above passed: mean < 125 nm
    assert not by["mean_diameter_nm"]["passed"] and not by["mode_diameter_nm"]["passed"]
    assert by["concentration_per_ml"]["passed"]  # the concentration is right: only the size fails
    assert any(p.startswith("mean_diameter_nm") and "limit +/- 25 %" in p for p in failed["problems"])


def _report(tmp_path, document, suitability, trend, bead_check=None):
    path = tmp_path / "report.html"
    write_html_report(path, document["captures"], sample=document["sample"], settings=document["settings"],
                      calibration={"file": str(CALIBRATION)}, suitability=suitability, bead_check=bead_check,
                      bead_checks=trend)
    return path.read_text(encoding="utf-8")


def test_passed_bead_check_qualifies_the_next_sample(runs, standards, tmp_path):
    (beads, beads_record), (sample, _) = runs["beads"], runs["sample"]
    checked = _as_bead_check(beads_record, standards[0])
    suitability = assess(sample, calibration=CALIBRATION, bead_checks=[checked], period_h=24.0, now=None)
    expected_age_h = (_parse(sample["time"]) - _parse(beads["time"])).total_seconds() / 3600
    assert suitability["suitable"] and suitability["flags"] == []
    assert suitability["bead_check"]["run_id"] == beads["run_id"] and suitability["bead_check"]["passed"]
    assert suitability["bead_check"]["age_h"] == pytest.approx(expected_age_h) and 0 < expected_age_h < 0.1
    assert suitability["calibration"] == {"file": str(CALIBRATION), "version": 5, "date": "2026-12-02",
                                          "expires": None, "expired": False}
    document = {**sample, "suitability": suitability}
    jsonschema.validate(document, load_schema("nta.result"))

    report = _report(tmp_path, document, suitability, bead_check_trend([checked]))
    assert 'id="suitability-ok"' in report and beads["run_id"] in report
    assert report.count('<circle class="pass"') == 2 and 'class="fail"' not in report  # mean and concentration


def test_failed_bead_check_flags_the_next_sample(runs, standards, tmp_path):
    (beads, beads_record), (sample, _) = runs["beads"], runs["sample"]
    passed, failed = _as_bead_check(beads_record, standards[0]), _as_bead_check(beads_record, standards[1])
    failed["run_id"] = failed["result"]["run_id"] = beads["run_id"] + "-200"
    failed["result"]["time"] = (_parse(beads["time"]) + timedelta(seconds=1)).isoformat()  # the newest check
    suitability = assess(sample, calibration=CALIBRATION, bead_checks=[failed, passed], period_h=24.0)
    assert not suitability["suitable"] and not suitability["bead_check"]["passed"]
    assert suitability["bead_check"]["run_id"] == failed["run_id"]
    [flag] = suitability["flags"]
    assert flag.startswith(f"the last bead check failed ({failed['run_id']}") and "mean_diameter_nm" in flag

    trend = bead_check_trend([failed, passed])
    assert [r["passed"] for r in trend] == [True, False]  # oldest first
    report = _report(tmp_path, {**sample, "suitability": suitability}, suitability, trend)
    flags_html = report.split('id="suitability-flags"')[1].split("</div>")[0]
    assert "the last bead check failed" in flags_html and "FAILED" in report
    assert report.count('<circle class="fail"') == 1 and report.count('<circle class="pass"') == 3

    # the bead-check run itself is flagged in its own result and report
    own = assess(failed["result"], calibration=CALIBRATION, bead_checks=[], period_h=24.0)
    assert not own["suitable"] and own["flags"][0].startswith("this bead check failed")
    report = _report(tmp_path, failed["result"], own, trend, bead_check=failed["result"]["bead_check"])
    assert "This run's bead check: FAILED" in report and "200 ± 3" in report


def test_missing_or_stale_bead_check_is_flagged(runs, standards):
    (beads, beads_record), (sample, _) = runs["beads"], runs["sample"]
    checked = _as_bead_check(beads_record, standards[0])
    t = _parse(beads["time"])
    stale = assess(sample, calibration=CALIBRATION, bead_checks=[checked], period_h=24.0, now=t + timedelta(hours=25))
    assert stale["bead_check"] is None
    assert stale["flags"] == [f"no bead check within the last 24 h (the last: {beads['run_id']}, 25.0 h before)"]
    # bead checks not required (period None): no flag for a missing one, the newest of any age reported
    free = assess(sample, calibration=CALIBRATION, bead_checks=[checked], period_h=None, now=t + timedelta(days=90))
    assert free["suitable"] and free["bead_check"]["age_h"] == pytest.approx(90 * 24)
    assert assess(sample, calibration=CALIBRATION, bead_checks=[], period_h=None)["flags"] == []
    # a shorter period set by the lab
    assert not assess(sample, calibration=CALIBRATION, bead_checks=[checked], period_h=1.0,
                      now=t + timedelta(hours=2))["suitable"]
    # a check made after the sample (re-processing an old run) does not qualify it
    before = assess(sample, calibration=CALIBRATION, bead_checks=[checked], period_h=24.0, now=t - timedelta(hours=1))
    assert before["flags"] == ["no bead check within the last 24 h (none recorded)"]
    # plain runs (no bead_check in their result) are not bead checks
    plain = copy.deepcopy(beads_record)
    plain["result"].pop("bead_check", None)
    none = assess(sample, calibration=None, bead_checks=[plain], period_h=24.0)
    assert none["calibration"] is None and none["flags"] == ["no bead check within the last 24 h (none recorded)"]


def test_expired_calibration_is_flagged(runs, standards, tmp_path):
    beads_record, sample = runs["beads"][1], runs["sample"][0]
    checked = _as_bead_check(beads_record, standards[0])
    day = _parse(sample["time"]).date()
    text = CALIBRATION.read_text(encoding="utf-8")

    def calibration_expiring(on: date):
        path = tmp_path / f"cal-{on}.toml"
        path.write_text(text.replace("operator = ", f"expires = {on.isoformat()}\noperator = ", 1), encoding="utf-8")
        assert tomllib.loads(path.read_text())["calibration"]["expires"] == on
        return path

    expired_file = calibration_expiring(day - timedelta(days=1))
    expired = assess(sample, calibration=expired_file, bead_checks=[checked], period_h=24.0)
    assert expired["calibration"]["expired"] is True and expired["calibration"]["expires"] == str(day - timedelta(days=1))
    [flag] = expired["flags"]
    assert flag.startswith(f"calibration {expired_file.name} v5 expired on {day - timedelta(days=1)}")
    # valid through its expiry day
    last_day = assess(sample, calibration=calibration_expiring(day), bead_checks=[checked], period_h=24.0)
    assert last_day["suitable"] and last_day["calibration"]["expired"] is False

    report = _report(tmp_path, {**sample, "suitability": expired}, expired, bead_check_trend([checked]))
    assert "<td>Calibration expired</td><td>YES</td>" in report and "recalibrate" in report
    broken = tmp_path / "broken.toml"
    broken.write_text("[calibration]\n", encoding="utf-8")
    unreadable = assess(sample, calibration=broken, bead_checks=[checked], period_h=24.0)
    assert unreadable["flags"][0].startswith("calibration unreadable: calibration") and not unreadable["suitable"]


def test_reprocessed_result_keeps_the_suitability_of_its_measurement(runs, standards, tmp_path):
    (beads, beads_record), (sample, _) = runs["beads"], runs["sample"]
    checked = _as_bead_check(beads_record, standards[1])  # the last check before the sample failed
    original = {**sample, "suitability": assess(sample, calibration=CALIBRATION, bead_checks=[checked],
                                                period_h=24.0)}
    later = {**sample, "time": "2027-06-01T00:00:00.000Z"}  # re-processed months later, same numbers
    assert reassess(later, original) == original["suitability"]  # the original settings: exactly the same
    version2 = {**later, "suitability": reassess(later, original)}  # and from a re-processed version
    assert reassess({**sample, "time": "2028-01-01T00:00:00Z"}, version2) == original["suitability"]
    assert assess(later, calibration=CALIBRATION, bead_checks=[checked], period_h=24.0)["bead_check"] is None
    # another calibration, expired before the sample was measured: flagged besides the failed check
    expired = tmp_path / "expired.toml"
    expired.write_text(CALIBRATION.read_text(encoding="utf-8").replace("operator = ", "expires = 2026-11-30\noperator = "),
                       encoding="utf-8")
    again = reassess(later, original, calibration=expired)
    assert again["calibration"]["expired"] and len(again["flags"]) == 2 and again["flags"][1] == original["suitability"]["flags"][0]
    # a re-processed bead check is judged by its new check, at the time the beads were measured
    own = {**checked["result"], "bead_check": evaluate_bead_check(checked["result"], standards[0])}
    first = {**checked["result"], "suitability": assess(checked["result"], calibration=CALIBRATION, bead_checks=[],
                                                        period_h=24.0)}
    redone = reassess({**own, "time": later["time"]}, first)
    assert redone["suitable"] and redone["bead_check"]["time"] == beads["time"] and not first["suitability"]["suitable"]


def test_bead_check_table(runs, standards):
    beads_record = runs["beads"][1]
    rows = bead_check_trend([_as_bead_check(beads_record, standards[1]), runs["sample"][1]])
    assert len(rows) == 1 and rows[0]["mean_diameter_nm_range"] == pytest.approx([150.0, 250.0])
    table = format_bead_check_table(rows)
    mean = beads_record["result"]["size_nm"]["mean"]
    assert beads_record["run_id"] in table and f"{mean:.1f} [150.0-250.0]" in table and table.endswith("FAIL")
    assert format_bead_check_table([]).startswith("no bead checks recorded")


def test_daemon_judges_bead_checks_end_to_end(daemon, runs):
    """The bead-check run's and the next sample's results as the daemon made them, and
    `exoacq runs --bead-checks`."""
    (check, check_record), (sample, _) = runs["beads"], runs["sample"]
    assert check["bead_check"]["passed"] and check["suitability"]["bead_check"]["run_id"] == check["run_id"]
    assert check_record["settings"]["bead_check"]["standard"]["acceptance"]["mean_diameter_pct"] == 25.0
    assert sample["suitability"]["bead_check"]["run_id"] == check["run_id"] and sample["suitability"]["suitable"]
    assert sample["suitability"]["calibration"]["file"].endswith("simulated-camera.toml")
    with ControlClient(daemon.control) as client:
        assert [r["run_id"] for r in bead_check_records(client, limit=20)] == [check["run_id"]]
    proc = run_cli("runs", "--bead-checks", "--control", daemon.control)
    assert proc.returncode == 0, proc.stderr
    assert check["run_id"] in proc.stdout and proc.stdout.rstrip().endswith("pass")
    assert sample["run_id"] not in proc.stdout
