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


def test_shutdown_during_a_run_turns_the_laser_off(tmp_path):
    config = load_config(None, simulated=True)
    config.daemon.data_dir = tmp_path
    config.daemon.control, config.daemon.results, config.daemon.frames = (free_tcp_endpoint() for _ in range(3))
    daemon = Daemon(config)
    daemon.start()
    thread = threading.Thread(target=lambda: (daemon.serve(), daemon.shutdown()))
    thread.start()
    laser = daemon.instruments.simulators["laser"]
    try:
        with ControlClient(config.daemon.control) as client:
            client.request("acquire", method="nta", duration_s=60)
            deadline = time.monotonic() + 20
            while laser.emitted_power_mw == 0:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert laser.emitted_power_mw == pytest.approx(40.0)
    finally:
        daemon.request_stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert laser.emitted_power_mw == 0.0
    sent = [line for direction, line in laser.transcript if direction == "rx"]
    assert sent[-1].upper().startswith("SOUR:AM:STAT OFF")
