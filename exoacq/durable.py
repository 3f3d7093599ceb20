"""Durable runs: the daemon's side of the run files (:mod:`exoacq.runfile`).

* :class:`RunFiles` observes every published document (``Publisher(observers=[...])``): a run's
  ``run.h5`` is created when the run goes ``preparing``; every document of the run (``run.state``,
  ``<method>.progress``, ``<method>.result``) is appended to its ``events``; a method's rows
  (``ServiceContext.record``, e.g. NTA's ``nta/tracks``) to its tables; a checkpoint follows every
  state change and at least every CHECKPOINT_INTERVAL_S (:meth:`RunFiles.tick`, from the main
  loop); a final state closes the file (a last checkpoint). The event-model documents
  (``bluesky.*``) are not stored here: the run's ``bluesky.jsonl`` keeps them.
* A write error, or less than MIN_FREE_BYTES left in the data directory, stops the run
  (``on_error``: the daemon fails it, the laser goes off first) with ``data directory full: ...``
  naming the path; the file keeps what its last checkpoint covers. Stopping a little before the
  disk is full leaves room for the catalog to record the failure.
* :class:`CatalogRetry`: a catalog write that fails (SQLite on a full disk) is logged and retried
  in order at every tick; SQLite's journal keeps the catalog itself intact.
* :func:`recover_unfinished`: at start-up, runs a dead daemon left unfinished become
  ``interrupted`` and their run files are recovered (rows up to the last checkpoint); what was
  kept goes to the catalog (``data_file``), for ``exoacq runs show``.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from exoacq.runfile import EVENTS, RUN_FILE, RunFile, Table, describe, needs_recovery, recover
from exoacq.storage import FINAL_STATES

log = logging.getLogger("exoacq.durable")

#: A checkpoint of every open run file at least this often (and at every state change).
CHECKPOINT_INTERVAL_S = 2.0
#: A run stops when the data directory has less free space than this (what it wrote stays intact).
MIN_FREE_BYTES = 1 << 20
#: How often the free space is looked at while a run file is open.
FREE_SPACE_CHECK_S = 0.2
#: Space the catalog keeps for itself (CatalogRetry), released when the disk is full.
RESERVE_BYTES = 256 * 1024
RESERVE_FILE = ".space-reserve"


def write_error_message(path: Path, exc: BaseException) -> str:
    """One line for a failed write: ``data directory full: ...`` when the disk is full."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc) or "errno = 28" in str(exc):
        return f"data directory full: cannot write {path}: no space left on device"
    return f"cannot write the run's data file {path}: {text}"


class RunFiles:
    """The open run files of a daemon, fed by the publisher (main thread only)."""

    def __init__(self, data_dir: Path, run_dir: Callable[[str], Path],
                 tables_of: Callable[[str, str], dict[str, Table]],
                 on_error: Callable[[str, str], None], on_closed: Callable[[str, dict[str, Any]], None]):
        self.data_dir = Path(data_dir)
        self.run_dir = run_dir
        #: (method name, instrument name) -> the run's tables (Method.run_tables_for)
        self.tables_of = tables_of
        self.on_error = on_error
        self.on_closed = on_closed
        self.files: dict[str, RunFile] = {}
        #: Runs whose file failed or was stopped: nothing more is written to them.
        self.stopped: set[str] = set()
        self._last_checkpoint = time.monotonic()
        self._last_space_check = 0.0

    # -- the publisher's observer ----------------------------------------------------------
    def __call__(self, topic: str, document: dict[str, Any]) -> None:
        if topic.startswith("bluesky."):
            return
        run_id = str(document.get("run_id") or "").partition("/")[0]
        if not run_id:
            return
        if topic == "run.state" and document.get("state") == "preparing":
            self._open(run_id, document)
        runfile = self.files.get(run_id)
        if runfile is None:
            if topic == "run.state" and document.get("state") in FINAL_STATES:
                self.stopped.discard(run_id)  # the run is over: nothing more will come for it
            return
        if self._guard(run_id, runfile.append_event, document) and topic == "run.state":
            if document.get("state") in FINAL_STATES:
                self._close(run_id)
            else:
                self._guard(run_id, runfile.checkpoint)

    def record(self, run_id: str, dataset: str, rows: Any) -> bool:
        """Append a method's rows to the run's table ``dataset``; False when the run has no open file."""
        run_id = run_id.partition("/")[0]
        runfile = self.files.get(run_id)
        if runfile is None:
            return False
        if dataset not in runfile.tables:
            raise ValueError(f"run {run_id}: no table {dataset!r} in its run file (Method.run_tables)")
        return self._guard(run_id, runfile.append, dataset, rows)

    def tick(self) -> None:
        """From the main loop: the free-space guard, and a checkpoint of every file every CHECKPOINT_INTERVAL_S."""
        now = time.monotonic()
        if self.files and now - self._last_space_check >= FREE_SPACE_CHECK_S:
            self._last_space_check = now
            try:
                free = shutil.disk_usage(self.data_dir).free
            except OSError:
                free = None
            if free is not None and free < MIN_FREE_BYTES:
                for run_id in list(self.files):
                    self._close(run_id)
                    self.stopped.add(run_id)
                    self.on_error(run_id, f"data directory full: {self.data_dir} has {free / 1e6:.2f} MB free "
                                          f"(a run stops below {MIN_FREE_BYTES / 1e6:.2f} MB; what it wrote is kept)")
        if now - self._last_checkpoint >= CHECKPOINT_INTERVAL_S:
            self._last_checkpoint = now
            for run_id, runfile in list(self.files.items()):
                if runfile.dirty:
                    self._guard(run_id, runfile.checkpoint)

    def close_all(self) -> None:
        """At shutdown: close every file still open (a final checkpoint)."""
        for run_id in list(self.files):
            self._close(run_id)

    # -- internals ------------------------------------------------------------------------
    def _open(self, run_id: str, document: dict[str, Any]) -> None:
        if run_id in self.files or run_id in self.stopped:
            return
        method = str(document.get("method") or "")
        path = self.run_dir(run_id) / RUN_FILE
        try:
            self.files[run_id] = RunFile(path, self.tables_of(method, str(document.get("instrument") or "")), {
                "run_id": run_id, "method": method, "instrument": document.get("instrument") or "",
                "sample": document.get("sample") or ""})
        except (OSError, RuntimeError, ValueError) as exc:
            self.stopped.add(run_id)
            self.on_error(run_id, write_error_message(path, exc))

    def _close(self, run_id: str) -> None:
        runfile = self.files.pop(run_id)
        try:
            kept = runfile.close()
        except (OSError, RuntimeError, ValueError) as exc:
            log.error("run %s: %s", run_id, write_error_message(runfile.path, exc))
            kept = self._salvage(run_id, runfile)
        self.on_closed(run_id, kept)

    def _guard(self, run_id: str, function: Callable, *args: Any) -> bool:
        """Call a write; on an error: stop writing this run's file and have the daemon stop the run."""
        try:
            function(*args)
            return True
        except (OSError, RuntimeError, ValueError) as exc:
            runfile = self.files.pop(run_id, None)
            self.stopped.add(run_id)
            if runfile is None:
                return False
            message = write_error_message(runfile.path, exc)
            log.error("run %s: %s", run_id, message)
            runfile.abandon()
            self.on_closed(run_id, self._salvage(run_id, runfile))
            self.on_error(run_id, message)
            return False

    def _salvage(self, run_id: str, runfile: RunFile) -> dict[str, Any]:
        """After a failed write: make the file readable (needs a little space), else say what is left."""
        try:
            kept = recover(runfile.path) if needs_recovery(runfile.path) else describe(runfile.path)
            return {**kept, "state": f"{kept['state']} up to the last checkpoint before a write error"}
        except (OSError, RuntimeError, KeyError) as exc:
            log.error("run %s: %s is readable only with SWMR (h5py swmr=True) until recovered: %s",
                      run_id, runfile.path, str(exc).splitlines()[0] if str(exc) else exc)
            return {"path": str(runfile.path), "state": "damaged", "rows": {}, "last_checkpoint": None,
                    "error": "not recovered (no space left?): open it with h5py swmr=True"}


class CatalogRetry:
    """Catalog writes that failed (SQLite on a full disk) are logged and retried, in order.

    A disk filled by something else (a raw video) leaves SQLite no room to record even the run's
    failure, so RESERVE_BYTES are held in ``<data_dir>/.space-reserve``: a failed write releases them
    and is tried again at once; the reserve is taken again once the disk has room."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.pending: list[tuple[str, Callable, tuple]] = []
        self.reserve = None if data_dir is None else Path(data_dir) / RESERVE_FILE
        self._last_reserve_check = 0.0
        self._take_reserve()

    def call(self, what: str, function: Callable, *args: Any) -> None:
        if not self.pending:
            try:
                function(*args)
                return
            except (sqlite3.Error, OSError) as exc:
                if self._release_reserve():
                    try:
                        function(*args)
                        log.warning("catalog: stored %s in the space reserve (the disk is full)", what)
                        return
                    except (sqlite3.Error, OSError):
                        pass
                log.error("catalog: cannot store %s (%s); retrying", what, exc)
        self.pending.append((what, function, args))

    def retry(self) -> None:
        while self.pending:
            what, function, args = self.pending[0]
            try:
                function(*args)
            except (sqlite3.Error, OSError):
                return
            self.pending.pop(0)
            log.info("catalog: stored %s (on retry)", what)
        if time.monotonic() - self._last_reserve_check >= 1.0:
            self._last_reserve_check = time.monotonic()
            self._take_reserve()

    def _take_reserve(self) -> None:
        if self.reserve is None or self.reserve.exists():
            return
        try:
            if shutil.disk_usage(self.reserve.parent).free < RESERVE_BYTES + MIN_FREE_BYTES:
                return
            with open(self.reserve, "wb") as out:
                os.posix_fallocate(out.fileno(), 0, RESERVE_BYTES)
        except OSError:
            if self.reserve is not None:
                self.reserve.unlink(missing_ok=True)

    def _release_reserve(self) -> bool:
        if self.reserve is None or not self.reserve.exists():
            return False
        self.reserve.unlink(missing_ok=True)
        log.warning("catalog: the disk is full; released the %d kB space reserve %s", RESERVE_BYTES // 1024,
                    self.reserve)
        return True


def recover_unfinished(store: Any, reason: str) -> list[tuple[str, dict[str, Any]]]:
    """At start-up: runs left unfinished become ``interrupted``; their run files are recovered and what
    was kept recorded in the catalog. Returns (run_id, kept) pairs."""
    recovered = []
    for run_id in store.interrupt_unfinished(reason):
        path = store.run_dir(run_id) / RUN_FILE
        try:
            if not path.exists():
                kept = {"path": str(path), "state": "missing", "rows": {}, "last_checkpoint": None}
            elif needs_recovery(path):
                kept = recover(path)
            else:
                kept = describe(path)
        except (OSError, RuntimeError, KeyError) as exc:
            kept = {"path": str(path), "state": "damaged", "rows": {}, "last_checkpoint": None,
                    "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        store.set_data_file(run_id, kept)
        recovered.append((run_id, kept))
    return recovered


def describe_kept(kept: dict[str, Any] | None) -> list[str]:
    """Lines for ``exoacq runs show``: the run file, its state, last checkpoint and rows per dataset."""
    if not kept:
        return []
    rows = ", ".join(f"{name} {count} bytes of JSON lines" if name == EVENTS else f"{name} {count}"
                     for name, count in (kept.get("rows") or {}).items()) or "none"
    lines = [f"  data file: {kept.get('path')} ({kept.get('state')}; last checkpoint "
             f"{kept.get('last_checkpoint') or 'none'})", f"  rows kept: {rows}"]
    if kept.get("original"):
        lines.append(f"  damaged original kept as: {kept['original']}")
    if kept.get("error"):
        lines.append(f"  note: {kept['error']}")
    return lines


def run_files_for(daemon: Any) -> RunFiles:
    """The daemon's RunFiles: tables from its instruments' methods; a write error fails the run
    (``daemon._fail``: the laser goes off first); what a closed file holds goes to the catalog."""

    def tables_of(method: str, instrument: str) -> dict[str, Table]:
        runner = daemon.runners.get(instrument)
        if runner is not None and runner.instrument.method.name == method:  # per instrument (flow's channels)
            return runner.instrument.method.run_tables_for(runner.instrument)
        for runner in daemon.runners.values():
            if runner.instrument.method.name == method:
                return dict(runner.instrument.method.run_tables)
        return {}

    def on_error(run_id: str, message: str) -> None:
        log.error("run %s: %s", run_id, message)
        status = daemon._runs.get(run_id)
        if status is not None:
            daemon._fail(status, message)

    def on_closed(run_id: str, kept: dict[str, Any]) -> None:
        daemon.catalog.call(f"run {run_id} data file", daemon.store.set_data_file, run_id, kept)

    return RunFiles(daemon.store.data_dir, daemon.store.run_dir, tables_of, on_error, on_closed)
