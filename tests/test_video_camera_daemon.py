"""A recorded video replayed as a camera through the whole daemon gives the numbers of `exoacq analyze nta`."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT, run_cli
from exoacq.demo import start_daemon, stop_daemon

# realtime: asserts every frame of the video was tracked live (runs alone, see Makefile)
pytestmark = [pytest.mark.slow, pytest.mark.realtime]

CALIBRATION = ROOT / "calibrations" / "nta" / "simulated-camera.toml"


def test_a_video_played_through_the_file_camera_gives_the_offline_analysis_numbers(tmp_path):
    video = tmp_path / "beads.avi"
    made = run_cli("simulate", "video", str(video), "--frames", "250", "--seed", "3")
    assert made.returncode == 0, made.stderr
    config = tmp_path / "replay.toml"
    config.write_text(f"""
[instruments.replay]
method = "nta"
[instruments.replay.devices.laser]
driver = "obis"
simulated = true
[instruments.replay.devices.camera]
driver = "video-file"
path = "{video}"
pixel_size_um = 0.166
exposure_ms = 15.0
realtime = false          # as fast as the daemon asks: no frame lost to timing
[instruments.replay.devices.temperature]
driver = "ted4015"
simulated = true
setpoint_c = 25.0
output_on_connect = true
[instruments.replay.settings]
calibration = "{CALIBRATION}"
minmass = 300.0
frame_queue = 512         # every frame waits for the tracking core: none dropped
""")
    process, control = start_daemon(tmp_path / "data", tmp_path / "daemon.log", extra=["--config", str(config)],
                                    simulated=False)
    try:
        proc = run_cli("acquire", "nta", "--duration", "10", "--captures", "1", "--dilution", "10", "--json",
                       "--control", control)
        assert proc.returncode == 0, proc.stderr
        live = json.loads(proc.stdout)
    finally:
        assert stop_daemon(process) == 0
    assert live["frames"]["acquired"] == live["frames"]["processed"] == 250 and live["frames"]["dropped"] == 0
    assert live["temperature_c"] == pytest.approx(25.0, abs=1e-6)
    assert live["settings"]["instruments"]["camera"]["driver"] == "video-file"

    proc = run_cli("analyze", "nta", str(video), "--pixel-size-um", "0.166", "--exposure-ms", "15",
                   "--temperature-c", "25", "--dilution", "10", "--minmass", "300", "--calibration", str(CALIBRATION),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    offline = json.loads(proc.stdout)
    assert offline["frames_analysed"] == 250
    for key in ("mean", "mode", "sd", "d10", "d50", "d90"):
        assert live["size_nm"][key] == pytest.approx(offline["size_nm"][key], rel=1e-9), key
    assert live["concentration_per_ml"] == pytest.approx(offline["concentration_per_ml"], rel=1e-9)
    assert live["tracks"] == offline["tracks"]
    assert live["histogram"]["counts"] == offline["histogram"]["counts"]
