"""The run store: a SQLite catalog of runs plus one folder of files per run.

``<data_dir>/runs.sqlite`` holds one row per run (id, method, sample,
settings, state, times, result, error); ``<data_dir>/runs/<run_id>/`` holds
the run's files (tracks, result). Written only by the daemon's main thread.

Result versions: a run's result as acquired is its version 1 (``result.json``);
re-processing the stored raw data makes versions 2, 3, ... (``result-vN.json``,
their files under ``vN/``). Every version is kept in the ``results`` table
exactly as published (the JSON text), with when and why it was made and the
analysis overrides; version 1 is never rewritten. The run's result
(``runs.result``) is the newest version that succeeded, unless the operator
picked another (``runs.current_version``).
"""
from __future__ import annotations

import json
import secrets
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exoacq.bus import dumps, utc_now_iso
from exoacq.errors import ExoacqError

#: States a run can be in; the last four are final (``interrupted``: the daemon died during the run;
#: its data up to the last checkpoint is kept, exoacq.durable).
RUN_STATES = ("queued", "preparing", "acquiring", "processing", "done", "failed", "aborted", "interrupted")
FINAL_STATES = frozenset({"done", "failed", "aborted", "interrupted"})
#: FINAL_STATES as an SQL list, for ``state IN (...)``.
_FINAL_SQL = ", ".join(f"'{state}'" for state in sorted(FINAL_STATES))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id   TEXT PRIMARY KEY,
    method   TEXT NOT NULL,
    sample   TEXT NOT NULL,
    settings TEXT NOT NULL,
    state    TEXT NOT NULL,
    created  TEXT NOT NULL,
    started  TEXT,
    finished TEXT,
    result   TEXT,
    error    TEXT
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
CREATE TABLE IF NOT EXISTS results (
    run_id    TEXT NOT NULL,
    version   INTEGER NOT NULL,
    state     TEXT NOT NULL,
    created   TEXT NOT NULL,
    reason    TEXT NOT NULL,
    overrides TEXT NOT NULL,
    result    TEXT,
    error     TEXT,
    PRIMARY KEY (run_id, version)
);
CREATE TABLE IF NOT EXISTS approvals (
    run_id           TEXT NOT NULL,
    operator         TEXT NOT NULL,
    authenticated    INTEGER NOT NULL,
    claimed_operator TEXT,
    key              TEXT,
    time             TEXT NOT NULL,
    version          INTEGER,
    comment          TEXT,
    audit_seq        INTEGER
);
CREATE INDEX IF NOT EXISTS approvals_run ON approvals(run_id);
"""

#: States of a result version.
VERSION_STATES = ("processing", "done", "failed")


class RunStore:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        try:
            (self.data_dir / "runs").mkdir(parents=True, exist_ok=True)
            # One owner at a time (the daemon's main thread), not necessarily the creating thread.
            self._db = sqlite3.connect(self.data_dir / "runs.sqlite", isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise ExoacqError(f"cannot use data directory {self.data_dir}: {exc}", code="bad_data_dir") from None
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(runs)")}
        if "instrument" not in columns:  # a catalog written before instruments had names
            self._db.execute("ALTER TABLE runs ADD COLUMN instrument TEXT")
        if "current_version" not in columns:  # a catalog written before result versions
            self._db.execute("ALTER TABLE runs ADD COLUMN current_version INTEGER")
        if "data_file" not in columns:  # a catalog written before run files (exoacq.durable): JSON
            self._db.execute("ALTER TABLE runs ADD COLUMN data_file TEXT")
        if "operator" not in columns:  # a catalog written before the audit trail: who asked for the run (JSON)
            self._db.execute("ALTER TABLE runs ADD COLUMN operator TEXT")
        # Results stored before versions existed are their runs' version 1, unchanged.
        self._db.execute(
            "INSERT INTO results (run_id, version, state, created, reason, overrides, result) "
            "SELECT run_id, 1, 'done', COALESCE(finished, created), 'acquired', '{}', result FROM runs "
            "WHERE result IS NOT NULL AND run_id NOT IN (SELECT run_id FROM results)")

    def close(self) -> None:
        self._db.close()

    def run_dir(self, run_id: str) -> Path:
        return self.data_dir / "runs" / run_id

    def create(self, method: str, sample: str, settings: dict[str, Any], instrument: str | None = None) -> str:
        now = datetime.now(timezone.utc)
        run_id = f"{method}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        self.run_dir(run_id).mkdir(parents=True)
        self._db.execute(
            "INSERT INTO runs (run_id, method, instrument, sample, settings, state, created) "
            "VALUES (?, ?, ?, ?, ?, 'queued', ?)",
            (run_id, method, instrument, sample, dumps(settings).decode(), utc_now_iso()))
        return run_id

    def set_state(self, run_id: str, state: str, error: str | None = None) -> None:
        if state not in RUN_STATES:
            raise ValueError(f"unknown run state {state!r}")
        now = utc_now_iso()
        self._db.execute(
            f"""UPDATE runs SET state = ?,
                   started = CASE WHEN ? = 'preparing' AND started IS NULL THEN ? ELSE started END,
                   finished = CASE WHEN ? IN ({_FINAL_SQL}) THEN ? ELSE finished END,
                   error = COALESCE(?, error)
               WHERE run_id = ?""",
            (state, state, now, state, now, error, run_id))

    def save_result(self, run_id: str, result: dict[str, Any]) -> None:
        """The run's result as acquired: its version 1 (``result.json``), stored once."""
        if self._version_row(run_id, 1) is not None:
            raise ExoacqError(f"run {run_id} already has its result (version 1); it is never rewritten",
                              code="result_exists")
        text = dumps(result).decode()
        (self.run_dir(run_id) / "result.json").write_text(text, encoding="utf-8")
        self._db.execute(
            "INSERT INTO results (run_id, version, state, created, reason, overrides, result) "
            "VALUES (?, 1, 'done', ?, 'acquired', '{}', ?)", (run_id, utc_now_iso(), text))
        self._refresh_current(run_id)

    # -- result versions ---------------------------------------------------------------
    def reserve_version(self, run_id: str, reason: str, overrides: dict[str, Any]) -> int:
        """The next version number of a run's result, recorded as ``processing``."""
        row = self._db.execute("SELECT MAX(version) AS n FROM results WHERE run_id = ?", (run_id,)).fetchone()
        version = (row["n"] or 1) + 1
        self._db.execute(
            "INSERT INTO results (run_id, version, state, created, reason, overrides) "
            "VALUES (?, ?, 'processing', ?, ?, ?)",
            (run_id, version, utc_now_iso(), reason, dumps(overrides).decode()))
        return version

    def save_version(self, run_id: str, version: int, result: dict[str, Any]) -> str:
        """A re-processed result: ``result-vN.json`` and the catalog, exactly the text returned
        (what the daemon publishes); the run's result if it is now the current version."""
        if version < 2:
            raise ValueError("version 1 is the run's result as acquired: use save_result")
        text = dumps(result).decode()
        (self.run_dir(run_id) / f"result-v{version}.json").write_text(text, encoding="utf-8")
        self._db.execute("UPDATE results SET state = 'done', result = ?, error = NULL "
                         "WHERE run_id = ? AND version = ? AND state = 'processing'", (text, run_id, version))
        self._refresh_current(run_id)
        return text

    def fail_version(self, run_id: str, version: int, error: str) -> None:
        self._db.execute("UPDATE results SET state = 'failed', error = ? WHERE run_id = ? AND version = ? "
                         "AND state = 'processing'", (error, run_id, version))

    def fail_unfinished_versions(self, reason: str) -> list[tuple[str, int]]:
        """Mark versions still ``processing`` (the daemon stopped) as failed; return (run_id, version)s."""
        rows = self._db.execute("SELECT run_id, version FROM results WHERE state = 'processing'").fetchall()
        for row in rows:
            self.fail_version(row["run_id"], row["version"], reason)
        return [(row["run_id"], row["version"]) for row in rows]

    def select_version(self, run_id: str, version: int | None) -> None:
        """The operator's pick of the run's result; None: the newest version again."""
        self.get(run_id)
        if version is not None:
            self._finished_version(run_id, version, "; only a finished version can be the run's result")
        self._db.execute("UPDATE runs SET current_version = ? WHERE run_id = ?", (version, run_id))
        self._refresh_current(run_id)

    def versions(self, run_id: str) -> list[dict[str, Any]]:
        """The run's result versions, oldest first (without their documents)."""
        current = self._current(run_id)
        rows = self._db.execute("SELECT version, state, created, reason, overrides, error FROM results "
                                "WHERE run_id = ? ORDER BY version", (run_id,)).fetchall()
        return [{"version": r["version"], "state": r["state"], "created": r["created"], "reason": r["reason"],
                 "overrides": json.loads(r["overrides"]), "current": r["version"] == current, "error": r["error"]}
                for r in rows]

    def _finished_version(self, run_id: str, version: int, why: str = "") -> sqlite3.Row:
        """A version that exists and is done; else an ExoacqError (``why`` ends the not-done message)."""
        row = self._version_row(run_id, version)
        if row is None:
            raise ExoacqError(f"run {run_id} has no result version {version}", code="unknown_version")
        if row["state"] != "done":
            raise ExoacqError(f"run {run_id} version {version} is {row['state']}"
                              f"{': ' + row['error'] if row['error'] else ''}{why}", code="no_result")
        return row

    def _version_row(self, run_id: str, version: int) -> sqlite3.Row | None:
        return self._db.execute("SELECT * FROM results WHERE run_id = ? AND version = ?",
                                (run_id, version)).fetchone()

    def _current(self, run_id: str) -> int | None:
        """The version that is the run's result: the operator's pick, else the newest that succeeded."""
        row = self._db.execute("SELECT current_version FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is not None and row["current_version"] is not None:
            return row["current_version"]
        newest = self._db.execute("SELECT MAX(version) AS n FROM results WHERE run_id = ? AND state = 'done'",
                                  (run_id,)).fetchone()
        return newest["n"]

    def _refresh_current(self, run_id: str) -> None:
        current = self._current(run_id)
        if current is not None:
            self._db.execute("UPDATE runs SET result = (SELECT result FROM results WHERE run_id = ? AND version = ?) "
                             "WHERE run_id = ?", (run_id, current, run_id))

    def get(self, run_id: str, version: int | None = None) -> dict[str, Any]:
        """A run's full record; its ``result`` is the current version's, or version ``version``'s."""
        row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise ExoacqError(f"no run with id {run_id!r}", code="unknown_run")
        record = self._row(row, full=True)
        if version is not None:
            record["result"] = json.loads(self._finished_version(run_id, version)["result"])
            record["version"] = version
        return record

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM runs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [self._row(r, full=False) for r in rows]

    def find(self, method: str | None = None, instrument: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Full records (with results), newest first, of one method and/or instrument."""
        rows = self._db.execute(
            "SELECT * FROM runs WHERE (? IS NULL OR method = ?) AND (? IS NULL OR instrument = ?) "
            "ORDER BY created DESC LIMIT ?", (method, method, instrument, instrument, limit)).fetchall()
        return [self._row(r, full=True) for r in rows]

    def count_by_state(self) -> list[tuple[str, str, int]]:
        """(instrument, state, runs) for the metrics endpoint; instrument "" for runs recorded without one."""
        rows = self._db.execute("SELECT COALESCE(instrument, ''), state, COUNT(*) FROM runs "
                                "GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        return [(row[0], row[1], row[2]) for row in rows]

    def set_data_file(self, run_id: str, kept: dict[str, Any]) -> None:
        """What the run's ``run.h5`` holds (exoacq.durable): path, state, rows per dataset, last checkpoint."""
        self._db.execute("UPDATE runs SET data_file = ? WHERE run_id = ?", (dumps(kept).decode(), run_id))

    def interrupt_unfinished(self, reason: str) -> list[str]:
        """Mark runs left in a non-final state (the daemon died) as interrupted; return their ids."""
        rows = self._db.execute(
            f"SELECT run_id FROM runs WHERE state NOT IN ({_FINAL_SQL})").fetchall()
        for row in rows:
            self.set_state(row["run_id"], "interrupted", error=reason)
        return [row["run_id"] for row in rows]

    # -- who ran and who approved (exoacq.audit) ------------------------------------------
    def set_operator(self, run_id: str, who: dict[str, Any]) -> None:
        """Who asked for the run: an identity of exoacq.audit (operator, authenticated, ...)."""
        self._db.execute("UPDATE runs SET operator = ? WHERE run_id = ?", (dumps(who).decode(), run_id))

    def operator_of(self, run_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT operator FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(row["operator"]) if row is not None and row["operator"] else None

    def add_approval(self, run_id: str, who: dict[str, Any], time: str, version: int | None,
                     comment: str | None, audit_seq: int) -> None:
        self._db.execute(
            "INSERT INTO approvals (run_id, operator, authenticated, claimed_operator, key, time, version, "
            "comment, audit_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, who["operator"], int(bool(who.get("authenticated"))), who.get("claimed_operator"),
             who.get("key"), time, version, comment, audit_seq))

    def approvals(self, run_id: str) -> list[dict[str, Any]]:
        """A run's approvals, oldest first, each with the seq of its audit log entry."""
        rows = self._db.execute("SELECT * FROM approvals WHERE run_id = ? ORDER BY time, rowid", (run_id,))
        return [{k: (bool(r[k]) if k == "authenticated" else r[k]) for k in r.keys() if k != "run_id"}
                for r in rows.fetchall()]

    def _row(self, row: sqlite3.Row, full: bool) -> dict[str, Any]:
        record = {k: row[k] for k in ("run_id", "method", "instrument", "sample", "state", "created", "started",
                                      "finished", "error")}
        record["settings"] = json.loads(row["settings"])
        record["operator"] = json.loads(row["operator"]) if row["operator"] else None
        if full:
            record["result"] = json.loads(row["result"]) if row["result"] else None
            record["directory"] = str(self.run_dir(row["run_id"]))
            record["versions"] = self.versions(row["run_id"])
            record["current_version"] = self._current(row["run_id"])
            record["picked_version"] = row["current_version"]
            record["data_file"] = json.loads(row["data_file"]) if row["data_file"] else None
            record["approvals"] = self.approvals(row["run_id"])
        return record
