"""The operator's console keeps up with a 1280x1024 camera and costs the acquisition nothing.

`exoacq bench realtime --console`: the daemon with its simulated camera at the bench's
default size and rate, `exoacq web` and a headless chromium on /live/nta attached
throughout a 10 s capture. The camera plays frames the simulated camera rendered before the
capture (the bench's default, ``--camera replay``): the host spends on it what it spends on a
real camera, not the simulator's rendering.
"""
from __future__ import annotations

import json

import pytest

from exoacq.web.browser import chromium_problem

from conftest import run_cli

# realtime: asserts no dropped frame, so it runs alone (see Makefile)
pytestmark = [pytest.mark.slow, pytest.mark.realtime]


def test_live_view_keeps_up_and_the_daemon_drops_nothing():
    problem = chromium_problem()
    if problem:
        pytest.skip(f"browser tests need a headless chromium: {problem}")
    proc = run_cli("bench", "realtime", "--console", "--duration", "10", "--json", timeout=240)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    settings, console = result["settings"], result["console"]
    assert (settings["width"], settings["height"], settings["camera"]) == (1280, 1024, "replay")
    assert result["replayed"]["frames"] == 300  # 10 s at 30 frames/s
    figures = json.dumps({"frames_dropped": result["frames_dropped"], "console": console})
    assert result["frames_dropped"] == 0, figures
    assert result["frames_published"] >= 0.9 * settings["fps"] * settings["duration_s"], figures
    assert console["fps"] >= 10, figures
    assert console["latency_ms"]["p95"] < 300, figures
    assert console["overlay_frames"] > 0, figures
    assert console["console_errors"] == [], figures
