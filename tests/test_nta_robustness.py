"""NTA numbers that do not depend on what the operator guessed: the threshold from the noise, the blur from
the tracks, saturated and stationary features, trackers side by side, progress from the first frame, a search
range free of mislinks in a dense field, position errors that last several frames (compressed video)."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from conftest import TESTDATA, run_cli
from exoacq.nta import analysis
from exoacq.nta.analysis import StreamingTracker
from exoacq.nta.parameters import TrackingParameters, saturation_level, with_threshold
from exoacq.nta.detect import locate_fast
from exoacq.nta.steps import (BLUR_UNRESOLVED, estimate_blur, robust_localisation_variance_um2,
                              step_correlation_correction_um2_s, track_step_sums)
from exoacq.nta.threshold import NOISE_MARGIN, mass_exceeded, median_of_integers, noise_threshold, pixel_noise_sd
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


def test_counted_medians_are_numpys_to_the_bit():
    """The noise is measured with medians found by counting integer frames (median_of_integers): they must be
    np.median's, and the noise SD the same as from the frame in floating point, whatever the frame holds."""
    rng = np.random.default_rng(3)
    for k in range(24):
        dtype = (np.uint8, np.uint16, np.int16)[k % 3]
        info = np.iinfo(dtype)
        shape = ((3, 3), (4, 7), (120, 90), (480, 640))[k % 4]  # odd and even pixel counts
        frame = rng.normal((3, 40, 300)[k % 3], (0.0, 0.3, 2.0, 30.0)[k % 4], shape)
        frame += (rng.random(shape) < 0.01) * rng.integers(-40000, 40000)  # hot and dead pixels
        frame = np.clip(np.rint(frame), info.min, info.max).astype(dtype)
        assert median_of_integers(frame) == np.median(frame)
        assert median_of_integers(frame[1:, :]) == np.median(frame[1:, :])
        quantisation = 1.0 / math.sqrt(12.0)  # an integer frame's noise is at least its quantisation's
        assert pixel_noise_sd(frame) == max(pixel_noise_sd(frame.astype(np.float64)), quantisation)
    assert median_of_integers(np.array([2**40, -(2**40), 5])) == 5.0  # too wide to count: np.median's way


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
    assert summary["rejected_tracks"] == {"stationary": 1, "dim": 0} and summary["saturated_tracks"] >= 1
    assert summary["size_nm"]["d50"] == pytest.approx(100.0, rel=0.05)  # 30 tracks: the median, not the mean


def test_features_join_tracks_down_to_the_noise_floor():
    chosen = {"minmass": 150.0, "rule": "noise", "noise_floor_mass": 100.0}
    assert _params(minmass=150.0, threshold=chosen).link_minmass == pytest.approx(100.0)  # the floor
    assert _params(minmass=225.0, threshold=chosen).link_minmass == pytest.approx(100.0)  # raised x 1.5
    assert _params(minmass=100.0, threshold=chosen).link_minmass == pytest.approx(100.0)  # lowered to the floor
    assert _params(minmass=80.0, threshold=chosen).link_minmass == pytest.approx(80.0)  # below it: no lower
    assert _params(minmass=300.0).link_minmass == 300.0  # a threshold given: no floor measured, no hysteresis
    assert _params(minmass=150.0, threshold=chosen).locate_options()["minmass"] == pytest.approx(100.0)


def test_tracks_continue_through_features_below_the_threshold_and_dim_tracks_are_not_sized():
    """A particle whose feature dims below the threshold for a frame (a streak, a noisy pixel) keeps its track;
    the frame's count and the size distribution hold only what reaches the threshold."""
    chosen = {"minmass": 150.0, "rule": "noise", "noise_floor_mass": 100.0}
    tracker = StreamingTracker(_params(minmass=150.0, threshold=chosen))
    rng = np.random.default_rng(8)
    for f, features in enumerate(_frames(60, rng)):
        mass = features["mass"].copy()
        mass[f % 29] = 120.0  # each frame one particle's feature dims below the threshold, above the link level
        mass[29] = 110.0  # one particle is dim throughout (far from the sheet's centre)
        tracker.add_frame(f, features | {"mass": mass})
    # 31 features linked (30 particles and a stuck one); the dimmed one and the dim particle are not counted
    assert tracker.features_per_frame == [29] * 60
    table = tracker.tracks_table()
    assert len(table) == 31 and (table["length_frames"] == 60).all()  # no track broke
    dim = table.loc[table["rejected"] == "dim"]
    assert len(dim) == 1 and dim["mean_mass"].iloc[0] == 110.0 and not dim["used"].any()
    summary = tracker.summary()
    assert summary["rejected_tracks"] == {"stationary": 1, "dim": 1}
    assert summary["tracks"]["used"] == 29 and summary["threshold"]["link_minmass"] == pytest.approx(100.0)
    assert summary["tracks"]["total"] == 31 and summary["tracks"]["below_threshold"] == 1


def test_rejected_tracks_stay_out_of_the_size_distribution():
    tracker = StreamingTracker(_params())
    _feed(tracker, 60, np.random.default_rng(9))  # 30 particles and a hot pixel
    table, summary = tracker.tracks_table(), tracker.summary()
    assert summary["rejected_tracks"]["stationary"] == 1
    assert summary["tracks"]["used"] == int(table["used"].sum()) == len(table) - 1  # all but the hot pixel


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


def _dense_field(tracker, rng, frames=150, spacing_px=13.0, side=20, sigma_px=0.5, lost=0.1):
    """A dense grid of slow particles (sigma_px per axis and frame, features 13 px apart) whose features are each
    lost in ``lost`` of the frames (out of focus, below the threshold)."""
    pos = np.array([(i * spacing_px + 20, j * spacing_px + 20) for i in range(side) for j in range(side)], float)
    pos += rng.uniform(-3.0, 3.0, pos.shape)
    for f in range(frames):
        pos = pos + rng.normal(0.0, sigma_px, pos.shape)
        seen = rng.random(len(pos)) > lost
        tracker.add_frame(f, {"y": pos[seen, 0], "x": pos[seen, 1], "mass": np.full(seen.sum(), 500.0)})


@pytest.mark.parametrize("iterations", [0, analysis.PILOT_ITERATIONS])
def test_the_pilot_range_is_one_its_own_tracks_ask_for(monkeypatch, iterations):
    """At the largest range (11 px) a particle whose feature is lost for a frame is joined to a neighbour: the
    jumps inflate the tracks' D, hence the range chosen from them. Linked again at the range they ask for, the
    tracks are the particles' own (the range it converges to covers 5 SDs of twice their D)."""
    monkeypatch.setattr(analysis, "PILOT_ITERATIONS", iterations)
    params = _params(auto_search_range=True, search_range_px=11.0)
    tracker = StreamingTracker(params)
    _dense_field(tracker, np.random.default_rng(3))
    true_d = (0.5 * params.pixel_size_um) ** 2 / (2.0 * params.frame_interval_s)
    mean_d = tracker.summary(histogram=False)["diffusion_um2_s"]["mean"]
    if iterations == 0:  # the range of one pass (as before): the mislinks widen it, and D reads high
        assert tracker.params.search_range_px > 6.0 and mean_d > 1.2 * true_d
    else:
        assert tracker.params.search_range_px < 4.0 and mean_d == pytest.approx(true_d, rel=0.05)


def _filtered_steps(rng, taps, n_tracks=600, points=60, d_um2_s=0.4, dt=0.04, sigma_um=0.03, blur_taps=None):
    """Steps of Brownian tracks whose recorded positions are the true ones averaged over ``taps`` frames (a
    temporal filter: errors lasting several frames) plus white localisation noise."""
    ids, dxs, dys = [], [], []
    for k in range(n_tracks):
        true = np.cumsum(rng.normal(0.0, np.sqrt(2 * d_um2_s * dt), (points + taps - 1, 2)), axis=0)
        seen = np.stack([np.convolve(true[:, a], np.full(taps, 1.0 / taps), "valid") for a in (0, 1)], axis=1)
        seen += rng.normal(0.0, sigma_um, seen.shape)
        step = np.diff(seen, axis=0)
        ids.append(np.full(len(step), k)), dxs.append(step[:, 0]), dys.append(step[:, 1])
    return np.concatenate(ids), np.concatenate(dxs), np.concatenate(dys), dt


def _ensemble_cve(dx, dy, ids, dt):
    same = ids[1:] == ids[:-1]
    cross = np.mean((dx[1:] * dx[:-1] + dy[1:] * dy[:-1])[same]) / 2.0
    return np.mean(dx * dx + dy * dy) / 2.0 / (2.0 * dt) + cross / dt


def test_position_errors_lasting_several_frames_are_summed_out_of_d():
    """Positions averaged over 3 frames: the CVE (lag 1 only) reads D (1 - 2/9) low; summing the steps'
    covariances over the lags that carry any (Green-Kubo) gives D back. Steps that follow VBF's model (one
    frame's blur and white noise: 2 taps) are left alone."""
    ids, dx, dy, dt = _filtered_steps(np.random.default_rng(11), taps=3)
    cve = _ensemble_cve(dx, dy, ids, dt)
    assert cve == pytest.approx(0.4 * (1 - 2 / 9), rel=0.03)
    correlation = step_correlation_correction_um2_s(ids, dx, dy, dt)
    assert correlation.lags == 2 and cve + correlation.diffusion_correction_um2_s == pytest.approx(0.4, rel=0.03)
    ids, dx, dy, dt = _filtered_steps(np.random.default_rng(12), taps=2)  # blur within one frame: VBF's own model
    assert _ensemble_cve(dx, dy, ids, dt) == pytest.approx(0.4, rel=0.03)
    correlation = step_correlation_correction_um2_s(ids, dx, dy, dt)
    assert correlation.lags == 1 and correlation.diffusion_correction_um2_s == 0.0


def test_real_compressed_video_diffusion_is_stokes_einstein_at_default_settings():
    """bulk-water.mov (1 um latex, ~22 C, bright field, H.264): at default settings (threshold from the noise,
    range from the pilot, blur from the tracks) the tracks' mean D within 10 % of Stokes-Einstein (0.453 um^2/s).

    About 450 features per frame (in- and out-of-focus particles, diffraction rings) 12-16 px apart: the one-pass
    pilot chose 8.9 px and the mislinks read +18 %; the pilot's fixed point is ~3.3 px. The compression's
    predicted frames hold positions over several frames (step covariances at lags 2-6, an I-frame every 12):
    the CVE alone reads -25 %, the summed covariances give D back."""
    path = TESTDATA / "nta" / "bulk-water.mov"
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (shared/testdata is not beside the checkout)")
    proc = run_cli("analyze", "nta", str(path), "--pixel-size-um", "0.3509", "--invert", "--temperature-c", "22",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    expected = stokes_einstein_diffusion_um2_s(1000.0, 22.0, water_viscosity_iapws_mpa_s(22.0))
    assert doc["diffusion_um2_s"]["mean"] == pytest.approx(expected, rel=0.10)
    assert doc["link_search_range_px"] < 5.0 and doc["step_correlation"]["lags"] > 2
