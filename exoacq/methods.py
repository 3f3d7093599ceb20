"""What a measurement method plugin declares, and what the daemon gives it.

A method (``nta``; ``dls`` and ``flow`` next; a lab's own) is a subpackage
exposing one :class:`Method` object through the ``exoacq.methods`` entry-point
group. It declares in one place: its request parameters (``validate_request``),
the instrument roles it needs, its settings and simulation sections, its
document topics with their JSON Schemas, its CLI verbs, and, per instrument,
a :class:`MethodService` holding its acquisition engine (setup / exec /
teardown, the pymmcore-plus protocol) and whatever workers its analysis runs.

The daemon core (control socket, run queues, run store, publisher,
supervision) only ever calls what is declared here.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import argparse

    import zmq

    from exoacq.instruments import Instrument


class MethodSettings(BaseModel):
    """Base of a method's ``[instruments.NAME.settings]`` (and ``simulation``) sections."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NoSettings(MethodSettings):
    pass


@dataclass(frozen=True)
class Role:
    """A device an instrument of this method has: which kinds may fill it."""

    kinds: tuple[str, ...]
    required: bool = True
    description: str = ""


@dataclass
class Run:
    """One acquisition, as the daemon and the method's engine share it.

    A method may subclass it for its own per-run state (``Method.make_run``).
    """

    run_id: str
    method: str
    instrument: str
    settings: dict[str, Any]
    output_dir: Path
    abort: threading.Event = field(default_factory=threading.Event)
    abort_reason: str = ""
    #: Set when the run's result is stored, or it failed or was aborted.
    finished: threading.Event = field(default_factory=threading.Event)

    def request_abort(self, reason: str) -> None:
        """Ask the acquisition to stop at the next frame; the first reason given is kept."""
        self.abort_reason = self.abort_reason or reason
        self.abort.set()


class RunStatus:
    """What the daemon's main thread knows of one run."""

    def __init__(self, run: Run):
        self.run = run
        self.state = "queued"
        #: Counters reported by the engine (frames, elapsed time, ...).
        self.acquisition: dict[str, Any] = {}
        #: The SOP step in progress, if any: {"index", "of", "step", "detail"}.
        self.step: dict[str, Any] | None = None
        self.processing_since: float | None = None
        #: Why the main thread failed this run while the acquisition thread still held the hardware.
        self.failure: str | None = None
        self.result_stored = False
        #: The method's own bookkeeping for this run (main thread only).
        self.data: dict[str, Any] = {}


@dataclass
class ServiceContext:
    """What the daemon hands a method service.

    ``emit(event)`` may be called from any thread (the engine's); events reach
    :meth:`MethodService.on_event` in the main thread. ``finish(status,
    document)`` (main thread) stores a run's result document and, if the run
    completed, publishes it on the method's result topic and marks it done.
    ``live_frames()`` makes a PUB socket for the calling thread whose frames
    reach the daemon's live-frames endpoint. ``watch(socket, callback)`` has
    the main loop call ``callback()`` whenever ``socket`` is readable (e.g. a
    worker's events). ``run_status(run_id)`` is the daemon's status of a run
    (or None); ``progress_now(status)`` publishes its progress at once (fresh
    data; at most every 0.1 s).
    """

    zmq_context: "zmq.Context"
    emit: Callable[[dict[str, Any]], None]
    finish: Callable[[RunStatus, dict[str, Any]], None]
    live_frames: Callable[[], "zmq.Socket"]
    watch: Callable[["zmq.Socket", Callable[[], None]], None]
    run_status: Callable[[str], RunStatus | None]
    progress_now: Callable[[RunStatus], None]
    #: Fail a run (main thread); while the hardware is held, it is stopped first.
    fail: Callable[[RunStatus, str], None]
    #: Publish a document that belongs to no run (main thread), e.g. a correlator file's result.
    publish: Callable[[str, dict[str, Any]], None]
    data_dir: Path
    #: A stored run's full record (settings, state, result, directory), or None (main thread).
    stored_run: Callable[[str], dict[str, Any] | None] = lambda run_id: None
    #: Stored runs, newest first, with their results: ``stored_runs(method, instrument, limit)`` (main thread).
    stored_runs: Callable[[str | None, str | None, int], list[dict[str, Any]]] = lambda m, i, n: []
    #: Append rows to a table of the run's ``run.h5`` (one of ``Method.run_tables_for``; exoacq.durable):
    #: ``record(run_id, dataset, rows)``, rows as lists in column order or a structured array (main thread).
    record: Callable[[str, str, Any], bool] = lambda run_id, dataset, rows: False
    #: The daemon's :class:`exoacq.security.DaemonSecurity` (None: no keys): a service's sockets for
    #: clients are ``security.prepare(socket, what)``-ed before they bind; its processes get
    #: ``security.process_args()`` and connect with ``security.internal_keys()``.
    security: Any = None


class MethodService:
    """A method's part of the daemon for one instrument.

    The engine methods (:meth:`setup`, :meth:`exec`, :meth:`teardown`,
    :meth:`preview`) run in the instrument's acquisition thread; the others
    in the daemon's main thread.
    """

    def __init__(self, instrument: "Instrument", context: ServiceContext):
        self.instrument = instrument
        self.context = context

    # -- lifetime (main thread) -------------------------------------------------
    def start(self) -> None:
        """Start workers (e.g. a tracking core)."""

    @property
    def ready(self) -> bool:
        return True

    def stop(self) -> None:
        """Stop workers; called at shutdown after the acquisition thread has ended."""

    def describe(self) -> dict[str, Any]:
        """For ``status``."""
        return {"ready": self.ready}

    # -- the engine (acquisition thread) -----------------------------------------
    def setup(self, run: Run) -> None:
        raise NotImplementedError

    def exec(self, run: Run) -> dict[str, Any]:
        """Acquire; return the acquisition counters."""
        raise NotImplementedError

    def teardown(self, run: Run) -> None:
        """Leave the hardware safe whatever happened (laser off); may raise DeviceError."""
        raise NotImplementedError

    def preview(self, stop: threading.Event) -> None:
        """Live mode until ``stop`` is set: light on, frames published, nothing recorded."""
        from exoacq.errors import ExoacqError
        raise ExoacqError(f"method {self.instrument.method.name!r} has no preview", code="no_preview")

    # -- events and supervision (main thread) ------------------------------------
    def on_event(self, status: RunStatus | None, event: dict[str, Any]) -> None:
        """An event the engine (or a worker) emitted, other than run states."""

    def progress(self, status: RunStatus) -> dict[str, Any] | None:
        """The payload of a ``<method>.progress`` document for an active run, or None."""
        return None

    def check(self, status: RunStatus | None) -> str | None:
        """Supervision, every ~0.5 s: a reason to fail the active run, or None."""
        return None

    def on_processing(self, status: RunStatus) -> None:
        """The engine has finished acquiring: results may follow (or finish now)."""

    def on_aborted(self, status: RunStatus) -> None:
        """The run was aborted after it started: store what it has (a partial result), if anything."""


class Method:
    """Base of a method plugin; subclasses set the class attributes and override the hooks."""

    name: str = ""
    description: str = ""
    roles: dict[str, Role] = {}
    settings_model: type[MethodSettings] = NoSettings
    simulation_model: type[MethodSettings] = NoSettings
    #: Published topics and their schema ids ("exoacq.nta.result/1"); the result topic is "<name>.result".
    topics: dict[str, str] = {}
    #: Folder of the JSON Schemas of the topics (``<topic>.json``).
    schema_dir: Path | None = None
    #: (role, setting) pairs an operator may change while a run records.
    settable_during_run: frozenset[tuple[str, str]] = frozenset()
    #: The method's tables in each run's ``run.h5`` (name -> exoacq.runfile.Table), written with
    #: ``ServiceContext.record`` as the run goes (docs/protocol.md, Run files).
    run_tables: dict[str, Any] = {}

    def run_tables_for(self, instrument: "Instrument") -> dict[str, Any]:
        """The tables of a run on ``instrument`` (``run_tables`` unless its columns depend on the
        instrument, e.g. flow's events: one column per digitizer channel). Asked as each run goes
        ``preparing`` (main thread), before its run.h5 exists: a table cannot change during a run."""
        return dict(self.run_tables)

    @property
    def result_topic(self) -> str:
        return f"{self.name}.result"

    @property
    def progress_topic(self) -> str:
        return f"{self.name}.progress"

    def validate_request(self, params: dict[str, Any], instrument: "Instrument | None" = None,
                         sop: Any = None) -> dict[str, Any]:
        """Check an ``acquire`` request's parameters (and the parsed SOP, if one was given);
        return the run settings (units in keys)."""
        raise NotImplementedError

    def make_run(self, run_id: str, settings: dict[str, Any], output_dir: Path, instrument: str) -> Run:
        return Run(run_id, self.name, instrument, settings, output_dir)

    def service(self, instrument: "Instrument", context: ServiceContext) -> MethodService:
        raise NotImplementedError

    def simulated_instrument(self) -> dict[str, Any]:
        """The configuration of one simulated instrument of this method (``exoacq daemon --simulated``)."""
        raise NotImplementedError

    def simulation_context(self, instrument_config: Any) -> dict[str, Any]:
        """What simulated devices of an instrument share (e.g. the simulated sample)."""
        return {}

    def prepare(self, instrument_config: Any, relative_to: Path | None, source: str) -> None:
        """Check the instrument's settings once parsed (e.g. read a calibration file); raise ConfigError."""

    def check_instrument(self, instrument: "Instrument") -> None:
        """Check the connected devices fit the settings (e.g. a calibration's optics); raise ConfigError."""

    def reprocess(self, record: dict[str, Any], overrides: dict[str, Any], output_dir: Path) -> dict[str, Any]:
        """Analyse a stored run's raw data again (``record``: its stored record, with ``settings``,
        ``result`` and ``directory``) with ``overrides`` of its analysis settings; write files under
        ``output_dir``; return the new result document. Runs in a worker thread of the daemon."""
        from exoacq.errors import ExoacqError
        raise ExoacqError(f"method {self.name!r} cannot re-process a stored run", code="no_reprocess")

    def add_cli(self, verbs: dict[str, "argparse._SubParsersAction"]) -> None:
        """Add this method's sub-commands to the verbs (``acquire``, ``analyze``, ``calibrate``,
        ``simulate``, ``bench``); each parser sets ``func`` (args -> exit status)."""

    def format_result(self, document: dict[str, Any]) -> str:
        """A readable table of a result document (``exoacq acquire``, ``runs show``)."""
        import json
        return json.dumps(document, indent=2)

    def format_progress(self, document: dict[str, Any]) -> str | None:
        """One status line of a progress document, or None."""
        return None


def make_safe(steps: list[Callable[[], Any]]) -> None:
    """Run every step (laser off, detector stopped, pump stopped), whatever the others did; the
    devices' errors are joined into one DeviceError raised at the end."""
    from exoacq.errors import DeviceError

    errors = []
    for step in steps:
        try:
            step()
        except DeviceError as exc:
            errors.append(str(exc))
    if errors:
        raise DeviceError("; ".join(errors))


class FolderWatcher:
    """A thread that polls an instrument's watched-folder device (the ``role``, e.g. a hardware
    correlator's or a cytometer's export folder) every ``interval_s`` and emits each new file's
    result document, ``analyse(path, device)``, as a ``file_result`` event for the service's
    :meth:`MethodService.on_event` to publish (main thread)."""

    def __init__(self, service: MethodService, role: str, interval_s: float,
                 analyse: Callable[[Path, Any], dict[str, Any]]):
        self.service, self.role, self.interval_s, self.analyse = service, role, interval_s, analyse
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        name = f"{self.role}-folder-{self.service.instrument.name}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        import logging

        from exoacq.errors import ExoacqError

        instrument = self.service.instrument
        while not self._stop.wait(self.interval_s):
            slot = instrument.slots[self.role]
            if slot.device is None:
                continue
            try:
                paths = slot.device.poll()
            except ExoacqError as exc:
                logging.getLogger(f"exoacq.{instrument.method.name}").error("%s: %s", instrument.name, exc)
                continue
            for path in paths:
                self.service.context.emit({"event": "file_result", "instrument": instrument.name,
                                           "document": self.analyse(path, slot.device)})
