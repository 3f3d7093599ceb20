"""Simulated NTA instrument: the twin of a NanoSight-LM10-like camera and sample cell.

- Brownian motion: per-axis displacement N(0, 2 D dt), D from Stokes-Einstein (Einstein
  1905) with the IAPWS 2008 viscosity of water at the sample temperature (exoacq.physics).
- Illumination: Gaussian light sheet, intensity exp(-2 z^2 / w^2), w the 1/e^2 half-width
  of the Gaussian beam waist. Scatter: Rayleigh, d^6 |(m^2 - 1)/(m^2 + 2)|^2 (Bohren &
  Huffman 1983, ch. 5), linear in laser power and exposure time.
- Imaging: Gaussian PSF integrated over each pixel, sigma growing with defocus as
  sqrt(1 + (z/dof)^2), photon number kept; motion blur by sub-steps in the exposure.
- Detection: Poisson shot noise on signal + stray light, Gaussian read noise, gain,
  offset, rounding, clipping to the ADC range (saturation); exact, no normal approximation.

Rendering and read-out are numba kernels (``_render_psf``, ``_expose``) that release the
GIL: 1280 x 1024 with ~400 particles takes ~7 ms on one core, 640 x 480 ~2 ms.

Coordinates in um, origin at the image centre and the sheet centre: pixel (row r,
column c) is centred at x = (c - (width - 1)/2) * pixel_size_um, y likewise with r.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numba
import numpy as np
from scipy.special import erf

from pydantic import Field

from exoacq.devices import Setting, ring_overrun
from exoacq.registry import Driver, DriverOptions
from exoacq.errors import ConfigError, DeviceError
from exoacq.physics import (rayleigh_polarizability_factor, stokes_einstein_diffusion_um2_s,
                            water_viscosity_iapws_mpa_s)

_REFERENCE_EXPOSURE_MS, _REFERENCE_INDEX = 15.0, 1.59  # photons_100nm: 15 ms, polystyrene
_MIN_PHOTONS = 0.5  # particles expected to give fewer photoelectrons in a frame are not drawn
_TAIL_E = 0.01  # a PSF patch reaches out to where the Gaussian tail falls below this, e/pixel
_LUT_BITS = 16  # resolution of the inverse-CDF table of background pixel values


def _check(name: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} = {value} is out of range; allowed: {allowed}")


def _positive(name: str, value: Any, *, zero_ok: bool = False) -> float:
    v = float(value)
    _check(name, value, math.isfinite(v) and (v >= 0.0 if zero_ok else v > 0.0), ">= 0" if zero_ok else "> 0")
    return v


def _int_in(name: str, value: Any, lo: int, hi: int) -> int:
    _check(name, value, isinstance(value, (int, np.integer)) and lo <= value <= hi, f"an integer {lo}..{hi}")
    return int(value)


def _seed(seed: int | None) -> int:
    """A recorded seed: the one given, or fresh entropy (kept so a run can be replayed)."""
    return int(np.random.SeedSequence().entropy) if seed is None else int(seed)


# --- Compiled kernels: numba, cached on disk, GIL released (other threads run meanwhile) ---
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31, _S48 = (np.uint64(v) for v in (11, 27, 30, 31, 64 - _LUT_BITS))
_jit = numba.njit(cache=True, nogil=True)


@_jit
def _next(state):
    """SplitMix64 (Steele, Lea & Flood 2014): the next state and its 64 random bits."""
    state += _GOLDEN
    z = (state ^ (state >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return state, z ^ (z >> _S31)


@_jit
def _unit(bits):
    """A uniform on [0, 1): the top 53 of 64 random bits."""
    return np.float64(bits >> _S11) * 2.0 ** -53


@_jit
def _inverse_cdf(tables, bits):
    """Exact inverse-CDF draw, lo + #{cdf <= u}, u from ``bits``: the table entry of u's bin
    (its top _LUT_BITS bits), or a binary search if a step of the CDF lies inside the bin."""
    table, straddle, cdf, lo = tables
    j = np.intp(bits >> _S48)
    return lo + np.searchsorted(cdf, _unit(bits), side="right") if straddle[j] else np.int64(table[j])


@_jit
def _poisson(state, mean):
    """Poisson(mean): inversion (sequential search) below 10, numba's PTRS (Hoermann 1993) above."""
    if mean >= 10.0:
        return state, np.int64(np.random.poisson(mean))
    state, bits = _next(state)
    u = _unit(bits)
    if u < 1.0 - mean:  # 1 - mean <= exp(-mean) = P(0): zero, no exp needed (a squeeze)
        return state, np.int64(0)
    k, p = 0, math.exp(-mean)
    f = p
    while u >= f and k < 200:  # k = 200 only if u lies beyond the float64 CDF (< 1e-16)
        k += 1
        p *= mean / k
        f += p
    return state, np.int64(k)


@_jit
def _pixel_masses(out, first, centre, sd, scale):
    """scale x the mass of a 1-D Gaussian (centre, sd; px) in pixels first, first + 1, ...:
    (erf(b) - erf(a)) / 2, a and b a pixel's edges in units of sd sqrt(2)."""
    inv = 1.0 / (math.sqrt(2.0) * sd)
    lo = math.erf((first - 0.5 - centre) * inv)
    for i in range(out.size):
        hi = math.erf((first + i + 0.5 - centre) * inv)
        out[i] = scale * max(0.5 * (hi - lo), 0.0)
        lo = hi


@_jit
def _render_psf(image, xs, ys, sig, ph):
    """Add expected photoelectrons per pixel to ``image`` (float32): particle p at sub-step k
    gives ph[p, k] e through a Gaussian PSF (sd sig[p, k] px) at (xs, ys)[p, k], integrated
    over each pixel (row mass x column mass), in a square patch reaching nsig PSF sds past
    the blur track (the tail < _TAIL_E e/px), cut at the edges; under _MIN_PHOTONS e: none."""
    h, w = image.shape
    for p in range(ph.shape[0]):
        total = ph[p].sum()
        if total < _MIN_PHOTONS:
            continue
        cx, cy = np.rint(xs[p].mean()), np.rint(ys[p].mean())
        peak = total / (2.0 * math.pi * sig[p].min() ** 2)
        nsig = min(max(math.sqrt(2.0 * math.log(max(peak / _TAIL_E, 1.0))), 3.0), 7.0)
        reach = math.ceil(max(np.abs(xs[p] - cx).max(), np.abs(ys[p] - cy).max()) + nsig * sig[p].max())
        r0, r1 = max(int(cy) - reach, 0), min(int(cy) + reach, h - 1)
        c0, c1 = max(int(cx) - reach, 0), min(int(cx) + reach, w - 1)
        if r0 > r1 or c0 > c1:
            continue
        gy, gx = np.empty(r1 - r0 + 1, np.float32), np.empty(c1 - c0 + 1, np.float32)
        for k in range(ph.shape[1]):
            _pixel_masses(gy, r0, ys[p, k], sig[p, k], ph[p, k])
            _pixel_masses(gx, c0, xs[p, k], sig[p, k], 1.0)
            for r in range(gy.size):
                row, a = image[r0 + r, c0:c1 + 1], gy[r]
                for c in range(gx.size):
                    row[c] += a * gx[c]


@_jit
def _expose(out, signal, seed, adu, electrons, offset, gain, read_noise, max_adu):
    """Read ``out`` (ADU) from ``signal`` (expected e/px, zeroed on the way), exactly:
    Poisson(s + b) = Poisson(s) + Poisson(b), b the stray light. With no signal electron
    (always if s = 0, else with probability exp(-s)) a pixel reads round(offset + gain
    (Poisson(b) + read noise)), drawn from ``adu`` (exact, clipped to 0..max_adu); else
    offset + gain (n + Poisson(b) (``electrons``) + read noise N(0, 1)), rounded, clipped.
    Uniforms: SplitMix64 from ``seed``; normal, PTRS: numba's generator (per thread), seeded."""
    np.random.seed(seed & 0xFFFFFFFF)
    state = np.uint64(seed)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            state, bits = _next(state)
            n = 0
            if signal[r, c] > 0.0:
                state, n = _poisson(state, np.float64(signal[r, c]))
                signal[r, c] = 0.0
            if n == 0:
                out[r, c] = _inverse_cdf(adu, bits)
            else:
                v = offset + gain * (n + _inverse_cdf(electrons, bits) + read_noise * np.random.standard_normal())
                out[r, c] = min(max(np.rint(v), 0.0), max_adu)


@dataclass
class SampleComponent:
    """Spheres; ``cv``: relative SD of a log-normal spread around the mean ``diameter_nm``."""

    diameter_nm: float
    cv: float = 0.0
    number_fraction: float = 1.0
    refractive_index: float = 1.59

    def __post_init__(self) -> None:
        _positive("diameter_nm", self.diameter_nm)
        _check("cv", self.cv, math.isfinite(float(self.cv)) and 0.0 <= self.cv <= 3.0, "0..3")
        _positive("number_fraction", self.number_fraction)
        _positive("refractive_index", self.refractive_index)


class SimulatedSample:
    """Spheres diffusing in a periodic 3-D box centred on the field of view and the sheet.

    Count drawn once per tube: Poisson(concentration x box volume), 1 mL = 1e12 um^3. Leaving
    particles re-enter on the other side, out of sight if the box exceeds the field
    (margin) and spans +-3 sheet waists. ``displacement_um`` is the unwrapped motion.

    ``contamination``: particles of the buffer itself (dust, protein aggregates, ...) at
    ``contamination_per_ml``, present in every tube; drawn after the sample's own (which
    stay those of a clean buffer with the same seed). ``from_buffer`` marks them.
    :meth:`load_tube` puts a fresh tube in the holder: the sample again (a new draw), or
    the buffer alone (a blank)."""

    def __init__(self, components: Sequence[SampleComponent], concentration_per_ml: float, *,
                 box_um: tuple[float, float, float], temperature_c: float = 25.0,
                 drift_um_s: tuple[float, float] = (0.0, 0.0), medium_index: float = 1.332,
                 seed: int | None = None, contamination: Sequence[SampleComponent] = (),
                 contamination_per_ml: float = 0.0):
        _check("components", components, len(components) > 0, "at least one SampleComponent")
        self.components = list(components)
        self.concentration_per_ml = _positive("concentration_per_ml", concentration_per_ml, zero_ok=True)
        self.contamination = list(contamination)
        self.contamination_per_ml = _positive("contamination_per_ml", contamination_per_ml, zero_ok=True)
        _check("contamination", contamination, self.contamination_per_ml == 0.0 or len(self.contamination) > 0,
               "at least one SampleComponent when contamination_per_ml > 0")
        _check("box_um", box_um, len(box_um) == 3, "three lengths (x, y, z) in um")
        self.box_um = tuple(_positive(f"box_um[{i}]", b) for i, b in enumerate(box_um))
        _check("drift_um_s", drift_um_s, len(drift_um_s) == 2 and all(map(math.isfinite, drift_um_s)),
               "two finite velocities (x, y) in um/s")
        self.drift_um_s = (float(drift_um_s[0]), float(drift_um_s[1]))
        self.medium_index = _positive("medium_index", medium_index)
        self.temperature_c = temperature_c
        self.seed = self.tube_seed = _seed(seed)
        self.tube, self.tubes_loaded = "sample", 0
        self._rng = np.random.default_rng(self.seed)
        self._fill(blank=False)

    def _draw(self, components: Sequence[SampleComponent], concentration_per_ml: float):
        """Positions, diameters and refractive indices of a Poisson number of particles in the box."""
        n = int(self._rng.poisson(concentration_per_ml * math.prod(self.box_um) * 1e-12))
        table = np.array([(c.diameter_nm, c.cv, c.number_fraction, c.refractive_index) for c in components])
        which = self._rng.choice(len(table), size=n, p=table[:, 2] / table[:, 2].sum())
        s2 = np.log1p(table[which, 1] ** 2)  # log-normal: mean diameter_nm, relative SD cv
        diameters = table[which, 0] * np.exp(np.sqrt(s2) * self._rng.standard_normal(n) - s2 / 2)
        return (self._rng.random((n, 3)) - 0.5) * np.array(self.box_um), diameters, table[which, 3]

    def _fill(self, blank: bool) -> None:
        """The tube's particles: the sample's (unless a blank), then the buffer's contamination."""
        parts = [] if blank else [(*self._draw(self.components, self.concentration_per_ml), False)]
        if self.contamination_per_ml > 0.0:
            parts.append((*self._draw(self.contamination, self.contamination_per_ml), True))
        if not parts:  # a clean buffer: an empty tube
            parts.append((np.empty((0, 3)), np.empty(0), np.empty(0), False))
        self._set(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                  np.concatenate([p[2] for p in parts]),
                  np.concatenate([np.full(len(p[1]), p[3]) for p in parts]))

    def load_tube(self, *, blank: bool = False, seed: int | None = None) -> dict[str, Any]:
        """A fresh tube in the holder, as an operator loads one per run: the sample again (a new
        Poisson draw of the same stock, contamination included) or, ``blank``, the buffer alone.
        Temperature, drift and medium stay. Seeds: given, else the n-th tube's from the sample's
        seed (a daemon's sequence of runs replays). Returns :meth:`describe`."""
        self.tubes_loaded += 1
        self.tube_seed = _seed(seed) if seed is not None else int(
            np.random.SeedSequence([self.seed, self.tubes_loaded]).generate_state(1, np.uint64)[0] >> 1)
        self._rng = np.random.default_rng(self.tube_seed)
        self.tube = "blank" if blank else "sample"
        self._fill(blank)
        return self.describe()

    def realised_concentration_per_ml(self) -> dict[str, float]:
        """The truth of this tube: the sample's own particles and the buffer's, per mL of the box."""
        box_ml = math.prod(self.box_um) * 1e-12
        buffer = int(np.count_nonzero(self.from_buffer))
        return {"sample": (len(self) - buffer) / box_ml, "contamination": buffer / box_ml}

    @classmethod
    def from_particles(cls, positions_um: Any, diameters_nm: Any, *, box_um: tuple[float, float, float],
                       refractive_index: float = 1.59, **kwargs: Any) -> SimulatedSample:
        """A sample holding exactly the given particles (for tests and benchmarks)."""
        d = np.atleast_1d(np.asarray(diameters_nm, dtype=float))
        _check("diameters_nm", diameters_nm, bool(np.all(d > 0)), "all > 0")
        pos = np.array(positions_um, dtype=float).reshape(-1, 3)
        _check("positions_um", f"{len(pos)} rows", len(pos) == len(d), f"one (x, y, z) row per diameter ({len(d)})")
        sample = cls([SampleComponent(float(d.mean()) if d.size else 100.0, refractive_index=refractive_index)],
                     0.0, box_um=box_um, **kwargs)
        sample._set(pos, d, np.full(len(d), _positive("refractive_index", refractive_index)))
        return sample

    def _set(self, positions: np.ndarray, diameters: np.ndarray, index: np.ndarray,
             from_buffer: np.ndarray | None = None) -> None:
        self.positions_um, self.diameters_nm, self.refractive_index = positions, diameters, index
        self.from_buffer = np.zeros(len(diameters), bool) if from_buffer is None else from_buffer.astype(bool)
        self.ids, self.displacement_um = np.arange(len(diameters)), np.zeros_like(positions)
        self.elapsed_s, self._diffusion = 0.0, None

    @property
    def temperature_c(self) -> float:
        return self._temperature_c

    @temperature_c.setter
    def temperature_c(self, value: float) -> None:
        v = float(value)
        _check("temperature_c", value, math.isfinite(v) and 0.0 < v < 100.0, "0..100 degC (liquid water)")
        self._temperature_c, self._diffusion = v, None

    @property
    def viscosity_mpa_s(self) -> float:
        return water_viscosity_iapws_mpa_s(self._temperature_c)

    @property
    def diffusion_um2_s(self) -> np.ndarray:
        """Stokes-Einstein D of each particle at the present temperature."""
        if self._diffusion is None:
            self._diffusion = np.atleast_1d(stokes_einstein_diffusion_um2_s(
                self.diameters_nm, self._temperature_c, self.viscosity_mpa_s))
        return self._diffusion

    def __len__(self) -> int:
        return len(self.ids)

    def step(self, dt_s: float) -> None:
        """Brownian step (per-axis SD sqrt(2 D dt)) plus drift, periodic boundaries."""
        dt = float(dt_s)
        _check("dt_s", dt_s, math.isfinite(dt) and dt >= 0.0, ">= 0 s")
        self._walk(np.array([dt]))

    def _walk(self, dts: np.ndarray) -> np.ndarray:
        """Steps of durations ``dts`` (s) in a row, each as ``step``, drawn at once. Returns the
        positions after each step, (N, len(dts), 3): the first in the box, the rest unwrapped."""
        self.elapsed_s += float(dts.sum())
        if len(self) == 0 or not np.any(dts > 0.0):
            return np.repeat(self.positions_um[:, None], len(dts), axis=1)
        disp = self._rng.standard_normal((len(self), len(dts), 3))
        disp *= np.sqrt(2.0 * self.diffusion_um2_s[:, None] * dts)[..., None]
        disp[..., :2] += np.multiply.outer(dts, self.drift_um_s)
        track = np.cumsum(disp, axis=1)
        self.displacement_um += track[:, -1]
        box = np.array(self.box_um)
        first = (self.positions_um + disp[:, 0] + box / 2) % box - box / 2
        track += (first - track[:, 0])[:, None]
        self.positions_um = (track[:, -1] + box / 2) % box - box / 2
        return track

    def describe(self) -> dict[str, Any]:
        return {"components": [asdict(c) for c in self.components],
                "concentration_per_ml": self.concentration_per_ml, "particle_count": len(self),
                "contamination": [asdict(c) for c in self.contamination],
                "contamination_per_ml": self.contamination_per_ml,
                "contamination_count": int(np.count_nonzero(self.from_buffer)),
                "tube": self.tube, "tubes_loaded": self.tubes_loaded, "tube_seed": self.tube_seed,
                "box_um": list(self.box_um), "temperature_c": self.temperature_c,
                "viscosity_mpa_s": self.viscosity_mpa_s, "medium_index": self.medium_index,
                "drift_um_s": list(self.drift_um_s), "seed": self.seed, "elapsed_s": self.elapsed_s}


class SimulatedNTACamera:
    """A scatter-imaging camera looking at a ``SimulatedSample`` (implements ``Camera``).

    ``illumination_mw()``, called every frame, is the laser power reaching the sample
    (None: ``reference_power_mw``). ``photons_100nm``: photoelectrons collected in 15 ms
    from a 100 nm sphere of n = 1.59 at the sheet centre at ``reference_power_mw``.
    ``realtime``: frames come at the frame rate into a ring of ``buffer_frames`` buffers,
    as a camera's driver holds them (OpenCV's V4L2 backend queues 4): a consumer later than
    that loses the oldest frames (``frames_dropped``); else frames come as fast as computed."""

    dtype = np.dtype(np.uint16)

    def __init__(self, sample: SimulatedSample, *, illumination_mw: Callable[[], float] | None = None,
                 reference_power_mw: float = 40.0, width: int = 640, height: int = 480,
                 pixel_size_um: float = 0.166, frame_rate_hz: float = 25.0, exposure_ms: float = 15.0,
                 bit_depth: int = 12, gain_adu_per_e: float = 1.0, offset_adu: float = 100.0,
                 read_noise_e: float = 2.0, background_e: float = 20.0, sheet_waist_um: float = 5.0,
                 psf_sigma_um: float = 0.3, depth_of_field_um: float = 4.0, photons_100nm: float = 5000.0,
                 blur_substeps: int = 8, realtime: bool = True, buffer_frames: int = 4, seed: int | None = None):
        _check("sample", sample, sample is not None, "a SimulatedSample (see make_simulated_nta)")
        self.sample, self.illumination_mw = sample, illumination_mw
        #: None, or a callable giving the holder's temperature (None while it has none): the sample follows it.
        self.sample_temperature_c: Callable[[], float | None] | None = None
        self.reference_power_mw = _positive("reference_power_mw", reference_power_mw)
        self.width, self.height = _int_in("width", width, 8, 16384), _int_in("height", height, 8, 16384)
        self.pixel_size_um = _positive("pixel_size_um", pixel_size_um)
        self.bit_depth = _int_in("bit_depth", bit_depth, 8, 16)
        self.gain_adu_per_e = _positive("gain_adu_per_e", gain_adu_per_e)
        self.offset_adu = _positive("offset_adu", offset_adu, zero_ok=True)
        _check("offset_adu", offset_adu, self.offset_adu < self.max_adu, f"0..{self.max_adu - 1} at {bit_depth} bits")
        self.read_noise_e = _positive("read_noise_e", read_noise_e, zero_ok=True)
        self.background_e = _positive("background_e", background_e, zero_ok=True)  # stray light, e/px/exposure
        self.sheet_waist_um = _positive("sheet_waist_um", sheet_waist_um)
        self.psf_sigma_um = _positive("psf_sigma_um", psf_sigma_um)
        self.depth_of_field_um = _positive("depth_of_field_um", depth_of_field_um)
        self.photons_100nm = _positive("photons_100nm", photons_100nm, zero_ok=True)
        self.blur_substeps = _int_in("blur_substeps", blur_substeps, 1, 64)
        self.buffer_frames = _int_in("buffer_frames", buffer_frames, 1, 1024)
        self.realtime, self.seed, self.frames_dropped, self._connected = bool(realtime), _seed(seed), 0, False
        self._rng = np.random.default_rng(self.seed)
        self._exposure_ms = self._t0_mono = self._truth = self._bg_key = self._image = None
        self.frame_rate_hz = frame_rate_hz
        self.exposure_ms = exposure_ms

    @property
    def max_adu(self) -> int:
        return 2 ** self.bit_depth - 1

    @property
    def frame_rate_hz(self) -> float:
        return self._frame_rate_hz

    @frame_rate_hz.setter
    def frame_rate_hz(self, value: float) -> None:
        v = _positive("frame_rate_hz", value)
        if self._exposure_ms is not None:
            _check("frame_rate_hz", value, v <= 1000.0 / self._exposure_ms,
                   f"0 < frame_rate_hz <= {1000.0 / self._exposure_ms:g} (1000 / exposure_ms)")
        if self._t0_mono is not None:  # running: keep the frame clock continuous
            self._t0_mono, self._t0_unix, self._n = (self._t0_mono + self._n / self._frame_rate_hz,
                                                     self._t0_unix + self._n / self._frame_rate_hz, 0)
        self._frame_rate_hz = v

    @property
    def exposure_ms(self) -> float:
        return self._exposure_ms

    @exposure_ms.setter
    def exposure_ms(self, value: float) -> None:
        interval_ms, v = 1000.0 / self._frame_rate_hz, float(value)
        _check("exposure_ms", value, math.isfinite(v) and 0.0 < v <= interval_ms,
               f"0 < exposure_ms <= {interval_ms:g} (the frame interval at {self._frame_rate_hz:g} frames/s)")
        self._exposure_ms = v

    #: Settings an operator may change while previewing (exoacq set).
    settings = {
        "exposure_ms": Setting(get="get_exposure_ms", set="set_exposure_ms", unit="ms", minimum=0.01,
                               maximum="max_exposure_ms", description="exposure (shutter) time"),
        "gain": Setting(get="get_gain", set="set_gain", unit="ADU/e-", minimum=0.05, maximum=50.0,
                        description="camera gain"),
    }

    def get_exposure_ms(self) -> float:
        return self.exposure_ms

    def set_exposure_ms(self, value: float) -> None:
        self.exposure_ms = value

    @property
    def max_exposure_ms(self) -> float:
        return 1000.0 / self._frame_rate_hz

    def get_gain(self) -> float:
        return self.gain_adu_per_e

    def set_gain(self, value: float) -> None:
        self.gain_adu_per_e = _positive("gain", value)
        self._bg_key = None

    def connect(self) -> None:
        """Nothing to open, but the kernels are compiled (or loaded from numba's disk cache)
        here on tiny frames, so that the first real frame comes on time."""
        z = np.zeros((1, 1))
        _render_psf(np.zeros((8, 8), np.float32), z, z, z + 1.0, z)
        self._detect(np.empty((8, 8), self.dtype), np.zeros((8, 8), np.float32), 0)
        self._connected = True

    def close(self) -> None:
        self.stop()
        self._connected = False

    def start(self) -> None:
        """Reset the frame clock: frame n's exposure starts n / frame_rate_hz from now."""
        if not self._connected:
            raise DeviceError("simulated NTA camera is not connected: call connect() first")
        self._t0_mono, self._t0_unix, self._n = time.monotonic(), time.time(), 0

    def stop(self) -> None:
        self._t0_mono = None

    def describe(self) -> dict[str, Any]:
        return {"model": "SimulatedNTACamera", "simulated": True, "connected": self._connected,
                "width_px": self.width, "height_px": self.height, "pixel_size_um": self.pixel_size_um,
                "field_um": [self.width * self.pixel_size_um, self.height * self.pixel_size_um],
                "frame_rate_hz": self.frame_rate_hz, "exposure_ms": self.exposure_ms,
                "bit_depth": self.bit_depth, "gain_adu_per_e": self.gain_adu_per_e,
                "offset_adu": self.offset_adu, "read_noise_e": self.read_noise_e,
                "background_e_per_px": self.background_e, "reference_power_mw": self.reference_power_mw,
                "photons_100nm_e_per_15ms": self.photons_100nm, "sheet_waist_um": self.sheet_waist_um,
                "psf_sigma_um": self.psf_sigma_um, "depth_of_field_um": self.depth_of_field_um,
                "blur_substeps": self.blur_substeps, "realtime": self.realtime,
                "buffer_frames": self.buffer_frames, "seed": self.seed,
                "frames_dropped": self.frames_dropped, "sample": self.sample.describe()}

    def _power_mw(self) -> float:
        p = self.reference_power_mw if self.illumination_mw is None else float(self.illumination_mw())
        _check("illumination_mw()", p, math.isfinite(p) and p >= 0.0, ">= 0 mW")
        return p

    def expected_photons(self, diameter_nm: Any, z_um: Any = 0.0, refractive_index: Any = _REFERENCE_INDEX,
                         power_mw: float | None = None) -> Any:
        """Expected photoelectrons per exposure: Rayleigh d^6 x polarizability, linear in
        power (default: ``illumination_mw()`` now) and exposure, Gaussian sheet in z."""
        power = self._power_mw() if power_mw is None else float(power_mw)
        m = self.sample.medium_index
        index = (rayleigh_polarizability_factor(np.asarray(refractive_index, dtype=float), m)
                 / rayleigh_polarizability_factor(_REFERENCE_INDEX, m))
        z = np.asarray(z_um, dtype=float)
        n = (self.photons_100nm * (power / self.reference_power_mw) * (self._exposure_ms / _REFERENCE_EXPOSURE_MS)
             * (np.asarray(diameter_nm, dtype=float) / 100.0) ** 6 * index
             * np.exp(-2.0 * z * z / self.sheet_waist_um ** 2))
        return float(n) if np.ndim(n) == 0 else n

    def fill(self, buffer: np.ndarray) -> float:
        """Advance the sample one frame interval (dead time, then exposure), render the frame
        into ``buffer`` (uint16, height x width); return the exposure start as UNIX time."""
        if not self._connected:
            raise DeviceError("simulated NTA camera is not connected: call connect() first")
        if self._t0_mono is None:
            raise DeviceError("simulated NTA camera is not acquiring: call start() first")
        if self.sample_temperature_c is not None and (holder_c := self.sample_temperature_c()) is not None:
            self.sample.temperature_c = holder_c  # the sample sits in a temperature-controlled holder
        if buffer.shape != (self.height, self.width) or buffer.dtype != self.dtype:
            raise ValueError(f"buffer is {buffer.dtype} {buffer.shape}; needs uint16 ({self.height}, {self.width})")
        interval, exposure = 1.0 / self._frame_rate_hz, self._exposure_ms * 1e-3
        if self.realtime:
            ready = self._t0_mono + self._n * interval + exposure
            if (missed := ring_overrun(time.monotonic(), ready, interval, self.buffer_frames)):
                self.sample.step(missed * interval)
                self._n, self.frames_dropped = self._n + missed, self.frames_dropped + missed
        start_unix = self._t0_unix + self._n * interval
        ready_mono = self._t0_mono + self._n * interval + exposure
        self._render(buffer, interval, exposure)
        self._n += 1
        if self.realtime and (wait := ready_mono - time.monotonic()) > 0:
            time.sleep(wait)
        return start_unix

    def load_tube(self, *, blank: bool = False, seed: int | None = None) -> dict[str, Any]:
        """The operator puts a fresh tube in the holder before a run: the sample (a new draw of
        the same stock) or, ``blank``, the buffer alone (only its contamination shows).
        Returns the tube's description (:meth:`SimulatedSample.describe`)."""
        if self._t0_mono is not None:
            raise DeviceError("simulated NTA camera is acquiring: stop it before loading another tube")
        self._truth = None
        return self.sample.load_tube(blank=blank, seed=seed)

    def truth(self) -> dict[str, np.ndarray]:
        """Every particle of the sample in the last frame: mean position during the
        exposure (``x_px`` column, ``y_px`` row, pixel centres at integers), ``z_um``,
        ``diameter_nm``, ``particle_id`` (``sample.from_buffer[particle_id]``: the buffer's),
        ``photons`` (expected e), ``in_field``."""
        if self._truth is None:
            raise DeviceError("no frame rendered yet: truth() describes the last frame")
        return {k: v.copy() for k, v in self._truth.items()}

    def _render(self, buffer: np.ndarray, interval: float, exposure: float) -> None:
        s, k, sub = self.sample, self.blur_substeps, exposure / self.blur_substeps
        # Dead time, then the middles of the k sub-steps of the exposure, then to its end.
        track = s._walk(np.array([interval - exposure + sub / 2] + [sub] * (k - 1) + [sub / 2]))[:, :k]
        z, power = track[..., 2], self._power_mw()  # (N, k): each sub-step gets 1/k of the exposure
        ph = self.expected_photons(s.diameters_nm, 0.0, s.refractive_index, power)[:, None] * np.exp(
            -2.0 * z * z / self.sheet_waist_um ** 2) / k
        xs = track[..., 0] / self.pixel_size_um + (self.width - 1) / 2
        ys = track[..., 1] / self.pixel_size_um + (self.height - 1) / 2
        sig = (self.psf_sigma_um / self.pixel_size_um) * np.sqrt(1.0 + (z / self.depth_of_field_um) ** 2)
        total, mx, my = ph.sum(axis=1), xs.mean(axis=1), ys.mean(axis=1)
        self._truth = {"x_px": mx, "y_px": my, "z_um": z.mean(axis=1), "diameter_nm": s.diameters_nm.copy(),
                       "particle_id": s.ids.copy(), "photons": total,
                       "in_field": (mx >= -0.5) & (mx < self.width - 0.5) & (my >= -0.5) & (my < self.height - 0.5)}
        if self._image is None or self._image.shape != buffer.shape:
            self._image = np.zeros(buffer.shape, np.float32)  # expected e/px; _expose leaves it zeroed
        if power > 0 and len(s):
            _render_psf(self._image, xs, ys, sig, ph)
        self._detect(buffer, self._image, int(self._rng.integers(2 ** 63)))

    def _detect(self, buffer: np.ndarray, image: np.ndarray, seed: int) -> None:
        """Shot noise, read noise, gain, offset, rounding, clipping (``_expose``); zeroes ``image``."""
        _expose(buffer, image, seed, *self._tables(), self.offset_adu, self.gain_adu_per_e,
                self.read_noise_e, float(self.max_adu))

    def _tables(self) -> tuple[tuple, tuple]:
        """Inverse-CDF tables (``_inverse_cdf``) of a stray-light-only pixel's ADU value,
        round(offset + gain (Poisson(background) + read noise)), and of Poisson(background)."""
        key = (self.background_e, self.read_noise_e, self.gain_adu_per_e, self.offset_adu, self.bit_depth)
        if key != self._bg_key:
            b, g, s = self.background_e, self.gain_adu_per_e, max(self.gain_adu_per_e * self.read_noise_e, 1e-9)
            p = np.arange(int(math.ceil(b + 12 * math.sqrt(b) + 15)) + 1)
            log_fact = np.concatenate([[0.0], np.cumsum(np.log(p[1:]))])
            pmf = np.exp(p * math.log(b) - b - log_fact) if b > 0 else (p == 0).astype(float)
            lo = max(0, int(self.offset_adu - 10 * s) - 2)
            hi = min(self.max_adu, int(self.offset_adu + g * p[-1] + 10 * s) + 2)
            a = np.arange(lo, hi + 1)[:, None]
            cdf = (pmf * 0.5 * (1 + erf((a + 0.5 - self.offset_adu - g * p) / (math.sqrt(2) * s)))).sum(axis=1)
            # What lies above hi (< 1e-12) or above max_adu (saturation) lands on hi; likewise for p.
            self._bg = (_inverse_cdf_table(cdf, lo, self.dtype), _inverse_cdf_table(np.cumsum(pmf), 0, np.int32))
            self._bg_key = key
        return self._bg


def _inverse_cdf_table(cdf: np.ndarray, lo: int, dtype: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(table, straddle, cdf, lo) for ``_inverse_cdf``: per bin of u, lo + #{cdf <= bin start},
    and whether a CDF step falls inside the bin (then the kernel searches)."""
    cdf = np.minimum(np.maximum.accumulate(cdf), 1.0)
    cdf[-1] = 1.0
    grid = np.arange((1 << _LUT_BITS) + 1) / (1 << _LUT_BITS)
    first = np.searchsorted(cdf, grid[:-1], side="right")
    last = np.searchsorted(cdf, np.nextafter(grid[1:], 0.0), side="right")
    return (lo + first).astype(dtype), first != last, cdf, lo


class SimulatedThermometer:
    """Reads the simulated sample's temperature, optionally with Gaussian noise (implements ``Thermometer``)."""

    def __init__(self, sample: SimulatedSample, noise_c: float = 0.0, seed: int | None = None):
        self.sample, self.seed, self._connected = sample, _seed(seed), False
        self.noise_c = _positive("noise_c", noise_c, zero_ok=True)
        self._rng = np.random.default_rng(self.seed)

    def connect(self) -> None:
        self._connected = True

    def close(self) -> None:
        self._connected = False

    def describe(self) -> dict[str, Any]:
        return {"model": "SimulatedThermometer", "simulated": True, "noise_c": self.noise_c, "seed": self.seed}

    def temperature_c(self) -> float:
        if not self._connected:
            raise DeviceError("simulated thermometer is not connected: call connect() first")
        return self.sample.temperature_c + (self.noise_c * float(self._rng.standard_normal()) if self.noise_c else 0.0)


def make_simulated_nta(components: Sequence[SampleComponent], concentration_per_ml: float, *,
                       illumination_mw: Callable[[], float] | None, temperature_c: float = 25.0,
                       drift_um_s: tuple[float, float] = (0.0, 0.0), medium_index: float = 1.332,
                       seed: int | None = None, margin_um: float = 10.0, thermometer_noise_c: float = 0.0,
                       contamination: Sequence[SampleComponent] = (), contamination_per_ml: float = 0.0,
                       **camera_kwargs: Any) -> tuple[SimulatedNTACamera, SimulatedThermometer, SimulatedSample]:
    """Camera, thermometer and a sample whose box is the field plus ``margin_um`` on
    each side in x and y and +-3 sheet waists in z; seeds derived from ``seed``. The buffer's
    ``contamination`` (at ``contamination_per_ml``) is in every tube (SimulatedSample)."""
    geo = {k: p.default for k, p in inspect.signature(SimulatedNTACamera).parameters.items()} | camera_kwargs
    width, height = _int_in("width", geo["width"], 8, 16384), _int_in("height", geo["height"], 8, 16384)
    pixel, waist = _positive("pixel_size_um", geo["pixel_size_um"]), _positive("sheet_waist_um", geo["sheet_waist_um"])
    margin = _positive("margin_um", margin_um, zero_ok=True)
    s_sample, s_camera, s_thermo = (int(v) for v in np.random.SeedSequence(seed).generate_state(3))
    box = (width * pixel + 2 * margin, height * pixel + 2 * margin, 6 * waist)
    sample = SimulatedSample(components, concentration_per_ml, box_um=box, temperature_c=temperature_c,
                             drift_um_s=drift_um_s, medium_index=medium_index, seed=s_sample,
                             contamination=contamination, contamination_per_ml=contamination_per_ml)
    camera = SimulatedNTACamera(sample, illumination_mw=illumination_mw, seed=s_camera, **camera_kwargs)
    return camera, SimulatedThermometer(sample, thermometer_noise_c, seed=s_thermo), sample


# -- as the daemon finds them (exoacq.registry) -------------------------------------------
def _simulation(context: dict[str, Any], what: str) -> Any:
    sim = context.get("nta_simulation")
    if sim is None:
        raise ConfigError(f"the {what} belongs to a simulated NTA instrument (method nta, with its [simulation])")
    return sim


def _open_camera(options: Any, address: str | None, context: dict[str, Any]) -> SimulatedNTACamera:
    """The simulated camera looks at the instrument's simulated sample, lit by its simulated laser,
    in its temperature-controlled holder when it has one."""
    sim = _simulation(context, "simulated-nta camera")
    simulators = context.setdefault("simulators", {})
    laser = simulators.get("laser")
    if laser is None or not hasattr(laser, "emitted_power_mw"):
        raise ConfigError("the simulated-nta camera sees a simulated laser's light: set the laser's simulated = true")
    camera, _, sample = make_simulated_nta(
        [SampleComponent(**c.model_dump()) for c in sim.components], sim.concentration_per_ml,
        temperature_c=sim.temperature_c, drift_um_s=tuple(sim.drift_um_s),
        contamination=[SampleComponent(**c.model_dump()) for c in sim.contamination],
        contamination_per_ml=sim.contamination_per_ml,
        illumination_mw=lambda: laser.emitted_power_mw, seed=sim.seed, **options.model_dump())

    def holder_c() -> float | None:
        holder = simulators.get("temperature")
        return getattr(holder, "temperature_c", None) if holder is not None else None

    camera.sample_temperature_c = holder_c
    context["sample"] = sample
    return camera


def _open_thermometer(options: Any, address: str | None, context: dict[str, Any]) -> SimulatedThermometer:
    _simulation(context, "simulated thermometer")
    if "sample" not in context:
        raise ConfigError("the simulated thermometer reads the simulated camera's sample: configure the camera first")
    return SimulatedThermometer(context["sample"], options.noise_c)


def _camera_options() -> type:
    from exoacq.nta.settings import SimulatedCameraOptions
    return SimulatedCameraOptions


class SimulatedThermometerOptions(DriverOptions):
    #: SD of Gaussian read noise added to the sample's temperature.
    noise_c: float = Field(0.0, ge=0.0, le=5.0)


CAMERA_DRIVER = Driver(name="simulated-nta", kind="camera", options=_camera_options(), open=_open_camera,
                       simulation_only=True,
                       description="physically faithful simulated NTA camera (Rayleigh scatter in a light sheet)")
THERMOMETER_DRIVER = Driver(name="simulated-thermometer", kind="thermometer", options=SimulatedThermometerOptions,
                            open=_open_thermometer, simulation_only=True,
                            description="reads the simulated NTA sample's temperature")
