"""A simulated nano flow cytometer: raw detector traces of particles crossing a laser, and their truth.

The model, step by step (every choice stated):

- **Sample.** Populations (:class:`Population`) of spheres or core-shell spheres
  (:class:`exoacq.flow.scatter.Particle`: EVs, silica, polystyrene), each a log-normal
  number distribution of diameters: ``diameter_nm`` is the *median* (geometric mean) and
  ``diameter_cv`` the standard deviation of ln d (the log-normal's shape; close to the relative
  SD when small), as in ``exoacq.flow.settings.SimulatedPopulation``. Diameters are clipped
  to the median x exp(+-6 cv). An EV sample of median 80 nm, cv 0.35, has 1 % of its
  particles below 35 nm and 25 % below the default detection limit (~63 nm): invisible one
  by one, together they make swarm.
- **Arrivals.** A Poisson process of rate concentration / dilution x flow rate for each
  population: particles/s = concentration_per_ml / dilution x flow_rate_ul_min x 1e-3 mL/uL
  / 60 s/min (2e10 /mL diluted x100 at 1 uL/min: 3333 /s). Detergent lysis (``lysed=True``)
  removes the populations that are not ``detergent_resistant`` (MIFlowCyt-EV's lysis control,
  Welsh et al. 2020, J. Extracell. Vesicles 9:1713526).
- **Scatter.** The collected cross-section sigma(d) of each particle (nm^2): Mie theory over the
  collection cone at the laser wavelength (:mod:`exoacq.flow.scatter`, BHCOAT for the core-shell
  EVs), looked up in a :class:`~exoacq.flow.scatter.ScatterTable` per population. Peak signal
  (detector counts above baseline) = ``scatter_gain_counts_per_nm2`` x sigma x illumination.
- **Fluorescence.** A particle is positive for a marker with probability ``positive_fraction``
  (markers independent of each other); a positive one carries MESF = ``mesf_median`` x
  (d / population median d)^2 x exp(``mesf_cv`` z), z standard normal: the number of
  antibodies grows with the membrane's area (choice stated; ``scales_with_area=False`` for
  beads with a certified MESF per bead). The marker's channel (``Cytometer.marker_channels``,
  or the channel of that name: MESF beads) receives gain x MESF x illumination counts;
  ``Cytometer.spillover[src][dst]`` of the counts of the primary channel src appear in dst
  (default FL1 -> FL2 10 %, FL2 -> FL1 2 %: AF488 into the PE channel and back).
- **Illumination.** The particle's path through the focused beam: every channel of one
  particle is multiplied by the same factor 1 + ``illumination_cv`` z (z standard normal,
  floored at 0.05).
- **Pulses.** A Gaussian in time of full width at half maximum ``transit_time_s`` centred at
  the arrival time, drawn out to +-5 sigma (exp(-12.5) = 4e-6 of the peak); sample i is at
  i / sample_rate_hz. Overlapping pulses add: coincidence and swarm are not flags, they are
  the sum.
- **Detector.** Photon shot noise: the expected signal of a sample, mu counts, is
  counts_per_photoelectron x Poisson(mu / counts_per_photoelectron); then electronic noise
  (Gaussian, ``noise_counts`` SD, which also stands for the shot noise of the constant
  background light) and the baseline offset ``baseline_counts``; rounded to integer codes and
  clipped to [-32768, ``saturation_counts``] (int16).

Traces come in contiguous blocks (:meth:`FlowSimulator.traces`): a pulse that straddles two
blocks is drawn in both, particles are generated in fixed chunks of 65536 samples and each
channel's noise comes from its own random stream, so two blocks of n samples are *identical*
to one block of 2n with the same seed. A particle is reported in the truth of the block that
holds its centre.

Defaults (:class:`Cytometer`): a nanoFCM-class 488 nm side-scatter instrument made fast to
simulate: 1 MHz sampling, 10 us transit (FWHM), 1 uL/min, noise 3 counts, 85 counts/nm^2
(the 5-sigma threshold, 15 counts, is the scatter of a ~63 nm EV core-shell sphere, and 500 nm
silica, ~29,500 counts, stays below saturation), 0.2 counts/MESF (5 sigma = 75 MESF), 0.5 counts
per photoelectron, illumination CV 3 %, baseline 100 counts, saturation 32767. The noise of
3 counts is chosen for robust estimators: the median absolute deviation of integer codes is
an integer, 2 here (sigma 2.97); at 2 counts it would be 1 (sigma 1.48, 26 % low).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from exoacq.errors import ConfigError
from exoacq.flow.scatter import Collection, Particle, ScatterTable

__all__ = ["Marker", "Population", "Cytometer", "FlowSimulator", "particles_per_s"]

#: Particles are generated in chunks of this many samples (independent of how traces are read).
_CHUNK_SAMPLES = 1 << 16
#: Pulses are drawn out to this many standard deviations of the Gaussian.
_PULSE_SIGMAS = 5.0
#: Diameters are drawn within the median x exp(+-_DIAMETER_SIGMAS x cv).
_DIAMETER_SIGMAS = 6.0
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_INT16_MIN = -32768


def _positive(where: str, value: float, allow_zero: bool = False) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and (v >= 0 if allow_zero else v > 0)):
        raise ConfigError(f"{where} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


# -- the sample -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Marker:
    """A fluorescent label: ``positive_fraction`` of the particles carry it, with a log-normal
    brightness of median ``mesf_median`` (at the population's median diameter when
    ``scales_with_area``) and spread ``mesf_cv`` (SD of ln MESF)."""

    name: str
    positive_fraction: float
    mesf_median: float
    mesf_cv: float = 0.5
    scales_with_area: bool = True

    def __post_init__(self):
        if not self.name:
            raise ConfigError("marker name must not be empty")
        if not (isinstance(self.positive_fraction, (int, float)) and 0.0 <= self.positive_fraction <= 1.0):
            raise ConfigError(f"marker {self.name}: positive_fraction must be in [0, 1], "
                              f"got {self.positive_fraction!r}")
        _positive(f"marker {self.name}: mesf_median", self.mesf_median)
        _positive(f"marker {self.name}: mesf_cv", self.mesf_cv, allow_zero=True)


@dataclass(frozen=True)
class Population:
    """Particles of one kind: log-normal diameters (median ``diameter_nm``, SD of ln d
    ``diameter_cv``) at ``concentration_per_ml`` in the undiluted sample."""

    name: str
    particle: Particle
    diameter_nm: float
    diameter_cv: float
    concentration_per_ml: float
    markers: tuple[Marker, ...] = ()
    detergent_resistant: bool = False

    def __post_init__(self):
        if not self.name:
            raise ConfigError("population name must not be empty")
        _positive(f"population {self.name}: diameter_nm", self.diameter_nm)
        _positive(f"population {self.name}: diameter_cv", self.diameter_cv, allow_zero=True)
        if self.diameter_cv > 2.0:
            raise ConfigError(f"population {self.name}: diameter_cv (SD of ln d) must be <= 2, got {self.diameter_cv}")
        _positive(f"population {self.name}: concentration_per_ml", self.concentration_per_ml, allow_zero=True)
        names = [m.name for m in self.markers]
        if len(set(names)) != len(names):
            raise ConfigError(f"population {self.name}: a marker is listed twice ({', '.join(names)})")


def particles_per_s(concentration_per_ml: float, dilution: float, flow_rate_ul_min: float) -> float:
    """Arrival rate: concentration / dilution x flow rate (1 uL = 1e-3 mL, 1 min = 60 s)."""
    return concentration_per_ml / dilution * flow_rate_ul_min * 1e-3 / 60.0


# -- the instrument ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Cytometer:
    """Optics and electronics of the simulated instrument (defaults: see the module docstring)."""

    wavelength_nm: float = 488.0
    medium_refractive_index: float = 1.333
    collection: Collection = Collection()
    flow_rate_ul_min: float = 1.0
    sample_rate_hz: float = 1e6
    transit_time_s: float = 10e-6                     # pulse FWHM
    channels: tuple[str, ...] = ("SSC", "FL1", "FL2")
    scatter_channel: str = "SSC"
    scatter_gain_counts_per_nm2: float = 85.0
    marker_channels: dict[str, str] = field(default_factory=lambda: {"CD63": "FL1", "CD81": "FL2"})
    fluorescence_gain_counts_per_mesf: dict[str, float] = field(default_factory=lambda: {"FL1": 0.2, "FL2": 0.2})
    spillover: dict[str, dict[str, float]] = field(default_factory=lambda: {"FL1": {"FL2": 0.10},
                                                                             "FL2": {"FL1": 0.02}})
    baseline_counts: float = 100.0
    noise_counts: float = 3.0                         # electronic (and background) noise, SD
    counts_per_photoelectron: float = 0.5
    illumination_cv: float = 0.03
    saturation_counts: int = 32767

    def __post_init__(self):
        for name in ("wavelength_nm", "medium_refractive_index", "flow_rate_ul_min", "sample_rate_hz",
                     "transit_time_s", "scatter_gain_counts_per_nm2", "counts_per_photoelectron"):
            _positive(f"cytometer {name}", getattr(self, name))
        for name in ("noise_counts", "illumination_cv"):
            _positive(f"cytometer {name}", getattr(self, name), allow_zero=True)
        if len(set(self.channels)) != len(self.channels) or not self.channels:
            raise ConfigError(f"cytometer channels must be distinct names, got {self.channels}")
        if self.scatter_channel not in self.channels:
            raise ConfigError(f"cytometer scatter_channel {self.scatter_channel!r} is not one of {self.channels}")
        if self.transit_time_s * self.sample_rate_hz < 2.0:
            raise ConfigError(f"cytometer transit_time_s ({self.transit_time_s:g} s) must span at least 2 samples "
                              f"at sample_rate_hz {self.sample_rate_hz:g}")
        if not (_INT16_MIN < self.baseline_counts < self.saturation_counts <= 32767):
            raise ConfigError(f"cytometer needs -32768 < baseline_counts ({self.baseline_counts}) < saturation_counts "
                              f"({self.saturation_counts}) <= 32767 (int16)")
        for marker, channel in self.marker_channels.items():
            if channel not in self.channels:
                raise ConfigError(f"cytometer marker_channels: {marker} -> {channel!r} is not one of {self.channels}")
        for channel, gain in self.fluorescence_gain_counts_per_mesf.items():
            if channel not in self.channels:
                raise ConfigError(f"cytometer fluorescence_gain_counts_per_mesf: {channel!r} is not one of "
                                  f"{self.channels}")
            _positive(f"cytometer fluorescence_gain_counts_per_mesf[{channel}]", gain)
        for src, row in self.spillover.items():
            for dst, fraction in row.items():
                if src not in self.channels or dst not in self.channels or src == dst:
                    raise ConfigError(f"cytometer spillover {src} -> {dst}: both must be distinct channels of "
                                      f"{self.channels}")
                _positive(f"cytometer spillover {src} -> {dst}", fraction, allow_zero=True)

    @property
    def pulse_sigma_samples(self) -> float:
        """Standard deviation of the Gaussian pulse, in samples (FWHM / 2.3548)."""
        return self.transit_time_s * self.sample_rate_hz / _FWHM_PER_SIGMA

    def spillover_matrix(self) -> pd.DataFrame:
        """Square spillover matrix of the fluorescence channels (rows: primary channel, columns:
        detector, diagonal 1), the layout of FCS $SPILLOVER."""
        fl = [c for c in self.channels if c in self.fluorescence_gain_counts_per_mesf]
        m = pd.DataFrame(np.eye(len(fl)), index=fl, columns=fl)
        for src, row in self.spillover.items():
            for dst, fraction in row.items():
                if src in fl and dst in fl:
                    m.loc[src, dst] = fraction
        return m


# -- the rendering kernel ---------------------------------------------------------------------
@numba.njit(cache=True)
def _render_pulses(out, first_sample, centers, peaks, sigma, half_width):  # pragma: no cover - compiled
    """Add Gaussian pulses (centres in absolute samples, peaks [n_channels, n]) into out
    [n_channels, n_samples] whose first column is absolute sample ``first_sample``."""
    n_ch, n = out.shape
    inv = 1.0 / sigma
    for p in range(centers.size):
        c = centers[p]
        lo = max(int(math.ceil(c - half_width)), first_sample)
        hi = min(int(math.floor(c + half_width)), first_sample + n - 1)
        for i in range(lo, hi + 1):
            x = (i - c) * inv
            g = math.exp(-0.5 * x * x)
            for ch in range(n_ch):
                if peaks[ch, p] != 0.0:
                    out[ch, i - first_sample] += peaks[ch, p] * g
    return out


# -- the simulator ----------------------------------------------------------------------------
class FlowSimulator:
    """Detector traces of ``populations`` flowing through ``cytometer`` (see the module docstring).

    ``rates_per_s`` (population -> particles/s after dilution and lysis), ``noise_sigma_counts``
    and ``baseline_counts`` (channel -> counts) are the figures a test needs for the true
    detection limit (:meth:`detection_limit_nm`)."""

    def __init__(self, populations: list[Population], cytometer: Cytometer | None = None, *,
                 dilution: float = 1.0, seed: int | None = None, lysed: bool = False):
        self.cytometer = cy = cytometer if cytometer is not None else Cytometer()
        _positive("dilution", dilution)
        if dilution < 1.0:
            raise ConfigError(f"dilution must be >= 1 (sample volume / total volume), got {dilution}")
        names = [p.name for p in populations]
        if len(set(names)) != len(names):
            raise ConfigError(f"population names must be distinct, got {', '.join(names)}")
        self.dilution = float(dilution)
        self.lysed = bool(lysed)
        self.populations = [p for p in populations if p.detergent_resistant or not lysed]
        self.rates_per_s = {p.name: particles_per_s(p.concentration_per_ml, dilution, cy.flow_rate_ul_min)
                            for p in self.populations}
        self.total_rate_per_s = float(sum(self.rates_per_s.values()))
        self.noise_sigma_counts = {c: float(cy.noise_counts) for c in cy.channels}
        self.baseline_counts = {c: float(cy.baseline_counts) for c in cy.channels}
        self.markers = tuple(dict.fromkeys(m.name for p in populations for m in p.markers))
        self._marker_channel = {m: self._channel_of(m) for m in self.markers}
        tables: dict = {}               # one table per particle model and diameter range
        for p in self.populations:
            key = (p.particle, self._diameter_range(p))
            tables[key] = tables.get(key) or self._table(p)
        self._tables = [tables[(p.particle, self._diameter_range(p))] for p in self.populations]
        streams = np.random.SeedSequence(seed).spawn(2 + 2 * len(cy.channels))
        self._rng = np.random.default_rng(streams[0])
        self._gauss = [np.random.default_rng(s) for s in streams[1:1 + len(cy.channels)]]
        self._shot = [np.random.default_rng(s) for s in streams[1 + len(cy.channels):1 + 2 * len(cy.channels)]]
        self._event_rng = np.random.default_rng(streams[-1])
        self._sigma = cy.pulse_sigma_samples
        self._half_width = _PULSE_SIGMAS * self._sigma
        self._next_sample = 0           # first sample of the next block
        self._generated_until = 0       # particles exist for all centres before this sample
        self._pending = self._empty()

    # -- public figures -----------------------------------------------------------------
    @property
    def time_s(self) -> float:
        """Time of the next block's first sample since the start."""
        return self._next_sample / self.cytometer.sample_rate_hz

    @property
    def samples_generated(self) -> int:
        return self._next_sample

    def expected_peak_counts(self, population: str, diameter_nm: ArrayLike) -> np.ndarray:
        """Noise-free scatter peak (counts above baseline, illumination 1) of ``population``'s
        particles of these diameters (exact Mie, not the table)."""
        from exoacq.flow.scatter import collected_cross_section_nm2
        pop = self._population(population)
        cy = self.cytometer
        cs = collected_cross_section_nm2(np.asarray(diameter_nm, dtype=float), pop.particle,
                                         wavelength_nm=cy.wavelength_nm,
                                         medium_refractive_index=cy.medium_refractive_index,
                                         collection=cy.collection)
        return cy.scatter_gain_counts_per_nm2 * cs

    def detection_limit_nm(self, population: str, threshold_counts: float) -> float:
        """Smallest diameter of ``population`` whose noise-free scatter peak (illumination 1)
        reaches ``threshold_counts`` above baseline (e.g. 5 x noise_sigma_counts["SSC"]);
        searched on the first monotone branch of the Mie curve, 1 nm to 5 um."""
        _positive("threshold_counts", threshold_counts)
        d = np.geomspace(1.0, 5000.0, 600)
        peak = self.expected_peak_counts(population, d)
        above = np.nonzero(peak >= threshold_counts)[0]
        if above.size == 0:
            return math.nan
        i = int(above[0])
        if i == 0:
            return float(d[0])
        lo, hi = d[i - 1], d[i]          # bisection in log d with exact Mie
        for _ in range(30):
            mid = math.sqrt(lo * hi)
            if self.expected_peak_counts(population, [mid])[0] >= threshold_counts:
                hi = mid
            else:
                lo = mid
        return float(math.sqrt(lo * hi))

    # -- traces ---------------------------------------------------------------------------
    def traces(self, n_samples: int) -> tuple[np.ndarray, pd.DataFrame]:
        """The next contiguous block: int16 [n_channels, n_samples] and the truth, one row per
        particle whose centre falls in the block (columns: see :meth:`truth_columns`)."""
        if not isinstance(n_samples, (int, np.integer)) or n_samples < 0:
            raise ConfigError(f"n_samples must be a non-negative integer, got {n_samples!r}")
        cy = self.cytometer
        b0 = self._next_sample
        pend, truth_cols = self._advance(int(n_samples))
        signal = np.zeros((len(cy.channels), int(n_samples)))
        stop = int(np.searchsorted(pend["center"], b0 + n_samples + self._half_width + 1, side="left"))
        if stop:
            _render_pulses(signal, b0, pend["center"][:stop], np.ascontiguousarray(pend["peaks"][:, :stop]),
                           self._sigma, self._half_width)
        return self._detect(signal), self._truth(truth_cols)

    def events(self, duration_s: float, *, threshold_counts: float | None = None,
               hysteresis: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Fast path without traces: the next ``duration_s`` as an event table and its truth.

        Every particle is measured as if alone (no coincidence, no swarm: use :meth:`traces`
        for those): ``<ch>-H`` = shot-noisy peak + electronic noise; ``<ch>-A`` = the pulse's
        area (peak x sigma x sqrt(2 pi), counts x us) with shot noise and the electronic noise
        of the samples within +-5 sigma; ``SSC-W`` (trigger channel) = the time a noise-free
        Gaussian of height H spends above ``hysteresis`` x threshold (us); ``Time`` (s);
        ``Coincident`` = 0; heights clip at saturation. Events: the particles whose
        trigger-channel height exceeds ``threshold_counts`` (default 5 x noise). The truth holds
        every particle, with a column ``detected``. Advances the same clock as :meth:`traces`."""
        _positive("duration_s", duration_s, allow_zero=True)
        cy = self.cytometer
        threshold = 5.0 * cy.noise_counts if threshold_counts is None else float(threshold_counts)
        _positive("threshold_counts", threshold)
        _, cols = self._advance(int(round(duration_s * cy.sample_rate_hz)))
        rng, cpe, n = self._event_rng, cy.counts_per_photoelectron, cols["center"].size
        width_samples = 2 * int(self._half_width) + 1
        us_per_sample = 1e6 / cy.sample_rate_hz
        table = {}
        for i, ch in enumerate(cy.channels):
            peak = cols["peaks"][i]
            area = peak * self._sigma * math.sqrt(2.0 * math.pi)
            height = cpe * rng.poisson(peak / cpe) + cy.noise_counts * rng.standard_normal(n)
            table[f"{ch}-H"] = np.minimum(height, cy.saturation_counts - cy.baseline_counts)
            table[f"{ch}-A"] = (cpe * rng.poisson(area / cpe) + cy.noise_counts * math.sqrt(width_samples)
                                * rng.standard_normal(n)) * us_per_sample
        height = table[f"{cy.scatter_channel}-H"]
        detected = height > threshold
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.log(np.maximum(height, 1e-300) / (hysteresis * threshold))
        table[f"{cy.scatter_channel}-W"] = 2.0 * self._sigma * np.sqrt(2.0 * np.maximum(ratio, 0.0)) * us_per_sample
        table["Time"] = cols["center"] / cy.sample_rate_hz
        table["Coincident"] = np.zeros(n)
        truth = self._truth(cols)
        truth["detected"] = detected
        return pd.DataFrame(table)[detected].reset_index(drop=True), truth

    def truth_columns(self) -> list[str]:
        """Columns of the truth table."""
        return (["time_s", "population", "diameter_nm", "cross_section_nm2", "illumination"]
                + [f"mesf_{m}" for m in self.markers]
                + [f"{c}_peak_counts" for c in self.cytometer.channels])

    # -- internals ------------------------------------------------------------------------
    def _advance(self, n_samples: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Move the clock by ``n_samples``: the particles whose pulses touch the block (all
        pending ones, sorted by time) and those whose centres lie in it; keep the ones whose
        pulses reach into the next block."""
        b0, b1 = self._next_sample, self._next_sample + n_samples
        chunks = [self._pending]
        while self._generated_until < b1 + self._half_width + 1:
            chunks.append(self._generate_chunk(self._generated_until))
        pend = {k: np.concatenate([c[k] for c in chunks], axis=-1) for k in self._pending}
        first, last, keep = np.searchsorted(pend["center"], [b0, b1, b1 - self._half_width - 1], side="left")
        self._pending = {k: v[..., keep:] for k, v in pend.items()}
        self._next_sample = b1
        return pend, {k: v[..., first:last] for k, v in pend.items()}

    def _channel_of(self, marker: str) -> str:
        cy = self.cytometer
        channel = cy.marker_channels.get(marker, marker if marker in cy.channels else None)
        if channel is None:
            raise ConfigError(f"marker {marker} has no channel: add it to Cytometer.marker_channels "
                              f"({', '.join(f'{k}={v}' for k, v in cy.marker_channels.items())})")
        if channel not in cy.fluorescence_gain_counts_per_mesf:
            raise ConfigError(f"marker {marker} goes to channel {channel}, which has no "
                              "fluorescence_gain_counts_per_mesf")
        return channel

    def _population(self, name: str) -> Population:
        for p in self.populations:
            if p.name == name:
                return p
        raise ConfigError(f"no population {name!r} in this simulation "
                          f"({', '.join(p.name for p in self.populations) or 'none'})")

    def _diameter_range(self, p: Population) -> tuple[float, float]:
        spread = math.exp(_DIAMETER_SIGMAS * p.diameter_cv)
        return p.diameter_nm / spread, p.diameter_nm * spread

    def _table(self, p: Population) -> ScatterTable:
        cy = self.cytometer
        lo, hi = self._diameter_range(p)
        lo, hi = lo * 0.999, hi * 1.001     # a table needs lo < hi, also for monodisperse beads
        points = int(min(400, max(16, 60 * math.log(hi / lo) + 16)))
        return ScatterTable(p.particle, wavelength_nm=cy.wavelength_nm,
                            medium_refractive_index=cy.medium_refractive_index, collection=cy.collection,
                            diameter_min_nm=lo, diameter_max_nm=hi, points=points)

    def _empty(self) -> dict[str, np.ndarray]:
        cols = {"center": np.zeros(0), "population": np.zeros(0, dtype=np.int64), "diameter_nm": np.zeros(0),
                "cross_section_nm2": np.zeros(0), "illumination": np.zeros(0),
                "peaks": np.zeros((len(self.cytometer.channels), 0))}
        cols.update({f"mesf_{m}": np.zeros(0) for m in self.markers})
        return cols

    def _generate_chunk(self, start: int) -> dict[str, np.ndarray]:
        """Particles with centres in samples [start, start + _CHUNK_SAMPLES): a Poisson number,
        uniform times (a Poisson process), each of population i with probability rate_i / total."""
        cy, rng = self.cytometer, self._rng
        self._generated_until = start + _CHUNK_SAMPLES
        if self.total_rate_per_s <= 0:
            return self._empty()
        n = int(rng.poisson(self.total_rate_per_s * _CHUNK_SAMPLES / cy.sample_rate_hz))
        centers = start + np.sort(rng.uniform(0.0, _CHUNK_SAMPLES, n))
        rates = np.array([self.rates_per_s[p.name] for p in self.populations])
        which = rng.choice(len(rates), size=n, p=rates / rates.sum())
        cols = self._empty()
        cols["center"], cols["population"] = centers, which.astype(np.int64)
        d, cs = np.zeros(n), np.zeros(n)
        mesf = {m: np.zeros(n) for m in self.markers}
        for i, (p, table) in enumerate(zip(self.populations, self._tables)):
            idx = np.nonzero(which == i)[0]
            lo, hi = self._diameter_range(p)
            d[idx] = np.clip(p.diameter_nm * np.exp(p.diameter_cv * rng.standard_normal(idx.size)), lo, hi)
            cs[idx] = table.cross_section_nm2(d[idx])
            for m in p.markers:
                positive = rng.random(idx.size) < m.positive_fraction
                value = m.mesf_median * np.exp(m.mesf_cv * rng.standard_normal(idx.size))
                if m.scales_with_area:
                    value *= (d[idx] / p.diameter_nm) ** 2
                mesf[m.name][idx] = np.where(positive, value, 0.0)
        illumination = np.maximum(1.0 + cy.illumination_cv * rng.standard_normal(n), 0.05)
        primary = {c: np.zeros(n) for c in cy.channels}
        primary[cy.scatter_channel] += cy.scatter_gain_counts_per_nm2 * cs
        for m in self.markers:
            ch = self._marker_channel[m]
            primary[ch] += cy.fluorescence_gain_counts_per_mesf[ch] * mesf[m]
        peaks = {c: v.copy() for c, v in primary.items()}
        for src, row in cy.spillover.items():
            for dst, fraction in row.items():
                peaks[dst] += fraction * primary[src]
        cols["peaks"] = np.array([peaks[c] * illumination for c in cy.channels]).reshape(len(cy.channels), n)
        cols["diameter_nm"], cols["cross_section_nm2"], cols["illumination"] = d, cs, illumination
        cols.update({f"mesf_{m}": v for m, v in mesf.items()})
        return cols

    def _detect(self, signal: np.ndarray) -> np.ndarray:
        """Shot noise (Poisson photoelectrons), electronic noise, baseline, int16 codes."""
        cy = self.cytometer
        out = np.empty(signal.shape, dtype=np.int16)
        cpe = cy.counts_per_photoelectron
        for ch in range(signal.shape[0]):
            x = signal[ch]
            lit = np.nonzero(x > 0)[0]
            if lit.size:
                x[lit] = cpe * self._shot[ch].poisson(x[lit] / cpe)
            x += cy.baseline_counts + cy.noise_counts * self._gauss[ch].standard_normal(x.size)
            np.rint(x, out=x)
            np.clip(x, _INT16_MIN, cy.saturation_counts, out=x)
            out[ch] = x
        return out

    def _truth(self, cols: dict[str, np.ndarray]) -> pd.DataFrame:
        cy = self.cytometer
        names = np.array([p.name for p in self.populations] or [""], dtype=object)
        data = {"time_s": cols["center"] / cy.sample_rate_hz,
                "population": names[cols["population"]] if cols["population"].size else np.zeros(0, dtype=object),
                "diameter_nm": cols["diameter_nm"], "cross_section_nm2": cols["cross_section_nm2"],
                "illumination": cols["illumination"]}
        data.update({f"mesf_{m}": cols[f"mesf_{m}"] for m in self.markers})
        data.update({f"{c}_peak_counts": cols["peaks"][i] for i, c in enumerate(cy.channels)})
        return pd.DataFrame(data, columns=self.truth_columns())
