"""``exoacq bench batch``: the same simulated NTA videos analysed as a batch on a local Dask
cluster of 1 and of 2 worker processes (one thread each), timed; the speed-up is 1-worker
time over 2-worker time. Each cluster is started and its workers warmed up (the compiled
detector loaded, one video analysed on every worker) before the clock starts, so the times
are those of the analyses, not of starting Python processes. The documents of both runs
must be the same (``identical``: bit for bit), as each input's numbers are those of a serial
analysis; ``max_relative_difference`` is the largest relative difference of any number in
them (the tracker numbers tracks in an order that may vary from run to run, and sums over
tracks in another order may differ in the last bit: ~1e-16).
Two workers can only be faster with two free CPUs: ``machine`` records the CPUs usable and
the load average before the run (other work on the machine), and each run its workers' CPU
time (``cpus_busy`` = CPU seconds / seconds: about the number of workers when each had a
CPU of its own).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from exoacq.errors import ExoacqError

#: The analysis options (those of `exoacq analyze nta`) for the simulator's 8-bit videos.
OPTIONS = {"pixel_size_um": 0.166, "minmass": 250.0, "temperature_c": 25.0, "exposure_ms": 15.0}


def bench_batch(*, videos: int = 8, frames: int = 300, width: int = 640, height: int = 480,
                workers: tuple[int, int] = (1, 2)) -> dict[str, Any]:
    """Analyse ``videos`` simulated videos on ``workers[0]`` and ``workers[1]`` Dask workers."""
    import dask
    import distributed

    from exoacq.batch import dask_client, local_workers, run_batch
    from exoacq.nta.bench import machine
    from exoacq.nta.cli_analyze import add_analysis_options, analyse_input, analysis_options
    from exoacq.nta.simulate import write_simulated_video

    if videos < 1 or frames < 20 or width < 64 or height < 64:
        raise ExoacqError("bench batch: needs >= 1 video of >= 20 frames of >= 64 x 64 pixels", code="usage")
    import argparse
    parser = argparse.ArgumentParser(add_help=False)
    add_analysis_options(parser)
    options = analysis_options(parser.parse_args(
        [arg for key, value in OPTIONS.items() for arg in (f"--{key.replace('_', '-')}", str(value))]))
    result: dict[str, Any] = {"benchmark": "batch", "inputs": videos,
                              "video": {"frames": frames, "width": width, "height": height, "frame_rate_hz": 25.0,
                                        "diameter_nm": 100.0},
                              "options": options}
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other work shares the CPUs
    with tempfile.TemporaryDirectory(prefix="exoacq-bench-batch-") as tmp:
        paths = []
        for seed in range(videos):
            path = Path(tmp) / f"video-{seed:03d}.avi"
            write_simulated_video(path, frames=frames, width=width, height=height, seed=seed)
            paths.append(path)
        documents: dict[int, dict[str, dict[str, Any]]] = {}
        for n in workers:
            with dask_client(workers=n) as client:
                client.run(analyse_input, str(paths[0]), {**options, "threads": 1})  # warm up every worker
                cpu_before = client.run(time.process_time)
                started = time.perf_counter()
                docs = {d["input"]: d for d in run_batch(analyse_input, paths, options, client)}
                seconds = time.perf_counter() - started
                cpu_after = client.run(time.process_time)
            failed = {k: d["error"] for k, d in docs.items() if "error" in d}
            if failed:
                raise ExoacqError(f"bench batch: {next(iter(failed.items()))}")
            documents[n] = docs
            cpu = sum(cpu_after[w] - cpu_before[w] for w in cpu_after)
            # cpu_seconds / seconds: the CPUs the workers got (n when each had a CPU of its own)
            result[f"workers_{n}"] = {"seconds": seconds, "seconds_per_input": seconds / videos,
                                      "threads_per_worker": 1, "cpu_seconds": cpu, "cpus_busy": cpu / seconds}
    one, two = workers
    result["speedup"] = result[f"workers_{one}"]["seconds"] / result[f"workers_{two}"]["seconds"]
    result["identical"] = json.dumps(documents[one], sort_keys=True) == json.dumps(documents[two], sort_keys=True)
    result["max_relative_difference"] = max_relative_difference(documents[one], documents[two])
    result["machine"] = {**machine(), "cpus_usable": local_workers(), "load_average_before": load_before,
                         "dask": dask.__version__, "distributed": distributed.__version__}
    return result


def max_relative_difference(a: Any, b: Any) -> float:
    """The largest relative difference between the numbers of two documents of the same shape;
    infinite when anything else differs (keys, lengths, strings, integers, None)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return math.inf
        return max((max_relative_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return math.inf
        return max((max_relative_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, float) and isinstance(b, float):
        if a == b or (math.isnan(a) and math.isnan(b)):
            return 0.0
        return abs(a - b) / max(abs(a), abs(b))
    return 0.0 if type(a) is type(b) and a == b else math.inf
