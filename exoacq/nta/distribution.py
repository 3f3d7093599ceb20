"""The size distribution of a sample from its tracks: the steps from per-track sums to reported numbers.

1. Tracks: every track of at least ``min_track_length`` points (given, or
   chosen from the data: :func:`auto_min_track_length`) that is not rejected
   (stationary, or dim: its mean feature mass below the threshold).
2. Localisation error: the median of the tracks' sigma^2 by the covariance
   estimator (Vestergaard, Blainey & Flyvbjerg 2014), with the motion-blur
   coefficient of the exposure (robust to a minority of noisy tracks).
3. Detected distribution: maximum-likelihood deconvolution of the tracks
   over their lengths (Walker 2012), then each track's number of points
   spread over the sizes by its posterior, so the distribution is that of
   the particles present in a frame, the ones counted for the concentration
   (exoacq.nta.sizing).
4. Sample distribution: divided by the detection depth of each size in a
   Gaussian light sheet, whose brightness scale comes from the tracks'
   brightest features (:func:`exoacq.nta.detection_volume.reference_peak_mass`) and
   the detection threshold ``minmass``; the concentration likewise counts each
   size in its own detection volume, relative to the calibrated one.

``size_nm`` holds the statistics of 4, ``size_nm_detected`` those of 3.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from exoacq.nta import detection_volume, sizing, steps
from exoacq.physics import stokes_einstein_diameter_nm

#: Tracks needed for a size distribution worth reporting without comment.
MIN_TRACKS_FOR_DISTRIBUTION = 50
HISTOGRAM_BIN_NM = 5.0
#: Automatic minimum track length: the per-track CVE's relative SD at most this.
AUTO_TRACK_RELATIVE_SD = 0.5
AUTO_TRACK_BOUNDS = (5, 50)
#: Sizes whose detection depth is below this fraction of the deepest detected size are left out of the sample's
#: distribution (just above the threshold the correction divides by a small, steep, uncertain depth). Capping
#: their correction at 1 / 0.2 instead was tried on the dim 2:1 100 + 150 nm mixture: no better on either
#: simulator, and the mean then moved 5.6 % between thresholds x 1 and x 0.67 (2.5 % left out).
MIN_RELATIVE_DEPTH = 0.2
GRID_LIMITS_NM = (5.0, 50_000.0)
GRID_STEP_LN = 0.027
#: Tracks of at least this many points measure the blur when the minimum track length is still to be chosen.
BLUR_MIN_POINTS = 10


def auto_min_track_length(reduced_localisation_error: float) -> int:
    """Points per track for a per-track CVE of D with relative SD <= 0.5 (2-D).

    var(D_CVE) / D^2 ~ (6 + 4 eps + 2 eps^2) / (2 N) for N steps, eps =
    sigma^2 / (D dt) - 2R the reduced localisation error (Vestergaard 2014,
    eq. 16, two coordinates); gives 12-13 points when localisation error is small,
    more when it dominates. Shorter tracks carry little size information and
    more of the linking mistakes. Clipped to 5-50 points.
    """
    eps = reduced_localisation_error if math.isfinite(reduced_localisation_error) else 0.0
    needed_steps = (6.0 + 4.0 * eps + 2.0 * eps * eps) / (2.0 * AUTO_TRACK_RELATIVE_SD ** 2)
    return int(np.clip(math.ceil(needed_steps) + 1, *AUTO_TRACK_BOUNDS))


def diameter_grid_nm(diffusion_um2_s: np.ndarray, temperature_c: float, viscosity_mpa_s: float) -> np.ndarray:
    """Log-spaced diameters (2.7 % apart) from half the Stokes-Einstein diameter of the 99.5th percentile
    of the tracks' D to twice that of the 0.5th percentile of the positive ones, within 5 nm - 50 um;
    at least 10-2000 nm."""
    d = np.asarray(diffusion_um2_s, float)
    d = d[np.isfinite(d) & (d > 0)]
    low, high = 10.0, 2000.0
    if d.size:
        fast, slow = np.percentile(d, [99.5, 0.5])
        low = min(low, 0.5 * float(stokes_einstein_diameter_nm(fast, temperature_c, viscosity_mpa_s)))
        high = max(high, 2.0 * float(stokes_einstein_diameter_nm(slow, temperature_c, viscosity_mpa_s)))
    low, high = max(low, GRID_LIMITS_NM[0]), min(high, GRID_LIMITS_NM[1])
    return np.geomspace(low, high, int(math.ceil(math.log(high / low) / GRID_STEP_LN)) + 1)


def _step_sums(tracks: pd.DataFrame) -> list[np.ndarray]:
    """(n_steps, sum_sq_um2, sum_cross_um2, n_pairs) of a tracks table, as exoacq.nta.steps takes them."""
    return [tracks[c].to_numpy(float) for c in ("n_steps", "sum_sq_um2", "sum_cross_um2", "n_pairs")]


def _whole(values: np.ndarray) -> np.ndarray:
    """Round to integers keeping the (rounded) total: largest remainders first (Hamilton's method)."""
    floor = np.floor(values).astype(int)
    missing = int(round(values.sum())) - int(floor.sum())
    if missing > 0:
        floor[np.argsort(floor - values)[:missing]] += 1
    return floor


def number_histogram(diameter_nm: np.ndarray | None, probability: np.ndarray | None, tracks: int,
                     concentration_per_ml: float | None) -> dict[str, list]:
    """The distribution in 5 nm bins from 0 nm to past its 99.9th percentile (at least 500 nm):
    number fraction, tracks per bin (rounded) and, with a concentration, particles/mL per bin.
    Without a distribution (None) every bin is empty."""
    last = 0.0
    if probability is not None:
        cdf = np.cumsum(probability) / probability.sum()
        last = float(diameter_nm[min(int(np.searchsorted(cdf, 0.999)) + 1, diameter_nm.size - 1)])
    top = HISTOGRAM_BIN_NM * math.ceil(max(500.0, last) / HISTOGRAM_BIN_NM + 1)
    edges = np.arange(0.0, top + HISTOGRAM_BIN_NM / 2, HISTOGRAM_BIN_NM)
    fraction = (sizing.rebin_number_distribution(diameter_nm, probability, edges) if probability is not None
                else np.zeros(edges.size - 1))
    result: dict[str, list] = {"bin_width_nm": HISTOGRAM_BIN_NM,
                               "bin_centres_nm": ((edges[:-1] + edges[1:]) / 2).tolist(),
                               "number_fraction": fraction.tolist(),
                               "counts": _whole(fraction * tracks).tolist()}
    if concentration_per_ml is not None:
        result["concentration_per_ml"] = (fraction * concentration_per_ml).tolist()
    return result


def size_distribution(table: pd.DataFrame, *, frame_interval_s: float, exposure_s: float | None, temperature_c: float,
                      viscosity_mpa_s: float, minmass: float | None, min_track_length: int | None,
                      scattering_exponent: float = 6.0, volume_correction: bool = True,
                      calibration_relative_depth: float | None = None) -> dict[str, Any]:
    """Sizes of the tracks in ``table`` (:meth:`StreamingTracker.tracks_table`).

    Returns ``size_nm``, ``size_nm_detected`` (statistics or None), the grid
    ``diameter_nm`` with ``probability`` (sample), ``probability_detected`` and
    ``probability_smoothed`` (the sample's, smoothed by the widest kernel within the
    likelihood bound: for the mode and histograms),
    ``used`` (the rows of ``table`` that are sized) and their number ``tracks_used``,
    ``min_track_length``, ``localisation_nm``,
    ``volume_ratio`` and ``warnings``.

    ``mean_relative_depth``: sum_d p(d) depth(d), depth from
    :func:`exoacq.nta.detection_volume.gaussian_sheet_detection_depth_um` with a sheet
    half-width of 1. ``calibration_relative_depth``: the same quantity measured on
    the calibration beads; with it, ``volume_ratio`` = that over the sample's:
    the factor from the calibrated detection volume to the sample's
    (concentration = features per frame / V_cal x ratio); else 1.
    """
    warnings: list[str] = []
    particle = table["rejected"] == "" if "rejected" in table.columns else True  # not stationary, not dim
    stepped = table.loc[(table["n_pairs"] > 0) & (table["sum_sq_um2"] > 0) & particle]
    # In an order of their own content, not of the linker's particle ids (which depend on the order in
    # which workers returned frames): the same tracks then give the same sums to the last bit.
    order = [c for c in ("first_frame", "length_frames", "sum_sq_um2", "n_pairs") if c in stepped.columns]
    stepped = stepped.sort_values(order, kind="stable")
    out: dict[str, Any] = {"size_nm": None, "size_nm_detected": None, "used": stepped, "tracks_used": 0,
                           "localisation_nm": None,
                           "min_track_length": min_track_length, "volume_ratio": 1.0, "warnings": warnings}
    if stepped.empty:
        warnings.append("no track of >= 3 points: no size distribution")
        return out
    def blur_and_sigma2(tracks: pd.DataFrame) -> tuple[float, float]:
        """R and sigma^2: the exposure's R and the tracks' robust sigma^2 (>= 0) when the exposure is known;
        else both from the tracks' step covariance against their D (exoacq.nta.steps.estimate_blur)."""
        if exposure_s is not None:
            blur = steps.blur_coefficient(exposure_s, frame_interval_s)
            out["blur"] = {"coefficient": blur, "standard_error": 0.0, "source": "exposure",
                           "exposure_fraction": 6.0 * blur}
            return blur, steps.robust_localisation_variance_um2(*_step_sums(tracks), blur)
        estimate = steps.estimate_blur(*_step_sums(tracks))
        out["blur"] = {"coefficient": estimate.blur, "standard_error": estimate.standard_error,
                       "source": estimate.source, "tracks": estimate.tracks,
                       "exposure_fraction": estimate.exposure_fraction}
        return estimate.blur, estimate.localisation_variance_um2

    judged = stepped.loc[stepped["length_frames"] >= (min_track_length or BLUR_MIN_POINTS)]
    blur, sigma2 = blur_and_sigma2(judged if len(judged) >= steps.MIN_TRACKS_FOR_STATISTICS else stepped)
    if min_track_length is None:
        d_mean = float(np.mean(steps.cve_diffusion_um2_s(*_step_sums(stepped), frame_interval_s)))
        eps = max(sigma2, 0.0) / (d_mean * frame_interval_s) - 2.0 * blur if d_mean > 0 else math.nan
        min_track_length = auto_min_track_length(eps)
    used = stepped.loc[stepped["length_frames"] >= min_track_length]
    if len(used) >= steps.MIN_TRACKS_FOR_STATISTICS:  # R and sigma^2 of the tracks that are sized
        blur, sigma2 = blur_and_sigma2(used)
    out |= {"min_track_length": int(min_track_length), "used": used, "tracks_used": int(len(used)),
            "localisation_nm": math.sqrt(max(sigma2, 0.0)) * 1e3}
    if len(used) < MIN_TRACKS_FOR_DISTRIBUTION:
        warnings.append(f"only {len(used)} tracks of >= {min_track_length} frames were sized; "
                        f"a size distribution needs >= {MIN_TRACKS_FOR_DISTRIBUTION}")
        if len(used) < steps.MIN_TRACKS_FOR_STATISTICS:
            return out
    detected = sizing.deconvolve_size_distribution(
        used["n_steps"], used["sum_sq_um2"], frame_interval_s=frame_interval_s, exposure_s=exposure_s, blur=blur,
        temperature_c=temperature_c, viscosity_mpa_s=viscosity_mpa_s, localisation_variance_um2=sigma2,
        track_weights=used["length_frames"].to_numpy(float),
        diameter_grid_nm=diameter_grid_nm(used["diffusion_um2_s"].to_numpy(float), temperature_c, viscosity_mpa_s))
    if not detected.converged:
        warnings.append(f"size deconvolution stopped {detected.kkt_gap:.2g} nats from its maximum")
    grid, p_detected = detected.diameter_nm, detected.probability
    p = p_detected
    if volume_correction and not (minmass or 0.0) > 0:
        warnings.append(f"minmass = {minmass}: no detection threshold, so no detection-depth correction")
    elif volume_correction:
        # a clipped feature's mass is a lower bound: tracks with any saturated feature do not tell the brightness
        brightness = used["max_mass"].to_numpy(float)
        if "saturated_fraction" in used.columns:
            brightness = np.where(used["saturated_fraction"].to_numpy(float) > 0, 0.0, brightness)
        peak = detection_volume.reference_peak_mass(brightness, detected.track_ln_diameter,
                                                    scattering_exponent=scattering_exponent)
        depth = detection_volume.gaussian_sheet_detection_depth_um(
            grid, sheet_half_width_um=1.0, reference_diameter_nm=100.0,
            peak_over_threshold_at_reference=peak / minmass, scattering_exponent=scattering_exponent)
        seen = depth[p_detected > 1e-6 * p_detected.max()]
        if not seen.max() > 0:
            warnings.append(f"the tracks' brightest features ({peak:.3g} at 100 nm) are not above minmass "
                            f"({minmass:g}): no detection-volume correction")
        else:
            depth = np.where(depth >= MIN_RELATIVE_DEPTH * seen.max(), depth, 0.0)
            p = detection_volume.correct_for_detection_volume(p_detected, depth)
            mean_depth = float(p @ depth)
            out |= {"peak_mass_100nm": peak, "mean_relative_depth": mean_depth}
            if calibration_relative_depth:
                out["volume_ratio"] = calibration_relative_depth / mean_depth
    # The mode (and histograms): the ML distribution smoothed by the widest kernel within the likelihood bound
    # (sizing.deconvolve_size_distribution), after the depth correction. Dividing the smoothed distribution by
    # the depth instead (steep near the threshold: d ln depth / d ln d = 3 / ln(peak / threshold), ~ 4 at 2.2)
    # moved its mode by ~ -slope x width^2 (EMCCD simulator, 100 nm, 40 ms: 91.8 nm; this way 100.5 nm).
    width = detected.mode_smoothing_ln_sd
    p_mode = sizing.smooth_distribution(grid, p, width)
    out |= {"diameter_nm": grid, "probability": p, "probability_detected": p_detected, "probability_smoothed": p_mode}
    out["size_nm_detected"] = sizing.distribution_statistics(grid, p_detected) | {
        "mode": sizing.distribution_statistics(grid, sizing.smooth_distribution(grid, p_detected, width))["mode"]}
    out["size_nm"] = sizing.distribution_statistics(grid, p) | {"mode": sizing.distribution_statistics(grid, p_mode)["mode"]}
    return out
