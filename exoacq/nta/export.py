"""Export NTA results: a NanoSight-style ExperimentSummary.csv and a self-contained HTML report.

Both take the per-capture ``nta.result`` documents (docs/schemas/nta.result.json) of one
sample; the statistics are averaged over the captures with their standard error
(SD / sqrt(n), n - 1 in the SD), as NanoSight reports replicate videos.
"""
from __future__ import annotations

import csv
import html
import json
import math
from datetime import datetime, timezone
from typing import Any, Iterator

import exoacq

#: (key, label with unit, getter, display format) of every averaged statistic, in report order.
STATISTICS = [
    ("mean_nm", "Mean (nm)", lambda c: c["size_nm"]["mean"], ".1f"),
    ("mode_nm", "Mode (nm)", lambda c: c["size_nm"]["mode"], ".1f"),
    ("sd_nm", "SD (nm)", lambda c: c["size_nm"]["sd"], ".1f"),
    ("d10_nm", "D10 (nm)", lambda c: c["size_nm"]["d10"], ".1f"),
    ("d50_nm", "D50 (nm)", lambda c: c["size_nm"]["d50"], ".1f"),
    ("d90_nm", "D90 (nm)", lambda c: c["size_nm"]["d90"], ".1f"),
    ("concentration_per_ml", "Concentration (particles / ml)", lambda c: c.get("concentration_per_ml"), ".3e"),
    ("particles_per_frame", "Particles per frame (particles / frame)", lambda c: c.get("particles_per_frame"), ".1f"),
    ("valid_tracks", "Valid tracks (count)", lambda c: c["tracks"]["used"], ".1f"),
    ("temperature_c", "Temperature (°C)", lambda c: c.get("temperature_c"), ".2f"),
    ("viscosity_mpa_s", "Viscosity (mPa·s)", lambda c: c.get("viscosity_mpa_s"), ".4f"),
]
#: Unit of a settings key, from its suffix (units are part of every key name: docs/protocol.md).
UNIT_SUFFIXES = [("_um2_s", "µm²/s"), ("_mpa_s", "mPa·s"), ("_per_ml", "particles / ml"), ("_nm", "nm"),
                 ("_um", "µm"), ("_px", "px"), ("_ms", "ms"), ("_us", "µs"), ("_s", "s"), ("_hz", "Hz"),
                 ("_mw", "mW"), ("_c", "°C"), ("_k", "K"), ("_nl", "nL"), ("_ml", "mL"), ("_pct", "%")]
CONCENTRATION_UNIT, COUNTS_UNIT = "particles / ml", "particles per bin"


def _mean_se(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (sample SD / sqrt(n)); None where undefined."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, sd / math.sqrt(n)


def _close(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)


def average_captures(captures: list[dict[str, Any]]) -> dict[str, Any]:
    """Average and standard error of every statistic and histogram bin over the captures.

    Returns ``{"n", "stats": {key: {"label", "format", "values", "average", "se", "n"}},
    "histogram": {"bin_centres_nm", "quantity" ("concentration_per_ml" or "counts"),
    "unit", "values" (one list per capture), "average", "se"}, "warnings"}``.
    A statistic missing (null) in some captures is averaged over the others, with a
    warning. Histograms must have the same bins; a shorter one whose bins are the start
    of the longest is padded with zeros (the analysis' bins run past the largest size,
    so the missing bins are empty). Other differences raise ValueError. The histogram
    is in particles/mL per bin when every capture has it, in counts otherwise.
    """
    if not captures:
        raise ValueError("no captures to average")
    n, warnings = len(captures), []
    stats = {}
    for key, label, get, fmt in STATISTICS:
        values = [get(c) for c in captures]
        known = [float(v) for v in values if v is not None and math.isfinite(v)]
        average, se = _mean_se(known)
        if len(known) < n:
            missing = ", ".join(str(i + 1) for i, v in enumerate(values) if v is None or not math.isfinite(v))
            warnings.append(f"{label}: averaged over {len(known)} of {n} captures (none in capture {missing})")
        stats[key] = {"label": label, "format": fmt, "values": values, "average": average, "se": se,
                      "n": len(known)}

    centres_all = [list(c["histogram"]["bin_centres_nm"]) for c in captures]
    for i, h in enumerate(c["histogram"] for c in captures):
        for name in ("counts", "concentration_per_ml"):
            if h.get(name) is not None and len(h[name]) != len(centres_all[i]):
                raise ValueError(f"capture {i + 1}: {len(h[name])} histogram {name} values "
                                 f"for {len(centres_all[i])} bins")
    centres = max(centres_all, key=len)
    for i, own in enumerate(centres_all):
        first = next((j for j, (x, y) in enumerate(zip(own, centres)) if not _close(x, y)), None)
        if first is not None:
            ref = centres_all.index(centres) + 1
            raise ValueError(f"histogram bins do not match across captures: capture {i + 1} has bin centre "
                             f"{own[first]:g} nm where capture {ref} has {centres[first]:g} nm (bin {first + 1}); "
                             "analyse all captures with the same bins")
    if any(len(own) < len(centres) for own in centres_all):
        warnings.append(f"histograms padded with empty bins to {centres[-1]:g} nm (the largest capture's range)")
    with_conc = [c for c in captures if c["histogram"].get("concentration_per_ml") is not None]
    quantity = "concentration_per_ml" if len(with_conc) == n else "counts"
    if 0 < len(with_conc) < n:
        warnings.append(f"size distribution in counts: only {len(with_conc)} of {n} captures have a concentration")
    per_capture = []
    for c in captures:
        row = [float(v) for v in c["histogram"][quantity]]
        per_capture.append(row + [0.0] * (len(centres) - len(row)))
    columns = [_mean_se(list(col)) for col in zip(*per_capture)]
    histogram = {"bin_centres_nm": [float(x) for x in centres], "quantity": quantity,
                 "unit": CONCENTRATION_UNIT if quantity != "counts" else COUNTS_UNIT, "values": per_capture,
                 "average": [m for m, _ in columns], "se": [s for _, s in columns]}
    return {"n": n, "stats": stats, "histogram": histogram, "warnings": warnings}


def _cell(value: Any) -> str:
    """A CSV cell: full precision, "n/a" for a missing value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(float(value))  # numpy floats too
    return str(value)


def _show(value: Any, fmt: str) -> str:
    """A value for people: formatted number, "n/a" when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # counts stay whole
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _unit(key: str) -> str:
    return next((unit for suffix, unit in UNIT_SUFFIXES if key.lower().endswith(suffix)), "")


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(dotted key, value text, unit) of every leaf of a settings tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)) and all(not isinstance(v, (dict, list)) for v in tree):
        yield prefix, "; ".join(_cell(v) for v in tree), _unit(prefix)
    elif isinstance(tree, (list, tuple)):
        yield prefix, json.dumps(tree, default=str), _unit(prefix)
    else:
        yield prefix, _cell(tree), _unit(prefix)


def _capture_warnings(captures: list[dict[str, Any]], average: dict[str, Any]) -> list[str]:
    out = [f"Capture {i + 1}: {w}" for i, c in enumerate(captures) for w in c.get("warnings") or []]
    return out + [f"Average: {w}" for w in average.get("warnings", [])]


def write_experiment_summary_csv(path, captures: list[dict[str, Any]], average: dict[str, Any] | None = None, *,
                                 sample: str, settings: dict[str, Any]) -> None:
    """Write the captures as a NanoSight-style ExperimentSummary.csv (ISO-8859-1, CRLF).

    Blocks: a header (software, version, sample, date, captures), [Settings] (every
    setting with its unit), [Results] (one column per capture, then Average and Standard
    Error), [Warnings], a [Size Data] block per capture, and "Graph Data": "Bin centre
    (nm)", one "Concentration (particles / ml)" column per capture in capture order (or
    "Counts (particles per bin)" when a capture has no concentration), then the average and
    standard error. ``average`` is :func:`average_captures`'s result (computed if None).
    Characters that ISO-8859-1 cannot encode are written as "?".
    """
    average = average_captures(captures) if average is None else average
    names = [f"Capture {i + 1}" for i in range(len(captures))]
    rows: list[list[str]] = [
        ["Experiment Summary File"], ["Software", "exoacq"], ["Version", exoacq.__version__], ["Sample", sample],
        ["Date", datetime.now(timezone.utc).isoformat(timespec="seconds")], ["Captures", str(len(captures))],
        ["Run ID"] + [str(c.get("run_id", "")) for c in captures],
        ["Capture time"] + [str(c.get("time", "")) for c in captures], [], ["[Settings]"],
        ["Setting", "Value", "Unit"]]
    rows += [[k, v, u] for k, v, u in _flatten(settings)]
    rows += [[], ["[Results]"], ["Statistic"] + names + ["Average", "Standard Error"]]
    rows += [[s["label"]] + [_cell(v) for v in s["values"]] + [_cell(s["average"]), _cell(s["se"])]
             for s in average["stats"].values()]
    rows += [[], ["[Warnings]"]] + [[w] for w in _capture_warnings(captures, average) or ["none"]]
    for i, c in enumerate(captures):
        frames = c.get("frames") or {}
        rows += [[], ["[Size Data]"], ["Capture", str(i + 1)], ["Run ID", str(c.get("run_id", ""))]]
        rows += [[s["label"], _cell(s["values"][i])] for s in average["stats"].values()]
        rows += [["Total tracks (count)", _cell(c["tracks"].get("total"))]]
        rows += [[f"Frames {k} (frames)", _cell(frames.get(k))]
                 for k in ("planned", "acquired", "processed", "dropped")]
        rows += [["Warning", w] for w in c.get("warnings") or []]
    hist = average["histogram"]
    what = "Concentration" if hist["quantity"] != "counts" else "Counts"
    rows += [[], ["Graph Data"],
             ["Bin centre (nm)"] + [f"{what} ({hist['unit']})"] * len(captures)
             + [f"{what} average ({hist['unit']})", f"Standard Error ({hist['unit']})"]]
    for j, centre in enumerate(hist["bin_centres_nm"]):
        rows.append([_cell(centre)] + [_cell(v[j]) for v in hist["values"]]
                    + [_cell(hist["average"][j]), _cell(hist["se"][j])])
    rows.append([])
    with open(path, "w", encoding="iso-8859-1", errors="replace", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows(rows)


def _ticks(top: float) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) from 0 to ``top``."""
    step = 10.0 ** math.floor(math.log10(top / 5))
    step *= next(m for m in (1, 2, 5, 10) if top / (step * m) <= 6)
    return [k * step for k in range(int(top / step + 1e-9) + 1)]


def _svg_plot(hist: dict[str, Any], width: int = 720, height: int = 320) -> str:
    """The size distribution as inline SVG: captures thin, average thick with a +/- SE band."""
    e = html.escape
    x, mean = hist["bin_centres_nm"], hist["average"]
    se = [s or 0.0 for s in hist["se"]]
    top = max([v for row in hist["values"] for v in row] + [m + s for m, s in zip(mean, se)] + [0.0]) or 1.0
    last = max((j for j, m in enumerate(mean) if m > 0), default=len(x) - 1)
    xmax = x[min(last + 2, len(x) - 1)] if x else 1.0
    left, right, upper, lower = 80, 20, 20, 50
    sx = lambda v: left + (width - left - right) * v / (xmax or 1.0)  # noqa: E731
    sy = lambda v: height - lower - (height - upper - lower) * v / top  # noqa: E731
    keep = [j for j in range(len(x)) if x[j] <= xmax]
    pts = lambda ys: " ".join(f"{sx(x[j]):.1f},{sy(ys[j]):.1f}" for j in keep)  # noqa: E731
    band = pts([m + s for m, s in zip(mean, se)]) + " " + " ".join(
        f"{sx(x[j]):.1f},{sy(max(mean[j] - se[j], 0.0)):.1f}" for j in reversed(keep))
    label = ("Concentration" if hist["quantity"] != "counts" else "Counts") + f" ({hist['unit']})"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="size distribution">',
             f'<polygon points="{band}" fill="#9ecae1" opacity="0.6"/>']
    parts += [f'<polyline points="{pts(row)}" fill="none" stroke="#999" stroke-width="1"/>' for row in hist["values"]]
    parts.append(f'<polyline points="{pts(mean)}" fill="none" stroke="#08519c" stroke-width="2.5"/>')
    parts.append(f'<line x1="{left}" y1="{sy(0):.1f}" x2="{width - right}" y2="{sy(0):.1f}" stroke="#000"/>')
    parts.append(f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{sy(0):.1f}" stroke="#000"/>')
    for vx in _ticks(xmax or 1.0):
        parts.append(f'<text x="{sx(vx):.1f}" y="{height - lower + 16}" font-size="11" '
                     f'text-anchor="middle">{vx:g}</text>')
    for vy in _ticks(top):
        parts.append(f'<text x="{left - 6}" y="{sy(vy) + 4:.1f}" font-size="11" text-anchor="end">{vy:.3g}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 10}" font-size="12" '
                 'text-anchor="middle">Diameter (nm)</text>')
    parts.append(f'<text x="14" y="{(upper + height - lower) / 2}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(upper + height - lower) / 2})">{e(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _svg_trend(rows: list[dict[str, Any]], quantity: str, label: str, width: int = 720, height: int = 220) -> str:
    """Bead checks in time order: the measured value (dot: green inside, red outside its limits)
    against its acceptance range (grey bar: certified value +/- the limit), one column per check."""
    e = html.escape
    points = [(r, r.get(quantity), r.get(quantity + "_range")) for r in rows if r.get(quantity + "_range")]
    if not points:
        return f"<p>{e(label)}: not checked.</p>"
    values = [v for _, v, rng in points for v in ([v] if v is not None else []) + list(rng)]
    low, high = min(values), max(values)
    pad = 0.1 * (high - low) or 0.1 * abs(high) or 1.0
    low, high = max(low - pad, 0.0), high + pad
    left, right, upper, lower = 80, 20, 15, 45
    step = (width - left - right) / len(points)
    sx = lambda i: left + step * (i + 0.5)  # noqa: E731
    sy = lambda v: height - lower - (height - upper - lower) * (v - low) / (high - low)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="bead-check trend: {e(label)}">']
    every = max(1, len(points) // 8)
    for i, (row, value, (lo, hi)) in enumerate(points):
        x = sx(i)
        parts.append(f'<rect class="limit" x="{x - 4:.1f}" y="{sy(hi):.1f}" width="8" '
                     f'height="{max(sy(lo) - sy(hi), 1.0):.1f}" fill="#ccc"/>')
        if value is not None:
            ok = lo <= value <= hi
            colour = "#1a9850" if ok else "#d73027"
            parts.append(f'<circle class="{"pass" if ok else "fail"}" cx="{x:.1f}" cy="{sy(value):.1f}" '
                         f'r="4" fill="{colour}"><title>{e(row["run_id"])}: {value:.4g}</title></circle>')
        if i % every == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - lower + 14}" font-size="10" text-anchor="middle">'
                         f'{e(row["time"][5:16].replace("T", " "))}</text>')
    parts.append(f'<line x1="{left}" y1="{height - lower}" x2="{width - right}" y2="{height - lower}" stroke="#000"/>')
    parts.append(f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{height - lower}" stroke="#000"/>')
    step = 10.0 ** math.floor(math.log10((high - low) / 4))
    step *= next(m for m in (1, 2, 5, 10) if (high - low) / (step * m) <= 5)
    for k in range(math.ceil(low / step), math.floor(high / step) + 1):
        parts.append(f'<text x="{left - 6}" y="{sy(k * step) + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{k * step:.3g}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" font-size="12" text-anchor="middle">'
                 'Bead check (date, UTC)</text>')
    parts.append(f'<text x="14" y="{(upper + height - lower) / 2}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(upper + height - lower) / 2})">{e(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _suitability_html(suitability: dict[str, Any] | None, bead_check: dict[str, Any] | None,
                      trend: list[dict[str, Any]] | None) -> str:
    """The report's system-suitability section: verdict and flags, calibration expiry, the bead check
    the result relies on, this run's own bead check (if it is one) and the trend of recent checks."""
    e = html.escape
    out = ["<h2>System suitability</h2>"]
    if suitability is None:
        out.append("<p>not assessed</p>")
    else:
        if suitability["flags"]:
            out.append('<div class="warnings" id="suitability-flags"><h3>Not suitable</h3>\n<ul>\n'
                       + "".join(f"<li>{e(f)}</li>\n" for f in suitability["flags"]) + "</ul></div>")
        else:
            out.append('<p class="ok" id="suitability-ok">Suitable: calibration valid, bead check passed '
                       f'within {suitability["period_h"]:g} h.</p>')
        cal, check = suitability.get("calibration"), suitability.get("bead_check")
        rows = [["Calibration file", cal["file"] if cal else "none (no calibration file)"]]
        if cal:
            rows += [["Calibration version, date", f"v{cal.get('version', '?')}, {cal.get('date', '?')}"],
                     ["Calibration expires", cal["expires"] or "no expiry"],
                     ["Calibration expired", {True: "YES", False: "no", None: "unknown"}[cal["expired"]]]]
        rows.append(["Bead-check period (h)", f"{suitability['period_h']:g}"])
        if check:
            rows += [["Bead check", f"{check['run_id']} at {check['time']} ({check['age_h']:.1f} h before)"],
                     ["Bead standard (lot)", f"{check['standard']} ({check['lot']})"],
                     ["Bead check result", "passed" if check["passed"] else "FAILED"]]
        else:
            rows.append(["Bead check", f"none within {suitability['period_h']:g} h"])
        out.append(_table(["Item", "Value"], rows))
    if bead_check is not None:
        out.append(f"<h3>This run's bead check: {'passed' if bead_check['passed'] else 'FAILED'}</h3>")
        out.append(f"<p>Standard {e(bead_check['standard'])}, lot {e(bead_check['lot'])}"
                   + (" (nominal values, not certified)" if bead_check.get("nominal") else "") + ".</p>")
        out.append(_table(["Quantity", "Measured", "Certified ± uncertainty", "Acceptance", "Deviation (%)", "Result"],
                          [[c["quantity"], _show(c["measured"], ".4g"),
                            f"{c['certified']:.4g} ± {_show(c['uncertainty'], '.2g')}",
                            f"{c['limit'][0]:.4g} – {c['limit'][1]:.4g} (± {c['limit_pct']:g} %)",
                            _show(c["deviation_pct"], "+.1f"), "pass" if c["passed"] else "FAIL"]
                           for c in bead_check["checks"]]))
    if trend:
        out.append(f"<h3>Bead-check trend ({len(trend)} checks)</h3>\n<p>Measured value (dot: green within, "
                   "red outside its limits) against the acceptance range (grey bar).</p>")
        out.append(_svg_trend(trend, "mean_diameter_nm", "Mean diameter (nm)"))
        out.append(_svg_trend(trend, "concentration_per_ml", "Concentration (particles / ml)"))
    return "\n".join(out)


def _table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def write_html_report(path, captures: list[dict[str, Any]], average: dict[str, Any] | None = None, *,
                      sample: str, settings: dict[str, Any], calibration: dict[str, Any] | None,
                      suitability: dict[str, Any] | None = None, bead_check: dict[str, Any] | None = None,
                      bead_checks: list[dict[str, Any]] | None = None,
                      signatures: list[str] | None = None) -> None:
    """Write one self-contained HTML report (UTF-8, no external assets, inline SVG plots).

    Warnings first, then the system suitability (``suitability`` and, for a bead-check run,
    ``bead_check``: the result's documents from exoacq.nta.suitability; ``bead_checks``: the
    trend rows of recent bead checks, plotted against their limits), the statistics (average +/- standard error and per capture), the
    size distribution, the settings (acquisition, tracking, instruments, with units), the
    calibration used ("none" without one) and the frames of each capture. All text is escaped.
    ``signatures``: who ran the run and who approved it (exoacq.audit.signature_lines), under the title.
    """
    e = html.escape
    average = average_captures(captures) if average is None else average
    names = [f"Capture {i + 1}" for i in range(len(captures))]
    warnings = _capture_warnings(captures, average)
    if warnings:
        warn_html = ('<div class="warnings"><h2>Warnings</h2>\n<ul>\n'
                     + "".join(f"<li>{e(w)}</li>\n" for w in warnings) + "</ul></div>")
    else:
        warn_html = '<p class="ok">No warnings.</p>'
    stat_rows = [[s["label"], _show(s["average"], s["format"]) + " ± " + _show(s["se"], s["format"])]
                 + [_show(v, s["format"]) for v in s["values"]] for s in average["stats"].values()]
    sections = []
    for name in ["acquisition", "tracking", "instruments"] + [k for k in settings
                                                             if k not in ("acquisition", "tracking", "instruments")]:
        rows = [[k, v, u] for k, v, u in _flatten(settings.get(name) or {})]
        sections.append(f"<h3>{e(name.capitalize())}</h3>\n"
                        + (_table(["Setting", "Value", "Unit"], rows) if rows else "<p>none</p>"))
    cal_html = (_table(["Field", "Value", "Unit"], [[k, v, u] for k, v, u in _flatten(calibration)])
                if calibration else "<p>none</p>")
    frame_rows = []
    for name, c in zip(names, captures):
        f = c.get("frames") or {}
        frame_rows.append([name, str(c.get("run_id", "")), str(c.get("time", ""))]
                          + [_show(f.get(k), "d") for k in ("planned", "acquired", "processed", "dropped")])
    hist = average["histogram"]
    doc = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>NTA report: {e(sample)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.warnings {{ border: 2px solid #c00; background: #fee; padding: 0.5em 1em; }}
.warnings h2 {{ color: #c00; margin-top: 0; }}
.ok {{ color: #060; }}
</style>
</head>
<body>
<h1>NTA report: {e(sample)}</h1>
<p>Sample: <strong>{e(sample)}</strong> &middot; {len(captures)} captures &middot;
exoacq {e(exoacq.__version__)} &middot; {e(datetime.now(timezone.utc).isoformat(timespec="seconds"))}</p>
{"".join(f'<p class="signature">{e(line)}</p>' + chr(10) for line in signatures or [])}{warn_html}
{_suitability_html(suitability, bead_check, bead_checks)}
<h2>Statistics</h2>
<p>Average ± standard error (SD / &radic;n) over the captures.</p>
{_table(["Statistic", "Average ± standard error"] + names, stat_rows)}
<h2>Size distribution</h2>
<p>{e(("Concentration" if hist["quantity"] != "counts" else "Counts") + " (" + hist["unit"] + ")")}
per bin: average (thick line) ± standard error (band), captures (thin lines).</p>
{_svg_plot(hist)}
<h2>Settings</h2>
{chr(10).join(sections)}
<h2>Calibration</h2>
{cal_html}
<h2>Captures</h2>
{_table(["Capture", "Run ID", "Time", "Frames planned", "acquired", "processed", "dropped"], frame_rows)}
</body>
</html>
"""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(doc)
