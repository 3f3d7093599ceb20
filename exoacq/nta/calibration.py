"""Calibration files: versioned TOML with provenance (``calibrations/``).

An NTA detection-volume calibration states the optics it was measured with;
the daemon refuses to use it with different optics, since the effective
detection volume depends on magnification, exposure, laser power and the
detection threshold (and on particle size and refractive index: it is valid
for particles like its standard).
"""
from __future__ import annotations

import math
import tomllib
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from exoacq.config import load_toml_model, resolve_file
from exoacq.errors import ConfigError

#: Project root, for the relative paths of the embedded default configuration.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CalibrationInfo(_Strict):
    kind: str
    version: int = Field(ge=1)
    date: date
    instrument: str
    method: str
    operator: str = ""
    #: Last day the calibration may be used (inclusive, UTC); None: it does not expire. A lab's
    #: procedure sets it (e.g. a year after ``date``, or the bead lot's expiry, whichever is first).
    expires: date | None = None

    def expired(self, on: date) -> bool:
        """Whether the calibration has expired on the day ``on`` (it is valid through ``expires``)."""
        return self.expires is not None and on > self.expires


class NTAOptics(_Strict):
    pixel_size_um: float = Field(gt=0)
    frame_rate_hz: float = Field(gt=0)
    #: 0: not known (an offline recording without it)
    exposure_ms: float = Field(ge=0)
    laser_power_mw: float = Field(gt=0)
    feature_diameter_px: int = Field(ge=3)
    #: The detection threshold on the calibration video. Samples need not use the same: each one's detection
    #: depth follows from its own brightness over its own threshold (exoacq.nta.distribution).
    minmass: float = Field(ge=0)
    #: How it was chosen: "noise" (from the video's noise, exoacq.nta.threshold) or "fixed" (given)
    threshold_rule: Literal["noise", "fixed"] = "fixed"
    false_detections_per_frame: float | None = Field(None, gt=0)
    noise_margin: float | None = Field(None, gt=0)


class BeadStandard(_Strict):
    description: str
    diameter_nm: float = Field(gt=0)
    refractive_index: float = Field(gt=1)
    lot: str = ""


class DetectionVolume(_Strict):
    detection_volume_nl: float = Field(gt=0)
    uncertainty_nl: float = Field(ge=0)
    measurements: int = Field(ge=1)
    #: The beads' mean detection depth in units of the light sheet's 1/e^2 half-width, from their
    #: brightness over the threshold (exoacq.nta.distribution); with it, samples detected deeper or
    #: shallower than the beads get their own detection volume.
    relative_detection_depth: float | None = Field(None, gt=0)


class NTACalibration(_Strict):
    calibration: CalibrationInfo
    optics: NTAOptics
    standard: BeadStandard
    result: DetectionVolume

    def source(self, path: Path) -> str:
        c = self.calibration
        return (f"{path.name} v{c.version} ({c.date}, {self.standard.description}: "
                f"{self.result.detection_volume_nl:.4g} +/- {self.result.uncertainty_nl:.2g} nL)")


def resolve(path: Path | str, relative_to: Path | None) -> Path:
    """A calibration file, looked up beside the configuration file, then in the project root."""
    return resolve_file(path, relative_to, what="calibration")


def load_nta_calibration(path: Path) -> NTACalibration:
    calibration = load_toml_model(path, NTACalibration, "calibration")
    if calibration.calibration.kind != "nta.detection_volume":
        raise ConfigError(f"calibration {path}: kind = {calibration.calibration.kind!r}, "
                          "expected 'nta.detection_volume'")
    return calibration


def check_optics(calibration: NTACalibration, path: Path, **actual: float) -> None:
    """Refuse a calibration measured with other optics (relative tolerance 0.1 %). The detection threshold
    is not among them: a sample's detection depth at its own threshold is scaled from the beads' at theirs."""
    recorded = calibration.optics.model_dump()
    for key, value in actual.items():
        if abs(recorded[key] - value) > 1e-3 * max(abs(value), 1e-12):
            raise ConfigError(f"calibration {path} was measured with {key} = {recorded[key]:g}, "
                              f"but the instrument is set to {value:g}: recalibrate or change the setting")


def block_standard_error(values: list[float] | tuple[float, ...], block: int) -> float:
    """Standard error of the mean of a correlated series by block averaging (Flyvbjerg &
    Petersen 1989): means of consecutive blocks of ``block`` values are nearly independent."""
    import numpy as np

    v = np.asarray(values, float)
    n_blocks = v.size // block
    if n_blocks < 2:
        raise ConfigError(f"too few frames ({v.size}) for an uncertainty: need at least {2 * block}")
    means = v[: n_blocks * block].reshape(n_blocks, block).mean(axis=1)
    return float(means.std(ddof=1) / math.sqrt(n_blocks))


def nta_calibration_text(*, volume_nl: float, uncertainty_nl: float, frames: int, optics: NTAOptics,
                         standard: BeadStandard, instrument: str, method: str, version: int = 1,
                         relative_detection_depth: float | None = None, expires: date | None = None) -> str:
    """The TOML of a detection-volume calibration (validated by reading it back); ``expires``: the
    last day it may be used (None: no expiry)."""
    text = f"""# NTA detection-volume calibration written by exoacq.
# Valid with the optics below and for particles like the standard (scatter grows as d^6).

[calibration]
kind = "nta.detection_volume"
version = {version}
date = {date.today().isoformat()}
instrument = {_toml_str(instrument)}
method = {_toml_str(method)}
{"" if expires is None else f"expires = {expires.isoformat()}   # last day it may be used{chr(10)}"}
[optics]
pixel_size_um = {optics.pixel_size_um!r}
frame_rate_hz = {optics.frame_rate_hz!r}
exposure_ms = {optics.exposure_ms!r}
laser_power_mw = {optics.laser_power_mw!r}
feature_diameter_px = {optics.feature_diameter_px}
minmass = {optics.minmass!r}   # on the calibration video; samples use their own (see threshold_rule)
threshold_rule = "{optics.threshold_rule}"
{"" if optics.false_detections_per_frame is None else f"false_detections_per_frame = {optics.false_detections_per_frame!r}{chr(10)}"}{"" if optics.noise_margin is None else f"noise_margin = {optics.noise_margin!r}{chr(10)}"}
[standard]
description = {_toml_str(standard.description)}
diameter_nm = {standard.diameter_nm!r}
refractive_index = {standard.refractive_index!r}
lot = {_toml_str(standard.lot)}

[result]
detection_volume_nl = {volume_nl:.6g}
uncertainty_nl = {uncertainty_nl:.3g}   # standard error (block averaging over frames)
measurements = {frames}
"""
    if relative_detection_depth is not None:
        text += (f"relative_detection_depth = {relative_detection_depth:.5g}   "
                 "# beads' mean detection depth / sheet half-width (from their brightness)\n")
    NTACalibration.model_validate(tomllib.loads(text))
    return text


def _toml_str(value: str) -> str:
    import json
    return json.dumps(value)  # a JSON string is a valid TOML basic string
