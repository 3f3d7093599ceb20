"""Measurement science of NTA sizing: per-track diffusion and size-distribution deconvolution.

Plain functions over numpy arrays; each track enters through running sums that
a tracker can keep in O(1) per feature (one frame interval per step, no gaps):

* ``n_steps``: one-frame 2-D steps (x and y each give one coordinate step);
* ``sum_sq_um2``: sum over steps of dx^2 + dy^2;
* ``sum_cross_um2``: sum over consecutive step pairs of dx_n dx_{n+1} + dy_n dy_{n+1};
* ``n_pairs``: number of such pairs (n_steps - 1 for a gap-free track).

Model (Vestergaard, Blainey & Flyvbjerg 2014, Phys. Rev. E 89:022726,
"VBF"): a recorded coordinate is the true Brownian position averaged with the
shutter (illumination) function over the exposure, plus independent Gaussian
localisation noise of variance sigma^2. With the motion-blur coefficient
R = (1/dt) int_0^dt S(t) (1 - S(t)) dt (S the cumulative fraction of the
exposure done at time t; 0 <= R <= 1/4), uniform illumination during an
exposure t_E <= dt gives R = t_E / (6 dt): R = 1/6 for a full-frame exposure,
R = 0 for a flash. The coordinate steps are then a Gaussian MA(1) process:

    <dx_n^2>          = 2 D dt (1 - 2R) + 2 sigma^2      (=: a)
    <dx_n dx_{n+1}>   = 2 R D dt - sigma^2                (=: b)
    <dx_n dx_{n+m}>   = 0 for m >= 2 (t_E <= dt).

The 2-D MSD at lag 1 is 4 D (dt - t_E/3) + 4 sigma^2, as in exoacq.nta.analysis.
The correction for the size-dependent detection depth is in exoacq.nta.detection_volume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls
from scipy.special import gammaln

from exoacq.physics import stokes_einstein_diffusion_um2_s, water_viscosity_iapws_mpa_s

#: Below this many tracks a deconvolved distribution is returned without statistics.
MIN_TRACKS_FOR_STATISTICS = 10


def blur_coefficient(exposure_s: float, frame_interval_s: float) -> float:
    """VBF motion-blur coefficient R = t_E / (6 dt) for uniform illumination during t_E <= dt.

    An exposure equal to the frame interval computed another way (1 / fps vs. a stored
    millisecond value) may exceed it in the last bit: it is taken as the whole interval."""
    if frame_interval_s <= 0 or not 0 <= exposure_s <= frame_interval_s * (1 + 1e-9):
        raise ValueError(f"need 0 <= exposure_s ({exposure_s}) <= frame_interval_s ({frame_interval_s}), dt > 0")
    return min(exposure_s, frame_interval_s) / (6.0 * frame_interval_s)


@dataclass(frozen=True)
class BlurEstimate:
    """The step covariance as a function of D, measured from the tracks (:func:`estimate_blur`).

    b(D) = R 2 D dt - sigma^2 per coordinate: ``blur`` is the slope R, ``localisation_variance_um2`` the
    intercept's -sigma^2 (an effective value: it can be negative when the detector shortens fast particles'
    blur more than slow ones').
    """

    blur: float
    localisation_variance_um2: float
    standard_error: float | None
    #: "tracks" (the regression resolved the slope), "spread too small" (the tracks' D do not differ enough to
    #: separate it: R then matters little, see :func:`estimate_blur`), "slope too uncertain", "too few tracks"
    source: str
    tracks: int

    @property
    def exposure_fraction(self) -> float:
        """The equivalent exposure as a fraction of the frame interval (uniform illumination: 6 R)."""
        return 6.0 * self.blur


#: Below this ratio of the tracks' true D spread to its standard error the regression is not used.
BLUR_MIN_SPREAD_SIGMAS = 3.0
#: A regression slope with a larger standard error is not used (the whole range 0..1/6 spans 8 of them).
BLUR_MAX_STANDARD_ERROR = 0.02
#: The blur assumed when the tracks cannot resolve it: half the frame exposed (R = 1/12), the middle of 0..1/6.
BLUR_UNRESOLVED = 1.0 / 12.0


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a b) by numpy's pairwise summation: the same bits on any machine and thread count (a BLAS dot
    product sums in an order that depends on its threads, so a Dask worker and a shell would differ)."""
    return float(np.sum(a * b))


def estimate_blur(n_steps, sum_sq_um2, sum_cross_um2, n_pairs) -> BlurEstimate:
    """The motion blur (and the localisation variance) from the tracks themselves, when the exposure is not
    known, or not to be trusted.

    Per track and coordinate (module docstring) the step variance a and lag-1
    covariance b satisfy b = R x - sigma^2 with x = a + 2b = 2 D dt: the
    covariance is linear in D with slope R. A regression of the tracks' b on
    their x over tracks of different D separates the two (the "blur
    regression" of VBF sec. V). What the size analysis needs is exactly this
    line, b(D), whatever its causes: a(D) = 2 D dt - 2 b(D) is the mean
    squared step that :func:`sum_sq_log_likelihood` maps to D. Its causes are
    more than the shutter: a detector's centroid window shortens the blur
    streaks of fast particles more than those of slow ones, and dim (small,
    fast) particles are localised worse; both flatten the line, and a
    regression finds the flattened line (a known exposure gives the textbook
    one). b and x are estimated from the same steps, so the regression is
    corrected for their sampling noise (errors in variables, method of
    moments): for MA(1) steps, per coordinate, var(a-hat) = 2(a^2 + 2b^2)/N,
    var(b-hat) = (a^2 + 3b^2)/M, cov(a-hat, b-hat) = 4ab/N (Bartlett's
    formula), halved for the mean of two coordinates, with unbiased plug-ins
    of a^2, b^2 and ab, subtracted from the weighted cross-products. Tracks
    are weighted by their number of step pairs (weights from a track's own
    noisy variance would bias the fit).

    Needs a spread of true D among the tracks (polydisperse samples). In a
    monodisperse sample the slope is not identified, but neither is it
    needed: any line through the sample's (x, b) makes a and b right at its D,
    so the sizes hardly depend on the slope; R = 1/12 (the middle of 0..1/6)
    is then used. The line's sigma^2 is that of the typical track (the weighted
    median of VBF eq. 15 at the slope), so that a few tracks linked at random
    do not lend their large steps to all the others.
    """
    n, s, c, m = _sums(n_steps, sum_sq_um2, sum_cross_um2, n_pairs)
    ok = (m > 0) & (n > 0)
    n, s, c, m = n[ok], s[ok], c[ok], m[ok]
    if n.size == 0:
        raise ValueError("the blur needs at least one track with two consecutive steps (3 points)")
    a, b = s / (2.0 * n), c / (2.0 * m)
    x = a + 2.0 * b
    w = m / m.sum()
    xm, bm = _dot(w, x), _dot(w, b)

    def through_mean(slope: float, source: str, se: float | None = None) -> BlurEstimate:
        # sigma^2 = R a + (2R - 1) b of the typical track (weighted median, VBF eq. 15): the line through the
        # sample's (x, b), robust to the few tracks linked at random, and not clamped at 0
        sigma2 = robust_localisation_variance_um2(n, s, c, m, slope, clamp=False)
        return BlurEstimate(slope, sigma2, se, source, int(n.size))

    # unresolved: the middle of 0..1/6, or more when the covariance itself says so (sigma^2 >= 0: R >= b / x)
    unresolved = min(max(BLUR_UNRESOLVED, bm / xm if xm > 0 else 0.0), 1.0 / 6.0)
    if n.size < MIN_TRACKS_FOR_STATISTICS:
        return through_mean(unresolved, "too few tracks")
    a2 = (a**2 - 2.0 * b**2 / n) / (1.0 + 1.0 / n)
    b2 = (b**2 - a2 / (2.0 * m)) / (1.0 + 3.0 / (2.0 * m))
    ab = a * b / (1.0 + 2.0 / n)
    var_a, var_b, cov_ab = (a2 + 2 * b2) / n, (a2 + 3 * b2) / (2.0 * m), 2.0 * ab / n
    var_x, cov_xb = var_a + 4.0 * cov_ab + 4.0 * var_b, cov_ab + 2.0 * var_b
    sxx = _dot(w, (x - xm) ** 2) - _dot(w, var_x)
    sxb = _dot(w, (x - xm) * (b - bm)) - _dot(w, cov_xb)
    noise = math.sqrt(_dot(w**2, 2 * var_x**2 + 4 * var_x * (x - xm) ** 2))
    if not sxx > BLUR_MIN_SPREAD_SIGMAS * noise:
        return through_mean(unresolved, "spread too small")
    slope = sxb / sxx
    residual = b - bm - slope * (x - xm)
    se = math.sqrt(_dot(w**2, residual**2 * (x - xm) ** 2)) / sxx
    if not se <= BLUR_MAX_STANDARD_ERROR:  # a slope known no better than this is no better than the middle
        return through_mean(unresolved, "slope too uncertain", se)
    return through_mean(float(np.clip(slope, 0.0, 0.25)), "tracks", se)


def track_step_sums(x_um, y_um) -> tuple[int, float, float, int]:
    """(n_steps, sum_sq_um2, sum_cross_um2, n_pairs) of one gap-free track's positions."""
    x, y = np.asarray(x_um, float), np.asarray(y_um, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x_um and y_um must be 1-D arrays of the same length")
    dx, dy = np.diff(x), np.diff(y)
    cross = float(np.dot(dx[:-1], dx[1:]) + np.dot(dy[:-1], dy[1:])) if dx.size > 1 else 0.0
    return dx.size, float(np.dot(dx, dx) + np.dot(dy, dy)), cross, max(dx.size - 1, 0)


def _sums(n_steps, sum_sq_um2, sum_cross_um2=None, n_pairs=None):
    arrays = [np.atleast_1d(np.asarray(a, float)) for a in (n_steps, sum_sq_um2, sum_cross_um2, n_pairs)
              if a is not None]
    if any(a.shape != arrays[0].shape or a.ndim != 1 for a in arrays):
        raise ValueError("per-track sums must be 1-D arrays of one length")
    if arrays[0].size == 0:
        raise ValueError("no tracks")
    if np.any(arrays[0] < 0) or np.any(arrays[1] < 0) or (len(arrays) == 4 and np.any(arrays[3] < 0)):
        raise ValueError("step counts and sums of squares must be >= 0")
    return arrays


def cve_diffusion_um2_s(n_steps, sum_sq_um2, sum_cross_um2, n_pairs, frame_interval_s: float) -> np.ndarray:
    """Covariance-based estimator of D per track (VBF eq. 14), unbiased under localisation error and blur.

    D = <dx^2> / (2 dt) + <dx_n dx_{n+1}> / dt, averaged over both coordinates;
    independent of sigma^2 and R. NaN for tracks without a pair of consecutive
    steps (fewer than 3 points). Single tracks can give D < 0: keep such values
    when averaging, or the mean is biased.
    """
    n, s, c, m = _sums(n_steps, sum_sq_um2, sum_cross_um2, n_pairs)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = s / (2.0 * n) / (2.0 * frame_interval_s) + c / (2.0 * m) / frame_interval_s
    return np.where(m > 0, d, np.nan)


def cve_localisation_variance_um2(n_steps, sum_sq_um2, sum_cross_um2, n_pairs, blur: float) -> np.ndarray:
    """Per-track, per-coordinate localisation variance sigma^2 = R <dx^2> + (2R - 1) <dx_n dx_{n+1}> (VBF eq. 15).

    ``blur`` is the coefficient R (:func:`blur_coefficient`). NaN without a step pair.
    """
    n, s, c, m = _sums(n_steps, sum_sq_um2, sum_cross_um2, n_pairs)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = blur * s / (2.0 * n) + (2.0 * blur - 1.0) * c / (2.0 * m)
    return np.where(m > 0, v, np.nan)


def pooled_localisation_variance_um2(n_steps, sum_sq_um2, sum_cross_um2, n_pairs, blur: float) -> float:
    """sigma^2 common to all tracks: the per-track VBF eq. 15 estimates averaged with weights n_pairs.

    Each per-track estimate is unbiased whatever the track's D, so the weighted
    mean is too (pooling the sums themselves would not be, for a polydisperse
    sample). sigma^2 depends on brightness, hence on size: this is an average.
    Its error is of order D dt / sqrt(pairs), so when sigma^2 << D dt (small
    particles) it can come out negative; and an error dR in the blur
    coefficient shifts it by 2 D dt dR (a = 2 D dt (1-2R) + 2 sigma^2 stays right).
    """
    v = cve_localisation_variance_um2(n_steps, sum_sq_um2, sum_cross_um2, n_pairs, blur)
    m = np.atleast_1d(np.asarray(n_pairs, float))
    if not np.any(m > 0):
        raise ValueError("sigma^2 needs at least one track with two consecutive steps (3 points); "
                         "or pass a known localisation variance")
    return float(np.sum(np.where(m > 0, v, 0.0) * m) / m.sum())


def robust_localisation_variance_um2(n_steps, sum_sq_um2, sum_cross_um2, n_pairs, blur: float,
                                     clamp: bool = True) -> float:
    """sigma^2 of the typical track: the median of the per-track VBF eq. 15 estimates, weighted by
    n_pairs, and at least 0.

    Like :func:`pooled_localisation_variance_um2` for a homogeneous sample (the
    per-track estimates are unbiased and nearly symmetric), but a minority of
    tracks with a much larger sigma^2 (noise features linked at random, dim
    particles at the sheet's edge) does not lend it to all the others; in the
    likelihood of :func:`deconvolve_size_distribution`, too large a sigma^2
    makes every particle look larger. A negative median (sigma^2 below what the
    tracks can resolve) gives 0, unless ``clamp`` is False (an effective sigma^2, :func:`estimate_blur`).
    """
    v = cve_localisation_variance_um2(n_steps, sum_sq_um2, sum_cross_um2, n_pairs, blur)
    m = np.atleast_1d(np.asarray(n_pairs, float))
    ok = (m > 0) & np.isfinite(v)
    if not np.any(ok):
        raise ValueError("sigma^2 needs at least one track with two consecutive steps (3 points)")
    order = np.argsort(v[ok])
    cumulative = np.cumsum(m[ok][order])
    median = float(v[ok][order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])
    return max(median, 0.0) if clamp else median


def cve_variance_um4_s2(diffusion_um2_s, localisation_variance_um2, n_steps, frame_interval_s: float,
                        blur: float, dimensions: int = 2) -> np.ndarray:
    """Variance of the CVE of D from one gap-free track of N = n_steps steps.

    With eps = sigma^2 / (D dt) - 2R (VBF's reduced localisation error), the
    exact variance for Gaussian MA(1) steps (Isserlis' theorem; <dx^2> averaged
    over N steps, the covariance over N - 1 pairs), per coordinate, is

        D^2 [2(1+eps)^2/N + (N-1) eps^2/N^2 + (4(1+eps)^2 + eps^2)/(N-1)
             + 2(N-2) eps^2/(N-1)^2 - 8 eps (1+eps)/N],

    divided by ``dimensions`` for the mean over independent coordinates. Its
    leading term D^2 (6 + 4 eps + 2 eps^2)/N is VBF's eq. for var(D_CVE);
    their 1/N^2 term, 4(1+eps)^2/N^2, is an approximation of the rest.
    Evaluate it at the best available D and sigma^2 (e.g. pooled values): a
    track's own D-hat makes the variance itself noisy. NaN for N < 2.
    """
    d = np.asarray(diffusion_um2_s, float)
    n = np.asarray(n_steps, float)
    eps = np.asarray(localisation_variance_um2, float) / (d * frame_interval_s) - 2.0 * blur
    e1 = (1.0 + eps) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        v = d**2 * (2 * e1 / n + (n - 1) * eps**2 / n**2 + (4 * e1 + eps**2) / (n - 1)
                    + 2 * (n - 2) * eps**2 / (n - 1) ** 2 - 8 * eps * (1 + eps) / n) / dimensions
    return np.where(n >= 2, v, np.nan)


def step_moments_um2(diffusion_um2_s, frame_interval_s: float, blur: float, localisation_variance_um2: float):
    """(a, b): variance and lag-1 covariance of one coordinate step (module docstring)."""
    u = np.asarray(diffusion_um2_s, float) * frame_interval_s
    s2 = localisation_variance_um2
    return 2.0 * u * (1.0 - 2.0 * blur) + 2.0 * s2, 2.0 * blur * u - s2


def sum_sq_log_likelihood(n_steps, sum_sq_um2, diffusion_um2_s, frame_interval_s: float, blur: float,
                          localisation_variance_um2: float) -> np.ndarray:
    """log p(sum_sq | D, n): tracks x D matrix (one row per track, one column per D).

    The sum of squared 2-D steps of a track is a sum of 2n correlated Gaussian
    squares: exactly 2a times a chi-square with 2n degrees of freedom when
    b = 0 (Walker 2012, Meas. Sci. Technol. 23:065605). With blur and
    localisation error (b != 0) it is a weighted sum of chi-squares, here a
    gamma law with its exact mean 2na and variance 4(n a^2 + 2(n-1) b^2)
    (Welch-Satterthwaite); for NTA, |b|/a ~ 0.1 and the match is close.
    """
    n = np.asarray(n_steps, float)[:, None]
    s = np.asarray(sum_sq_um2, float)[:, None]
    a, b = step_moments_um2(np.asarray(diffusion_um2_s, float)[None, :], frame_interval_s, blur,
                            localisation_variance_um2)
    if not np.all(np.isfinite(a)):
        raise ValueError("step variance 2 D dt (1-2R) + 2 sigma^2 is not finite")
    # an effective sigma^2 < 0 (estimate_blur) leaves no step variance to the slowest D of a grid: no track
    # comes from there
    a = np.maximum(a, 1e-6 * np.max(a))
    var_over_4 = n * a**2 + 2.0 * (n - 1.0) * b**2
    shape = n**2 * a**2 / var_over_4
    scale = 2.0 * var_over_4 / (n * a)
    return (shape - 1.0) * np.log(s) - s / scale - shape * np.log(scale) - gammaln(shape)


def distribution_statistics(diameter_nm, probability) -> dict[str, float]:
    """Mean, mode, SD, D10, D50, D90 (nm) of a number distribution on a grid of diameters.

    Each grid point stands for a cell between the log-midpoints to its
    neighbours, uniform in ln(d) within it; quantiles interpolate the
    cumulative distribution across cells. The mode is the maximum of the
    density per nm, refined by a parabola through the neighbouring cells.
    Mean and SD are those of the grid points (SD with no Bessel correction).
    """
    d = np.asarray(diameter_nm, float)
    p = np.asarray(probability, float)
    if d.ndim != 1 or d.shape != p.shape or d.size < 3 or np.any(np.diff(d) <= 0) or d[0] <= 0:
        raise ValueError("need >= 3 increasing positive diameters and one probability each")
    if np.any(p < 0) or not p.sum() > 0:
        raise ValueError("probabilities must be >= 0 with a positive sum")
    p = p / p.sum()
    ln = np.log(d)
    mid = (ln[1:] + ln[:-1]) / 2.0
    edges = np.concatenate([[2 * ln[0] - mid[0]], mid, [2 * ln[-1] - mid[-1]]])  # cells in ln(d)
    widths = np.diff(edges)
    mean = float(p @ d)
    cdf = np.cumsum(p)
    quantiles = []
    for q in (0.1, 0.5, 0.9):
        j = min(int(np.searchsorted(cdf, q)), d.size - 1)
        frac = np.clip((q - (cdf[j] - p[j])) / p[j], 0.0, 1.0) if p[j] > 0 else 0.5
        quantiles.append(float(np.exp(edges[j] + frac * widths[j])))
    density = p / (np.exp(edges[1:]) - np.exp(edges[:-1]))
    j = int(np.argmax(density))
    ln_mode = math.log(d[j])
    if 0 < j < d.size - 1:
        f0, f1, f2 = density[j - 1 : j + 2]
        curvature = f0 - 2 * f1 + f2
        if curvature < 0:
            ln_mode += float(np.clip(0.5 * (f0 - f2) / curvature, -0.5, 0.5)) * widths[j]
    return {"mean": mean, "mode": math.exp(ln_mode), "sd": float(math.sqrt(p @ (d - mean) ** 2)),
            "d10": quantiles[0], "d50": quantiles[1], "d90": quantiles[2]}


@dataclass(frozen=True)
class SizeDistribution:
    """A deconvolved number size distribution.

    ``probability[j]``: number fraction in the cell of ``diameter_nm[j]`` (sums
    to 1). ``statistics``: None with a ``reason`` when there are too few tracks.
    ``smoothing_ln_sd``: the kernel width of ``probability`` (0: plain ML);
    ``mode_smoothing_ln_sd``: that of the distribution the mode comes from.
    ``kkt_gap``: bound (nats, all tracks) on the distance to the maximum.
    ``mode_probability``: the smoothed distribution the mode comes from.
    ``track_ln_diameter``: per input track, the posterior mean of ln(d / nm)
    under ``probability`` (NaN for tracks without a step).
    """

    diameter_nm: np.ndarray
    probability: np.ndarray
    statistics: dict[str, float] | None
    reason: str | None
    n_tracks: int
    iterations: int
    converged: bool
    kkt_gap: float
    log_likelihood: float
    smoothing_ln_sd: float
    mode_smoothing_ln_sd: float | None
    mode_probability: np.ndarray
    track_ln_diameter: np.ndarray


def default_diameter_grid_nm(low_nm: float = 10.0, high_nm: float = 2000.0, points: int = 200) -> np.ndarray:
    """Log-spaced diameters (200 points over 10-2000 nm: 2.7 % apart)."""
    return np.geomspace(low_nm, high_nm, points)


def _newton(f: np.ndarray, w: np.ndarray, tolerance_nats: float, max_iterations: int):
    """Maximise sum_i w_i log (f p)_i over the simplex; returns (p, converged, gap, iterations).

    Constrained Newton method (Wang 2007, J. R. Stat. Soc. B 69:185): with
    q = f p and g_j = mean_i f_ij / q_i, the support is extended by the local
    maxima of g above 1; on it the second-order expansion of the
    log-likelihood is maximised by non-negative least squares,
    min sum_i w_i ((S pi)_i - 2)^2 with S_ij = f_ij / q_i and sum(pi) = 1 imposed by a
    heavily weighted extra row; pi - p is the direction of an Armijo line search.
    """
    points, tracks, root_w = f.shape[1], float(w.sum()), np.sqrt(w)
    p = np.full(points, 1.0 / points)
    q = f @ p
    log_likelihood = float(w @ np.log(q))
    gap = math.inf
    for iteration in range(1, max_iterations + 1):
        gradient = f.T @ (w / q)  # = tracks * g
        gap = float(gradient.max()) - tracks
        if gap < tolerance_nats:
            return p, True, gap, iteration
        padded = np.concatenate([[-np.inf], gradient, [-np.inf]])
        peaks = (gradient >= padded[:-2]) & (gradient >= padded[2:]) & (gradient > tracks)
        support = np.flatnonzero((p > 0) | peaks)
        weight_row = np.full((1, support.size), 1e3 * math.sqrt(tracks))  # without it, pi = 2 p is exact
        weights, _ = nnls(np.vstack([f[:, support] * (root_w / q)[:, None], weight_row]),
                          np.append(2.0 * root_w, weight_row[0, 0]), maxiter=50 * support.size)
        if not weights.sum() > 0:
            return p, False, gap, iteration
        direction = -p
        direction[support] += weights / weights.sum()
        slope, step = float(gradient @ direction), 1.0
        while True:
            trial = p + step * direction
            q_trial = f @ trial
            ll_trial = float(w @ np.log(q_trial)) if np.all(q_trial > 0) else -math.inf
            if ll_trial >= log_likelihood + step * slope / 3.0 or step < 1e-10:
                break
            step /= 2.0
        if ll_trial < log_likelihood:
            return p, False, gap, iteration
        p = np.where(trial > 1e-14 * trial.max(), trial, 0.0)
        p /= p.sum()
        q = f @ p
        log_likelihood = float(w @ np.log(q))
    return p, False, gap, max_iterations


def _em(f: np.ndarray, w: np.ndarray, tolerance_nats: float, max_iterations: int):
    """EM for mixture weights (Dempster, Laird & Rubin 1977): p_j <- p_j g_j from p uniform."""
    points, tracks = f.shape[1], float(w.sum())
    p = np.full(points, 1.0 / points)
    gap = math.inf
    for iteration in range(1, max_iterations + 1):
        gradient = f.T @ (w / (f @ p))
        gap = float(gradient.max()) - tracks
        if gap < tolerance_nats:
            return p, True, gap, iteration
        p = p * gradient / tracks
        p /= p.sum()
    return p, False, gap, max_iterations


def smoothing_kernel(grid, ln_sd: float) -> np.ndarray:
    """K[i, j]: a Gaussian bump of SD ``ln_sd`` in ln(d) centred on grid[j], normalised over i."""
    ln = np.log(np.asarray(grid, float))
    kernel = np.exp(-0.5 * ((ln[:, None] - ln[None, :]) / ln_sd) ** 2)
    return kernel / kernel.sum(axis=0, keepdims=True)


def smooth_distribution(grid, probability, ln_sd: float | None) -> np.ndarray:
    """``probability`` on ``grid`` convolved with a Gaussian of SD ``ln_sd`` in ln(d) (unchanged for 0 or None),
    renormalised: e.g. an ML distribution (a few spikes) smoothed by the width its likelihood allows
    (:attr:`SizeDistribution.mode_smoothing_ln_sd`), for its mode and histograms."""
    p = np.asarray(probability, float)
    if not ln_sd:
        return p / p.sum()
    out = smoothing_kernel(grid, ln_sd) @ p
    return out / out.sum()


def _fit(f, w, grid, smoothing_ln_sd, method, tolerance_nats, max_iterations):
    """ML of p = K pi, K Gaussian bumps of SD smoothing_ln_sd in ln(d) (identity for 0)."""
    kernel = smoothing_kernel(grid, smoothing_ln_sd) if smoothing_ln_sd > 0 else None
    solver = {"newton": _newton, "em": _em}[method]
    pi, converged, gap, iterations = solver(f if kernel is None else f @ kernel, w, tolerance_nats, max_iterations)
    p = pi if kernel is None else kernel @ pi
    return p / p.sum(), converged, gap, iterations, float(w @ np.log(f @ p))


def _smoothest(f, w, grid, log_likelihood_ml, nats, *fit_options):
    """Widest kernel (geometric bisection over 0.01-0.5 in ln(d)) within ``nats`` of the ML log-likelihood."""
    low, high, best = 0.0, 0.5, None
    for _ in range(8):
        s = math.sqrt(max(low, 0.01) * high)
        fit = _fit(f, w, grid, s, *fit_options)
        if log_likelihood_ml - fit[4] <= nats:
            low, best = s, fit
        else:
            high = s
    return low, best


def deconvolve_size_distribution(
    n_steps, sum_sq_um2, *, frame_interval_s: float, exposure_s: float | None, temperature_c: float,
    localisation_variance_um2: float, viscosity_mpa_s: float | None = None, diameter_grid_nm=None,
    method: str = "newton", smoothing_ln_sd: float | str = 0.0, smoothing_nats: float = 1.92,
    tolerance_nats: float = 0.01, max_iterations: int = 500, min_tracks: int = MIN_TRACKS_FOR_STATISTICS,
    track_weights=None, blur: float | None = None,
) -> SizeDistribution:
    """Maximum-likelihood number size distribution from short tracks (Walker 2012; Kim 2019, Sci. Rep. 9:2639).

    The unknown is p on a diameter grid (Stokes-Einstein; IAPWS viscosity at
    ``temperature_c`` unless given). Track i contributes log sum_j p_j
    f(S_i | D_j, n_i), f from :func:`sum_sq_log_likelihood` with the blur of
    ``exposure_s`` (or ``blur``, R itself, e.g. from :func:`estimate_blur`) and ``localisation_variance_um2`` (per coordinate; known, or
    :func:`robust_localisation_variance_um2` or :func:`pooled_localisation_variance_um2`, used as it is if slightly
    negative). Tracks of one step count; tracks of none are dropped.

    The fit is that of the tracks, each one observation (log L = sum_i log
    sum_j q_j f_ij, the likelihood of each track's steps given its length).
    ``track_weights`` w_i (e.g. the track's number of points, so that p is the
    distribution of the particles present in a frame, as counted for the
    concentration, rather than of tracks, which over-represent fast particles,
    whose tracks end sooner) are then spread over the sizes by each track's
    posterior under q: p_j = sum_i w_i r_ij / sum_i w_i, r_ij = q_j f_ij /
    (f q)_i. Weighting the log-likelihood itself (log L = sum_i w_i log (f p)_i)
    would use the points' distribution as every track's prior: the short,
    ambiguous tracks of a dim population would then be drawn to a brighter one
    with long tracks (a simulated 2:1 100 + 150 nm mixture, 100 nm near the
    threshold: the 100 nm peak at 86 nm, and the sample's mean +24 %, where
    this reads +2 %). Long tracks, whose posterior is sharp, are assigned alike
    either way.

    p >= 0, sum(p) = 1; the log-likelihood is concave in p. Stopping rule:
    with g_j = mean_i f_ij / (f p)_i, the log-likelihood is at most
    ``kkt_gap`` = n_tracks (max_j g_j - 1) below its maximum (Lindsay 1983,
    Ann. Stat. 11:86); iterations stop when that is below ``tolerance_nats``
    (all tracks together), else after ``max_iterations`` (``converged`` False).
    ``method``: "newton", the constrained Newton method (Wang 2007), ~10-30
    iterations; or "em", EM's multiplicative updates p_j <- p_j g_j: hundreds
    to thousands (raise ``max_iterations``). EM stopped early is smoother than
    the data warrant (2:1 mixture of 100/150 nm: D50 +3-6 % at a gap of 1e-3
    nats per track, +0-2 % converged).

    The ML solution is a few spikes (a discrete mixing distribution; Lindsay
    1983): mean, SD and quantiles are sound, the tallest spike is not a
    reliable mode. ``smoothing_ln_sd`` s > 0 restricts p to mixtures of
    Gaussian bumps of SD s in ln(d) (same solver and rule); "auto" takes the
    widest s within ``smoothing_nats`` (1.92: a 95 % likelihood-ratio bound
    for one parameter) of the ML log-likelihood. With s = 0, the mode (only)
    comes from that "auto" distribution. On simulated tracks "auto" picks
    s ~ 0.04-0.08 for monodisperse samples (mode within 2 %, the tallest ML
    spike within 5 %) but moves the D50 of a 2:1 100/150 nm mixture by
    +3-7 % (ML: +0-4 %); for a log-normal of ln-SD 0.4 no mode is within ~20 %.
    """
    n, s = _sums(n_steps, sum_sq_um2)
    w = np.ones_like(n) if track_weights is None else np.asarray(track_weights, float)
    if w.shape != n.shape or not np.all(np.isfinite(w) & (w > 0)):
        raise ValueError("track_weights: one finite weight > 0 per track")
    keep = n > 0
    n, s, w = n[keep], s[keep], w[keep]
    ones = np.ones_like(w)  # the fit: each track one observation (see the docstring)
    if n.size == 0:
        raise ValueError("no track with a step: a size distribution needs tracks of >= 2 points")
    if np.any(s <= 0):
        raise ValueError("a track with steps has sum_sq_um2 <= 0")
    if method not in ("newton", "em"):
        raise ValueError(f"method = {method!r}; allowed: 'newton', 'em'")
    grid = default_diameter_grid_nm() if diameter_grid_nm is None else np.asarray(diameter_grid_nm, float)
    eta = water_viscosity_iapws_mpa_s(temperature_c) if viscosity_mpa_s is None else viscosity_mpa_s
    d_grid = stokes_einstein_diffusion_um2_s(grid, temperature_c, eta)
    if blur is None:
        blur = blur_coefficient(exposure_s, frame_interval_s)
    log_f = sum_sq_log_likelihood(n, s, d_grid, frame_interval_s, blur, localisation_variance_um2)
    row_max = log_f.max(axis=1)
    f = np.exp(log_f - row_max[:, None])
    options = (method, tolerance_nats, max_iterations)
    auto = smoothing_ln_sd == "auto"
    width = 0.0 if auto else float(smoothing_ln_sd)
    p, converged, gap, iterations, log_likelihood = _fit(f, ones, grid, width, *options)
    mode_width, mode_p = width, p
    statistics, reason = None, None
    if n.size < min_tracks:
        reason = f"{n.size} track(s) with steps; size statistics need >= {min_tracks}"
        mode_width = None
    elif auto or width == 0.0:
        mode_width, fit = _smoothest(f, ones, grid, log_likelihood, smoothing_nats, *options)
        mode_p = p if fit is None else fit[0]
        if auto and fit is not None:
            width, (p, converged, gap, iterations, log_likelihood) = mode_width, fit
    posterior = _posterior(f, p)
    ln_d = np.full(keep.shape, np.nan)
    ln_d[keep] = posterior @ np.log(grid)
    if track_weights is not None:  # tracks' distribution -> that of their points, each track's points by its posterior
        p, mode_p = _spread(w, posterior), _spread(w, _posterior(f, mode_p))
    if reason is None:
        statistics = distribution_statistics(grid, p) | {"mode": distribution_statistics(grid, mode_p)["mode"]}
    return SizeDistribution(grid, p, statistics, reason, int(n.size), iterations, converged, gap,
                            log_likelihood + float(row_max.sum()), width, mode_width, mode_p / mode_p.sum(), ln_d)


def _posterior(f: np.ndarray, p: np.ndarray) -> np.ndarray:
    """r_ij = p_j f_ij / (f p)_i: each track's posterior over the grid under the tracks' distribution p."""
    posterior = f * p[None, :]
    return posterior / posterior.sum(axis=1, keepdims=True)


def _spread(w: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """sum_i w_i r_ij / sum_i w_i: each track's weight spread over the sizes by its posterior."""
    out = w @ posterior
    return out / out.sum()


def rebin_number_distribution(diameter_nm, probability, edges_nm) -> np.ndarray:
    """Number fractions of a grid distribution in the bins ``edges_nm`` (cells uniform in ln(d), as
    :func:`distribution_statistics`); what lies outside the bins is dropped."""
    d = np.asarray(diameter_nm, float)
    p = np.asarray(probability, float)
    ln = np.log(d)
    mid = (ln[1:] + ln[:-1]) / 2.0
    cells = np.concatenate([[2 * ln[0] - mid[0]], mid, [2 * ln[-1] - mid[-1]]])
    cdf = np.concatenate([[0.0], np.cumsum(p / p.sum())])
    with np.errstate(divide="ignore"):
        ln_edges = np.log(np.asarray(edges_nm, float))
    return np.diff(np.interp(ln_edges, cells, cdf, left=0.0, right=1.0))


#: The VBF model (no step covariance at lag 2) is rejected when the lag-2 covariance differs from 0 by at least
#: this many standard errors (two-sided p ~ 6e-5: chance covariances of VBF steps, |z| ~ 2-2.5 at times over a
#: video's lags and thresholds, must not move D); then further lags enter while they differ from 0 by at least
#: STEP_CORRELATION_Z (the +-2 SE cut-off of an MA(q) autocorrelation: Box & Jenkins, Time Series Analysis,
#: 1970, ch. 6). See :func:`step_correlation_correction_um2_s`.
STEP_CORRELATION_Z_MODEL = 4.0
STEP_CORRELATION_Z = 2.0
STEP_CORRELATION_MAX_LAG = 20


@dataclass(frozen=True)
class StepCorrelation:
    """The ensemble's step covariances beyond lag 1 and what they add to every track's CVE of D."""

    #: Lags summed: 1 means none beyond the CVE's own (the VBF model holds).
    lags: int
    diffusion_correction_um2_s: float
    #: Per-coordinate covariance over the variance of the steps, lags 2 .. lags.
    correlations: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"lags": self.lags, "diffusion_correction_um2_s": self.diffusion_correction_um2_s,
                "correlations": list(self.correlations)}


def step_correlation_correction_um2_s(particle: np.ndarray, dx_um: np.ndarray, dy_um: np.ndarray,
                                      frame_interval_s: float, max_lag: int = STEP_CORRELATION_MAX_LAG,
                                      z_model: float = STEP_CORRELATION_Z_MODEL,
                                      z: float = STEP_CORRELATION_Z) -> StepCorrelation:
    """What position errors correlated over more than one frame take from the CVE of D, from the ensemble.

    ``dx_um``, ``dy_um``: the one-frame steps (drift removed) of gap-free tracks, each track's steps
    contiguous and in frame order, ``particle`` their track ids.

    D is the sum of the steps' autocovariances over all lags (the Green-Kubo relation in discrete time):
    per coordinate, D = [gamma_0 + 2 sum_{m >= 1} gamma_m] / (2 dt). A stationary position error e_n of
    finite memory adds (e_{n+1} - e_n) to the steps, whose autocovariances sum to zero over all lags, so the
    sum is unbiased by any such error once its window covers the error's memory. VBF's CVE is the window of
    one lag: exact for independent errors and blur within one exposure (gamma_m = 0 for m >= 2). Errors
    that last several frames (video compression that predicts a frame from the previous ones, temporal
    noise filters, frame-rate conversion, slow motion over a fixed pattern) make gamma_m != 0 at m >= 2 for
    every track, whatever its D; the CVE then misses 2 sum_{m>=2} gamma_m / (2 dt). Those gamma_m are
    measured on the ensemble (all the tracks' step pairs at lag m). The steps are then an MA(q) process with
    q > 1: when gamma_2 differs from 0 by at least ``z_model`` standard errors (the VBF model rejected),
    q is identified as by Box & Jenkins, the last lag before the first whose gamma_m is within ``z``
    standard errors of 0, and gamma_2 .. gamma_q are summed. For steps that follow the VBF model nothing is
    added. Returns the window q and the correction to add to every track's CVE.
    """
    particle = np.asarray(particle)
    dx, dy = np.asarray(dx_um, float), np.asarray(dy_um, float)
    variance = float(np.mean(dx * dx + dy * dy) / 2.0) if dx.size else 0.0
    correlations: list[float] = []
    total = 0.0
    for lag in range(2, max_lag + 1):
        same = particle[lag:] == particle[:-lag] if dx.size > lag else np.zeros(0, bool)
        if same.sum() < 2 or not variance > 0:
            break
        products = (dx[lag:][same] * dx[:-lag][same] + dy[lag:][same] * dy[:-lag][same]) / 2.0
        mean, standard_error = float(products.mean()), float(products.std(ddof=1) / math.sqrt(products.size))
        if not abs(mean) >= (z_model if lag == 2 else z) * standard_error:
            break
        correlations.append(mean / variance)
        total += mean
    return StepCorrelation(lags=1 + len(correlations), diffusion_correction_um2_s=total / frame_interval_s,
                           correlations=tuple(round(c, 4) for c in correlations))
