"""The metrics endpoint's address (exoacq.metrics): loopback unless allowed, refused with one line
(the endpoint of a running daemon, scraped during a run: tests/test_lab_service.py)."""
from __future__ import annotations

import pytest

from conftest import run_cli
from exoacq.demo import free_tcp_endpoint
from exoacq.errors import ConfigError
from exoacq.metrics import parse_address


def test_metrics_off_loopback_is_refused_with_one_line(tmp_path):
    proc = run_cli("daemon", "--simulated", "--data-dir", str(tmp_path / "data"), "--control", free_tcp_endpoint(),
                   "--results", free_tcp_endpoint(), "--frames", free_tcp_endpoint(), "--metrics", "0.0.0.0:9464",
                   timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("exoacq: error: metrics = '0.0.0.0:9464': not a loopback address"), proc.stderr
    assert "--metrics-allow-remote" in lines[-1]
    assert not [line for line in lines if " ready: " in line]  # refused before it served anything


def test_metrics_address_forms():
    assert parse_address("off") is None
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address("localhost:9464") == ("localhost", 9464)
    assert parse_address("192.0.2.7:9464", allow_remote=True) == ("192.0.2.7", 9464)
    for bad in ("9464", "127.0.0.1:http", "127.0.0.1:70000", ":9464"):
        with pytest.raises(ConfigError, match="must be HOST:PORT"):
            parse_address(bad)
    with pytest.raises(ConfigError, match="not a loopback address"):
        parse_address("192.0.2.7:9464")
