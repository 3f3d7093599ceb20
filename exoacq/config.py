"""Configuration: one TOML file for the instruments and the daemon.

Units are part of every key name (``power_mw``, ``exposure_ms``). Validation is
pydantic's; :func:`load_config` turns its report into lines that name the key,
the value and what is allowed, so that the daemon refuses a bad file at start.
"""
from __future__ import annotations

import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from exoacq.errors import ConfigError

Endpoint = Annotated[str, Field(pattern=r"^(tcp|ipc|inproc)://.+$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DaemonConfig(_Section):
    control: Endpoint = "tcp://127.0.0.1:5555"
    results: Endpoint = "tcp://127.0.0.1:5556"
    frames: Endpoint = "tcp://127.0.0.1:5557"
    #: None: the user's state directory (``~/.local/state/exoacq``).
    data_dir: Path | None = None
    #: Frames that may wait for the tracking core before new ones are dropped (and counted).
    frame_queue: int = Field(16, ge=2, le=1024)

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir else Path(platformdirs.user_state_dir("exoacq"))


class LaserConfig(_Section):
    driver: Literal["obis"] = "obis"
    #: Serial device (``/dev/ttyUSB0``) or pyserial URL. Ignored when simulated:
    #: the simulator serves the same protocol on a pseudo-terminal.
    port: str = "/dev/ttyUSB0"
    simulated: bool = False
    power_mw: float = Field(40.0, gt=0.0, le=1000.0)
    timeout_s: float = Field(1.0, gt=0.0, le=30.0)


class CameraConfig(_Section):
    driver: Literal["simulated-nta"] = "simulated-nta"
    simulated: bool = True
    width: int = Field(640, ge=64, le=4096)
    height: int = Field(480, ge=64, le=4096)
    frame_rate_hz: float = Field(25.0, gt=0.0, le=1000.0)
    exposure_ms: float = Field(15.0, gt=0.0, le=1000.0)
    bit_depth: int = Field(12, ge=8, le=16)
    #: Object-plane size of one pixel (camera pixel / magnification).
    pixel_size_um: float = Field(0.166, gt=0.0, le=100.0)

    @model_validator(mode="after")
    def _exposure_fits(self) -> "CameraConfig":
        if self.exposure_ms > 1000.0 / self.frame_rate_hz:
            raise ValueError(
                f"exposure_ms = {self.exposure_ms} is longer than the frame interval "
                f"{1000.0 / self.frame_rate_hz:.3g} ms at frame_rate_hz = {self.frame_rate_hz}")
        return self


class ThermometerConfig(_Section):
    driver: Literal["simulated"] = "simulated"
    simulated: bool = True


class InstrumentsConfig(_Section):
    laser: LaserConfig = LaserConfig()
    camera: CameraConfig = CameraConfig()
    thermometer: ThermometerConfig = ThermometerConfig()


class SampleComponentConfig(_Section):
    diameter_nm: float = Field(gt=0.0, le=5000.0)
    #: Relative SD of a log-normal size spread; 0 is monodisperse.
    cv: float = Field(0.0, ge=0.0, le=2.0)
    number_fraction: float = Field(1.0, gt=0.0)
    refractive_index: float = Field(1.59, gt=1.0, le=4.0)


class SimulationConfig(_Section):
    """The sample inside the simulated instrument (the 'truth' of a simulation)."""

    components: list[SampleComponentConfig] = [SampleComponentConfig(diameter_nm=100.0)]
    concentration_per_ml: float = Field(3e8, gt=0.0, le=1e11)
    temperature_c: float = Field(25.0, gt=0.0, lt=100.0)
    drift_um_s: tuple[float, float] = (0.0, 0.0)
    seed: int | None = None


class NTAAnalysisConfig(_Section):
    """Tracking parameters; defaults are right for the default simulated camera."""

    #: "fast" (exoacq's compiled Crocker-Grier locate) or "trackpy" (trackpy.locate): the same method.
    detector: Literal["fast", "trackpy"] = "fast"
    #: trackpy feature diameter, odd, in pixels.
    feature_diameter_px: int = Field(11, ge=3, le=51)
    #: Minimum integrated brightness of a feature (trackpy ``minmass``).
    minmass: float = Field(300.0, ge=0.0)
    #: Tracks shorter than this many frames are not sized.
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
    #: Keep every raw frame of a run (frames.npy in the run's folder: frames x rows x columns,
    #: the camera's own bits) for re-analysis with `exoacq analyze`; large: ~0.6 MB a frame at 640x480.
    save_frames: bool = False
    #: Where detection_volume_nl came from, stored with each result.
    detection_volume_source: str = "not calibrated"
    #: Set from the calibration: the beads' relative detection depth (exoacq.calibration).
    calibration_relative_depth: float | None = None

    @model_validator(mode="after")
    def _odd_diameter(self) -> "NTAAnalysisConfig":
        if self.feature_diameter_px % 2 == 0:
            raise ValueError(f"feature_diameter_px = {self.feature_diameter_px} must be odd")
        return self


class TrackingConfig(_Section):
    """The tracking core's processes: a linker and locate workers (docs/protocol.md, Frames)."""

    #: Locate worker processes the daemon starts on this host (0: only workers on other hosts).
    workers: int = Field(1, ge=0, le=64)
    #: Frame endpoint the workers pull from; a random loopback port unless workers run elsewhere.
    frames: Endpoint = "tcp://127.0.0.1:*"
    #: Feature endpoint the linker binds for the workers' results.
    features: Endpoint = "tcp://127.0.0.1:*"


class Config(_Section):
    daemon: DaemonConfig = DaemonConfig()
    tracking: TrackingConfig = TrackingConfig()
    instruments: InstrumentsConfig = InstrumentsConfig()
    simulation: SimulationConfig = SimulationConfig()
    nta: NTAAnalysisConfig = NTAAnalysisConfig()


def example_text() -> str:
    """The commented example configuration (also the embedded simulated default)."""
    return resources.files("exoacq").joinpath("config_example.toml").read_text(encoding="utf-8")


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            if isinstance(part, int):
                continue
            ann = getattr(field, "annotation", None)
            args = getattr(ann, "__args__", ())
            sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if sub is None:
                return []
            model = sub
            continue
        model = field.annotation
    return list(model.model_fields)


def _describe_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(Config, loc)
            near = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.5)
            hint = f" (did you mean '{near[0]}'? units are part of the key name)" if near else ""
            lines.append(f"{source}: unknown key '{key}'{hint}; allowed here: {', '.join(allowed)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "string_pattern_mismatch" and "tcp|ipc" in msg:
                msg = "must be a ZeroMQ endpoint such as tcp://127.0.0.1:5555 or ipc:///run/exoacq/control"
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            lines.append(f"{source}: {key}{shown}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "configuration") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, source)) from None


def load_config(path: Path | str | None = None, *, simulated: bool = False) -> Config:
    """Read and validate a configuration file; None means the embedded example.

    ``simulated`` switches every instrument to its simulated twin.
    """
    if path is None:
        text, source = example_text(), "embedded default configuration"
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    config = parse_config(data, source)
    _apply_calibration(config, None if path is None else Path(path).resolve().parent, source)
    if simulated:
        for section in (config.instruments.laser, config.instruments.camera, config.instruments.thermometer):
            section.simulated = True
    return config


def _apply_calibration(config: Config, relative_to: Path | None, source: str) -> None:
    """Read nta.calibration, check it fits the optics, and take its detection volume."""
    from exoacq.calibration import check_optics, load_nta_calibration, resolve

    nta = config.nta
    if nta.calibration is None:
        return
    if nta.detection_volume_nl is not None:
        raise ConfigError(f"{source}: give nta.calibration or nta.detection_volume_nl, not both")
    path = resolve(nta.calibration, relative_to)
    calibration = load_nta_calibration(path)
    camera = config.instruments.camera
    check_optics(calibration, path, pixel_size_um=camera.pixel_size_um, frame_rate_hz=camera.frame_rate_hz,
                 exposure_ms=camera.exposure_ms, laser_power_mw=config.instruments.laser.power_mw,
                 feature_diameter_px=nta.feature_diameter_px, minmass=nta.minmass)
    nta.calibration = path
    nta.detection_volume_nl = calibration.result.detection_volume_nl
    nta.calibration_relative_depth = calibration.result.relative_detection_depth
    nta.detection_volume_source = calibration.source(path)
