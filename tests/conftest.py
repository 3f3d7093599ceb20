"""Shared fixtures: a real daemon with simulated instruments, on free loopback ports."""
from __future__ import annotations

import json
import os
import pty
import tty
import subprocess
import sys
from pathlib import Path

import pytest

from exoacq.demo import start_daemon, stop_daemon

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "docs" / "schemas"
TESTDATA = ROOT.parent / "shared" / "testdata"


#: The test files that take longest (seconds on one worker of `make test`, 2 cores, measured 2026-12-03), run
#: first: `make test` passes `--no-loadscope-reorder`, so pytest-xdist hands files to its workers in this
#: order, and they end together. By default xdist orders files by their number of tests, which left the soak
#: (one test, 130 s) for the end, alone on one worker, while the other idled.
LONGEST_FILES = ("test_offline.py",       # 132 s
                 "test_soak.py",          # 131 s
                 "test_flow_daemon.py",   # 106 s
                 "test_sop_daemon.py",    # 73 s
                 "test_batch.py",         # 72 s
                 "test_accuracy.py",      # 71 s
                 "test_daemon.py",        # 67 s
                 "test_fuzz_control.py",  # 62 s
                 "test_durable_runs.py",  # 57 s
                 "test_nta_blank.py",     # 46 s
                 "test_no_traceback.py",  # 46 s
                 "test_daemon_inprocess.py")  # 45 s


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first (in LONGEST_FILES' order), then the others in their usual order."""
    rank = {name: k for k, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: a file's tests keep their order


def load_schema(topic: str) -> dict:
    return json.loads((SCHEMAS / f"{topic}.json").read_text())


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exoacq", *args], capture_output=True, text=True, timeout=timeout)


class RunningDaemon:
    def __init__(self, tmp: Path, env: dict[str, str] | None = None):
        self.data_dir = tmp / "data"
        self.log = tmp / "daemon.log"
        self.process, self.control = start_daemon(self.data_dir, self.log, env=env)
        from exoacq.bus import ControlClient
        with ControlClient(self.control) as client:
            self.endpoints = client.request("status")["endpoints"]

    def stop(self) -> int:
        return stop_daemon(self.process)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = RunningDaemon(tmp_path_factory.mktemp("daemon"))
    yield d
    if d.process.poll() is None:
        assert d.stop() == 0, d.log.read_text()
    assert "Traceback" not in d.log.read_text(), d.log.read_text()


def laser_settings(status: dict, instrument: str = "nta") -> dict:
    """The laser's present settings in a ``status`` reply."""
    return status["instruments"][instrument]["devices"]["laser"]["settings"]


def active_state(status: dict, instrument: str = "nta") -> str | None:
    """The state of the run active on an instrument (None when idle)."""
    return next((r["state"] for r in status["runs"] if r["instrument"] == instrument and r["state"] != "queued"), None)


@pytest.fixture(scope="module")
def chromium_browser():
    """A headless Debian chromium driven by Playwright (exoacq.web.browser), shared by a test file's tests
    (not the session's: Playwright's synchronous API keeps an event loop running in this thread while
    it is open, and the other files' asyncio.run() would refuse to start); the test is skipped, with
    the reason, where there is no chromium or no playwright."""
    from exoacq.web.browser import chromium_problem, launch_chromium
    problem = chromium_problem()
    if problem:
        pytest.skip(f"browser tests need a headless chromium: {problem}")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture
def silent_port():
    """A pseudo-terminal nobody serves: a serial device switched off or its cable loose."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    yield os.ttyname(slave)
    os.close(slave)
    os.close(master)
