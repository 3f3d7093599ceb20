"""Clients that notice: the daemon's heartbeat, and a client's view of whether its daemon is still there.

The daemon publishes a small ``daemon.heartbeat`` document every second
(:func:`heartbeat_document`), carrying, like every document, ``daemon`` (the
boot id of this daemon start) and ``seq``. A client following a run
(:class:`DaemonWatch`) notices three things:

* silence: no document at all for ``SILENT_AFTER_S`` (two heartbeats):
  it asks the daemon for the run's stored record (a fresh socket, a short
  timeout); a daemon that answers with a new boot id, or a run that has ended,
  is reported with the run's stored state; if nothing answers, "the daemon at
  ... stopped answering during run X (last state: ...)". Either way within
  ~5 s of the daemon's death;
* a changed boot id: the daemon restarted (its runs in progress were
  interrupted): reported with the run's stored state;
* gaps in ``seq`` per topic: documents the subscriber missed (it read too
  slowly, or was not connected): counted (:attr:`DaemonWatch.missed`).
"""
from __future__ import annotations

import os
import time
from typing import Any

from exoacq.bus import ControlClient
from exoacq.errors import ExoacqError
from exoacq.storage import FINAL_STATES

HEARTBEAT_TOPIC = "daemon.heartbeat"
HEARTBEAT_SCHEMA = "exoacq.daemon.heartbeat/1"
#: The daemon publishes a heartbeat this often.
HEARTBEAT_INTERVAL_S = 1.0
#: With no document for this long (two heartbeats missed), the client asks the daemon directly.
SILENT_AFTER_S = 2.0
#: How long that question may take before the daemon counts as gone.
PROBE_TIMEOUT_S = 1.5


def heartbeat_document(started_s: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The daemon's heartbeat: its pid, uptime and the runs not yet ended (``run_id``, ``state``)."""
    from exoacq.bus import utc_now_iso
    return {"schema": HEARTBEAT_SCHEMA, "run_id": None, "time": utc_now_iso(), "pid": os.getpid(),
            "uptime_s": round(time.time() - started_s, 3), "runs": runs}


class DaemonWatch:
    """What a subscriber knows about its daemon: boot id, last document, missed documents."""

    def __init__(self, control: str, keys: Any = None, silent_after_s: float | None = None):
        self.control = control
        self.keys = keys
        self.silent_after_s = SILENT_AFTER_S if silent_after_s is None else silent_after_s
        self.boot_id: str | None = None
        #: The daemon's pid, from its heartbeats (a probe answered by another pid: a restarted daemon).
        self.pid: int | None = None
        self.last_seen = time.monotonic()
        #: The last ``seq`` seen per topic, and the documents missed (gaps) per topic.
        self.last_seq: dict[str, int] = {}
        self.missed: dict[str, int] = {}

    def seen(self, topic: str, document: dict[str, Any]) -> str | None:
        """Note a received document; returns the new boot id when the daemon restarted, else None."""
        self.last_seen = time.monotonic()
        if topic == HEARTBEAT_TOPIC:
            self.pid = document.get("pid", self.pid)
        boot = document.get("daemon")
        restarted = None
        if boot is not None:
            if self.boot_id is not None and boot != self.boot_id:
                restarted = boot
                self.last_seq.clear()  # a new daemon counts from 1 again
            self.boot_id = boot
        seq = document.get("seq")
        if isinstance(seq, int):
            previous = self.last_seq.get(topic)
            if previous is not None and seq > previous + 1:
                self.missed[topic] = self.missed.get(topic, 0) + seq - previous - 1
            self.last_seq[topic] = seq
        return restarted

    @property
    def silent(self) -> bool:
        return time.monotonic() - self.last_seen > self.silent_after_s

    def probe(self, run_id: str | None) -> dict[str, Any] | None:
        """Ask the daemon (a fresh socket: no stale reply) for the run's record (``{}`` without a run);
        None if nothing answers within PROBE_TIMEOUT_S."""
        try:
            with ControlClient(self.control, timeout_s=PROBE_TIMEOUT_S, keys=self.keys) as client:
                ping = client.request("ping")
                record = client.request("run", run_id=run_id) if run_id is not None else {}
        except ExoacqError as exc:
            if exc.code == "no_daemon":
                return None
            raise
        self.last_seen = time.monotonic()
        return {**record, "_daemon_pid": ping.get("pid")}

    def check_run(self, run_id: str, last_state: str | None, restarted: bool = False) -> dict[str, Any] | None:
        """After silence or a restart: the run's stored record if it ended (the caller reports it);
        None if the run goes on. Raises ExoacqError when nothing answers."""
        record = self.probe(run_id)
        if record is None:
            raise ExoacqError(f"the daemon at {self.control} stopped answering during run {run_id} "
                              f"(last state: {last_state or 'unknown'})", code="daemon_gone")
        if self.pid is not None and record["_daemon_pid"] != self.pid:
            restarted = True
        if restarted or record.get("state") in FINAL_STATES:
            return {**record, "_restarted": restarted}
        return None


def restart_message(control: str, run_id: str, record: dict[str, Any]) -> str:
    """The one line for a run whose daemon restarted under it."""
    error = f": {record['error']}" if record.get("error") else ""
    return (f"the daemon at {control} restarted during run {run_id}; the run is {record.get('state', 'unknown')}"
            f"{error} (see `exoacq runs show {run_id}`)")


def watch_documents(control: str, results: str, topics: list[str] | None, count: int | None, keys: Any = None,
                    out=None, err=None) -> int:
    """``exoacq watch``: print the documents as JSON lines; on stderr, what was missed (``seq`` gaps) and a
    daemon that restarted; a daemon that stopped answering ends the watch with an error."""
    import sys

    from exoacq.bus import loads, subscribe

    out, err = out or sys.stdout, err or sys.stderr
    shown = [t.encode("ascii") for t in topics or [""]]
    socket = subscribe(results, [*(topics or [""]), HEARTBEAT_TOPIC], keys=keys)
    watch = DaemonWatch(control, keys=keys)
    seen = 0
    try:
        while count is None or seen < count:
            if not socket.poll(200):
                if watch.silent and watch.probe(None) is None:
                    raise ExoacqError(f"the daemon at {control} stopped answering (no document for "
                                      f"{watch.silent_after_s:g} s and no reply within {PROBE_TIMEOUT_S:g} s)",
                                      code="daemon_gone")
                continue
            topic, payload = socket.recv_multipart()
            document = loads(payload)
            missed_before = sum(watch.missed.values())
            previous_boot = watch.boot_id
            if watch.seen(topic.decode("ascii", "replace"), document) is not None:
                err.write(f"exoacq: the daemon at {control} restarted (boot id {previous_boot} -> "
                          f"{watch.boot_id}); runs it had in progress were interrupted\n")
            missed = sum(watch.missed.values()) - missed_before
            if missed:
                err.write(f"exoacq: missed {missed} document(s) on {topic.decode('ascii', 'replace')} "
                          f"({sum(watch.missed.values())} in all; the subscriber read too slowly)\n")
            err.flush()
            if any(topic.startswith(t) for t in shown):
                out.write(payload.decode("utf-8") + "\n")
                out.flush()
                seen += 1
    finally:
        socket.close(linger=0)
    return 0
