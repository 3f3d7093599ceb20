"""Per-track numbers: D and diameter from a track's summed steps, size statistics, progress histograms,
and why a track is not a particle (stationary, dim).

Plain functions over the per-track sums of :class:`exoacq.nta.track_sums.TrackSums`, used by the streaming
tracker (exoacq.nta.analysis) for its running statistics and its per-track table. The per-track diameter is
that of the blur-corrected MSD, <r^2> = 4 D (dt - t_E / 3) (Savin & Doyle 2005, Biophys. J. 88:623), with 1/D
made unbiased for the track's length (E[1/chi^2_k] = 1/(k - 2)); the reported size distribution is not made
from it but by exoacq.nta.distribution.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from exoacq.nta.distribution import HISTOGRAM_BIN_NM
from exoacq.nta.parameters import TrackingParameters
from exoacq.nta.track_sums import TrackSums
from exoacq.physics import BOLTZMANN_J_K, celsius_to_kelvin

#: Progress histograms of per-track diameters end here at most (bins of HISTOGRAM_BIN_NM).
RUNNING_HISTOGRAM_MAX_NM = 2000.0


def diffusion_um2_s(n_steps: np.ndarray, sum_sq_um2: np.ndarray, params: TrackingParameters) -> np.ndarray:
    """Per-track D from the summed squared 2-D one-frame steps (motion-blur corrected; an unknown exposure
    is taken as half the frame interval, the middle of what it can be)."""
    exposure_s = 0.5 * params.frame_interval_s if params.exposure_ms is None else params.exposure_ms * 1e-3
    effective_s = params.frame_interval_s - exposure_s / 3.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(sum_sq_um2, float) / (4.0 * np.asarray(n_steps, float) * effective_s)


def diameters_nm(n_steps: np.ndarray, d_um2_s: np.ndarray, params: TrackingParameters) -> np.ndarray:
    """Stokes-Einstein diameter with 1/D unbiased for a track of n steps (k = 2n coordinate steps)."""
    k = 2.0 * np.asarray(n_steps, float)
    c = BOLTZMANN_J_K * celsius_to_kelvin(params.temperature_c) / (3.0 * math.pi * params.viscosity_mpa_s * 1e-3)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse_d = (k - 2.0) / k / (np.asarray(d_um2_s, float) * 1e-12)
    return c * inverse_d * 1e9


def size_statistics(diameters: np.ndarray, fast_mode: bool = False) -> dict[str, float | None]:
    """Mean, mode, SD, D10, D50, D90 in nm.

    The mode is the peak of a Gaussian kernel density (Scott's bandwidth); with
    ``fast_mode`` (for running statistics) the centre of the fullest 2 nm bin.
    """
    d = np.asarray(diameters, float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return dict.fromkeys(("mean", "mode", "sd", "d10", "d50", "d90"))
    d10, d50, d90 = np.percentile(d, [10, 50, 90])
    mode = float(d50)
    if fast_mode and d.size >= 3:
        counts, edges = np.histogram(d, np.arange(np.floor(d.min()), d.max() + 2.0, 2.0))
        mode = float(edges[np.argmax(counts)] + 1.0)
    elif d.size >= 3 and np.ptp(d) > 0:
        grid = np.arange(max(d.min(), 0.0), d.max() + 1.0, 0.5)
        from scipy.stats import gaussian_kde

        mode = float(grid[np.argmax(gaussian_kde(d)(grid))])
    return {"mean": float(d.mean()), "mode": mode, "sd": float(d.std(ddof=1)) if d.size > 1 else 0.0,
            "d10": float(d10), "d50": float(d50), "d90": float(d90)}


def running_histogram(diameters: np.ndarray) -> dict[str, Any]:
    """Tracks per bin of their per-track diameters, for progress reports: the result's bins
    (exoacq.nta.distribution.number_histogram: HISTOGRAM_BIN_NM wide from 0 nm, to at least 500 nm) up to
    past the largest diameter, at most RUNNING_HISTOGRAM_MAX_NM (tracks beyond it are not counted);
    empty lists without a track."""
    d = np.asarray(diameters, float)
    d = d[np.isfinite(d) & (d >= 0.0)]
    if d.size == 0:
        return {"bin_width_nm": HISTOGRAM_BIN_NM, "bin_centres_nm": [], "counts": []}
    top = min(HISTOGRAM_BIN_NM * math.ceil(max(500.0, float(d.max())) / HISTOGRAM_BIN_NM + 1),
              RUNNING_HISTOGRAM_MAX_NM)
    edges = np.arange(0.0, top + HISTOGRAM_BIN_NM / 2, HISTOGRAM_BIN_NM)
    counts, _ = np.histogram(d, edges)
    return {"bin_width_nm": HISTOGRAM_BIN_NM, "bin_centres_nm": ((edges[:-1] + edges[1:]) / 2).tolist(),
            "counts": counts.tolist()}


#: A track whose positions spread (radius of gyration squared) less than this many mean squared one-frame steps
#: is not moving: a hot pixel, stuck debris or a fixed pattern (a diffusing particle's spread grows as
#: (points + 1) / 6 steps: 2.3 at 13 points; a fixed feature's stays at 1/2 of its jitter's steps).
STATIONARY_SPREAD_STEPS = 0.75
#: Tracks shorter than this are not judged (their spread is too noisy to tell).
STATIONARY_MIN_POINTS = 20


def rejection(t: TrackSums, pids: np.ndarray, n_steps: np.ndarray, pixel_size_um: float,
              minmass: float | None = None) -> np.ndarray:
    """Why each track is not a particle ("" if it is one): "stationary" (see STATIONARY_SPREAD_STEPS), or
    "dim": its mean feature mass is below ``minmass`` (linked through features down to the noise floor,
    :attr:`TrackingParameters.link_minmass`, but not a particle detected at the threshold: noise, or a particle
    far from the sheet).

    The test is scale-free (a ratio of lengths that a diffusing particle keeps whatever its D), so it
    prefers no size. Raw positions and steps: a stuck feature stays put while the sample drifts past it.
    """
    n = np.maximum(t.n_points[pids], 1).astype(float)
    spread_um2 = (t.sum_r2_px2[pids] - (t.sum_x_px[pids] ** 2 + t.sum_y_px[pids] ** 2) / n) / n * pixel_size_um ** 2
    mean_step_um2 = t.sum_sq_um2[pids] / np.maximum(n_steps, 1)
    out = np.full(len(pids), "", dtype=object)
    if minmass is not None:
        out[t.sum_mass[pids] / n < minmass] = "dim"
    judged = (t.n_points[pids] >= STATIONARY_MIN_POINTS) & (n_steps > 0)
    out[judged & (spread_um2 < STATIONARY_SPREAD_STEPS * mean_step_um2)] = "stationary"
    return out
