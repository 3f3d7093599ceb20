"""Oscilloscope digitizer driver against its emulated twin: real pyvisa (``@py``) over a real
loopback TCP socket, both command sets (Rigol DS1000Z and Keysight InfiniiVision programming
guides). Transcript tests assert every line exchanged; signal tests compare what the driver
returns with what the waveform source produced, in volts, within the scope's quantisation.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterator

import numpy as np
import pydantic
import pytest
import pyvisa

from exoacq.devices import Digitizer, TraceBlock
from exoacq.drivers.oscilloscope import DRIVER, NoReply, Oscilloscope, OscilloscopeOptions, ScopeError, scale
from exoacq.drivers.oscilloscope_sim import OscilloscopeSimulator, TestPattern
from exoacq.errors import DeviceError

RIGOL, KEYSIGHT = "rigol-ds1000z", "keysight-infiniivision"
CHANNELS = {"SSC": 1, "FL1": 2, "FL2": 3}
RATE_HZ = 10e6
#: Volts of one source count (the simulator's default: 16 bits over 8 divisions of 0.1 V).
VOLTS_PER_COUNT = 0.8 / 65536
RIGOL_YINC_V = 0.1 / 25  # V/div / 25 (Rigol BYTE)


def volts(block: TraceBlock) -> np.ndarray:
    return block.samples * block.volts_per_count[:, None] + block.offset_v[:, None]


class Recorder:
    """A waveform source that keeps every block it gave (the truth)."""

    def __init__(self, source):
        self.source, self.blocks = source, []

    def __call__(self, n: int) -> np.ndarray:
        block = self.source(n)
        self.blocks.append(block)
        return block


def ramp(n: int) -> np.ndarray:
    """Three channels of counts that differ at every sample (a seam would show)."""
    i = np.arange(n)
    return np.stack([(i % 20000) - 10000, -((i * 3) % 30000) + 15000, np.full(n, 1234)]).astype(np.int16)


class Ramp:
    """The ramp as one continuing signal: each call goes on where the last one stopped."""

    def __init__(self) -> None:
        self.done = 0

    def __call__(self, n: int) -> np.ndarray:
        block = ramp(self.done + n)[:, self.done:]
        self.done += n
        return block


def ok(command: str, model: str) -> list[tuple[str, str]]:
    if model == RIGOL:
        return [("rx", command), ("rx", ":SYST:ERR?"), ("tx", '0,"No error"')]
    return [("rx", command), ("rx", ":SYSTem:ERRor?"), ("tx", '+0,"No error"')]


def rigol_connect(depth: int) -> list[tuple[str, str]]:
    lines = [("rx", "*IDN?"), ("tx", "RIGOL TECHNOLOGIES,DS1104Z,DS1ZA000000001,00.04.04.SP4")]
    for command in ("*CLS", ":CHAN1:DISP ON", ":CHAN2:DISP ON", ":CHAN3:DISP ON", ":RUN",
                    f":ACQ:MDEP {depth}", ":STOP", ":WAV:MODE RAW", ":WAV:FORM BYTE"):
        lines += ok(command, RIGOL)
    return lines + [("rx", ":ACQ:SRAT?"), ("tx", "1.000000E+07")]


def keysight_connect(points: int, segments: int = 1) -> list[tuple[str, str]]:
    lines = [("rx", "*IDN?"), ("tx", "KEYSIGHT TECHNOLOGIES,DSOX3034T,MY00000001,07.50.2021102830")]
    mode = [":ACQuire:MODE SEGMented", f":ACQuire:SEGMented:COUNt {segments}"] if segments > 1 \
        else [":ACQuire:MODE RTIMe"]
    for command in ("*CLS", ":CHANnel1:DISPlay ON", ":CHANnel2:DISPlay ON", ":CHANnel3:DISPlay ON", ":STOP",
                    *mode, ":WAVeform:FORMat WORD", ":WAVeform:BYTeorder LSBFirst", ":WAVeform:UNSigned ON",
                    ":WAVeform:POINts:MODE RAW", f":WAVeform:POINts {points}"):
        lines += ok(command, KEYSIGHT)
    return lines + [("rx", ":ACQuire:SRATe?"), ("tx", "1.000000E+07")]


@pytest.fixture
def rigol() -> Iterator[OscilloscopeSimulator]:
    with OscilloscopeSimulator(model=RIGOL, source=ramp, sample_rate_hz=RATE_HZ) as sim:
        yield sim


@pytest.fixture
def keysight() -> Iterator[OscilloscopeSimulator]:
    with OscilloscopeSimulator(model=KEYSIGHT, source=ramp, sample_rate_hz=RATE_HZ) as sim:
        yield sim


def connected(sim: OscilloscopeSimulator, **kwargs) -> Oscilloscope:
    scope = Oscilloscope(sim.address, model=sim.model, channels=CHANNELS, timeout_s=2.0, **kwargs)
    scope.connect()
    return scope


def test_rigol_single_shot_read_in_pages_of_250000(rigol: OscilloscopeSimulator) -> None:
    scope = connected(rigol, memory_depth=300_000)  # 3 channels on: 300k is an allowed depth
    try:
        assert rigol.transcript == rigol_connect(300_000)
        assert isinstance(scope, Digitizer) and scope.channels == ["SSC", "FL1", "FL2"]
        assert scope.sample_rate_hz == RATE_HZ
        rigol.clear_transcript()
        scope.start()
        block = scope.read(timeout_s=2.0)
        expected = [("rx", ":SING"), ("rx", ":TRIG:STAT?"), ("tx", "WAIT"), ("rx", ":TRIG:STAT?"), ("tx", "STOP")]
        for number in (1, 2, 3):
            expected += [("rx", f":WAV:SOUR CHAN{number}"), ("rx", ":WAV:PRE?"),
                         ("tx", "0,2,300000,1,1.000000E-07,-1.500000E-02,0,4.0000000000E-03,0.000000E+00,127"),
                         ("rx", ":WAV:STAR 1"), ("rx", ":WAV:STOP 250000"), ("rx", ":WAV:DATA?"),
                         ("tx", "#9000250000<250000 bytes>"),
                         ("rx", ":WAV:STAR 250001"), ("rx", ":WAV:STOP 300000"), ("rx", ":WAV:DATA?"),
                         ("tx", "#9000050000<50000 bytes>")]
        assert rigol.transcript == expected
    finally:
        scope.close()
    assert isinstance(block, TraceBlock) and block.samples.dtype == np.int16
    assert block.samples.shape == (3, 300_000) and block.contiguous is False
    # The 8-bit codes minus yreference 127 are the source volts over yincrement, rounded:
    # continuous across the page seam at point 250,000.
    exact = ramp(300_000) * VOLTS_PER_COUNT / RIGOL_YINC_V
    assert np.abs(block.samples - exact).max() <= 0.5 + 1e-9
    np.testing.assert_allclose(block.volts_per_count, RIGOL_YINC_V)


def test_rigol_refuses_a_depth_the_channels_do_not_allow(rigol: OscilloscopeSimulator) -> None:
    scope = Oscilloscope(rigol.address, model=RIGOL, channels=CHANNELS, memory_depth=250_000)
    with pytest.raises(ScopeError) as caught:
        scope.connect()
    assert str(caught.value) == (f"oscilloscope: ':ACQ:MDEP 250000' refused by {rigol.address}: "
                                 '-224,"Illegal parameter value"')
    assert caught.value.scpi_code == -224


def test_keysight_word_blocks_are_the_source_counts(keysight: OscilloscopeSimulator) -> None:
    scope = connected(keysight, memory_depth=5000)
    try:
        assert keysight.transcript == keysight_connect(5000)
        keysight.clear_transcript()
        scope.start()
        block = scope.read()
        expected = [("rx", ":SINGle"), ("rx", ":OPERegister:CONDition?"), ("tx", "8"),
                    ("rx", ":OPERegister:CONDition?"), ("tx", "0")]
        for number in (1, 2, 3):
            expected += [("rx", f":WAVeform:SOURce CHANnel{number}"), ("rx", ":WAVeform:PREamble?"),
                         ("tx", "1,0,5000,1,1.000000E-07,-2.500000E-04,0,1.2207031250E-05,0.000000E+00,32768"),
                         ("rx", ":WAVeform:DATA?"), ("tx", "#800010000<10000 bytes>")]
        assert keysight.transcript == expected
    finally:
        scope.close()
    # 16-bit codes, 8 divisions of 0.1 V: one code per source count, no loss.
    np.testing.assert_array_equal(block.samples, ramp(5000))
    assert block.volts_per_count[0] == pytest.approx(VOLTS_PER_COUNT, rel=1e-9)


def test_preamble_scaling_to_volts() -> None:
    # Rigol: V = (code - yorigin - yreference) x yincrement; 152 codes with yorigin -25 -> 0.2 V.
    points, gain, offset, yref = scale("0,2,300000,1,1.0E-07,0,0,4.0E-03,-25,127", rigol=True, where="")
    assert (points, yref) == (300_000, 127) and (152 - yref) * gain + offset == pytest.approx(0.2)
    # Keysight: V = (code - yreference) x yincrement + yorigin; 33768 codes -> 0.1 V + 0.5 V.
    points, gain, offset, yref = scale("1,0,1000,1,1e-7,0,0,1e-4,0.5,32768", rigol=False, where="")
    assert (33768 - yref) * gain + offset == pytest.approx(0.6)
    with pytest.raises(DeviceError, match=r"unreadable preamble '1,0,1000' on X \(expected 10"):
        scale("1,0,1000", rigol=False, where="on X")


@pytest.mark.parametrize("model, offset_command, offset_v", [
    (RIGOL, ":CHAN1:OFFS -0.2", -0.2), (KEYSIGHT, ":CHANnel1:OFFSet 0.05", 0.05)])
def test_volts_with_a_channel_offset(model: str, offset_command: str, offset_v: float) -> None:
    source = Recorder(TestPattern(3, sample_rate_hz=RATE_HZ, seed=3))
    with OscilloscopeSimulator(model=model, source=source) as sim:
        scope = connected(sim, memory_depth=30_000)
        try:
            scope.write(offset_command)
            scope.start()
            block = scope.read()
        finally:
            scope.close()
    truth_v = source.blocks[-1].astype(float) * VOLTS_PER_COUNT
    step_v = RIGOL_YINC_V if model == RIGOL else VOLTS_PER_COUNT
    # Rigol: the offset moves the zero to yorigin = offset / yinc codes; Keysight: yorigin = offset.
    assert block.offset_v[0] == pytest.approx(-offset_v if model == RIGOL else offset_v)
    assert np.abs(volts(block)[:3] - truth_v).max() <= step_v / 2 + 1e-9
    assert truth_v[0].max() > 0.09  # there were pulses to get right


def test_pulses_match_the_source_within_quantisation() -> None:
    source = Recorder(TestPattern(3, sample_rate_hz=RATE_HZ, rate_per_s=20_000, seed=7))
    with OscilloscopeSimulator(model=RIGOL, source=source) as sim:
        scope = connected(sim, memory_depth=30_000)
        try:
            scope.start()
            blocks = [scope.read() for _ in range(3)]
        finally:
            scope.close()
    for block, truth in zip(blocks, source.blocks):
        truth_v = truth * VOLTS_PER_COUNT
        error_v = volts(block) - truth_v
        assert np.abs(error_v).max() <= RIGOL_YINC_V / 2 + 1e-9
        peaks = truth[0] > 3000  # pulse tops on SSC: within one code of the source
        assert peaks.sum() > 50
        assert np.abs(error_v[0][peaks]).max() <= RIGOL_YINC_V / 2 + 1e-9
    starts = [block.start_s for block in blocks]
    assert starts == sorted(starts) and starts[0] >= 0.0  # monotonic clock, single shots


def test_keysight_segments_timed_by_ttag() -> None:
    with OscilloscopeSimulator(model=KEYSIGHT, source=Ramp(), rearm_s=1e-6) as sim:
        scope = connected(sim, memory_depth=2000, segments=4)
        try:
            assert sim.transcript == keysight_connect(2000, segments=4)
            sim.clear_transcript()
            scope.start()
            blocks = [scope.read() for _ in range(4)]
            lines = sim.transcript
        finally:
            scope.close()
    assert lines[:7] == [("rx", ":SINGle"), ("rx", ":OPERegister:CONDition?"), ("tx", "8"),
                         ("rx", ":OPERegister:CONDition?"), ("tx", "0"),
                         ("rx", ":WAVeform:SEGMented:COUNt?"), ("tx", "4")]
    ttags = [float(reply) for (_, query), (_, reply) in zip(lines, lines[1:]) if query == ":WAVeform:SEGMented:TTAG?"]
    # Segment i starts i x (2000 points + 10 points of re-arm) / 10 MHz after the first.
    assert ttags == pytest.approx([i * 2010 / RATE_HZ for i in range(4)], abs=1e-12)
    assert [b.start_s - blocks[0].start_s for b in blocks] == pytest.approx(ttags, abs=1e-12)
    assert all(b.contiguous is False and b.samples.shape == (3, 2000) for b in blocks)
    # The source's signal carries on through the gaps: segment i begins at source sample i x 2010.
    whole = ramp(4 * 2010)
    for i, block in enumerate(blocks):
        np.testing.assert_array_equal(block.samples, whole[:, i * 2010:i * 2010 + 2000])
    assert lines.count(("rx", ":WAVeform:PREamble?")) == 3  # once per channel per acquisition


def test_bad_channel_is_the_scopes_error(rigol: OscilloscopeSimulator, keysight: OscilloscopeSimulator) -> None:
    for sim, header in ((rigol, ":CHAN5:DISP ON"), (keysight, ":CHANnel5:DISPlay ON")):
        scope = Oscilloscope(sim.address, model=sim.model, channels={"SSC": 1, "FL1": 5})
        with pytest.raises(ScopeError) as caught:
            scope.connect()
        assert str(caught.value) == (f"oscilloscope: '{header}' refused by {sim.address}: "
                                     '-114,"Header suffix out of range"')
        with pytest.raises(DeviceError, match="not connected"):
            scope.start()


def test_refused_query_is_explained_by_the_error_queue(keysight: OscilloscopeSimulator) -> None:
    scope = Oscilloscope(keysight.address, model=KEYSIGHT, channels=CHANNELS, memory_depth=1000, timeout_s=0.3)
    scope.connect()
    try:
        with pytest.raises(ScopeError, match=r"':WAVeform:DATA\?' refused by .*: -221,\"Settings conflict\""):
            scope.ask(":WAVeform:DATA?")  # nothing acquired yet: no reply, and the queue says why
    finally:
        scope.close()


def test_no_trigger_returns_none_then_the_shot(rigol: OscilloscopeSimulator) -> None:
    rigol.no_trigger = True
    scope = connected(rigol, memory_depth=3000)
    try:
        scope.start()
        before = time.monotonic()
        assert scope.read(timeout_s=0.05) is None
        assert 0.05 <= time.monotonic() - before < 0.5
        rigol.fire()
        block = scope.read(timeout_s=1.0)
        assert block is not None and block.samples.shape == (3, 3000)
        assert [line for line in rigol.transcript if line[0] == "rx"].count(("rx", ":SING")) == 1  # armed once
        assert block.start_s < 0.05  # when it was armed
    finally:
        scope.close()


def test_silent_and_unplugged_scope_name_the_resource(rigol: OscilloscopeSimulator) -> None:
    rigol.silent = True
    with pytest.raises(NoReply) as caught:
        Oscilloscope(rigol.address, model=RIGOL, channels=CHANNELS, timeout_s=0.2).connect()
    assert str(caught.value) == f"oscilloscope: did not answer '*IDN?' within 0.2 s on {rigol.address}"
    rigol.silent = False
    scope = connected(rigol, memory_depth=3000)
    scope.start()
    rigol.unplug()
    with pytest.raises(DeviceError) as caught:
        scope.read()
    assert re.fullmatch(rf"oscilloscope: VISA I/O failed on {re.escape(rigol.address)} "
                        r"\((Connection reset by peer|Broken pipe)\)", str(caught.value))
    start = time.monotonic()
    scope.close()
    scope.close()
    assert time.monotonic() - start < 0.5


def test_wrong_instrument_is_refused(keysight: OscilloscopeSimulator) -> None:
    with pytest.raises(DeviceError, match=r"is not a rigol-ds1000z \(\*IDN\? answered 'KEYSIGHT"):
        Oscilloscope(keysight.address, model=RIGOL, channels=CHANNELS).connect()


def test_plain_pyvisa_reads_the_block_as_the_guide_says(rigol: OscilloscopeSimulator) -> None:
    manager = pyvisa.ResourceManager("@py")
    instrument = manager.open_resource(rigol.address, read_termination="\n", write_termination="\n", timeout=2000)
    try:
        for command in (":CHAN2:DISP ON", ":RUN", ":ACQ:MDEP 6000", ":SING", ":WAV:SOUR CHAN2",
                        ":WAV:MODE RAW", ":WAV:FORM BYTE", ":WAV:STAR 1", ":WAV:STOP 6000"):
            instrument.write(command)
        assert [instrument.query(":TRIG:STAT?") for _ in range(2)] == ["WAIT", "STOP"]
        codes = instrument.query_binary_values(":WAV:DATA?", datatype="B", container=np.array, header_fmt="ieee")
        assert instrument.query(":SYST:ERR?") == '0,"No error"'
    finally:
        instrument.close()
        manager.close()
    assert codes.dtype == np.uint8 and codes.size == 6000
    assert np.abs(codes.astype(int) - 127 - ramp(6000)[1] * VOLTS_PER_COUNT / RIGOL_YINC_V).max() <= 0.5 + 1e-9


def test_driver_declaration_and_the_flow_source_from_context() -> None:
    assert (DRIVER.name, DRIVER.kind) == ("oscilloscope", "digitizer")
    options = OscilloscopeOptions(model=KEYSIGHT, memory_depth=1000)
    assert options.channels == CHANNELS and options.segments == 1
    for bad in ({"model": "tek"}, {"channels": {"SSC": 1, "FL1": 1}}, {"channels": {"SSC": 7}},
                {"memory_depth": 0}, {"timeout_s": -1}, {"port": "/dev/ttyUSB0"}):
        with pytest.raises(pydantic.ValidationError):
            OscilloscopeOptions(**bad)
    twin = DRIVER.simulator(options)
    assert isinstance(twin, OscilloscopeSimulator) and twin.model == KEYSIGHT
    with twin.start() as sim:
        assert re.fullmatch(r"TCPIP0::127\.0\.0\.1::\d+::SOCKET", sim.address)
        flow = Recorder(lambda n: (ramp(n), "truth table"))  # the flow simulator's traces() returns a tuple
        context = {"simulators": {"digitizer": sim}, "flow_source": flow}
        scope = DRIVER.open(options, sim.address, context)
        assert sim.transcript == []  # opened, not connected
        scope.connect()
        try:
            scope.start()
            block = scope.read()
        finally:
            scope.close()
    np.testing.assert_array_equal(block.samples, flow.blocks[0][0][:, :1000])


@pytest.mark.parametrize("model, timebase", [(RIGOL, ":TIM:SCAL 2.5e-05"), (KEYSIGHT, ":TIMebase:RANGe 0.0003")])
def test_requested_sample_rate_sets_the_timebase_and_the_scope_says_the_rate(model: str, timebase: str) -> None:
    # Rigol: 3000 points over 12 divisions at 10 MHz -> 25 us/div; Keysight: 3000 points over the 10-division range.
    with OscilloscopeSimulator(model=model, source=ramp, sample_rate_hz=RATE_HZ) as sim:
        scope = connected(sim, memory_depth=3000, sample_rate_hz=1e7, volts_per_division=0.2)
        try:
            received = [line for kind, line in sim.transcript if kind == "rx"]
            assert timebase in received
            assert (":CHAN2:SCAL 0.2" if model == RIGOL else ":CHANnel2:SCALe 0.2") in received
            assert scope.describe()["sample_rate_hz"] == RATE_HZ
            scope.start()
            block = scope.read()
        finally:
            scope.close()
    # Twice the V/div: half the codes per volt.
    expected_step_v = 0.2 / 25 if model == RIGOL else 8 * 0.2 / 65536
    np.testing.assert_allclose(block.volts_per_count, expected_step_v, rtol=1e-9)
