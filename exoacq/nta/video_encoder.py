"""The kept raw video's encoder, in a process of its own (started by exoacq.nta.video_store.VideoRecorder).

``python -m exoacq.nta.video_encoder PATH WIDTH HEIGHT DTYPE FRAME_RATE_HZ`` reads frames from
stdin (each ``HEIGHT x WIDTH`` values of ``DTYPE``, C order, nothing between them) until the end
of input, writes them losslessly (:class:`exoacq.nta.raw_video.RawVideoWriter`: Zstandard) and
prints one JSON line: ``{"written": n, "error": null}`` (or the reason it stopped early; exit
status 1, 2 if the file could not be opened).

Why a process: compressing is the costliest thing the daemon does with a frame after
detection (~5 ms of CPU for a 1280 x 1024 16-bit frame on a slow core, 15 % of a core at
30 frames/s; FFV1, used first, took ~95 ms). Here it runs at the lowest CPU priority (Linux
SCHED_IDLE, else nice 19): it compresses with the CPU the acquisition, the tracking core and the
operator's live view leave, and never holds the daemon's GIL. What it cannot keep up with waits
in the recorder's bounded queue or is left out of the video, counted.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from exoacq.errors import ExoacqError
from exoacq.nta.raw_video import RawVideoWriter


def lowest_priority() -> None:
    """This process runs only on CPU nothing else wants (SCHED_IDLE; else nice 19; else as it is)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass


def _read_frame(stream, buffer: bytearray) -> bool:
    """Fill ``buffer`` from ``stream``; False at the end of input (a partial last frame is dropped)."""
    view, got = memoryview(buffer), 0
    while got < len(buffer):
        n = stream.readinto(view[got:])
        if not n:
            return False
        got += n
    return True


def encode(stream, path: str, width: int, height: int, dtype: np.dtype, frame_rate_hz: float) -> tuple[int, str | None]:
    """Write every frame of ``stream`` to ``path``; (frames written, why it stopped early or None)."""
    writer = RawVideoWriter(path, width, height, dtype, frame_rate_hz)
    buffer = bytearray(width * height * np.dtype(dtype).itemsize)
    frame = np.frombuffer(buffer, dtype=dtype).reshape(height, width)
    try:
        while _read_frame(stream, buffer):
            try:
                writer.write(frame)
            except OSError as exc:
                return writer.frames, f"{path}: writing failed ({exc.strerror or exc})"
    finally:
        try:
            writer.close()
        except OSError as exc:
            return writer.frames, f"{path}: closing failed ({exc.strerror or exc})"
    return writer.frames, None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    written, error, status = 0, None, 0
    try:
        path, width, height, dtype, rate = args[0], int(args[1]), int(args[2]), np.dtype(args[3]), float(args[4])
        lowest_priority()
        written, error = encode(sys.stdin.buffer, path, width, height, dtype, rate)
        status = 0 if error is None else 1
    except ExoacqError as exc:
        error, status = str(exc), 2
    except Exception as exc:  # noqa: BLE001 - whatever stopped it reaches the run's result as one line
        error, status = f"video encoder: {type(exc).__name__}: {exc}", 1
    print(json.dumps({"written": written, "error": error}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
