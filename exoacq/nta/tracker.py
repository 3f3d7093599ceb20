"""The NTA tracking core's linker: its own process, fed feature tables by locate workers.

It binds one PULL socket (``--bind``; a random loopback port by default) where
the locate workers (:mod:`exoacq.nta.worker`) PUSH ``features`` and the daemon
PUSHes ``run.begin`` (run_id, tracking parameters, output directory) and
``run.end`` (run_id, ``frames_sent``, measured temperature). Workers finish
frames out of order; the linker puts them back in sequence (``seq``) before
linking, and finishes a run when all ``frames_sent`` have arrived. It PUSHes
JSON events to the daemon: ``bound`` (the ``features`` endpoint, as soon as it is bound: the daemon
starts the workers then, and they start beside the linker's own imports and warm-up), ``ready``,
``worker`` (a worker said hello), ``progress`` (every 0.1 s while frames
arrive), ``live`` (at most 15 times a second: the newest linked frame's features and the live tracks'
tails, for viewers), ``rows`` (every ROWS_INTERVAL_S: the positions linked since the last
``rows``, for the run's run.h5), ``result`` (after writing the tracks files) and ``error``.

Supervision (exoacq.nta.frame_order): the daemon sends ``worker.lost`` (pid)
when a local worker died, and ``run.begin`` with ``resumed`` to a restarted
linker for a capture already under way; frames that can no longer come are
counted (``frames_lost`` in ``progress`` and ``result``), not waited for, and
``frames_processed`` counts only the frames actually linked.

    python -m exoacq.nta.tracker --events ADDR [--bind tcp://0.0.0.0:5561]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from exoacq.bus import dumps, loads
from exoacq.nta.frame_order import FrameOrder
from exoacq.physics import temperature_drift_warning, water_viscosity_iapws_mpa_s

if TYPE_CHECKING:
    from exoacq.nta.analysis import StreamingTracker

# The analysis (exoacq.nta.analysis, .parameters: pandas, numba, trackpy, scipy; ~1 s of CPU) is imported where it
# is used, not here: the linker binds its features socket and says so (``bound``) first, so that the daemon's
# workers start while it imports.

PROGRESS_INTERVAL_S = 0.1
#: Features of a run whose run.begin has not arrived yet are kept for at most this many frames.
MAX_EARLY_FRAMES = 1000
#: After a worker died (or a resumed capture), a capture whose run.end came is finished once no
#: features arrived for this long: whatever has not come by then is lost (counted, not waited for).
QUIET_FINISH_S = 1.0
#: Newly linked positions go to the daemon (``rows`` events, for the run's run.h5) this often.
ROWS_INTERVAL_S = 1.0
#: The newest linked frame's features and the live tracks' tails go to the daemon (``live`` events, for
#: viewers: the frames socket's ``features`` topic) at most this often, over all the linker's runs.
LIVE_INTERVAL_S = 1.0 / 15.0
#: How a ``live`` event starts (compact JSON, ``event`` first), so that the daemon's main thread recognises it
#: and publishes it without parsing and re-encoding its ~16 kB (exoacq.nta.service).
LIVE_PREFIX = b'{"event":"live",'
#: How a ``rows`` event starts: then one line of JSON (run_id, dataset, columns) and the rows as
#: little-endian float64, row by row (encode_rows); JSON lists of ~18,000 numbers a second held the
#: daemon's main thread (and its GIL, which the camera's thread needs) ~45 ms to parse on a slow core.
ROWS_PREFIX = b"rows\n"


def encode_rows(run_id: str, dataset: str, rows: np.ndarray) -> bytes:
    """A ``rows`` event of a 2-D array (one row per position, the table's columns in order)."""
    rows = np.ascontiguousarray(rows, dtype="<f8")
    head = json.dumps({"event": "rows", "run_id": run_id, "dataset": dataset, "columns": int(rows.shape[1])})
    return ROWS_PREFIX + head.encode() + b"\n" + rows.tobytes()


def decode_rows(message: bytes) -> dict[str, Any]:
    """The event of :func:`encode_rows`, its ``rows`` a (n, columns) float64 array; ValueError if malformed."""
    head, newline, data = message[len(ROWS_PREFIX):].partition(b"\n")
    event = json.loads(head) if newline else None
    if not isinstance(event, dict) or not isinstance(event.get("columns"), int) or event["columns"] < 1:
        raise ValueError("a rows event without its header")
    width = event["columns"] * 8
    if len(data) % width:
        raise ValueError(f"a rows event of {len(data)} bytes: not whole rows of {event['columns']} float64")
    event["rows"] = np.frombuffer(data, dtype="<f8").reshape(-1, event["columns"])
    return event


#: The ``nta/tracks`` table of run.h5 (exoacq.durable): (column, numpy dtype, unit); tracks.csv's
#: columns plus the capture (1, 2, ...). Positions in px from the image's top-left corner.
TRACK_ROWS_COLUMNS = (("capture", "i4", "1"), ("frame", "i8", "frame number"), ("particle", "i8", "id"),
                      ("x_px", "f8", "px"), ("y_px", "f8", "px"), ("mass", "f8", "counts (integrated brightness)"))


def write_tracks(tracker: StreamingTracker, output_dir: Path) -> dict[str, str]:
    output_dir.mkdir(parents=True, exist_ok=True)
    positions = output_dir / "tracks.csv"
    per_track = output_dir / "track_summary.csv"
    tracker.positions_table().to_csv(positions, index=False, float_format="%.4f")
    tracker.tracks_table().to_csv(per_track, index=False, float_format="%.6g")
    return {"tracks": str(positions), "track_summary": str(per_track)}


@dataclasses.dataclass
class _Run:
    run_id: str
    tracker: StreamingTracker
    output_dir: Path
    #: Feature tables back in seq order; which frames never come (exoacq.nta.frame_order).
    order: FrameOrder = dataclasses.field(default_factory=FrameOrder)
    frames_sent: int | None = None
    last_features: float = dataclasses.field(default_factory=time.monotonic)
    temperature_c: float | None = None
    #: The readings at the capture's start and end (C), when the acquisition sent them.
    temperature_span_c: tuple[float, float] | None = None
    last_frame_timestamp: float | None = None
    #: Frames whose linked positions were sent as ``rows`` events; when they last were.
    rows_sent_frames: int = 0
    last_rows: float = dataclasses.field(default_factory=time.monotonic)
    #: The newest linked frame: (frame_number, timestamp, feature columns), for ``live`` events.
    last_linked: tuple | None = None


class Linker:
    def __init__(self, events_address: str, bind: str = "tcp://127.0.0.1:*", context: zmq.Context | None = None,
                 keys_dir: str | None = None):
        self.ctx = context or zmq.Context.instance()
        #: With the daemon's CurveZMQ keys (``--keys-dir``, exoacq.security): the inbox is a CURVE server for
        #: the same clients (and the daemon's own key); the events go to the daemon with its own key.
        self.security = None
        if keys_dir is not None:
            from exoacq.security import DaemonSecurity
            self.security = DaemonSecurity.for_process(keys_dir)
            self.security.start(self.ctx)
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        # Feature tables waiting to be linked: past this mark the workers wait, so frames wait in the
        # daemon's frame queue, where one that finds it full is dropped and counted (never lost unseen).
        self.inbox.setsockopt(zmq.RCVHWM, 1000)
        if self.security is not None:
            self.security.prepare(self.inbox, "tracking features")
        self.inbox.bind(bind)
        self.endpoint = self.inbox.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.events = self.ctx.socket(zmq.PUSH)
        self.events.setsockopt(zmq.LINGER, 2000)
        self.events.setsockopt(zmq.SNDHWM, 1000)  # events for the daemon (small; it drains them at once)
        if self.security is not None:
            self.security.internal_keys().apply(self.events)
        self.events.connect(events_address)
        #: Runs (captures) being linked: the next one may begin before the last features of
        #: the previous one have come back from the workers.
        self.runs: dict[str, _Run] = {}
        self.early: dict[str, list[list]] = {}
        self.last_progress = 0.0
        self.last_live = 0.0
        #: Locate workers that said hello and have not been reported dead (pids).
        self.workers: set[int] = set()

    def send(self, event: str, **payload: Any) -> None:
        self.events.send(dumps({"event": event, **payload}))

    def serve(self, parent_pid: int | None = None) -> None:
        stopping: list[bool] = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        self.send("ready", pid=os.getpid(), features=self.endpoint)
        while not stopping:
            if not self.inbox.poll(250):
                if parent_pid is not None and os.getppid() != parent_pid:
                    return
                self.finish_quiet()
                continue
            self.finish_quiet()
            parts = self.inbox.recv_multipart(copy=False)
            topic = parts[0].bytes
            if topic == b"shutdown":
                return
            try:
                self.dispatch(topic, parts)
            except Exception as exc:  # report, forget the runs, keep serving
                for run_id in list(self.runs) or [None]:
                    self.send("error", run_id=run_id, message=f"{type(exc).__name__}: {exc}",
                              detail=traceback.format_exc(limit=5))
                self.runs.clear()

    def dispatch(self, topic: bytes, parts: list) -> None:
        if topic == b"features":
            header = loads(parts[1].bytes)
            data = np.frombuffer(parts[2].buffer, dtype=np.float64).reshape(header["n"], len(header["columns"]))
            self.on_features(header, {c: data[:, i] for i, c in enumerate(header["columns"])})
        elif topic == b"run.begin":
            self.on_begin(loads(parts[1].bytes))
        elif topic == b"run.end":
            self.on_end(loads(parts[1].bytes))
        elif topic == b"hello":
            hello = loads(parts[1].bytes)
            self.workers.add(hello.get("pid"))
            self.send("worker", **hello)
        elif topic == b"worker.lost":  # the daemon restarted a dead worker: its queued frames are gone
            self.on_worker_lost(loads(parts[1].bytes))

    def on_begin(self, message: dict[str, Any]) -> None:
        from exoacq.nta.analysis import StreamingTracker
        from exoacq.nta.parameters import TrackingParameters

        params = TrackingParameters(**message["params"])
        run = _Run(message["run_id"], StreamingTracker(params), Path(message["output_dir"]),
                   order=FrameOrder(resumed=bool(message.get("resumed"))))
        self.runs[run.run_id] = run
        self.last_progress = time.monotonic()
        for header, columns in self.early.pop(run.run_id, []):
            self.on_features(header, columns)

    def on_features(self, header: dict[str, Any], columns: dict[str, np.ndarray]) -> None:
        run = self.runs.get(header["run_id"])
        if run is None:
            if len(self.early) > 4:  # features of runs that never began: forget the oldest
                self.early.pop(next(iter(self.early)))
            early = self.early.setdefault(header["run_id"], [])
            if len(early) < MAX_EARLY_FRAMES:  # run.begin may arrive after a fast worker's first features
                early.append([header, {k: v.copy() for k, v in columns.items()}])
            return
        run.last_features = time.monotonic()
        item = (header["frame_number"], header.get("timestamp"), columns)
        self.link(run, run.order.add(header["seq"], header.get("worker"), item, self.workers))
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_INTERVAL_S:
            self.last_progress = now
            summary = run.tracker.summary(running=True)
            self.send("progress", run_id=run.run_id, frames_processed=run.order.tracked,
                      frames_lost=run.order.lost, last_frame_timestamp=run.last_frame_timestamp, summary=summary)
        if now - self.last_live >= LIVE_INTERVAL_S and run.last_linked is not None:
            self.last_live = now
            self.send_live(run)
        if now - run.last_rows >= ROWS_INTERVAL_S:
            self.send_rows(run)
        self.maybe_finish(run)

    def send_live(self, run: _Run) -> None:
        """The newest linked frame's features at the threshold (x, y, mass; 2 decimals) and the tails of the tracks
        in it (StreamingTracker.tails), for viewers; the daemon publishes them on its frames socket."""
        from exoacq.nta.parameters import at_threshold

        frame_number, timestamp, cols = run.last_linked
        run.last_linked = None  # each frame once
        run_id, _, capture = run.run_id.partition("/")
        seen = at_threshold(cols["mass"], run.tracker.params.minmass)
        features = {k: np.round(np.asarray(cols[k], float)[seen], 2).tolist() for k in ("x", "y", "mass")}
        # LIVE_PREFIX, then the rest of the viewers' document: the daemon forwards it without parsing it
        try:
            body = json.dumps({"run_id": run_id, "capture": int(capture or 1), "frame_number": int(frame_number),
                               "timestamp": timestamp, "features": features,
                               "tails": run.tracker.tails(int(frame_number)), "minmass": run.tracker.params.minmass},
                              separators=(",", ":"), allow_nan=False)
        except ValueError:  # a NaN (JSON has none): viewers miss this frame, the run goes on
            return
        self.events.send(LIVE_PREFIX + body[1:].encode())

    def send_rows(self, run: _Run) -> None:
        """The positions linked since the last ``rows`` event (final rows), in TRACK_ROWS_COLUMNS
        order, rounded as tracks.csv writes them (:func:`encode_rows`)."""
        run.last_rows = time.monotonic()
        data, run.rows_sent_frames = run.tracker.positions_since(run.rows_sent_frames)
        if len(data):
            capture = int(run.run_id.partition("/")[2] or 1)
            rows = np.column_stack([np.full(len(data), capture), np.round(data, 4)])
            rows = rows[np.isfinite(rows).all(axis=1)]  # none expected: located features
            self.events.send(encode_rows(run.run_id, "nta/tracks", rows))

    @staticmethod
    def link(run: _Run, items) -> None:
        for frame_number, timestamp, cols in items:
            run.tracker.add_frame(frame_number, cols)
            run.last_frame_timestamp = timestamp
            run.last_linked = (frame_number, timestamp, cols)

    def on_worker_lost(self, message: dict[str, Any]) -> None:
        """A worker died: the frames queued for it will not come; every capture now looks for losses."""
        self.workers.discard(message.get("pid"))
        for run in list(self.runs.values()):
            run.order.expect_losses = True
            self.link(run, run.order.settle(self.workers))
            self.maybe_finish(run)

    def finish_quiet(self) -> None:
        """Captures that expect losses, whose run.end came, and nothing arrived for QUIET_FINISH_S: finish."""
        now = time.monotonic()
        for run in list(self.runs.values()):
            if run.order.expect_losses and run.frames_sent is not None and now - run.last_features >= QUIET_FINISH_S:
                self.link(run, run.order.finish(run.frames_sent))
                self.maybe_finish(run)

    def on_end(self, message: dict[str, Any]) -> None:
        run = self.runs.get(message["run_id"])
        if run is None:
            return
        run.frames_sent = int(message["frames_sent"])
        run.temperature_c = message.get("temperature_c")
        span = message.get("temperature_span_c")
        run.temperature_span_c = tuple(span) if span else None
        self.maybe_finish(run)

    def maybe_finish(self, run: _Run) -> None:
        if not run.order.complete(run.frames_sent):
            return
        if run.temperature_c is not None:  # size at the mean of the start and end readings
            t = run.temperature_c
            run.tracker.params = dataclasses.replace(run.tracker.params, temperature_c=t,
                                                     viscosity_mpa_s=water_viscosity_iapws_mpa_s(t))
        summary = run.tracker.summary()  # first: it links held frames and settles the minimum track length
        drift = temperature_drift_warning(*run.temperature_span_c, "capture") if run.temperature_span_c else None
        if drift:
            summary["warnings"].append(drift)
        self.send_rows(run)  # the last positions, before the result
        try:
            files = write_tracks(run.tracker, run.output_dir)
        except OSError as exc:  # a full disk: the run fails with the reason (its rows are in run.h5)
            self.send("error", run_id=run.run_id, message=f"cannot write the tracks to {run.output_dir}: "
                                                          f"{exc.strerror or exc}")
            del self.runs[run.run_id]
            return
        self.send("result", run_id=run.run_id, frames_processed=run.order.tracked, frames_lost=run.order.lost,
                  tracking=run.tracker.params.to_dict(), summary=summary, files=files)
        del self.runs[run.run_id]

    def close(self) -> None:
        self.inbox.close(linger=0)
        self.events.close()
        if self.security is not None:
            self.security.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exoacq.nta.tracker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", required=True, help="the daemon's event endpoint (PULL) to connect to")
    parser.add_argument("--bind", default="tcp://127.0.0.1:*", help="feature endpoint to bind (default %(default)s)")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    parser.add_argument("--keys-dir", default=None, help="the daemon's CurveZMQ keys directory (exoacq.security)")
    args = parser.parse_args(argv)
    linker = Linker(args.events, args.bind, keys_dir=args.keys_dir)
    linker.send("bound", pid=os.getpid(), features=linker.endpoint)  # the daemon starts the workers now
    try:
        from exoacq.nta.analysis import warm_up_linker

        warm_up_linker()  # before "ready": trackpy's numba subnet solver compiled now, not at a run's first crowded frame
        linker.serve(args.parent_pid)
    except KeyboardInterrupt:
        pass
    finally:
        linker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
