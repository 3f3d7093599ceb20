"""Write a video of the simulated NTA instrument (test data with a known truth)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from exoacq.drivers.simulated_nta import SampleComponent, make_simulated_nta
from exoacq.errors import ExoacqError

#: 8-bit output like most NTA cameras' videos: gain and offset chosen so that 100 nm
#: polystyrene at the sheet centre (5000 e) stays below saturation.
#: A detection threshold for these videos equivalent to minmass 300 at 12 bits: background
#: features reach a mass of ~100 (trackpy's integer bandpass adds ~0.9 ADU per mask pixel),
#: particles start at ~150; measured on 100 nm at the default settings.
SUGGESTED_MINMASS_8BIT = 250.0
GAIN_8BIT_ADU_PER_E = 0.5
OFFSET_8BIT_ADU = 16.0
#: The densest sample simulated (the bound of a configuration's [simulation] concentration_per_ml).
MAX_CONCENTRATION_PER_ML = 1e11


def write_simulated_video(path: Path, *, frames: int = 450, width: int = 640, height: int = 480,
                          frame_rate_hz: float = 25.0, exposure_ms: float = 15.0, diameter_nm: float = 100.0,
                          concentration_per_ml: float = 3e8, temperature_c: float = 25.0,
                          seed: int = 0) -> dict:
    """Uncompressed 8-bit AVI (as NTA instruments record) of ``frames`` simulated frames;
    returns the truth and settings."""
    path = Path(path)
    if path.suffix.lower() != ".avi":
        raise ExoacqError(f"{path}: simulated videos are written as uncompressed 8-bit .avi")
    if frames < 1:
        raise ExoacqError(f"--frames {frames}: a video has 1 or more frames", code="usage")
    if seed < 0:
        raise ExoacqError(f"--seed {seed}: a seed is 0 or more", code="usage")
    if not concentration_per_ml <= MAX_CONCENTRATION_PER_ML:
        raise ExoacqError(f"--concentration-per-ml {concentration_per_ml:g}: at most {MAX_CONCENTRATION_PER_ML:g} "
                          "particles/mL (as a configuration's [simulation])", code="usage")
    try:
        camera, _, sample = make_simulated_nta(
            [SampleComponent(diameter_nm)], concentration_per_ml, temperature_c=temperature_c,
            illumination_mw=lambda: 40.0, seed=seed, realtime=False, width=width, height=height,
            frame_rate_hz=frame_rate_hz, exposure_ms=exposure_ms, bit_depth=8,
            gain_adu_per_e=GAIN_8BIT_ADU_PER_E, offset_adu=OFFSET_8BIT_ADU)
    except ValueError as exc:  # the simulator's own range checks: "width = 0 is out of range; allowed: ..."
        raise ExoacqError(f"cannot simulate this video: {exc}", code="usage") from None
    if not Path(path).resolve().parent.is_dir():  # before OpenCV, which prints its own lines about it
        raise ExoacqError(f"cannot write {path}: no folder {Path(path).resolve().parent}", code="usage")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"Y800"), frame_rate_hz, (width, height),
                             isColor=False)
    if not writer.isOpened():
        raise ExoacqError(f"{path}: cannot write an uncompressed AVI here")
    camera.connect()
    camera.start()
    buffer = np.empty((height, width), camera.dtype)
    try:
        for _ in range(frames):
            camera.fill(buffer)
            writer.write(buffer.astype(np.uint8))
    finally:
        writer.release()
        camera.close()
    return {"path": str(path), "frames": frames, "width": width, "height": height,
            "frame_rate_hz": frame_rate_hz, "exposure_ms": exposure_ms,
            "pixel_size_um": camera.pixel_size_um, "diameter_nm": diameter_nm,
            "concentration_per_ml": concentration_per_ml, "temperature_c": temperature_c,
            "suggested_minmass": SUGGESTED_MINMASS_8BIT}
