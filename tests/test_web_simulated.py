"""`exoacq web --simulated`, the README's one command: a simulated daemon and the console on it, both
stopped together."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow


def test_web_simulated_serves_a_simulated_daemon_and_stops_it(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "exoacq", "web", "--simulated", "--listen", "127.0.0.1:0",
                                "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
            url = found and found.group(1)
        assert url, "".join(lines)
        with urllib.request.urlopen(url + "api/status", timeout=10) as reply:
            status = json.loads(reply.read())["result"]
        assert status["simulated"] and {"nta", "dls", "flow"} <= set(status["instruments"])
        assert status["data_dir"] == str(tmp_path / "simulated-daemon")
        with urllib.request.urlopen(url, timeout=10) as reply:  # the home page
            assert b'id="instruments"' in reply.read()
        daemon_pid = status["pid"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, process.stdout.read()
        with pytest.raises(ProcessLookupError):  # the daemon stopped with it
            os.kill(daemon_pid, 0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
