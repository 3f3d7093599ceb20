"""Analysis functions on synthetic Brownian tracks with known D (no camera, no noise)."""
import math

import numpy as np
import pandas as pd
import pytest

from exoacq.nta.analysis import StreamingTracker
from exoacq.nta.parameters import TrackingParameters, search_range_px
from exoacq.nta.track_numbers import diameters_nm, size_statistics
from exoacq.physics import stokes_einstein_diffusion_um2_s, water_viscosity_iapws_mpa_s

ETA_25 = water_viscosity_iapws_mpa_s(25.0)


def params(**overrides):
    base = dict(frame_rate_hz=25.0, exposure_ms=0.0, pixel_size_um=0.166, temperature_c=25.0,
                viscosity_mpa_s=ETA_25, min_track_length=10, search_range_px=25.0)
    base.update(overrides)
    return TrackingParameters(**base)


def feed_tracks(tracker, n_particles, n_frames, diameter_nm, rng, spacing_px=60.0):
    """Particles on a sparse grid, Brownian steps in pixels; one feature table per frame."""
    p = tracker.params
    d = stokes_einstein_diffusion_um2_s(diameter_nm, p.temperature_c, p.viscosity_mpa_s)
    sigma_px = math.sqrt(2 * d / p.frame_rate_hz) / p.pixel_size_um
    side = int(math.ceil(math.sqrt(n_particles)))
    grid = np.array([(i * spacing_px, j * spacing_px) for i in range(side) for j in range(side)][:n_particles])
    positions = grid + 100.0
    for frame in range(n_frames):
        tracker.add_frame(frame, pd.DataFrame({"y": positions[:, 0], "x": positions[:, 1],
                                               "mass": np.full(n_particles, 1000.0)}))
        positions = positions + rng.normal(0.0, sigma_px, positions.shape)


def test_per_track_diameters_are_unbiased_for_short_tracks():
    # 400 tracks of 12 points: without the (k-2)/k correction the mean of 1/D
    # is 1 + 2/(k-2) = 1.10 times too large (k = 22 coordinate steps).
    rng = np.random.default_rng(1)
    tracker = StreamingTracker(params(min_track_length=12))
    for block in range(40):
        feed_tracks(tracker, 10, 12, 100.0, rng)
        tracker.add_frame(10_000 + block * 100, pd.DataFrame({"y": [], "x": [], "mass": []}))
    table = tracker.tracks_table()
    used = table[table["used"]]
    assert len(used) == 400
    assert (used["length_frames"] == 12).all()
    # Statistical tolerance: per-track SD ~ 1/sqrt(10) ~ 32 %, so SE of the mean ~ 1.6 %; allow 3 SE.
    assert used["diameter_nm"].mean() == pytest.approx(100.0, rel=0.05)


def test_linking_follows_particles_and_summary_reports_counts():
    rng = np.random.default_rng(2)
    tracker = StreamingTracker(params())
    feed_tracks(tracker, 25, 60, 100.0, rng)
    summary = tracker.summary()
    assert summary["tracks"] == {"total": 25, "used": 25, "min_length_frames": 10, "below_threshold": 0}
    assert summary["particles_per_frame"] == 25.0
    assert summary["frames_analysed"] == 60
    assert summary["concentration_per_ml"] is None
    assert any("detection volume" in w for w in summary["warnings"])
    assert summary["size_nm"]["mean"] == pytest.approx(100.0, rel=0.08)
    d = stokes_einstein_diffusion_um2_s(100.0, 25.0, ETA_25)
    assert summary["diffusion_um2_s"]["median"] == pytest.approx(d, rel=0.08)


def test_a_missing_frame_ends_every_track():
    rng = np.random.default_rng(3)
    tracker = StreamingTracker(params(min_track_length=5))
    feed_tracks(tracker, 4, 10, 100.0, rng)
    positions = tracker.positions_table()
    last = positions[positions["frame"] == 9][["y_px", "x_px"]].to_numpy()
    # frame 10 was dropped: frame 11 continues from the same places, but as new tracks
    tracker.add_frame(11, pd.DataFrame({"y": last[:, 0], "x": last[:, 1], "mass": [1.0] * 4}))
    table = tracker.tracks_table()
    assert len(table) == 8
    assert sorted(table["n_steps"].tolist()) == [0, 0, 0, 0, 9, 9, 9, 9]


def test_concentration_uses_detection_volume_and_dilution():
    rng = np.random.default_rng(4)
    tracker = StreamingTracker(params(detection_volume_nl=0.05, dilution=100.0))
    feed_tracks(tracker, 10, 20, 100.0, rng)
    # 10 particles in 0.05 nL = 5e-8 mL -> 2e8 /mL, times dilution 100
    assert tracker.summary()["concentration_per_ml"] == pytest.approx(2e10)
    hist = tracker.summary()["histogram"]
    assert sum(hist["concentration_per_ml"]) == pytest.approx(2e10)


def test_motion_blur_correction():
    # With exposure t_E the one-frame MSD is 4 D (dt - t_E/3): the same steps mean a larger D.
    n, s = np.array([100.0]), np.array([1.0])
    from exoacq.nta.track_numbers import diffusion_um2_s
    no_blur = diffusion_um2_s(n, s, params(exposure_ms=0.0))
    blur = diffusion_um2_s(n, s, params(exposure_ms=30.0))
    assert blur[0] / no_blur[0] == pytest.approx(0.040 / (0.040 - 0.010))


def test_size_statistics_and_mode():
    rng = np.random.default_rng(5)
    d = rng.normal(150.0, 10.0, 5000)
    stats = size_statistics(d)
    assert stats["mean"] == pytest.approx(150.0, abs=0.5)
    assert stats["mode"] == pytest.approx(150.0, abs=2.0)
    assert stats["sd"] == pytest.approx(10.0, rel=0.05)
    assert stats["d10"] < stats["d50"] < stats["d90"]
    assert size_statistics(np.array([]))["mean"] is None


def test_search_range_covers_the_smallest_particle():
    r = search_range_px(30.0, 25.0, ETA_25, 25.0, 0.166)
    d = stokes_einstein_diffusion_um2_s(30.0, 25.0, ETA_25)
    assert r == pytest.approx(3.5 * math.sqrt(2 * d * 0.04) / 0.166)


def test_unbiased_inverse_needs_at_least_two_steps():
    p = params()
    assert diameters_nm(np.array([1.0]), np.array([4.91]), p)[0] == 0.0


def test_summary_of_a_run_without_tracks():
    tracker = StreamingTracker(params())
    tracker.add_frame(0, pd.DataFrame({"y": [], "x": [], "mass": []}))
    summary = tracker.summary()
    assert summary["tracks"] == {"total": 0, "used": 0, "min_length_frames": 10, "below_threshold": 0}
    assert summary["size_nm"]["mean"] is None and summary["diffusion_um2_s"]["mean"] is None
    assert summary["particles_per_frame"] == 0.0
    assert tracker.tracks_table().empty and tracker.positions_table().empty


@pytest.mark.parametrize("drift_um_s", [0.0, 3.0])
def test_flow_drift_is_removed_from_the_sizes(drift_um_s):
    # A 2:1 mixture of 100 and 150 nm drifting at 3 um/s (0.12 um = 0.7 px per frame at 25 frames/s):
    # uncorrected, the drift adds (0.12 um)^2 per step and shrinks both sizes; corrected, each size stays.
    sizes = {}
    for correct in (False, True):
        rng = np.random.default_rng(7)  # the same Brownian motion with and without the correction
        tracker = StreamingTracker(params(drift_correction=correct, search_range_px=25.0))
        p = tracker.params
        diameters = np.repeat([100.0, 100.0, 150.0], 10)
        d = stokes_einstein_diffusion_um2_s(diameters, p.temperature_c, p.viscosity_mpa_s)
        sigma_px = np.sqrt(2 * d / p.frame_rate_hz) / p.pixel_size_um
        shift_px = drift_um_s / p.frame_rate_hz / p.pixel_size_um
        positions = np.array([(100.0 + 70 * (i // 6), 100.0 + 70 * (i % 6)) for i in range(30)])
        for frame in range(400):
            tracker.add_frame(frame, {"y": positions[:, 0], "x": positions[:, 1], "mass": np.ones(30)})
            positions = positions + rng.normal(0.0, 1.0, positions.shape) * sigma_px[:, None]
            positions[:, 1] += shift_px
        table = tracker.tracks_table()
        sizes[correct] = (table["diameter_nm"][:20].mean(), table["diameter_nm"][20:].mean())
        if correct:
            vx, vy = tracker.summary()["drift_um_s"]
            assert vx == pytest.approx(drift_um_s, abs=0.15) and vy == pytest.approx(0.0, abs=0.15)
    small, large = sizes[True]
    assert small == pytest.approx(100.0, rel=0.04) and large == pytest.approx(150.0, rel=0.04)
    if drift_um_s:  # the drift's bias without correction: (0.12 um)^2 per step, ~3 % of the MSD at 150 nm
        assert sizes[False][1] < 0.985 * large
