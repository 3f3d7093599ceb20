"""The exoacq daemon: control socket, results publisher, run queue, tracking core.

Threads and processes:

* main thread: the control ROUTER, the results PUB and the event PULL; it is
  the only writer of the run store and the only publisher of documents;
* acquisition thread: runs one queued run at a time through the method's
  engine (setup, exec, teardown) and owns the frame sockets;
* tracking core (:mod:`exoacq.nta.pipeline`): locate workers fed over a
  bounded PUSH socket, and a linker process answering with events.
"""
from __future__ import annotations

import inspect
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
from typing import Any

import zmq

from exoacq import __version__
from exoacq.bus import dumps, loads, make_document, publish
from exoacq.config import Config
from exoacq.errors import ExoacqError, ProtocolError
from exoacq.instruments import Instruments, connect_instruments
from exoacq.sdnotify import notify
from exoacq.nta.acquisition import NTAAcquisition, Run, validate_request
from exoacq.nta.pipeline import TrackingPipeline
from exoacq.nta.results import combine_captures
from exoacq.storage import FINAL_STATES, RunStore

log = logging.getLogger("exoacq.daemon")

#: nta.progress is published when the tracking core reports (at most this often) and at least every
#: PROGRESS_INTERVAL_S while a run acquires or processes.
MIN_PROGRESS_INTERVAL_S = 0.1
PROGRESS_INTERVAL_S = 0.5
#: Finished runs whose status the daemon keeps in memory (late tracker results of aborted runs).
RUNS_IN_MEMORY = 100
TRACKER_START_TIMEOUT_S = 60.0
#: After the last frame, how long the tracker may take per queued frame, plus a floor.
PROCESSING_TIMEOUT_S = 30.0


class _RunStatus:
    """What the main thread knows of the run in progress."""

    def __init__(self, run: Run):
        self.run = run
        self.state = "queued"
        self.acquisition: dict[str, Any] = {"frames_acquired": 0, "frames_dropped": 0}
        self.tracker: dict[str, Any] = {}
        self.instrument_settings: dict[str, Any] = {}
        self.tracking: dict[str, Any] = {}
        self.processing_since: float | None = None
        #: Why the main thread failed this run while the acquisition thread still held the hardware.
        self.failure: str | None = None
        #: The tracking core's results, by capture number.
        self.capture_results: dict[int, dict[str, Any]] = {}
        self.capture = 0
        self.result_stored = False


class Daemon:
    def __init__(self, config: Config):
        self.config = config
        self.ctx = zmq.Context()
        self.store = RunStore(config.daemon.resolved_data_dir())
        for run_id in self.store.fail_unfinished("the daemon stopped during this run"):
            log.warning("run %s was left unfinished by a previous daemon: marked failed", run_id)
        self._stopping = threading.Event()
        self._queue: queue.Queue[Run | None] = queue.Queue()
        self._runs: dict[str, _RunStatus] = {}
        self._current: _RunStatus | None = None
        self._started = time.time()
        self._last_progress = 0.0
        self.instruments: Instruments | None = None
        self._bind_sockets()

    # -- set-up ----------------------------------------------------------------
    def _bind(self, kind: int, address: str, what: str, option: str | None = None, hwm: int | None = None) -> zmq.Socket:
        socket = self.ctx.socket(kind)
        socket.setsockopt(zmq.LINGER, 0)
        if hwm is not None:  # before bind: a high-water mark applies to connections made after it is set
            socket.setsockopt(zmq.SNDHWM, hwm)
        try:
            socket.bind(address)
        except zmq.ZMQError as exc:
            socket.close()
            self.ctx.term()
            hint = (f"another daemon on this port? use {option or '--' + what} to choose another"
                    if exc.errno == zmq.EADDRINUSE
                    else "give an address of this host, e.g. tcp://127.0.0.1:5555")
            raise ExoacqError(f"cannot bind the {what} socket to {address}: {zmq.strerror(exc.errno)} ({hint})",
                              code="bind_failed") from None
        return socket

    def _bind_sockets(self) -> None:
        d = self.config.daemon
        self.control = self._bind(zmq.ROUTER, d.control, "control")
        self.results = self._bind(zmq.PUB, d.results, "results")
        self.live_frames = self._bind(zmq.PUB, d.frames, "frames", hwm=4)
        self.events = self.ctx.socket(zmq.PULL)
        self.events.bind("inproc://events")
        events_port = self.events.bind_to_random_port("tcp://127.0.0.1")
        # Frames for the locate workers: never blocking, a full queue drops (and counts) the frame.
        self.worker_frames = self._bind(zmq.PUSH, self.config.tracking.frames, "tracking frames",
                                        "[tracking] frames in the configuration", hwm=d.frame_queue)
        self.tracking = TrackingPipeline(
            self.ctx, workers=self.config.tracking.workers,
            frames_endpoint=_connectable(self.worker_frames.getsockopt(zmq.LAST_ENDPOINT).decode()),
            events_endpoint=f"tcp://127.0.0.1:{events_port}", features_bind=self.config.tracking.features)

    def start(self) -> None:
        """Connect instruments, start the tracking core and the acquisition thread."""
        self.instruments = connect_instruments(self.config)  # fail fast on a bad port
        self.tracking.start()
        emit_socket = self.ctx.socket(zmq.PUSH)
        emit_socket.connect("inproc://events")
        self._emit_lock = threading.Lock()

        def emit(event: dict[str, Any]) -> None:
            with self._emit_lock:
                emit_socket.send(dumps(event))

        self._emit_socket = emit_socket
        self.engine = NTAAcquisition(self.config, self.instruments, self.worker_frames, self.live_frames, emit)
        self._emit = emit
        self._worker = threading.Thread(target=self._acquisition_loop, name="acquisition", daemon=True)
        self._worker.start()
        deadline = time.monotonic() + TRACKER_START_TIMEOUT_S
        while not self.tracking.ready:
            if time.monotonic() > deadline or self.tracking.check() is not None:
                raise ExoacqError("the tracking core did not start (see the log above)", code="tracker_failed")
            if self.events.poll(100):
                self._on_event(loads(self.events.recv()))

    # -- the acquisition thread --------------------------------------------------
    def _acquisition_loop(self) -> None:
        while True:
            run = self._queue.get()
            if run is None:
                return
            if run.abort.is_set():
                continue  # aborted while queued: the main thread has recorded it
            self._execute(run)

    def _execute(self, run: Run) -> None:
        emit = self._emit
        emit({"event": "state", "run_id": run.run_id, "state": "preparing"})
        counters: dict[str, Any] = {}
        try:
            try:
                self.engine.setup(run)
                emit({"event": "state", "run_id": run.run_id, "state": "acquiring"})
                counters = self.engine.exec(run)
            finally:
                self.engine.teardown(run)
        except ExoacqError as exc:
            emit({"event": "state", "run_id": run.run_id, "state": "failed", "error": str(exc)})
            return
        except Exception as exc:  # a bug: record it on the run, keep the daemon alive
            log.exception("run %s failed", run.run_id)
            emit({"event": "state", "run_id": run.run_id, "state": "failed",
                  "error": f"internal error: {type(exc).__name__}: {exc}"})
            return
        if run.abort.is_set():
            emit({"event": "state", "run_id": run.run_id, "state": "aborted", "counters": counters,
                  "settings": run.settings, "error": run.abort_reason})
            return
        emit({"event": "state", "run_id": run.run_id, "state": "processing", "counters": counters,
              "settings": run.settings})
        run.finished.wait()  # the main thread sets it on the result, a failure or shutdown

    # -- the main loop -----------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self._stopping.set()

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        while not self._stopping.is_set():
            ready = dict(poller.poll(100))
            if self.control in ready:
                self._on_control(self.control.recv_multipart())
            while self.events.poll(0):
                self._on_event(loads(self.events.recv()))
            now = time.monotonic()
            if now - self._last_progress >= PROGRESS_INTERVAL_S:
                self._publish_progress()
                self._check_tracker()

    def shutdown(self) -> None:
        """Abort the run in progress, switch the laser off, stop the tracker. Fast (< 5 s)."""
        current = self._current
        while True:  # drain the queue: queued runs are aborted too
            try:
                queued = self._queue.get_nowait()
            except queue.Empty:
                break
            if queued is not None:
                self._set_state(queued.run_id, "aborted", error="the daemon was stopped")
        if current is not None and current.state not in FINAL_STATES:
            current.run.request_abort("the daemon was stopped")
        self._queue.put(None)
        if hasattr(self, "_worker"):
            self._worker.join(timeout=3.0)
            if self._worker.is_alive():
                frame = sys._current_frames().get(self._worker.ident)
                log.error("the acquisition thread did not stop within 3 s:\n%s",
                          "".join(traceback.format_stack(frame)) if frame else "?")
        while self.events.poll(0):
            self._on_event(loads(self.events.recv()))
        if current is not None and current.state not in FINAL_STATES:
            self._set_state(current.run.run_id, "aborted", error="the daemon was stopped")
            current.run.finished.set()
        if self.instruments is not None:
            self.instruments.close()
        self.tracking.stop()
        self.store.close()
        if hasattr(self, "_emit_socket"):
            self._emit_socket.close(linger=0)
        for socket in (self.control, self.results, self.live_frames, self.events, self.worker_frames):
            socket.close(linger=0)
        self.ctx.term()

    # -- control requests ----------------------------------------------------------
    def _on_control(self, parts: list[bytes]) -> None:
        envelope, payload = parts[:-1], parts[-1]
        try:
            try:
                request = loads(payload)
            except (UnicodeDecodeError, ValueError) as exc:
                raise ProtocolError(f"the request is not valid JSON ({exc})", code="bad_json") from None
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise ProtocolError('a request is a JSON object with a "command" string', code="bad_request")
            command = request.pop("command")
            handler = getattr(self, f"_cmd_{command}", None)
            if handler is None:
                known = sorted(n.removeprefix("_cmd_") for n in dir(self) if n.startswith("_cmd_"))
                raise ProtocolError(f"unknown command {command!r}; known: {', '.join(known)}",
                                    code="unknown_command")
            try:
                inspect.signature(handler).bind(**request)
            except TypeError as exc:
                raise ProtocolError(f"bad parameters for {command!r}: {exc}") from None
            reply = {"ok": True, "result": handler(**request)}
        except ExoacqError as exc:
            reply = {"ok": False, "error": {"code": exc.code, "message": str(exc)}}
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("control request failed")
            reply = {"ok": False, "error": {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}}
        self.control.send_multipart([*envelope, dumps(reply)])

    def _cmd_ping(self) -> dict[str, Any]:
        return {"version": __version__, "pid": os.getpid()}

    def _cmd_status(self) -> dict[str, Any]:
        d = self.config.daemon
        current = self._current
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": time.time() - self._started,
            "data_dir": str(self.store.data_dir),
            "endpoints": {name: _connectable(getattr(d, name)) for name in ("control", "results", "frames")},
            "simulated": bool(self.instruments and self.instruments.simulated),
            "simulation": self.config.simulation.model_dump() if self.instruments and self.instruments.simulated
            else None,
            "instruments": self.instruments.describe() if self.instruments else {},
            "tracker": self.tracking.describe(),
            "current_run": None if current is None else {
                "run_id": current.run.run_id, "state": current.state, **current.acquisition},
            "queued": [r.run.run_id for r in self._runs.values() if r.state == "queued"],
        }

    def _cmd_acquire(self, method: str = "nta", **params: Any) -> dict[str, Any]:
        if method != "nta":
            raise ProtocolError(f"unknown method {method!r}; this daemon runs: nta", code="unknown_method")
        settings = validate_request(params)
        run_id = self.store.create("nta", settings["sample"], settings)
        run = Run(run_id, settings, self.store.run_dir(run_id))
        self._runs[run_id] = _RunStatus(run)
        self._forget_old_runs()
        self._set_state(run_id, "queued")
        self._queue.put(run)
        return {"run_id": run_id, "state": "queued"}

    def _forget_old_runs(self) -> None:
        """Keep the in-memory status of the last RUNS_IN_MEMORY runs (the store has them all)."""
        finished = [k for k, r in self._runs.items() if r.state in FINAL_STATES and r.run.finished.is_set()]
        for run_id in finished[: max(0, len(self._runs) - RUNS_IN_MEMORY)]:
            del self._runs[run_id]

    def _cmd_stop(self, run_id: str | None = None) -> dict[str, Any]:
        target = self._runs.get(run_id) if run_id else self._current
        if run_id and target is None:
            raise ExoacqError(f"no active or queued run {run_id!r}", code="unknown_run")
        if target is None or target.state in FINAL_STATES:
            raise ExoacqError("no run in progress", code="no_run")
        if target.state == "processing":
            raise ExoacqError(f"run {target.run.run_id} has finished acquiring and is being analysed; "
                              "it cannot be aborted now", code="too_late")
        target.run.request_abort("stopped by the operator")
        if target.state == "queued":
            self._set_state(target.run.run_id, "aborted", error="stopped by the operator before it started")
        return {"run_id": target.run.run_id, "state": "aborted" if target.state == "aborted" else "aborting"}

    def _cmd_runs(self, limit: int = 100) -> list[dict[str, Any]]:
        if not isinstance(limit, int) or limit < 1:
            raise ProtocolError(f"limit = {limit!r}: must be a positive integer")
        return self.store.list(limit)

    def _cmd_run(self, run_id: str) -> dict[str, Any]:
        return self.store.get(run_id)

    # -- events from the acquisition thread and the tracker ---------------------------
    def _on_event(self, event: dict[str, Any]) -> None:
        if self.tracking.on_event(event):
            return
        kind = event.pop("event")
        if kind == "to_tracker":  # from the acquisition thread: this thread owns the linker's socket
            if not self.tracking.send(event["topic"], event["message"]):
                status = self._runs.get(event["message"]["run_id"])
                if status is not None:
                    self._fail(status, f"the tracking core did not take {event['topic']} (is it running?)")
            return
        run_id, _, capture = str(event.get("run_id")).partition("/")  # the tracker names captures run/k
        status = self._runs.get(run_id)
        if kind == "error":
            log.error("tracking core: %s\n%s", event.get("message"), event.get("detail", ""))
            if status is not None:
                self._fail(status, f"tracking core: {event.get('message')}")
            return
        if status is None:
            return
        if kind == "state":
            status.acquisition.update(event.get("counters") or {})
            if "settings" in event:
                status.run.settings.update(event["settings"])
            if event["state"] == "processing":
                status.processing_since = time.monotonic()
            state, error = event["state"], event.get("error")
            if status.failure is not None and state in ("aborted", "failed", "processing"):
                state, error = "failed", status.failure  # the hardware is safe now: record the real cause
            if status.state not in FINAL_STATES:
                self._set_state(status.run.run_id, state, error=error)
            self._maybe_finish(status)
        elif kind == "settings":
            status.tracking, status.instrument_settings = event["tracking"], event["instruments"]
        elif kind == "acquisition":
            status.acquisition.update(event)
            status.capture = event.get("capture", status.capture)
        elif kind == "progress":
            status.tracker = event
            now = time.monotonic()
            if now - self._last_progress >= MIN_PROGRESS_INTERVAL_S:  # fresh frames: publish now
                self._publish_progress()
        elif kind == "result":
            status.capture_results[int(capture or 1)] = {"capture": int(capture or 1), **event}
            self._maybe_finish(status)

    def _maybe_finish(self, status: _RunStatus) -> None:
        """Once every capture's result is in, store (and, if done, publish) the run's result."""
        if status.result_stored or status.state not in ("processing", "aborted"):
            return
        # done: every capture; aborted: the ones completely handed to the tracker (a partial result)
        wanted = status.run.settings["captures"] if status.state == "processing" else status.run.captures_ended
        if wanted == 0 or len(status.capture_results) < wanted:
            return
        status.result_stored = True
        run = status.run
        summary = combine_captures([status.capture_results[k] for k in sorted(status.capture_results)])
        acq = status.acquisition
        frames = {"planned": acq.get("frames_planned"), "acquired": acq.get("frames_acquired", 0),
                  "processed": sum(r["frames_processed"] for r in status.capture_results.values()),
                  "dropped": acq.get("frames_dropped", 0),
                  "dropped_by": acq.get("frames_dropped_by", {"camera": 0, "tracker": 0})}
        warnings = list(summary.pop("warnings"))
        by = frames["dropped_by"]
        if by["tracker"]:
            warnings.append(f"{by['tracker']} of {frames['acquired']} frames were dropped: the tracking core "
                            "fell behind the camera; results use the frames it processed")
        if by["camera"]:
            warnings.append(f"the camera lost {by['camera']} frames: the acquisition fell behind its frame "
                            "clock (machine overloaded?)")
        tracking = status.tracking
        document = make_document(
            "nta.result", run.run_id, method="nta", complete=status.state != "aborted",
            sample=run.settings["sample"], dilution=run.settings["dilution"],
            duration_s=run.settings["duration_s"], **summary, frames=frames, warnings=warnings,
            detection_volume={"nl": tracking.get("detection_volume_nl"),
                              "source": self.config.nta.detection_volume_source},
            settings={"acquisition": run.settings, "tracking": tracking,
                      "instruments": status.instrument_settings},
        )
        self.store.save_result(run.run_id, document)
        if status.state == "processing":
            publish(self.results, "nta.result", document)
            self._set_state(run.run_id, "done")
        run.finished.set()

    def _set_state(self, run_id: str, state: str, error: str | None = None) -> None:
        status = self._runs.get(run_id)
        previous = status.state if status else None
        self.store.set_state(run_id, state, error=error)
        if status is not None:
            status.state = state
            if state in ("preparing", "acquiring", "processing"):
                self._current = status
            if state in FINAL_STATES:
                if self._current is status:
                    self._current = None
                status.run.finished.set()
        record = self.store.get(run_id)
        publish(self.results, "run.state", make_document(
            "run.state", run_id, state=state, previous=previous, method=record["method"],
            sample=record["sample"], error=error))

    def _publish_progress(self) -> None:
        self._last_progress = time.monotonic()
        status = self._current
        if status is None or status.state not in ("acquiring", "processing"):
            return
        acq, tracker = status.acquisition, status.tracker
        summary = tracker.get("summary", {})
        size = summary.get("size_nm") or {}
        publish(self.results, "nta.progress", make_document(
            "nta.progress", status.run.run_id, state=status.state,
            capture=status.capture, captures=status.run.settings["captures"],
            duration_s=status.run.settings["duration_s"],
            elapsed_s=acq.get("elapsed_s", 0.0),
            frames={"planned": acq.get("frames_planned"), "acquired": acq.get("frames_acquired", 0),
                    "processed": tracker.get("frames_processed", 0), "dropped": acq.get("frames_dropped", 0),
                    "dropped_by": acq.get("frames_dropped_by", {"camera": 0, "tracker": 0})},
            particles_per_frame=summary.get("particles_per_frame"),
            tracks=summary.get("tracks", {"total": 0, "used": 0}),
            size_nm={k: size.get(k) for k in ("mean", "mode", "sd", "d10", "d50", "d90")},
            concentration_per_ml=summary.get("concentration_per_ml"),
            temperature_c=status.tracking.get("temperature_c"),
            last_frame_timestamp=tracker.get("last_frame_timestamp"),
        ))

    def _check_tracker(self) -> None:
        status = self._current
        failure = self.tracking.check()
        if failure is not None:
            if status is not None:
                self._fail(status, failure)
            return
        if status is not None and status.state == "processing" and status.processing_since is not None:
            backlog = status.acquisition.get("frames_acquired", 0) - status.tracker.get("frames_processed", 0)
            limit = PROCESSING_TIMEOUT_S + backlog / max(self.instruments.camera.frame_rate_hz, 1.0)
            if time.monotonic() - status.processing_since > limit:
                self._fail(status, f"the tracking core gave no result within {limit:.0f} s of the last frame")

    def _fail(self, status: _RunStatus, reason: str) -> None:
        """Fail a run. While the acquisition thread holds the hardware, ask it to stop first:
        the run becomes 'failed' when it reports back, with the laser already off."""
        if status.state in FINAL_STATES or status.failure is not None:
            return
        if status.state in ("preparing", "acquiring"):
            status.failure = reason
            status.run.request_abort(reason)
        else:
            self._set_state(status.run.run_id, "failed", error=reason)


def _connectable(address: str) -> str:
    """An address a local client can connect to (a wildcard bind becomes loopback)."""
    return address.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")


def run_daemon(config: Config) -> int:
    """Run until SIGTERM/SIGINT; exit status 0 on a clean stop."""
    daemon = Daemon(config)
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    try:
        daemon.start()
        d = config.daemon
        log.info("exoacq daemon %s ready: control %s, results %s, frames %s, data %s",
                 __version__, d.control, d.results, d.frames, daemon.store.data_dir)
        notify(f"READY=1\nSTATUS=serving on {d.control}")
        daemon.serve()
    finally:
        notify("STOPPING=1")
        daemon.shutdown()
    log.info("exoacq daemon stopped")
    return 0
