"""The NTA method, as the daemon and the command line find it (entry point ``exoacq.methods: nta``).

Nanoparticle tracking analysis: a laser light sheet, a camera, a thermometer
(or a temperature controller), optionally a syringe pump; frames tracked in
real time; sizes by Stokes-Einstein, concentrations over a calibrated
detection volume.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from exoacq.errors import ConfigError
from exoacq.methods import Method, Role

SCHEMA_DIR = Path(__file__).resolve().parent.parent.parent / "docs" / "schemas"
#: The simulated camera's calibration (a path relative to the project root).
SIMULATED_CALIBRATION = "calibrations/nta/simulated-camera.toml"


class NTAMethod(Method):
    name = "nta"
    description = "nanoparticle tracking analysis: size distribution and concentration"
    #: In connection order: a simulated camera sees the laser's light and the holder's temperature.
    roles = {
        "laser": Role(("laser",), description="the light sheet's laser"),
        "pump": Role(("pump",), required=False, description="a syringe pump advancing the sample"),
        "camera": Role(("camera",), description="the scatter-imaging camera"),
        "temperature": Role(("thermometer", "temperature-controller"),
                            description="the sample's temperature (sizes scale with T / viscosity)"),
    }
    topics = {"nta.progress": "exoacq.nta.progress/1", "nta.result": "exoacq.nta.result/1"}
    schema_dir = SCHEMA_DIR
    #: The holder's temperature may be corrected while recording (it is measured per capture).
    settable_during_run = frozenset({("temperature", "setpoint_c")})

    @property
    def run_tables(self):  # type: ignore[override]
        """``nta/tracks`` in run.h5: every linked position, written as the tracking core links them."""
        from exoacq.nta.tracker import TRACK_ROWS_COLUMNS
        from exoacq.runfile import Table
        return {"nta/tracks": Table(TRACK_ROWS_COLUMNS, "every linked position (tracks.csv of each capture)")}

    @property
    def settings_model(self):  # type: ignore[override]
        from exoacq.nta.settings import NTASettings
        return NTASettings

    @property
    def simulation_model(self):  # type: ignore[override]
        from exoacq.nta.settings import SimulationConfig
        return SimulationConfig

    def validate_request(self, params: dict[str, Any], instrument: Any = None, sop: Any = None) -> dict[str, Any]:
        from exoacq.nta.acquisition import validate_request
        if sop is not None and any(c.advance_ul > 0 for c in sop.captures()) and (
                instrument is None or "pump" not in instrument.slots):
            from exoacq.errors import ProtocolError
            raise ProtocolError("the SOP advances the sample between captures: the instrument needs a pump",
                                code="bad_sop")
        return validate_request(params, sop)

    def make_run(self, run_id: str, settings: dict[str, Any], output_dir: Path, instrument: str):
        from exoacq.nta.acquisition import Run
        run = Run(run_id, self.name, instrument, settings, output_dir)
        if "sop" in settings:  # the steps, as validated with the request
            from exoacq.sop import Sop
            run.sop = Sop.model_validate(settings["sop"]["definition"])
        return run

    def service(self, instrument: Any, context: Any):
        from exoacq.nta.service import NTAService
        return NTAService(instrument, context)

    def reprocess(self, record: dict[str, Any], overrides: dict[str, Any], output_dir: Path) -> dict[str, Any]:
        """Analyse a stored run's kept videos again (exoacq.nta.reprocess)."""
        from exoacq.nta.reprocess import reprocess_run
        document = reprocess_run(record, overrides, output_dir)
        blank = (record.get("result") or {}).get("blank")
        if isinstance(blank, dict) and "error" not in blank:  # the blank subtracted live is subtracted again
            from exoacq.nta.blank import apply_blank, blank_document
            apply_blank(document, blank_document(blank), warn_fraction=blank["warn_fraction"])
        return document

    def simulated_instrument(self) -> dict[str, Any]:
        return {
            "method": "nta",
            "description": "simulated NTA rig: OBIS laser, light-sheet camera, TED4015 holder, NE-1000 pump",
            "devices": {
                "laser": {"driver": "obis", "simulated": True},
                "pump": {"driver": "ne1000", "simulated": True, "diameter_mm": 4.61},
                "camera": {"driver": "simulated-nta", "simulated": True},
                "temperature": {"driver": "ted4015", "simulated": True, "setpoint_c": 25.0,
                                "output_on_connect": True},
            },
            "settings": {"calibration": SIMULATED_CALIBRATION},
        }

    def simulation_context(self, instrument_config: Any) -> dict[str, Any]:
        return {"nta_simulation": instrument_config.sample}

    def prepare(self, instrument_config: Any, relative_to: Path | None, source: str) -> None:
        """Read the calibration file (the optics are checked once the devices are connected)."""
        from exoacq.nta.calibration import load_nta_calibration, resolve

        nta = instrument_config.options
        if nta.calibration is None:
            return
        if nta.detection_volume_nl is not None:
            raise ConfigError(f"{source}: give settings.calibration or settings.detection_volume_nl, not both")
        path = resolve(nta.calibration, relative_to)
        calibration = load_nta_calibration(path)
        nta.calibration = path
        nta.detection_volume_nl = calibration.result.detection_volume_nl
        nta.calibration_relative_depth = calibration.result.relative_detection_depth
        nta.detection_volume_source = calibration.source(path)

    def check_instrument(self, instrument: Any) -> None:
        """The calibration must have been measured with these optics; the simulated holder starts
        at the simulated sample's temperature."""
        from exoacq.nta.calibration import check_optics, load_nta_calibration

        holder = instrument.context.get("simulators", {}).get("temperature")
        if holder is not None and hasattr(holder, "start_at"):
            holder.start_at(instrument.config.sample.temperature_c)
        nta = instrument.config.options
        camera = instrument.device("camera")
        if nta.calibration is not None:
            check_optics(load_nta_calibration(nta.calibration), nta.calibration,
                         pixel_size_um=camera.pixel_size_um, frame_rate_hz=camera.frame_rate_hz,
                         exposure_ms=camera.exposure_ms, laser_power_mw=nta.laser_power_mw,
                         feature_diameter_px=nta.feature_diameter_px)

    def add_cli(self, verbs: dict[str, Any]) -> None:
        from exoacq.nta.cli import add_cli
        add_cli(verbs)

    def format_result(self, document: dict[str, Any]) -> str:
        from exoacq.nta.format import format_result
        return format_result(document)

    def format_progress(self, document: dict[str, Any]) -> str | None:
        from exoacq.nta.format import format_progress
        return format_progress(document)


METHOD = NTAMethod()
