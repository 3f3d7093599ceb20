"""The simulated NTA instrument's sample (exoacq.drivers.simulated_nta), and the range checks its parts share.

Brownian motion: per-axis displacement N(0, 2 D dt), D from Stokes-Einstein (Einstein 1905) with the
IAPWS 2008 viscosity of water at the sample temperature (exoacq.physics), in a periodic 3-D box.
Coordinates in um, origin at the image centre and the sheet centre.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from exoacq.physics import stokes_einstein_diffusion_um2_s, water_viscosity_iapws_mpa_s


def check(name: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} = {value} is out of range; allowed: {allowed}")


def positive(name: str, value: Any, *, zero_ok: bool = False) -> float:
    v = float(value)
    check(name, value, math.isfinite(v) and (v >= 0.0 if zero_ok else v > 0.0), ">= 0" if zero_ok else "> 0")
    return v


def int_in(name: str, value: Any, lo: int, hi: int) -> int:
    check(name, value, isinstance(value, (int, np.integer)) and lo <= value <= hi, f"an integer {lo}..{hi}")
    return int(value)


def recorded_seed(seed: int | None) -> int:
    """A recorded seed: the one given, or fresh entropy (kept so a run can be replayed)."""
    return int(np.random.SeedSequence().entropy) if seed is None else int(seed)


@dataclass
class SampleComponent:
    """Spheres; ``cv``: relative SD of a log-normal spread around the mean ``diameter_nm``."""

    diameter_nm: float
    cv: float = 0.0
    number_fraction: float = 1.0
    refractive_index: float = 1.59

    def __post_init__(self) -> None:
        positive("diameter_nm", self.diameter_nm)
        check("cv", self.cv, math.isfinite(float(self.cv)) and 0.0 <= self.cv <= 3.0, "0..3")
        positive("number_fraction", self.number_fraction)
        positive("refractive_index", self.refractive_index)


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
        check("components", components, len(components) > 0, "at least one SampleComponent")
        self.components = list(components)
        self.concentration_per_ml = positive("concentration_per_ml", concentration_per_ml, zero_ok=True)
        self.contamination = list(contamination)
        self.contamination_per_ml = positive("contamination_per_ml", contamination_per_ml, zero_ok=True)
        check("contamination", contamination, self.contamination_per_ml == 0.0 or len(self.contamination) > 0,
               "at least one SampleComponent when contamination_per_ml > 0")
        check("box_um", box_um, len(box_um) == 3, "three lengths (x, y, z) in um")
        self.box_um = tuple(positive(f"box_um[{i}]", b) for i, b in enumerate(box_um))
        check("drift_um_s", drift_um_s, len(drift_um_s) == 2 and all(map(math.isfinite, drift_um_s)),
               "two finite velocities (x, y) in um/s")
        self.drift_um_s = (float(drift_um_s[0]), float(drift_um_s[1]))
        self.medium_index = positive("medium_index", medium_index)
        self.temperature_c = temperature_c
        self.seed = self.tube_seed = recorded_seed(seed)
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
        self.tube_seed = recorded_seed(seed) if seed is not None else int(
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
        check("diameters_nm", diameters_nm, bool(np.all(d > 0)), "all > 0")
        pos = np.array(positions_um, dtype=float).reshape(-1, 3)
        check("positions_um", f"{len(pos)} rows", len(pos) == len(d), f"one (x, y, z) row per diameter ({len(d)})")
        sample = cls([SampleComponent(float(d.mean()) if d.size else 100.0, refractive_index=refractive_index)],
                     0.0, box_um=box_um, **kwargs)
        sample._set(pos, d, np.full(len(d), positive("refractive_index", refractive_index)))
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
        check("temperature_c", value, math.isfinite(v) and 0.0 < v < 100.0, "0..100 degC (liquid water)")
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
        check("dt_s", dt_s, math.isfinite(dt) and dt >= 0.0, ">= 0 s")
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
