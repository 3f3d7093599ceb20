"""Buffer blanks: what the buffer alone shows, reported beside an NTA sample's result and subtracted.

A blank is a run of the buffer (the sample's diluent) alone, recorded with the
same instrument and settings; MISEV2018 (Thery et al. 2018, J. Extracell.
Vesicles 7:1535750) and MISEV2023 (Welsh et al. 2024, J. Extracell. Vesicles
13:e12404) ask for such buffer-only controls beside every particle count.

The rule: a blank is the diluent measured as is. Its particles are in the
sample's cell at the concentration the blank run measured there, whatever the
sample's dilution (the cell holds the sample diluted *in* that buffer), so the
blank's in-cell concentration (its reported concentration / its own dilution,
normally 1) is subtracted from the sample's in-cell (measured) concentration,
and only then is the sample's dilution factor applied:

    c = D_s (c_s / D_s - c_b / D_b)

and likewise every 5 nm bin of the size histogram (bins that the subtraction
leaves below zero are noise of the blank: they are set to 0 for the size
statistics and the histogram; the total concentration is the signed
difference). The two runs are independent measurements, so their standard
errors (over captures) add in quadrature (JCGM 100:2008, GUM, eq. 10,
uncorrelated inputs):

    se(c) = D_s sqrt((se_s / D_s)^2 + (se_b / D_b)^2)

Size statistics (mean, mode, SD, D10/D50/D90) are those of the subtracted
histogram; their standard errors, of each capture's histogram less the blank.
The unsubtracted values stay in the document (``*_before_blank``).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from exoacq.errors import ExoacqError

SIZE_KEYS = ("mean", "mode", "sd", "d10", "d50", "d90")


def blank_problem(record: dict[str, Any] | None, run_id: str) -> str | None:
    """Why the stored run ``record`` (``ServiceContext.stored_run(run_id)``) cannot serve as a
    blank, in one line; None if it can."""
    if record is None:
        return f"blank_run {run_id}: no such run"
    if record.get("method") != "nta":
        return f"blank_run {run_id}: a {record.get('method')} run, not an NTA run"
    result = record.get("result")
    if not result:
        return f"blank_run {run_id}: has no result (state {record.get('state')})"
    if isinstance(result.get("blank"), dict):
        return f"blank_run {run_id}: is itself blank-subtracted (a sample, not a buffer)"
    if result.get("concentration_per_ml") is None:
        return f"blank_run {run_id}: has no concentration (no detection volume was configured)"
    if (result.get("histogram") or {}).get("concentration_per_ml") is None:
        return f"blank_run {run_id}: its size histogram has no concentrations"
    return None


def attach_blank(document: dict[str, Any], record: dict[str, Any] | None, run_id: str, *,
                 warn_fraction: float) -> None:
    """The daemon's step once a sample's result is built: subtract the blank run ``run_id``
    (its stored ``record``) if it can serve, else note why not (``blank.error`` and a
    warning); the sample's result is never lost for a bad blank."""
    problem = blank_problem(record, run_id)
    if problem is None:
        try:
            apply_blank(document, record["result"], warn_fraction=warn_fraction)
            return
        except ExoacqError as exc:
            problem = str(exc)
    document["blank"] = {"run_id": run_id, "error": problem}
    document.setdefault("warnings", []).append(f"blank not subtracted: {problem}")


def _in_cell(values: Any, dilution: float) -> np.ndarray:
    return np.asarray(values, dtype=float) / dilution


def _padded(a: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([a, np.zeros(n - a.size)]) if a.size < n else a


def histogram_statistics(bin_centres_nm: Any, values: Any, bin_width_nm: float) -> dict[str, float | None]:
    """Mean, mode (the fullest bin's centre), SD and D10/D50/D90 (linear within a bin) of a
    histogram of particles per bin; negative bins count as empty. All None if it is empty."""
    centres, v = np.asarray(bin_centres_nm, float), np.clip(np.asarray(values, float), 0.0, None)
    total = v.sum()
    if not total > 0:
        return dict.fromkeys(SIZE_KEYS)
    mean = float((centres * v).sum() / total)
    sd = float(math.sqrt(max((v * (centres - mean) ** 2).sum() / total, 0.0)))
    edges = np.concatenate([centres - bin_width_nm / 2, [centres[-1] + bin_width_nm / 2]])
    cdf = np.concatenate([[0.0], np.cumsum(v) / total])
    d10, d50, d90 = (float(np.interp(q, cdf, edges)) for q in (0.1, 0.5, 0.9))
    return {"mean": mean, "mode": float(centres[int(np.argmax(v))]), "sd": sd, "d10": d10, "d50": d50, "d90": d90}


def _concentration_histogram(doc: dict[str, Any], who: str) -> np.ndarray:
    values = (doc.get("histogram") or {}).get("concentration_per_ml")
    if values is None:
        raise ExoacqError(f"{who}: the size histogram has no concentrations (no detection volume)",
                          code="bad_blank")
    return np.asarray(values, float)


def _se(doc: dict[str, Any], key: str) -> Any:
    se = doc.get("standard_error")
    return None if not se else se.get(key)


def apply_blank(document: dict[str, Any], blank: dict[str, Any], *, warn_fraction: float) -> None:
    """Subtract the blank run's result ``blank`` (a stored ``nta.result``) from the sample's result
    ``document`` in place (the rule in the module docstring); add ``blank`` (the blank's figures,
    ``fraction`` = blank / sample in the cell) and the ``*_before_blank`` values; warn when the
    blank exceeds ``warn_fraction`` of the sample."""
    if not 0.0 < warn_fraction <= 1.0:
        raise ExoacqError(f"blank_warning_fraction = {warn_fraction!r}: must be in (0, 1]", code="bad_setting")
    run_id = blank.get("run_id")
    c_s, c_b = document.get("concentration_per_ml"), blank.get("concentration_per_ml")
    if c_s is None:
        raise ExoacqError(f"run {document.get('run_id')}: no concentration to subtract the blank {run_id} from "
                          "(no detection volume)", code="bad_blank")
    if c_b is None:
        raise ExoacqError(f"blank_run {run_id}: has no concentration (no detection volume)", code="bad_blank")
    d_s, d_b = float(document.get("dilution") or 1.0), float(blank.get("dilution") or 1.0)
    h_s, h_b = _concentration_histogram(document, f"run {document.get('run_id')}"), \
        _concentration_histogram(blank, f"blank_run {run_id}")
    if not np.isclose(document["histogram"]["bin_width_nm"], blank["histogram"]["bin_width_nm"]):
        raise ExoacqError(f"blank_run {run_id}: {blank['histogram']['bin_width_nm']} nm histogram bins, the sample "
                          f"{document['histogram']['bin_width_nm']} nm: re-process one of them", code="bad_blank")
    n = max(h_s.size, h_b.size)
    width = float(document["histogram"]["bin_width_nm"])
    centres = np.asarray(document["histogram"]["bin_centres_nm"] if h_s.size >= h_b.size
                         else blank["histogram"]["bin_centres_nm"], float)
    blank_cell_bins = _padded(_in_cell(h_b, d_b), n)

    # Concentration: in the cell, subtract, then the sample's dilution.
    cell_s, cell_b = c_s / d_s, c_b / d_b
    subtracted = d_s * (cell_s - cell_b)
    se_s, se_b = _se(document, "concentration_per_ml"), _se(blank, "concentration_per_ml")
    se_sub = None if se_s is None or se_b is None else d_s * math.hypot(se_s / d_s, se_b / d_b)
    fraction = cell_b / cell_s if cell_s > 0 else None  # None: the sample shows no particles at all

    # Histogram: per bin, the same; bins left below zero are empty.
    bins = d_s * (_padded(_in_cell(h_s, d_s), n) - blank_cell_bins)
    bins_kept = np.clip(bins, 0.0, None)
    total = bins_kept.sum()
    hist_se_s = (_se(document, "histogram") or {}).get("values")
    hist_se_b = (_se(blank, "histogram") or {}).get("values")

    warnings = []
    before = {k: copy.deepcopy(document.get(k)) for k in ("concentration_per_ml", "size_nm", "histogram")}
    document["concentration_per_ml_before_blank"] = before["concentration_per_ml"]
    document["size_nm_before_blank"] = before["size_nm"]
    document["histogram_before_blank"] = before["histogram"]
    document["concentration_per_ml"] = subtracted
    histogram = dict(document["histogram"])
    counts = list(histogram.get("counts") or [])
    histogram.update(bin_centres_nm=centres.tolist(), concentration_per_ml=bins_kept.tolist(),
                     number_fraction=(bins_kept / total if total > 0 else bins_kept).tolist(),
                     counts=counts + [0] * (n - len(counts)))
    document["histogram"] = histogram
    document["size_nm"] = histogram_statistics(centres, bins_kept, width)

    if document.get("standard_error"):
        se = document["standard_error"] = dict(document["standard_error"])
        se["concentration_per_ml_before_blank"] = se_s
        se["concentration_per_ml"] = se_sub
        se["size_nm_before_blank"] = se.get("size_nm")
        se["size_nm"] = _size_se(document.get("captures") or [], blank_cell_bins, d_s, centres, width)
        if hist_se_s is not None and hist_se_b is not None:
            a, b = _padded(np.asarray(hist_se_s, float) / d_s, n), _padded(np.asarray(hist_se_b, float) / d_b, n)
            se["histogram"] = {"quantity": "concentration_per_ml", "values": (d_s * np.hypot(a, b)).tolist()}
        else:
            se["histogram"] = None
    if se_sub is None:
        one = "sample" if se_s is None else "blank"
        warnings.append(f"blank {run_id}: the subtracted concentration's uncertainty is not known (the {one} has one "
                        "capture; a standard error needs two or more)")
    if fraction is None or fraction > warn_fraction:
        shown = "more" if fraction is None else f"{fraction:.0%}"
        warnings.append(f"blank {run_id}: the buffer alone shows {shown} of the sample's particles (limit "
                        f"{warn_fraction:.0%}); the subtracted concentration rests on a large correction")
    if subtracted <= 0:
        warnings.append(f"blank {run_id}: the buffer shows as many particles as the sample or more: nothing is "
                        "left to report above the blank")
    blank_settings = (blank.get("settings") or {}).get("acquisition") or {}
    if not blank_settings.get("blank", False):
        warnings.append(f"blank {run_id}: that run was not recorded as a blank (acquire with blank = true)")
    nl_s, nl_b = ((d.get("detection_volume") or {}).get("nl") for d in (document, blank))
    if nl_s and nl_b and not math.isclose(nl_s, nl_b, rel_tol=1e-6):
        warnings.append(f"blank {run_id}: measured with another detection volume ({nl_b:g} nL, the sample "
                        f"{nl_s:g} nL)")

    document["blank"] = {
        "run_id": run_id, "sample": blank.get("sample"), "time": blank.get("time"), "dilution": d_b,
        "concentration_per_ml": c_b, "standard_error": se_b, "concentration_in_cell_per_ml": cell_b,
        "particles_per_frame": blank.get("particles_per_frame"), "size_nm": blank.get("size_nm"),
        "histogram": {"bin_width_nm": width, "bin_centres_nm": centres.tolist(),
                      "concentration_per_ml": (blank_cell_bins * d_b).tolist(),
                      "standard_error": None if hist_se_b is None else list(hist_se_b)},
        "detection_volume_nl": nl_b, "recorded_as_blank": bool(blank_settings.get("blank", False)),
        "fraction": fraction, "warn_fraction": warn_fraction, "subtracted": True,
        "rule": "c = D_sample (c_sample / D_sample - c_blank / D_blank); se in quadrature",
    }
    document.setdefault("warnings", []).extend(warnings)


def blank_document(summary: dict[str, Any]) -> dict[str, Any]:
    """The blank as :func:`apply_blank` takes it, from the ``blank`` a sample's result keeps: so that
    re-processing the sample subtracts the same blank without the run store."""
    if "error" in summary:
        raise ExoacqError(f"blank_run {summary.get('run_id')}: was not subtracted ({summary['error']})",
                          code="bad_blank")
    hist = summary["histogram"]
    return {"run_id": summary["run_id"], "sample": summary.get("sample"), "time": summary.get("time"),
            "dilution": summary["dilution"], "concentration_per_ml": summary["concentration_per_ml"],
            "particles_per_frame": summary.get("particles_per_frame"), "size_nm": summary.get("size_nm"),
            "standard_error": None if summary.get("standard_error") is None else {
                "concentration_per_ml": summary["standard_error"],
                "histogram": {"quantity": "concentration_per_ml", "values": hist.get("standard_error")}},
            "histogram": {k: hist[k] for k in ("bin_width_nm", "bin_centres_nm", "concentration_per_ml")},
            "detection_volume": {"nl": summary.get("detection_volume_nl")},
            "settings": {"acquisition": {"blank": summary.get("recorded_as_blank", False)}}}


def _size_se(captures: list[dict[str, Any]], blank_cell_bins: np.ndarray, dilution: float, centres: np.ndarray,
             width: float) -> dict[str, float | None] | None:
    """SE (SD / sqrt(n)) over the captures of the size statistics of each capture's histogram less the blank."""
    rows = []
    for c in captures:
        h = (c.get("histogram") or {}).get("concentration_per_ml")
        if h is None:
            return None
        own = _padded(np.asarray(h, float) / dilution, centres.size)[:centres.size]
        rows.append(histogram_statistics(centres, own - blank_cell_bins, width))
    if len(rows) < 2:
        return None
    out: dict[str, float | None] = {}
    for k in SIZE_KEYS:
        known = [r[k] for r in rows if r[k] is not None]
        out[k] = float(np.std(known, ddof=1) / math.sqrt(len(known))) if len(known) >= 2 else None
    return out


def format_blank(document: dict[str, Any]) -> str | None:
    """The result table's lines on the blank (``exoacq runs show``, ``acquire --json`` off); None without one."""
    b = document.get("blank")
    if not b:
        return None
    if "error" in b:
        return f"  Blank             {b['run_id']}: not subtracted ({b['error']})"
    se = b.get("standard_error")
    fraction = "n/a" if b.get("fraction") is None else f"{b['fraction']:.1%}"
    return (f"  Blank             {b['run_id']} ('{b.get('sample')}', dilution x{b['dilution']:g}): "
            f"{b['concentration_per_ml']:.3g}{'' if se is None else f' +- {se:.2g}'} particles/mL, "
            f"{fraction} of the sample's; subtracted\n"
            f"  Before the blank  {document['concentration_per_ml_before_blank']:.3g} particles/mL, "
            f"mean {(document.get('size_nm_before_blank') or {}).get('mean') or float('nan'):.1f} nm")
