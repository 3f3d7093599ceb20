"""Combining the captures (videos) of one NTA run into its result.

Common SOPs record several videos of a sample (NanoSight: 3-5 x 60 s) and
report each statistic as the mean over the videos with its standard error
(SD / sqrt(n), n - 1 in the SD); so does every histogram bin.
"""
from __future__ import annotations

from typing import Any

from exoacq.nta.export import average_captures

SIZE_KEYS = ("mean", "mode", "sd", "d10", "d50", "d90")


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _combined_blur(blurs: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The captures' blur coefficients averaged (each capture's own is in its entry of ``captures``)."""
    known = [b for b in blurs if b]
    if not known:
        return None
    sources = sorted({b["source"] for b in known})
    return {"coefficient": _mean([b["coefficient"] for b in known]), "source": ", ".join(sources),
            "exposure_fraction": _mean([b["exposure_fraction"] for b in known])}


def combine_captures(captures: list[dict[str, Any]]) -> dict[str, Any]:
    """The result fields of a run from its captures' tracker results (in capture order).

    Each capture is ``{"capture", "summary", "tracking", "frames_processed", "files"}``.
    One capture passes through unchanged; several are averaged, with
    ``standard_error`` per statistic and per histogram bin and a ``captures`` list.
    """
    per_capture = [{
        "capture": c["capture"], **c["summary"],
        "temperature_c": c["tracking"]["temperature_c"], "viscosity_mpa_s": c["tracking"]["viscosity_mpa_s"],
        "frames_processed": c["frames_processed"], "files": c.get("files", {}),
    } for c in captures]
    if len(per_capture) == 1:
        only = dict(per_capture[0])
        return {**only, "standard_error": None, "captures": [only],
                "warnings": list(only["warnings"])}
    avg = average_captures(per_capture)
    stats = avg["stats"]
    hist = avg["histogram"]
    counts = [sum(col) for col in zip(*[c["histogram"]["counts"] + [0] * (len(hist["bin_centres_nm"])
                                                                          - len(c["histogram"]["counts"]))
                                        for c in per_capture])]
    histogram = {"bin_width_nm": per_capture[0]["histogram"]["bin_width_nm"],
                 "bin_centres_nm": hist["bin_centres_nm"], "counts": counts}
    if hist["quantity"] == "concentration_per_ml":
        histogram["concentration_per_ml"] = hist["average"]
    drifts = [c.get("drift_um_s") for c in per_capture if c.get("drift_um_s")]
    warnings = [f"capture {c['capture']}: {w}" for c in per_capture for w in c["warnings"]] + avg["warnings"]
    return {
        "size_nm": {k: stats[f"{k}_nm"]["average"] for k in SIZE_KEYS},
        "size_nm_detected": {k: _mean([c["size_nm_detected"][k] for c in per_capture if c.get("size_nm_detected")])
                             for k in SIZE_KEYS} if any(c.get("size_nm_detected") for c in per_capture) else None,
        "localisation_nm": _mean([c.get("localisation_nm") for c in per_capture]),
        "crowding_correction": _mean([c.get("crowding_correction") for c in per_capture]),
        "concentration_per_ml": stats["concentration_per_ml"]["average"],
        "particles_per_frame": stats["particles_per_frame"]["average"],
        "tracks": {"total": sum(c["tracks"]["total"] for c in per_capture),
                   "used": sum(c["tracks"]["used"] for c in per_capture),
                   "below_threshold": sum(c["tracks"].get("below_threshold", 0) for c in per_capture)},
        "diffusion_um2_s": {k: _mean([c["diffusion_um2_s"][k] for c in per_capture]) for k in ("mean", "median")},
        "drift_um_s": [sum(d[i] for d in drifts) / len(drifts) for i in (0, 1)] if drifts else None,
        "frames_analysed": sum(c["frames_analysed"] for c in per_capture),
        # chosen once for the run (from the noise of its first frames), or given
        "threshold": per_capture[0].get("threshold"),
        "blur": _combined_blur([c.get("blur") for c in per_capture]),
        "rejected_tracks": {why: sum((c.get("rejected_tracks") or {}).get(why, 0) for c in per_capture)
                            for why in ("stationary", "dim")},
        "saturated_tracks": sum(c.get("saturated_tracks", 0) for c in per_capture),
        "histogram": histogram,
        "temperature_c": stats["temperature_c"]["average"],
        "viscosity_mpa_s": stats["viscosity_mpa_s"]["average"],
        "standard_error": {
            "size_nm": {k: stats[f"{k}_nm"]["se"] for k in SIZE_KEYS},
            "concentration_per_ml": stats["concentration_per_ml"]["se"],
            "particles_per_frame": stats["particles_per_frame"]["se"],
            "histogram": {"quantity": hist["quantity"], "values": hist["se"]},
        },
        "captures": per_capture,
        "files": {f"capture-{c['capture']}/{k}": v for c in per_capture for k, v in c["files"].items()},
        "warnings": warnings,
    }
