"""The NTA method's part of the daemon, for one instrument.

It owns the instrument's tracking core (a linker and locate workers, their
own processes), drives the acquisition engine for the daemon, turns the
tracking core's events into ``nta.progress`` payloads, and assembles a run's
``nta.result`` from its captures once the last one is in.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import numpy as np
import zmq

from exoacq.bus import connectable, loads
from exoacq.errors import ExoacqError
from exoacq.methods import MethodService, RunStatus, make_safe
from exoacq.nta.acquisition import NTAAcquisition, Run
from exoacq.nta.distribution import HISTOGRAM_BIN_NM
from exoacq.nta.pipeline import TrackingPipeline
from exoacq.nta.tracker import LIVE_PREFIX, ROWS_PREFIX, decode_rows
from exoacq.nta.result_document import build_result
from exoacq.nta.supervision import TrackerReplay, frames_lost, mark_degraded, with_tracker_losses

log = logging.getLogger("exoacq.nta")

#: After the last frame, how long the tracker may take per queued frame, plus a floor.
PROCESSING_TIMEOUT_S = 30.0
#: Live preview: frames published at most this often, features located on each of them.
PREVIEW_MAX_FPS = 30.0
PREVIEW_REPORT_S = 0.5
#: A run whose tracking core had to be restarted more often than this is failed, not degraded.
MAX_RESTARTS_PER_RUN = 5


class NTAService(MethodService):
    def __init__(self, instrument, context):
        super().__init__(instrument, context)
        self.settings = instrument.config.options
        ctx = context.zmq_context
        tracking = self.settings.tracking
        # Frames for the locate workers: never blocking, a full queue drops (and counts) the frame.
        self.worker_frames = ctx.socket(zmq.PUSH)
        self.worker_frames.setsockopt(zmq.LINGER, 0)
        self.worker_frames.setsockopt(zmq.SNDHWM, self.settings.frame_queue)
        security = context.security  # with CurveZMQ keys: the tracking sockets are CURVE servers too
        if security is not None:
            security.prepare(self.worker_frames, "tracking frames")
        try:
            self.worker_frames.bind(tracking.frames)
        except zmq.ZMQError as exc:
            self.worker_frames.close()
            raise ExoacqError(f"instrument {instrument.name}: cannot bind the tracking frames socket to "
                              f"{tracking.frames}: {zmq.strerror(exc.errno)} (settings.tracking.frames)",
                              code="bind_failed") from None
        self.events = ctx.socket(zmq.PULL)
        self.events.setsockopt(zmq.LINGER, 0)
        self.events.setsockopt(zmq.RCVHWM, 1000)  # the linker's events (never dropped: its PUSH waits)
        #: Run messages a restarted linker must get again (exoacq.nta.supervision).
        self.replay = TrackerReplay()
        if security is not None:
            security.prepare(self.events, "tracking events")
        events_port = self.events.bind_to_random_port("tcp://127.0.0.1")
        context.watch(self.events, self._on_tracker_events)
        self.tracking = TrackingPipeline(
            ctx, workers=tracking.workers,
            frames_endpoint=connectable(self.worker_frames.getsockopt(zmq.LAST_ENDPOINT).decode()),
            events_endpoint=f"tcp://127.0.0.1:{events_port}", features_bind=tracking.features, security=security,
            detector=self.settings.detector)
        self.engine = NTAAcquisition(instrument, self.settings, self.worker_frames, context.live_frames,
                                     context.emit)
        #: The main thread's PUB to the frames socket: the tracking core's ``features`` for viewers.
        self.live_features = context.live_frames()
        self.features_seq = 0

    # -- lifetime -----------------------------------------------------------------
    def start(self) -> None:
        self.tracking.start()

    @property
    def ready(self) -> bool:
        return self.tracking.ready

    def stop(self) -> None:
        self.tracking.stop()
        self.events.close(linger=0)
        self.worker_frames.close(linger=0)
        self.live_features.close(linger=0)
        if self.engine._live is not None:
            self.engine._live.close(linger=0)

    def describe(self) -> dict[str, Any]:
        return {"ready": self.ready, "tracker": self.tracking.describe(),
                "detection_volume": {"nl": self.settings.detection_volume_nl,
                                     "source": self.settings.detection_volume_source}}

    # -- the engine ---------------------------------------------------------------
    def setup(self, run: Run) -> None:
        load_tube = getattr(self.engine.camera, "load_tube", None)
        if load_tube is not None:  # the simulated instrument: the operator puts this run's tube in the holder
            load_tube(blank=run.settings.get("blank", False))
        self.engine.setup(run)

    def exec(self, run: Run) -> dict[str, Any]:
        return self.engine.exec(run)

    def teardown(self, run: Run) -> None:
        self.engine.teardown(run)

    def preview(self, stop: threading.Event) -> None:
        """Laser on, frames to the live socket, each frame's features located and reported; nothing kept."""
        from exoacq.nta.parameters import at_threshold, locate_features, with_threshold
        from exoacq.nta.threshold import SAMPLE_FRAMES as THRESHOLD_FRAMES

        engine, camera = self.engine, self.engine.camera
        temperature_c = engine.thermometer.temperature_c()
        params = engine.tracking_parameters(temperature_c, 1.0)
        engine.laser.set_power_mw(self.settings.laser_power_mw)
        engine.laser.set_emission(True)
        camera.start()
        frame_number = 0
        last_report = 0.0
        counts: list[int] = []
        first: list[np.ndarray] = []  # an automatic threshold: from the noise of the first frames
        try:
            while not stop.is_set():
                frame = np.empty((camera.height, camera.width), dtype=camera.dtype)
                timestamp = camera.fill(frame)
                if params.minmass is None:
                    first.append(frame)
                    if len(first) >= THRESHOLD_FRAMES:
                        params = with_threshold(params, first)
                    continue
                features = locate_features(frame, **params.locate_options())
                seen = at_threshold(features["mass"], params.minmass)
                counts.append(int(np.count_nonzero(seen)))
                header = {"run_id": None, "instrument": self.instrument.name, "preview": True,
                          "frame_number": frame_number, "timestamp": timestamp, "exposure_ms": camera.exposure_ms,
                          "minmass": params.minmass,
                          "features": {k: np.round(np.asarray(features[k])[seen], 2).tolist()
                                       for k in ("x", "y", "mass") if k in features}}
                engine.send_live(header, frame)
                frame_number += 1
                now = time.monotonic()
                if now - last_report >= PREVIEW_REPORT_S:
                    last_report = now
                    self.context.emit({"event": "preview", "instrument": self.instrument.name,
                                       "frames": frame_number, "features_per_frame": float(np.mean(counts)),
                                       "minmass": params.minmass, "temperature_c": temperature_c,
                                       "exposure_ms": camera.exposure_ms})
                    counts.clear()
        finally:
            make_safe([lambda: engine.laser.set_emission(False), camera.stop])

    # -- events ---------------------------------------------------------------------
    def _on_tracker_events(self) -> None:
        while self.events.poll(0):
            message = self.events.recv()
            if message.startswith(LIVE_PREFIX):  # features for viewers: published as they came, unparsed
                self._publish_features(message)
                continue
            if message.startswith(ROWS_PREFIX):  # linked positions: a JSON line, then float64 rows
                try:
                    event = decode_rows(message)
                except ValueError as exc:
                    log.error("tracking core: %s", exc)
                    continue
            else:
                event = loads(message)
            if self.tracking.on_event(event):
                if event.get("event") == "bound" and self.tracking.restarts["linker"]:  # its endpoint: replay now
                    self._resume_captures()
                continue
            run_id = str(event.get("run_id")).partition("/")[0]
            self.on_event(self.context.run_status(run_id), event)

    def _resume_captures(self) -> None:
        """A restarted linker: the captures of the runs still waiting for their result, again (resumed)."""
        for topic, message in self.replay.replay():
            run_id = str(message.get("run_id")).partition("/")[0]
            status = self.context.run_status(run_id)
            if status is None or status.result_stored or status.state in ("failed", "interrupted"):
                self.replay.forget_run(run_id)  # nobody waits for it any more
                continue
            log.warning("tracking core restarted: %s %s again", topic, message.get("run_id"))
            self.tracking.send(topic, message)

    def on_event(self, status: RunStatus | None, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "to_tracker":  # from the acquisition thread: this (main) thread owns the linker's socket
            self.replay.sent(event["topic"], event["message"])
            # a linker being restarted gets the message when it is up (replay), so no failure then
            if not self.tracking.send(event["topic"], event["message"]) and status is not None \
                    and not self.tracking.restarting:
                self._fail(status, f"the tracking core did not take {event['topic']} (is it running?)")
            return
        if kind == "preview":
            self.last_preview = event
            return
        if kind == "error":
            log.error("tracking core: %s\n%s", event.get("message"), event.get("detail", ""))
            if status is not None:
                self._fail(status, f"tracking core: {event.get('message')}")
            return
        if status is None:
            return
        data = status.data
        if kind == "settings":
            data["tracking"], data["instruments"] = event["tracking"], event["instruments"]
        elif kind == "acquisition":
            status.acquisition.update({k: v for k, v in event.items() if k not in ("event", "run_id")})
            data["capture"] = event.get("capture", data.get("capture", 0))
        elif kind == "progress":
            data["tracker"] = event
            data.setdefault("frames_lost", {})[str(event.get("run_id"))] = event.get("frames_lost", 0)
            self.context.progress_now(status)
        elif kind == "video":
            data.setdefault("videos", {})[event["capture"]] = event
        elif kind == "rows":  # linked positions from the tracking core: into the run's run.h5
            self.context.record(status.run.run_id, event["dataset"], event["rows"])
        elif kind == "result":
            self.replay.done(str(event.get("run_id")))
            data.setdefault("frames_lost", {})[str(event.get("run_id"))] = event.get("frames_lost", 0)
            capture = int(str(event.get("run_id")).partition("/")[2] or 1)
            data.setdefault("captures", {})[capture] = {"capture": capture, **event}
            self._maybe_finish(status)

    def _publish_features(self, message: bytes) -> None:
        """The linker's ``live`` event (exoacq.nta.tracker.LIVE_PREFIX, then run_id, capture, frame_number,
        timestamp, features, tails, minmass) on the frames socket, topic ``features`` (docs/protocol.md,
        Frames), with this instrument's name and ``seq`` put in front: ~1 ms of parsing and encoding 15
        times a second saved in this thread. A viewer that does not keep up loses them, never waits."""
        self.features_seq += 1
        head = f'{{"instrument":{json.dumps(self.instrument.name)},"seq":{self.features_seq},'.encode()
        try:
            self.live_features.send_multipart([b"features", head + message[len(LIVE_PREFIX):]], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _fail(self, status: RunStatus, reason: str) -> None:
        self.context.fail(status, reason)

    def on_processing(self, status: RunStatus) -> None:
        self._maybe_finish(status)

    def on_aborted(self, status: RunStatus) -> None:
        self._maybe_finish(status)

    def _maybe_finish(self, status: RunStatus) -> None:
        """Once every capture's result is in, hand the run's result to the daemon."""
        if status.result_stored or status.state not in ("processing", "aborted"):
            return
        run: Run = status.run  # type: ignore[assignment]
        results = status.data.get("captures", {})
        # done: every capture; aborted: the ones completely handed to the tracker (a partial result)
        wanted = run.settings["captures"] if status.state == "processing" else run.captures_ended
        if wanted == 0 or len(results) < wanted:
            return
        document = build_result(
            run_id=run.run_id, schema=self.instrument.method.topics["nta.result"], instrument=run.instrument,
            complete=status.state != "aborted", run_settings=run.settings,
            captures=[{**results[k], "files": {**results[k].get("files", {}),
                                               **status.data.get("videos", {}).get(k, {}).get("files", {})}}
                      for k in sorted(results)], acquisition=status.acquisition,
            tracking=status.data.get("tracking", {}), instruments=status.data.get("instruments", {}),
            detection_volume_source=self.settings.detection_volume_source)
        mark_degraded(document, status.data.get("degraded", []), frames_lost(status.data))
        self.replay.forget_run(run.run_id)
        try:
            records = self._assess(run, document)
        except Exception as exc:  # never lose a result to its suitability assessment
            log.exception("suitability of run %s", run.run_id)
            records = []
            document["suitability"] = None
            document["warnings"].append(f"system suitability could not be assessed: {exc}")
        if run.settings.get("blank_run"):
            from exoacq.nta.blank import attach_blank
            attach_blank(document, self.context.stored_run(run.settings["blank_run"]), run.settings["blank_run"],
                         warn_fraction=self.settings.blank_warning_fraction)
        if "export" in run.settings.get("after", []):
            document["files"] = {**(document.get("files") or {}), **self._export(run, document, records)}
        self.context.finish(status, document)

    def _assess(self, run: Run, document: dict[str, Any]) -> list[dict[str, Any]]:
        """System suitability (exoacq.nta.suitability): a bead-check run judged against its standard;
        every result flagged when its calibration has expired or the newest bead check within
        ``bead_check_period_h`` failed or is missing. Returns the stored runs it looked at."""
        from exoacq.nta.suitability import assess, evaluate_bead_check

        if run.settings.get("bead_check") is not None:
            document["bead_check"] = evaluate_bead_check(document, run.settings["bead_check"])
        records = self.context.stored_runs("nta", run.instrument, 100)
        document["suitability"] = assess(document, calibration=self.settings.calibration, bead_checks=records,
                                         period_h=self.settings.bead_check_period_h)
        document["warnings"].extend(document["suitability"]["flags"])
        return records

    def _export(self, run: Run, document: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, str]:
        """A SOP's export step: the NanoSight-style CSV and the HTML report beside the run's files."""
        from exoacq.nta.export import write_experiment_summary_csv, write_html_report
        from exoacq.audit import signature_lines
        from exoacq.nta.suitability import bead_check_trend

        captures = document.get("captures") or [document]
        csv, html = run.output_dir / "ExperimentSummary.csv", run.output_dir / "report.html"
        calibration = None if self.settings.calibration is None else {
            "file": str(self.settings.calibration), "detection_volume_nl": self.settings.detection_volume_nl,
            "source": self.settings.detection_volume_source}
        try:
            write_experiment_summary_csv(csv, captures, sample=run.settings["sample"], settings=document["settings"])
            write_html_report(html, captures, sample=run.settings["sample"], settings=document["settings"],
                              calibration=calibration, suitability=document.get("suitability"),
                              bead_check=document.get("bead_check"),
                              bead_checks=bead_check_trend(records, current=document)[-30:],
                              signatures=signature_lines(self.context.stored_run(run.run_id)))
        except (OSError, ValueError, ExoacqError) as exc:
            document["warnings"].append(f"export failed: {exc}")
            return {}
        return {"summary_csv": str(csv), "report": str(html)}

    # -- progress and supervision -------------------------------------------------------
    def progress(self, status: RunStatus) -> dict[str, Any] | None:
        data, acq = status.data, status.acquisition
        tracker = data.get("tracker", {})
        summary = tracker.get("summary", {})
        size = summary.get("size_nm") or {}
        return {
            "state": status.state, "capture": data.get("capture", 0), "captures": status.run.settings["captures"],
            "duration_s": status.run.settings["duration_s"], "elapsed_s": acq.get("elapsed_s", 0.0),
            "frames": with_tracker_losses(
                {"planned": acq.get("frames_planned"), "acquired": acq.get("frames_acquired", 0),
                 "processed": tracker.get("frames_processed", 0), "dropped": acq.get("frames_dropped", 0),
                 "dropped_by": acq.get("frames_dropped_by", {"camera": 0, "tracker": 0})}, frames_lost(data)),
            "degraded": list(data.get("degraded", [])),
            "particles_per_frame": summary.get("particles_per_frame"),
            "tracks": summary.get("tracks", {"total": 0, "used": 0}),
            "histogram": summary.get("histogram") or {"bin_width_nm": HISTOGRAM_BIN_NM, "bin_centres_nm": [],
                                                      "counts": []},
            "size_nm": {k: size.get(k) for k in ("mean", "mode", "sd", "d10", "d50", "d90")},
            "concentration_per_ml": summary.get("concentration_per_ml"),
            "temperature_c": data.get("tracking", {}).get("temperature_c"),
            "last_frame_timestamp": tracker.get("last_frame_timestamp"),
            "step": status.step,
        }

    def check(self, status: RunStatus | None) -> str | None:
        restarted = self.tracking.check()
        if restarted is not None and not self.tracking.has_been_ready:
            return restarted  # it never came up: the daemon's start fails with the reason
        if restarted is not None:  # restarted: the run goes on, degraded (exoacq.nta.supervision)
            if status is not None and status.state in ("preparing", "acquiring", "processing"):
                log.warning("run %s degraded: %s", status.run.run_id, restarted)
                reasons = status.data.setdefault("degraded", [])
                reasons.append(restarted)
                if len(reasons) > MAX_RESTARTS_PER_RUN:  # a core that keeps dying tracks nothing sound
                    return f"the tracking core failed {len(reasons)} times during this run (last: {restarted})"
                if status.processing_since is not None:  # the restarted core's own time to finish
                    status.processing_since = time.monotonic()
            return None
        if status is not None and status.state == "processing" and status.processing_since is not None:
            backlog = status.acquisition.get("frames_acquired", 0) - \
                status.data.get("tracker", {}).get("frames_processed", 0)
            rate = max(getattr(self.instrument.slots["camera"].device, "frame_rate_hz", 1.0) or 1.0, 1.0)
            limit = PROCESSING_TIMEOUT_S + backlog / rate
            if time.monotonic() - status.processing_since > limit:
                return f"the tracking core gave no result within {limit:.0f} s of the last frame"
        return None
