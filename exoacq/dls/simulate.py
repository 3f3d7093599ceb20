"""A physical photon generator for DLS: the photons a single-photon detector sees at an angle.

The model, step by step (every choice stated):

- **Sample.** Components (:class:`Component`), each a log-normal number distribution of
  diameters (``diameter_nm`` the number-mean, ``cv`` the relative SD; 0: monodisperse),
  with a ``number_fraction`` and the particles' refractive index, in a medium of refractive
  index ``medium_refractive_index`` at ``temperature_c`` (viscosity: water, IAPWS 2008,
  :func:`exoacq.physics.water_viscosity_iapws_mpa_s`, unless given). A polydisperse
  component is represented by ``classes_per_component`` size classes, equally spaced in
  ln d over [mean - 4 sd, mean + 4 sd + 6 sd^2] of ln d (the +6 sd^2 covers the shift of
  the intensity-weighted distribution, d^6 for Rayleigh scatterers), each weighted by the
  exact log-normal probability of its bin. The simulation *is* these classes: the true
  moments (:meth:`PhotonSimulator.population_moments`) are computed from them.
- **Scatter.** Class i scatters a mean intensity I_i proportional to N_i dsigma_i/dOmega, the
  differential scattering cross-section of one sphere at the detection angle from Mie
  theory (miepython; Bohren & Huffman 1983): vertically polarised laser, horizontal
  scattering plane, so dsigma/dOmega = |S1(theta)|^2 / k^2 with k the wavenumber in the
  medium. The intensity fractions w_i = I_i / sum I are the weights of g1.
- **Dynamics.** Gamma_i = D_i q^2, D_i by Stokes-Einstein (Einstein 1905,
  :func:`exoacq.physics.stokes_einstein_diffusion_um2_s`), q = 4 pi n sin(theta/2) / lambda.
- **Field.** The scattered field is a circular complex Gaussian process (many independent
  scatterers, central limit) with g1(tau) = sum_i w_i exp(-Gamma_i tau): the sum of one
  independent complex Ornstein-Uhlenbeck process per class, advanced on a grid of step dt
  by the exact update E_i <- E_i exp(-Gamma_i dt) + sqrt(w_i (1 - exp(-2 Gamma_i dt))) z,
  z a unit complex normal (Gillespie 1996, Phys. Rev. E 54:2084). The intensity |E|^2 is
  held constant within a step; dt = min(1 / (20 Gamma_max), ``max_field_step_s``), a whole
  number of time-tagger ticks. Then g2 = 1 + |g1|^2 (Siegert).
- **Intercept.** The detection sees a coherent fraction f = sqrt(beta) of the light as this
  speckle and the rest, 1 - f, as light of constant intensity (averaged over many coherence
  areas, stray light, dark counts): rate(t) = R [(1 - f) + f |E(t)|^2], so that
  g2 - 1 = f^2 |g1|^2 = beta |g1|^2 exactly (:meth:`PhotonSimulator.expected_g2_minus_1`).
- **Photons.** An inhomogeneous Poisson process of that rate (R = ``count_rate_hz``, the mean
  rate of photons reaching the detector, before dead-time losses): in each field step a
  Poisson number of photons of mean R dt I/<I>, uniform within the step, quantised to the
  time tagger's tick (``resolution_s``), in time order. Drawn by time rescaling (Cinlar
  1975; Brown et al. 2002, Neural Comput. 14:325): the next photon comes when the
  integrated rate since the last one reaches a unit exponential, the same process as a
  Poisson count per step with sorted uniform times, at one random number per photon.
- **Dead time.** Non-paralysable: a photon closer than ``dead_time_s`` to the previous
  *detected* photon is lost (the detected rate is about R / (1 + R dead_time), lower with
  the speckle's fluctuations: :attr:`PhotonSimulator.detected_count_rate_hz`).
- **Dust.** Large particles (diameters log-uniform 1-5 um) drifting through the beam by
  convection, arriving as a Poisson process of ``dust_rate_per_s``. Each is one more
  complex OU field with its own slow Gamma (Stokes-Einstein), added to the sample's field
  (it interferes with it) with intensity weight A(t) = A_peak exp(-2 ((t - t0) / w)^2): the
  Gaussian beam profile crossed at constant speed, the burst lasting ``duration`` (uniform
  0.1-1 s, from A_peak e^-8 to A_peak e^-8; w = duration / 4), A_peak = ``dust_intensity_ratio``
  times a log-uniform factor in [1/3, 3] (relative to the sample's mean intensity).
  The incoherent part grows with it: rate = R [(1 - f)(1 + A) + f |E + sqrt(A) E_dust|^2].
- **Count rate from the sample.** :func:`count_rate_from_concentration_hz`: R = K x R_theta with
  R_theta = sum_i n_i dsigma_i/dOmega the sample's Rayleigh ratio (1/(cm sr)) and K an
  instrument constant (Hz cm sr); the default K makes toluene (R ~ 1.36e-5 /cm at 632.8 nm;
  published values 1.35-1.41e-5, e.g. Kaye & McDaniel 1974, Appl. Opt. 13:1934) give 50 kHz.

Speed: the generator is a numba kernel carrying its state (fields, random generator,
position, the last photon for the dead time) across calls, so reading in chunks gives
exactly the photons of one long read with the same seed. 5 Mcps at 1 ns resolution with a
100 nm sample at 173 deg: ~30-80 million photons/s on one core (6-15x real time); a
log-normal component (25 classes) ~10-15 million photons/s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import miepython
import numba
import numpy as np

from exoacq.physics import stokes_einstein_diffusion_um2_s, water_viscosity_iapws_mpa_s

#: Rayleigh ratio of toluene at 632.8 nm, 1/(cm sr) (published 1.35-1.41e-5; Kaye & McDaniel 1974).
TOLUENE_RAYLEIGH_RATIO_CM_SR = 1.36e-5
#: Default instrument constant: toluene gives 50 kHz.
DEFAULT_INSTRUMENT_CONSTANT_HZ_CM_SR = 50e3 / TOLUENE_RAYLEIGH_RATIO_CM_SR
_DUST_DIAMETER_NM = (1000.0, 5000.0)
_DUST_DURATION_S = (0.1, 1.0)
_DUST_PEAK_SPREAD = 3.0
_MAX_BATCH_PHOTONS = 1 << 18


def _check(name: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} = {value!r} is out of range; allowed: {allowed}")


def _number(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {value!r} is not a number") from None
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    _check(name, value, ok, f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
    return v


# -- the sample ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Component:
    """One population: a log-normal number distribution of sphere diameters.

    ``diameter_nm`` is the number-mean diameter, ``cv`` the relative SD (0: monodisperse),
    ``number_fraction`` its share of the particles (normalised over the components),
    ``refractive_index`` of the particles (1.59 polystyrene latex; EVs ~1.37-1.40)."""

    diameter_nm: float
    cv: float = 0.0
    number_fraction: float = 1.0
    refractive_index: float = 1.59

    def __post_init__(self) -> None:
        _number("diameter_nm", self.diameter_nm, 0.0, 1e5, lo_open=True)
        _number("cv", self.cv, 0.0, 2.0)
        _number("number_fraction", self.number_fraction, 0.0, math.inf, lo_open=True)
        _number("refractive_index", self.refractive_index, 1.0, 4.0, lo_open=True)


@dataclass(frozen=True)
class Sample:
    """The particles and their medium. ``viscosity_mpa_s`` None: water at ``temperature_c``
    (IAPWS 2008). ``count_rate_hz``: mean rate of scattered photons reaching the detector."""

    components: tuple[Component, ...] = (Component(100.0),)
    temperature_c: float = 25.0
    medium_refractive_index: float = 1.332
    viscosity_mpa_s: float | None = None
    count_rate_hz: float = 200e3

    def __post_init__(self) -> None:
        object.__setattr__(self, "components", tuple(self.components))
        if not self.components:
            raise ValueError("components: give at least one size component")
        _number("temperature_c", self.temperature_c, -20.0, 150.0)
        _number("medium_refractive_index", self.medium_refractive_index, 1.0, 3.0, lo_open=True)
        if self.viscosity_mpa_s is not None:
            _number("viscosity_mpa_s", self.viscosity_mpa_s, 0.0, 1e6, lo_open=True)
        _number("count_rate_hz", self.count_rate_hz, 0.0, 1e9, lo_open=True)
        if any(c.refractive_index == self.medium_refractive_index for c in self.components):
            raise ValueError("a component's refractive_index equals the medium's: it scatters no light")

    @property
    def medium_viscosity_mpa_s(self) -> float:
        if self.viscosity_mpa_s is not None:
            return float(self.viscosity_mpa_s)
        return water_viscosity_iapws_mpa_s(self.temperature_c)

    @classmethod
    def from_model(cls, model: Any, **defaults: Any) -> "Sample":
        """From any object with the same attribute names (e.g. the DLS method's ``DLSSimulation``):
        ``components`` (each with diameter_nm, cv, number_fraction, refractive_index),
        ``temperature_c``, ``medium_refractive_index``, ``viscosity_mpa_s``, ``count_rate_hz``;
        a missing attribute takes ``defaults[name]``, else the dataclass default."""
        values: dict[str, Any] = {}
        for name in ("temperature_c", "medium_refractive_index", "viscosity_mpa_s", "count_rate_hz"):
            value = getattr(model, name, defaults.get(name))
            if value is not None or name == "viscosity_mpa_s":
                values[name] = value
        comps = getattr(model, "components", None)
        if comps is None:
            comps = defaults.get("components", ())
        values["components"] = tuple(_component(c) for c in comps)
        return cls(**values)


def _component(c: Any) -> Component:
    if isinstance(c, Component):
        return c
    get = c.get if isinstance(c, dict) else (lambda key: getattr(c, key, None))
    return Component(**{k: get(k) for k in ("diameter_nm", "cv", "number_fraction", "refractive_index")
                        if get(k) is not None})


def scattering_vector_per_m(angle_deg: float, wavelength_nm: float, medium_refractive_index: float) -> float:
    """q = 4 pi n sin(theta / 2) / lambda, in 1/m."""
    return 4.0 * math.pi * medium_refractive_index * math.sin(math.radians(angle_deg) / 2.0) / (wavelength_nm * 1e-9)


def mie_cross_section_nm2_sr(diameter_nm: float | Sequence[float], particle_refractive_index: float,
                             medium_refractive_index: float, wavelength_nm: float, angle_deg: float) -> np.ndarray:
    """Differential scattering cross-section of one homogeneous sphere, nm^2/sr, for a vertically
    polarised laser and a horizontal scattering plane: |S1(theta)|^2 / k^2 (Bohren & Huffman
    1983, ch. 4; S1 from miepython, norm='wiscombe' = unnormalised), k = 2 pi n / lambda."""
    d = np.atleast_1d(np.asarray(diameter_nm, dtype=float))
    k_per_nm = 2.0 * math.pi * medium_refractive_index / wavelength_nm
    m = particle_refractive_index / medium_refractive_index
    mu = math.cos(math.radians(angle_deg))
    out = np.empty(d.size)
    for i, di in enumerate(d):
        s1, _ = miepython.S1_S2(m, k_per_nm * di / 2.0, mu, norm="wiscombe")
        out[i] = float(np.abs(np.asarray(s1).ravel()[0]) ** 2) / k_per_nm**2
    return out


def size_classes(component: Component, classes: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Diameters (nm) and number weights (summing to 1) representing one component (see the module)."""
    if component.cv == 0.0:
        return np.array([float(component.diameter_nm)]), np.array([1.0])
    from scipy.special import ndtr
    _check("classes_per_component", classes, isinstance(classes, int) and 3 <= classes <= 200, "an integer 3..200")
    sigma = math.sqrt(math.log1p(component.cv**2))
    mu = math.log(component.diameter_nm) - sigma**2 / 2.0  # number-mean = exp(mu + sigma^2 / 2)
    lo, hi = mu - 4.0 * sigma, mu + 4.0 * sigma + 6.0 * sigma**2
    edges = np.linspace(lo, hi, classes + 1)
    centres = (edges[:-1] + edges[1:]) / 2.0
    cdf = ndtr((edges - mu) / sigma)
    cdf[0], cdf[-1] = 0.0, 1.0  # the tails go to the outer classes
    weights = np.diff(cdf)
    keep = weights > 0
    return np.exp(centres[keep]), weights[keep] / weights[keep].sum()


def count_rate_from_concentration_hz(sample: Sample, concentration_per_ml: float, *, wavelength_nm: float = 633.0,
                                     angle_deg: float = 90.0,
                                     instrument_constant_hz_cm_sr: float = DEFAULT_INSTRUMENT_CONSTANT_HZ_CM_SR,
                                     classes_per_component: int = 25) -> float:
    """Count rate R = K x R_theta: the sample's Rayleigh ratio R_theta = sum n_i dsigma_i/dOmega
    (1/(cm sr)) at ``concentration_per_ml`` particles (all components) times the instrument
    constant K (Hz cm sr; default: toluene gives 50 kHz). E.g. 100 nm latex at 1.8e10 /mL
    (0.01 mg/mL), 633 nm, 90 deg: ~5 MHz (a real instrument attenuates)."""
    _number("concentration_per_ml", concentration_per_ml, 0.0, 1e20)
    total = sum(c.number_fraction for c in sample.components)
    rayleigh = 0.0
    for c in sample.components:
        d, w = size_classes(c, classes_per_component)
        sigma_nm2 = mie_cross_section_nm2_sr(d, c.refractive_index, sample.medium_refractive_index,
                                             wavelength_nm, angle_deg)
        rayleigh += concentration_per_ml * c.number_fraction / total * float(np.sum(w * sigma_nm2)) * 1e-14
    return instrument_constant_hz_cm_sr * rayleigh


# -- the kernel ------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _generate(rng, e_re, e_im, decay, noise, d_start, d_end, d_t0, d_inv_w, d_peak, d_re, d_im, d_decay, d_noise,
              coherent, lam0, step_ticks, step, step_end, dead_ticks, last_tick, u0, resid, out):
    """Field steps ``step`` .. ``step_end`` - 1, photons written to ``out``.

    Photons by time rescaling: the next photon comes when the integrated rate (in expected
    photons) since the last one reaches a unit exponential ``resid``; within a step the rate
    is constant, so its photons fall uniformly and already sorted. ``u0`` is the fraction of
    the current step already covered. When ``out`` fills, the call returns mid-step; no
    random number is drawn to compute a step's rate, so the next call resumes exactly.
    Returns (step, pos, last_tick, u0, resid)."""
    n_class = e_re.size
    n_dust = d_start.size
    cap = out.size
    pos = 0
    incoherent = 1.0 - coherent
    while step < step_end:
        fr = 0.0
        fi = 0.0
        for i in range(n_class):
            fr += e_re[i]
            fi += e_im[i]
        mean_i = 1.0
        for j in range(n_dust):
            if d_start[j] <= step < d_end[j]:
                x = (step + 0.5 - d_t0[j]) * d_inv_w[j]
                a = d_peak[j] * math.exp(-2.0 * x * x)
                mean_i += a
                sa = math.sqrt(a)
                fr += sa * d_re[j]
                fi += sa * d_im[j]
        lam = lam0 * (incoherent * mean_i + coherent * (fr * fr + fi * fi))
        left = lam * (1.0 - u0)
        if resid < left:
            base = step * step_ticks
            while resid < left:
                if pos == cap:
                    return step, pos, last_tick, u0, resid
                u0 += resid / lam
                left = lam * (1.0 - u0)
                off = np.int64(u0 * step_ticks)
                tick = base + (off if off < step_ticks else step_ticks - 1)
                if tick - last_tick >= dead_ticks:
                    out[pos] = tick
                    pos += 1
                    last_tick = tick
                resid = rng.standard_exponential()
        resid -= left
        u0 = 0.0
        for i in range(n_class):
            e_re[i] = e_re[i] * decay[i] + noise[i] * rng.standard_normal()
            e_im[i] = e_im[i] * decay[i] + noise[i] * rng.standard_normal()
        for j in range(n_dust):
            if d_start[j] <= step < d_end[j]:
                d_re[j] = d_re[j] * d_decay[j] + d_noise[j] * rng.standard_normal()
                d_im[j] = d_im[j] * d_decay[j] + d_noise[j] * rng.standard_normal()
        step += 1
    return step, pos, last_tick, u0, resid


@dataclass
class DustBurst:
    """One dust particle crossing the beam (see the module): when, how long, how bright, how big."""

    start_s: float
    duration_s: float
    peak_intensity_ratio: float
    diameter_nm: float
    gamma_per_s: float
    field_re: float = field(repr=False, default=0.0)
    field_im: float = field(repr=False, default=0.0)


class PhotonSimulator:
    """Photon arrival times (int64 ticks of ``resolution_s`` since the simulator's start) of
    ``sample`` seen at ``angle_deg`` with a ``wavelength_nm`` laser; see the module for the model.

    :meth:`read` continues where the last call ended; the same ``seed`` gives the same photons
    however the stream is cut into reads."""

    def __init__(self, sample: Sample, *, angle_deg: float = 90.0, wavelength_nm: float = 633.0,
                 resolution_s: float = 1e-9, beta: float = 0.9, dead_time_s: float = 0.0,
                 dust_rate_per_s: float = 0.0, dust_intensity_ratio: float = 5.0,
                 seed: int | np.random.SeedSequence | None = None, max_field_step_s: float = 1e-6,
                 classes_per_component: int = 25):
        self.sample = sample
        self.angle_deg = _number("angle_deg", angle_deg, 0.0, 180.0, lo_open=True, hi_open=True)
        self.wavelength_nm = _number("wavelength_nm", wavelength_nm, 100.0, 3000.0)
        self.resolution_s = _number("resolution_s", resolution_s, 1e-13, 1e-3)
        self.beta = _number("beta", beta, 0.0, 1.0, lo_open=True)
        self.dead_time_s = _number("dead_time_s", dead_time_s, 0.0, 1e-3)
        self.dust_rate_per_s = _number("dust_rate_per_s", dust_rate_per_s, 0.0, 1000.0)
        self.dust_intensity_ratio = _number("dust_intensity_ratio", dust_intensity_ratio, 0.0, 1e6, lo_open=True)
        max_step = _number("max_field_step_s", max_field_step_s, self.resolution_s, 1.0)
        self.count_rate_hz = float(sample.count_rate_hz)
        self.temperature_c = float(sample.temperature_c)
        self.medium_refractive_index = float(sample.medium_refractive_index)
        self.viscosity_mpa_s = sample.medium_viscosity_mpa_s
        self.q_per_m = scattering_vector_per_m(self.angle_deg, self.wavelength_nm, self.medium_refractive_index)

        diameters, numbers, intensities = [], [], []
        total = sum(c.number_fraction for c in sample.components)
        for c in sample.components:
            d, w = size_classes(c, classes_per_component)
            sigma = mie_cross_section_nm2_sr(d, c.refractive_index, self.medium_refractive_index,
                                             self.wavelength_nm, self.angle_deg)
            diameters.append(d)
            numbers.append(w * c.number_fraction / total)
            intensities.append(w * c.number_fraction / total * sigma)
        #: The size classes simulated: diameter, number fraction, intensity fraction, decay rate.
        self.diameter_nm = np.concatenate(diameters)
        self.number_fraction = np.concatenate(numbers)
        intensity = np.concatenate(intensities)
        if not np.all(np.isfinite(intensity)) or intensity.sum() <= 0:
            raise ValueError("the sample scatters no light at this angle (check the refractive indices)")
        self.intensity_fraction = intensity / intensity.sum()
        #: Mean differential cross-section per particle, nm^2/sr (number-weighted).
        self.mean_cross_section_nm2_sr = float(intensity.sum())
        self.gamma_per_s = self._gamma_per_s(self.diameter_nm)

        gamma_max = float(self.gamma_per_s.max())
        self.field_step_ticks = max(1, int(math.floor(min(1.0 / (20.0 * gamma_max), max_step) / self.resolution_s
                                                       * (1 + 1e-12))))
        self.field_step_s = self.field_step_ticks * self.resolution_s
        self.dead_ticks = int(math.ceil(self.dead_time_s / self.resolution_s - 1e-9)) if self.dead_time_s else 0
        coherent = math.sqrt(self.beta)

        self.seed = seed
        seeds = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        main, dust = seeds.spawn(2)
        self._rng = np.random.Generator(np.random.PCG64(main))
        self._dust_rng = np.random.Generator(np.random.PCG64(dust))
        dt = self.field_step_s
        self._decay = np.exp(-self.gamma_per_s * dt)
        self._noise = np.sqrt(self.intensity_fraction * -np.expm1(-2.0 * self.gamma_per_s * dt) / 2.0)
        std = np.sqrt(self.intensity_fraction / 2.0)
        self._e_re = self._rng.standard_normal(std.size) * std
        self._e_im = self._rng.standard_normal(std.size) * std
        self._coherent = coherent
        self._lam0 = self.count_rate_hz * dt
        self._step = 0
        self._u0 = 0.0
        self._resid = float(self._rng.standard_exponential())
        self._last_tick = np.int64(-(1 << 62))
        self._tick = 0
        self._carry = np.empty(0, np.int64)
        #: Dust bursts so far (the active ones and those passed).
        self.dust_bursts: list[DustBurst] = []
        self._active: list[tuple[DustBurst, int, int]] = []
        self._next_dust_s = (self._dust_rng.exponential(1.0 / self.dust_rate_per_s)
                             if self.dust_rate_per_s > 0 else math.inf)
        self.photons = 0

    def _gamma_per_s(self, diameter_nm: Any) -> np.ndarray:
        d_um2_s = stokes_einstein_diffusion_um2_s(np.atleast_1d(diameter_nm), self.temperature_c, self.viscosity_mpa_s)
        return np.asarray(d_um2_s) * 1e-12 * self.q_per_m**2

    # -- the stream ----------------------------------------------------------------------
    @property
    def tick(self) -> int:
        """Ticks delivered so far (the next read starts here)."""
        return self._tick

    @property
    def time_s(self) -> float:
        return self._tick * self.resolution_s

    def read(self, duration_s: float) -> np.ndarray:
        """The photons of the next ``duration_s`` (rounded to whole ticks): int64 ticks, ascending."""
        _number("duration_s", duration_s, 0.0, 1e6)
        return self.read_to_tick(self._tick + int(round(duration_s / self.resolution_s)))

    def read_to_tick(self, end_tick: int) -> np.ndarray:
        """The photons from the current position up to ``end_tick`` (excluded)."""
        end_tick = int(end_tick)
        if end_tick <= self._tick:
            return np.empty(0, np.int64)
        parts = []
        if self._carry.size:
            cut = int(np.searchsorted(self._carry, end_tick))
            parts.append(self._carry[:cut])
            self._carry = self._carry[cut:]
        step_end = -(-end_tick // self.field_step_ticks)
        if step_end > self._step:
            self._schedule_dust(step_end)
            fresh = self._run(step_end)
            cut = int(np.searchsorted(fresh, end_tick))
            parts.append(fresh[:cut])
            self._carry = np.concatenate([self._carry, fresh[cut:]]) if self._carry.size else fresh[cut:].copy()
        self._tick = end_tick
        out = np.concatenate(parts) if len(parts) != 1 else parts[0]
        self.photons += out.size
        return out

    def _run(self, step_end: int) -> np.ndarray:
        active = self._active
        d_start = np.array([a[1] for a in active], np.int64)
        d_end = np.array([a[2] for a in active], np.int64)
        dt = self.field_step_s
        d_t0 = np.array([(b.start_s + b.duration_s / 2) / dt for b, _, _ in active], float)
        d_inv_w = np.array([4.0 * dt / b.duration_s for b, _, _ in active], float)
        d_peak = np.array([b.peak_intensity_ratio for b, _, _ in active], float)
        d_re = np.array([b.field_re for b, _, _ in active], float)
        d_im = np.array([b.field_im for b, _, _ in active], float)
        gammas = np.array([b.gamma_per_s for b, _, _ in active], float)
        d_decay = np.exp(-gammas * dt)
        d_noise = np.sqrt(-np.expm1(-2.0 * gammas * dt) / 2.0)
        chunks = []
        mean_per_step = self._lam0 * (1.0 + sum(b.peak_intensity_ratio for b, _, _ in active))
        while self._step < step_end:
            expected = mean_per_step * (step_end - self._step)
            out = np.empty(int(min(_MAX_BATCH_PHOTONS, expected * 1.2 + 6.0 * math.sqrt(expected) + 64)), np.int64)
            step, pos, last, self._u0, self._resid = _generate(
                self._rng, self._e_re, self._e_im, self._decay, self._noise, d_start, d_end, d_t0, d_inv_w, d_peak,
                d_re, d_im, d_decay, d_noise, self._coherent, self._lam0, self.field_step_ticks, self._step, step_end,
                self.dead_ticks, self._last_tick, self._u0, self._resid, out)
            self._step, self._last_tick = int(step), np.int64(last)
            chunks.append(out[:pos])
        for k, (b, _, _) in enumerate(active):
            b.field_re, b.field_im = float(d_re[k]), float(d_im[k])
        self._active = [a for a in active if a[2] > self._step]
        return np.concatenate(chunks) if len(chunks) != 1 else chunks[0]

    def _schedule_dust(self, step_end: int) -> None:
        dt = self.field_step_s
        rng = self._dust_rng
        while self._next_dust_s < step_end * dt:
            start = self._next_dust_s
            duration = rng.uniform(*_DUST_DURATION_S)
            peak = self.dust_intensity_ratio * math.exp(rng.uniform(-1.0, 1.0) * math.log(_DUST_PEAK_SPREAD))
            diameter = math.exp(rng.uniform(math.log(_DUST_DIAMETER_NM[0]), math.log(_DUST_DIAMETER_NM[1])))
            re, im = rng.standard_normal(2) * math.sqrt(0.5)
            burst = DustBurst(start, duration, peak, diameter, float(self._gamma_per_s(diameter)[0]),
                              float(re), float(im))
            self.dust_bursts.append(burst)
            first = int(math.floor(start / dt))
            self._active.append((burst, first, int(math.ceil((start + duration) / dt))))
            self._next_dust_s = start + rng.exponential(1.0 / self.dust_rate_per_s)

    # -- the truth -----------------------------------------------------------------------
    def expected_g1(self, lag_s: Any) -> np.ndarray:
        """g1(tau) = sum_i w_i exp(-Gamma_i tau) of the simulated population (no dust)."""
        tau = np.atleast_1d(np.asarray(lag_s, dtype=float))
        return np.exp(-np.outer(tau, self.gamma_per_s)) @ self.intensity_fraction

    def expected_g2_minus_1(self, lag_s: Any) -> np.ndarray:
        """The exact model curve beta |g1(tau)|^2 (Siegert), without dust and dead time."""
        return self.beta * self.expected_g1(lag_s) ** 2

    def population_moments(self) -> dict[str, float]:
        """The truth an analysis must find: intensity-weighted mean decay rate Gamma and
        mu2 = <(Gamma - <Gamma>)^2>; Z-average = the intensity-weighted harmonic mean
        diameter (= Stokes-Einstein diameter of <Gamma>); PDI = mu2 / Gamma^2 (Koppel 1972)."""
        w, g, d = self.intensity_fraction, self.gamma_per_s, self.diameter_nm
        gamma = float(np.sum(w * g))
        mu2 = float(np.sum(w * (g - gamma) ** 2))
        mu3 = float(np.sum(w * (g - gamma) ** 3))
        n = self.number_fraction
        return {
            "z_average_nm": float(1.0 / np.sum(w / d)),
            "pdi": mu2 / gamma**2,
            "gamma_per_s": gamma,
            "mu2_per_s2": mu2,
            "mu3_per_s3": mu3,
            "diffusion_um2_s": gamma / self.q_per_m**2 * 1e12,
            "intensity_mean_diameter_nm": float(np.sum(w * d)),
            "number_mean_diameter_nm": float(np.sum(n * d) / np.sum(n)),
            "volume_mean_diameter_nm": float(np.sum(n * d**4) / np.sum(n * d**3)),
        }

    @property
    def detected_count_rate_hz(self) -> float:
        """Expected mean detected rate without dust: non-paralysable dead time tau loses
        R I / (1 + R I tau) of a rate R I, averaged over the speckle intensity
        I = (1 - f) + f X, X ~ Exp(1) (the field varies slowly compared with tau)."""
        tau = self.dead_ticks * self.resolution_s
        x, w = np.polynomial.laguerre.laggauss(60)
        rate = self.count_rate_hz * ((1.0 - self._coherent) + self._coherent * x)
        return float(np.sum(w * rate / (1.0 + rate * tau)))

    def describe(self) -> dict[str, Any]:
        moments = self.population_moments()
        return {
            "angle_deg": self.angle_deg, "wavelength_nm": self.wavelength_nm, "resolution_s": self.resolution_s,
            "count_rate_hz": self.count_rate_hz, "temperature_c": self.temperature_c,
            "viscosity_mpa_s": self.viscosity_mpa_s, "medium_refractive_index": self.medium_refractive_index,
            "q_per_nm": self.q_per_m * 1e-9, "beta": self.beta, "dead_time_s": self.dead_time_s,
            "dust_rate_per_s": self.dust_rate_per_s, "dust_intensity_ratio": self.dust_intensity_ratio,
            "field_step_s": self.field_step_s,
            "seed": self.seed if not isinstance(self.seed, np.random.SeedSequence) else None,
            "components": [{"diameter_nm": c.diameter_nm, "cv": c.cv, "number_fraction": c.number_fraction,
                            "refractive_index": c.refractive_index} for c in self.sample.components],
            "true_z_average_nm": moments["z_average_nm"], "true_pdi": moments["pdi"],
        }


def warm_up() -> None:
    """Compile the kernel now (a first read would otherwise wait ~1-2 s; cached on disk after)."""
    sim = PhotonSimulator(Sample(), seed=0, dust_rate_per_s=1000.0, dead_time_s=1e-8)
    sim.read(1e-4)


def intensity_fractions_to_number(components: Iterable[Component], intensity_fractions: Sequence[float], *,
                                  wavelength_nm: float, angle_deg: float, medium_refractive_index: float = 1.332,
                                  classes_per_component: int = 25) -> list[Component]:
    """The components with their number fractions set so that they scatter the given shares of
    the intensity at this angle (e.g. equal-intensity mixtures of 60 and 400 nm)."""
    comps = list(components)
    if len(comps) != len(intensity_fractions):
        raise ValueError("give one intensity fraction per component")
    out = []
    for c, share in zip(comps, intensity_fractions):
        d, w = size_classes(c, classes_per_component)
        sigma = float(np.sum(w * mie_cross_section_nm2_sr(d, c.refractive_index, medium_refractive_index,
                                                          wavelength_nm, angle_deg)))
        out.append(Component(c.diameter_nm, c.cv, _number("intensity fraction", share, 0, math.inf, lo_open=True)
                             / sigma, c.refractive_index))
    total = sum(c.number_fraction for c in out)
    return [Component(c.diameter_nm, c.cv, c.number_fraction / total, c.refractive_index) for c in out]
