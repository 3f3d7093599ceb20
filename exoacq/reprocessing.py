"""Result versions of stored runs: the daemon's ``reprocess`` and ``select_version`` commands.

A finished run's raw data is analysed again with ``overrides`` (exoacq.storage describes
the versions): the request reserves the next version at once; a thread of its own runs the
method's ``reprocess`` hook, one at a time and each in a process of its own
(:mod:`exoacq.reprocess_worker`: the job and the result as JSON on stdin and stdout, never the
daemon's GIL); the daemon's main thread then stores the version, records it in the audit trail
and publishes it (:meth:`Reprocessing.store_finished`).
"""
from __future__ import annotations

import logging
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from exoacq.bus import dumps, loads, make_document
from exoacq.errors import ExoacqError, ProtocolError
from exoacq.methods import Method

log = logging.getLogger("exoacq.daemon")

#: Schema of the ``run.version`` documents (a result version was asked for, made, or failed).
RUN_VERSION_SCHEMA = "exoacq.run.version/1"
#: A re-processing that takes longer is stopped and its version failed (5 x 60 s of video: ~5 min on one core).
REPROCESS_TIMEOUT_S = 3600.0


def is_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class Reprocessing:
    """Owned by the daemon; every method but the thread's own runs on the daemon's main thread."""

    def __init__(self, store: Any, audit: Any, publish: Callable[[str, dict[str, Any]], None],
                 method_named: Callable[[str, str | None], Method]):
        self.store, self.audit, self.publish, self.method_named = store, audit, publish, method_named
        # Jobs for the thread and its outcomes for the main thread. Unbounded on purpose: one entry
        # per stored version reserved (a catalog row), never per frame or document.
        self._jobs: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def waiting(self) -> int:
        """Jobs not yet started."""
        return self._jobs.qsize()

    def request(self, run_id: str, overrides: dict[str, Any] | None, reason: str | None) -> dict[str, Any]:
        """Reserve the next version of a finished run's result and queue its re-processing."""
        if not isinstance(run_id, str):
            raise ProtocolError(f"run_id = {run_id!r}: must be a run id string")
        overrides = {} if overrides is None else overrides
        if not isinstance(overrides, dict):
            raise ProtocolError(f"overrides = {overrides!r}: must be an object of analysis settings")
        if reason is not None and (not isinstance(reason, str) or not 1 <= len(reason) <= 200):
            raise ProtocolError(f"reason = {reason!r}: must be a text of 1 to 200 characters")
        record = self.store.get(run_id)
        original = next((v for v in record["versions"] if v["version"] == 1 and v["state"] == "done"), None)
        if record["state"] not in ("done", "aborted") or original is None:
            raise ExoacqError(f"run {run_id} is {record['state']}"
                              f"{' without a result' if original is None else ''}: only a finished run with "
                              "a result can be re-processed", code="not_reprocessable")
        method = self.method_named(record["method"], record.get("instrument"))
        if type(method).reprocess is Method.reprocess:
            raise ExoacqError(f"method {method.name!r} cannot re-process a stored run", code="no_reprocess")
        version = self.store.reserve_version(run_id, reason or "reprocessed", overrides)
        output_dir = self.store.run_dir(run_id) / f"v{version}"
        waiting = self._jobs.qsize()
        # The hook gets the run as acquired (version 1): overrides always apply to the original settings.
        self._jobs.put((method, self.store.get(run_id, version=1), overrides, version, output_dir))
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="reprocess", daemon=True)
            self._thread.start()
        self._publish_version(record, version, "processing")
        return {"run_id": run_id, "version": version, "state": "processing", "waiting": waiting}

    def select(self, run_id: str, version: int | None) -> dict[str, Any]:
        """The operator picks which version is the run's result (None: the newest again)."""
        if not isinstance(run_id, str):
            raise ProtocolError(f"run_id = {run_id!r}: must be a run id string")
        if version is not None and not is_version(version):
            raise ProtocolError(f"version = {version!r}: must be a result version number (1, 2, ...) or null")
        self.store.select_version(run_id, version)
        record = self.store.get(run_id)
        log.info("run %s: result version %s %s", run_id, record["current_version"],
                 "picked by the operator" if version is not None else "(the newest)")
        return {"run_id": run_id, "current_version": record["current_version"],
                "picked_version": record["picked_version"]}

    def store_finished(self) -> None:
        """Main thread: store (then publish) the versions the thread made, or record their failure."""
        while not self._done.empty():
            outcome = self._done.get_nowait()
            try:
                self._store(*outcome)
            except Exception:  # a bug or a broken catalog: logged; the daemon keeps serving
                log.exception("run %s: storing result version %d failed", outcome[0]["run_id"], outcome[1])

    def stop(self) -> None:
        """No more jobs; a hook already running is not waited for (its version fails)."""
        self._jobs.put(None)

    def _work(self) -> None:
        """The re-processing thread: one hook at a time, in order; outcomes go to the main thread."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            method, record, overrides, version, output_dir = job
            self._done.put((record, version, *reprocess_in_a_process(method.name, record, overrides, output_dir)))

    def _store(self, record: dict[str, Any], version: int, document: dict[str, Any] | None,
               error: str | None) -> None:
        run_id = record["run_id"]
        if document is not None:
            document = {**document, "version": version}
            try:
                self.store.save_version(run_id, version, document)
            except (OSError, ValueError, TypeError) as exc:
                error = f"cannot store version {version}: {getattr(exc, 'strerror', None) or exc}"
        if error is not None:
            self.store.fail_version(run_id, version, error)
            log.error("run %s: re-processing version %d failed: %s", run_id, version, error)
        else:
            method = self.method_named(record["method"], record.get("instrument"))
            self.publish(method.result_topic, document)
            log.info("run %s: result version %d stored", run_id, version)
        self.audit.result(run_id, version, document, reason="reprocessed", error=error)
        self._publish_version(record, version, "failed" if error is not None else "done", error)

    def _publish_version(self, record: dict[str, Any], version: int, state: str, error: str | None = None) -> None:
        entry = next(v for v in self.store.versions(record["run_id"]) if v["version"] == version)
        self.publish("run.version", make_document(
            "run.version", record["run_id"], schema=RUN_VERSION_SCHEMA, version=version, state=state,
            method=record["method"], instrument=record.get("instrument"), reason=entry["reason"],
            overrides=entry["overrides"], current=entry["current"], error=error))


def reprocess_in_a_process(method: str, record: dict[str, Any], overrides: dict[str, Any],
                            output_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(document, None) or (None, the one-line reason): the method's reprocess hook run by
    :mod:`exoacq.reprocess_worker`, the job and the result as JSON on its stdin and stdout."""
    job = dumps({"method": method, "record": record, "overrides": overrides, "output_dir": str(output_dir)})
    try:
        done = subprocess.run([sys.executable, "-m", "exoacq.reprocess_worker"], input=job, capture_output=True,
                              timeout=REPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"re-processing took longer than {REPROCESS_TIMEOUT_S:g} s and was stopped"
    except OSError as exc:
        return None, f"cannot start the re-processing process: {exc.strerror or exc}"
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        if done.returncode == 1:
            log.error("run %s: re-processing failed:\n%s", record["run_id"], "\n".join(lines))
        return None, lines[0] if lines else f"the re-processing process exited with status {done.returncode}"
    try:
        return loads(done.stdout), None
    except ValueError as exc:
        return None, f"the re-processing process wrote no result document ({exc})"
