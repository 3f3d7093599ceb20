"""A capture's raw video, kept beside its tracks: ``video.zst`` (lossless), plus ``frames.csv``.

Every capture of an NTA run keeps what the camera delivered, so that the run
can be analysed again later (:mod:`exoacq.nta.reprocess`), as labs working
under written procedures keep their raw data:

* ``video.zst``: the frames at the camera's own bit depth (8 or 16 bits a
  pixel; a 12-bit camera's values as they come, in 16 bits), each compressed
  losslessly with Zstandard (:mod:`exoacq.nta.raw_video` describes the
  layout; ``zstd -d`` reads it). Decoding gives back the exact pixel values.
  Runs kept by earlier versions hold ``video.mkv`` (FFV1) instead, still read;
* ``frames.csv``: one row per frame the camera delivered: ``frame_number`` (the
  camera's numbering: frames it lost leave gaps), ``timestamp_s`` (the
  camera's), ``tracked`` (1: the frame reached the tracking core; 0: its queue
  was full and the frame was dropped, as the live result counts it) and
  ``in_video`` (1: the frame is in the video, in this order).

Writing never slows the camera: frames go through a bounded queue to an
encoder process at the lowest CPU priority (exoacq.nta.video_encoder); a frame
the queue cannot take is left out of the video (and counted): the run's
result then warns that the video is incomplete.

Disk: the simulated camera (640 x 480, 25 frames/s, 12 bits) takes about
260 MB a minute (28 % of the 920 MB a minute of raw 16-bit frames), so a run
of 5 x 60 s captures about 1.3 GB (tests/test_nta_video_store.py measures it).
"""
from __future__ import annotations

import csv
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from exoacq.errors import ExoacqError
from exoacq.nta.raw_video import check_frame_type, raw_video_frames

VIDEO_FILE = "video.zst"
#: The kept video of runs recorded before video.zst (FFV1 in Matroska), read as well.
FFV1_VIDEO_FILE = "video.mkv"
FRAMES_FILE = "frames.csv"
FRAMES_COLUMNS = ("frame_number", "timestamp_s", "tracked", "in_video")
#: Frames that may wait for the video writer (4 s at 25 frames/s, ~60 MB at 640 x 480 x 16 bits).
VIDEO_QUEUE_FRAMES = 100
#: After the last frame, the encoder finishes the frame it is on and closes the file.
ENCODER_FINISH_S = 60.0


def capture_folder(run_directory: Path | str, capture: int, captures: int) -> Path:
    """Where a capture's files are: ``capture-N`` in the run's folder, or the run's folder itself
    when the run has one capture (as the acquisition engine places them)."""
    run_directory = Path(run_directory)
    return run_directory / f"capture-{capture}" if captures > 1 else run_directory


#: Linux fcntl(2): set a pipe's capacity (bytes; at most /proc/sys/fs/pipe-max-size, 1 MiB by default).
_F_SETPIPE_SZ = 1031


def _widen_pipe(pipe, frame_bytes: int) -> None:
    """Up to a frame's worth of pipe buffer (a default pipe holds 64 kB: a 1280 x 1024 16-bit frame
    crossed it in 40 writes and as many wake-ups of the encoder); left as it is where refused."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, min(frame_bytes, 1 << 20))
    except (ImportError, OSError):
        pass


@dataclass
class VideoRecorder:
    """Keeps one capture's frames: :meth:`offer` from the acquisition thread (never blocks),
    :meth:`close` once the capture has ended (waits for the writer, writes ``frames.csv``)."""

    folder: Path
    width: int
    height: int
    dtype: np.dtype
    frame_rate_hz: float
    queue_frames: int = VIDEO_QUEUE_FRAMES
    #: Frames the queue could not take (left out of the video).
    frames_lost: int = 0
    #: Why the writer stopped early (disk full, ...), or None.
    error: str | None = None
    _rows: list[tuple[int, float, int]] = field(default_factory=list)
    #: Frame numbers handed to the encoder, in order; it reports how many of them it wrote.
    _fed: list[int] = field(default_factory=list)
    _queue: queue.Queue = field(init=False)
    _thread: threading.Thread = field(init=False)
    _encoder: subprocess.Popen = field(init=False)
    _abandon: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.dtype = np.dtype(self.dtype)
        check_frame_type(self.video_path, self.dtype)
        if not (self.folder.is_dir() and os.access(self.folder, os.W_OK)):
            raise ExoacqError(f"{self.folder}: cannot keep the capture's video here (not a writable folder)",
                              code="bad_video")
        self._encoder = subprocess.Popen(
            [sys.executable, "-m", "exoacq.nta.video_encoder", str(self.video_path), str(self.width),
             str(self.height), self.dtype.str, repr(float(self.frame_rate_hz))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        _widen_pipe(self._encoder.stdin, self.width * self.height * self.dtype.itemsize)
        self._queue = queue.Queue(maxsize=self.queue_frames)
        self._thread = threading.Thread(target=self._feed, name=f"video {self.folder.name}", daemon=True)
        self._thread.start()

    @property
    def video_path(self) -> Path:
        return self.folder / VIDEO_FILE

    @property
    def frames_path(self) -> Path:
        return self.folder / FRAMES_FILE

    def offer(self, frame_number: int, timestamp_s: float | None, frame: np.ndarray, tracked: bool) -> bool:
        """Queue a frame for the video (the caller must not reuse ``frame``); False if it was left out."""
        timestamp = float("nan") if timestamp_s is None else float(timestamp_s)  # a camera without a clock
        self._rows.append((int(frame_number), timestamp, int(bool(tracked))))
        if self.error is None:
            try:
                self._queue.put_nowait((int(frame_number), frame))
                return True
            except queue.Full:
                pass
        self.frames_lost += 1
        return False

    def _feed(self) -> None:
        """Hand queued frames to the encoder process (a write waits, without the GIL, while it is busy)."""
        pipe = self._encoder.stdin
        while (item := self._queue.get()) is not None:
            if self.error is not None or self._abandon.is_set():
                continue  # drain: the acquisition thread must never wait
            frame_number, frame = item
            try:
                pipe.write(np.ascontiguousarray(frame, dtype=self.dtype).data)
                pipe.flush()
                self._fed.append(frame_number)
            except (BrokenPipeError, OSError, ValueError):
                self.error = f"{self.video_path}: the video encoder stopped"  # its own reason, at close()

    def close(self, abandon: bool = False) -> dict[str, object]:
        """Finish the video and ``frames.csv``; return ``files`` and counters for the run's result.
        ``abandon`` (a run stopped by the operator or a shutdown): the frames still queued are left
        out (counted) rather than waited for; the encoder (at the lowest priority: on a busy machine
        it may take long) finishes the frame it is on, and the video holds what it wrote."""
        if abandon:
            self._abandon.set()
        self._queue.put(None)  # blocks only until the feeder takes a slot; the camera has stopped
        self._thread.join()
        written, reason = self._finish_encoder()
        self.error = reason or self.error
        in_video = set(self._fed[:written])
        with open(self.frames_path, "w", newline="", encoding="utf-8") as out:
            table = csv.writer(out)
            table.writerow(FRAMES_COLUMNS)
            for number, timestamp, tracked in self._rows:
                table.writerow((number, repr(timestamp), tracked, int(number in in_video)))
        return {"files": {"video": str(self.video_path), "frames": str(self.frames_path)},
                "frames_written": len(in_video), "frames_lost": len(self._rows) - len(in_video), "error": self.error}

    def _finish_encoder(self) -> tuple[int, str | None]:
        """End of input to the encoder; (frames it wrote, why it stopped early or None)."""
        try:
            out, _ = self._encoder.communicate(timeout=ENCODER_FINISH_S)
        except subprocess.TimeoutExpired:
            self._encoder.kill()
            out, _ = self._encoder.communicate()
            return 0, f"{self.video_path}: the video encoder did not finish within {ENCODER_FINISH_S:g} s"
        try:
            report = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
            return int(report["written"]), report["error"]
        except (IndexError, ValueError, KeyError, TypeError):
            return 0, f"{self.video_path}: the video encoder exited with status {self._encoder.returncode}"


def read_frames_table(folder: Path | str) -> pd.DataFrame:
    """A capture's ``frames.csv``; a one-line ExoacqError when it is missing or not one."""
    path = Path(folder) / FRAMES_FILE
    if not path.is_file():
        raise ExoacqError(f"{path} is missing: the capture's frame list (frame numbers, timestamps) was not kept",
                          code="no_video")
    try:
        table = pd.read_csv(path, dtype={"frame_number": np.int64, "timestamp_s": np.float64,
                                         "tracked": np.int64, "in_video": np.int64})
    except (ValueError, pd.errors.ParserError) as exc:
        raise ExoacqError(f"{path}: not a frame list ({exc})", code="bad_video") from None
    missing = [c for c in FRAMES_COLUMNS if c not in table.columns]
    if missing:
        raise ExoacqError(f"{path}: columns {', '.join(missing)} are missing", code="bad_video")
    return table


def kept_video_path(folder: Path | str) -> Path:
    """A capture's kept video: ``video.zst``, or ``video.mkv`` (FFV1) in runs kept before it;
    ``video.zst`` when there is neither."""
    folder = Path(folder)
    ffv1 = folder / FFV1_VIDEO_FILE
    return ffv1 if ffv1.is_file() and not (folder / VIDEO_FILE).is_file() else folder / VIDEO_FILE


def _ffv1_frames(path: Path) -> Iterator[np.ndarray]:
    """The gray frames of a kept FFV1 video (runs kept before video.zst), in their own bit depth."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise ExoacqError(f"{path}: not a readable video", code="bad_video")
    capture.set(cv2.CAP_PROP_CONVERT_RGB, 0)  # the gray plane as stored, in its own bit depth
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            if frame.ndim != 2:
                raise ExoacqError(f"{path}: frames of shape {frame.shape}: not a gray video kept by exoacq",
                                  code="bad_video")
            yield frame
    finally:
        capture.release()


def kept_frames(folder: Path | str) -> Iterator[tuple[int, bool, np.ndarray]]:
    """``(frame_number, tracked, frame)`` for every frame of a capture's kept video, in order."""
    folder = Path(folder)
    path = kept_video_path(folder)
    if not path.is_file():
        raise ExoacqError(f"{path} is missing: the capture's raw video was not kept (keep_video = false?)",
                          code="no_video")
    table = read_frames_table(folder)
    in_video = table.loc[table["in_video"] == 1]
    if in_video.empty:  # a capture stopped before its first frame was encoded: nothing to read
        return
    frames = _ffv1_frames(path) if path.name == FFV1_VIDEO_FILE else raw_video_frames(path)
    read = 0
    for (number, tracked), frame in zip(zip(in_video["frame_number"].to_numpy(), in_video["tracked"].to_numpy()),
                                        frames):
        read += 1
        yield int(number), bool(tracked), frame
    if read < len(in_video):
        raise ExoacqError(f"{path}: the video ends after {read} of the {len(in_video)} frames {FRAMES_FILE} lists "
                          "(truncated or damaged file)", code="bad_video")
