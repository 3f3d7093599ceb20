"""Shutdown leaves the hardware safe: checked at the simulated laser itself."""
from __future__ import annotations

import threading
import time

import pytest

from exoacq.bus import ControlClient
from exoacq.config import load_config
from exoacq.daemon import Daemon
from exoacq.demo import free_tcp_endpoint

pytestmark = pytest.mark.slow


@pytest.fixture
def inprocess_daemon(tmp_path):
    """A daemon with simulated instruments in this process; ``daemon.stop_now()`` stops it (idempotent)."""
    config = load_config(None, simulated=True)
    config.daemon.data_dir = tmp_path
    config.daemon.control, config.daemon.results, config.daemon.frames = (free_tcp_endpoint() for _ in range(3))
    daemon = Daemon(config)
    daemon.start()
    thread = threading.Thread(target=lambda: (daemon.serve(), daemon.shutdown()))
    thread.start()

    def stop_now():
        daemon.request_stop()
        thread.join(timeout=10)
        assert not thread.is_alive()

    daemon.stop_now = stop_now
    yield daemon
    stop_now()


def test_shutdown_during_a_run_turns_the_laser_off(inprocess_daemon):
    laser = inprocess_daemon.runners["nta"].instrument.slots["laser"].simulator
    with ControlClient(inprocess_daemon.config.daemon.control) as client:
        client.request("acquire", method="nta", duration_s=60, captures=1)
        deadline = time.monotonic() + 20
        while laser.emitted_power_mw == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert laser.emitted_power_mw == pytest.approx(40.0)
    inprocess_daemon.stop_now()
    assert laser.emitted_power_mw == 0.0
    sent = [line for direction, line in laser.transcript if direction == "rx"]
    assert sent[-1].upper().startswith("SOUR:AM:STAT OFF")


def wait_for_state(client, run_id, states, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while (record := client.request("run", run_id=run_id))["state"] not in states:
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
    return record


def test_an_open_interlock_fails_the_run_with_the_lasers_own_words(inprocess_daemon):
    laser = inprocess_daemon.runners["nta"].instrument.slots["laser"].simulator
    laser.interlock_open = True
    with ControlClient(inprocess_daemon.config.daemon.control) as client:
        run_id = client.request("acquire", method="nta", duration_s=2, captures=1)["run_id"]
        record = wait_for_state(client, run_id, {"done", "failed", "aborted"})
        assert record["state"] == "failed"
        assert "interlock open" in record["error"]
        assert laser.emitted_power_mw == 0.0
        laser.interlock_open = False  # the operator closes the lid: the next run works
        run_id = client.request("acquire", method="nta", duration_s=1, captures=1)["run_id"]
        assert wait_for_state(client, run_id, {"done", "failed", "aborted"})["state"] == "done"


def test_runs_queue_and_execute_in_order(inprocess_daemon):
    with ControlClient(inprocess_daemon.config.daemon.control) as client:
        first = client.request("acquire", method="nta", duration_s=1, captures=1, sample="first")["run_id"]
        second = client.request("acquire", method="nta", duration_s=1, captures=1, sample="second")["run_id"]
        third = client.request("acquire", method="nta", duration_s=1, captures=1, sample="third")["run_id"]
        assert client.request("run", run_id=second)["state"] == "queued"
        assert client.request("stop", run_id=third) == {"run_id": third, "state": "aborted"}
        done = [wait_for_state(client, r, {"done", "failed", "aborted"}) for r in (first, second, third)]
        assert [r["state"] for r in done] == ["done", "done", "aborted"]
        assert done[0]["finished"] <= done[1]["started"]
        assert done[2]["error"] == "stopped by the operator before it started"


def test_the_daemon_keeps_only_recent_finished_runs_in_memory(inprocess_daemon, monkeypatch):
    import exoacq.daemon as daemon_module
    monkeypatch.setattr(daemon_module, "RUNS_IN_MEMORY", 2)
    with ControlClient(inprocess_daemon.config.daemon.control) as client:
        run_ids = []
        for _ in range(4):
            run_ids.append(client.request("acquire", method="nta", duration_s=0.2, captures=1)["run_id"])
            wait_for_state(client, run_ids[-1], {"done", "failed", "aborted"})
        assert len(inprocess_daemon._runs) <= 3  # the new one and two finished
        assert run_ids[0] not in inprocess_daemon._runs
        assert client.request("run", run_id=run_ids[0])["state"] == "done"  # still in the store
