"""Measure the detection volume of the simulated NTA camera and write its calibration file.

The simulated instrument knows its truth, so the effective detection volume
is measured without bead-concentration uncertainty: V = (mean features per
frame) / (number of particles in the simulation box / box volume), averaged
over independent samples (seeds). The particle count in the light sheet
decorrelates only as particles diffuse through it (~ 6 s for 100 nm), so a
single 30 s video varies by ~ 7 %: the calibration averages 20 of them.

    python tools/calibrate_simulated_nta.py --seeds 20 --duration 30 --version 4 \
        --output calibrations/nta/simulated-camera.toml
"""
from __future__ import annotations

import argparse
import math
import sys
from datetime import date

import numpy as np

from exoacq.nta.settings import NTASettings as NTAAnalysisConfig, SimulatedCameraOptions as CameraConfig
from exoacq.drivers.simulated_nta import SampleComponent, make_simulated_nta
from exoacq.nta.analysis import StreamingTracker, TrackingParameters, locate_features, with_threshold
from exoacq.nta.threshold import NOISE_MARGIN, SAMPLE_FRAMES

LASER_POWER_MW = 40.0
BEAD = SampleComponent(diameter_nm=100.0, refractive_index=1.59)
CONCENTRATION_PER_ML = 3e8
TEMPERATURE_C = 25.0


def measure_one(seed: int, duration_s: float) -> tuple[float, float, float]:
    """Detection volume (nL), the beads' mean relative detection depth and the threshold chosen (from the
    video's noise, as the daemon chooses it from a run's first frames) of one simulated video."""
    cam_cfg, nta = CameraConfig(), NTAAnalysisConfig()
    camera, _, sample = make_simulated_nta(
        [BEAD], CONCENTRATION_PER_ML, temperature_c=TEMPERATURE_C, illumination_mw=lambda: LASER_POWER_MW,
        seed=seed, realtime=False, width=cam_cfg.width, height=cam_cfg.height,
        frame_rate_hz=cam_cfg.frame_rate_hz, exposure_ms=cam_cfg.exposure_ms, pixel_size_um=cam_cfg.pixel_size_um)
    camera.connect()
    camera.start()
    params = TrackingParameters.for_sample(
        frame_rate_hz=cam_cfg.frame_rate_hz, exposure_ms=cam_cfg.exposure_ms, pixel_size_um=cam_cfg.pixel_size_um,
        temperature_c=TEMPERATURE_C, min_diameter_nm=nta.min_diameter_nm, feature_diameter_px=nta.feature_diameter_px,
        minmass=nta.minmass, min_track_length=nta.min_track_length, detector=nta.detector,
        frame_width_px=cam_cfg.width, frame_height_px=cam_cfg.height)
    frames = []
    for _ in range(int(round(duration_s * camera.frame_rate_hz))):
        frame = np.empty((camera.height, camera.width), camera.dtype)
        camera.fill(frame)
        frames.append(frame)
    params = with_threshold(params, frames[:SAMPLE_FRAMES])
    tracker = StreamingTracker(params)
    for i, frame in enumerate(frames):
        tracker.add_frame(i, locate_features(frame, **params.locate_options()))
    box_ml = float(np.prod(sample.box_um)) * 1e-12
    true_per_ml = len(sample) / box_ml
    summary = tracker.summary()
    particles_per_frame = float(np.mean(tracker.features_per_frame)) * summary["crowding_correction"]
    return particles_per_frame / true_per_ml * 1e6, summary["detection"]["mean_relative_depth"], params.minmass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--output", required=True)
    parser.add_argument("--version", type=int, default=1, help="calibration version: raise it on every re-measurement")
    args = parser.parse_args()
    volumes, depths, thresholds = [], [], []
    for seed in range(args.seeds):
        volume, depth, minmass = measure_one(seed, args.duration)
        volumes.append(volume)
        depths.append(depth)
        thresholds.append(minmass)
        print(f"seed {seed}: {volume:.4f} nL, relative depth {depth:.4f}", file=sys.stderr, flush=True)
    v = np.array(volumes)
    mean, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
    cam_cfg, nta = CameraConfig(), NTAAnalysisConfig()
    text = f"""# Detection volume of the simulated NTA camera at its default settings.
# Written by: python tools/calibrate_simulated_nta.py --seeds {args.seeds} --duration {args.duration:g} --version {args.version} --output ...
# Valid for particles like the standard (100 nm, n = 1.59): scatter grows as d^6, so
# larger or brighter particles are detected deeper in the light sheet.

[calibration]
kind = "nta.detection_volume"
version = {args.version}
date = {date.today().isoformat()}
instrument = "exoacq.drivers.simulated_nta defaults ({cam_cfg.width}x{cam_cfg.height}, sheet waist 5 um)"
method = "mean features per frame (exoacq detector, trackpy-identical; merged close features counted back) / true number concentration in the simulation box, {args.seeds} independent samples x {args.duration:g} s"
operator = "exoacq developers"

[optics]
pixel_size_um = {cam_cfg.pixel_size_um}
frame_rate_hz = {cam_cfg.frame_rate_hz}
exposure_ms = {cam_cfg.exposure_ms}
laser_power_mw = {LASER_POWER_MW}
feature_diameter_px = {nta.feature_diameter_px}
minmass = {float(np.mean(thresholds)):.4g}   # mean over the videos; samples use their own (threshold_rule)
threshold_rule = "noise"
false_detections_per_frame = {nta.false_detections_per_frame}
noise_margin = {NOISE_MARGIN}

[standard]
description = "simulated 100 nm polystyrene"
diameter_nm = {BEAD.diameter_nm}
refractive_index = {BEAD.refractive_index}
lot = "simulation seeds 0-{args.seeds - 1}"

[result]
detection_volume_nl = {mean:.5f}
uncertainty_nl = {se:.5f}   # standard error of the mean over the samples
measurements = {args.seeds}
relative_detection_depth = {float(np.mean(depths)):.5g}   # beads' mean detection depth / sheet half-width
"""
    with open(args.output, "w", encoding="utf-8") as out:
        out.write(text)
    print(f"detection volume {mean:.4f} +/- {se:.4f} nL -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
