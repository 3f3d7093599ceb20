"""One instrument's run queue and acquisition thread.

The thread takes the instrument's queued runs one at a time through the
method's engine (setup, exec, teardown: the hardware is made safe whatever
happened), or a live preview, and between them reconnects lost devices with
backoff and checks that the others still answer. It reports through ``emit``
(events for the daemon's main thread) and never touches the store or the
results socket.
"""
from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from typing import Any

from exoacq.errors import DeviceError, ExoacqError
from exoacq.instruments import Instrument
from exoacq.methods import MethodService, RunStatus

log = logging.getLogger("exoacq.daemon")

#: While idle, an instrument checks that its devices still answer this often.
HEALTH_INTERVAL_S = 5.0


class Preview:
    """A live-mode request in an instrument's queue."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reason = ""


class InstrumentRunner:
    """One instrument's queue and acquisition thread."""

    def __init__(self, instrument: Instrument, service: MethodService, emit):
        self.instrument = instrument
        self.service = service
        self.emit = emit
        #: Queued runs and previews: unbounded on purpose, one entry per accepted request (each a catalog row).
        self.queue: queue.Queue[Any] = queue.Queue()
        self.current: RunStatus | None = None
        self.preview: Preview | None = None
        #: Why the last preview ended, if not at the operator's request (for status).
        self.preview_error: str | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"acquisition-{instrument.name}", daemon=True)
        self._last_health = time.monotonic()

    @property
    def name(self) -> str:
        return self.instrument.name

    def _loop(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=0.5)
            except queue.Empty:
                self._idle()
                continue
            if item is None:
                return
            if isinstance(item, Preview):
                self._preview(item)
            elif not item.abort.is_set():  # aborted while queued: the main thread has recorded it
                self._execute(item)

    def _idle(self) -> None:
        if self.stopping.is_set():
            return
        self.instrument.reconnect_due()
        if time.monotonic() - self._last_health > HEALTH_INTERVAL_S:
            self._last_health = time.monotonic()
            self.instrument.healthy()

    def _preview(self, request: Preview) -> None:
        self.preview, self.preview_error = request, None
        try:
            self.service.preview(request.stop)
        except ExoacqError as exc:
            self.preview_error = request.reason = str(exc)
            log.error("%s: preview ended: %s", self.name, exc)
            self.instrument.healthy()
        except Exception as exc:
            self.preview_error = request.reason = f"internal error: {type(exc).__name__}: {exc}"
            log.exception("%s: preview failed", self.name)
        finally:
            self.preview = None

    def _execute(self, run) -> None:
        emit = self.emit
        emit({"event": "state", "run_id": run.run_id, "state": "preparing"})
        missing = [f"{s.role} ({s.error or s.state})" for s in self.instrument.slots.values() if s.state != "connected"]
        if missing:
            emit({"event": "state", "run_id": run.run_id, "state": "failed",
                  "error": f"instrument {self.name}: not connected: {', '.join(missing)}"})
            return
        counters: dict[str, Any] = {}
        failure: str | None = None
        device_fault = False
        try:
            self.service.setup(run)
            emit({"event": "state", "run_id": run.run_id, "state": "acquiring"})
            counters = self.service.exec(run)
        except ExoacqError as exc:
            failure, device_fault = str(exc), isinstance(exc, DeviceError)
        except OSError as exc:  # a file of the run: a full disk is no bug (exoacq.durable)
            if exc.errno == errno.ENOSPC:
                log.error("run %s: no space left on device writing %s", run.run_id, exc.filename or run.output_dir)
                failure = f"data directory full: cannot write {exc.filename or run.output_dir}: no space left on device"
            else:
                log.exception("run %s failed", run.run_id)
                failure = f"internal error: {type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug: record it on the run, keep the daemon alive
            log.exception("run %s failed", run.run_id)
            failure = f"internal error: {type(exc).__name__}: {exc}"
        try:  # whatever happened: the hardware is left safe (laser off), and the first cause is kept
            self.service.teardown(run)
        except ExoacqError as exc:
            failure = f"{failure}; while making the instrument safe: {exc}" if failure else str(exc)
            device_fault = device_fault or isinstance(exc, DeviceError)
        except Exception as exc:
            log.exception("teardown of run %s failed", run.run_id)
            failure = f"{failure}; " if failure else ""
            failure += f"internal error while making the instrument safe: {type(exc).__name__}: {exc}"
        if failure is not None:
            emit({"event": "state", "run_id": run.run_id, "state": "failed", "error": failure})
            if device_fault:
                self.instrument.healthy()  # a device that stopped answering is reconnected with backoff
            return
        if run.abort.is_set():
            emit({"event": "state", "run_id": run.run_id, "state": "aborted", "counters": counters,
                  "settings": run.settings, "error": run.abort_reason})
            return
        emit({"event": "state", "run_id": run.run_id, "state": "processing", "counters": counters,
              "settings": run.settings})
        run.finished.wait()  # the main thread sets it on the result, a failure or shutdown
