"""What the command-table drivers share: one declaration per command, and checked values.

A driver's ``COMMANDS`` table reads like the manual's command list: each
entry names the setting command (``{}`` for its argument), the query, the
unit on the wire and the literal arguments allowed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from exoacq.errors import DeviceError


@dataclass(frozen=True)
class Command:
    """One setting/reading: ``set`` has ``{}`` for its argument, ``get`` is the query,
    ``unit`` the unit on the wire, ``values`` the literal arguments allowed (empty: numeric
    within ``limits``)."""

    set: str | None
    get: str | None
    unit: str = ""
    values: tuple[str, ...] = ()
    limits: str = ""


def checked(value: object, low: float, high: float, *, what: str, unit: str, where: str) -> float:
    """``value`` as a float if ``low <= value <= high``; else DeviceError naming it, the range and the port."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not low <= number <= high:
        shown = f"{number:g}" if isinstance(value, int | float) else repr(value)
        raise DeviceError(f"{what} {shown} {unit} is out of range {low:g}..{high:g} {unit} {where}")
    return number


def watts(power_mw: float) -> str:
    """Power in W as lasers take it: plain decimal, 1 uW resolution."""
    return f"{power_mw / 1000.0:.6f}".rstrip("0").rstrip(".") or "0"
