"""The kept raw video's encoder, in a process of its own (started by exoacq.nta.video_store.VideoRecorder).

``python -m exoacq.nta.video_encoder PATH WIDTH HEIGHT DTYPE FRAME_RATE_HZ`` reads frames from
stdin (each ``HEIGHT x WIDTH`` values of ``DTYPE``, C order, nothing between them) until the end
of input, writes them as lossless FFV1 (:func:`open_ffv1_writer`) and prints one JSON line:
``{"written": n, "error": null}`` (or the reason it stopped early; exit status 1, 2 if the file
could not be opened).

Why a process: FFV1 takes ~0.1 s of CPU for one 1280 x 1024 16-bit frame on a slow core, three
cores' worth at 30 frames/s. As a thread of the daemon it took the CPU (and, between frames, the
GIL) from the camera's thread, which then lost frames. Here it runs at the lowest CPU priority
(Linux SCHED_IDLE, else nice 19): it encodes with the CPU the acquisition, the tracking core and the
operator's live view leave, and never holds the daemon's GIL. What it cannot keep up with waits in
the recorder's bounded queue or is left out of the video, counted.
"""
from __future__ import annotations

import json
import os
import sys

import cv2
import numpy as np

from exoacq.errors import ExoacqError

#: FFV1 frames of these types only (a 12-bit camera's values travel in 16 bits).
FRAME_DEPTHS = {np.dtype(np.uint8): cv2.CV_8U, np.dtype(np.uint16): cv2.CV_16U}


def check_frame_type(path: os.PathLike | str, dtype: np.dtype) -> int:
    """OpenCV's depth code for ``dtype``; a one-line ExoacqError if FFV1 cannot keep such frames."""
    depth = FRAME_DEPTHS.get(np.dtype(dtype))
    if depth is None:
        raise ExoacqError(f"{path}: cannot keep {np.dtype(dtype)} frames as FFV1 video (uint8 or uint16 only)",
                          code="bad_video")
    return depth


def open_ffv1_writer(path: os.PathLike | str, width: int, height: int, dtype: np.dtype,
                     frame_rate_hz: float) -> cv2.VideoWriter:
    """An OpenCV (FFmpeg) writer of gray FFV1 frames of ``dtype`` (uint8 or uint16), lossless."""
    depth = check_frame_type(path, dtype)
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"FFV1"), float(frame_rate_hz),
                             (int(width), int(height)),
                             params=[cv2.VIDEOWRITER_PROP_DEPTH, depth, cv2.VIDEOWRITER_PROP_IS_COLOR, 0])
    if not writer.isOpened():
        raise ExoacqError(f"{path}: cannot open an FFV1 video for writing (OpenCV without FFmpeg?)",
                          code="bad_video")
    return writer


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
    writer = open_ffv1_writer(path, width, height, dtype, frame_rate_hz)
    buffer, written = bytearray(width * height * np.dtype(dtype).itemsize), 0
    frame = np.frombuffer(buffer, dtype=dtype).reshape(height, width)
    try:
        while _read_frame(stream, buffer):
            try:
                writer.write(frame)
            except cv2.error as exc:
                return written, f"{path}: writing failed: {str(exc).strip().splitlines()[-1]}"
            written += 1
    finally:
        writer.release()
    return written, None


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
