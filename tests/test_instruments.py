"""Several instruments on one daemon, faults that leave the others safe, preview and live settings.

The daemon runs in this process (real sockets on loopback, real simulators on pseudo-terminals and
VISA sockets) so that a test can pull a simulator's cable.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from conftest import run_cli
from exoacq.bus import ControlClient, decode_frame
from exoacq.config import load_config
from exoacq.daemon import Daemon
from exoacq.demo import free_tcp_endpoint
from exoacq.errors import ExoacqError
from exoacq.nta.bench import simulated_instrument_toml

pytestmark = pytest.mark.slow

SMALL_CAMERA = {"width": 320, "height": 240}


def _start(config) -> Daemon:
    config.daemon.control, config.daemon.results, config.daemon.frames = (free_tcp_endpoint() for _ in range(3))
    daemon = Daemon(config)
    daemon.start()
    thread = threading.Thread(target=lambda: (daemon.serve(), daemon.shutdown()))
    thread.start()

    def stop_now():
        daemon.request_stop()
        thread.join(timeout=15)
        assert not thread.is_alive()

    daemon.stop_now = stop_now
    return daemon


@pytest.fixture
def two_rigs(tmp_path):
    path = tmp_path / "two.toml"
    path.write_text(simulated_instrument_toml(name="rig-a", camera=SMALL_CAMERA) +
                    simulated_instrument_toml(name="rig-b", camera=SMALL_CAMERA))
    config = load_config(path)
    config.daemon.data_dir = tmp_path / "data"
    daemon = _start(config)
    yield daemon
    daemon.stop_now()


@pytest.fixture
def rig(tmp_path):
    """The simulated NTA instrument of `exoacq daemon --simulated` (laser, pump, camera, TEC)."""
    config = load_config(None)
    config.instruments = {"nta": config.instruments["nta"]}  # the other methods' instruments are not needed here
    config.daemon.data_dir = tmp_path / "data"
    daemon = _start(config)
    yield daemon
    daemon.stop_now()


def wait_for(predicate, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def final(client, run_id, timeout_s=60.0):
    return wait_for(lambda: (r := client.request("run", run_id=run_id))["state"] in ("done", "failed", "aborted")
                    and r, timeout_s, f"run {run_id} to end")


def test_two_instruments_record_at_once_and_a_third_run_waits_its_turn(two_rigs):
    with ControlClient(two_rigs.config.daemon.control) as client:
        with pytest.raises(ExoacqError, match="several instruments serve nta: rig-a, rig-b; name one"):
            client.request("acquire", method="nta", duration_s=1, captures=1)
        with pytest.raises(ExoacqError, match="unknown instrument 'rig-c'"):
            client.request("acquire", method="nta", instrument="rig-c", duration_s=1, captures=1)
        a = client.request("acquire", method="nta", instrument="rig-a", duration_s=3, captures=1, sample="a")
        b = client.request("acquire", method="nta", instrument="rig-b", duration_s=3, captures=1, sample="b")
        c = client.request("acquire", method="nta", instrument="rig-a", duration_s=1, captures=1, sample="c")
        assert (a["instrument"], b["instrument"], c["instrument"]) == ("rig-a", "rig-b", "rig-a")
        status = wait_for(lambda: (s := client.request("status"))["instruments"]["rig-a"]["state"] == "busy"
                          and s["instruments"]["rig-b"]["state"] == "busy" and s, what="both instruments busy")
        assert status["instruments"]["rig-a"]["queued"] == [c["run_id"]]
        assert status["instruments"]["rig-b"]["queued"] == []
        assert client.request("run", run_id=c["run_id"])["state"] == "queued"
        with pytest.raises(ExoacqError, match="several runs in progress"):
            client.request("stop")
        ra, rb, rc = (final(client, r["run_id"]) for r in (a, b, c))
    assert (ra["state"], rb["state"], rc["state"]) == ("done", "done", "done")
    assert ra["started"] < rb["finished"] and rb["started"] < ra["finished"]  # the two overlapped in time
    assert rc["started"] >= ra["finished"]  # the third waited for its instrument
    assert ra["result"]["instrument"] == "rig-a" and rb["result"]["instrument"] == "rig-b"
    assert ra["result"]["frames"]["acquired"] == rb["result"]["frames"]["acquired"] == 75


def test_a_laser_unplugged_mid_capture_fails_the_run_leaves_the_rest_safe_and_is_reconnected(rig):
    slots = rig.runners["nta"].instrument.slots
    laser_sim = slots["laser"].simulator
    with ControlClient(rig.config.daemon.control) as client:
        run_id = client.request("acquire", method="nta", duration_s=30, captures=1)["run_id"]
        wait_for(lambda: client.request("run", run_id=run_id)["state"] == "acquiring", what="acquiring")
        wait_for(lambda: laser_sim.emitted_power_mw > 0, what="light")
        time.sleep(1.0)
        laser_sim.unplug()
        record = final(client, run_id, 15)
        assert record["state"] == "failed"
        assert record["error"].startswith("laser: serial I/O failed on port ")
        assert "Input/output error" in record["error"] or "did not answer" in record["error"]
        shown = run_cli("status", "--control", rig.config.daemon.control)  # the daemon still answers, as it was
        assert shown.returncode == 0, shown.stderr
        assert "laser        obis (simulated)" in shown.stdout and "reconnecting" in shown.stdout
        status = client.request("status")
        devices = status["instruments"]["nta"]["devices"]
        assert devices["laser"]["state"] == "reconnecting" and "laser" in devices["laser"]["error"]
        assert status["instruments"]["nta"]["state"] == "degraded"
        assert devices["camera"]["state"] == devices["pump"]["state"] == devices["temperature"]["state"] == "connected"
        assert devices["pump"]["settings"]["status"] == "stopped"
        assert devices["temperature"]["settings"]["setpoint_c"] == pytest.approx(25.0)
        refused = client.request("acquire", method="nta", duration_s=1, captures=1)["run_id"]
        assert "not connected: laser" in final(client, refused)["error"]
        laser_sim.start()  # the cable goes back in (a new port): the daemon reconnects by itself
        wait_for(lambda: client.request("status")["instruments"]["nta"]["devices"]["laser"]["state"] == "connected",
                 20, "the laser to reconnect")
        again = client.request("acquire", method="nta", duration_s=1, captures=1)["run_id"]
        assert final(client, again)["state"] == "done"
    assert laser_sim.emitted_power_mw == 0.0


def test_preview_publishes_frames_with_features_and_settings_change_within_their_ranges(rig):
    control = rig.config.daemon.control
    laser_sim = rig.runners["nta"].instrument.slots["laser"].simulator
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(rig.config.daemon.frames)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        with ControlClient(control) as client:
            settings = client.request("settings")["devices"]
            assert settings["camera"]["exposure_ms"]["unit"] == "ms"
            assert settings["laser"]["power_mw"]["maximum"] == 50.0
            assert client.request("preview", on=True) == {"instrument": "nta", "preview": True}
            wait_for(lambda: client.request("status")["instruments"]["nta"]["state"] == "preview", what="preview")
            assert sub.poll(10_000)
            header, frame = decode_frame(sub.recv_multipart(copy=False))
            assert header["preview"] is True and header["instrument"] == "nta" and header["run_id"] is None
            assert frame.shape == (480, 640) and frame.dtype == np.uint16
            assert len(header["features"]["x"]) > 3  # particles detected in the live image
            assert laser_sim.emitted_power_mw == pytest.approx(40.0)

            reply = client.request("set", device="camera", setting="exposure_ms", value=10.0)
            assert reply == {"instrument": "nta", "device": "camera", "setting": "exposure_ms", "value": 10.0,
                             "unit": "ms"}
            wait_for(lambda: _next_header(sub)["exposure_ms"] == 10.0, what="frames at the new exposure")
            assert client.request("set", device="laser", setting="power_mw", value=20.0)["value"] == 20.0
            wait_for(lambda: laser_sim.emitted_power_mw == pytest.approx(20.0), what="20 mW")
            with pytest.raises(ExoacqError, match=r"laser.power_mw = 80 mW is out of range 0..50 mW"):
                client.request("set", device="laser", setting="power_mw", value=80.0)
            with pytest.raises(ExoacqError, match="camera has no setting 'focus'"):
                client.request("set", device="camera", setting="focus", value=1.0)
            with pytest.raises(ExoacqError, match="takes a number in ms"):
                client.request("set", device="camera", setting="exposure_ms", value="short")

            # a run takes the instrument: the preview ends, the run records
            run_id = client.request("acquire", method="nta", duration_s=3, captures=1)["run_id"]
            wait_for(lambda: client.request("run", run_id=run_id)["state"] == "acquiring", what="acquiring")
            with pytest.raises(ExoacqError, match="cannot change during a run"):
                client.request("set", device="camera", setting="exposure_ms", value=12.0)
            # the holder's set point may change while recording; a capture it warms is said to have drifted
            assert client.request("set", device="temperature", setting="setpoint_c", value=40.0)["value"] == 40.0
            with pytest.raises(ExoacqError, match="is running a run"):
                client.request("preview", on=True)
            ended = final(client, run_id)
            assert ended["state"] == "done"
            assert 25.5 < ended["result"]["temperature_c"] < 40.0, ended["result"]["temperature_c"]
            assert any(w.startswith("the sample's temperature changed from ") for w in ended["result"]["warnings"]), \
                ended["result"]["warnings"]
            client.request("set", device="temperature", setting="setpoint_c", value=25.0)
            assert client.request("preview", on=False)["preview"] is False
        assert laser_sim.emitted_power_mw == 0.0
    finally:
        sub.close(linger=0)
        ctx.term()


def _next_header(sub) -> dict:
    assert sub.poll(10_000)
    header, _ = decode_frame(sub.recv_multipart(copy=False))
    return header
