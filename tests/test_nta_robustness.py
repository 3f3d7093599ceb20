"""NTA numbers that do not depend on what the operator guessed: the threshold from the noise, the blur from
the tracks, saturated and stationary features, trackers side by side, progress from the first frame."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from exoacq.nta.analysis import StreamingTracker, TrackingParameters, saturation_level, with_threshold
from exoacq.nta.detect import locate_fast
from exoacq.nta.sizing import BLUR_UNRESOLVED, estimate_blur, robust_localisation_variance_um2, track_step_sums
from exoacq.nta.threshold import NOISE_MARGIN, mass_exceeded, noise_threshold, pixel_noise_sd
from exoacq.physics import stokes_einstein_diffusion_um2_s, water_viscosity_iapws_mpa_s

ETA_25 = water_viscosity_iapws_mpa_s(25.0)


def _noise(shape, sd, background, dtype, seed):
    rng = np.random.default_rng(seed)
    frame = background + sd * rng.standard_normal(shape)
    if np.issubdtype(dtype, np.integer):
        return np.clip(np.rint(frame), 0, np.iinfo(dtype).max).astype(dtype)
    return frame.astype(dtype)


@pytest.mark.parametrize("dtype, sd, background", [(np.uint8, 3.0, 20.0), (np.uint16, 12.0, 400.0)])
def test_the_threshold_holds_the_false_detections_it_states(dtype, sd, background):
    frames = [_noise((240, 320), sd, background, dtype, seed) for seed in range(8)]
    assert pixel_noise_sd(frames[0]) == pytest.approx(sd, rel=0.05)
    chosen = noise_threshold(frames, diameter_px=11, false_per_frame=0.5)
    assert chosen.rule == "noise" and chosen.minmass == pytest.approx(NOISE_MARGIN * chosen.noise_floor_mass, rel=1e-3)
    # on fresh noise frames of the same level, the floor is exceeded ~ 0.5 times per frame
    fresh = [_noise((240, 320), sd, background, dtype, 100 + k) for k in range(60)]
    masses = np.concatenate([locate_fast(f, 11, 0.0)["mass"].to_numpy() for f in fresh])
    rate = float((masses > chosen.noise_floor_mass).sum()) / len(fresh)
    assert 0.1 < rate < 2.0
    assert (masses > chosen.minmass).sum() == 0  # at the threshold itself: none in 60 frames
    # the threshold follows the noise (at 8 bits not in proportion: the band-pass drops what is below a count)
    louder = noise_threshold([_noise((240, 320), 2 * sd, background, dtype, s) for s in range(8)], diameter_px=11)
    assert louder.minmass > 1.3 * chosen.minmass


def test_mass_exceeded_extrapolates_an_exponential_tail():
    rng = np.random.default_rng(0)
    masses = rng.exponential(10.0, 100_000)  # 1000 "frames" of 100 maxima each
    assert mass_exceeded(masses, 1000, 5.0) == pytest.approx(10.0 * np.log(100 / 5.0), rel=0.05)
    assert mass_exceeded(masses, 1000, 0.001) == pytest.approx(10.0 * np.log(100 / 0.001), rel=0.05)  # beyond


def test_with_threshold_keeps_a_given_minmass_and_finds_the_saturation_level():
    eight = [_noise((64, 64), 2.0, 20.0, np.uint8, s) for s in range(8)]
    base = TrackingParameters(25.0, None, 0.166, 25.0, ETA_25, minmass=300.0)
    assert with_threshold(base, eight).minmass == 300.0 and with_threshold(base, eight).threshold is None
    assert with_threshold(base, eight).saturation_counts == 255.0
    twelve_bit = np.full((16, 16), 3000, np.uint16)
    assert saturation_level([twelve_bit]) == 65535.0  # no clipped pixel seen: only the container's top
    twelve_bit[2:4, 5] = 4095  # two pixels piled up at 2^12 - 1: a 12-bit camera's clip level
    assert saturation_level([twelve_bit]) == 4095.0 and saturation_level([np.zeros((4, 4), np.float32)]) is None


def _tracks(sizes_nm, blur, n_tracks, rng, sigma_um=0.03, dt=0.04):
    """Per-track sums of simulated tracks: Brownian, blurred over the exposure (6 R of the frame), noisy."""
    rows = []
    for _ in range(n_tracks):
        d = stokes_einstein_diffusion_um2_s(float(rng.choice(sizes_nm)), 25.0, ETA_25)
        n, fraction, sub = int(rng.integers(15, 60)), 6.0 * blur, 16
        steps = rng.normal(0.0, np.sqrt(2 * d * dt / sub), ((n + 1) * sub, 2))
        path = np.cumsum(steps, axis=0).reshape(n + 1, sub, 2)
        seen = path[:, : max(1, int(round(fraction * sub))), :].mean(axis=1) if fraction > 0 else path[:, 0, :]
        seen = seen + rng.normal(0.0, sigma_um, seen.shape)
        rows.append(track_step_sums(seen[:, 0], seen[:, 1]))
    return map(np.array, zip(*rows))


@pytest.mark.parametrize("blur", [0.0, 1.0 / 6.0])
def test_the_blur_is_measured_from_a_polydisperse_sample(blur):
    rng = np.random.default_rng(3)
    estimate = estimate_blur(*_tracks([60.0, 100.0, 200.0, 400.0], blur, 500, rng))
    assert estimate.source == "tracks" and estimate.blur == pytest.approx(blur, abs=0.03)
    assert estimate.standard_error < 0.03


def test_a_monodisperse_sample_cannot_tell_the_blur_and_needs_not():
    rng = np.random.default_rng(4)
    n, s, c, m = _tracks([100.0], 0.0, 300, rng)
    estimate = estimate_blur(n, s, c, m)
    assert estimate.source == "spread too small" and estimate.blur == BLUR_UNRESOLVED
    # whatever the slope, the line passes through the typical track: sigma^2 = R a + (2R - 1) b (VBF eq. 15),
    # its weighted median, not clamped at 0
    assert estimate.localisation_variance_um2 == robust_localisation_variance_um2(n, s, c, m, BLUR_UNRESOLVED,
                                                                                   clamp=False)


def _params(**overrides):
    base = dict(frame_rate_hz=25.0, exposure_ms=None, pixel_size_um=0.166, temperature_c=25.0,
                viscosity_mpa_s=ETA_25, min_track_length=10, search_range_px=15.0, minmass=100.0)
    return TrackingParameters(**(base | overrides))


def _frames(frames, rng, n_particles=30, hot=(600.0, 440.0), saturate_first=False):
    """Feature tables of 100 nm particles on a sparse grid and one hot pixel (it jitters, never moves)."""
    d_px2 = stokes_einstein_diffusion_um2_s(100.0, 25.0, ETA_25) / 0.166 ** 2 / 25.0
    pos = np.array([(60.0 * (i % 6) + 40, 60.0 * (i // 6) + 40) for i in range(n_particles)])
    for _ in range(frames):
        pos = pos + rng.normal(0.0, np.sqrt(2 * d_px2), pos.shape)
        xs = np.append(pos[:, 0], hot[0] + rng.normal(0, 0.1))
        ys = np.append(pos[:, 1], hot[1] + rng.normal(0, 0.1))
        raw_max = np.full(len(xs), 80.0)
        if saturate_first:
            raw_max[0] = 255.0
        yield {"x": xs, "y": ys, "mass": np.full(len(xs), 500.0), "raw_max": raw_max}


def _feed(tracker, frames, rng, **options):
    for f, features in enumerate(_frames(frames, rng, **options)):
        tracker.add_frame(f, features)


def test_stationary_and_saturated_tracks_are_recognised():
    tracker = StreamingTracker(_params(saturation_counts=255.0))
    _feed(tracker, 60, np.random.default_rng(5), saturate_first=True)
    table = tracker.tracks_table()
    stationary = table.loc[table["rejected"] == "stationary"]
    assert len(stationary) == 1 and not stationary["used"].any()  # the hot pixel, and nothing else
    assert (table["saturated_fraction"] > 0).sum() >= 1 and table["max_mass_unsaturated"].max() == 500.0
    summary = tracker.summary()
    assert summary["rejected_tracks"] == {"stationary": 1} and summary["saturated_tracks"] >= 1
    assert summary["size_nm"]["d50"] == pytest.approx(100.0, rel=0.05)  # 30 tracks: the median, not the mean


def test_trackers_linking_side_by_side_do_not_share_particle_ids():
    """trackpy's Linker numbers tracks with class-level counters: interleaved trackers once merged tracks."""
    alone, first, second = (StreamingTracker(_params()) for _ in range(3))
    _feed(alone, 40, np.random.default_rng(6))
    pair = zip(_frames(40, np.random.default_rng(6)), _frames(40, np.random.default_rng(6)))
    for f, (a, b) in enumerate(pair):  # the same frames, one at a time to each of two trackers
        first.add_frame(f, a)
        second.add_frame(f, b)
    expected = alone.tracks_table()[["length_frames", "sum_sq_um2"]].to_numpy()
    assert len(expected) == 31
    for tracker in (first, second):
        assert np.array_equal(tracker.tracks_table()[["length_frames", "sum_sq_um2"]].to_numpy(), expected)


def test_progress_reports_tracks_while_the_pilot_chooses_the_range():
    tracker = StreamingTracker(_params(auto_search_range=True, search_range_px=25.0))
    _feed(tracker, 40, np.random.default_rng(7))  # fewer than the pilot's 100 frames
    running = tracker.summary(running=True)
    assert running["provisional"] is True and running["tracks"]["used"] >= 25
    assert running["size_nm"]["mean"] == pytest.approx(100.0, rel=0.25)
    final = dataclasses.replace(tracker.params)
    assert final.auto_search_range  # not chosen yet; the final summary chooses it
    assert tracker.summary()["link_search_range_px"] is not None
