"""Cobolt 06-series driver against the emulated laser: real pyserial on a real pty.

Every test asserts the lines the laser saw and sent, in order (Cobolt 06-01
Series Owner's Manual, Communication commands).
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import serial

from exoacq.devices import Laser
from exoacq.drivers.cobolt import DRIVER, CoboltLaser, CoboltOptions
from exoacq.drivers.cobolt_sim import CoboltSimulator
from exoacq.errors import DeviceError

CONNECT = [
    ("rx", "@cobas 0"), ("tx", "OK"),
    ("rx", "cp"), ("tx", "OK"),
    ("rx", "sn?"), ("tx", "17706"),
    ("rx", "gmlp?"), ("tx", "100.000000"),
]


@pytest.fixture
def sim() -> Iterator[CoboltSimulator]:
    with CoboltSimulator(warmup_s=0.2) as simulator:
        yield simulator


@pytest.fixture
def laser(sim: CoboltSimulator) -> Iterator[CoboltLaser]:
    device = CoboltLaser(sim.port, timeout_s=0.5)
    device.connect()
    sim.clear_transcript()
    yield device
    device.close()


def test_connect_disables_autostart_and_reads_identity(sim: CoboltSimulator) -> None:
    laser = CoboltLaser(sim.port, timeout_s=0.5, power_mw=20)
    laser.connect()
    try:
        assert sim.transcript == CONNECT + [("rx", "p 0.02"), ("tx", "OK")]
        assert laser.max_power_mw == 100.0
        assert isinstance(laser, Laser)
        assert sim.emitted_power_mw == 0.0  # connect never switches emission
    finally:
        laser.close()


def test_connect_leaves_emission_as_it_was(sim: CoboltSimulator) -> None:
    with serial.Serial(sim.port, timeout=0.5) as raw:  # someone else switched it on
        for command in (b"@cobas 0\r", b"p 0.005\r", b"l1\r"):
            raw.write(command)
            assert raw.readline() == b"OK\r\n"
    laser = CoboltLaser(sim.port, timeout_s=0.5)
    laser.connect()
    assert sim.emitted_power_mw == 5.0
    assert laser.emission() is True
    laser.close()
    assert sim.emitted_power_mw == 0.0


def test_identify(sim: CoboltSimulator, laser: CoboltLaser) -> None:
    assert laser.identify() == "Cobolt 0488-06-01-0100-100 s/n 17706 firmware 9.001"
    assert sim.transcript == [
        ("rx", "glm?"), ("tx", "0488-06-01-0100-100"),
        ("rx", "sn?"), ("tx", "17706"),
        ("rx", "gfv?"), ("tx", "9.001"),
    ]


def test_set_power(sim: CoboltSimulator, laser: CoboltLaser) -> None:
    laser.set_power_mw(12.5)
    assert laser.power_setpoint_mw() == 12.5
    assert sim.transcript == [
        ("rx", "p 0.0125"), ("tx", "OK"),
        ("rx", "p?"), ("tx", "0.0125"),
    ]


def test_emission_on_off_and_measured_power(sim: CoboltSimulator, laser: CoboltLaser) -> None:
    laser.set_power_mw(20)
    assert sim.emitted_power_mw == 0.0
    laser.set_emission(True)
    assert sim.emitted_power_mw == 20.0
    assert laser.power_mw() == 20.0
    assert laser.drive_current_ma() == 60.0  # 35 mA threshold + 20 mW / 0.8 mW/mA
    assert laser.operating_state() == "continuous"
    laser.set_emission(False)
    assert sim.emitted_power_mw == 0.0
    assert laser.emission() is False
    assert laser.power_mw() == 0.0
    assert laser.operating_state() == "off"
    assert sim.transcript == [
        ("rx", "p 0.02"), ("tx", "OK"),
        ("rx", "l1"), ("tx", "OK"),
        ("rx", "l?"), ("tx", "1"),
        ("rx", "pa?"), ("tx", "0.0200"),
        ("rx", "i?"), ("tx", "60.0"),
        ("rx", "gom?"), ("tx", "2"),
        ("rx", "l0"), ("tx", "OK"),
        ("rx", "l?"), ("tx", "0"),
        ("rx", "pa?"), ("tx", "0.0000"),
        ("rx", "gom?"), ("tx", "0"),
    ]


def test_healthy_laser_reports_no_faults(sim: CoboltSimulator, laser: CoboltLaser) -> None:
    assert laser.faults() == []
    assert laser.interlock_open() is False
    assert laser.operating_hours() == 1234.56
    assert laser.serial_number() == "17706"
    assert laser.autostart() is False
    assert sim.transcript == [
        ("rx", "f?"), ("tx", "0"),
        ("rx", "ilk?"), ("tx", "0"),
        ("rx", "hrs?"), ("tx", "1234.56"),
        ("rx", "sn?"), ("tx", "17706"),
        ("rx", "@cobas?"), ("tx", "0"),
    ]


def test_open_interlock_stops_emission_and_latches_fault(sim: CoboltSimulator,
                                                         laser: CoboltLaser) -> None:
    laser.set_power_mw(10)
    laser.set_emission(True)
    assert sim.emitted_power_mw == 10.0
    sim.interlock_open = True
    assert sim.emitted_power_mw == 0.0
    sim.clear_transcript()
    with pytest.raises(DeviceError) as caught:
        laser.set_emission(True)
    assert str(caught.value) == (f"laser: emission stayed off after 'l1' on port {sim.port} "
                                 "(interlock error)")
    assert sim.emitted_power_mw == 0.0
    assert sim.transcript == [
        ("rx", "l1"), ("tx", "OK"),
        ("rx", "l?"), ("tx", "0"),
        ("rx", "f?"), ("tx", "3"),
        ("rx", "ilk?"), ("tx", "1"),
    ]
    sim.clear_transcript()
    laser.clear_fault()  # refused while the interlock is still open
    assert laser.faults() == ["interlock error"]
    assert laser.interlock_open() is True
    assert laser.operating_state() == "fault"
    sim.interlock_open = False
    assert laser.faults() == ["interlock error"]  # latched until cleared
    laser.clear_fault()
    assert laser.faults() == []
    laser.set_emission(True)
    assert sim.emitted_power_mw == 10.0
    assert sim.transcript == [
        ("rx", "cf"), ("tx", "OK"),
        ("rx", "f?"), ("tx", "3"),
        ("rx", "ilk?"), ("tx", "1"),
        ("rx", "gom?"), ("tx", "5"),
        ("rx", "f?"), ("tx", "3"),
        ("rx", "cf"), ("tx", "OK"),
        ("rx", "f?"), ("tx", "0"),
        ("rx", "l1"), ("tx", "OK"),
        ("rx", "l?"), ("tx", "1"),
    ]


def test_temperature_fault_stops_emission(sim: CoboltSimulator, laser: CoboltLaser) -> None:
    laser.set_power_mw(5)
    laser.set_emission(True)
    sim.fault = 1
    assert sim.emitted_power_mw == 0.0
    assert laser.emission() is False
    assert laser.faults() == ["temperature error"]
    with pytest.raises(DeviceError, match=r"emission stayed off after 'l1' .*\(temperature error\)$"):
        laser.set_emission(True)


def test_key_switch_off_is_named_when_nothing_else_is(sim: CoboltSimulator,
                                                      laser: CoboltLaser) -> None:
    sim.key_switch_on = False
    with pytest.raises(DeviceError, match=r"\(no fault reported; key switch off\?\)$"):
        laser.set_emission(True)
    assert laser.ask("@cobasks?") == "0"


def test_describe(sim: CoboltSimulator, laser: CoboltLaser) -> None:
    assert laser.describe() == {
        "model": "0488-06-01-0100-100", "serial_number": "17706", "firmware": "9.001",
        "port": sim.port, "power_setpoint_mw": 0.0, "power_mw": 0.0, "max_power_mw": 100.0,
        "emission": False, "operating_state": "off", "drive_current_ma": 0.0,
        "operating_hours_h": 1234.56,
    }
    assert sim.transcript == [
        ("rx", "glm?"), ("tx", "0488-06-01-0100-100"),
        ("rx", "gfv?"), ("tx", "9.001"),
        ("rx", "p?"), ("tx", "0.0000"),
        ("rx", "pa?"), ("tx", "0.0000"),
        ("rx", "l?"), ("tx", "0"),
        ("rx", "gom?"), ("tx", "0"),
        ("rx", "i?"), ("tx", "0.0"),
        ("rx", "hrs?"), ("tx", "1234.56"),
    ]


def test_close_switches_emission_off_once(sim: CoboltSimulator, laser: CoboltLaser) -> None:
    laser.set_power_mw(5)
    laser.set_emission(True)
    assert sim.emitted_power_mw == 5.0
    sim.clear_transcript()
    laser.close()
    assert sim.transcript == [("rx", "l0"), ("tx", "OK")]
    assert sim.emitted_power_mw == 0.0
    laser.close()
    assert sim.transcript == [("rx", "l0"), ("tx", "OK")]
    with pytest.raises(DeviceError, match="not connected"):
        laser.power_mw()


def test_close_on_dead_port_does_not_raise(sim: CoboltSimulator, laser: CoboltLaser) -> None:
    sim.close()
    start = time.monotonic()
    laser.close()
    laser.close()
    assert time.monotonic() - start < 0.8


@pytest.mark.parametrize("power_mw", [100.001, 150, -1, float("nan")])
def test_out_of_range_power_is_refused_before_sending(
        sim: CoboltSimulator, laser: CoboltLaser, power_mw: float) -> None:
    with pytest.raises(DeviceError) as caught:
        laser.set_power_mw(power_mw)
    assert str(caught.value) == (f"laser: power {power_mw:g} mW is out of range 0..100 mW "
                                 f"on port {sim.port}")
    assert sim.transcript == []


def test_syntax_error_replies_become_device_errors(sim: CoboltSimulator,
                                                   laser: CoboltLaser) -> None:
    with pytest.raises(DeviceError) as caught:
        laser.ask("bogus?")
    assert str(caught.value) == (f"laser: 'bogus?' refused on port {sim.port}: "
                                 "Syntax error: illegal command")
    with pytest.raises(DeviceError, match=r"'p 0\.2' refused .*: Syntax error: Value is out of range\.$"):
        laser.write("p 0.2")  # the laser checks the range too
    with pytest.raises(DeviceError, match="'p' refused .*: Syntax error: illegal command$"):
        laser.write("p")
    laser.write("@cobas 1")
    with pytest.raises(DeviceError) as caught:
        laser.set_emission(True)
    assert str(caught.value) == (f"laser: 'l1' refused on port {sim.port}: "
                                 "Syntax error: not allowed in autostart mode.")
    assert sim.transcript == [
        ("rx", "bogus?"), ("tx", "Syntax error: illegal command"),
        ("rx", "p 0.2"), ("tx", "Syntax error: Value is out of range."),
        ("rx", "p"), ("tx", "Syntax error: illegal command"),
        ("rx", "@cobas 1"), ("tx", "OK"),
        ("rx", "l1"), ("tx", "Syntax error: not allowed in autostart mode."),
    ]
    assert laser.power_setpoint_mw() == 0.0  # the exchange after an error is clean


def test_garbled_reply_is_named(sim: CoboltSimulator, laser: CoboltLaser) -> None:
    honest = sim.reply
    sim.reply = lambda line: {"pa?": ["0.0#12"], "l?": ["yes"], "f?": ["\x7f"]}.get(line) or honest(line)
    with pytest.raises(DeviceError) as caught:
        laser.power_mw()
    assert str(caught.value) == f"laser: unreadable reply '0.0#12' to 'pa?' on port {sim.port}"
    with pytest.raises(DeviceError, match=r"unreadable reply 'yes' to 'l\?' .*\(expected 0 or 1\)$"):
        laser.emission()
    with pytest.raises(DeviceError, match=r"unreadable reply '\\x7f' to 'f\?'"):
        laser.faults()
    sim.reply = lambda line: ["17706"]  # a value where OK belongs
    with pytest.raises(DeviceError, match=r"unexpected reply '17706' to 'cf'"):
        laser.clear_fault()


def test_silent_laser_times_out(sim: CoboltSimulator, laser: CoboltLaser) -> None:
    sim.silent = True
    start = time.monotonic()
    with pytest.raises(DeviceError) as caught:
        laser.power_mw()
    assert str(caught.value) == f"laser: did not answer 'pa?' within 0.5 s on port {sim.port}"
    assert 0.4 < time.monotonic() - start < 0.9
    assert sim.transcript == [("rx", "pa?")]
    sim.silent = False
    assert laser.power_mw() == 0.0  # answers again: the next exchange is clean


def test_silent_port_at_connect(silent_port: str) -> None:
    laser = CoboltLaser(silent_port, timeout_s=0.2)
    start = time.monotonic()
    with pytest.raises(DeviceError) as caught:
        laser.connect()
    assert str(caught.value) == (f"laser: did not answer '@cobas 0' within 0.2 s "
                                 f"on port {silent_port}")
    assert 0.15 < time.monotonic() - start < 0.6
    with pytest.raises(DeviceError, match="not connected"):
        laser.identify()


def test_unplugged_port(sim: CoboltSimulator, laser: CoboltLaser) -> None:
    sim.unplug()
    with pytest.raises(DeviceError) as caught:
        laser.power_mw()
    message = str(caught.value)
    assert message.startswith(f"laser: serial I/O failed on port {sim.port} (")
    assert "\n" not in message
    laser.close()  # and the shutdown still does not raise


def test_missing_port_is_a_one_line_error() -> None:
    laser = CoboltLaser("/dev/ttyUSB-does-not-exist")
    with pytest.raises(DeviceError) as caught:
        laser.connect()
    assert str(caught.value) == ("laser: cannot open serial port /dev/ttyUSB-does-not-exist "
                                 "(No such file or directory)")
    laser.close()


def test_autostart_sequence_warms_up(sim: CoboltSimulator, laser: CoboltLaser) -> None:
    laser.set_power_mw(30)
    laser.write("@cobas 1")
    sim.key_switch_on = False
    laser.write("@cob1")
    assert laser.operating_state() == "waiting for key"
    sim.key_switch_on = True
    assert laser.ask("gom?") == "1"  # warming up
    assert laser.emission() is False
    assert sim.emitted_power_mw == 0.0
    time.sleep(0.25)
    assert laser.operating_state() == "continuous"
    assert laser.emission() is True
    assert sim.emitted_power_mw == 30.0
    laser.write("abort")
    assert laser.operating_state() == "aborted"
    assert sim.emitted_power_mw == 0.0
    laser.write("@cob0")
    assert laser.operating_state() == "off"


def test_constant_current_and_modulation_modes(sim: CoboltSimulator, laser: CoboltLaser) -> None:
    laser.write("ci")
    laser.write("slc 60")
    laser.set_emission(True)
    assert laser.ask("gam?") == "0"
    assert laser.ask("glc?") == "60.0"
    assert laser.drive_current_ma() == 60.0
    assert laser.power_mw() == 20.0  # (60 - 35) mA x 0.8 mW/mA
    laser.write("em")
    laser.write("slmp 15")
    laser.write("sdmes 1")
    assert laser.ask("gdmes?") == "1"
    assert laser.operating_state() == "modulation"
    assert sim.emitted_power_mw == 15.0
    laser.write("eoom")
    assert laser.operating_state() == "on/off modulation"
    with pytest.raises(DeviceError, match="Value is out of range"):
        laser.write("slc 500")


def test_manual_commands_without_our_driver(sim: CoboltSimulator) -> None:
    """A third-party program written from the manual: CR, LF or CR LF endings."""
    exchanges = [
        (b"?\r", b"OK"),
        (b"sn?\r", b"17706"),
        (b"gsn?\r\n", b"17706"),
        (b"glm?\n", b"0488-06-01-0100-100"),
        (b"gfv?\r", b"9.001"),
        (b"ver?\r", b"9.001"),
        (b"hrs?\r", b"1234.56"),
        (b"@cobas?\r", b"1"),                    # factory setting: autostart on
        (b"l1\r", b"Syntax error: not allowed in autostart mode."),
        (b"@cobas 0\r", b"OK"),
        (b"@cobasdr?\r", b"0"),
        (b"@cobasks?\r", b"1"),
        (b"ilk?\r", b"0"),
        (b"f?\r", b"0"),
        (b"cp\r", b"OK"),
        (b"gam?\r", b"1"),
        (b"p 0.0100\r", b"OK"),
        (b"p?\r", b"0.0100"),
        (b"gmlp?\r", b"100.000000"),
        (b"gmlc?\r", b"185.0"),
        (b"l?\r", b"0"),
        (b"gom?\r", b"0"),
        (b"l1\r", b"OK"),
        (b"l?\r", b"1"),
        (b"gom?\r", b"2"),
        (b"pa?\r", b"0.0100"),
        (b"leds?\r", b"7"),
        (b"p 0.5\r", b"Syntax error: Value is out of range."),
        (b"@cobas 2\r", b"Syntax error: Value is out of range."),
        (b"p abc\r", b"Syntax error: illegal command"),
        (b"sn? 1\r", b"Syntax error: illegal command"),
        (b"bogus\r", b"Syntax error: illegal command"),
        (b"l0\r", b"OK"),
        (b"pa?\r", b"0.0000"),
        (b"cf\r", b"OK"),
        (b"rbpt?\r", b"25.0"),
    ]
    with serial.Serial(sim.port, timeout=0.5) as raw:
        for command, expected in exchanges:
            raw.write(command)
            assert raw.readline() == expected + b"\r\n", command
    assert [line for direction, line in sim.transcript if direction == "rx"] == [
        command.decode().strip() for command, _ in exchanges]


def test_registry_declaration(sim: CoboltSimulator) -> None:
    assert (DRIVER.name, DRIVER.kind) == ("cobolt", "laser")
    options = CoboltOptions(power_mw=10, timeout_s=0.5)
    device = DRIVER.open(options, sim.port, {})
    assert isinstance(device, CoboltLaser) and device.port == sim.port
    assert sim.transcript == []  # open() does not connect
    device.connect()
    assert device.power_setpoint_mw() == 10.0
    setting = CoboltLaser.settings["power_mw"]
    assert (setting.get, setting.set, setting.unit, setting.limit(device)) == (
        "power_setpoint_mw", "set_power_mw", "mW", 100.0)
    device.close()
    twin = DRIVER.simulator(options)
    assert isinstance(twin, CoboltSimulator) and twin.port == ""  # made, not started
    with pytest.raises(ValueError):
        CoboltOptions(timeout_s=0)
