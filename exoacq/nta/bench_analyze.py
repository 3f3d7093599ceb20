"""``exoacq bench analyze``: exoacq's offline analysis against a plain trackpy pipeline, side by side in one run.

Both decode the same video and find the same tracks (:func:`bench_analyze`); the times of each, in the process
and as commands in new interpreters, and their ratios, as JSON on stdout. The video as given and a lossless
FFV1 copy of it (a common format of recorded videos).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exoacq.errors import ExoacqError
from exoacq.nta.bench import machine


def video_codec(path: Path) -> str:
    """The FOURCC tag of a video's codec as OpenCV reports it ("FFV1", "AVC1", ...; "RAW" for
    uncompressed frames without a tag), or "frames" for a TIFF stack, a folder of frames or a frame stack (.npy)."""
    import cv2

    from exoacq.nta.video import FRAME_SUFFIXES, _tag

    path = Path(path)
    if path.is_dir() or path.suffix.lower() in (*FRAME_SUFFIXES, ".npy"):
        return "frames"
    capture = cv2.VideoCapture(str(path))
    try:  # FFmpeg reports no tag (0) for raw video in AVI (rawvideo)
        return _tag(capture.get(cv2.CAP_PROP_FOURCC)).strip("\x00 ").upper() or "RAW"
    finally:
        capture.release()


def open_ffv1_writer(path: Path, width: int, height: int, dtype: np.dtype, frame_rate_hz: float):
    """An OpenCV (FFmpeg) writer of gray FFV1 frames of ``dtype`` (uint8 or uint16), lossless."""
    import cv2

    depth = {np.dtype(np.uint8): cv2.CV_8U, np.dtype(np.uint16): cv2.CV_16U}.get(np.dtype(dtype))
    if depth is None:
        raise ExoacqError(f"{path}: cannot write {np.dtype(dtype)} frames as FFV1 video (uint8 or uint16 only)",
                          code="bad_video")
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"FFV1"), float(frame_rate_hz),
                             (int(width), int(height)),
                             params=[cv2.VIDEOWRITER_PROP_DEPTH, depth, cv2.VIDEOWRITER_PROP_IS_COLOR, 0])
    if not writer.isOpened():
        raise ExoacqError(f"{path}: cannot open an FFV1 video for writing (OpenCV without FFmpeg?)",
                          code="bad_video")
    return writer


def write_ffv1_copy(source: Path, target: Path) -> Path:
    """The frames of ``source`` (as exoacq reads them: one channel, own bit depth) as a lossless FFV1
    video in Matroska (a common lossless format of recorded NTA videos)."""
    from exoacq.nta.video import open_video

    video = open_video(source)
    writer = None
    try:
        for frame in video.frames():
            if writer is None:
                writer = open_ffv1_writer(target, video.width, video.height, frame.dtype, video.fps or 25.0)
            writer.write(frame)
    finally:
        if writer is not None:
            writer.release()
    return Path(target)


def analysis_argv(args: Any) -> list[str]:
    """The analysis options of a parsed command line (``add_analysis_options``) as arguments again."""
    import argparse

    from exoacq.nta.cli_analyze import add_analysis_options

    probe = argparse.ArgumentParser(add_help=False)
    add_analysis_options(probe)
    argv: list[str] = []
    for action in probe._actions:
        value = getattr(args, action.dest, action.default)
        if isinstance(action, argparse._StoreConstAction):  # store_true / store_false
            if value == action.const:
                argv.append(action.option_strings[0])
        elif value is not None and value != action.default:
            argv += [action.option_strings[0], str(value)]
    return argv


def baseline_minmass(summary: dict[str, Any], params) -> tuple[float, float]:
    """The thresholds exoacq applied: (minmass, link_minmass), the ones it chose for the video
    (summary["threshold"]) when it chose them, else the configured ones."""
    threshold = summary.get("threshold")
    if isinstance(threshold, dict) and threshold.get("minmass") is not None:
        minmass = float(threshold["minmass"])
        return minmass, float(threshold.get("link_minmass") or minmass)
    return float(params.minmass), float(params.link_minmass)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON documents (NaN equals NaN; floats to the bit)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _time_process(argv: list[str], what: str) -> tuple[float, dict[str, Any]]:
    """Wall time of ``argv`` in a new interpreter (its imports included) and the JSON it printed."""
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["(no message)"]
        raise ExoacqError(f"{what} failed in the benchmark: {lines[-1]}")
    return seconds, json.loads(proc.stdout)


def _time_command(video_path: Path, command_args: list[str]) -> tuple[float, dict[str, Any]]:
    """``exoacq analyze nta VIDEO ... --json`` as a command: its wall time and its result."""
    import sys

    return _time_process([sys.executable, "-m", "exoacq", "analyze", "nta", str(video_path), *command_args, "--json"],
                         f"exoacq analyze nta {video_path}")


@dataclass(frozen=True)
class Baseline:
    """What the trackpy baseline is given: the video's optics and the choices exoacq made for it."""

    diameter_px: int
    invert: bool
    pixel_size_um: float
    frame_rate_hz: float
    minmass: float
    link_minmass: float
    search_range_px: float
    min_length: int


def trackpy_pipeline(video_path: Path, b: Baseline) -> tuple[Any, Any, Any]:
    """The plain trackpy pipeline, decoding included: (features, kept tracks, imsd). Features down to
    ``link_minmass`` are linked; tracks whose mean mass reaches ``minmass`` are kept (exoacq.nta.analysis,
    link_minmass).

    8-bit frames are given to trackpy as 16-bit integers (the same values): trackpy rescales the band-passed
    image of an 8-bit frame to 8 bits, which lowers each feature's mass by up to half a step per disc pixel
    (~1.5 % of a dim feature's), and so finds other features at the threshold than exoacq (whose detector
    keeps the band-passed values: exoacq.nta.detect); in 16 bits it keeps them too, and both pipelines
    find the same features and tracks. The linker is trackpy's with exoacq's settings (memory 0, the
    adaptive search of exoacq.nta.analysis in oversized subnets)."""
    import trackpy as tp

    from exoacq.nta.video import open_video

    tp.quiet()  # trackpy reports every frame otherwise
    frames, invert = list(open_video(video_path).frames()), b.invert
    if frames and frames[0].dtype == np.uint8:  # inverted as 8 bits (255 - value), as exoacq's detector does
        frames = [(255 - f if invert else f).astype(np.uint16) for f in frames]
        invert = False
    features = tp.batch(frames, b.diameter_px, minmass=b.link_minmass, invert=invert, engine="numba", processes=1)
    linked = tp.link(features, b.search_range_px, memory=0, adaptive_stop=0.5, adaptive_step=0.8)
    kept = tp.filter_stubs(linked, b.min_length)
    kept = kept[kept.groupby("particle")["mass"].transform("mean") >= b.minmass]
    return features, kept, tp.imsd(kept, b.pixel_size_um, b.frame_rate_hz)


def track_spans(first_frames: Any, lengths: Any) -> list[list[int]]:
    """Tracks as sorted [first frame, points] pairs: two pipelines' tracks compared without their ids."""
    return sorted([int(f), int(n)] for f, n in zip(first_frames, lengths))


def exoacq_spans(tracker: Any) -> list[list[int]]:
    """The tracks a :class:`exoacq.nta.analysis.StreamingTracker` used (after its summary), as :func:`track_spans`."""
    table = tracker.tracks_table()
    used = table.loc[table["used"].to_numpy(bool)]
    return track_spans(used["first_frame"], used["length_frames"])


def trackpy_spans(kept: Any) -> list[list[int]]:
    frames = kept.groupby("particle")["frame"]
    return track_spans(frames.min(), frames.size())


def _time_trackpy_command(video_path: Path, b: Baseline) -> tuple[float, dict[str, Any]]:
    """The trackpy pipeline as a script in a new interpreter (trackpy's import and its numba compilation
    included, as :func:`_time_command` includes exoacq's): its wall time and what it found."""
    import sys

    return _time_process([sys.executable, "-m", "exoacq.nta.bench_analyze", str(video_path),
                          json.dumps(dataclasses.asdict(b))], f"the trackpy baseline on {video_path}")


def _bench_case(video_path: Path, params, threads: int | None, command_args: list[str] | None,
                repeat: int) -> dict[str, Any]:
    """One video, ``repeat`` times each pipeline (interleaved); times are the medians of the runs."""
    from exoacq.nta.offline import analyze_video
    from exoacq.nta.video import open_video

    runs: dict[str, list[float]] = {"exoacq_s": [], "exoacq_command_s": [], "trackpy_s": [], "trackpy_command_s": []}
    cpu: dict[str, list[float]] = {"exoacq": [], "trackpy": []}
    summary: dict[str, Any] = {}
    spans: dict[str, list[list[int]]] = {}
    trackers: list = []  # the analysis's tracker, its tracks compared after the timing
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        summary = analyze_video(open_video(video_path), params, threads=threads, tracked=trackers.append)
        runs["exoacq_s"].append(time.perf_counter() - t0)
        cpu["exoacq"].append(time.process_time() - c0)
        spans["exoacq"] = exoacq_spans(trackers.pop())
        # the baseline applies the threshold, link range and track length exoacq chose from the data
        minmass, link_minmass = baseline_minmass(summary, params)
        baseline = Baseline(params.feature_diameter_px, params.invert, params.pixel_size_um, params.frame_rate_hz,
                            minmass, link_minmass, summary["link_search_range_px"],
                            summary["tracks"]["min_length_frames"])
        if command_args is not None:
            command_s, document = _time_command(video_path, command_args)
            if not _same(document["tracks"], summary["tracks"]):
                raise ExoacqError(f"{video_path}: `exoacq analyze nta` gave other tracks than the in-process analysis")
            runs["exoacq_command_s"].append(command_s)
            command_s, found = _time_trackpy_command(video_path, baseline)
            runs["trackpy_command_s"].append(command_s)
            spans["trackpy_command"] = found["tracks"]
        t0, c0 = time.perf_counter(), time.process_time()
        features, kept, msd = trackpy_pipeline(video_path, baseline)
        runs["trackpy_s"].append(time.perf_counter() - t0)
        cpu["trackpy"].append(time.process_time() - c0)
        spans["trackpy"] = trackpy_spans(kept)
    case: dict[str, Any] = {"video": str(video_path), "codec": video_codec(video_path)}
    case.update({name: float(np.median(times)) for name, times in runs.items() if times})
    case["speedup"] = case["trackpy_s"] / case["exoacq_s"]
    if "exoacq_command_s" in case:
        case["speedup_command"] = case["trackpy_s"] / case["exoacq_command_s"]
        case["speedup_both_commands"] = case["trackpy_command_s"] / case["exoacq_command_s"]
    case.update({
        "runs": {name: [round(t, 3) for t in times] for name, times in runs.items() if times},
        # CPU time of the process (all threads), medians: what a busy shared machine changes least
        "cpu_s": {name: round(float(np.median(times)), 3) for name, times in cpu.items()},
        # features at the threshold (those counted for the concentration)
        "features": {"exoacq": int(sum(summary["features_per_frame"])),
                     "trackpy": int((features["mass"] >= minmass).sum())},
        "tracks_used": {"exoacq": summary["tracks"]["used"], "trackpy": int(msd.shape[1])},
        # the tracks used, compared as [first frame, points]: identical in both pipelines
        "same_tracks": spans["exoacq"] == spans["trackpy"] == spans.get("trackpy_command", spans["trackpy"]),
        "frames": summary["frames_analysed"], "minmass": minmass, "search_range_px": baseline.search_range_px,
        "link_minmass": link_minmass, "min_track_length": baseline.min_length, "_summary": summary,
    })
    return case


def bench_analyze(video_path: Path, params, *, threads: int | None = None, ffv1: bool = True,
                  command_args: list[str] | None = None, repeat: int = 1) -> dict[str, Any]:
    """Wall time of exoacq's offline analysis and of a plain trackpy pipeline on the same video, as
    given ("input") and, with ``ffv1``, as a lossless FFV1 copy of it ("ffv1"; a common lossless format of
    recorded videos), unless the video is FFV1 already.

    trackpy (:func:`trackpy_pipeline`): ``batch`` (numba engine, one process: trackpy issue #788;
    the threshold exoacq applied), ``link`` (memory 0, the search range exoacq chose),
    ``filter_stubs`` (the minimum length exoacq chose), ``imsd``. Both include decoding the video
    (trackpy: the frames read first, in one thread, as a plain script would); both are warmed up
    first (numba compilation, imports). ``same_tracks``: both used the same tracks (each one's
    first frame and length). With ``command_args`` (the analysis options as command-line
    arguments), ``exoacq analyze nta`` is also timed as a command in a new interpreter
    (imports, numba's cache and decoding included), and so is the trackpy pipeline as a script
    (trackpy's import and numba compilation included): ``speedup_command`` is the command against
    the warm trackpy baseline (a lower bound), ``speedup_both_commands`` against the script. With
    ``repeat``, each is run that many times, interleaved; the medians are reported (and every run),
    with the CPU time each took (``cpu_s``).
    """
    import trackpy as tp

    from exoacq.nta.analysis import warm_up

    if repeat < 1:
        raise ExoacqError(f"--repeat {repeat}: must be >= 1", code="usage")
    warm_up()
    tp.quiet()
    video_path = Path(video_path)
    cases: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="exoacq-bench-") as tmp:
        cases["input"] = _bench_case(video_path, params, threads, command_args, repeat)
        if ffv1 and cases["input"]["codec"] != "FFV1":
            copy = write_ffv1_copy(video_path, Path(tmp) / f"{video_path.stem}-ffv1.mkv")
            cases["ffv1"] = _bench_case(copy, params, threads, command_args, repeat)
            cases["ffv1"]["video"] = f"FFV1 copy of {video_path.name}"
    reference = cases["input"].pop("_summary")
    for case in cases.values():
        summary = case.pop("_summary", reference)
        case["same_result_as_input"] = _same(summary, reference)
    first = cases["input"]
    return {
        "benchmark": "analyze",
        "video": str(video_path), "frames": first["frames"], "repeat": repeat,
        "speedup": {name: case["speedup"] for name, case in cases.items()},
        "cases": cases,
        "settings": {"exoacq_threads": threads or os.cpu_count(), "trackpy_processes": 1,
                     "feature_diameter_px": params.feature_diameter_px, "minmass": first["minmass"],
                     "search_range_px": first["search_range_px"], "min_track_length": first["min_track_length"]},
        "machine": machine(),
    }


def cmd_bench_analyze(args: Any) -> int:
    """``exoacq bench analyze VIDEO [analysis options] [--no-ffv1] [--repeat N]``: JSON on stdout."""
    from exoacq.nta.cli_analyze import analysis_parameters
    from exoacq.nta.video import open_video

    params, _ = analysis_parameters(args, open_video(require_video(args.video)))
    result = bench_analyze(args.video, params, ffv1=getattr(args, "ffv1", True), command_args=analysis_argv(args),
                           repeat=getattr(args, "repeat", 1))
    print(json.dumps(result))
    return 0


def require_video(path: Path) -> Path:
    if not Path(path).exists():
        raise ExoacqError(f"{path}: no such video (make one with `exoacq simulate video OUT.avi`)")
    return Path(path)


def _trackpy_baseline_main(argv: list[str]) -> int:
    """``python -m exoacq.nta.bench_analyze VIDEO BASELINE_JSON``: the trackpy baseline as a script (what it found, as
    JSON on stdout), for :func:`_time_trackpy_command`."""
    video, options = argv
    features, kept, _ = trackpy_pipeline(Path(video), Baseline(**json.loads(options)))
    print(json.dumps({"features": int((features["mass"] >= json.loads(options)["minmass"]).sum()),
                      "tracks": trackpy_spans(kept)}))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_trackpy_baseline_main(sys.argv[1:]))
