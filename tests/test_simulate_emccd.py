"""The second NTA simulator (exoacq.nta.simulate_emccd): its truth, motion, blur, camera noise and
video, each against the number the physics gives."""
from __future__ import annotations

import ast
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.stats import chi2_contingency

import exoacq.nta.simulate_emccd as sim
from exoacq.errors import ExoacqError
from exoacq.nta.simulate_emccd import (EMCCDCamera, Optics, Population, collected_cross_section_nm2,
                                       diffusion_um2_s, noise_sd_counts, render, water_viscosity_pa_s,
                                       write_video)

SMALL = EMCCDCamera(width=160, height=120)


def test_stokes_einstein_and_vogel_viscosity():
    assert water_viscosity_pa_s(25.0) == pytest.approx(0.8904e-3, rel=1e-3)  # IAPWS: 0.8900 mPa s
    assert water_viscosity_pa_s(20.0) == pytest.approx(1.0017e-3, rel=1e-3)  # IAPWS: 1.0016 mPa s
    assert diffusion_um2_s(100.0, 25.0) == pytest.approx(4.91, abs=0.01)


def test_mie_collected_scatter_is_not_a_power_law():
    optics = Optics()
    s10, s20, s100, s150, s200 = (collected_cross_section_nm2(d, 1.59, optics) for d in (10, 20, 100, 150, 200))
    assert s20 / s10 == pytest.approx(64.0, rel=0.01)  # Rayleigh limit: d^6
    assert 6.5 < s150 / s100 < 9.5  # d^6 would be 11.4
    assert s200 / s100 < 0.5 * 64
    # a weaker index contrast scatters less: silica-like 1.45 vs polystyrene 1.59
    assert collected_cross_section_nm2(100, 1.45, optics) < 0.5 * s100


def test_realised_concentration_matches_nominal_within_poisson_error():
    counts, diameters = [], []
    for seed in range(5):
        rec = render([Population(100.0, 0.75), Population(200.0, 0.25)], 1e9, camera=SMALL, frames=1, seed=seed)
        t = rec.truth
        expected = 1e9 * t["box_volume_ml"]
        assert abs(t["particles_in_box"] - expected) < 4 * math.sqrt(expected)
        assert t["concentration_per_ml"] == pytest.approx(t["particles_in_box"] / t["box_volume_ml"])
        assert len(t["diameters_nm"]) == t["particles_in_box"]
        assert t["number_mean_nm"] == pytest.approx(np.mean(t["diameters_nm"]))
        counts.append(t["particles_in_box"])
        diameters.append(t["diameters_nm"])
    n = np.sum(counts)
    assert abs(n - 5 * expected) < 4 * math.sqrt(5 * expected)
    frac_200 = np.mean(np.concatenate(diameters) == 200.0)
    assert abs(frac_200 - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    # the box is z +-2.5 sheet half-widths and 5 um beyond each edge of the field
    assert rec.truth["box_hi_um"][2] == pytest.approx(2.5 * 4.5)
    assert rec.truth["box_hi_um"][0] == pytest.approx(160 * 0.166 + 5.0)


def test_concentration_holds_in_the_periodic_box():
    rec = render([Population(50.0)], 3e10, camera=SMALL, frames=200, seed=4, drift_um_s=(20.0, 0.0))
    lo, hi = np.array(rec.truth["box_lo_um"]), np.array(rec.truth["box_hi_um"])
    counts = []
    for p in rec.positions():
        m = p["box_mean_um"]
        assert np.all((m >= lo) & (m <= hi))
        inside = (m[:, 0] > 0) & (m[:, 0] < 160 * 0.166) & (m[:, 2] > -4.5) & (m[:, 2] < 4.5)
        counts.append(inside.sum())
    sub_volume_ml = 160 * 0.166 * (hi[1] - lo[1]) * 9.0 * 1e-12
    # drifting 0.8 um and diffusing ~0.9 um a frame, particles neither pile up nor leave
    assert np.mean(counts) == pytest.approx(rec.truth["concentration_per_ml"] * sub_volume_ml, rel=0.05)
    assert np.mean(counts[:20]) == pytest.approx(np.mean(counts[-20:]), rel=0.15)


def test_uint8_frames_saturate_at_a_high_level_and_not_at_a_dim_one():
    cam = EMCCDCamera(exposure_ms=10.0)
    dim = replace(cam, camera_level=3 * noise_sd_counts(cam))
    frames = list(render([Population(100.0)], 1e9, camera=dim, frames=8, seed=1).frames())
    assert all(f.dtype == np.uint8 and f.shape == (480, 640) for f in frames)
    assert max(int(f.max()) for f in frames) < 255
    bright = list(render([Population(150.0)], 1e9, camera=replace(cam, camera_level=60.0), frames=8, seed=1).frames())
    assert sum(int((f == 255).sum()) for f in bright) > 50


def test_one_frame_steps_of_the_true_positions_are_2_d_dt_plus_drift():
    rec = render([Population(100.0)], 8e9, camera=SMALL, frames=100, seed=3, drift_um_s=(3.0, -2.0))
    start = np.array([p["start_um"] for p in rec.positions()])  # frames x N x 3, unwrapped
    steps = np.diff(start, axis=0) - np.array([3.0, -2.0, 0.0]) / 25.0
    expected = 2 * rec.truth["diffusion_um2_s"][0] / 25.0
    n = steps.size
    assert np.mean(steps ** 2) == pytest.approx(expected, rel=6 * math.sqrt(2 / n))
    assert abs(np.mean(steps[1:] * steps[:-1])) < 6 * expected / math.sqrt(n)
    assert np.abs(steps.reshape(-1, 3).mean(axis=0)).max() < 6 * math.sqrt(expected / (n / 3))


@pytest.mark.parametrize("exposure_ms", [40.0, 15.0, 0.0])
def test_blurred_positions_follow_the_berglund_blur_model(exposure_ms):
    cam = replace(SMALL, exposure_ms=exposure_ms)
    rec = render([Population(100.0)], 8e9, camera=cam, frames=150, seed=5)
    mean = np.array([p["mean_um"] for p in rec.positions()])
    steps = np.diff(mean, axis=0)
    two_d_dt = 2 * rec.truth["diffusion_um2_s"][0] / 25.0
    r = exposure_ms / 1000.0 * 25.0 / 6.0
    assert rec.truth["blur_R"] == pytest.approx(r)
    se = two_d_dt / math.sqrt(steps.size)
    assert np.mean(steps ** 2) == pytest.approx(two_d_dt * (1 - 2 * r), abs=8 * se)
    assert np.mean(steps[1:] * steps[:-1]) == pytest.approx(two_d_dt * r, abs=6 * se)


def test_noise_sd_helper_matches_the_background():
    cam = EMCCDCamera(hot_pixels=0)
    frames = np.array(list(render([Population(100.0)], 0.0, camera=cam, frames=4, seed=2).frames()), float)
    centre = frames[:, 190:290, 270:370]
    assert centre.std() == pytest.approx(noise_sd_counts(cam), rel=0.02)
    assert centre.mean() == pytest.approx(cam.offset_adu + cam.adu_per_electron * cam.em_gain * 3.0, abs=0.1)
    assert noise_sd_counts(replace(cam, camera_level=200.0)) == noise_sd_counts(cam)


# the vectorised sampler (4 and 20 electrons), and the scalar one (PTRS and Marsaglia-Tsang: 60)
@pytest.mark.parametrize("photons, adu_per_electron", [(4.0, 1 / 150), (20.0, 1 / 150), (60.0, 1 / 300)])
def test_em_gain_doubles_the_shot_noise_variance(photons, adu_per_electron):
    cam = replace(SMALL, hot_pixels=0, background_gradient=0.0, offset_fpn_adu=0.0, gain_fpn=0.0,
                  background_photons=photons, adu_per_electron=adu_per_electron)
    rec = render([Population(100.0)], 0.0, camera=cam, frames=6, seed=8)
    assert (rec._kmax == 0) == (photons == 60.0)
    frames = np.array(list(rec.frames()), float)
    counts_per_e = cam.adu_per_electron * cam.em_gain
    assert frames.mean() == pytest.approx(cam.offset_adu + counts_per_e * photons, abs=0.1)
    poisson_var = counts_per_e ** 2 * photons
    expected = 2 * poisson_var + (cam.adu_per_electron * cam.read_noise_e) ** 2 + 1 / 12
    assert frames.var() == pytest.approx(expected, rel=0.03)  # excess noise factor^2 = 2


def test_vectorised_and_scalar_photon_samplers_agree():
    """Below ``lam_cap`` a pixel's electrons come from the branch-free inversion, above it from
    the scalar samplers: the same Poisson-Gamma distribution (chi-square on the 8-bit counts)."""
    rec = render([Population(100.0)], 0.0, camera=EMCCDCamera(), frames=1)
    shape = (480, 640)
    sig, bg, ones, off = np.zeros(shape), np.full(shape, 2.0), np.ones(shape), np.full(shape, 12.0)
    hist = []
    for cap, kmax in ((5.5, 18), (-1.0, 0)):
        out = np.empty(shape, np.uint8)
        sim._expose(sig, bg, np.exp(-bg), ones, off, np.uint64(11 + kmax), cap, kmax, rec._invk,
                    300.0, 1 / 150, 50.0, rec._normtab, out)
        hist.append(np.bincount(out.ravel(), minlength=256))
    table = np.array(hist)[:, np.array(hist).sum(axis=0) > 20]
    assert chi2_contingency(table)[1] > 1e-3
    assert np.average(np.arange(256), weights=hist[0]) == pytest.approx(12 + 2 * 2.0, abs=0.03)


def test_camera_level_is_the_peak_of_a_centred_100nm_particle_and_the_psf_holds_its_photons():
    cam = EMCCDCamera(camera_level=50.0, exposure_ms=0.0)
    rec = render([Population(100.0)], 0.0, camera=cam, frames=1)
    photons = rec.truth["photons_100nm"]
    x, y = (320 + 0.5) * cam.pixel_size_um, (240 + 0.5) * cam.pixel_size_um  # pixel (240, 320)'s centre
    at = np.array([[[x, y, 0.0]]])
    sig = np.zeros((cam.height, cam.width))
    rec._draw(sig, at, at[0], np.array([[photons]]), 0)
    peak = sig.max() * cam.adu_per_electron * cam.em_gain
    assert peak == pytest.approx(50.0, rel=1e-3) and sig[240, 320] == sig.max()
    # the Airy pattern's rings hold 1 - J0(v)^2 - J1(v)^2 of the light inside radius v
    assert 0.93 < sig.sum() / photons <= 1.0
    assert rec.truth["psf"]["fwhm_px"] == pytest.approx(0.51 * 0.488 / 0.4 / 0.166, rel=0.01)


def test_frames_replay_identically_and_depend_on_the_seed():
    a = list(render([Population(150.0)], 2e9, camera=SMALL, frames=3, seed=9).frames())
    rec = render([Population(150.0)], 2e9, camera=SMALL, frames=3, seed=9)
    assert all(np.array_equal(x, y) for x, y in zip(a, rec.frames()))
    assert all(np.array_equal(x, y) for x, y in zip(a, rec.frames()))  # iterating again replays
    b = list(render([Population(150.0)], 2e9, camera=SMALL, frames=3, seed=10).frames())
    assert not np.array_equal(a[0], b[0])


@pytest.mark.parametrize("suffix", [".mkv", ".avi"])
def test_written_video_reads_back_losslessly(tmp_path: Path, suffix):
    rec = render([Population(150.0)], 2e9, camera=SMALL, frames=5, seed=1)
    path = tmp_path / f"emccd{suffix}"
    assert write_video(path, rec) == 5
    capture = cv2.VideoCapture(str(path))
    capture.set(cv2.CAP_PROP_CONVERT_RGB, 0)
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0)
    got = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        got.append(frame.reshape(120, 160) if frame.ndim == 2 or frame.shape[-1] == 1 else frame[..., 0])
    capture.release()
    assert len(got) == 5
    assert all(np.array_equal(x, y) for x, y in zip(got, rec.frames()))


def test_bad_input_is_a_one_line_error(tmp_path: Path):
    with pytest.raises(ExoacqError, match="exposure_ms"):
        EMCCDCamera(exposure_ms=50.0)
    with pytest.raises(ExoacqError, match="mkv"):
        write_video(tmp_path / "x.mp4", render([Population(100.0)], 1e8, camera=SMALL, frames=1))
    with pytest.raises(ExoacqError, match="at most"):
        render([Population(100.0)], 1e15, camera=SMALL, frames=1)


def test_shares_no_code_with_the_first_simulator_or_the_analysis():
    tree = ast.parse(Path(sim.__file__).read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            modules.add(node.module)
    assert "exoacq.errors" in modules
    for name in modules:
        assert not name.startswith(("exoacq.drivers", "exoacq.physics", "exoacq.nta", "drivers")), name
        assert name in {"exoacq.errors", "__future__"} or not name.startswith("exoacq"), name
