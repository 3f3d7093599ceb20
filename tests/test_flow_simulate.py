"""The simulated nano flow cytometer: arrivals, pulse heights, markers, lysis, blocks, saturation, swarm."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ROOT

from exoacq.errors import ConfigError
from exoacq.flow.scatter import collected_cross_section_nm2
from exoacq.flow.simulate import Cytometer, FlowSimulator, Marker, Population, particles_per_s
from exoacq.flow.simulated import (ev_sample, mesf_beads,
                                   polystyrene_beads, silica_beads)

CY = Cytometer()
CALIBRATIONS = ROOT / "calibrations" / "flow"


def _neighbour_gap_samples(truth) -> np.ndarray:
    """For each particle, the distance (samples) to its nearest neighbour in time."""
    c = truth["time_s"].to_numpy() * CY.sample_rate_hz
    gaps = np.diff(c)
    left = np.concatenate([[np.inf], gaps])
    right = np.concatenate([gaps, [np.inf]])
    return np.minimum(left, right)


def test_rate_is_concentration_over_dilution_times_flow():
    # 2e10 /mL diluted x100 = 2e8 /mL; 1 uL/min = 1e-3 mL / 60 s -> 3333.3 /s
    assert particles_per_s(2e10, 100, 1.0) == pytest.approx(3333.333, rel=1e-6)
    sim = FlowSimulator(ev_sample(2e10) + silica_beads(diameters_nm=(200.0,), concentration_per_ml=2e9),
                        dilution=100, seed=3)
    assert sim.rates_per_s == pytest.approx({"EVs": 3333.333, "silica 200 nm": 333.333}, rel=1e-5)
    _, truth = sim.traces(500_000)                        # 0.5 s
    for name, rate in sim.rates_per_s.items():
        expected = rate * 0.5
        n = int((truth["population"] == name).sum())
        assert abs(n - expected) < 5 * math.sqrt(expected), (name, n, expected)
    gaps = np.diff(truth["time_s"].to_numpy())          # Poisson process: exponential gaps, CV 1
    assert gaps.mean() == pytest.approx(1 / sim.total_rate_per_s, rel=0.08)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.08)


def test_isolated_pulse_heights_equal_the_truth():
    """At a pulse's centre the trace is baseline + peak x exp(-x^2/2) (x the centre's offset from
    the nearest sample, in sigmas), within shot noise (0.5 counts/pe) + electronic noise + rounding."""
    sim = FlowSimulator(ev_sample() + silica_beads(diameters_nm=(150.0, 300.0), concentration_per_ml=5e8),
                        dilution=100, seed=5)
    trace, truth = sim.traces(1_000_000)
    sigma = CY.pulse_sigma_samples
    isolated = truth[_neighbour_gap_samples(truth) > 12 * sigma]
    c = isolated["time_s"].to_numpy() * CY.sample_rate_hz
    i = np.rint(c).astype(int)
    ok = (i >= 0) & (i < trace.shape[1])
    c, i, isolated = c[ok], i[ok], isolated[ok]
    shape = np.exp(-0.5 * ((i - c) / sigma) ** 2)
    for row, ch in enumerate(CY.channels):
        expected = isolated[f"{ch}_peak_counts"].to_numpy() * shape
        lit = expected > 20                                # FL: the marker-positive ones
        observed = trace[row, i[lit]] - CY.baseline_counts
        sd = np.sqrt(CY.noise_counts**2 + CY.counts_per_photoelectron * expected[lit] + 1 / 12)
        z = (observed - expected[lit]) / sd
        assert lit.sum() > 300, ch
        assert abs(z.mean()) < 0.15, (ch, z.mean())
        assert 0.85 < z.std() < 1.15, (ch, z.std())
        # bright pulses: the height is right to the percent
        bright = expected[lit] > 1000
        if bright.sum() > 20:
            assert np.median(observed[bright] / expected[lit][bright]) == pytest.approx(1.0, abs=0.01)


def test_truth_follows_the_populations_and_mie():
    sim = FlowSimulator(ev_sample(), dilution=10, seed=7)
    _, truth = sim.traces(300_000)                        # ~10,000 EVs
    n = len(truth)
    assert n > 8000
    for marker, fraction in (("CD63", 0.40), ("CD81", 0.25)):
        positive = (truth[f"mesf_{marker}"] > 0).mean()
        assert abs(positive - fraction) < 4 * math.sqrt(fraction * (1 - fraction) / n), (marker, positive)
    d = truth["diameter_nm"].to_numpy()
    assert np.median(d) == pytest.approx(80.0, rel=0.02)
    assert np.log(d).std() == pytest.approx(0.35, rel=0.03)
    # positive MESF: 600 x (d / 80 nm)^2 x log-normal(0.5)
    pos = truth[truth["mesf_CD63"] > 0]
    ratio = np.log(pos["mesf_CD63"] / (600.0 * (pos["diameter_nm"] / 80.0) ** 2))
    assert abs(ratio.mean()) < 0.03 and ratio.std() == pytest.approx(0.5, rel=0.05)
    # scatter: the table agrees with exact coated-sphere Mie
    sample = truth.iloc[:200]
    exact = collected_cross_section_nm2(sample["diameter_nm"].to_numpy(), ev_sample()[0].particle,
                                        wavelength_nm=488.0, medium_refractive_index=1.333,
                                        collection=CY.collection)
    assert np.allclose(sample["cross_section_nm2"], exact, rtol=2e-3)
    ill = truth["illumination"]
    assert ill.mean() == pytest.approx(1.0, abs=0.002) and ill.std() == pytest.approx(0.03, rel=0.05)
    assert np.allclose(truth["SSC_peak_counts"], 85.0 * truth["cross_section_nm2"] * ill)
    # fluorescence with spillover FL1 -> FL2 10 %, FL2 -> FL1 2 %, 0.2 counts/MESF
    fl1, fl2 = 0.2 * truth["mesf_CD63"], 0.2 * truth["mesf_CD81"]
    assert np.allclose(truth["FL1_peak_counts"], (fl1 + 0.02 * fl2) * ill)
    assert np.allclose(truth["FL2_peak_counts"], (fl2 + 0.10 * fl1) * ill)
    assert list(sim.cytometer.spillover_matrix().loc["FL1"]) == [1.0, 0.10]


def test_lysis_removes_vesicles_keeps_beads():
    sample = ev_sample() + silica_beads(diameters_nm=(200.0,), concentration_per_ml=2e9)
    intact = FlowSimulator(sample, dilution=100, seed=1)
    lysed = FlowSimulator(sample, dilution=100, seed=1, lysed=True)
    assert set(intact.rates_per_s) == {"EVs", "silica 200 nm"}
    assert set(lysed.rates_per_s) == {"silica 200 nm"}
    _, truth = lysed.traces(300_000)
    assert set(truth["population"]) == {"silica 200 nm"}
    assert abs(len(truth) - 100) < 5 * 10                 # 333 /s x 0.3 s


def test_same_seed_same_traces_and_other_seed_differs():
    a, ta = FlowSimulator(ev_sample(), dilution=100, seed=11).traces(200_000)
    b, tb = FlowSimulator(ev_sample(), dilution=100, seed=11).traces(200_000)
    c, _ = FlowSimulator(ev_sample(), dilution=100, seed=12).traces(200_000)
    assert np.array_equal(a, b) and ta.equals(tb)
    assert not np.array_equal(a, c)


def test_two_blocks_equal_one_block_and_pulses_cross_the_boundary():
    n = 50_003                                            # not a multiple of the generation chunk
    split = FlowSimulator(ev_sample(), dilution=3, seed=21)
    x1, t1 = split.traces(n)
    x2, t2 = split.traces(n)
    whole, tw = FlowSimulator(ev_sample(), dilution=3, seed=21).traces(2 * n)
    assert np.array_equal(np.concatenate([x1, x2], axis=1), whole)
    assert t1["time_s"].max() < n / CY.sample_rate_hz <= t2["time_s"].min()
    assert len(t1) + len(t2) == len(tw)
    assert np.allclose(np.concatenate([t1["SSC_peak_counts"], t2["SSC_peak_counts"]]), tw["SSC_peak_counts"])
    # the boundary really is crossed by pulses (centres within 2 sigma of it, on both sides)
    edge = np.abs(tw["time_s"] * CY.sample_rate_hz - n) < 2 * CY.pulse_sigma_samples
    assert (tw.loc[edge, "SSC_peak_counts"] > 50).any()
    assert split.samples_generated == 2 * n and split.time_s == pytest.approx(2 * n / CY.sample_rate_hz)


def test_saturation_clips_at_the_stated_level():
    cy = Cytometer(saturation_counts=8191)                # a 14-bit converter
    sim = FlowSimulator(polystyrene_beads(diameters_nm=(300.0,), concentration_per_ml=1e9), cy, seed=2)
    trace, truth = sim.traces(200_000)
    assert (truth["SSC_peak_counts"] > 8191).all()        # 300 nm polystyrene: ~1400 nm^2 x 85
    assert trace[0].max() == 8191 and (trace[0] == 8191).sum() >= len(truth)
    full = FlowSimulator(polystyrene_beads(diameters_nm=(500.0,), concentration_per_ml=1e9), seed=2)
    assert full.traces(100_000)[0][0].max() == 32767


def test_concentrated_sample_swarms_diluted_one_does_not():
    threshold = 5 * CY.noise_counts
    dense = FlowSimulator(ev_sample(), dilution=1, seed=4)
    dilute = FlowSimulator(ev_sample(), dilution=1000, seed=4)
    xd, td = dense.traces(200_000)
    xl, tl = dilute.traces(200_000)
    fwhm = CY.transit_time_s * CY.sample_rate_hz
    assert (_neighbour_gap_samples(td) < fwhm).mean() > 0.9      # 3.3e5 /s: ~3 particles per FWHM
    assert (_neighbour_gap_samples(tl) < fwhm).mean() < 0.02     # 333 /s
    below = (td["SSC_peak_counts"] < threshold).sum() / (len(xd[0]) / fwhm)
    assert below > 0.5                                    # sub-threshold particles per FWHM window

    def robust_sigma(x):
        return 1.4826 * np.median(np.abs(x - np.median(x)))
    # swarm lifts and roughens the baseline; the diluted trace is baseline + electronic noise
    assert np.median(xd[0]) - CY.baseline_counts > 10 * CY.noise_counts
    assert robust_sigma(xd[0]) > 10 * CY.noise_counts
    assert np.median(xl[0]) == CY.baseline_counts
    assert robust_sigma(xl[0]) == pytest.approx(CY.noise_counts, rel=0.1)


def test_detection_limit_and_noise_figures():
    sim = FlowSimulator(ev_sample(), dilution=100, seed=8)
    assert sim.noise_sigma_counts == {"SSC": 3.0, "FL1": 3.0, "FL2": 3.0}
    threshold = 5 * sim.noise_sigma_counts["SSC"]
    limit = sim.detection_limit_nm("EVs", threshold)
    assert 58.0 < limit < 68.0
    assert sim.expected_peak_counts("EVs", [limit])[0] == pytest.approx(threshold, rel=1e-6)
    _, truth = sim.traces(500_000)
    small = truth[truth["diameter_nm"] < 0.9 * limit]     # (0.9)^6 ~ 0.53 in Rayleigh: below even at +3 sd light
    assert len(small) > 50 and (small["SSC_peak_counts"] < threshold).all()


def test_buffer_only_is_baseline_and_noise():
    trace, truth = FlowSimulator([], seed=1).traces(200_000)
    assert len(truth) == 0 and trace.dtype == np.int16 and trace.shape == (3, 200_000)
    assert trace.mean() == pytest.approx(CY.baseline_counts, abs=0.02)
    assert trace.std() == pytest.approx(math.sqrt(CY.noise_counts**2 + 1 / 12), rel=0.01)


def test_bead_presets_follow_the_calibration_files():
    silica = silica_beads()
    if (CALIBRATIONS / "beads-silica.toml").exists():   # 80-500 nm, CV 8-4 % (relative SD -> SD of ln d)
        assert [p.diameter_nm for p in silica] == [80.0, 100.0, 150.0, 200.0, 300.0, 500.0]
        assert silica[0].diameter_cv == pytest.approx(math.sqrt(math.log(1 + 0.08**2)))
    assert all(p.detergent_resistant for p in silica)
    assert silica[0].particle.refractive_index == pytest.approx(1.438, abs=1e-3)
    # the largest silica bead stays below saturation at the default gain (illumination +3 sd)
    sim = FlowSimulator(silica, seed=0)
    assert sim.expected_peak_counts(silica[-1].name, [silica[-1].diameter_nm])[0] * 1.09 < CY.saturation_counts


def test_mesf_ladder_lands_at_gain_times_mesf():
    ladder = mesf_beads("FL1", diameter_nm=100.0)         # 100 nm polystyrene: scatter below saturation
    levels = [p.markers[0].mesf_median for p in ladder if p.markers]
    if (CALIBRATIONS / "beads-mesf.toml").exists():
        assert levels == [500.0, 2000.0, 8000.0, 30000.0, 120000.0]     # the FITC ladder
    sim = FlowSimulator(ladder, seed=6)
    _, truth = sim.traces(300_000)
    for level in levels:
        rows = truth[truth["population"] == f"MESF {level:g} FL1"]
        assert len(rows) > 50
        assert np.median(rows["FL1_peak_counts"]) == pytest.approx(0.2 * level, rel=0.03)
        assert np.median(rows["FL2_peak_counts"]) == pytest.approx(0.02 * level, rel=0.03)   # 10 % spillover
    blank = truth[truth["population"] == "MESF 0 FL1"]
    assert len(blank) > 50 and (blank["FL1_peak_counts"] == 0).all()


def test_one_second_of_trace():
    # how fast it is made is a figure of `exoacq bench flow` (simulator_realtime_factor), not a timed test
    sim = FlowSimulator(ev_sample() + silica_beads(), dilution=100, seed=9)
    trace, truth = sim.traces(int(CY.sample_rate_hz))
    assert trace.shape == (3, 1_000_000) and len(truth) > 3000


def test_bad_input_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="concentration_per_ml"):
        Population("x", ev_sample()[0].particle, 80.0, 0.3, -1.0)
    with pytest.raises(ConfigError, match="marker CD9 has no channel"):
        FlowSimulator([Population("x", ev_sample()[0].particle, 80.0, 0.3, 1e9, markers=(Marker("CD9", 0.5, 500.0),))])
    with pytest.raises(ConfigError, match="dilution"):
        FlowSimulator(ev_sample(), dilution=0.5)
    with pytest.raises(ConfigError, match="scatter_channel"):
        Cytometer(scatter_channel="FSC")
    with pytest.raises(ConfigError, match="distinct"):
        FlowSimulator(ev_sample() + ev_sample())


def test_event_fast_path_measures_each_particle_alone():
    sim = FlowSimulator(ev_sample() + silica_beads(diameters_nm=(200.0,), concentration_per_ml=2e9),
                        dilution=100, seed=10)
    events, truth = sim.events(2.0)
    assert sim.time_s == pytest.approx(2.0)
    assert abs(len(truth) - 2 * sim.total_rate_per_s) < 5 * math.sqrt(2 * sim.total_rate_per_s)
    assert len(events) == truth["detected"].sum()
    # detected = SSC-H above 5 sigma = 15 counts: everything clearly above is in, clearly below is out
    assert truth.loc[truth["SSC_peak_counts"] > 30, "detected"].all()
    assert not truth.loc[truth["SSC_peak_counts"] < 3, "detected"].any()
    sel = truth[truth["detected"]].reset_index(drop=True)
    assert np.allclose(events["Time"], sel["time_s"])
    bright = sel["SSC_peak_counts"] > 1000
    assert np.median(events.loc[bright, "SSC-H"] / sel.loc[bright, "SSC_peak_counts"]) == pytest.approx(1, abs=0.01)
    # a Gaussian's area is height x sigma x sqrt(2 pi): 10 us FWHM -> 10.64 us
    assert np.median(events.loc[bright, "SSC-A"] / events.loc[bright, "SSC-H"]) == pytest.approx(10.645, rel=0.01)
    # width above half the threshold: 2 sigma sqrt(2 ln(H / 7.5)) us
    h = events.loc[bright, "SSC-H"]
    assert np.allclose(events.loc[bright, "SSC-W"], 2 * 4.2466 * np.sqrt(2 * np.log(h / 7.5)), rtol=1e-3)
    assert set(events.columns) >= {"SSC-H", "SSC-A", "SSC-W", "FL1-H", "FL2-A", "Time", "Coincident"}
