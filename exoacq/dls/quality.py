"""DLS quality verdicts: is there a correlation to size at all (blanks), which sub-runs hold a transient
(dust) and whether the count rate was steady.

Used by the measurement document (exoacq.dls.analysis) and by the live service.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from exoacq.dls.cumulants import DEFAULT_FIT_FRACTION, cumulants, curve_arrays

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
#: Sub-runs: a robust z-score (median, 1.4826 MAD, floors below) above this marks a transient.
SUBRUN_Z_LIMIT = 4.0
SUBRUN_GAMMA_FLOOR = 0.03   # relative scale floor of Gamma's spread
SUBRUN_TAIL_FLOOR = 0.01    # of the tail level, as a fraction of the intercept
SUBRUN_RATE_FLOOR = 0.03    # relative scale floor of the sub-runs' count rates


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
    lag, y = curve_arrays(lag_s, g2_minus_1)
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
