"""Accuracy of NTA sizing and concentration against simulated truth, on two independent simulators.

``exoacq bench accuracy`` records a matrix of samples on each simulated instrument
(exoacq.nta.accuracy_sources: exoacq's own camera and an independently written EMCCD
one) and analyses them as a user would, at default settings: the detection threshold
chosen from each video's noise (exoacq.nta.threshold), the motion blur measured from
the tracks (exoacq.nta.steps.estimate_blur; the exposure is never given). Each video is
also analysed with the automatic threshold lowered and raised 1.5 x, which must not move
the sizes. Reported per case: the errors of mean, mode, D50 and concentration, and the
largest change of the mean over the thresholds.

* Truth: the particles in the simulation box (their number is drawn Poisson, so the
  realised concentration and mixture ratio differ from the nominal ones).
* Calibration: one per simulator, as ``exoacq calibrate nta`` does with a bead standard of
  known concentration: 100 nm beads (their own seeds) at the bead level; its detection
  volume and the beads' detection depth serve every case of that simulator, each case
  scaling the volume by its own detection depth at its own threshold.
* Cases: 60, 100, 200 and 400 nm at a short (2 ms) and a whole-frame (40 ms) exposure,
  with the same particles (seed) in both, so that the two means compare directly (the
  "blur pair"); a 2:1 mixture of 100 and 150 nm at the dim level (100 nm a few noise SDs,
  150 nm saturating); 100 nm at 1e8, 3e8 and 5e8 /mL for concentrations over a 5 x range;
  100 nm with a 3 um/s drift and at 37 C.
* Statistics: the population in the light sheet renews only as particles diffuse
  through it, so each case records ``captures`` x ``capture_s`` (default 2 x 60 s).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from exoacq.nta.accuracy_sources import SIMULATORS, Component, Recording
from exoacq.nta.analysis import StreamingTracker
from exoacq.nta.parameters import TrackingParameters, locate_features, with_threshold
from exoacq.nta.results import combine_captures
from exoacq.nta.threshold import SAMPLE_FRAMES

#: The automatic threshold, and lowered and raised by 1.5 x.
THRESHOLD_SCALES = (1.0, 1.0 / 1.5, 1.5)
TARGETS = {"mono": {"mean": 3.0, "mode": 3.0, "threshold": 3.0},
           "mixture": {"mean": 5.0, "d50": 5.0, "threshold": 5.0},
           "dilution": {"mean": 3.0, "concentration": 10.0, "threshold": 3.0}}
#: Blur pair: the same particles recorded at the short and the whole-frame exposure, means within this (%).
BLUR_PAIR_TARGET = 2.0


@dataclass(frozen=True)
class Case:
    name: str
    components: tuple[Component, ...]
    concentration_per_ml: float
    kind: str = "mono"
    exposure: str = "whole"
    level: str = "beads"
    temperature_c: float = 25.0
    drift_um_s: tuple[float, float] = (0.0, 0.0)
    seed: int = 1000


def default_matrix(seed: int = 1000) -> list[Case]:
    """The cases of the module docstring; monodisperse samples at ~ 20-40 particles per frame."""
    cases = []
    for k, d in enumerate((60.0, 100.0, 200.0, 400.0)):
        for exposure in ("short", "whole"):
            cases.append(Case(f"{d:g}nm-{exposure}", (Component(d),), 1e9 if d >= 400 else 3e8, exposure=exposure,
                              seed=seed + k))
    mix = (Component(100.0, 2.0), Component(150.0, 1.0))
    cases += [Case(f"mix-100+150nm-dim-{e}", mix, 1e9, kind="mixture", exposure=e, level="dim", seed=seed + 10)
              for e in ("short", "whole")]
    cases += [Case(f"100nm-{c:.0e}".replace("+0", ""), (Component(100.0),), c, kind="dilution", seed=seed + 20 + i)
              for i, c in enumerate((1e8, 3e8, 5e8))]
    drift = (3.0 * math.cos(0.5), 3.0 * math.sin(0.5))
    cases += [Case("100nm-drift", (Component(100.0),), 3e8, drift_um_s=drift, seed=seed + 30),
              Case("100nm-37C", (Component(100.0),), 3e8, temperature_c=37.0, seed=seed + 31)]
    return cases


@dataclass
class Calibration:
    detection_volume_nl: float
    relative_depth: float
    videos: list[dict[str, float]]


def analyse(recording: Recording, *, temperature_c: float, calibration: Calibration | None,
            scales: tuple[float, ...] = THRESHOLD_SCALES) -> dict[float, dict[str, Any]]:
    """Track one recording at the automatic threshold times each of ``scales``; summaries by scale."""
    base = TrackingParameters.for_sample(
        frame_rate_hz=recording.frame_rate_hz, exposure_ms=None, pixel_size_um=recording.pixel_size_um,
        temperature_c=temperature_c, min_diameter_nm=30.0,
        detection_volume_nl=calibration.detection_volume_nl if calibration else None,
        calibration_relative_depth=calibration.relative_depth if calibration else None,
        frame_width_px=recording.width, frame_height_px=recording.height)
    first: list[np.ndarray] = []
    trackers: dict[float, StreamingTracker] = {}
    for number, frame in enumerate(recording.frames):
        if not trackers:
            first.append(frame)
            if len(first) < SAMPLE_FRAMES:
                continue
            chosen = with_threshold(base, first)
            trackers = {s: StreamingTracker(dataclasses.replace(chosen, minmass=chosen.minmass * s,
                                                                threshold={**chosen.threshold, "scale": s}))
                        for s in scales}
            frames = enumerate(first)
        else:
            frames = [(number, frame)]
        for n, f in frames:
            for tracker in trackers.values():
                tracker.add_frame(n, locate_features(f, **tracker.params.locate_options()))
    return {s: {"summary": t.summary(), "tracking": t.params.to_dict()} for s, t in trackers.items()}


def record_case(simulator: Any, case: Case, *, capture_s: float, captures: int, calibration: Calibration | None,
                scales: tuple[float, ...] = THRESHOLD_SCALES) -> dict[str, Any]:
    """Record and analyse ``captures`` independent captures of one case; truth and results by scale."""
    per_scale: dict[float, list[dict[str, Any]]] = {s: [] for s in scales}
    truths = []
    for k in range(captures):
        recording = simulator.record(case.components, case.concentration_per_ml, level=case.level,
                                     exposure=case.exposure, seconds=capture_s, seed=case.seed * 100 + k,
                                     temperature_c=case.temperature_c, drift_um_s=case.drift_um_s)
        truths.append(recording.truth)
        for s, out in analyse(recording, temperature_c=case.temperature_c, calibration=calibration,
                              scales=scales).items():
            per_scale[s].append({"capture": k + 1, "summary": out["summary"], "tracking": out["tracking"],
                                 "frames_processed": out["summary"]["frames_analysed"], "files": {}})
    truth = {key: float(np.mean([t[key] for t in truths])) for key in truths[0]}
    return {"truth": truth, "results": {s: combine_captures(c) for s, c in per_scale.items()}}


def calibrate(simulator: Any, *, capture_s: float, captures: int, samples: int = 2, seed: int = 1) -> Calibration:
    """Detection volume and the beads' detection depth from 100 nm beads at 3e8 /mL (own seeds)."""
    volumes, depths, videos = [], [], []
    for k in range(samples):
        bead = Case(f"calibration-100nm-{k + 1}", (Component(100.0),), 3e8, seed=seed + k)
        recorded = record_case(simulator, bead, capture_s=capture_s, captures=captures, calibration=None, scales=(1.0,))
        result, truth = recorded["results"][1.0], recorded["truth"]
        crowding = float(np.mean([c["crowding_correction"] or 1.0 for c in result["captures"]]))
        volumes.append(result["particles_per_frame"] * crowding / truth["concentration_per_ml"] * 1e6)
        depths += [c["detection"]["mean_relative_depth"] for c in result["captures"] if c.get("detection")]
        videos.append({"seed": bead.seed, "particles_per_frame": result["particles_per_frame"],
                       "true_concentration_per_ml": truth["concentration_per_ml"], "volume_nl": volumes[-1]})
    return Calibration(float(np.mean(volumes)), float(np.mean(depths)), videos)


def _error_percent(measured: float | None, truth: float) -> float | None:
    return None if measured is None or not truth else round(100.0 * (measured / truth - 1.0), 2)


def evaluate(case: Case, recorded: dict[str, Any]) -> dict[str, Any]:
    """Errors (%) at the automatic threshold, the threshold's effect, and whether each meets its target."""
    truth, results = recorded["truth"], recorded["results"]
    result = results[1.0]
    size = result["size_nm"]
    reference = case.components[0].diameter_nm if case.kind != "mixture" else truth["mean_nm"]
    errors = {"mean": _error_percent(size["mean"], reference),
              "mode": _error_percent(size["mode"], case.components[0].diameter_nm) if case.kind != "mixture" else None,
              "d50": _error_percent(size["d50"], truth["d50_nm"]),
              "concentration": _error_percent(result["concentration_per_ml"], truth["concentration_per_ml"])}
    moved = {f"{s:.3g}": _error_percent(r["size_nm"]["mean"], size["mean"]) for s, r in results.items() if s != 1.0}
    errors["threshold"] = max((abs(v) for v in moved.values() if v is not None), default=None)
    targets = TARGETS[case.kind]
    passed = {k: errors[k] is not None and abs(errors[k]) <= t for k, t in targets.items()}
    return {"case": case.name, "kind": case.kind, "exposure": case.exposure, "level": case.level,
            "diameters_nm": [c.diameter_nm for c in case.components],
            "number_fractions": [c.number_fraction for c in case.components],
            "temperature_c": case.temperature_c, "drift_um_s": list(case.drift_um_s),
            "concentration_nominal_per_ml": case.concentration_per_ml, "seed": case.seed, "truth": truth,
            "measured": {"size_nm": size, "concentration_per_ml": result["concentration_per_ml"],
                         "particles_per_frame": result["particles_per_frame"], "tracks_used": result["tracks"]["used"],
                         "threshold": result.get("threshold"), "blur": result.get("blur"),
                         "saturated_tracks": result.get("saturated_tracks"),
                         "mean_nm_by_threshold_scale": {f"{s:.3g}": r["size_nm"]["mean"] for s, r in results.items()}},
            "threshold_moves_mean_percent": moved, "error_percent": errors, "target_percent": targets,
            "passed": passed}


def blur_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The means of each sample recorded at the short and at the whole-frame exposure, compared."""
    by_name = {r["case"]: r for r in rows}
    pairs = []
    for name, row in by_name.items():
        if name.endswith("-short") and name.replace("-short", "-whole") in by_name:
            other = by_name[name.replace("-short", "-whole")]
            short, whole = row["measured"]["size_nm"]["mean"], other["measured"]["size_nm"]["mean"]
            difference = None if short is None or whole is None else round(100.0 * (whole / short - 1.0), 2)
            pairs.append({"cases": [name, other["case"]], "mean_short_nm": short, "mean_whole_nm": whole,
                          "difference_percent": difference, "target_percent": BLUR_PAIR_TARGET,
                          "passed": difference is not None and abs(difference) <= BLUR_PAIR_TARGET})
    return pairs


def bench_accuracy(cases: list[Case], *, simulators: tuple[str, ...] = ("exoacq", "emccd"), capture_s: float = 60.0,
                   captures: int = 2, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    tables = {}
    for name in simulators:
        simulator = SIMULATORS[name]()
        if progress:
            progress(f"{name}: calibrating with 100 nm beads")
        calibration = calibrate(simulator, capture_s=capture_s, captures=captures)
        rows = []
        for case in cases:
            rows.append(evaluate(case, record_case(simulator, case, capture_s=capture_s, captures=captures,
                                                   calibration=calibration)))
            if progress:
                e = rows[-1]["error_percent"]
                progress(f"{name} {case.name}: " + ", ".join(f"{k} {v:+.1f} %" for k, v in e.items() if v is not None))
        pairs = blur_pairs(rows)
        tables[name] = {
            "calibration": {"detection_volume_nl": calibration.detection_volume_nl,
                            "relative_depth": calibration.relative_depth, "videos": calibration.videos},
            "cases": rows, "blur_pairs": pairs,
            "all_passed": all(all(r["passed"].values()) for r in rows) and all(p["passed"] for p in pairs)}
    return {"simulators": tables, "captures": captures, "capture_s": capture_s,
            "threshold_scales": list(THRESHOLD_SCALES), "all_passed": all(t["all_passed"] for t in tables.values()),
            "elapsed_s": round(time.perf_counter() - start, 1)}
