"""DLS analysis: the measurement document ``exoacq.dls.analysis/1`` of a correlation, and of a record
(several angles), from the cumulants (:mod:`exoacq.dls.cumulants`: ISO 22412:2017, Koppel 1972),
the quality verdicts (:mod:`exoacq.dls.quality`: blanks, dust, count rate) and the size
distributions (:mod:`exoacq.dls.inversion`). Several angles: :func:`extrapolate_to_zero_q`
(apparent D = Gamma / q^2 linear in q^2, its intercept D(q -> 0); Frisken 2001, Appl. Opt.
40:4087 and standard practice).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from exoacq.dls import inversion
from exoacq.dls.cumulants import (DEFAULT_FIT_FRACTION, MIN_FIT_POINTS, check_fit_fraction, corrected_pdi, cumulants,
                                  curve_arrays, diffusion_um2_s, hydrodynamic_diameter_nm, scattering_vector_per_nm)
from exoacq.dls.quality import TAIL_CHANNELS, classify_subruns, correlation_check, count_rate_statistics
from exoacq.dls.record import Correlation, DLSRecord
from exoacq.errors import ExoacqError
from exoacq.physics import stokes_einstein_diameter_nm, water_viscosity_iapws_mpa_s

SCHEMA = "exoacq.dls.analysis/1"

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
#: A PDI below minus this is no monodisperse sample's (ISO 22412: < 0.05 is monodisperse) but the fit's noise.
NEGATIVE_PDI_TOLERANCE = 0.05


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
    lag, y = curve_arrays(corr.lag_s, corr.g2_minus_1)
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
    # mu2 / Gamma^2 is a variance over a mean squared: below 0 only by the fit's noise
    if second["pdi"] is not None and second["pdi"] < -NEGATIVE_PDI_TOLERANCE:
        quality_warnings.append(f"PDI {second['pdi']:.3f} below 0: the correlation is too noisy for the 2nd "
                                "cumulant (measure longer, or more sub-runs); the PDI is not meaningful")
    if corrected["pdi"] is not None and corrected["pdi"] < -NEGATIVE_PDI_TOLERANCE:  # noisier: extrapolated
        warnings.append(f"corrected PDI {corrected['pdi']:.3f} below 0: the 3rd-order fits it extrapolates are too "
                        "noisy (measure longer); it is not meaningful")
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
