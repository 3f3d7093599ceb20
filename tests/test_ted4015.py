"""Thorlabs TED4015 driver against the emulated controller: real pyvisa (``@py``)
over a real loopback TCP socket.

Every test asserts the lines the controller saw and sent, in order (Thorlabs
Series 4000 SCPI Programmer's Reference Manual). The simulated sample holder
has a 0.2 s time constant so that temperature changes are quick to observe.
"""
from __future__ import annotations

import math
import re
import socket
import time
from collections.abc import Iterator

import pydantic
import pytest
import pyvisa

from exoacq.devices import TemperatureController
from exoacq.drivers.ted4015 import DRIVER, TED4015, TED4015Options, TedError
from exoacq.drivers.ted4015_sim import TED4015Simulator
from exoacq.errors import DeviceError

IDN = "THORLABS,TED4015,M00123456,1.4.0/2.0.3/1.6.0"
NO_ERROR = '+0,"No error"'
TAU_S = 0.2
AMBIENT_C = 22.0


def ok(command: str) -> list[tuple[str, str]]:
    """A set command as the driver sends it: the command, then an empty error queue."""
    return [("rx", command), ("rx", "SYST:ERR?"), ("tx", NO_ERROR)]


CONNECT = [
    ("rx", "*IDN?"), ("tx", IDN),
    *ok("*CLS"),
    *ok("UNIT:TEMP C"),
    ("rx", "SOUR:TEMP? MIN"), ("tx", "0.000000E+00"),
    ("rx", "SOUR:TEMP? MAX"), ("tx", "6.000000E+01"),
]


def approach_c(target_c: float, start_c: float, dt_s: float) -> float:
    """The first-order model: where the sample is dt_s after the target changed."""
    return target_c + (start_c - target_c) * math.exp(-dt_s / TAU_S)


@pytest.fixture
def sim() -> Iterator[TED4015Simulator]:
    with TED4015Simulator(tau_s=TAU_S, ambient_c=AMBIENT_C) as simulator:
        yield simulator


@pytest.fixture
def tec(sim: TED4015Simulator) -> Iterator[TED4015]:
    device = TED4015(sim.address, timeout_s=2.0)
    device.connect()
    sim.clear_transcript()
    yield device
    device.close()


def test_connect_reads_identity_and_limits_then_applies_options(sim: TED4015Simulator) -> None:
    tec = TED4015(sim.address, timeout_s=2.0, setpoint_c=37, output_on_connect=True)
    tec.connect()
    try:
        assert sim.transcript == CONNECT + ok("SOUR:TEMP 37") + ok("OUTP ON")
        assert (tec.setpoint_min_c, tec.setpoint_max_c) == (0.0, 60.0)
        assert sim.output_on
        assert isinstance(tec, TemperatureController)
        assert TED4015.settings["setpoint_c"].limit(tec) == 60.0
    finally:
        tec.close()


def test_connect_changes_nothing_else(sim: TED4015Simulator, tec: TED4015) -> None:
    tec.set_setpoint_c(30)
    tec.set_output(True)
    tec.close()
    sim.clear_transcript()
    again = TED4015(sim.address, timeout_s=2.0)
    again.connect()
    try:
        assert sim.transcript == CONNECT  # no *RST, no set point, no output change
        assert sim.output_on
        assert again.setpoint_c() == 30.0
    finally:
        again.close()


def test_set_point(sim: TED4015Simulator, tec: TED4015) -> None:
    tec.set_setpoint_c(36.6)
    assert tec.setpoint_c() == 36.6
    tec.set_setpoint_c(4)
    tec.set_setpoint_c(0.0125)  # 1 mK resolution on the wire
    assert sim.transcript == ok("SOUR:TEMP 36.6") + [
        ("rx", "SOUR:TEMP?"), ("tx", "3.660000E+01"),
    ] + ok("SOUR:TEMP 4") + ok("SOUR:TEMP 0.013")


def test_output_on_off(sim: TED4015Simulator, tec: TED4015) -> None:
    assert tec.output() is False
    tec.set_output(True)
    assert tec.output() is True
    tec.set_output(False)
    assert tec.output() is False
    assert sim.transcript == [("rx", "OUTP?"), ("tx", "0")] + ok("OUTP ON") + [
        ("rx", "OUTP?"), ("tx", "1")] + ok("OUTP OFF") + [("rx", "OUTP?"), ("tx", "0")]


def test_temperature_approaches_set_point_with_tau(sim: TED4015Simulator, tec: TED4015) -> None:
    assert tec.temperature_c() == AMBIENT_C
    assert tec.tec_current_a() == 0.0
    tec.set_setpoint_c(37)
    before = time.monotonic()
    tec.set_output(True)
    time.sleep(TAU_S)
    measured = tec.temperature_c()
    elapsed = time.monotonic() - before
    # One time constant: 63 % of the way, within the timing of the exchanges.
    assert approach_c(37, AMBIENT_C, TAU_S) - 1e-3 <= measured <= approach_c(37, AMBIENT_C, elapsed)
    assert tec.tec_current_a() == -2.0  # heating hard: at the 2 A current limit, negative
    time.sleep(4 * TAU_S)
    assert abs(tec.temperature_c() - 37) < 15 * math.exp(-5) + 1e-3
    holding = tec.tec_current_a()
    assert -0.9 < holding < -0.75  # holding 15 K above ambient, no longer limited
    assert tec.tec_voltage_v() == pytest.approx(1.5 * holding, abs=0.01)  # V = I R
    tec.set_output(False)
    time.sleep(TAU_S)
    relaxed = tec.temperature_c()
    assert AMBIENT_C < relaxed < 37 - 15 * (1 - math.exp(-1)) + 0.1
    assert tec.tec_current_a() == 0.0
    assert sim.transcript[0:2] == [("rx", "MEAS:TEMP?"), ("tx", "2.200000E+01")]


def test_cooling_below_ambient_drives_a_positive_current(tec: TED4015) -> None:
    tec.set_setpoint_c(10)
    tec.set_output(True)
    assert tec.tec_current_a() == 2.0  # Thorlabs' sign: positive cools
    assert tec.temperature_c() <= AMBIENT_C


def test_describe(sim: TED4015Simulator, tec: TED4015) -> None:
    assert tec.describe() == {
        "model": "TED4015", "serial_number": "M00123456", "firmware": "1.4.0/2.0.3/1.6.0",
        "resource": sim.address, "setpoint_c": 25.0, "temperature_c": 22.0, "output": False,
        "tec_current_a": 0.0, "current_limit_a": 2.0, "setpoint_min_c": 0.0,
        "setpoint_max_c": 60.0,
    }
    assert sim.transcript == [
        ("rx", "SOUR:TEMP?"), ("tx", "2.500000E+01"),
        ("rx", "MEAS:TEMP?"), ("tx", "2.200000E+01"),
        ("rx", "OUTP?"), ("tx", "0"),
        ("rx", "MEAS:CURR?"), ("tx", "0.000000E+00"),
        ("rx", "SOUR:CURR:LIM?"), ("tx", "2.000000E+00"),
    ]


@pytest.mark.parametrize("setpoint", [60.001, 120, -1, float("nan"), "warm"])
def test_out_of_range_set_point_is_refused_before_sending(
        sim: TED4015Simulator, tec: TED4015, setpoint: object) -> None:
    with pytest.raises(DeviceError) as caught:
        tec.set_setpoint_c(setpoint)  # type: ignore[arg-type]
    shown = f"{setpoint:g}" if isinstance(setpoint, float | int) else repr(setpoint)
    assert str(caught.value) == (f"temperature controller: set point {shown} C is out of range "
                                 f"0..60 C on {sim.address}")
    assert sim.transcript == []


def test_refused_command_names_command_and_scpi_error(sim: TED4015Simulator,
                                                      tec: TED4015) -> None:
    with pytest.raises(TedError) as caught:
        tec.write("SOUR:TEMP 120")  # the controller checks its limits too
    assert str(caught.value) == (f"temperature controller: 'SOUR:TEMP 120' refused by "
                                 f'{sim.address}: -222,"Data out of range"')
    assert caught.value.code == -222
    with pytest.raises(TedError, match=r"'OUTP' refused by .*: -109,\"Missing parameter\"$"):
        tec.write("OUTP")
    with pytest.raises(TedError, match=r"'SYST:BOGUS' refused by .*: -113,\"Undefined header\"$"):
        tec.write("SYST:BOGUS")
    with pytest.raises(DeviceError, match=r"'MEAS:TEMP\?' is a query; send it with ask\(\)"):
        tec.write("MEAS:TEMP?")  # refused here: nothing is sent
    assert sim.transcript == [
        ("rx", "SOUR:TEMP 120"), ("rx", "SYST:ERR?"), ("tx", '-222,"Data out of range"'),
        ("rx", "SYST:ERR?"), ("tx", NO_ERROR),
        ("rx", "OUTP"), ("rx", "SYST:ERR?"), ("tx", '-109,"Missing parameter"'),
        ("rx", "SYST:ERR?"), ("tx", NO_ERROR),
        ("rx", "SYST:BOGUS"), ("rx", "SYST:ERR?"), ("tx", '-113,"Undefined header"'),
        ("rx", "SYST:ERR?"), ("tx", NO_ERROR),
    ]
    assert tec.setpoint_c() == 25.0  # unchanged, and the exchange after an error is clean


def test_refused_query_is_explained_by_the_error_queue(sim: TED4015Simulator,
                                                       tec: TED4015) -> None:
    start = time.monotonic()
    with pytest.raises(TedError) as caught:
        tec.ask("SYST:BOGUS?")  # a SCPI instrument does not answer; it queues -113
    assert str(caught.value) == (f"temperature controller: 'SYST:BOGUS?' refused by "
                                 f'{sim.address}: -113,"Undefined header"')
    assert tec.timeout_s <= time.monotonic() - start < tec.timeout_s + 0.7
    assert sim.transcript == [
        ("rx", "SYST:BOGUS?"),
        ("rx", "SYST:ERR?"), ("tx", '-113,"Undefined header"'), ("rx", "SYST:ERR?"), ("tx", NO_ERROR),
    ]


def test_errors_drains_the_queue(sim: TED4015Simulator, tec: TED4015) -> None:
    assert tec.errors() == []
    sim.push_error(-200)
    sim.push_error(-221)
    assert tec.errors() == ['-200,"Execution error"', '-221,"Settings conflict"']
    assert sim.transcript == [("rx", "SYST:ERR?"), ("tx", NO_ERROR)] + [
        ("rx", "SYST:ERR?"), ("tx", '-200,"Execution error"'),
        ("rx", "SYST:ERR?"), ("tx", '-221,"Settings conflict"'),
        ("rx", "SYST:ERR?"), ("tx", NO_ERROR),
    ]
    for _ in range(12):
        sim.push_error(-222)
    queued = tec.errors()
    assert len(queued) == 10
    assert queued[-1] == '-350,"Error queue overflow"'


def test_long_forms_any_case_and_compound_messages(sim: TED4015Simulator, tec: TED4015) -> None:
    tec.write("source1:temperature:spoint 30.5")
    assert tec.ask("SOURce:TEMPerature:SPOint?") == "3.050000E+01"
    assert tec.ask("sour:temp? maximum") == "6.000000E+01"
    assert tec.ask("Meas:Scal:Temp?") == "2.200000E+01"
    tec.write("OUTPut1:STATe 1")
    assert tec.ask("outp:stat?") == "1"
    tec.write("SOUR:TEMP:LCON:GAIN 2.5;INT 0.2")  # the second unit continues the path
    assert tec.ask("SOUR:TEMP:LCON:GAIN?;INT?;:OUTP?") == "2.500000E+00;2.000000E-01;1"
    tec.write("SOUR:TEMP 300K")  # a unit suffix
    assert tec.setpoint_c() == 26.85
    assert [line for direction, line in sim.transcript if direction == "rx"][:3] == [
        "source1:temperature:spoint 30.5", "SYST:ERR?", "SOURce:TEMPerature:SPOint?"]


def test_silent_controller_times_out(sim: TED4015Simulator) -> None:
    sim.silent = True
    tec = TED4015(sim.address, timeout_s=0.2)
    start = time.monotonic()
    with pytest.raises(DeviceError) as caught:
        tec.connect()
    elapsed = time.monotonic() - start
    assert str(caught.value) == (f"temperature controller: did not answer '*IDN?' within 0.2 s "
                                 f"on {sim.address}")
    assert 0.15 < elapsed < 0.9   # the 0.2 s asked for, not the 1 s default (loose for a loaded machine)
    assert sim.transcript == [("rx", "*IDN?")]
    with pytest.raises(DeviceError, match="not connected"):
        tec.identify()


def test_controller_that_stops_answering_and_comes_back(sim: TED4015Simulator,
                                                        tec: TED4015) -> None:
    sim.silent = True
    with pytest.raises(DeviceError) as caught:
        tec.temperature_c()
    assert str(caught.value) == (f"temperature controller: did not answer 'MEAS:TEMP?' within "
                                 f"{tec.timeout_s:g} s on {sim.address}")
    sim.silent = False
    assert tec.temperature_c() == 22.0
    assert sim.transcript == [("rx", "MEAS:TEMP?"), ("rx", "MEAS:TEMP?"), ("tx", "2.200000E+01")]


def test_garbled_replies(sim: TED4015Simulator, tec: TED4015,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    original = sim.reply
    garbled = {"MEAS:TEMP?": ["2.2O0E+01"], "OUTP?": ["maybe"], "SOUR:TEMP?": ["9.91E+37"],
               "SYST:ERR?": ["no idea"]}
    monkeypatch.setattr(sim, "reply", lambda line: garbled.get(line) or original(line))
    with pytest.raises(DeviceError) as caught:
        tec.temperature_c()
    assert str(caught.value) == (f"temperature controller: unreadable reply '2.2O0E+01' to "
                                 f"'MEAS:TEMP?' on {sim.address}")
    with pytest.raises(DeviceError, match=r"^temperature controller: unreadable reply 'maybe' "
                                          r"to 'OUTP\?' on "):
        tec.output()
    with pytest.raises(DeviceError, match=r"^temperature controller: no valid reading "
                                          r"\(9\.91E\+37\) in the reply to 'SOUR:TEMP\?' on "):
        tec.setpoint_c()
    with pytest.raises(DeviceError, match=r"^temperature controller: unreadable reply 'no idea' "
                                          r"to 'SYST:ERR\?' on "):
        tec.set_output(True)


def test_open_sensor(sim: TED4015Simulator, tec: TED4015) -> None:
    tec.set_output(True)
    sim.sensor_open = True
    assert not sim.output_on
    with pytest.raises(DeviceError, match=r"no valid reading \(9\.910000E\+37\) in the reply to "
                                          r"'MEAS:TEMP\?'"):
        tec.temperature_c()
    with pytest.raises(TedError, match=r"'OUTP ON' refused by .*: -221,\"Settings conflict\"$"):
        tec.set_output(True)
    assert tec.ask("STAT:MEAS:COND?") == "1024"


def test_wrong_instrument_is_refused(sim: TED4015Simulator,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    original = sim.reply
    monkeypatch.setattr(sim, "reply", lambda line: ["THORLABS,ITC4001,M00999999,1.8.0/1.5.0/1.0.0"]
                        if line == "*IDN?" else original(line))
    tec = TED4015(sim.address, timeout_s=2.0)
    with pytest.raises(DeviceError) as caught:
        tec.connect()
    assert str(caught.value) == (f"temperature controller: {sim.address} is not a Thorlabs "
                                 "TED4000 controller (*IDN? answered "
                                 "'THORLABS,ITC4001,M00999999,1.8.0/1.5.0/1.0.0')")
    assert sim.transcript == [("rx", "*IDN?"), ("tx", "THORLABS,ITC4001,M00999999,1.8.0/1.5.0/1.0.0")]
    with pytest.raises(DeviceError, match="not connected"):
        tec.identify()


def test_unplugged_controller(sim: TED4015Simulator, tec: TED4015) -> None:
    sim.unplug()
    with pytest.raises(DeviceError) as caught:
        tec.temperature_c()
    assert re.fullmatch(rf"temperature controller: VISA I/O failed on {re.escape(sim.address)} "
                        r"\((Connection reset by peer|Broken pipe)\)", str(caught.value))
    start = time.monotonic()
    tec.close()
    tec.close()
    assert time.monotonic() - start < 0.75 * tec.timeout_s   # no wait for a reply that cannot come
    with pytest.raises(DeviceError) as caught:
        TED4015(sim.address, timeout_s=0.3).connect()
    assert str(caught.value) == (f"temperature controller: VISA I/O failed on {sim.address} "
                                 "(Connection refused)")


def test_close_leaves_the_output_as_it_is(sim: TED4015Simulator, tec: TED4015) -> None:
    tec.set_setpoint_c(37)
    tec.set_output(True)
    sim.clear_transcript()
    tec.close()
    tec.close()
    assert sim.transcript == []
    assert sim.output_on  # still regulating: the sample holder does not jump to ambient
    with pytest.raises(DeviceError, match="not connected"):
        tec.temperature_c()


def test_close_on_dead_connection_does_not_raise(sim: TED4015Simulator, tec: TED4015) -> None:
    sim.close()
    start = time.monotonic()
    tec.close()
    tec.close()
    assert time.monotonic() - start < 0.75 * tec.timeout_s   # no wait for a reply that cannot come


def test_unopenable_resources_are_one_line_errors() -> None:
    with pytest.raises(DeviceError, match=r"^temperature controller: cannot open VISA resource "
                                          r"nonsense \(.+\)$"):
        TED4015("nonsense").connect()
    with pytest.raises(DeviceError, match=r"^temperature controller: cannot open VISA resource "
                                          r"USB0::0x1313::0x8048::M00000000::INSTR \([^\n]+\)$"):
        TED4015(TED4015Options().resource, timeout_s=0.2).connect()
    with pytest.raises(DeviceError, match=r"^temperature controller: cannot load the VISA library "
                                          r"'@nosuch' \(.+\)$"):
        TED4015("TCPIP0::127.0.0.1::1::SOCKET", visa_library="@nosuch").connect()


def test_driver_declaration(sim: TED4015Simulator) -> None:
    assert (DRIVER.name, DRIVER.kind) == ("ted4015", "temperature-controller")
    options = TED4015Options()
    assert options.resource == "USB0::0x1313::0x8048::M00000000::INSTR"
    assert (options.timeout_s, options.setpoint_c, options.output_on_connect) == (1.0, None, False)
    with pytest.raises(pydantic.ValidationError):
        TED4015Options(port="/dev/ttyUSB0")
    with pytest.raises(pydantic.ValidationError):
        TED4015Options(setpoint_c=500)
    device = DRIVER.open(TED4015Options(setpoint_c=30, timeout_s=2.0), sim.address, {})
    assert sim.transcript == []  # opened, not connected
    device.connect()
    try:
        assert sim.transcript == CONNECT + ok("SOUR:TEMP 30")
    finally:
        device.close()
    twin = DRIVER.simulator(options)
    assert isinstance(twin, TED4015Simulator) and twin.name == "ted4015"
    with twin.start() as started:
        assert re.fullmatch(r"TCPIP0::127\.0\.0\.1::\d+::SOCKET", started.address)


def test_plain_pyvisa_against_the_simulator(sim: TED4015Simulator) -> None:
    """No exoacq driver: commands as the Thorlabs manual writes them, through pyvisa."""
    manager = pyvisa.ResourceManager("@py")
    controller = manager.open_resource(sim.address, read_termination="\n",
                                       write_termination="\n", timeout=1000)
    try:
        maker, model, serial, firmware = controller.query("*IDN?").split(",")
        assert (maker, model, serial) == ("THORLABS", "TED4015", "M00123456")
        assert firmware.count("/") == 2  # instrument / front panel / TEC board firmware
        assert controller.query("*TST?") == "0"
        assert controller.query("SYST:ERR?") == NO_ERROR
        controller.write("*RST")
        assert controller.query("*OPC?") == "1"
        assert controller.query("OUTP?") == "0"
        assert float(controller.query("SOUR:TEMP? DEF")) == 25.0
        assert float(controller.query("SOUR:TEMP:LIM:LOW?")) == 0.0
        assert float(controller.query("SOUR:TEMP:LIM:HIGH?")) == 60.0
        assert float(controller.query("SOUR:CURR:LIM?")) == 2.0
        controller.write("SOUR:TEMP 200")
        assert controller.query("SYST:ERR?") == '-222,"Data out of range"'
        assert controller.query("SYST:ERR?") == NO_ERROR
        controller.write("SOURce:TEMPerature 37C")
        assert float(controller.query("SOUR:TEMP?")) == 37.0
        controller.write("UNIT:TEMP K")
        assert float(controller.query("SOUR:TEMP?")) == pytest.approx(310.15)
        controller.write("UNIT:TEMP C")
        assert float(controller.query("MEAS:TEMP?")) == AMBIENT_C
        before = time.monotonic()
        controller.write("OUTP ON")
        assert controller.query("OUTP?") == "1"
        assert float(controller.query("MEAS:CURR?")) < 0  # heating
        time.sleep(TAU_S)
        temperature = float(controller.query("MEAS:TEMP?"))
        elapsed = time.monotonic() - before
        assert (approach_c(37, AMBIENT_C, TAU_S) - 1e-3 <= temperature
                <= approach_c(37, AMBIENT_C, elapsed))
        controller.write("CONF:TEMP")
        controller.write("INIT")
        assert controller.query("CONF?") == "TEMP"
        assert AMBIENT_C < float(controller.query("FETC?")) < 37
        assert float(controller.query("MEAS:TSEN?")) < 10_000  # NTC: warmer than 25 C
        assert controller.query("*IDN?;*OPC?") == f"{IDN};1"
        controller.write("SOUR:TEMP:BOGUS 1")
        assert controller.query("SYST:ERR?") == '-113,"Undefined header"'
        controller.write("OUTP2 ON")  # a single-channel controller
        assert controller.query("SYST:ERR?") == '-114,"Header suffix out of range"'
        assert controller.query("*ESR?") == "48"  # command error and execution error seen
        controller.write("*RST")
        assert controller.query("OUTP?") == "0"
        assert controller.query("SYST:ERR?") == NO_ERROR
    finally:
        controller.close()
        manager.close()
    assert sim.transcript[:2] == [("rx", "*IDN?"), ("tx", IDN)]


def test_simulator_serves_one_session_after_another(sim: TED4015Simulator) -> None:
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", sim.port), timeout=1) as connection:
            connection.sendall(b"*idn?\n")
            assert connection.makefile("rb").readline() == f"{IDN}\n".encode()
