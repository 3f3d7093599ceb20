"""DLS on the daemon: a photon-counting run beside an NTA run, live curves, a result that validates;
a hardware correlator's files analysed and published as they appear; the analyze verb."""
from __future__ import annotations

import json
import re
import shutil
import threading
import time

import jsonschema
import pytest

from conftest import TESTDATA, load_schema, run_cli
from exoacq.bus import without_transport
from test_daemon import plain_subscriber

ALV = TESTDATA / "dls" / "alv-cgs3"


def correlator_folder_config(path, folder, **settings):
    """A daemon config with one DLS instrument on a hardware correlator's export folder (checked every
    0.2 s), plus ``settings`` of the instrument; written to ``path``, returned."""
    extra = "".join(f"{key} = {value!r}\n" for key, value in settings.items())
    path.write_text(f"""
[instruments.zetasizer-room]
method = "dls"
[instruments.zetasizer-room.devices.correlator]
driver = "correlator-folder"
path = "{folder}"
settle_s = 0.3
[instruments.zetasizer-room.settings]
watch_interval_s = 0.2
{extra}""")
    return path
needs_testdata = pytest.mark.skipif(not ALV.is_dir(), reason=f"real ALV files not found at {ALV}")


@pytest.mark.slow
def test_dls_and_nta_runs_overlap_and_publish_valid_documents(daemon):
    received: list[tuple[str, dict]] = []
    results: dict[str, dict] = {}
    with plain_subscriber(daemon.endpoints["results"]) as sub:
        stop = threading.Event()

        def collect():
            while not stop.is_set():
                if sub.poll(100):
                    topic, payload = sub.recv_multipart()
                    received.append((topic.decode(), json.loads(payload)))

        collector = threading.Thread(target=collect)
        collector.start()

        def acquire(method, *args):
            proc = run_cli("acquire", method, *args, "--json", "--control", daemon.control, timeout=180)
            assert proc.returncode == 0, proc.stderr
            results[method] = json.loads(proc.stdout)

        try:
            threads = [threading.Thread(target=acquire, args=("dls", "--duration", "3", "--runs", "2")),
                       threading.Thread(target=acquire, args=("nta", "--duration", "4", "--captures", "1"))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=200)
            time.sleep(0.5)
        finally:
            stop.set()
            collector.join()
    dls, nta = results["dls"], results["nta"]
    assert dls["instrument"] == "dls" and nta["instrument"] == "nta"
    records = {m: json.loads(run_cli("runs", "show", r["run_id"], "--json", "--control", daemon.control).stdout)
               for m, r in results.items()}
    assert records["dls"]["started"] < records["nta"]["finished"] and records["nta"]["started"] < records["dls"]["finished"]

    progress = [d for t, d in received if t == "dls.progress" and d["run_id"] == dls["run_id"]]
    assert len(progress) >= 4
    schema = load_schema("dls.progress")
    for document in progress:
        jsonschema.validate(document, schema)
    live = [d for d in progress if d["g2_minus_1"]]
    assert live and live[-1]["lag_s"][0] == pytest.approx(25e-9) and live[-1]["count_rate_hz"] > 1e5
    # the live cumulant fit of the sub-run so far: near the sample's 100 nm once a sub-run is complete
    fitted = [d for d in progress if d["fit"]]
    assert fitted and fitted[-1]["fit"]["lag_s"][0] == pytest.approx(25e-9)
    assert fitted[-1]["fit"]["z_average_nm"] == pytest.approx(100.0, rel=0.15)
    final = [d for t, d in received if t == "dls.result" and d["run_id"] == dls["run_id"]]
    assert len(final) == 1 and without_transport(final[0]) == dls
    jsonschema.validate(dls, load_schema("dls.result"))
    measurement = dls["measurements"][0]
    assert measurement["angle_deg"] == pytest.approx(90.0)
    # 2 x 3 s beside an NTA run on 2 cores: the 2nd cumulant is noisy, and a PDI below -0.05 is said to be
    # meaningless (exoacq.dls.analysis.NEGATIVE_PDI_TOLERANCE); nothing else may be wrong with the measurement
    verdict = measurement["quality"]["verdict"]
    assert verdict == "ok" or re.fullmatch(r"warning: PDI -\d\.\d{3} below 0: the correlation is too noisy for the 2nd "
                                           r"cumulant \(measure longer, or more sub-runs\); the PDI is not meaningful",
                                           verdict), verdict
    # 2 x 3 s of a simulated 100 nm sample: a Z-average near 100 nm (accuracy: tests/test_dls_analysis.py)
    assert measurement["z_average_nm"] == pytest.approx(100.0, rel=0.1)
    assert (daemon.data_dir / "runs" / dls["run_id"] / "correlation.ASC").exists()


@needs_testdata
@pytest.mark.slow
def test_correlator_files_are_analysed_and_published_as_they_appear(tmp_path):
    from exoacq.demo import start_daemon, stop_daemon

    folder = tmp_path / "alv"
    folder.mkdir()
    shutil.copy(ALV / "080622_3_0027_0001.ASC", folder / "old.ASC")  # there before: not processed
    config = correlator_folder_config(tmp_path / "alv.toml", folder)
    process, control = start_daemon(tmp_path / "data", tmp_path / "daemon.log", extra=["--config", str(config)],
                                    simulated=False)
    try:
        status = json.loads(run_cli("status", "--json", "--control", control).stdout)
        with plain_subscriber(status["endpoints"]["results"], b"dls.result") as sub:
            shutil.copy(ALV / "080622_3_0031_averaged.ASC", folder / "sample-70deg.ASC")
            (folder / "broken.ASC").write_bytes((ALV / "080622_3_0035_0001.ASC").read_bytes()[:1500])
            documents = []
            deadline = time.monotonic() + 30
            while len(documents) < 2 and time.monotonic() < deadline:
                if sub.poll(500):
                    documents.append(json.loads(sub.recv_multipart()[1]))
        by_file = {d["source"].rsplit("/", 1)[-1]: d for d in documents}
        assert set(by_file) == {"sample-70deg.ASC", "broken.ASC"}
        schema = load_schema("dls.result")
        good, broken = by_file["sample-70deg.ASC"], by_file["broken.ASC"]
        for document in documents:
            jsonschema.validate(document, schema)
        assert good["run_id"] is None and good["instrument"] == "zetasizer-room"
        assert good["measurements"][0]["angle_deg"] == pytest.approx(70.0)
        assert good["measurements"][0]["z_average_nm"] > 0
        assert broken["complete"] is False and "broken.ASC" in broken["error"] and "line" in broken["error"]
        refused = run_cli("acquire", "dls", "--control", control)
        assert refused.returncode == 1 and "analysed and published as they appear" in refused.stderr
    finally:
        assert stop_daemon(process) == 0
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()


@needs_testdata
def test_analyze_dls_prints_every_angle_and_refuses_bad_files(tmp_path):
    proc = run_cli("analyze", "dls", str(ALV / "080622_3_0039_averaged.ASC"), "--json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    # one measurement per channel: the ALV-7004 cross-correlates its two detectors both ways
    assert [(m["angle_deg"], m["channel"]) for m in document["measurements"]] == [(150.0, "CH0/1"), (150.0, "CH1/0")]
    m = document["measurements"][0]
    for key in ("angle_deg", "wavelength_nm", "temperature_c", "viscosity_mpa_s", "refractive_index", "z_average_nm",
                "pdi", "intercept", "baseline", "distribution", "peaks", "quality", "warnings"):
        assert key in m, key
    assert set(m["distribution"]) >= {"diameter_nm", "intensity", "volume", "number"}
    text = run_cli("analyze", "dls", str(ALV / "080622_3_0039_averaged.ASC"))
    assert text.returncode == 0 and "Z-average" in text.stdout

    truncated = tmp_path / "cut.ASC"
    truncated.write_bytes((ALV / "080622_3_0039_averaged.ASC").read_bytes()[:2000])
    notalv = tmp_path / "notes.ASC"
    notalv.write_text("hello\nthis is not a correlator file\n")
    for bad in (truncated, notalv, tmp_path / "missing.ASC"):
        proc = run_cli("analyze", "dls", str(bad))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith("exoacq: error: ") and bad.name in lines[0]
