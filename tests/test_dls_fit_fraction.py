"""The DLS setting ``fit_fraction`` reaches the stored result, not only the live fit: analyze_record,
``exoacq analyze dls --fit-fraction`` and the daemon's correlator-folder analysis (real ALV files)."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from conftest import TESTDATA, run_cli
from exoacq.dls.analysis import DEFAULT_FIT_FRACTION, analyze_record
from exoacq.dls.io import read_dls_file
from test_daemon import plain_subscriber
from test_dls_daemon import correlator_folder_config

ALV = TESTDATA / "dls" / "alv-cgs3"
SAMPLE = ALV / "080622_3_0031_averaged.ASC"  # 70 degrees, three 10 s runs averaged
needs_alv = pytest.mark.skipif(not SAMPLE.is_file(), reason=f"real ALV file not found at {SAMPLE} (../shared/testdata)")


def _fractions(measurement: dict) -> set[float]:
    return {fit["fit_fraction"] for fit in measurement["cumulants"].values()}


@needs_alv
def test_analyze_record_uses_and_records_the_fit_fraction():
    record = read_dls_file(SAMPLE)
    default = analyze_record(record)["measurements"][0]
    at_01 = analyze_record(record, fit_fraction=0.1)["measurements"][0]
    at_03 = analyze_record(record, fit_fraction=0.3)["measurements"][0]
    assert DEFAULT_FIT_FRACTION == 0.1
    assert default["gamma_per_s"] == at_01["gamma_per_s"] and default["z_average_nm"] == at_01["z_average_nm"]
    assert set(default["cumulants"]) == {"1", "2", "3"}
    assert _fractions(default) == _fractions(at_01) == {0.1}
    assert _fractions(at_03) == {0.3}
    assert at_03["gamma_per_s"] != pytest.approx(at_01["gamma_per_s"], rel=1e-6)
    assert at_03["z_average_nm"] != pytest.approx(at_01["z_average_nm"], rel=1e-6)
    # fewer channels fitted when the fit stops higher up the decay
    assert at_03["cumulants"]["2"]["points"] < at_01["cumulants"]["2"]["points"]


@needs_alv
@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_analyze_record_refuses_a_fraction_outside_0_1(bad):
    with pytest.raises(ValueError, match="fit_fraction"):
        analyze_record(read_dls_file(SAMPLE), fit_fraction=bad)


@needs_alv
def test_cli_fit_fraction_matches_analyze_record_and_refuses_bad_values():
    proc = run_cli("analyze", "dls", str(SAMPLE), "--fit-fraction", "0.3", "--json")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)["measurements"][0]
    direct = analyze_record(read_dls_file(SAMPLE), fit_fraction=0.3)["measurements"][0]
    assert printed["gamma_per_s"] == pytest.approx(direct["gamma_per_s"], rel=1e-12)
    assert printed["z_average_nm"] == pytest.approx(direct["z_average_nm"], rel=1e-12)
    assert printed["pdi"] == pytest.approx(direct["pdi"], rel=1e-12)
    assert _fractions(printed) == {0.3}
    for bad in ("1.5", "0", "nan", "x"):
        refused = run_cli("analyze", "dls", str(SAMPLE), "--fit-fraction", bad, "--json")
        assert refused.returncode != 0 and refused.stdout == ""
        assert "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "--fit-fraction" in refused.stderr
    helped = run_cli("analyze", "dls", "--help")
    assert helped.returncode == 0 and "--fit-fraction" in helped.stdout and "22412" in helped.stdout


@needs_alv
@pytest.mark.slow
def test_daemon_result_uses_the_configured_fit_fraction(tmp_path):
    """A hardware correlator's file, analysed by the daemon (DLSService.analyse_file) with the
    instrument's settings: the stored result's cumulant fits are at the configured fraction."""
    from exoacq.demo import start_daemon, stop_daemon

    folder = tmp_path / "alv"
    folder.mkdir()
    config = correlator_folder_config(tmp_path / "alv.toml", folder, fit_fraction=0.25)
    process, control = start_daemon(tmp_path / "data", tmp_path / "daemon.log", extra=["--config", str(config)],
                                    simulated=False)
    try:
        status = json.loads(run_cli("status", "--json", "--control", control).stdout)
        with plain_subscriber(status["endpoints"]["results"], b"dls.result") as sub:
            shutil.copy(SAMPLE, folder / "sample.ASC")
            document = None
            deadline = time.monotonic() + 30
            while document is None and time.monotonic() < deadline:
                if sub.poll(500):
                    document = json.loads(sub.recv_multipart()[1])
    finally:
        assert stop_daemon(process) == 0
    assert document is not None, (tmp_path / "daemon.log").read_text()
    stored = document["measurements"][0]
    assert _fractions(stored) == {0.25}
    expected = analyze_record(read_dls_file(folder / "sample.ASC"), fit_fraction=0.25)["measurements"][0]
    assert stored["z_average_nm"] == pytest.approx(expected["z_average_nm"], rel=1e-12)
    at_default = analyze_record(read_dls_file(folder / "sample.ASC"))["measurements"][0]
    assert stored["z_average_nm"] != pytest.approx(at_default["z_average_nm"], rel=1e-6)
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()
