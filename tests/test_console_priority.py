"""The console's browser cannot climb above the daemon: processes started by the console's thread
cannot raise their CPU priority (exoacq.web.bench.forgo_raising_priority), whoever runs the bench.

Run as root (as in CI), chromium sets its IO and compositor threads to nice -8 and its renderer to 0
whatever nice it was started at; a normal user's browser cannot. The child here tries the same.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from exoacq.web.bench import forgo_raising_priority

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice and capabilities are Linux's")

RAISE = "import os; os.setpriority(os.PRIO_PROCESS, 0, -8); print(os.getpriority(os.PRIO_PROCESS, 0))"


def test_a_process_started_by_the_console_thread_cannot_raise_its_priority():
    outcome: dict[str, subprocess.CompletedProcess] = {}

    def console_thread() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        forgo_raising_priority()
        outcome["child"] = subprocess.run([sys.executable, "-c", RAISE], capture_output=True, text=True, timeout=60)

    thread = threading.Thread(target=console_thread)
    thread.start()
    thread.join()
    child = outcome["child"]
    assert child.returncode != 0 and "PermissionError" in child.stderr, (child.stdout, child.stderr)
    # this thread (the test's) keeps what it had: the drop is the console thread's alone
    if os.geteuid() == 0:
        same = subprocess.run([sys.executable, "-c", RAISE], capture_output=True, text=True, timeout=60)
        assert same.returncode == 0 and same.stdout.strip() == "-8", same.stderr
