"""The systemd units parse and are hardened (the daemon's notify protocol on a real socket:
tests/test_lab_service.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from exoacq.sdnotify import Watchdog, watchdog_interval_s

#: Hardening every unit has (issue #12); exoacq.service also reaches instruments' device classes.
HARDENING = ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
             "DevicePolicy=closed", "CapabilityBoundingSet=", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
             "ProtectControlGroups=yes", "LockPersonality=yes", "SystemCallFilter=@system-service",
             "RestrictNamespaces=yes", "SystemCallArchitectures=native"]
DEVICES = ["DeviceAllow=char-ttyUSB rw", "DeviceAllow=char-ttyACM rw", "DeviceAllow=char-video4linux rw",
           "DeviceAllow=char-usb_device rw", "DeviceAllow=char-usb rw"]


def _directives(unit: str) -> list[str]:
    return [line.strip() for line in unit.splitlines() if line.strip() and not line.startswith(("#", "["))]


@pytest.mark.parametrize("name, command", [("exoacq.service", "daemon --config"),
                                           ("exoacq-tracker@.service", "worker --frames"),
                                           ("exoacq-web.service", "web --listen")])
def test_unit_verifies(tmp_path, name, command):
    unit = (ROOT / "systemd" / name).read_text()
    directives = _directives(unit)
    assert f"/opt/exoacq/.venv/bin/exoacq {command}" in unit
    assert set(HARDENING) <= set(directives), set(HARDENING) - set(directives)
    # numba JITs (LLVM maps code writable, then executable): W^X would kill the daemon at import.
    assert not any(d.startswith("MemoryDenyWriteExecute") for d in directives)
    if name == "exoacq.service":  # the laser guard runs after the daemon, however it ended
        assert "ExecStopPost=/opt/exoacq/.venv/bin/exoacq laser off --config /etc/exoacq/exoacq.toml" in unit
        assert {"Type=notify", "NotifyAccess=main", "WatchdogSec=30s", "User=exoacq", "StateDirectory=exoacq",
                "SupplementaryGroups=dialout video", *DEVICES} <= set(directives)
        assert "PrivateDevices=yes" not in directives  # it would hide /dev/ttyUSB* and the cameras
        assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK" in directives
    elif name == "exoacq-web.service":  # off loopback: TLS, a login, and its secrets as credentials
        assert {"DynamicUser=yes", "PrivateDevices=yes", "StateDirectory=exoacq-web"} <= set(directives)
        assert "--operators ${CREDENTIALS_DIRECTORY}/operators.toml" in unit and "--tls-key ${CREDENTIALS_DIRECTORY}" in unit
    else:  # the worker does not ping: no watchdog, restarted whenever it ends
        assert {"DynamicUser=yes", "Restart=always", "PrivateDevices=yes"} <= set(directives)
        assert not any(d.startswith("WatchdogSec") for d in directives)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    exoacq = Path(sys.executable).parent / "exoacq"
    path = tmp_path / name.replace("@.service", "@1.service")
    path.write_text(unit.replace("/opt/exoacq/.venv/bin/exoacq", str(exoacq)))
    proc = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
    # systemd-analyze exits 0 on some parse errors ("ignoring"): any output is a failure.
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == "", proc.stderr


def test_watchdog_interval_from_the_environment():
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}) == 0.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None  # not us
    assert watchdog_interval_s({}) is None and watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert Watchdog({"WATCHDOG_USEC": "1000000"}).enabled is False  # no NOTIFY_SOCKET: nothing to say


def test_numba_needs_memory_that_becomes_executable():
    """Why the units leave MemoryDenyWriteExecute= off: under the same policy (the kernel's
    PR_SET_MDWE, which systemd uses where it exists) numba cannot even be imported (llvmlite checks
    that it can make JIT code executable), and the daemon and the workers import it through trackpy."""
    code = ("import ctypes, sys\n"
            "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0: sys.exit(77)\n"  # PR_SET_MDWE
            "import numba\n"
            "print(numba.njit(lambda x: x + 1)(1))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode != 0 and proc.stdout.strip() != "2", (proc.returncode, proc.stdout)
    assert proc.returncode < 0 or "cannot allocate executable memory" in proc.stderr, proc.stderr
