"""A run's data file, ``<run_dir>/run.h5``: written as the run goes, readable after any crash.

Why HDF5 (and not Zarr): the labs that use exoacq analyse in MATLAB, Igor,
Origin, R, Fiji, HDFView and pandas; all of them read HDF5 natively, while
Zarr is read mostly from Python. One file per run is also easy to copy and
archive.

Layout (every dataset one-dimensional and growable, fixed-size types only):

* ``events``: uint8, the run's published documents (``run.state``,
  ``<method>.progress``, ``<method>.result``) as JSON lines. Read them with
  ``[json.loads(line) for line in bytes(f["events"][:]).decode().splitlines()]``;
* a method's tables, e.g. ``nta/tracks`` (compound rows: capture, frame,
  particle, x_px, y_px, mass); each dataset's ``units`` attribute names the
  unit of every column as ``column: unit; ...``;
* ``checkpoints``: compound rows (``time_unix_s`` and, per dataset, its row
  count) appended after every dataset was flushed. Everything up to the last
  checkpoint's counts is on disk.

The root attributes hold run_id, method, instrument, sample, created and the
exoacq version. Rows are appended (resize + write) by the daemon's main thread
only, in HDF5's single-writer/multiple-reader (SWMR) mode: after a SIGKILL or
a power loss, ``h5py.File(path, "r", libver="latest", swmr=True)`` opens the
file and every row up to the last checkpoint reads correctly. A plain open
refuses such a file ("file is already open for write"), so :func:`recover`
copies the rows up to the last checkpoint into a clean file that replaces
``run.h5`` (the original is kept as ``run.h5.interrupted``). Variable-length
strings are never stored in datasets: they are not SWMR-safe (they were
unreadable after a kill).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from exoacq import __version__
from exoacq.bus import dumps

RUN_FILE = "run.h5"
#: The damaged original of a recovered run file, kept beside it.
INTERRUPTED_SUFFIX = ".interrupted"
EVENTS = "events"
CHECKPOINTS = "checkpoints"
#: Rows per HDF5 chunk of a table; bytes per chunk of ``events``.
TABLE_CHUNK_ROWS = 4096
EVENTS_CHUNK_BYTES = 16384


@dataclass(frozen=True)
class Table:
    """A method's dataset in the run file: fixed-size columns ``(name, numpy dtype, unit)``."""

    columns: tuple[tuple[str, str, str], ...]
    description: str = ""

    @property
    def dtype(self) -> np.dtype:
        return np.dtype([(name, kind) for name, kind, _ in self.columns])

    @property
    def units(self) -> str:
        return "; ".join(f"{name}: {unit}" for name, _, unit in self.columns)

    def rows(self, rows: Any) -> np.ndarray:
        """Rows as given (a list of lists or a 2-D array, in column order, or a structured array) as
        this table's dtype."""
        if isinstance(rows, np.ndarray) and rows.ndim == 2 and not rows.dtype.names:
            if rows.shape[1] != len(self.columns):
                raise ValueError(f"rows of {rows.shape[1]} columns for a table of {len(self.columns)}")
            out = np.empty(len(rows), dtype=self.dtype)
            for i, name in enumerate(self.dtype.names):
                out[name] = rows[:, i]
            return out
        if isinstance(rows, np.ndarray) and rows.dtype.names:
            if rows.dtype.names != self.dtype.names:  # numpy would cast by position: columns relabelled
                raise ValueError(f"rows with columns {', '.join(rows.dtype.names)} for a table of "
                                 f"{', '.join(self.dtype.names)}")
            return rows.astype(self.dtype, copy=False)
        return np.array([tuple(row) for row in rows], dtype=self.dtype)


def _iso(time_unix_s: float) -> str:
    return datetime.fromtimestamp(time_unix_s, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RunFile:
    """One run's ``run.h5``, open for writing (SWMR). Every method may raise OSError (a full disk):
    the caller stops the run; what the last checkpoint covers stays readable."""

    def __init__(self, path: Path, tables: dict[str, Table], attrs: dict[str, Any]):
        self.path = Path(path)
        self.tables = dict(tables)
        # No chunk cache: a write reaches the file in the call, so a full disk raises there. With a
        # cache, h5py reports a failed write of an evicted chunk nowhere ("Exception ignored") and
        # the next checkpoint would count rows that are not on disk (measured on a full tmpfs).
        self._file = h5py.File(self.path, "w", libver="latest", rdcc_nbytes=0)
        f = self._file
        for key, value in {**attrs, "exoacq_version": __version__,
                           "created": _iso(time.time()),
                           "format": "exoacq run file (docs/protocol.md, Run files)"}.items():
            f.attrs[key] = "" if value is None else value
        events = f.create_dataset(EVENTS, shape=(0,), maxshape=(None,), dtype=np.uint8,
                                  chunks=(EVENTS_CHUNK_BYTES,))
        events.attrs["description"] = "published documents, one JSON document per line (UTF-8)"
        for name, table in self.tables.items():
            dataset = f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=table.dtype,
                                       chunks=(TABLE_CHUNK_ROWS,))
            dataset.attrs["units"] = table.units
            dataset.attrs["description"] = table.description
        self.names = [EVENTS, *self.tables]
        checkpoint_dtype = np.dtype([("time_unix_s", "f8"), *((name, "i8") for name in self.names)])
        checkpoints = f.create_dataset(CHECKPOINTS, shape=(0,), maxshape=(None,), dtype=checkpoint_dtype,
                                       chunks=(256,))
        checkpoints.attrs["description"] = ("after every dataset was flushed: the time (s since 1970, UTC) and "
                                            "each dataset's row count; rows up to these counts are on disk")
        f.swmr_mode = True  # from here on: no new datasets or attributes
        self.last_checkpoint_s: float | None = None
        #: Row counts the last checkpoint recorded.
        self.checkpointed = dict.fromkeys(self.names, 0)
        self.dirty = False

    def append(self, name: str, rows: Any) -> int:
        """Append rows to a table (its dtype); returns how many."""
        data = self.tables[name].rows(rows)
        if len(data):
            self._extend(self._file[name], data)
        return len(data)

    def append_event(self, document: dict[str, Any]) -> None:
        """One published document, as a JSON line of ``events``."""
        self._extend(self._file[EVENTS], np.frombuffer(dumps(document) + b"\n", dtype=np.uint8))

    def _extend(self, dataset: h5py.Dataset, data: np.ndarray) -> None:
        start = dataset.shape[0]
        dataset.resize((start + len(data),))
        dataset[start:] = data
        self.dirty = True

    def counts(self) -> dict[str, int]:
        return {name: int(self._file[name].shape[0]) for name in self.names}

    def checkpoint(self) -> None:
        """Flush every dataset, then record their row counts (and flush that)."""
        for name in self.names:
            self._file[name].flush()
        now = time.time()
        checkpoints = self._file[CHECKPOINTS]
        counts = self.counts()
        row = np.array([(now, *counts.values())], dtype=checkpoints.dtype)
        self._extend(checkpoints, row)
        checkpoints.flush()
        self.last_checkpoint_s, self.checkpointed, self.dirty = now, counts, False

    def close(self) -> dict[str, Any]:
        """A final checkpoint and close; returns what the file holds (:func:`describe`'s form)."""
        try:
            self.checkpoint()
            kept = {"path": str(self.path), "state": "complete", "rows": self.counts(),
                    "last_checkpoint": _iso(self.last_checkpoint_s)}
        finally:
            self.abandon()
        return kept

    def abandon(self) -> None:
        """Close without a checkpoint (after a write error): each dataset cut back to the last
        checkpoint's rows (rows after it may not have been written); errors closing are ignored."""
        try:
            for name, rows in self.checkpointed.items():
                self._file[name].resize((rows,))
        except Exception:  # noqa: BLE001 - readers go by the checkpoints anyway
            pass
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - a full disk: the file stays as the last checkpoint left it
            pass


def describe(path: Path) -> dict[str, Any]:
    """What a closed run file holds: path, rows per dataset (its last checkpoint) and that checkpoint's time."""
    with h5py.File(path, "r") as f:
        return _summary(path, f, "complete")


def _summary(path: Path, f: h5py.File, state: str) -> dict[str, Any]:
    checkpoints = f[CHECKPOINTS]
    last = checkpoints[checkpoints.shape[0] - 1] if checkpoints.shape[0] else None
    names = [n for n in checkpoints.dtype.names if n != "time_unix_s"]
    return {"path": str(path), "state": state,
            "rows": {n: int(last[n]) if last is not None else 0 for n in names},
            "last_checkpoint": _iso(float(last["time_unix_s"])) if last is not None else None}


def needs_recovery(path: Path) -> bool:
    """True when ``path`` exists and a plain open refuses it (left open for writing by a crash)."""
    if not path.exists():
        return False
    try:
        h5py.File(path, "r").close()
    except OSError:
        return True
    return False


def recover(path: Path) -> dict[str, Any]:
    """Make a run file left open by a crash readable by any tool: rows up to its last checkpoint are
    copied into a clean file that atomically replaces ``path``; the original is kept as
    ``path.interrupted``. Returns what was kept (``state``: ``recovered``, or ``unreadable`` when not
    even SWMR can open it, e.g. killed while it was being created). Raises OSError (e.g. a full disk):
    ``path`` is then left as it was."""
    path = Path(path)
    original = path.with_name(path.name + INTERRUPTED_SUFFIX)
    temporary = path.with_name(path.name + ".recovering")
    try:
        source = h5py.File(path, "r", libver="latest", swmr=True)
    except OSError as exc:
        os.replace(path, original)
        return {"path": str(path), "state": "unreadable", "rows": {}, "last_checkpoint": None,
                "original": str(original), "error": str(exc).splitlines()[0]}
    try:
        with source:
            kept = _summary(path, source, "recovered")
            try:
                with h5py.File(temporary, "w", libver="latest") as clean:
                    clean.attrs.update(dict(source.attrs))
                    clean.attrs["recovered"] = (f"copied from {original.name} up to its last checkpoint "
                                                f"({kept['last_checkpoint'] or 'none: no rows kept'})")
                    for name in kept["rows"]:
                        _copy(source[name], clean, name, kept["rows"][name])
                    checkpoints = source[CHECKPOINTS]
                    _copy(checkpoints, clean, CHECKPOINTS, checkpoints.shape[0])
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        os.replace(path, original)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    return {**kept, "original": str(original)}


def _copy(source: h5py.Dataset, clean: h5py.File, name: str, rows: int) -> None:
    rows = min(rows, source.shape[0])
    target = clean.create_dataset(name, data=source[:rows], maxshape=(None,), chunks=source.chunks)
    target.attrs.update(dict(source.attrs))


def read_events(f: h5py.File) -> list[dict[str, Any]]:
    """The documents stored in a run file's ``events``."""
    return [json.loads(line) for line in bytes(f[EVENTS][:]).decode("utf-8").splitlines()]
