"""A capture's kept video as raw frames, losslessly compressed with Zstandard (``video.zst``).

The file is a Zstandard stream (IETF RFC 8878) of two kinds of frames:

1. a *skippable frame* (magic ``0x184D2A50``, RFC 8878 section 3.1.2) holding a JSON header
   of :data:`HEADER_BYTES` bytes, space padded: ``format`` ("exoacq raw video"), ``version``
   (1), ``width``, ``height``, ``dtype`` (NumPy's, e.g. ``"<u2"``), ``byte_planes``,
   ``frame_rate_hz`` and ``frames`` (the count, written when the file is closed; 0 in a file
   that was never closed);
2. then one Zstandard frame per image, holding the image's pixel values in C order as *byte
   planes*: for 16-bit pixels, every pixel's low byte, then every pixel's high byte (the
   "shuffle" of HDF5 and Blosc). 8-bit images are their bytes as they are.

``zstd -d video.zst`` therefore gives the images one after another (it skips the header);
undoing the byte planes is ``np.frombuffer(b, np.uint8).reshape(2, -1).T.copy().view("<u2")``.

Why not FFV1 (which the daemon used first): on a slow 2-core machine FFV1 took ~95 ms of CPU
for one 1280 x 1024 16-bit frame, three cores' worth at 30 frames/s, so a loaded machine lost
most of the video. Zstandard (level 1) on byte planes takes ~5 ms for the same frame and
stores it as small (3.4x smaller than raw for the simulated camera, as FFV1); decoding takes
~7 ms instead of ~20.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zstandard

from exoacq.errors import ExoacqError

FORMAT = "exoacq raw video"
VERSION = 1
#: The first of the 16 magic numbers RFC 8878 keeps for skippable frames.
SKIPPABLE_MAGIC = 0x184D2A50
#: The header's JSON, space padded to this size so that the frame count can be written at close.
HEADER_BYTES = 512
#: Zstandard's level: 1 is its fastest standard level (higher levels shrink camera noise hardly at all).
ZSTD_LEVEL = 1
#: Pixel types kept (a 12-bit camera's values travel in 16 bits).
FRAME_TYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def check_frame_type(path: os.PathLike | str, dtype: np.dtype) -> np.dtype:
    """``dtype`` as little-endian NumPy type; a one-line ExoacqError unless it is uint8 or uint16."""
    dtype = np.dtype(dtype)
    if dtype not in FRAME_TYPES:
        raise ExoacqError(f"{path}: cannot keep {dtype} frames as video (uint8 or uint16 only)", code="bad_video")
    return dtype.newbyteorder("<")


def _header(width: int, height: int, dtype: np.dtype, frame_rate_hz: float, frames: int) -> bytes:
    text = json.dumps({"format": FORMAT, "version": VERSION, "width": int(width), "height": int(height),
                       "dtype": dtype.str, "byte_planes": dtype.itemsize > 1,
                       "frame_rate_hz": float(frame_rate_hz), "frames": int(frames)}).encode()
    return struct.pack("<II", SKIPPABLE_MAGIC, HEADER_BYTES) + text.ljust(HEADER_BYTES)


def to_byte_planes(frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The frame's bytes as planes (uint8 or little-endian uint16 frames): every pixel's low
    byte, then every pixel's high byte; into ``out`` (uint8, the frame's size in bytes) if given.
    Two vectorised casts: a byte-wise transpose of the same bytes takes three times as long."""
    flat = frame.reshape(-1)
    if frame.dtype.itemsize == 1:
        return flat
    if out is None:
        out = np.empty(flat.size * 2, np.uint8)
    np.copyto(out[:flat.size], flat, casting="unsafe")  # the low byte (a cast keeps it)
    np.right_shift(flat, 8, out=out[flat.size:], casting="unsafe")
    return out


def from_byte_planes(data: bytes | bytearray | memoryview, height: int, width: int, dtype: np.dtype) -> np.ndarray:
    """The frame whose byte planes are ``data`` (the inverse of :func:`to_byte_planes`)."""
    planes = np.frombuffer(data, np.uint8).reshape(dtype.itemsize, height * width)
    if dtype.itemsize == 1:
        return planes[0].reshape(height, width).copy()
    frame = planes[1].astype(dtype)
    frame <<= 8
    frame |= planes[0]
    return frame.reshape(height, width)


class RawVideoWriter:
    """Appends frames to a new ``video.zst``; :meth:`close` writes the frame count into the header."""

    def __init__(self, path: os.PathLike | str, width: int, height: int, dtype: np.dtype, frame_rate_hz: float):
        self.path = Path(path)
        self.width, self.height, self.frame_rate_hz = int(width), int(height), float(frame_rate_hz)
        self.dtype = check_frame_type(self.path, dtype)
        self.frames = 0
        try:
            self._file = open(self.path, "wb")
            self._file.write(_header(self.width, self.height, self.dtype, self.frame_rate_hz, 0))
        except OSError as exc:
            raise ExoacqError(f"{self.path}: cannot write the video ({exc.strerror})", code="bad_video") from None
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        self._planes = np.empty(self.width * self.height * self.dtype.itemsize, np.uint8)

    def write(self, frame: np.ndarray) -> None:
        """Append one frame (``height x width`` of the writer's type); OSError if the disk refuses it."""
        if frame.shape != (self.height, self.width) or frame.dtype.newbyteorder("<") != self.dtype:
            raise ValueError(f"a {frame.dtype} {frame.shape} frame in a {self.dtype} ({self.height}, {self.width}) video")
        self._file.write(self._compressor.compress(to_byte_planes(frame.astype(self.dtype, copy=False), self._planes)))
        self.frames += 1

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            self._file.seek(0)
            self._file.write(_header(self.width, self.height, self.dtype, self.frame_rate_hz, self.frames))
        finally:
            self._file.close()


def read_header(path: os.PathLike | str) -> dict:
    """The header of a ``video.zst``; a one-line ExoacqError if the file is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8 + HEADER_BYTES)
    except OSError as exc:
        raise ExoacqError(f"{path}: cannot read the video ({exc.strerror})", code="bad_video") from None
    try:
        magic, size = struct.unpack("<II", head[:8])
        header = json.loads(head[8:8 + size]) if magic == SKIPPABLE_MAGIC and size == HEADER_BYTES else None
    except (struct.error, ValueError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ExoacqError(f"{path}: not a raw video kept by exoacq", code="bad_video")
    if header.get("version") != VERSION:
        raise ExoacqError(f"{path}: raw video version {header.get('version')} (this exoacq reads {VERSION})",
                          code="bad_video")
    try:
        header["dtype"] = check_frame_type(path, header["dtype"])
        width, height = int(header["width"]), int(header["height"])
        if width <= 0 or height <= 0:
            raise ValueError(f"{width} x {height} pixels")
    except (KeyError, TypeError, ValueError) as exc:
        raise ExoacqError(f"{path}: a damaged raw video header ({exc})", code="bad_video") from None
    return header


def raw_video_frames(path: os.PathLike | str) -> Iterator[np.ndarray]:
    """Every frame of a ``video.zst`` in order, as written (2-D arrays of its type). A file cut
    short (a process killed while writing) gives the frames it holds whole."""
    header = read_header(path)
    height, width, dtype = int(header["height"]), int(header["width"]), header["dtype"]
    size = height * width * dtype.itemsize
    with open(path, "rb") as f:
        f.seek(8 + HEADER_BYTES)
        reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True, closefd=False)
        while True:
            buffer, got = bytearray(size), 0
            view = memoryview(buffer)
            try:
                while got < size and (n := reader.readinto(view[got:])):
                    got += n
            except zstandard.ZstdError:
                return  # a damaged or cut frame ends what can be read
            if got < size:
                return
            yield from_byte_planes(buffer, height, width, dtype)
