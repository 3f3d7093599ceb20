"""Benchmarks: exoacq and its baseline measured side by side in one run (JSON on stdout).

Speed figures live here, not in tests. Each benchmark states what it ran so
that a figure can be reproduced and compared on another machine.
"""
from __future__ import annotations

import json
import os
import platform
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
def bench_realtime(*, width: int = 1280, height: int = 1024, fps: float = 30.0, duration_s: float = 30.0,
                   workers: int = 1) -> dict[str, Any]:
    """Run a daemon with a simulated camera and measure drops and the frame-to-document latency.

    Latency of a progress document = its arrival time at a subscriber (a thread
    blocked on its own SUB socket) minus the exposure-start timestamp of the
    newest frame it accounts for.
    """
    import threading

    import zmq

    from exoacq.bus import ControlClient, loads
    from exoacq.client import follow_run
    from exoacq.demo import start_daemon, stop_daemon

    exposure_ms = min(15.0, 0.5 * 1000.0 / fps)
    with tempfile.TemporaryDirectory(prefix="exoacq-bench-") as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(simulated_instrument_toml(
            camera={"width": width, "height": height, "frame_rate_hz": fps, "exposure_ms": exposure_ms},
            tracking={"workers": workers}))
        process, control = start_daemon(Path(tmp) / "data", Path(tmp) / "daemon.log", extra=["--config", str(config)])
        latencies: list[float] = []
        try:
            with ControlClient(control) as client:
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
        finally:
            stop_daemon(process)
    frames = result["frames"]
    lat = np.array(latencies) * 1e3
    return {
        "benchmark": "realtime",
        "settings": {"width": width, "height": height, "fps": fps, "exposure_ms": exposure_ms,
                     "duration_s": duration_s, "workers": workers, "detector": "fast"},
        "frames_published": frames["acquired"],
        "frames_processed": frames["processed"],
        "frames_dropped": frames["dropped"],
        "frames_dropped_by": frames["dropped_by"],
        "latency_ms": {"p50": float(np.percentile(lat, 50)) if lat.size else None,
                       "p99": float(np.percentile(lat, 99)) if lat.size else None,
                       "max": float(lat.max()) if lat.size else None, "documents": int(lat.size)},
        "particles_per_frame": result["particles_per_frame"],
        "machine": machine(),
    }


# -- analyze: exoacq analyze against a plain trackpy pipeline ------------------------------------
def bench_analyze(video_path: Path, params, *, threads: int | None = None) -> dict[str, Any]:
    """Wall time of exoacq's offline analysis and of a plain trackpy pipeline on the same video.

    trackpy: ``batch`` (numba engine, one process: trackpy issue #788), ``link``
    (memory 0, same search range), ``filter_stubs`` (same minimum length),
    ``imsd``. Both include decoding the video; compilation is warmed up first.
    """
    import trackpy as tp

    from exoacq.nta.analysis import warm_up
    from exoacq.nta.offline import analyze_video
    from exoacq.nta.video import open_video

    warm_up()
    tp.quiet()

    t0 = time.perf_counter()
    video = open_video(video_path)
    summary = analyze_video(video, params, threads=threads)
    exoacq_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    frames = list(open_video(video_path).frames())
    features = tp.batch(frames, params.feature_diameter_px, minmass=params.minmass, invert=params.invert,
                        engine="numba", processes=1)
    # the baseline links with the range and keeps the track length exoacq chose from the data
    search_range, min_length = summary["link_search_range_px"], summary["tracks"]["min_length_frames"]
    linked = tp.link(features, search_range, memory=0)
    kept = tp.filter_stubs(linked, min_length)
    msd = tp.imsd(kept, params.pixel_size_um, params.frame_rate_hz)
    trackpy_s = time.perf_counter() - t0
    return {
        "benchmark": "analyze",
        "video": str(video_path), "frames": summary["frames_analysed"],
        "exoacq_s": exoacq_s, "trackpy_s": trackpy_s, "speedup": trackpy_s / exoacq_s,
        "features": {"exoacq": round(summary["particles_per_frame"] * summary["frames_analysed"]),
                     "trackpy": int(len(features))},
        "tracks_used": {"exoacq": summary["tracks"]["used"], "trackpy": int(msd.shape[1])},
        "settings": {"exoacq_threads": threads or os.cpu_count(), "trackpy_processes": 1,
                     "feature_diameter_px": params.feature_diameter_px, "minmass": params.minmass,
                     "search_range_px": search_range, "min_track_length": min_length},
        "machine": machine(),
    }


def require_video(path: Path) -> Path:
    if not Path(path).exists():
        raise ExoacqError(f"{path}: no such video (make one with `exoacq simulate video OUT.avi`)")
    return Path(path)
