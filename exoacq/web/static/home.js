// Home: each instrument's state, devices, run and queue; the latest runs with their headline numbers.
import {
  apiGet, EventStream, el, setChildren, stateBadge, runLink, runCells, headlineText, fmtTime, showError, FINAL_STATES,
} from "/static/common.js";

const instrumentsNode = document.getElementById("instruments");
const runsBody = document.querySelector("#latest-runs tbody");
const errorNode = document.getElementById("home-error");

/** One instrument's card. */
function instrumentCard(name, inst, activeRuns) {
  const devices = Object.entries(inst.devices || {}).map(([role, dev]) =>
    el("li", {}, el("span", {}, `${role} `, el("span", { class: "muted small" }, dev.driver || "")),
      el("span", {}, stateBadge(dev.state), dev.error ? el("span", { class: "small error-inline", title: dev.error }, " !") : null)));
  const running = activeRuns.find((r) => r.instrument === name);
  const runLine = inst.run
    ? el("p", {}, "run ", runLink(inst.run), " ", running ? stateBadge(running.state) : null,
      running && running.step ? el("span", { class: "muted small" }, ` step ${running.step.index}/${running.step.of} ${running.step.step}`) : null)
    : el("p", { class: "muted" }, "no run");
  const queued = (inst.queued || []);
  const queueLine = queued.length
    ? el("p", {}, `queued (${queued.length}): `, queued.map((id, i) => [i ? ", " : "", runLink(id)]))
    : null;
  const hasCamera = inst.devices && inst.devices.camera;
  return el("article", { class: "card", dataset: { instrument: name } },
    el("div", { class: "spread" }, el("h3", {}, name), stateBadge(inst.state)),
    el("p", { class: "muted small" }, `${inst.method} · ${inst.description || ""}`),
    el("ul", { class: "devices" }, devices),
    runLine, queueLine,
    inst.preview_error ? el("p", { class: "error" }, `preview ended: ${inst.preview_error}`) : null,
    el("p", { class: "row" },
      hasCamera ? el("a", { href: `/live/${encodeURIComponent(name)}` }, "live view") : null,
      el("a", { href: `/acquire?method=${encodeURIComponent(inst.method)}&instrument=${encodeURIComponent(name)}` }, "acquire")));
}

async function refreshStatus() {
  try {
    const status = await apiGet("/api/status");
    const entries = Object.entries(status.instruments || {});
    setChildren(instrumentsNode, entries.length
      ? entries.map(([name, inst]) => instrumentCard(name, inst, status.runs || []))
      : [el("p", { class: "muted" }, "The daemon has no instruments.")]);
    document.getElementById("status-time").textContent = `updated ${fmtTime(new Date().toISOString())}`;
    showError(errorNode, null);
  } catch (err) {
    showError(errorNode, err);
  }
}

async function refreshRuns() {
  try {
    const runs = await apiGet("/api/runs?limit=10");
    setChildren(runsBody, runs.length ? runs.map((r) => el("tr", { dataset: { runId: r.run_id } },
      ...runCells(r),
      el("td", { class: "time" }, fmtTime(r.created)),
      el("td", { class: "headline" }, headlineText(r.headline)))) : [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No runs yet."))]);
  } catch (err) {
    showError(errorNode, err);
  }
}

let pending = null;
/** Refresh both soon (several run.state documents arrive together). */
function refreshSoon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; refreshStatus(); refreshRuns(); }, 300);
}

refreshStatus();
refreshRuns();
setInterval(refreshStatus, 5000);
const events = new EventStream();
events.on("run.state", (doc) => {
  refreshSoon();
  if (FINAL_STATES.has(doc.state)) setTimeout(refreshRuns, 1000);
});
