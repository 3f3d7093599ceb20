"""Benchmarks: exoacq and its baseline measured side by side in one run (JSON on stdout); ``realtime`` here,
``analyze`` in exoacq.nta.bench_analyze.

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
