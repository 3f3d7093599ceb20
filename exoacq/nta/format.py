"""Readable text of NTA documents: the result table and the progress line."""
from __future__ import annotations

from typing import Any


def format_progress(document: dict[str, Any], width: int = 24) -> str:
    """One status line of an ``nta.progress`` document."""
    frames = document["frames"]
    planned = frames.get("planned") or 1
    done = min(frames["acquired"] / planned, 1.0)
    bar = "#" * int(done * width) + "-" * (width - int(done * width))
    size = document["size_nm"]
    mean = f"{size['mean']:.0f} nm" if size.get("mean") is not None else "-"
    ppf = document.get("particles_per_frame")
    capture = f"capture {document['capture']}/{document['captures']} " if document["captures"] > 1 else ""
    return (f"{capture}[{bar}] {document['elapsed_s']:5.1f}/{document['duration_s']:g} s  "
            f"frames {frames['acquired']} ({frames['dropped']} dropped)  "
            f"{'-' if ppf is None else round(ppf, 1)} particles/frame  "
            f"{document['tracks']['used']} tracks  mean {mean}")


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def format_result(doc: dict[str, Any]) -> str:
    """A readable table of an ``nta.result`` document."""
    frames = doc["frames"]
    lines = [
        f"Run {doc['run_id']}  sample '{doc['sample']}'  ({len(doc.get('captures') or [1])} x {doc['duration_s']:g} s, "
        f"dilution x{doc['dilution']:g})",
        format_summary(doc),
        f"  Frames            {frames['acquired']} acquired, {frames['processed']} processed, "
        f"{frames['dropped']} dropped",
    ]
    se = doc.get("standard_error")
    if se:
        size = se["size_nm"]
        lines.append(f"  Standard error    mean {_num(size['mean'], '.1f')} nm, mode {_num(size['mode'], '.1f')} nm, "
                     f"D50 {_num(size['d50'], '.1f')} nm, concentration {_num(se['concentration_per_ml'], '.2g')} "
                     f"particles/mL (over {len(doc['captures'])} captures)")
    from exoacq.nta.blank import format_blank
    blank = format_blank(doc)
    if blank:
        lines.append(blank)
    if doc.get("files"):
        tracks = doc["files"].get("tracks") or next(iter(doc["files"].values()))
        lines.append(f"  Tracks file       {tracks}{' (and one per capture)' if se else ''}")
    for warning in doc.get("warnings", []):
        lines.append(f"  Warning: {warning}")
    return "\n".join(lines)


def format_summary(doc: dict[str, Any]) -> str:
    """The statistics lines shared by live results and offline analyses."""
    num = _num
    size = doc["size_nm"]
    conc = doc.get("concentration_per_ml")
    volume = doc.get("detection_volume") or {}
    lines = [
        f"  Size (nm)         mean {num(size['mean'], '7.1f')}   mode {num(size['mode'], '7.1f')}   "
        f"SD {num(size['sd'], '6.1f')}",
        f"                    D10  {num(size['d10'], '7.1f')}   D50  {num(size['d50'], '7.1f')}   "
        f"D90 {num(size['d90'], '6.1f')}",
        "  Concentration     " + (f"{conc:.3g} particles/mL" + (f" (detection volume {volume['nl']:.4g} nL, "
                                  f"{volume.get('source')})" if volume.get("nl") else "")
                                  if conc is not None else "not reported (no detection volume)"),
        f"  Particles/frame   {num(doc['particles_per_frame'], '.1f')}",
        f"  Tracks            {doc['tracks']['used']} sized of {doc['tracks']['total']}",
        f"  Diffusion         mean {num(doc['diffusion_um2_s']['mean'], '.3g')} um^2/s, "
        f"median {num(doc['diffusion_um2_s']['median'], '.3g')} um^2/s",
        f"  Temperature       {num(doc['temperature_c'], '.2f')} C "
        f"(viscosity {num(doc['viscosity_mpa_s'], '.4f')} mPa s)",
    ]
    if "run_id" not in doc:  # an offline analysis: its warnings here
        lines += [f"  Warning: {w}" for w in doc.get("warnings", [])]
    return "\n".join(lines)
