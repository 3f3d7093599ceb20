"""Physics of the simulated NTA instrument (drivers/simulated_nta.py), checked with statistics.

Every test uses fixed seeds, so it is deterministic; the tolerances are still
chosen as 3-5 standard errors of the estimate (stated at each assert) so that a
correct simulation passes for any seed and a wrong formula (a factor of 2 in D,
d^3 instead of d^6, Gaussian instead of Poisson noise) fails.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from exoacq.devices import Camera, Thermometer
from exoacq.drivers.simulated_nta import (SampleComponent, SimulatedNTACamera, SimulatedSample,
                                          SimulatedThermometer, make_simulated_nta)
from exoacq.errors import DeviceError
from exoacq.physics import stokes_einstein_diffusion_um2_s, water_viscosity_iapws_mpa_s

BOX = (200.0, 200.0, 200.0)


def _diffusing(n: int, temperature_c: float = 25.0, drift=(0.0, 0.0), seed: int = 1) -> SimulatedSample:
    rng = np.random.default_rng(seed)
    pos = (rng.random((n, 3)) - 0.5) * np.array(BOX)
    return SimulatedSample.from_particles(pos, np.full(n, 100.0), box_um=BOX, temperature_c=temperature_c,
                                          drift_um_s=drift, seed=seed)


def _msd_d(sample: SimulatedSample, dt: float, steps: int) -> tuple[float, float]:
    """D from the one-step MSD (all steps) and from the total displacement, per axis: <dx^2> = 2 D t."""
    lag1 = []
    for _ in range(steps):
        before = sample.displacement_um.copy()
        sample.step(dt)
        lag1.append(sample.displacement_um - before)
    d_short = float(np.mean(np.square(lag1))) / (2 * dt)
    d_long = float(np.mean(np.square(sample.displacement_um))) / (2 * dt * steps)
    return d_short, d_long


def test_msd_gives_stokes_einstein_d_and_follows_viscosity():
    # 2000 particles x 100 steps x 3 axes = 6e5 squared steps: relative SE of D is
    # sqrt(2/6e5) = 0.18%, so 1% is > 5 SE (4.91 itself is rounded by 0.07%).
    # The long-lag estimate has 6000 samples: SE 1.8%, tolerance 6% (3.3 SE).
    d_short, d_long = _msd_d(_diffusing(2000), 0.04, 100)
    assert d_short == pytest.approx(4.91, rel=0.01)
    assert d_long == pytest.approx(4.91, rel=0.06)
    d37, _ = _msd_d(_diffusing(2000, temperature_c=37.0, seed=2), 0.04, 100)
    eta25, eta37 = water_viscosity_iapws_mpa_s(25.0), water_viscosity_iapws_mpa_s(37.0)
    assert (eta25, eta37) == (pytest.approx(0.8900, abs=1e-4), pytest.approx(0.6913, abs=1e-4))
    # D ~ T / eta: 1.339 from 25 to 37 C; ratio of two 0.18% estimates, 1% is ~4 SE.
    assert d37 / d_short == pytest.approx((310.15 / 298.15) * (eta25 / eta37), rel=0.01)
    assert d37 == pytest.approx(stokes_einstein_diffusion_um2_s(100.0, 37.0, eta37), rel=0.01)


def test_temperature_change_applies_to_the_next_step():
    sample = _diffusing(2000)
    sample.temperature_c = 37.0
    d, _ = _msd_d(sample, 0.04, 100)
    assert d == pytest.approx(stokes_einstein_diffusion_um2_s(100.0, 37.0, water_viscosity_iapws_mpa_s(37.0)),
                              rel=0.01)


def test_drift_moves_the_ensemble():
    # 1000 particles for 5 s: Brownian SE of the mean displacement is
    # sqrt(2 D t / N) = 0.22 um per axis; tolerance 1 um (4.5 SE).
    sample = _diffusing(1000, drift=(2.0, -1.0))
    for _ in range(50):
        sample.step(0.1)
    assert sample.elapsed_s == pytest.approx(5.0)
    np.testing.assert_allclose(sample.displacement_um.mean(axis=0), [10.0, -5.0, 0.0], atol=1.0)
    half = np.array(BOX) / 2
    assert np.all(np.abs(sample.positions_um) <= half)  # periodic boundaries keep them in the box


def test_particle_count_matches_concentration_times_volume():
    # 1e9 /mL x 100 x 100 x 30 um^3 (3e-7 mL) = 300 expected; the mean of 20
    # Poisson draws has SE sqrt(300/20) = 3.9; tolerance 16 (4 SE).
    counts = [len(SimulatedSample([SampleComponent(100.0)], 1e9, box_um=(100.0, 100.0, 30.0), seed=s))
              for s in range(20)]
    assert abs(np.mean(counts) - 300.0) < 16.0
    assert np.var(counts, ddof=1) == pytest.approx(300.0, rel=0.8)  # Poisson, loosely (chi2 with 19 dof)
    # make_simulated_nta: box = field + 10 um margins, z = +-3 waists.
    _, _, sample = make_simulated_nta([SampleComponent(100.0)], 1e8, illumination_mw=None, seed=1)
    assert sample.box_um == pytest.approx((640 * 0.166 + 20.0, 480 * 0.166 + 20.0, 30.0))


def test_polydisperse_components():
    # 4000 particles, mixture 30/70; log-normal mean and cv of the 150 nm component.
    mix = [SampleComponent(60.0, number_fraction=0.3), SampleComponent(150.0, cv=0.2, number_fraction=0.7)]
    sample = SimulatedSample(mix, 1e9, box_um=(200.0, 200.0, 100.0), seed=4)
    small = sample.diameters_nm == 60.0
    assert small.mean() == pytest.approx(0.3, abs=0.03)  # binomial SE 0.007
    big = sample.diameters_nm[~small]
    assert big.mean() == pytest.approx(150.0, rel=0.02)  # SE 0.4%
    assert big.std() / big.mean() == pytest.approx(0.2, rel=0.08)  # SE ~1.7%


def _still_camera(sample: SimulatedSample, power: list[float], **kwargs) -> SimulatedNTACamera:
    """A 1000 frames/s camera with 0.5 ms exposures: particles move ~0.1 um per frame,
    so their brightness does not change during a frame; no background, read noise
    or offset, so a window sum is exactly Poisson(expected photoelectrons)."""
    settings = dict(illumination_mw=lambda: power[0], frame_rate_hz=1000.0, exposure_ms=0.5,
                    photons_100nm=5000.0 * 30, background_e=0.0, read_noise_e=0.0, offset_adu=0.0,
                    bit_depth=16, realtime=False, seed=5)
    camera = SimulatedNTACamera(sample, **{**settings, **kwargs})
    camera.connect()
    camera.start()
    return camera


def _window_sums(camera, sample, start, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, per particle: the frame summed within 15 px (> 5 PSF sigma) and the true photons."""
    buf = np.empty((camera.height, camera.width), np.uint16)
    sums, truth = [], []
    for _ in range(frames):
        sample.positions_um[:] = start
        camera.fill(buf)
        t = camera.truth()
        sums.append([buf[int(round(y)) - 15:int(round(y)) + 16, int(round(x)) - 15:int(round(x)) + 16].sum()
                     for x, y in zip(t["x_px"], t["y_px"])])
        truth.append(t["photons"])
    return np.array(sums, dtype=float), np.array(truth)


def test_rendered_photons_scale_as_d6_and_with_power():
    sample = SimulatedSample.from_particles([(-20.0, 0.0, 0.0), (20.0, 0.0, 0.0)], [100.0, 50.0],
                                            box_um=(150.0, 120.0, 30.0), seed=6)
    power = [40.0]
    camera = _still_camera(sample, power)
    assert camera.expected_photons(50.0) / camera.expected_photons(100.0) == pytest.approx(1 / 64)
    sums, truth = _window_sums(camera, sample, sample.positions_um.copy(), 40)
    # 40 frames: 2e5 e for 100 nm (SE 0.2%), 3125 e for 50 nm (SE 1.8%): 64 within 6% (3.3 SE).
    assert sums[:, 0].sum() / sums[:, 1].sum() == pytest.approx(64.0, rel=0.06)
    for got, expected in zip(sums.sum(axis=0), truth.sum(axis=0)):  # all photons land, within 4 SE
        assert abs(got - expected) < 4 * math.sqrt(expected)
    # Shot noise: frame-to-frame variance of (sum - expected) equals the mean (Poisson);
    # the variance of 40 frames has SE sqrt(2/39) = 23%, so accept 0.4..1.8.
    assert 0.4 < np.var(sums[:, 0] - truth[:, 0]) / truth[:, 0].mean() < 1.8
    power[0] = 20.0
    half, truth_half = _window_sums(camera, sample, sample.positions_um.copy(), 40)
    assert half[:, 0].sum() / sums[:, 0].sum() == pytest.approx(0.5, rel=0.02)  # SE 0.35%
    assert camera.expected_photons(100.0) == pytest.approx(2500.0)
    # Rayleigh polarizability: an EV (n = 1.39) in water scatters ~18x less than polystyrene.
    assert camera.expected_photons(100.0, refractive_index=1.39) / 2500.0 == pytest.approx(0.0541, rel=0.01)


def test_light_sheet_profile():
    sample = SimulatedSample.from_particles([(-20.0, 0.0, 0.0), (20.0, 0.0, 5.0)], [100.0, 100.0],
                                            box_um=(150.0, 120.0, 30.0), seed=7)
    camera = _still_camera(sample, [40.0])
    assert camera.expected_photons(100.0, z_um=5.0) / camera.expected_photons(100.0) == pytest.approx(math.exp(-2))
    sums, _ = _window_sums(camera, sample, sample.positions_um.copy(), 60)
    # 3e5 e at the centre, 4.1e4 e at z = waist: shot-noise SE of the ratio 0.5%. z moves
    # ~0.09 um within a frame and the slope at z = w is -4/w = -0.8 /um: 7% per frame,
    # 0.9% over 60 frames (bias only 0.2%, second order). SE ~1.0%; tolerance 4%.
    assert sums[:, 1].sum() / sums[:, 0].sum() == pytest.approx(math.exp(-2), rel=0.04)


@pytest.mark.parametrize("gain, background, read", [(1.0, 20.0, 2.0), (2.5, 5.0, 2.0)])
def test_dark_frame_has_background_statistics_only(gain, background, read):
    camera, _, sample = make_simulated_nta([SampleComponent(200.0)], 1e9, illumination_mw=lambda: 0.0, seed=8,
                                           realtime=False, gain_adu_per_e=gain, background_e=background,
                                           read_noise_e=read)
    assert len(sample) > 100
    camera.connect()
    camera.start()
    frame = np.empty((480, 640), np.uint16)
    camera.fill(frame)
    v = frame.astype(float)
    var = gain**2 * (background + read**2) + 1 / 12  # shot + read noise, + rounding to ADU
    # 307200 pixels: SE of the mean 0.01 ADU, of the SD 0.13%, of the skewness 0.0044.
    assert v.mean() == pytest.approx(100.0 + gain * background, abs=0.06)
    assert v.std() == pytest.approx(math.sqrt(var), rel=0.01)
    # Third cumulant of Poisson shot noise is its mean (Gaussian noise would give 0).
    skew = np.mean((v - v.mean()) ** 3) / v.std() ** 3
    assert skew == pytest.approx(gain**3 * background / var**1.5, abs=0.025)
    assert camera.truth()["photons"].max() == 0.0


def test_saturation_clips_at_full_scale():
    for bits in (12, 8):
        sample = SimulatedSample.from_particles([(0.0, 0.0, 0.0)], [500.0], box_um=(150.0, 120.0, 30.0), seed=9)
        camera = SimulatedNTACamera(sample, bit_depth=bits, offset_adu=10.0, realtime=False, seed=9)
        camera.connect()
        camera.start()
        frame = np.empty((480, 640), np.uint16)
        camera.fill(frame)
        assert frame.max() == 2**bits - 1
        assert (frame == 2**bits - 1).sum() > 20


def test_trackpy_locates_in_focus_particles_at_truth():
    trackpy = pytest.importorskip("trackpy")
    camera, _, _ = make_simulated_nta([SampleComponent(100.0)], 1e9, illumination_mw=lambda: 40.0, seed=10,
                                      realtime=False)
    camera.connect()
    camera.start()
    frame = np.empty((480, 640), np.uint16)
    camera.fill(frame)
    t = camera.truth()
    # Mass after trackpy's bandpass is ~0.37 x photons: minmass 300 keeps every
    # particle above 2000 e. Diameter 13 px covers PSF (sigma 1.8 px) + motion blur.
    features = trackpy.locate(frame, 13, minmass=300, engine="python")
    found = features[["x", "y"]].to_numpy()
    xy = np.column_stack([t["x_px"], t["y_px"]])
    lit = t["photons"] > 50
    # In focus, 10 px inside the image, no other lit particle within 16 px (trackpy's separation).
    crowd = np.hypot(*(xy[:, None, :] - xy[lit][None, :, :]).transpose(2, 0, 1))
    isolated = (crowd < 16).sum(axis=1) <= 1
    inside = (xy[:, 0] > 10) & (xy[:, 0] < 629) & (xy[:, 1] > 10) & (xy[:, 1] < 469)
    targets = xy[(t["photons"] > 2000) & inside & isolated]
    assert len(targets) >= 15
    dist = np.hypot(*(targets[:, None, :] - found[None, :, :]).transpose(2, 0, 1)).min(axis=1)
    # Over 20 seeds: all found within 0.71 px, RMS 0.13 px on average, 0.18 px at worst.
    assert np.mean(dist < 1.5) >= 0.95
    assert np.sqrt(np.mean(dist[dist < 1.5] ** 2)) < 0.3  # localisation + motion blur, in px


def test_realtime_pacing_and_dropped_frames():
    # A small frame renders in well under a millisecond, so a busy machine does not drop frames.
    camera, _, _ = make_simulated_nta([SampleComponent(100.0)], 5e8, illumination_mw=None, seed=11, width=128,
                                      height=96, frame_rate_hz=50.0, exposure_ms=10.0, realtime=True)
    camera.connect()
    frame = np.empty((96, 128), np.uint16)
    camera.start()
    t0 = time.monotonic()
    stamps = [camera.fill(frame) for _ in range(10)]
    elapsed = time.monotonic() - t0
    np.testing.assert_allclose(np.diff(stamps), 0.02, atol=1e-6)
    assert 9 * 0.02 + 0.01 - 0.005 < elapsed < 0.6  # frame 9 is read out 190 ms after start (loose: a loaded machine)
    assert camera.frames_dropped == 0
    assert camera.buffer_frames == 4  # a ring of 4 buffers, as OpenCV's V4L2 backend queues
    # A consumer 3 frame intervals late finds the frames waiting in the ring and loses none ...
    time.sleep(0.06)
    for _ in range(4):
        camera.fill(frame)
    assert camera.frames_dropped == 0
    # ... one 10 intervals late loses all but the newest 4 (the oldest are overwritten).
    time.sleep(0.2)
    late = camera.fill(frame)
    assert 10 - 4 <= camera.frames_dropped <= 10 - 4 + 3  # + what a busy machine adds to the 200 ms
    # Still on the frame grid (UNIX times in float64 resolve ~0.2 us).
    assert (late - stamps[0]) / 0.02 == pytest.approx(round((late - stamps[0]) / 0.02), abs=1e-4)


def test_protocols_describe_truth_and_reproducibility():
    def run(seed):
        camera, thermometer, sample = make_simulated_nta([SampleComponent(100.0)], 5e8, illumination_mw=None,
                                                         seed=seed, realtime=False)
        frame = np.empty((480, 640), np.uint16)
        with pytest.raises(DeviceError, match="connect"):
            camera.start()
        camera.connect()
        with pytest.raises(DeviceError, match="start"):
            camera.fill(frame)
        camera.start()
        camera.fill(frame)
        return camera, thermometer, sample, frame
    camera, thermometer, sample, frame = run(12)
    assert isinstance(camera, Camera) and isinstance(thermometer, Thermometer)
    np.testing.assert_array_equal(frame, run(12)[3])
    assert not np.array_equal(frame, run(13)[3])
    info = camera.describe()
    assert info["simulated"] and info["exposure_ms"] == 15.0 and info["sample"]["temperature_c"] == 25.0
    truth = camera.truth()
    assert set(truth) == {"x_px", "y_px", "z_um", "diameter_nm", "particle_id", "photons", "in_field"}
    assert all(len(v) == len(sample) for v in truth.values())
    with pytest.raises(ValueError, match="buffer"):
        camera.fill(np.empty((480, 640), np.float32))
    thermometer.connect()
    sample.temperature_c = 31.5
    assert thermometer.temperature_c() == 31.5
    noisy = SimulatedThermometer(sample, noise_c=0.1, seed=1)
    noisy.connect()
    assert np.std([noisy.temperature_c() for _ in range(400)]) == pytest.approx(0.1, rel=0.15)


@pytest.mark.parametrize("build, words", [
    (lambda: SampleComponent(0.0), ["diameter_nm = 0.0", "> 0"]),
    (lambda: SampleComponent(-50.0), ["diameter_nm = -50.0"]),
    (lambda: SampleComponent(100.0, cv=-0.1), ["cv = -0.1", "0..3"]),
    (lambda: SimulatedSample([SampleComponent(100.0)], -1e8, box_um=(10, 10, 10)), ["concentration_per_ml"]),
    (lambda: SimulatedSample([SampleComponent(100.0)], 1e8, box_um=(10, 0, 10)), ["box_um[1] = 0"]),
    (lambda: SimulatedSample([SampleComponent(100.0)], 1e8, box_um=(10, 10, 10), temperature_c=150),
     ["temperature_c = 150", "0..100"]),
    (lambda: make_simulated_nta([SampleComponent(100.0)], 1e8, illumination_mw=None, frame_rate_hz=0.0),
     ["frame_rate_hz = 0.0", "> 0"]),
    (lambda: make_simulated_nta([SampleComponent(100.0)], 1e8, illumination_mw=None, exposure_ms=50.0),
     ["exposure_ms = 50.0", "<= 40", "frame interval"]),
    (lambda: make_simulated_nta([SampleComponent(100.0)], 1e8, illumination_mw=None, bit_depth=17),
     ["bit_depth = 17", "8..16"]),
    (lambda: make_simulated_nta([SampleComponent(100.0)], 1e8, illumination_mw=None, bit_depth=7),
     ["bit_depth = 7", "8..16"]),
    (lambda: make_simulated_nta([SampleComponent(100.0)], 1e8, illumination_mw=None, width=0), ["width = 0"]),
    (lambda: make_simulated_nta([SampleComponent(100.0)], 1e8, illumination_mw=None, pixel_size_um=-0.1),
     ["pixel_size_um = -0.1"]),
])
def test_bad_parameters_raise_one_line_value_errors(build, words):
    with pytest.raises(ValueError) as err:
        build()
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_exposure_longer_than_interval_is_refused_after_construction_too():
    camera, _, _ = make_simulated_nta([SampleComponent(100.0)], 1e8, illumination_mw=None, realtime=False)
    with pytest.raises(ValueError, match="frame_rate_hz = 100"):
        camera.frame_rate_hz = 100.0  # 10 ms interval < 15 ms exposure
    camera.exposure_ms = 5.0
    camera.frame_rate_hz = 100.0
    assert camera.describe()["frame_rate_hz"] == 100.0


@pytest.mark.parametrize("signal_e", [0.02, 0.4, 3.0, 30.0, 400.0])
def test_signal_pixels_read_poisson_plus_read_noise(signal_e):
    # The detector kernel on N = 262144 pixels of equal signal s: ADU = offset + gain (Poisson(s + b)
    # + read noise), rounded. Covers every path of expose (no signal electron, inversion below
    # 10 e, PTRS above). SE of the mean sqrt(var / N), of the variance var sqrt(2 / N) (0.28%),
    # of the third central moment var^1.5 sqrt(6 / N); tolerances 4.3-5 SE. The third cumulant
    # of Poisson noise is its mean (Gaussian: 0), 40 SE away from 0 at s = 3 already.
    camera, _, _ = make_simulated_nta([SampleComponent(100.0)], 0.0, illumination_mw=None, seed=14,
                                      gain_adu_per_e=2.5, background_e=5.0, read_noise_e=2.0, bit_depth=16)
    camera.connect()
    image, frame = np.full((512, 512), signal_e, np.float32), np.empty((512, 512), np.uint16)
    camera._detect(frame, image, 99)
    assert not image.any()  # the kernel hands the signal image back zeroed
    v, lam, g = frame.astype(float), signal_e + 5.0, 2.5
    var = g**2 * (lam + 4.0) + 1 / 12
    assert v.mean() == pytest.approx(100.0 + g * lam, abs=4.5 * math.sqrt(var / v.size))
    assert v.var() == pytest.approx(var, rel=0.012)
    k3 = np.mean((v - v.mean()) ** 3)
    assert k3 == pytest.approx(g**3 * lam, abs=5 * var**1.5 * math.sqrt(6 / v.size))


def test_frames_reproducible_across_threads_and_cameras():
    import threading

    from exoacq.drivers import simulated_nta_render
    assert simulated_nta_render.render_psf.targetoptions["nogil"] and simulated_nta_render.expose.targetoptions["nogil"]

    def frames(n, interleave=False, thread=False):
        cams = [make_simulated_nta([SampleComponent(100.0)], 5e8, illumination_mw=None, seed=s,
                                   realtime=False)[0] for s in (15, 16)]
        out = []

        def run():
            for cam in cams:
                cam.connect()
                cam.start()
            for _ in range(n):
                out.append(np.empty((480, 640), np.uint16))
                cams[0].fill(out[-1])
                if interleave:  # another camera draws from numba's generator in between
                    cams[1].fill(np.empty((480, 640), np.uint16))
        worker = threading.Thread(target=run) if thread else None
        worker.start() if worker else run()
        worker.join() if worker else None
        return out
    reference = frames(3)
    for got in (frames(3, interleave=True), frames(3, thread=True)):
        for a, b in zip(reference, got):
            np.testing.assert_array_equal(a, b)


def test_non_contiguous_buffer_gets_the_same_frame():
    def frame(buffer):
        camera, _, _ = make_simulated_nta([SampleComponent(100.0)], 5e8, illumination_mw=None, seed=17,
                                          realtime=False, width=64, height=48)
        camera.connect()
        camera.start()
        camera.fill(buffer)
        return buffer
    strided = frame(np.zeros((48, 128), np.uint16)[:, ::2])
    np.testing.assert_array_equal(strided, frame(np.empty((48, 64), np.uint16)))


def test_walk_of_a_frame_has_brownian_increments():
    # The camera moves the sample several steps at once (_walk, one draw): each step's
    # increments have variance 2 D dt per axis plus the drift (2000 x 3 values per step:
    # SE of the variance 1.8%, tolerance 8%); the track is continuous (unwrapped after the
    # first step) and ends where positions_um and displacement_um say.
    sample = _diffusing(2000, drift=(3.0, 0.0))
    dts, half = np.array([0.02, 0.005, 0.005, 0.0025]), np.array(BOX) / 2
    before, displaced = sample.positions_um.copy(), sample.displacement_um.copy()
    track = sample._walk(dts)
    assert track.shape == (2000, 4, 3) and sample.elapsed_s == pytest.approx(0.0325)
    first = (track[:, 0] - before + half) % (2 * half) - half  # the first step, unwrapped
    steps = np.concatenate([first[:, None], np.diff(track, axis=1)], axis=1).transpose(1, 0, 2)
    for dt, step in zip(dts, steps):
        assert step[:, 0].mean() == pytest.approx(3.0 * dt, abs=5 * math.sqrt(2 * 4.91 * dt / 2000))
        assert np.var(step, axis=0).mean() == pytest.approx(2 * 4.91 * dt, rel=0.08)
    np.testing.assert_allclose(sample.displacement_um - displaced, steps.sum(axis=0), atol=1e-9)
    assert np.all(np.abs(sample.positions_um) <= half) and np.all(np.abs(track[:, 0]) <= half)
    np.testing.assert_allclose((track[:, -1] + half) % (2 * half) - half, sample.positions_um, atol=1e-9)
