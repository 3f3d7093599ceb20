"""``exoacq bench correlator``: the software correlator against ``multipletau`` on one photon stream.

The stream is a simulated 100 nm sample (polystyrene sphere in water, 633 nm, 90 deg,
25 C, beta 0.9) from the physical simulator :class:`exoacq.dls.simulate.PhotonSimulator`
(Mie, Stokes-Einstein, a complex Gaussian field, Poisson photons). If that module cannot be
imported, :func:`photon_stream` here stands in (a single-speckle Ornstein-Uhlenbeck field with
the same Gamma = D q^2); ``settings.stream`` says which was used. Time tags are ticks of
``resolution_s``. Both correlators see the same tags: exoacq's directly, in 0.1 s chunks as
during an acquisition; multipletau the tags binned at the base lag (its ``m=16`` is the same
16-then-8-per-octave layout). Wall-clock times are the best of ``repeats`` runs, numba
compiled beforehand (outside the timing).
"""
from __future__ import annotations

import math
import os
import platform
import sys
import time

import numpy as np

from exoacq.dls.correlator import MultiTauCorrelator
from exoacq.physics import stokes_einstein_diffusion_um2_s, water_viscosity_iapws_mpa_s

#: The simulated sample of the benchmark stream.
SAMPLE = {"diameter_nm": 100.0, "wavelength_nm": 633.0, "angle_deg": 90.0, "temperature_c": 25.0,
          "medium_refractive_index": 1.332}


def decay_rate_per_s(diameter_nm: float = 100.0, *, wavelength_nm: float = 633.0, angle_deg: float = 90.0,
                     temperature_c: float = 25.0, medium_refractive_index: float = 1.332) -> float:
    """Gamma = D q^2 of the field correlation, q = 4 pi n sin(theta/2) / lambda."""
    d_m2_s = stokes_einstein_diffusion_um2_s(diameter_nm, temperature_c,
                                             water_viscosity_iapws_mpa_s(temperature_c)) * 1e-12
    q_per_m = 4 * math.pi * medium_refractive_index * math.sin(math.radians(angle_deg) / 2) / (wavelength_nm * 1e-9)
    return d_m2_s * q_per_m ** 2


def photon_stream(duration_s: float, count_rate_hz: float, resolution_s: float, *, seed: int = 0,
                  gamma_per_s: float | None = None) -> np.ndarray:
    """Ascending int64 time tags of a speckle-modulated Poisson process: photons at rate
    ``count_rate_hz`` |E|^2, E a complex Ornstein-Uhlenbeck field with |g1| = exp(-Gamma tau)
    (default Gamma: the 100 nm sample of :data:`SAMPLE`), so g2 - 1 = exp(-2 Gamma tau).

    The field is an Ornstein-Uhlenbeck process on steps of ~1/(100 Gamma) (AR(1), exact for
    any step); within a step the intensity is constant and the photons uniform."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    gamma = decay_rate_per_s(**SAMPLE) if gamma_per_s is None else gamma_per_s
    step_ticks = max(1, int(round(min(1.0 / (100 * gamma), 1e-5) / resolution_s)))
    step_s = step_ticks * resolution_s
    steps = int(math.ceil(duration_s / step_s))
    a = math.exp(-gamma * step_s)
    noise = (rng.standard_normal(steps) + 1j * rng.standard_normal(steps)) * math.sqrt((1 - a * a) / 2)
    noise[0] /= math.sqrt(1 - a * a)                       # stationary start
    field = lfilter([1.0], [1.0, -a], noise)
    counts = rng.poisson(count_rate_hz * step_s * np.abs(field) ** 2)
    ticks = np.repeat(np.arange(steps, dtype=np.int64) * step_ticks, counts)
    ticks += rng.integers(0, step_ticks, ticks.size)
    ticks.sort()
    end = int(round(duration_s / resolution_s))
    return ticks[ticks < end]


def benchmark_stream(duration_s: float, count_rate_hz: float, resolution_s: float, *,
                     seed: int = 0) -> tuple[np.ndarray, str]:
    """The benchmark's tags and what made them (the physical simulator when importable)."""
    sample = (f"{SAMPLE['diameter_nm']:g} nm sphere in water, {SAMPLE['angle_deg']:g} deg, "
              f"{SAMPLE['wavelength_nm']:g} nm, {SAMPLE['temperature_c']:g} C")
    try:
        from exoacq.dls.simulate import Component, PhotonSimulator, Sample
    except ImportError:
        ticks = photon_stream(duration_s, count_rate_hz, resolution_s, seed=seed)
        return ticks, f"{sample}: exoacq.dls.correlator_bench.photon_stream (single speckle, beta 1)"
    simulator = PhotonSimulator(
        Sample(components=(Component(SAMPLE["diameter_nm"]),), temperature_c=SAMPLE["temperature_c"],
               medium_refractive_index=SAMPLE["medium_refractive_index"], count_rate_hz=count_rate_hz),
        angle_deg=SAMPLE["angle_deg"], wavelength_nm=SAMPLE["wavelength_nm"], resolution_s=resolution_s,
        beta=0.9, seed=seed)
    return simulator.read(duration_s), f"{sample}, beta 0.9: exoacq.dls.simulate.PhotonSimulator"


def _best(repeats: int, run):
    wall, cpu, result = math.inf, math.inf, None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = run()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu, result


def bench_correlator(*, duration_s: float = 2.0, count_rate_hz: float = 5e6, resolution_s: float = 1e-9,
                     base_lag_s: float = 25e-9, max_lag_s: float = 1.0, seed: int = 0, repeats: int = 3,
                     chunk_s: float = 0.1) -> dict:
    """Photons/s of exoacq's correlator and of multipletau on the same stream, and their largest difference.

    ``multipletau.photons_per_s`` counts its correlation only (the stream already binned at the
    base lag); ``binning_seconds`` and ``photons_per_s_with_binning`` add the binning.
    ``max_rel_diff`` is max |g2_exoacq / g2_multipletau - 1| over the lags both report
    (g2 = multipletau's normalised G + 1)."""
    import multipletau
    import numba

    first_channels, per_octave = 16, 8
    ticks, stream = benchmark_stream(duration_s, count_rate_hz, resolution_s, seed=seed)
    end_tick = int(round(duration_s / resolution_s))
    ticks = ticks[ticks < end_tick]
    chunk_ticks = max(1, int(round(chunk_s / resolution_s)))
    cuts = np.searchsorted(ticks, np.arange(chunk_ticks, end_tick, chunk_ticks))
    chunks = np.split(ticks, cuts)

    def new_correlator() -> MultiTauCorrelator:
        return MultiTauCorrelator(resolution_s, base_lag_s=base_lag_s, max_lag_s=max_lag_s,
                                  first_channels=first_channels, per_octave=per_octave)

    warm = new_correlator()                                  # compile (or load the cache) first
    warm.add(ticks[:20000])
    warm.add(ticks[:0], end_tick=end_tick)
    warm.g2()

    def run_exoacq():
        correlator = new_correlator()
        for chunk in chunks[:-1]:
            correlator.add(chunk)
        correlator.add(chunks[-1], end_tick=end_tick)
        return correlator, correlator.g2()

    wall, cpu, (correlator, g2) = _best(repeats, run_exoacq)
    photons = int(ticks.size)

    base = int(round(base_lag_s / resolution_s))
    n_bins = end_tick // base
    bin_wall, _, binned = _best(repeats, lambda: np.bincount(ticks // base, minlength=n_bins)[:n_bins]
                                .astype(np.float64))
    mt_wall, mt_cpu, mt = _best(repeats, lambda: multipletau.autocorrelate(
        binned, m=first_channels, deltat=base * resolution_s, normalize=True, copy=True))
    del binned

    ours = {int(k): g for k, g in zip(np.rint(correlator.lag_s / correlator.base_lag_s), g2) if np.isfinite(g)}
    theirs = {int(k): g + 1.0 for k, g in zip(np.rint(mt[:, 0] / (base * resolution_s)), mt[:, 1]) if k > 0}
    common = sorted(set(ours) & set(theirs))
    diffs = [abs(ours[k] / theirs[k] - 1.0) for k in common]

    from exoacq.dls.simulate import PhotonSimulator, Sample
    simulator = PhotonSimulator(Sample(count_rate_hz=count_rate_hz), angle_deg=173, resolution_s=resolution_s,
                                seed=seed)
    simulator.read(0.01)
    sim_wall, _, sim_ticks = _best(repeats, lambda: simulator.read(duration_s))

    return {
        "simulator": {"realtime_factor": duration_s / sim_wall, "photons_per_s": sim_ticks.size / sim_wall,
                      "note": "seconds of simulated detector photons made per second of wall time "
                              "(>= 1: the simulated photon counter keeps up with real time)"},
        "exoacq": {"photons_per_s": photons / wall, "seconds": wall, "cpu_seconds": cpu,
                   "channels": int(correlator.lag_s.size)},
        "multipletau": {"photons_per_s": photons / mt_wall, "seconds": mt_wall, "cpu_seconds": mt_cpu,
                        "binning_seconds": bin_wall, "photons_per_s_with_binning": photons / (mt_wall + bin_wall),
                        "bins": int(n_bins), "note": "photons_per_s: correlation only, binning excluded"},
        "max_rel_diff": max(diffs) if diffs else None,
        "lags_compared": len(common),
        "max_lag_compared_s": common[-1] * base * resolution_s if common else None,
        "photons": photons,
        "settings": {"duration_s": duration_s, "count_rate_hz": count_rate_hz, "resolution_s": resolution_s,
                     "base_lag_s": base_lag_s, "max_lag_s": max_lag_s, "first_channels": first_channels,
                     "per_octave": per_octave, "seed": seed, "chunk_s": chunk_s,
                     "timing": f"wall clock, best of {repeats}; numba compiled beforehand",
                     "stream": stream,
                     "gamma_per_s": decay_rate_per_s(**SAMPLE)},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                    "numpy": np.__version__, "numba": numba.__version__,
                    "multipletau": getattr(multipletau, "__version__", "?")},
    }
