"""The console's browser cannot climb above the daemon: processes started by the console's thread
cannot raise their CPU priority (exoacq.web.bench.forgo_raising_priority), whoever runs the bench,
and a browser in a session of its own gets that session's priority lowered (nice_other_sessions).

Run as root (as in CI), chromium sets its IO and compositor threads to nice -8 and its renderer to 0
whatever nice it was started at; a normal user's browser cannot. The child here tries the same.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from exoacq.web.bench import forgo_raising_priority, nice_other_sessions

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


def _autogroup(pid: int) -> list[str]:
    with open(f"/proc/{pid}/autogroup") as f:
        return f.read().split()  # ['/autogroup-N', 'nice', 'K']


def _autogroup_applies() -> bool:
    """Autogroups only group the tasks of the root cgroup: in a container's cgroup (as in CI) the
    kernel shows an empty /proc/PID/autogroup, and nice_other_sessions has nothing to do."""
    try:
        return bool(_autogroup(os.getpid()))
    except OSError:
        return False


@pytest.mark.skipif(not _autogroup_applies(),
                    reason="no autogroup scheduling for this process (kernel without it, or a container's cgroup)")
def test_a_child_in_a_session_of_its_own_gets_the_console_priority():
    """Chromium starts a session of its own (setsid); with autogroup scheduling the kernel shares the
    CPU between sessions before it looks at nice, so the session's own nice is lowered too."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        own = _autogroup(os.getpid())
        assert _autogroup(child.pid)[0] != own[0]  # a group of its own, at nice 0
        assert nice_other_sessions(19) >= 1
        assert _autogroup(child.pid)[1:] == ["nice", "19"]
        assert _autogroup(os.getpid()) == own  # this process's own session is left as it was
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(_autogroup_applies(), reason="autogroup scheduling applies here (the test above runs instead)")
def test_without_autogroup_scheduling_no_session_is_touched():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        assert nice_other_sessions(19) == 0
    finally:
        child.kill()
        child.wait()
