"""`exoacq bench accuracy`: both simulated instruments, errors against their truth, the threshold's effect.

The accuracy figures themselves are measured with the full matrix (README, "Accuracy");
here one short case on each simulator checks the harness and guards against regressions
with bounds set by their statistics.
"""
from __future__ import annotations

import json

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_bench_accuracy_runs_both_simulators_at_default_settings():
    proc = run_cli("bench", "accuracy", "--cases", "100nm-short", "--captures", "1", "--capture-s", "20", "--json",
                   timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result["simulators"]) == {"exoacq", "emccd"} and result["threshold_scales"] == [1.0, 1 / 1.5, 1.5]
    for name, table in result["simulators"].items():
        cal = table["calibration"]
        assert len(cal["videos"]) == 2 and 0.02 < cal["detection_volume_nl"] < 0.2 and cal["relative_depth"] > 0
        (row,) = table["cases"]
        truth, measured, errors = row["truth"], row["measured"], row["error_percent"]
        assert errors["mean"] == pytest.approx(100 * (measured["size_nm"]["mean"] / 100.0 - 1), abs=0.01)
        assert errors["concentration"] == pytest.approx(
            100 * (measured["concentration_per_ml"] / truth["concentration_per_ml"] - 1), abs=0.01)
        assert row["passed"] == {k: abs(errors[k]) <= t for k, t in row["target_percent"].items()}
        # default settings: the threshold from the video's noise, the blur from the tracks
        assert measured["threshold"]["rule"] == "noise" and measured["blur"]["source"] != "exposure"
        by_scale = measured["mean_nm_by_threshold_scale"]
        assert set(by_scale) == {"1", "0.667", "1.5"}
        # 20 s of 100 nm: ~ 150-250 tracks, the mean's SE ~ 2 %: 6 % is a regression guard
        assert abs(errors["mean"]) < 6.0, (name, errors)
        # at a short exposure the threshold 1.5 x lower or higher moves the mean < 2 % (README, "Accuracy"; at the
        # whole-frame exposure the EMCCD simulator's fastest particles are lost at a higher threshold: not yet
        # solved, reported by the bench)
        assert errors["threshold"] < 6.0, (name, by_scale)
        assert table["blur_pairs"] == []  # only the short exposure was run
    bad = run_cli("bench", "accuracy", "--cases", "nonesuch")
    assert bad.returncode == 2 and "unknown case nonesuch" in bad.stderr and "Traceback" not in bad.stderr
