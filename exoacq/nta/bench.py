"""Benchmarks: exoacq and its baseline measured side by side in one run (JSON on stdout).

Speed figures live here, not in tests. Each benchmark states what it ran so
that a figure can be reproduced and compared on another machine.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from exoacq.errors import ExoacqError


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}


def simulated_instrument_toml(*, name: str = "nta", camera: dict[str, Any] | None = None,
                              settings: dict[str, Any] | None = None, tracking: dict[str, Any] | None = None,
                              simulation: dict[str, Any] | None = None) -> str:
    """A configuration with one simulated NTA instrument (laser, camera, thermometer; no calibration)."""
    def value(v: Any) -> str:  # TOML: JSON's scalars and lists, inline tables for dicts
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    def table(header: str, values: dict[str, Any] | None) -> str:
        rows = "".join(f"{k} = {value(v)}\n" for k, v in (values or {}).items())
        return f"[{header}]\n{rows}"

    return "".join([
        table(f"instruments.{name}", {"method": "nta"}),
        table(f"instruments.{name}.devices.laser", {"driver": "obis", "simulated": True}),
        table(f"instruments.{name}.devices.camera", {"driver": "simulated-nta", "simulated": True, **(camera or {})}),
        table(f"instruments.{name}.devices.temperature", {"driver": "simulated-thermometer", "simulated": True}),
        table(f"instruments.{name}.settings", settings),
        table(f"instruments.{name}.settings.tracking", tracking),
        table(f"instruments.{name}.simulation", simulation),
    ])


# -- realtime: the daemon with its simulated camera, end to end --------------------------------
#: The replayed camera's frames: at most this many are rendered ahead (10 s at 30 frames/s, 790 MB
#: at 1280 x 1024 x 16 bits); a longer capture plays them again from the first.
REPLAY_MAX_FRAMES = 300


def render_replay(path: Path, *, width: int, height: int, fps: float, exposure_ms: float, frames: int,
                  seed: int = 0) -> dict[str, Any]:
    """The frames the simulated instrument's camera would deliver (its default sample, 100 nm at
    3e8 /mL, 12 bits, the laser at the acquisition's default 40 mW), rendered ahead into a frame
    stack ``path`` (.npy) for the video-file camera to play at the frame rate; returns what was
    rendered and the CPU seconds it took."""
    from exoacq.drivers.simulated_nta import SampleComponent, make_simulated_nta
    from exoacq.nta.settings import NTASettings, SimulatedCameraOptions, SimulationConfig

    sim, options = SimulationConfig(), SimulatedCameraOptions()
    camera, _, _ = make_simulated_nta(
        [SampleComponent(**c.model_dump()) for c in sim.components], sim.concentration_per_ml,
        temperature_c=sim.temperature_c, illumination_mw=lambda: NTASettings().laser_power_mw, seed=seed,
        realtime=False, width=width, height=height, frame_rate_hz=fps, exposure_ms=exposure_ms,
        bit_depth=options.bit_depth, pixel_size_um=options.pixel_size_um)
    stack = np.lib.format.open_memmap(path, mode="w+", dtype=camera.dtype, shape=(frames, height, width))
    cpu = time.thread_time()
    camera.connect()
    camera.start()
    try:
        for frame in stack:
            camera.fill(frame)
    finally:
        camera.close()
    render_s = time.thread_time() - cpu
    stack.flush()
    del stack
    return {"frames": frames, "render_cpu_ms_per_frame": round(1e3 * render_s / frames, 1),
            "bit_depth": options.bit_depth, "pixel_size_um": options.pixel_size_um}


def replay_instrument_toml(stack: Path, *, fps: float, exposure_ms: float, bit_depth: int, pixel_size_um: float,
                           workers: int) -> str:
    """One NTA instrument whose camera plays a frame stack (video-file, in a loop, at ``fps``), with
    the simulated laser and temperature controller of the simulated instrument."""
    return (f'[instruments.nta]\nmethod = "nta"\n'
            f'[instruments.nta.devices.laser]\ndriver = "obis"\nsimulated = true\n'
            f'[instruments.nta.devices.camera]\ndriver = "video-file"\npath = {json.dumps(str(stack))}\n'
            f'pixel_size_um = {pixel_size_um!r}\nframe_rate_hz = {fps!r}\nexposure_ms = {exposure_ms!r}\n'
            f'bit_depth = {bit_depth}\nloop = true\n'
            f'[instruments.nta.devices.temperature]\ndriver = "ted4015"\nsimulated = true\n'
            f'setpoint_c = 25.0\noutput_on_connect = true\n'
            f'[instruments.nta.settings.tracking]\nworkers = {workers}\n')


def bench_realtime(*, width: int = 1280, height: int = 1024, fps: float = 30.0, duration_s: float = 30.0,
                   workers: int = 1, console: bool = False, console_nice: int | None = None,
                   camera: str = "replay") -> dict[str, Any]:
    """Run a daemon with a simulated camera and measure drops and the frame-to-document latency.

    ``camera``: "replay" (default): the simulated camera's frames are rendered before the
    capture (:func:`render_replay`) and played at the frame rate by the video-file camera, so
    the host spends on the camera what it spends with a real one (a copy of each frame, which
    arrives by DMA); "simulated": the simulated camera renders each frame during the capture
    (hardware-in-the-loop; at 1280 x 1024 and 30 frames/s its rendering alone takes ~0.6 of a
    core of the 2-core CI VM, which then has too little left for the console).

    Latency of a progress document = its arrival time at a subscriber (a thread
    blocked on its own SUB socket) minus the exposure-start timestamp of the
    newest frame it accounts for. With ``console``, the operator's console is
    attached throughout (``exoacq web`` and a headless chromium on the live page,
    exoacq.web.bench): ``console`` reports what the page drew during the acquisition;
    the console runs at ``console_nice`` below the daemon's CPU priority (default
    exoacq.web.bench.CONSOLE_NICE; 0: the same), stated in ``console.nice``.
    """
    import threading

    import zmq

    from exoacq.bus import ControlClient, loads
    from exoacq.client import follow_run
    from exoacq.demo import start_daemon, stop_daemon

    if console:  # before the daemon starts: nothing to wait for when no browser can be driven
        from exoacq.web.bench import CONSOLE_NICE, require_browser
        require_browser()
        console_nice = CONSOLE_NICE if console_nice is None else console_nice
        if not 0 <= console_nice <= 19:
            raise ExoacqError(f"--console-nice {console_nice}: must be 0 (the daemon's priority) to 19", code="usage")
    if camera not in ("replay", "simulated"):
        raise ExoacqError(f"--camera {camera}: replay or simulated", code="usage")
    exposure_ms = min(15.0, 0.5 * 1000.0 / fps)
    replayed: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="exoacq-bench-") as tmp:
        config = Path(tmp) / "bench.toml"
        if camera == "replay":
            stack = Path(tmp) / "frames.npy"
            n_frames = min(REPLAY_MAX_FRAMES, math.ceil(duration_s * fps) + 1)
            if (need := n_frames * width * height * 2) > shutil.disk_usage(tmp).free - 2**28:
                raise ExoacqError(f"{tmp}: {need / 1e9:.1f} GB for the replayed frames do not fit; "
                                  "free space or use --camera simulated", code="no_space")
            replayed = render_replay(stack, width=width, height=height, fps=fps, exposure_ms=exposure_ms,
                                     frames=n_frames)
            config.write_text(replay_instrument_toml(stack, fps=fps, exposure_ms=exposure_ms,
                                                     bit_depth=replayed["bit_depth"],
                                                     pixel_size_um=replayed["pixel_size_um"], workers=workers))
        else:
            config.write_text(simulated_instrument_toml(
                camera={"width": width, "height": height, "frame_rate_hz": fps, "exposure_ms": exposure_ms},
                tracking={"workers": workers}))
        process, control = start_daemon(Path(tmp) / "data", Path(tmp) / "daemon.log", extra=["--config", str(config)],
                                        simulated=camera == "simulated")
        latencies: list[float] = []
        acquiring: list[float] = []  # arrival times of the progress documents while acquiring
        attached: dict[str, Any] | None = None
        try:
            with ControlClient(control) as client, _console(console, control, Path(tmp) / "console",
                                                            process.pid, console_nice) as view:
                results = client.request("status")["endpoints"]["results"]
                ctx = zmq.Context()
                sub = ctx.socket(zmq.SUB)
                sub.setsockopt(zmq.LINGER, 0)
                sub.connect(results)
                sub.setsockopt(zmq.SUBSCRIBE, b"nta.progress")
                done = threading.Event()

                def collect() -> None:
                    while not done.is_set():
                        if sub.poll(50):
                            arrived = time.time()
                            doc = loads(sub.recv_multipart()[1])
                            if doc["state"] == "acquiring" and doc.get("last_frame_timestamp"):
                                latencies.append(arrived - doc["last_frame_timestamp"])
                                acquiring.append(arrived)

                collector = threading.Thread(target=collect, name="latency")
                collector.start()
                try:
                    result = follow_run(client, {"method": "nta", "duration_s": duration_s, "captures": 1, "sample": "bench"},
                                        timeout_s=duration_s + 300)
                finally:
                    done.set()
                    collector.join()
                    sub.close()
                    ctx.term()
                if view is not None and acquiring:
                    attached = view.summary(acquiring[0], acquiring[-1])
        finally:
            stop_daemon(process)
    frames = result["frames"]
    lat = np.array(latencies) * 1e3
    extra = {"console": attached} if console else {}
    return {
        "benchmark": "realtime",
        "settings": {"width": width, "height": height, "fps": fps, "exposure_ms": exposure_ms,
                     "duration_s": duration_s, "workers": workers, "detector": "fast", "camera": camera},
        # camera "replay": the simulated frames rendered ahead, how many (played in a loop) and their CPU cost
        "replayed": replayed,
        "frames_published": frames["acquired"],
        "frames_processed": frames["processed"],
        "frames_dropped": frames["dropped"],
        "frames_dropped_by": frames["dropped_by"],
        # frames left out of the kept raw video (its encoder yields the CPU: exoacq.nta.video_encoder)
        "video_frames_lost": frames.get("video_lost", 0),
        "latency_ms": {"p50": float(np.percentile(lat, 50)) if lat.size else None,
                       "p99": float(np.percentile(lat, 99)) if lat.size else None,
                       "max": float(lat.max()) if lat.size else None, "documents": int(lat.size)},
        "particles_per_frame": result["particles_per_frame"],
        **extra,
        "machine": machine(),
    }


def _console(attach: bool, control: str, work_dir: Path, daemon_pid: int, niceness: int | None):
    """The operator's console attached to the daemon (exoacq.web.bench.AttachedConsole), or nothing."""
    import contextlib

    if not attach:
        return contextlib.nullcontext(None)
    from exoacq.web.bench import AttachedConsole
    return AttachedConsole(control, "nta", work_dir, daemon_pid=daemon_pid, niceness=niceness)


# -- analyze: exoacq analyze against a plain trackpy pipeline ------------------------------------
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

    from exoacq.nta.cli import add_analysis_options

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


def _time_command(video_path: Path, command_args: list[str]) -> tuple[float, dict[str, Any]]:
    """Wall time of ``exoacq analyze nta VIDEO ... --json`` in a new interpreter (imports included)."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "exoacq", "analyze", "nta", str(video_path), *command_args, "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["(no message)"]
        raise ExoacqError(f"exoacq analyze nta {video_path} failed in the benchmark: {lines[-1]}")
    return seconds, json.loads(proc.stdout)


def _trackpy_pipeline(video_path: Path, params, minmass: float, link_minmass: float, search_range_px: float,
                      min_length: int) -> tuple[Any, Any]:
    """The plain trackpy pipeline, decoding included: (features, imsd). Features down to ``link_minmass``
    are linked; tracks whose mean mass reaches ``minmass`` are kept (exoacq.nta.analysis, link_minmass)."""
    import trackpy as tp

    from exoacq.nta.video import open_video

    frames = list(open_video(video_path).frames())
    features = tp.batch(frames, params.feature_diameter_px, minmass=link_minmass, invert=params.invert,
                        engine="numba", processes=1)
    linked = tp.link(features, search_range_px, memory=0)
    kept = tp.filter_stubs(linked, min_length)
    kept = kept[kept.groupby("particle")["mass"].transform("mean") >= minmass]
    return features, tp.imsd(kept, params.pixel_size_um, params.frame_rate_hz)


def _bench_case(video_path: Path, params, threads: int | None, command_args: list[str] | None,
                repeat: int) -> dict[str, Any]:
    """One video, ``repeat`` times each pipeline (interleaved); times are the medians of the runs."""
    from exoacq.nta.offline import analyze_video
    from exoacq.nta.video import open_video

    runs: dict[str, list[float]] = {"exoacq_s": [], "exoacq_command_s": [], "trackpy_s": []}
    cpu: dict[str, list[float]] = {"exoacq": [], "trackpy": []}
    summary: dict[str, Any] = {}
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        summary = analyze_video(open_video(video_path), params, threads=threads)
        runs["exoacq_s"].append(time.perf_counter() - t0)
        cpu["exoacq"].append(time.process_time() - c0)
        if command_args is not None:
            command_s, document = _time_command(video_path, command_args)
            if not _same(document["tracks"], summary["tracks"]):
                raise ExoacqError(f"{video_path}: `exoacq analyze nta` gave other tracks than the in-process analysis")
            runs["exoacq_command_s"].append(command_s)
        # the baseline applies the threshold, link range and track length exoacq chose from the data
        minmass, link_minmass = baseline_minmass(summary, params)
        search_range, min_length = summary["link_search_range_px"], summary["tracks"]["min_length_frames"]
        t0, c0 = time.perf_counter(), time.process_time()
        features, msd = _trackpy_pipeline(video_path, params, minmass, link_minmass, search_range, min_length)
        runs["trackpy_s"].append(time.perf_counter() - t0)
        cpu["trackpy"].append(time.process_time() - c0)
    case: dict[str, Any] = {"video": str(video_path), "codec": video_codec(video_path)}
    case.update({name: float(np.median(times)) for name, times in runs.items() if times})
    case["speedup"] = case["trackpy_s"] / case["exoacq_s"]
    if "exoacq_command_s" in case:
        case["speedup_command"] = case["trackpy_s"] / case["exoacq_command_s"]
    case.update({
        "runs": {name: [round(t, 3) for t in times] for name, times in runs.items() if times},
        # CPU time of the process (all threads), medians: what a busy shared machine changes least
        "cpu_s": {name: round(float(np.median(times)), 3) for name, times in cpu.items()},
        # features at the threshold (those counted for the concentration)
        "features": {"exoacq": int(sum(summary["features_per_frame"])),
                     "trackpy": int((features["mass"] >= minmass).sum())},
        "tracks_used": {"exoacq": summary["tracks"]["used"], "trackpy": int(msd.shape[1])},
        "frames": summary["frames_analysed"], "minmass": minmass, "search_range_px": search_range,
        "link_minmass": link_minmass, "min_track_length": min_length, "_summary": summary,
    })
    return case


def bench_analyze(video_path: Path, params, *, threads: int | None = None, ffv1: bool = True,
                  command_args: list[str] | None = None, repeat: int = 1) -> dict[str, Any]:
    """Wall time of exoacq's offline analysis and of a plain trackpy pipeline on the same video, as
    given ("input") and, with ``ffv1``, as a lossless FFV1 copy of it ("ffv1"; a common lossless format of
    recorded videos), unless the video is FFV1 already.

    trackpy: ``batch`` (numba engine, one process: trackpy issue #788; the threshold exoacq
    applied), ``link`` (memory 0, the search range exoacq chose), ``filter_stubs`` (the minimum
    length exoacq chose), ``imsd``. Both include decoding the video (trackpy: the frames read
    first, in one thread, as a plain script would); both are warmed up first (numba
    compilation, imports). With ``command_args`` (the analysis options as command-line
    arguments), ``exoacq analyze nta`` is also timed as a command in a new interpreter
    (imports, numba's cache and decoding included): ``speedup_command`` is then against the
    warm trackpy baseline, which has none of those costs (a lower bound). With ``repeat``,
    each is run that many times, interleaved; the medians are reported (and every run), with
    the CPU time each took (``cpu_s``).
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
    from exoacq.nta.cli import analysis_parameters
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
