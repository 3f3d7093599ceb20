// The live progress of one run, per method (used by the Acquire page's #progress-panel):
// NTA: the running size histogram and statistics; DLS: g2(tau) - 1 with the running cumulant
// fit and the count-rate trace; flow: the dot plot of the latest events and the event rate.
import {
  fmt, fmtSci, fmtSig, fmtInt, fmtDuration, isNum, chartDefaults, axis, COLOURS, histogramChart, shownRange, points, logAxis,
} from "/static/common.js";

const $ = (id) => document.getElementById(id);
const set = (id, text) => { const node = $(id); if (node) node.textContent = text; };

/** Points of two lists for a log x axis: only x > 0 and finite y. */
function logPoints(xs, ys, scaleY = 1) {
  const out = [];
  for (let i = 0; i < Math.min(xs.length, ys.length); i += 1) {
    if (isNum(xs[i]) && xs[i] > 0 && isNum(ys[i])) out.push({ x: xs[i], y: ys[i] * scaleY });
  }
  return out;
}

function lineChart(canvas, xTitle, yTitle, datasets, { xType = "linear", yType = "linear", legend = true } = {}) {
  chartDefaults();
  return new window.Chart(canvas, {
    type: "line",
    data: { datasets },
    options: {
      parsing: true,
      plugins: { legend: { display: legend } },
      scales: {
        x: xType === "logarithmic" ? logAxis(xTitle) : axis(xTitle, { type: xType }),
        y: axis(yTitle, { type: yType }),
      },
    },
  });
}

/** How far the run is, 0..1 (null when unknown). */
export function progressFraction(method, doc) {
  if (!doc) return null;
  if (method === "nta" && isNum(doc.captures) && isNum(doc.duration_s) && doc.duration_s > 0) {
    return Math.min(1, ((doc.capture - 1) * doc.duration_s + (doc.elapsed_s || 0)) / (doc.captures * doc.duration_s));
  }
  if (method === "dls" && isNum(doc.runs) && isNum(doc.duration_s) && doc.duration_s > 0 && doc.run > 0) {
    return Math.min(1, ((doc.run - 1) * doc.duration_s + (doc.elapsed_s || 0)) / (doc.runs * doc.duration_s));
  }
  if (method === "flow" && isNum(doc.duration_s) && doc.duration_s > 0) {
    return Math.min(1, (doc.live_time_s || 0) / doc.duration_s);
  }
  return null;
}

export class ProgressView {
  constructor() {
    this.charts = {};
  }

  /** Show `doc` (a <method>.progress document); hides the other methods' sections. */
  show(method, doc) {
    for (const m of ["nta", "dls", "flow"]) {
      const section = $(`progress-${m}`);
      if (section) section.hidden = !doc || m !== method;
    }
    const fraction = progressFraction(method, doc);
    $("progress-bar").style.width = fraction === null ? "0" : `${(100 * fraction).toFixed(1)}%`;
    if (!doc) return;
    if (method === "nta") this.nta(doc);
    else if (method === "dls") this.dls(doc);
    else if (method === "flow") this.flow(doc);
  }

  nta(doc) {
    if (!this.charts.nta) {
      this.charts.nta = histogramChart($("progress-histogram"), "diameter (nm)", "tracks", { label: "tracks so far", integer: true });
    }
    const h = doc.histogram;
    if (h && Array.isArray(h.counts)) {
      const [from, to] = shownRange(h.counts);
      this.charts.nta.data.datasets[0].data = points(h.bin_centres_nm, h.counts, from, to);
      this.charts.nta.update("none");
    }
    const s = doc.size_nm || {};
    const t = doc.tracks || {};
    const f = doc.frames || {};
    set("progress-mean-nm", fmt(s.mean, "nm"));
    set("progress-mode-nm", fmt(s.mode, "nm"));
    set("progress-sd-nm", fmt(s.sd, "nm"));
    set("progress-d-nm", isNum(s.d50) ? `${fmt(s.d10)} / ${fmt(s.d50)} / ${fmt(s.d90, "nm")}` : "—");
    set("progress-tracks", `${fmtInt(t.used)} / ${fmtInt(t.total)}`);
    set("progress-concentration", fmtSci(doc.concentration_per_ml, "/mL"));
    set("progress-ppf", fmt(doc.particles_per_frame, "", 1));
    set("progress-temperature", fmt(doc.temperature_c, "°C", 2));
    const frames = $("progress-frames");
    frames.textContent = `${fmtInt(f.acquired)} / ${fmtInt(f.processed)} / ${fmtInt(f.dropped)}`;
    Object.assign(frames.dataset, { acquired: f.acquired ?? "", processed: f.processed ?? "", dropped: f.dropped ?? "" });
    set("progress-capture", isNum(doc.capture)
      ? `${doc.capture} of ${doc.captures} · ${fmt(doc.elapsed_s, "s")} of ${fmt(doc.duration_s, "s")}` : "—");
  }

  dls(doc) {
    if (!this.charts.g2) {
      this.charts.g2 = lineChart($("progress-g2"), "lag time τ (s)", "g₂(τ) − 1", [
        { label: "measured", data: [], showLine: false, pointRadius: 2, borderColor: COLOURS.accent, backgroundColor: COLOURS.accent, order: 2 },
        { label: "cumulant fit", data: [], borderColor: COLOURS.second, borderWidth: 2, order: 1 },
      ], { xType: "logarithmic" });
      this.charts.rate = lineChart($("progress-count-rate"), "time in sub-run (s)", "count rate (kHz)", [
        { label: "count rate", data: [], borderColor: COLOURS.accent },
      ], { legend: false });
    }
    this.charts.g2.data.datasets[0].data = logPoints(doc.lag_s || [], doc.g2_minus_1 || []);
    const fit = doc.fit;
    this.charts.g2.data.datasets[1].data = fit ? logPoints(fit.lag_s || [], fit.g2_minus_1 || []) : [];
    this.charts.g2.update("none");
    const trace = doc.count_trace || {};
    this.charts.rate.data.datasets[0].data = points(trace.time_s || [], (trace.rate_hz || []).map((r) => (isNum(r) ? r / 1000 : null)));
    this.charts.rate.update("none");
    set("progress-fit", fit ? `running fit: Z-average ${fmt(fit.z_average_nm, "nm")}, PDI ${fmt(fit.pdi, "", 3)}` : "no fit yet");
    set("progress-subrun", isNum(doc.run) ? `${doc.run} of ${doc.runs} · ${fmt(doc.elapsed_s, "s")} of ${fmt(doc.duration_s, "s")}` : "—");
    set("progress-count-rate-value", isNum(doc.count_rate_hz) ? fmt(doc.count_rate_hz / 1000, "kHz", 1) : "—");
    set("progress-photons", fmtInt(doc.photons));
    set("progress-angle", fmt(doc.angle_deg, "°", 1));
  }

  flow(doc) {
    const dots = doc.dot_plot || {};
    const xName = dots.x_parameter || "x", yName = dots.y_parameter || "y";
    if (!this.charts.dots || this.charts.dotsNames !== `${xName}|${yName}`) {
      if (this.charts.dots) this.charts.dots.destroy();
      chartDefaults();
      this.charts.dotsNames = `${xName}|${yName}`;
      this.charts.dots = new window.Chart($("progress-dots"), {
        type: "scatter",
        data: { datasets: [{ label: "latest events", data: [], pointRadius: 1.2, backgroundColor: "rgba(31, 111, 139, 0.45)", borderWidth: 0 }] },
        options: {
          plugins: { legend: { display: false } },
          scales: {
            x: logAxis(`${xName} (counts)`, [1, 2, 5]),
            y: logAxis(`${yName} (counts; ≤ 1 on the axis)`, [1, 2, 5], { min: 1 }),
          },
        },
      });
    }
    if (!this.charts.eventRate) {
      this.charts.eventRate = lineChart($("progress-event-rate"), "live time (s)", "event rate (/s)", [
        { label: "event rate", data: [], borderColor: COLOURS.accent },
      ], { legend: false });
    }
    const xs = dots.x || [], ys = dots.y || [];
    const data = [];
    for (let i = 0; i < Math.min(xs.length, ys.length); i += 1) if (xs[i] > 0 && isNum(ys[i])) data.push({ x: xs[i], y: Math.max(1, ys[i]) });
    this.charts.dots.data.datasets[0].data = data;
    this.charts.dots.update("none");
    const trace = doc.rate_trace || {};
    this.charts.eventRate.data.datasets[0].data = points(trace.time_s || [], trace.rate_per_s || []);
    this.charts.eventRate.update("none");
    const trig = doc.trigger || {};
    set("progress-events", fmtInt(doc.events));
    set("progress-rate", fmtSig(doc.event_rate_per_s, "/s", 3));
    set("progress-mean-rate", fmtSig(doc.mean_event_rate_per_s, "/s", 3));
    set("progress-coincident", fmtInt(doc.coincident_events));
    set("progress-live-time", `${fmtDuration(doc.live_time_s)} of ${fmtDuration(doc.duration_s)}`);
    set("progress-trigger", isNum(trig.threshold_counts) ? `${trig.channel} ≥ ${fmt(trig.threshold_counts, "counts", 1)}` : "—");
  }
}
