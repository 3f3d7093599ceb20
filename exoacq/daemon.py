"""The exoacq daemon: control socket, results publisher, run queues, supervision.

It knows no method: each configured instrument brings its method plugin's
service (:mod:`exoacq.methods`), and runs queue per instrument. The control
requests it answers are in :mod:`exoacq.commands`.

Threads:

* main thread: the control ROUTER, the results PUB and the event PULL; the
  only writer of the run store and the only publisher of documents;
* one acquisition thread per instrument (:mod:`exoacq.runner`): runs its
  queued runs one at a time through the method's engine (setup, exec,
  teardown), or a live preview, and reconnects lost devices with backoff;
* a frames proxy: each acquisition thread publishes live frames on its own
  socket; the proxy forwards them to the daemon's frames endpoint;
* a re-processing thread (:mod:`exoacq.reprocessing`), started by the first
  ``reprocess`` request: runs the methods' ``reprocess`` hooks one at a time, each in a
  process of its own; the main thread stores and publishes the versions they make.
"""
from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
import time
import traceback
from typing import Any

import zmq

from exoacq import __version__
from exoacq.audit_recorder import AuditRecorder
from exoacq.bluesky import BLUESKY_FILE, RunDocuments, epoch, write_jsonl
from exoacq.bus import Publisher, dumps, loads, make_document, utc_now_iso
from exoacq.commands import ControlCommands
from exoacq.config import Config
from exoacq.durable import CatalogRetry, recover_unfinished, run_files_for
from exoacq.errors import ConfigError, ExoacqError, ProtocolError
from exoacq.instruments import Instrument
from exoacq.liveness import HEARTBEAT_INTERVAL_S, HEARTBEAT_TOPIC, heartbeat_document
from exoacq.methods import Method, MethodService, RunStatus, ServiceContext
from exoacq.metrics import DaemonMetrics
from exoacq.reprocessing import Reprocessing
from exoacq.runner import InstrumentRunner, Preview
from exoacq.sdnotify import Watchdog, notify, status_line
from exoacq.security import DaemonSecurity
from exoacq.storage import FINAL_STATES, RunStore

log = logging.getLogger("exoacq.daemon")

#: Progress documents are published at least this often while a run acquires or processes.
PROGRESS_INTERVAL_S = 0.5
#: Results a subscriber that does not read may have queued before the PUB drops its documents
#: (it sees a ``seq`` gap); acquisition is never slowed by a subscriber.
RESULTS_HWM = 1000
#: Events from the acquisition threads and services queued for the main thread (each small).
EVENTS_HWM = 10000
#: Finished runs whose status the daemon keeps in memory (late results of aborted runs).
RUNS_IN_MEMORY = 100
SERVICE_START_TIMEOUT_S = 60.0
LIVE_FRAMES = "inproc://live-frames"


class Daemon(ControlCommands):
    """The daemon: sockets, main loop, run states and documents; the control requests it answers are
    :class:`exoacq.commands.ControlCommands`."""

    def __init__(self, config: Config):
        if not config.instruments:
            raise ConfigError("no instruments configured: add an [instruments.NAME] section "
                              "(see `exoacq config example`), or use --simulated")
        self.config = config
        #: Refuses (ConfigError naming the socket) an off-host endpoint without CurveZMQ keys.
        self.security = DaemonSecurity.from_config(config)
        #: Who sent the control request being handled (exoacq.security; set by _on_control).
        self.current_client: dict[str, Any] | None = None
        self.ctx = zmq.Context()
        self.store = RunStore(config.daemon.resolved_data_dir())
        #: The audit trail (exoacq.audit): control requests, run states, results, approvals.
        self.audit = AuditRecorder(self.store, config.daemon.resolved_data_dir())
        for run_id, kept in recover_unfinished(self.store, "the daemon stopped during this run"):
            log.warning("run %s was left unfinished by a previous daemon: marked interrupted; its data file %s: "
                        "%s (rows kept: %s)", run_id, kept["path"], kept["state"], kept["rows"])
            self.audit.state(run_id, "interrupted", None, "the daemon stopped during this run")
        #: Catalog writes a full disk refused, retried from the main loop (exoacq.durable).
        self.catalog = CatalogRetry(self.store.data_dir)
        for run_id, version in self.store.fail_unfinished_versions("the daemon stopped during this re-processing"):
            log.warning("run %s version %d was left unfinished by a previous daemon: marked failed", run_id, version)
            self.audit.result(run_id, version, None, error="the daemon stopped during this re-processing")
        #: Result versions of stored runs, made in a thread of their own (exoacq.reprocessing).
        self.reprocessing = Reprocessing(self.store, self.audit, publish=lambda topic, document:
                                         self.publisher.publish(topic, document), method_named=self._method_named)
        self._stopping = threading.Event()
        self._runs: dict[str, RunStatus] = {}
        self._started = time.time()
        self._last_progress = 0.0
        self._last_heartbeat = 0.0
        self.runners: dict[str, InstrumentRunner] = {}
        self._watched: dict[zmq.Socket, Any] = {}
        #: Prometheus endpoint (refuses an off-loopback address unless allowed) and systemd's watchdog.
        self.metrics = DaemonMetrics(self, config.daemon.metrics, config.daemon.metrics_allow_remote)
        self.watchdog = Watchdog()
        self._bind_sockets()

    # -- set-up ----------------------------------------------------------------
    def _bind(self, kind: int, address: str, what: str, hwm: int | None = None) -> zmq.Socket:
        socket = self.ctx.socket(kind)
        socket.setsockopt(zmq.LINGER, 0)
        if hwm is not None:  # before bind: a high-water mark applies to connections made after it is set
            socket.setsockopt(zmq.SNDHWM, hwm)
        self.security.prepare(socket, what)  # CURVE server with keys; the control socket's size limit
        try:
            socket.bind(address)
        except zmq.ZMQError as exc:
            socket.close()
            for other in getattr(self, "_bound", []):
                other.close()
            self.security.stop()
            self.ctx.term()
            hint = (f"another daemon on this port? use --{what} to choose another"
                    if exc.errno == zmq.EADDRINUSE
                    else "give an address of this host, e.g. tcp://127.0.0.1:5555")
            raise ExoacqError(f"cannot bind the {what} socket to {address}: {zmq.strerror(exc.errno)} ({hint})",
                              code="bind_failed") from None
        self._bound = [*getattr(self, "_bound", []), socket]
        return socket

    def _bind_sockets(self) -> None:
        d = self.config.daemon
        self.security.start(self.ctx)  # the ZAP handler, before the first CURVE socket binds
        self.control = self._bind(zmq.ROUTER, d.control, "control")
        self.results = self._bind(zmq.PUB, d.results, "results", hwm=RESULTS_HWM)
        #: Every document goes out through it: ``seq`` per topic and this start's boot id (exoacq.bus).
        self.publisher = Publisher(self.results)
        #: Each run's run.h5, fed every published document of the run (exoacq.durable).
        self.run_files = run_files_for(self)
        self.publisher.observers.append(self.run_files)
        self.live_frames = self._bind(zmq.XPUB, d.frames, "frames", hwm=4)
        self.live_in = self.ctx.socket(zmq.XSUB)
        self.live_in.setsockopt(zmq.RCVHWM, 4)  # frames of several MB: the proxy holds few, viewers drop the rest
        self.live_in.bind(LIVE_FRAMES)
        self.events = self.ctx.socket(zmq.PULL)
        # Events (states, counters, run messages for the tracking core) are never dropped: the emitting
        # thread would wait at this mark, which the main loop's draining keeps far away.
        self.events.setsockopt(zmq.RCVHWM, EVENTS_HWM)
        self.events.bind("inproc://events")
        self._proxy_control = self.ctx.socket(zmq.PAIR)
        self._proxy_control.bind("inproc://live-frames-control")

    def _live_frames_socket(self) -> zmq.Socket:
        socket = self.ctx.socket(zmq.PUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, 4)
        socket.connect(LIVE_FRAMES)
        return socket

    def _proxy(self) -> None:
        control = self.ctx.socket(zmq.PAIR)
        control.connect("inproc://live-frames-control")
        try:
            zmq.proxy_steerable(self.live_in, self.live_frames, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            control.close(linger=0)

    def start(self) -> None:
        """Connect every instrument, start the methods' services and the acquisition threads."""
        emit_socket = self.ctx.socket(zmq.PUSH)
        emit_socket.setsockopt(zmq.SNDHWM, EVENTS_HWM)
        emit_socket.connect("inproc://events")
        self._emit_lock = threading.Lock()
        self._emit_socket = emit_socket

        def emit(event: dict[str, Any]) -> None:
            with self._emit_lock:
                emit_socket.send(dumps(event))

        self._emit = emit
        self._proxy_thread = threading.Thread(target=self._proxy, name="frames-proxy", daemon=True)
        self._proxy_thread.start()
        context = ServiceContext(zmq_context=self.ctx, emit=emit, finish=self._finish,
                                 live_frames=self._live_frames_socket, watch=self._watch,
                                 run_status=lambda run_id: self._runs.get(run_id),
                                 progress_now=self.publish_progress_now, fail=self._fail,
                                 publish=self.publisher.publish,
                                 data_dir=self.config.daemon.resolved_data_dir(),
                                 stored_run=self._stored_run, record=self.run_files.record, security=self.security,
                                 stored_runs=lambda method, instrument, limit: self.store.find(method, instrument,
                                                                                             limit))
        for name, instrument_config in self.config.instruments.items():
            instrument = Instrument(name, instrument_config)
            try:
                instrument.connect()  # fail fast on a bad port
            except ExoacqError as exc:
                raise type(exc)(f"instrument {name}: {exc}", code=exc.code) from None
            service = instrument.method.service(instrument, context)
            self.runners[name] = InstrumentRunner(instrument, service, emit)
            service.start()
        for runner in self.runners.values():
            runner.thread.start()
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while not all(r.service.ready for r in self.runners.values()):
            for runner in self.runners.values():
                failure = runner.service.check(None)
                if failure is not None or time.monotonic() > deadline:
                    raise ExoacqError(f"instrument {runner.name}: the {runner.instrument.method.name} service did "
                                      f"not start ({failure or 'timed out'}; see the log above)", code="service_failed")
            if self.events.poll(50):
                self._on_event(loads(self.events.recv()))
            for socket, callback in self._watched.items():
                if socket.poll(0):
                    callback()

    # -- the main loop -----------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self._stopping.set()

    def _watch(self, socket: zmq.Socket, callback) -> None:
        self._watched[socket] = callback

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        for socket in self._watched:
            poller.register(socket, zmq.POLLIN)
        while not self._stopping.is_set():
            ready = dict(poller.poll(100))
            self.watchdog.tick(lambda: status_line(self.runners))  # from this loop: a hung loop stops pinging
            self.metrics.refresh()
            if self.control in ready:
                self._on_control(self.control.recv_multipart(copy=False))  # frames: the User-Id
            while self.events.poll(0):
                self._guarded(self._on_event, loads(self.events.recv()))
            for socket, callback in self._watched.items():
                if socket in ready:
                    self._guarded(callback)
            self.reprocessing.store_finished()  # versions the re-processing thread made: stored, published
            self.run_files.tick()  # checkpoints, the free-space guard
            self.audit.flush_due()  # fsync read-only audit entries within 1 s (exoacq.audit_recorder)
            self.catalog.retry()
            if time.monotonic() - self._last_progress >= PROGRESS_INTERVAL_S:
                self._last_progress = time.monotonic()
                for runner in self.runners.values():
                    self._guarded(self._publish_progress, runner.current)
                    self._guarded(self._supervise, runner)
            if time.monotonic() - self._last_heartbeat >= HEARTBEAT_INTERVAL_S:  # clients notice (exoacq.liveness)
                self._last_heartbeat = time.monotonic()
                self.publisher.publish(HEARTBEAT_TOPIC, heartbeat_document(self._started, [
                    {"run_id": r.run.run_id, "state": r.state} for r in self._runs.values()
                    if r.state not in FINAL_STATES]))

    def shutdown(self) -> None:
        """Abort runs in progress and queued ones, switch the lasers off, stop the services. Fast (< 5 s)."""
        self.metrics.stop()
        for runner in self.runners.values():
            runner.stopping.set()
            while True:  # drain the queue: queued runs are aborted too
                try:
                    queued = runner.queue.get_nowait()
                except queue.Empty:
                    break
                if queued is not None and not isinstance(queued, Preview):
                    self._set_state(queued.run_id, "aborted", error="the daemon was stopped")
            if runner.current is not None and runner.current.state not in FINAL_STATES:
                runner.current.run.request_abort("the daemon was stopped")
            if runner.preview is not None:
                runner.preview.stop.set()
            runner.queue.put(None)
        for runner in self.runners.values():
            if runner.thread.is_alive():
                runner.thread.join(timeout=3.0)
            if runner.thread.is_alive():
                frame = sys._current_frames().get(runner.thread.ident)
                log.error("the acquisition thread of %s did not stop within 3 s:\n%s", runner.name,
                          "".join(traceback.format_stack(frame)) if frame else "?")
        while self.events.poll(0):
            self._on_event(loads(self.events.recv()))
        for runner in self.runners.values():
            current = runner.current
            if current is not None and current.state not in FINAL_STATES:
                self._set_state(current.run.run_id, "aborted", error="the daemon was stopped")
                current.run.finished.set()
            runner.instrument.close()  # lasers first
            runner.service.stop()
        self.reprocessing.stop()  # a hook already running is not waited for: its version fails
        for run_id, version in self.store.fail_unfinished_versions("the daemon was stopped before this "
                                                                   "re-processing finished"):
            log.warning("run %s version %d: re-processing not finished at shutdown: marked failed", run_id, version)
            self.audit.result(run_id, version, None, error="the daemon was stopped before this re-processing finished")
        self.run_files.close_all()
        self.catalog.retry()
        self.audit.close()
        self.store.close()
        try:
            self._proxy_control.send(b"TERMINATE")
            self._proxy_thread.join(timeout=2.0)
        except AttributeError:
            pass
        if hasattr(self, "_emit_socket"):
            self._emit_socket.close(linger=0)
        for socket in (self.control, self.results, self.live_frames, self.live_in, self.events,
                       self._proxy_control):
            socket.close(linger=0)
        self.security.stop()  # its ZAP socket too, or ctx.term() waits for it
        self.ctx.term()

    # -- control requests ----------------------------------------------------------
    def _on_control(self, parts: list[Any]) -> None:
        """One control message (bytes, or zmq.Frames that carry the client's ZAP User-Id): who sent it
        (``self.current_client`` while it is handled), size, JSON, parameters, permission
        (exoacq.security), then the handler. Every message gets a reply, an error one if it is malformed."""
        client = self.security.client_of(parts)
        parts = [p.bytes if isinstance(p, zmq.Frame) else bytes(p) for p in parts] or [b""]
        envelope = parts[:-1]
        self.current_client = client
        try:
            request = self.security.parse(parts)
            command = request.pop("command")
            self.audit.begin(command, request, client)  # takes out the operator name the client states
            handler = getattr(self, f"_cmd_{command}", None)
            if handler is None:
                known = sorted(n.removeprefix("_cmd_") for n in dir(self) if n.startswith("_cmd_"))
                raise ProtocolError(f"unknown command {command[:64]!r}; known: {', '.join(known)}",
                                    code="unknown_command")
            self.security.check_params(command, handler, request)
            self.security.authorize(command, client)
            reply = {"ok": True, "result": handler(**request)}
        except ExoacqError as exc:
            reply = {"ok": False, "error": {"code": exc.code, "message": str(exc)}}
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("control request failed")
            reply = {"ok": False, "error": {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}}
        self.audit.control(reply, self.current_client, parts)  # recorded before the client hears of it
        self.control.send_multipart([*envelope, dumps(reply)])
        self.metrics.count_request(reply)
        self.current_client = None

    def _forget_old_runs(self) -> None:
        """Keep the in-memory status of the last RUNS_IN_MEMORY runs (the store has them all)."""
        finished = [k for k, r in self._runs.items() if r.state in FINAL_STATES and r.run.finished.is_set()]
        for run_id in finished[: max(0, len(self._runs) - RUNS_IN_MEMORY)]:
            del self._runs[run_id]

    def _method_named(self, name: str, instrument: str | None) -> Method:
        """The plugin of a stored run's method, from its instrument (or any instrument of the method)."""
        runner = self.runners.get(instrument or "")
        if runner is not None and runner.instrument.method.name == name:
            return runner.instrument.method
        for runner in self.runners.values():
            if runner.instrument.method.name == name:
                return runner.instrument.method
        raise ExoacqError(f"no instrument of this daemon runs method {name!r}: it cannot re-process this run",
                          code="unknown_method")

    def _stored_run(self, run_id: str) -> dict[str, Any] | None:
        """A stored run's full record for a method service, or None when there is no such run."""
        try:
            return self.store.get(run_id)
        except ExoacqError:
            return None

    # -- events from the acquisition threads and the services -------------------------
    def _on_event(self, event: dict[str, Any]) -> None:
        run_id = str(event.get("run_id")).partition("/")[0]  # a method may name parts of a run run/k
        status = self._runs.get(run_id)
        kind = event.get("event")
        if kind == "state" and status is not None:
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
                service = self._service(status)
                if state == "processing":
                    service.on_processing(status)
                elif state == "aborted":
                    service.on_aborted(status)
            return
        if kind == "step" and status is not None:
            status.step = {k: event[k] for k in ("index", "of", "step", "detail") if k in event}
            self._set_state(status.run.run_id, status.state)
            return
        for runner in self.runners.values():  # the service that the event is for
            if status is not None and status.run.instrument != runner.name:
                continue
            if event.get("instrument") not in (None, runner.name):
                continue
            runner.service.on_event(status, event)
            if status is not None:
                break

    def _bluesky(self, status: RunStatus, compose) -> None:
        """The run's event-model documents (exoacq.bluesky): composed, published and kept beside the run."""
        docs = status.data.get("bluesky")
        if docs is None:
            if status.state != "preparing":
                return  # a run that never started has no RunStart
            run = status.run
            options = self.runners[run.instrument].instrument.config.options
            docs = status.data["bluesky"] = RunDocuments(
                run_id=run.run_id, method=run.method, instrument=run.instrument, sample=run.settings.get("sample", ""),
                settings=run.settings, time_s=time.time(),
                method_settings=options.model_dump(mode="json") if options is not None else {})
        pairs = compose(docs)
        for name, doc in pairs:
            self.publisher.publish(f"bluesky.{name}", doc)
        try:
            write_jsonl(self.store.run_dir(status.run.run_id) / BLUESKY_FILE, pairs)
        except OSError as exc:
            log.error("run %s: cannot keep its event-model documents: %s", status.run.run_id, exc.strerror)

    def _guarded(self, function, *args: Any) -> None:
        """A method's hook (or the event it handles) failed: log it, fail the run it concerned, keep serving."""
        try:
            function(*args)
        except Exception as exc:
            log.exception("internal error in %s", getattr(function, "__qualname__", function))
            for status in list(self._runs.values()):
                if status.state in ("processing",) and not status.result_stored:
                    self._fail(status, f"internal error while processing: {type(exc).__name__}: {exc}")

    def _service(self, status: RunStatus) -> MethodService:
        return self.runners[status.run.instrument].service

    def _finish(self, status: RunStatus, document: dict[str, Any]) -> None:
        """A method's result document for a run: stored; published (and the run done) if it completed."""
        if status.result_stored:
            return
        status.result_stored = True
        self.store.save_result(status.run.run_id, document)
        self.audit.result(status.run.run_id, 1, document)
        self._bluesky(status, lambda docs: docs.result(document))
        if status.state == "processing":
            topic = self.runners[status.run.instrument].instrument.method.result_topic
            self.publisher.publish(topic, document)
            self._set_state(status.run.run_id, "done")
        status.run.finished.set()
        if status.state in FINAL_STATES:  # the result is stored: the method's bookkeeping is not needed again
            status.data.clear()  # (the last RUNS_IN_MEMORY runs stay in memory: ~0.2 MiB each otherwise)

    def _set_state(self, run_id: str, state: str, error: str | None = None) -> None:
        status = self._runs.get(run_id)
        previous = status.state if status else None
        self.catalog.call(f"run {run_id} state {state}", self.store.set_state, run_id, state, error)
        self.audit.state(run_id, state, previous, error, step=status.step if status is not None else None)
        if status is not None:
            status.state = state
            runner = self.runners.get(status.run.instrument)
            if runner is not None:
                if state in ("preparing", "acquiring", "processing"):
                    runner.current = status
                if state in FINAL_STATES and runner.current is status:
                    runner.current = None
            if state in FINAL_STATES:
                status.run.finished.set()
            if state == "preparing":
                self._bluesky(status, lambda docs: docs.start())
            elif state in FINAL_STATES:
                exit_status = {"done": "success", "failed": "fail", "aborted": "abort", "interrupted": "fail"}[state]
                self._bluesky(status, lambda docs: docs.stop(exit_status, error or ""))
        record = self.store.get(run_id)
        self.publisher.publish("run.state", make_document(
            "run.state", run_id, state=state, previous=previous, method=record["method"],
            instrument=record.get("instrument"), sample=record["sample"], error=error,
            step=status.step if status is not None else None))

    def _publish_progress(self, status: RunStatus | None) -> None:
        if status is None or status.state not in ("acquiring", "processing"):
            return
        payload = self._service(status).progress(status)
        if payload is not None:
            method = self.runners[status.run.instrument].instrument.method
            document = {"schema": method.topics[method.progress_topic], "run_id": status.run.run_id,
                        "time": utc_now_iso(), "instrument": status.run.instrument, **payload}
            self.publisher.publish(method.progress_topic, document)
            self._bluesky(status, lambda docs: docs.add("progress", document, epoch(document["time"])))

    def _supervise(self, runner: InstrumentRunner) -> None:
        status = runner.current
        failure = runner.service.check(status)
        if failure is not None and status is not None:
            self._fail(status, failure)

    def _fail(self, status: RunStatus, reason: str) -> None:
        """Fail a run. While the acquisition thread holds the hardware, ask it to stop first:
        the run becomes 'failed' when it reports back, with the laser already off."""
        if status.state in FINAL_STATES or status.failure is not None:
            return
        if status.state in ("preparing", "acquiring"):
            status.failure = reason
            status.run.request_abort(reason)
        else:
            self._set_state(status.run.run_id, "failed", error=reason)

    def publish_progress_now(self, status: RunStatus) -> None:
        """For services: publish a progress document at once (fresh data), at most every 0.1 s."""
        if time.monotonic() - status.data.get("_last_progress", 0.0) >= 0.1:
            status.data["_last_progress"] = time.monotonic()
            self._publish_progress(status)


def run_daemon(config: Config) -> int:
    """Run until SIGTERM/SIGINT; exit status 0 on a clean stop."""
    daemon = Daemon(config)
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    try:
        daemon.start()
        daemon.metrics.start()
        d = config.daemon
        log.info("exoacq daemon %s ready: instruments %s; control %s, results %s, frames %s, data %s, metrics %s",
                 __version__, ", ".join(daemon.runners), d.control, d.results, d.frames, daemon.store.data_dir,
                 daemon.metrics.url or "off")
        notify(f"READY=1\nSTATUS=serving {len(daemon.runners)} instrument(s) on {d.control}")
        daemon.serve()
    finally:
        notify("STOPPING=1")
        daemon.shutdown()
    log.info("exoacq daemon stopped")
    return 0
