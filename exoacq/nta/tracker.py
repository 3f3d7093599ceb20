"""The NTA tracking core's linker: its own process, fed feature tables by locate workers.

It binds one PULL socket (``--bind``; a random loopback port by default) where
the locate workers (:mod:`exoacq.nta.worker`) PUSH ``features`` and the daemon
PUSHes ``run.begin`` (run_id, tracking parameters, output directory) and
``run.end`` (run_id, ``frames_sent``, measured temperature). Workers finish
frames out of order; the linker puts them back in sequence (``seq``) before
linking, and finishes a run when all ``frames_sent`` have arrived. It PUSHes
JSON events to the daemon: ``ready`` (with the bound ``features`` endpoint),
``worker`` (a worker said hello), ``progress`` (every 0.1 s while frames
arrive), ``result`` (after writing the tracks files) and ``error``.

    python -m exoacq.nta.tracker --events ADDR [--bind tcp://0.0.0.0:5561]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from exoacq.bus import dumps, loads
from exoacq.nta.analysis import StreamingTracker, TrackingParameters
from exoacq.physics import water_viscosity_iapws_mpa_s

PROGRESS_INTERVAL_S = 0.1
#: Features of a run whose run.begin has not arrived yet are kept for at most this many frames.
MAX_EARLY_FRAMES = 1000


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
    next_seq: int = 0
    pending: dict[int, tuple[int, float | None, dict[str, np.ndarray]]] = dataclasses.field(default_factory=dict)
    frames_sent: int | None = None
    temperature_c: float | None = None
    last_frame_timestamp: float | None = None


class Linker:
    def __init__(self, events_address: str, bind: str = "tcp://127.0.0.1:*", context: zmq.Context | None = None):
        self.ctx = context or zmq.Context.instance()
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.bind(bind)
        self.endpoint = self.inbox.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.events = self.ctx.socket(zmq.PUSH)
        self.events.setsockopt(zmq.LINGER, 2000)
        self.events.connect(events_address)
        #: Runs (captures) being linked: the next one may begin before the last features of
        #: the previous one have come back from the workers.
        self.runs: dict[str, _Run] = {}
        self.early: dict[str, list[list]] = {}
        self.last_progress = 0.0

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
                continue
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
            self.send("worker", **loads(parts[1].bytes))

    def on_begin(self, message: dict[str, Any]) -> None:
        params = TrackingParameters(**message["params"])
        run = _Run(message["run_id"], StreamingTracker(params), Path(message["output_dir"]))
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
        run.pending[header["seq"]] = (header["frame_number"], header.get("timestamp"), columns)
        while run.next_seq in run.pending:
            frame_number, timestamp, cols = run.pending.pop(run.next_seq)
            run.tracker.add_frame(frame_number, cols)
            run.next_seq += 1
            run.last_frame_timestamp = timestamp
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_INTERVAL_S:
            self.last_progress = now
            summary = run.tracker.summary(running=True)
            self.send("progress", run_id=run.run_id, frames_processed=run.next_seq,
                      last_frame_timestamp=run.last_frame_timestamp, summary=summary)
        self.maybe_finish(run)

    def on_end(self, message: dict[str, Any]) -> None:
        run = self.runs.get(message["run_id"])
        if run is None:
            return
        run.frames_sent = int(message["frames_sent"])
        run.temperature_c = message.get("temperature_c")
        self.maybe_finish(run)

    def maybe_finish(self, run: _Run) -> None:
        if run.frames_sent is None or run.next_seq < run.frames_sent:
            return
        if run.temperature_c is not None:  # size at the mean of the start and end readings
            t = run.temperature_c
            run.tracker.params = dataclasses.replace(run.tracker.params, temperature_c=t,
                                                     viscosity_mpa_s=water_viscosity_iapws_mpa_s(t))
        summary = run.tracker.summary()  # first: it links held frames and settles the minimum track length
        files = write_tracks(run.tracker, run.output_dir)
        self.send("result", run_id=run.run_id, frames_processed=run.next_seq,
                  tracking=run.tracker.params.to_dict(), summary=summary, files=files)
        del self.runs[run.run_id]

    def close(self) -> None:
        self.inbox.close(linger=0)
        self.events.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exoacq.nta.tracker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", required=True, help="the daemon's event endpoint (PULL) to connect to")
    parser.add_argument("--bind", default="tcp://127.0.0.1:*", help="feature endpoint to bind (default %(default)s)")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    linker = Linker(args.events, args.bind)
    try:
        linker.serve(args.parent_pid)
    except KeyboardInterrupt:
        pass
    finally:
        linker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
