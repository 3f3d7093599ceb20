"""The systemd unit parses, and the daemon speaks the notify protocol on a real socket."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, RunningDaemon


@pytest.mark.parametrize("name, command", [("exoacq.service", "daemon --config"),
                                           ("exoacq-tracker@.service", "worker --frames")])
def test_unit_verifies(tmp_path, name, command):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    exoacq = Path(sys.executable).parent / "exoacq"
    unit = (ROOT / "systemd" / name).read_text()
    assert f"/opt/exoacq/.venv/bin/exoacq {command}" in unit
    if name == "exoacq.service":  # the laser guard runs after the daemon, however it ended
        assert "ExecStopPost=/opt/exoacq/.venv/bin/exoacq laser off --config /etc/exoacq/exoacq.toml" in unit
    path = tmp_path / name.replace("@.service", "@1.service")
    path.write_text(unit.replace("/opt/exoacq/.venv/bin/exoacq", str(exoacq)))
    proc = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
    # systemd-analyze exits 0 on some parse errors ("ignoring"): any output is a failure.
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == "", proc.stderr


@pytest.mark.slow
def test_daemon_notifies_ready_and_stopping(tmp_path):
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(10)
        daemon = RunningDaemon(tmp_path, env={**os.environ, "NOTIFY_SOCKET": address})
        ready = sock.recv(4096).decode()
        assert re.fullmatch(r"READY=1\nSTATUS=serving \d+ instrument\(s\) on tcp://127\.0\.0\.1:\d+", ready), ready
        assert daemon.stop() == 0
        assert sock.recv(4096).decode() == "STOPPING=1"
