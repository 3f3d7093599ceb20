// Acquire: start a run (the fields of the chosen method, or a SOP file), the queue per
// instrument with stop buttons, and the live progress of the runs in #progress-panel.
import {
  apiPost, getStatus, EventStream, el, setChildren, stateBadge, runLink, showError, fmtTime, FINAL_STATES,
} from "/static/common.js";
import { ProgressView } from "/static/progress.js";

const $ = (id) => document.getElementById(id);
const form = $("acquire-form");
const methodSelect = form.elements.method;
const instrumentSelect = form.elements.instrument;
const errorNode = $("acquire-error");

const DURATION = {
  nta: ["duration of each capture (s)", "60"],
  dls: ["duration of each sub-run (s)", "10"],
  flow: ["live time (s)", "10"],
};

let status = null;

// ---------------------------------------------------------------- the form

/** Show the fields of the chosen method only; fill the instruments that serve it. */
function methodChanged() {
  const method = methodSelect.value;
  for (const node of form.querySelectorAll("[data-methods]")) {
    const shown = node.dataset.methods.split(" ").includes(method);
    node.hidden = !shown;
    for (const input of node.querySelectorAll("input, select")) input.disabled = !shown;
  }
  const [label, placeholder] = DURATION[method] || ["duration (s)", ""];
  $("duration-label").textContent = label;
  form.elements.duration_s.placeholder = placeholder;
  const names = ((status && status.methods[method]) || {}).instruments || [];
  const previous = instrumentSelect.value;
  setChildren(instrumentSelect, names.map((n) => el("option", { value: n }, `${n} (${status.instruments[n] ? status.instruments[n].state : "?"})`)));
  if (names.includes(previous)) instrumentSelect.value = previous;
}

/** A file's text, read in the browser (it is sent as `sop` in the request). */
function readText(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}: ${reader.error && reader.error.message}`));
    reader.readAsText(file);
  });
}

// Fields that are always text (as exoacq.web.forms.TEXT_FIELDS: a sample named "42" stays "42").
const TEXT_FIELDS = new Set(["method", "instrument", "sample", "sop", "blank_run", "bead_check", "control"]);

/**
 * A field's text as the daemon's JSON type, by the rule the console applies to HTML forms
 * (exoacq.web.forms.form_value): a finite number becomes a number, "true"/"false" a boolean;
 * anything else is sent as typed, so that the daemon's own message names the bad value.
 */
function formValue(name, text) {
  if (TEXT_FIELDS.has(name)) return text;
  const lowered = text.trim().toLowerCase();
  if (lowered === "true" || lowered === "on") return true;
  if (lowered === "false") return false;
  const number = Number(text);
  return text.trim() !== "" && Number.isFinite(number) ? number : text;
}

/** The request: every shown, non-empty field (numbers as numbers, see formValue). */
async function requestBody() {
  const body = {};
  for (const input of form.elements) {
    if (!input.name || input.disabled || input.type === "file" || input.type === "submit") continue;
    if (input.type === "checkbox") {
      if (input.checked) body[input.name] = true;
      continue;
    }
    const value = input.value.trim();
    // the sample is always sent: an empty one gets the daemon's message, not the name "unnamed"
    if (value !== "" || input.name === "sample") body[input.name] = formValue(input.name, value);
  }
  const sop = form.elements.sop;
  if (!sop.disabled && sop.files && sop.files.length) body.sop = await readText(sop.files[0]);
  return body;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("acquire-submit");
  button.disabled = true;
  showError(errorNode, null);
  $("acquire-started").hidden = true;
  try {
    const body = await requestBody();
    const result = await apiPost("/api/acquire", body);
    const link = $("acquire-run-id");
    link.textContent = result.run_id;
    link.href = `/runs/${encodeURIComponent(result.run_id)}`;
    $("acquire-started-state").replaceChildren(" on ", result.instrument || body.instrument || "", " ", stateBadge(result.state));
    $("acquire-started").hidden = false;
    track(result.run_id, { method: body.method, instrument: result.instrument || body.instrument, state: result.state });
    follow(result.run_id);
    refreshQueue();
  } catch (err) {
    showError(errorNode, err);
  } finally {
    button.disabled = false;
  }
});
methodSelect.addEventListener("change", methodChanged);

// ---------------------------------------------------------------- queue

async function stop(runId, reply) {
  reply.className = "reply";
  reply.textContent = "…";
  try {
    const result = await apiPost("/api/stop", { run_id: runId });
    reply.className = "reply ok";
    reply.textContent = result.state;
  } catch (err) {
    reply.className = "reply bad";
    reply.textContent = err.message;
  }
  refreshQueue();
}

function queueItem(runId, state, extra = null) {
  const reply = el("span", { class: "reply" });
  return el("div", { class: "queue-item", dataset: { runId } },
    el("span", {}, runLink(runId), " ", stateBadge(state), extra),
    el("span", {}, reply, el("button", { type: "button", class: "small danger", onclick: () => stop(runId, reply) }, "Stop")));
}

async function refreshQueue() {
  try {
    status = await getStatus(true);
    const active = new Map((status.runs || []).map((r) => [r.run_id, r]));
    for (const r of status.runs || []) track(r.run_id, { method: r.method, instrument: r.instrument, state: r.state });
    const blocks = Object.entries(status.instruments || {}).map(([name, inst]) => {
      const running = inst.run ? active.get(inst.run) : null;
      const step = running && running.step ? el("span", { class: "muted small" }, ` step ${running.step.index}/${running.step.of} ${running.step.step}`) : null;
      return el("div", { class: "device", dataset: { instrument: name } },
        el("h3", {}, el("span", {}, name, " ", el("span", { class: "muted small" }, inst.method)), stateBadge(inst.state)),
        inst.run ? queueItem(inst.run, running ? running.state : "running", step) : el("p", { class: "muted small" }, "no run"),
        (inst.queued || []).map((id) => queueItem(id, "queued")));
    });
    setChildren($("acquire-queue"), blocks);
    showError($("queue-error"), null);
    if (!methodSelect.options.length) initForm();
  } catch (err) {
    showError($("queue-error"), err);
  }
}

function initForm() {
  const params = new URLSearchParams(location.search);
  setChildren(methodSelect, Object.entries(status.methods || {}).map(([name, m]) =>
    el("option", { value: name, title: m.description || "" }, name)));
  if (params.get("method")) methodSelect.value = params.get("method");
  else if (status.methods.nta) methodSelect.value = "nta";
  methodChanged();
  if (params.get("instrument")) instrumentSelect.value = params.get("instrument");
  if (params.get("sample")) form.elements.sample.value = params.get("sample");
}

// ---------------------------------------------------------------- progress

const view = new ProgressView();
const runs = new Map();      // run_id -> {method, instrument, state, step, doc, updated}
let followed = null;         // the run shown; null: the newest active one
let chosenByUser = false;

function track(runId, facts) {
  if (!runId) return;
  const run = runs.get(runId) || { doc: null };
  for (const [k, v] of Object.entries(facts)) if (v !== undefined && v !== null) run[k] = v;
  run.updated = Date.now();
  runs.set(runId, run);
}

function follow(runId, byUser = false) {
  followed = runId;
  chosenByUser = byUser || chosenByUser;
  render();
}

/** The run to show: the one followed, else the newest run not final, else the last one with progress. */
function current() {
  if (followed && runs.has(followed)) return followed;
  const newest = (list) => list.sort((a, b) => b[1].updated - a[1].updated)[0];
  const active = newest([...runs.entries()].filter(([, r]) => !FINAL_STATES.has(r.state)));
  if (active) return active[0];
  const shown = newest([...runs.entries()].filter(([, r]) => r.doc));
  return shown ? shown[0] : null;
}

function render() {
  const runId = current();
  const tabs = [...runs.entries()].filter(([id, r]) => !FINAL_STATES.has(r.state) || id === runId);
  setChildren($("progress-tabs"), tabs.length > 1 ? tabs.map(([id, r]) =>
    el("button", { type: "button", class: `small${id === runId ? " active" : ""}`, onclick: () => follow(id, true) },
      `${r.instrument || r.method}: ${id}`)) : []);
  const run = runId ? runs.get(runId) : null;
  $("progress-idle").hidden = Boolean(run && run.doc);
  $("progress-idle").textContent = !run ? "No run in progress. A run started here, or any running run, shows its progress here."
    : `Run ${runId} is ${run.state || "starting"}: no progress yet.`;
  if (!runId) {
    view.show(null, null);
    setChildren($("progress-run"));
    setChildren($("progress-state"));
    $("progress-step").textContent = "";
    return;
  }
  setChildren($("progress-run"), runLink(runId), ` · ${run.instrument || ""} · ${run.method || ""}`);
  setChildren($("progress-state"), stateBadge(run.state));
  const step = run.step;
  $("progress-step").textContent = [step ? `step ${step.index} of ${step.of}: ${step.step}${step.detail ? ` (${step.detail})` : ""}` : "",
    run.error ? `error: ${run.error}` : "", run.time ? `updated ${fmtTime(run.time)}` : ""].filter(Boolean).join(" · ");
  view.show(run.method, run.doc);
}

let renderPending = false;
function renderSoon() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => { renderPending = false; render(); });
}

function onProgress(doc, topic) {
  const method = String(topic).split(".")[0];
  track(doc.run_id, { method, instrument: doc.instrument, state: doc.state, step: doc.step, time: doc.time });
  runs.get(doc.run_id).doc = doc;
  // a new run's progress takes over from a followed run that has ended (unless the operator chose it)
  if (!chosenByUser && followed && followed !== doc.run_id && FINAL_STATES.has((runs.get(followed) || {}).state)) followed = doc.run_id;
  renderSoon();
}

const events = new EventStream();
events.on("snapshot", (snap) => {
  for (const doc of Object.values((snap || {}).progress || {})) {
    if (doc && doc.run_id && doc.schema) onProgress(doc, doc.schema.replace(/^exoacq\./, "").split("/")[0]);
  }
  for (const doc of Object.values((snap || {}).states || {})) {
    if (doc && doc.run_id) track(doc.run_id, { method: doc.method, instrument: doc.instrument, state: doc.state, step: doc.step, error: doc.error });
  }
  renderSoon();
});
for (const topic of ["nta.progress", "dls.progress", "flow.progress"]) events.on(topic, onProgress);
events.on("run.state", (doc) => {
  if (doc.run_id === $("acquire-run-id").textContent) {
    $("acquire-started-state").replaceChildren(" on ", doc.instrument || "", " ", stateBadge(doc.state));
  }
  track(doc.run_id, { method: doc.method, instrument: doc.instrument, state: doc.state, step: doc.step, error: doc.error, time: doc.time });
  renderSoon();
  refreshQueue();
});

refreshQueue();
setInterval(refreshQueue, 2000);
