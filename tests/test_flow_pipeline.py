"""The steps between events and a flow result: compensation with the calibration's spillover, the
trigger baseline against the calibration's (swarm) and the digitizer's scale against the calibration's."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from exoacq.flow.analysis import FlowInput
from exoacq.flow.calibration import load_calibration
from exoacq.flow.pipeline import analyse, compensate_events, spillover_keyword

CALIBRATION = load_calibration(ROOT / "calibrations" / "flow" / "simulated-cytometer.toml")


def _events(n: int = 4000, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ssc = CALIBRATION.scatter.scatter_au(rng.choice([80.0, 100.0, 120.0], n))
    fl1 = np.where(rng.random(n) < 0.4, 120.0, 0.0) + rng.normal(0, 3, n)
    fl2 = 0.10 * fl1 + rng.normal(0, 3, n)        # FL1's spillover into FL2, no FL2 stain
    return pd.DataFrame({"SSC-H": ssc, "FL1-H": fl1, "FL2-H": fl2, "Coincident": 0.0, "SSC-W": 10.0})


def _input(keywords: dict[str, str]) -> FlowInput:
    return FlowInput(_events(), duration_s=2.0, flow_rate_ul_min=1.0, dilution=100.0, source="test",
                     keywords={"EXOACQ_TRIGGER_CHANNEL": "SSC", **keywords})


def _levels(baseline: float, noise: float, volts_per_count: float = 1.220703125e-05) -> dict[str, str]:
    return {"EXOACQ_BASELINE_COUNTS_SSC": str(baseline), "EXOACQ_NOISE_COUNTS_SSC": str(noise),
            "EXOACQ_VOLTS_PER_COUNT_SSC": repr(volts_per_count)}


def test_the_calibrations_spillover_is_removed_unless_the_file_has_its_own():
    events = _events()
    spill = CALIBRATION.spillover
    assert spill.loc["FL1-H", "FL2-H"] == pytest.approx(0.10, abs=0.005)     # measured on the FITC ladder
    clean = compensate_events(events, spill)
    positive = events["FL1-H"] > 60
    assert abs(clean.loc[positive, "FL2-H"].mean()) < 1.0 < events.loc[positive, "FL2-H"].mean()
    result = analyse(_input(_levels(100.0, 3.0)), calibration=CALIBRATION, gates=None,
                     markers={"CD81": "FL2-H"}, controls={}, trigger_threshold_au=15.0)
    assert result["markers"]["CD81"] < 0.02      # no CD81 stain: spillover is not read as CD81+
    own = _input({**_levels(100.0, 3.0), "$SPILLOVER": spillover_keyword(spill)})
    assert analyse(own, calibration=CALIBRATION, gates=None, markers={}, controls={},
                   trigger_threshold_au=15.0)["calibration"]["spillover"] == ["FL1-H", "FL2-H"]


def test_a_raised_trigger_baseline_is_swarm_and_a_normal_one_is_not():
    normal = analyse(_input(_levels(100.2, 3.1)), calibration=CALIBRATION, gates=None, markers={}, controls={},
                     trigger_threshold_au=15.0)
    assert normal["swarm"]["flag"] is False and normal["swarm"]["baseline"]["reference"]["noise_counts"] > 0
    raised = analyse(_input(_levels(216.0, 133.0)), calibration=CALIBRATION, gates=None, markers={}, controls={},
                     trigger_threshold_au=15.0)
    assert raised["swarm"]["flag"] is True and "216.0" in raised["swarm"]["reasons"][-1]
    # against a buffer control when one is attached
    buffer = FlowInput(_events(0), duration_s=1.0, flow_rate_ul_min=1.0, keywords=_levels(100.0, 3.0))
    shifted = analyse(_input(_levels(120.0, 3.0)), calibration=None, gates=None, markers={},
                      controls={"buffer": buffer}, trigger_threshold_au=15.0)
    assert shifted["swarm"]["flag"] is True and "the buffer control" in shifted["swarm"]["reasons"][-1]


def test_a_digitizer_scale_other_than_the_calibrations_is_named():
    doubled = analyse(_input(_levels(100.0, 3.0, volts_per_count=2 * 1.220703125e-05)), calibration=CALIBRATION,
                      gates=None, markers={}, controls={}, trigger_threshold_au=15.0)
    assert any("off by a factor 2" in w for w in doubled["warnings"]), doubled["warnings"]
    same = analyse(_input(_levels(100.0, 3.0)), calibration=CALIBRATION, gates=None, markers={}, controls={},
                   trigger_threshold_au=15.0)
    assert not any("V/count" in w for w in same["warnings"])
