// One run: its state (followed live until it ends), facts, result with plots, and files.
import {
  apiGet, EventStream, el, setChildren, stateBadge, showError, factList, table,
  fmt, fmtSci, fmtSig, fmtInt, fmtBytes, fmtTime, fmtDuration, fmtKeyed, isNum, FINAL_STATES,
  histogramChart, shownRange, COLOURS, sciTicks,
} from "/static/common.js";
import { renderDls, renderFlow } from "/static/run_methods.js";

const $ = (id) => document.getElementById(id);
const runId = $("run").dataset.runId;
const errorNode = $("run-error");
const charts = {};
let version = null;
let run = null;

// ---------------------------------------------------------------- facts, headline, files

function operatorText(op) {
  if (!op) return "—";
  const who = `${op.operator || "—"}${op.authenticated ? " (key)" : ""}`;
  return op.claimed_operator && op.claimed_operator !== op.operator ? `${who}, stated: ${op.claimed_operator}` : who;
}

function renderFacts(r) {
  const settings = r.settings || {};
  const result = r.result || {};
  const dilution = isNum(settings.dilution) ? settings.dilution : result.dilution;
  const took = r.started && r.finished ? (new Date(r.finished) - new Date(r.started)) / 1000 : null;
  setChildren($("run-facts"),
    factList([
      ["sample", r.sample || "—"],
      ["dilution", isNum(dilution) ? (dilution === 1 ? "1 (neat)" : `1 : ${fmtSig(dilution, "", 4)}`) : "—"],
      ["method", r.method],
      ["instrument", r.instrument || "—"],
      ["operator", operatorText(r.operator)],
      ["created", fmtTime(r.created)],
      ["started", fmtTime(r.started)],
      ["finished", fmtTime(r.finished)],
      took !== null ? ["took", fmtDuration(took)] : null,
      r.error ? ["error", el("span", { class: "error-inline" }, r.error)] : null,
      r.data_file ? ["run file", `${r.data_file.state}${r.data_file.last_checkpoint ? `, checkpoint ${fmtTime(r.data_file.last_checkpoint)}` : ""}`] : null,
      (r.approvals || []).length ? ["approved by", r.approvals.map((a) => `${a.operator} (${fmtTime(a.time)}, version ${a.version})`).join("; ")] : null,
    ]),
    el("details", {}, el("summary", {}, "acquisition settings"),
      factList(Object.entries(settings).map(([k, v]) => [k, fmtKeyed(k, v)]))),
    result.settings ? el("details", {}, el("summary", {}, "analysis and instrument settings (as recorded)"),
      el("pre", { class: "json" }, JSON.stringify(result.settings, null, 2))) : null);
}

function stat(label, value, id = null) {
  return el("div", { class: "stat" }, el("span", { class: "label" }, label), el("span", { class: "value", id }, value));
}

function renderHeadline(r) {
  const h = r.headline || {};
  const items = [];
  if ("size_mean_nm" in h) items.push(stat("mean size", fmt(h.size_mean_nm, "nm")));
  if ("size_mode_nm" in h) items.push(stat("mode", fmt(h.size_mode_nm, "nm")));
  if ("size_d50_nm" in h) items.push(stat("d50", fmt(h.size_d50_nm, "nm")));
  if ("z_average_nm" in h) items.push(stat("Z-average (intensity)", fmt(h.z_average_nm, "nm")));
  if ("pdi" in h) items.push(stat("PDI", fmt(h.pdi, "", 3)));
  if ("size_median_nm" in h) items.push(stat("median size", fmt(h.size_median_nm, "nm")));
  if ("concentration_per_ml" in h) items.push(stat("concentration", fmtSci(h.concentration_per_ml, "/mL")));
  for (const [name, fraction] of Object.entries(h.markers || {})) items.push(stat(`${name} positive`, isNum(fraction) ? `${(100 * fraction).toFixed(1)} %` : "—"));
  setChildren($("run-headline"), items.length ? items : [el("p", { class: "muted" }, r.result ? "—" : "No result yet.")]);
  const result = r.result || {};
  const warnings = [...(result.warnings || []), ...(result.degraded || []).map((d) => `degraded: ${d}`)];
  setChildren($("run-warnings"), warnings.length
    ? [el("h3", {}, "Warnings"), el("ul", { class: "warnings" }, warnings.map((w) => el("li", {}, w)))] : []);
}

function renderFiles(r) {
  const files = r.files || [];
  if (!files.length) {
    setChildren($("run-files"), el("p", { class: "muted" }, "No files."));
    return;
  }
  const href = (path) => `/api/runs/${encodeURIComponent(runId)}/files/${path.split("/").map(encodeURIComponent).join("/")}`;
  setChildren($("run-files"), table(["file", "size", "modified"], files.map((f) => [
    el("a", { href: href(f.path), download: f.path.split("/").pop() }, f.path),
    fmtBytes(f.bytes),
    fmtTime(f.modified),
  ])));
  for (const td of $("run-files").querySelectorAll("td:nth-child(2)")) td.classList.add("num");
}

// ---------------------------------------------------------------- NTA

/** The number fraction per bin and its standard-error band (null without one). */
function numberFraction(result) {
  const h = result.histogram || {};
  const se = result.standard_error && result.standard_error.histogram;
  if (Array.isArray(h.number_fraction)) {
    const band = se && se.quantity === "number_fraction" ? se.values : null;
    return { fraction: h.number_fraction, band, source: "number fraction" };
  }
  const fromConcentration = Array.isArray(h.concentration_per_ml);
  const base = fromConcentration ? h.concentration_per_ml : (h.counts || []).map((c) => c / Math.max(1, (result.captures || []).length || 1));
  const total = base.reduce((a, b) => a + (isNum(b) ? b : 0), 0);
  if (!(total > 0)) return { fraction: base.map(() => 0), band: null, source: "" };
  const quantity = fromConcentration ? "concentration_per_ml" : "counts";
  const band = se && se.quantity === quantity && Array.isArray(se.values) ? se.values.map((v) => (isNum(v) ? v / total : null)) : null;
  return { fraction: base.map((v) => (isNum(v) ? v / total : null)), band, source: fromConcentration ? "concentration per bin, normalised" : "tracks per bin, normalised" };
}

function bandDatasets() {
  return [
    { type: "line", label: "± 1 standard error", data: [], borderColor: "rgba(31, 111, 139, 0.5)", borderWidth: 1, fill: false, order: 1, backgroundColor: COLOURS.band },
    { type: "line", label: "", data: [], borderColor: "rgba(31, 111, 139, 0.5)", borderWidth: 1, fill: "-1", backgroundColor: COLOURS.band, order: 1 },
  ];
}

function setBand(chart, xs, values, band, from, to) {
  const upper = [], lower = [];
  for (let i = from; i < to; i += 1) {
    const ok = band && isNum(band[i]) && isNum(values[i]);
    upper.push({ x: xs[i], y: ok ? values[i] + band[i] : null });
    lower.push({ x: xs[i], y: ok ? Math.max(0, values[i] - band[i]) : null });
  }
  chart.data.datasets[1].data = band ? upper : [];
  chart.data.datasets[2].data = band ? lower : [];
  chart.data.datasets[1].hidden = chart.data.datasets[2].hidden = !band;
}

function renderNta(result) {
  const s = result.size_nm || {};
  const se = result.standard_error || {};
  const seSize = se.size_nm || {};
  const withSe = (value, err, unit, digits = 1) => (isNum(err) && isNum(value)
    ? `${fmt(value, "", digits)} ± ${fmt(err, unit, digits)}` : fmt(value, unit, digits));
  $("result-mean-nm").textContent = fmt(s.mean, "nm");
  $("result-concentration").textContent = fmtSci(result.concentration_per_ml, "/mL");
  $("result-concentration").title = isNum(se.concentration_per_ml) ? `± ${fmtSci(se.concentration_per_ml, "/mL")} (1 SE over captures)` : "";
  $("result-mode-nm").textContent = withSe(s.mode, seSize.mode, "nm");
  $("result-sd-nm").textContent = withSe(s.sd, seSize.sd, "nm");
  $("result-d10-nm").textContent = withSe(s.d10, seSize.d10, "nm");
  $("result-d50-nm").textContent = withSe(s.d50, seSize.d50, "nm");
  $("result-d90-nm").textContent = withSe(s.d90, seSize.d90, "nm");
  $("result-tracks").textContent = `${fmtInt((result.tracks || {}).used)} / ${fmtInt((result.tracks || {}).total)}`;

  const h = result.histogram || {};
  const xs = h.bin_centres_nm || [];
  const { fraction, band, source } = numberFraction(result);
  const [from, to] = shownRange(fraction);
  if (!charts.size) charts.size = histogramChart($("size-histogram"), "diameter (nm)", "number fraction per bin", { label: "number fraction", extra: bandDatasets() });
  charts.size.data.datasets[0].data = fraction.slice(from, to).map((y, i) => ({ x: xs[from + i], y }));
  setBand(charts.size, xs, fraction, band, from, to);
  charts.size.update("none");
  const nCaptures = (result.captures || []).length;
  $("size-histogram-caption").textContent = `${fmt(h.bin_width_nm, "nm", 0)} bins; ${source}` +
    (band ? `; band: ± 1 standard error per bin over ${nCaptures} captures` : (nCaptures > 1 ? "" : "; one capture: no standard error"));

  const conc = h.concentration_per_ml;
  $("concentration-block").hidden = !Array.isArray(conc);
  if (Array.isArray(conc)) {
    const [cf, ct] = shownRange(conc);
    if (!charts.conc) {
      charts.conc = histogramChart($("concentration-histogram"), "diameter (nm)", "particles/mL per bin", { label: "concentration", extra: bandDatasets() });
      charts.conc.options.scales.y.ticks = sciTicks;
    }
    charts.conc.data.datasets[0].data = conc.slice(cf, ct).map((y, i) => ({ x: xs[cf + i], y }));
    const seh = se.histogram;
    setBand(charts.conc, xs, conc, seh && seh.quantity === "concentration_per_ml" ? seh.values : null, cf, ct);
    charts.conc.update("none");
    $("concentration-caption").textContent = `particles per mL of the original sample (× dilution) in each ${fmt(h.bin_width_nm, "nm", 0)} bin`;
  }

  const f = result.frames || {};
  const dv = result.detection_volume || {};
  const th = result.threshold || {};
  const diff = result.diffusion_um2_s || {};
  const rows = [
    ["concentration", `${fmtSci(result.concentration_per_ml, "/mL")}${isNum(se.concentration_per_ml) ? ` ± ${fmtSci(se.concentration_per_ml, "/mL")} (1 SE)` : ""}`],
    isNum(result.concentration_per_ml_before_blank) ? ["before blank subtraction", fmtSci(result.concentration_per_ml_before_blank, "/mL")] : null,
    ["particles per frame", fmt(result.particles_per_frame, "", 2)],
    ["diffusion coefficient", `mean ${fmt(diff.mean, "µm²/s", 2)}, median ${fmt(diff.median, "µm²/s", 2)}`],
    ["temperature / viscosity", `${fmt(result.temperature_c, "°C", 2)} / ${fmt(result.viscosity_mpa_s, "mPa·s", 4)}`],
    ["frames", `${fmtInt(f.acquired)} acquired, ${fmtInt(f.processed)} processed, ${fmtInt(f.dropped)} dropped`],
    ["detection volume", `${fmtSig(dv.nl, "nL", 4)} (${dv.source || "—"})`],
    ["threshold", `minmass ${fmtSig(th.minmass, "counts", 4)} (${th.rule || "—"})`],
    result.localisation_nm !== undefined ? ["localisation error", fmt(result.localisation_nm, "nm")] : null,
    result.size_nm_detected ? ["as detected (before depth correction)", `mean ${fmt(result.size_nm_detected.mean, "nm")}, d50 ${fmt(result.size_nm_detected.d50, "nm")}`] : null,
    result.blank ? ["blank", result.blank.error ? `${result.blank.run_id}: ${result.blank.error}` : `${result.blank.run_id}, ${fmtSci(result.blank.concentration_per_ml, "/mL")}`] : null,
    result.suitability ? ["suitability", result.suitability.suitable === false ? `not suitable: ${(result.suitability.flags || []).join("; ")}` : (result.suitability.suitable ? "suitable" : (result.suitability.flags || []).join("; ") || "—")] : null,
  ];
  const captures = result.captures || [];
  setChildren($("nta-details"),
    el("h3", {}, "Details"), factList(rows),
    captures.length > 1 ? [el("h3", {}, "Captures"), table(
      ["capture", "mean", "mode", "d50", "concentration", "tracks used", "particles/frame"],
      captures.map((c) => [String(c.capture), fmt((c.size_nm || {}).mean, "nm"), fmt((c.size_nm || {}).mode, "nm"),
        fmt((c.size_nm || {}).d50, "nm"), fmtSci(c.concentration_per_ml, "/mL"), fmtInt((c.tracks || {}).used), fmt(c.particles_per_frame, "", 2)]))] : null);
}

// ---------------------------------------------------------------- load and follow

function showState(state, step, error) {
  const node = $("run-state");
  node.textContent = state || "—";
  node.className = `state state-${state}`;
  $("run-step").textContent = !FINAL_STATES.has(state) && step ? `step ${step.index} of ${step.of}: ${step.step}${step.detail ? ` (${step.detail})` : ""}` : "";
  if (error) showError(errorNode, error);
}

function renderVersions(r) {
  const versions = r.versions || [];
  $("run-version-choice").hidden = versions.length < 2;
  if (versions.length < 2) return;
  const select = $("run-version");
  setChildren(select, versions.map((v) => el("option", { value: v.version, disabled: v.state !== "done" },
    `${v.version}: ${v.reason || ""}${v.current ? " (current)" : ""}${v.state !== "done" ? ` (${v.state})` : ""}`)));
  select.value = String(version !== null ? version : (r.current_version || ""));
}

async function load() {
  try {
    const query = version !== null ? `?version=${encodeURIComponent(version)}` : "";
    run = await apiGet(`/api/runs/${encodeURIComponent(runId)}${query}`);
  } catch (err) {
    showError(errorNode, err);
    showState("unknown");
    if (err.status === 404) $("run-body").hidden = true;  // nothing to show, nothing to follow
    return;
  }
  showError(errorNode, null);
  showState(run.state, null, run.error);
  renderFacts(run);
  renderHeadline(run);
  renderFiles(run);
  renderVersions(run);
  const result = run.result;
  $("run-no-result").hidden = Boolean(result);
  if (!result) $("run-no-result").textContent = FINAL_STATES.has(run.state) ? "This run has no result." : "No result yet: the run is not finished.";
  for (const m of ["nta", "dls", "flow"]) $(`result-${m}`).hidden = !result || run.method !== m;
  if (!result) return;
  try {
    if (run.method === "nta") renderNta(result);
    else if (run.method === "dls") await renderDls($("result-dls"), run, charts);
    else if (run.method === "flow") await renderFlow($("result-flow"), run, charts);
    else {
      const other = $("result-dls");
      other.hidden = false;
      setChildren(other, el("pre", { class: "json" }, JSON.stringify(result, null, 2)));
    }
  } catch (err) {
    showError(errorNode, `cannot show the result: ${err.message}`);
    console.error(err);
  }
}

$("run-version").addEventListener("change", (event) => {
  version = Number(event.target.value);
  load();
});

await load();
if ((!run && !$("run-body").hidden) || (run && !FINAL_STATES.has(run.state))) {
  const events = new EventStream();
  const onState = (doc) => {
    if (!doc || doc.run_id !== runId) return;
    showState(doc.state, doc.step, doc.error);
    if (FINAL_STATES.has(doc.state)) {
      setTimeout(load, 300);
      events.close();
    }
  };
  events.on("snapshot", (snap) => onState(((snap || {}).states || {})[runId]));
  events.on("run.state", onState);
  // a finished run whose final state this page missed (e.g. while reconnecting)
  const poll = setInterval(async () => {
    if (run && FINAL_STATES.has(run.state)) { clearInterval(poll); return; }
    if (!events.connected) await load();
  }, 5000);
}
