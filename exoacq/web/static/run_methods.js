// The result sections of a DLS and a flow run on the run page (NTA is in run.js).
// DLS: g2(tau) - 1 of the run (its subruns.json) with the 2nd-order cumulant fit and residuals,
// the intensity / volume / number distributions and their peaks. Flow: the size histogram,
// marker-positive fractions, a dot plot of the run's events.fcs with each marker's threshold,
// and the event, control and swarm summaries.
import {
  el, setChildren, factList, table, fmt, fmtSci, fmtSig, fmtInt, fmtPct, isNum, chartDefaults, axis, COLOURS, logAxis,
} from "/static/common.js";

/** Dot plots: heights at or below this (noise, negative after the baseline) are drawn on the axis. */
const DOT_FLOOR = 1;
import { parseFcs } from "/static/fcs.js";

function stat(label, value, id = null) {
  return el("div", { class: "stat" }, el("span", { class: "label" }, label), el("span", { class: "value", id }, value));
}

function chartBox(id, cls = "chart") {
  return el("div", { class: cls }, el("canvas", { id }));
}

function fileUrl(run, path) {
  return `/api/runs/${encodeURIComponent(run.run_id)}/files/${path.split("/").map(encodeURIComponent).join("/")}`;
}

/** The path of the run's file named `name` (run.files from the API), or null. */
function findFile(run, name) {
  const file = (run.files || []).find((f) => f.path === name || f.path.endsWith(`/${name}`));
  return file ? file.path : null;
}

function newChart(canvas, config) {
  chartDefaults();
  return new window.Chart(canvas, config);
}

// ---------------------------------------------------------------- DLS

/** g2 - 1 of the 2nd-order cumulant fit (ln(g2 - 1) = ln B - 2 Gamma tau + mu2 tau^2) over its fit range. */
function cumulantCurve(fit, lags) {
  if (!fit || !isNum(fit.intercept) || !isNum(fit.gamma_per_s)) return [];
  const mu2 = isNum(fit.mu2_per_s2) ? fit.mu2_per_s2 : 0;
  return lags.filter((t) => t >= fit.fit_start_lag_s && t <= fit.fit_end_lag_s)
    .map((t) => ({ x: t, y: fit.intercept * Math.exp(-2 * fit.gamma_per_s * t + mu2 * t * t) }));
}

/** The run's measured g2 - 1: the mean of the sub-runs the analysis used (subruns.json). */
async function measuredCurve(run, measurement) {
  const path = findFile(run, "subruns.json");
  if (!path) return null;
  const response = await fetch(fileUrl(run, path));
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  const data = await response.json();
  const used = ((measurement.quality || {}).subruns || {}).used;
  const curves = (Array.isArray(used) && used.length ? used.map((i) => data.g2_minus_1[i]) : data.g2_minus_1).filter(Boolean);
  if (!curves.length) return null;
  const mean = data.lag_s.map((_, j) => curves.reduce((a, c) => a + c[j], 0) / curves.length);
  return { lag_s: data.lag_s, g2_minus_1: mean, subruns: curves.length };
}

export async function renderDls(container, run, charts) {
  const result = run.result;
  const blocks = [];
  const pending = [];
  (result.measurements || []).forEach((m, i) => {
    const peaks = m.peaks || {};
    const peakRows = [];
    for (const weighting of ["intensity", "volume", "number"]) {
      for (const p of peaks[weighting] || []) peakRows.push([weighting, fmt(p.mean_nm, "nm"), fmt(p.sd_nm, "nm"), fmtPct(p.area)]);
    }
    const cumulantRows = Object.values(m.cumulants || {}).map((c) => [String(c.order), fmt(c.diameter_nm, "nm"),
      fmt(c.pdi, "", 3), fmtSig(c.gamma_per_s, "/s", 4), fmtSig(c.residual_rms, "", 3), fmtInt(c.points)]);
    blocks.push(el("div", { class: "dls-measurement" },
      el("h3", {}, `${fmt(m.angle_deg, "°", 1)} · ${fmt(m.wavelength_nm, "nm", 0)}${m.channel ? ` · ${m.channel}` : ""}`),
      el("div", { class: "stats" },
        stat("Z-average (intensity)", fmt(m.z_average_nm, "nm"), i === 0 ? "result-z-average-nm" : null),
        stat("PDI (ISO 22412)", fmt(m.pdi, "", 3), i === 0 ? "result-pdi" : null),
        stat("PDI corrected", fmt(m.pdi_corrected, "", 3)),
        stat("intercept", fmt(m.intercept, "", 3)),
        stat("count rate", isNum(m.count_rate_hz) ? fmt(m.count_rate_hz / 1000, "kHz", 1) : "—"),
        stat("diffusion coefficient", fmt(m.diffusion_um2_s, "µm²/s", 3)),
        stat("temperature", fmt(m.temperature_c, "°C", 2)),
        stat("viscosity", fmt(m.viscosity_mpa_s, "mPa·s", 4))),
      el("p", {}, el("span", { class: "muted" }, "quality: "), (m.quality || {}).verdict || "—"),
      el("div", { class: "grid grid-2" },
        el("div", {}, el("h4", {}, "Correlation g₂(τ) − 1"), chartBox(`dls-g2-${i}`, "chart tall"),
          el("p", { class: "chart-caption", id: `dls-g2-caption-${i}` }, "")),
        el("div", {}, el("h4", {}, "Fit residuals"), chartBox(`dls-residuals-${i}`, "chart short"),
          el("h4", {}, "Size distributions"), chartBox(`dls-distribution-${i}`, "chart"),
          el("p", { class: "chart-caption" }, "regularised inversion by intensity; volume and number through Mie theory " +
            `(particle refractive index ${fmtSig(m.particle_refractive_index, "", 3)}); each normalised to its peak`))),
      peakRows.length ? [el("h4", {}, "Peaks"), table(["weighting", "mean", "sd", "area"], peakRows)] : null,
      cumulantRows.length ? el("details", {}, el("summary", {}, "cumulant fits"),
        table(["order", "diameter", "PDI", "Γ", "residual rms", "channels"], cumulantRows)) : null,
      (m.warnings || []).length ? el("ul", { class: "warnings" }, m.warnings.map((w) => el("li", {}, w))) : null));
    pending.push(m);
  });
  const ex = result.extrapolated;
  if (ex) blocks.push(factList([["extrapolated to q → 0", `${fmt(ex.diameter_nm, "nm")} (D ${fmt(ex.diffusion_um2_s, "µm²/s", 3)})`]]));
  setChildren(container, blocks);

  for (const [i, m] of pending.entries()) {
    const dist = m.distribution;
    if (dist && Array.isArray(dist.diameter_nm)) {
      const series = (key, colour) => {
        const values = dist[key] || [];
        const peak = Math.max(0, ...values.filter(isNum));
        return { label: key, data: dist.diameter_nm.map((d, j) => ({ x: d, y: isNum(values[j]) && peak > 0 ? values[j] / peak : null })),
          borderColor: colour, backgroundColor: colour, borderWidth: 1.5 };
      };
      const datasets = [series("intensity", COLOURS.accent), series("volume", COLOURS.third), series("number", COLOURS.second)];
      // the diameters where any distribution is above 0.5 % of its peak, widened by 2x each side
      const held = datasets.flatMap((d) => d.data.filter((p) => isNum(p.y) && p.y > 0.005).map((p) => p.x));
      const range = held.length ? { min: Math.max(0.5, Math.min(...held) / 2), max: Math.max(...held) * 2 } : {};
      charts[`dist${i}`] = newChart(document.getElementById(`dls-distribution-${i}`), {
        type: "line",
        data: { datasets },
        options: { scales: { x: logAxis("hydrodynamic diameter (nm)", [1, 2, 5], range), y: axis("relative amount (peak = 1)", { min: 0 }) } },
      });
    }
    const caption = document.getElementById(`dls-g2-caption-${i}`);
    let curve = null;
    try {
      curve = (result.measurements.length === 1) ? await measuredCurve(run, m) : null;
    } catch (err) {
      caption.textContent = `the measured curve could not be read: ${err.message}`;
    }
    const fit = (m.cumulants || {})["2"];
    const lags = curve ? curve.lag_s : [];
    const measured = curve ? curve.lag_s.map((t, j) => ({ x: t, y: curve.g2_minus_1[j] })).filter((p) => p.x > 0 && isNum(p.y)) : [];
    const model = cumulantCurve(fit, lags);
    charts[`g2${i}`] = newChart(document.getElementById(`dls-g2-${i}`), {
      type: "line",
      data: { datasets: [
        { label: "measured", data: measured, showLine: false, pointRadius: 1.8, borderColor: COLOURS.accent, backgroundColor: COLOURS.accent, order: 2 },
        { label: "2nd-order cumulant fit", data: model, borderColor: COLOURS.second, borderWidth: 2.5, order: 1 },
      ] },
      options: { scales: { x: logAxis("lag time τ (s)"), y: axis("g₂(τ) − 1") } },
    });
    const residuals = model.map((p) => {
      const j = lags.indexOf(p.x);
      return { x: p.x, y: j >= 0 && isNum(curve.g2_minus_1[j]) ? curve.g2_minus_1[j] - p.y : null };
    });
    charts[`res${i}`] = newChart(document.getElementById(`dls-residuals-${i}`), {
      type: "line",
      data: { datasets: [{ label: "measured − fit", data: residuals, showLine: false, pointRadius: 1.8, borderColor: COLOURS.grey, backgroundColor: COLOURS.grey }] },
      options: { plugins: { legend: { display: false } }, scales: { x: logAxis("lag time τ (s)"), y: axis("residual of g₂ − 1") } },
    });
    if (!caption.textContent) {
      caption.textContent = curve
        ? `mean of the ${curve.subruns} sub-run${curve.subruns === 1 ? "" : "s"} used; fit from ${fmtSig(fit && fit.fit_start_lag_s, "s")} to ${fmtSig(fit && fit.fit_end_lag_s, "s")}`
        : "the measured curve is not among this run's files";
    }
  }
}

// ---------------------------------------------------------------- flow

function dotPlot(canvas, fcs, marker, spec) {
  const x = fcs.columns["SSC-H"] || fcs.columns[fcs.names.find((n) => n.endsWith("-H"))];
  const y = fcs.columns[spec.parameter];
  if (!x || !y) return null;
  const step = Math.max(1, Math.ceil(x.length / 20000));
  const data = [];
  let xmin = Infinity, xmax = -Infinity;
  for (let i = 0; i < x.length; i += step) {
    if (!(x[i] > 0)) continue;
    data.push({ x: x[i], y: Math.max(DOT_FLOOR, y[i]) });
    xmin = Math.min(xmin, x[i]);
    xmax = Math.max(xmax, x[i]);
  }
  const xName = fcs.columns["SSC-H"] ? "SSC-H" : "scatter";
  return newChart(canvas, {
    type: "scatter",
    data: { datasets: [
      { label: `events (${step > 1 ? `every ${step}th of ` : ""}${fmtInt(x.length)})`, data, pointRadius: 1, backgroundColor: "rgba(31, 111, 139, 0.35)", borderWidth: 0 },
      { type: "line", label: `${marker} threshold ${fmtSig(spec.threshold_au, "a.u.", 4)}`, data: [{ x: xmin, y: spec.threshold_au }, { x: xmax, y: spec.threshold_au }],
        borderColor: COLOURS.second, borderWidth: 1.5, borderDash: [5, 3] },
    ] },
    options: { scales: {
      x: logAxis(`${xName} (counts above baseline)`, [1, 2, 5]),
      y: logAxis(`${spec.parameter} (counts above baseline)`, [1, 2, 5], { min: DOT_FLOOR }),
    } },
  });
}

export async function renderFlow(container, run, charts) {
  const r = run.result;
  const ev = r.events || {};
  const s = r.size_nm || {};
  const swarm = r.swarm || {};
  const thresholds = r.marker_thresholds || {};
  const markers = Object.entries(r.markers || {});
  setChildren(container,
    el("div", { class: "stats" },
      stat("concentration", fmtSci(r.concentration_per_ml, "/mL"), "result-flow-concentration"),
      stat("± (Poisson, 1 SD)", fmtSci(r.concentration_uncertainty_per_ml, "/mL")),
      stat("events counted", fmtInt(ev.counted)),
      stat("median size", fmt(s.median, "nm")),
      stat("mean size", fmt(s.mean, "nm")),
      stat("d10 / d90", isNum(s.d10) ? `${fmt(s.d10)} / ${fmt(s.d90, "nm")}` : "—"),
      stat("detection limit", fmt(r.detection_limit_nm, "nm")),
      ...markers.map(([name, fraction]) => stat(`${name} positive`, fmtPct(fraction)))),
    el("div", { class: "grid grid-2" },
      el("div", {}, el("h3", {}, "Size distribution (number, counted events)"), chartBox("flow-size-histogram")),
      el("div", {}, el("h3", {}, "Marker-positive fractions"), chartBox("flow-markers", "chart short"),
        table(["marker", "parameter", "threshold", "MESF", "set by", "control above"], Object.entries(thresholds).map(([name, t]) => [
          name, t.parameter || "—", fmtSig(t.threshold_au, "a.u.", 4), fmtSig(t.threshold_mesf, "MESF", 4), t.method || "—", fmtPct(t.control_fraction_above)])))),
    el("div", { id: "flow-dots-block" }, el("h3", {}, "Events and marker gates"),
      el("div", { class: "tabs", id: "flow-dots-tabs" }), chartBox("flow-dots", "chart tall"),
      el("p", { class: "chart-caption", id: "flow-dots-caption" }, "reading the run's events.fcs…")),
    el("h3", {}, "Details"),
    factList([
      ["events", `${fmtInt(ev.total)} total, ${fmtInt(ev.gated)} in the final gate, ${fmtInt(ev.counted)} counted`],
      ["volume analysed", `${fmtSig(r.volume_ul, "µL", 4)} (flow ${fmtSig(r.flow_rate_ul_min, "µL/min", 3)}, live time ${fmt(r.duration_s, "s")})`],
      ["trigger threshold", fmtSig(r.trigger_threshold_au, "a.u.", 4)],
      ["swarm", swarm.flag ? `flagged: ${(swarm.reasons || []).join("; ")}` : `no (event rate ${fmtSig(swarm.event_rate_per_s, "/s", 3)}, coincident ${fmtPct(swarm.coincident_fraction)})`],
      ["control", r.control || "no: the sample"],
      ["controls attached", Object.keys(r.controls || {}).length ? Object.entries(r.controls).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join("; ") : "none"],
      r.calibration ? ["calibration", `${r.calibration.source || "—"}${r.calibration.expired ? " (EXPIRED)" : ""}${r.calibration.expires ? `, expires ${r.calibration.expires}` : ""}`] : null,
      r.size_model ? ["size model", `${r.size_model.particle || ""} on ${r.size_model.parameter || ""}`] : null,
    ]));

  const hist = r.size_histogram;
  if (hist && Array.isArray(hist.edges_nm)) {
    const data = hist.counts.map((c, i) => ({ x: hist.edges_nm[i], y: c }));
    data.push({ x: hist.edges_nm[hist.edges_nm.length - 1], y: hist.counts[hist.counts.length - 1] });
    charts.flowSize = newChart(document.getElementById("flow-size-histogram"), {
      type: "line",
      data: { datasets: [{ label: "events", data, stepped: "after", fill: "origin", backgroundColor: COLOURS.accentFill, borderColor: COLOURS.accent, borderWidth: 1 }] },
      options: { plugins: { legend: { display: false } }, scales: { x: logAxis("diameter (nm)", [1, 2, 5]), y: axis("events per bin", { min: 0 }) } },
    });
  }
  charts.flowMarkers = newChart(document.getElementById("flow-markers"), {
    type: "bar",
    data: { labels: markers.map(([n]) => n), datasets: [{ label: "positive", data: markers.map(([, f]) => (isNum(f) ? 100 * f : null)), backgroundColor: COLOURS.accentFill }] },
    options: { indexAxis: "y", plugins: { legend: { display: false } }, scales: { x: axis("positive events (%)", { min: 0, max: 100 }) } },
  });

  const caption = document.getElementById("flow-dots-caption");
  const path = findFile(run, "events.fcs");
  if (!path || !Object.keys(thresholds).length) {
    caption.textContent = path ? "no marker thresholds in this result" : "the run has no events.fcs";
    document.getElementById("flow-dots").parentElement.hidden = true;
    return;
  }
  try {
    const response = await fetch(fileUrl(run, path));
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const fcs = parseFcs(await response.arrayBuffer());
    const show = (name) => {
      if (charts.flowDots) charts.flowDots.destroy();
      charts.flowDots = dotPlot(document.getElementById("flow-dots"), fcs, name, thresholds[name]);
      for (const b of document.querySelectorAll("#flow-dots-tabs button")) b.classList.toggle("active", b.dataset.marker === name);
      caption.textContent = `${fmtInt(fcs.events)} events of ${path}; dashed: the ${name} threshold on ${thresholds[name].parameter} ` +
        `(${thresholds[name].method || ""}); above it: ${fmtPct(r.markers[name])} of the counted events; ` +
        `heights at or below ${DOT_FLOOR} count are drawn on the axis`;
    };
    setChildren(document.getElementById("flow-dots-tabs"), Object.keys(thresholds).map((name) =>
      el("button", { type: "button", class: "small", dataset: { marker: name }, onclick: () => show(name) }, name)));
    show(Object.keys(thresholds)[0]);
  } catch (err) {
    caption.textContent = `${path} could not be read: ${err.message}`;
  }
}
