"""Side-by-side benchmark of feature detection: exoacq's locate_fast against trackpy.locate.

Frames come from the simulated NTA camera (drivers/simulated_nta.py: 100 nm polystyrene
spheres, default optics, realtime=False), all rendered before any timing, so every
detector sees identical frames. Per case and detector: frames per second on one core
(the process is pinned to one CPU while timing; trackpy's locate and locate_fast run
single-threaded numba code, OpenCV, if loaded, is set to one thread) and the localisation
error against the simulator's truth (mean position over the exposure).

Diameter 11 and minmass 300 (the project's defaults at 640 x 480) hold at 1280 x 1024 too:
same pixel size and optics, so the same spot; the bandpassed mass is 0.39 x the photons at
both sizes (measured 0.395 and 0.393), and features are found from ~900 photons up.

Matching, the same for all detectors: a truth particle counts if it is in the field, at
least diameter // 2 + 1 px from the edges (locate excludes the margin) and bright enough
to be detectable: photons >= 1.5 minmass / MASS_PER_PHOTON (an expected mass of 1.5 x
minmass). It is matched to the nearest feature within 1.5 px; ``rms_px`` is the RMS
distance of the matched pairs, ``matched`` their number over all frames, ``found`` the
number of features returned. ``particles`` sets the concentration so that about that many
are detectable; ``detectable_per_frame`` is the count actually rendered.

Run ``python -m exoacq.nta.locate_bench [frames]`` for the JSON report.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd
import trackpy as tp
from scipy.spatial import cKDTree

from exoacq.drivers.simulated_nta import SampleComponent, make_simulated_nta
from exoacq.errors import ExoacqError
from exoacq.nta.detect import locate_fast

DIAMETER, MINMASS = 11, 300.0  # the project's defaults for this camera (pixel 0.166 um)
MASS_PER_PHOTON = 0.39  # bandpassed mass per photoelectron (diameter 11, PSF sigma 1.8 px)
MATCH_PX = 1.5


def _concentration_per_ml(n: int, width: int, height: int, camera: Any) -> float:
    """Concentration giving ~n detectable particles: those within +-z_d of the sheet centre,
    where photons(z) = photons(0) exp(-2 z^2 / w^2) falls to the detectable level."""
    p0, p_min = camera.expected_photons(100.0), 1.5 * MINMASS / MASS_PER_PHOTON
    z_d = camera.sheet_waist_um * math.sqrt(max(math.log(p0 / p_min), 1e-3) / 2.0)
    volume_ml = width * height * camera.pixel_size_um ** 2 * 2.0 * z_d * 1e-12
    return n / volume_ml


def _render(width: int, height: int, n: int, frames: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames and, per frame, the (x, y) truth of the detectable particles."""
    probe, _, _ = make_simulated_nta([SampleComponent(100.0)], 0.0, illumination_mw=None, width=width,
                                     height=height, realtime=False)
    conc = _concentration_per_ml(n, width, height, probe)
    camera, _, _ = make_simulated_nta([SampleComponent(100.0)], conc, illumination_mw=None, seed=seed,
                                      width=width, height=height, realtime=False)
    camera.connect()
    camera.start()
    edge = DIAMETER // 2 + 1
    images, truths = [], []
    for _ in range(frames):
        buf = np.empty((height, width), np.uint16)
        camera.fill(buf)
        t = camera.truth()
        keep = (t["in_field"] & (t["photons"] >= 1.5 * MINMASS / MASS_PER_PHOTON)
                & (t["x_px"] >= edge) & (t["x_px"] <= width - 1 - edge)
                & (t["y_px"] >= edge) & (t["y_px"] <= height - 1 - edge))
        images.append(buf)
        truths.append(np.column_stack([t["x_px"][keep], t["y_px"][keep]]))
    camera.close()
    return images, truths


def _run(locate: Callable[[np.ndarray], pd.DataFrame], images: list[np.ndarray],
         truths: list[np.ndarray]) -> dict[str, Any]:
    locate(images[0])  # warm up (numba compilation or cache load)
    t0 = time.perf_counter()
    results = [locate(image) for image in images]
    elapsed = time.perf_counter() - t0
    sq, matched, found = 0.0, 0, 0
    for features, truth in zip(results, truths):
        found += len(features)
        if len(features) and len(truth):
            d, _ = cKDTree(features[["x", "y"]].to_numpy()).query(truth, distance_upper_bound=MATCH_PX)
            d = d[np.isfinite(d)]
            sq, matched = sq + float(np.sum(d ** 2)), matched + len(d)
    return {"fps": len(images) / elapsed, "ms_per_frame": 1e3 * elapsed / len(images),
            "rms_px": math.sqrt(sq / matched) if matched else None, "matched": matched, "found": found,
            "frames": len(images)}


def bench_locate(cases=((640, 480, 30), (640, 480, 150), (1280, 1024, 30), (1280, 1024, 150)),
                 frames: int = 20, seed: int = 0) -> dict[str, Any]:
    """Speed and accuracy of locate_fast, trackpy (python engine) and trackpy (numba engine).

    ``cases``: (width, height, detectable particles); ``frames`` per case, the same frames
    for every detector (so the RMS errors compare); same diameter and minmass for all."""
    if frames < 1:
        raise ExoacqError(f"--frames {frames}: a benchmark needs 1 or more frames per case", code="usage")
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:
        pass
    pinned = hasattr(os, "sched_setaffinity")
    before = os.sched_getaffinity(0) if pinned else None
    detectors = {
        "exoacq": (lambda im: locate_fast(im, DIAMETER, MINMASS), frames),
        "trackpy_python": (lambda im: tp.locate(im, DIAMETER, minmass=MINMASS, engine="python"), frames),
        "trackpy_numba": (lambda im: tp.locate(im, DIAMETER, minmass=MINMASS, engine="numba"), frames),
    }
    out = []
    try:
        if pinned:
            os.sched_setaffinity(0, {min(before)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # trackpy warns on frames without features
            for width, height, n in cases:
                images, truths = _render(width, height, n, frames, seed)
                case: dict[str, Any] = {"width": width, "height": height, "particles": n,
                                        "detectable_per_frame": float(np.mean([len(t) for t in truths]))}
                for name, (locate, count) in detectors.items():
                    case[name] = _run(locate, images[:count], truths[:count])
                case["speedup_vs_numba"] = case["exoacq"]["fps"] / case["trackpy_numba"]["fps"]
                out.append(case)
    finally:
        if pinned:
            os.sched_setaffinity(0, before)
    return {"cases": out, "diameter": DIAMETER, "minmass": MINMASS,
            "machine": {"cpus": os.cpu_count(), "threads": 1, "pinned_to_one_cpu": pinned,
                        "note": "trackpy.locate does not use numba's parallel threads; locate_fast is serial"}}


if __name__ == "__main__":
    print(json.dumps(bench_locate(frames=int(sys.argv[1]) if len(sys.argv) > 1 else 20), indent=2))
