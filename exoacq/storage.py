"""The run store: a SQLite catalog of runs plus one folder of files per run.

``<data_dir>/runs.sqlite`` holds one row per run (id, method, sample,
settings, state, times, result, error); ``<data_dir>/runs/<run_id>/`` holds
the run's files (tracks, result). Written only by the daemon's main thread.
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

#: States a run can be in; the last three are final.
RUN_STATES = ("queued", "preparing", "acquiring", "processing", "done", "failed", "aborted")
FINAL_STATES = frozenset({"done", "failed", "aborted"})

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
"""


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
            """UPDATE runs SET state = ?,
                   started = CASE WHEN ? = 'preparing' AND started IS NULL THEN ? ELSE started END,
                   finished = CASE WHEN ? IN ('done', 'failed', 'aborted') THEN ? ELSE finished END,
                   error = COALESCE(?, error)
               WHERE run_id = ?""",
            (state, state, now, state, now, error, run_id))

    def save_result(self, run_id: str, result: dict[str, Any]) -> None:
        text = dumps(result).decode()
        (self.run_dir(run_id) / "result.json").write_text(text, encoding="utf-8")
        self._db.execute("UPDATE runs SET result = ? WHERE run_id = ?", (text, run_id))

    def get(self, run_id: str) -> dict[str, Any]:
        row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise ExoacqError(f"no run with id {run_id!r}", code="unknown_run")
        return self._row(row, full=True)

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM runs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [self._row(r, full=False) for r in rows]

    def find(self, method: str | None = None, instrument: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Full records (with results), newest first, of one method and/or instrument."""
        rows = self._db.execute(
            "SELECT * FROM runs WHERE (? IS NULL OR method = ?) AND (? IS NULL OR instrument = ?) "
            "ORDER BY created DESC LIMIT ?", (method, method, instrument, instrument, limit)).fetchall()
        return [self._row(r, full=True) for r in rows]

    def fail_unfinished(self, reason: str) -> list[str]:
        """Mark runs left in a non-final state (the daemon died) as failed; return their ids."""
        rows = self._db.execute(
            "SELECT run_id FROM runs WHERE state NOT IN ('done', 'failed', 'aborted')").fetchall()
        for row in rows:
            self.set_state(row["run_id"], "failed", error=reason)
        return [row["run_id"] for row in rows]

    def _row(self, row: sqlite3.Row, full: bool) -> dict[str, Any]:
        record = {k: row[k] for k in ("run_id", "method", "instrument", "sample", "state", "created", "started",
                                      "finished", "error")}
        record["settings"] = json.loads(row["settings"])
        if full:
            record["result"] = json.loads(row["result"]) if row["result"] else None
            record["directory"] = str(self.run_dir(row["run_id"]))
        return record
