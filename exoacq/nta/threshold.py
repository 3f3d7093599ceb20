"""The detection threshold referenced to each video's own noise.

A fixed ``minmass`` means different things on different cameras, gains and
bit depths: too high, dim particles are lost (a mixture reads large); too
low, noise fills the result. exoacq states the threshold as what it costs:
the number of *false detections per frame* that pure noise of this video's
level would give (default :data:`FALSE_DETECTIONS_PER_FRAME`), and finds the
``minmass`` that gives it:

1. the pixel noise SD of the frames, robust to particles and to smooth
   background: the median absolute deviation of the residual of each pixel
   from the mean of its four neighbours (for white noise of SD s that residual
   has SD s * sqrt(5/4)); the spatial residual includes fixed-pattern noise,
   which a temporal estimate would miss;
2. frames of white Gaussian noise of that SD on the videos' median background,
   in the video's own pixel type (so 8-bit quantisation and the detector's
   band-pass threshold act as on the real frames), run through the same
   detector with no threshold: the masses of the noise maxima;
3. the noise floor = the mass exceeded by ``false_per_frame`` noise maxima per
   frame (the empirical quantile, or an exponential fit to the top of the
   noise maxima when the rate is below what the noise frames resolve);
4. ``minmass`` = ``margin`` (:data:`NOISE_MARGIN`) x the noise floor.

The few false detections that pass never make tracks: a track needs >= 10
frames linked within the search range (see exoacq.nta.analysis). A threshold
from the noise of the first frames is kept for the whole video or run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

#: The noise floor: the mass that noise of the video's level exceeds this many times per frame.
FALSE_DETECTIONS_PER_FRAME = 0.5
#: The threshold is this many times the noise floor. The tail of the noise is steep (Gaussian): at the floor
#: itself, a threshold 1.5 x lower lets in hundreds of noise features per frame, which link by chance into
#: fast "particles"; with the margin, a threshold anywhere from 1 to 2.25 x the floor gives the same sizes.
NOISE_MARGIN = 1.5
#: Noise frames simulated to find the threshold (of the video's own size, or at least 640 x 480 pixels in all).
NOISE_FRAMES = 16
#: Frames of the video whose noise is measured.
SAMPLE_FRAMES = 8


@dataclass(frozen=True)
class Threshold:
    """A detection threshold and where it came from (``rule``: "noise" or "fixed")."""

    minmass: float
    rule: str
    false_detections_per_frame: float | None = None
    noise_floor_mass: float | None = None
    margin: float | None = None
    noise_sd_counts: float | None = None
    background_counts: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"minmass": self.minmass, "rule": self.rule, "false_detections_per_frame": self.false_detections_per_frame,
                "noise_floor_mass": self.noise_floor_mass, "margin": self.margin,
                "noise_sd_counts": self.noise_sd_counts, "background_counts": self.background_counts}


def median_of_integers(values: np.ndarray) -> float:
    """``np.median`` of integer values (the mean of the two middle ones for an even count), exactly, by
    counting: ~10 x faster than sorting on a camera frame. Values spread wider than 4 x their number
    (where counting would not pay) go to ``np.median``."""
    v = np.asarray(values).ravel()
    if v.size == 0 or not np.issubdtype(v.dtype, np.integer):
        return float(np.median(v))
    low, high = int(v.min()), int(v.max())
    if high - low > 4 * v.size + 65536:
        return float(np.median(v))
    cumulative = np.cumsum(np.bincount((v - low).astype(np.intp, copy=False), minlength=high - low + 1))
    lower = int(np.searchsorted(cumulative, (v.size - 1) // 2 + 1))  # sorted positions (n-1)//2 and n//2
    upper = int(np.searchsorted(cumulative, v.size // 2 + 1))
    return low + (lower + upper) / 2


def pixel_noise_sd(frame: np.ndarray) -> float:
    """Robust SD of the pixel noise (counts): MAD of the residual from the four-neighbour mean / sqrt(5/4).

    Quantised frames of very low noise give a MAD of 0; the RMS of the central 50 % of the
    residuals (scaled for a Gaussian) is then used, and at least 1/sqrt(12) of a count
    (the quantisation noise itself).
    """
    raw = np.asarray(frame)
    if raw.ndim != 2 or min(raw.shape) < 3:
        raise ValueError("need a 2-D frame of at least 3 x 3 pixels")
    integer = np.issubdtype(raw.dtype, np.integer)
    if integer and raw.dtype.itemsize <= 2:
        # frames of <= 16 bits: the residual in quarter counts and its deviations in eighths are integers
        # (below 2**21), so their medians are counted exactly (median_of_integers)
        f = raw.astype(np.int32)
        quarters = (4 * f[1:-1, 1:-1] - (f[:-2, 1:-1] + f[2:, 1:-1] + f[1:-1, :-2] + f[1:-1, 2:])).ravel()
        eighths = np.abs(2 * quarters - round(2 * median_of_integers(quarters)))
        sd = 1.4826 * median_of_integers(eighths) / 8.0
        deviation = eighths
        scale = 8.0
    else:
        f = raw.astype(np.float64)
        c = f[1:-1, 1:-1]
        residual = (c - 0.25 * (f[:-2, 1:-1] + f[2:, 1:-1] + f[1:-1, :-2] + f[1:-1, 2:])).ravel()
        deviation = np.abs(residual - np.median(residual))
        sd = 1.4826 * float(np.median(deviation))
        scale = 1.0
    if sd == 0.0:
        inner = np.sort(deviation)[: max(1, deviation.size // 2)].astype(np.float64) / scale
        sd = float(np.sqrt(np.mean(inner ** 2))) / 0.2299  # RMS of |N(0,1)| below its median: 0.2299
    quantisation = 1.0 / math.sqrt(12.0) if integer else 0.0
    return max(sd / math.sqrt(1.25), quantisation)


def _noise_frames(shape: tuple[int, int], dtype: np.dtype, background: float, sd: float, count: int,
                  seed: int) -> Iterable[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        noise = rng.standard_normal(shape)
        noise *= sd
        noise += background
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            yield np.clip(np.rint(noise, out=noise), info.min, info.max, out=noise).astype(dtype)
        else:
            yield noise.astype(dtype)


def mass_exceeded(masses: np.ndarray, frames: int, per_frame: float) -> float:
    """The mass that ``per_frame`` of the noise maxima per frame exceed (exponential tail beyond the data)."""
    m = np.sort(np.asarray(masses, float))[::-1]
    wanted = per_frame * frames  # exceedances in the noise frames
    if m.size == 0:
        return 0.0
    if wanted >= 10 and wanted < m.size:
        k = int(wanted)
        return float(m[k - 1] + (m[k] - m[k - 1]) * (wanted - k))
    top = m[: max(20, min(m.size, int(0.02 * m.size)))]
    if top.size < 5 or top[0] <= top[-1]:
        return float(m[0])
    # exponential tail P(M > x) = (n_top / N) exp(-(x - x_top) / scale): maximum likelihood scale
    scale = float(np.mean(top - top[-1]))
    return float(top[-1] + scale * math.log(top.size / max(wanted, 1e-12)))


def noise_threshold(frames: list[np.ndarray], *, diameter_px: int, invert: bool = False,
                    false_per_frame: float = FALSE_DETECTIONS_PER_FRAME, margin: float = NOISE_MARGIN,
                    seed: int = 0) -> Threshold:
    """``margin`` x the noise floor: the mass that noise of these frames' level exceeds ``false_per_frame``
    times per frame."""
    from exoacq.nta.detect import locate_fast

    if not frames:
        raise ValueError("no frames to measure the noise on")
    if not false_per_frame > 0:
        raise ValueError(f"false detections per frame = {false_per_frame!r}: must be > 0")
    sample = [np.asarray(f) for f in frames[:SAMPLE_FRAMES]]
    sd = float(np.median([pixel_noise_sd(f) for f in sample]))
    first = sample[0]
    background = float(np.median([median_of_integers(f) for f in sample]))
    count = max(NOISE_FRAMES, math.ceil(NOISE_FRAMES * 640 * 480 / first.size))
    masses = [locate_fast(noise, diameter_px, 0.0, invert=invert)["mass"].to_numpy()
              for noise in _noise_frames(first.shape, first.dtype, background, sd, count, seed)]
    floor = mass_exceeded(np.concatenate(masses), count, false_per_frame)
    return Threshold(minmass=round(max(margin * floor, 0.0), 3), rule="noise", false_detections_per_frame=false_per_frame,
                     noise_floor_mass=round(floor, 3), margin=margin,
                     noise_sd_counts=round(sd, 4), background_counts=round(background, 3))
