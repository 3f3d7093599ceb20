// Live view of one instrument: camera frames over /ws/live/{instrument} with the detected
// features and track tails drawn over them, a viewer-side threshold, the devices and their
// settings, preview on/off, and the run's NTA progress.
//
// Frame protocol: the page sends "next"; the server answers with ONE binary message: uint32
// big-endian header length, the header (JSON), the JPEG. The page asks again as soon as a frame
// arrives, so one frame is on its way while the last is drawn: a slow page gets fewer frames,
// never a queue.
import {
  apiGet, apiPost, getStatus, EventStream, el, setChildren, stateBadge, runLink, showError, wsUrl,
  fmt, fmtSci, fmtSig, fmtInt, fmtKeyed, labelOfKey, isNum, histogramChart, shownRange, points, FINAL_STATES,
} from "/static/common.js";

const root = document.getElementById("live");
const instrument = root.dataset.instrument;
const canvas = document.getElementById("live-canvas");
const ctx = canvas.getContext("2d", { alpha: false });  // opaque: the compositor need not blend it
const $ = (id) => document.getElementById(id);
const errorNode = $("live-error");
const slider = $("threshold-slider");

/** What the browser test reads: frames drawn, features drawn on the last frame, rate, latencies. */
const live = { framesDrawn: 0, overlayDrawn: 0, fps: 0, latencies_ms: [] };
window.exoacqLive = live;

const LATENCY_KEEP = 200;
const drawTimes = [];            // performance.now() of recent draws, for the rate
let lastBitmap = null;           // kept to redraw the overlay when the threshold moves
let lastHeader = null;
let thresholdFollowsDaemon = true;
let lastSeq = null;
let missed = 0;

// ---------------------------------------------------------------- overlay

/** The viewer's threshold: the slider, or the daemon's minmass while the slider follows it. */
function threshold() {
  return Number(slider.value);
}

/** Draw the frame, then the tails and the features; returns the number of features drawn. */
function draw(bitmap, header) {
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  ctx.drawImage(bitmap, 0, 0);
  const scale = isNum(header.scale) ? header.scale : 1;
  const tails = header.tails || [];
  ctx.lineWidth = 1;
  ctx.strokeStyle = "rgba(79, 179, 217, 0.85)";
  for (const tail of tails) {
    if (!Array.isArray(tail) || tail.length < 4) continue;
    ctx.beginPath();
    ctx.moveTo(tail[0] * scale, tail[1] * scale);
    for (let i = 2; i + 1 < tail.length; i += 2) ctx.lineTo(tail[i] * scale, tail[i + 1] * scale);
    ctx.stroke();
  }
  const f = header.features || {};
  const xs = f.x || [], ys = f.y || [], masses = f.mass || [];
  const limit = threshold();
  const radius = Math.max(4, 6 * scale);
  let above = 0;
  ctx.lineWidth = 1.5;
  for (let i = 0; i < xs.length; i += 1) {
    const bright = isNum(masses[i]) && masses[i] >= limit;
    if (bright) above += 1;
    ctx.strokeStyle = bright ? "#39d98a" : "#ffb454";
    ctx.beginPath();
    ctx.arc(xs[i] * scale, ys[i] * scale, radius, 0, 2 * Math.PI);
    ctx.stroke();
  }
  $("threshold-count").textContent = String(above);
  return xs.length;
}

/** The slider's range grows to hold the daemon's threshold and the brightest features seen. */
function fitSlider(header) {
  const masses = (header.features && header.features.mass) || [];
  const top = Math.max(isNum(header.minmass) ? 2 * header.minmass : 0, ...masses.filter(isNum));
  if (top > Number(slider.max)) {
    const magnitude = 10 ** Math.floor(Math.log10(top));
    slider.max = String(Math.ceil(top / magnitude) * magnitude);
  }
  if (thresholdFollowsDaemon && isNum(header.minmass)) {
    slider.value = String(header.minmass);
    $("threshold-value").textContent = fmtSig(header.minmass, "", 4);
  }
}

slider.addEventListener("input", () => {
  thresholdFollowsDaemon = false;
  $("threshold-value").textContent = slider.value;
  if (lastBitmap && lastHeader) live.overlayDrawn = draw(lastBitmap, lastHeader);
});
$("threshold-reset").addEventListener("click", () => {
  thresholdFollowsDaemon = true;
  if (lastHeader) fitSlider(lastHeader);
  if (lastBitmap && lastHeader) live.overlayDrawn = draw(lastBitmap, lastHeader);
});

// ---------------------------------------------------------------- counters

function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function updateCounters(header, latency_ms) {
  const now = performance.now();
  drawTimes.push(now);
  while (drawTimes.length > 2 && now - drawTimes[0] > 2000) drawTimes.shift();
  live.fps = drawTimes.length > 1 ? (drawTimes.length - 1) / ((now - drawTimes[0]) / 1000) : 0;
  live.latencies_ms.push(latency_ms);
  if (live.latencies_ms.length > LATENCY_KEEP) live.latencies_ms.splice(0, live.latencies_ms.length - LATENCY_KEEP);
  if (isNum(header.seq)) {
    if (lastSeq !== null && header.seq > lastSeq + 1) missed += header.seq - lastSeq - 1;
    lastSeq = header.seq;
  }
  $("frame-counter").textContent = String(live.framesDrawn);
  $("feature-count").textContent = String(isNum(header.count) ? header.count : ((header.features || {}).x || []).length);
  $("live-fps").textContent = live.fps.toFixed(1);
  $("live-latency-ms").textContent = String(Math.round(median(live.latencies_ms.slice(-15))));
  $("focus-score").textContent = fmtSig(header.focus_score, "", 3);
  $("minmass").textContent = fmtSig(header.minmass, "", 4);
  $("frames-missed").textContent = String(missed);
  const shape = header.shape ? `${header.shape[1]} × ${header.shape[0]} px camera` : "";
  const shown = header.display_shape ? `shown at ${header.display_shape[1]} × ${header.display_shape[0]} px` : "";
  const levels = Array.isArray(header.levels) ? `levels ${fmtInt(header.levels[0])}–${fmtInt(header.levels[1])} counts` : "";
  const featuresOf = isNum(header.features_frame_number) && header.features_frame_number !== header.frame_number
    ? `features of frame ${header.features_frame_number}` : "";
  $("frame-info").textContent = [`frame ${header.frame_number}`, shape, shown, levels,
    isNum(header.exposure_ms) ? `exposure ${fmt(header.exposure_ms, "ms", 2)}` : "", featuresOf].filter(Boolean).join(" · ");
  const mode = $("live-mode");
  mode.textContent = header.preview ? "preview" : (header.run_id ? `run ${header.run_id}` : "live");
  mode.className = `state state-${header.preview ? "preview" : "acquiring"}`;
}

// ---------------------------------------------------------------- the frame socket

const decoder = new TextDecoder();
let drawing = false;   // a frame is being decoded and drawn
let waiting = null;    // the frame that came meanwhile (at most one: the server sends one per "next")
let socket = null;
let reconnect_ms = 500;
let giveUp = false;

async function onFrame(buffer) {
  const view = new DataView(buffer);
  const length = view.getUint32(0, false);
  const header = JSON.parse(decoder.decode(new Uint8Array(buffer, 4, length)));
  const jpeg = new Uint8Array(buffer, 4 + length);
  const bitmap = await createImageBitmap(new Blob([jpeg], { type: "image/jpeg" }));
  fitSlider(header);
  const drawn = draw(bitmap, header);
  live.framesDrawn += 1;
  live.overlayDrawn = drawn;
  const latency_ms = (Date.now() / 1000 - header.timestamp) * 1000;
  if (lastBitmap) lastBitmap.close();
  lastBitmap = bitmap;
  lastHeader = header;
  updateCounters(header, latency_ms);
  $("live-placeholder").hidden = true;
}

// No frame for a while (preview off, run ended): say so over the last frame.
const STALE_MS = 2000;
setInterval(() => {
  const stale = !drawTimes.length || performance.now() - drawTimes[drawTimes.length - 1] > STALE_MS;
  const placeholder = $("live-placeholder");
  if (stale && live.framesDrawn > 0 && placeholder.hidden) {
    placeholder.textContent = "No new frames: start the preview, or a run on this instrument.";
    placeholder.hidden = false;
    const mode = $("live-mode");
    if (!mode.classList.contains("state-reconnecting")) {
      mode.textContent = "no frames";
      mode.className = "state state-idle";
    }
  }
}, 1000);

function connect() {
  socket = new WebSocket(wsUrl(`/ws/live/${encodeURIComponent(instrument)}`));
  socket.binaryType = "arraybuffer";
  socket.onopen = () => {
    reconnect_ms = 500;
    socket.send("next");
  };
  socket.onmessage = async (event) => {
    const current = event.target;
    if (typeof event.data === "string") {
      // a text message answers "next" when there is no frame (e.g. an error); ask again shortly
      let message = {};
      try { message = JSON.parse(event.data); } catch (err) { message = { error: event.data }; }
      const problem = message.error && (message.error.message || message.error);
      if (problem) showError(errorNode, `live view: ${problem}`);
      if (message.error && message.error.code === "unknown_instrument") giveUp = true;
      setTimeout(() => { if (current.readyState === WebSocket.OPEN) current.send("next"); }, problem ? 1000 : 200);
      return;
    }
    // Ask for the next frame at once, so that the server encodes it while this one is decoded and
    // drawn; a frame that comes while another is being drawn waits (only the newest one).
    if (current.readyState === WebSocket.OPEN) current.send("next");
    waiting = event.data;
    if (drawing) return;
    drawing = true;
    while (waiting !== null) {
      const buffer = waiting;
      waiting = null;
      try {
        await onFrame(buffer);
        if (errorNode.textContent.startsWith("live view:")) showError(errorNode, null);
      } catch (err) {
        showError(errorNode, `live view: a frame could not be shown (${err.message})`);
      }
    }
    drawing = false;
  };
  socket.onclose = (event) => {
    const mode = $("live-mode");
    if (giveUp || event.code === 1008) {  // refused for good (an unknown instrument): no retry
      mode.textContent = "no live view";
      mode.className = "state state-failed";
      return;
    }
    mode.textContent = "reconnecting";
    mode.className = "state state-reconnecting";
    if (event.reason) showError(errorNode, `live view: ${event.reason}`);
    setTimeout(connect, reconnect_ms);
    reconnect_ms = Math.min(reconnect_ms * 2, 8000);
  };
}

// ---------------------------------------------------------------- devices and settings

// Settings worth seeing at a glance; the rest go under "more".
const PRIMARY = /exposure|gain|power|emission|^temperature_c$|setpoint|rate_ul_min|^status$|interlock|frame_rate|direction|^output$|count_rate|angle_deg/;
const IDENTITY = /^(driver|model|serial_number|firmware|port|resource|address|connected|simulated|seed)$/;

function deviceBlock(role, dev) {
  const settings = Object.entries(dev.settings || {}).filter(([k, v]) => !IDENTITY.test(k) && (v === null || typeof v !== "object" || Array.isArray(v)));
  const primary = settings.filter(([k]) => PRIMARY.test(k));
  const rest = settings.filter(([k]) => !PRIMARY.test(k));
  if (dev.interlock) primary.push(["interlock", dev.interlock]);
  const rows = (list) => el("dl", { class: "facts" }, list.flatMap(([k, v]) => [el("dt", {}, labelOfKey(k)), el("dd", { dataset: { setting: k } }, fmtKeyed(k, v))]));
  return el("div", { class: "device", dataset: { role } },
    el("h3", {}, el("span", {}, role, " ", el("span", { class: "muted small" }, `${dev.driver || ""} ${(dev.settings || {}).model || ""}`)), stateBadge(dev.state)),
    dev.error ? el("p", { class: "error" }, dev.error) : null,
    rows(primary),
    rest.length ? el("details", {}, el("summary", { class: "small" }, `${rest.length} more`), rows(rest)) : null);
}

let knownRun = null;

async function refreshDevices() {
  try {
    const status = await getStatus(true);
    const inst = (status.instruments || {})[instrument];
    if (!inst) {
      setChildren($("device-panel"), el("p", { class: "error" }, `the daemon has no instrument '${instrument}'`));
      return;
    }
    setChildren($("device-panel"),
      el("p", {}, stateBadge(inst.state), " ", inst.run ? ["run ", runLink(inst.run)] : el("span", { class: "muted" }, "no run"),
        inst.queued && inst.queued.length ? el("span", { class: "muted small" }, ` · ${inst.queued.length} queued`) : null),
      inst.preview_error ? el("p", { class: "error" }, `preview ended: ${inst.preview_error}`) : null,
      Object.entries(inst.devices || {}).map(([role, dev]) => deviceBlock(role, dev)));
    $("preview-on").disabled = inst.state === "preview" || Boolean(inst.run);
    $("preview-off").disabled = inst.state !== "preview";
    if (inst.run !== knownRun) {
      knownRun = inst.run;
      if (inst.run) $("live-progress-run").replaceChildren("run ", runLink(inst.run));
    }
  } catch (err) {
    setChildren($("device-panel"), el("p", { class: "error" }, err.message));
  }
}

/** A unit as the daemon writes it ("C", "uL/min") in its usual symbols. */
function displayUnit(unit) {
  return { C: "°C", "uL/min": "µL/min", uL: "µL", um: "µm", "ADU/e-": "ADU/e⁻" }[unit] || unit || "";
}

function settingRow(device, name, spec) {
  const input = el("input", {
    type: "number", step: "any", value: spec.value, min: spec.minimum, max: spec.maximum,
    title: `${spec.description || name} (${fmtSig(spec.minimum)} to ${fmtSig(spec.maximum)} ${spec.unit || ""})`,
    "aria-label": `${device} ${name}`, dataset: { device, setting: name },
  });
  const reply = el("span", { class: "reply" });
  const form = el("form", { class: "setting-row", novalidate: true },
    el("label", {}, labelOfKey(name), " ", el("span", { class: "muted small" }, `(${displayUnit(spec.unit) || "—"})`)),
    input, el("button", { type: "submit", class: "small" }, "Set"), reply);
  input.addEventListener("input", () => { input.dataset.edited = "1"; });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const typed = input.value.trim();
    const value = typed !== "" && Number.isFinite(Number(typed)) ? Number(typed) : typed;
    reply.className = "reply";
    reply.textContent = "…";
    try {
      const result = await apiPost("/api/set", { instrument, device, setting: name, value });
      reply.className = "reply ok";
      reply.textContent = `read back ${fmtSig(result.value, displayUnit(result.unit || spec.unit), 4)}`;
      delete input.dataset.edited;
      if (isNum(result.value)) input.value = result.value;
      refreshDevices();
    } catch (err) {
      reply.className = "reply bad";
      reply.textContent = err.message;
    }
  });
  return form;
}

/** The present values into the inputs the operator is not editing. */
async function refreshSettingValues() {
  try {
    const reply = await apiGet(`/api/settings?instrument=${encodeURIComponent(instrument)}`);
    for (const [device, settings] of Object.entries(reply.devices || {})) {
      for (const [name, spec] of Object.entries(settings)) {
        const input = document.querySelector(`#settings-panel input[data-device="${device}"][data-setting="${name}"]`);
        if (input && document.activeElement !== input && !input.dataset.edited && isNum(spec.value)) input.value = spec.value;
      }
    }
  } catch (err) {
    // the device panel shows the daemon's trouble; keep the inputs as they are
  }
}

async function loadSettings() {
  try {
    const reply = await apiGet(`/api/settings?instrument=${encodeURIComponent(instrument)}`);
    const blocks = Object.entries(reply.devices || {}).filter(([, settings]) => Object.keys(settings).length)
      .map(([device, settings]) => el("div", { class: "device" }, el("h3", {}, device),
        Object.entries(settings).map(([name, spec]) => settingRow(device, name, spec))));
    setChildren($("settings-panel"), blocks.length ? blocks : [el("p", { class: "muted" }, "No setting of this instrument can be changed from here.")]);
  } catch (err) {
    setChildren($("settings-panel"), el("p", { class: "error" }, err.message));
  }
}

async function preview(on) {
  const reply = $("preview-reply");
  reply.className = "reply";
  reply.textContent = "…";
  try {
    const result = await apiPost("/api/preview", { instrument, on });
    reply.className = "reply ok";
    reply.textContent = result.preview ? "preview on" : "preview off";
  } catch (err) {
    reply.className = "reply bad";
    reply.textContent = err.message;
  }
  refreshDevices();
}
$("preview-on").addEventListener("click", () => preview(true));
$("preview-off").addEventListener("click", () => preview(false));

// ---------------------------------------------------------------- NTA progress of this instrument

let histogram = null;

function showProgress(doc) {
  if (!doc || (doc.instrument && doc.instrument !== instrument)) return;
  $("live-progress-body").hidden = false;
  if (!histogram) histogram = histogramChart($("live-histogram"), "diameter (nm)", "tracks", { label: "running tracks", integer: true });
  const h = doc.histogram;
  if (h && Array.isArray(h.counts)) {
    const [from, to] = shownRange(h.counts);
    histogram.data.datasets[0].data = points(h.bin_centres_nm, h.counts, from, to);
    histogram.update("none");
  }
  const s = doc.size_nm || {};
  const t = doc.tracks || {};
  const f = doc.frames || {};
  $("live-progress-run").replaceChildren("run ", runLink(doc.run_id), " ", stateBadge(doc.state));
  $("live-tracks").textContent = `${fmtInt(t.used)} / ${fmtInt(t.total)}`;
  $("live-mean-nm").textContent = fmt(s.mean, "nm");
  $("live-mode-nm").textContent = fmt(s.mode, "nm");
  $("live-d50-nm").textContent = fmt(s.d50, "nm");
  $("live-concentration").textContent = fmtSci(doc.concentration_per_ml, "/mL");
  $("live-ppf").textContent = fmt(doc.particles_per_frame, "", 1);
  $("live-frames").textContent = `${fmtInt(f.acquired)} / ${fmtInt(f.processed)} / ${fmtInt(f.dropped)}`;
  $("live-capture").textContent = isNum(doc.capture) ? `${doc.capture} of ${doc.captures}, ${fmt(doc.elapsed_s, "s")} of ${fmt(doc.duration_s, "s")}` : "—";
}

// The daemon sends about ten progress documents a second while tracking; redrawing the chart and
// the figures for each took most of the page's CPU (measured with chromium's profiler on the
// console bench), so the newest one is drawn at most every PROGRESS_DRAW_MS.
const PROGRESS_DRAW_MS = 500;
let newestProgress = null;
let progressTimer = null;
let progressDrawn = -Infinity;

function queueProgress(doc) {
  if (!doc || (doc.instrument && doc.instrument !== instrument)) return;
  newestProgress = doc;
  if (progressTimer !== null) return;
  const wait = Math.max(0, PROGRESS_DRAW_MS - (performance.now() - progressDrawn));
  progressTimer = setTimeout(() => {
    progressTimer = null;
    progressDrawn = performance.now();
    const newest = newestProgress;
    newestProgress = null;
    showProgress(newest);
  }, wait);
}

const events = new EventStream();
events.on("snapshot", (snap) => queueProgress(((snap || {}).progress || {})[instrument]));
events.on("nta.progress", queueProgress);
events.on("run.state", (doc) => {
  if (doc.instrument !== instrument) return;
  if (FINAL_STATES.has(doc.state)) $("live-progress-run").replaceChildren("run ", runLink(doc.run_id), " ", stateBadge(doc.state));
  refreshDevices();
});

connect();
refreshDevices();
loadSettings();
setInterval(refreshDevices, 2000);
setInterval(refreshSettingValues, 4000);
