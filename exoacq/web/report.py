"""One printable report per sample across NTA, DLS and flow runs, with the results entered by hand.

``sample_report`` returns a single self-contained HTML page: inline CSS (with
``@media print``), no scripts, images as ``data:`` URIs and plots as inline
SVG, so it prints, mails and archives as one file and loads nothing from the
network. Every number taken from a document is an element
``<span class="num" data-run=RUN data-key=PATH data-value=REPR>`` whose
``data-key`` is its dotted path in that run's result document (``size_nm.mean``,
``measurements.0.z_average_nm``) and ``data-value`` the document's exact value
(``null`` when missing), so a program (the tests) can read every shown number
back and compare it with the documents.

Weighting: NTA and flow sizes are number-weighted (each particle counts once);
the DLS Z-average and its peaks are intensity-weighted (a particle counts with
the light it scatters, ~d^6 for small ones), so for a polydisperse sample the
DLS sizes are larger than the NTA and flow ones: the columns are not expected
to agree. The Z-average is the ISO 22412:2017 cumulants diameter.
"""
from __future__ import annotations

import base64
from datetime import datetime, timezone
from html import escape
from typing import Any, Iterable

from exoacq.web import svg
from exoacq.web.misev import CITATION, CYTOSOLIC, NEGATIVE, TRANSMEMBRANE, misev_checklist, purity_ratios
from exoacq.web.samples import WESTERN_BLOT_MARKERS, image_type
from exoacq.web.summaries import dls_measurements, field, method_of, number, result_of

__all__ = ["sample_report", "misev_checklist", "purity_ratios"]

WEIGHTING = {"nta": "number-weighted (tracked particles; ML deconvolution, detection depth corrected)",
             "dls": "intensity-weighted (scattered light; cumulants, ISO 22412:2017)",
             "flow": "number-weighted (counted events above the detection limit; calibrated scatter)"}
METHOD_NAMES = {"nta": "NTA", "dls": "DLS", "flow": "Flow"}
CSS = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#1b1b1b;margin:24px auto;max-width:1100px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;border-bottom:1px solid #bbb;margin:22px 0 8px;padding-bottom:2px}
h3{font-size:14px;margin:12px 0 4px}table{border-collapse:collapse;margin:4px 0 8px;width:100%}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}th{background:#f1f3f5}
td.n{text-align:right;white-space:nowrap}.meta{color:#555}.note{color:#444;font-size:12px;margin:4px 0}
.done{color:#176e2c;font-weight:600}.partial{color:#9a6400;font-weight:600}.missing{color:#b3261e;font-weight:600}
.warn{color:#9a6400}ul.warnings{margin:2px 0 8px 18px;padding:0}.plots{display:flex;flex-wrap:wrap;gap:12px}
svg.plot{font-size:10px;border:1px solid #ddd;background:#fff}svg.plot .axis{stroke:#444;fill:none}
svg.plot .bar{fill:#4a78b0}svg.plot .line{stroke:#b0492f;stroke-width:1.5;fill:none}svg.plot .plot-title{font-weight:600}
figure{margin:0 0 10px;display:inline-block;max-width:48%;vertical-align:top}figure img{max-width:100%;border:1px solid #ccc}
dl.settings{column-count:2;column-gap:24px;font-size:11.5px;margin:2px 0 8px}dl.settings div{break-inside:avoid}
dl.settings dt{display:inline;color:#555}dl.settings dd{display:inline;margin:0 0 0 4px}
@media print{body{margin:0;max-width:none;font-size:11px}h2{break-after:avoid}table,figure,svg,dl div{break-inside:avoid}
a{color:inherit;text-decoration:none}@page{size:A4;margin:14mm}}
"""


# -- numbers ---------------------------------------------------------------------------------
def _fmt(value: float, style: str) -> str:
    if style == "nm":
        return f"{value:.1f}"
    if style == "pdi":
        return f"{value:.3f}"
    if style == "conc":
        return f"{value:.2e}"
    if style == "pct":
        return f"{100 * value:.1f}"
    if style == "int":
        return f"{value:.0f}"
    return f"{value:g}"


def _num(value: Any, style: str, *, run: str = "", key: str = "", source: str = "result") -> str:
    """A shown number, marked with where it comes from; '—' for a missing one."""
    value = number(value)
    text = "—" if value is None else _fmt(value, style)
    return (f'<span class="num" data-run="{escape(run)}" data-key="{escape(key)}" data-source="{source}" '
            f'data-style="{style}" data-value="{"null" if value is None else repr(value)}">{text}</span>')


def _doc_num(run_id: str, result: dict[str, Any], key: str, style: str) -> str:
    return _num(field(result, key), style, run=run_id, key=key)


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _rid(run: dict[str, Any]) -> str:
    return str(run.get("run_id") or (result_of(run) or {}).get("source") or "?")


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(rows_cell for rows_cell in row) + "</tr>" for row in rows]
    return "".join(out) + "</tbody></table>"


def _td(content: str, numeric: bool = False) -> str:
    return f'<td class="n">{content}</td>' if numeric else f"<td>{content}</td>"


# -- the sections ---------------------------------------------------------------------------
def _operator(run: dict[str, Any]) -> str | None:
    op = run.get("operator")
    if isinstance(op, dict):
        return op.get("operator") if op.get("authenticated") else (op.get("claimed_operator") or op.get("operator"))
    return op if isinstance(op, str) else None


def _header(sample: str, runs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    operators: dict[str, list[str]] = {}
    for run in runs:
        name = _operator(run)
        if name:
            operators.setdefault(name, []).append(f"{METHOD_NAMES.get(method_of(run) or '', '?')} run")
    if info.get("entered_by"):
        operators.setdefault(str(info["entered_by"]), []).append("results entered by hand")
    times = sorted(t for r in runs for t in (r.get("created"), r.get("finished"), (result_of(r) or {}).get("time"))
                   if isinstance(t, str))
    measured = f"{times[0]} to {times[-1]}" if times else "—"
    made = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    who = "; ".join(f"{_e(name)} ({', '.join(sorted(set(what)))})" for name, what in operators.items()) or "—"
    from exoacq import __version__
    return (f"<h1>EV characterisation report: <span id=\"sample\">{_e(sample)}</span></h1>"
            f'<p class="meta">Measured {_e(measured)} · report made <span id="generated">{made}</span> by exoacq '
            f"{_e(__version__)} · operator(s): <span id=\"operators\">{who}</span></p>")


def _runs_table(sample: str, runs: list[dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        result = result_of(run)
        state = run.get("state") or ("(analysed file)" if result else "—")
        if result is not None and result.get("complete") is False:
            state += " (partial result)"
        other = run.get("sample") or (result or {}).get("sample")
        sample_cell = _e(other) + (' <span class="warn">(another sample name)</span>' if other and other != sample
                                   else "")
        rows.append([_td(f'<span class="run-id">{_e(_rid(run))}</span>'), _td(METHOD_NAMES.get(method_of(run) or "",
                     _e(method_of(run)))), _td(_e(run.get("instrument") or (result or {}).get("instrument"))),
                     _td(sample_cell), _td(_e(state)), _td(_e(run.get("created") or (result or {}).get("time"))),
                     _td(_e(run.get("current_version") or (result or {}).get("version") or ("1" if result else "—"))),
                     _td(_e(_operator(run)))])
    if not rows:
        return "<h2>Runs</h2><p>No run selected.</p>"
    return "<h2>Runs</h2>" + _table(["Run", "Method", "Instrument", "Sample", "State", "Created", "Result version",
                                     "Operator"], rows, "runs")


def _columns(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One column per NTA or flow run, one per DLS measurement (angle and detector channel)."""
    columns = []
    for method in ("nta", "dls", "flow"):
        for run in runs:
            result = result_of(run)
            if method_of(run) != method or result is None:
                continue
            if method == "dls":
                for i, m in dls_measurements(result):
                    label = f"{number(m.get('angle_deg')) or 0:g}°" + (f" {m['channel']}" if m.get("channel") else "")
                    columns.append({"run": _rid(run), "result": result, "method": method, "prefix": f"measurements.{i}.",
                                    "label": label, "measurement": m})
            else:
                columns.append({"run": _rid(run), "result": result, "method": method, "prefix": "", "label": ""})
    return columns


SIZE_ROWS = (  # label, {method: key}, style
    ("Mean (nm)", {"nta": "size_nm.mean", "flow": "size_nm.mean"}, "nm"),
    ("Mode (nm)", {"nta": "size_nm.mode"}, "nm"),
    ("SD (nm)", {"nta": "size_nm.sd"}, "nm"),
    ("d10 (nm)", {"nta": "size_nm.d10", "flow": "size_nm.d10"}, "nm"),
    ("d50, median (nm)", {"nta": "size_nm.d50", "flow": "size_nm.median"}, "nm"),
    ("d90 (nm)", {"nta": "size_nm.d90", "flow": "size_nm.d90"}, "nm"),
    ("Z-average (nm), cumulants ISO 22412", {"dls": "z_average_nm"}, "nm"),
    ("PDI (2nd-order cumulant)", {"dls": "pdi"}, "pdi"),
    ("Scattering angle (°)", {"dls": "angle_deg"}, "g"),
    ("Detection limit (nm)", {"flow": "detection_limit_nm"}, "nm"),
    ("Particles sized", {"nta": "tracks.used", "flow": "size_nm.events"}, "int"),
)


def _size_table(columns: list[dict[str, Any]]) -> str:
    if not columns:
        return "<h2>Size</h2><p>No result with sizes among the selected runs.</p>"
    head = ["Statistic"] + [f"{METHOD_NAMES[c['method']]} {c['label']}<br><span class=\"run-id\">{_e(c['run'])}</span>"
                            for c in columns]
    rows = [[_td("Weighting")] + [_td(f'<span class="weighting" data-method="{c["method"]}">'
                                      f'{_e(WEIGHTING[c["method"]])}</span>') for c in columns]]
    for label, keys, style in SIZE_ROWS:
        cells = []
        for c in columns:
            key = keys.get(c["method"])
            if key is None:
                cells.append(_td(""))
                continue
            text = _doc_num(c["run"], c["result"], c["prefix"] + key, style)
            se_key = "standard_error." + key
            if c["method"] == "nta" and key.startswith("size_nm.") and number(field(c["result"], se_key)) is not None:
                text += " ± " + _doc_num(c["run"], c["result"], se_key, style)
            cells.append(_td(text, numeric=True))
        if any(cell != "<td></td>" for cell in cells):
            rows.append([_td(label)] + cells)
    peaks = []
    for c in columns:
        if c["method"] != "dls":
            peaks.append(_td(""))
            continue
        items = []
        for j, peak in enumerate(field(c["measurement"], "peaks.intensity") or []):
            base = f"{c['prefix']}peaks.intensity.{j}."
            items.append(f"{_doc_num(c['run'], c['result'], base + 'mean_nm', 'nm')} ± "
                         f"{_doc_num(c['run'], c['result'], base + 'sd_nm', 'nm')} nm "
                         f"({_doc_num(c['run'], c['result'], base + 'area', 'pct')} %)")
        peaks.append(_td("<br>".join(items) or "—", numeric=True))
    if any(c["method"] == "dls" for c in columns):
        rows.append([_td("Intensity-distribution peaks: mean ± SD (area)")] + peaks)
    extrapolated = [c for c in columns if c["method"] == "dls" and number(field(c["result"], "extrapolated.diameter_nm"))
                    is not None]
    note_extra = "".join(f"<p class=\"note\">DLS {_e(c['run'])}: diameter from D extrapolated to q → 0 over the "
                         f"angles: {_doc_num(c['run'], c['result'], 'extrapolated.diameter_nm', 'nm')} nm</p>"
                         for c in {id(c["result"]): c for c in extrapolated}.values())
    return ("<h2>Size</h2>" + _table(head, rows, "sizes") + note_extra +
            '<p class="note" id="weighting-note">NTA and flow sizes are <b>number-weighted</b>: each particle counts '
            "once. The DLS Z-average (ISO 22412:2017 cumulants) and its peaks are <b>intensity-weighted</b>: each "
            "particle counts with the light it scatters (about d<sup>6</sup> for particles much smaller than the "
            "wavelength), so for a polydisperse sample the DLS sizes are larger than the number-weighted NTA and "
            "flow sizes; the columns are not expected to agree. Flow counts only events above its detection limit, "
            "so its statistics miss the smaller particles. ± for NTA: standard error over the captures.</p>")


def _plots(runs: list[dict[str, Any]]) -> str:
    figures = []
    for run in runs:
        result, method, rid = result_of(run), method_of(run), _rid(run)
        if result is None:
            continue
        if method == "nta":
            hist = result.get("histogram") or {}
            centres, width = hist.get("bin_centres_nm") or [], number(hist.get("bin_width_nm"))
            heights = hist.get("number_fraction") or hist.get("counts") or []
            if centres and width and len(heights) == len(centres):
                last = max((i for i, h in enumerate(heights) if (number(h) or 0) > 0), default=-1)
                if last >= 0:
                    n = min(len(centres), last + 2)
                    edges = [centres[0] - width / 2 + i * width for i in range(n + 1)]
                    figures.append(svg.bars(edges, [number(h) or 0.0 for h in heights[:n]],
                                            title=f"NTA {rid}: number size distribution", x_label="diameter (nm)",
                                            y_label="number fraction" if hist.get("number_fraction") else "tracks"))
        elif method == "dls":
            for i, m in dls_measurements(result)[:1]:
                dist = m.get("distribution") or {}
                figures.append(svg.log_line(dist.get("diameter_nm") or [], dist.get("intensity") or [],
                                            title=f"DLS {rid} {number(m.get('angle_deg')) or 0:g}°: intensity "
                                                  "distribution", x_label="diameter (nm), log scale",
                                            y_label="intensity"))
        elif method == "flow":
            hist = result.get("size_histogram") or {}
            edges, counts = hist.get("edges_nm") or [], [number(c) or 0.0 for c in hist.get("counts") or []]
            used = [i for i, c in enumerate(counts) if c > 0]
            if used and len(edges) == len(counts) + 1:  # the bins that hold events
                first, last = used[0], used[-1] + 1
                figures.append(svg.bars(edges[first:last + 1], counts[first:last], x_label="diameter (nm)",
                                        title=f"Flow {rid}: calibrated sizes (number)", y_label="events"))
    figures = [f for f in figures if f]
    return ('<h2>Size distributions</h2><div class="plots">' + "".join(figures) + "</div>") if figures else ""


def _concentrations(runs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    rows = []
    for run in runs:
        result, method, rid = result_of(run), method_of(run), _rid(run)
        if result is None or method not in ("nta", "flow"):
            continue
        if method == "nta":
            unc = _doc_num(rid, result, "standard_error.concentration_per_ml", "conc")
            if number(field(result, "standard_error.concentration_per_ml")) is None:
                unc += " (no standard error: one capture, or a blank of one capture)"
            else:
                unc = f"± {unc} /mL (standard error over the captures)"
            counted = "particles tracked in the calibrated detection volume (per mL of the original sample)"
            notes = []
            if number(result.get("concentration_per_ml_before_blank")) is not None:
                notes.append("before the blank: " + _doc_num(rid, result, "concentration_per_ml_before_blank", "conc")
                             + f" /mL (blank {_e(field(result, 'blank.run_id'))} subtracted)")
            if number(field(result, "detection_volume.nl")) is not None:
                notes.append("detection volume " + _doc_num(rid, result, "detection_volume.nl", "g") + " nL")
        else:
            unc = f'± {_doc_num(rid, result, "concentration_uncertainty_per_ml", "conc")} /mL (Poisson, one SD)'
            counted = "events counted in the final gate above the trigger threshold"
            notes = [_doc_num(rid, result, "events.counted", "int") + " events in "
                     + _doc_num(rid, result, "volume_ul", "g") + " uL"]
            if number(result.get("detection_limit_nm")) is not None:
                notes.append("detection limit " + _doc_num(rid, result, "detection_limit_nm", "nm") + " nm")
        rows.append([_td(_e(rid)), _td(METHOD_NAMES[method]),
                     _td(_doc_num(rid, result, "concentration_per_ml", "conc") + " /mL", True),
                     _td(unc, True), _td(_doc_num(rid, result, "dilution", "g"), True),
                     _td(counted), _td("; ".join(notes))])
    out = "<h2>Concentration</h2>" + (_table(["Run", "Method", "Concentration", "Uncertainty", "Dilution",
                                              "What is counted", "Details"], rows, "concentrations")
                                      if rows else "<p>No particle concentration among the selected runs.</p>")
    protein = number(info.get("protein_ug_per_ml"))
    out += ("<h3>Protein and purity</h3><p>Protein: " + _num(protein, "g", key="protein_ug_per_ml", source="info")
            + f" µg/mL ({_e(info.get('protein_assay') or 'assay not named')})</p>" if protein is not None else
            "<h3>Protein and purity</h3><p>No protein concentration entered: no purity ratio.</p>")
    ratios = purity_ratios(runs, info)
    if ratios:
        out += _table(["Run", "Method", "Particles/mL", "Protein (µg/mL)", "Particles per µg protein"], [
            [_td(_e(r["run_id"])), _td(METHOD_NAMES[r["method"]]), _td(_num(r["concentration_per_ml"], "conc",
             run=r["run_id"], key="concentration_per_ml"), True), _td(_num(r["protein_ug_per_ml"], "g",
             key="protein_ug_per_ml", source="info"), True),
             _td(_num(r["particles_per_ug"], "conc", run=r["run_id"], key="particles_per_ug", source="computed")
                 + " particles/µg", True)] for r in ratios], "purity")
        out += ('<p class="note">Purity ratio = particle concentration / protein concentration, '
                "(particles/mL) / (µg/mL) = particles/µg, both of the undiluted preparation; a higher ratio means "
                "less non-vesicular protein (MISEV2023 suggests such ratios as purity indicators).</p>")
    return out


def _markers(runs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    out = "<h2>Markers</h2>"
    rows = []
    for run in runs:
        result = result_of(run)
        if method_of(run) != "flow" or result is None:
            continue
        markers = result.get("markers") if isinstance(result.get("markers"), dict) else {}
        for name in sorted(markers):  # by value: a marker's name may hold a dot
            threshold = (result.get("marker_thresholds") or {}).get(name) or {}
            shown = _num(markers[name], "pct", run=_rid(run), key=f"markers.{name}")
            rows.append([_td(_e(_rid(run))), _td(_e(name)), _td(shown + " %", True),
                         _td(_e(threshold.get("parameter"))), _td(_e(threshold.get("method")))])
    out += ("<h3>Flow: marker-positive fractions of the counted events</h3>" +
            _table(["Run", "Marker", "Positive", "Parameter", "Threshold from"], rows, "flow-markers")) if rows else ""
    blot = info.get("western_blot") or {}
    kind = {**{m: "transmembrane / GPI-anchored EV marker" for m in TRANSMEMBRANE},
            **{m: "cytosolic EV marker" for m in CYTOSOLIC}, **{m: "non-EV (endoplasmic reticulum): expected absent"
                                                                 for m in NEGATIVE}}
    names = list(WESTERN_BLOT_MARKERS) + sorted(set(blot) - set(WESTERN_BLOT_MARKERS))
    out += "<h3>Western blot (entered)</h3>" + _table(["Marker", "Kind", "Result"], [
        [_td(_e(m)), _td(_e(kind.get(m, "other"))),
         _td(f'<span class="wb" data-marker="{_e(m)}">{_e(blot.get(m, "not tested"))}</span>')] for m in names],
        "western-blot")
    return out


def _tem(info: dict[str, Any], images: dict[str, bytes]) -> str:
    tem = info.get("tem") or {}
    names = list(tem.get("images") or [])
    names += [n for n in images if n not in names]
    files = tem.get("image_files") or {}
    figures = []
    for name in names:
        data = images.get(name)
        caption = _e((files.get(name) or {}).get("filename") or name)
        if not data:
            figures.append(f"<p class=\"warn\">Image {_e(name)}: its file is missing.</p>")
            continue
        kind = image_type(data[:8])
        if kind and kind[0] == "image/tiff":
            data, kind = _tiff_as_png(data), ("image/png", "png")
        if not data or kind is None:
            figures.append(f"<p class=\"warn\">Image {caption}: cannot be shown (not a readable PNG, JPEG or TIFF).</p>")
            continue
        figures.append(f'<figure><img alt="{caption}" src="data:{kind[0]};base64,{base64.b64encode(data).decode()}">'
                       f"<figcaption>{caption}</figcaption></figure>")
    morphology = str(tem.get("morphology") or "").strip()
    return ("<h2>Electron microscopy (entered)</h2>" + (f'<p id="tem-morphology">{_e(morphology)}</p>' if morphology
                                                         else "<p>No morphology described.</p>")
            + ("".join(figures) if figures else "<p>No image attached.</p>"))


def _tiff_as_png(data: bytes) -> bytes | None:
    """Browsers do not show TIFF: the image as PNG (OpenCV; 16-bit stays 16-bit), or None if unreadable."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    ok, png = cv2.imencode(".png", image)
    return png.tobytes() if ok else None


def _checklist(runs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    html_rows = "".join(
        f'<tr class="check" data-key="{i["key"]}" data-status="{i["status"]}">{_td(_e(i["item"]))}'
        + _td(f'<span class="{i["status"]}">{i["status"]}</span>') + f'{_td(_e(i["detail"]))}</tr>'
        for i in misev_checklist(runs, info))
    return ("<h2>MISEV2023-style checklist</h2><p class=\"note\">What these runs and entries show against the "
            "characterisation recommendations of MISEV2023 (Welsh et al., J Extracell Vesicles 2024, 13:e12404). "
            "MISEV2023 gives recommendations, not a pass/fail list, and also asks for what this report does not "
            "cover (the EV source, collection, separation and storage). <b>done</b> means measured and reported "
            "here, not that the preparation meets the guideline.</p>"
            f'<table class="checklist"><thead><tr><th>Item</th><th>Status</th><th>Detail</th></tr></thead>'
            f"<tbody>{html_rows}</tbody></table>")


def _flatten(value: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """(dotted key, short text) of a settings object's scalar values (lists of scalars joined if short)."""
    if isinstance(value, dict):
        if depth >= 4:
            return [(prefix, "{…}")]
        return [kv for k, v in value.items() for kv in _flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)]
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value) and len(value) <= 8:
            return [(prefix, ", ".join("—" if v is None else str(v) for v in value))]
        return [(prefix, f"[{len(value)} values]")]
    text = "—" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
    return [(prefix, text if len(text) <= 160 else text[:157] + "…")]


def _settings_block(title: str, pairs: list[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return (f"<h3>{_e(title)}</h3><dl class=\"settings\">" +
            "".join(f"<div><dt>{_e(k)}:</dt><dd>{_e(v)}</dd></div>" for k, v in pairs) + "</dl>")


def _settings(runs: list[dict[str, Any]]) -> str:
    out = []
    for run in runs:
        result, method, rid = result_of(run), method_of(run), _rid(run)
        if result is None:
            continue
        name = f"{METHOD_NAMES.get(method or '', method)} {rid} on {run.get('instrument') or result.get('instrument') or '?'}"
        if method == "nta":
            keys = ("detection_volume", "suitability", "bead_check", "threshold", "temperature_c", "viscosity_mpa_s",
                    "blur", "link_search_range_px", "localisation_nm", "frames", "settings")
        elif method == "dls":
            keys = ("source", "format", "duration_s", "runs", "settings")
            for i, m in dls_measurements(result):
                pairs = _flatten({k: m.get(k) for k in ("angle_deg", "channel", "wavelength_nm", "temperature_c",
                                                         "viscosity_mpa_s", "refractive_index",
                                                         "particle_refractive_index", "count_rate_hz", "intercept",
                                                         "pdi_corrected")})
                pairs.append(("quality", str(field(m, "quality.verdict") or "—")))
                out.append(_settings_block(f"{name}: measurement {i + 1}", pairs))
        else:
            keys = ("calibration", "size_model", "trigger_threshold_au", "detection_limit_nm", "flow_rate_ul_min",
                    "volume_ul", "duration_s", "marker_thresholds", "controls", "swarm", "acquisition", "settings",
                    "source")
        pairs = [kv for k in keys if k in result for kv in _flatten(result[k], k)]
        out.append(_settings_block(f"{name}: settings and calibrations", pairs))
    return ("<h2>Instrument settings and calibrations</h2>" + "".join(out)) if out else ""


def _warnings(runs: list[dict[str, Any]]) -> str:
    out = []
    for run in runs:
        result = result_of(run) or {}
        texts = list(result.get("warnings") or [])
        for _, m in dls_measurements(result):
            texts += list(m.get("warnings") or [])
        if run.get("error"):
            texts.insert(0, f"run error: {run['error']}")
        if result.get("complete") is False:
            texts.insert(0, "partial result (the run did not complete)")
        if not result_of(run):
            texts.insert(0, "no result")
        texts = list(dict.fromkeys(str(t) for t in texts))
        items = "".join(f"<li>{_e(t)}</li>" for t in texts) or "<li>none</li>"
        out.append(f'<h3>{METHOD_NAMES.get(method_of(run) or "", "?")} {_e(_rid(run))}</h3>'
                   f'<ul class="warnings" data-run="{_e(_rid(run))}">{items}</ul>')
    return ("<h2>Warnings</h2>" + "".join(out)) if out else ""


def sample_report(sample: str, runs: list[dict[str, Any]], info: dict[str, Any] | None = None, *,
                  images: dict[str, bytes] | None = None) -> str:
    """The report of one sample: its runs (the daemon's ``run`` replies, or run-like dicts {run_id, method,
    sample, result}) and the results entered for it (exoacq.web.samples.SampleStore.get), with the TEM
    images (name -> bytes). One HTML page, printable, self-contained, without scripts."""
    runs = [r for r in runs or [] if isinstance(r, dict)]
    info = info or {}
    images = images or {}
    body = [_header(sample, runs, info), _runs_table(sample, runs), _size_table(_columns(runs)), _plots(runs),
            _concentrations(runs, info), _markers(runs, info), _tem(info, images), _checklist(runs, info),
            _settings(runs), _warnings(runs)]
    notes = str(info.get("notes") or "").strip()
    if notes:
        body.append(f'<h2>Notes</h2><p id="notes">{_e(notes)}</p>')
    if info.get("entered_by") or info.get("entered"):
        body.append(f'<p class="meta">Results measured elsewhere entered by {_e(info.get("entered_by") or "—")} on '
                    f"{_e(info.get('entered') or '—')}.</p>")
    body.append(f'<h2>References</h2><p class="note">{_e(CITATION)}</p><p class="note">ISO 22412:2017, Particle '
                "size analysis: dynamic light scattering (DLS).</p>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>EV report: {_e(sample)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>")
