"""The daemon's side of the audit trail (exoacq.audit): what it records, with whose identity.

The daemon calls, from its main thread only:

* :meth:`AuditRecorder.begin` when a control request has been parsed (takes out the
  ``operator`` name the client stated) and :meth:`AuditRecorder.control` with the reply,
  just before it is sent: one ``control`` entry for EVERY control request, with the
  command, its parameters (long values summarised: length and SHA-256), the outcome (ok,
  or the error code) and the sender's identity;
* :meth:`AuditRecorder.state` on every run state change (and SOP step), :meth:`result`
  when a result version is stored or fails: with the run's operator, who asked for it;
* :meth:`AuditRecorder.approve` for the ``approve`` command;
* :meth:`AuditRecorder.flush_due` every pass of its main loop.

Two classes of control entry (``acts`` in the payload):

* acting requests (every command not in exoacq.security.READ_ONLY_COMMANDS, refused ones
  too: a refused attempt to switch a laser on is worth knowing): the reply's result (or the
  error code and message) is recorded, and the entry is fsync'ed before the reply is sent;
* requests that cannot change anything (``acts: false``): read-only commands (``status``,
  ``ping``, ``runs``, ``run``, ``settings``, ``bluesky``) and refused ones the daemon could not
  act on: not JSON (command ``(not JSON)``), too large (``(too large)``), parameters out of
  bounds (the command it names), otherwise malformed (``(malformed)``), an unknown command
  (its name). Only the outcome and error code are
  recorded, never the reply; a request that was not read as one is recorded as its size and
  SHA-256, never its bytes. These entries are written at once but not fsync'ed on their own
  (clients may poll, a hostile one may send thousands): the next fsync'ed entry, or
  :meth:`flush_due` at most exoacq.audit.SYNC_DELAY_S later, syncs them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from exoacq import __version__
from exoacq.audit import (AUDIT_FILE, DAEMON_IDENTITY, AuditLog, describe, identity, pop_claimed_operator)
from exoacq.bus import dumps
from exoacq.errors import ExoacqError, ProtocolError
from exoacq.free_text import check_free_text
from exoacq.security import READ_ONLY_COMMANDS  # commands that change nothing: recorded, not fsync'ed

log = logging.getLogger("exoacq.audit")

#: Error codes of requests that named no command the daemon has: they act on nothing.
NO_COMMAND_ERRORS = frozenset({"unknown_command"})
#: The ``command`` recorded for a request that was not read as one, by error code; else ``(malformed)``.
UNREAD_REQUESTS = {"bad_json": "(not JSON)", "request_too_large": "(too large)"}
COMMENT_MAX_CHARS = 1000
#: A request's ``run_id`` longer than this is no run's: not recorded as the entry's run_id.
RUN_ID_MAX_CHARS = 128
#: An error message is recorded up to this many characters (it may quote a hostile request).
ERROR_MESSAGE_CHARS = 256
#: Operators of this many runs are kept in memory (the catalog has them all).
OPERATORS_IN_MEMORY = 1000


class AuditRecorder:
    """Records control requests, run states, results and approvals in ``<data_dir>/audit.jsonl``."""

    def __init__(self, store: Any, data_dir: Path):
        self.store = store
        self.log = AuditLog(Path(data_dir) / AUDIT_FILE)
        #: The control request being handled: (command, parameters, identity); None between requests.
        self._request: tuple[str, dict[str, Any], dict[str, Any]] | None = None
        self._operators: dict[str, dict[str, Any] | None] = {}
        self.log.append("daemon", {"event": "start", "version": __version__, "pid": os.getpid()}, DAEMON_IDENTITY)

    def close(self) -> None:
        self.log.append("daemon", {"event": "stop", "pid": os.getpid()}, DAEMON_IDENTITY)
        self.log.close()

    # -- control requests ----------------------------------------------------------------
    def begin(self, command: str, request: dict[str, Any], client: dict[str, Any] | None) -> None:
        """A parsed request (without ``command``): its stated ``operator`` is taken out of ``request``
        (a bad one raises ProtocolError); who sent it is kept for the entries it causes."""
        self._request = (command, dict(request), identity(client))
        claimed = pop_claimed_operator(request)
        self._request = (command, dict(request), identity(client, claimed))

    def control(self, reply: dict[str, Any], client: dict[str, Any] | None = None,
                parts: list[bytes] | None = None) -> None:
        """The reply to the request being handled (``parts``: its frames as received, the request
        last): one ``control`` entry, fsync'ed when the request could act (module docstring)."""
        request, self._request = self._request, None
        error = reply.get("error") or {}
        if request is None:  # not read as a request: what arrived, as its size and SHA-256
            data = parts[-1] if parts else b""
            command = (_command_of(data) if error.get("code") == "bad_request" else None) or \
                UNREAD_REQUESTS.get(error.get("code"), "(malformed)")
            payload = {"command": command, "acts": False,
                       "request": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
                       "outcome": "error", "error": {"code": error.get("code")}}
            self.log.append("control", payload, identity(client), sync=False)
            return
        command, params, who = request
        if not who["authenticated"] and client:  # the identity may have been established while handling
            who = identity(client, who.get("claimed_operator"))
        params.pop("operator", None)
        run_id = params.get("run_id")  # a hostile 4096-character one stays in params (summarised) only
        run_id = run_id if isinstance(run_id, str) and len(run_id) <= RUN_ID_MAX_CHARS else None
        if command in READ_ONLY_COMMANDS or error.get("code") in NO_COMMAND_ERRORS:
            payload = {"command": command, "params": params, "acts": False,
                       "outcome": "ok" if reply.get("ok") else "error"}
            if not reply.get("ok"):
                payload["error"] = {"code": error.get("code")}
            self.log.append("control", payload, who, run_id, sync=False)
            return
        if reply.get("ok"):
            result = reply.get("result")
            payload = {"command": command, "params": params, "acts": True, "outcome": "ok", "reply": result}
            if run_id is None and isinstance(result, dict) and isinstance(result.get("run_id"), str):
                run_id = result["run_id"]
        else:
            message = str(error.get("message", ""))
            if len(message) > ERROR_MESSAGE_CHARS:
                message = message[:ERROR_MESSAGE_CHARS - 3] + "..."
            payload = {"command": command, "params": params, "acts": True, "outcome": "error",
                       "error": {"code": error.get("code"), "message": message}}
        self.log.append("control", payload, who, run_id)

    def flush_due(self) -> None:
        """From the daemon's main loop, every pass: sync entries written without fsync (at most 1 s old)."""
        self.log.flush_due()

    # -- runs ----------------------------------------------------------------------------
    def run_operator(self, run_id: str) -> dict[str, Any] | None:
        """Who asked for a run (None for runs recorded before the audit trail)."""
        if run_id not in self._operators:
            if len(self._operators) >= OPERATORS_IN_MEMORY:
                self._operators.clear()
            self._operators[run_id] = self.store.operator_of(run_id)
        return self._operators[run_id]

    def state(self, run_id: str, state: str, previous: str | None, error: str | None = None,
              step: dict[str, Any] | None = None) -> None:
        """A run's state changed. A run becomes ``queued`` by the request being handled: its sender
        is the run's operator, kept in the catalog."""
        if state == "queued" and self._request is not None and self.store.operator_of(run_id) is None:
            self.store.set_operator(run_id, self._request[2])
            self._operators.pop(run_id, None)
        payload: dict[str, Any] = {"state": state, "previous": None if state == "queued" else previous}
        if error:
            payload["error"] = error
        if step:
            payload["step"] = step
        if self._request is not None:
            payload["cause"] = f"request {self._request[0]} by {describe(self._request[2])}"
        who = self.run_operator(run_id) or {"operator": "unknown", "authenticated": False}
        self.log.append("state", payload, who, run_id)

    def result(self, run_id: str, version: int, document: dict[str, Any] | None, reason: str = "acquired",
               error: str | None = None) -> None:
        """A result version stored (its SHA-256 is that of the JSON text in the catalog and
        ``result.json`` / ``result-vN.json``) or failed."""
        payload: dict[str, Any] = {"version": version, "reason": reason, "state": "failed" if error else "done"}
        if document is not None and error is None:
            text = dumps(document)
            payload |= {"bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()}
        if error:
            payload["error"] = error
        who = self.run_operator(run_id) or {"operator": "unknown", "authenticated": False}
        self.log.append("result", payload, who, run_id)

    def approve(self, run_id: Any, comment: Any = None) -> dict[str, Any]:
        """The ``approve`` command: the sender approves a finished run's present result version.
        Refused for a run that is not ``done``, and when the same operator approved it already."""
        if not isinstance(run_id, str):
            raise ProtocolError(f"run_id = {run_id!r}: must be a run id string")
        if comment is not None:
            check_free_text(comment, "comment", max_chars=COMMENT_MAX_CHARS, allow_empty=True)
        who = self._request[2] if self._request is not None else identity(None)
        record = self.store.get(run_id)
        if record["state"] != "done":
            raise ExoacqError(f"run {run_id} is {record['state']}: only a finished run (done) can be approved",
                              code="not_approvable")
        # The same operator: the same key's name; without a key, the same stated name too.
        same = [a for a in record["approvals"] if a["operator"] == who["operator"]
                and a["authenticated"] == who["authenticated"]
                and (who["authenticated"] or a.get("claimed_operator") == who.get("claimed_operator"))]
        if same:
            raise ExoacqError(f"run {run_id} was approved by {describe(who)} already, at {same[0]['time']}",
                              code="already_approved")
        version = record["current_version"]
        result_text = dumps(record["result"]) if record.get("result") is not None else b""
        payload = {"version": version, "comment": comment,
                   "result_sha256": hashlib.sha256(result_text).hexdigest() if result_text else None}
        entry = self.log.append("approval", payload, who, run_id)
        if entry is None:
            raise ExoacqError(f"the approval of run {run_id} could not be recorded in the audit log (see the "
                              "daemon's log): not approved", code="audit_failed")
        self.store.add_approval(run_id, who, entry["time"], version, comment, entry["seq"])
        approvals = self.store.get(run_id)["approvals"]
        log.info("run %s approved by %s (result version %s)", run_id, describe(who), version)
        return {"run_id": run_id, "approved_by": describe(who), "time": entry["time"], "version": version,
                "approvals": approvals, "operator": record.get("operator")}


def _command_of(data: bytes) -> str | None:
    """The command a request refused unread names (JSON whose parameters broke the bounds of
    exoacq.security: too long, too deep, not Unicode), or None."""
    try:
        request = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    command = request.get("command") if isinstance(request, dict) else None
    return command if isinstance(command, str) and 0 < len(command) <= 64 and command.isprintable() else None
