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

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Protocol

from pydantic import BaseModel, ConfigDict

from exoacq.errors import ConfigError

DRIVER_GROUP = "exoacq.drivers"
METHOD_GROUP = "exoacq.methods"

#: Kinds of device (the Protocols of exoacq.devices) a driver can make.
KINDS = ("laser", "camera", "thermometer", "temperature-controller", "pump")


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


@dataclass
class Registry:
    """The drivers and methods installed, by name."""

    drivers: dict[str, Driver] = field(default_factory=dict)
    methods: dict[str, Any] = field(default_factory=dict)
    #: Plugins that failed to load, by name, with the reason (reported when one is asked for).
    broken: dict[tuple[str, str], str] = field(default_factory=dict)

    def driver(self, name: str) -> Driver:
        return self._get(self.drivers, "driver", name)

    def method(self, name: str) -> Any:
        return self._get(self.methods, "method", name)

    def _get(self, table: dict[str, Any], what: str, name: str) -> Any:
        if name in table:
            return table[name]
        if (what, name) in self.broken:
            raise ConfigError(f"{what} {name!r} is installed but cannot be loaded: {self.broken[what, name]}",
                              code=f"unknown_{what}")
        raise ConfigError(f"unknown {what} {name!r}; installed: {', '.join(sorted(table))}", code=f"unknown_{what}")


def _load(group: str, broken: dict, what: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for point in entry_points(group=group):
        try:
            found[point.name] = point.load()
        except Exception as exc:  # a broken plugin must not take the others down with it
            broken[what, point.name] = f"{point.value}: {type(exc).__name__}: {exc}"
    return found


def installed() -> Registry:
    """Everything installed, read from the entry points now (no global cache)."""
    broken: dict = {}
    return Registry(drivers=_load(DRIVER_GROUP, broken, "driver"), methods=_load(METHOD_GROUP, broken, "method"),
                    broken=broken)
