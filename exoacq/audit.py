"""The audit trail: an append-only, hash-chained log of what was done on the daemon, and by whom.

``<data_dir>/audit.jsonl`` holds one JSON object per line::

    {"seq": 7, "time": "2026-12-02T12:00:01.234Z", "kind": "state", "operator": "alice",
     "authenticated": true, "run_id": "nta-...", "payload": {...}, "prev": "<hash of seq 6>",
     "hash": "<SHA-256 of this entry without hash>"}

``kind`` is control (a control request, every one, with its outcome), state (a run's
state change), result (a result version stored or failed), approval (a run approved) or
daemon (start, stop, a new segment). ``operator`` is the identity the
daemon established (a CurveZMQ client key's user, else ``local``); ``authenticated``
says whether it was; ``claimed_operator`` is the name a client stated (its login
name), never trusted. ``hash`` is the SHA-256 (hex) of the entry's canonical JSON
(sorted keys, no spaces, ASCII) without ``hash``; ``prev`` is the previous entry's
hash (:data:`GENESIS` for the first). Each line is written exactly in that canonical
form, so that a change of any byte is detected by :func:`verify`: the entry's hash no
longer matches, its link to the previous entry breaks, or the line is no longer JSON.

What this detects, and what not: any edit, insertion or removal in the middle of the
file, and a torn last line. Removing whole entries at the end, or rewriting the whole
file with fresh hashes, needs an anchor outside the file: the head hash that
``exoacq audit verify`` prints, kept elsewhere (e.g. in the batch record).

Only the daemon's main thread writes (:class:`AuditLog`); each entry is one
``write()`` on a file opened with O_APPEND. Durability: an entry appended with
``sync=True`` (the default: acting requests, state changes, results, approvals, the
daemon's own entries) is ``fsync()``'ed before :meth:`AuditLog.append` returns, and with
it every entry written before. An entry appended with ``sync=False`` (read-only and
refused requests: a client may send thousands) is written at once but synced by the
next fsync'ed entry, or by :meth:`AuditLog.flush_due`, which the daemon's main loop
calls every pass: at most SYNC_DELAY_S later. A power loss can therefore lose up to
that last second of read-only entries, never an acting one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from exoacq.bus import _plain, utc_now_iso
from exoacq.errors import ExoacqError, ProtocolError

log = logging.getLogger("exoacq.audit")

AUDIT_FILE = "audit.jsonl"
#: The ``prev`` of the first entry of a log, and of the first entry of a new segment.
GENESIS = "0" * 64
KINDS = ("control", "state", "result", "approval", "daemon")
#: A string longer than this (characters) is recorded as its length and SHA-256 (a SOP text, a hostile blob).
LARGE_TEXT_CHARS = 256
#: A list or object whose JSON is longer than this (bytes) is recorded as its length and SHA-256.
LARGE_VALUE_BYTES = 4096
#: How much of the end of the log the daemon reads on start to find (and check) the last entries.
TAIL_BYTES = 1 << 20
#: The identity of the daemon itself, for its own entries (start, stop, new segment).
DAEMON_IDENTITY = {"operator": "exoacq-daemon", "authenticated": False}
#: The name a client may state: at most this many characters.
OPERATOR_MAX_CHARS = 64
#: An entry written without its own fsync (``sync=False``) is synced at most this long after (seconds).
SYNC_DELAY_S = 1.0


# -- entries -------------------------------------------------------------------------
def canonical(entry: dict[str, Any]) -> bytes:
    """The one byte form of an entry: sorted keys, no spaces, ASCII (non-ASCII escaped)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``entry`` without its ``hash``."""
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def summarise(value: Any) -> Any:
    """``value`` for the log: long strings, and lists or objects of more than LARGE_VALUE_BYTES of JSON,
    replaced by their size and SHA-256 (the original can still be matched against the log)."""
    return _summarised(_plain(value))


def _summarised(value: Any) -> Any:
    """:func:`summarise` of a plain JSON value (every request's parameters pass here: kept cheap)."""
    if isinstance(value, str) and len(value) > LARGE_TEXT_CHARS:
        data = value.encode("utf-8", errors="surrogatepass")
        return {"summarised": "text", "chars": len(value), "sha256": hashlib.sha256(data).hexdigest()}
    if isinstance(value, (dict, list)):
        short = {k: _summarised(v) for k, v in value.items()} if isinstance(value, dict) else \
            [_summarised(v) for v in value]
        if len(canonical(short)) > LARGE_VALUE_BYTES:  # type: ignore[arg-type]
            data = canonical(value)  # type: ignore[arg-type]
            return {"summarised": "json", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return short
    return value


def identity(client: dict[str, Any] | None, claimed: str | None = None) -> dict[str, Any]:
    """Who made a request: the daemon's view of the client (``Daemon.current_client``: user,
    authenticated, key; none: ``local``, unauthenticated) and the name the client stated."""
    client = client or {}
    who: dict[str, Any] = {"operator": str(client.get("user") or "local"),
                           "authenticated": bool(client.get("authenticated"))}
    if client.get("key"):
        who["key"] = str(client["key"])
    if claimed is not None:
        who["claimed_operator"] = claimed
    return who


def pop_claimed_operator(request: dict[str, Any]) -> str | None:
    """Take the optional ``operator`` a client states out of a request; a bad one is a ProtocolError."""
    claimed = request.pop("operator", None)
    if claimed is None:
        return None
    if (not isinstance(claimed, str) or not 1 <= len(claimed) <= OPERATOR_MAX_CHARS
            or not claimed.isprintable() or claimed != claimed.strip()):
        raise ProtocolError(f"operator: must be a name of 1 to {OPERATOR_MAX_CHARS} printable characters",
                            code="bad_operator")
    return claimed


def stated_operator() -> str | None:
    """The name a client states as its operator: ``$EXOACQ_OPERATOR``, else the login name; None when
    neither is a valid name (the request then states none)."""
    import getpass
    try:
        name = os.environ.get("EXOACQ_OPERATOR") or getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return None
    try:
        return pop_claimed_operator({"operator": name})
    except ProtocolError:
        return None


def describe(who: dict[str, Any] | None) -> str:
    """An identity in words: ``alice (authenticated)``, ``local (not authenticated; says bob)``."""
    if not who:
        return "unknown (recorded before the audit trail)"
    text = f"{who.get('operator', '?')} ({'authenticated' if who.get('authenticated') else 'not authenticated'}"
    if who.get("claimed_operator") and who["claimed_operator"] != who.get("operator"):
        text += f"; says {who['claimed_operator']}"
    return text + ")"


def signature_lines(record: dict[str, Any] | None) -> list[str]:
    """What a report states about a stored run: who ran it, who approved it (or that nobody has yet)."""
    if record is None:
        return ["Run by: unknown", "Not approved yet"]
    lines = [f"Run by {describe(record.get('operator'))}"]
    approvals = record.get("approvals") or []
    for a in approvals:
        comment = f": {a['comment']}" if a.get("comment") else ""
        lines.append(f"Approved by {describe(a)} at {a['time']} (result version {a.get('version') or '-'}){comment}")
    if not approvals:
        lines.append("Not approved yet")
    return lines


# -- the writer ------------------------------------------------------------------------------
class AuditLog:
    """The writer of one audit log: the daemon's main thread only.

    On open it reads the end of the file: a sound last entry is continued (seq + 1, its hash as
    ``prev``); a damaged one (torn line, changed entry) is logged as an error and a new segment
    begins, its first entry (``daemon``/``new_segment``, ``prev`` = GENESIS) recording the break.
    A write that fails (disk full) is logged; the next entry that can be written starts a new
    segment that says how many entries were lost. Nothing here raises into the daemon but a
    failure to open the file at all.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        #: time.monotonic() of the oldest entry written but not yet fsync'ed; None when all are.
        self.unsynced_since: float | None = None
        self.seq, self.prev, damage = _resume(self.path)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise ExoacqError(f"cannot open the audit log {self.path}: {exc.strerror}", code="bad_data_dir") from None
        self._lost = 0
        self._lost_reason = ""
        if damage is not None:
            log.error("AUDIT LOG DAMAGED: %s: %s; a new segment begins (run `exoacq audit verify`)", self.path, damage)
            if not _ends_with_newline(self.path):
                self._write(b"\n")  # a torn last line ends here; the new segment starts on a line of its own
            self._new_segment(damage)

    def append(self, kind: str, payload: dict[str, Any], who: dict[str, Any], run_id: str | None = None,
               sync: bool = True) -> dict[str, Any] | None:
        """Write one entry; return it, or None when it could not be written (logged). ``sync``: fsync'ed
        (with every entry before it) before this returns; else synced within SYNC_DELAY_S (:meth:`flush_due`)."""
        if self._lost:
            self._new_segment(f"{self._lost} entries could not be written ({self._lost_reason})")
            if self._lost:
                self._lost += 1
                return None
        return self._append(kind, payload, who, run_id, self.prev, sync)

    def flush_due(self) -> None:
        """fsync the entries written without it once the oldest is SYNC_DELAY_S old (the daemon's main
        loop calls this every pass; cheap when there is nothing to do)."""
        if self.unsynced_since is not None and time.monotonic() - self.unsynced_since >= SYNC_DELAY_S:
            self.sync()

    def sync(self) -> None:
        """fsync every entry written so far (a failure is logged: the entries may not survive a power loss)."""
        if self.unsynced_since is None:
            return
        self.unsynced_since = None
        try:
            os.fsync(self._fd)
        except OSError as exc:
            log.error("AUDIT LOG: cannot sync %s: %s (the last entries may be lost on a power loss)",
                      self.path, exc.strerror or exc)

    def _append(self, kind: str, payload: dict[str, Any], who: dict[str, Any], run_id: str | None,
                prev: str, sync: bool = True) -> dict[str, Any] | None:
        entry = {"seq": self.seq + 1, "time": utc_now_iso(), "kind": kind, **who, "run_id": run_id,
                 "payload": summarise(payload), "prev": prev}
        entry["hash"] = entry_hash(entry)
        if not self._write(canonical(entry) + b"\n", sync):
            self._lost += 1
            return None
        self.seq, self.prev = entry["seq"], entry["hash"]
        return entry

    def _new_segment(self, reason: str) -> None:
        lost, self._lost = self._lost, 0
        entry = self._append("daemon", {"event": "new_segment", "reason": reason, "after_seq": self.seq},
                             DAEMON_IDENTITY, None, GENESIS)
        if entry is None:
            self._lost = lost  # still to be said by the next segment (this one was not written)

    def _write(self, data: bytes, sync: bool = True) -> bool:
        try:
            written = os.write(self._fd, data)
            if sync:
                os.fsync(self._fd)
                self.unsynced_since = None
            elif self.unsynced_since is None:
                self.unsynced_since = time.monotonic()
        except OSError as exc:
            self._lost_reason = exc.strerror or str(exc)
            log.error("AUDIT LOG: cannot write to %s: %s", self.path, self._lost_reason)
            return False
        if written != len(data):  # a full disk: the line is torn; the next segment starts on a new line
            self._lost_reason = f"only {written} of {len(data)} bytes written"
            log.error("AUDIT LOG: %s: %s", self.path, self._lost_reason)
            if written:
                try:
                    os.write(self._fd, b"\n")
                except OSError:
                    pass  # the next segment's own line end is then missing too: verify names the torn line
            return False
        return True

    def close(self) -> None:
        self.sync()
        os.close(self._fd)


def _resume(path: Path) -> tuple[int, str, str | None]:
    """(last seq, last hash, None) of a sound log; (last readable seq, GENESIS, what is wrong) of a
    damaged end; (0, GENESIS, None) for a new log."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0, GENESIS, None
    if size == 0:
        return 0, GENESIS, None
    with open(path, "rb") as f:
        f.seek(max(0, size - TAIL_BYTES))
        tail = f.read()
    lines = tail.split(b"\n")
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first piece may be the end of a longer line
    if lines[-1] != b"":
        last_seq = _last_readable_seq(lines[:-1])
        return last_seq, GENESIS, f"the last line is incomplete ({len(lines[-1])} bytes without a line end)"
    lines = lines[:-1]
    if not lines:
        return 0, GENESIS, "no complete entry at the end of the file"
    entry, problem = check_line(lines[-1])
    if problem is None and len(lines) > 1 and not _segment_start(entry):
        before, _ = check_line(lines[-2])
        if before is None or before["hash"] != entry["prev"]:
            problem = "the last entry does not link to the one before"
    if problem is not None:
        return _last_readable_seq(lines), GENESIS, f"the last entry: {problem}"
    return entry["seq"], entry["hash"], None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _last_readable_seq(lines: list[bytes]) -> int:
    for line in reversed(lines):
        entry, problem = check_line(line)
        if entry is not None:
            return entry["seq"]
    return 0


# -- reading and verifying ------------------------------------------------------------------
def check_line(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(entry, None) for a sound line (without its line end); else (the entry if it parsed, what is wrong)."""
    try:
        entry = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"unparseable ({type(exc).__name__}: {str(exc)[:80]})"
    if not isinstance(entry, dict):
        return None, "unparseable (not a JSON object)"
    for name, kind in (("seq", int), ("time", str), ("kind", str), ("operator", str), ("prev", str),
                       ("hash", str), ("payload", dict)):
        if not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool):
            return None, f"malformed entry: field {name!r} missing or not a {kind.__name__}"
    if entry["kind"] not in KINDS:
        return entry, f"malformed entry: unknown kind {entry['kind']!r}"
    if entry_hash(entry) != entry["hash"]:
        return entry, "hash mismatch: the entry (or its hash) was changed after it was written"
    if canonical(entry) != line:
        return entry, "changed bytes: the line is not the entry as it was written"
    return entry, None


def _segment_start(entry: dict[str, Any] | None) -> bool:
    return (entry is not None and entry["prev"] == GENESIS and entry["kind"] == "daemon"
            and entry["payload"].get("event") == "new_segment")


@dataclass
class Verification:
    """What :func:`verify` found: entries, segments, first/last time, head hash, and the problems
    as (line number, seq or None, what is wrong), first first."""
    path: Path
    entries: int = 0
    segments: int = 0
    first_time: str | None = None
    last_time: str | None = None
    head: str = GENESIS
    problems: list[tuple[int, int | str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if not self.entries and self.ok:
            return f"audit log {self.path}: empty (nothing recorded yet)"
        head = (f"{self.entries} entries in {self.segments} segment{'s' if self.segments != 1 else ''}, "
                f"{self.first_time} .. {self.last_time}, head {self.head}")
        if self.ok:
            return f"audit log {self.path}: the chain holds: {head}"
        line, seq, what = self.problems[0]
        more = f" ({len(self.problems)} problems in all)" if len(self.problems) > 1 else ""
        return (f"audit log {self.path}: line {line} (seq {seq}): {what}{more}; "
                f"read: {head if self.entries else 'no sound entry'}")


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number from 1, the line without its end, whether it had one)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            yield number, line.rstrip(b"\n"), line.endswith(b"\n")


def verify(path: Path) -> Verification:
    """Check every entry of the log: its form, its hash, its link to the entry before, its seq.
    After a problem, checking resumes with the next sound entry (so that one removed line is one
    problem, not all the rest). A new segment (a break the daemon recorded) is a problem too: it
    says that something before it was damaged or lost, and a forged one could hide a removal."""
    path = Path(path)
    if not path.exists():
        raise ExoacqError(f"no audit log at {path} (has a daemon run with this --data-dir?)", code="no_audit_log")
    result = Verification(path)
    prev_hash, prev_seq, resync = GENESIS, 0, False
    for number, line, ended in _lines(path):
        entry, problem = check_line(line)
        if problem is None and not ended:
            problem = "incomplete last line (no line end: the file was truncated or the write torn)"
        if problem is None:
            if number == 1 and entry["prev"] == GENESIS and entry["seq"] == 1:
                result.segments += 1
            elif _segment_start(entry):  # a break the daemon recorded: reported, never taken as sound
                result.segments += 1
                result.problems.append((number, entry["seq"], "a new segment begins: the daemon recorded a break in "
                                        f"the chain before this entry ({entry['payload'].get('reason')})"))
            elif not resync:
                if entry["prev"] != prev_hash:
                    gap = f"; seq jumps from {prev_seq} to {entry['seq']}" if entry["seq"] != prev_seq + 1 else ""
                    problem = (f"broken link: prev does not match the hash of the entry before (seq {prev_seq}): "
                               f"an entry was removed, inserted or changed{gap}")
                elif entry["seq"] != prev_seq + 1:
                    problem = f"gap in seq: expected {prev_seq + 1}, found {entry['seq']}"
        if problem is not None:
            result.problems.append((number, entry["seq"] if entry else _seq_of(line, prev_seq + 1), problem))
            resync = True
            if entry is None:
                continue
        else:
            resync = False
        result.entries += 1
        result.first_time = result.first_time or entry["time"]
        result.last_time = entry["time"]
        prev_hash, prev_seq = entry["hash"], entry["seq"]
        result.head = entry["hash"]
    return result


def _seq_of(line: bytes, expected: int) -> int | str:
    """The seq of a damaged line, if it still reads as one; else the one expected there (so marked)."""
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        seq = None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else f"{expected}, by position"


def acts(entry: dict[str, Any]) -> bool:
    """Whether an entry is about something that can change things: every entry but the ``control``
    entries of requests that could not (``acts: false``: read-only commands, refused unread requests)."""
    return not (entry.get("kind") == "control" and entry["payload"].get("acts") is False)


def read_entries(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, entry or None when unparseable), for showing; :func:`verify` is what checks."""
    for number, line, _ in _lines(path):
        entry, problem = check_line(line)
        yield number, entry


def format_entry(entry: dict[str, Any]) -> str:
    """One entry on one line: seq, time, kind, operator, run, what happened."""
    p = entry["payload"]
    kind = entry["kind"]
    if kind == "control":
        params = " ".join(f"{k}={_shown(v)}" for k, v in (p.get("params") or {}).items())
        if isinstance(p.get("request"), dict):  # not read as a request: its size and SHA-256 only
            params = f"<{p['request'].get('bytes')} bytes, sha256 {str(p['request'].get('sha256'))[:12]}..>"
        error = p.get("error") or {}
        outcome = "ok" if p.get("outcome") == "ok" else f"error {error.get('code')}" + (
            f": {error['message']}" if error.get("message") else "")
        what = f"{p.get('command')}{' ' + params if params else ''} -> {outcome}"
    elif kind == "state":
        what = f"{p.get('previous') or '-'} -> {p.get('state')}" + (f" ({p['error']})" if p.get("error") else "")
        if p.get("step"):
            what += f" step {p['step'].get('index')}/{p['step'].get('of')} {p['step'].get('step')}"
    elif kind == "result":
        what = (f"version {p.get('version')} {p.get('state')}"
                + (f" sha256 {p['sha256'][:16]}.. ({p.get('bytes')} bytes)" if p.get("sha256") else "")
                + (f" ({p['error']})" if p.get("error") else ""))
    elif kind == "approval":
        what = f"approved result version {p.get('version')}" + (f": {p['comment']}" if p.get("comment") else "")
    else:
        what = " ".join(f"{k}={_shown(v)}" for k, v in p.items())
    return (f"{entry['seq']:>6} {entry['time']} {kind:<8} {describe(entry)} "
            f"{entry.get('run_id') or '-'}  {what}")


def _shown(value: Any) -> str:
    """A recorded value for a person: JSON, a summarised one as its size and the start of its SHA-256."""
    if isinstance(value, dict) and "summarised" in value and "sha256" in value:
        size = f"{value['chars']} chars" if "chars" in value else f"{value.get('bytes')} bytes"
        return f"<{size}, sha256 {value['sha256'][:12]}..>"
    return json.dumps(value)
