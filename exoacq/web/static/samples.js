// Samples: the list; one sample's runs (checkboxes, grouped by method) for its cross-method
// report; the results measured elsewhere (protein, western blot, TEM), saved per sample.
import {
  apiGet, apiPut, api, el, setChildren, stateBadge, runLink, headlineText, fmtTime, showError,
} from "/static/common.js";

const $ = (id) => document.getElementById(id);
const MARKERS = ["CD9", "CD63", "CD81", "TSG101", "Alix", "calnexin"];
const RESULTS = ["not tested", "positive", "negative"];
let samples = [];
let chosen = null;

const sampleUrl = (sample) => `/api/samples/${encodeURIComponent(sample)}`;

function renderList() {
  const filter = $("sample-filter").value.trim().toLowerCase();
  const shown = samples.filter((s) => !filter || s.sample.toLowerCase().includes(filter));
  setChildren($("sample-list"), shown.length ? shown.map((s) => el("li", {},
    el("button", { type: "button", class: s.sample === chosen ? "active" : "", dataset: { sample: s.sample }, onclick: () => choose(s.sample) },
      el("div", {}, s.sample),
      el("div", { class: "small muted" }, `${s.runs} run${s.runs === 1 ? "" : "s"} · ${s.methods.join(", ")} · ${fmtTime(s.last)}`))))
    : [el("li", { class: "muted" }, samples.length ? "No sample matches." : "No runs yet.")]);
}

function runsBlock(runs) {
  const byMethod = new Map();
  for (const r of runs) {
    if (!byMethod.has(r.method)) byMethod.set(r.method, []);
    byMethod.get(r.method).push(r);
  }
  if (!runs.length) return el("p", { class: "muted" }, "No runs.");
  return el("table", { class: "data", id: "sample-runs-table" },
    el("thead", {}, el("tr", {}, ["", "run", "state", "created", "result"].map((h) => el("th", {}, h)))),
    [...byMethod.entries()].map(([method, list]) => el("tbody", { dataset: { method } },
      el("tr", { class: "group" }, el("th", { colspan: 5 }, method.toUpperCase())),
      list.map((r) => el("tr", {},
        el("td", {}, el("input", { type: "checkbox", class: "report-run", value: r.run_id, checked: r.state === "done",
          dataset: { method: r.method }, "aria-label": `include ${r.run_id}` })),
        el("td", {}, runLink(r.run_id)),
        el("td", {}, stateBadge(r.state)),
        el("td", { class: "time" }, fmtTime(r.created)),
        el("td", { class: "headline" }, headlineText(r.headline)))))));
}

function renderInfo(info) {
  $("protein-ug-per-ml").value = info.protein_ug_per_ml ?? "";
  $("protein-assay").value = info.protein_assay || "";
  const blot = info.western_blot || {};
  setChildren($("western-blot"), MARKERS.map((m) => el("label", { class: "field" }, el("span", {}, m),
    el("select", { name: `wb-${m}`, dataset: { marker: m } }, RESULTS.map((r) => el("option", { value: r, selected: (blot[m] || "not tested") === r }, r))))));
  const tem = info.tem || {};
  $("tem-morphology").value = tem.morphology || "";
  $("sample-notes").value = info.notes || "";
  const files = tem.image_files || {};
  setChildren($("tem-images"), (tem.images || []).map((name) => el("figure", {},
    el("a", { href: `${sampleUrl(chosen)}/images/${encodeURIComponent(name)}`, target: "_blank" },
      /\.(png|jpg)$/.test(name) ? el("img", { src: `${sampleUrl(chosen)}/images/${encodeURIComponent(name)}`, alt: name, height: 90 }) : name),
    el("figcaption", {}, (files[name] || {}).filename || name))));
  $("sample-info-reply").textContent = info.entered ? `saved ${fmtTime(info.entered)}${info.entered_by ? ` by ${info.entered_by}` : ""}` : "nothing entered yet";
  $("sample-info-reply").className = "reply";
}

async function choose(sample) {
  chosen = sample;
  renderList();
  const detail = $("sample-detail");
  setChildren(detail, $("sample-template").content.cloneNode(true));
  $("sample-name").textContent = sample;
  $("report-button").addEventListener("click", openReport);
  $("sample-info-form").addEventListener("submit", save);
  $("tem-upload").addEventListener("click", upload);
  try {
    const [runs, info] = await Promise.all([
      apiGet(`/api/runs?limit=1000&sample=${encodeURIComponent(sample)}`),
      apiGet(`${sampleUrl(sample)}/info`),
    ]);
    setChildren($("sample-runs"), runsBlock(runs.filter((r) => r.sample === sample)));
    renderInfo(info);
  } catch (err) {
    showError($("samples-error"), err);
  }
}

function openReport() {
  const ids = [...document.querySelectorAll(".report-run:checked")].map((c) => c.value);
  if (!ids.length) {
    showError($("report-error"), "check at least one run for the report");
    return;
  }
  showError($("report-error"), null);
  window.open(`/samples/${encodeURIComponent(chosen)}/report?runs=${ids.map(encodeURIComponent).join(",")}`, "_blank");
}

async function save(event) {
  event.preventDefault();
  const blot = {};
  for (const select of document.querySelectorAll("#western-blot select")) blot[select.dataset.marker] = select.value;
  const protein = $("protein-ug-per-ml").value.trim();
  const body = {
    protein_ug_per_ml: protein === "" ? null : protein,
    protein_assay: $("protein-assay").value || null,
    western_blot: blot,
    tem: { morphology: $("tem-morphology").value },
    notes: $("sample-notes").value,
  };
  showError($("sample-info-error"), null);
  try {
    renderInfo(await apiPut(`${sampleUrl(chosen)}/info`, body));
    $("sample-info-reply").className = "reply ok";
  } catch (err) {
    showError($("sample-info-error"), err);
  }
}

async function upload() {
  const input = $("tem-file");
  const reply = $("tem-reply");
  if (!input.files.length) {
    reply.className = "reply bad";
    reply.textContent = "choose an image file (PNG, JPEG or TIFF)";
    return;
  }
  const form = new FormData();
  form.append("file", input.files[0]);
  reply.className = "reply";
  reply.textContent = "…";
  try {
    const result = await api(`${sampleUrl(chosen)}/images`, { method: "POST", body: form });
    reply.className = "reply ok";
    reply.textContent = `attached as ${result.name}`;
    input.value = "";
    renderInfo(await apiGet(`${sampleUrl(chosen)}/info`));
  } catch (err) {
    reply.className = "reply bad";
    reply.textContent = err.message;
  }
}

async function init() {
  try {
    samples = await apiGet("/api/samples");
    renderList();
    const wanted = new URLSearchParams(location.search).get("sample");
    if (wanted) choose(wanted);
  } catch (err) {
    showError($("samples-error"), err);
  }
}

$("sample-filter").addEventListener("input", renderList);
init();
