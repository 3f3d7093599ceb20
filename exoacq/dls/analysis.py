"""DLS analysis: cumulants (ISO 22412:2017, Koppel 1972), quality verdicts, several angles, and
the measurement document ``exoacq.dls.analysis/1``.

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

Quality and verdicts (:func:`correlation_check`, :func:`classify_subruns`,
:func:`count_rate_statistics`): see each function. Several angles:
:func:`extrapolate_to_zero_q` (apparent D = Gamma / q^2 linear in q^2, its intercept D(q -> 0);
Frisken 2001, Appl. Opt. 40:4087 and standard practice). Size distributions:
:mod:`exoacq.dls.inversion`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from exoacq.dls import inversion
from exoacq.dls.record import Correlation, DLSRecord
from exoacq.errors import ExoacqError
from exoacq.physics import stokes_einstein_diameter_nm, water_viscosity_iapws_mpa_s

SCHEMA = "exoacq.dls.analysis/1"
#: ISO 22412: the cumulant fit runs to where g2 - 1 has fallen to this fraction of the intercept.
DEFAULT_FIT_FRACTION = 0.1
#: Fit ends (fractions of the intercept) of the 3rd-order fits extrapolated for the corrected PDI.
CORRECTED_PDI_FRACTIONS = (0.15, 0.1, 0.07, 0.05, 0.03)
#: The baseline is measured at lags beyond this many 1 / Gamma (g1^2 = exp(-10) there).
BASELINE_DECAYS = 5.0

# "no correlation": the intercept (median of the first INTERCEPT_CHANNELS) must exceed MIN_SNR
# times the channel-to-channel noise of g2 - 1 over the first NOISE_CHANNELS.
INTERCEPT_CHANNELS = 16
NOISE_CHANNELS = 32
MIN_SNR = 10.0
#: ... and g2 - 1 must decay: the mean of the last TAIL_CHANNELS below this fraction of the intercept,
TAIL_CHANNELS = 8
MAX_TAIL_FRACTION = 0.5
#: ... with at least this many channels above fit_fraction x intercept (a decay the lags resolve).
MIN_DECAY_CHANNELS = 4

# quality warnings
HIGH_INTERCEPT = 1.05
LOW_INTERCEPT = 0.05
#: |measured baseline| / intercept above this: warning.
BASELINE_TOLERANCE = 0.02
#: RMS residual of the 2nd-order fit / intercept above this: warning.
RESIDUAL_TOLERANCE = 0.01
#: Count rate unstable when its CV exceeds COUNT_RATE_CV_FACTOR x the CV expected from speckle
#: and shot noise, and exceeds COUNT_RATE_CV_FLOOR.
COUNT_RATE_CV_FACTOR = 2.0
COUNT_RATE_CV_FLOOR = 0.05
BROAD_PDI = 0.5
MIN_FIT_POINTS = 8
#: Sub-runs: a robust z-score (median, 1.4826 MAD, floors below) above this marks a transient.
SUBRUN_Z_LIMIT = 4.0
SUBRUN_GAMMA_FLOOR = 0.03   # relative scale floor of Gamma's spread
SUBRUN_TAIL_FLOOR = 0.01    # of the tail level, as a fraction of the intercept
SUBRUN_RATE_FLOOR = 0.03    # relative scale floor of the sub-runs' count rates


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
def _arrays(lag_s, g2_minus_1) -> tuple[np.ndarray, np.ndarray]:
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
    lag, y = _arrays(lag_s, g2_minus_1)
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


# -- quality ------------------------------------------------------------------------------------
def correlation_check(lag_s, g2_minus_1, *, fit_fraction: float = DEFAULT_FIT_FRACTION,
                      min_snr: float = MIN_SNR) -> dict[str, Any]:
    """Is there a correlation to size? The "no correlation" criterion (blanks: solvent, water):

    1. the intercept, estimated as the median of g2 - 1 over the first 16 channels, must exceed
       ``min_snr`` (10) times the channel-to-channel noise of g2 - 1 (1.4826 MAD of successive
       differences / sqrt 2 over the first 32 channels; differences remove the slow decay);
    2. g2 - 1 must decay within the lags: the mean of the last 8 channels below half the intercept;
    3. at least 4 channels must lie above ``fit_fraction`` of the intercept before it first falls
       below it (a decay the correlator resolves).

    Returns ``correlated``, ``reason`` (None when correlated), ``intercept_estimate``, ``noise``, ``snr``.
    """
    lag, y = _arrays(lag_s, g2_minus_1)
    a0 = float(np.median(y[:INTERCEPT_CHANNELS]))
    d = np.diff(y[:NOISE_CHANNELS])
    noise = float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))
    snr = a0 / noise if noise > 0 else (math.inf if a0 > 0 else 0.0)
    reason = None
    if not a0 > 0 or snr < min_snr:
        reason = (f"no correlation: intercept {a0:.3g} is below {min_snr:g} x the noise of g2-1 "
                  f"at short lags ({noise:.2g})")
    elif np.mean(y[-TAIL_CHANNELS:]) > MAX_TAIL_FRACTION * a0:
        reason = f"no correlation: g2-1 does not decay within the measured lags (to {lag[-1]:g} s)"
    else:
        below = np.nonzero(y < fit_fraction * a0)[0]
        above = int(below[0]) if below.size else y.size
        if above < MIN_DECAY_CHANNELS:
            reason = (f"no correlation: g2-1 falls below {fit_fraction:g} of its intercept within "
                      f"{above} channels, faster than the correlator resolves")
    return {"correlated": reason is None, "reason": reason, "intercept_estimate": a0, "noise": noise,
            "snr": float(snr)}


def count_rate_statistics(time_s, count_rate_hz, *, intercept: float | None = None,
                          gamma_per_s: float | None = None) -> dict[str, Any] | None:
    """CV of the count-rate trace, and the CV a steady sample would show in bins of that width:
    CV^2 = beta f(2 Gamma T) + 1 / (R T) (speckle fluctuations averaged over a bin T, with
    f(x) = 2 (x - 1 + e^-x) / x^2 the average of exp(-2 Gamma |t - t'|) over the bin; and shot
    noise of R T counts). None without a trace."""
    if time_s is None or count_rate_hz is None:
        return None
    t, r = np.asarray(time_s, dtype=float), np.asarray(count_rate_hz, dtype=float)
    if r.size < 3 or not np.mean(r) > 0:
        return None
    mean = float(np.mean(r))
    cv = float(np.std(r) / mean)
    bin_s = float(np.median(np.diff(t))) if t.size > 1 else None
    expected = None
    if bin_s and bin_s > 0:
        var = 1.0 / (mean * bin_s)
        if intercept and gamma_per_s and intercept > 0 and gamma_per_s > 0:
            x = 2.0 * gamma_per_s * bin_s
            var += intercept * 2.0 * (x - 1.0 + math.exp(-x)) / x**2
        expected = float(math.sqrt(var))
    return {"count_rate_cv": cv, "count_rate_cv_expected": expected, "mean_count_rate_hz": mean, "bin_s": bin_s}


def _robust_scale(values: np.ndarray, floor: float) -> float:
    return max(1.4826 * float(np.median(np.abs(values - np.median(values)))), floor)


def classify_subruns(lag_s, subruns: Sequence[np.ndarray], *, sigma=None, count_trace_time_s=None,
                     count_trace_hz=None, fit_fraction: float = DEFAULT_FIT_FRACTION,
                     z_limit: float = SUBRUN_Z_LIMIT) -> dict[str, Any]:
    """Dust rejection: classify each sub-run as steady or transient and average the steady ones.

    Per sub-run: Gamma of a 2nd-order cumulant fit, the tail level (mean g2 - 1 where the median
    curve has fallen below 5 % of its intercept, over the intercept) and, with a count-rate trace,
    its mean count rate over the sub-run's share of the trace (sub-runs taken as consecutive
    equal parts of the measurement). A large particle crossing the beam makes the decay slower,
    lifts the tail and brightens the count rate: a sub-run is *transient* when its robust
    z-score (distance from the median over 1.4826 MAD, the MAD floored at 3 % of Gamma, 1 % of
    the intercept for the tail, 3 % of the count rate) exceeds ``z_limit`` (4) in the dust
    direction, or when it shows no correlation. If more than half would be rejected the sample
    itself is unsteady: all are kept and a note says so. Fewer than 3 sub-runs: not classified.

    Returns ``used`` and ``rejected`` ([{index, reason}]) indices, ``g2_minus_1`` (the mean of the
    used sub-runs) and ``note``.
    """
    lag = np.asarray(lag_s, dtype=float)
    runs = [np.asarray(s, dtype=float) for s in subruns]
    if any(r.shape != lag.shape for r in runs):
        raise ValueError("every sub-run must have one g2-1 value per lag")
    n = len(runs)
    if n < 3:
        mean = np.mean(runs, axis=0) if runs else None
        return {"used": list(range(n)), "rejected": [], "g2_minus_1": mean,
                "note": "fewer than 3 sub-runs: not classified" if n else None}
    reasons: dict[int, list[str]] = {i: [] for i in range(n)}
    gammas = np.full(n, np.nan)
    intercepts = np.full(n, np.nan)
    for i, r in enumerate(runs):
        check = correlation_check(lag, r, fit_fraction=fit_fraction)
        if not check["correlated"]:
            reasons[i].append("no correlation in this sub-run")
            continue
        try:
            c = cumulants(lag, r, order=2, fit_fraction=fit_fraction, sigma=sigma)
        except ValueError as e:
            reasons[i].append(f"cumulant fit failed ({e})")
            continue
        gammas[i], intercepts[i] = c["gamma_per_s"], c["intercept"]
    ok = np.isfinite(gammas)
    if np.count_nonzero(ok) >= 3:
        g_med = float(np.median(gammas[ok]))
        g_scale = _robust_scale(gammas[ok], SUBRUN_GAMMA_FLOOR * g_med)
        median_curve = np.median(np.array(runs)[ok], axis=0)
        a_med = float(np.median(intercepts[ok]))
        below = np.nonzero(median_curve < 0.05 * a_med)[0]
        tails = None
        if below.size and below[0] < lag.size - 3:
            tails = np.array([np.mean(r[below[0]:]) / a_med for r in runs])
            t_med = float(np.median(tails[ok]))
            t_scale = _robust_scale(tails[ok], SUBRUN_TAIL_FLOOR)
        for i in np.nonzero(ok)[0]:
            z = (g_med - gammas[i]) / g_scale
            if z > z_limit:
                reasons[i].append(f"decay {100 * (1 - gammas[i] / g_med):.0f}% slower than the median sub-run "
                                  f"(z = {z:.1f}): a large particle in the beam")
            if tails is not None:
                zt = (tails[i] - t_med) / t_scale
                if zt > z_limit:
                    reasons[i].append(f"long-lag tail {tails[i]:.3f} of the intercept above the median "
                                      f"{t_med:.3f} (z = {zt:.1f})")
    if count_trace_time_s is not None and count_trace_hz is not None and len(count_trace_hz) >= n:
        parts = np.array_split(np.asarray(count_trace_hz, dtype=float), n)
        rates = np.array([p.mean() for p in parts])
        r_med = float(np.median(rates))
        r_scale = _robust_scale(rates, SUBRUN_RATE_FLOOR * r_med)
        for i in range(n):
            z = (rates[i] - r_med) / r_scale
            if z > z_limit:
                reasons[i].append(f"count rate {rates[i] / 1e3:.1f} kHz above the median {r_med / 1e3:.1f} kHz "
                                  f"(z = {z:.1f}): a bright transient")
    rejected = [{"index": i, "reason": "; ".join(rs)} for i, rs in reasons.items() if rs]
    note = None
    if len(rejected) > n / 2:
        note = (f"{len(rejected)} of {n} sub-runs look transient: the sample is not steady; all kept")
        rejected = []
    used = [i for i in range(n) if i not in {r["index"] for r in rejected}]
    return {"used": used, "rejected": rejected, "g2_minus_1": np.mean([runs[i] for i in used], axis=0),
            "note": note}


# -- several angles -----------------------------------------------------------------------------
def extrapolate_to_zero_q(q_per_nm: Sequence[float], gamma_per_s: Sequence[float], *, temperature_c: float,
                          viscosity_mpa_s: float) -> dict[str, Any] | None:
    """D(q -> 0): the apparent D = Gamma / q^2 fitted linearly in q^2 (Frisken 2001; D_app =
    D0 (1 + C Rg^2 q^2) for particles not small against 1/q), the intercept D0 and its diameter.
    None with fewer than two distinct angles."""
    q = np.asarray(q_per_nm, dtype=float)
    g = np.asarray(gamma_per_s, dtype=float)
    keep = np.isfinite(q) & np.isfinite(g) & (g > 0)
    q, g = q[keep], g[keep]
    if np.unique(np.round(q, 12)).size < 2:
        return None
    d_app = g / q**2 * 1e-6
    slope, d0 = np.polyfit(q**2, d_app, 1)
    return {
        "diffusion_um2_s": float(d0),
        "diameter_nm": float(stokes_einstein_diameter_nm(d0, temperature_c, viscosity_mpa_s)) if d0 > 0 else None,
        "slope_um2_s_nm2": float(slope),
        "points": int(q.size),
    }


# -- the document -------------------------------------------------------------------------------
def _json(value: Any) -> Any:
    """Plain floats, ints, lists; None for NaN and infinities."""
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def _sigma_for(record: DLSRecord, index: int, n_lags: int) -> np.ndarray | None:
    """The file's per-lag standard deviation of g2 - 1 (ALV "StandardDeviation"), if any."""
    corr = record.correlations[index]
    own = getattr(corr, "g2_minus_1_sigma", None)
    raw = own if own is not None else (record.header or {}).get("StandardDeviation")
    if raw is None:
        return None
    arr = np.asarray(raw, dtype=float)
    if arr.ndim == 2:
        arr = arr[index] if arr.shape[0] > index and arr.shape[1] == n_lags else None
    if arr is None or arr.shape != (n_lags,) or not np.all(arr > 0):
        return None
    return arr


def _vendor(corr: Correlation, ours_diameter_nm: float | None) -> dict[str, Any] | None:
    if not corr.vendor_cumulants:
        return None
    orders = {}
    for order, values in sorted(corr.vendor_cumulants.items()):
        entry = dict(values)
        if entry.get("radius_nm"):
            entry["diameter_nm"] = 2.0 * float(entry["radius_nm"])
        orders[str(order)] = entry
    second = orders.get("2", {})
    z = second.get("diameter_nm")
    return {
        "cumulants": orders,
        "z_average_nm": z,
        "ratio_ours_to_vendor": (ours_diameter_nm / z) if (ours_diameter_nm and z) else None,
    }


def _empty_peaks() -> dict[str, list]:
    return {"intensity": [], "volume": [], "number": []}


def analyze_correlation(corr: Correlation, *, wavelength_nm: float, temperature_c: float, viscosity_mpa_s: float,
                        refractive_index: float, particle_refractive_index: float = 1.59, sigma=None,
                        fit_fraction: float = DEFAULT_FIT_FRACTION, diameters_nm=None, alpha: float | None = None,
                        polarization: str = "vertical") -> dict[str, Any]:
    """One measurement (one angle / channel) of the document; see :func:`analyze_record`."""
    lag, y = _arrays(corr.lag_s, corr.g2_minus_1)
    if sigma is not None:
        sigma = np.asarray(sigma, dtype=float)[:y.size]
    q = scattering_vector_per_nm(corr.angle_deg, wavelength_nm, refractive_index)
    warnings: list[str] = []
    quality_warnings: list[str] = []
    subrun_info: dict[str, Any] = {"used": [], "rejected": []}
    if corr.subruns:
        runs = [np.asarray(r, dtype=float)[:y.size] for r in corr.subruns]
        cls = classify_subruns(lag, runs, sigma=sigma, count_trace_time_s=corr.count_trace_time_s,
                               count_trace_hz=corr.count_trace_hz, fit_fraction=fit_fraction)
        subrun_info = {"used": cls["used"], "rejected": cls["rejected"]}
        if cls["note"]:
            warnings.append(cls["note"])
        if cls["rejected"]:
            y = cls["g2_minus_1"]
            sigma = None  # the file's sigma describes the average of all sub-runs
            quality_warnings.append(f"{len(cls['rejected'])} of {len(corr.subruns)} sub-runs rejected as transient")
    base = {
        "angle_deg": float(corr.angle_deg),
        "channel": corr.channel,
        "wavelength_nm": float(wavelength_nm),
        "temperature_c": float(temperature_c),
        "viscosity_mpa_s": float(viscosity_mpa_s),
        "refractive_index": float(refractive_index),
        "particle_refractive_index": float(particle_refractive_index),
        "q_per_nm": q,
        "count_rate_hz": corr.count_rate_hz,
    }
    check = correlation_check(lag, y, fit_fraction=fit_fraction)
    if not check["correlated"]:
        rates = count_rate_statistics(corr.count_trace_time_s, corr.count_trace_hz)
        tail = float(np.mean(y[-2 * TAIL_CHANNELS:]))
        warnings.append(check["reason"])
        return {**base, "z_average_nm": None, "pdi": None, "pdi_corrected": None, "gamma_per_s": None,
                "diffusion_um2_s": None, "intercept": check["intercept_estimate"], "baseline": tail,
                "cumulants": {}, "distribution": None, "peaks": _empty_peaks(), "inversion": None,
                "quality": {"intercept": check["intercept_estimate"], "baseline_deviation": None,
                            "noise": check["noise"], "snr": check["snr"],
                            "count_rate_cv": rates["count_rate_cv"] if rates else None,
                            "count_rate_cv_expected": None, "residual_rms": None, "subruns": subrun_info,
                            "verdict": "no correlation"},
                "vendor": _vendor(corr, None), "warnings": warnings}

    fits: dict[str, Any] = {}
    for order in (1, 2, 3):
        try:
            c = cumulants(lag, y, order=order, fit_fraction=fit_fraction, sigma=sigma)
        except ValueError as e:
            warnings.append(f"order-{order} cumulant fit failed: {e}")
            continue
        c["diffusion_um2_s"] = diffusion_um2_s(c["gamma_per_s"], q)
        c["diameter_nm"] = hydrodynamic_diameter_nm(c["gamma_per_s"], q, temperature_c, viscosity_mpa_s)
        fits[str(order)] = c
    second = fits.get("2")
    if second is None or not second["gamma_per_s"] > 0:
        warnings.append("no size: the 2nd-order cumulant fit gave no decay")
        return {**base, "z_average_nm": None, "pdi": None, "pdi_corrected": None, "gamma_per_s": None,
                "diffusion_um2_s": None, "intercept": check["intercept_estimate"], "baseline": None,
                "cumulants": fits, "distribution": None, "peaks": _empty_peaks(), "inversion": None,
                "quality": {"intercept": check["intercept_estimate"], "baseline_deviation": None,
                            "count_rate_cv": None, "count_rate_cv_expected": None, "residual_rms": None,
                            "subruns": subrun_info, "verdict": "no correlation"},
                "vendor": _vendor(corr, None), "warnings": warnings}
    corrected = corrected_pdi(lag, y, sigma=sigma)
    intercept = second["intercept"]
    baseline = second["baseline"]
    baseline_dev = baseline / intercept if baseline is not None else None
    residual_rel = second["residual_rms"] / intercept
    rates = count_rate_statistics(corr.count_trace_time_s, corr.count_trace_hz, intercept=min(intercept, 1.0),
                                  gamma_per_s=second["gamma_per_s"])

    if intercept > HIGH_INTERCEPT:
        quality_warnings.append(f"intercept {intercept:.2f} above 1: not one normalised correlation of a "
                                "Gaussian field (runs summed by the acquisition software, or few large scatterers)")
    elif intercept < LOW_INTERCEPT:
        quality_warnings.append(f"low intercept {intercept:.3f}: weak coherent signal (stray light, "
                                "misalignment or a weak scatterer)")
    if baseline_dev is None:
        warnings.append("baseline not measured: fewer than 4 lags beyond 5 decay times")
    elif abs(baseline_dev) > BASELINE_TOLERANCE:
        quality_warnings.append(f"baseline {baseline:+.4f} deviates by {100 * baseline_dev:+.1f}% of the intercept")
    if residual_rel > RESIDUAL_TOLERANCE:
        quality_warnings.append(f"2nd-order fit residual {100 * residual_rel:.1f}% of the intercept "
                                "(multimodal, or noisy)")
    if rates and rates["count_rate_cv_expected"] is not None:
        if (rates["count_rate_cv"] > COUNT_RATE_CV_FACTOR * rates["count_rate_cv_expected"]
                and rates["count_rate_cv"] > COUNT_RATE_CV_FLOOR):
            quality_warnings.append(f"count rate unstable: CV {rates['count_rate_cv']:.3f}, "
                                    f"{rates['count_rate_cv_expected']:.3f} expected from speckle and shot noise")
    if second["pdi"] is not None and second["pdi"] > BROAD_PDI:
        quality_warnings.append(f"PDI {second['pdi']:.2f}: too broad for a meaningful Z-average")
    if second["points"] < MIN_FIT_POINTS:
        quality_warnings.append(f"only {second['points']} channels in the cumulant fit")

    distribution, peaks, inv_info = None, _empty_peaks(), None
    try:
        inv = inversion.invert(lag, y, q_per_nm=q, temperature_c=temperature_c, viscosity_mpa_s=viscosity_mpa_s,
                               diameters_nm=diameters_nm, alpha=alpha, intercept=intercept, sigma=sigma)
        resolved = np.where(inversion.peak_bins(inv["intensity"]), inv["intensity"], 0.0)  # see inversion
        volume, number = inversion.intensity_to_volume_number(
            inv["diameter_nm"], resolved, wavelength_nm=wavelength_nm, angle_deg=corr.angle_deg,
            particle_refractive_index=particle_refractive_index, medium_refractive_index=refractive_index,
            polarization=polarization)
        distribution = {"diameter_nm": inv["diameter_nm"], "intensity": inv["intensity"], "volume": volume,
                        "number": number}
        peaks = {k: inversion.find_peaks(inv["diameter_nm"], distribution[k])
                 for k in ("intensity", "volume", "number")}
        inv_info = {k: inv[k] for k in ("alpha", "alpha_rule", "prob_to_reject", "degrees_of_freedom",
                                        "residual_rms", "fit_end_lag_s", "points")}
        inv_info["polarization"] = polarization
    except ValueError as e:
        warnings.append(f"size distribution not computed: {e}")

    verdict = "ok" if not quality_warnings else "warning: " + "; ".join(quality_warnings)
    return {
        **base,
        "z_average_nm": second["diameter_nm"],
        "pdi": second["pdi"],
        "pdi_corrected": corrected["pdi"],
        "pdi_corrected_method": corrected["method"],
        "gamma_per_s": second["gamma_per_s"],
        "diffusion_um2_s": second["diffusion_um2_s"],
        "intercept": intercept,
        "baseline": baseline,
        "cumulants": fits,
        "distribution": distribution,
        "peaks": peaks,
        "inversion": inv_info,
        "quality": {
            "intercept": intercept,
            "baseline_deviation": baseline_dev,
            "count_rate_cv": rates["count_rate_cv"] if rates else None,
            "count_rate_cv_expected": rates["count_rate_cv_expected"] if rates else None,
            "residual_rms": second["residual_rms"],
            "residual_rms_relative": residual_rel,
            "subruns": subrun_info,
            "verdict": verdict,
        },
        "vendor": _vendor(corr, second["diameter_nm"]),
        "warnings": warnings + quality_warnings,
    }


def check_record(record: DLSRecord) -> None:
    """The optics and medium a DLS size needs are physical (a damaged or mistyped file header,
    or options, would give sizes silently wrong): a one-line ExoacqError naming the value if not.
    A viscosity of 0 or none means "not recorded" (water at the temperature is used)."""
    where = record.source or "the measurement"

    def refuse(what: str, value: float, unit: str, allowed: str) -> None:
        raise ExoacqError(f"{where}: {what} {value:g}{unit} is not {allowed}", code="bad_input")

    if not 150.0 <= record.wavelength_nm <= 2000.0:  # NaN fails every comparison
        refuse("wavelength", record.wavelength_nm, " nm", "a laser's (150..2000 nm)")
    if not -20.0 <= record.temperature_c <= 150.0:
        refuse("temperature", record.temperature_c, " C", "a liquid sample's (-20..150 C)")
    viscosity = record.viscosity_mpa_s
    if viscosity is not None and not (math.isfinite(viscosity) and viscosity >= 0.0):
        refuse("viscosity", viscosity, " mPa s", "a medium's (> 0; 0: not recorded, water's is used)")
    if not 1.0 <= record.refractive_index <= 3.0:
        refuse("medium refractive index", record.refractive_index, "", "a liquid's (1..3)")
    for corr in record.correlations:
        if not 0.0 < corr.angle_deg < 180.0:
            refuse("scattering angle", corr.angle_deg, " deg", "between 0 and 180 deg")


def analyze_record(record: DLSRecord, *, particle_refractive_index: float = 1.59,
                   fit_fraction: float = DEFAULT_FIT_FRACTION, diameters_nm=None, alpha: float | None = None,
                   polarization: str = "vertical", use_file_sigma: bool = True) -> dict[str, Any]:
    """The analysis document of a record: ``{"schema": "exoacq.dls.analysis/1", "source",
    "format", "measurements": [...], "extrapolated": {"diffusion_um2_s", "diameter_nm", ...} or
    None, "warnings"}``, one measurement per correlation (angle / channel), JSON-ready.

    ``particle_refractive_index``: for the Mie volume and number distributions (1.59
    polystyrene; ~1.39 EVs). The medium's viscosity is the record's, else water at its
    temperature (IAPWS 2008). ``use_file_sigma``: weight fits with the correlator's own
    standard deviations when the file has them (ALV "StandardDeviation"). ``fit_fraction``: the
    cumulant fits, the correlation check and the sub-run classification use the channels down to
    this fraction of the intercept (ISO 22412: ~0.1); each cumulant fit records it as
    ``fit_fraction`` (the corrected PDI keeps its own fractions, CORRECTED_PDI_FRACTIONS).
    """
    check_fit_fraction(fit_fraction)
    check_record(record)
    viscosity = record.viscosity_mpa_s if record.viscosity_mpa_s else water_viscosity_iapws_mpa_s(record.temperature_c)
    measurements = []
    for i, corr in enumerate(record.correlations):
        sigma = _sigma_for(record, i, np.asarray(corr.lag_s).size) if use_file_sigma else None
        measurements.append(analyze_correlation(
            corr, wavelength_nm=record.wavelength_nm, temperature_c=record.temperature_c,
            viscosity_mpa_s=viscosity, refractive_index=record.refractive_index,
            particle_refractive_index=particle_refractive_index, sigma=sigma, fit_fraction=fit_fraction,
            diameters_nm=diameters_nm, alpha=alpha, polarization=polarization))
    warnings: list[str] = []
    sized = [m for m in measurements if m["gamma_per_s"]]
    angles = {round(m["angle_deg"], 6) for m in measurements}
    extrapolated = None
    if len(angles) > 1:
        extrapolated = extrapolate_to_zero_q([m["q_per_nm"] for m in sized], [m["gamma_per_s"] for m in sized],
                                             temperature_c=record.temperature_c, viscosity_mpa_s=viscosity)
        if extrapolated is None:
            warnings.append("no extrapolation to q = 0: fewer than two angles with a size")
    if measurements and not sized:
        warnings.append("no correlation at any angle: no size")
    return _json({
        "schema": SCHEMA,
        "source": record.source or (str(record.path) if record.path else ""),
        "format": record.format,
        "instrument": record.instrument,
        "measurements": measurements,
        "extrapolated": extrapolated,
        "warnings": warnings,
    })
