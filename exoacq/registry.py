"""Plugins: device drivers and measurement methods, found through entry points.

A driver package declares, in its ``pyproject.toml``::

    [project.entry-points."exoacq.drivers"]
    cobolt = "exoacq.drivers.cobolt:DRIVER"

    [project.entry-points."exoacq.methods"]
    nta = "exoacq.nta.plugin:METHOD"

so a lab adds its own driver or method from a separate package, without
touching exoacq. A :class:`Driver` says what kind of device it makes, which
configuration keys it takes (a pydantic model, units in the key names), how
to open the real device, and how to start its simulated twin, which speaks
the manufacturer's protocol on a real transport (a pseudo-terminal, a VISA
socket) so that the *real* driver is what talks to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Protocol

from pydantic import BaseModel, ConfigDict

from exoacq.errors import ConfigError

DRIVER_GROUP = "exoacq.drivers"
METHOD_GROUP = "exoacq.methods"

#: Kinds of device (the Protocols of exoacq.devices) a driver can make.
KINDS = ("laser", "camera", "thermometer", "temperature-controller", "pump",
         "photon-counter", "correlator", "digitizer", "cytometer")


class DriverOptions(BaseModel):
    """Base of a driver's configuration keys (besides ``driver`` and ``simulated``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Simulator(Protocol):
    """A running simulated device: ``address`` is where a program connects (a
    device path for serial devices, a VISA resource string for VISA ones)."""

    name: str

    @property
    def address(self) -> str: ...

    def start(self) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Driver:
    """One device family's driver, as the daemon sees it.

    ``open(options, address, context)`` returns the device, not yet connected.
    ``address`` is where its simulated twin listens when the device is
    simulated, else None (the driver uses its own ``port``/``resource`` option).
    ``context`` holds what the instrument's other parts offer a simulation
    (``context["simulators"][role]``, and what the method put there, e.g. the
    simulated sample). ``simulator(options)`` makes the twin (not started);
    None for a device that is itself a simulation (a simulated camera).
    """

    name: str
    kind: str
    options: type[DriverOptions]
    open: Callable[[Any, str | None, dict[str, Any]], Any]
    simulator: Callable[[Any], Simulator] | None = None
    description: str = ""
    #: True when the driver has no real device behind it (it must be simulated).
    simulation_only: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"driver {self.name!r}: kind {self.kind!r} is not one of {KINDS}")


class Registry:
    """The drivers and methods installed, by name; each plugin is imported when first asked for
    (a command that needs no driver never imports one)."""

    def __init__(self, drivers: dict[str, Any] | None = None, methods: dict[str, Any] | None = None):
        self._points = {"driver": dict(drivers or {}), "method": dict(methods or {})}
        self._loaded: dict[tuple[str, str], Any] = {}
        #: Plugins that failed to load, by (kind, name), with the reason (reported when one is asked for).
        self.broken: dict[tuple[str, str], str] = {}

    @property
    def drivers(self) -> dict[str, Driver]:
        return self._all("driver")

    @property
    def methods(self) -> dict[str, Any]:
        return self._all("method")

    def driver(self, name: str) -> Driver:
        return self._get("driver", name)

    def method(self, name: str) -> Any:
        return self._get("method", name)

    def _load(self, what: str, name: str) -> Any:
        if (what, name) not in self._loaded and (what, name) not in self.broken:
            point = self._points[what][name]
            try:
                self._loaded[what, name] = point.load() if hasattr(point, "load") else point
            except Exception as exc:  # a broken plugin must not take the others down with it
                self.broken[what, name] = f"{point.value}: {type(exc).__name__}: {exc}"
        return self._loaded.get((what, name))

    def _all(self, what: str) -> dict[str, Any]:
        loaded = {name: self._load(what, name) for name in self._points[what]}
        return {name: plugin for name, plugin in loaded.items() if plugin is not None}

    def _get(self, what: str, name: str) -> Any:
        if name in self._points[what] and (plugin := self._load(what, name)) is not None:
            return plugin
        if (what, name) in self.broken:
            raise ConfigError(f"{what} {name!r} is installed but cannot be loaded: {self.broken[what, name]}",
                              code=f"unknown_{what}")
        raise ConfigError(f"unknown {what} {name!r}; installed: {', '.join(sorted(self._points[what]))}",
                          code=f"unknown_{what}")


def installed() -> Registry:
    """Everything installed, read from the entry points now (no global cache)."""
    return Registry(drivers={p.name: p for p in entry_points(group=DRIVER_GROUP)},
                    methods={p.name: p for p in entry_points(group=METHOD_GROUP)})
