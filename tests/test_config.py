"""Configuration: a bad file is refused at start with a line naming key, value and what is allowed."""
import subprocess
import sys

import pytest

from exoacq.config import example_text, load_config, parse_config
from exoacq.errors import ConfigError


def test_example_is_valid_and_describes_several_instruments():
    config = load_config(None)  # no file: one simulated instrument per method
    assert set(config.instruments) == {"nta", "dls", "flow"}
    assert config.instruments["nta"].sample.components[0].diameter_nm == 100.0
    text = example_text()
    assert "Units are part of every key name" in text
    import tomllib
    example = parse_config(tomllib.loads(text), "example")
    assert config.daemon.control == example.daemon.control == "tcp://127.0.0.1:5555"
    assert example.daemon.results == "tcp://127.0.0.1:5556" and example.daemon.frames == "tcp://127.0.0.1:5557"
    assert len(example.instruments) >= 3
    drivers = {d.driver for i in example.instruments.values() for d in i.devices.values()}
    assert {"obis", "cobolt", "ne1000", "ted4015", "genicam", "opencv", "simulated-nta", "oscilloscope"} <= drivers


def test_simulated_switches_every_device_to_its_twin():
    import tomllib
    config = parse_config(tomllib.loads(example_text()), "example", simulated=True)
    for instrument in config.instruments.values():
        assert all(device.simulated for device in instrument.devices.values())
        if instrument.method == "nta":
            # a real camera has no serial twin: the method's simulated camera takes its place
            assert instrument.devices["camera"].driver == "simulated-nta"


def _nta(devices=None, **sections):
    base = {"laser": {"driver": "obis", "simulated": True},
            "camera": {"driver": "simulated-nta", "simulated": True},
            "temperature": {"driver": "simulated-thermometer", "simulated": True}}
    return {"instruments": {"rig": {"method": "nta", "devices": {**base, **(devices or {})}, **sections}}}


@pytest.mark.parametrize("data, expected", [
    (_nta({"laser": {"driver": "obis", "power": 40}}),
     "unknown key 'instruments.rig.devices.laser.power' (did you mean 'power_mw'? units are part of the key name)"),
    (_nta(simulation={"temperature_c": -5}), "instruments.rig.simulation.temperature_c = -5: Input should be greater than 0"),
    (_nta({"laser": {"driver": "obis", "power_mw": 0}}),
     "instruments.rig.devices.laser.power_mw = 0: Input should be greater than 0"),
    (_nta({"camera": {"driver": "simulated-nta", "simulated": True, "exposure_ms": 50}}),
     "exposure_ms = 50.0 is longer than the frame interval 40 ms"),
    ({"daemon": {"control": "localhost:5555"}}, "daemon.control = 'localhost:5555': must be a ZeroMQ endpoint"),
    (_nta(settings={"feature_diameter_px": 8}), "feature_diameter_px = 8 must be odd"),
    ({"bogus": {}}, "unknown key 'bogus'"),
    ({"instruments": {"rig": {"method": "xrd"}}}, "instruments.rig.method = 'xrd': unknown method 'xrd'; installed: dls, flow, nta"),
    (_nta({"laser": {"driver": "lazer"}}), "instruments.rig.devices.laser.driver = 'lazer': unknown driver 'lazer'"),
    (_nta({"laser": {"driver": "ne1000", "simulated": True}}),
     "instruments.rig.devices.laser.driver = 'ne1000' is a pump; the laser of method nta must be a laser"),
    (_nta({"spectrometer": {"driver": "obis"}}), "unknown role(s) spectrometer for method nta"),
    ({"instruments": {"rig": {"method": "nta", "devices": {}}}}, "instruments.rig.devices.laser is missing"),
    (_nta({"camera": {"driver": "simulated-nta"}}), "driver 'simulated-nta' is a simulation: set simulated = true"),
])
def test_bad_values_are_named(data, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "lab.toml")
    message = str(info.value)
    assert message.startswith("lab.toml: ")
    assert expected in message


def _run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "exoacq", *args], capture_output=True, text=True, timeout=timeout)


LAB = """
[instruments.rig]
method = "nta"
[instruments.rig.devices.camera]
driver = "simulated-nta"
simulated = true
[instruments.rig.devices.temperature]
driver = "simulated-thermometer"
simulated = true
[instruments.rig.devices.laser]
driver = "obis"
"""


def test_daemon_refuses_unknown_key_with_one_line(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text(LAB + 'power = 40\n')
    proc = _run_cli("daemon", "--config", str(path), "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("exoacq: error: ") and "instruments.rig.devices.laser.power" in lines[0]
    assert "power_mw" in lines[0]


def test_daemon_refuses_negative_temperature(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text(LAB + 'simulated = true\n[instruments.rig.simulation]\ntemperature_c = -4.0\n')
    proc = _run_cli("daemon", "--config", str(path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"exoacq: error: {path}: instruments.rig.simulation.temperature_c = -4.0: Input should be greater than 0"]


def test_daemon_reports_missing_serial_port(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text(LAB + 'port = "/dev/ttyUSB-exoacq-missing"\n')
    proc = _run_cli("daemon", "--config", str(path), "--data-dir", str(tmp_path / "data"),
                    "--control", "tcp://127.0.0.1:*", "--results", "tcp://127.0.0.1:*", "--frames", "tcp://127.0.0.1:*")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("exoacq: error:")]
    assert errors == ["exoacq: error: instrument rig: laser: cannot open serial port /dev/ttyUSB-exoacq-missing "
                      "(No such file or directory)"]


def test_config_check_refuses_a_shared_endpoint_and_a_nan_drift(tmp_path):
    """Once "valid": two daemon sockets at one endpoint (the second cannot bind), and a simulated drift of nan."""
    example = _run_cli("config", "example").stdout
    cases = {"results = \"tcp://127.0.0.1:5556\"": ("results = \"tcp://127.0.0.1:5555\"",
                                                  "daemon: control and results are both tcp://127.0.0.1:5555: each "
                                                  "socket needs its own endpoint"),
             "drift_um_s = [0.0, 0.0]": ("drift_um_s = [nan, 0.0]",
                                         "instruments.nta-sim.simulation.drift_um_s.0 = nan")}
    for old, (new, message) in cases.items():
        assert old in example, old
        path = tmp_path / "lab.toml"
        path.write_text(example.replace(old, new, 1))
        proc = _run_cli("config", "check", str(path))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"exoacq: error: {path}: {message}"), proc.stderr


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


def _lab_with_calibration(tmp_path, calibration="cal.toml", camera=""):
    (tmp_path / "lab.toml").write_text(LAB + 'simulated = true\n[instruments.rig.settings]\n'
                                       f'calibration = "{calibration}"\n' + camera)
    return tmp_path / "lab.toml"


def test_calibration_file_gives_the_detection_volume(tmp_path):
    (tmp_path / "cal.toml").write_text(CALIBRATION)
    config = load_config(_lab_with_calibration(tmp_path))
    nta = config.instruments["rig"].options
    assert nta.detection_volume_nl == 0.075
    assert nta.detection_volume_source.startswith("cal.toml v3 (2026-11-20, 100 nm polystyrene")


def test_calibration_for_other_optics_is_refused_when_the_instrument_connects(tmp_path):
    from exoacq.instruments import Instrument

    (tmp_path / "cal.toml").write_text(CALIBRATION)
    path = _lab_with_calibration(tmp_path)
    text = path.read_text().replace('driver = "simulated-nta"\nsimulated = true\n',
                                    'driver = "simulated-nta"\nsimulated = true\nexposure_ms = 20.0\n')
    path.write_text(text)
    instrument = Instrument("rig", load_config(path).instruments["rig"])
    with pytest.raises(ConfigError, match=r"measured with exposure_ms = 15, but the instrument is set to 20"):
        try:
            instrument.connect()
        finally:
            instrument.close()


def test_broken_calibration_files_are_named(tmp_path):
    (tmp_path / "cal.toml").write_text(CALIBRATION.replace("detection_volume_nl = 0.075", "detection_volume_nl = -1"))
    with pytest.raises(ConfigError, match=r"cal.toml: result.detection_volume_nl: Input should be greater than 0"):
        load_config(_lab_with_calibration(tmp_path))
    with pytest.raises(ConfigError, match=r"calibration missing.toml not found \(looked in: "):
        load_config(_lab_with_calibration(tmp_path, "missing.toml"))


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
