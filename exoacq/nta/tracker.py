"""The NTA tracking core: its own process, fed frames over ZeroMQ.

It PULLs, in order, ``run.begin`` (JSON: run_id, tracking parameters,
output directory), then ``frame`` messages (topic, JSON header, raw pixels)
and finally ``run.end``; it PUSHes JSON events back to the daemon:
``ready`` once warmed up, ``progress`` about twice a second, ``result`` at the
end of a run (after writing the tracks files) and ``error``. Run as
``python -m exoacq.nta.tracker --frames ADDR --events ADDR``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from exoacq.bus import FRAME_TOPIC, decode_frame, dumps, loads
from exoacq.nta.analysis import StreamingTracker, TrackingParameters, locate_features

PROGRESS_INTERVAL_S = 0.5


def warm_up() -> None:
    """Compile trackpy's numba kernels before the first run needs them."""
    rng = np.random.default_rng(0)
    frame = rng.poisson(20, (64, 64)).astype(np.uint16)
    frame[30:33, 30:33] += 500
    locate_features(frame, TrackingParameters(25, 10, 0.1, 25, 0.89))


def write_tracks(tracker: StreamingTracker, output_dir: Path) -> dict[str, str]:
    output_dir.mkdir(parents=True, exist_ok=True)
    positions = output_dir / "tracks.csv"
    per_track = output_dir / "track_summary.csv"
    tracker.positions_table().to_csv(positions, index=False, float_format="%.4f")
    tracker.tracks_table().to_csv(per_track, index=False, float_format="%.6g")
    return {"tracks": str(positions), "track_summary": str(per_track)}


class TrackingCore:
    def __init__(self, frames_address: str, events_address: str, context: zmq.Context | None = None):
        self.ctx = context or zmq.Context.instance()
        self.frames = self.ctx.socket(zmq.PULL)
        self.frames.setsockopt(zmq.RCVHWM, 4)
        self.frames.setsockopt(zmq.LINGER, 0)
        self.frames.connect(frames_address)
        self.events = self.ctx.socket(zmq.PUSH)
        self.events.setsockopt(zmq.LINGER, 2000)
        self.events.connect(events_address)
        self.run_id: str | None = None
        self.output_dir: Path | None = None
        self.tracker: StreamingTracker | None = None
        self.last_progress = 0.0
        self.last_frame_timestamp: float | None = None

    def send(self, event: str, **payload: Any) -> None:
        self.events.send(dumps({"event": event, **payload}))

    def serve(self, parent_pid: int | None = None) -> None:
        warm_up()
        self.send("ready", pid=os.getpid())
        while True:
            if not self.frames.poll(500):
                if parent_pid is not None and os.getppid() != parent_pid:
                    return  # the daemon is gone
                continue
            parts = self.frames.recv_multipart(copy=False)
            topic = parts[0].bytes
            try:
                if topic == FRAME_TOPIC:
                    self.on_frame(parts)
                elif topic == b"run.begin":
                    self.on_begin(loads(parts[1].bytes))
                elif topic == b"run.end":
                    self.on_end(loads(parts[1].bytes))
                elif topic == b"shutdown":
                    return
            except Exception as exc:  # report, forget the run, keep serving
                self.send("error", run_id=self.run_id, message=f"{type(exc).__name__}: {exc}",
                          detail=traceback.format_exc(limit=5))
                self.tracker = None
                self.run_id = None

    def on_begin(self, message: dict[str, Any]) -> None:
        self.run_id = message["run_id"]
        self.output_dir = Path(message["output_dir"])
        self.tracker = StreamingTracker(TrackingParameters(**message["params"]))
        self.last_progress = time.monotonic()
        self.last_frame_timestamp = None

    def on_frame(self, parts: list) -> None:
        header, frame = decode_frame(parts)
        if self.tracker is None or header.get("run_id") != self.run_id:
            return  # a frame of an abandoned run
        self.tracker.add_frame(int(header["frame_number"]), locate_features(frame, self.tracker.params))
        self.last_frame_timestamp = header.get("timestamp")
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_INTERVAL_S:
            self.last_progress = now
            self.send_progress()

    def send_progress(self) -> None:
        summary = self.tracker.summary()
        summary.pop("histogram")
        self.send("progress", run_id=self.run_id, frames_processed=len(self.tracker.features_per_frame),
                  last_frame_timestamp=self.last_frame_timestamp, summary=summary)

    def on_end(self, message: dict[str, Any]) -> None:
        if self.tracker is None or message.get("run_id") != self.run_id:
            return
        files = write_tracks(self.tracker, self.output_dir)
        self.send("result", run_id=self.run_id, frames_processed=len(self.tracker.features_per_frame),
                  summary=self.tracker.summary(), files=files)
        self.tracker = None
        self.run_id = None

    def close(self) -> None:
        self.frames.close(linger=0)
        self.events.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exoacq.nta.tracker", description=__doc__)
    parser.add_argument("--frames", required=True, help="address of the daemon's frame PUSH socket")
    parser.add_argument("--events", required=True, help="address of the daemon's event PULL socket")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    core = TrackingCore(args.frames, args.events)
    try:
        core.serve(args.parent_pid)
    except KeyboardInterrupt:
        pass
    finally:
        core.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
