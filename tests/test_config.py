"""Configuration: a bad file is refused at start with a line naming key, value and what is allowed."""
import subprocess
import sys

import pytest

from exoacq.config import example_text, load_config, parse_config
from exoacq.errors import ConfigError


def test_example_is_valid_and_physically_sensible():
    config = load_config(None)
    assert config.daemon.control == "tcp://127.0.0.1:5555"
    assert config.daemon.results == "tcp://127.0.0.1:5556"
    assert config.daemon.frames == "tcp://127.0.0.1:5557"
    assert config.simulation.components[0].diameter_nm == 100.0
    assert "Units are part of every key name" in example_text()


def test_simulated_switches_every_instrument():
    config = load_config(None, simulated=True)
    assert config.instruments.laser.simulated and config.instruments.camera.simulated


@pytest.mark.parametrize("data, expected", [
    ({"instruments": {"laser": {"power": 40}}},
     "unknown key 'instruments.laser.power' (did you mean 'power_mw'? units are part of the key name)"),
    ({"simulation": {"temperature_c": -5}}, "simulation.temperature_c = -5: Input should be greater than 0"),
    ({"instruments": {"laser": {"power_mw": 0}}}, "instruments.laser.power_mw = 0: Input should be greater than 0"),
    ({"instruments": {"camera": {"exposure_ms": 50}}}, "exposure_ms = 50.0 is longer than the frame interval 40 ms"),
    ({"daemon": {"control": "localhost:5555"}}, "daemon.control = 'localhost:5555': must be a ZeroMQ endpoint"),
    ({"nta": {"feature_diameter_px": 8}}, "feature_diameter_px = 8 must be odd"),
    ({"bogus": {}}, "unknown key 'bogus'"),
])
def test_bad_values_are_named(data, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "lab.toml")
    message = str(info.value)
    assert message.startswith("lab.toml: ")
    assert expected in message
    assert "\n" not in message


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon\ncontrol = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def _run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "exoacq", *args], capture_output=True, text=True, timeout=timeout)


def test_daemon_refuses_unknown_key_with_one_line(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text('[instruments.laser]\npower = 40\n')
    proc = _run_cli("daemon", "--config", str(path), "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("exoacq: error: ") and "instruments.laser.power" in lines[0] and "power_mw" in lines[0]


def test_daemon_refuses_negative_temperature(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text('[simulation]\ntemperature_c = -4.0\n')
    proc = _run_cli("daemon", "--config", str(path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"exoacq: error: {path}: simulation.temperature_c = -4.0: Input should be greater than 0"]


def test_daemon_reports_missing_serial_port(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text('[instruments.laser]\nsimulated = false\nport = "/dev/ttyUSB-exoacq-missing"\n')
    proc = _run_cli("daemon", "--config", str(path), "--data-dir", str(tmp_path / "data"),
                    "--control", "tcp://127.0.0.1:*", "--results", "tcp://127.0.0.1:*", "--frames", "tcp://127.0.0.1:*")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("exoacq: error:")]
    assert errors == ["exoacq: error: laser: cannot open serial port /dev/ttyUSB-exoacq-missing "
                      "(No such file or directory)"]


def test_config_example_command_prints_a_valid_file(tmp_path):
    proc = _run_cli("config", "example")
    assert proc.returncode == 0
    path = tmp_path / "example.toml"
    path.write_text(proc.stdout)
    check = _run_cli("config", "check", str(path))
    assert check.returncode == 0 and "valid" in check.stdout


CALIBRATION = """
[calibration]
kind = "nta.detection_volume"
version = 3
date = 2026-11-20
instrument = "test bench"
method = "beads of known concentration"

[optics]
pixel_size_um = 0.166
frame_rate_hz = 25.0
exposure_ms = 15.0
laser_power_mw = 40.0
feature_diameter_px = 11
minmass = 300.0

[standard]
description = "100 nm polystyrene"
diameter_nm = 100.0
refractive_index = 1.59
lot = "L123"

[result]
detection_volume_nl = 0.075
uncertainty_nl = 0.002
measurements = 20
"""


def test_calibration_file_gives_the_detection_volume(tmp_path):
    (tmp_path / "cal.toml").write_text(CALIBRATION)
    (tmp_path / "lab.toml").write_text('[nta]\ncalibration = "cal.toml"\n')
    config = load_config(tmp_path / "lab.toml")
    assert config.nta.detection_volume_nl == 0.075
    assert config.nta.detection_volume_source.startswith("cal.toml v3 (2026-11-20, 100 nm polystyrene")


def test_calibration_for_other_optics_is_refused(tmp_path):
    (tmp_path / "cal.toml").write_text(CALIBRATION)
    (tmp_path / "lab.toml").write_text('[nta]\ncalibration = "cal.toml"\n[instruments.camera]\nexposure_ms = 20.0\n')
    with pytest.raises(ConfigError, match=r"measured with exposure_ms = 15, but the instrument is set to 20"):
        load_config(tmp_path / "lab.toml")


def test_broken_calibration_files_are_named(tmp_path):
    (tmp_path / "cal.toml").write_text(CALIBRATION.replace("detection_volume_nl = 0.075", "detection_volume_nl = -1"))
    (tmp_path / "lab.toml").write_text('[nta]\ncalibration = "cal.toml"\n')
    with pytest.raises(ConfigError, match=r"cal.toml: result.detection_volume_nl: Input should be greater than 0"):
        load_config(tmp_path / "lab.toml")
    (tmp_path / "lab.toml").write_text('[nta]\ncalibration = "missing.toml"\n')
    with pytest.raises(ConfigError, match=r"calibration missing.toml not found \(looked in: "):
        load_config(tmp_path / "lab.toml")


def test_second_daemon_on_a_busy_port_says_so(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _run_cli("daemon", "--simulated", "--data-dir", str(tmp_path), "--control", f"tcp://127.0.0.1:{port}")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"exoacq: error: cannot bind the control socket to tcp://127.0.0.1:{port}: "
                                   "Address already in use (another daemon on this port? use --control to choose another)")
