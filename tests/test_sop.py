"""SOPs: the TOML form, the NanoSight script reader, and the device steps run
against the real drivers over their simulators' real transports."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exoacq.errors import DeviceError, ProtocolError
from exoacq.sop import (AnalyseStep, CaptureStep, ExportStep, LaserStep, PumpStep, Sop, TemperatureStep,
                        WaitStep, load_sop, parse_sop)
from exoacq.sop_steps import advance_sample, between_captures, run_device_step

SOPS = Path(__file__).resolve().parents[1] / "exoacq" / "sops"


def refusal(text: str, source: str = "sop.toml", **kw: float) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_sop(text, source, **kw)
    assert info.value.code == "bad_sop"
    return str(info.value)


# -- the example files -------------------------------------------------------------
def test_nanosight_standard_toml() -> None:
    sop = load_sop(SOPS / "nanosight-standard.toml")
    assert (sop.name, sop.method, sop.source) == ("NanoSight-style EV measurement", "nta",
                                                   str(SOPS / "nanosight-standard.toml"))
    assert sop.describe_steps() == [
        "temperature 25 C (+-0.1 C for 30 s)",
        "pump flush 500 uL at 500 uL/min, then flow 3 uL/min",
        "laser on at 40 mW (warm-up 5 s)",
        "capture 5 x 60 s",
        "pump stop",
        "laser off",
        "analyse",
        "export CSV and report",
    ]
    assert sop.total_capture_s() == 300.0
    assert sop.required_devices() == {"temperature-controller", "pump", "laser"}
    assert sop.flow_ul_min_before(3) == 3.0 and sop.flow_ul_min_before(5) == 0.0
    document = json.loads(json.dumps(sop.to_dict()))
    assert document["steps"][3] == {"step": "capture", "count": 5, "duration_s": 60.0, "advance_ul": 0.0,
                                    "advance_rate_ul_min": None, "settle_s": 0.0}
    assert Sop.model_validate(document) == sop


def test_zetaview_standard_toml() -> None:
    sop = load_sop(SOPS / "zetaview-standard.toml")
    assert sop.describe_steps() == [
        "temperature 25 C (+-0.1 C for 30 s)",
        "pump flush 300 uL at 500 uL/min, then stop",
        "laser on (warm-up 5 s)",
        "capture 22 x 5 s (advance 5 uL at 300 uL/min, then settle 3 s between captures)",
        "analyse",
        "export CSV and report",
    ]
    assert sop.captures()[0].count == 22  # 11 positions x 2 cycles
    assert sop.required_devices() == {"temperature-controller", "pump", "laser"}


def test_nanosight_standard_script() -> None:
    sop = load_sop(SOPS / "nanosight-standard.txt")
    assert sop.steps == [TemperatureStep(set_c=25.0), CaptureStep(count=5, duration_s=60.0, settle_s=1.0),
                         WaitStep(seconds=1.0), AnalyseStep(), ExportStep()]
    assert (sop.name, sop.method) == ("NanoSight script", "nta")
    assert sop.describe_steps()[:2] == ["temperature 25 C (+-0.1 C for 30 s)",
                                        "capture 5 x 60 s (settle 1 s between captures)"]
    assert sop.required_devices() == {"temperature-controller"}


def test_inline_tables_and_defaults() -> None:
    sop = parse_sop('steps = [{step = "capture", duration_s = 30.0, count = 3}, {step = "analyse"}]',
                    "/lab/sops/quick.toml")
    assert sop.name == "quick" and sop.method is None and sop.total_capture_s() == 90.0
    assert sop.required_devices() == set()
    sop.check_method("nta")  # no method named: any method


def test_check_method() -> None:
    sop = parse_sop('name = "x"\nmethod = "dls"\n[[steps]]\nstep = "capture"\nduration_s = 10.0\n', "x.toml")
    with pytest.raises(ProtocolError, match=r"x.toml: SOP 'x' is for method 'dls', not 'nta'"):
        sop.check_method("nta")


def test_required_devices_follow_the_steps() -> None:
    def devices(*steps: str) -> set[str]:
        body = "".join(f"[[steps]]\n{s}\n" for s in (*steps, 'step = "capture"\nduration_s = 1.0'))
        return parse_sop(body, "d.toml").required_devices()

    assert devices() == set()
    assert devices('step = "temperature"\nset_c = 37.0') == {"temperature-controller"}
    assert devices('step = "laser"\non = false') == {"laser"}
    assert devices('step = "pump"\nrate_ul_min = 0.0') == {"pump"}
    assert devices('step = "capture"\ncount = 2\nduration_s = 1.0\nadvance_ul = 5.0\n'
                   'advance_rate_ul_min = 100.0') == {"pump"}
    assert devices('step = "wait"\nseconds = 1.0', 'step = "export"\ncsv = false') == set()


# -- TOML refusals -----------------------------------------------------------------
def test_every_problem_listed_with_its_step_and_key() -> None:
    text = """name = "bad"
[[steps]]
step = "temperature"
set_c = 150.0
hold_s = true
[[steps]]
step = "capture"
count = 0
durration_s = 60.0
[[steps]]
step = "captur"
[[steps]]
seconds = 1.0
[[steps]]
step = "laser"
on = "yes"
power_mw = -1.0
"""
    assert refusal(text).splitlines() == [
        "sop.toml: step 1 (temperature): set_c = 150.0 is out of range; allowed: 0 < set_c < 100 C",
        "sop.toml: step 1 (temperature): hold_s = True must be a number (0 <= hold_s <= 3600 s)",
        "sop.toml: step 2 (capture): count = 0 is out of range; allowed: 1 <= count <= 100",
        "sop.toml: step 2 (capture): duration_s is missing (allowed: 0 < duration_s <= 3600 s)",
        "sop.toml: step 2 (capture): unknown key 'durration_s' (did you mean 'duration_s'? units are "
        "part of the key name); allowed here: count, duration_s, advance_ul, advance_rate_ul_min, settle_s",
        "sop.toml: step 3: unknown step 'captur' (did you mean 'capture'?); steps are: temperature, "
        "pump, laser, capture, wait, analyse, export",
        "sop.toml: step 4: no 'step' key naming its kind (temperature, pump, laser, capture, wait, "
        "analyse, export)",
        "sop.toml: step 5 (laser): on = 'yes' must be true or false",
        "sop.toml: step 5 (laser): power_mw = -1.0 is out of range; allowed: 0 <= power_mw <= 10000 mW",
    ]


def test_unknown_key_with_units_hint() -> None:
    text = '[[steps]]\nstep = "pump"\nrate = 3.0\n[[steps]]\nstep = "capture"\nduration_s = 5.0\n'
    assert refusal(text) == ("sop.toml: step 1 (pump): unknown key 'rate' (did you mean 'rate_ul_min'? "
                             "units are part of the key name); allowed here: flush_ul, flush_rate_ul_min, "
                             "rate_ul_min")


@pytest.mark.parametrize("step, message", [
    ('step = "pump"\nflush_ul = 100.0', "step 1 (pump): flush_ul needs flush_rate_ul_min (uL/min)"),
    ('step = "pump"\nflush_rate_ul_min = 100.0',
     "step 1 (pump): flush_rate_ul_min is given without flush_ul"),
    ('step = "pump"\nflush_ul = 5000.0\nflush_rate_ul_min = 1.0',
     "step 1 (pump): flush_ul = 5000 at 1 uL/min takes more than 3600 s"),
    ('step = "temperature"\nset_c = 25.0\nhold_s = 60.0\ntimeout_s = 60.0',
     "step 1 (temperature): hold_s = 60 must be shorter than timeout_s = 60"),
    ('step = "laser"\non = false\nwarmup_s = 5.0', "step 1 (laser): warmup_s applies only with on = true"),
    ('step = "laser"\non = true\nwarmup_s = 601.0',
     "step 1 (laser): warmup_s = 601.0 is out of range; allowed: 0 <= warmup_s <= 600 s"),
    ('step = "capture"\nduration_s = 60.0\nadvance_ul = 10.0\nadvance_rate_ul_min = 100.0',
     "step 1 (capture): advance_ul and settle_s act between captures; count = 1 has none"),
    ('step = "capture"\ncount = 2\nduration_s = 3601.0',
     "step 1 (capture): duration_s = 3601.0 is out of range; allowed: 0 < duration_s <= 3600 s"),
    ('step = "capture"\ncount = 2.0\nduration_s = 1.0',
     "step 1 (capture): count = 2.0 must be a whole number (1 <= count <= 100)"),
    ('step = "pump"\nrate_ul_min = 200000.0',
     "step 1 (pump): rate_ul_min = 200000.0 is out of range; allowed: 0 <= rate_ul_min <= 100000 uL/min"),
    ('step = "wait"\nseconds = 0.0',
     "step 1 (wait): seconds = 0.0 is out of range; allowed: 0 < seconds <= 3600 s"),
    ('step = "export"\ncsv = false\nreport = false',
     "step 1 (export): csv and report are both false: nothing to export"),
])
def test_rules_across_keys_and_ranges(step: str, message: str) -> None:
    text = f'[[steps]]\n{step}\n[[steps]]\nstep = "capture"\nduration_s = 5.0\n'
    assert refusal(text) == f"sop.toml: {message}"


def test_no_capture_step() -> None:
    assert refusal('name = "x"\n[[steps]]\nstep = "wait"\nseconds = 1.0\n') == \
        "sop.toml: SOP has no capture step"


def test_top_level_problems() -> None:
    assert refusal('name = 1\nsource = "me"\nsteps = []\nmethods = "nta"\n').splitlines() == [
        "sop.toml: unknown key 'source'; allowed here: name, method, description, steps",
        "sop.toml: name = 1 must be text",
        "sop.toml: steps = []: List should have at least 1 item after validation, not 0",
        "sop.toml: unknown key 'methods' (did you mean 'method'? units are part of the key name); "
        "allowed here: name, method, description, steps, bead_check, blank, blank_run",
    ]
    assert refusal('steps = [\n').startswith("sop.toml: not valid TOML: ")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError,
                       match=r"cannot read SOP file .*missing.toml \(No such file or directory\)"):
        load_sop(tmp_path / "missing.toml")
    (tmp_path / "latin1.txt").write_bytes(b"CAPTURE 60 \xb5\n")
    with pytest.raises(ProtocolError, match="cannot read SOP file"):
        load_sop(tmp_path / "latin1.txt")


# -- NanoSight scripts ---------------------------------------------------------------
def test_repeat_n_runs_the_block_n_more_times() -> None:
    assert parse_sop("REPEATSTART\nCAPTURE 30\nREPEAT 0\n").steps == [CaptureStep(duration_s=30.0)]
    assert parse_sop("REPEATSTART\nCAPTURE 30\nREPEAT 4\n").steps == [CaptureStep(count=5, duration_s=30.0)]
    nested = parse_sop("repeatstart\n  RepeatStart\n    capture 10\n  repeat 1\n  delay 2\nREPEAT 2\n")
    # (2 captures, a 2 s wait) three times: equal captures with the same 2 s gap merge
    # only where the gap is the same: 10,10 | 2 | 10,10 | 2 | 10,10 | 2
    assert nested.describe_steps() == ["capture 2 x 10 s", "wait 2 s"] * 3
    assert parse_sop("CAPTURE 60\nCAPTURE 60\nCAPTURE 30\n").describe_steps() == [
        "capture 2 x 60 s", "capture 1 x 30 s"]


def test_case_comments_and_blank_lines() -> None:
    text = "# a comment\n\n// another\n; and another\n  SetTemp 37.5   # body temperature\nCapture 60\n"
    assert parse_sop(text).steps == [TemperatureStep(set_c=37.5), CaptureStep(duration_s=60.0)]


def test_script_refusals_all_listed_by_name_and_line() -> None:
    text = "\n".join([
        "CAMERALEVEL 13",      # 1
        "SETTEMP 150",         # 2
        "REPEATSTART",         # 3
        "CAPTUR 60",           # 4
        "SETFOCUS 120",        # 5
        "DELAY soon",          # 6
        "REPEAT 4",            # 7
        "REPEAT 2",            # 8
        "PRIME",               # 9
        "EXPORTRESULTS now",   # 10
        "FLUSHCELL",           # 11
        "REPEATSTART",         # 12
        "CAPTURE 60",          # 13
    ])
    assert refusal(text, "nanosight.txt").splitlines() == [
        "nanosight.txt line 1: CAMERALEVEL is not supported: camera level is NanoSight's own brightness "
        "scale; set exposure_ms (and gain) of [instruments.camera] in the configuration instead",
        "nanosight.txt line 2 (temperature): set_c = 150.0 is out of range; allowed: 0 < set_c < 100 C",
        "nanosight.txt line 4: CAPTUR is not a NanoSight script command exoacq knows (did you mean "
        "CAPTURE?); it runs SETTEMP, CAPTURE, DELAY, REPEATSTART, REPEAT, SYRINGELOAD, SYRINGESTOP, "
        "PROCESSBASIC, PROCESSSINGLESETTING, EXPORTRESULTS",
        "nanosight.txt line 5: SETFOCUS is not supported: exoacq has no focus drive; focus by hand "
        "while previewing",
        "nanosight.txt line 6: DELAY takes one number (s), not 'soon'",
        "nanosight.txt line 8: REPEAT without REPEATSTART before it",
        "nanosight.txt line 9: PRIME is not supported: NanoSight primes at its own speed and volume; "
        "write a TOML pump step with flush_ul and flush_rate_ul_min",
        "nanosight.txt line 10: EXPORTRESULTS takes no argument, not 'now'",
        "nanosight.txt line 11: FLUSHCELL is not a NanoSight script command exoacq knows; it runs "
        "SETTEMP, CAPTURE, DELAY, REPEATSTART, REPEAT, SYRINGELOAD, SYRINGESTOP, PROCESSBASIC, "
        "PROCESSSINGLESETTING, EXPORTRESULTS",
        "nanosight.txt line 12: REPEATSTART without a REPEAT closing it",
    ]


def test_script_range_and_count_problems() -> None:
    assert refusal("CAPTURE 0\nDELAY 4000\nREPEATSTART\nCAPTURE 1\nREPEAT -1\n", "s.txt").splitlines() == [
        "s.txt line 1 (capture): duration_s = 0.0 is out of range; allowed: 0 < duration_s <= 3600 s",
        "s.txt line 2 (wait): seconds = 4000.0 is out of range; allowed: 0 < seconds <= 3600 s",
        "s.txt line 5: REPEAT takes a whole number of repeats >= 0, not '-1'",
    ]
    assert refusal("REPEATSTART\nCAPTURE 1\nDELAY 1\nREPEAT 9999\n", "s.txt") == \
        "s.txt line 4: the repeats expand to more than 10000 commands"
    assert refusal("SETTEMP 25\nDELAY 60\n", "s.txt") == "s.txt: SOP has no capture step"


def test_syringeload_needs_a_calibration() -> None:
    assert refusal("SYRINGELOAD 50\nCAPTURE 60\n", "s.txt") == (
        "s.txt line 1: SYRINGELOAD is not supported without a calibration: NanoSight's syringe pump "
        "speed is in the NanoSight software's own units, not uL/min; give a measured "
        "syringe_ul_min_per_unit, or write the flow as a TOML pump step (rate_ul_min)")
    assert refusal("SYRINGELOAD 0\nCAPTURE 60\n", "s.txt", syringe_ul_min_per_unit=0.1) == \
        "s.txt line 1: SYRINGELOAD takes a speed > 0; SYRINGESTOP stops the pump"


def test_sample_advanced_between_captures_merges() -> None:
    script = """SETTEMP 25
SYRINGELOAD 500
DELAY 6
SYRINGESTOP
DELAY 15
REPEATSTART
CAPTURE 60
SYRINGELOAD 500
DELAY 3
SYRINGESTOP
DELAY 15
REPEAT 4
PROCESSBASIC
EXPORTRESULTS
"""
    sop = parse_sop(script, "pulse.txt", syringe_ul_min_per_unit=0.1)  # 500 units = 50 uL/min
    assert sop.steps == [
        TemperatureStep(set_c=25.0),
        PumpStep(flush_ul=5.0, flush_rate_ul_min=50.0),
        WaitStep(seconds=15.0),
        CaptureStep(count=5, duration_s=60.0, advance_ul=2.5, advance_rate_ul_min=50.0, settle_s=15.0),
        PumpStep(flush_ul=2.5, flush_rate_ul_min=50.0),  # the advance after the last video, as scripted
        WaitStep(seconds=15.0),
        AnalyseStep(), ExportStep(),
    ]
    assert sop.required_devices() == {"temperature-controller", "pump"}


def test_continuous_flow_script() -> None:
    sop = parse_sop("SYRINGELOAD 30\nREPEATSTART\nCAPTURE 60\nDELAY 2\nREPEAT 2\nSYRINGESTOP\n",
                    "flow.txt", syringe_ul_min_per_unit=0.1)
    assert sop.describe_steps() == ["pump flow 3 uL/min", "capture 3 x 60 s (settle 2 s between captures)",
                                    "wait 2 s", "pump stop"]
    assert sop.flow_ul_min_before(1) == 3.0


def test_toml_is_detected_without_steps_key_first() -> None:
    assert "step 1 (capture)" in refusal('description = "x"\n[[steps]]\nstep = "capture"\n')
    assert refusal("name = 'x'\n").startswith("sop.toml: steps is missing")


def test_core_imports_no_method_package() -> None:
    code = ("import sys, exoacq.sop, exoacq.sop_steps; "
            "print(sorted(m for m in sys.modules if m.startswith('exoacq.nta')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- device steps on real drivers ------------------------------------------------------
class FakeTime:
    """A clock shared by a simulator and the executor: sleeping advances it at once."""

    def __init__(self) -> None:
        self.t = 0.0
        self.hooks: list = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        for hook in self.hooks:
            hook(self.t)


@pytest.fixture
def laser_sim() -> Iterator:
    from exoacq.drivers.obis import ObisLaser
    from exoacq.drivers.obis_sim import ObisSimulator

    with ObisSimulator(cdrh_delay_s=0.0) as sim:
        laser = ObisLaser(sim.port, timeout_s=0.5)
        laser.connect()
        sim.clear_transcript()
        yield sim, laser
        laser.close()


def received(sim: object) -> list[str]:
    return [line for direction, line in sim.transcript if direction == "rx"]  # type: ignore[attr-defined]


def test_laser_on_then_off(laser_sim: tuple) -> None:
    sim, laser = laser_sim
    lines: list[str] = []
    step = LaserStep(on=True, power_mw=20.0, warmup_s=0.1)
    assert run_device_step(step, {"laser": laser}, abort=threading.Event(), report=lines.append)
    assert sim.emitted_power_mw == 20.0
    assert received(sim) == ["SOUR:POW:LEV:IMM:AMPL 0.02", "SOUR:AM:STAT ON", "SYST:FAUL?", "SYST:STAT?",
                             "SOUR:AM:STAT?"]
    assert lines == ["laser: emission on, warming up 0.1 s"]
    sim.clear_transcript()
    assert run_device_step(LaserStep(on=False), {"laser": laser}, abort=threading.Event())
    assert received(sim) == ["SOUR:AM:STAT OFF"] and sim.emitted_power_mw == 0.0


def test_laser_fault_during_warmup(laser_sim: tuple) -> None:
    sim, laser = laser_sim
    timer = threading.Timer(0.05, lambda: setattr(sim, "interlock_open", True))
    timer.start()
    with pytest.raises(DeviceError, match=r"^laser: faults after switching emission on: interlock open$"):
        run_device_step(LaserStep(on=True, warmup_s=0.3), {"laser": laser}, abort=threading.Event())
    timer.join()


def test_laser_refused_by_the_laser(laser_sim: tuple) -> None:
    sim, laser = laser_sim
    sim.interlock_open = True
    with pytest.raises(DeviceError, match=r"'SOUR:AM:STAT ON' refused .*ERR-221"):
        run_device_step(LaserStep(on=True), {"laser": laser}, abort=threading.Event())


@pytest.fixture
def tec_sim() -> Iterator:
    ted = pytest.importorskip("exoacq.drivers.ted4015")
    ted_sim = pytest.importorskip("exoacq.drivers.ted4015_sim")

    def make(tau_s: float) -> tuple:
        sim = ted_sim.TED4015Simulator(tau_s=tau_s).start()
        tec = ted.TED4015(sim.address, timeout_s=1.0)
        tec.connect()
        sim.clear_transcript()
        made.append((sim, tec))
        return sim, tec

    made: list[tuple] = []
    yield make
    for sim, tec in made:
        tec.close()
        sim.close()


def test_temperature_reaches_and_holds(tec_sim) -> None:
    sim, tec = tec_sim(tau_s=0.2)
    lines: list[str] = []
    step = TemperatureStep(set_c=25.0, tolerance_c=0.1, hold_s=0.3, timeout_s=5.0)
    assert run_device_step(step, {"temperature-controller": tec}, abort=threading.Event(),
                           report=lines.append, poll_s=0.05)
    assert abs(sim.temperature_c - 25.0) <= 0.1 and sim.output_on
    sent = received(sim)
    assert sent[:4] == ["SOUR:TEMP 25", "SYST:ERR?", "OUTP ON", "SYST:ERR?"]
    assert set(sent[4:]) == {"MEAS:TEMP?"} and len(sent) > 10
    assert lines[0] == "temperature: set point 25 C, waiting for +-0.1 C held 0.3 s (at most 5 s)"
    assert lines[-1].startswith("temperature: stable at 2") and lines[-1].endswith(" C (set point 25 C)")


def test_temperature_not_stable_in_time(tec_sim) -> None:
    sim, tec = tec_sim(tau_s=300.0)  # starts at ambient 22 C and moves slowly
    step = TemperatureStep(set_c=25.0, tolerance_c=0.1, hold_s=0.1, timeout_s=0.4)
    with pytest.raises(DeviceError, match=r"^temperature not stable at 25 C \+-0\.1 within 0\.4 s "
                                          r"\(last 22\.0 C\)$"):
        run_device_step(step, {"temperature-controller": tec}, abort=threading.Event(), poll_s=0.05)


def test_temperature_wait_aborts_promptly(tec_sim) -> None:
    sim, tec = tec_sim(tau_s=300.0)
    abort, fired = threading.Event(), []

    def fire() -> None:
        fired.append(time.monotonic())
        abort.set()

    threading.Timer(0.3, fire).start()
    lines: list[str] = []
    step = TemperatureStep(set_c=30.0, timeout_s=900.0)
    assert not run_device_step(step, {"temperature-controller": tec}, abort=abort, report=lines.append)
    assert time.monotonic() - fired[0] < 2.0   # not the 900 s wait (bound loose for a loaded CI machine)
    assert lines[-1] == "temperature: wait aborted"


@pytest.fixture
def pump_sim() -> Iterator:
    ne = pytest.importorskip("exoacq.drivers.ne1000")
    ne_sim = pytest.importorskip("exoacq.drivers.ne1000_sim")
    clock = FakeTime()
    with ne_sim.NE1000Simulator(clock=clock) as sim:  # a B-D 1 mL syringe, 4.699 mm
        pump = ne.NE1000Pump(sim.port, timeout_s=0.5)
        pump.connect()
        sim.clear_transcript()
        yield sim, pump, clock
        pump.close()


def test_pump_flush_then_continuous_flow(pump_sim) -> None:
    sim, pump, clock = pump_sim
    lines: list[str] = []
    step = PumpStep(flush_ul=500.0, flush_rate_ul_min=500.0, rate_ul_min=3.0)
    assert run_device_step(step, {"pump": pump}, abort=threading.Event(), report=lines.append,
                           sleep=clock.sleep, clock=clock)
    assert sim.infused_ul == pytest.approx(500.0) and sim.running and sim.rate_ul_min == 3.0
    assert 60.0 <= clock.t <= 61.0  # 500 uL at 500 uL/min, polled every 0.5 s
    sent = received(sim)
    assert sent[:7] == ["0", "0DIR INF", "0RAT 500 UM", "0VOL UL", "0VOL 500", "0DIS", "0RUN"]
    assert sent[-5:] == ["0", "0DIR INF", "0RAT 3 UM", "0VOL 0", "0RUN"]
    assert lines[0] == "pump: flush 500 uL at 500 uL/min (about 60 s)"
    assert lines[-2:] == ["pump: flush done, 500 uL", "pump: continuous flow 3 uL/min"]
    sim.clear_transcript()
    assert run_device_step(PumpStep(rate_ul_min=0.0), {"pump": pump}, abort=threading.Event(),
                           sleep=clock.sleep, clock=clock)
    assert not sim.running and received(sim)[0] == "0"


def test_pump_stall_is_an_error(pump_sim) -> None:
    sim, pump, clock = pump_sim
    clock.hooks.append(lambda t: sim.stall() if 10.0 <= t < 10.05 else None)
    with pytest.raises(DeviceError, match=r"^pump: alarm A\?S pump motor stalled in reply to status query"):
        run_device_step(PumpStep(flush_ul=100.0, flush_rate_ul_min=100.0), {"pump": pump},
                        abort=threading.Event(), sleep=clock.sleep, clock=clock)
    assert not sim.running and sim.infused_ul == pytest.approx(16.67, abs=0.1)


def test_pump_stopped_short_is_an_error(pump_sim) -> None:
    sim, pump, clock = pump_sim  # someone stops the pump at its keypad after 10 s
    clock.hooks.append(lambda t: pump.stop() if 10.0 <= t < 10.05 else None)
    with pytest.raises(DeviceError, match=r"^pump: flush stopped after 16\.67 of 100 uL "
                                          r"\(stalled, or the syringe is empty\?\)$"):
        run_device_step(PumpStep(flush_ul=100.0, flush_rate_ul_min=100.0), {"pump": pump},
                        abort=threading.Event(), sleep=clock.sleep, clock=clock)


def test_pump_flush_abort_stops_the_pump(pump_sim) -> None:
    sim, pump, clock = pump_sim
    abort = threading.Event()
    clock.hooks.append(lambda t: abort.set() if t >= 5.0 else None)
    lines: list[str] = []
    assert not run_device_step(PumpStep(flush_ul=100.0, flush_rate_ul_min=100.0, rate_ul_min=3.0),
                               {"pump": pump}, abort=abort, report=lines.append, sleep=clock.sleep,
                               clock=clock)
    assert not sim.running and sim.infused_ul == pytest.approx(5 / 60 * 100, abs=0.2)
    assert lines[-1] == "pump: flush aborted, pump stopped"


def test_advance_between_captures_resumes_the_flow(pump_sim) -> None:
    sim, pump, clock = pump_sim
    devices = {"pump": pump}
    run_device_step(PumpStep(rate_ul_min=3.0), devices, abort=threading.Event(), sleep=clock.sleep,
                    clock=clock)
    step = CaptureStep(count=3, duration_s=60.0, advance_ul=10.0, advance_rate_ul_min=300.0, settle_s=2.0)
    start, before = clock.t, sim.infused_ul
    assert between_captures(step, devices, abort=threading.Event(), flow_ul_min=3.0,
                            sleep=clock.sleep, clock=clock)
    assert sim.running and sim.rate_ul_min == 3.0
    assert 4.0 <= clock.t - start <= 4.6  # 2 s advance, 2 s settle
    assert sim.infused_ul - before == pytest.approx(10.0 + 2.0 * 3.0 / 60.0, abs=0.05)
    assert advance_sample(pump, 5.0, 300.0, abort=threading.Event(), sleep=clock.sleep, clock=clock)
    assert not sim.running  # no resume asked


def test_wait_step_and_abort() -> None:
    abort = threading.Event()
    started = time.monotonic()
    assert run_device_step(WaitStep(seconds=0.2), {}, abort=abort)
    assert 0.2 <= time.monotonic() - started < 2.0
    threading.Timer(0.1, abort.set).start()
    started = time.monotonic()
    assert not run_device_step(WaitStep(seconds=30.0), {}, abort=abort)
    assert time.monotonic() - started < 2.0   # aborted, not the 30 s


def test_missing_device_and_method_steps() -> None:
    with pytest.raises(DeviceError,
                       match=r"^SOP step 'pump flow 3 uL/min' needs a pump; none is configured$"):
        run_device_step(PumpStep(rate_ul_min=3.0), {}, abort=threading.Event())
    with pytest.raises(TypeError, match="'capture' is not a device step"):
        run_device_step(CaptureStep(duration_s=1.0), {}, abort=threading.Event())
