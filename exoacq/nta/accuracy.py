"""Accuracy of NTA sizing and concentration against the simulated instrument's truth.

``exoacq bench accuracy`` runs the simulated camera (exoacq.drivers.simulated_nta,
not paced in real time) through the same tracking code as the daemon, across
a matrix of samples, and reports the error of mean, mode, D50 and concentration.

* Truth: sizes are the simulated diameters; the number mean of the particles in
  the box; the concentration is the realised one, particles in the box / box
  volume (the count is drawn Poisson, so it differs from the nominal).
* Calibration: the detection volume is measured first on separate videos of
  100 nm beads (other seeds), as ``exoacq calibrate nta`` does with a bead
  standard of known concentration, and used for every case.
* Camera level: set per sample as an operator does, so that the largest
  particles of a monodisperse sample are as bright as the calibration beads
  (a 400 nm sphere scatters 4096 x a 100 nm one and would saturate the
  camera). The mixture is recorded at the beads' level, so its 150 nm
  particles are 11 x brighter than its 100 nm ones and seen deeper.
* Statistics: the population in the light sheet renews only as particles
  diffuse through it (~ 6 s for 100 nm, ~ 25 s for 400 nm), so each case
  records ``captures`` x ``capture_s`` (the SOP's 5 x 60 s by default).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from exoacq.drivers.simulated_nta import SampleComponent, make_simulated_nta
from exoacq.nta.analysis import StreamingTracker, TrackingParameters, locate_features
from exoacq.nta.results import combine_captures

CAMERA = {"width": 640, "height": 480, "pixel_size_um": 0.166, "frame_rate_hz": 25.0, "exposure_ms": 15.0}
BEAD_PHOTONS_100NM = 5000.0  # the simulator's default level: 100 nm beads well above the threshold
MINMASS = 300.0
TARGETS = {"mono": {"mean": 3.0, "mode": 3.0, "concentration": 10.0},
           "mixture": {"mean": 5.0, "d50": 5.0}}


@dataclass(frozen=True)
class Case:
    name: str
    components: tuple[SampleComponent, ...]
    concentration_per_ml: float
    temperature_c: float = 25.0
    drift_um_s: tuple[float, float] = (0.0, 0.0)
    kind: str = "mono"
    #: photons_100nm of the camera; None: the largest particles as bright as the beads
    photons_100nm: float | None = None
    seed: int = 1000

    def camera_photons(self) -> float:
        if self.photons_100nm is not None:
            return self.photons_100nm
        largest = max(c.diameter_nm for c in self.components)
        return BEAD_PHOTONS_100NM * (100.0 / largest) ** 6


def default_matrix(seed: int = 1000) -> list[Case]:
    """Sizes 50-400 nm (with and without a 3 um/s drift), 15/25/37 C, 1e8-2e9 /mL, a 2:1 100+150 nm mix.

    Monodisperse samples at 3e8 /mL (~ 20 particles per frame, as SOPs ask), 400 nm at 1e9 /mL:
    its slow particles renew the population in view only every ~ 25 s, so with ~ 20 in view
    one 5 x 60 s sample's concentration scatters widely (at 3e8: two samples +10.5 % and
    -0.1 %, one sample's captures from -1 % to +19 %); the mixture at
    1e9 /mL, so that the ~ 350 particles drawn hold close to 2:1 (at 3e8, ~ 100 particles
    drawn hold 2:1 only within +-5 % points, and the D50 of a mixture near 1:1 jumps
    between its two sizes).
    """
    drift = (3.0 * math.cos(0.5), 3.0 * math.sin(0.5))
    mix = (SampleComponent(100.0, number_fraction=2.0), SampleComponent(150.0, number_fraction=1.0))
    cases = []
    for d in (50.0, 60.0, 100.0, 200.0, 400.0):
        for label, v in (("", (0.0, 0.0)), ("-drift", drift)):
            cases.append(Case(f"{d:g}nm{label}", (SampleComponent(d),), 1e9 if d >= 400.0 else 3e8, drift_um_s=v))
    cases += [Case(f"100nm-{t:g}C", (SampleComponent(100.0),), 3e8, temperature_c=t) for t in (15.0, 37.0)]
    cases += [Case(f"100nm-{c:.0e}".replace("+0", ""), (SampleComponent(100.0),), c) for c in (1e8, 1e9, 2e9)]
    cases += [Case("mix-100+150nm", mix, 1e9, kind="mixture", photons_100nm=BEAD_PHOTONS_100NM),
              Case("mix-100+150nm-drift", mix, 1e9, drift_um_s=drift, kind="mixture",
                   photons_100nm=BEAD_PHOTONS_100NM)]
    return [Case(c.name, c.components, c.concentration_per_ml, c.temperature_c, c.drift_um_s, c.kind,
                 c.photons_100nm, seed + i) for i, c in enumerate(cases)]


@dataclass
class Calibration:
    detection_volume_nl: float
    relative_depth: float
    videos: list[dict[str, float]] = field(default_factory=list)


def record(case: Case, *, capture_s: float, captures: int, calibration: Calibration | None,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Simulate one sample for ``captures`` consecutive captures; return truth and the combined result."""
    camera, thermometer, sample = make_simulated_nta(
        list(case.components), case.concentration_per_ml, illumination_mw=None, temperature_c=case.temperature_c,
        drift_um_s=case.drift_um_s, seed=case.seed, realtime=False, photons_100nm=case.camera_photons(), **CAMERA)
    camera.connect()
    thermometer.connect()
    camera.start()
    smallest = min(c.diameter_nm for c in case.components)
    frame = np.empty((camera.height, camera.width), camera.dtype)
    results = []
    for k in range(captures):
        params = TrackingParameters.for_sample(
            frame_rate_hz=camera.frame_rate_hz, exposure_ms=camera.exposure_ms, pixel_size_um=camera.pixel_size_um,
            temperature_c=thermometer.temperature_c(), min_diameter_nm=min(30.0, 0.6 * smallest), minmass=MINMASS,
            detection_volume_nl=calibration.detection_volume_nl if calibration else None,
            calibration_relative_depth=calibration.relative_depth if calibration else None,
            frame_width_px=camera.width, frame_height_px=camera.height)
        tracker = StreamingTracker(params)
        for i in range(int(round(capture_s * camera.frame_rate_hz))):
            camera.fill(frame)
            tracker.add_frame(i, locate_features(frame, **params.locate_options()))
        results.append({"capture": k + 1, "summary": tracker.summary(), "tracking": params.to_dict(),
                        "frames_processed": len(tracker.features_per_frame), "files": {}})
        if progress:
            progress(f"{case.name}: capture {k + 1}/{captures}")
    camera.close()
    box_ml = math.prod(sample.box_um) * 1e-12
    return {"truth": {"concentration_per_ml": len(sample) / box_ml, "particles": len(sample),
                      "mean_nm": float(sample.diameters_nm.mean()), "d50_nm": float(np.median(sample.diameters_nm))},
            "result": combine_captures(results)}


def calibrate(*, capture_s: float, captures: int, samples: int = 3, seed: int = 1,
              progress: Callable[[str], None] | None = None) -> Calibration:
    """Detection volume from 100 nm beads at the beads' camera level: ``samples`` independent
    samples (their own seeds, none shared with the cases) of ``captures`` x ``capture_s`` each;
    volume and detection depth averaged over the samples."""
    volumes, depths, videos = [], [], []
    for k in range(samples):
        bead = Case(f"calibration-100nm-{k + 1}", (SampleComponent(100.0),), 3e8, seed=seed + k)
        recorded = record(bead, capture_s=capture_s, captures=captures, calibration=None, progress=progress)
        result, truth = recorded["result"], recorded["truth"]
        crowding = np.mean([c["crowding_correction"] for c in result["captures"]])
        volumes.append(result["particles_per_frame"] * crowding / truth["concentration_per_ml"] * 1e6)
        depths += [c["detection"]["mean_relative_depth"] for c in result["captures"]]
        videos.append({"seed": bead.seed, "particles_per_frame": result["particles_per_frame"],
                       "true_concentration_per_ml": truth["concentration_per_ml"], "volume_nl": volumes[-1]})
    return Calibration(float(np.mean(volumes)), float(np.mean(depths)), videos)


def _error_percent(measured: float | None, truth: float) -> float | None:
    return None if measured is None else round(100.0 * (measured / truth - 1.0), 2)


def evaluate(case: Case, recorded: dict[str, Any]) -> dict[str, Any]:
    """Errors (%) of the combined result against the truth, and whether each meets its target."""
    truth, result = recorded["truth"], recorded["result"]
    size = result["size_nm"]
    if case.kind == "mono":
        d = case.components[0].diameter_nm
        errors = {"mean": _error_percent(size["mean"], d), "mode": _error_percent(size["mode"], d),
                  "d50": _error_percent(size["d50"], d),
                  "concentration": _error_percent(result["concentration_per_ml"], truth["concentration_per_ml"])}
    else:
        errors = {"mean": _error_percent(size["mean"], truth["mean_nm"]),
                  "d50": _error_percent(size["d50"], truth["d50_nm"]),
                  "mean_detected": _error_percent((result.get("size_nm_detected") or {}).get("mean"),
                                                  truth["mean_nm"]),
                  "concentration": _error_percent(result["concentration_per_ml"], truth["concentration_per_ml"])}
    targets = TARGETS[case.kind]
    passed = {k: errors[k] is not None and abs(errors[k]) <= t for k, t in targets.items()}
    return {"case": case.name, "kind": case.kind, "diameters_nm": [c.diameter_nm for c in case.components],
            "number_fractions": [c.number_fraction for c in case.components],
            "temperature_c": case.temperature_c, "drift_um_s": list(case.drift_um_s),
            "concentration_nominal_per_ml": case.concentration_per_ml, "camera_photons_100nm": case.camera_photons(),
            "seed": case.seed, "truth": truth,
            "measured": {"size_nm": size, "size_nm_detected": result.get("size_nm_detected"),
                         "concentration_per_ml": result["concentration_per_ml"],
                         "particles_per_frame": result["particles_per_frame"], "tracks_used": result["tracks"]["used"],
                         "standard_error": {"size_nm": result["standard_error"]["size_nm"],
                                            "concentration_per_ml": result["standard_error"]["concentration_per_ml"]}
                         if result.get("standard_error") else None},
            "error_percent": errors, "target_percent": targets, "passed": passed}


def bench_accuracy(cases: list[Case], *, capture_s: float = 60.0, captures: int = 5,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    calibration = calibrate(capture_s=capture_s, captures=captures, progress=progress)
    rows = []
    for case in cases:
        rows.append(evaluate(case, record(case, capture_s=capture_s, captures=captures, calibration=calibration,
                                          progress=progress)))
        if progress:
            e = rows[-1]["error_percent"]
            progress(f"{case.name}: " + ", ".join(f"{k} {v:+.1f} %" for k, v in e.items() if v is not None))
    return {"calibration": {"detection_volume_nl": calibration.detection_volume_nl,
                            "uncertainty_nl": float(np.std([v["volume_nl"] for v in calibration.videos], ddof=1)
                                                    / math.sqrt(len(calibration.videos))),
                            "relative_depth": calibration.relative_depth, "videos": calibration.videos,
                            "captures": captures, "capture_s": capture_s},
            "cases": rows, "all_passed": all(all(r["passed"].values()) for r in rows),
            "elapsed_s": round(time.perf_counter() - start, 1)}
