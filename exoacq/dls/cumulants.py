"""DLS cumulants (ISO 22412:2017, Koppel 1972) and the physics of the measurement (q, D, Stokes-Einstein).

Cumulants, every choice stated (:func:`cumulants`):

- **Model.** Koppel 1972 (J. Chem. Phys. 57:4814): ln g1(tau) = -Gamma tau + mu2 tau^2 / 2! -
  mu3 tau^3 / 3!, so with the Siegert relation g2 - 1 = beta |g1|^2,
  ln(g2 - 1) = ln beta - 2 Gamma tau + mu2 tau^2 - mu3 tau^3 / 3. The polynomial is fitted by
  *linear* weighted least squares in ln(g2 - 1) (ISO 22412:2017's linearised form, one global
  optimum, no starting values). PDI = mu2 / Gamma^2; the Z-average diameter comes from Gamma
  through D = Gamma / q^2 and Stokes-Einstein.
- **No baseline term.** The normalised g2 - 1 of a correlator tends to 0; a free baseline is
  strongly correlated with mu2 and inflates its error, and ALV's own 1st-3rd order results are
  reproduced without one (below). The baseline is *measured* instead, as the mean of g2 - 1 at
  lags beyond 5 / Gamma (g1^2 < 5e-5), and reported with its deviation.
- **Range.** From the first channel to the last before g2 - 1 first falls below
  ``fit_fraction`` (default 0.1) of the intercept, the intercept iterated with the fit
  (ISO 22412: fit down to ~10 % of the intercept).
- **Weights.** Inverse variance of ln(g2 - 1): var(ln y) = var(y) / y^2, with var(y) the
  correlator's own standard deviation per lag when it is known (``sigma``: ALV's
  "StandardDeviation" block) and otherwise proportional to 1 + y (photon statistics of the
  correlation product: its variance at a given count rate scales with g2). Unweighted
  ln-fits give the noisy tail the same say as the clean start.
- **ALV-7004 agreement** (the test data in ``alv-cgs3``, 30-150 deg): with these defaults
  (10 %, the file's StandardDeviation as weights) Gamma of every *single-run* file agrees
  with ALV's own within 1.2 % at 2nd order and 2.1 % at 1st and 3rd, the 2nd-order PDI within
  0.025; so do runs 2 and 3 of the 30 deg series from BAMresearch/analyse_dls_with_contin
  (within 0.8 %). ALV's ``_averaged`` export is another matter: its header,
  "StandardDeviation" and cumulant blocks are the *last* run's, unchanged, while its
  correlation is the *sum* of the runs' curves (intercept ~2.6 for three runs of ~0.85). Its
  cumulant block therefore describes a different curve; at 30 deg, where the three runs' own
  Gamma differ by 12 % (number fluctuations of large particles), the summed curve's Z-average
  is 5.4 % above it. The quality check flags such curves (intercept above 1).
- **Corrected PDI** (:func:`corrected_pdi`): the 2nd-order PDI of a fit to 10 % is biased low
  for broad distributions (the neglected mu3 tau^3 aliases into mu2). 3rd-order fits ending at
  15, 10, 7, 5 and 3 % of the intercept, each with truncation error ~ (Gamma tau_end)^2 from
  the first neglected cumulant, are extrapolated linearly in (Gamma tau_end)^2 to a zero fit
  range (Richardson extrapolation of the fit range).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from exoacq.physics import stokes_einstein_diameter_nm

#: ISO 22412: the cumulant fit runs to where g2 - 1 has fallen to this fraction of the intercept.
DEFAULT_FIT_FRACTION = 0.1
#: Fit ends (fractions of the intercept) of the 3rd-order fits extrapolated for the corrected PDI.
CORRECTED_PDI_FRACTIONS = (0.15, 0.1, 0.07, 0.05, 0.03)
#: The baseline is measured at lags beyond this many 1 / Gamma (g1^2 = exp(-10) there).
BASELINE_DECAYS = 5.0
#: Fewest lags a curve must have (positive, increasing, finite) to be fitted.
MIN_FIT_POINTS = 8


# -- physics of the measurement ------------------------------------------------------------------
def scattering_vector_per_nm(angle_deg, wavelength_nm: float, refractive_index: float):
    """q = 4 pi n sin(theta / 2) / lambda (1/nm), lambda in vacuum, n of the medium."""
    q = 4.0 * np.pi * refractive_index * np.sin(np.radians(np.asarray(angle_deg, dtype=float)) / 2.0) / wavelength_nm
    return float(q) if np.ndim(q) == 0 else q


def diffusion_um2_s(gamma_per_s, q_per_nm: float):
    """D = Gamma / q^2 in um^2/s (Gamma in 1/s, q in 1/nm)."""
    d = np.asarray(gamma_per_s, dtype=float) / q_per_nm**2 * 1e-6
    return float(d) if d.ndim == 0 else d


def hydrodynamic_diameter_nm(gamma_per_s: float, q_per_nm: float, temperature_c: float,
                             viscosity_mpa_s: float) -> float | None:
    """Stokes-Einstein diameter of D = Gamma / q^2 (None unless Gamma > 0)."""
    if gamma_per_s is None or not gamma_per_s > 0:
        return None
    return float(stokes_einstein_diameter_nm(diffusion_um2_s(gamma_per_s, q_per_nm), temperature_c, viscosity_mpa_s))


# -- cumulants ----------------------------------------------------------------------------------
def curve_arrays(lag_s, g2_minus_1) -> tuple[np.ndarray, np.ndarray]:
    """The curve up to its first non-finite value (a live correlator's longest lags may not be
    filled yet); at least 8 positive, increasing lags."""
    lag = np.asarray(lag_s, dtype=float)
    y = np.asarray(g2_minus_1, dtype=float)
    if lag.ndim != 1 or lag.shape != y.shape:
        raise ValueError("lag_s and g2_minus_1 must be 1-D arrays of the same length")
    bad = np.nonzero(~(np.isfinite(lag) & np.isfinite(y)))[0]
    if bad.size:
        lag, y = lag[:bad[0]], y[:bad[0]]
    if lag.size < MIN_FIT_POINTS or np.any(np.diff(lag) <= 0) or lag[0] <= 0:
        raise ValueError("lags must be positive and increasing, at least 8 finite values")
    return lag, y


def measured_baseline(lag_s, g2_minus_1, gamma_per_s: float) -> float | None:
    """Mean of g2 - 1 at lags beyond :data:`BASELINE_DECAYS` / Gamma (None: fewer than 4 such lags)."""
    lag, y = np.asarray(lag_s, dtype=float), np.asarray(g2_minus_1, dtype=float)
    if not gamma_per_s or gamma_per_s <= 0:
        return None
    tail = y[lag >= BASELINE_DECAYS / gamma_per_s]
    return float(np.mean(tail)) if tail.size >= 4 else None


def check_fit_fraction(fit_fraction: float) -> None:
    """A ValueError unless 0 < ``fit_fraction`` < 1 (NaN too)."""
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"fit_fraction must be between 0 and 1, not {fit_fraction!r}")


def cumulants(lag_s, g2_minus_1, *, order: int = 2, fit_fraction: float = DEFAULT_FIT_FRACTION,
              sigma=None, first_lag_s: float | None = None, max_iterations: int = 6) -> dict[str, Any]:
    """Cumulant fit (ISO 22412:2017, Koppel 1972) of order 1, 2 or 3; see the module for the
    model, range and weights. ``sigma``: standard deviation of g2 - 1 per lag (None: the
    photon-statistics model). ``first_lag_s``: skip shorter lags (afterpulsing, dead time).

    Returns ``order``, ``intercept``, ``gamma_per_s``, ``mu2_per_s2`` and ``pdi`` (order >= 2),
    ``mu3_per_s3`` (order 3), ``baseline`` (measured, see :func:`measured_baseline`),
    ``residual_rms`` (of g2 - 1 in the fit range), ``fit_start_lag_s``, ``fit_end_lag_s``,
    ``points``, ``fit_fraction``, ``weighting``. Raises ValueError when the curve has no
    positive start or too few channels above the fraction.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"cumulant order must be 1, 2 or 3, not {order!r}")
    check_fit_fraction(fit_fraction)
    lag, y = curve_arrays(lag_s, g2_minus_1)
    sd = None if sigma is None else np.asarray(sigma, dtype=float)[:y.size]
    if sd is not None and (sd.shape != y.shape or not np.all(sd > 0)):
        raise ValueError("sigma must be positive, one per lag")
    start = 0 if first_lag_s is None else int(np.searchsorted(lag, first_lag_s))
    intercept = float(np.median(y[start:start + 8]))
    if not intercept > 0:
        raise ValueError("g2 - 1 is not positive at the shortest lags")
    end, previous = None, None
    for _ in range(max_iterations):
        below = np.nonzero(y[start:] < fit_fraction * intercept)[0]
        end = start + (int(below[0]) if below.size else y.size - start)
        if end - start < order + 2:
            raise ValueError(f"only {end - start} channels above {fit_fraction:g} of the intercept "
                             f"{intercept:.3g}: too few for an order-{order} cumulant fit")
        tau, yy = lag[start:end], y[start:end]
        sd_y = np.sqrt(1.0 + yy) if sd is None else sd[start:end]
        w = yy / sd_y
        scale = tau[-1]
        u = tau / scale
        design = np.vstack([u**k for k in range(order + 1)]).T
        coef, *_ = np.linalg.lstsq(design * w[:, None], np.log(yy) * w, rcond=None)
        intercept = float(math.exp(coef[0]))
        if end == previous:
            break
        previous = end
    gamma = float(-coef[1] / (2.0 * scale))
    mu2 = float(coef[2] / scale**2) if order >= 2 else None
    mu3 = float(-3.0 * coef[3] / scale**3) if order >= 3 else None
    model = np.exp(design @ coef)
    return {
        "order": order,
        "intercept": intercept,
        "gamma_per_s": gamma,
        "mu2_per_s2": mu2,
        "mu3_per_s3": mu3,
        "pdi": (mu2 / gamma**2) if mu2 is not None and gamma != 0 else None,
        "baseline": measured_baseline(lag, y, gamma),
        "residual_rms": float(np.sqrt(np.mean((yy - model) ** 2))),
        "fit_start_lag_s": float(tau[0]),
        "fit_end_lag_s": float(tau[-1]),
        "points": int(end - start),
        "fit_fraction": float(fit_fraction),
        "weighting": "sigma" if sd is not None else "photon statistics (var ~ 1 + y)",
    }


def corrected_pdi(lag_s, g2_minus_1, *, sigma=None, fit_fractions: Sequence[float] = CORRECTED_PDI_FRACTIONS,
                  first_lag_s: float | None = None) -> dict[str, Any]:
    """PDI free of the fit-range truncation bias: 3rd-order cumulant PDIs at several fit ends,
    extrapolated linearly in x = (Gamma tau_end)^2 to x = 0 (see the module). Returns ``pdi``,
    ``method`` and the ``fits`` used; ``pdi`` None when fewer than two fit ends succeed."""
    fits = []
    for fraction in fit_fractions:
        try:
            c = cumulants(lag_s, g2_minus_1, order=3, fit_fraction=fraction, sigma=sigma, first_lag_s=first_lag_s)
        except ValueError:
            continue
        fits.append({"fit_fraction": float(fraction), "x": (c["gamma_per_s"] * c["fit_end_lag_s"]) ** 2,
                     "pdi": c["pdi"]})
    xs = np.array([f["x"] for f in fits])
    if len(fits) < 2 or np.ptp(xs) <= 0:
        return {"pdi": None, "method": "3rd-order fit range extrapolation", "fits": fits}
    slope, value = np.polyfit(xs, [f["pdi"] for f in fits], 1)
    return {"pdi": float(value), "method": "3rd-order cumulant PDI extrapolated to zero fit range, "
            "linear in (Gamma tau_end)^2", "fits": fits}
