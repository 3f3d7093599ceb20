"""A flow run's events in its ``run.h5``: the ``flow/events`` table, declared per instrument and
appended as the events are acquired (docs/protocol.md, Run files).

Columns: the pulse detector's (:mod:`exoacq.flow.pulses`), named as in the run's ``events.fcs``:
``Time`` (s since the digitizer started, float64), per digitizer channel ``<ch>-H`` (counts above
the channel's baseline) and ``<ch>-A`` (counts x us), the trigger channel's ``<ch>-W`` (us), all
float32 as in the FCS file, then the ``Coincident`` and ``Saturated`` flags (uint8, 0 or 1). They
depend on the instrument (its digitizer's channels, its trigger channel), hence
``FlowMethod.run_tables_for(instrument)``. Calibrated parameters (``Diameter``, MESF) are computed
at the end of the run: they are in ``events.fcs`` only.

CPU: events leave the acquisition thread as numpy rows through a queue (no JSON); a small
``flow_rows`` event, at most every RECORD_INTERVAL_S, has the main thread append everything queued
with one HDF5 write per run. The final ``flow`` progress event of a run drains the queue too, so
every event is in the table before the run's state changes (the daemon's events keep their order).
"""
from __future__ import annotations

import logging
import queue
import time
from typing import Any, Callable

import numpy as np
import pandas as pd

from exoacq.errors import ExoacqError
from exoacq.runfile import Table

log = logging.getLogger("exoacq.flow")

DATASET = "flow/events"
#: The main thread is asked to write queued events at most this often (and once at the end of a run).
RECORD_INTERVAL_S = 0.25
#: The event asking the main thread to write what is queued.
WAKE_EVENT = "flow_rows"
FLAGS = ("Coincident", "Saturated")
#: Suffix of a detector parameter -> its unit (exoacq.flow.pulses).
UNITS = {"H": "counts", "A": "counts*us", "W": "us"}
DESCRIPTION = ("every event (pulse) as acquired, the rows of events.fcs in order: Time in s since the digitizer "
               "started; <channel>-H the pulse height in digitizer counts above the channel's baseline, <channel>-A "
               "its area in counts x us, <trigger>-W its width in us (uncompensated; volts per count: events.fcs "
               "keywords EXOACQ_VOLTS_PER_COUNT_<channel>); Coincident, Saturated: 1 if so")


def events_table(columns: list[str]) -> Table:
    """The ``flow/events`` table of the pulse detector's ``columns`` (units per column)."""
    typed = []
    for name in columns:
        if name == "Time":
            typed.append((name, "f8", "s"))
        elif name in FLAGS:
            typed.append((name, "u1", "1"))
        else:
            typed.append((name, "f4", UNITS.get(name.rpartition("-")[2], "counts")))
    return Table(tuple(typed), DESCRIPTION)


def events_tables(instrument: Any) -> dict[str, Table]:
    """``{"flow/events": table}`` for a flow instrument with a digitizer; ``{}`` without one (a
    cytometer's export folder makes no runs) or when its digitizer is not connected or its trigger
    channel is not one of the digitizer's (the run then fails at setup, saying so)."""
    from exoacq.flow.pulses import PulseDetector
    from exoacq.flow.recording import trigger_from_settings

    slot = instrument.slots.get("digitizer")
    digitizer = slot.device if slot is not None else None
    if digitizer is None:
        return {}
    try:  # the detector is the one place that orders the columns
        detector = PulseDetector(list(digitizer.channels), 1.0, trigger_from_settings(instrument.config.options))
    except ExoacqError:
        return {}
    return {DATASET: events_table(detector.columns)}


def event_rows(table: Table, events: pd.DataFrame) -> np.ndarray:
    """A pulse detector's events as rows of ``table`` (by column name; a copy the caller owns)."""
    rows = np.empty(len(events), dtype=table.dtype)
    for name in table.dtype.names:
        rows[name] = events[name].to_numpy()
    return rows


class EventsToRunFile:
    """A flow service's events on their way from the acquisition thread to the runs' ``run.h5``."""

    def __init__(self, instrument: str, emit: Callable[[dict[str, Any]], None],
                 record: Callable[[str, str, Any], bool]):
        self.instrument = instrument
        self._emit, self._record = emit, record
        self._queue: queue.SimpleQueue[tuple[str, np.ndarray]] = queue.SimpleQueue()
        self._last_wake_s = 0.0
        #: Runs whose file has no flow/events table (logged once each).
        self._without_table: set[str] = set()

    # -- the acquisition thread -------------------------------------------------------------
    def sink(self, run_id: str) -> Callable[[pd.DataFrame], None]:
        """For ``Recorder(on_events=...)``: each table of new events is queued for ``run_id``'s file."""
        tables: list[Table] = []

        def add(events: pd.DataFrame) -> None:
            if not tables:
                tables.append(events_table([str(c) for c in events.columns]))
            self._queue.put((run_id, event_rows(tables[0], events)))
            if time.monotonic() - self._last_wake_s >= RECORD_INTERVAL_S:
                self.wake(run_id)

        return add

    def wake(self, run_id: str) -> None:
        """Have the main thread write what is queued (at the end of a run, whatever happened)."""
        self._last_wake_s = time.monotonic()
        self._emit({"event": WAKE_EVENT, "run_id": run_id, "instrument": self.instrument})

    # -- the main thread --------------------------------------------------------------------
    def drain(self) -> int:
        """Append every queued event to its run's ``flow/events``: one write per run; returns the rows."""
        by_run: dict[str, list[np.ndarray]] = {}
        while True:
            try:
                run_id, rows = self._queue.get_nowait()
            except queue.Empty:
                break
            by_run.setdefault(run_id, []).append(rows)
        written = 0
        for run_id, parts in by_run.items():
            rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
            try:
                if self._record(run_id, DATASET, rows):  # False: the run's file is closed or stopped
                    written += len(rows)
            except ValueError as exc:  # no such table: the digitizer was not connected when the run began
                if run_id not in self._without_table:
                    self._without_table.add(run_id)
                    log.warning("run %s: events not written to run.h5 (events.fcs has them): %s", run_id, exc)
        return written
