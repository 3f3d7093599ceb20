// exoacq console: helpers shared by every page (ES2020 module, no build step).
//
// - api(): fetch the console's JSON API; a failure throws ApiError carrying the daemon's own
//   message (the API answers {"ok": false, "error": {"code", "message"}}).
// - EventStream: /ws/events with reconnection; handlers per topic.
// - fmt*(): numbers with their units; el(): a small DOM builder.

/** An error reply of the API: `message` is the daemon's (or the server's) message, verbatim. */
export class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

/** Call the JSON API. `body` (an object) is sent as JSON; FormData as multipart. Returns `result`. */
export async function api(path, { method = "GET", body = undefined } = {}) {
  const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body instanceof FormData) {
    options.body = body;
  } else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new ApiError(`the console server does not answer (${err.message})`, "no_server", 0);
  }
  let reply = null;
  try {
    reply = await response.json();
  } catch (err) {
    throw new ApiError(`${path}: HTTP ${response.status} ${response.statusText}, not JSON`, "bad_reply", response.status);
  }
  if (response.status === 401 && !location.pathname.startsWith("/login")) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
  }
  if (!reply || reply.ok !== true) {
    const error = (reply && reply.error) || {};
    throw new ApiError(error.message || `HTTP ${response.status}`, error.code || "error", response.status);
  }
  return reply.result;
}

export const apiGet = (path) => api(path);
export const apiPost = (path, body) => api(path, { method: "POST", body });
export const apiPut = (path, body) => api(path, { method: "PUT", body });

/** Show an error (or clear it with null) in `node`, which is hidden while empty. */
export function showError(node, err) {
  if (!node) return;
  const message = err == null ? "" : (err instanceof Error ? err.message : String(err));
  node.textContent = message;
  node.hidden = message === "";
}

/** A WebSocket URL for `path` on this server (ws: or wss:). */
export function wsUrl(path) {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
}

/**
 * /ws/events, reconnecting with backoff (0.5 s doubling to 10 s).
 * on(topic, fn): fn(doc, topic) for documents whose topic equals `topic`, or starts with it when
 * it ends with "." ("nta." gives every NTA document); "snapshot" is the first message of each
 * connection; "*" every message. onStatus(fn): fn(connected: boolean).
 */
export class EventStream {
  constructor(path = "/ws/events") {
    this.path = path;
    this.handlers = [];
    this.statusHandlers = [];
    this.delay_ms = 500;
    this.connected = false;
    this.closed = false;
    this.connect();
  }

  on(topic, fn) {
    this.handlers.push([topic, fn]);
    return this;
  }

  onStatus(fn) {
    this.statusHandlers.push(fn);
    fn(this.connected);
    return this;
  }

  connect() {
    if (this.closed) return;
    const socket = new WebSocket(wsUrl(this.path));
    this.socket = socket;
    socket.onopen = () => {
      this.delay_ms = 500;
      this.setConnected(true);
    };
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      this.dispatch(message.topic, message.doc);
    };
    socket.onclose = () => {
      this.setConnected(false);
      if (this.closed) return;
      setTimeout(() => this.connect(), this.delay_ms);
      this.delay_ms = Math.min(this.delay_ms * 2, 10000);
    };
    socket.onerror = () => socket.close();
  }

  dispatch(topic, doc) {
    for (const [wanted, fn] of this.handlers) {
      const match = wanted === "*" || wanted === topic || (wanted.endsWith(".") && String(topic).startsWith(wanted));
      if (!match) continue;
      try {
        fn(doc, topic);
      } catch (err) {
        console.warn(`handler for ${topic}:`, err);
      }
    }
  }

  setConnected(connected) {
    this.connected = connected;
    for (const fn of this.statusHandlers) fn(connected);
    const dot = document.getElementById("events-status");
    if (dot) {
      dot.hidden = false;
      dot.classList.toggle("connected", connected);
      dot.title = connected ? "receiving the daemon's documents" : "not connected to the daemon's documents (reconnecting)";
    }
  }

  close() {
    this.closed = true;
    if (this.socket) this.socket.close();
  }
}

// ---------------------------------------------------------------- numbers and units

/** A finite number? (null, undefined, NaN and strings are not.) */
export const isNum = (v) => typeof v === "number" && Number.isFinite(v);

/** `value` with `digits` decimals and its unit ("102.2 nm"); "—" when there is no value. */
export function fmt(value, unit = "", digits = 1) {
  if (!isNum(value)) return "—";
  const text = value.toFixed(digits);
  if (unit === "°") return `${text}°`;
  return unit ? `${text} ${unit}` : text;
}

/** Three significant digits in exponent form, two-digit exponent: "1.23e+09 /mL". */
export function fmtSci(value, unit = "", digits = 3) {
  if (!isNum(value)) return "—";
  const [mantissa, exponent] = value.toExponential(digits - 1).split("e");
  const sign = exponent.startsWith("-") ? "-" : "+";
  const text = `${mantissa}e${sign}${exponent.replace(/^[+-]/, "").padStart(2, "0")}`;
  return unit ? `${text} ${unit}` : text;
}

/** `digits` significant digits, plain notation for moderate values ("0.108", "1790"). */
export function fmtSig(value, unit = "", digits = 3) {
  if (!isNum(value)) return "—";
  const magnitude = Math.abs(value);
  const text = magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e6)
    ? fmtSci(value, "", digits) : String(Number(value.toPrecision(digits)));
  return unit ? `${text} ${unit}` : text;
}

/** An integer with thin thousands separators ("12 345"). */
export function fmtInt(value, unit = "") {
  if (!isNum(value)) return "—";
  const text = Math.round(value).toString().replace(/\B(?=(\d{3})+(?!\d))/g, "\u2009");
  return unit ? `${text} ${unit}` : text;
}

/** A fraction 0..1 as a percentage ("42.9 %"). */
export const fmtPct = (value, digits = 1) => (isNum(value) ? `${(100 * value).toFixed(digits)} %` : "—");

/** Bytes as B, kB, MB, GB (decimal units). */
export function fmtBytes(value) {
  if (!isNum(value)) return "—";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let v = value, i = 0;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** A UTC ISO time as local "YYYY-MM-DD HH:MM:SS"; "—" when missing. */
export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** Seconds as "42.0 s", "3 min 05 s", "1 h 02 min". */
export function fmtDuration(seconds) {
  if (!isNum(seconds)) return "—";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
  if (m < 60) return `${m} min ${String(s).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

// Units read from a key's suffix (the protocol puts the unit in every key name), longest first.
const UNIT_SUFFIXES = [
  ["_adu_per_e", "ADU/e\u207b"], ["_e_per_px", "e\u207b/px"], ["_ul_min", "\u00b5L/min"], ["_per_ml", "/mL"],
  ["_um2_s", "\u00b5m\u00b2/s"], ["_mpa_s", "mPa\u00b7s"], ["_per_s", "/s"], ["_per_nm", "/nm"],
  ["_ms", "ms"], ["_mw", "mW"], ["_nm", "nm"], ["_um", "\u00b5m"], ["_mm", "mm"], ["_ul", "\u00b5L"], ["_nl", "nL"],
  ["_hz", "Hz"], ["_khz", "kHz"], ["_c", "\u00b0C"], ["_k", "K"], ["_a", "A"], ["_v", "V"], ["_s", "s"],
  ["_px", "px"], ["_deg", "\u00b0"], ["_pct", "%"], ["_e", "e\u207b"], ["_counts", "counts"], ["_h", "h"],
];

/** The unit a key name states ("exposure_ms" -> "ms"), or "". */
export function unitOfKey(key) {
  const k = String(key).toLowerCase();
  for (const [suffix, unit] of UNIT_SUFFIXES) if (k.endsWith(suffix)) return unit;
  return "";
}

/** A key without its unit suffix, as words ("rate_ul_min" -> "rate"). */
export function labelOfKey(key) {
  const k = String(key);
  for (const [suffix] of UNIT_SUFFIXES) {
    if (k.toLowerCase().endsWith(suffix) && k.length > suffix.length) return k.slice(0, -suffix.length).replace(/_/g, " ");
  }
  return k.replace(/_/g, " ");
}

/** A value of a settings object shown with the unit its key names. */
export function fmtKeyed(key, value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") return fmtSig(value, unitOfKey(key), 4);
  if (Array.isArray(value)) return value.map((v) => (typeof v === "number" ? fmtSig(v, "", 4) : String(v))).join(" × ") +
    (unitOfKey(key) ? " " + unitOfKey(key) : "");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// ---------------------------------------------------------------- DOM

/** el("a", {href: "/x", class: "y"}, "text", child, ...): a new element. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace the children of `node`. */
export function setChildren(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

/** A run state as a small coloured badge. */
export function stateBadge(state) {
  return el("span", { class: `state state-${state || "unknown"}` }, state || "—");
}

/** A definition list from [[label, value], ...] (value: text or a node). */
export function factList(rows, cls = "facts") {
  return el("dl", { class: cls }, rows.filter(Boolean).flatMap(([label, value]) => [el("dt", {}, label), el("dd", {}, value)]));
}

/** A table with a header row and rows of cells (text or nodes). */
export function table(headers, rows, cls = "data") {
  return el("table", { class: cls },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))));
}

export const FINAL_STATES = new Set(["done", "failed", "aborted", "interrupted"]);

/** The headline numbers of a run (the API's `headline`) as short text with units. */
/** The cells every run table starts with: run (a link), sample, method, instrument, state (and its error). */
export function runCells(r) {
  return [
    el("td", {}, runLink(r.run_id)),
    el("td", {}, r.sample || "—"),
    el("td", {}, r.method),
    el("td", {}, r.instrument || "—"),
    el("td", {}, stateBadge(r.state), r.error ? el("div", { class: "small muted" }, r.error) : null),
  ];
}

export function headlineText(headline) {
  if (!headline || Object.keys(headline).length === 0) return "—";
  const parts = [];
  if (isNum(headline.size_mean_nm)) parts.push(`mean ${fmt(headline.size_mean_nm, "nm")}`);
  if (isNum(headline.size_mode_nm)) parts.push(`mode ${fmt(headline.size_mode_nm, "nm")}`);
  if (isNum(headline.z_average_nm)) parts.push(`Z-avg ${fmt(headline.z_average_nm, "nm")}`);
  if (isNum(headline.pdi)) parts.push(`PDI ${fmt(headline.pdi, "", 3)}`);
  if (isNum(headline.size_median_nm)) parts.push(`median ${fmt(headline.size_median_nm, "nm")}`);
  if ("concentration_per_ml" in headline) parts.push(fmtSci(headline.concentration_per_ml, "/mL"));
  if (headline.markers && typeof headline.markers === "object") {
    for (const [name, fraction] of Object.entries(headline.markers)) parts.push(`${name}+ ${fmtPct(fraction)}`);
  }
  if (isNum(headline.warnings) && headline.warnings > 0) parts.push(`${headline.warnings} warning${headline.warnings === 1 ? "" : "s"}`);
  return parts.length ? parts.join(" · ") : "—";
}

/** A link to a run's page. */
export const runLink = (runId) => el("a", { href: `/runs/${encodeURIComponent(runId)}`, class: "run-id" }, runId);

// ---------------------------------------------------------------- status and navigation

let statusPromise = null;

/** /api/status, fetched once per page load unless `fresh`. */
export function getStatus(fresh = false) {
  if (fresh || !statusPromise) {
    statusPromise = apiGet("/api/status");
    statusPromise.catch(() => { statusPromise = null; });
  }
  return statusPromise;
}

/** Instruments with a camera (they have a live view). */
export function cameraInstruments(status) {
  return Object.entries(status.instruments || {})
    .filter(([, inst]) => inst.devices && inst.devices.camera)
    .map(([name]) => name);
}

/** Fill the nav's Live menu with the instruments that have a camera. */
async function initNav() {
  const menu = document.getElementById("nav-live-menu");
  if (!menu) return;
  try {
    const status = await getStatus();
    const names = cameraInstruments(status);
    const link = document.getElementById("nav-live");
    if (names.length && link && link.getAttribute("href") === "#") link.setAttribute("href", `/live/${encodeURIComponent(names[0])}`);
    setChildren(menu, names.map((n) => el("li", {}, el("a", { href: `/live/${encodeURIComponent(n)}` }, n))));
    const daemon = document.getElementById("daemon-status");
    if (daemon) daemon.textContent = status.simulated ? "simulated daemon" : `daemon pid ${status.pid}`;
  } catch (err) {
    const daemon = document.getElementById("daemon-status");
    if (daemon) {
      daemon.textContent = err.message;
      daemon.classList.add("error-text");
    }
  }
}

// ---------------------------------------------------------------- charts (Chart.js, vendored)

/** Quiet defaults for every chart: no animation (live data), small type, thin lines. */
export function chartDefaults() {
  const Chart = window.Chart;
  if (!Chart || chartDefaults.done) return;
  chartDefaults.done = true;
  Chart.defaults.animation = false;
  Chart.defaults.responsive = true;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.font.size = 11;
  Chart.defaults.color = "#333";
  Chart.defaults.borderColor = "#ddd";
  Chart.defaults.elements.point.radius = 0;
  Chart.defaults.elements.line.borderWidth = 1.5;
  Chart.defaults.plugins.legend.labels.boxWidth = 12;
}

/** An axis with its title ("diameter (nm)"). */
export function axis(title, extra = {}) {
  return { title: { display: true, text: title }, ...extra };
}

/**
 * Tick labels of a logarithmic axis: only 1, 2 and 5 times a power of ten (`mantissas`), as
 * plain numbers between 0.01 and 1e5 and in exponent form ("1e-6") outside.
 */
export function logTicks(mantissas = [1]) {
  return {
    autoSkip: false, maxRotation: 0,
    callback(value) {
      const exponent = Math.floor(Math.log10(value) + 1e-9);
      const mantissa = Math.round(value / 10 ** exponent);
      if (!mantissas.includes(mantissa) || Math.abs(value / 10 ** exponent - mantissa) > 1e-6) return "";
      return value >= 0.01 && value < 1e5 ? String(Number(value.toPrecision(1))) : `${mantissa === 1 ? "" : `${mantissa}×`}1e${exponent}`;
    },
  };
}

/** A logarithmic axis with its title, labels at `mantissas` x 10^n, faint grid lines between. */
export function logAxis(title, mantissas = [1], extra = {}) {
  return axis(title, {
    type: "logarithmic", ticks: logTicks(mantissas),
    grid: { color: (c) => (c.tick && c.tick.label ? "#dcdcdc" : "rgba(0, 0, 0, 0.035)") },
    ...extra,
  });
}

/** Tick labels in exponent form ("2.0e+10") for axes of large values. */
export const sciTicks = { callback: (value) => (value === 0 ? "0" : fmtSci(value, "", 2)) };

/** Chart colours: one accent, a second, greys. */
export const COLOURS = {
  accent: "#1f6f8b", accentFill: "rgba(31, 111, 139, 0.55)", band: "rgba(31, 111, 139, 0.18)",
  second: "#c0392b", third: "#7d8a2e", grey: "#888", light: "rgba(0, 0, 0, 0.08)",
};

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.page !== "login") initNav();
});

/**
 * A histogram (bars on a linear x axis) in `canvas`: returns the Chart. Its first dataset is the
 * bars; `extra` datasets (lines) may follow. xTitle/yTitle name the axes with their units.
 */
export function histogramChart(canvas, xTitle, yTitle, { label = "", extra = [], yType = "linear", integer = false } = {}) {
  chartDefaults();
  return new window.Chart(canvas, {
    type: "bar",
    data: {
      datasets: [{
        type: "bar", label, data: [], backgroundColor: COLOURS.accentFill, borderColor: COLOURS.accent,
        borderWidth: 0, barPercentage: 1.0, categoryPercentage: 1.0, order: 2,
      }, ...extra],
    },
    options: {
      parsing: true,
      plugins: { legend: { display: Boolean(label) || extra.length > 0, labels: { filter: (item) => Boolean(item.text) && !item.hidden } } },
      scales: {
        x: axis(xTitle, { type: "linear", offset: false, grid: { display: false } }),
        y: axis(yTitle, { type: yType, beginAtZero: true, ...(integer ? { ticks: { precision: 0 } } : {}) }),
      },
    },
  });
}

/**
 * The index range of `values` worth showing: from the first to the last bin holding more than
 * `fraction` of the largest value, with a margin of `margin` bins; [0, n) when all are empty.
 */
export function shownRange(values, fraction = 0.002, margin = 3) {
  const peak = Math.max(0, ...values.filter(isNum));
  if (!(peak > 0)) return [0, values.length];
  let first = values.findIndex((v) => isNum(v) && v > fraction * peak);
  let last = values.length - 1;
  while (last > 0 && !(isNum(values[last]) && values[last] > fraction * peak)) last -= 1;
  first = Math.max(0, first - margin);
  last = Math.min(values.length - 1, last + margin);
  return [first, last + 1];
}

/** Points {x, y} of two parallel lists (nulls kept as gaps), restricted to [from, to). */
export function points(xs, ys, from = 0, to = xs.length) {
  const out = [];
  for (let i = from; i < Math.min(to, xs.length); i += 1) out.push({ x: xs[i], y: isNum(ys[i]) ? ys[i] : null });
  return out;
}
