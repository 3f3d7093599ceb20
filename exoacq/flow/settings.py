"""The flow method's configuration: ``[instruments.NAME.settings]`` and ``.simulation``. Units in every key."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from exoacq.methods import MethodSettings

#: The parameter names markers and gates refer to: "SSC-H", "FL1-A", "Diameter", "FL2-MESF".
PARAMETER_PATTERN = r"^[A-Za-z][A-Za-z0-9_ .:/+-]{0,39}$"


class FlowSettings(MethodSettings):
    """Pulse detection, calibration, gates and markers of a nano flow cytometer."""

    #: The detector channel whose pulses define events (side scatter on a nano flow cytometer).
    trigger_channel: str = "SSC"
    #: Trigger level: baseline + k x the baseline's noise (robust sigma), unless an absolute level is given.
    trigger_k_sigma: float = Field(5.0, gt=1.0, le=1000.0)
    #: Absolute trigger level, detector counts above the baseline; None: trigger_k_sigma.
    trigger_level_counts: float | None = Field(None, gt=0.0, le=65535.0)
    #: A pulse ends when the signal falls below baseline + hysteresis x (threshold - baseline).
    hysteresis: float = Field(0.5, ge=0.0, lt=1.0)
    #: A flow calibration written by ``exoacq calibrate flow`` (scatter -> diameter, fluorescence -> MESF).
    calibration: str | None = None
    #: A Gating-ML 2.0 file; its leaf gate (or ``final_gate``) selects the events analysed.
    gates: str | None = None
    final_gate: str | None = None
    #: Threshold gates, e.g. "SSC-H>20", "Diameter:50-200" (applied after the Gating-ML gates).
    gate: list[str] = []
    #: Marker name -> the parameter that measures it.
    markers: dict[str, str] = {"CD63": "FL1-H", "CD81": "FL2-H"}
    #: Sample flow rate through the interrogation point; None: the pump's, or unknown (no concentration).
    flow_rate_ul_min: float | None = Field(None, gt=0.0, le=1000.0)
    #: Live progress (event rate, dot plot, running counts) is published this often.
    progress_interval_s: float = Field(0.5, ge=0.1, le=10.0)
    #: Events of the live dot plot (the most recent).
    dot_plot_points: int = Field(2000, ge=0, le=100_000)
    #: A cytometer's export folder is scanned this often.
    watch_interval_s: float = Field(1.0, ge=0.1, le=60.0)

    @field_validator("markers")
    @classmethod
    def _markers(cls, value: dict[str, str]) -> dict[str, str]:
        import re
        for name, parameter in value.items():
            if not re.match(PARAMETER_PATTERN, name) or not re.match(PARAMETER_PATTERN, parameter):
                raise ValueError(f"markers: {name!r} = {parameter!r}: give a marker name and a parameter name "
                                 "such as CD63 = \"FL1-H\"")
        return value


class SimulatedMarker(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Of the population's particles carrying the marker.
    positive_fraction: float = Field(ge=0.0, le=1.0)
    #: Median brightness of a positive particle, molecules of equivalent soluble fluorochrome.
    mesf_median: float = Field(gt=0.0, le=1e7)


class SimulatedPopulation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=60)
    material: Literal["ev", "silica", "polystyrene"] = "ev"
    #: Median diameter of a log-normal distribution, and its spread (sigma of ln d).
    diameter_nm: float = Field(gt=1.0, le=5000.0)
    diameter_cv: float = Field(0.0, ge=0.0, le=2.0)
    #: In the undiluted sample.
    concentration_per_ml: float = Field(gt=0.0, le=1e14)
    markers: dict[str, SimulatedMarker] = {}
    #: True for particles that survive detergent lysis (beads, protein aggregates); EVs are lysed.
    detergent_resistant: bool = False


def _default_populations() -> list[SimulatedPopulation]:
    return [SimulatedPopulation(name="EVs", material="ev", diameter_nm=80.0, diameter_cv=0.35,
                                concentration_per_ml=2e10,
                                markers={"CD63": SimulatedMarker(positive_fraction=0.4, mesf_median=600.0),
                                         "CD81": SimulatedMarker(positive_fraction=0.25, mesf_median=600.0)})]


class FlowSimulation(MethodSettings):
    """The sample a simulated nano flow cytometer measures (the truth of a simulation).

    The run's ``control`` decides which tube the simulated operator loads: ``unstained``
    and ``isotype`` strip the markers, ``lysed`` keeps only detergent-resistant
    populations, ``buffer`` keeps none (noise only).
    """

    populations: list[SimulatedPopulation] = Field(default_factory=_default_populations)
    #: Sample flow rate of the simulated instrument.
    flow_rate_ul_min: float = Field(1.0, gt=0.0, le=100.0)
    seed: int | None = None

    @model_validator(mode="after")
    def _populations(self) -> "FlowSimulation":
        if not self.populations:
            raise ValueError("populations: give at least one simulated population")
        return self
