"""The nano flow cytometry method, as the daemon and the command line find it (entry point ``exoacq.methods: flow``).

Single vesicles counted as pulses in a digitizer's detector traces (or read from
a commercial cytometer's FCS exports in a watched folder), sized from
calibrated side scatter (Mie theory, EV core-shell model), fluorescence in
MESF, marker-positive fractions against controls, concentrations from the
analysed volume; every run written as an FCS 3.1 file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exoacq.errors import ConfigError, ProtocolError
from exoacq.free_text import check_free_text
from exoacq.methods import Method, Role, Run

SCHEMA_DIR = Path(__file__).resolve().parent.parent.parent / "docs" / "schemas"
#: The simulated cytometer's calibration (a path relative to the project root).
SIMULATED_CALIBRATION = "calibrations/flow/simulated-cytometer.toml"
MAX_DURATION_S = 3600.0
#: What a run measures: the sample itself, or one of the controls MIFlowCyt-EV asks for (Welsh 2020).
CONTROLS = ("buffer", "unstained", "isotype", "lysed")
RUN_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")


@dataclass
class FlowRun(Run):
    """A flow run: the core's run plus the events and the analysis made in the acquisition thread."""

    analysis: dict[str, Any] | None = None
    #: The control runs attached to this sample, read at setup (kind -> analysis input).
    controls: dict[str, Any] = field(default_factory=dict)


class FlowMethod(Method):
    name = "flow"
    description = "nano flow cytometry: EV counts, calibrated sizes and marker-positive fractions"
    roles = {
        "laser": Role(("laser",), required=False, description="the laser, switched on while acquiring"),
        "pump": Role(("pump",), required=False, description="the sample pump (its rate gives the analysed volume)"),
        "digitizer": Role(("digitizer",), required=False,
                          description="detector traces (an oscilloscope or a digitizer); pulses found here"),
        "cytometer": Role(("cytometer",), required=False,
                          description="a commercial cytometer's FCS exports in a watched folder"),
    }
    topics = {"flow.progress": "exoacq.flow.progress/1", "flow.result": "exoacq.flow.result/1"}
    schema_dir = SCHEMA_DIR

    def run_tables_for(self, instrument: Any) -> dict[str, Any]:
        """``flow/events`` in run.h5: every event as acquired, a column per parameter of the
        instrument's digitizer channels (exoacq.flow.run_events)."""
        from exoacq.flow.run_events import events_tables
        return events_tables(instrument)

    @property
    def settings_model(self):  # type: ignore[override]
        from exoacq.flow.settings import FlowSettings
        return FlowSettings

    @property
    def simulation_model(self):  # type: ignore[override]
        from exoacq.flow.settings import FlowSimulation
        return FlowSimulation

    def prepare(self, instrument_config: Any, relative_to: Path | None, source: str) -> None:
        """An instrument needs a digitizer or a cytometer folder; calibration and gates are read now."""
        from exoacq.flow.settings_files import check_files

        if not set(instrument_config.devices) & {"digitizer", "cytometer"}:
            raise ConfigError(f"{source}: a flow instrument needs a digitizer (detector traces) or a cytometer "
                              "(a watched folder of FCS exports) among its devices")
        check_files(instrument_config.options, relative_to, source)

    def validate_request(self, params: dict[str, Any], instrument: Any = None, sop: Any = None) -> dict[str, Any]:
        if sop is not None:
            raise ProtocolError("flow runs take no SOP yet: give duration_s, sample, dilution", code="bad_sop")
        allowed = {"duration_s", "sample", "dilution", "control", "controls"}
        unknown = set(params) - allowed
        if unknown:
            raise ProtocolError(f"unknown parameter(s) for a flow acquisition: {', '.join(sorted(unknown))}; "
                                f"allowed: {', '.join(sorted(allowed))}")
        if instrument is not None and "digitizer" not in instrument.slots:
            raise ProtocolError(f"instrument {instrument.name} has no digitizer: its cytometer's FCS files are "
                                "analysed and published as they appear", code="no_digitizer")
        settings = {"duration_s": 10.0, "sample": "unnamed", "dilution": 1.0, "control": None, "controls": {}}
        settings.update({k: v for k, v in params.items() if v is not None})
        duration, dilution, sample = settings["duration_s"], settings["dilution"], settings["sample"]
        if not _number(duration) or not 0 < duration <= MAX_DURATION_S:
            raise ProtocolError(f"duration_s = {duration!r}: must be a number of seconds in (0, {MAX_DURATION_S:g}]")
        if not _number(dilution) or not 1 <= dilution <= 1e9:
            raise ProtocolError(f"dilution = {dilution!r}: must be a dilution factor from 1 (neat) to 1e9")
        check_free_text(sample, "sample", max_chars=200)
        control = settings["control"]
        if control is not None and control not in CONTROLS:
            raise ProtocolError(f"control = {control!r}: a run is the sample (no control) or one of the controls "
                                f"{', '.join(CONTROLS)}")
        controls = settings["controls"]
        if not isinstance(controls, dict) or any(k not in CONTROLS for k in controls) or any(
                not isinstance(v, str) or not RUN_ID.match(v) for v in controls.values()):
            raise ProtocolError(f"controls = {controls!r}: give {{kind: run_id}} with kinds among "
                                f"{', '.join(CONTROLS)}, e.g. {{\"unstained\": \"20261202-101500-ab12\"}}")
        if control is not None and controls:
            raise ProtocolError("a control run takes no controls of its own")
        settings["duration_s"], settings["dilution"] = float(duration), float(dilution)
        return settings

    def make_run(self, run_id: str, settings: dict[str, Any], output_dir: Path, instrument: str) -> FlowRun:
        return FlowRun(run_id, self.name, instrument, settings, output_dir)

    def service(self, instrument: Any, context: Any):
        from exoacq.flow.service import FlowService
        return FlowService(instrument, context)

    def simulated_instrument(self) -> dict[str, Any]:
        return {
            "method": "flow",
            "description": "simulated nano flow cytometer: 488 nm, side scatter + 2 fluorescence channels, "
                           "read by a Keysight InfiniiVision oscilloscope over VISA",
            # timeout_s: the scope's twin runs in the daemon's own process and makes each record before
            # it answers, so a loaded daemon delays it (a real scope answers on its own): 2 s was missed
            # in test runs with NTA, DLS and flow recording at once on a 2-core machine.
            "devices": {"digitizer": {"driver": "oscilloscope", "simulated": True,
                                      "model": "keysight-infiniivision", "sample_rate_hz": 1e6,
                                      "memory_depth": 500_000, "timeout_s": 10.0}},
            "settings": {"calibration": SIMULATED_CALIBRATION},
        }

    def simulation_context(self, instrument_config: Any) -> dict[str, Any]:
        """The simulated sample, and the tube a simulated digitizer's twin reads its traces from."""
        from exoacq.flow.simulated import SimulatedTube
        return {"flow_simulation": instrument_config.sample, "flow_source": SimulatedTube(instrument_config.sample)}

    def check_instrument(self, instrument: Any) -> None:
        """A simulated digitizer must sample the simulated cytometer's traces at the rate they were made."""
        tube = instrument.context.get("flow_source")
        if tube is None or "digitizer" not in instrument.slots or not instrument.config.devices["digitizer"].simulated:
            return
        rate = instrument.device("digitizer").sample_rate_hz
        if abs(rate - tube.sample_rate_hz) > 1e-6 * tube.sample_rate_hz:
            raise ConfigError(f"instruments.{instrument.name}.devices.digitizer: the simulated cytometer's traces "
                              f"are sampled at {tube.sample_rate_hz:g} Hz but the digitizer samples at {rate:g} Hz: "
                              f"set sample_rate_hz = {tube.sample_rate_hz:g}")

    def add_cli(self, verbs: dict[str, Any]) -> None:
        from exoacq.flow.cli import add_cli
        add_cli(verbs)

    def format_result(self, document: dict[str, Any]) -> str:
        from exoacq.flow.format import format_result
        return format_result(document)

    def format_progress(self, document: dict[str, Any]) -> str | None:
        from exoacq.flow.format import format_progress
        return format_progress(document)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


METHOD = FlowMethod()
