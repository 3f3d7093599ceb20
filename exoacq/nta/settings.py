"""The NTA method's configuration: ``[instruments.NAME.settings]`` and ``.simulation``.

Units are part of every key name. The simulated camera's keys are here too,
beside the sample it images (drivers/simulated_nta.py registers them).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from exoacq.config import Endpoint
from exoacq.methods import MethodSettings
from exoacq.nta import DETECTORS
from exoacq.registry import DriverOptions

log = logging.getLogger("exoacq.nta")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SimulatedCameraOptions(DriverOptions):
    """Keys of the ``simulated-nta`` camera (drivers/simulated_nta.py)."""

    width: int = Field(640, ge=64, le=4096)
    height: int = Field(480, ge=64, le=4096)
    frame_rate_hz: float = Field(25.0, gt=0.0, le=1000.0)
    exposure_ms: float = Field(15.0, gt=0.0, le=1000.0)
    bit_depth: int = Field(12, ge=8, le=16)
    #: Object-plane size of one pixel (camera pixel / magnification).
    pixel_size_um: float = Field(0.166, gt=0.0, le=100.0)

    @model_validator(mode="after")
    def _exposure_fits(self) -> "SimulatedCameraOptions":
        if self.exposure_ms > 1000.0 / self.frame_rate_hz:
            raise ValueError(
                f"exposure_ms = {self.exposure_ms} is longer than the frame interval "
                f"{1000.0 / self.frame_rate_hz:.3g} ms at frame_rate_hz = {self.frame_rate_hz}")
        return self


class SampleComponentConfig(_Section):
    diameter_nm: float = Field(gt=0.0, le=5000.0)
    #: Relative SD of a log-normal size spread; 0 is monodisperse.
    cv: float = Field(0.0, ge=0.0, le=2.0)
    number_fraction: float = Field(1.0, gt=0.0)
    refractive_index: float = Field(1.59, gt=1.0, le=4.0)


DriftUmS = Annotated[float, Field(ge=-1000.0, le=1000.0)]


class SimulationConfig(MethodSettings):
    """The sample inside the simulated instrument (the 'truth' of a simulation)."""

    components: list[SampleComponentConfig] = [SampleComponentConfig(diameter_nm=100.0)]
    concentration_per_ml: float = Field(3e8, gt=0.0, le=1e11)
    temperature_c: float = Field(25.0, gt=0.0, lt=100.0)
    #: Flow drift of the sample (x, y), um/s: finite, below 1 mm/s (a field of view crossed in 0.1 s).
    drift_um_s: tuple[DriftUmS, DriftUmS] = (0.0, 0.0)
    seed: int | None = None
    #: Particles of the buffer itself (dust, protein aggregates), in every tube; a blank run
    #: (acquire ``blank``) shows them alone. 0: a clean buffer.
    contamination_per_ml: float = Field(0.0, ge=0.0, le=1e11)
    contamination: list[SampleComponentConfig] = [SampleComponentConfig(diameter_nm=150.0, cv=0.3)]

    @model_validator(mode="after")
    def _contamination_has_components(self) -> "SimulationConfig":
        if self.contamination_per_ml > 0 and not self.contamination:
            raise ValueError("contamination_per_ml > 0 needs at least one contamination component")
        return self


class TrackingConfig(_Section):
    """The tracking core's processes: a linker and locate workers (docs/protocol.md, Frames)."""

    #: Locate worker processes the daemon starts on this host (0: only workers on other hosts).
    workers: int = Field(1, ge=0, le=64)
    #: Frame endpoint the workers pull from; a random loopback port unless workers run elsewhere.
    frames: Endpoint = "tcp://127.0.0.1:*"
    #: Feature endpoint the linker binds for the workers' results.
    features: Endpoint = "tcp://127.0.0.1:*"


class NTASettings(MethodSettings):
    """Tracking parameters; defaults are right for the default simulated camera."""

    #: "fast" (exoacq's compiled Crocker-Grier locate) or "trackpy" (trackpy.locate): the same method.
    detector: Literal[DETECTORS] = "fast"
    #: trackpy feature diameter, odd, in pixels.
    feature_diameter_px: int = Field(11, ge=3, le=51)
    #: Minimum integrated brightness of a feature (trackpy ``minmass``); None (the default): chosen for each run
    #: from the noise of its first frames (exoacq.nta.threshold) and kept for the run.
    minmass: float | None = Field(None, ge=0.0)
    #: The automatic threshold's noise floor: the mass noise exceeds this many times per frame.
    false_detections_per_frame: float = Field(0.5, gt=0.0, le=100.0)
    #: Points for a track to be sized; None (the default): chosen from the data (localisation error).
    min_track_length: int | None = Field(None, ge=3, le=10000)
    #: Smallest particle expected; sets the link search range from its diffusion.
    min_diameter_nm: float = Field(30.0, gt=0.0)
    #: Override of the link search range (pixels); None derives it from min_diameter_nm.
    search_range_px: float | None = Field(None, gt=0.0)
    #: Detection-volume calibration file (calibrations/nta/*.toml); a relative path is looked
    #: up beside the configuration file, then in the project root.
    calibration: Path | None = None
    #: Effective detection volume (nL), when given directly instead of a calibration file;
    #: None and no calibration: no concentration is reported.
    detection_volume_nl: float | None = Field(None, gt=0.0)
    #: Keep every capture's raw video (video.zst, lossless Zstandard frames at the camera's bit depth,
    #: and frames.csv: exoacq.nta.video_store) for `exoacq reprocess`; ~260 MB a minute at 640x480,
    #: 25 frames/s. ``save_frames`` is its old name (deprecated).
    keep_video: bool = True
    #: Where detection_volume_nl came from, stored with each result.
    detection_volume_source: str = "not calibrated"
    #: Set from the calibration: the beads' relative detection depth (exoacq.nta.calibration).
    calibration_relative_depth: float | None = None
    #: Laser output during captures (the calibration states the power it was measured at).
    laser_power_mw: float = Field(40.0, gt=0.0, le=1000.0)
    #: A buffer blank (acquire ``blank_run``) above this fraction of the sample's particles is a warning.
    blank_warning_fraction: float = Field(0.1, gt=0.0, le=1.0)
    #: How long a bead check (an NTA run with acquire parameter ``bead_check``) qualifies the
    #: instrument: a result is flagged when the newest check within this period failed or there is
    #: none; None: bead checks are not required (a failed one is still flagged). exoacq.nta.suitability
    bead_check_period_h: float | None = Field(24.0, gt=0.0, le=24.0 * 366)
    #: Frames that may wait for the tracking core before new ones are dropped (and counted).
    frame_queue: int = Field(16, ge=2, le=1024)
    #: The tracking core's processes.
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="before")
    @classmethod
    def _save_frames_is_keep_video(cls, data: Any) -> Any:
        """``save_frames`` (kept raw frames as frames.npy until issue 15) is the old name of keep_video."""
        if isinstance(data, dict) and "save_frames" in data:
            data = dict(data)
            value = data.pop("save_frames")
            if "keep_video" in data and data["keep_video"] != value:
                raise ValueError("save_frames is the old name of keep_video: give keep_video only")
            data.setdefault("keep_video", value)
            log.warning("settings: save_frames is deprecated; it is now keep_video (a lossless video per capture)")
        return data

    @model_validator(mode="after")
    def _odd_diameter(self) -> "NTASettings":
        if self.feature_diameter_px % 2 == 0:
            raise ValueError(f"feature_diameter_px = {self.feature_diameter_px} must be odd")
        return self
