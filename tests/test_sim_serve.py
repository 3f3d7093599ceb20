"""``exoacq sim serve`` and ``exoacq laser off`` as separate programs see them.

Everything runs in real subprocesses (``python -m exoacq ...``). The
simulators that ``sim serve`` starts are driven WITHOUT exoacq's drivers: raw
pyserial writes of commands copied from the manufacturers' manuals (Coherent
OBIS LX/LS Operator's Manual; Cobolt 06-01 Series Owner's Manual; New Era
NE-1000 user manual, "RS-232 Communications") and plain pyvisa with the
pure-Python backend for the Thorlabs TED4015 (Series 4000 SCPI Programmer's
Reference); every documented reply is asserted byte for byte. ``laser off``
is then run with the REAL drivers against those simulators, as systemd's
``ExecStopPost`` guard runs it against the hardware.
"""
from __future__ import annotations

import json
import math
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import pyvisa
import serial

from exoacq.registry import installed

#: Generous: a loaded 2-core machine may take seconds to import exoacq.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 60.0

EXOACQ = [sys.executable, "-m", "exoacq"]
STX, ETX = b"\x02", b"\x03"


# -- running `exoacq sim serve` --------------------------------------------------------------
class Served:
    """A running ``exoacq sim serve``: its JSON lines by simulator name."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()
        self.records: dict[str, dict] = {}
        self.first_lines: list[str] = []

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)  # end of file

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self._stderr.extend(self.process.stderr)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def read_records(self, count: int) -> None:
        """The first ``count`` stdout lines, each one JSON record, within START_TIMEOUT_S."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self.first_lines) < count:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"sim serve printed {len(self.first_lines)} of {count} lines in "
                            f"{START_TIMEOUT_S:g} s: {self.first_lines!r}")
            if line is None:
                self.process.wait(timeout=STOP_TIMEOUT_S)
                for reader in self._readers:
                    reader.join(timeout=STOP_TIMEOUT_S)
                pytest.fail(f"sim serve exited ({self.process.returncode}) after "
                            f"{self.first_lines!r}; stderr: {self.stderr}")
            self.first_lines.append(line)
            record = json.loads(line)  # every line before anything else is one JSON record
            assert set(record) == {"name", "driver", "kind", "port"}, line
            assert record["name"] not in self.records, line
            self.records[record["name"]] = record

    def port(self, name: str) -> str:
        return self.records[name]["port"]

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str, str]:
        """SIGTERM (or ``signum``), then the exit status, the rest of stdout and stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"sim serve did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM")
        for reader in self._readers:
            reader.join(timeout=STOP_TIMEOUT_S)
        rest = []
        while not self._lines.empty():
            line = self._lines.get_nowait()
            if line is not None:
                rest.append(line)
        return self.process.returncode, "".join(rest), self.stderr


@contextmanager
def sim_serve(*args: str, count: int, signum: int = signal.SIGTERM) -> Iterator[Served]:
    """``exoacq sim serve ARGS`` with its first ``count`` JSON lines read; stopped with
    SIGTERM (or ``signum``) on the way out, always, which must give exit status 0 and nothing
    more on stdout."""
    served = start_sim_serve(*args)
    try:
        served.read_records(count)
        yield served
    finally:
        stopped = served.stop(signum)
    check_stopped(*stopped, count=count)


def start_sim_serve(*args: str) -> Served:
    return Served(subprocess.Popen([*EXOACQ, "sim", "serve", *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True))


def check_stopped(status: int, rest: str, stderr: str, *, count: int) -> None:
    """Stopped by a signal: exit status 0, nothing on stdout after the JSON lines, no traceback."""
    assert status == 0, stderr
    assert rest == "", f"sim serve printed more than its JSON lines: {rest!r}"
    assert "Traceback" not in stderr, stderr
    assert re.search(rf"serving {count} simulator\(s\)", stderr), stderr


def run_exoacq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXOACQ, *args], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def run_exoacq_concurrently(commands: dict[str, list[str]]) -> dict[str, tuple[int, str, str]]:
    """Several ``exoacq`` commands at once (each start-up costs most of a second):
    name -> (exit status, stdout, stderr)."""
    processes = {name: subprocess.Popen([*EXOACQ, *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                 for name, args in commands.items()}
    results = {}
    try:
        for name, process in processes.items():
            out, err = process.communicate(timeout=RUN_TIMEOUT_S)
            results[name] = (process.returncode, out, err)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def with_simulators() -> dict[str, str]:
    """Driver name -> kind, for every installed driver that has a simulator."""
    return {name: driver.kind for name, driver in installed().drivers.items() if driver.simulator is not None}


# -- raw exchanges ---------------------------------------------------------------------------
def exchange(port: serial.Serial, command: bytes, reply: bytes) -> None:
    """Write one command as the manual writes it; assert the exact bytes that come back."""
    port.write(command)
    got = port.read(len(reply))
    assert got == reply, f"{command!r}: {got!r} != {reply!r}"
    assert port.in_waiting == 0, f"{command!r}: extra bytes {port.read(port.in_waiting)!r}"


def packet(port: serial.Serial, command: bytes) -> bytes:
    """NE-1000 Basic mode: a command, and its reply packet up to ETX."""
    port.write(command)
    return port.read_until(ETX)


# OBIS: Coherent OBIS LX/LS Operator's Manual, Appendix "Commands and queries".
OBIS_IDN = b"Coherent, Inc - OBIS 488nm LX 50mW - V1.0.1 - Dec 14 2010"
OBIS_MANUAL = [
    (b"*IDN?\r\n", OBIS_IDN + b"\r\nOK\r\n"),
    (b"SYSTem:INFormation:MODel?\r\n", b"OBIS 488nm LX 50mW\r\nOK\r\n"),
    (b"SYSTem:INFormation:WAVelength?\r\n", b"488.0\r\nOK\r\n"),
    (b"SOURce:POWer:LIMit:HIGH?\r\n", b"0.05000\r\nOK\r\n"),
    (b"SOURce:AM:STATe?\r\n", b"OFF\r\nOK\r\n"),
    (b"SYSTem:CDRH OFF\r\n", b"OK\r\n"),  # no 5 s CDRH delay before emission
    (b"SOURce:AM:INTernal CWP\r\n", b"OK\r\n"),
    (b"SOURce:POWer:LEVel:IMMediate:AMPLitude 0.02\r\n", b"OK\r\n"),
    (b"SOURce:POWer:LEVel:IMMediate:AMPLitude?\r\n", b"0.02000\r\nOK\r\n"),
    (b"SOURce:AM:STATe ON\r\n", b"OK\r\n"),
    (b"SOURce:AM:STATe?\r\n", b"ON\r\nOK\r\n"),
    (b"SOURce:POWer:LEVel?\r\n", b"0.02000\r\nOK\r\n"),  # measured power: the set point
    (b"SOUR:POW:LEV:IMM:AMPL 0.2\r\n", b"ERR-220\r\n"),  # above the 50 mW limit
    (b"SYSTem:BOGus?\r\n", b"ERR-100\r\n"),  # an unknown command
    (b"SYSTem:ERRor:COUNt?\r\n", b"2\r\nOK\r\n"),
    (b"SYSTem:ERRor:NEXT?\r\n", b'-220,"Invalid parameter"\r\nOK\r\n'),
    (b"SYSTem:ERRor:NEXT?\r\n", b'-100,"Unrecognized command/query"\r\nOK\r\n'),
    (b"SYSTem:ERRor:NEXT?\r\n", b'0,"No error"\r\nOK\r\n'),
    (b"SOURce:AM:STATe OFF\r\n", b"OK\r\n"),
    (b"SOURce:POWer:LEVel?\r\n", b"0.00000\r\nOK\r\n"),
]

# Cobolt 06-01 Series Owner's Manual (D0136), Communication commands: one line each, CR LF.
COBOLT_MANUAL = [
    (b"sn?\r", b"17706\r\n"),
    (b"glm?\r", b"0488-06-01-0100-100\r\n"),
    (b"l?\r", b"0\r\n"),
    (b"l1\r", b"Syntax error: not allowed in autostart mode.\r\n"),  # factory setting: autostart
    (b"@cobas 0\r", b"OK\r\n"),
    (b"p 0.01\r", b"OK\r\n"),
    (b"p?\r", b"0.0100\r\n"),
    (b"l1\r", b"OK\r\n"),
    (b"l?\r", b"1\r\n"),
    (b"pa?\r", b"0.0100\r\n"),  # measured power, W
    (b"ilk?\r", b"0\r\n"),  # interlock closed
    (b"f?\r", b"0\r\n"),
    (b"p 0.5\r", b"Syntax error: Value is out of range.\r\n"),
    (b"bogus\r", b"Syntax error: illegal command\r\n"),
    (b"l0\r", b"OK\r\n"),
    (b"l?\r", b"0\r\n"),
    (b"pa?\r", b"0.0000\r\n"),
]

# NE-1000 user manual, "RS-232 Communications": Basic mode, STX <address> <status> [data] ETX.
NE1000_MANUAL = [
    (b"VER\r", STX + b"00SNE1000V3.928" + ETX),
    (b"DIA 4.61\r", STX + b"00S" + ETX),
    (b"DIA\r", STX + b"00S4.610" + ETX),
    (b"RAT 3 UM\r", STX + b"00S" + ETX),
    (b"RAT\r", STX + b"00S3.000UM" + ETX),
    (b"VOL\r", STX + b"00S0.000UL" + ETX),  # syringes up to 14 mm count in uL
    (b"DIR INF\r", STX + b"00S" + ETX),
    (b"DIR\r", STX + b"00SINF" + ETX),
    (b"DIS\r", STX + b"00SI0.000W0.000UL" + ETX),
    (b"RUN\r", STX + b"00I" + ETX),  # infusing
    (b"\r", STX + b"00I" + ETX),  # an empty command is a status query
    (b"RAT 3 MM\r", STX + b"00I?NA" + ETX),  # rate units cannot change while pumping
    (b"STP\r", STX + b"00P" + ETX),  # paused
    (b"STP\r", STX + b"00S" + ETX),  # stopped
]


def test_sim_serve_simulators_answer_the_manuals_commands() -> None:
    """The acceptance test: a program that knows only the manuals drives every served simulator."""
    expected = with_simulators()
    assert {"obis", "cobolt", "ne1000", "ted4015"} <= set(expected)
    with sim_serve(count=len(expected)) as served:
        assert {name: r["driver"] for name, r in served.records.items()} == {n: n for n in expected}
        assert {name: r["kind"] for name, r in served.records.items()} == expected
        for name in ("obis", "cobolt", "ne1000"):
            assert served.port(name).startswith("/dev/"), served.records[name]
        assert re.fullmatch(r"TCPIP0::127\.0\.0\.1::\d+::SOCKET", served.port("ted4015"))

        with serial.Serial(served.port("obis"), 115200, timeout=1) as port:
            for command, reply in OBIS_MANUAL:
                exchange(port, command, reply)

        with serial.Serial(served.port("cobolt"), 115200, timeout=1) as port:
            for command, reply in COBOLT_MANUAL:
                exchange(port, command, reply)

        with serial.Serial(served.port("ne1000"), 19200, timeout=1) as port:
            for command, reply in NE1000_MANUAL:
                assert packet(port, command) == reply, command
            dispensed = packet(port, b"DIS\r")  # what 3 uL/min moved in the moment it ran
            match = re.fullmatch(rb"\x0200SI(\d+\.\d*)W0\.000UL\x03", dispensed)
            assert match and 0 <= float(match[1]) < 3.0, dispensed
            assert packet(port, b"XYZ\r") == STX + b"00S?" + ETX  # unknown command
            assert packet(port, b"VER 2\r") == STX + b"00S?NA" + ETX  # a query given a value
            assert packet(port, b"RAT 12345 UM\r") == STX + b"00S?OOR" + ETX  # more than 4 digits

        manager = pyvisa.ResourceManager("@py")
        try:
            controller = manager.open_resource(served.port("ted4015"), read_termination="\n",
                                               write_termination="\n", timeout=5000)
            try:
                maker, model, serial_number, _firmware = controller.query("*IDN?").split(",")
                assert (maker, model) == ("THORLABS", "TED4015") and serial_number
                assert controller.query("SYST:ERR?") == '+0,"No error"'
                controller.write("SOUR:TEMP 30")
                assert controller.query("SOUR:TEMP?") == "3.000000E+01"
                controller.write("OUTP ON")
                assert controller.query("OUTP?") == "1"
                temperature = float(controller.query("MEAS:TEMP?"))
                assert math.isfinite(temperature) and 15.0 < temperature <= 30.0
                controller.write("SOUR:TEMP 200")  # beyond the sensor's range
                assert controller.query("SYST:ERR?") == '-222,"Data out of range"'
                assert controller.query("SYST:ERR?") == '+0,"No error"'
                controller.write("OUTP OFF")
                assert controller.query("OUTP?") == "0"
            finally:
                controller.close()
        finally:
            manager.close()


def test_sim_serve_stops_cleanly_as_soon_as_its_lines_are_read() -> None:
    """A supervisor may send SIGTERM right after reading the JSON lines: still exit status 0."""
    with sim_serve(count=len(with_simulators())):
        pass


# -- sim serve --config ------------------------------------------------------------------------
NTA_RIG = """
[instruments.rig-a]
method = "nta"

[instruments.rig-a.devices.laser]
driver = "obis"
port = "/dev/ttyACM0"
power_mw = 10.0

[instruments.rig-a.devices.pump]
driver = "ne1000"
port = "/dev/ttyUSB0"
diameter_mm = 4.61

[instruments.rig-a.devices.camera]
driver = "simulated-nta"
simulated = true

[instruments.rig-a.devices.temperature]
driver = "ted4015"
resource = "USB0::0x1313::0x8048::M00000000::INSTR"
setpoint_c = 25.0
"""


def test_sim_serve_config_serves_the_files_devices_by_instrument_and_role(tmp_path: Path) -> None:
    config = tmp_path / "rig.toml"
    config.write_text(NTA_RIG)
    with sim_serve("--config", str(config), count=3, signum=signal.SIGINT) as served:  # Ctrl-C
        # In the file's order; the simulated camera has no simulator of its own: not served.
        assert [json.loads(line)["name"] for line in served.first_lines] == [
            "rig-a.laser", "rig-a.pump", "rig-a.temperature"]
        assert {name: (r["driver"], r["kind"]) for name, r in served.records.items()} == {
            "rig-a.laser": ("obis", "laser"), "rig-a.pump": ("ne1000", "pump"),
            "rig-a.temperature": ("ted4015", "temperature-controller")}
        assert re.fullmatch(r"TCPIP0::127\.0\.0\.1::\d+::SOCKET", served.port("rig-a.temperature"))
        with serial.Serial(served.port("rig-a.laser"), 115200, timeout=1) as port:
            exchange(port, b"*IDN?\r\n", OBIS_IDN + b"\r\nOK\r\n")
        with serial.Serial(served.port("rig-a.pump"), 19200, timeout=1) as port:
            assert packet(port, b"VER\r") == STX + b"00SNE1000V3.928" + ETX


def test_sim_serve_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Each: exit status 2, nothing on stdout, one line on stderr, no traceback."""
    cases = {
        "not-toml": ("[instruments.rig-a\nmethod = 'nta'\n", r"{path}: not valid TOML: .+"),
        "unknown-driver": (NTA_RIG.replace('driver = "obis"', 'driver = "obsi"'),
                           r"{path}: instruments\.rig-a\.devices\.laser\.driver = 'obsi': "
                           r"unknown driver 'obsi'; installed: .+"),
        "nothing-to-serve": ("[daemon]\ncontrol = 'tcp://127.0.0.1:5555'\n",
                             r"{path}: no device in it has a simulator to serve"),
        "missing-file": (None, r"cannot read configuration {path}: No such file or directory"),
    }
    paths = {}
    for case, (text, _) in cases.items():
        paths[case] = tmp_path / f"{case}.toml"
        if text is not None:
            paths[case].write_text(text)
    results = run_exoacq_concurrently(
        {case: ["sim", "serve", "--config", str(path)] for case, path in paths.items()})
    for case, (_, error) in cases.items():
        status, out, err = results[case]
        assert (status, out) == (2, ""), (case, err)
        lines = err.splitlines()
        assert len(lines) == 1, (case, err)
        expected = "exoacq: error: " + error.format(path=re.escape(str(paths[case])))
        assert re.fullmatch(expected, lines[0]), (case, lines[0])


# -- laser off -------------------------------------------------------------------------------
def laser_config(*lasers: tuple[str, str, bool]) -> str:
    """One NTA rig per (driver, port, simulated) laser, named rig-1, rig-2, ...: the laser's
    driver is the real one unless simulated; camera and thermometer are simulated."""
    rigs = []
    for number, (driver, port, simulated) in enumerate(lasers, start=1):
        name = f"rig-{number}"
        rigs.append(f"""
[instruments.{name}]
method = "nta"

[instruments.{name}.devices.laser]
driver = "{driver}"
port = "{port}"
simulated = {str(simulated).lower()}

[instruments.{name}.devices.camera]
driver = "simulated-nta"
simulated = true

[instruments.{name}.devices.temperature]
driver = "simulated-thermometer"
simulated = true
""")
    return "".join(rigs)


def test_laser_off_switches_every_real_laser_off(tmp_path: Path) -> None:
    """`exoacq laser off` (systemd's ExecStopPost guard) with the real drivers on the simulators."""
    with sim_serve(count=len(with_simulators())) as served:
        obis, cobolt = served.port("obis"), served.port("cobolt")
        # Someone left both lasers emitting.
        with serial.Serial(obis, 115200, timeout=1) as port:
            exchange(port, b"SOURce:AM:STATe ON\r\n", b"OK\r\n")
            exchange(port, b"SOURce:AM:STATe?\r\n", b"ON\r\nOK\r\n")
        with serial.Serial(cobolt, 115200, timeout=1) as port:
            exchange(port, b"@cobas 0\r", b"OK\r\n")
            exchange(port, b"p 0.01\r", b"OK\r\n")
            exchange(port, b"l1\r", b"OK\r\n")
            exchange(port, b"l?\r", b"1\r\n")

        config = tmp_path / "exoacq.toml"
        config.write_text(laser_config(("obis", obis, False), ("cobolt", cobolt, False)))
        result = run_exoacq("laser", "off", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["rig-1.laser: emission off", "rig-2.laser: emission off"]
        assert result.stderr == ""

        with serial.Serial(obis, 115200, timeout=1) as port:
            exchange(port, b"SOUR:AM:STAT?\r\n", b"OFF\r\nOK\r\n")
            exchange(port, b"SOUR:POW:LEV?\r\n", b"0.00000\r\nOK\r\n")
        with serial.Serial(cobolt, 115200, timeout=1) as port:
            exchange(port, b"l?\r", b"0\r\n")
            exchange(port, b"pa?\r", b"0.0000\r\n")

        # A laser that cannot be reached: one line naming it, exit status 1; the other real
        # laser is still switched off; a simulated one (it dies with the daemon that served
        # it) is left alone.
        with serial.Serial(cobolt, 115200, timeout=1) as port:
            exchange(port, b"l1\r", b"OK\r\n")
        missing = "/dev/ttyUSB-exoacq-test-missing"
        config.write_text(laser_config(("obis", missing, False), ("cobolt", cobolt, False),
                                       ("obis", "/dev/ttyUSB-exoacq-test-unused", True)))
        result = run_exoacq("laser", "off", "--config", str(config))
        assert result.returncode == 1, result.stderr
        assert result.stdout.splitlines() == ["rig-2.laser: emission off"]
        assert result.stderr.splitlines() == [
            f"exoacq: error: rig-1.laser: could not switch the laser off: laser: cannot open serial "
            f"port {missing} (No such file or directory)"]
        with serial.Serial(cobolt, 115200, timeout=1) as port:
            exchange(port, b"l?\r", b"0\r\n")


FLOW_RIG = """
[instruments.nanoflow]
method = "flow"
[instruments.nanoflow.devices.digitizer]
driver = "oscilloscope"
model = "keysight-infiniivision"
resource = "TCPIP0::192.168.1.40::INSTR"
sample_rate_hz = 1.0e6
memory_depth = 200000
[instruments.nanoflow.settings]
calibration = "calibrations/flow/simulated-cytometer.toml"
[instruments.nanoflow.simulation]
flow_rate_ul_min = 1.0
seed = 3
[[instruments.nanoflow.simulation.populations]]
name = "silica 200 nm"
material = "silica"
diameter_nm = 200.0
concentration_per_ml = 6.0e7
"""


def test_sim_serve_config_feeds_a_flow_instruments_scope_its_simulated_sample(tmp_path: Path) -> None:
    """The oscilloscope's twin digitizes the configured sample, read here through the real driver:
    1,000 silica beads of 200 nm per second, each a side-scatter pulse of ~8,000 counts (Mie)."""
    from exoacq.drivers.oscilloscope import Oscilloscope
    from exoacq.flow.pulses import PulseDetector, Trigger

    config = tmp_path / "flow.toml"
    config.write_text(FLOW_RIG)
    with sim_serve("--config", str(config), count=1) as served:
        assert served.records["nanoflow.digitizer"]["kind"] == "digitizer"
        scope = Oscilloscope(served.port("nanoflow.digitizer"), model="keysight-infiniivision",
                             channels={"SSC": 1, "FL1": 2, "FL2": 3}, memory_depth=200_000)
        scope.connect()
        try:
            scope.start()
            block = scope.read(timeout_s=5.0)
        finally:
            scope.close()
    assert block is not None and block.samples.shape == (3, 200_000) and scope.sample_rate_hz == 1e6
    detector = PulseDetector(["SSC", "FL1", "FL2"], 1e6, Trigger())
    events = detector.process(block.samples, start_s=0.0)
    assert 140 <= len(events) <= 260  # Poisson around 200 in 0.2 s
    assert 6000 < events["SSC-H"].median() < 10000
