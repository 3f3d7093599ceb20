"""The files a flow instrument's settings name (calibration, Gating-ML gates), read once at start.

A bad file stops the daemon at start with a line that names the setting and
the file, rather than failing the first run an operator starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from exoacq.config import resolve_file
from exoacq.errors import ConfigError, ExoacqError


def check_files(settings: Any, relative_to: Path | None, source: str) -> None:
    """Resolve ``settings.calibration`` and ``settings.gates`` to absolute paths and read them."""
    from exoacq.flow.calibration import load_calibration
    from exoacq.flow.gating import GateSet, parse_threshold

    if settings.calibration is not None:
        path = resolve_file(settings.calibration, relative_to, what="flow calibration")
        _read(lambda: load_calibration(path), source, "settings.calibration")
        settings.calibration = str(path)
    if settings.gates is not None:
        path = resolve_file(settings.gates, relative_to, what="Gating-ML file")
        _read(lambda: GateSet.from_gatingml(path, final=settings.final_gate), source, "settings.gates")
        settings.gates = str(path)
    for text in settings.gate:
        gate = _read(lambda: parse_threshold(text), source, "settings.gate")
        if gate.parameter == "Diameter" and settings.calibration is None:
            raise ConfigError(f"{source}: settings.gate {text!r}: a Diameter gate needs a scatter calibration "
                              "(settings.calibration; on the command line --calibration)")


def _read(load: Any, source: str, key: str) -> Any:
    try:
        return load()
    except ConfigError:
        raise
    except ExoacqError as exc:
        raise ConfigError(f"{source}: {key}: {exc}") from None


def load_analysis_files(settings: Any) -> tuple[Any, Any]:
    """(calibration or None, gate set or None) of resolved settings."""
    from exoacq.flow.calibration import load_calibration
    from exoacq.flow.gating import GateSet, parse_threshold

    calibration = load_calibration(settings.calibration) if settings.calibration else None
    gates = GateSet.from_gatingml(settings.gates, final=settings.final_gate) if settings.gates else None
    if settings.gate:
        thresholds = GateSet.thresholds([parse_threshold(t) for t in settings.gate])
        gates = thresholds if gates is None else gates.then(thresholds)
    return calibration, gates
