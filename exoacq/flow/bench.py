"""``exoacq bench flow``: the flow method's throughput on one core, in one run.

``samples_per_s``: trigger-channel samples per second through pulse detection
(three int16 channels, 100,000 events/s; :func:`exoacq.flow.pulses_bench.bench_pulses`).
``events_per_s``: events per second through calibration (diameter, MESF),
gating, and statistics (:func:`exoacq.flow.analysis.bench_analysis`). The
issue's targets are stated beside the figures.
"""
from __future__ import annotations

import os
import platform
from typing import Any

#: Issue #11's acceptance: one core.
TARGET_SAMPLES_PER_S = 200e6
TARGET_EVENTS_PER_S = 2e6


def bench_flow(seconds: float = 1.0, n_events: int = 2_000_000) -> dict[str, Any]:
    import numba

    from exoacq.flow.analysis import bench_analysis
    from exoacq.flow.pulses_bench import bench_pulses

    numba.set_num_threads(1)
    pulses = bench_pulses(seconds=seconds)
    analysis = bench_analysis(n_events=n_events)
    return {
        "benchmark": "flow",
        "samples_per_s": pulses["samples_per_s"],
        "events_per_s": analysis["events_per_s"],
        "targets": {"samples_per_s": TARGET_SAMPLES_PER_S, "events_per_s": TARGET_EVENTS_PER_S},
        "meets_targets": pulses["samples_per_s"] >= TARGET_SAMPLES_PER_S
        and analysis["events_per_s"] >= TARGET_EVENTS_PER_S,
        "pulses": pulses, "analysis": analysis,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
    }
