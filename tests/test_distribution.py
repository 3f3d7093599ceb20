"""exoacq.nta.distribution: from tracks to the reported size distribution, on synthetic tracks.

Synthetic tracks are 2-D Brownian (25 degC water, dt = 1/25 s, no blur,
Gaussian localisation noise of 40 nm), with NTA-like lengths. Their
brightness follows the model the detection-depth correction assumes: a
Gaussian light sheet of 1/e^2 half-width w, scatter ~ d^6, detection above
``minmass``, particles uniform in height; so larger particles are detected in
a deeper slab, as on a real instrument. A track's brightest feature is taken
at the nearest of three heights drawn in the slab (a particle wanders in z
during its track).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from exoacq.nta import distribution, sizing, steps
from exoacq.nta.analysis import StreamingTracker
from exoacq.nta.parameters import TrackingParameters
from exoacq.physics import stokes_einstein_diffusion_um2_s, water_viscosity_iapws_mpa_s

DT, T_C = 1.0 / 25.0, 25.0
ETA = water_viscosity_iapws_mpa_s(T_C)
MINMASS, PEAK_100NM = 300.0, 2400.0  # a 100 nm particle at the sheet centre: 8 x the threshold


def synthetic_tracks(rng, diameters_nm, sigma_um=0.040) -> pd.DataFrame:
    """A tracks table (the columns StreamingTracker.tracks_table gives) for particles of these sizes."""
    rows = []
    for d in diameters_nm:
        n_points = int(min(8 + rng.geometric(1 / 25), 200))
        diff = stokes_einstein_diffusion_um2_s(d, T_C, ETA)
        xy = np.cumsum(rng.normal(0.0, math.sqrt(2 * diff * DT), (2, n_points)), axis=1)
        xy += rng.normal(0.0, sigma_um, xy.shape)
        n, s, c, m = steps.track_step_sums(xy[0], xy[1])
        peak = PEAK_100NM * (d / 100.0) ** 6
        z_max = math.sqrt(math.log(peak / MINMASS) / 2.0)  # in units of the sheet half-width
        # the brightest feature: the closest approach to the sheet centre of a particle wandering
        # through it, modelled as the nearest of three uniform heights within the detected slab
        brightest = peak * math.exp(-2.0 * (z_max * rng.random(3).min()) ** 2)
        rows.append({"length_frames": n_points, "n_steps": n, "sum_sq_um2": s, "sum_cross_um2": c, "n_pairs": m,
                     "mean_mass": 0.7 * brightest, "max_mass": brightest})
    columns = ["length_frames", "n_steps", "sum_sq_um2", "sum_cross_um2", "n_pairs", "mean_mass", "max_mass"]
    table = pd.DataFrame(rows, columns=columns)
    if table.empty:
        return table.assign(diffusion_um2_s=[])
    table["diffusion_um2_s"] = steps.cve_diffusion_um2_s(table["n_steps"], table["sum_sq_um2"],
                                                          table["sum_cross_um2"], table["n_pairs"], DT)
    return table


def detected_mixture(rng, tracks: int, fractions: dict[float, float]) -> np.ndarray:
    """Sizes of detected particles: number fraction x detection depth, as a light sheet sees them."""
    sizes = np.array(list(fractions))
    depth = np.sqrt(np.log(PEAK_100NM * (sizes / 100.0) ** 6 / MINMASS))
    weights = np.array(list(fractions.values())) * depth
    return rng.choice(sizes, size=tracks, p=weights / weights.sum())


def size_distribution(table, **options):
    return distribution.size_distribution(table, frame_interval_s=DT, exposure_s=0.0, temperature_c=T_C,
                                          viscosity_mpa_s=ETA, minmass=MINMASS, **options)


def test_auto_min_track_length_follows_the_localisation_error():
    assert distribution.auto_min_track_length(0.0) == 13  # (6 / 2) / 0.25 = 12 steps
    assert distribution.auto_min_track_length(1.0) == 25  # (6 + 4 + 2) / 2 / 0.25 = 24 steps
    assert distribution.auto_min_track_length(100.0) == 50  # clipped
    assert distribution.auto_min_track_length(math.nan) == 13


def test_the_detection_depth_correction_recovers_a_two_to_one_mixture():
    # 2:1 by number of 100 and 150 nm; the 150 nm particles are seen ~1.5 x deeper,
    # so the detected population is ~ 57 % 100 nm. 3000 tracks: the fraction's SE ~ 1 %.
    rng = np.random.default_rng(11)
    table = synthetic_tracks(rng, detected_mixture(rng, 3000, {100.0: 2.0, 150.0: 1.0}))
    result = size_distribution(table, min_track_length=10)
    grid = result["diameter_nm"]
    detected_small = result["probability_detected"][grid < 125].sum()
    sample_small = result["probability"][grid < 125].sum()
    assert detected_small == pytest.approx(2 / (2 + 1.5), abs=0.05)
    assert sample_small == pytest.approx(2 / 3, abs=0.05)
    assert result["size_nm"]["mean"] == pytest.approx((2 * 100 + 150) / 3, rel=0.04)
    assert result["size_nm"]["d50"] == pytest.approx(100.0, rel=0.05)
    assert result["size_nm_detected"]["mean"] > result["size_nm"]["mean"] + 2.0
    assert result["peak_mass_100nm"] == pytest.approx(PEAK_100NM, rel=0.3)
    assert result["volume_ratio"] == 1.0 and result["warnings"] == []


def test_the_concentration_volume_follows_the_calibration_depth():
    rng = np.random.default_rng(12)
    table = synthetic_tracks(rng, np.full(600, 100.0))
    own = size_distribution(table, min_track_length=10)
    # beads calibrated at the same depth: ratio 1; beads seen half as deep: the sample's volume is twice theirs
    depth = own["mean_relative_depth"]
    assert size_distribution(table, min_track_length=10, calibration_relative_depth=depth)["volume_ratio"] == 1.0
    assert size_distribution(table, min_track_length=10,
                             calibration_relative_depth=depth / 2)["volume_ratio"] == pytest.approx(0.5)


def test_monodisperse_tracks_give_their_size_with_the_automatic_track_length():
    rng = np.random.default_rng(13)
    table = synthetic_tracks(rng, np.full(800, 200.0))
    result = size_distribution(table, min_track_length=None)
    # eps = sigma^2 / (D dt) = 0.0016 / (2.45 x 0.04) ~ 0.016: 13 points (14 with the estimates' noise)
    assert result["min_track_length"] in (13, 14)
    # sigma^2 = 0.0016 um^2 is small beside D dt = 0.098 um^2: each track's estimate has an SD of
    # ~ D dt sqrt(2 / n) ~ 0.027 um^2, so the median of 800 has an SE of ~ 0.0012 um^2; allow 3 SE
    assert (result["localisation_nm"] / 1e3) ** 2 == pytest.approx(0.040**2, abs=0.0036)
    for key in ("mean", "mode", "d50"):
        assert result["size_nm"][key] == pytest.approx(200.0, rel=0.03)


def test_a_distribution_is_smoothed_in_ln_d_keeping_its_mass_and_mode():
    grid = distribution.diameter_grid_nm(np.array([]), T_C, ETA)
    spike = np.zeros_like(grid)
    spike[np.argmin(abs(grid - 100.0))] = 1.0
    smoothed = sizing.smooth_distribution(grid, spike, 0.1)
    ln = np.log(grid)
    mean_ln = smoothed @ ln
    assert smoothed.sum() == pytest.approx(1.0) and math.exp(mean_ln) == pytest.approx(100.0, rel=0.02)
    assert math.sqrt(smoothed @ (ln - mean_ln) ** 2) == pytest.approx(0.1, rel=0.02)
    assert sizing.distribution_statistics(grid, smoothed)["mode"] == pytest.approx(100.0, rel=0.03)
    assert np.array_equal(sizing.smooth_distribution(grid, 2 * spike, 0.0), spike)
    assert np.array_equal(sizing.smooth_distribution(grid, spike, None), spike)


def test_too_few_tracks_say_so():
    rng = np.random.default_rng(14)
    result = size_distribution(synthetic_tracks(rng, np.full(20, 100.0)), min_track_length=10)
    assert any("a size distribution needs >= 50" in w for w in result["warnings"])
    assert result["size_nm"] is not None  # 20 tracks: numbers, with the warning
    result = size_distribution(synthetic_tracks(rng, np.full(5, 100.0)), min_track_length=10)
    assert result["size_nm"] is None and result["tracks_used"] == 5
    empty = synthetic_tracks(rng, [])
    assert "no track of >= 3 points" in size_distribution(empty, min_track_length=10)["warnings"][0]


def test_histogram_counts_are_whole_tracks_that_add_up():
    grid = np.geomspace(50.0, 300.0, 60)
    p = np.exp(-0.5 * ((grid - 120.0) / 15.0) ** 2)
    hist = distribution.number_histogram(grid, p / p.sum(), 137, 2e9)
    assert sum(hist["counts"]) == 137 and all(isinstance(c, int) for c in hist["counts"])
    assert sum(hist["number_fraction"]) == pytest.approx(1.0, abs=1e-3)
    assert sum(hist["concentration_per_ml"]) == pytest.approx(2e9, rel=1e-3)
    assert hist["bin_centres_nm"][0] == 2.5 and hist["bin_width_nm"] == 5.0
    empty = distribution.number_histogram(None, None, 0, None)
    assert sum(empty["counts"]) == 0 and "concentration_per_ml" not in empty


def feed_brownian(tracker, rng, diameter_nm, particles=30, frames=150, spacing_px=60.0):
    p = tracker.params
    sigma_px = math.sqrt(2 * stokes_einstein_diffusion_um2_s(diameter_nm, T_C, ETA) * DT) / p.pixel_size_um
    side = int(math.ceil(math.sqrt(particles)))
    positions = np.array([(i * spacing_px, j * spacing_px) for i in range(side) for j in range(side)][:particles])
    positions = positions + 100.0
    for frame in range(frames):
        tracker.add_frame(frame, {"y": positions[:, 0], "x": positions[:, 1], "mass": np.full(particles, 2000.0)})
        positions = positions + rng.normal(0.0, sigma_px, positions.shape)


def test_the_search_range_is_chosen_from_the_first_frames():
    params = TrackingParameters.for_sample(frame_rate_hz=25.0, exposure_ms=0.0, pixel_size_um=0.166,
                                           temperature_c=T_C, min_diameter_nm=30.0, minmass=MINMASS)
    assert params.auto_search_range and params.search_range_px == pytest.approx(24.0, rel=0.05)
    auto = StreamingTracker(params)
    feed_brownian(auto, np.random.default_rng(15), 200.0)
    chosen = auto.params.search_range_px
    # 200 nm steps: sigma = 2.7 px per axis; the range covers a particle twice as mobile
    assert not auto.params.auto_search_range and 9.0 < chosen < 18.0
    fixed = StreamingTracker(TrackingParameters.for_sample(
        frame_rate_hz=25.0, exposure_ms=0.0, pixel_size_um=0.166, temperature_c=T_C, min_diameter_nm=30.0,
        minmass=MINMASS, link_search_range_px=chosen))
    feed_brownian(fixed, np.random.default_rng(15), 200.0)
    # the held frames were linked again with the chosen range: the same tracks as linking with it throughout
    pd.testing.assert_frame_equal(auto.tracks_table(), fixed.tracks_table())
    summary = auto.summary()
    assert summary["link_search_range_px"] == chosen and summary["frames_analysed"] == 150


def test_a_video_shorter_than_the_pilot_is_linked_at_the_end():
    params = TrackingParameters.for_sample(frame_rate_hz=25.0, exposure_ms=0.0, pixel_size_um=0.166,
                                           temperature_c=T_C, min_diameter_nm=30.0, minmass=MINMASS)
    tracker = StreamingTracker(params)
    feed_brownian(tracker, np.random.default_rng(16), 100.0, frames=40)
    running = tracker.summary(running=True)  # still held: the provisional tracks (largest range) meanwhile
    assert running["provisional"] and running["tracks"]["total"] >= 30 and running["link_search_range_px"] is None
    summary = tracker.summary()
    assert summary["tracks"]["total"] >= 30 and summary["frames_analysed"] == 40
    assert summary["link_search_range_px"] is not None


def test_merged_close_features_are_counted_back():
    """Points of a Poisson field, the brighter of two closer than r kept (Matern type II thinning):
    the crowding factor gives back the true count, here within 2 % (its SE is ~ 0.5 %)."""
    from exoacq.nta.detection_volume import crowding_factor
    rng = np.random.default_rng(17)
    side, r = 600.0, 12.0
    true_counts, kept_counts = [], []
    for _ in range(60):
        n = rng.poisson(150)
        xy, brightness = rng.random((n, 2)) * side, rng.random(n)
        close = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1)) < r
        np.fill_diagonal(close, False)
        kept = ~np.any(close & (brightness[None, :] > brightness[:, None]), axis=1)
        true_counts.append(n)
        kept_counts.append(int(kept.sum()))
    # as at a frame's edges, points near the square's edges lack neighbours beyond it: ~ 1 % fewer merges
    factor, occupied = crowding_factor(kept_counts, side * side, r)
    assert 1.08 < factor < 1.15 and 0.1 < occupied < 0.3
    assert np.mean(kept_counts) * factor == pytest.approx(np.mean(true_counts), rel=0.02)
    assert crowding_factor([0, 0], 1e4, 12.0) == (1.0, 0.0)
    assert crowding_factor([100], 100 * math.pi * 144.0, 12.0)[0] == math.inf
