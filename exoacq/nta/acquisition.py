"""The NTA acquisition engine: setup, exec, teardown, driven by the daemon.

It owns the hardware during a run: laser on, camera frames into fresh
buffers, each frame sent without copying to the tracking core over a bounded
PUSH socket (never blocking: a full queue drops the frame and counts it) and
to the live-frames PUB for viewers. It reports through ``emit`` (a callable
taking one event dict) and never touches the run store or the results socket.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq

from exoacq.bus import send_frame
from exoacq.errors import DeviceError, ProtocolError
from exoacq.free_text import check_free_text
from exoacq.methods import Run as CoreRun
from exoacq.nta.parameters import TrackingParameters, with_threshold
from exoacq.nta.threshold import SAMPLE_FRAMES as THRESHOLD_FRAMES
from exoacq.nta.video_store import VideoRecorder

#: Acquisition counters are reported this often.
REPORT_INTERVAL_S = 0.25
#: While recording, the laser is asked this often whether it still emits (an interlock opened,
#: a fault, a lost connection: the run fails instead of recording darkness).
LASER_CHECK_S = 1.0
MAX_DURATION_S = 3600.0
MAX_CAPTURES = 100


def capture_id(run_id: str, capture: int) -> str:
    """The tracking core's name of one capture (video) of a run: ``<run_id>/<capture>``, from 1."""
    return f"{run_id}/{capture}"


def validate_request(params: dict[str, Any], sop: Any = None) -> dict[str, Any]:
    """Check an ``acquire`` request for NTA; return the run settings (units in keys).

    With a SOP (:mod:`exoacq.sop`), the captures and their duration are the SOP's."""
    allowed = {"duration_s", "sample", "dilution", "captures", "blank", "blank_run", "bead_check"}
    unknown = set(params) - allowed
    if unknown:
        raise ProtocolError(f"unknown parameter(s) for an NTA acquisition: {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(sorted(allowed))}")
    # Default as common SOPs: 5 captures of 60 s, averaged with their standard error.
    settings = {"duration_s": 60.0, "sample": "unnamed", "dilution": 1.0, "captures": 5}
    given = {k: v for k, v in params.items() if v is not None}
    if sop is not None:
        both = sorted({"duration_s", "captures"} & set(given))
        if both:
            raise ProtocolError(f"{' and '.join(both)}: the SOP states its captures; give them there, not also "
                                "in the request", code="bad_sop")
        captures = sop.captures()
        given |= {"captures": sum(c.count for c in captures), "duration_s": max(c.duration_s for c in captures)}
        for key in ("bead_check", "blank_run", "blank"):  # the SOP's own: a bead check, a blank, its blank
            value = getattr(sop, key)
            if value in (None, False):
                continue
            if given.get(key) not in (None, False, value):
                raise ProtocolError(f"{key}: the SOP says {value!r}; the request says {given[key]!r}", code="bad_sop")
            given[key] = value
    settings.update(given)
    duration, dilution, sample = settings["duration_s"], settings["dilution"], settings["sample"]
    if not isinstance(duration, (int, float)) or isinstance(duration, bool) or not 0 < duration <= MAX_DURATION_S:
        raise ProtocolError(f"duration_s = {duration!r}: must be a number of seconds in (0, {MAX_DURATION_S:g}]")
    if not isinstance(dilution, (int, float)) or isinstance(dilution, bool) or not 1 <= dilution <= 1e9:
        raise ProtocolError(f"dilution = {dilution!r}: must be a dilution factor from 1 (neat) to 1e9")
    captures = settings["captures"]
    if not isinstance(captures, int) or isinstance(captures, bool) or not 1 <= captures <= MAX_CAPTURES:
        raise ProtocolError(f"captures = {captures!r}: must be a whole number of videos from 1 to {MAX_CAPTURES}")
    if duration * captures > MAX_DURATION_S * 4:
        raise ProtocolError(f"{captures} captures of {duration:g} s is more than {MAX_DURATION_S * 4:g} s of video")
    check_free_text(sample, "sample", max_chars=200)
    settings["duration_s"], settings["dilution"] = float(duration), float(dilution)
    if settings.get("bead_check") is not None:  # a bead-check run: its standard file, read now
        from exoacq.nta.suitability import bead_check_setting
        settings["bead_check"] = bead_check_setting(settings["bead_check"])
    blank, blank_run = settings.setdefault("blank", False), settings.get("blank_run")
    if not isinstance(blank, bool):
        raise ProtocolError(f"blank = {blank!r}: must be true (this run is a buffer blank) or false")
    if blank_run is not None and (not isinstance(blank_run, str) or not 0 < len(blank_run) <= 100):
        raise ProtocolError(f"blank_run = {blank_run!r}: must be the run id of a buffer blank")
    if blank and blank_run is not None:
        raise ProtocolError("blank and blank_run: a blank is the buffer itself; it has no blank to subtract")
    if sop is not None:
        settings["sop"] = {"name": sop.name, "source": sop.source, "steps": sop.describe_steps(),
                           "definition": sop.to_dict()}
    return settings


@dataclass
class Run(CoreRun):
    """An NTA run: the core's run plus the engine's per-run state."""

    #: The parsed SOP, if the run follows one.
    sop: Any = None
    #: Detection parameters sent with every frame (the workers are stateless).
    locate: dict[str, Any] = field(default_factory=dict)
    #: Frames handed to the tracking core in the current capture (sequence numbers 0 .. frames_sent - 1).
    frames_sent: int = 0
    #: The capture (video) being acquired, from 1; and the last one handed over completely.
    capture: int = 0
    captures_ended: int = 0
    params: TrackingParameters | None = None
    #: Whether this run has switched the laser on.
    laser_on: bool = False


@dataclass
class CapturePlan:
    """Captures without a SOP: ``count`` videos of ``duration_s`` (the same shape as a SOP's capture step)."""

    count: int
    duration_s: float
    advance_ul: float = 0.0
    advance_rate_ul_min: float = 1000.0
    step: str = "capture"


class NTAAcquisition:
    """The engine: runs in the instrument's acquisition thread, reports through ``emit``."""

    method = "nta"

    def __init__(self, instrument: Any, settings: Any, frames_socket: zmq.Socket,
                 live_socket: Callable[[], zmq.Socket], emit: Callable[[dict[str, Any]], None]):
        self.instrument = instrument
        self.settings = settings
        self.frames_socket = frames_socket
        self._live_socket_factory = live_socket
        self._live: zmq.Socket | None = None
        self.live_seq = 0
        self.emit = emit

    @property
    def live_socket(self) -> zmq.Socket:
        """This thread's live-frames PUB (made on first use, in the acquisition thread)."""
        if self._live is None:
            self._live = self._live_socket_factory()
        return self._live

    def send_live(self, header: dict[str, Any], frame: np.ndarray) -> None:
        """A frame for live viewers, numbered ``seq`` (per instrument since the daemon started) so that a
        viewer sees what it missed; a slow viewer never slows the instrument (PUB drops at its mark)."""
        self.live_seq += 1
        try:
            send_frame(self.live_socket, {**header, "seq": self.live_seq}, frame, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    @property
    def laser(self) -> Any:
        return self.instrument.device("laser")

    @property
    def camera(self) -> Any:
        return self.instrument.device("camera")

    @property
    def thermometer(self) -> Any:
        return self.instrument.device("temperature")

    # -- the three steps ---------------------------------------------------
    def setup(self, run: Run) -> TrackingParameters:
        faults = self.laser.faults()
        if faults:
            raise DeviceError(f"laser reports faults: {', '.join(faults)}")
        temperature_c = self.thermometer.temperature_c()
        params = self.tracking_parameters(temperature_c, run.settings["dilution"])
        run.settings["temperature_start_c"] = temperature_c
        self.emit({"event": "settings", "run_id": run.run_id, "tracking": params.to_dict(),
                   "instruments": self.instrument.describe()})
        run.params = params
        run.locate = params.locate_options() if params.minmass is not None else {}
        return params

    def exec(self, run: Run) -> dict[str, Any]:
        """The run's steps (a SOP's, or its captures), in order; returns the summed counters."""
        from exoacq.sop_steps import between_captures, run_device_step

        steps = list(run.sop.steps) if run.sop is not None else [
            CapturePlan(run.settings["captures"], run.settings["duration_s"])]
        totals: dict[str, Any] = {}
        devices = self.instrument.by_kind()
        for index, step in enumerate(steps, 1):
            if run.abort.is_set():
                break
            self._report_step(run, index, len(steps), step)
            if step.step == "capture":
                for k in range(step.count):
                    if run.abort.is_set():
                        break
                    if k > 0 and run.sop is not None:  # fresh sample and the pause a SOP asks for
                        report = lambda text, i=index, s=step: self._report_step(run, i, len(steps), s, text)
                        between_captures(step, devices, abort=run.abort, report=report,
                                         flow_ul_min=run.sop.flow_ul_min_before(index - 1))
                        if run.abort.is_set():
                            break
                    self._light_on(run)
                    self._add(totals, self._one_capture(run, step.duration_s))
            elif step.step in ("analyse", "export"):
                run.settings.setdefault("after", []).append(step.step)
            else:
                run_device_step(step, devices, abort=run.abort,
                                report=lambda text, i=index, s=step: self._report_step(run, i, len(steps), s, text))
                if step.step == "laser":
                    run.laser_on = bool(step.on)
        return totals

    def _report_step(self, run: Run, index: int, of: int, step: Any, detail: str | None = None) -> None:
        """A SOP's step (or progress within one) for run.state; a run without a SOP has no steps."""
        if run.sop is None:
            return
        if detail is None:
            from exoacq.sop import describe_step
            detail = describe_step(step)
        self.emit({"event": "step", "run_id": run.run_id, "index": index, "of": of, "step": step.step,
                   "detail": detail})

    def _light_on(self, run: Run) -> None:
        """Captures need light: the laser at the configured power, unless a SOP step set it."""
        if run.laser_on:
            return
        self.laser.set_power_mw(self.settings.laser_power_mw)
        self.laser.set_emission(True)
        run.laser_on = True

    @staticmethod
    def _add(totals: dict[str, Any], counters: dict[str, Any]) -> None:
        for key, value in counters.items():
            if key == "frames_dropped_by":
                totals[key] = {k: totals.get(key, {}).get(k, 0) + v for k, v in value.items()}
            elif key != "elapsed_s":
                totals[key] = totals.get(key, 0) + value

    def _one_capture(self, run: Run, duration_s: float) -> dict[str, Any]:
        run.capture += 1
        capture = run.capture
        multi = run.settings["captures"] > 1
        output = run.output_dir / f"capture-{capture}" if multi else run.output_dir
        output.mkdir(exist_ok=True)
        start_c = self.thermometer.temperature_c()
        if run.params.minmass is None:  # chosen once, from the light of the first capture, kept for the run
            self._choose_threshold(run)
        self._to_tracker("run.begin", {"run_id": capture_id(run.run_id, capture),
                                       "params": run.params.to_dict(), "output_dir": str(output)})
        counters = self._capture(run, output, duration_s)
        end_c = self.thermometer.temperature_c()
        self._to_tracker("run.end", {"run_id": capture_id(run.run_id, capture), "frames_sent": run.frames_sent,
                                     "aborted": run.abort.is_set(), "temperature_c": (start_c + end_c) / 2,
                                     "temperature_span_c": [start_c, end_c]})
        run.captures_ended = capture
        return counters

    def _choose_threshold(self, run: Run) -> None:
        """The detection threshold from the noise of THRESHOLD_FRAMES frames taken before the first capture
        (exoacq.nta.threshold), with the laser on; reported in the run's settings."""
        camera = self.camera
        camera.start()
        try:
            frames = []
            for _ in range(THRESHOLD_FRAMES):
                frame = np.empty((camera.height, camera.width), dtype=camera.dtype)
                camera.fill(frame)
                frames.append(frame)
        finally:
            camera.stop()
        run.params = with_threshold(run.params, frames)
        run.locate = run.params.locate_options()
        self.emit({"event": "settings", "run_id": run.run_id, "tracking": run.params.to_dict(),
                   "instruments": self.instrument.describe()})

    def _capture(self, run: Run, output: Path, duration_s: float) -> dict[str, Any]:
        """One video; the camera's frame clock starts with it (steps between captures take their time)."""
        camera = self.camera
        camera.start()
        try:
            return self._frames(run, output, duration_s)
        finally:
            camera.stop()

    def _frames(self, run: Run, output: Path, duration_s: float) -> dict[str, Any]:
        camera = self.camera
        n_frames = max(1, math.ceil(duration_s * camera.frame_rate_hz))
        acquired = tracker_drops = sent = 0
        camera_drops_before = camera.frames_dropped
        camera_drops = 0
        t_start = time.monotonic()
        last_report = 0.0
        last_laser_check = t_start
        # The raw video, for re-processing (exoacq.nta.video_store): an encoder process at the lowest
        # priority, never waited for.
        video = VideoRecorder(output, camera.width, camera.height, camera.dtype, camera.frame_rate_hz) \
            if self.settings.keep_video else None

        def counters() -> dict[str, Any]:
            return {"frames_acquired": acquired, "frames_planned": n_frames,
                    "frames_dropped": tracker_drops + camera_drops,
                    "frames_dropped_by": {"camera": camera_drops, "tracker": tracker_drops},
                    "video_frames_lost": video.frames_lost if video is not None else 0,
                    "elapsed_s": time.monotonic() - t_start}

        try:
            while acquired + camera_drops < n_frames and not run.abort.is_set():
                frame = np.empty((camera.height, camera.width), dtype=camera.dtype)
                timestamp = camera.fill(frame)
                camera_drops = camera.frames_dropped - camera_drops_before
                # Frames the camera lost leave a gap in the numbering: the tracker ends its tracks there.
                header = {"run_id": run.run_id, "instrument": run.instrument, "capture": run.capture,
                          "frame_number": acquired + camera_drops, "timestamp": timestamp,
                          "exposure_ms": camera.exposure_ms}
                try:
                    send_frame(self.frames_socket, {**header, "run_id": capture_id(run.run_id, run.capture),
                                                    "seq": sent, "locate": run.locate}, frame, flags=zmq.NOBLOCK)
                    sent += 1
                    tracked = True
                except zmq.Again:
                    tracker_drops += 1
                    tracked = False
                self.send_live(header, frame)
                if video is not None:
                    video.offer(header["frame_number"], timestamp, frame, tracked)
                acquired += 1
                now = time.monotonic()
                if run.laser_on and now - last_laser_check >= LASER_CHECK_S:
                    last_laser_check = now
                    self._check_light()
                if now - last_report >= REPORT_INTERVAL_S:
                    last_report = now
                    self.emit({"event": "acquisition", "run_id": run.run_id, "capture": run.capture, **counters()})
        finally:
            run.frames_sent = sent
            if video is not None:
                # the frames in the encoder's queue are written (a stopped run's are counted as lost instead);
                # frames.csv beside them
                kept = video.close(abandon=run.abort.is_set())
                self.emit({"event": "video", "run_id": run.run_id, "capture": run.capture, **kept})
        final = {**counters(), "video_frames_lost": kept["frames_lost"] if video is not None else 0}
        self.emit({"event": "acquisition", "run_id": run.run_id, "capture": run.capture, **final})
        return final

    def _check_light(self) -> None:
        if not self.laser.emission():
            try:
                faults = "; ".join(self.laser.faults()) or "no fault reported"
            except DeviceError as exc:
                faults = str(exc)
            raise DeviceError(f"laser: emission stopped during the capture ({faults})")

    def teardown(self, run: Run) -> None:
        """Leave the hardware safe whatever happened; tell the tracker the run is over."""
        errors = []
        safe = [lambda: self.laser.set_emission(False), lambda: self.camera.stop()]
        if "pump" in self.instrument.slots:
            safe.append(lambda: self.instrument.device("pump").stop())
        for step in safe:  # each one, whatever the others did
            try:
                step()
            except DeviceError as exc:
                errors.append(str(exc))
        run.laser_on = False
        try:
            run.settings["temperature_end_c"] = self.thermometer.temperature_c()
        except DeviceError as exc:
            errors.append(str(exc))
        if run.capture > run.captures_ended:  # a capture cut short by an error: close it at the tracker
            self._to_tracker("run.end", {"run_id": capture_id(run.run_id, run.capture),
                                         "frames_sent": run.frames_sent, "aborted": True, "temperature_c": None})
        if errors:
            raise DeviceError("; ".join(errors))

    # -- helpers -------------------------------------------------------------
    def _to_tracker(self, topic: str, message: dict[str, Any]) -> None:
        """A run message for the linker, forwarded by the daemon's main thread (the socket's owner)."""
        self.emit({"event": "to_tracker", "run_id": message.get("run_id"), "instrument": self.instrument.name,
                   "topic": topic, "message": message})

    def tracking_parameters(self, temperature_c: float, dilution: float) -> TrackingParameters:
        cam, nta = self.camera, self.settings
        return TrackingParameters.for_sample(
            frame_rate_hz=cam.frame_rate_hz, exposure_ms=cam.exposure_ms, pixel_size_um=cam.pixel_size_um,
            temperature_c=temperature_c, min_diameter_nm=nta.min_diameter_nm,
            link_search_range_px=nta.search_range_px, feature_diameter_px=nta.feature_diameter_px,
            minmass=nta.minmass, false_detections_per_frame=nta.false_detections_per_frame,
            min_track_length=nta.min_track_length,
            detection_volume_nl=nta.detection_volume_nl, dilution=dilution, detector=nta.detector,
            calibration_relative_depth=nta.calibration_relative_depth,
            frame_width_px=cam.width, frame_height_px=cam.height,
            # the camera's own clip level (its bit depth), not one guessed from the first frames
            saturation_counts=float(2 ** cam.bit_depth - 1) if getattr(cam, "bit_depth", None) else None)
