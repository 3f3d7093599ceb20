"""``exoacq bench flow``: the flow method's throughput on one core, in one run.

``samples_per_s``: trigger-channel samples per second through pulse detection
(three int16 channels, 100,000 events/s; :func:`exoacq.flow.pulses_bench.bench_pulses`).
``events_per_s``: events per second through calibration (diameter, MESF),
gating, and statistics (:func:`exoacq.flow.analysis.bench_analysis`). The
issue's targets are stated beside the figures. Also reported, without a target:
``simulator_realtime_factor`` (seconds of simulated cytometer trace made per
second of wall time; the simulated instrument needs >= 1 to stream in real
time) and ``scatter_inversions_per_s`` (scatter to diameter through the Mie
table).
"""
from __future__ import annotations

import os
import platform
import time
from typing import Any

import numpy as np

#: Issue #11's acceptance: one core.
TARGET_SAMPLES_PER_S = 200e6
TARGET_EVENTS_PER_S = 2e6


def median_time_s(run, repeats: int) -> tuple[float, list[float]]:
    """Median wall time (s) of ``repeats`` calls of ``run``, and every time (the flow benches' timing)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times


def bench_simulator(seconds: float = 1.0, repeats: int = 3) -> dict[str, Any]:
    """Seconds of simulated trace per wall second (median of ``repeats``), after a warm-up."""
    from exoacq.flow.simulate import FlowSimulator
    from exoacq.flow.simulated import ev_sample, silica_beads
    sim = FlowSimulator(ev_sample() + silica_beads(), dilution=100, seed=9)
    n = int(round(seconds * sim.cytometer.sample_rate_hz))
    sim.traces(1000)                                     # load the kernel
    median, times = median_time_s(lambda: sim.traces(n), repeats)
    return {"trace_s": seconds, "times_s": times, "realtime_factor": seconds / median}


def bench_scatter_inversion(n_values: int = 2_000_000, repeats: int = 3) -> dict[str, Any]:
    """Cross sections (nm^2) inverted to diameters (nm) per second through the EV Mie table."""
    from exoacq.flow.scatter import Collection, ScatterTable, ev
    table = ScatterTable(ev(), wavelength_nm=488.0, medium_refractive_index=1.333, collection=Collection())
    values = np.random.default_rng(1).lognormal(0.0, 2.0, n_values)
    table.diameter_nm(values[:1000])
    median, times = median_time_s(lambda: table.diameter_nm(values), repeats)
    return {"n_values": n_values, "times_s": times, "per_s": n_values / median}


def bench_flow(seconds: float = 1.0, n_events: int = 2_000_000) -> dict[str, Any]:
    import numba

    from exoacq.flow.analysis import bench_analysis
    from exoacq.flow.pulses_bench import bench_pulses

    numba.set_num_threads(1)
    pulses = bench_pulses(seconds=seconds)
    analysis = bench_analysis(n_events=n_events)
    simulator = bench_simulator(seconds=seconds)
    scatter = bench_scatter_inversion(n_values=n_events)
    return {
        "benchmark": "flow",
        "samples_per_s": pulses["samples_per_s"],
        "events_per_s": analysis["events_per_s"],
        "simulator_realtime_factor": simulator["realtime_factor"],
        "scatter_inversions_per_s": scatter["per_s"],
        "targets": {"samples_per_s": TARGET_SAMPLES_PER_S, "events_per_s": TARGET_EVENTS_PER_S},
        "meets_targets": pulses["samples_per_s"] >= TARGET_SAMPLES_PER_S
        and analysis["events_per_s"] >= TARGET_EVENTS_PER_S,
        "pulses": pulses, "analysis": analysis, "simulator": simulator, "scatter_inversion": scatter,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
    }
