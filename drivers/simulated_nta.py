"""Simulated NTA instrument: the twin of a NanoSight-LM10-like camera and sample cell.

- Brownian motion: per-axis displacement N(0, 2 D dt), D from Stokes-Einstein (Einstein
  1905) with the IAPWS 2008 viscosity of water at the sample temperature (exoacq.physics).
- Illumination: Gaussian light sheet, intensity exp(-2 z^2 / w^2), w the 1/e^2 half-width
  of the Gaussian beam waist. Scatter: Rayleigh, d^6 |(m^2 - 1)/(m^2 + 2)|^2 (Bohren &
  Huffman 1983, ch. 5), linear in laser power and exposure time.
- Imaging: Gaussian PSF integrated over each pixel, sigma growing with defocus as
  sqrt(1 + (z/dof)^2), photon number kept; motion blur by sub-steps in the exposure.
- Detection: Poisson shot noise on signal + stray light, Gaussian read noise, gain,
  offset, rounding, clipping to the ADC range (saturation); exact, no normal approximation.

The sample is exoacq.drivers.simulated_nta_sample; rendering and read-out are the numba
kernels of exoacq.drivers.simulated_nta_render (``render_psf``, ``expose``), which release the
GIL: 1280 x 1024 with ~400 particles takes ~7 ms on one core, 640 x 480 ~2 ms.

Coordinates in um, origin at the image centre and the sheet centre: pixel (row r,
column c) is centred at x = (c - (width - 1)/2) * pixel_size_um, y likewise with r.
"""
from __future__ import annotations

import inspect
import math
import time
from typing import Any, Callable, Sequence

import numpy as np
from scipy.special import erf

from pydantic import Field

from exoacq.devices import Setting, ring_overrun
from exoacq.drivers.simulated_nta_render import expose, inverse_cdf_table, render_psf
from exoacq.drivers.simulated_nta_sample import SampleComponent, SimulatedSample, check, int_in, positive, recorded_seed
from exoacq.registry import Driver, DriverOptions
from exoacq.errors import ConfigError, DeviceError
from exoacq.physics import rayleigh_polarizability_factor

_REFERENCE_EXPOSURE_MS, _REFERENCE_INDEX = 15.0, 1.59  # photons_100nm: 15 ms, polystyrene


class SimulatedNTACamera:
    """A scatter-imaging camera looking at a ``SimulatedSample`` (implements ``Camera``).

    ``illumination_mw()``, called every frame, is the laser power reaching the sample
    (None: ``reference_power_mw``). ``photons_100nm``: photoelectrons collected in 15 ms
    from a 100 nm sphere of n = 1.59 at the sheet centre at ``reference_power_mw``.
    ``realtime``: frames come at the frame rate into a ring of ``buffer_frames`` buffers,
    as a camera's driver holds them (OpenCV's V4L2 backend queues 4): a consumer later than
    that loses the oldest frames (``frames_dropped``); else frames come as fast as computed."""

    dtype = np.dtype(np.uint16)

    def __init__(self, sample: SimulatedSample, *, illumination_mw: Callable[[], float] | None = None,
                 reference_power_mw: float = 40.0, width: int = 640, height: int = 480,
                 pixel_size_um: float = 0.166, frame_rate_hz: float = 25.0, exposure_ms: float = 15.0,
                 bit_depth: int = 12, gain_adu_per_e: float = 1.0, offset_adu: float = 100.0,
                 read_noise_e: float = 2.0, background_e: float = 20.0, sheet_waist_um: float = 5.0,
                 psf_sigma_um: float = 0.3, depth_of_field_um: float = 4.0, photons_100nm: float = 5000.0,
                 blur_substeps: int = 8, realtime: bool = True, buffer_frames: int = 4, seed: int | None = None):
        check("sample", sample, sample is not None, "a SimulatedSample (see make_simulated_nta)")
        self.sample, self.illumination_mw = sample, illumination_mw
        #: None, or a callable giving the holder's temperature (None while it has none): the sample follows it.
        self.sample_temperature_c: Callable[[], float | None] | None = None
        self.reference_power_mw = positive("reference_power_mw", reference_power_mw)
        self.width, self.height = int_in("width", width, 8, 16384), int_in("height", height, 8, 16384)
        self.pixel_size_um = positive("pixel_size_um", pixel_size_um)
        self.bit_depth = int_in("bit_depth", bit_depth, 8, 16)
        self.gain_adu_per_e = positive("gain_adu_per_e", gain_adu_per_e)
        self.offset_adu = positive("offset_adu", offset_adu, zero_ok=True)
        check("offset_adu", offset_adu, self.offset_adu < self.max_adu, f"0..{self.max_adu - 1} at {bit_depth} bits")
        self.read_noise_e = positive("read_noise_e", read_noise_e, zero_ok=True)
        self.background_e = positive("background_e", background_e, zero_ok=True)  # stray light, e/px/exposure
        self.sheet_waist_um = positive("sheet_waist_um", sheet_waist_um)
        self.psf_sigma_um = positive("psf_sigma_um", psf_sigma_um)
        self.depth_of_field_um = positive("depth_of_field_um", depth_of_field_um)
        self.photons_100nm = positive("photons_100nm", photons_100nm, zero_ok=True)
        self.blur_substeps = int_in("blur_substeps", blur_substeps, 1, 64)
        self.buffer_frames = int_in("buffer_frames", buffer_frames, 1, 1024)
        self.realtime, self.seed, self.frames_dropped, self._connected = bool(realtime), recorded_seed(seed), 0, False
        self._rng = np.random.default_rng(self.seed)
        self._exposure_ms = self._t0_mono = self._truth = self._bg_key = self._image = None
        self.frame_rate_hz = frame_rate_hz
        self.exposure_ms = exposure_ms

    @property
    def max_adu(self) -> int:
        return 2 ** self.bit_depth - 1

    @property
    def frame_rate_hz(self) -> float:
        return self._frame_rate_hz

    @frame_rate_hz.setter
    def frame_rate_hz(self, value: float) -> None:
        v = positive("frame_rate_hz", value)
        if self._exposure_ms is not None:
            check("frame_rate_hz", value, v <= 1000.0 / self._exposure_ms,
                   f"0 < frame_rate_hz <= {1000.0 / self._exposure_ms:g} (1000 / exposure_ms)")
        if self._t0_mono is not None:  # running: keep the frame clock continuous
            self._t0_mono, self._t0_unix, self._n = (self._t0_mono + self._n / self._frame_rate_hz,
                                                     self._t0_unix + self._n / self._frame_rate_hz, 0)
        self._frame_rate_hz = v

    @property
    def exposure_ms(self) -> float:
        return self._exposure_ms

    @exposure_ms.setter
    def exposure_ms(self, value: float) -> None:
        interval_ms, v = 1000.0 / self._frame_rate_hz, float(value)
        check("exposure_ms", value, math.isfinite(v) and 0.0 < v <= interval_ms,
               f"0 < exposure_ms <= {interval_ms:g} (the frame interval at {self._frame_rate_hz:g} frames/s)")
        self._exposure_ms = v

    #: Settings an operator may change while previewing (exoacq set).
    settings = {
        "exposure_ms": Setting(get="get_exposure_ms", set="set_exposure_ms", unit="ms", minimum=0.01,
                               maximum="max_exposure_ms", description="exposure (shutter) time"),
        "gain": Setting(get="get_gain", set="set_gain", unit="ADU/e-", minimum=0.05, maximum=50.0,
                        description="camera gain"),
    }

    def get_exposure_ms(self) -> float:
        return self.exposure_ms

    def set_exposure_ms(self, value: float) -> None:
        self.exposure_ms = value

    @property
    def max_exposure_ms(self) -> float:
        return 1000.0 / self._frame_rate_hz

    def get_gain(self) -> float:
        return self.gain_adu_per_e

    def set_gain(self, value: float) -> None:
        self.gain_adu_per_e = positive("gain", value)
        self._bg_key = None

    def connect(self) -> None:
        """Nothing to open, but the kernels are compiled (or loaded from numba's disk cache)
        here on tiny frames, so that the first real frame comes on time."""
        z = np.zeros((1, 1))
        render_psf(np.zeros((8, 8), np.float32), z, z, z + 1.0, z)
        self._detect(np.empty((8, 8), self.dtype), np.zeros((8, 8), np.float32), 0)
        self._connected = True

    def close(self) -> None:
        self.stop()
        self._connected = False

    def start(self) -> None:
        """Reset the frame clock: frame n's exposure starts n / frame_rate_hz from now."""
        if not self._connected:
            raise DeviceError("simulated NTA camera is not connected: call connect() first")
        self._t0_mono, self._t0_unix, self._n = time.monotonic(), time.time(), 0

    def stop(self) -> None:
        self._t0_mono = None

    def describe(self) -> dict[str, Any]:
        return {"model": "SimulatedNTACamera", "simulated": True, "connected": self._connected,
                "width_px": self.width, "height_px": self.height, "pixel_size_um": self.pixel_size_um,
                "field_um": [self.width * self.pixel_size_um, self.height * self.pixel_size_um],
                "frame_rate_hz": self.frame_rate_hz, "exposure_ms": self.exposure_ms,
                "bit_depth": self.bit_depth, "gain_adu_per_e": self.gain_adu_per_e,
                "offset_adu": self.offset_adu, "read_noise_e": self.read_noise_e,
                "background_e_per_px": self.background_e, "reference_power_mw": self.reference_power_mw,
                "photons_100nm_e_per_15ms": self.photons_100nm, "sheet_waist_um": self.sheet_waist_um,
                "psf_sigma_um": self.psf_sigma_um, "depth_of_field_um": self.depth_of_field_um,
                "blur_substeps": self.blur_substeps, "realtime": self.realtime,
                "buffer_frames": self.buffer_frames, "seed": self.seed,
                "frames_dropped": self.frames_dropped, "sample": self.sample.describe()}

    def _power_mw(self) -> float:
        p = self.reference_power_mw if self.illumination_mw is None else float(self.illumination_mw())
        check("illumination_mw()", p, math.isfinite(p) and p >= 0.0, ">= 0 mW")
        return p

    def expected_photons(self, diameter_nm: Any, z_um: Any = 0.0, refractive_index: Any = _REFERENCE_INDEX,
                         power_mw: float | None = None) -> Any:
        """Expected photoelectrons per exposure: Rayleigh d^6 x polarizability, linear in
        power (default: ``illumination_mw()`` now) and exposure, Gaussian sheet in z."""
        power = self._power_mw() if power_mw is None else float(power_mw)
        m = self.sample.medium_index
        index = (rayleigh_polarizability_factor(np.asarray(refractive_index, dtype=float), m)
                 / rayleigh_polarizability_factor(_REFERENCE_INDEX, m))
        z = np.asarray(z_um, dtype=float)
        n = (self.photons_100nm * (power / self.reference_power_mw) * (self._exposure_ms / _REFERENCE_EXPOSURE_MS)
             * (np.asarray(diameter_nm, dtype=float) / 100.0) ** 6 * index
             * np.exp(-2.0 * z * z / self.sheet_waist_um ** 2))
        return float(n) if np.ndim(n) == 0 else n

    def fill(self, buffer: np.ndarray) -> float:
        """Advance the sample one frame interval (dead time, then exposure), render the frame
        into ``buffer`` (uint16, height x width); return the exposure start as UNIX time."""
        if not self._connected:
            raise DeviceError("simulated NTA camera is not connected: call connect() first")
        if self._t0_mono is None:
            raise DeviceError("simulated NTA camera is not acquiring: call start() first")
        if self.sample_temperature_c is not None and (holder_c := self.sample_temperature_c()) is not None:
            self.sample.temperature_c = holder_c  # the sample sits in a temperature-controlled holder
        if buffer.shape != (self.height, self.width) or buffer.dtype != self.dtype:
            raise ValueError(f"buffer is {buffer.dtype} {buffer.shape}; needs uint16 ({self.height}, {self.width})")
        interval, exposure = 1.0 / self._frame_rate_hz, self._exposure_ms * 1e-3
        if self.realtime:
            ready = self._t0_mono + self._n * interval + exposure
            if (missed := ring_overrun(time.monotonic(), ready, interval, self.buffer_frames)):
                self.sample.step(missed * interval)
                self._n, self.frames_dropped = self._n + missed, self.frames_dropped + missed
        start_unix = self._t0_unix + self._n * interval
        ready_mono = self._t0_mono + self._n * interval + exposure
        self._render(buffer, interval, exposure)
        self._n += 1
        if self.realtime and (wait := ready_mono - time.monotonic()) > 0:
            time.sleep(wait)
        return start_unix

    def load_tube(self, *, blank: bool = False, seed: int | None = None) -> dict[str, Any]:
        """The operator puts a fresh tube in the holder before a run: the sample (a new draw of
        the same stock) or, ``blank``, the buffer alone (only its contamination shows).
        Returns the tube's description (:meth:`SimulatedSample.describe`)."""
        if self._t0_mono is not None:
            raise DeviceError("simulated NTA camera is acquiring: stop it before loading another tube")
        self._truth = None
        return self.sample.load_tube(blank=blank, seed=seed)

    def truth(self) -> dict[str, np.ndarray]:
        """Every particle of the sample in the last frame: mean position during the
        exposure (``x_px`` column, ``y_px`` row, pixel centres at integers), ``z_um``,
        ``diameter_nm``, ``particle_id`` (``sample.from_buffer[particle_id]``: the buffer's),
        ``photons`` (expected e), ``in_field``."""
        if self._truth is None:
            raise DeviceError("no frame rendered yet: truth() describes the last frame")
        return {k: v.copy() for k, v in self._truth.items()}

    def _render(self, buffer: np.ndarray, interval: float, exposure: float) -> None:
        s, k, sub = self.sample, self.blur_substeps, exposure / self.blur_substeps
        # Dead time, then the middles of the k sub-steps of the exposure, then to its end.
        track = s._walk(np.array([interval - exposure + sub / 2] + [sub] * (k - 1) + [sub / 2]))[:, :k]
        z, power = track[..., 2], self._power_mw()  # (N, k): each sub-step gets 1/k of the exposure
        ph = self.expected_photons(s.diameters_nm, 0.0, s.refractive_index, power)[:, None] * np.exp(
            -2.0 * z * z / self.sheet_waist_um ** 2) / k
        xs = track[..., 0] / self.pixel_size_um + (self.width - 1) / 2
        ys = track[..., 1] / self.pixel_size_um + (self.height - 1) / 2
        sig = (self.psf_sigma_um / self.pixel_size_um) * np.sqrt(1.0 + (z / self.depth_of_field_um) ** 2)
        total, mx, my = ph.sum(axis=1), xs.mean(axis=1), ys.mean(axis=1)
        self._truth = {"x_px": mx, "y_px": my, "z_um": z.mean(axis=1), "diameter_nm": s.diameters_nm.copy(),
                       "particle_id": s.ids.copy(), "photons": total,
                       "in_field": (mx >= -0.5) & (mx < self.width - 0.5) & (my >= -0.5) & (my < self.height - 0.5)}
        if self._image is None or self._image.shape != buffer.shape:
            self._image = np.zeros(buffer.shape, np.float32)  # expected e/px; expose leaves it zeroed
        if power > 0 and len(s):
            render_psf(self._image, xs, ys, sig, ph)
        self._detect(buffer, self._image, int(self._rng.integers(2 ** 63)))

    def _detect(self, buffer: np.ndarray, image: np.ndarray, seed: int) -> None:
        """Shot noise, read noise, gain, offset, rounding, clipping (``expose``); zeroes ``image``."""
        expose(buffer, image, seed, *self._tables(), self.offset_adu, self.gain_adu_per_e,
                self.read_noise_e, float(self.max_adu))

    def _tables(self) -> tuple[tuple, tuple]:
        """Inverse-CDF tables (``_inverse_cdf``) of a stray-light-only pixel's ADU value,
        round(offset + gain (Poisson(background) + read noise)), and of Poisson(background)."""
        key = (self.background_e, self.read_noise_e, self.gain_adu_per_e, self.offset_adu, self.bit_depth)
        if key != self._bg_key:
            b, g, s = self.background_e, self.gain_adu_per_e, max(self.gain_adu_per_e * self.read_noise_e, 1e-9)
            p = np.arange(int(math.ceil(b + 12 * math.sqrt(b) + 15)) + 1)
            log_fact = np.concatenate([[0.0], np.cumsum(np.log(p[1:]))])
            pmf = np.exp(p * math.log(b) - b - log_fact) if b > 0 else (p == 0).astype(float)
            lo = max(0, int(self.offset_adu - 10 * s) - 2)
            hi = min(self.max_adu, int(self.offset_adu + g * p[-1] + 10 * s) + 2)
            a = np.arange(lo, hi + 1)[:, None]
            cdf = (pmf * 0.5 * (1 + erf((a + 0.5 - self.offset_adu - g * p) / (math.sqrt(2) * s)))).sum(axis=1)
            # What lies above hi (< 1e-12) or above max_adu (saturation) lands on hi; likewise for p.
            self._bg = (inverse_cdf_table(cdf, lo, self.dtype), inverse_cdf_table(np.cumsum(pmf), 0, np.int32))
            self._bg_key = key
        return self._bg


class SimulatedThermometer:
    """Reads the simulated sample's temperature, optionally with Gaussian noise (implements ``Thermometer``)."""

    def __init__(self, sample: SimulatedSample, noise_c: float = 0.0, seed: int | None = None):
        self.sample, self.seed, self._connected = sample, recorded_seed(seed), False
        self.noise_c = positive("noise_c", noise_c, zero_ok=True)
        self._rng = np.random.default_rng(self.seed)

    def connect(self) -> None:
        self._connected = True

    def close(self) -> None:
        self._connected = False

    def describe(self) -> dict[str, Any]:
        return {"model": "SimulatedThermometer", "simulated": True, "noise_c": self.noise_c, "seed": self.seed}

    def temperature_c(self) -> float:
        if not self._connected:
            raise DeviceError("simulated thermometer is not connected: call connect() first")
        return self.sample.temperature_c + (self.noise_c * float(self._rng.standard_normal()) if self.noise_c else 0.0)


def make_simulated_nta(components: Sequence[SampleComponent], concentration_per_ml: float, *,
                       illumination_mw: Callable[[], float] | None, temperature_c: float = 25.0,
                       drift_um_s: tuple[float, float] = (0.0, 0.0), medium_index: float = 1.332,
                       seed: int | None = None, margin_um: float = 10.0, thermometer_noise_c: float = 0.0,
                       contamination: Sequence[SampleComponent] = (), contamination_per_ml: float = 0.0,
                       **camera_kwargs: Any) -> tuple[SimulatedNTACamera, SimulatedThermometer, SimulatedSample]:
    """Camera, thermometer and a sample whose box is the field plus ``margin_um`` on
    each side in x and y and +-3 sheet waists in z; seeds derived from ``seed``. The buffer's
    ``contamination`` (at ``contamination_per_ml``) is in every tube (SimulatedSample)."""
    geo = {k: p.default for k, p in inspect.signature(SimulatedNTACamera).parameters.items()} | camera_kwargs
    width, height = int_in("width", geo["width"], 8, 16384), int_in("height", geo["height"], 8, 16384)
    pixel, waist = positive("pixel_size_um", geo["pixel_size_um"]), positive("sheet_waist_um", geo["sheet_waist_um"])
    margin = positive("margin_um", margin_um, zero_ok=True)
    s_sample, s_camera, s_thermo = (int(v) for v in np.random.SeedSequence(seed).generate_state(3))
    box = (width * pixel + 2 * margin, height * pixel + 2 * margin, 6 * waist)
    sample = SimulatedSample(components, concentration_per_ml, box_um=box, temperature_c=temperature_c,
                             drift_um_s=drift_um_s, medium_index=medium_index, seed=s_sample,
                             contamination=contamination, contamination_per_ml=contamination_per_ml)
    camera = SimulatedNTACamera(sample, illumination_mw=illumination_mw, seed=s_camera, **camera_kwargs)
    return camera, SimulatedThermometer(sample, thermometer_noise_c, seed=s_thermo), sample


# -- as the daemon finds them (exoacq.registry) -------------------------------------------
def _simulation(context: dict[str, Any], what: str) -> Any:
    sim = context.get("nta_simulation")
    if sim is None:
        raise ConfigError(f"the {what} belongs to a simulated NTA instrument (method nta, with its [simulation])")
    return sim


def _open_camera(options: Any, address: str | None, context: dict[str, Any]) -> SimulatedNTACamera:
    """The simulated camera looks at the instrument's simulated sample, lit by its simulated laser,
    in its temperature-controlled holder when it has one."""
    sim = _simulation(context, "simulated-nta camera")
    simulators = context.setdefault("simulators", {})
    laser = simulators.get("laser")
    if laser is None or not hasattr(laser, "emitted_power_mw"):
        raise ConfigError("the simulated-nta camera sees a simulated laser's light: set the laser's simulated = true")
    camera, _, sample = make_simulated_nta(
        [SampleComponent(**c.model_dump()) for c in sim.components], sim.concentration_per_ml,
        temperature_c=sim.temperature_c, drift_um_s=tuple(sim.drift_um_s),
        contamination=[SampleComponent(**c.model_dump()) for c in sim.contamination],
        contamination_per_ml=sim.contamination_per_ml,
        illumination_mw=lambda: laser.emitted_power_mw, seed=sim.seed, **options.model_dump())

    def holder_c() -> float | None:
        holder = simulators.get("temperature")
        return getattr(holder, "temperature_c", None) if holder is not None else None

    camera.sample_temperature_c = holder_c
    context["sample"] = sample
    return camera


def _open_thermometer(options: Any, address: str | None, context: dict[str, Any]) -> SimulatedThermometer:
    _simulation(context, "simulated thermometer")
    if "sample" not in context:
        raise ConfigError("the simulated thermometer reads the simulated camera's sample: configure the camera first")
    return SimulatedThermometer(context["sample"], options.noise_c)


def _camera_options() -> type:
    from exoacq.nta.settings import SimulatedCameraOptions
    return SimulatedCameraOptions


class SimulatedThermometerOptions(DriverOptions):
    #: SD of Gaussian read noise added to the sample's temperature.
    noise_c: float = Field(0.0, ge=0.0, le=5.0)


CAMERA_DRIVER = Driver(name="simulated-nta", kind="camera", options=_camera_options(), open=_open_camera,
                       simulation_only=True,
                       description="physically faithful simulated NTA camera (Rayleigh scatter in a light sheet)")
THERMOMETER_DRIVER = Driver(name="simulated-thermometer", kind="thermometer", options=SimulatedThermometerOptions,
                            open=_open_thermometer, simulation_only=True,
                            description="reads the simulated NTA sample's temperature")
