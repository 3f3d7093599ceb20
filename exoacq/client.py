"""Client side of the bus: start a run and follow it to its result.

Used by ``exoacq acquire`` and ``exoacq demo``, for any method; a pipeline in another
language does the same with two sockets (docs/protocol.md).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable


from exoacq.bus import ControlClient, loads, subscribe, without_transport
from exoacq.errors import ExoacqError

#: Time for a new SUB socket's subscription to reach the publisher (ZeroMQ's slow joiner).
SUBSCRIBE_SETTLE_S = 0.3
#: With no document for this long, ask the daemon directly (a document may have been missed).
POLL_AFTER_S = 2.0


def follow_run(client: ControlClient, request: dict[str, Any],
               on_document: Callable[[str, dict[str, Any]], None] | None = None,
               timeout_s: float | None = None, silent_after_s: float | None = None) -> dict[str, Any]:
    """Start a run and block until it ends; return its result document (``<method>.result``).

    Raises ExoacqError if the run fails or is aborted, and within ~5 s if the
    daemon dies or restarts under it (exoacq.liveness: its heartbeats stop, or
    its boot id changes), with the run's stored state. ``on_document`` sees
    every document of this run (topic, document), for progress display.
    ``silent_after_s``: silence before the daemon is asked (default
    exoacq.liveness.SILENT_AFTER_S).
    """
    from exoacq.liveness import HEARTBEAT_TOPIC, DaemonWatch

    endpoints = client.request("status")["endpoints"]
    method = request.get("method", "nta")
    result_topic = f"{method}.result"
    sub = subscribe(client.reachable(endpoints["results"]),
                    ["run.state", f"{method}.progress", result_topic, HEARTBEAT_TOPIC],
                    keys=getattr(client, "keys", None))
    watch = DaemonWatch(client.address, keys=getattr(client, "keys", None), silent_after_s=silent_after_s)
    try:
        time.sleep(SUBSCRIBE_SETTLE_S)
        run_id = client.request("acquire", **request)["run_id"]
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last_seen = time.monotonic()
        last_state = "queued"
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise ExoacqError(f"run {run_id} did not finish within {timeout_s:g} s", code="timeout")
            if sub.poll(200):
                topic, payload = sub.recv_multipart()
                document = loads(payload)
                topic = topic.decode()
                if watch.seen(topic, document) is not None:  # a new boot id: the daemon restarted
                    return _ended(client.address, run_id, watch.check_run(run_id, last_state, restarted=True))
                if document.get("run_id") != run_id:
                    continue
                last_seen = time.monotonic()
                if on_document:
                    on_document(topic, document)
                if topic == result_topic:
                    return without_transport(document)  # the result as stored (`runs show`)
                if topic == "run.state":
                    last_state = document["state"]
                    if last_state in ("failed", "aborted"):
                        raise ExoacqError(f"run {run_id} {last_state}: {document.get('error') or 'no reason given'}",
                                          code=f"run_{last_state}")
            elif watch.silent or time.monotonic() - last_seen > POLL_AFTER_S:
                # the daemon is silent (dead? restarted?), or a document of this run may have been missed
                last_seen = time.monotonic()
                record = watch.check_run(run_id, last_state)  # raises when nothing answers
                if record is not None:
                    return _ended(client.address, run_id, record)
    except KeyboardInterrupt:
        try:
            client.request("stop", run_id=run_id, timeout_s=2.0)
            print(f"\nexoacq: run {run_id} aborted at the operator's request", file=sys.stderr)
        except (ExoacqError, UnboundLocalError):
            pass
        raise
    finally:
        sub.close(linger=0)


def _ended(control: str, run_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """A run found ended by asking the daemon: its result, or the one-line error (a restart named)."""
    from exoacq.liveness import restart_message

    if record.get("_restarted"):
        raise ExoacqError(restart_message(control, run_id, record), code="daemon_restarted")
    if record["state"] == "done" and record.get("result"):
        return record["result"]
    raise ExoacqError(f"run {run_id} {record['state']}: {record.get('error') or 'no reason given'}",
                      code=f"run_{record['state']}")


def follow_reprocess(client: ControlClient, run_id: str, overrides: dict[str, Any], reason: str | None = None,
                     on_version: Callable[[dict[str, Any]], None] | None = None,
                     timeout_s: float | None = None) -> dict[str, Any]:
    """Ask the daemon to re-process a stored run and block until the new version is made; return
    its result document (``<method>.result`` with ``version``).

    Raises ExoacqError if the re-processing fails. ``on_version`` sees every ``run.version``
    document of this version (processing, then done or failed), for progress display.
    """
    endpoints = client.request("status")["endpoints"]
    method = client.request("run", run_id=run_id)["method"]
    result_topic = f"{method}.result"
    sub = subscribe(client.reachable(endpoints["results"]), ["run.version", result_topic],
                    keys=getattr(client, "keys", None))
    try:
        time.sleep(SUBSCRIBE_SETTLE_S)
        request: dict[str, Any] = {"run_id": run_id, "overrides": overrides}
        if reason is not None:
            request["reason"] = reason
        reply = client.request("reprocess", **request)
        version = reply["version"]
        if on_version:
            on_version({**reply, "waiting": reply.get("waiting", 0)})
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last_seen = time.monotonic()
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise ExoacqError(f"run {run_id} version {version} was not made within {timeout_s:g} s "
                                  "(it goes on in the daemon: see `exoacq runs show`)", code="timeout")
            if sub.poll(200):
                topic, payload = sub.recv_multipart()
                document = loads(payload)
                if document.get("run_id") != run_id or document.get("version") != version:
                    continue
                last_seen = time.monotonic()
                if topic.decode() == result_topic:
                    return without_transport(document)
                if on_version:
                    on_version(document)
                if document["state"] == "failed":
                    raise ExoacqError(f"run {run_id} version {version} failed: {document.get('error')}",
                                      code="reprocess_failed")
            elif time.monotonic() - last_seen > POLL_AFTER_S:  # a document may have been missed
                last_seen = time.monotonic()
                record = client.request("run", run_id=run_id)
                entry = next((v for v in record["versions"] if v["version"] == version), None)
                if entry is not None and entry["state"] == "done":
                    return client.request("run", run_id=run_id, version=version)["result"]
                if entry is not None and entry["state"] == "failed":
                    raise ExoacqError(f"run {run_id} version {version} failed: {entry['error']}",
                                      code="reprocess_failed")
    finally:
        sub.close(linger=0)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs of ``--set``: a VALUE that reads as JSON (300, 1.5, true, null, "x") is
    that value, any other text a string (a file name)."""
    import json

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ExoacqError(f"--set {pair!r}: must be KEY=VALUE, e.g. --set minmass=300", code="usage")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        overrides[key.strip()] = value
    return overrides


def format_versions(record: dict[str, Any]) -> str:
    """The result versions of a stored run, one line each; ``*`` marks the run's result."""
    versions = record.get("versions") or []
    if not versions:
        return "  no result"
    picked = record.get("picked_version")
    lines = [f"  result versions (the run's result: {record.get('current_version') or '-'}"
             f"{', picked by the operator' if picked is not None else ', the newest'}):"]
    for v in versions:
        overrides = " ".join(f"{k}={v['overrides'][k]}" for k in v["overrides"]) or "-"
        error = f"  error: {v['error']}" if v.get("error") else ""
        lines.append(f"  {'*' if v['current'] else ' '} v{v['version']:<3} {v['state']:<10} {v['created']:<27} "
                     f"{v['reason']}  {overrides}{error}")
    return "\n".join(lines)


class StatusLine:
    """A status line on stderr: redrawn in place on a terminal, one line per update otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()

    def _line(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """One status message (kept on its own line)."""
        self._line(text, final=True)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class ProgressBar(StatusLine):
    """Run progress from published documents (the method's own progress line); once a second
    when not on a terminal."""

    def __init__(self, stream=sys.stderr, formatters: dict[str, Callable[[dict[str, Any]], str | None]] | None = None):
        super().__init__(stream)
        self.formatters = formatters if formatters is not None else _progress_formatters()
        self._last = 0.0

    def __call__(self, topic: str, document: dict[str, Any]) -> None:
        if topic == "run.state":
            step = document.get("step")
            if step and document.get("previous") == document["state"]:
                self._line(f"run {document['run_id']}: step {step['index']}/{step['of']} {step['detail']}", final=True)
            else:
                self._line(f"run {document['run_id']}: {document['state']}", final=True)
        elif topic.endswith(".progress"):
            now = time.monotonic()
            if not self.tty and now - self._last < 1.0:
                return
            self._last = now
            formatter = self.formatters.get(topic.removesuffix(".progress"))
            text = formatter(document) if formatter else None
            if text:
                self._line(text, final=False)


def _progress_formatters() -> dict[str, Callable[[dict[str, Any]], str | None]]:
    from exoacq.registry import installed
    return {name: method.format_progress for name, method in installed().methods.items()}


def format_result(document: dict[str, Any]) -> str:
    """A readable table of a result document, by its method's plugin."""
    import json

    from exoacq.registry import installed
    method = installed().methods.get(document.get("method", ""))
    return method.format_result(document) if method is not None else json.dumps(document, indent=2)
