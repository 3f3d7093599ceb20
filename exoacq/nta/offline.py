"""Offline NTA analysis of a recorded video, with the tracking core's own code.

The frames go through the same detector (:func:`locate_features`) and the
same :class:`StreamingTracker` as in the daemon, so a video and a live run of
the same frames give the same numbers. Three kinds of work overlap (a
pipeline; the stages release the GIL in their compiled parts):

* decoding, in a thread of its own, a bounded number of frames ahead
  (:func:`exoacq.nta.video.read_ahead`);
* detection, on all cores (the compiled detector releases the GIL), a bounded
  number of frames in flight;
* linking, in frame order, in the calling thread.

trackpy (the linker, with pandas' and scipy.stats' APIs) is imported in a
background thread from the start, so that its import (about 1.5 s of CPU)
overlaps decoding, the threshold's noise frames and detection of the first
frames (the linker first links after the search-range pilot's frames) rather
than preceding them; exoacq.nta.analysis imports it only where it links.

Measured (2-core VM, 450 frames of 640 x 480, 8 bits; ``exoacq bench analyze``):
lossless FFV1 decoding takes 5-6 s of CPU, the rest of the analysis ~3 s, and
FFmpeg's two frame threads used 1.0-1.7 cores when decoding alone, so on two
cores the analysis is bound by decoding. ``exoacq analyze nta`` starts decoding
before it imports this module (exoacq.nta.cli_analyze) and passes the frames in
(``frames``). Results are the same to the bit with ``overlap_decoding=False``
(tests/test_offline_pipeline.py).
"""
from __future__ import annotations

import importlib
import itertools
import os
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np

from exoacq.client import StatusLine
from exoacq.errors import ExoacqError
from exoacq.nta.analysis import StreamingTracker
from exoacq.nta.parameters import TrackingParameters, locate_features
from exoacq.nta.threshold import SAMPLE_FRAMES as THRESHOLD_FRAMES  # as the daemon's runs
from exoacq.nta.video import Video, start_decoding

#: Progress is reported every this many frames.
CHUNK_FRAMES = 32
#: Frames in detection at once, per detection thread (enough that no thread waits for the linker).
IN_FLIGHT_PER_THREAD = 4
#: Imported in the background while the first frames are decoded and detected: the linker (trackpy, with
#: the scipy parts it loads) and what the final summary needs.
BACKGROUND_MODULES = ("trackpy.linking", "scipy.stats", "scipy.optimize")


def import_in_background(modules: tuple[str, ...] = BACKGROUND_MODULES) -> threading.Thread:
    """Start importing ``modules`` in a thread, then compiling trackpy's numba subnet linker
    (exoacq.nta.analysis.warm_up_linker); a use before it has finished waits for it (Python's
    per-module import lock, numba's compile lock). A failed import is left for that use to report
    (it raises the same error)."""
    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - reported by the import that needs it
                return
        from exoacq.nta.analysis import warm_up_linker

        warm_up_linker()

    thread = threading.Thread(target=run, name="background-import", daemon=True)
    thread.start()
    return thread


def analyze_video(video: Video, params: TrackingParameters, *, threads: int | None = None,
                  progress: Callable[[int, int | None], None] | None = None,
                  overlap_decoding: bool = True, frames: Iterator[np.ndarray] | None = None,
                  tracked: Callable[[StreamingTracker], None] | None = None) -> dict[str, Any]:
    """Track every frame of ``video``; return the result summary (as ``nta.result``'s core fields).

    A threshold not given (``params.minmass`` None) is chosen from the first THRESHOLD_FRAMES
    frames' noise, and the camera's clip level from their pixel type (exoacq.nta.parameters.with_threshold),
    as the daemon does. ``overlap_decoding=False`` decodes in the
    calling thread, alternating with the rest (the same results, to the bit). ``frames``: the video's
    frames being decoded already (:func:`exoacq.nta.video.start_decoding`, started before the
    analysis's imports); closed here. ``tracked`` is given the tracker once the summary is made (its tracks).
    """
    workers = threads or os.cpu_count() or 1
    importing = import_in_background()
    if frames is None:
        frames = start_decoding(video) if overlap_decoding else video.frames()
    in_flight: deque[Future] = deque()
    done = 0
    corrupt: list[int] = []  # frames holding NaN or infinite pixels
    try:
        first = list(itertools.islice(frames, THRESHOLD_FRAMES))
        if not first:
            raise ExoacqError(f"{video.path}: no frames to analyse")
        from exoacq.nta.parameters import with_threshold  # the threshold (unless given) and the clip level
        try:
            params = with_threshold(params, first)
        except ExoacqError as exc:  # what is wrong with the frames: said of this video
            raise ExoacqError(f"{video.path}: {exc}", code=exc.code) from None
        tracker = StreamingTracker(params)
        options = params.locate_options()
        # the first frame in this thread, before the others start: numba loads its cache (and imports) here, once
        detected: Future = Future()
        detected.set_result(_locate(first[0], options))
        in_flight.append(detected)

        def link_oldest() -> None:
            nonlocal done
            features = in_flight.popleft().result()
            if features is None:  # a corrupt frame: left out (tracks end there), and said
                corrupt.append(done)
            else:
                tracker.add_frame(done, features)
            done += 1
            if progress and done % CHUNK_FRAMES == 0:
                progress(done, video.frame_count)

        with ThreadPoolExecutor(workers) as pool:
            try:
                for frame in itertools.chain(first[1:], frames):
                    in_flight.append(pool.submit(_locate, frame, options))
                    if len(in_flight) >= IN_FLIGHT_PER_THREAD * workers:
                        link_oldest()
                while in_flight:
                    link_oldest()
            finally:
                for future in in_flight:
                    future.cancel()
    finally:
        frames.close()
        importing.join()
    if progress and done % CHUNK_FRAMES:
        progress(done, video.frame_count)
    analysed = done - len(corrupt)
    if sum(tracker.features_per_frame) == 0:
        if not params.minmass:  # the automatic threshold of frames without noise
            raise ExoacqError(f"{video.path}: no particles found in {analysed} frames: they show no noise and no "
                              "feature (uniform frames?)")
        raise ExoacqError(f"{video.path}: no particles found in {analysed} frames (minmass = {params.minmass:g}; "
                          f"try a lower --minmass{'' if params.invert else ', or --invert for dark particles'})")
    summary = tracker.summary()
    summary["warnings"] = video.warnings + summary["warnings"]
    if corrupt:
        summary["warnings"].append(f"{len(corrupt)} frame(s) hold NaN or infinite pixel values (the first: frame "
                                   f"{corrupt[0]}): left out of the analysis, tracks end at them")
    summary["frames_analysed"] = analysed
    summary["features_per_frame"] = list(tracker.features_per_frame)
    if tracked is not None:
        tracked(tracker)
    return summary


def _locate(frame: np.ndarray, options: dict[str, Any]):
    """The frame's features; None for a frame of floats holding NaN or infinite values (a corrupt frame)."""
    if frame.dtype.kind == "f" and not np.isfinite(frame).all():
        return None
    return locate_features(frame, **options)


class StderrProgress(StatusLine):
    """``analysed 320/480 frames`` on stderr; every 10 % when not on a terminal."""

    def __init__(self, stream=sys.stderr):
        super().__init__(stream)
        self._last_decile = -1

    def __call__(self, done: int, total: int | None) -> None:
        if not self.tty:
            decile = int(10 * done / total) if total else done // 100
            if decile == self._last_decile:
                return
            self._last_decile = decile
        self._line(f"analysed {done}/{total or '?'} frames", final=False)
