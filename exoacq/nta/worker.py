"""A locate worker: frames in, feature tables out. Stateless; run as many as there are cores.

PULLs frame messages from the daemon (topic, JSON header, pixels: see
docs/protocol.md; the header carries ``seq``, the run's frame sequence number,
and ``locate``, the detection parameters) and PUSHes to the linker
``[b"features", JSON header, float64 buffer]`` with the header's run_id, seq,
frame_number and timestamp, the ``columns`` and the feature count ``n``.
Workers may run on other hosts: they only connect.

    python -m exoacq.nta.worker --frames tcp://daemon:5560 --features tcp://daemon:5561
    # a daemon with CurveZMQ keys (docs/protocol.md, Security): an authorised operator key
    python -m exoacq.nta.worker ... --key alice.key_secret --server-key server.key
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

import numpy as np
import zmq

from exoacq.bus import FRAME_TOPIC, connect, decode_frame, dumps
from exoacq.errors import ExoacqError
from exoacq.nta import DETECTORS
from exoacq.nta.parameters import locate_features, warm_up_detectors
from exoacq.nta.worker_options import add_worker_options, detectors_to_warm

#: Feature columns sent to the linker (trackpy names; positions in pixels).
COLUMNS = ("y", "x", "mass", "size", "signal")


def serve(frames_address: str, features_address: str, parent_pid: int | None = None, keys=None,
          detectors: tuple[str, ...] = DETECTORS) -> None:
    """``keys``: an :class:`exoacq.security.ClientKeys` when the daemon uses CurveZMQ keys. ``detectors``: the
    ones compiled before the worker says hello (a frame that asks for another is served too, the first one
    after compiling it)."""
    ctx = zmq.Context()
    frames = ctx.socket(zmq.PULL)
    frames.setsockopt(zmq.RCVHWM, 2)  # a worker holds few frames: the others get the rest
    frames.setsockopt(zmq.LINGER, 0)
    features = ctx.socket(zmq.PUSH)
    features.setsockopt(zmq.LINGER, 1000)
    features.setsockopt(zmq.SNDHWM, 100)  # a slow linker makes this worker wait (see exoacq.nta.tracker)
    if keys is not None:
        keys.apply(frames)
        keys.apply(features)
    try:
        connect(frames, frames_address, "--frames")
        connect(features, features_address, "--features")
    except ExoacqError:
        frames.close(linger=0)
        features.close(linger=0)
        ctx.term()
        raise
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    warm_up_detectors(detectors)
    features.send_multipart([b"hello", dumps({"pid": os.getpid()})])
    try:
        while not stopping:
            if not frames.poll(100):  # SIGTERM (stopping) is seen within this (ms)
                if parent_pid is not None and os.getppid() != parent_pid:
                    return  # the daemon that started us is gone
                continue
            parts = frames.recv_multipart(copy=False)
            if parts[0].bytes != FRAME_TOPIC:
                continue
            header, frame = decode_frame(parts)
            table = locate_features(frame, **header["locate"])
            data = np.ascontiguousarray(table[list(COLUMNS)].to_numpy(np.float64))
            reply = {k: header[k] for k in ("run_id", "seq", "frame_number", "timestamp")}
            reply["worker"] = os.getpid()  # the linker knows whose frames stopped coming (exoacq.nta.frame_order)
            features.send_multipart([b"features", dumps({**reply, "columns": COLUMNS, "n": len(data)}), data],
                                    copy=False)
    finally:
        frames.close(linger=0)
        features.close()
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exoacq.nta.worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_worker_options(parser)
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    parser.add_argument("--key", help="a daemon with CurveZMQ keys: your authorised NAME.key_secret")
    parser.add_argument("--server-key", help="a daemon with CurveZMQ keys: its server.key")
    parser.add_argument("--keys-dir", help="the daemon's own keys directory (workers the daemon starts)")
    args = parser.parse_args(argv)
    from exoacq.security import DaemonSecurity, load_client_keys
    try:
        keys = (DaemonSecurity.for_process(args.keys_dir).internal_keys() if args.keys_dir
                else load_client_keys(args.key, args.server_key))
        serve(args.frames, args.features, args.parent_pid, keys, detectors=detectors_to_warm(args.detector))
    except ExoacqError as exc:
        print(f"exoacq worker: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
