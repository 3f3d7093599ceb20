"""Readable text of DLS documents: the result table and the progress line."""
from __future__ import annotations

from typing import Any


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def format_progress(document: dict[str, Any], width: int = 24) -> str:
    done = min(document["elapsed_s"] / (document["duration_s"] or 1.0), 1.0)
    bar = "#" * int(done * width) + "-" * (width - int(done * width))
    g2 = document.get("g2_minus_1") or []
    intercept = f"{g2[0]:.3f}" if g2 else "-"
    rate = document.get("count_rate_hz")
    return (f"run {document['run']}/{document['runs']} [{bar}] {document['elapsed_s']:5.1f}/{document['duration_s']:g} s  "
            f"{_num(None if rate is None else rate / 1e3, '.1f')} kcps  {document['photons']} photons  "
            f"g2-1(0) {intercept}")


def format_analysis(document: dict[str, Any]) -> str:
    """One block per measurement (angle), then the extrapolation."""
    lines = [f"{document.get('source') or document.get('run_id')}: {len(document['measurements'])} measurement(s)"]
    for m in document["measurements"]:
        quality = m.get("quality") or {}
        verdict = quality.get("verdict", "?")
        lines.append(f"  {m['angle_deg']:g} deg, {m['wavelength_nm']:g} nm, {_num(m['temperature_c'], '.2f')} C "
                     f"(viscosity {_num(m['viscosity_mpa_s'], '.4f')} mPa s): {verdict}")
        if m.get("z_average_nm") is not None:
            lines.append(f"    Z-average {m['z_average_nm']:.1f} nm  PDI {_num(m.get('pdi'), '.3f')} "
                         f"(corrected {_num(m.get('pdi_corrected'), '.3f')})  intercept {_num(m.get('intercept'), '.3f')}")
            for weighting in ("intensity", "volume", "number"):
                peaks = (m.get("peaks") or {}).get(weighting) or []
                shown = ", ".join(f"{p['mean_nm']:.0f} nm ({100 * p['area']:.0f} %)" for p in peaks)
                lines.append(f"    peaks by {weighting:<9} {shown or '-'}")
        vendor = (m.get("vendor") or {}).get(2) or (m.get("vendor") or {}).get("2")
        if vendor and vendor.get("radius_nm"):
            lines.append(f"    the file's own 2nd-order cumulant: {2 * vendor['radius_nm']:.1f} nm (diameter)")
        lines += [f"    Warning: {w}" for w in m.get("warnings", [])]
    extrapolated = document.get("extrapolated")
    if extrapolated:
        lines.append(f"  Extrapolated to q -> 0: D {extrapolated['diffusion_um2_s']:.4g} um^2/s, "
                     f"diameter {extrapolated['diameter_nm']:.1f} nm")
    lines += [f"  Warning: {w}" for w in document.get("warnings", [])]
    return "\n".join(lines)


def format_result(document: dict[str, Any]) -> str:
    head = (f"Run {document.get('run_id')}  sample '{document.get('sample')}'  ({document.get('runs')} x "
            f"{document.get('duration_s'):g} s, dilution x{document.get('dilution'):g})")
    return head + "\n" + format_analysis(document)
