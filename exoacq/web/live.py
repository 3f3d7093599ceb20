"""Camera frames made fit for a browser: checked, binned, levelled, JPEG-compressed, and a focus score.

Pure functions of a frame (a 2-D NumPy array of camera counts, any integer or float
type), used by :class:`exoacq.web.bridge.DaemonBridge.next_frame` in a worker thread.
A 1280x1024 uint16 frame goes through all three in a few milliseconds
(tests/test_web_bridge.py times it), so the live view never holds a backlog.
"""
from __future__ import annotations

import json
import math
from typing import Any

import cv2
import numpy as np

#: Frame pixel types a viewer decodes (NumPy kinds: unsigned, signed, float; at most 8 bytes).
FRAME_KINDS = "uif"

#: Levels: the display's black and white at these percentiles of the (binned) image's pixels. A
#: scatter image is a dark background (nearly every pixel) with a few bright particles: black at its
#: median hides the background's noise (and the JPEG stays small), white at the 99.95th percentile
#: keeps the brightest particles' cores white and the dim particles visible.
LEVEL_PERCENTILES = (50.0, 99.95)
#: ... and white at least this many background noise units (robust standard deviations) above black,
#: so that a frame without particles shows its noise as a dim grain, not as full-contrast snow.
LEVEL_MIN_SPAN_NOISE = 10.0
#: The percentiles are taken over about this many pixels (a regular subsample): as good, cheaper.
LEVEL_SAMPLE_PIXELS = 80_000

#: Focus: the brightest this many particles are measured (their median is the score).
FOCUS_PARTICLES = 20
#: A particle's light is summed over a square this wide (camera pixels) around its brightest pixel.
FOCUS_BOX_PX = 7
#: A peak counts as a particle when it stands this many background noise units above the background.
FOCUS_MIN_SNR = 6.0


def decode_frame(header_json: bytes, buffer: memoryview) -> tuple[dict[str, Any], np.ndarray]:
    """A live ``frame`` message's header and pixels (docs/protocol.md, Frames), checked against each
    other: the pixels are a view of ``buffer`` (no copy), typed and shaped by the header's ``dtype``
    and ``shape``. ValueError (or TypeError) when the message is not a camera frame."""
    header = json.loads(header_json)
    if not isinstance(header, dict) or not isinstance(header.get("instrument"), str):
        raise ValueError("a frame header without its instrument")
    dtype = np.dtype(header["dtype"])
    if dtype.kind not in FRAME_KINDS or dtype.itemsize > 8:
        raise ValueError(f"frame dtype {header['dtype']!r}: not a camera pixel type")
    shape = header["shape"]
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise ValueError(f"frame shape {shape!r}: not [rows, columns]")
    seq = header.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError(f"frame seq {seq!r}: not an integer")
    if buffer.nbytes != shape[0] * shape[1] * dtype.itemsize:
        raise ValueError(f"frame of {buffer.nbytes} bytes for shape {shape} of {dtype.str}")
    return header, np.frombuffer(buffer, dtype=dtype).reshape(shape)


def display_image(frame: np.ndarray, max_width: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """The frame as an 8-bit image at most ``max_width`` pixels wide; returns ``(image, scale, levels)``.

    Binning is by an integer factor ``b`` (the smallest with ``columns / b <= max_width``): each
    display pixel is the mean of a ``b x b`` block of camera pixels (the rows and columns that do not
    fill a whole block at the bottom and right edge are left out), so a display pixel ``(r, c)``
    covers camera pixels ``[r*b, (r+1)*b)``; ``scale`` = 1 / b display pixels per camera pixel
    (camera coordinates times ``scale`` are display coordinates). ``levels`` = ``(lo, hi)`` in camera
    counts: the LEVEL_PERCENTILES of the binned image (``hi`` at least LEVEL_MIN_SPAN_NOISE noise
    units above ``lo``), mapped linearly to 0 and 255 (clipped).
    """
    if frame.ndim != 2 or frame.size == 0:
        raise ValueError(f"a camera frame is a non-empty 2-D array, not one of shape {frame.shape}")
    if max_width < 1:
        raise ValueError(f"max_width = {max_width}: must be at least 1 pixel")
    rows, columns = frame.shape
    factor = max(1, math.ceil(columns / max_width))
    factor = min(factor, rows)  # a very wide, short frame: at least one display row
    if frame.dtype not in (np.uint8, np.uint16, np.float32):  # what OpenCV bins natively
        frame = frame.astype(np.float32)
    if factor > 1:
        height, width = rows // factor, columns // factor
        cropped = frame[:height * factor, :width * factor]
        # INTER_AREA at an integer factor is exactly the block mean (rounded for integer types)
        binned = cv2.resize(cropped, (width, height), interpolation=cv2.INTER_AREA)
    else:
        binned = frame
    lo, hi = _levels(binned)
    gain = 255.0 / (hi - lo)
    if binned.dtype in (np.uint8, np.uint16):
        # a look-up table over every possible count: one table read per pixel
        table = np.clip((np.arange(1 << (8 * binned.itemsize), dtype=np.float32) - lo) * gain, 0, 255)
        image = table.astype(np.uint8)[binned]
    else:
        image = np.clip((binned - np.float32(lo)) * np.float32(gain), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image), 1.0 / factor, (lo, hi)


def _levels(image: np.ndarray) -> tuple[float, float]:
    """(lo, hi): the LEVEL_PERCENTILES of a regular subsample of ``image``, hi at least
    LEVEL_MIN_SPAN_NOISE robust standard deviations (1.4826 x the median absolute deviation from the
    median) above lo, and above lo in any case."""
    step = max(1, int(math.sqrt(image.size / LEVEL_SAMPLE_PIXELS)))
    sample = image[::step, ::step].ravel()
    sample = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(sample, LEVEL_PERCENTILES))
    median = float(np.median(sample)) if LEVEL_PERCENTILES[0] != 50.0 else lo
    noise = 1.4826 * float(np.median(np.abs(sample.astype(np.float32) - np.float32(median))))
    hi = max(hi, lo + LEVEL_MIN_SPAN_NOISE * noise)
    if hi <= lo:  # a flat image: black, not a division by zero
        hi = lo + 1.0
    return lo, hi


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    """A uint8 gray (or BGR) image as JPEG bytes (OpenCV's libjpeg-turbo)."""
    if image.dtype != np.uint8:
        raise ValueError(f"encode_jpeg takes an 8-bit image (display_image's), not {image.dtype}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality = {quality}: must be 1 to 100")
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {image.shape} as JPEG")
    return data.tobytes()


def focus_score(frame: np.ndarray) -> float:
    """How sharply the particles are imaged: the percentage of a particle's scattered light that falls
    in its brightest camera pixel (the median over the FOCUS_PARTICLES brightest particles).

    For each particle (a local maximum standing FOCUS_MIN_SNR noise units above the background,
    at least FOCUS_BOX_PX // 2 pixels from the edge), its light is the background-subtracted sum
    over a FOCUS_BOX_PX-wide square around its brightest pixel. In focus a scatterer is a
    diffraction-limited spot and a large share of its light lands in one pixel; out of focus it
    spreads into a disc or rings and the share falls. The measure is independent of the
    particles' brightness, the laser power, the exposure and the gain (it is a ratio), so it
    follows the focus only. For the operator: higher is sharper; the number is relative (it
    depends on the optics' magnification and the camera's pixel size): turn the focus and keep
    the position where it is highest. Saturated particles read lower (their peak is clipped):
    lower the exposure or gain first. 0.0 when no particle stands out of the background.
    """
    if frame.ndim != 2 or min(frame.shape) < FOCUS_BOX_PX:
        return 0.0
    image = frame if frame.dtype == np.float32 else frame.astype(np.float32)
    step = max(1, int(math.sqrt(image.size / LEVEL_SAMPLE_PIXELS)))
    sample = image[::step, ::step]
    background = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - background)))  # robust sigma (MAD)
    noise = max(noise, 1.0 if frame.dtype.kind in "iu" else 1e-6)
    threshold = background + FOCUS_MIN_SNR * noise
    half = FOCUS_BOX_PX // 2
    inner = image[half:-half, half:-half]
    candidates = np.flatnonzero(inner > threshold)
    if candidates.size == 0:
        return 0.0
    if candidates.size > 50_000:  # a very bright frame: the brightest pixels are enough
        candidates = candidates[np.argpartition(inner.ravel()[candidates], -50_000)[-50_000:]]
    rows, columns = np.unravel_index(candidates, inner.shape)
    rows, columns = rows + half, columns + half
    values = image[rows, columns]
    # local maxima among the bright pixels: not below any of the 8 neighbours
    peak = np.ones(values.shape, bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr or dc:
                peak &= values >= image[rows + dr, columns + dc]
    rows, columns, values = rows[peak], columns[peak], values[peak]
    order = np.argsort(values)[::-1]
    shares: list[float] = []
    taken: list[tuple[int, int]] = []
    for i in order:
        r, c = int(rows[i]), int(columns[i])
        if any(abs(r - tr) < FOCUS_BOX_PX and abs(c - tc) < FOCUS_BOX_PX for tr, tc in taken):
            continue  # the same particle's plateau, or a neighbour in its box
        taken.append((r, c))
        box = image[r - half:r + half + 1, c - half:c + half + 1]
        light = float(box.sum()) - background * box.size
        if light > 0:
            shares.append(min(1.0, (float(values[i]) - background) / light))
        if len(taken) >= FOCUS_PARTICLES:
            break
    return round(100.0 * float(np.median(shares)), 2) if shares else 0.0
