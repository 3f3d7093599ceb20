"""What an NTA analysis is told, and the detection it starts with: :class:`TrackingParameters` (units in
names), the detection threshold chosen from each video's own noise (:func:`with_threshold`; the rule is
exoacq.nta.threshold), the camera's clip level (:func:`saturation_level`), which features count as detected
(:func:`at_threshold`), the link search range of the smallest particle (:func:`search_range_px`), and feature
detection (:func:`locate_features`: exoacq.nta.detect, or trackpy.locate; Crocker & Grier 1996, J. Colloid
Interface Sci. 179:298). The streaming tracker that links the features is exoacq.nta.analysis.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from exoacq.errors import ExoacqError
from exoacq.nta import DETECTORS
from exoacq.nta.detect import locate_fast
from exoacq.nta.detection_volume import crowding_factor
from exoacq.nta.threshold import FALSE_DETECTIONS_PER_FRAME, noise_threshold
from exoacq.physics import stokes_einstein_diffusion_um2_s, water_viscosity_iapws_mpa_s

#: Rayleigh tail: a 2-D step exceeds a * sigma with probability exp(-a^2 / 2); 3.5 -> 0.2 %.
SEARCH_RANGE_SIGMAS = 3.5


@dataclass(frozen=True)
class TrackingParameters:
    """Everything the tracking core needs to turn frames into sizes; units in names."""

    frame_rate_hz: float
    #: None: not known; the motion blur is then measured from the tracks (exoacq.nta.steps.estimate_blur).
    exposure_ms: float | None
    pixel_size_um: float
    temperature_c: float
    viscosity_mpa_s: float
    feature_diameter_px: int = 11
    #: Detection threshold (trackpy's minmass); None: chosen from the frames' noise (exoacq.nta.threshold,
    #: :func:`with_threshold`) at ``false_detections_per_frame``.
    minmass: float | None = None
    false_detections_per_frame: float = FALSE_DETECTIONS_PER_FRAME
    #: Points for a track to be sized; None: chosen from the data (exoacq.nta.distribution.auto_min_track_length).
    min_track_length: int | None = None
    #: Link search range; with auto_search_range, the largest one the pilot may choose.
    search_range_px: float = 20.0
    #: Choose the search range from the first frames' tracks (exoacq.nta.analysis.StreamingTracker, PILOT_FRAMES).
    auto_search_range: bool = False
    detection_volume_nl: float | None = None
    dilution: float = 1.0
    invert: bool = False
    #: "fast" (exoacq.nta.detect, compiled) or "trackpy" (trackpy.locate, numba engine): same method.
    detector: str = "fast"
    #: Subtract the ensemble drift (flow) from every track's steps.
    drift_correction: bool = True
    #: Correct the size distribution (and concentration) for the size-dependent detection depth.
    volume_correction: bool = True
    #: Scatter ~ d^k (6: Rayleigh, for particles well below the wavelength).
    scattering_exponent: float = 6.0
    #: Detection depth of the calibration beads (sheet half-width 1; exoacq.nta.calibration); None: not known.
    calibration_relative_depth: float | None = None
    #: Frame size, for the correction of counts for merged close features; None: not corrected.
    frame_width_px: int | None = None
    frame_height_px: int | None = None
    #: Raw pixel value at which the camera clips (features holding it are saturated); None: not known.
    saturation_counts: float | None = None
    #: How ``minmass`` was chosen (exoacq.nta.threshold.Threshold.to_dict), for the result; None: given.
    threshold: Mapping[str, Any] | None = None

    def crowding(self, counts_per_frame) -> tuple[float, float]:
        """(particles / features per frame, worst occupied fraction): exoacq.nta.detection_volume.crowding_factor
        over the frame less the detector's edge margin; (1, 0) without a frame size."""
        if not (self.frame_width_px and self.frame_height_px):
            return 1.0, 0.0
        margin = self.feature_diameter_px // 2  # exoacq.nta.detect: separation = diameter + 1
        area = max(self.frame_width_px - 2 * margin, 1) * max(self.frame_height_px - 2 * margin, 1)
        return crowding_factor(counts_per_frame, area, self.feature_diameter_px + 1)

    @property
    def frame_interval_s(self) -> float:
        return 1.0 / self.frame_rate_hz

    @classmethod
    def for_sample(cls, *, frame_rate_hz: float, exposure_ms: float | None, pixel_size_um: float, temperature_c: float,
                   min_diameter_nm: float, viscosity_mpa_s: float | None = None,
                   link_search_range_px: float | None = None, **options: Any) -> "TrackingParameters":
        """Parameters at a measured temperature: water viscosity (IAPWS 2008) and the link search
        range: given, or chosen from the data (exoacq.nta.analysis.StreamingTracker) up to that of the
        smallest expected particle."""
        viscosity = viscosity_mpa_s or water_viscosity_iapws_mpa_s(temperature_c)
        search = link_search_range_px or search_range_px(min_diameter_nm, temperature_c, viscosity,
                                                         frame_rate_hz, pixel_size_um)
        return cls(frame_rate_hz=frame_rate_hz, exposure_ms=exposure_ms, pixel_size_um=pixel_size_um,
                   temperature_c=temperature_c, viscosity_mpa_s=viscosity, search_range_px=search,
                   auto_search_range=link_search_range_px is None, **options)

    @property
    def link_minmass(self) -> float | None:
        """The mass down to which features join tracks: the noise floor measured on the video
        (``threshold["noise_floor_mass"]``) when it is below ``minmass``, else ``minmass`` (also when no floor
        was measured: a threshold given).

        Hysteresis (as in Canny's edges): a track is a particle when its mean feature mass reaches
        ``minmass`` (else it is rejected as "dim"), but its features may dim down to the floor. A particle's
        feature dims for a frame when it moves during the exposure (the streak leaves the detector's disc and
        its band-pass) or passes a noisy pixel; thresholded frame by frame at ``minmass``, its track broke
        there and the surviving steps were the small ones (EMCCD simulator, 60 nm, 40 ms exposure, one 40 s
        capture: +15 % at the automatic threshold, +64 % at 1.5 x; linked down to the floor +2 % and +10 %).
        Concentrations and live features count only the features at ``minmass``.
        """
        floor = (self.threshold or {}).get("noise_floor_mass")
        if self.minmass is None or floor is None:
            return self.minmass
        return min(self.minmass, float(floor))

    def locate_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`locate_features` (features down to :attr:`link_minmass`)."""
        if self.minmass is None:
            raise ValueError("minmass not chosen yet: with_threshold(params, frames) first")
        return {"diameter_px": self.feature_diameter_px, "minmass": self.link_minmass,
                "invert": self.invert, "detector": self.detector}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def saturation_level(frames: list[np.ndarray]) -> float | None:
    """The raw value at which these frames' camera clips: the largest value of an 8-bit type; in a 16-bit
    container, the top of a 8-16 bit depth when the brightest pixel sits exactly there, more than once
    (clipped pixels pile up at 2^k - 1: a 12-bit camera clips at 4095), else the container's largest
    value. None for float frames."""
    dtype = np.asarray(frames[0]).dtype
    if not np.issubdtype(dtype, np.integer):
        return None
    top = float(np.iinfo(dtype).max)
    if dtype.itemsize == 1:
        return top
    brightest = max(int(np.asarray(f).max()) for f in frames)
    if brightest + 1 in {2 ** b for b in range(8, 17)}:
        at_top = sum(int(np.count_nonzero(np.asarray(f) == brightest)) for f in frames)
        if at_top > 1:
            return float(brightest)
    return top


def with_threshold(params: "TrackingParameters", frames: list[np.ndarray]) -> "TrackingParameters":
    """``params`` with the detection threshold chosen from these (first) frames' noise unless ``minmass`` is
    given, and the camera's saturation level from their pixel type unless given."""
    changes: dict[str, Any] = {}
    if np.asarray(frames[0]).dtype.kind == "f":  # frames holding NaN or infinite values are corrupt: not measured
        frames = [f for f in frames if np.isfinite(f).all()]
        if not frames:
            raise ExoacqError("the first frames hold NaN or infinite pixel values: not a camera's image")
    if params.saturation_counts is None:
        dtype = np.asarray(frames[0]).dtype
        if params.invert and np.issubdtype(dtype, np.integer):  # dark particles: black (0) clips, inverted
            changes["saturation_counts"] = float(np.iinfo(dtype).max)
        else:
            changes["saturation_counts"] = saturation_level(frames)
    if params.minmass is None:
        chosen = noise_threshold(frames, diameter_px=params.feature_diameter_px, invert=params.invert,
                                 false_per_frame=params.false_detections_per_frame)
        changes |= {"minmass": chosen.minmass, "threshold": chosen.to_dict()}
    return dataclasses.replace(params, **changes) if changes else params


def at_threshold(mass, minmass: float | None) -> np.ndarray:
    """Which features are detected: their mass reaches ``minmass`` (all of them when it is None). Features
    below it, down to :attr:`TrackingParameters.link_minmass`, are linked but neither counted nor shown."""
    mass = np.asarray(mass, float)
    return np.ones(mass.shape, bool) if minmass is None else mass >= minmass


def search_range_px(min_diameter_nm: float, temperature_c: float, viscosity_mpa_s: float,
                    frame_rate_hz: float, pixel_size_um: float) -> float:
    """Link search range covering all but 0.2 % of one-frame steps of the smallest particle."""
    d = stokes_einstein_diffusion_um2_s(min_diameter_nm, temperature_c, viscosity_mpa_s)
    sigma_um = math.sqrt(2.0 * d / frame_rate_hz)
    return SEARCH_RANGE_SIGMAS * sigma_um / pixel_size_um


def trackpy():
    """The trackpy module, quiet (it logs every linked frame otherwise).

    Imported where it is first needed, not with this module: it brings pandas' and scipy.stats'
    whole APIs (about 1.5 s of CPU), and an offline analysis imports it in a background thread
    (exoacq.nta.offline.import_in_background) while the first frames are decoded and detected."""
    import trackpy as tp

    tp.quiet()
    return tp


def warm_up_detectors(detectors: Iterable[str] = DETECTORS) -> None:
    """Compile the numba kernels of ``detectors`` (or load them from numba's cache) before the first frame
    needs them. trackpy's numba locate is compiled anew in every process (with trackpy's import ~0.9 s of
    CPU, measured 2026-12-04), so a process that will use only the fast detector leaves it out."""
    frame = np.random.default_rng(0).poisson(20, (64, 64)).astype(np.uint16)
    frame[30:33, 30:33] += 500
    for detector in detectors:
        locate_features(frame, diameter_px=7, minmass=100, detector=detector)


def locate_features(frame: np.ndarray, *, diameter_px: int, minmass: float, invert: bool = False,
                    detector: str = "fast") -> pd.DataFrame:
    """Features of one frame (columns y, x, mass, size, signal, ... as trackpy.locate)."""
    if detector == "fast":
        return locate_fast(frame, diameter_px, minmass, invert=invert)
    if detector == "trackpy":
        return trackpy().locate(frame, diameter_px, minmass=minmass, invert=invert, engine="numba")
    raise ValueError(f"detector = {detector!r}; allowed: 'fast', 'trackpy'")
