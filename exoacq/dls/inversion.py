"""Size distributions from a correlation curve: a CONTIN-style regularised non-negative
inversion, Mie weighting to volume and number, and peaks.

Method, every choice stated:

- **Data.** The field correlation g1 = sqrt((g2 - 1) / beta) (Siegert relation; beta the
  intercept of the 2nd-order cumulant fit unless given), sign kept so that noise around zero
  stays unbiased: g1 = sign(y) sqrt(|y| / beta). g1 is *linear* in the distribution,
  g1(tau) = sum_j x_j exp(-Gamma_j tau), so the problem is a linear least-squares problem with
  x >= 0 that non-negative least squares (Lawson & Hanson 1974, ``scipy.optimize.nnls``)
  solves exactly; fitting g2 - 1 = beta (K x)^2 instead would be quadratic in x and give up
  that guarantee. The square root transfers the noise: sd(g1) = sd(y) / (2 sqrt(beta |y|))
  (delta method), |y| floored at sd(y) where the delta method fails near zero; sd(y) is the
  correlator's standard deviation when given, else proportional to sqrt(1 + y) (photon
  statistics of the correlation product). The fit uses the lags up to
  ``DECAY_SPAN`` times the lag where g2 - 1 falls to 10 % of the intercept (the cumulant fit
  range), which covers the baseline of the slowest component present.
- **Kernel.** x_j is the fraction of the scattered intensity from particles of diameter d_j on
  a logarithmic grid; Gamma_j = D(d_j) q^2, D by Stokes-Einstein
  (:func:`exoacq.physics.stokes_einstein_diffusion_um2_s`). A free constant (two columns,
  +1 and -1, unregularised) absorbs a baseline offset of g1.
- **Regulariser.** Provencher 1982 (Comput. Phys. Commun. 27:213, CONTIN): minimise
  ||W (K x - g1)||^2 + alpha^2 s^2 ||L x||^2 with L the second differences of x padded by
  zeros at both ends (the solution is smooth and vanishes outside the grid), s = ||W K||_F /
  ||L||_F so that ``alpha`` is dimensionless. Solved as one NNLS problem on the augmented
  system [W K; alpha s L] x = [W g1; 0].
- **Choice of alpha** (``alpha=None``): Provencher's rule. For alpha on a grid, V(alpha) is the
  weighted residual sum of squares and N_DF(alpha) the trace of the influence matrix on the
  unconstrained (positive) set; with V0, N_DF0 of the least regularised solution,
  PROB1(alpha) = F_cdf((V - V0) / V0 * (N_y - N_DF0) / N_DF0; N_DF0, N_y - N_DF0), the
  probability that the regularised solution is *not* compatible with the data. The chosen
  solution is the one with PROB1 closest to 0.5, CONTIN's choice.
- **Volume and number** (:func:`intensity_to_volume_number`): the scattered intensity of one
  homogeneous sphere at the detection angle from Mie theory (miepython, Bohren & Huffman
  1983): ``polarization="vertical"`` (default; a vertically polarised laser and a horizontal
  scattering plane, the usual DLS geometry) |S1(theta)|^2, ``"unpolarized"``
  (|S1|^2 + |S2|^2) / 2; the constant 1/k^2 cancels on normalisation. number_j ~ x_j / I_j,
  volume_j ~ number_j d_j^3, each normalised to sum 1. Only the bins of the reported intensity
  peaks are transformed (:func:`peak_bins`): outside them the intensity is the regulariser's
  residue (less than 0.5 % in all, often at the grid's smallest diameters, where the first lags'
  noise lands), which I ~ d^6 for small spheres would otherwise turn into a number distribution
  of sub-nanometre "particles" that the data do not show.
- **Peaks** (:func:`find_peaks`): contiguous runs of bins above ``min_fraction`` of the
  distribution's maximum, split again at an interior minimum below half of the smaller of
  its two neighbouring maxima; per peak the weighted arithmetic mean and SD of the diameter
  and the area (fraction of the distribution); peaks under 0.5 % of it are left out.
"""
from __future__ import annotations

import math
from typing import Any

import miepython
import numpy as np
from scipy.optimize import nnls
from scipy.stats import f as f_distribution

from exoacq.physics import stokes_einstein_diameter_nm, stokes_einstein_diffusion_um2_s

#: The inversion uses lags up to this many times the lag where g2 - 1 falls to 10 % of its intercept.
DECAY_SPAN = 20.0
#: Default number of diameters on the logarithmic grid.
GRID_POINTS = 80
#: Diameters outside this range (nm) are never on the default grid.
GRID_LIMITS_NM = (0.5, 20000.0)
#: Regularisation strengths tried when alpha is chosen by Provencher's rule.
ALPHA_GRID = tuple(float(a) for a in np.logspace(-5, 1, 25))
#: Target probability-to-reject of the chosen solution (Provencher 1982).
TARGET_PROB_TO_REJECT = 0.5
#: Peaks: bins above this fraction of the maximum; splits at minima below this fraction of the lower flanking maximum.
PEAK_MIN_FRACTION = 0.01
PEAK_SPLIT_FRACTION = 0.5
#: Peaks holding less than this fraction of the distribution are not reported.
PEAK_MIN_AREA = 0.005


def decay_rate_per_s(diameter_nm, *, q_per_nm: float, temperature_c: float, viscosity_mpa_s: float):
    """Gamma = D q^2 (1/s) of spheres of these hydrodynamic diameters (D by Stokes-Einstein)."""
    d_um2_s = stokes_einstein_diffusion_um2_s(diameter_nm, temperature_c, viscosity_mpa_s)
    return np.asarray(d_um2_s) * 1e6 * q_per_nm**2


def default_diameter_grid_nm(lag_s, *, q_per_nm: float, temperature_c: float, viscosity_mpa_s: float,
                             points: int = GRID_POINTS) -> np.ndarray:
    """A log grid of diameters whose decay the lags resolve: Gamma from 1 / (first lag) down to
    1 / (last lag), clipped to :data:`GRID_LIMITS_NM` (slower decays are indistinguishable from
    the baseline over these lags)."""
    lag = np.asarray(lag_s, dtype=float)
    to_d = lambda gamma: stokes_einstein_diameter_nm(gamma / q_per_nm**2 * 1e-6, temperature_c, viscosity_mpa_s)
    low = max(GRID_LIMITS_NM[0], to_d(1.0 / lag[0]))
    high = min(GRID_LIMITS_NM[1], to_d(1.0 / lag[-1]))
    if not high > low * 1.5:
        raise ValueError(f"lags {lag[0]:g}-{lag[-1]:g} s resolve no diameters at q = {q_per_nm:g} /nm")
    return np.geomspace(low, high, points)


def _second_differences(n: int) -> np.ndarray:
    """Second differences of [0, x, 0]: n rows, so the solution is smooth and vanishes off the grid."""
    padded = np.zeros((n, n + 2))
    for i in range(n):
        padded[i, i:i + 3] = (1.0, -2.0, 1.0)
    return padded[:, 1:-1]


def _solve(a: np.ndarray, b: np.ndarray, reg: np.ndarray, alpha: float, n_free: int) -> np.ndarray:
    rows = np.vstack([a, np.hstack([alpha * reg, np.zeros((reg.shape[0], n_free))])])
    x, _ = nnls(rows, np.concatenate([b, np.zeros(reg.shape[0])]), maxiter=50 * rows.shape[1])
    return x


def _degrees_of_freedom(a: np.ndarray, reg: np.ndarray, alpha: float, x: np.ndarray, n_free: int) -> float:
    """Trace of the influence matrix A_S (A_S^T A_S + alpha^2 R_S^T R_S)^-1 A_S^T on the set S of
    unconstrained (positive) coefficients, the free baseline columns included."""
    active = np.nonzero(x > 0)[0]
    if active.size == 0:
        return 0.0
    a_s = a[:, active]
    r_full = np.hstack([reg, np.zeros((reg.shape[0], n_free))])
    r_s = r_full[:, active]
    m = a_s.T @ a_s + alpha**2 * (r_s.T @ r_s)
    try:
        return float(np.trace(np.linalg.solve(m, a_s.T @ a_s)))
    except np.linalg.LinAlgError:
        return float(active.size)


def invert(lag_s, g2_minus_1, *, q_per_nm: float, temperature_c: float, viscosity_mpa_s: float,
           diameters_nm=None, alpha: float | None = None, intercept: float | None = None,
           sigma=None, fit_end_lag_s: float | None = None) -> dict[str, Any]:
    """Intensity-weighted size distribution by a CONTIN-style regularised NNLS (see the module).

    ``alpha``: a fixed regularisation strength, or None for Provencher's probability-to-reject
    rule. ``intercept``: beta of the Siegert relation (None: the 2nd-order cumulant intercept).
    ``sigma``: standard deviations of g2 - 1 per lag (None: proportional to sqrt(1 + g2 - 1)).
    Returns ``diameter_nm``, ``intensity`` (fractions summing to 1), ``alpha``, ``alpha_rule``,
    ``prob_to_reject``, ``degrees_of_freedom``, ``residual_rms`` (of g1), ``fit_end_lag_s``,
    ``points``, ``intercept``.
    """
    from exoacq.dls.cumulants import cumulants  # the cumulant fit gives beta and the fit range

    lag = np.asarray(lag_s, dtype=float)
    y = np.asarray(g2_minus_1, dtype=float)
    if lag.shape != y.shape or lag.ndim != 1:
        raise ValueError("lag_s and g2_minus_1 must be 1-D arrays of the same length")
    sd_y = np.sqrt(1.0 + np.clip(y, 0.0, None)) if sigma is None else np.asarray(sigma, dtype=float)
    cum = cumulants(lag, y, order=2, sigma=sigma)
    beta = float(intercept) if intercept is not None else cum["intercept"]
    if fit_end_lag_s is None:
        fit_end_lag_s = DECAY_SPAN * cum["fit_end_lag_s"]
    use = lag <= fit_end_lag_s
    if np.count_nonzero(use) < 8:
        raise ValueError("fewer than 8 lags in the inversion range")
    tau, yy, sd = lag[use], y[use], sd_y[use]
    if sigma is None:  # relative sd: scale to the short-lag scatter so the floor below is meaningful
        d = np.diff(yy[:32])
        scale = 1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0) if d.size > 4 else 0.0
        sd = sd * max(scale, 1e-6 * beta)
    g1 = np.sign(yy) * np.sqrt(np.abs(yy) / beta)
    sd_g1 = sd / (2.0 * np.sqrt(beta * np.maximum(np.abs(yy), sd)))
    w = 1.0 / sd_g1

    if diameters_nm is None:
        diameters = default_diameter_grid_nm(tau, q_per_nm=q_per_nm, temperature_c=temperature_c,
                                             viscosity_mpa_s=viscosity_mpa_s)
    else:
        diameters = np.asarray(diameters_nm, dtype=float)
    gamma = decay_rate_per_s(diameters, q_per_nm=q_per_nm, temperature_c=temperature_c,
                             viscosity_mpa_s=viscosity_mpa_s)
    kernel = np.exp(-np.outer(tau, gamma))
    free = np.column_stack([np.ones_like(tau), -np.ones_like(tau)])  # the baseline of g1, either sign
    a = np.hstack([kernel, free]) * w[:, None]
    b = g1 * w
    reg = _second_differences(diameters.size)
    scale = np.linalg.norm(a[:, :diameters.size]) / np.linalg.norm(reg)
    reg = reg * scale

    def solution(alpha_value: float):
        x = _solve(a, b, reg, alpha_value, 2)
        v = float(np.sum((a @ x - b) ** 2))
        return x, v

    n_y = tau.size
    if alpha is not None:
        chosen_alpha = float(alpha)
        x, v = solution(chosen_alpha)
        rule, prob = "given", None
        dof = _degrees_of_freedom(a, reg, chosen_alpha, x, 2)
    else:
        trials = [(al, *solution(al)) for al in ALPHA_GRID]
        al0, x0, v0 = trials[0]
        dof0 = max(_degrees_of_freedom(a, reg, al0, x0, 2), 1.0)
        best = None
        for al, x_al, v_al in trials:
            if v0 > 0 and n_y > dof0:
                stat = (v_al - v0) / v0 * (n_y - dof0) / dof0
                prob = float(f_distribution.cdf(max(stat, 0.0), dof0, n_y - dof0))
            else:
                prob = 1.0 if v_al > v0 else 0.0
            key = abs(prob - TARGET_PROB_TO_REJECT)
            if best is None or key < best[0] - 1e-12:
                best = (key, al, x_al, v_al, prob)
        _, chosen_alpha, x, v, prob = best
        rule = "Provencher 1982 probability-to-reject 0.5 (F-test)"
        dof = _degrees_of_freedom(a, reg, chosen_alpha, x, 2)
    amplitudes = x[:diameters.size]
    total = amplitudes.sum()
    intensity = amplitudes / total if total > 0 else amplitudes
    model = np.hstack([kernel, free]) @ x
    return {
        "diameter_nm": diameters,
        "intensity": intensity,
        "alpha": chosen_alpha,
        "alpha_rule": rule,
        "prob_to_reject": prob,
        "degrees_of_freedom": dof,
        "residual_rms": float(np.sqrt(np.mean((model - g1) ** 2))),
        "fit_end_lag_s": float(tau[-1]),
        "points": int(n_y),
        "intercept": beta,
    }


def mie_intensity_per_particle(diameter_nm, *, wavelength_nm: float, angle_deg: float,
                               particle_refractive_index: float, medium_refractive_index: float,
                               polarization: str = "vertical") -> np.ndarray:
    """Relative intensity one homogeneous sphere scatters at the angle (Mie theory, miepython):
    |S1|^2 for vertical polarisation (horizontal scattering plane), (|S1|^2 + |S2|^2) / 2
    unpolarised; ``wavelength_nm`` in vacuum. Proportional to dsigma/dOmega (= |S|^2 / k^2)."""
    if polarization not in ("vertical", "unpolarized"):
        raise ValueError(f"polarization must be 'vertical' or 'unpolarized', not {polarization!r}")
    d = np.atleast_1d(np.asarray(diameter_nm, dtype=float))
    m = particle_refractive_index / medium_refractive_index
    mu = math.cos(math.radians(angle_deg))
    out = np.empty(d.size)
    for i, di in enumerate(d):
        x = math.pi * di * medium_refractive_index / wavelength_nm
        s1, s2 = miepython.S1_S2(m, x, mu, norm="bohren")
        p1 = abs(complex(np.ravel(s1)[0])) ** 2
        out[i] = p1 if polarization == "vertical" else 0.5 * (p1 + abs(complex(np.ravel(s2)[0])) ** 2)
    return out


def intensity_to_volume_number(diameter_nm, intensity, *, wavelength_nm: float, angle_deg: float,
                               particle_refractive_index: float, medium_refractive_index: float,
                               polarization: str = "vertical") -> tuple[np.ndarray, np.ndarray]:
    """Volume and number distributions (each summing to 1) from an intensity distribution:
    number ~ intensity / I_Mie(d), volume ~ number d^3."""
    d = np.asarray(diameter_nm, dtype=float)
    per_particle = mie_intensity_per_particle(d, wavelength_nm=wavelength_nm, angle_deg=angle_deg,
                                              particle_refractive_index=particle_refractive_index,
                                              medium_refractive_index=medium_refractive_index,
                                              polarization=polarization)
    with np.errstate(divide="ignore", invalid="ignore"):
        number = np.where(per_particle > 0, np.asarray(intensity, dtype=float) / per_particle, 0.0)
    volume = number * d**3
    norm = lambda v: v / v.sum() if v.sum() > 0 else v
    return norm(volume), norm(number)


def find_peaks(diameter_nm, weights, *, min_fraction: float = PEAK_MIN_FRACTION,
               split_fraction: float = PEAK_SPLIT_FRACTION, min_area: float = PEAK_MIN_AREA) -> list[dict[str, float]]:
    """Peaks of a distribution: ``mean_nm``, ``sd_nm`` (weighted, arithmetic) and ``area``
    (fraction of the whole), largest area first; peaks below ``min_area`` are left out."""
    d = np.asarray(diameter_nm, dtype=float)
    w = np.asarray(weights, dtype=float)
    total = w.sum()
    peaks = []
    for start, stop in _peak_pieces(w, min_fraction, split_fraction, min_area):
        ww, dd = w[start:stop], d[start:stop]
        area = ww.sum()
        mean = float(np.sum(ww * dd) / area)
        sd = float(math.sqrt(max(np.sum(ww * (dd - mean) ** 2) / area, 0.0)))
        peaks.append({"mean_nm": mean, "sd_nm": sd, "area": float(area / total)})
    return sorted(peaks, key=lambda p: -p["area"])


def peak_bins(weights, *, min_fraction: float = PEAK_MIN_FRACTION, split_fraction: float = PEAK_SPLIT_FRACTION,
              min_area: float = PEAK_MIN_AREA) -> np.ndarray:
    """The bins (boolean mask) of the peaks :func:`find_peaks` reports."""
    w = np.asarray(weights, dtype=float)
    mask = np.zeros(w.size, dtype=bool)
    for start, stop in _peak_pieces(w, min_fraction, split_fraction, min_area):
        mask[start:stop] = True
    return mask


def _peak_pieces(w: np.ndarray, min_fraction: float, split_fraction: float, min_area: float) -> list[tuple[int, int]]:
    """[start, stop) bin ranges of the peaks of ``w`` (see the module: Peaks)."""
    total = w.sum()
    if not total > 0:
        return []
    above = w > min_fraction * w.max()
    runs: list[tuple[int, int]] = []
    i = 0
    while i < w.size:
        if above[i]:
            j = i
            while j + 1 < w.size and above[j + 1]:
                j += 1
            runs.append((i, j + 1))
            i = j + 1
        else:
            i += 1
    pieces: list[tuple[int, int]] = []
    for start, stop in runs:
        cuts = [start]
        seg = w[start:stop]
        k = 1
        while k < seg.size - 1:
            if seg[k] <= seg[k - 1] and seg[k] <= seg[k + 1]:
                left, right = seg[cuts[-1] - start:k].max(), seg[k + 1:].max()
                if seg[k] < split_fraction * min(left, right):
                    cuts.append(start + k)
            k += 1
        cuts.append(stop)
        pieces += [(cuts[n], cuts[n + 1]) for n in range(len(cuts) - 1)]
    return [(start, stop) for start, stop in pieces
            if w[start:stop].sum() > 0 and w[start:stop].sum() >= min_area * total]
