// Run history with filters (sample, method, state): /api/runs query parameters, kept in the URL.
import {
  apiGet, getStatus, EventStream, el, setChildren, runCells, headlineText, fmtTime, showError,
} from "/static/common.js";

const form = document.getElementById("runs-filters");
const body = document.querySelector("#runs-table tbody");
const errorNode = document.getElementById("runs-error");
const FIELDS = ["sample", "method", "state", "limit"];

/** Who asked for the run (the daemon's established identity, and the claimed name when it differs). */
function operatorText(op) {
  if (!op) return "—";
  const claimed = op.claimed_operator && op.claimed_operator !== op.operator ? ` (${op.claimed_operator})` : "";
  return `${op.operator || "—"}${claimed}`;
}

async function load() {
  const query = new URLSearchParams();
  for (const name of FIELDS) {
    const value = form.elements[name].value.trim();
    if (value) query.set(name, value);
  }
  const shown = new URLSearchParams(query);
  if (shown.get("limit") === "100") shown.delete("limit");  // the default
  history.replaceState(null, "", shown.toString() ? `?${shown}` : location.pathname);
  try {
    const runs = await apiGet(`/api/runs?${query}`);
    document.getElementById("runs-count").textContent = `${runs.length} run${runs.length === 1 ? "" : "s"}`;
    setChildren(body, runs.length ? runs.map((r) => el("tr", { dataset: { runId: r.run_id } },
      ...runCells(r),
      el("td", {}, operatorText(r.operator)),
      el("td", { class: "time" }, fmtTime(r.created)),
      el("td", { class: "time" }, fmtTime(r.finished)),
      el("td", { class: "headline" }, headlineText(r.headline))))
      : [el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No run matches."))]);
    showError(errorNode, null);
  } catch (err) {
    showError(errorNode, err);
  }
}

async function init() {
  try {
    const status = await getStatus();
    const select = form.elements.method;
    for (const name of Object.keys(status.methods || {})) select.append(el("option", { value: name }, name));
  } catch (err) {
    showError(errorNode, err);
  }
  const params = new URLSearchParams(location.search);
  for (const name of FIELDS) if (params.has(name)) form.elements[name].value = params.get(name);
  await load();
}

form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
form.addEventListener("reset", () => setTimeout(load, 0));
form.elements.method.addEventListener("change", load);
form.elements.state.addEventListener("change", load);
init();
let pending = null;
new EventStream().on("run.state", () => {
  if (!pending) pending = setTimeout(() => { pending = null; load(); }, 800);
});
