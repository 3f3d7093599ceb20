"""Re-processing a stored NTA run from its kept videos (exoacq.nta.reprocess) against a real daemon's run."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, run_cli
from exoacq.errors import ExoacqError
from exoacq.nta.reprocess import reprocess_run, validate_overrides

# realtime: the exact-reproduction test needs a live run with no dropped frame (runs alone, see Makefile)
pytestmark = [pytest.mark.slow, pytest.mark.realtime]


def comparable(document: dict) -> str:
    """A result document without what re-processing must change: its time, file paths, provenance, number."""
    document = json.loads(json.dumps(document))
    for key in ("time", "files", "reprocessed", "version"):  # version: the store numbers the results
        document.pop(key, None)
    for capture in document.get("captures", []):
        capture.pop("files", None)
    return json.dumps(document, sort_keys=True)


@pytest.fixture(scope="module")
def stored(daemon):
    """A 2 x 3 s run of the simulated instrument, as the run store keeps it (``runs show --json``)."""
    proc = run_cli("acquire", "nta", "--duration", "3", "--captures", "2", "--json", "--control", daemon.control)
    assert proc.returncode == 0, proc.stderr
    live = json.loads(proc.stdout)
    show = run_cli("runs", "show", live["run_id"], "--json", "--control", daemon.control)
    assert show.returncode == 0, show.stderr
    return live, json.loads(show.stdout)


def test_the_run_kept_a_lossless_video_of_every_capture(stored):
    live, record = stored
    assert not any("video" in w for w in live["warnings"])
    rows = 0
    for n in (1, 2):
        folder = Path(record["directory"]) / f"capture-{n}"
        table = pd.read_csv(folder / "frames.csv")
        rows += len(table)
        assert table["in_video"].all() and table["frame_number"].is_monotonic_increasing
        assert table["tracked"].sum() == live["captures"][n - 1]["frames_processed"]
        # frames 40 ms apart on the camera's clock (a frame the loaded machine lost: 80 ms)
        steps = table["timestamp_s"].diff().iloc[1:] / table["frame_number"].diff().iloc[1:]
        assert steps.to_numpy() == pytest.approx(0.04, abs=0.005)
        assert (folder / "video.zst").stat().st_size > 5e6
    assert rows == live["frames"]["acquired"] == 150 - live["frames"]["dropped_by"]["camera"]


def test_reprocessing_with_the_original_settings_reproduces_the_live_result_exactly(stored, tmp_path):
    live, record = stored
    again = reprocess_run(record, {}, tmp_path)
    assert comparable(again) == comparable(record["result"]) == comparable(live)
    assert again["reprocessed"] == {"from_run": live["run_id"], "from_version": record.get("current_version"),
                                    "overrides": {}, "calibration": {
                                        "file": None, "detection_volume_nl": live["detection_volume"]["nl"],
                                        "source": live["detection_volume"]["source"]}}
    for n in (1, 2):  # the same tracks, to the byte
        for name in ("tracks.csv", "track_summary.csv"):
            original = Path(record["directory"]) / f"capture-{n}" / name
            assert (tmp_path / f"capture-{n}" / name).read_bytes() == original.read_bytes(), name
        assert again["captures"][n - 1]["files"]["video"].endswith(f"capture-{n}/video.zst")


def test_a_higher_minmass_detects_fewer_particles(stored, tmp_path):
    live, record = stored
    other = reprocess_run(record, {"minmass": "600"}, tmp_path)  # as `--set minmass=600` may send it
    assert other["settings"]["tracking"]["minmass"] == 600.0
    assert other["reprocessed"]["overrides"] == {"minmass": 600.0}
    # dimmer features (the sheet's edges) fall below the threshold: fewer per frame (the track count
    # need not fall: a particle that dips below the threshold breaks its track in two)
    assert other["particles_per_frame"] < 0.95 * live["particles_per_frame"]
    assert other["frames"] == live["frames"]
    assert other["size_nm"]["mean"] == pytest.approx(100.0, rel=0.25)  # still the 100 nm beads (fewer tracks)
    assert live["threshold"]["rule"] == "noise"
    assert other["threshold"] == {"minmass": 600.0, "rule": "fixed", "link_minmass": 600.0}
    assert comparable(other) != comparable(live)


def test_a_calibration_with_twice_the_detection_volume_halves_the_concentration(stored, tmp_path):
    live, record = stored
    text = (ROOT / "calibrations" / "nta" / "simulated-camera.toml").read_text()
    doubled = tmp_path / "doubled.toml"
    doubled.write_text(text.replace("detection_volume_nl = 0.08128", "detection_volume_nl = 0.16256"))
    other = reprocess_run(record, {"calibration": str(doubled)}, tmp_path / "out")
    assert other["concentration_per_ml"] == pytest.approx(live["concentration_per_ml"] / 2, rel=1e-12)
    assert other["size_nm"] == live["size_nm"] and other["particles_per_frame"] == live["particles_per_frame"]
    assert other["detection_volume"] == {"nl": 0.16256, "source": other["reprocessed"]["calibration"]["source"]}
    assert other["reprocessed"]["calibration"]["file"] == str(doubled)
    other_optics = tmp_path / "pixel02.toml"  # other optics are refused (another threshold is not)
    other_optics.write_text(text.replace("pixel_size_um = 0.166", "pixel_size_um = 0.2"))
    with pytest.raises(ExoacqError, match=r"override calibration: calibration .*pixel02.toml was measured "
                                          r"with pixel_size_um = 0.2, but the instrument is set to 0.166"):
        reprocess_run(record, {"calibration": str(other_optics)}, tmp_path / "out2")


def test_a_run_without_its_kept_video_is_a_one_line_error(stored, tmp_path):
    _, record = stored
    moved = {**record, "directory": str(tmp_path)}  # the run's folder without its videos
    with pytest.raises(ExoacqError) as error:
        reprocess_run(moved, {}, tmp_path / "out")
    message = str(error.value)
    assert message.startswith(f"run {record['run_id']} capture 1: {tmp_path}/capture-1/video.zst is missing")
    assert "\n" not in message and error.value.code == "no_video"
    with pytest.raises(ExoacqError, match="has no NTA result to re-process"):
        reprocess_run({**record, "result": None, "state": "failed"}, {}, tmp_path / "out")


@pytest.mark.parametrize("overrides, message", [
    ({"exposure_ms": 10}, "cannot override exposure_ms when re-processing; allowed: minmass, "),
    ({"feature_diameter_px": 10}, "feature_diameter_px = 10: must be odd"),
    ({"minmass": "lots"}, "minmass = 'lots': not a number"),
    ({"minmass": -1}, r"minmass = -1: must be >= 0"),
    ({"min_track_length": 2.5}, "min_track_length = 2.5: must be a whole number"),
    ({"detector": "magic"}, "detector = 'magic'; allowed: fast, trackpy"),
    ({"calibration": "a.toml", "detection_volume_nl": 0.1}, "calibration or detection_volume_nl, not both"),
    ({"search_range_px": None}, "search_range_px = None .* needs min_diameter_nm"),
    # once an internal error (recursion, division by zero) or a concentration of 0 or 2e+307 /mL
    ({"search_range_px": 1e308}, r"search_range_px = 1e\+308: must be in \[0.5, 1000\]"),
    ({"detection_volume_nl": 1e-320}, r"detection_volume_nl = 1e-320: must be in \[1e-06, 1000\]"),
    ({"detection_volume_nl": "inf"}, "detection_volume_nl = inf: not a finite number"),
    ({"minmass": "inf"}, "minmass = inf: not a finite number"),
])
def test_bad_overrides_are_one_line_errors(stored, tmp_path, overrides, message):
    _, record = stored
    with pytest.raises(ExoacqError, match=message):
        reprocess_run(record, overrides, tmp_path)
    assert validate_overrides({"min_track_length": "12", "search_range_px": 4}) == {
        "min_track_length": 12, "search_range_px": 4.0}
