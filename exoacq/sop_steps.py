"""Carry out an SOP's device steps: temperature, pump, laser and wait.

``devices`` maps a device kind (``"temperature-controller"``, ``"pump"``,
``"laser"``) to a device implementing its Protocol in :mod:`exoacq.devices`.
Every wait is a loop that checks ``abort`` and returns within a fraction of a
second once it is set (the default pause is ``abort.wait``); a step returns
True when done, False when aborted. ``report`` receives short progress lines.
Failures are :class:`~exoacq.errors.DeviceError`, one line naming what was
asked and what was seen. Capture, analyse and export are the method's; between
two captures of a capture step the method calls :func:`between_captures`.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from exoacq.errors import DeviceError
from exoacq.sop import CaptureStep, LaserStep, PumpStep, TemperatureStep, WaitStep, describe_step

POLL_S = 0.5            # device polling interval
REPORT_EVERY_S = 10.0   # progress lines while waiting
#: A dispense may take this much longer than volume / rate before it is called stuck.
DISPENSE_MARGIN = 1.2
DISPENSE_SLACK_S = 5.0
#: Shortfall tolerated between the volume asked and the volume the pump reports moved.
DISPENSE_TOLERANCE = 0.02

DEVICE_STEPS = (TemperatureStep, PumpStep, LaserStep, WaitStep)


class _Clock:
    """Pauses that end early on abort; an injected ``sleep`` (tests) is called in short slices."""

    def __init__(self, abort: threading.Event, report: Callable[[str], None] | None,
                 sleep: Callable[[float], None] | None, clock: Callable[[], float], poll_s: float):
        self.abort, self.sleep, self.now, self.poll_s = abort, sleep, clock, poll_s
        self.report = report or (lambda line: None)

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False (at once) if aborted."""
        end = self.now() + seconds
        while not self.abort.is_set():
            left = end - self.now()
            if left <= 0:
                return True
            if self.sleep is None:
                self.abort.wait(min(left, self.poll_s))
            else:
                self.sleep(min(left, self.poll_s, 0.1))
        return False


def _device(devices: Mapping[str, Any], kind: str, step: Any) -> Any:
    device = devices.get(kind)
    if device is None:
        raise DeviceError(f"SOP step '{describe_step(step)}' needs a {kind}; none is configured")
    return device


def run_device_step(step: Any, devices: Mapping[str, Any], *, abort: threading.Event,
                    report: Callable[[str], None] | None = None,
                    sleep: Callable[[float], None] | None = None,
                    clock: Callable[[], float] = time.monotonic, poll_s: float = POLL_S) -> bool:
    """Carry out one temperature, pump, laser or wait step; True when done, False if aborted."""
    run = _Clock(abort, report, sleep, clock, poll_s)
    if abort.is_set():
        return False
    if isinstance(step, TemperatureStep):
        return _temperature(step, _device(devices, "temperature-controller", step), run)
    if isinstance(step, PumpStep):
        return _pump(step, _device(devices, "pump", step), run)
    if isinstance(step, LaserStep):
        return _laser(step, _device(devices, "laser", step), run)
    if isinstance(step, WaitStep):
        run.report(f"wait {step.seconds:g} s")
        return run.pause(step.seconds)
    raise TypeError(f"'{getattr(step, 'step', step)}' is not a device step: the method carries it out")


def _temperature(step: TemperatureStep, tec: Any, run: _Clock) -> bool:
    """Set point, output on, then poll until within tolerance for ``hold_s`` in a row."""
    target, tolerance = step.set_c, step.tolerance_c
    tec.set_setpoint_c(target)
    tec.set_output(True)
    run.report(f"temperature: set point {target:g} C, waiting for +-{tolerance:g} C "
               f"held {step.hold_s:g} s (at most {step.timeout_s:g} s)")
    start = next_report = run.now()
    stable_since: float | None = None
    while True:
        reading = tec.temperature_c()
        now = run.now()
        if abs(reading - target) <= tolerance:
            stable_since = now if stable_since is None else stable_since
            if now - stable_since >= step.hold_s:
                run.report(f"temperature: stable at {reading:.2f} C (set point {target:g} C)")
                return True
        else:
            stable_since = None
        if now - start >= step.timeout_s:
            raise DeviceError(f"temperature not stable at {target:g} C +-{tolerance:g} within "
                              f"{step.timeout_s:g} s (last {reading:.1f} C)")
        if now >= next_report:
            run.report(f"temperature: {reading:.2f} C (set point {target:g} C)")
            next_report = now + REPORT_EVERY_S
        if not run.pause(run.poll_s):
            run.report("temperature: wait aborted")
            return False


def _dispense(pump: Any, volume_ul: float, rate_ul_min: float, what: str, run: _Clock) -> bool:
    """Infuse ``volume_ul`` at ``rate_ul_min`` and wait until the pump stops by itself."""
    if pump.running():
        pump.stop()
    pump.set_direction(True)
    pump.set_rate_ul_min(rate_ul_min)
    pump.set_volume_ul(volume_ul)
    before = pump.dispensed_ul()
    expected_s = volume_ul / rate_ul_min * 60.0
    run.report(f"pump: {what} {volume_ul:g} uL at {rate_ul_min:g} uL/min (about {expected_s:.0f} s)")
    pump.run()
    try:
        if not _wait_dispensed(pump, volume_ul, rate_ul_min, what, before, expected_s, run):
            return False
    except BaseException:
        _stop_quietly(pump)
        raise
    moved = pump.dispensed_ul() - before
    if moved < volume_ul * (1.0 - DISPENSE_TOLERANCE) - 0.01:
        raise DeviceError(f"pump: {what} stopped after {moved:g} of {volume_ul:g} uL "
                          "(stalled, or the syringe is empty?)")
    run.report(f"pump: {what} done, {moved:g} uL")
    return True


def _wait_dispensed(pump: Any, volume_ul: float, rate_ul_min: float, what: str, before: float,
                    expected_s: float, run: _Clock) -> bool:
    limit_s = expected_s * DISPENSE_MARGIN + DISPENSE_SLACK_S
    start = next_report = run.now()
    while pump.running():
        now = run.now()
        if now - start > limit_s:
            raise DeviceError(f"pump: {what} of {volume_ul:g} uL at {rate_ul_min:g} uL/min did not "
                              f"finish within {limit_s:.0f} s ({pump.dispensed_ul() - before:g} uL moved)")
        if now >= next_report:
            if now > start:
                run.report(f"pump: {what}, {pump.dispensed_ul() - before:g} of {volume_ul:g} uL")
            next_report = now + REPORT_EVERY_S
        if not run.pause(min(run.poll_s, max(expected_s / 10.0, 0.01))):
            pump.stop()
            run.report(f"pump: {what} aborted, pump stopped")
            return False
    return True


def _stop_quietly(pump: Any) -> None:
    try:
        pump.stop()
    except Exception:  # the error being raised says more than a failed stop would
        pass


def _pump(step: PumpStep, pump: Any, run: _Clock) -> bool:
    """Flush (if asked), then continuous flow at ``rate_ul_min`` or stop."""
    if step.flush_ul and not _dispense(pump, step.flush_ul, step.flush_rate_ul_min, "flush", run):
        return False
    return _flow(pump, step.rate_ul_min, run)


def _flow(pump: Any, rate_ul_min: float, run: _Clock) -> bool:
    if rate_ul_min <= 0:
        if pump.running():
            pump.stop()
        run.report("pump: stopped")
        return True
    if pump.running():
        pump.stop()
    pump.set_direction(True)
    pump.set_rate_ul_min(rate_ul_min)
    pump.set_volume_ul(None)
    pump.run()
    run.report(f"pump: continuous flow {rate_ul_min:g} uL/min")
    return True


def _laser(step: LaserStep, laser: Any, run: _Clock) -> bool:
    """Power, emission, warm-up, then no faults allowed."""
    if step.power_mw is not None:
        laser.set_power_mw(step.power_mw)
    laser.set_emission(step.on)
    if not step.on:
        run.report("laser: emission off")
        return True
    run.report("laser: emission on" + (f", warming up {step.warmup_s:g} s" if step.warmup_s else ""))
    if step.warmup_s and not run.pause(step.warmup_s):
        return False
    faults = laser.faults()
    if faults:
        raise DeviceError(f"laser: faults after switching emission on: {'; '.join(faults)}")
    if not laser.emission():
        raise DeviceError("laser: emission is off after switching it on")
    return True


def advance_sample(pump: Any, volume_ul: float, rate_ul_min: float, *, abort: threading.Event,
                   report: Callable[[str], None] | None = None,
                   sleep: Callable[[float], None] | None = None,
                   clock: Callable[[], float] = time.monotonic, poll_s: float = POLL_S,
                   resume_rate_ul_min: float = 0.0) -> bool:
    """Bring fresh sample into the field: infuse ``volume_ul`` at ``rate_ul_min``, wait for
    it, then resume a continuous flow of ``resume_rate_ul_min`` (0: leave stopped)."""
    run = _Clock(abort, report, sleep, clock, poll_s)
    if abort.is_set() or not _dispense(pump, volume_ul, rate_ul_min, "advance", run):
        return False
    return _flow(pump, resume_rate_ul_min, run) if resume_rate_ul_min > 0 else True


def between_captures(step: CaptureStep, devices: Mapping[str, Any], *, abort: threading.Event,
                     report: Callable[[str], None] | None = None, flow_ul_min: float = 0.0,
                     sleep: Callable[[float], None] | None = None,
                     clock: Callable[[], float] = time.monotonic, poll_s: float = POLL_S) -> bool:
    """What a capture step asks between two of its captures: the advance (then the
    continuous flow ``flow_ul_min`` resumes, see :meth:`Sop.flow_ul_min_before`) and the pause."""
    if step.advance_ul > 0:
        pump = _device(devices, "pump", step)
        if not advance_sample(pump, step.advance_ul, step.advance_rate_ul_min, abort=abort,
                              report=report, sleep=sleep, clock=clock, poll_s=poll_s,
                              resume_rate_ul_min=flow_ul_min):
            return False
    if step.settle_s > 0:
        return _Clock(abort, report, sleep, clock, poll_s).pause(step.settle_s)
    return not abort.is_set()
