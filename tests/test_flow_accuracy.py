"""End to end accuracy of nano flow cytometry (issue #11 acceptance), through the real pieces:

simulated silica beads (FlowSimulator traces) -> PulseDetector -> bead_medians + fit_scatter (EV
core-shell model) -> simulated EV sample (log-normal, median 100 nm, 95 % within 55-180 nm, CD63 40 %,
CD81 25 %) and its unstained control -> PulseDetector -> compensation -> analyze:

- median diameter of the detected EVs within 5 % of the median of the simulated particles above
  the stated detection limit;
- concentration (particles above the detection limit) within 10 % of the truth;
- marker-positive fractions within 2 percentage points of the simulated particles';
- swarm flagged for a sample 100x too concentrated, not for the normal dilution; a dilution series
  over the normal range is swarm-free and one reaching the concentrated sample is not.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from exoacq.flow.analysis import Controls, FlowInput, analyze, dilution_series
from exoacq.flow.calibration import BeadPoint, FlowCalibration, bead_medians, fit_scatter
from exoacq.flow.fcs import FCSData
from exoacq.flow.gating import compensate
from exoacq.flow.pulses import PulseDetector, Trigger, estimate_baseline
from exoacq.flow.scatter import Collection, Particle, ev
from exoacq.flow.simulate import Cytometer, FlowSimulator, Population
from exoacq.flow.simulated import ev_sample, silica_beads

pytestmark = pytest.mark.slow

CYTOMETER = Cytometer()                 # 488 nm, 1 MHz, 10 us transit, 1 uL/min, noise 3 counts
DILUTION = 200.0                        # 2e10 EVs/mL -> 1,667 particles/s: the normal dilution
SECONDS = 8.0                           # ~12,000 events
EVS = ev_sample(2e10, diameter_nm=100.0, diameter_cv=0.30)
MARKERS = {"CD63": "FL1-H", "CD81": "FL2-H"}


def blank_levels() -> tuple[dict[str, float], dict[str, float]]:
    """Baseline and noise of every channel, measured on 0.2 s of buffer (no particles), as an operator
    does before the samples: a sample 100x too concentrated never returns to its baseline, and a
    baseline estimated on it would sit on the swarm."""
    samples, _ = FlowSimulator([], CYTOMETER, seed=1).traces(200_000)
    levels = [estimate_baseline(row) for row in samples]
    return ({c: m for c, (m, _) in zip(CYTOMETER.channels, levels)},
            {c: s for c, (_, s) in zip(CYTOMETER.channels, levels)})


BASELINE_COUNTS, NOISE_COUNTS = blank_levels()


def acquire(populations, seconds: float, *, dilution: float, seed: int, lysed: bool = False):
    """Traces of ``seconds`` through a PulseDetector (5 sigma trigger on SSC, baseline and noise of the
    blank): (FlowInput with compensated events, truth, trigger threshold above baseline)."""
    sim = FlowSimulator(populations, CYTOMETER, dilution=dilution, seed=seed, lysed=lysed)
    detector = PulseDetector(list(CYTOMETER.channels), CYTOMETER.sample_rate_hz, Trigger(channel="SSC", k_sigma=5.0),
                             baseline_counts=BASELINE_COUNTS, noise_counts=NOISE_COUNTS)
    n, block, done, frames, truth = int(seconds * CYTOMETER.sample_rate_hz), 1 << 20, 0, [], []
    while done < n:
        samples, t = sim.traces(min(block, n - done))
        frames.append(detector.process(samples, start_s=done / CYTOMETER.sample_rate_hz))
        truth.append(t)
        done += samples.shape[1]
    frames.append(detector.flush())
    events = pd.concat(frames, ignore_index=True)
    spill = CYTOMETER.spillover_matrix().rename(index=lambda c: f"{c}-H", columns=lambda c: f"{c}-H")
    events = compensate(FCSData(events=events, keywords={}, version="3.1", path="simulated", spillover=spill))
    threshold_au = detector.threshold_counts - detector.baseline_counts["SSC"]
    data = FlowInput(events, duration_s=seconds, flow_rate_ul_min=CYTOMETER.flow_rate_ul_min, dilution=dilution,
                     source=f"simulated x{dilution:g}")
    return data, pd.concat(truth, ignore_index=True), threshold_au


@pytest.fixture(scope="module")
def calibration():
    beads = silica_beads(CYTOMETER.wavelength_nm, diameters_nm=(100.0, 150.0, 200.0, 300.0, 500.0))
    data, _, _ = acquire(beads, 1.5, dilution=1.0, seed=11)
    medians = bead_medians(data.events, "SSC-H", len(beads))
    points = [BeadPoint(p.diameter_nm, p.particle, m) for p, m in zip(beads, medians)]
    scatter = fit_scatter(points, parameter="SSC-H", wavelength_nm=CYTOMETER.wavelength_nm,
                          medium_refractive_index=CYTOMETER.medium_refractive_index,
                          collection_guess=Collection(half_angle_deg=30.0), particle=ev(), fit_geometry=True)
    assert max(abs(r) for r in scatter.residuals_percent) < 3.0
    return FlowCalibration(scatter=scatter, fluorescence={}, created="test", source="simulated silica beads",
                           provenance={})


@pytest.fixture(scope="module")
def measured(calibration):
    sample, truth, threshold_au = acquire(EVS, SECONDS, dilution=DILUTION, seed=21)
    def without(*markers):
        return [dataclasses.replace(p, markers=tuple(m for m in p.markers if m.name not in markers)) for p in EVS]
    unstained, _, _ = acquire(without("CD63", "CD81"), 4.0, dilution=DILUTION, seed=22)
    fmo = {m: acquire(without(m), 4.0, dilution=DILUTION, seed=23 + i)[0] for i, m in enumerate(MARKERS)}
    buffer, _, _ = acquire([], 1.0, dilution=1.0, seed=25)
    result = analyze(sample, calibration=calibration, markers=MARKERS, trigger_threshold_au=threshold_au,
                     controls=Controls(unstained=unstained, fmo=fmo, buffer=buffer))
    unstained_only = analyze(sample, calibration=calibration, markers=MARKERS, trigger_threshold_au=threshold_au,
                             controls=Controls(unstained=unstained))
    return sample, truth, threshold_au, result, unstained_only


def test_calibration_recovers_the_instrument(calibration):
    # the simulated instrument: 85 counts/nm^2, 40 deg half-angle (guess 30 deg)
    assert calibration.scatter.gain_au_per_nm2 == pytest.approx(CYTOMETER.scatter_gain_counts_per_nm2, rel=0.05)
    assert calibration.scatter.collection.half_angle_deg == pytest.approx(CYTOMETER.collection.half_angle_deg, abs=2.0)


def test_detection_limit_median_diameter_and_concentration(measured):
    sample, truth, threshold_au, r, r_unstained = measured
    sim = FlowSimulator(EVS, CYTOMETER, dilution=DILUTION)
    true_limit_nm = sim.detection_limit_nm("EVs", threshold_au)
    assert r["detection_limit_nm"] == pytest.approx(true_limit_nm, rel=0.02)          # ~63 nm
    above = truth["diameter_nm"].to_numpy() > r["detection_limit_nm"]
    assert r["size_nm"]["median"] == pytest.approx(np.median(truth["diameter_nm"][above]), rel=0.05)
    assert r["size_nm"]["d10"] < r["size_nm"]["median"] < r["size_nm"]["d90"]
    true_per_ml = above.sum() * DILUTION / (CYTOMETER.flow_rate_ul_min * SECONDS / 60.0) * 1000.0
    assert r["concentration_per_ml"] == pytest.approx(true_per_ml, rel=0.10)
    assert r["concentration_uncertainty_per_ml"] < 0.02 * r["concentration_per_ml"]
    assert sum(r["size_histogram"]["counts"]) == r["size_nm"]["events"]
    assert r["swarm"]["flag"] is False, r["swarm"]
    assert json.loads(json.dumps(r, allow_nan=False))["size_nm"] == r["size_nm"]     # a JSON document body


def test_marker_fractions_against_controls(measured):
    sample, truth, threshold_au, r, r_unstained = measured
    above = truth["diameter_nm"].to_numpy() > r["detection_limit_nm"]
    for marker in MARKERS:
        true_fraction = float(np.mean(truth[f"mesf_{marker}"].to_numpy()[above] > 0))
        assert r["markers"][marker] == pytest.approx(true_fraction, abs=0.02), (marker, r["marker_thresholds"][marker])
        assert r["marker_thresholds"][marker]["method"].startswith("99.5th percentile of the FMO")
        # the unstained control alone misses the spread of the other stain's spillover: biased up, still close
        assert r_unstained["markers"][marker] == pytest.approx(true_fraction, abs=0.03)
        assert r_unstained["markers"][marker] >= r["markers"][marker] - 0.005
    assert r["controls"]["buffer"] == {"events": 0, "rate_per_s": 0.0, "concentration_per_ml": 0.0, "subtracted": True}


def test_swarm_flagged_when_100x_too_concentrated(calibration, measured):
    sample = measured[0]
    concentrated, _, threshold_au = acquire(EVS, 0.2, dilution=DILUTION / 100.0, seed=31)
    r = analyze(concentrated, calibration=calibration, trigger_threshold_au=threshold_au)
    assert r["swarm"]["flag"] is True and r["swarm"]["reasons"]
    assert any("possible swarm" in w for w in r["warnings"])
    diluted, _, _ = acquire(EVS, 4.0, dilution=2 * DILUTION, seed=32)
    more_diluted, _, _ = acquire(EVS, 6.0, dilution=4 * DILUTION, seed=33)
    normal = dilution_series([(DILUTION, sample), (2 * DILUTION, diluted), (4 * DILUTION, more_diluted)])
    assert normal["swarm_free"] is True, normal
    assert normal["slope"] == pytest.approx(1.0, abs=0.1)
    ten, _, _ = acquire(EVS, 1.0, dilution=DILUTION / 10.0, seed=34)
    swarm = dilution_series([(DILUTION / 100.0, concentrated), (DILUTION / 10.0, ten), (DILUTION, sample)])
    assert swarm["swarm_free"] is False and swarm["slope"] < 0.9


def test_detergent_lysis_flags_a_non_vesicular_population(calibration, measured):
    sample, _, threshold_au = measured[:3]
    lysed, _, _ = acquire(EVS, 2.0, dilution=DILUTION, seed=41, lysed=True)
    r = analyze(sample, calibration=calibration, trigger_threshold_au=threshold_au, controls=Controls(lysed=lysed))
    assert r["controls"]["lysed"]["events_remaining_fraction"] < 0.01 and r["controls"]["lysed"]["non_vesicular"] is False
    # the same EVs plus detergent-resistant particles (protein aggregates / lipoproteins: here 120 nm, n 1.45)
    aggregates = Population("aggregates", Particle(1.45, name="aggregate"), 120.0, 0.2, 4e9, detergent_resistant=True)
    mixed, _, _ = acquire(EVS + [aggregates], 3.0, dilution=DILUTION, seed=42)
    mixed_lysed, _, _ = acquire(EVS + [aggregates], 3.0, dilution=DILUTION, seed=43, lysed=True)
    r = analyze(mixed, calibration=calibration, trigger_threshold_au=threshold_au, controls=Controls(lysed=mixed_lysed))
    lysed_report = r["controls"]["lysed"]
    assert lysed_report["non_vesicular"] is True and any("not vesicular" in w for w in r["warnings"])
    # expected: aggregates 4e9/mL over 4e9 + 2e10 x 94 % EVs above the limit = 0.175
    assert lysed_report["events_remaining_fraction"] == pytest.approx(0.175, abs=0.03), lysed_report
