"""The DLS method, as the daemon and the command line find it (entry point ``exoacq.methods: dls``).

Dynamic light scattering: a photon-counting detector at a scattering angle
(its photons correlated here in real time), or a hardware correlator whose
software writes files to a watched folder; sizes by cumulants (ISO 22412) and
a regularised inversion with Mie weighting.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exoacq.errors import ConfigError, ProtocolError
from exoacq.free_text import check_free_text
from exoacq.methods import Method, Role, Run

SCHEMA_DIR = Path(__file__).resolve().parent.parent.parent / "docs" / "schemas"
MAX_DURATION_S = 3600.0
MAX_RUNS = 100


@dataclass
class DLSRun(Run):
    """A DLS run: the core's run plus its analysis, made in the acquisition thread."""

    analysis: dict[str, Any] | None = None


class DLSMethod(Method):
    name = "dls"
    description = "dynamic light scattering: Z-average, PDI and size distributions"
    roles = {
        "laser": Role(("laser",), required=False, description="the laser, switched on while measuring"),
        "detector": Role(("photon-counter",), required=False,
                         description="a single-photon detector with a time tagger (correlated here)"),
        "correlator": Role(("correlator",), required=False,
                           description="a hardware correlator's files in a watched folder"),
        "temperature": Role(("thermometer", "temperature-controller"), required=False,
                            description="the sample's temperature (default: settings.temperature_c)"),
    }
    topics = {"dls.progress": "exoacq.dls.progress/1", "dls.result": "exoacq.dls.result/1"}
    schema_dir = SCHEMA_DIR
    settable_during_run = frozenset({("temperature", "setpoint_c")})

    @property
    def run_tables(self):  # type: ignore[override]
        """``dls/correlations`` in run.h5: each finished sub-run's g2(tau) - 1, written as the run goes."""
        from exoacq.runfile import Table
        return {"dls/correlations": Table((("subrun", "i4", "1"), ("lag_s", "f8", "s"), ("g2_minus_1", "f8", "1")),
                                          "the correlation curve of each finished sub-run (NaN: no data)")}

    @property
    def settings_model(self):  # type: ignore[override]
        from exoacq.dls.settings import DLSSettings
        return DLSSettings

    @property
    def simulation_model(self):  # type: ignore[override]
        from exoacq.dls.settings import DLSSimulation
        return DLSSimulation

    def prepare(self, instrument_config: Any, relative_to: Path | None, source: str) -> None:
        roles = set(instrument_config.devices)
        if not roles & {"detector", "correlator"}:
            raise ConfigError(f"{source}: a DLS instrument needs a detector (a photon counter) or a correlator "
                              "(a watched folder of correlator files) among its devices")

    def validate_request(self, params: dict[str, Any], instrument: Any = None, sop: Any = None) -> dict[str, Any]:
        if sop is not None:
            raise ProtocolError("DLS runs take no SOP yet: give duration_s, runs and angle_deg", code="bad_sop")
        allowed = {"duration_s", "runs", "angle_deg", "sample", "dilution"}
        unknown = set(params) - allowed
        if unknown:
            raise ProtocolError(f"unknown parameter(s) for a DLS acquisition: {', '.join(sorted(unknown))}; "
                                f"allowed: {', '.join(sorted(allowed))}")
        if instrument is not None and "detector" not in instrument.slots:
            raise ProtocolError(f"instrument {instrument.name} has no photon-counting detector: its correlator's "
                                "files are analysed and published as they appear", code="no_detector")
        settings = {"duration_s": 10.0, "runs": 3, "sample": "unnamed", "dilution": 1.0, "angle_deg": None}
        settings.update({k: v for k, v in params.items() if v is not None})
        duration, runs = settings["duration_s"], settings["runs"]
        if not _number(duration) or not 0 < duration <= MAX_DURATION_S:
            raise ProtocolError(f"duration_s = {duration!r}: must be a number of seconds in (0, {MAX_DURATION_S:g}]")
        if not isinstance(runs, int) or isinstance(runs, bool) or not 1 <= runs <= MAX_RUNS:
            raise ProtocolError(f"runs = {runs!r}: must be a whole number of runs from 1 to {MAX_RUNS}")
        angle = settings["angle_deg"]
        if angle is not None and (not _number(angle) or not 0 < angle < 180):
            raise ProtocolError(f"angle_deg = {angle!r}: must be a scattering angle in (0, 180) degrees")
        dilution, sample = settings["dilution"], settings["sample"]
        if not _number(dilution) or not 1 <= dilution <= 1e9:
            raise ProtocolError(f"dilution = {dilution!r}: must be a dilution factor from 1 (neat) to 1e9")
        check_free_text(sample, "sample", max_chars=200)
        settings["duration_s"], settings["dilution"] = float(duration), float(dilution)
        return settings

    def make_run(self, run_id: str, settings: dict[str, Any], output_dir: Path, instrument: str) -> DLSRun:
        return DLSRun(run_id, self.name, instrument, settings, output_dir)

    def service(self, instrument: Any, context: Any):
        from exoacq.dls.service import DLSService
        return DLSService(instrument, context)

    def simulated_instrument(self) -> dict[str, Any]:
        return {
            "method": "dls",
            "description": "simulated DLS instrument: a photon counter at 90 degrees, 633 nm, 100 nm beads",
            "devices": {"detector": {"driver": "simulated-dls", "simulated": True}},
        }

    def simulation_context(self, instrument_config: Any) -> dict[str, Any]:
        return {"dls_simulation": instrument_config.sample}

    def add_cli(self, verbs: dict[str, Any]) -> None:
        from exoacq.dls.cli import add_cli
        add_cli(verbs)

    def format_result(self, document: dict[str, Any]) -> str:
        from exoacq.dls.format import format_result
        return format_result(document)

    def format_progress(self, document: dict[str, Any]) -> str | None:
        from exoacq.dls.format import format_progress
        return format_progress(document)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


METHOD = DLSMethod()
