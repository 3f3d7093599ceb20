"""Pulse detection throughput (``exoacq bench flow``) and the synthetic traces it runs on.

:func:`synthetic_trace`: Gaussian pulses with Poisson arrivals on three int16 channels, with
noise; :func:`bench_pulses`: trigger-channel samples per second through
:class:`~exoacq.flow.pulses.PulseDetector` on one core, the trace's generation and the JIT
warm-up not timed.
"""
from __future__ import annotations

import math
import time as _time

import numpy as np
import pandas as pd

from exoacq.flow.pulses import PulseDetector, Trigger

_INT16_MAX = int(np.iinfo(np.int16).max)

def synthetic_trace(duration_s: float, *, sample_rate_hz: float = 20e6, events_per_s: float = 100_000.0,
                    pulse_fwhm_us: float = 1.0, baseline_counts: tuple[float, ...] = (100.0, 50.0, 50.0),
                    noise_counts: float = 5.0, median_height_counts: tuple[float, ...] = (400.0, 200.0, 100.0),
                    height_log_sigma: float = 0.8, band_limited_noise: bool = True,
                    seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian pulses at Poisson arrival times on a noisy baseline: (int16 [channels, samples], peak times s).

    Heights are log-normal (median ``median_height_counts`` per channel, one particle-to-particle
    factor shared by all channels); overlapping pulses add up; Gaussian noise of standard deviation
    ``noise_counts``, white or (``band_limited_noise``) averaged over ~sigma/2 of the pulse as by the
    anti-alias filter in front of a digitizer; rounded and clipped to int16 like an ADC. For benchmarks
    and tests (not a physical cytometer model: that is exoacq.flow.simulate)."""
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * sample_rate_hz))
    n_ch = len(baseline_counts)
    sigma = pulse_fwhm_us * 1e-6 * sample_rate_hz / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    width = max(1, int(round(sigma / 2))) if band_limited_noise else 1   # moving average: anti-alias filter
    white = rng.normal(0.0, noise_counts * math.sqrt(width), (n_ch, n + width)).astype(np.float32)
    trace = np.cumsum(white, axis=1, dtype=np.float64)
    trace = (trace[:, width:] - trace[:, :-width]).astype(np.float32) / width
    trace += np.asarray(baseline_counts, dtype=np.float32)[:, None]
    half = int(math.ceil(5 * sigma))
    centers = np.sort(rng.uniform(half, n - half - 1, rng.poisson(events_per_s * duration_s))) if n > 2 * half + 2 \
        else np.zeros(0)
    factor = np.exp(rng.normal(0.0, height_log_sigma, centers.size))
    offsets = np.arange(-half, half + 1)
    first = np.floor(centers).astype(np.int64)
    shape = np.exp(-((first[:, None] + offsets[None, :]) - centers[:, None]) ** 2 / (2 * sigma ** 2))
    index = (first[:, None] + offsets[None, :]).ravel()
    for c in range(n_ch):
        heights = median_height_counts[c] * factor
        trace[c] += np.bincount(index, (shape * heights[:, None]).ravel(), minlength=n)[:n].astype(np.float32)
    return np.clip(np.rint(trace), -32768, _INT16_MAX).astype(np.int16), centers / sample_rate_hz


def bench_pulses(seconds: float = 0.5, *, sample_rate_hz: float = 20e6, events_per_s: float = 100_000.0,
                 pulse_fwhm_us: float = 1.0, block_samples: int = 1 << 20, repeats: int = 5,
                 seed: int = 0) -> dict:
    """Pulse detection throughput on one core: trigger-channel samples per second (median of ``repeats``).

    Three int16 channels, Gaussian pulses at ``events_per_s`` (Poisson), processed in contiguous blocks
    of ``block_samples``. Not timed: the trace generation, and the first block (JIT or cache load and the
    baseline estimate, done once per acquisition); the timed detectors get that baseline and noise.
    ``detected_events`` < ``true_events`` by the coincidences (pulses closer than about their width
    merge into one, flagged when resolvable)."""
    trace, centers_s = synthetic_trace(seconds, sample_rate_hz=sample_rate_hz, events_per_s=events_per_s,
                                       pulse_fwhm_us=pulse_fwhm_us, seed=seed)
    channels = ["SSC", "FL1", "FL2"]
    blocks = [np.ascontiguousarray(trace[:, i:i + block_samples]) for i in range(0, trace.shape[1], block_samples)]
    t0 = _time.perf_counter()                 # once at the start of an acquisition: not in the rate
    warm = PulseDetector(channels, sample_rate_hz, Trigger())
    warm.process(blocks[0], start_s=0.0)      # (also compiles or loads the kernels)
    baseline_s = _time.perf_counter() - t0
    timings = []
    for _ in range(max(1, repeats)):
        detector = PulseDetector(channels, sample_rate_hz, Trigger(), warm.baseline_counts, warm.noise_counts)
        frames = []
        t0 = _time.perf_counter()
        for i, block in enumerate(blocks):     # as a digitizer delivers them: one contiguous array per block
            frames.append(detector.process(block, start_s=i * block_samples / sample_rate_hz))
        frames.append(detector.flush())
        timings.append(_time.perf_counter() - t0)
    events = pd.concat(frames, ignore_index=True)
    return {
        "samples_per_s": trace.shape[1] / float(np.median(timings)),
        "events_per_s_in_trace": events_per_s,
        "channels": len(channels),
        "sample_rate_hz": sample_rate_hz,
        "pulse_fwhm_us": pulse_fwhm_us,
        "block_samples": block_samples,
        "samples": int(trace.shape[1]),
        "true_events": int(centers_s.size),
        "detected_events": int(len(events)),
        "coincident_events": int(events["Coincident"].sum()),
        "seconds_per_repeat": [round(t, 5) for t in timings],
        "first_block_s": round(baseline_s, 4),    # baseline estimate (+ JIT or cache load) of the first block
    }
