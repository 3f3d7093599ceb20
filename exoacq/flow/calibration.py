"""Calibrated scatter (diameter, nm) and fluorescence (MESF) for nano flow cytometry.

Scatter (FCMPASS-like: Welsh et al. 2020, Cytometry A 97:569, "FCMPASS software aids
extracellular vesicle light scatter standardization"; van der Pol et al. 2018, J. Thromb.
Haemost. 16:1236): the median scatter of each bead population of a bead set of known
diameter and refractive index is modelled as

    scatter_au = gain_au_per_nm2 x collected cross-section (Mie, exoacq.flow.scatter)

The gain is the least-squares fit in log space (the geometric-mean ratio measured / model).
When asked (``fit_geometry``) and the beads can tell (at least 3 beads, and beads beyond the
Rayleigh regime or of more than one refractive index), the collection half-angle is fitted too,
on a 2.5-degree grid from 5 to 70 degrees refined to 0.01 degree; a flat cost profile (Rayleigh
beads only) keeps the guess. Residuals are reported in percent per bead. Sample scatter is
then converted to diameter with the stated particle model (EV core-shell by default) on the
first monotone branch of its scatter curve (``ScatterCalibration.diameter_nm``).

Fluorescence (MESF: Schwartz et al. 2002, J. Res. Natl. Inst. Stand. Technol. 107:83;
MIFlowCyt-EV, Welsh et al. 2020): a straight line in log-log space through the ladder's
(a.u., MESF) medians; the blank (MESF 0) is left out.

Bead populations in a bead-mix acquisition (``bead_medians``): a 1-D Gaussian mixture on
log10(values), fitted by EM on a fine histogram (Dempster, Laird & Rubin 1977), started at
the histogram's highest peaks; each event goes to its most probable population and the
median of each population (within 3 sigma of its centre) is reported.

A ``FlowCalibration`` is stored as TOML (written by hand here; read with tomllib).
"""
from __future__ import annotations

import datetime
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from exoacq.errors import ExoacqError
from exoacq.flow.scatter import (Collection, Particle, ScatterTable, collected_cross_section_nm2,
                                 polystyrene, silica)
from exoacq.textfile import read_text_file

HALF_ANGLE_GRID_DEG = np.arange(5.0, 70.5, 2.5)
RAYLEIGH_LIMIT_SIZE_PARAMETER = 2.0   # pi n d / lambda above which the geometry shapes the bead curve
#: Refractive indices a calibration's particles may have (real part; water 1.33, EVs ~1.37-1.45, silica 1.45,
#: polystyrene 1.59, titania 2.6): beyond, Mie theory's series no longer converge in reasonable time.
REFRACTIVE_INDEX_RANGE = (1.0, 4.0)


@dataclass
class BeadPoint:
    """Median scatter (a.u.) of one bead population of known diameter and material."""

    diameter_nm: float
    particle: Particle
    scatter_au: float


@dataclass
class ScatterCalibration:
    parameter: str
    wavelength_nm: float
    medium_refractive_index: float
    collection: Collection
    gain_au_per_nm2: float
    particle: Particle
    beads: list[BeadPoint]
    residuals_percent: list[float]
    geometry_fitted: bool = False
    diameter_min_nm: float = 10.0
    diameter_max_nm: float = 1000.0
    _table: ScatterTable | None = field(default=None, init=False, repr=False, compare=False)

    def table(self) -> ScatterTable:
        """Lookup table of the sample model (built once, ~0.1 s)."""
        if self._table is None:
            self._table = ScatterTable(self.particle, wavelength_nm=self.wavelength_nm,
                                       medium_refractive_index=self.medium_refractive_index,
                                       collection=self.collection, diameter_min_nm=self.diameter_min_nm,
                                       diameter_max_nm=self.diameter_max_nm, points=500)
        return self._table

    def diameter_nm(self, scatter_au: ArrayLike) -> np.ndarray:
        """Diameter (nm) of the sample model; NaN where not invertible (<= 0, outside the table)."""
        return self.table().diameter_nm(np.asarray(scatter_au, dtype=float) / self.gain_au_per_nm2)

    def scatter_au(self, diameter_nm: ArrayLike) -> np.ndarray:
        """Forward model: expected scatter (a.u.) of the sample model at these diameters (exact Mie,
        ~0.3 ms per distinct diameter; for millions of values use ``table().cross_section_nm2``)."""
        return self.gain_au_per_nm2 * collected_cross_section_nm2(
            diameter_nm, self.particle, wavelength_nm=self.wavelength_nm,
            medium_refractive_index=self.medium_refractive_index, collection=self.collection)


@dataclass
class FluorescenceCalibration:
    parameter: str
    fluorochrome: str
    slope: float
    intercept: float
    beads: list[tuple[float, float]]

    def mesf(self, values_au: ArrayLike) -> np.ndarray:
        """log10(MESF) = intercept + slope x log10(a.u.); NaN for values <= 0."""
        v = np.asarray(values_au, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = 10.0 ** (self.intercept + self.slope * np.log10(v))
        return np.where(v > 0, out, np.nan)


@dataclass
class FlowCalibration:
    scatter: ScatterCalibration | None
    fluorescence: dict[str, FluorescenceCalibration]
    created: str
    source: str
    provenance: dict
    expires: str | None = None
    #: Spillover between fluorescence detectors (rows: the fluorochrome's own detector, columns: where its
    #: light is also seen; diagonal 1), measured on single-stained beads; None: not measured.
    spillover: pd.DataFrame | None = None
    #: The trigger detector's baseline and noise while the beads ran (``channel``, ``baseline_counts``,
    #: ``noise_counts``, and the digitizer's ``volts_per_count`` when known): the reference a sample's
    #: baseline is checked against (swarm raises it), and the scale its heights are valid at.
    detector: dict | None = None

    def to_toml(self) -> str:
        lines = ["# exoacq nano flow cytometry calibration (exoacq.flow.calibration)", "",
                 "[calibration]", 'kind = "flow"', f"created = {_toml_value(self.created)}",
                 f"source = {_toml_value(self.source)}"]
        if self.expires is not None:
            lines.append(f"expires = {_toml_value(self.expires)}")
        lines += ["", "[provenance]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in self.provenance.items()]
        s = self.scatter
        if s is not None:
            lines += ["", "[scatter]", f"parameter = {_toml_value(s.parameter)}",
                      f"wavelength_nm = {_toml_value(float(s.wavelength_nm))}",
                      f"medium_refractive_index = {_toml_value(float(s.medium_refractive_index))}",
                      f"gain_au_per_nm2 = {_toml_value(float(s.gain_au_per_nm2))}",
                      f"geometry_fitted = {_toml_value(s.geometry_fitted)}",
                      f"residuals_percent = {_toml_value([float(r) for r in s.residuals_percent])}",
                      f"diameter_min_nm = {_toml_value(float(s.diameter_min_nm))}",
                      f"diameter_max_nm = {_toml_value(float(s.diameter_max_nm))}",
                      "", "[scatter.collection]",
                      f"center_deg = {_toml_value(float(s.collection.center_deg))}",
                      f"half_angle_deg = {_toml_value(float(s.collection.half_angle_deg))}",
                      f"polarization = {_toml_value(s.collection.polarization)}",
                      "", "[scatter.particle]  # the model applied to samples"] + _particle_lines(s.particle)
            for bead in s.beads:
                lines += ["", "[[scatter.beads]]", f"diameter_nm = {_toml_value(float(bead.diameter_nm))}",
                          f"scatter_au = {_toml_value(float(bead.scatter_au))}"] + _particle_lines(bead.particle)
        for name, f in self.fluorescence.items():
            lines += ["", f"[fluorescence.{_toml_key(name)}]", f"fluorochrome = {_toml_value(f.fluorochrome)}",
                      f"slope = {_toml_value(float(f.slope))}", f"intercept = {_toml_value(float(f.intercept))}",
                      f"beads_au = {_toml_value([float(a) for a, _ in f.beads])}",
                      f"beads_mesf = {_toml_value([float(m) for _, m in f.beads])}"]
        if self.detector is not None:
            lines += ["", "[detector]  # the trigger channel's baseline while the beads ran"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in self.detector.items()]
        if self.spillover is not None:
            lines += ["", "[spillover]  # rows: a fluorochrome's own detector; columns: the detectors it is seen in",
                      f"parameters = {_toml_value([str(c) for c in self.spillover.columns])}",
                      f"matrix = {_toml_value([[float(v) for v in row] for row in self.spillover.to_numpy()])}"]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str, source: str = "") -> "FlowCalibration":
        where = source or "calibration"
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ExoacqError(f"{where}: not valid TOML: {e}", code="bad_calibration") from None
        r = _Reader(doc, where)
        head = r.table("calibration")
        kind = r.get(head, "calibration", "kind", str)
        if kind != "flow":
            raise ExoacqError(f"{where}: key calibration.kind: expected 'flow', got {kind!r}", code="bad_calibration")
        scatter = None
        if "scatter" in doc:
            st = r.table("scatter")
            col = r.get(st, "scatter", "collection", dict)
            try:
                collection = Collection(r.number(col, "scatter.collection", "center_deg"),
                                        r.number(col, "scatter.collection", "half_angle_deg"),
                                        r.get(col, "scatter.collection", "polarization", str))
            except ExoacqError as e:
                raise ExoacqError(f"{where}: [scatter.collection]: {e}", code="bad_calibration") from None
            beads_raw = r.get(st, "scatter", "beads", list, default=[])
            for i, b in enumerate(beads_raw):
                if not isinstance(b, dict):
                    r.fail(f"scatter.beads[{i}]", "expected a table")
            beads = [BeadPoint(r.number(b, f"scatter.beads[{i}]", "diameter_nm"),
                               r.particle(b, f"scatter.beads[{i}]"), r.number(b, f"scatter.beads[{i}]", "scatter_au"))
                     for i, b in enumerate(beads_raw)]
            gain = r.number(st, "scatter", "gain_au_per_nm2")
            if not gain > 0:
                raise ExoacqError(f"{where}: key scatter.gain_au_per_nm2 must be > 0, got {gain}", code="bad_calibration")
            scatter = ScatterCalibration(
                parameter=r.get(st, "scatter", "parameter", str),
                wavelength_nm=r.number(st, "scatter", "wavelength_nm", within=(100.0, 3000.0)),
                medium_refractive_index=r.number(st, "scatter", "medium_refractive_index", within=(1.0, 3.0)),
                collection=collection, gain_au_per_nm2=gain,
                particle=r.particle(r.get(st, "scatter", "particle", dict), "scatter.particle"),
                beads=beads, residuals_percent=[float(v) for v in r.get(st, "scatter", "residuals_percent", list,
                                                                        default=[])],
                geometry_fitted=r.get(st, "scatter", "geometry_fitted", bool, default=False),
                diameter_min_nm=r.number(st, "scatter", "diameter_min_nm", default=10.0),
                diameter_max_nm=r.number(st, "scatter", "diameter_max_nm", default=1000.0))
        fluorescence = {}
        for name, ft in r.get(doc, "", "fluorescence", dict, default={}).items():
            key = f"fluorescence.{name}"
            if not isinstance(ft, dict):
                raise ExoacqError(f"{where}: key {key} must be a table", code="bad_calibration")
            au, mesf = r.get(ft, key, "beads_au", list, default=[]), r.get(ft, key, "beads_mesf", list, default=[])
            if len(au) != len(mesf):
                raise ExoacqError(f"{where}: keys {key}.beads_au and beads_mesf differ in length", code="bad_calibration")
            fluorescence[name] = FluorescenceCalibration(
                name, r.get(ft, key, "fluorochrome", str), r.number(ft, key, "slope"), r.number(ft, key, "intercept"),
                [(float(a), float(m)) for a, m in zip(au, mesf)])
        expires = head.get("expires")
        spillover = None
        if "spillover" in doc:
            sp = r.table("spillover")
            names = [str(n) for n in r.get(sp, "spillover", "parameters", list)]
            try:
                matrix = np.array(r.get(sp, "spillover", "matrix", list), dtype=float)
            except (TypeError, ValueError):
                matrix = np.zeros((0, 0))
            if matrix.shape != (len(names), len(names)) or not np.all(np.isfinite(matrix)):
                raise ExoacqError(f"{where}: key spillover.matrix must be a {len(names)} x {len(names)} matrix of "
                                  "numbers (one row per parameter)", code="bad_calibration")
            if names and np.linalg.cond(matrix) > 1e12:  # compensation solves with it
                raise ExoacqError(f"{where}: key spillover.matrix is singular: compensation cannot undo it (each "
                                  "parameter's own detector has 1 on the diagonal)", code="bad_calibration")
            spillover = pd.DataFrame(matrix, index=names, columns=names)
        detector = None
        if "detector" in doc:
            dt = r.table("detector")
            detector = {"channel": r.get(dt, "detector", "channel", str),
                        "baseline_counts": r.number(dt, "detector", "baseline_counts"),
                        "noise_counts": r.number(dt, "detector", "noise_counts")}
            if "volts_per_count" in dt:
                detector["volts_per_count"] = r.number(dt, "detector", "volts_per_count")
            if not detector["noise_counts"] > 0:
                raise ExoacqError(f"{where}: key detector.noise_counts must be > 0", code="bad_calibration")
        return cls(scatter=scatter, fluorescence=fluorescence, created=str(r.get(head, "calibration", "created", object)),
                   source=str(head.get("source", source)), provenance=dict(r.get(doc, "", "provenance", dict, default={})),
                   expires=None if expires is None else str(expires), spillover=spillover, detector=detector)


def load_calibration(path) -> FlowCalibration:
    """Read a flow calibration TOML file; one-line ExoacqError naming the file and key when bad."""
    p = Path(path)
    try:
        text = read_text_file(p)
    except (OSError, UnicodeDecodeError) as e:
        raise ExoacqError(f"{p}: cannot read calibration: {e.__class__.__name__}: {e}", code="bad_calibration") from None
    return FlowCalibration.from_toml(text, source=str(p))


# ---------------------------------------------------------------------------------------------- fits

def fit_scatter(beads: list[BeadPoint], *, parameter: str, wavelength_nm: float, medium_refractive_index: float,
                collection_guess: Collection, particle: Particle, fit_geometry: bool = True) -> ScatterCalibration:
    """Fit the gain (and, when the beads allow, the collection half-angle) to bead medians (see the module)."""
    from scipy.optimize import minimize_scalar  # here, not at the top: a daemon reads calibrations at start

    if len(beads) < 2:
        raise ExoacqError(f"fit_scatter({parameter}): need at least 2 bead populations, got {len(beads)}",
                          code="bad_calibration")
    for b in beads:
        if not (math.isfinite(b.scatter_au) and b.scatter_au > 0 and b.diameter_nm > 0):
            raise ExoacqError(f"fit_scatter({parameter}): bead {b.diameter_nm} nm has scatter {b.scatter_au}: "
                              "needs a positive median", code="bad_calibration")
    log_measured = np.log([b.scatter_au for b in beads])

    groups: dict[Particle, list[int]] = {}
    for i, b in enumerate(beads):
        groups.setdefault(b.particle, []).append(i)

    def model_nm2(half_angle_deg: float) -> np.ndarray:
        col = Collection(collection_guess.center_deg, half_angle_deg, collection_guess.polarization)
        out = np.empty(len(beads))
        for bead_particle, index in groups.items():   # one Mie call per material
            out[index] = collected_cross_section_nm2([beads[i].diameter_nm for i in index], bead_particle,
                                                     wavelength_nm=wavelength_nm,
                                                     medium_refractive_index=medium_refractive_index, collection=col)
        return out

    def cost(half_angle_deg: float) -> float:
        r = log_measured - np.log(model_nm2(half_angle_deg))
        return float(np.sum((r - r.mean()) ** 2))

    half_angle = collection_guess.half_angle_deg
    fitted = False
    size_parameter = math.pi * medium_refractive_index * max(b.diameter_nm for b in beads) / wavelength_nm
    distinct_ri = len({round(b.particle.refractive_index, 4) for b in beads})
    if fit_geometry and len(beads) >= 3 and (size_parameter >= RAYLEIGH_LIMIT_SIZE_PARAMETER or distinct_ri > 1):
        grid = np.array([cost(h) for h in HALF_ANGLE_GRID_DEG])
        spread = float(np.sqrt(grid.max() / len(beads)) - np.sqrt(grid.min() / len(beads)))
        if spread > 1e-3:   # the profile is not flat: the beads see the geometry
            i = int(np.argmin(grid))
            lo, hi = HALF_ANGLE_GRID_DEG[max(i - 1, 0)], HALF_ANGLE_GRID_DEG[min(i + 1, grid.size - 1)]
            half_angle = float(minimize_scalar(cost, bounds=(lo, hi), method="bounded",
                                               options={"xatol": 0.01}).x)
            fitted = True
    collection = Collection(collection_guess.center_deg, half_angle, collection_guess.polarization)
    model = model_nm2(half_angle)
    gain = float(np.exp(np.mean(log_measured - np.log(model))))
    residuals = [float(100.0 * (b.scatter_au / (gain * m) - 1.0)) for b, m in zip(beads, model)]
    return ScatterCalibration(parameter=parameter, wavelength_nm=wavelength_nm,
                              medium_refractive_index=medium_refractive_index, collection=collection,
                              gain_au_per_nm2=gain, particle=particle, beads=list(beads),
                              residuals_percent=residuals, geometry_fitted=fitted)


def fit_fluorescence(parameter: str, fluorochrome: str, values_au: ArrayLike, mesf: ArrayLike) -> FluorescenceCalibration:
    """Straight line log10(MESF) = intercept + slope log10(a.u.) through a bead ladder (blank excluded)."""
    au = np.asarray(values_au, dtype=float).ravel()
    m = np.asarray(mesf, dtype=float).ravel()
    if au.size != m.size:
        raise ExoacqError(f"fit_fluorescence({parameter}): {au.size} values but {m.size} MESF", code="bad_calibration")
    use = (au > 0) & (m > 0) & np.isfinite(au) & np.isfinite(m)
    if use.sum() < 2 or np.unique(au[use]).size < 2:
        raise ExoacqError(f"fit_fluorescence({parameter}): need 2 or more ladder populations with positive "
                          f"a.u. and MESF, got {int(use.sum())}", code="bad_calibration")
    slope, intercept = np.polyfit(np.log10(au[use]), np.log10(m[use]), 1)
    return FluorescenceCalibration(parameter, fluorochrome, float(slope), float(intercept),
                                   [(float(a), float(b)) for a, b in zip(au[use], m[use])])


def bead_medians(table: pd.DataFrame, parameter: str, populations: int, *, min_value: float = 0.0,
                 bins: int = 1024, iterations: int = 200, model_au: ArrayLike | None = None) -> list[float]:
    """Medians (ascending) of ``populations`` bead populations in one column of an event table
    (1-D Gaussian mixture in log10 space, see the module). Values <= ``min_value`` are ignored:
    set it above the noise events near the trigger threshold, which are no bead population.
    Each median is over the events assigned to the population and within 3 sigma of its centre.

    ``model_au``: the populations' expected scatter up to a common factor (Mie theory at the
    guessed geometry); the mixture then starts where the model, shifted by the factor that
    explains the data best, puts them, so that overlapping neighbours (80 and 100 nm beads)
    are not merged while one broad population is split."""
    if parameter not in table.columns:
        raise ExoacqError(f"bead_medians: no parameter {parameter!r} in the events "
                          f"(have {', '.join(map(str, table.columns))})", code="bad_calibration")
    values = np.asarray(table[parameter], dtype=float)
    values = values[np.isfinite(values) & (values > max(min_value, 0.0))]
    if populations < 1 or values.size < 20 * populations:
        raise ExoacqError(f"bead_medians({parameter}): {values.size} positive events are too few for "
                          f"{populations} populations", code="bad_calibration")
    logs = np.log10(values)
    lo, hi = float(logs.min()), float(logs.max())
    if hi - lo < 1e-9:
        hi = lo + 1e-3
    counts, edges = np.histogram(logs, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    if model_au is not None:
        means = _guided_means(logs, np.log10(np.asarray(model_au, dtype=float)), populations)
        sigmas = np.full(populations, 0.1)
    else:
        means = _initial_means(counts, centres, populations)
        sigmas = np.full(populations, max((hi - lo) / (4.0 * populations), 3 * width))
    weights = np.full(populations, 1.0 / populations)
    for _ in range(iterations):   # EM on the histogram (counts as weights)
        resp = _responsibilities(centres, means, sigmas, weights)
        nk = resp @ counts + 1e-12
        new_means = (resp @ (counts * centres)) / nk
        sigmas = np.sqrt((resp * (centres[None, :] - new_means[:, None]) ** 2) @ counts / nk + width**2 / 12)
        weights = nk / nk.sum()
        converged = np.max(np.abs(new_means - means)) < 1e-6
        means = new_means
        if converged:
            break
    label_of_bin = np.argmax(_responsibilities(centres, means, sigmas, weights), axis=0)
    labels = label_of_bin[np.clip(((logs - lo) / width).astype(int), 0, bins - 1)]
    core = np.abs(logs - means[labels]) <= 3.0 * sigmas[labels]
    medians = [float(np.median(values[(labels == k) & core])) for k in range(populations)
               if np.any((labels == k) & core)]
    if len(medians) < populations:
        raise ExoacqError(f"bead_medians({parameter}): found only {len(medians)} of {populations} populations",
                          code="bad_calibration")
    return sorted(medians)


def _initial_means(counts: np.ndarray, centres: np.ndarray, populations: int) -> np.ndarray:
    """Start EM at the highest peaks of the smoothed histogram, filled up with quantiles."""
    from scipy.signal import find_peaks  # here, not at the top: scipy.signal's import takes ~0.5 s

    kernel = np.exp(-0.5 * (np.arange(-12, 13) / 4.0) ** 2)
    smooth = np.convolve(counts, kernel / kernel.sum(), mode="same")
    peaks, _ = find_peaks(np.concatenate([[0.0], smooth, [0.0]]), prominence=smooth.max() * 0.01)
    peaks = peaks - 1
    best = peaks[np.argsort(smooth[peaks])[::-1][:populations]]
    means = list(centres[np.sort(best)])
    if len(means) < populations:
        cdf = np.cumsum(counts) / counts.sum()
        quantiles = (np.arange(populations) + 0.5) / populations
        extra = [centres[np.searchsorted(cdf, q)] for q in quantiles]
        means += [e for e in extra if min(abs(e - m) for m in means or [np.inf]) > 0][: populations - len(means)]
    return np.sort(np.array(means[:populations], dtype=float))


def _guided_means(logs: np.ndarray, model_log: np.ndarray, populations: int) -> np.ndarray:
    """The model's positions (log10) shifted by the common offset that maximises the likelihood of
    the data under an equal-weight mixture (0.15-decade spread), searched on a 0.01-decade grid."""
    if model_log.size != populations or not np.all(np.isfinite(model_log)):
        raise ExoacqError(f"bead_medians: model_au needs {populations} positive values", code="bad_calibration")
    offsets = np.arange(logs.min() - model_log.max() - 0.5, logs.max() - model_log.min() + 0.5, 0.01)
    sample = logs if logs.size <= 20_000 else np.random.default_rng(0).choice(logs, 20_000, replace=False)
    best, best_ll = 0.0, -np.inf
    for offset in offsets:
        z = (sample[None, :] - (model_log + offset)[:, None]) / 0.15
        ll = float(np.sum(np.log(np.exp(-0.5 * z * z).sum(axis=0) + 1e-300)))
        if ll > best_ll:
            best, best_ll = float(offset), ll
    return np.sort(model_log + best)


def _responsibilities(x, means, sigmas, weights) -> np.ndarray:
    z = (x[None, :] - means[:, None]) / sigmas[:, None]
    log_p = np.log(weights)[:, None] - np.log(sigmas)[:, None] - 0.5 * z**2
    log_p -= log_p.max(axis=0, keepdims=True)
    p = np.exp(log_p)
    return p / p.sum(axis=0, keepdims=True)


# ------------------------------------------------------------------------------------- bead standards

@dataclass
class BeadSet:
    """A bead standard from ``calibrations/flow/*.toml``: scatter sizes or an MESF ladder, with its lot."""

    name: str
    kind: str                        # "flow.beads.scatter" or "flow.beads.mesf"
    lot: str
    nominal: bool
    material: str
    diameters_nm: list[float]
    mesf: dict[str, list[float]]     # fluorochrome -> MESF of each population (blank first when present)
    provenance: dict
    colloidal_offset: float = -0.025
    diameter_cv_percent: list[float] = field(default_factory=list)

    def particle(self, wavelength_nm: float) -> Particle:
        if self.material == "silica":
            return silica(wavelength_nm, self.colloidal_offset)
        if self.material == "polystyrene":
            return polystyrene(wavelength_nm)
        raise ExoacqError(f"bead set {self.name!r}: no refractive-index model for material {self.material!r}",
                          code="bad_calibration")

    def bead_points(self, scatter_au: list[float], wavelength_nm: float) -> list[BeadPoint]:
        if len(scatter_au) != len(self.diameters_nm):
            raise ExoacqError(f"bead set {self.name!r} has {len(self.diameters_nm)} sizes, got {len(scatter_au)} "
                              "medians", code="bad_calibration")
        p = self.particle(wavelength_nm)
        return [BeadPoint(d, p, s) for d, s in zip(self.diameters_nm, scatter_au)]


def load_bead_set(path) -> BeadSet:
    p = Path(path)
    try:
        doc = tomllib.loads(read_text_file(p))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ExoacqError(f"{p}: cannot read bead set: {e}", code="bad_calibration") from None
    r = _Reader(doc, str(p))
    st = r.table("standard")
    kind = r.get(st, "standard", "kind", str)
    if kind not in ("flow.beads.scatter", "flow.beads.mesf"):
        raise ExoacqError(f"{p}: key standard.kind: expected flow.beads.scatter or flow.beads.mesf, got {kind!r}",
                          code="bad_calibration")
    diameters = [float(v) for v in r.get(st, "standard", "diameters_nm", list, default=[])]
    mesf = {str(k): [float(x) for x in v] for k, v in r.get(doc, "", "mesf", dict, default={}).items()}
    if kind == "flow.beads.scatter" and not diameters:
        raise ExoacqError(f"{p}: key standard.diameters_nm is missing or empty", code="bad_calibration")
    if kind == "flow.beads.mesf" and not mesf:
        raise ExoacqError(f"{p}: table [mesf] is missing or empty", code="bad_calibration")
    return BeadSet(name=r.get(st, "standard", "name", str), kind=kind, lot=r.get(st, "standard", "lot", str),
                   nominal=r.get(st, "standard", "nominal", bool), material=r.get(st, "standard", "material", str),
                   diameters_nm=diameters, mesf=mesf, provenance=dict(doc.get("provenance", {})),
                   colloidal_offset=r.number(st, "standard", "colloidal_offset", default=-0.025),
                   diameter_cv_percent=[float(v) for v in r.get(st, "standard", "diameter_cv_percent", list,
                                                                  default=[])])


# ------------------------------------------------------------------------------------------ TOML I/O

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_value(str(key))


def _toml_value(value) -> str:
    """A TOML value for str, bool, int, float (inf/nan included), lists and (inline) tables of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (datetime.date, datetime.time)):   # datetime is a date too: TOML date-times
        return value.isoformat()
    if isinstance(value, (np.floating, np.integer)):
        return _toml_value(value.item())
    raise ExoacqError(f"cannot write {type(value).__name__} value {value!r} to TOML", code="bad_calibration")


def _particle_lines(p: Particle) -> list[str]:
    lines = [f"refractive_index = {_toml_value(float(p.refractive_index))}"]
    if p.shell_refractive_index is not None:
        lines += [f"shell_refractive_index = {_toml_value(float(p.shell_refractive_index))}",
                  f"shell_thickness_nm = {_toml_value(float(p.shell_thickness_nm))}"]
    return lines + [f"name = {_toml_value(p.name)}"]


class _Reader:
    """Typed access to a parsed TOML document with one-line errors naming file and key."""

    def __init__(self, doc: dict, where: str):
        self.doc, self.where = doc, where

    def fail(self, key: str, what: str):
        raise ExoacqError(f"{self.where}: key {key}: {what}", code="bad_calibration")

    def table(self, name: str) -> dict:
        return self.get(self.doc, "", name, dict)

    def get(self, table: dict, prefix: str, key: str, kind, default=...):
        full = f"{prefix}.{key}" if prefix else key
        if key not in table:
            if default is ...:
                self.fail(full, "missing")
            return default
        value = table[key]
        if kind is not object and not isinstance(value, kind):
            self.fail(full, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    def number(self, table: dict, prefix: str, key: str, default=..., within: tuple[float, float] | None = None
               ) -> float:
        """A finite number; with ``within`` (low, high), in that physical range (both included)."""
        value = self.get(table, prefix, key, object, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"{prefix}.{key}", f"expected a finite number, got {value!r}")
        if within is not None and not within[0] <= value <= within[1]:
            self.fail(f"{prefix}.{key}", f"{value!r} is out of range: from {within[0]:g} to {within[1]:g}")
        return float(value)

    def particle(self, table: dict, prefix: str) -> Particle:
        if not isinstance(table, dict):
            self.fail(prefix, "expected a table")
        shell = table.get("shell_refractive_index")
        try:
            return Particle(self.number(table, prefix, "refractive_index", within=REFRACTIVE_INDEX_RANGE),
                            None if shell is None else self.number(table, prefix, "shell_refractive_index",
                                                                   within=REFRACTIVE_INDEX_RANGE),
                            self.number(table, prefix, "shell_thickness_nm", default=0.0, within=(0.0, 1000.0)),
                            str(table.get("name", "")))
        except ExoacqError as e:
            if str(e).startswith(self.where):
                raise
            self.fail(prefix, str(e))
