"""A simulated single-photon detector with a time tagger, looking at a simulated DLS sample
(driver ``simulated-dls``).

The photons come from :class:`exoacq.dls.simulate.PhotonSimulator` (a physical model: Mie
scatter of the configured size distribution, a Gaussian speckle field with the Stokes-Einstein
decay rates, Poisson photons, dead time, dust; see that module) and are delivered IN REAL
TIME, as a time tagger's FIFO would deliver them: ``start()`` starts the clock, a ``read``
returns every photon that has arrived since the last read, in ticks of ``resolution_s``
since ``start()``, and waits up to ``timeout_s`` when none has. The photons are generated
when read (lazily, the state carried), so a read after a long pause generates the pause's
photons at once; a pause longer than the FIFO holds (``buffer_s``) is a DeviceError
("FIFO overrun") and stops the acquisition, as a real time tagger's would.

``stop()`` stops the clock: the photons up to that instant stay readable, then reads return
an empty array at once. A new ``start()`` counts ticks from 0 again; the sample's field
carries on from its state (the sample does not change while the detector is stopped).

The sample is the instrument's simulation context when there is one
(``context["dls_simulation"]``, the DLS method's ``DLSSimulation``: components, count rate,
temperature, medium, intercept, dead time, dust, seed), else this driver's options. The
optics (angle, wavelength, resolution) are always the options'. The detector sits on a
goniometer: ``set_angle_deg`` moves it (while stopped), the sample staying the same.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from exoacq.devices import Setting
from exoacq.dls.simulate import Component, PhotonSimulator, Sample, warm_up
from exoacq.errors import DeviceError
from exoacq.registry import Driver, DriverOptions

NAME = "simulated-dls"
MODEL = "simulated single-photon detector and time tagger"
#: The goniometer's range.
ANGLE_RANGE_DEG = (10.0, 175.0)


class SimulatedPhotonCounter:
    """The simulated detector: a PhotonCounter (exoacq.devices) on a goniometer."""

    driver = NAME
    #: Nothing an operator changes while previewing (the angle is set per run).
    settings: dict[str, Setting] = {}

    def __init__(self, sample: Sample, *, angle_deg: float = 90.0, wavelength_nm: float = 633.0,
                 resolution_s: float = 1e-9, beta: float = 0.9, dead_time_s: float = 0.0,
                 dust_rate_per_s: float = 0.0, dust_intensity_ratio: float = 5.0, seed: int | None = None,
                 buffer_s: float = 10.0, max_field_step_s: float = 1e-6, clock: Callable[[], float] = time.monotonic):
        self.sample = sample
        self.angle_deg = float(angle_deg)
        self.wavelength_nm = float(wavelength_nm)
        self.resolution_s = float(resolution_s)
        self.medium_refractive_index = float(sample.medium_refractive_index)
        self.buffer_s = float(buffer_s)
        self._kwargs = dict(wavelength_nm=wavelength_nm, resolution_s=resolution_s, beta=beta,
                            dead_time_s=dead_time_s, dust_rate_per_s=dust_rate_per_s,
                            dust_intensity_ratio=dust_intensity_ratio, max_field_step_s=max_field_step_s)
        self.seed = seed
        self._seeds = np.random.SeedSequence(seed)
        self._clock = clock
        self._lock = threading.Lock()
        self._sim: PhotonSimulator | None = None
        self._running = False
        self._t0 = 0.0
        self._origin = 0          # simulator tick at start()
        self._stop_tick: int | None = None
        self.photons = 0          # delivered since start()

    # -- connection ------------------------------------------------------------------------
    def _build(self, angle_deg: float) -> PhotonSimulator:
        try:
            return PhotonSimulator(self.sample, angle_deg=angle_deg, seed=self._seeds.spawn(1)[0], **self._kwargs)
        except ValueError as exc:
            raise DeviceError(f"{NAME}: cannot simulate this sample: {exc}") from None

    def connect(self) -> None:
        """Build the simulated sample and compile the generator (so that the first read is in time)."""
        if self._sim is None:
            self._sim = self._build(self.angle_deg)
            warm_up()

    def close(self) -> None:
        """Stop the acquisition; nothing else to make safe. Idempotent, never raises."""
        with self._lock:
            self._running = False
            self._sim = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"driver": NAME, "model": MODEL, "angle_deg": self.angle_deg,
                                "wavelength_nm": self.wavelength_nm, "resolution_s": self.resolution_s,
                                "buffer_s": self.buffer_s}
        if self._sim is not None:
            info.update({k: v for k, v in self._sim.describe().items() if k not in info})
            info["seed"] = self.seed
        return info

    def _simulator(self) -> PhotonSimulator:
        if self._sim is None:
            raise DeviceError(f"{NAME}: not connected (call connect() first)")
        return self._sim

    # -- goniometer --------------------------------------------------------------------------
    def set_angle_deg(self, angle_deg: float) -> None:
        """Move the detector arm (only while stopped); the same sample is seen at the new angle."""
        lo, hi = ANGLE_RANGE_DEG
        if not (isinstance(angle_deg, (int, float)) and lo <= angle_deg <= hi):
            raise DeviceError(f"{NAME}: angle_deg = {angle_deg!r} refused: the goniometer moves from {lo:g} "
                              f"to {hi:g} deg")
        with self._lock:
            self._simulator()
            if self._running:
                raise DeviceError(f"{NAME}: cannot move the goniometer to {angle_deg:g} deg while counting: stop first")
            self._sim = self._build(float(angle_deg))
            self.angle_deg = float(angle_deg)

    # -- acquisition ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start counting: ticks from 0 at this instant."""
        with self._lock:
            sim = self._simulator()
            self._origin = sim.tick
            self._stop_tick = None
            self.photons = 0
            self._running = True
            self._t0 = self._clock()

    def stop(self) -> None:
        """Stop counting; the photons that arrived before now stay readable."""
        with self._lock:
            if self._running:
                self._stop_tick = self._now_tick()
                self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def _now_tick(self) -> int:
        return self._origin + int((self._clock() - self._t0) / self.resolution_s)

    def read(self, timeout_s: float = 0.5) -> np.ndarray:
        """The photons arrived since the last read (int64 ticks since start(), ascending); waits up to
        ``timeout_s`` for one while counting; an empty array if none came (at once when stopped)."""
        deadline = self._clock() + max(0.0, float(timeout_s))
        while True:
            with self._lock:
                sim = self._simulator()
                counting = self._running
                if counting:
                    target = self._now_tick()
                else:
                    target = self._stop_tick if self._stop_tick is not None else sim.tick
                backlog_s = (target - sim.tick) * self.resolution_s
                if backlog_s > self.buffer_s:
                    self._running = False
                    self._stop_tick = sim.tick
                    raise DeviceError(f"{NAME}: FIFO overrun: photons not read for {backlog_s:.1f} s (the time tagger "
                                      f"holds {self.buffer_s:g} s); counting stopped")
                ticks = sim.read_to_tick(target) - self._origin if target > sim.tick else np.empty(0, np.int64)
                self.photons += ticks.size
            now = self._clock()
            if ticks.size or not counting or now >= deadline:
                return ticks
            time.sleep(min(deadline - now, 0.005))


# -- as the daemon finds it (exoacq.registry) ------------------------------------------------------
class ComponentOptions(BaseModel):
    """One size population of the simulated sample (log-normal; cv 0: monodisperse)."""

    model_config = ConfigDict(extra="forbid")
    diameter_nm: float = Field(gt=0.0, le=10000.0)
    cv: float = Field(0.0, ge=0.0, le=2.0)
    number_fraction: float = Field(1.0, gt=0.0)
    refractive_index: float = Field(1.59, gt=1.0, le=4.0)


class SimulatedDLSOptions(DriverOptions):
    #: The detector's optics.
    angle_deg: float = Field(90.0, ge=ANGLE_RANGE_DEG[0], le=ANGLE_RANGE_DEG[1])
    wavelength_nm: float = Field(633.0, ge=200.0, le=2000.0)
    #: The time tagger's tick.
    resolution_s: float = Field(1e-9, ge=1e-12, le=1e-5)
    #: The sample (the instrument's [simulation] replaces these when it has one).
    components: list[ComponentOptions] = [ComponentOptions(diameter_nm=100.0)]
    count_rate_hz: float = Field(200e3, gt=0.0, le=50e6)
    temperature_c: float = Field(25.0, gt=0.0, lt=100.0)
    medium_refractive_index: float = Field(1.332, gt=1.0, le=2.0)
    #: Of the medium; None: water at temperature_c (IAPWS 2008).
    viscosity_mpa_s: float | None = Field(None, gt=0.0, le=1000.0)
    #: Intercept of g2 - 1 (coherent fraction of the detected light squared).
    beta: float = Field(0.9, gt=0.0, le=1.0)
    #: Non-paralysable detector dead time.
    dead_time_s: float = Field(0.0, ge=0.0, le=1e-5)
    #: Dust particles crossing the beam per second, and their peak intensity relative to the sample's.
    dust_rate_per_s: float = Field(0.0, ge=0.0, le=10.0)
    dust_intensity_ratio: float = Field(5.0, gt=0.0, le=1000.0)
    seed: int | None = None
    #: How long the time tagger's FIFO holds unread photons.
    buffer_s: float = Field(10.0, gt=0.0, le=600.0)
    #: Longest step of the simulated field (it is also at most 1 / (20 Gamma_max)).
    max_field_step_s: float = Field(1e-6, ge=1e-9, le=1e-3)


def _open(options: SimulatedDLSOptions, address: str | None, context: dict[str, Any]) -> SimulatedPhotonCounter:
    """The sample from the instrument's simulation context when present, else from the options."""
    sim = context.get("dls_simulation")
    source = sim if sim is not None else options

    def pick(name: str) -> Any:
        value = getattr(source, name, None)
        return getattr(options, name) if value is None and name != "seed" else value

    sample = Sample(components=tuple(Component(c.diameter_nm, c.cv, c.number_fraction, c.refractive_index)
                                     for c in pick("components")),
                    temperature_c=pick("temperature_c"), medium_refractive_index=pick("medium_refractive_index"),
                    viscosity_mpa_s=getattr(source, "viscosity_mpa_s", options.viscosity_mpa_s),
                    count_rate_hz=pick("count_rate_hz"))
    return SimulatedPhotonCounter(
        sample, angle_deg=options.angle_deg, wavelength_nm=options.wavelength_nm, resolution_s=options.resolution_s,
        beta=pick("beta"), dead_time_s=pick("dead_time_s"), dust_rate_per_s=pick("dust_rate_per_s"),
        dust_intensity_ratio=pick("dust_intensity_ratio"), seed=pick("seed"), buffer_s=options.buffer_s,
        max_field_step_s=options.max_field_step_s)


DRIVER = Driver(name=NAME, kind="photon-counter", options=SimulatedDLSOptions, open=_open, simulation_only=True,
                description="simulated photon-counting DLS detector and time tagger (Mie scatter, speckle field, "
                            "Poisson photons, dead time, dust), delivering photons in real time")
