"""Per-track diffusion from steps: the motion-blur model, the covariance estimator of D, the localisation error.

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
The size distribution deconvolved from these tracks is exoacq.nta.sizing; the correction for the
size-dependent detection depth is exoacq.nta.detection_volume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

#: Fewer tracks than this give no statistics (no blur estimate, a size distribution without statistics).
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
    n, s, c, m = checked_step_sums(n_steps, sum_sq_um2, sum_cross_um2, n_pairs)
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


def checked_step_sums(n_steps, sum_sq_um2, sum_cross_um2=None, n_pairs=None) -> list[np.ndarray]:
    """Per-track sums as 1-D float arrays of one length, checked (>= 0, at least one track); ValueError otherwise."""
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
    n, s, c, m = checked_step_sums(n_steps, sum_sq_um2, sum_cross_um2, n_pairs)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = s / (2.0 * n) / (2.0 * frame_interval_s) + c / (2.0 * m) / frame_interval_s
    return np.where(m > 0, d, np.nan)


def cve_localisation_variance_um2(n_steps, sum_sq_um2, sum_cross_um2, n_pairs, blur: float) -> np.ndarray:
    """Per-track, per-coordinate localisation variance sigma^2 = R <dx^2> + (2R - 1) <dx_n dx_{n+1}> (VBF eq. 15).

    ``blur`` is the coefficient R (:func:`blur_coefficient`). NaN without a step pair.
    """
    n, s, c, m = checked_step_sums(n_steps, sum_sq_um2, sum_cross_um2, n_pairs)
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
