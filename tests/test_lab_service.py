"""The daemon as systemd and a monitoring system see it, on one real daemon (one simulated NTA
instrument, started as systemd would with NOTIFY_SOCKET and a 1 s watchdog):

* the notify protocol on a real AF_UNIX datagram socket: READY, STATUS lines that follow what it
  does, WATCHDOG pings from its main loop every ~0.5 s that stop while it hangs (SIGSTOP), and
  STOPPING on SIGTERM (checked when the module's daemon stops);
* the Prometheus endpoint scraped over HTTP during and after a short run: its numbers match the
  run's own documents and the catalog.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import run_cli
from exoacq.bus import ControlClient
from exoacq.client import follow_run
from exoacq.demo import start_daemon, stop_daemon
from exoacq.nta.bench import simulated_instrument_toml

pytestmark = pytest.mark.slow


class Notifications:
    """The datagrams the daemon sends to our NOTIFY_SOCKET, with when they arrived."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def drain(self) -> list[str]:
        """What is already queued (sent before now: when exactly is unknown)."""
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096, socket.MSG_DONTWAIT).decode())
            except (BlockingIOError, socket.timeout):  # nothing queued (socket.timeout: in timeout mode)
                return out

    def collect(self, seconds: float) -> list[tuple[float, str]]:
        end, got = time.monotonic() + seconds, []
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append((time.monotonic(), self.sock.recv(4096).decode()))
            except socket.timeout:
                break
        return got

    def wait_for(self, pattern: str, seconds: float) -> str:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            if re.search(pattern, message):
                return message
        raise AssertionError(f"no notification matching {pattern!r} within {seconds:g} s")


class Service:
    def __init__(self, process, control: str, notes: Notifications, early: list[str]):
        self.process, self.control, self.notes, self.early = process, control, notes, early


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    address = str(tmp / "notify.sock")
    config = tmp / "nta.toml"  # one instrument with a small camera: quick to start, stop and track
    config.write_text(simulated_instrument_toml(camera={"width": 320, "height": 240}))
    log = tmp / "daemon.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}  # systemd's WatchdogSec=1s
        env.pop("WATCHDOG_PID", None)
        process, control = start_daemon(tmp / "data", log, extra=["--config", str(config)], env=env)
        notes = Notifications(sock)
        try:
            yield Service(process, control, notes, notes.drain())
        finally:
            os.kill(process.pid, signal.SIGCONT)  # in case a test stopped it and failed
            assert stop_daemon(process) == 0
            notes.wait_for(r"^STOPPING=1$", 2.0)
    assert "Traceback" not in log.read_text(), log.read_text()


def test_ready_status_and_watchdog_pings_that_stop_when_hung(service):
    notes = service.notes
    assert re.fullmatch(r"READY=1\nSTATUS=serving \d+ instrument\(s\) on tcp://127\.0\.0\.1:\d+", service.early[0])
    assert [m for m in service.early if m.startswith("STATUS=")][-1] == "STATUS=serving 1 instrument: nta idle"
    notes.drain()
    pings = [t for t, m in notes.collect(1.8) if m == "WATCHDOG=1"]  # WATCHDOG_USEC / 2 apart
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert len(pings) >= 3 and max(gaps) < 1.0, gaps  # never a gap systemd would take for a hang
    assert 0.4 < (pings[-1] - pings[0]) / len(gaps) < 0.75, gaps  # about every 0.5 s

    os.kill(service.process.pid, signal.SIGSTOP)  # hung: its main loop does not run
    try:
        time.sleep(0.05)
        notes.drain()  # sent before it stopped
        assert [m for _, m in notes.collect(1.2) if m == "WATCHDOG=1"] == []  # systemd would restart it now
    finally:
        os.kill(service.process.pid, signal.SIGCONT)
    notes.wait_for(r"^WATCHDOG=1$", 1.0)


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of the endpoint, keyed by (sample name, labels)."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_status_and_metrics_follow_a_run(service):
    """During the run: STATUS names it, the endpoint shows it in progress with a latency; after it:
    frame counters equal the result's, run counts equal the catalog's."""
    with ControlClient(service.control) as client:
        url = client.request("status")["metrics"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        documents: list[tuple[str, dict]] = []
        outcome: dict = {}

        def run() -> None:
            with ControlClient(service.control) as own:
                outcome["result"] = follow_run(own, {"method": "nta", "duration_s": 2.0, "captures": 1,
                                                     "sample": "metrics"},
                                               on_document=lambda t, d: documents.append((t, d)), timeout_s=60)

        runner = threading.Thread(target=run)
        runner.start()
        during = None
        while runner.is_alive() and during is None:  # while it acquires: a run in progress, a latency
            samples = scrape(url)
            if sample(samples, "exoacq_frame_to_result_latency_seconds", instrument="nta") is not None:
                during = samples
            time.sleep(0.1)
        runner.join()
        result = outcome["result"]
        service.notes.wait_for(rf"^STATUS=serving 1 instrument: nta: run {result['run_id']} acquiring capture 1/1$",
                               1.0)  # queued while the run went on
        service.notes.wait_for(r"^STATUS=serving 1 instrument: nta idle$", 10.0)
        time.sleep(0.6)  # the main loop refreshes the snapshot every 0.5 s
        after = scrape(url)
        runs = client.request("runs")

    assert during is not None, "no scrape saw the run acquiring"
    assert sample(during, "exoacq_run_in_progress", instrument="nta", method="nta") == 1
    assert 0 <= sample(during, "exoacq_frame_to_result_latency_seconds", instrument="nta") < 5.0
    assert sample(during, "exoacq_tracker_backlog_frames", instrument="nta") >= 0

    frames = result["frames"]
    assert frames["acquired"] > 0 and frames["processed"] > 0
    assert sample(after, "exoacq_frames_received_total", instrument="nta") == frames["acquired"]
    assert sample(after, "exoacq_frames_processed_total", instrument="nta") == frames["processed"]
    for by in ("camera", "tracker"):
        assert sample(after, "exoacq_frames_dropped_total", instrument="nta", by=by) == frames["dropped_by"][by]
    progress = [d for t, d in documents if t == "nta.progress"]
    assert progress and progress[-1]["frames"]["acquired"] <= frames["acquired"]
    assert sample(after, "exoacq_run_in_progress", instrument="nta", method="nta") == 0
    assert sample(after, "exoacq_device_state", instrument="nta", device="laser", driver="obis",
                  state="connected") == 1

    catalog = Counter((r["instrument"], r["state"]) for r in runs)
    exported = {(dict(labels)["instrument"], dict(labels)["state"]): value
                for (name, labels), value in after.items() if name == "exoacq_runs"}
    assert exported == dict(catalog) and exported[("nta", "done")] == 1

    # one result published since this daemon started (follow_run gives it without its transport fields)
    assert sample(after, "exoacq_published_documents_total", topic="nta.result") == 1
    assert sample(after, "exoacq_control_requests_total") >= 4
    assert sample(after, "exoacq_daemon_uptime_seconds") > 0
    assert time.time() - sample(after, "exoacq_metrics_snapshot_timestamp_seconds") < 5
    assert sample(after, "process_open_fds") > 0

    status = run_cli("status", "--control", service.control, timeout=30)
    assert status.returncode == 0 and f"  metrics  {url}" in status.stdout.splitlines(), status.stdout
