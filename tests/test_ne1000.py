"""New Era NE-1000 driver against the emulated pump: real pyserial on a real pty.

Every test asserts the packets the pump saw and sent, in order (NE-1000 user
manual, RS-232 Communications). The transcript holds the command text and the
reply data between STX and ETX; the raw-serial tests check the bytes on the
wire. The simulator's clock is a test clock, so volumes are exact.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import pydantic
import pytest
import serial

from exoacq.devices import Pump
from exoacq.drivers.ne1000 import DRIVER, NE1000Alarm, NE1000Error, NE1000Options, NE1000Pump
from exoacq.drivers.ne1000_sim import NE1000Simulator, crc16
from exoacq.errors import DeviceError

CONNECT = [("rx", "0VER"), ("tx", "00SNE1000V3.928"), ("rx", "0DIA"), ("tx", "00S4.699")]


class Clock:
    """The simulator's time, moved by the test."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> Iterator[NE1000Simulator]:
    with NE1000Simulator(clock=clock) as simulator:
        yield simulator


@pytest.fixture
def pump(sim: NE1000Simulator) -> Iterator[NE1000Pump]:
    device = NE1000Pump(sim.port, timeout_s=0.5)
    device.connect()
    sim.clear_transcript()
    yield device
    device.close()


def packet(data: bytes) -> bytes:
    """A Safe-mode packet: STX, length, data, CRC-16 (high, low), ETX."""
    return b"\x02" + bytes([len(data) + 4]) + data + crc16(data).to_bytes(2, "big") + b"\x03"


# -- connection -------------------------------------------------------------------
def test_connect_reads_identity_and_diameter(sim: NE1000Simulator) -> None:
    pump = NE1000Pump(sim.port, timeout_s=0.5)
    pump.connect()
    try:
        assert sim.transcript == CONNECT
        assert isinstance(pump, Pump)
        assert (pump.min_rate_ul_min, pump.max_rate_ul_min) == (0.01217, 783.9)
        # the range `exoacq settings` shows is the one set_rate_ul_min takes (it once showed 0..783.9)
        rate = pump.settings["rate_ul_min"]
        assert (rate.low(pump), rate.limit(pump)) == (0.01217, 783.9)
    finally:
        pump.close()


def test_connect_applies_configured_syringe_and_rate(sim: NE1000Simulator) -> None:
    pump = NE1000Pump(sim.port, timeout_s=0.5, diameter_mm=14.5, rate_ul_min=100)
    pump.connect()
    try:
        assert sim.transcript == [
            ("rx", "0VER"), ("tx", "00SNE1000V3.928"),
            ("rx", "0DIA 14.5"), ("tx", "00S"),
            ("rx", "0RAT 100 UM"), ("tx", "00S"),
        ]
        assert (sim.diameter_mm, sim.rate_ul_min) == (14.5, 100.0)
    finally:
        pump.close()


def test_power_up_reset_alarm_is_acknowledged(clock: Clock) -> None:
    with NE1000Simulator(clock=clock, reset_alarm=True) as sim:
        pump = NE1000Pump(sim.port, timeout_s=0.5)
        pump.connect()
        pump.close()
        assert sim.transcript[:6] == [
            ("rx", "0VER"), ("tx", "00A?R"),  # the alarm reply acknowledges it
            ("rx", "0VER"), ("tx", "00SNE1000V3.928"),
            ("rx", "0DIA"), ("tx", "00S4.699"),
        ]


def test_network_address(clock: Clock) -> None:
    with NE1000Simulator(clock=clock, address=3) as sim:
        pump = NE1000Pump(sim.port, timeout_s=0.2, network_address=3)
        pump.connect()
        assert pump.status() == "stopped"
        pump.close()
        assert sim.transcript[:4] == [("rx", "3VER"), ("tx", "03SNE1000V3.928"),
                                      ("rx", "3DIA"), ("tx", "03S4.699")]
        assert sim.transcript[4:6] == [("rx", "3"), ("tx", "03S")]
        sim.clear_transcript()
        other = NE1000Pump(sim.port, timeout_s=0.2)  # pump 0 is not on this line
        with pytest.raises(DeviceError, match=r"^pump: did not answer 'VER' within 0.2 s"):
            other.connect()
        assert sim.transcript == [("rx", "0VER")]


# -- pumping ------------------------------------------------------------------------------
def test_infuses_the_target_volume_and_stops_by_itself(sim: NE1000Simulator, pump: NE1000Pump,
                                                       clock: Clock) -> None:
    pump.set_rate_ul_min(60)
    pump.set_volume_ul(25)
    pump.set_direction(True)
    pump.clear_volumes()
    pump.run()
    assert pump.running() is True
    clock.advance(10)
    assert pump.dispensed_ul() == 10.0
    clock.advance(30)  # 25 uL at 1 uL/s: done after 25 s
    assert pump.running() is False
    assert pump.dispensed_ul() == 25.0
    assert pump.status() == "stopped"
    assert sim.transcript == [
        ("rx", "0RAT 60 UM"), ("tx", "00S"),
        ("rx", "0VOL UL"), ("tx", "00S"),
        ("rx", "0VOL 25"), ("tx", "00S"),
        ("rx", "0DIR INF"), ("tx", "00S"),
        ("rx", "0CLD INF"), ("tx", "00S"),
        ("rx", "0CLD WDR"), ("tx", "00S"),
        ("rx", "0RUN"), ("tx", "00I"),
        ("rx", "0"), ("tx", "00I"),
        ("rx", "0DIS"), ("tx", "00II10.00W0.000UL"),
        ("rx", "0"), ("tx", "00S"),
        ("rx", "0DIS"), ("tx", "00SI25.00W0.000UL"),
        ("rx", "0"), ("tx", "00S"),
    ]


def test_pause_resume_and_stop(sim: NE1000Simulator, pump: NE1000Pump, clock: Clock) -> None:
    pump.set_rate_ul_min(120)  # 2 uL/s
    pump.set_volume_ul(None)  # pump until stopped
    pump.run()
    clock.advance(5)
    pump.pause()
    assert pump.status() == "paused"
    clock.advance(5)  # paused: the plunger stands still
    pump.run()  # resumes
    clock.advance(5)
    pump.stop()
    assert pump.infused_ul() == 20.0
    assert sim.transcript == [
        ("rx", "0RAT 120 UM"), ("tx", "00S"),
        ("rx", "0VOL 0"), ("tx", "00S"),
        ("rx", "0RUN"), ("tx", "00I"),
        ("rx", "0STP"), ("tx", "00P"),
        ("rx", "0"), ("tx", "00P"),
        ("rx", "0RUN"), ("tx", "00I"),
        ("rx", "0STP"), ("tx", "00P"),  # stop(): the first STP pauses,
        ("rx", "0STP"), ("tx", "00S"),  # the second stops
        ("rx", "0DIS"), ("tx", "00SI20.00W0.000UL"),
    ]


def test_withdrawn_volume_counts_separately(sim: NE1000Simulator, pump: NE1000Pump,
                                            clock: Clock) -> None:
    pump.set_rate_ul_min(30)
    pump.set_direction(False)
    pump.run()
    clock.advance(4)
    pump.stop()
    assert pump.withdrawn_ul() == 2.0
    assert pump.dispensed_ul() == -2.0
    assert not pump.infusing()
    assert sim.transcript[-6:] == [
        ("rx", "0DIS"), ("tx", "00SI0.000W2.000UL"),
        ("rx", "0DIS"), ("tx", "00SI0.000W2.000UL"),
        ("rx", "0DIR"), ("tx", "00SWDR"),
    ]


def test_large_syringe_counts_in_millilitres(sim: NE1000Simulator, pump: NE1000Pump,
                                             clock: Clock) -> None:
    pump.set_diameter_mm(26.59)  # B-D 60 mL: the pump now counts in mL
    pump.set_rate_ul_min(25100)  # 1506 mL/h, the specified maximum
    pump.set_volume_ul(12346)
    assert pump.volume_ul() == 12350.0
    pump.run()
    clock.advance(60)
    assert pump.infused_ul() == 12350.0
    assert sim.transcript == [
        ("rx", "0DIA 26.59"), ("tx", "00S"),
        ("rx", "0RAT 25.1 MM"), ("tx", "00S"),
        ("rx", "0VOL ML"), ("tx", "00S"),
        ("rx", "0VOL 12.35"), ("tx", "00S"),
        ("rx", "0VOL"), ("tx", "00S12.35ML"),
        ("rx", "0RUN"), ("tx", "00I"),
        ("rx", "0DIS"), ("tx", "00SI12.35W0.000ML"),
    ]


def test_rate_units_chosen_for_precision(sim: NE1000Simulator, pump: NE1000Pump) -> None:
    pump.set_rate_ul_min(0.0123)
    assert pump.rate_ul_min() == 0.0123
    pump.set_rate_ul_min(1 / 3)
    pump.set_rate_ul_min(2.5)
    assert pump.rate_ul_min() == 2.5
    assert sim.transcript == [
        ("rx", "0RAT 0.738 UH"), ("tx", "00S"),
        ("rx", "0RAT"), ("tx", "00S0.738UH"),
        ("rx", "0RAT 20 UH"), ("tx", "00S"),
        ("rx", "0RAT 2.5 UM"), ("tx", "00S"),
        ("rx", "0RAT"), ("tx", "00S2.500UM"),
    ]


def test_rate_change_while_pumping_keeps_the_units(sim: NE1000Simulator, pump: NE1000Pump) -> None:
    pump.set_rate_ul_min(0.5)  # UM
    pump.run()
    pump.set_rate_ul_min(0.1234)  # 7.404 UH would be exact, but units are fixed while pumping
    assert sim.rate_ul_min == 0.123
    with pytest.raises(DeviceError) as caught:
        pump.set_rate_ul_min(0.0123)  # in UM that is 0.012, below the syringe's minimum
    assert str(caught.value) == (f"pump: rate 0.0123 uL/min would be sent as 0.012 UM, out of "
                                 f"range 0.01217..783.9 uL/min on port {sim.port}")
    assert sim.transcript == [("rx", "0RAT 0.5 UM"), ("tx", "00S"), ("rx", "0RUN"), ("tx", "00I"),
                              ("rx", "0RAT 0.123 UM"), ("tx", "00I")]
    sim.clear_transcript()
    pump.stop()
    pump.set_rate_ul_min(0.0123)
    pump.run()
    with pytest.raises(DeviceError) as caught:
        pump.set_rate_ul_min(700)  # 42000 uL/h does not fit in 4 digits
    assert str(caught.value) == (f"pump: rate 700 uL/min cannot be set in UH while pumping on "
                                 f"port {sim.port} (stop the pump first)")
    assert sim.transcript == [
        ("rx", "0STP"), ("tx", "00P"), ("rx", "0STP"), ("tx", "00S"),
        ("rx", "0RAT 0.738 UH"), ("tx", "00S"),
        ("rx", "0RUN"), ("tx", "00I"),
    ]


SYRINGE_RANGE = "0.01217..783.9 uL/min for a 4.699 mm syringe"


@pytest.mark.parametrize(("call", "value", "message"), [
    ("set_rate_ul_min", 800, f"rate 800 uL/min is out of range {SYRINGE_RANGE}"),
    ("set_rate_ul_min", 0.01, f"rate 0.01 uL/min is out of range {SYRINGE_RANGE}"),
    ("set_rate_ul_min", -1, "rate -1 uL/min is out of range"),
    ("set_rate_ul_min", float("nan"), "rate nan uL/min is out of range"),
    ("set_diameter_mm", 0.05, "syringe diameter 0.05 mm is out of range 0.1..50 mm"),
    ("set_diameter_mm", 60, "syringe diameter 60 mm is out of range 0.1..50 mm"),
    ("set_volume_ul", -1, "volume -1 uL is out of range 0..9999000 uL"),
    ("set_volume_ul", 1e8, "volume 1e+08 uL is out of range 0..9999000 uL"),
])
def test_out_of_range_values_are_refused_before_sending(
        sim: NE1000Simulator, pump: NE1000Pump, call: str, value: float, message: str) -> None:
    with pytest.raises(DeviceError) as caught:
        getattr(pump, call)(value)
    assert str(caught.value).startswith(f"pump: {message}")
    assert str(caught.value).endswith(f"on port {sim.port}")
    assert sim.transcript == []


def test_refusals_become_device_errors(sim: NE1000Simulator, pump: NE1000Pump) -> None:
    with pytest.raises(NE1000Error) as caught:
        pump.ask("RAT 9999 UM")  # the pump checks the range too
    assert str(caught.value) == f"pump: 'RAT 9999 UM' refused on port {sim.port}: ?OOR out of range"
    assert caught.value.error == "?OOR"
    with pytest.raises(DeviceError) as caught:
        pump.ask("XYZ")
    assert str(caught.value) == f"pump: 'XYZ' refused on port {sim.port}: ? command not recognised"
    pump.run()
    with pytest.raises(DeviceError) as caught:
        pump.set_diameter_mm(10)  # only while stopped
    assert str(caught.value) == (f"pump: 'DIA 10' refused on port {sim.port}: ?NA not applicable "
                                 "now (pump infusing)")
    assert sim.transcript == [
        ("rx", "0RAT 9999 UM"), ("tx", "00S?OOR"),
        ("rx", "0XYZ"), ("tx", "00S?"),
        ("rx", "0RUN"), ("tx", "00I"),
        ("rx", "0DIA 10"), ("tx", "00I?NA"),
    ]
    assert pump.diameter_mm() == 4.699  # the exchange after an error is clean


def test_stall_alarm(sim: NE1000Simulator, pump: NE1000Pump, clock: Clock) -> None:
    pump.run()
    clock.advance(6)
    sim.stall()
    with pytest.raises(NE1000Alarm) as caught:
        pump.running()
    assert str(caught.value) == (f"pump: alarm A?S pump motor stalled in reply to status query on "
                                 f"port {sim.port} (the command was not carried out)")
    assert pump.status() == "paused"
    pump.run()
    clock.advance(6)
    assert pump.infused_ul() == 2.0  # 10 uL/min for 12 s
    assert sim.transcript == [
        ("rx", "0RUN"), ("tx", "00I"),
        ("rx", "0"), ("tx", "00A?S"),
        ("rx", "0"), ("tx", "00P"),
        ("rx", "0RUN"), ("tx", "00I"),
        ("rx", "0DIS"), ("tx", "00II2.000W0.000UL"),
    ]


def test_describe(sim: NE1000Simulator, pump: NE1000Pump) -> None:
    assert pump.describe() == {
        "model": "NE-1000", "firmware": "3.928", "port": sim.port, "network_address": 0,
        "diameter_mm": 4.699, "rate_ul_min": 10.0, "min_rate_ul_min": 0.01217,
        "max_rate_ul_min": 783.9, "direction": "infuse", "volume_ul": None,
        "infused_ul": 0.0, "withdrawn_ul": 0.0, "status": "stopped",
    }
    assert sim.transcript == [
        ("rx", "0DIS"), ("tx", "00SI0.000W0.000UL"),
        ("rx", "0DIA"), ("tx", "00S4.699"),
        ("rx", "0RAT"), ("tx", "00S10.00UM"),
        ("rx", "0DIR"), ("tx", "00SINF"),
        ("rx", "0VOL"), ("tx", "00S0.000UL"),
        ("rx", "0"), ("tx", "00S"),
    ]
    assert NE1000Pump.settings["rate_ul_min"].limit(pump) == 783.9


def test_close_stops_the_pump_once(sim: NE1000Simulator, pump: NE1000Pump) -> None:
    pump.run()
    sim.clear_transcript()
    pump.close()
    assert sim.transcript == [("rx", "0STP"), ("tx", "00P"), ("rx", "0STP"), ("tx", "00S")]
    assert sim.status == "S"
    pump.close()
    assert len(sim.transcript) == 4
    with pytest.raises(DeviceError, match="not connected"):
        pump.running()


def test_close_on_dead_port_does_not_raise(sim: NE1000Simulator, pump: NE1000Pump) -> None:
    sim.close()
    start = time.monotonic()
    pump.close()
    pump.close()
    assert time.monotonic() - start < 0.8


# -- broken links ---------------------------------------------------------------------------
def test_silent_pump_times_out(silent_port: str) -> None:
    pump = NE1000Pump(silent_port, timeout_s=0.2)
    start = time.monotonic()
    with pytest.raises(DeviceError) as caught:
        pump.connect()
    elapsed = time.monotonic() - start
    assert str(caught.value) == f"pump: did not answer 'VER' within 0.2 s on port {silent_port}"
    assert 0.15 < elapsed < 0.9   # the 0.2 s asked for, not the 1 s default (loose for a loaded machine)
    with pytest.raises(DeviceError, match="not connected"):
        pump.firmware()


def test_simulator_gone_silent(sim: NE1000Simulator, pump: NE1000Pump) -> None:
    sim.silent = True
    with pytest.raises(DeviceError) as caught:
        pump.running()
    assert str(caught.value) == f"pump: did not answer status query within 0.5 s on port {sim.port}"
    assert sim.transcript == [("rx", "0")]


def test_garbled_replies(sim: NE1000Simulator, pump: NE1000Pump) -> None:
    sim.encode = lambda reply: b"\x02" + reply.encode()[:-2] + b"\xff\x03"  # type: ignore[method-assign]
    with pytest.raises(DeviceError) as caught:
        pump.diameter_mm()
    assert str(caught.value) == f"pump: unreadable reply '4.6\\xff' to 'DIA' on port {sim.port}"
    sim.encode = lambda reply: reply.encode() + b"\x03"  # type: ignore[method-assign]
    with pytest.raises(DeviceError) as caught:
        pump.diameter_mm()
    assert str(caught.value) == (f"pump: unreadable reply '00S4.699\\x03' to 'DIA' "
                                 f"on port {sim.port}")
    assert sim.transcript == [("rx", "0DIA"), ("tx", "00S4.699")] * 2


def test_unplugged_pump(sim: NE1000Simulator, pump: NE1000Pump) -> None:
    sim.unplug()
    with pytest.raises(DeviceError) as caught:
        pump.running()
    assert str(caught.value) == f"pump: serial I/O failed on port {sim.port} (Input/output error)"


def test_missing_port_is_a_one_line_error() -> None:
    pump = NE1000Pump("/dev/ttyUSB-does-not-exist")
    with pytest.raises(DeviceError) as caught:
        pump.connect()
    assert str(caught.value) == ("pump: cannot open serial port /dev/ttyUSB-does-not-exist "
                                 "(No such file or directory)")
    pump.close()


# -- the simulator without our driver ---------------------------------------------------------
def test_manual_commands_over_raw_serial(sim: NE1000Simulator, clock: Clock) -> None:
    """Commands typed as the manual's quick start does; replies as the manual frames them."""
    exchanges = [
        (b"VER\r", b"\x0200SNE1000V3.928\x03"),
        (b"dia 26.59\r", b"\x0200S\x03"),  # any case, spaces ignored
        (b"DIA\r", b"\x0200S26.59\x03"),
        (b"RAT 1506 MH\r", b"\x0200S\x03"),  # the specified maximum for a 60 mL syringe
        (b"RAT 1507 MH\r", b"\x0200S?OOR\x03"),
        (b"RAT 12345 UM\r", b"\x0200S?OOR\x03"),  # more than 4 digits
        (b"RAT\r", b"\x0200S1506.MH\x03"),
        (b"VOL\r", b"\x0200S0.000ML\x03"),  # above 14 mm volumes are in mL
        (b"VOL 5\r", b"\x0200S\x03"),
        (b"DIR INF\r", b"\x0200S\x03"),
        (b"0RUN\r", b"\x0200I\x03"),
        (b"\r", b"\x0200I\x03"),  # a packet without a command is a status query
        (b"DIR REV\r", b"\x0200I?NA\x03"),  # a target volume is set
        (b"RAT 3 UM\r", b"\x0200I?NA\x03"),  # units cannot change while pumping
        (b"RAT 1000 MH\r", b"\x0200I\x03"),
        (b"STP\r", b"\x0200P\x03"),
        (b"STP\r", b"\x0200S\x03"),
        (b"PUR\r", b"\x0200X\x03"),
        (b"STP\r", b"\x0200S\x03"),
        (b"DIS\r", b"\x0200SI4.177W0.000ML\x03"),  # 2.51 + 1.667 mL
        (b"CLD INF\r", b"\x0200S\x03"),
        (b"CLD\r", b"\x0200S?OOR\x03"),
        (b"BUZ 1 3\r", b"\x0200S\x03"),
        (b"BUZ\r", b"\x0200S1\x03"),
        (b"SAF\r", b"\x0200S0\x03"),
        (b"PF 1\r", b"\x0200S\x03"),
        (b"PF\r", b"\x0200S1\x03"),
        (b"TRG LE\r", b"\x0200S\x03"),
        (b"IN 3\r", b"\x0200S0\x03"),
        (b"OUT 5 1\r", b"\x0200S\x03"),
        (b"PHN\r", b"\x0200S01\x03"),
        (b"FUN\r", b"\x0200SRAT\x03"),
        (b"XYZ\r", b"\x0200S?\x03"),
        (b"VER 2\r", b"\x0200S?NA\x03"),
        (b"1VER\r", None),  # not this pump's address: no answer
        (b"*ADR\r", b"\x0200S00\x03"),
        (b"*ADR 4\r", b"\x0204S\x03"),
        (b"4DIA\r", b"\x0204S26.59\x03"),
        (b"*RESET\r", b"\x0200S\x03"),  # back to address 0
        (b"\x02\x08SAF0\x55\x43\x03", b"\x0200S\x03"),  # the manual's "back to Basic mode" packet
    ]
    with serial.Serial(sim.port, timeout=0.2) as port:
        for command, expected in exchanges:
            port.write(command)
            got = port.read_until(b"\x03")
            assert got == (expected or b""), command
            if command == b"0RUN\r":
                clock.advance(6)  # 1506 mL/h for 6 s: 2.51 mL
            if command == b"RAT 1000 MH\r":
                clock.advance(6)  # then 1000 mL/h: 1.667 mL more
                assert sim.infused_ul == pytest.approx(2510 + 1666.67, rel=1e-6)
    assert sim.transcript[:4] == [("rx", "VER"), ("tx", "00SNE1000V3.928"),
                                  ("rx", "dia 26.59"), ("tx", "00S")]
    assert ("rx", "1VER") in sim.transcript and ("tx", "04S26.59") in sim.transcript
    assert sim.ttl_output == 1


def test_safe_mode_over_raw_serial(sim: NE1000Simulator) -> None:
    """SAF 1: packets with length and CRC both ways; silence for 1 s stops the pump."""
    with serial.Serial(sim.port, timeout=0.3) as port:
        def exchange(command: bytes, want: bytes) -> None:
            port.write(command)
            assert port.read(len(want) or 1) == want, command

        exchange(b"SAF 1\r", packet(b"00S"))  # the reply is already in Safe mode
        exchange(packet(b"VER"), packet(b"00SNE1000V3.928"))
        exchange(packet(b"RUN")[:-3] + b"\x00\x00\x03", packet(b"00S?COM"))  # bad CRC
        exchange(b"VER\r", b"")  # a Basic-mode command is not a Safe-mode packet
        exchange(packet(b"RUN"), packet(b"00I"))
        start = time.monotonic()
        assert port.read_until(b"\x03") == b""  # nothing for 1 s...
        port.timeout = 1.5
        assert port.read(10) == packet(b"00A?T")  # ...then the alarm, unprompted
        assert 0.8 < time.monotonic() - start < 1.6
        assert sim.status == "P"
        exchange(b"\x02\x08SAF0\x55\x43\x03", packet(b"00A?T"))  # acknowledged, not done
        exchange(b"\x02\x08SAF0\x55\x43\x03", b"\x0200P\x03")  # Basic mode again
    assert sim.transcript[-7:] == [
        ("rx", "RUN"), ("tx", "00I"), ("tx", "00A?T"),
        ("rx", "SAF0"), ("tx", "00A?T"), ("rx", "SAF0"), ("tx", "00P"),
    ]


# -- registry ----------------------------------------------------------------------------
def test_driver_declaration() -> None:
    assert (DRIVER.name, DRIVER.kind) == ("ne1000", "pump")
    options = NE1000Options(port="/dev/ttyUSB3", network_address=2, diameter_mm=4.699)
    with pytest.raises(pydantic.ValidationError):
        NE1000Options(network_address=100)
    with pytest.raises(pydantic.ValidationError):
        NE1000Options(baudrate=4800)
    device = DRIVER.open(options, None, {})
    assert isinstance(device, NE1000Pump)
    assert (device.port, device.network_address, device._serial) == ("/dev/ttyUSB3", 2, None)
    simulator = DRIVER.simulator(options)  # type: ignore[misc]
    simulator.start()
    try:
        pump = DRIVER.open(options, simulator.address, {})
        pump.connect()
        assert pump.firmware() == "NE1000V3.928"
        pump.close()
    finally:
        simulator.close()
