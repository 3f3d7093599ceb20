"""Readable text of flow documents: the result table and the progress line."""
from __future__ import annotations

from typing import Any


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def format_progress(document: dict[str, Any], width: int = 24) -> str:
    done = min(document["live_time_s"] / (document["duration_s"] or 1.0), 1.0)
    bar = "#" * int(done * width) + "-" * (width - int(done * width))
    return (f"[{bar}] {document['live_time_s']:5.1f}/{document['duration_s']:g} s  {document['events']} events  "
            f"{document['event_rate_per_s']:.0f} events/s  {document['coincident_events']} coincident")


def format_analysis(document: dict[str, Any]) -> str:
    events = document.get("events") or {}
    lines = [f"{document.get('source') or document.get('run_id')}: {events.get('total', 0)} events, "
             f"{events.get('gated', 0)} gated, {events.get('counted', events.get('gated', 0))} counted "
             f"({len(document.get('parameters') or [])} parameters)",
             "  Parameters: " + (", ".join(document.get("parameters") or []) or "none")]
    conc, unc = document.get("concentration_per_ml"), document.get("concentration_uncertainty_per_ml")
    lines.append(f"  Concentration {_num(conc, '.3e')} /mL" + (f" +- {unc:.2e}" if conc is not None and unc else "")
                 + f"  (dilution x{document.get('dilution', 1):g}, volume {_num(document.get('volume_ul'), '.4g')} uL, "
                   f"{_num(document.get('duration_s'), '.4g')} s)")
    size = document.get("size_nm")
    if size:
        model = document.get("size_model") or {}
        lines.append(f"  Diameter median {size['median']:.1f} nm  D10 {size['d10']:.1f}  D90 {size['d90']:.1f}  "
                     f"(number-weighted; model {model.get('particle') or 'n/a'}, detection limit "
                     f"{_num(document.get('detection_limit_nm'), '.0f')} nm)")
    for name, fraction in (document.get("markers") or {}).items():
        threshold = (document.get("marker_thresholds") or {}).get(name) or {}
        basis = threshold.get("basis") or threshold.get("control") or ""
        lines.append(f"  {name}+ {_num(None if fraction is None else 100 * fraction, '.1f')} %"
                     + (f"  (threshold from {basis})" if basis else ""))
    for kind, control in (document.get("controls") or {}).items():
        lines.append(f"  {kind} control: " + ", ".join(f"{k} {v}" for k, v in control.items()
                                                        if not isinstance(v, (dict, list))))
    swarm = document.get("swarm") or {}
    if swarm.get("flag"):
        lines.append("  SWARM suspected: " + "; ".join(swarm.get("reasons", [])))
    lines += [f"  Warning: {w}" for w in document.get("warnings", [])]
    return "\n".join(lines)


def format_result(document: dict[str, Any]) -> str:
    role = document.get("control") or "sample"
    head = (f"Run {document.get('run_id')}  sample '{document.get('sample')}' ({role}), dilution "
            f"x{document.get('dilution'):g}")
    return head + "\n" + format_analysis(document)
