"""The DLS method's configuration: ``[instruments.NAME.settings]`` and ``.simulation``. Units in every key."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from exoacq.methods import MethodSettings


class DLSSettings(MethodSettings):
    """Analysis and correlator settings of a DLS instrument."""

    #: Of the particles, for the Mie volume and number distributions (1.59 polystyrene; EVs ~1.37-1.40).
    particle_refractive_index: float = Field(1.59, gt=1.0, le=4.0)
    #: Of the medium (water 1.332 at 633 nm); None: the detector's or the file's.
    medium_refractive_index: float | None = Field(None, gt=1.0, le=2.0)
    #: Used when the instrument has no thermometer.
    temperature_c: float = Field(25.0, gt=0.0, lt=100.0)
    #: Of the medium; None: water at the measured temperature (IAPWS 2008).
    viscosity_mpa_s: float | None = Field(None, gt=0.0, le=1000.0)
    #: The correlator: first lag (the base bin), longest lag, 16 channels then 8 per octave.
    base_lag_s: float = Field(25e-9, gt=0.0, le=1e-3)
    max_lag_s: float = Field(1.0, gt=0.0, le=100.0)
    first_channels: int = Field(16, ge=2, le=1024)
    per_octave: int = Field(8, ge=2, le=1024)
    #: Cumulant fit down to this fraction of the intercept (ISO 22412: ~0.1).
    fit_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    #: Live curves are published this often.
    progress_interval_s: float = Field(0.5, ge=0.1, le=10.0)
    #: A hardware correlator's folder: new files are analysed and published as they appear.
    watch_interval_s: float = Field(1.0, ge=0.1, le=60.0)


class DLSComponent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    diameter_nm: float = Field(gt=0.0, le=10000.0)
    #: Relative SD of a log-normal size spread; 0 is monodisperse.
    cv: float = Field(0.0, ge=0.0, le=2.0)
    number_fraction: float = Field(1.0, gt=0.0)
    refractive_index: float = Field(1.59, gt=1.0, le=4.0)


class DLSSimulation(MethodSettings):
    """The sample a simulated DLS instrument sees (the truth of a simulation)."""

    components: list[DLSComponent] = [DLSComponent(diameter_nm=100.0)]
    #: Photons per second reaching the detector (set by the sample and the optics), before dead-time losses.
    count_rate_hz: float = Field(300e3, gt=0.0, le=50e6)
    temperature_c: float = Field(25.0, gt=0.0, lt=100.0)
    medium_refractive_index: float = Field(1.332, gt=1.0, le=2.0)
    #: The intercept of g2 - 1 (coherence of the detection optics).
    beta: float = Field(0.9, gt=0.0, le=1.0)
    dead_time_s: float = Field(0.0, ge=0.0, le=1e-5)
    #: Dust particles crossing the beam, per second (each a transient burst).
    dust_rate_per_s: float = Field(0.0, ge=0.0, le=10.0)
    seed: int | None = None

    @model_validator(mode="after")
    def _fractions(self) -> "DLSSimulation":
        if not self.components:
            raise ValueError("components: give at least one size component")
        return self
