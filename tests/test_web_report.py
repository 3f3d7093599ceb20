"""The cross-method sample report: its numbers are the runs' documents, its checklist follows them.

Real documents: NTA runs on the simulated daemon (a bead check, a two-capture
blank, a two-capture sample with the blank subtracted), a DLS analysis of a
real ALV-7004 file and flow analyses by ``exoacq analyze flow`` (a real Attune
NxT file; a simulated file with its buffer control and the simulated
cytometer's calibration, for calibrated sizes). Every number the report shows
carries its document path (``data-key``) and the document's value
(``data-value``); the test reads them all back from the HTML.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import subprocess
import sys
import time
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from exoacq.bus import ControlClient
from exoacq.client import follow_run
from exoacq.errors import ExoacqError
from exoacq.web.report import misev_checklist, purity_ratios, sample_report
from exoacq.web.samples import MAX_IMAGE_BYTES, SampleStore, sample_folder
from exoacq.web.summaries import field, headline

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT.parent / "shared" / "testdata"
ALV_FILE = TESTDATA / "dls" / "alv-cgs3" / "080622_3_0039_0001.ASC"  # 150 degrees, one run, two peaks
ATTUNE_FILE = TESTDATA / "flow" / "G11.fcs"
FLOW_CALIBRATION = ROOT / "calibrations" / "flow" / "simulated-cytometer.toml"
BEADS = ROOT / "calibrations" / "nta" / "beads-100nm.toml"
SAMPLE = "MSC-EV lot 42"
needs_testdata = pytest.mark.skipif(not TESTDATA.is_dir(), reason=f"real instrument files not found at {TESTDATA}")
pytestmark = pytest.mark.slow


def _exoacq(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "exoacq", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _ended(client: ControlClient, run_id: str, timeout_s: float = 60.0) -> dict:
    """The daemon's `run` reply once the run has ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.request("run", run_id=run_id)
        if run["state"] in ("done", "failed", "aborted", "interrupted"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['state']} after {timeout_s:g} s"
        time.sleep(0.2)


def _analyse(*args: str) -> dict:
    """`exoacq ... --json` run in this process (the CLI's own code, without an interpreter's start-up)."""
    from exoacq.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*args, "--json"]) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def runs(daemon, tmp_path_factory):
    """{name: run}: the daemon's `run` replies and run-like dicts of analysed files."""
    tmp = tmp_path_factory.mktemp("report")
    sim, buffer = tmp / "sample.fcs", tmp / "buffer.fcs"
    # the simulated flow files are made while the daemon records
    makers = [_exoacq("simulate", "flow", str(sim), "--duration", "2", "--seed", "7"),
              _exoacq("simulate", "flow", str(buffer), "--duration", "2", "--seed", "8", "--control", "buffer")]
    out: dict[str, dict] = {}
    with ControlClient(daemon.control) as client:
        # the DLS and flow instruments record beside the NTA one
        others = {"dls-daemon": client.request("acquire", method="dls", duration_s=1, runs=2, sample=SAMPLE),
                  "flow-daemon": client.request("acquire", method="flow", duration_s=1, sample=SAMPLE)}

        def nta(**params):
            return follow_run(client, {"method": "nta", **params}, timeout_s=60)
        bead = nta(duration_s=1, captures=1, sample="beads", bead_check=str(BEADS))
        blank = nta(duration_s=1, captures=2, sample="PBS", blank=True)  # two captures: a standard error
        sample = nta(duration_s=2, captures=2, sample=SAMPLE, dilution=100, blank_run=blank["run_id"])
        for name, doc in (("bead", bead), ("blank", blank), ("nta", sample), *others.items()):
            out[name] = _ended(client, doc["run_id"])
    for maker in makers:
        assert maker.wait(timeout=120) == 0, maker.stderr.read()
    flow = _analyse("analyze", "flow", str(sim), "--calibration", str(FLOW_CALIBRATION), "--buffer", str(buffer),
                    "--marker", "CD63=FL1-H", "--marker", "CD81=FL2-H")
    out["flow"] = {"run_id": "flow-simulated", "method": "flow", "sample": SAMPLE, "result": flow}
    if TESTDATA.is_dir():
        attune = _analyse("analyze", "flow", str(ATTUNE_FILE), "--marker", "CD63=BL1-A", "--marker", "CD81=YL2-A")
        out["attune"] = {"run_id": "flow-attune", "method": "flow", "sample": SAMPLE, "result": attune}
        from exoacq.dls.analysis import analyze_record  # what `exoacq analyze dls` runs on a correlator file
        from exoacq.dls.io import read_dls_file
        out["dls"] = {"run_id": "dls-alv", "method": "dls", "sample": SAMPLE,
                      "result": analyze_record(read_dls_file(ALV_FILE), particle_refractive_index=1.59)}
    for name in ("bead", "blank", "nta"):
        assert out[name]["state"] == "done" and out[name]["result"], out[name]
    return out


def _png(seed: int, dtype=np.uint8) -> tuple[np.ndarray, bytes]:
    image = (np.random.default_rng(seed).random((48, 64)) * 200).astype(dtype)
    return image, cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture
def complete_info(tmp_path):
    """A sample with everything entered: protein, western blot, TEM morphology and two images (PNG, TIFF)."""
    store = SampleStore(tmp_path)
    store.put(SAMPLE, {"protein_ug_per_ml": "250", "protein_assay": "micro-bca",
                       "western_blot": {"cd63": "positive", "CD81": "Positive", "TSG101": "positive",
                                        "calnexin": "negative", "flotillin-1": "positive"},
                       "tem": {"morphology": "cup-shaped vesicles, 40-160 nm, intact membranes"},
                       "notes": "SEC fractions 7-9"}, operator="alice")
    png_image, png = _png(1)
    tif_image = (np.random.default_rng(2).random((32, 40)) * 60000).astype(np.uint16)
    names = [store.add_image(SAMPLE, "grid A.png", png, operator="bob"),
             store.add_image(SAMPLE, "grid B.tif", cv2.imencode(".tif", tif_image)[1].tobytes(), operator="bob")]
    return store, store.get(SAMPLE), names, {"png": png_image, "tif": tif_image}


class _Numbers(HTMLParser):
    """Collects the marked numbers (span.num), the checklist rows and every resource attribute."""

    def __init__(self):
        super().__init__()
        self.numbers, self.checks, self.resources, self.tags = [], [], [], set()
        self._open = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        for name in ("src", "href", "data", "srcset", "action"):
            if attrs.get(name):
                self.resources.append(attrs[name])
        if tag == "span" and "num" in (attrs.get("class") or "").split():
            self._open = {**attrs, "text": ""}
        if tag == "tr" and "check" in (attrs.get("class") or "").split():
            self.checks.append((attrs["data-key"], attrs["data-status"]))

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.numbers.append(self._open)
            self._open = None


def _parse(html: str) -> _Numbers:
    parser = _Numbers()
    parser.feed(html)
    return parser


def _shown_equals(text: str, value: float, style: str) -> bool:
    """The shown text is the value at its display precision (half a unit of its last digit)."""
    if style == "pct":
        value *= 100
    mantissa, _, exponent = text.partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    tolerance = 0.5 * 10 ** (-decimals) * 10 ** (int(exponent) if exponent else 0)
    return abs(float(text) - value) <= tolerance * (1 + 1e-9) + 1e-12 * abs(value)


def _check_numbers(html: str, by_id: dict[str, dict]) -> list[dict]:
    numbers = _parse(html).numbers
    for n in numbers:
        if n["data-source"] != "result":
            continue
        document = by_id[n["data-run"]]["result"]
        expected = field(document, n["data-key"])
        if n["data-value"] == "null":
            assert expected is None and n["text"] == "—", n
            continue
        assert float(n["data-value"]) == expected, n  # the document's own value, exactly
        assert _shown_equals(n["text"], expected, n["data-style"]), n
    return numbers


def _keys(numbers: list[dict], run_id: str) -> set[str]:
    return {n["data-key"] for n in numbers if n["data-run"] == run_id and n["data-value"] != "null"}


def test_headline_is_the_documents_numbers(runs):
    nta = runs["nta"]["result"]
    assert headline(runs["nta"]) == {
        "size_mean_nm": nta["size_nm"]["mean"], "size_mode_nm": nta["size_nm"]["mode"],
        "size_d50_nm": nta["size_nm"]["d50"], "concentration_per_ml": nta["concentration_per_ml"],
        "concentration_se_per_ml": nta["standard_error"]["concentration_per_ml"], "warnings": len(nta["warnings"])}
    flow = runs["flow"]["result"]
    line = headline(runs["flow"])
    assert line["concentration_per_ml"] == flow["concentration_per_ml"]
    assert line["size_median_nm"] == flow["size_nm"]["median"] and line["markers"] == flow["markers"]
    assert set(line["markers"]) == {"CD63", "CD81"}
    if "dls" in runs:
        m = runs["dls"]["result"]["measurements"][0]
        line = headline(runs["dls"])
        assert (line["z_average_nm"], line["pdi"], line["angle_deg"]) == (m["z_average_nm"], m["pdi"], 150.0)
    # None-safe: a `runs` entry (no result), nothing, a result without its fields
    assert headline({"run_id": "x", "method": "nta", "state": "queued"}) == {} and headline(None) == {}
    assert headline({"method": "nta", "result": {"size_nm": None, "concentration_per_ml": float("nan")}}) == {
        "size_mean_nm": None, "size_mode_nm": None, "size_d50_nm": None, "concentration_per_ml": None,
        "concentration_se_per_ml": None, "warnings": 0}
    assert headline({"method": "dls", "result": {"measurements": [{"z_average_nm": None}]}})["z_average_nm"] is None


def test_every_number_in_the_report_is_the_documents(runs, complete_info):
    store, info, names, _ = complete_info
    selected = [runs[k] for k in ("nta", "blank", "dls", "flow", "attune") if k in runs]
    html = sample_report(SAMPLE, selected, info, images=store.images(SAMPLE))
    by_id = {r["run_id"]: r for r in selected}
    numbers = _check_numbers(html, by_id)

    nta_id, nta = runs["nta"]["run_id"], runs["nta"]["result"]
    assert {"size_nm.mean", "size_nm.mode", "size_nm.d10", "size_nm.d50", "size_nm.d90", "concentration_per_ml",
            "standard_error.concentration_per_ml", "standard_error.size_nm.mean", "detection_volume.nl"} \
        <= _keys(numbers, nta_id)
    assert nta["standard_error"]["concentration_per_ml"] is not None  # two captures: its SE is shown
    assert {"size_nm.median", "size_nm.d10", "size_nm.d90", "concentration_per_ml", "concentration_uncertainty_per_ml",
            "markers.CD63", "markers.CD81", "detection_limit_nm"} <= _keys(numbers, "flow-simulated")
    if "dls" in runs:
        dls = runs["dls"]["result"]
        for i, m in enumerate(dls["measurements"]):
            assert {f"measurements.{i}.z_average_nm", f"measurements.{i}.pdi"} <= _keys(numbers, "dls-alv")
            for j, _ in enumerate(m["peaks"]["intensity"]):
                assert f"measurements.{i}.peaks.intensity.{j}.mean_nm" in _keys(numbers, "dls-alv")
        attune = runs["attune"]["result"]
        assert attune["size_nm"] is None  # a real file without a scatter calibration: no size, shown as such
        assert {"concentration_per_ml", "markers.CD63", "markers.CD81"} <= _keys(numbers, "flow-attune")
        assert any(n["data-run"] == "flow-attune" and n["data-key"] == "size_nm.median" and n["text"] == "—"
                   for n in numbers)
    # each column states its weighting, and why DLS is larger
    assert html.count('data-method="nta"') == 2 and "intensity-weighted" in html and "number-weighted" in html
    assert re.search(r"DLS sizes are larger than the number-weighted NTA", html)
    # the entered results, the warnings, settings and calibrations of each run
    assert info["tem"]["morphology"] in html and "SEC fractions 7-9" in html
    assert 'data-marker="CD63">positive' in html and 'data-marker="flotillin-1">positive' in html
    for warning in nta["warnings"]:
        assert escape(warning) in html
    assert nta["detection_volume"]["source"] in html and "suitability.calibration.file" in html
    assert "calibration.source" in html  # the flow calibration used


def test_purity_ratio_is_concentration_over_protein(runs, complete_info):
    store, info, _, _ = complete_info
    selected = [runs["nta"], runs["flow"]]
    html = sample_report(SAMPLE, selected, info)
    computed = [n for n in _parse(html).numbers if n["data-key"] == "particles_per_ug"]
    expected = {r["run_id"]: r["result"]["concentration_per_ml"] / 250.0 for r in selected}
    assert {n["data-run"]: float(n["data-value"]) for n in computed} == pytest.approx(expected, rel=1e-12)
    for n in computed:
        assert _shown_equals(n["text"], expected[n["data-run"]], "conc")
    assert "particles/µg" in html
    assert [r["particles_per_ug"] for r in purity_ratios(selected, info)] == pytest.approx(list(expected.values()))
    assert purity_ratios(selected, {**info, "protein_ug_per_ml": None}) == []


def test_report_is_self_contained_and_printable(runs, complete_info):
    store, info, names, pixels = complete_info
    html = sample_report("<script>alert(1)</script>", [runs["nta"], runs["flow"]], info,
                         images=store.images(SAMPLE))
    parsed = _parse(html)
    assert "<script" not in html.lower() and "script" not in parsed.tags
    assert "http://" not in html and "https://" not in html and "link" not in parsed.tags
    assert "@media print" in html and "<svg" in html
    assert all(r.startswith("data:image/") for r in parsed.resources), parsed.resources
    # the images are the uploaded ones (the TIFF shown as PNG, its 16-bit pixels kept)
    shown = [cv2.imdecode(np.frombuffer(base64.b64decode(r.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
             for r in parsed.resources]
    assert len(shown) == 2 and np.array_equal(shown[0], pixels["png"]) and np.array_equal(shown[1], pixels["tif"])
    assert all(r.startswith("data:image/png;base64,") for r in parsed.resources)
    # nothing at all still makes a page
    empty = sample_report("nothing", [{"run_id": "r1", "method": "nta", "state": "queued"}], {})
    assert "No result with sizes" in empty and "r1" in empty and "<script" not in empty


def _statuses(runs, info) -> dict[str, str]:
    return {i["key"]: i["status"] for i in misev_checklist(runs, info)}


def test_checklist_of_a_complete_sample(runs, complete_info):
    _, info, _, _ = complete_info
    selected = [runs[k] for k in ("nta", "dls", "flow") if k in runs] + [runs["bead"]]
    items = misev_checklist(selected, info)
    statuses = {i["key"]: i["status"] for i in items}
    suitable = runs["nta"]["result"]["suitability"]["suitable"]  # the short bead check may pass or fail
    expected = {"particle_quantification": "done", "size": "done" if "dls" in runs else "partial",
                "protein_quantification": "done", "purity_ratio": "done", "transmembrane_marker": "done",
                "cytosolic_marker": "done", "negative_marker": "done", "single_vesicle_imaging": "done",
                "controls": "done", "system_suitability": "done" if suitable else "partial"}
    assert statuses == expected
    details = {i["key"]: i["detail"] for i in items}
    assert runs["nta"]["result"]["blank"]["run_id"] in details["controls"] and "buffer control" in details["controls"]
    assert "CD63 positive (western blot)" in details["transmembrane_marker"]
    assert "250 ug/mL (micro-BCA)" == details["protein_quantification"]
    bead = runs["bead"]["result"]["bead_check"]
    assert runs["bead"]["run_id"] in details["system_suitability"]
    assert ("passed" if bead["passed"] else "failed") in details["system_suitability"]
    # the report shows the same checklist
    html = sample_report(SAMPLE, selected, info)
    assert _parse(html).checks == [(i["key"], i["status"]) for i in items]
    assert "Welsh et al., J Extracell Vesicles 2024, 13:e12404" in html and "not a pass/fail list" in html


def test_checklist_of_incomplete_samples(runs):
    nothing = {"particle_quantification": "missing", "size": "missing", "protein_quantification": "missing",
               "purity_ratio": "missing", "transmembrane_marker": "missing", "cytosolic_marker": "missing",
               "negative_marker": "missing", "single_vesicle_imaging": "missing", "controls": "missing",
               "system_suitability": "missing"}
    assert _statuses([], {}) == nothing
    # one NTA run (its blank subtracted), nothing entered
    only_nta = _statuses([runs["nta"]], {})
    suitable = runs["nta"]["result"]["suitability"]["suitable"]
    assert only_nta == {**nothing, "particle_quantification": "done", "size": "partial", "controls": "done",
                        "system_suitability": "done" if suitable else "partial"}
    # markers tested but not shown: tetraspanins negative, calnexin present; TEM images without a description
    info = {"protein_ug_per_ml": 80.0, "protein_assay": "BCA",
            "western_blot": {"CD9": "negative", "CD63": "negative", "TSG101": "not tested", "calnexin": "positive"},
            "tem": {"morphology": "", "images": ["tem-01-0123456789ab.png"]}}
    partial = _statuses([runs["nta"]], info)
    assert partial["transmembrane_marker"] == "partial" and partial["negative_marker"] == "partial"
    assert partial["cytosolic_marker"] == "missing" and partial["single_vesicle_imaging"] == "partial"
    assert partial["purity_ratio"] == "done" and partial["protein_quantification"] == "done"
    if "dls" in runs:  # only an ensemble size: no particle count, size partial
        only_dls = _statuses([runs["dls"]], {})
        assert only_dls == {**nothing, "size": "partial"}
    # a flow run with its buffer control but no NTA: controls done, suitability still missing
    only_flow = _statuses([runs["flow"]], {})
    assert only_flow["controls"] == "done" and only_flow["system_suitability"] == "missing"
    assert only_flow["size"] == "partial" and only_flow["transmembrane_marker"] == "done"  # CD63 by flow


def test_sample_store_validates_and_writes_atomically(tmp_path):
    store = SampleStore(tmp_path)
    assert store.get(SAMPLE)["western_blot"]["calnexin"] == "not tested"
    bad = [({"protein_ug_per_ml": 0, "protein_assay": "BCA"}, "protein_ug_per_ml = 0"),
           ({"protein_ug_per_ml": -3, "protein_assay": "BCA"}, "finite number > 0"),
           ({"protein_ug_per_ml": "NaN", "protein_assay": "BCA"}, "finite number > 0"),
           ({"protein_ug_per_ml": float("inf"), "protein_assay": "BCA"}, "finite number > 0"),
           ({"protein_ug_per_ml": "lots", "protein_assay": "BCA"}, "'lots'"),
           ({"protein_ug_per_ml": True, "protein_assay": "BCA"}, "protein_ug_per_ml = True"),
           ({"protein_ug_per_ml": 100}, "name the assay"),
           ({"protein_ug_per_ml": 100, "protein_assay": "Lowry"}, "one of BCA, Bradford, micro-BCA, other"),
           ({"western_blot": {"CD63": "maybe"}}, "western_blot CD63 = 'maybe'"),
           ({"western_blot": ["CD63"]}, "give an object"),
           ({"tem": {"morphology": "x" * 2001}}, "tem.morphology: 2001 characters; at most 2000"),
           ({"tem": {"images": ["tem-01-0123456789ab.png"]}}, "no image 'tem-01-0123456789ab.png'"),
           ({"tem": {"magnification": 5000}}, "unknown field(s) magnification"),
           ({"protein": 5}, "unknown field(s) protein"),
           ({"notes": 5}, "notes = 5: give text")]
    for info, message in bad:
        with pytest.raises(ExoacqError, match=re.escape(message)) as caught:
            store.put(SAMPLE, info, operator="alice")
        assert caught.value.code == "bad_request" and "\n" not in str(caught.value)
    assert not (store.folder(SAMPLE) / "info.json").exists()  # nothing bad was stored
    with pytest.raises(ExoacqError, match="give the sample's name"):
        store.put("", {})

    entry = store.put(SAMPLE, {"protein_ug_per_ml": 12.5, "protein_assay": "bradford",
                               "western_blot": {"alix": "POSITIVE"}}, operator="alice")
    assert entry["protein_ug_per_ml"] == 12.5 and entry["protein_assay"] == "Bradford"
    assert entry["western_blot"]["Alix"] == "positive" and entry["western_blot"]["CD9"] == "not tested"
    assert entry["entered_by"] == "alice" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["entered"])
    # a later entry of one field keeps the others; null clears
    later = store.put(SAMPLE, {"notes": "re-measured"}, operator="bob")
    assert later["protein_ug_per_ml"] == 12.5 and later["notes"] == "re-measured" and later["entered_by"] == "bob"
    assert store.put(SAMPLE, {"protein_ug_per_ml": None})["protein_ug_per_ml"] is None
    assert json.loads((store.folder(SAMPLE) / "info.json").read_text())["notes"] == "re-measured"
    assert [p.name for p in store.folder(SAMPLE).iterdir() if p.name.endswith(".tmp")] == []

    # images: by their magic bytes, at most 20 MB, named by exoacq
    _, png = _png(3)
    for data, message in ((b"GIF89a" + bytes(100), "not a PNG, JPEG or TIFF"), (b"", "empty"),
                          (b"\x89PNG\r\n\x1a\n" + bytes(MAX_IMAGE_BYTES), "at most 20 MB")):
        with pytest.raises(ExoacqError, match=message):
            store.add_image(SAMPLE, "x.png", data)
    name = store.add_image(SAMPLE, "../../etc/passwd", png, operator="carol")
    assert re.fullmatch(r"tem-01-[0-9a-f]{12}\.png", name) and store.add_image(SAMPLE, "again.png", png) == name
    assert store.image_path(SAMPLE, name).read_bytes() == png
    assert store.get(SAMPLE)["tem"]["image_files"][name]["added_by"] == "carol"
    for unknown in ("../info.json", "tem-09-0123456789ab.png"):
        with pytest.raises(ExoacqError) as caught:
            store.image_path(SAMPLE, unknown)
        assert caught.value.code == "unknown_file"
    assert store.put(SAMPLE, {"tem": {"images": []}})["tem"]["images"] == []  # detached
    # the folder never comes from the user's text
    for hostile in ("../../etc", "a/b\\c", "..", "CON", "x" * 200):
        folder = sample_folder(hostile)
        assert re.fullmatch(r"[a-z0-9-]+", folder) and len(folder) <= 53 and store.folder(hostile).parent == store.root
    assert sample_folder("Lot 1") != sample_folder("lot 1")


def test_daemon_dls_and_flow_runs_in_the_report(runs):
    """The DLS and flow instruments' own runs (simulated), reported beside the NTA run."""
    for name in ("dls-daemon", "flow-daemon"):
        assert runs[name]["state"] == "done" and runs[name]["result"], \
            f"{name} {runs[name]['run_id']} {runs[name]['state']}: {runs[name].get('error')}"
    selected = [runs["nta"], runs["dls-daemon"], runs["flow-daemon"]]
    html = sample_report(SAMPLE, selected, {})
    numbers = _check_numbers(html, {r["run_id"]: r for r in selected})
    dls, flow = runs["dls-daemon"], runs["flow-daemon"]
    assert {"measurements.0.z_average_nm", "measurements.0.pdi"} <= _keys(numbers, dls["run_id"])
    assert {"concentration_per_ml", "size_nm.median", "markers.CD63"} <= _keys(numbers, flow["run_id"])
    assert headline(dls)["z_average_nm"] == dls["result"]["measurements"][0]["z_average_nm"]
    assert headline(flow)["markers"] == flow["result"]["markers"]
    assert _statuses(selected, {})["size"] == "done"
