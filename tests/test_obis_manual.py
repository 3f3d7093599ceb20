"""The OBIS simulator driven WITHOUT exoacq's driver: raw pyserial on a real pty.

Commands are copied from the Coherent OBIS LX/LS Operator's Manual, Appendix:
Commands and queries, in the manual's long forms and in short, lowercase and
colon-prefixed variants; every reply is asserted byte for byte. The last tests
are small third-party drivers written from the manual's first-contact sequence
(and from what the open-source OBIS drivers send first), to prove that a
driver written from the manual works against the simulator unchanged.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import serial

from exoacq.drivers.obis_sim import ObisSimulator

IDN = b"Coherent, Inc - OBIS 488nm LX 50mW - V1.0.1 - Dec 14 2010"


class FakeClock:
    """The simulator's clock, advanced by the test instead of by waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[ObisSimulator]:
    with ObisSimulator(clock=clock) as simulator:
        yield simulator


@pytest.fixture
def port(sim: ObisSimulator) -> Iterator[serial.Serial]:
    with serial.Serial(sim.port, timeout=1) as link:
        yield link


def exchange(port: serial.Serial, command: str, reply: bytes, *, end: bytes = b"\r\n") -> None:
    """Send one command line and assert the exact bytes that come back."""
    port.write(command.encode("ascii") + end)
    got = port.read(len(reply))
    assert got == reply, f"{command!r}: {got!r} != {reply!r}"
    assert port.in_waiting == 0, f"{command!r}: extra bytes {port.read(port.in_waiting)!r}"


def short(command: str) -> str:
    """The manual's short form: the capitals of every mnemonic (``SYSTem`` -> ``SYST``)."""
    header, _, argument = command.partition(" ")
    nodes = [re.match(r"\*?[A-Z]+", node).group() for node in header.split(":")]  # type: ignore[union-attr]
    return ":".join(nodes) + ("?" if header.endswith("?") else "") + (" " + argument if argument else "")


# Query -> documented reply (before OK), for the simulator's defaults: OBIS 488 nm LX 50 mW.
QUERIES = [
    ("*IDN?", IDN),
    ("*TST?", b"00000000"),
    ("SYSTem:INFormation:MODel?", b"OBIS 488nm LX 50mW"),
    ("SYSTem:INFormation:MDATe?", b"2010-12-14"),
    ("SYSTem:INFormation:CDATe?", b"2010-12-20"),
    ("SYSTem:INFormation:SNUMber?", b"SIM-0001"),
    ("SYSTem:INFormation:PNUMber?", b"1000001"),
    ("SYSTem:INFormation:FVERsion?", b"V1.0.1"),
    ("SYSTem:INFormation:PVERsion?", b"1.0"),
    ("SYSTem:INFormation:WAVelength?", b"488.0"),
    ("SYSTem:INFormation:POWer?", b"0.05000"),
    ("SYSTem:INFormation:TYPe?", b"DDL"),
    ("SYSTem:INFormation:AMODulation:TYPe?", b"2"),
    ("SOURce:POWer:NOMinal?", b"0.05000"),
    ("SOURce:POWer:LIMit:LOW?", b"0.00000"),
    ("SOURce:POWer:LIMit:HIGH?", b"0.05000"),
    ("SYSTem:COMMunicate:HANDshaking?", b"ON"),
    ("SYSTem:COMMunicate:PROMpt?", b"OFF"),
    ("SYSTem:AUTostart?", b"OFF"),
    ("SYSTem:STATus?", b"0000000C"),  # laser ready, laser standby
    ("SYSTem:FAULt?", b"00000000"),
    ("SYSTem:INDicator:LASer?", b"ON"),
    ("SYSTem:ERRor:COUNt?", b"0"),
    ("SYSTem:ERRor:NEXT?", b'0,"No error"'),
    ("SYSTem:CYCLes?", b"1"),
    ("SYSTem:HOURs?", b"123.45"),
    ("SYSTem:DIODe:HOURs?", b"67.89"),
    ("SOURce:POWer:LEVel?", b"0.00000"),
    ("SOURce:POWer:CURRent?", b"0.00000"),
    ("SOURce:TEMPerature:BASeplate?", b"25.00C"),
    ("SOURce:AM:SOURce?", b"CWP"),
    ("SOURce:POWer:LEVel:IMMediate:AMPLitude?", b"0.00000"),
    ("SOURce:AM:STATe?", b"OFF"),
    ("SYSTem:CDRH?", b"ON"),
    ("SOURce:TEMPerature:APRobe?", b"ON"),
    ("SOURce:TEMPerature:DIODe?", b"30.00C"),
    ("SOURce:TEMPerature:DSETpoint?", b"30.00C"),
    ("SOURce:TEMPerature:INTernal?", b"32.00C"),
    ("SOURce:TEMPerature:PROTection:BASeplate:HIGH?", b"50.00C"),
    ("SOURce:TEMPerature:PROTection:BASeplate:LOW?", b"10.00C"),
    ("SOURce:TEMPerature:PROTection:DIODe:HIGH?", b"35.00C"),
    ("SOURce:TEMPerature:PROTection:DIODe:LOW?", b"25.00C"),
    ("SOURce:TEMPerature:PROTection:INTernal:HIGH?", b"65.00C"),
    ("SOURce:TEMPerature:PROTection:INTernal:LOW?", b"5.00C"),
    ("SOURce:CURRent:LIMit:HIGH?", b"0.11000"),
    ("SOURce:CURRent:LIMit:LOW?", b"0.00000"),
]


def test_every_documented_query_in_long_short_and_lowercase_forms(
        sim: ObisSimulator, port: serial.Serial) -> None:
    for query, value in QUERIES:
        for form in (query, short(query), ":" + short(query).lower(), query.lower()):
            exchange(port, form, value + b"\r\nOK\r\n")
    assert ("rx", "SYSTem:INFormation:MODel?") in sim.transcript
    assert ("rx", ":syst:inf:mod?") in sim.transcript


def test_first_query_of_third_party_drivers_is_answered(port: serial.Serial) -> None:
    exchange(port, "SYSTem:INFormation:MODel?", b"OBIS 488nm LX 50mW\r\nOK\r\n")


def test_cr_only_and_lf_only_terminators(port: serial.Serial) -> None:
    exchange(port, "SYST:INF:SNUM?", b"SIM-0001\r\nOK\r\n", end=b"\r")
    exchange(port, "SYST:INF:SNUM?", b"SIM-0001\r\nOK\r\n", end=b"\n")


def test_device_selection_suffix(port: serial.Serial) -> None:
    """Manual, Device selection syntax: no suffix or 0 is this laser; others are absent."""
    exchange(port, "SYSTem0:INFormation:WAVelength?", b"488.0\r\nOK\r\n")
    exchange(port, "*IDN0?", IDN + b"\r\nOK\r\n")
    exchange(port, "SOUR0:POW:LIM:HIGH?", b"0.05000\r\nOK\r\n")
    exchange(port, "SYST1:INF:MOD?", b"ERR-241\r\n")
    exchange(port, "SOURce2:AM:STATe?", b"ERR-241\r\n")


@pytest.mark.parametrize(("command", "query", "value"), [
    ("SYSTem:CDRH OFF", "SYSTem:CDRH?", b"OFF"),
    ("syst:cdrh on", "SYST:CDRH?", b"ON"),
    ("SYSTem:AUTostart ON", "SYSTem:AUTostart?", b"ON"),
    ("SYSTem:COMMunicate:PROMpt ON", "SYST:COMM:PROM?", b"ON"),
    ("SYSTem:INDicator:LASer OFF", "SYST:IND:LAS?", b"OFF"),
    ("SYSTem:INFormation:AMODulation:TYPe 1", "SYST:INF:AMOD:TYP?", b"1"),
    ("SOURce:AM:INTernal CWC", "SOURce:AM:SOURce?", b"CWC"),
    ("sour:am:int cwp", "SOUR:AM:SOUR?", b"CWP"),
    ("SOURce:AM:EXTernal DIGital", "SOURce:AM:SOURce?", b"DIGITAL"),
    ("SOUR:AM:EXT DIG", "SOUR:AM:SOUR?", b"DIGITAL"),
    ("SOURce:AM:EXTernal ANALog", "SOUR:AM:SOUR?", b"ANALOG"),
    ("sour:am:ext analog", "SOUR:AM:SOUR?", b"ANALOG"),
    ("SOURce:AM:EXTernal MIXed", "SOUR:AM:SOUR?", b"MIXED"),
    ("SOURce:AM:EXTernal DIGSO", "SOUR:AM:SOUR?", b"DIGSO"),
    ("SOURce:AM:EXTernal MIXSO", "SOUR:AM:SOUR?", b"MIXSO"),
    ("SOURce:POWer:LEVel:IMMediate:AMPLitude 0.025", "SOUR:POW:LEV:IMM:AMPL?", b"0.02500"),
    ("sour:pow:lev:imm:ampl 2.5E-2", "SOUR:POW:LEV:IMM:AMPL?", b"0.02500"),
    ("SOURce:TEMPerature:APRobe OFF", "SOURce:TEMPerature:APRobe?", b"OFF"),
    ("SOURce:AM:STATe ON", "SOURce:AM:STATe?", b"ON"),
])
def test_set_commands_answer_ok_and_take_effect(
        port: serial.Serial, command: str, query: str, value: bytes) -> None:
    exchange(port, command, b"OK\r\n")
    exchange(port, query, value + b"\r\nOK\r\n")


def test_external_mode_sets_the_status_bit(port: serial.Serial) -> None:
    exchange(port, "SOUR:AM:EXT MIX", b"OK\r\n")
    exchange(port, "SYST:STAT?", b"0000040C\r\nOK\r\n")  # external operating mode


def test_error_replies(port: serial.Serial) -> None:
    exchange(port, "SYSTem:BOGUS?", b"ERR-100\r\n")  # unrecognized command/query
    exchange(port, "?SYSTem:INFormation:MODel?", b"ERR-100\r\n")
    exchange(port, "SYSTem:INFormation:MODel OBIS", b"ERR-100\r\n")  # a query only
    exchange(port, "SYST:INF:MODEL?", b"OBIS 488nm LX 50mW\r\nOK\r\n")
    exchange(port, "SYST:INF:MODE?", b"ERR-100\r\n")  # neither short nor long form
    exchange(port, "SOURce:POWer:LEVel:IMMediate:AMPLitude abc", b"ERR-102\r\n")  # syntax
    exchange(port, "SYSTem:CDRH? ON", b"ERR-102\r\n")
    exchange(port, "SYSTem:ERRor:CLEar now", b"ERR-102\r\n")
    exchange(port, "SOURce:AM:STATe", b"ERR-109\r\n")  # parameter missing
    exchange(port, "SYSTem:CDRH", b"ERR-109\r\n")
    exchange(port, "SYSTem:CDRH MAYBE", b"ERR-220\r\n")  # invalid parameter
    exchange(port, "SOURce:AM:INTernal DIGital", b"ERR-220\r\n")
    exchange(port, "SOURce:POWer:LEVel:IMMediate:AMPLitude 0.051", b"ERR-220\r\n")
    exchange(port, "SOURce:POWer:LEVel:IMMediate:AMPLitude -0.001", b"ERR-220\r\n")
    exchange(port, "SOURce:POWer:LEVel:IMMediate:AMPLitude nan", b"ERR-220\r\n")
    exchange(port, "SOURce:POWer:LEVel:IMMediate:AMPLitude?", b"0.00000\r\nOK\r\n")


def test_error_queue(port: serial.Serial) -> None:
    exchange(port, "SYST:BOGUS", b"ERR-100\r\n")
    exchange(port, "SOUR:AM:STAT", b"ERR-109\r\n")
    exchange(port, "SYSTem:ERRor:COUNt?", b"2\r\nOK\r\n")
    exchange(port, "SYSTem:ERRor:NEXT?", b'-100,"Unrecognized command/query"\r\nOK\r\n')
    exchange(port, "SYSTem:ERRor:NEXT?", b'-109,"Parameter missing"\r\nOK\r\n')
    exchange(port, "SYSTem:ERRor:NEXT?", b'0,"No error"\r\nOK\r\n')
    exchange(port, "SYST:CDRH 1", b"ERR-220\r\n")
    exchange(port, "SYSTem:ERRor:CLEar", b"OK\r\n")
    exchange(port, "SYST:ERR:COUN?", b"0\r\nOK\r\n")


def test_error_queue_overflow(port: serial.Serial) -> None:
    for _ in range(20):
        exchange(port, "X?", b"ERR-100\r\n")
    exchange(port, "SYST:ERR:COUN?", b"16\r\nOK\r\n")
    for _ in range(15):
        exchange(port, "SYST:ERR:NEXT?", b'-100,"Unrecognized command/query"\r\nOK\r\n')
    exchange(port, "SYST:ERR:NEXT?", b'-350,"Queue overflow"\r\nOK\r\n')


def test_handshaking_off_leaves_out_ok(sim: ObisSimulator, port: serial.Serial) -> None:
    exchange(port, "SYSTem:COMMunicate:HANDshaking OFF", b"")
    port.write(b"SOURce:POWer:LEVel:IMMediate:AMPLitude 0.01\r\n")  # no reply at all:
    exchange(port, "SOUR:POW:LEV:IMM:AMPL?", b"0.01000\r\n")  # the next bytes are this reply
    exchange(port, "SYSTem:COMMunicate:HANDshaking?", b"OFF\r\n")
    exchange(port, "SYSTem:BOGUS?", b"ERR-100\r\n")  # errors are still reported
    exchange(port, "SOUR:AM:STAT", b"ERR-109\r\n")
    exchange(port, "syst:comm:hand on", b"OK\r\n")
    exchange(port, "SYST:COMM:HAND?", b"ON\r\nOK\r\n")
    assert sim.transcript[:4] == [
        ("rx", "SYSTem:COMMunicate:HANDshaking OFF"),
        ("rx", "SOURce:POWer:LEVel:IMMediate:AMPLitude 0.01"),
        ("rx", "SOUR:POW:LEV:IMM:AMPL?"), ("tx", "0.01000"),
    ]


def test_emission_cdrh_delay_power_current_and_hours(
        sim: ObisSimulator, port: serial.Serial, clock: FakeClock) -> None:
    exchange(port, "SOURce:POWer:LEVel:IMMediate:AMPLitude 0.02", b"OK\r\n")
    exchange(port, "SOURce:AM:STATe ON", b"OK\r\n")
    exchange(port, "SYSTem:STATus?", b"00000014\r\nOK\r\n")  # CDRH delay, laser ready
    exchange(port, "SOURce:POWer:LEVel?", b"0.00000\r\nOK\r\n")
    clock.advance(4.9)
    exchange(port, "SOURce:POWer:LEVel?", b"0.00000\r\nOK\r\n")
    clock.advance(0.1)  # the 5 s CDRH delay is over
    exchange(port, "SYSTem:STATus?", b"00000006\r\nOK\r\n")  # emission, ready
    exchange(port, "SOURce:POWer:LEVel?", b"0.02000\r\nOK\r\n")
    exchange(port, "SOURce:POWer:CURRent?", b"0.05500\r\nOK\r\n")  # 30 mA + 20 mW / 0.8 W/A
    clock.advance(3600.0)
    exchange(port, "SYSTem:DIODe:HOURs?", b"68.89\r\nOK\r\n")
    exchange(port, "SYSTem:HOURs?", b"124.45\r\nOK\r\n")
    exchange(port, "SOURce:AM:STATe OFF", b"OK\r\n")
    clock.advance(3600.0)
    exchange(port, "SYSTem:DIODe:HOURs?", b"68.89\r\nOK\r\n")  # no emission, no diode hours
    exchange(port, "SYSTem:HOURs?", b"125.45\r\nOK\r\n")  # powered hours go on
    exchange(port, "SOURce:POWer:CURRent?", b"0.00000\r\nOK\r\n")


def test_external_modulation_scales_the_output(sim: ObisSimulator, port: serial.Serial) -> None:
    exchange(port, "SYST:CDRH OFF", b"OK\r\n")
    exchange(port, "SOUR:POW:LEV:IMM:AMPL 0.04", b"OK\r\n")
    exchange(port, "SOURce:AM:EXTernal ANALog", b"OK\r\n")
    exchange(port, "SOUR:AM:STAT ON", b"OK\r\n")
    sim.modulation = 0.25  # 0.25 V on the analog input
    exchange(port, "SOUR:POW:LEV?", b"0.01000\r\nOK\r\n")
    sim.modulation = 0.0  # digital input low
    exchange(port, "SOUR:POW:LEV?", b"0.00000\r\nOK\r\n")
    exchange(port, "SOUR:AM:INT CWP", b"OK\r\n")
    exchange(port, "SOUR:POW:LEV?", b"0.04000\r\nOK\r\n")


def test_sleep_mode_refuses_emission(port: serial.Serial) -> None:
    exchange(port, "SYST:CDRH OFF", b"OK\r\n")
    exchange(port, "SOUR:AM:STAT ON", b"OK\r\n")
    exchange(port, "SOURce:TEMPerature:APRobe OFF", b"OK\r\n")  # sleep: emission stops
    exchange(port, "SOUR:AM:STAT?", b"OFF\r\nOK\r\n")
    exchange(port, "SOURce:TEMPerature:DIODe?", b"25.00C\r\nOK\r\n")  # TEC off
    exchange(port, "SOUR:AM:STAT ON", b"ERR-221\r\n")
    exchange(port, "SOURce:TEMPerature:APRobe ON", b"OK\r\n")
    exchange(port, "SOUR:AM:STAT ON", b"OK\r\n")
    exchange(port, "SOUR:AM:STAT?", b"ON\r\nOK\r\n")


def test_open_interlock(sim: ObisSimulator, port: serial.Serial) -> None:
    sim.interlock_open = True
    exchange(port, "SOURce:AM:STATe ON", b"ERR-221\r\n")  # settings conflict
    exchange(port, "SYSTem:FAULt?", b"00002000\r\nOK\r\n")  # laser ready fault
    exchange(port, "*TST?", b"00002000\r\nOK\r\n")
    exchange(port, "SYSTem:STATus?", b"04000009\r\nOK\r\n")


def test_autostart_starts_emission_after_power_up_and_cdrh_delay(
        sim: ObisSimulator, port: serial.Serial, clock: FakeClock) -> None:
    exchange(port, "SYSTem:AUTostart ON", b"OK\r\n")
    exchange(port, "SOUR:POW:LEV:IMM:AMPL 0.01", b"OK\r\n")
    exchange(port, "SYST:COMM:HAND OFF", b"")
    exchange(port, "SYST:ERR:COUN?", b"0\r\n")
    sim.power_cycle()
    # Session settings are back to their power-up state; stored settings are kept.
    exchange(port, "SYST:COMM:HAND?", b"ON\r\nOK\r\n")
    exchange(port, "SYSTem:CYCLes?", b"2\r\nOK\r\n")
    exchange(port, "SYST:AUT?", b"ON\r\nOK\r\n")
    exchange(port, "SOURce:AM:STATe?", b"ON\r\nOK\r\n")
    exchange(port, "SYSTem:STATus?", b"00000014\r\nOK\r\n")  # CDRH delay
    exchange(port, "SOURce:POWer:LEVel?", b"0.00000\r\nOK\r\n")
    assert sim.emitted_power_mw == 0.0
    clock.advance(5.0)
    exchange(port, "SOURce:POWer:LEVel?", b"0.01000\r\nOK\r\n")
    assert sim.emitted_power_mw == 10.0


def test_autostart_with_cdrh_off_emits_at_once(
        sim: ObisSimulator, port: serial.Serial) -> None:
    exchange(port, "SYST:AUT ON", b"OK\r\n")
    exchange(port, "SYST:CDRH OFF", b"OK\r\n")
    exchange(port, "SOUR:POW:LEV:IMM:AMPL 0.005", b"OK\r\n")
    sim.power_cycle()
    exchange(port, "SYST:STAT?", b"00000006\r\nOK\r\n")
    exchange(port, "SOUR:POW:LEV?", b"0.00500\r\nOK\r\n")


def test_without_autostart_power_up_leaves_emission_off(
        sim: ObisSimulator, port: serial.Serial, clock: FakeClock) -> None:
    exchange(port, "SOUR:POW:LEV:IMM:AMPL 0.01", b"OK\r\n")
    exchange(port, "SOUR:AM:STAT ON", b"OK\r\n")
    sim.power_cycle()
    clock.advance(10.0)
    exchange(port, "SOURce:AM:STATe?", b"OFF\r\nOK\r\n")
    exchange(port, "SYSTem:STATus?", b"0000000C\r\nOK\r\n")
    exchange(port, "SOUR:POW:LEV:IMM:AMPL?", b"0.01000\r\nOK\r\n")  # set point kept


def test_warm_up_after_power_up(clock: FakeClock) -> None:
    with ObisSimulator(clock=clock, warmup_s=30.0, cdrh_delay_s=5.0) as sim, \
            serial.Serial(sim.port, timeout=1) as port:
        exchange(port, "SYST:AUT ON", b"OK\r\n")
        sim.power_cycle()
        exchange(port, "SYST:STAT?", b"00000100\r\nOK\r\n")  # warming up, not ready
        clock.advance(30.0)
        exchange(port, "SYST:STAT?", b"00000014\r\nOK\r\n")  # then the CDRH delay
        clock.advance(5.0)
        exchange(port, "SYST:STAT?", b"00000006\r\nOK\r\n")


def test_rst_warm_boots(sim: ObisSimulator, port: serial.Serial) -> None:
    exchange(port, "SYST:CDRH OFF", b"OK\r\n")
    exchange(port, "SOUR:AM:STAT ON", b"OK\r\n")
    exchange(port, "SYST:COMM:HAND OFF", b"")
    exchange(port, "*RST", b"OK\r\n")  # answered with the power-up handshaking
    exchange(port, "SOUR:AM:STAT?", b"OFF\r\nOK\r\n")
    exchange(port, "SYST:CYCL?", b"1\r\nOK\r\n")  # a warm boot is not a power cycle


# -- third-party drivers written from the manual ---------------------------------
class ManualObis:
    """A minimal OBIS driver as anyone would write it from the manual: CR LF
    terminated commands, handshaking on, a data line (for queries) then OK."""

    def __init__(self, port: str) -> None:
        self.link = serial.Serial(port, baudrate=115200, timeout=1)

    def _line(self) -> str:
        line = self.link.readline().decode("ascii")
        assert line.endswith("\r\n"), f"timeout or partial line {line!r}"
        if line.startswith("ERR"):
            raise RuntimeError(line.strip())
        return line.strip()

    def query(self, command: str) -> str:
        self.link.write(f"{command}\r\n".encode("ascii"))
        value = self._line()
        assert self._line() == "OK"
        return value

    def command(self, command: str) -> None:
        self.link.write(f"{command}\r\n".encode("ascii"))
        assert self._line() == "OK"

    def close(self) -> None:
        self.link.close()


def test_third_party_first_contact_sequence(sim: ObisSimulator, clock: FakeClock) -> None:
    laser = ManualObis(sim.port)
    try:
        assert laser.query("SYST:INF:MOD?") == "OBIS 488nm LX 50mW"
        assert laser.query("SYST:INF:SNUM?") == "SIM-0001"
        assert float(laser.query("SYST:INF:WAV?")) == 488.0
        nominal_w = float(laser.query("SOUR:POW:NOM?"))
        low_w = float(laser.query("SOUR:POW:LIM:LOW?"))
        high_w = float(laser.query("SOUR:POW:LIM:HIGH?"))
        assert (nominal_w, low_w, high_w) == (0.05, 0.0, 0.05)
        assert laser.query("SYST:AUT?") == "OFF"
        laser.command("SYST:CDRH OFF")
        laser.command("SOUR:AM:INT CWP")
        laser.command(f"SOUR:POW:LEV:IMM:AMPL {nominal_w / 2:.5f}")
        laser.command("SOUR:AM:STAT ON")
        assert laser.query("SOUR:AM:STAT?") == "ON"
        assert float(laser.query("SOUR:POW:LEV?")) == pytest.approx(0.025)
        status = int(laser.query("SYST:STAT?"), 16)
        assert status & 0x2 and status & 0x4 and not status & 0x1  # emission, ready, no fault
        assert int(laser.query("SYST:FAUL?"), 16) == 0
        assert float(laser.query("SYST:DIOD:HOUR?")) == pytest.approx(67.89)
        with pytest.raises(RuntimeError, match="ERR-220"):
            laser.command("SOUR:POW:LEV:IMM:AMPL 1")
        laser.command("SOUR:AM:STAT OFF")
        assert float(laser.query("SOUR:POW:LEV?")) == 0.0
    finally:
        laser.close()
    assert sim.transcript[:2] == [("rx", "SYST:INF:MOD?"), ("tx", "OBIS 488nm LX 50mW")]


def test_third_party_long_form_initialisation(sim: ObisSimulator) -> None:
    """The long-form start-up several open-source drivers use: identity, CDRH,
    TEC probe, self test and autostart queries, then handshaking, external
    digital modulation, TEC on and emission."""
    laser = ManualObis(sim.port)
    try:
        assert laser.query("SYSTem:INFormation:MODel?") == "OBIS 488nm LX 50mW"
        assert laser.query("SYSTem:INFormation:SNUMber?") == "SIM-0001"
        assert laser.query("SYSTem:CDRH?") == "ON"
        assert laser.query("SOURce:TEMPerature:APRobe?") == "ON"
        assert laser.query("*TST?") == "00000000"
        assert laser.query("SYSTem:AUTostart?") == "OFF"
        laser.command("SYSTem:COMMunicate:HANDshaking ON")
        laser.command("SOURce:AM:EXTernal DIGital")
        laser.command("SOURce:TEMPerature:APRobe ON")
        laser.command("SOURce:AM:STATe ON")
        assert laser.query("SOURce:AM:STATe?") == "ON"
        assert laser.query("*IDN?").startswith("Coherent, Inc")
        for query in ("SOURce:POWer:LEVel:IMMediate:AMPLitude?", "SOURce:POWer:LEVel?",
                      "SYSTem:STATus?", "SYSTem:FAULt?", "SYSTem:HOURs?"):
            assert laser.query(query)
        laser.command("SOURce:AM:STATe OFF")
        laser.command("SOURce:AM:INTernal CWP")
        laser.command("SOURce:TEMPerature:APRobe OFF")
    finally:
        laser.close()


def test_third_party_device_index_zero_and_cr_terminator(sim: ObisSimulator) -> None:
    """A driver addressing the laser as device 0 with CR-terminated commands and
    mixed-case arguments (as the Micro-Manager adapter can)."""
    with serial.Serial(sim.port, timeout=1) as link:
        for command, reply in [("SYST0:COMM:HAND On", b"OK\r\n"),
                               ("SYST0:COMM:PROM Off", b"OK\r\n"),
                               ("SYST0:ERR:CLE", b"OK\r\n"),
                               ("SOUR0:POW:LIM:HIGH?", b"0.05000\r\nOK\r\n"),
                               ("SYST0:DIOD:HOUR?", b"67.89\r\nOK\r\n"),
                               ("SOUR0:AM:STATE On", b"OK\r\n"),
                               ("SOUR0:AM:STATE?", b"ON\r\nOK\r\n")]:
            exchange(link, command, reply, end=b"\r")
