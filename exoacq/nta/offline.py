"""Offline NTA analysis of a recorded video, with the tracking core's own code.

The frames go through the same detector (:func:`locate_features`) and the
same :class:`StreamingTracker` as in the daemon, so a video and a live run of
the same frames give the same numbers. Detection runs on all cores (the
compiled detector releases the GIL); linking follows in frame order.
"""
from __future__ import annotations

import itertools
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from exoacq.client import StatusLine
from exoacq.errors import ExoacqError
from exoacq.nta.analysis import StreamingTracker, TrackingParameters, locate_features
from exoacq.nta.video import Video

CHUNK_FRAMES = 32


def analyze_video(video: Video, params: TrackingParameters, *, threads: int | None = None,
                  progress: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
    """Track every frame of ``video``; return the result summary (as ``nta.result``'s core fields)."""
    tracker = StreamingTracker(params)
    options = params.locate_options()
    frames = video.frames()
    done = 0
    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        while chunk := list(itertools.islice(frames, CHUNK_FRAMES)):
            for features in pool.map(lambda frame: locate_features(frame, **options), chunk):
                tracker.add_frame(done, features)
                done += 1
            if progress:
                progress(done, video.frame_count)
    if done == 0:
        raise ExoacqError(f"{video.path}: no frames to analyse")
    if sum(tracker.features_per_frame) == 0:
        raise ExoacqError(f"{video.path}: no particles found in {done} frames (minmass = {params.minmass:g}; "
                          f"try a lower --minmass{'' if params.invert else ', or --invert for dark particles'})")
    summary = tracker.summary()
    summary["warnings"] = video.warnings + summary["warnings"]
    summary["frames_analysed"] = done
    summary["features_per_frame"] = list(tracker.features_per_frame)
    return summary


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
