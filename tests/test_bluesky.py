"""Runs as bluesky event-model documents: published live, valid against event-model's own schemas,
exported as JSONL that reads back to the same documents."""
from __future__ import annotations

import json
import time

import pytest

from conftest import run_cli
from exoacq.bluesky import RunDocuments, flatten, read_jsonl, units_of, validate
from test_daemon import plain_subscriber


def test_flattening_keeps_units_from_the_key_names():
    fields = flatten({"schema": "x", "size_nm": {"mean": 101.0, "d50": 100.0}, "concentration_per_ml": 3e8,
                      "histogram": {"bin_centres_nm": [50.0, 60.0]}, "tracks": {"used": 12}})
    assert set(fields) == {"size_nm__mean", "size_nm__d50", "concentration_per_ml", "histogram__bin_centres_nm",
                           "tracks__used"}
    assert units_of(("size_nm", "mean")) == "nm" and units_of(("concentration_per_ml",)) == "1/mL"
    assert units_of(("histogram", "bin_centres_nm")) == "nm" and units_of(("tracks", "used")) is None
    settings = {"dilution": 10.0}
    docs = RunDocuments(run_id="r", method="nta", instrument="nta", sample="s", settings=settings, time_s=1.0)
    settings["temperature_start_c"] = 25.0  # what a run adds later is not in its RunStart (published as it started)
    assert docs.start()[0][1]["exoacq_settings"] == {"dilution": 10.0}
    pairs = docs.start() + docs.add("progress", {"frames": {"acquired": 3}, "size_nm": {"mean": None}}, 2.0)
    pairs += docs.add("progress", {"frames": {"acquired": 5}, "new": 1.0}, 3.0) + docs.stop("success", "", 4.0)
    for name, doc in pairs:
        validate(name, doc)
    descriptor = pairs[1][1]
    assert descriptor["data_keys"]["frames__acquired"]["dtype"] == "integer"
    assert descriptor["data_keys"]["size_nm__mean"]["units"] == "nm"
    assert pairs[3][1]["data"] == {"frames__acquired": 5, "size_nm__mean": None}  # the descriptor's keys, always
    assert pairs[-1][1]["num_events"] == {"progress": 2}


@pytest.mark.slow
def test_an_nta_run_is_published_and_exported_as_valid_event_model_documents(daemon, tmp_path):
    received = []
    with plain_subscriber(daemon.endpoints["results"], b"bluesky.") as sub:
        proc = run_cli("acquire", "nta", "--duration", "2", "--captures", "2", "--sample", "bluesky", "--json",
                       "--control", daemon.control)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(t == b"bluesky.stop" for t, _ in received):
            if sub.poll(200):
                received.append(tuple(sub.recv_multipart()))
    published = [(t.decode().removeprefix("bluesky."), json.loads(d)) for t, d in received]
    start_uid = next(doc["uid"] for name, doc in published if name == "start" and doc["run_id"] == result["run_id"])
    mine = [(n, d) for n, d in published if d.get("uid") == start_uid or d.get("run_start") == start_uid
            or d.get("descriptor") in {x["uid"] for nn, x in published if nn == "descriptor" and x["run_start"] == start_uid}]
    for name, doc in mine:
        validate(name, doc)
    names = [n for n, _ in mine]
    assert names[0] == "start" and names[-1] == "stop" and mine[-1][1]["exit_status"] == "success"
    start = mine[0][1]
    assert (start["sample"], start["method"], start["instrument"], start["dilution"]) == ("bluesky", "nta", "nta", 1.0)
    assert start["calibration"].endswith("simulated-camera.toml")  # the instrument's calibration file
    assert start["method_settings"]["detection_volume_source"].startswith("simulated-camera.toml v5")
    descriptors = {d["name"]: d for n, d in mine if n == "descriptor"}
    assert set(descriptors) == {"progress", "result", "captures"}
    result_keys = descriptors["result"]["data_keys"]
    assert result_keys["size_nm__mean"]["units"] == "nm" and result_keys["concentration_per_ml"]["units"] == "1/mL"
    assert result_keys["histogram__bin_centres_nm"]["dtype"] == "array"
    events = {d["uid"]: d for n, d in mine if n == "event"}
    result_event = next(e for e in events.values() if e["descriptor"] == descriptors["result"]["uid"])
    assert result_event["data"]["size_nm__mean"] == pytest.approx(result["size_nm"]["mean"])
    assert mine[-1][1]["num_events"]["captures"] == 2

    out = tmp_path / "run.jsonl"
    proc = run_cli("export", "bluesky", result["run_id"], "--output", str(out), "--control", daemon.control)
    assert proc.returncode == 0, proc.stderr
    exported = list(read_jsonl(out))
    # the JSONL export reads back to the very documents published, less the bus's own seq and daemon
    assert exported == [(n, {k: v for k, v in d.items() if k not in ("seq", "daemon")}) for n, d in mine]
    assert all("seq" in d and "daemon" in d for n, d in mine if n != "event")
    missing = run_cli("export", "bluesky", "nta-nope", "--control", daemon.control)
    assert missing.returncode == 1 and "no run with id 'nta-nope'" in missing.stderr
