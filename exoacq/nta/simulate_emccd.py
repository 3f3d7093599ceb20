"""A second NTA video simulator, built apart from the first (``drivers/simulated_nta.py``) so that
the NTA analysis is checked against a model that does not share its assumptions (issue #9 item 5).
It shares no code with that driver nor with ``exoacq.physics`` or the NTA analysis.

The model (every choice stated; x along the image width, y along its height, z the optical axis):

- **Sample.** Populations of spheres (:class:`Population`: diameter, number fraction, refractive
  index, default polystyrene 1.59) in a box larger than the field: ``MARGIN_XY_UM`` beyond each edge
  in x and y, z within +-``DEPTH_FACTOR`` sheet half-widths (the sheet falls to 1 % at 1.15
  half-widths, to < 1e-200 at the box faces). Count ~ Poisson(concentration x box volume), split
  among populations by number fraction; positions uniform. A particle leaving the box re-enters
  at the opposite face (periodic), so the concentration holds.
- **Brownian motion.** Exact Gaussian increments of variance 2 D t per axis; Stokes-Einstein
  D = kB T / (3 pi eta d) (Einstein 1905), water viscosity by the Vogel equation
  eta = 2.414e-5 Pa s x 10^(247.8 K / (T - 140 K)) (Vogel 1921; within ~0.1 % of IAPWS 2008,
  Huber et al. 2009, J. Phys. Chem. Ref. Data 38:101, over 10-40 C). Optional uniform drift.
- **Motion blur.** Frames are 1/fps apart; the camera integrates continuously over the exposure
  t_E (0 .. 1/fps). A frame is the sum of the particle's image at K sample times about the exposure
  centre, spaced h = t_E K / (K^2 - 1): the average of K points of a Brownian path then has exactly
  the second moments of the continuous time-average (successive-step variance 2 D dt (1 - 2R),
  lag-1 covariance 2 D dt R, R = t_E / (6 dt): Berglund 2010, Phys. Rev. E 82:011917), because
  sum_kl |t_k - t_l| / K^2 = h (K^2 - 1) / (3K) = t_E / 3.
- **Light sheet.** Flat-top (super-Gaussian) across its thickness, I(z) = exp(-2 |z / w|^p), p = 6
  (Dickey, Laser Beam Shaping, 2nd ed. 2014), times a Gaussian fall-off across the field,
  exp(-2 (x - x_c)^2 / r^2), r = 3 x the field width by default (the field's edges get 95 %).
- **Scatter.** Mie theory (Bohren & Huffman 1983; miepython): the cross-section scattered into
  the objective's cone (half-angle asin(NA / n_medium)) about the axis at 90 deg to the beam, the
  beam along x polarised along y: integrand |S1|^2 cos^2(psi) + |S2|^2 sin^2(psi), psi the angle
  of the polarisation to the normal of the scattering plane; Gauss-Legendre in cos(alpha) x 64
  azimuths, normalised by the full-sphere integral to Q_sca pi r^2. No d^6 law.
- **PSF.** Airy pattern I(r) = a^2 / (4 pi s^2) (2 J1(v) / v)^2, v = a r / s, a = 2 pi NA / lambda
  (Born & Wolf, Principles of Optics, 8.5), whose integral over the plane is 1 (x the particle's
  photons). Defocus widens it: s(z) = sqrt(1 + (z / z_R)^2), z_R = n lambda / NA^2 (the depth of
  field; a broadening model, not the exact defocused pattern), the focus at the sheet centre.
  Sampled at pixel centres (the pixel, 0.26 of the FWHM, would lower the peak 3 %) at sub-pixel
  positions: each blur sample's core out to the second dark ring (where the pattern is 0), the
  rings beyond once per frame at the exposure-mean position, out to where they fall below
  ``HALO_PHOTONS`` photons per pixel (<= ``PATCH_MAX_PX``); particles whose in-focus peak would be
  under 0.01 photon are not drawn.
- **Camera (EMCCD).** Photoelectrons Poisson(signal x gain non-uniformity + background); the EM
  register turns n electrons into Gamma(n, g) (Basden, Haniff & Mackay 2003, MNRAS 345:985;
  Hirsch et al. 2013, PLoS ONE 8:e53671): excess noise factor sqrt(2) (Robbins & Hadwen 2003, IEEE
  TED 50:1227). Gaussian read noise (65536-level inverse-CDF table); fixed pattern (EMVA 1288): a
  per-pixel offset and gain non-uniformity and a few hot pixels (dark-current spikes of 10-50
  electrons, amplified like photoelectrons), fixed by the camera's seed; a background of
  ``background_photons`` with a linear ramp; ADC offset; 8-bit output rounded and clipped at 255.
- **Camera level.** ``camera_level``: mean peak (8-bit counts above background) of a 100 nm
  polystyrene sphere at the sheet centre, in focus, centred on a pixel at the field centre, not
  blurred. It sets the photons of every particle (laser power x exposure); background, gain and
  noise do not change with it, so :func:`noise_sd_counts` does not depend on it:
  ``replace(cam, camera_level=3 * noise_sd_counts(cam))`` is "100 nm peak = 3 x noise SD". At the
  default camera (noise SD 4.97 counts, background 18): 14.9 is that dim level; 60 saturates
  in-focus 150 nm polystyrene (its peak would be ~480 counts; Mie gives 150 nm 7.96 x 100 nm).

Random numbers: SplitMix64 (Steele, Lea & Flood 2014, OOPSLA) addressed by (frame, pixel, draw):
per-pixel Poisson by inversion and Gamma as a sum of exponentials in a branch-free loop
(vectorised), bright pixels by PTRS (Hoermann 1993) and Marsaglia-Tsang (2000); pixels brighter
than 8 SD above saturation are set to 255 without drawing. Motion uses numpy's PCG64. A recording
replays identically each time it is iterated. Positions in the truth are in um, x = (column +
0.5) x pixel size (pixel centres at integer coordinates are x / pixel_size - 0.5).
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import miepython
import numba
import numpy as np
from scipy.special import j1, ndtri

from exoacq.errors import ExoacqError

K_B_J_PER_K = 1.380649e-23
MARGIN_XY_UM = 5.0
DEPTH_FACTOR = 2.5
PATCH_MAX_PX = 24
HALO_PHOTONS = 0.02
_TABLE_STEP = 0.05  # Airy table step in v^2
_MAX_VECTOR_DRAWS = 62  # per-pixel counters: 0 inversion uniform and read noise, 1-31 pairs of exponentials


@dataclass(frozen=True)
class Population:
    """Spheres of one diameter; ``number_fraction`` is relative (normalised over populations)."""
    diameter_nm: float
    number_fraction: float = 1.0
    refractive_index: float = 1.59

    def __post_init__(self):
        if not 1.0 <= self.diameter_nm <= 5000.0:
            raise ExoacqError(f"diameter_nm must be 1-5000, got {self.diameter_nm}")
        if not self.number_fraction > 0:
            raise ExoacqError(f"number_fraction must be > 0, got {self.number_fraction}")
        if not self.refractive_index > 1.0:
            raise ExoacqError(f"refractive_index must be > 1, got {self.refractive_index}")


@dataclass(frozen=True)
class Optics:
    """Laser, objective and light sheet. ``falloff_radius_um`` None: 3 x the field width."""
    wavelength_nm: float = 488.0
    numerical_aperture: float = 0.4
    medium_refractive_index: float = 1.333
    sheet_half_width_um: float = 4.5
    sheet_exponent: float = 6.0
    falloff_radius_um: float | None = None

    def __post_init__(self):
        if not 0 < self.numerical_aperture < self.medium_refractive_index:
            raise ExoacqError(f"numerical_aperture must be in (0, {self.medium_refractive_index}), "
                              f"got {self.numerical_aperture}")
        if not (self.wavelength_nm > 0 and self.sheet_half_width_um > 0 and self.sheet_exponent >= 2):
            raise ExoacqError("wavelength_nm and sheet_half_width_um must be > 0, sheet_exponent >= 2")


@dataclass(frozen=True)
class EMCCDCamera:
    """An 8-bit EMCCD-like camera (module docstring). ``camera_level``: 8-bit counts, see there;
    ``adu_per_electron`` x ``em_gain`` = 2 counts per photoelectron; ``background_photons`` per pixel
    per frame at the field centre, ``background_gradient`` its relative change across the width
    (half that across the height); ``offset_fpn_adu`` and ``gain_fpn`` the SDs of the per-pixel
    offset (counts) and relative gain; ``seed`` fixes the camera's pattern."""
    width: int = 640
    height: int = 480
    pixel_size_um: float = 0.166
    frame_rate_hz: float = 25.0
    exposure_ms: float = 10.0
    camera_level: float = 60.0
    em_gain: float = 300.0
    adu_per_electron: float = 1.0 / 150.0
    read_noise_e: float = 50.0
    offset_adu: float = 12.0
    background_photons: float = 3.0
    background_gradient: float = 0.3
    offset_fpn_adu: float = 0.7
    gain_fpn: float = 0.02
    hot_pixels: int = 8
    seed: int = 0

    def __post_init__(self):
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096 and 0 < self.frame_rate_hz <= 10000):
            raise ExoacqError(f"camera size must be 16-4096 pixels and frame_rate_hz 0-10000, got "
                              f"{self.width} x {self.height} at {self.frame_rate_hz}")
        if not 0 <= self.exposure_ms <= 1000.0 / self.frame_rate_hz + 1e-9:
            raise ExoacqError(f"exposure_ms must be 0-{1000.0 / self.frame_rate_hz:g} (the frame "
                              f"interval), got {self.exposure_ms}")
        if not (self.camera_level >= 0 and self.em_gain >= 1 and self.adu_per_electron > 0
                and self.read_noise_e >= 0 and self.background_photons >= 0 and self.pixel_size_um > 0
                and 0 <= self.background_gradient < 1 and self.gain_fpn >= 0 and self.hot_pixels >= 0):
            raise ExoacqError("camera_level, read_noise_e, background_photons, gain_fpn, hot_pixels must "
                              "be >= 0, em_gain >= 1, background_gradient in [0, 1)")


def water_viscosity_pa_s(temperature_c: float) -> float:
    """Vogel equation (see the module docstring); 0-100 C."""
    if not 0.0 <= temperature_c <= 100.0:
        raise ExoacqError(f"temperature_c must be 0-100, got {temperature_c}")
    return 2.414e-5 * 10.0 ** (247.8 / (temperature_c + 273.15 - 140.0))


def diffusion_um2_s(diameter_nm: float, temperature_c: float) -> float:
    """Stokes-Einstein D = kB T / (3 pi eta d), um^2/s (100 nm at 25 C: 4.91)."""
    t_k = temperature_c + 273.15
    return K_B_J_PER_K * t_k / (3 * math.pi * water_viscosity_pa_s(temperature_c) * diameter_nm * 1e-9) * 1e12


@functools.lru_cache(maxsize=None)
def _gauss_legendre(n: int):
    return np.polynomial.legendre.leggauss(n)


@functools.lru_cache(maxsize=256)
def collected_cross_section_nm2(diameter_nm: float, refractive_index: float, optics: Optics) -> float:
    """Mie cross-section scattered into the objective's cone (module docstring), nm^2 (memoised)."""
    n_med = optics.medium_refractive_index
    m, x = refractive_index / n_med, math.pi * diameter_nm * n_med / optics.wavelength_nm
    qsca = miepython.efficiencies_mx(m, x)[1]
    mu, w = _gauss_legendre(256)
    s1, s2 = miepython.S1_S2(m, x, mu, norm="wiscombe")
    total = 2 * math.pi * np.sum(w * (np.abs(s1) ** 2 + np.abs(s2) ** 2) / 2)
    cos_max = math.cos(math.asin(optics.numerical_aperture / n_med))
    ca, wa = _gauss_legendre(24)
    ca, wa = (ca + 1) / 2 * (1 - cos_max) + cos_max, wa / 2 * (1 - cos_max)
    phi = 2 * math.pi * (np.arange(64) + 0.5) / 64
    sa = np.sqrt(1 - ca ** 2)[:, None]
    sx, sy, sz = sa * np.cos(phi), sa * np.sin(phi), np.broadcast_to(ca[:, None], (24, 64))
    s1, s2 = (s.reshape(24, 64) for s in miepython.S1_S2(m, x, sx.ravel(), norm="wiscombe"))
    perp2 = sz ** 2 / (sy ** 2 + sz ** 2)  # (polarisation . scattering-plane normal)^2, beam x, E along y
    cone = np.sum(wa[:, None] * (2 * math.pi / 64) * (np.abs(s1) ** 2 * perp2 + np.abs(s2) ** 2 * (1 - perp2)))
    return float(qsca * math.pi * (diameter_nm / 2) ** 2 * cone / total)


def noise_sd_counts(camera: EMCCDCamera) -> float:
    """SD (8-bit counts) of a background pixel at the field centre over space and time: EM-amplified
    shot noise (F^2 = 2), read noise, gain and offset non-uniformity, rounding. Not camera_level."""
    c, g, b = camera.adu_per_electron, camera.em_gain, camera.background_photons
    var = c * c * (2 * g * g * b + camera.read_noise_e ** 2) + (c * g * b * camera.gain_fpn) ** 2
    return math.sqrt(var + camera.offset_fpn_adu ** 2 + 1.0 / 12.0)


def _airy_a_per_px(camera: EMCCDCamera, optics: Optics) -> float:
    return 2 * math.pi * optics.numerical_aperture * camera.pixel_size_um * 1e3 / optics.wavelength_nm


# -- random numbers (SplitMix64) and kernels -------------------------------------------------
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_U30, _U27, _U31, _U11, _U32, _U16 = (np.uint64(v) for v in (30, 27, 31, 11, 32, 16))
_LO32, _LO16, _ONE, _SLOTS = np.uint64(0xFFFFFFFF), np.uint64(0xFFFF), np.uint64(1), np.uint64(64)
_INV53, _INV48, _INV32 = 2.0 ** -53, 2.0 ** -48, 2.0 ** -32


@numba.njit(inline="always")
def _mix(z):  # pragma: no cover - compiled
    z = (z ^ (z >> _U30)) * _M1
    z = (z ^ (z >> _U27)) * _M2
    return z ^ (z >> _U31)


@numba.njit(inline="always")
def _next(state):  # pragma: no cover - compiled; a uniform in (0, 1] from a sequential stream
    state[0] += _GOLD
    return ((_mix(state[0]) >> _U11) + _ONE) * _INV53


@numba.njit(cache=True)
def _poisson(lam, state):  # pragma: no cover - compiled
    """Poisson(lam): inversion below 12, PTRS (Hoermann 1993, as in numpy) above."""
    if lam < 12.0:
        p = math.exp(-lam)
        f, n, u = p, 0, _next(state)
        while u > f and n < 1000:
            n += 1
            p *= lam / n
            f += p
        return n
    slam, loglam = math.sqrt(lam), math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2)
    while True:
        u = _next(state) - 0.5
        v = _next(state)
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return int(k)
        if k < 0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b) <= -lam + k * loglam - math.lgamma(k + 1):
            return int(k)


@numba.njit(cache=True)
def _gamma_int(n, state):  # pragma: no cover - compiled
    """Gamma(n, 1): a sum of n exponentials, or Marsaglia-Tsang (2000) for n > 16."""
    if n <= 16:
        q = 1.0
        for _ in range(n):
            q *= _next(state)
        return -math.log(q)
    d = n - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = math.sqrt(-2.0 * math.log(_next(state))) * math.cos(2 * math.pi * _next(state))
        v = 1.0 + c * x
        if v <= 0:
            continue
        v = v * v * v
        u = _next(state)
        if u < 1 - 0.0331 * x ** 4 or math.log(u) < 0.5 * x * x + d * (1 - v + math.log(v)):
            return d * v


@numba.njit(cache=True)
def _draw_psfs(sig, xs, ys, amps, fs, r_in, r_out, table, inv_step):  # pragma: no cover - compiled
    """Add Airy spots: peak ``amps`` (photons/pixel) at (xs, ys) (pixel-centre coordinates),
    v^2 = fs * r^2, for r_in <= r <= r_out, into sig (height, width)."""
    h, w = sig.shape
    last = table.size - 2
    for i in range(xs.size):
        cx, cy, amp, f, rad = xs[i], ys[i], amps[i], fs[i], r_out[i]
        r2min, r2max = r_in[i] * r_in[i], rad * rad
        for iy in range(max(0, int(math.ceil(cy - rad))), min(h - 1, int(math.floor(cy + rad))) + 1):
            dy2 = (iy - cy) ** 2
            for ix in range(max(0, int(math.ceil(cx - rad))), min(w - 1, int(math.floor(cx + rad))) + 1):
                r2 = (ix - cx) ** 2 + dy2
                if r2 > r2max or r2 < r2min:
                    continue
                t = f * r2 * inv_step
                k = min(int(t), last)
                sig[iy, ix] += amp * (table[k] + (t - k) * (table[k + 1] - table[k]))


@numba.njit(cache=True)
def _expose(sig, bg, lbg, gain_map, offset, key, lam_cap, kmax, invk, em_gain, adu, read_e, normtab, out):
    # pragma: no cover - compiled
    """8-bit frame from expected signal photons ``sig``: Poisson photoelectrons, Gamma EM gain,
    read noise, offset, rounding, clipping. Pixels up to ``lam_cap`` electrons take the vectorised
    inversion (``kmax`` draws, continued if needed); brighter ones the scalar samplers."""
    h, w = sig.shape
    lam, lv, f, p, q, u, e = (np.empty(w), np.empty(w), np.empty(w), np.empty(w), np.empty(w), np.empty(w),
                              np.empty(w))
    zi = np.empty(w, np.uint64)
    state = np.empty(1, np.uint64)
    state[0] = _mix(key ^ _M1)
    for i in range(h):
        base = np.uint64(i * w)
        for j in range(w):  # the inversion uniform (48 bits) and the read-noise index (16 bits)
            r = _mix(key + (base + np.uint64(j)) * _SLOTS * _GOLD)
            u[j] = ((r >> _U16) + _ONE) * _INV48
            zi[j] = r & _LO16
            lam[j] = bg[i, j] + sig[i, j] * gain_map[i, j]
            q[j] = 1.0
        for j in range(w):
            if lam[j] > lam_cap:  # to the scalar samplers: no electrons here
                lv[j], p[j] = 0.0, 1.0
            else:
                lv[j] = lam[j]
                p[j] = lbg[i, j] if sig[i, j] == 0.0 else math.exp(-lam[j])
            f[j] = p[j]
        for k2 in range(1, kmax // 2 + 1):  # draws k = 2 k2 - 1, 2 k2: exponential k joins if u > F(k-1)
            ia, ib = invk[2 * k2 - 1], invk[2 * k2]
            for j in range(w):
                r = _mix(key + ((base + np.uint64(j)) * _SLOTS + np.uint64(k2)) * _GOLD)
                ua = ((r >> _U32) + _ONE) * _INV32
                ub = ((r & _LO32) + _ONE) * _INV32
                fa = f[j]
                qa = q[j] * ua if u[j] > fa else q[j]
                pa = p[j] * lv[j] * ia
                fb = fa + pa
                q[j] = qa * ub if u[j] > fb else qa
                p[j] = pa * lv[j] * ib
                f[j] = fb + p[j]
        for j in range(w):
            e[j] = -em_gain * math.log(q[j])
        for j in range(w):
            l = lam[j]
            if l > lam_cap:
                if offset[i, j] + adu * (em_gain * (l - 8.0 * math.sqrt(2.0 * l)) - 8.0 * read_e) > 255.5:
                    e[j] = 1e12  # saturated for certain: no draw
                else:
                    e[j] = em_gain * _gamma_int(_poisson(l, state), state)
            elif u[j] > f[j]:  # more than kmax electrons: rare
                qq, ff, pp, n = q[j], f[j], p[j], kmax
                while u[j] > ff and n < 1000:
                    n += 1
                    pp *= l / n
                    ff += pp
                    qq *= _next(state)
                e[j] = -em_gain * math.log(qq)
        for j in range(w):
            v = math.floor(offset[i, j] + adu * (e[j] + read_e * normtab[zi[j]]) + 0.5)
            out[i, j] = np.uint8(min(max(v, 0.0), 255.0))
    return out


# -- the recording ---------------------------------------------------------------------------
def _fixed_pattern(camera: EMCCDCamera):
    """Background electrons per pixel (ramp x gain map, plus hot pixels), gain map, offset map,
    hot pixels (row, col) and the largest background off the hot pixels; fixed by camera.seed."""
    rng = np.random.default_rng(np.random.SeedSequence([camera.seed, 7]))
    h, w = camera.height, camera.width
    gain_map = np.clip(1.0 + camera.gain_fpn * rng.standard_normal((h, w)), 0.0, None)
    offset = camera.offset_adu + camera.offset_fpn_adu * rng.standard_normal((h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = (xx / (w - 1) - 0.5) + 0.5 * (yy / (h - 1) - 0.5)
    bg = camera.background_photons * (1.0 + camera.background_gradient * ramp) * gain_map
    bg_max = float(bg.max())
    hot = rng.choice(h * w, size=min(camera.hot_pixels, h * w), replace=False)
    bg.flat[hot] += rng.uniform(10.0, 50.0, hot.size)
    return bg, gain_map, offset, [(int(i) // w, int(i) % w) for i in hot], bg_max


class SimulatedRecording:
    """A lazily rendered recording; iterate :meth:`frames` (uint8 arrays, height x width), or
    :meth:`frames_with_truth` / :meth:`positions` for the per-frame truth: ``start_um`` (N x 3,
    unwrapped, at the exposure start), ``mean_um`` (the exposure average the camera images,
    unwrapped), ``box_mean_um`` (the same wrapped into the box: image coordinates) and
    ``photons`` (the particle's expected photons in the frame). Every iteration replays the same
    frames. ``truth`` holds the sample and instrument (see :func:`render`)."""

    def __init__(self, camera: EMCCDCamera, optics: Optics, *, start_um, diffusion_um2_s, photons,
                 box_lo_um, box_hi_um, drift_um_s, frames: int, substeps: int, seed: int, truth: dict):
        self.camera, self.optics, self.truth, self.n_frames = camera, optics, truth, frames
        self._start, self._photons, self._seed = start_um, photons, seed
        self._lo, self._size = np.asarray(box_lo_um), np.asarray(box_hi_um) - np.asarray(box_lo_um)
        self._drift = np.asarray(drift_um_s, float)
        dt, t_e = 1.0 / camera.frame_rate_hz, camera.exposure_ms * 1e-3
        k = substeps if t_e > 0 else 1
        h = t_e * k / (k * k - 1) if k > 1 else 0.0
        tau0 = t_e / (2 * (k + 1)) if k > 1 else 0.0
        self._k = k
        self._deltas = np.array([tau0] + [h] * (k - 1) + [dt - tau0 - (k - 1) * h])
        self._step_sd = np.sqrt(2 * self._deltas[:, None] * np.asarray(diffusion_um2_s)[None, :])
        self._bg, self._gain_map, self._offset, self.hot_pixels, bg_max = _fixed_pattern(camera)
        self._lbg = np.exp(-self._bg)
        self._lam_cap = 1.1 * bg_max + 1.0
        kmax = math.ceil(self._lam_cap + 4 * math.sqrt(self._lam_cap) + 2)
        self._kmax = kmax + kmax % 2
        if self._kmax > _MAX_VECTOR_DRAWS:
            self._lam_cap, self._kmax = -1.0, 0
        self._invk = np.concatenate([[0.0], 1.0 / np.arange(1, _MAX_VECTOR_DRAWS + 1)])
        self._normtab = ndtri((np.arange(65536) + 0.5) / 65536)
        self._a = _airy_a_per_px(camera, optics)
        t_max = (self._a * (PATCH_MAX_PX + 1)) ** 2
        v = np.sqrt(np.arange(int(t_max / _TABLE_STEP) + 3) * _TABLE_STEP)
        with np.errstate(invalid="ignore", divide="ignore"):
            self._table = np.where(v > 0, (2 * j1(v) / v) ** 2, 1.0)
        width_um = camera.width * camera.pixel_size_um
        self._x_c = width_um / 2
        self._falloff = optics.falloff_radius_um or 3 * width_um
        self._z_r = optics.medium_refractive_index * optics.wavelength_nm * 1e-3 / optics.numerical_aperture ** 2

    def __len__(self) -> int:
        return self.n_frames

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.frames()

    def frames(self) -> Iterator[np.ndarray]:
        return (frame for frame, _ in self._run(True))

    def frames_with_truth(self) -> Iterator[tuple[np.ndarray, dict]]:
        return self._run(True)

    def positions(self) -> Iterator[dict]:
        """The per-frame truth without drawing pixels (fast)."""
        return (truth for _, truth in self._run(False))

    def _run(self, draw: bool):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self._seed, 1])))
        pos, k, o = self._start.copy(), self._k, self.optics
        sig = np.zeros((self.camera.height, self.camera.width)) if draw else None
        for n in range(self.n_frames):
            steps = rng.standard_normal((k + 1, pos.shape[0], 3)) * self._step_sd[:, :, None]
            if self._drift.any():
                steps[:, :, :2] += self._deltas[:, None, None] * self._drift
            path = pos + np.cumsum(steps, axis=0)
            wrapped = self._lo + np.mod(path[:k] - self._lo, self._size)
            mean = path[:k].mean(axis=0)
            box_mean = self._lo + np.mod(mean - self._lo, self._size)
            per_sample = (np.exp(-2 * np.abs(wrapped[..., 2] / o.sheet_half_width_um) ** o.sheet_exponent
                                 - 2 * ((wrapped[..., 0] - self._x_c) / self._falloff) ** 2) * (self._photons / k))
            frame = self._draw(sig, wrapped, box_mean, per_sample, n) if draw else None
            yield frame, {"start_um": pos, "mean_um": mean, "box_mean_um": box_mean,
                          "photons": per_sample.sum(axis=0)}
            pos = path[k]

    def _draw(self, sig, wrapped, mean, per_sample, n):
        """Each sample's core out to the second dark ring (v = 7.016, where the pattern is 0), the
        rings beyond once, at the exposure-mean position with all the frame's photons."""
        cam, a, px = self.camera, self._a, self.camera.pixel_size_um
        sig.fill(0.0)
        total = per_sample.sum(axis=0)
        seen = np.nonzero(total * a * a / (4 * math.pi) >= 0.01)[0]
        if seen.size:
            s2 = 1.0 + (wrapped[:, seen, 2] / self._z_r) ** 2
            ring2 = np.minimum(7.016 * np.sqrt(s2) / a, PATCH_MAX_PX)
            ms2 = 1.0 + (mean[seen, 2] / self._z_r) ** 2
            v = (2 * total[seen] * a * a / (math.pi ** 2 * ms2 * HALO_PHOTONS)) ** (1 / 3)
            halo = np.minimum(v * np.sqrt(ms2) / a, PATCH_MAX_PX)
            xs = np.concatenate([wrapped[:, seen, 0].ravel(), mean[seen, 0]]) / px - 0.5
            ys = np.concatenate([wrapped[:, seen, 1].ravel(), mean[seen, 1]]) / px - 0.5
            amps = np.concatenate([(per_sample[:, seen] / s2).ravel(), total[seen] / ms2]) * (a * a / (4 * math.pi))
            fs = a * a / np.concatenate([s2.ravel(), ms2])
            r_in = np.concatenate([np.zeros(s2.size), np.minimum(7.016 * np.sqrt(ms2) / a, PATCH_MAX_PX)])
            r_out = np.concatenate([ring2.ravel(), halo])
            keep = ((xs > -r_out) & (xs < cam.width - 1 + r_out) & (ys > -r_out) & (ys < cam.height - 1 + r_out)
                    & (amps > 0) & (r_out > r_in))
            _draw_psfs(sig, xs[keep], ys[keep], amps[keep], fs[keep], r_in[keep], r_out[keep],
                       self._table, 1.0 / _TABLE_STEP)
        key = np.random.SeedSequence([self._seed, 2, n]).generate_state(1, np.uint64)[0]
        out = np.empty((cam.height, cam.width), np.uint8)
        return _expose(sig, self._bg, self._lbg, self._gain_map, self._offset, key, self._lam_cap,
                       self._kmax, self._invk, cam.em_gain, cam.adu_per_electron, cam.read_noise_e,
                       self._normtab, out)


def render(populations: Sequence[Population], concentration_per_ml: float, *, camera: EMCCDCamera | None = None,
           frames: int, optics: Optics | None = None, temperature_c: float = 25.0,
           drift_um_s: tuple[float, float] = (0.0, 0.0), substeps: int = 12, seed: int = 0) -> SimulatedRecording:
    """A recording of ``frames`` frames of ``populations`` at ``concentration_per_ml`` (all
    populations together). ``truth``: diameters_nm (every particle in the box), population_index,
    number_mean_nm, d50_nm, concentration_per_ml (realised: particles / box volume) and
    nominal_concentration_per_ml, particles_in_box, box_lo_um / box_hi_um / box_volume_ml,
    diffusion_um2_s, cross_section_nm2 and photons_per_frame (per population, in focus at the
    sheet centre, field centre), photons_100nm, viscosity_pa_s, blur_R, sample_times_s, psf,
    noise_sd_counts, hot_pixels (row, col), camera and optics (dicts)."""
    camera, optics = camera or EMCCDCamera(), optics or Optics()
    if not populations:
        raise ExoacqError("render needs at least one Population")
    if not (isinstance(frames, (int, np.integer)) and frames >= 1):
        raise ExoacqError(f"frames must be an integer >= 1, got {frames!r}")
    if not concentration_per_ml >= 0:
        raise ExoacqError(f"concentration_per_ml must be >= 0, got {concentration_per_ml}")
    if not 2 <= substeps <= 64:
        raise ExoacqError(f"substeps must be 2-64, got {substeps}")
    if len(drift_um_s) != 2:
        raise ExoacqError(f"drift_um_s is (x, y) in um/s, got {drift_um_s!r}")
    px = camera.pixel_size_um
    z_half = DEPTH_FACTOR * optics.sheet_half_width_um
    lo = np.array([-MARGIN_XY_UM, -MARGIN_XY_UM, -z_half])
    hi = np.array([camera.width * px + MARGIN_XY_UM, camera.height * px + MARGIN_XY_UM, z_half])
    volume_ml = float(np.prod(hi - lo)) * 1e-12
    expected = concentration_per_ml * volume_ml
    if expected > 2e5:
        raise ExoacqError(f"{concentration_per_ml:.3g}/mL puts {expected:.3g} particles in the "
                          f"{volume_ml * 1e12:.3g} um^3 box; at most 2e5 can be simulated")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    fractions = np.array([p.number_fraction for p in populations], float)
    counts = rng.multinomial(rng.poisson(expected), fractions / fractions.sum())
    index = np.repeat(np.arange(len(populations)), counts)
    start = lo + rng.random((index.size, 3)) * (hi - lo)
    d_pop = [diffusion_um2_s(p.diameter_nm, temperature_c) for p in populations]
    sigma_pop = [collected_cross_section_nm2(p.diameter_nm, p.refractive_index, optics) for p in populations]
    a = _airy_a_per_px(camera, optics)
    photons_100 = camera.camera_level / (camera.adu_per_electron * camera.em_gain * a * a / (4 * math.pi))
    sigma_100 = collected_cross_section_nm2(100.0, 1.59, optics)
    photons_pop = [photons_100 * s / sigma_100 for s in sigma_pop]
    diameters = np.array([populations[i].diameter_nm for i in index], float)
    dt, t_e = 1.0 / camera.frame_rate_hz, camera.exposure_ms * 1e-3
    truth = {
        "diameters_nm": diameters, "population_index": index,
        "number_mean_nm": float(diameters.mean()) if diameters.size else float("nan"),
        "d50_nm": float(np.median(diameters)) if diameters.size else float("nan"),
        "concentration_per_ml": index.size / volume_ml, "nominal_concentration_per_ml": float(concentration_per_ml),
        "particles_in_box": int(index.size), "box_lo_um": lo.tolist(), "box_hi_um": hi.tolist(),
        "field_um": [camera.width * px, camera.height * px],
        "box_volume_ml": volume_ml, "diffusion_um2_s": d_pop, "cross_section_nm2": sigma_pop,
        "photons_per_frame": photons_pop, "photons_100nm": photons_100,
        "viscosity_pa_s": water_viscosity_pa_s(temperature_c), "temperature_c": float(temperature_c),
        "frame_interval_s": dt, "exposure_s": t_e, "blur_R": t_e / (6 * dt), "substeps": substeps,
        "drift_um_s": [float(v) for v in drift_um_s],
        "psf": {"airy_a_per_px": a, "first_zero_px": 3.8317 / a, "fwhm_px": 3.2327 / a,
                "defocus_z_r_um": optics.medium_refractive_index * optics.wavelength_nm * 1e-3
                / optics.numerical_aperture ** 2},
        "noise_sd_counts": noise_sd_counts(camera), "camera": asdict(camera), "optics": asdict(optics),
    }
    recording = SimulatedRecording(camera, optics, start_um=start, diffusion_um2_s=np.array(d_pop)[index],
                                   photons=np.array(photons_pop)[index], box_lo_um=lo, box_hi_um=hi,
                                   drift_um_s=drift_um_s, frames=frames, substeps=substeps, seed=seed, truth=truth)
    truth["sample_times_s"] = np.cumsum(recording._deltas[:-1]).tolist()
    truth["hot_pixels"] = recording.hot_pixels
    return recording


def write_video(path: Path | str, recording: SimulatedRecording) -> int:
    """Write the recording losslessly: FFV1 in .mkv or uncompressed 8-bit (Y800) .avi, with only
    the frame rate in the container (no exposure). Returns the number of frames written."""
    path = Path(path)
    fourcc = {".mkv": "FFV1", ".avi": "Y800"}.get(path.suffix.lower())
    if fourcc is None:
        raise ExoacqError(f"{path}: write a .mkv (FFV1) or an .avi (uncompressed) video")
    cam = recording.camera
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), float(cam.frame_rate_hz),
                             (cam.width, cam.height),
                             params=[cv2.VIDEOWRITER_PROP_DEPTH, cv2.CV_8U, cv2.VIDEOWRITER_PROP_IS_COLOR, 0])
    if not writer.isOpened():
        raise ExoacqError(f"{path}: OpenCV cannot write a {fourcc} video here")
    n = 0
    try:
        for frame in recording.frames():
            writer.write(frame)
            n += 1
    finally:
        writer.release()
    return n
