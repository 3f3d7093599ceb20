"""Reading recorded NTA videos: any container OpenCV reads, multi-page TIFF, a folder of frames, or
a capture's video kept by the daemon (video.zst).

Frames come out as 2-D arrays in their own bit depth; colour is reduced to
one channel (luma, ITU-R BT.601, as OpenCV's BGR2GRAY).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from exoacq.errors import ExoacqError

FRAME_SUFFIXES = (".png", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
#: Decoded frames that may wait for the analysis (:func:`read_ahead`), at most this many bytes of them ...
READ_AHEAD_BYTES = 128 * 2**20
#: ... and at most this many (256 frames of 640 x 480 x 8 bits: 79 MB). The decoder starts before the
#: analysis's imports (exoacq.nta.cli_analyze) and fills this while they run.
READ_AHEAD_FRAMES = 256


def to_gray(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 1:
        return frame[:, :, 0]
    if frame.ndim == 3 and frame.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if frame.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        return cv2.cvtColor(frame, code)
    raise ExoacqError(f"frames of shape {frame.shape} are not images")


@dataclass
class Video:
    """An opened recording: ``frames()`` yields 2-D arrays; ``fps`` is None when the file has none."""

    path: Path
    fps: float | None
    frame_count: int | None
    width: int
    height: int
    warnings: list[str] = field(default_factory=list)
    _files: list[Path] | None = None
    _stack: list[np.ndarray] | np.ndarray | None = None
    #: a raw video kept by the daemon (video.zst, exoacq.nta.raw_video)
    _raw: bool = False
    #: the first frame's pixel type (frames of folders and TIFF pages must all have it)
    _dtype: np.dtype | None = None

    def frames(self) -> Iterator[np.ndarray]:
        if self._raw:
            from exoacq.nta.raw_video import raw_video_frames

            read = 0
            for frame in raw_video_frames(self.path):
                read += 1
                yield frame
            if self.frame_count and read < self.frame_count:
                raise ExoacqError(f"{self.path}: the video ends after {read} of the {self.frame_count} frames its "
                                  "header announces (truncated or damaged file)")
            self.frame_count = read
            return
        if isinstance(self._stack, np.ndarray):  # a .npy stack: one shape and type by construction
            yield from (to_gray(np.asarray(f)) for f in self._stack)
            return
        if self._stack is not None:  # the pages of a TIFF
            for page, frame in enumerate(self._stack, start=1):
                yield self._like_the_first(to_gray(np.asarray(frame)), f"{self.path}: page {page}")
            return
        if self._files is not None:
            for file in self._files:
                frame = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
                if frame is None:
                    raise ExoacqError(f"{file}: not a readable image")
                yield self._like_the_first(to_gray(frame), str(file))
            return
        capture = _capture(self.path)
        read = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                read += 1
                yield to_gray(frame)
        finally:
            capture.release()
        if self.frame_count and read < self.frame_count - 1:
            raise ExoacqError(f"{self.path}: the video ends after {read} of the {self.frame_count} frames its "
                              "header announces (truncated or damaged file)")
        self.frame_count = read

    def _like_the_first(self, frame: np.ndarray, name: str) -> np.ndarray:
        """``frame`` if it has the video's size and the first frame's pixel type, else a one-line error."""
        if self._dtype is None:
            self._dtype = frame.dtype
        if frame.shape != (self.height, self.width) or frame.dtype != self._dtype:
            raise ExoacqError(f"{name}: a frame of {frame.shape[1]} x {frame.shape[0]} pixels of {frame.dtype}, the "
                              f"first {self.width} x {self.height} of {self._dtype}: the frames of a video must "
                              "be alike")
        return frame


class ReadAhead(Iterator[np.ndarray]):
    """``frames``, decoded in a thread of their own up to ``max_frames`` ahead of the caller.

    Decoding (OpenCV/FFmpeg, which release the GIL; FFV1 takes ~5-10 ms of CPU per 640 x 480
    8-bit frame) then overlaps the work on earlier frames instead of alternating with it (a
    producer-consumer pipeline through a bounded queue). The decoder starts at once, before the
    first frame is asked for. The same frames come out in the same order; an error of the
    decoder (an ExoacqError: truncated file, unreadable image) is raised here, in the caller's
    thread, after the frames before it. ``close()`` (or leaving a loop over it on an error) stops
    the decoder and releases the file.
    """

    _END = object()

    def __init__(self, frames: Iterator[np.ndarray], max_frames: int = READ_AHEAD_FRAMES):
        if max_frames < 1:
            raise ValueError(f"max_frames = {max_frames}: must be >= 1")
        self._frames = frames
        self._waiting: queue.Queue = queue.Queue(max_frames)
        self._stop = threading.Event()
        self._done = False
        self._decoder = threading.Thread(target=self._decode, name="video-decoder", daemon=True)
        self._decoder.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._waiting.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _decode(self) -> None:
        try:
            for frame in self._frames:
                if not self._put(frame):
                    return
            self._put(self._END)
        except BaseException as exc:  # raised again in the caller's thread
            self._put(exc)
        finally:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()

    def __next__(self) -> np.ndarray:
        if self._done:
            raise StopIteration
        item = self._waiting.get()
        if item is self._END:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stop the decoder (it releases the file) and wait for it."""
        self._done = True
        self._stop.set()
        self._decoder.join()

    def __del__(self) -> None:  # dropped unclosed (a loop left early): the decoder stops within 50 ms
        stop = getattr(self, "_stop", None)  # None when __init__ refused its arguments
        if stop is not None:
            stop.set()


def read_ahead(frames: Iterator[np.ndarray], max_frames: int = READ_AHEAD_FRAMES) -> ReadAhead:
    """``frames`` decoded ahead in a thread of their own (:class:`ReadAhead`), started now."""
    return ReadAhead(frames, max_frames)


def start_decoding(video: Video) -> ReadAhead:
    """The frames of ``video``, decoded ahead in a thread of their own (:func:`read_ahead`); close
    the iterator when done with it."""
    return read_ahead(video.frames(), read_ahead_frames(video.width, video.height))


def read_ahead_frames(width: int, height: int, bytes_per_pixel: int = 2) -> int:
    """How many frames :func:`read_ahead` may hold for frames of this size (READ_AHEAD_BYTES, READ_AHEAD_FRAMES)."""
    return max(2, min(READ_AHEAD_FRAMES, READ_AHEAD_BYTES // max(width * height * bytes_per_pixel, 1)))


#: Single-channel codecs: OpenCV can hand their frames over without converting them to BGR.
GRAY_FOURCCS = {"Y800", "GREY", "Y8  ", "Y16 "}
#: Single-channel decoded pixel formats (FFmpeg's tags: gray8, gray16le), e.g. FFV1 videos kept by
#: earlier versions of the daemon (exoacq.nta.video_store): read in their own bit depth, not reduced to 8-bit BGR.
GRAY_PIXEL_FORMATS = {"Y800", "GREY", "Y1\x00\x10"}


def _tag(value: float) -> str:
    code = int(value)
    return "".join(chr((code >> 8 * i) & 0xFF) for i in range(4))


def _capture(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path))
    if (_tag(capture.get(cv2.CAP_PROP_FOURCC)) in GRAY_FOURCCS
            or _tag(capture.get(cv2.CAP_PROP_CODEC_PIXEL_FORMAT)) in GRAY_PIXEL_FORMATS):
        capture.set(cv2.CAP_PROP_CONVERT_RGB, 0)
    return capture


def _is_text(path: Path) -> bool:
    """Whether the file starts as text: in its first 4 KiB no NUL byte, and at least 95 % printable ASCII,
    tabs and line ends. Video containers start with binary fields (sizes, EBML ids, start codes) that hold
    NUL and other control bytes; the one container with a text header, YUV4MPEG2, is let through."""
    with open(path, "rb") as f:
        raw = f.read(4096)
    head = np.frombuffer(raw, np.uint8)
    if head.size == 0 or not head.all() or raw.startswith(b"YUV4MPEG2"):
        return False
    texty = (head >= 32) & (head < 127) | np.isin(head, (9, 10, 13))
    return bool(texty.mean() >= 0.95)


def open_video(path: Path | str) -> Video:
    """Open a recording for reading; a one-line ExoacqError if it is none."""
    path = Path(path)
    if not path.exists():
        raise ExoacqError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise ExoacqError(f"{path}: a folder of frames needs PNG or TIFF files; found none")
        first = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED)
        if first is None:
            raise ExoacqError(f"{files[0]}: not a readable image")
        h, w = first.shape[:2]
        return Video(path, None, len(files), w, h, _files=files)
    if path.suffix.lower() == ".npy":  # frames saved by the daemon (nta.save_frames)
        try:
            stack = np.load(path, mmap_mode="r")
        except ValueError as exc:
            raise ExoacqError(f"{path}: not a frame stack ({exc})") from None
        if stack.ndim != 3:
            raise ExoacqError(f"{path}: a frame stack has 3 dimensions (frames, rows, columns), not {stack.ndim}")
        return Video(path, None, len(stack), stack.shape[2], stack.shape[1], _stack=stack)
    if path.suffix.lower() == ".zst":  # a capture's video kept by the daemon
        from exoacq.nta.raw_video import read_header

        header = read_header(path)
        return Video(path, float(header["frame_rate_hz"]) or None, int(header["frames"]) or None,
                     int(header["width"]), int(header["height"]), _raw=True)
    if path.suffix.lower() in TIFF_SUFFIXES:
        ok, stack = cv2.imreadmulti(str(path), flags=cv2.IMREAD_UNCHANGED)
        if not ok or not stack:
            raise ExoacqError(f"{path}: not a readable TIFF")
        h, w = stack[0].shape[:2]
        return Video(path, None, len(stack), w, h, _stack=list(stack))
    if _is_text(path):  # FFmpeg renders text files (.asc, .txt, .nfo, ...) as "ANSI art" video
        raise ExoacqError(f"{path}: a text file, not a video (AVI, MOV, MP4, ...), a TIFF stack or a folder of "
                          "frames")
    capture = _capture(path)
    try:
        if not capture.isOpened():
            raise ExoacqError(f"{path}: not a video OpenCV can read (AVI, MOV, MP4, ...), a TIFF stack "
                              "or a folder of frames")
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, first = capture.read()
        if not ok:
            raise ExoacqError(f"{path}: the video has no readable frame")
        h, w = first.shape[:2]
    finally:
        capture.release()
    return Video(path, fps if fps and np.isfinite(fps) and fps > 0 else None, count if count > 0 else None, w, h)
