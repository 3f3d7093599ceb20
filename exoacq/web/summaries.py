"""Headline numbers of a stored run, for run lists and the sample report.

A run here is what the daemon's ``run`` command returns (docs/protocol.md): the
catalog fields plus ``result``, the run's result document (``nta.result``,
``dls.result`` or ``flow.result``), or null while it has none. Entries of the
``runs`` list have no ``result``: their headline is ``{}``.

Everything is None-safe: a missing or null field gives None, never an
exception, and a number that is not finite is None (the daemon never sends
NaN, but a document read from elsewhere might).
"""
from __future__ import annotations

import math
from typing import Any

METHODS = ("nta", "dls", "flow")


def number(value: Any) -> float | None:
    """A finite number as float; None for anything else (null, text, bool, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def field(document: Any, path: str) -> Any:
    """The value at a dotted path (``size_nm.mean``, ``measurements.0.z_average_nm``), or None."""
    value = document
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def result_of(run: Any) -> dict[str, Any] | None:
    """The run's result document, or None."""
    result = run.get("result") if isinstance(run, dict) else None
    return result if isinstance(result, dict) else None


def method_of(run: Any) -> str | None:
    """The run's method: its own ``method``, else its result's (``dls.analysis`` documents count as dls)."""
    if not isinstance(run, dict):
        return None
    result = result_of(run) or {}
    method = run.get("method") or result.get("method")
    if not method:
        schema = str(result.get("schema") or "")
        method = next((m for m in METHODS if schema.startswith(f"exoacq.{m}.")), None)
    return method if isinstance(method, str) else None


def dls_measurements(result: dict[str, Any] | None) -> list[tuple[int, dict[str, Any]]]:
    """The DLS result's measurements (index, measurement): one per angle and detector channel."""
    measurements = (result or {}).get("measurements")
    if not isinstance(measurements, list):
        return []
    return [(i, m) for i, m in enumerate(measurements) if isinstance(m, dict)]


def first_sized_measurement(result: dict[str, Any] | None) -> tuple[int, dict[str, Any]] | None:
    """The first DLS measurement with a Z-average (a blank, verdict 'no correlation', has none)."""
    return next(((i, m) for i, m in dls_measurements(result) if number(m.get("z_average_nm")) is not None), None)


def headline(run: Any) -> dict[str, Any]:
    """A stored run's headline numbers, units in the keys; ``{}`` when it has no result.

    nta: ``size_mean_nm``, ``size_mode_nm``, ``size_d50_nm`` (number-weighted), ``concentration_per_ml``
    and its ``concentration_se_per_ml`` (standard error over the captures; None for one capture);
    dls: ``z_average_nm`` (intensity-weighted cumulant diameter, ISO 22412) and ``pdi`` of the first
    measurement with a size, its ``angle_deg``, and ``extrapolated_diameter_nm`` (several angles);
    flow: ``concentration_per_ml``, ``size_median_nm`` (number-weighted, calibrated) and ``markers``
    {name: positive fraction 0..1}. Every method adds ``warnings`` (how many the result carries).
    """
    result = result_of(run)
    if result is None:
        return {}
    method = method_of(run)
    warnings = result.get("warnings")
    count = len(warnings) if isinstance(warnings, list) else 0
    if method == "nta":
        return {"size_mean_nm": number(field(result, "size_nm.mean")),
                "size_mode_nm": number(field(result, "size_nm.mode")),
                "size_d50_nm": number(field(result, "size_nm.d50")),
                "concentration_per_ml": number(result.get("concentration_per_ml")),
                "concentration_se_per_ml": number(field(result, "standard_error.concentration_per_ml")),
                "warnings": count}
    if method == "dls":
        sized = first_sized_measurement(result)
        measurement = sized[1] if sized else {}
        count += sum(len(m.get("warnings") or []) for _, m in dls_measurements(result))
        return {"z_average_nm": number(measurement.get("z_average_nm")), "pdi": number(measurement.get("pdi")),
                "angle_deg": number(measurement.get("angle_deg")),
                "extrapolated_diameter_nm": number(field(result, "extrapolated.diameter_nm")),
                "warnings": count}
    if method == "flow":
        markers = result.get("markers") if isinstance(result.get("markers"), dict) else {}
        return {"concentration_per_ml": number(result.get("concentration_per_ml")),
                "size_median_nm": number(field(result, "size_nm.median")),
                "markers": {str(name): number(value) for name, value in markers.items()},
                "warnings": count}
    return {"warnings": count}
