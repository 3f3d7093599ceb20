"""Connect an instrument's devices: real drivers, or the real drivers talking to simulated twins.

The choice is made here, once, at connect time; everything after sees only
the Protocols of :mod:`exoacq.devices`. A simulated laser is the real OBIS
(or Cobolt) driver on a real serial line, a pseudo-terminal served by the
laser's simulator; a simulated temperature controller is the real VISA
driver on a loopback socket. Devices connect in the order of the method's
roles, so that a simulation can see the parts it depends on (the simulated
camera sees the light the laser simulator emits).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from exoacq.config import InstrumentConfig
from exoacq.errors import ConfigError, DeviceError, ExoacqError

log = logging.getLogger("exoacq.instruments")

#: Reconnection attempts back off from the first to the last delay, doubling.
RECONNECT_FIRST_S = 1.0
RECONNECT_MAX_S = 30.0


class DeviceSlot:
    """One role of an instrument: its configuration, simulator, device and state."""

    def __init__(self, role: str, config: Any):
        self.role = role
        self.config = config
        self.driver = config.plugin
        self.simulator: Any = None
        self.device: Any = None
        #: "connected", "disconnected", "reconnecting"
        self.state = "disconnected"
        self.error: str | None = None
        self.next_attempt = 0.0
        self.backoff_s = RECONNECT_FIRST_S
        self.attempts = 0

    @property
    def kind(self) -> str:
        return self.driver.kind

    def open(self, context: dict[str, Any]) -> None:
        """Start the simulator (if simulated and not running) and connect the driver."""
        address = None
        if self.config.simulated and self.driver.simulator is not None:
            if self.simulator is None:  # started once: an unplugged simulator stays unplugged until replugged
                self.simulator = self.driver.simulator(self.config.options)
                self.simulator.start()
            address = self.simulator.address
            context.setdefault("simulators", {})[self.role] = self.simulator
        try:
            device = self.driver.open(self.config.options, address, context)
            device.connect()
        except ValueError as exc:
            raise ConfigError(f"{self.role}: {exc}") from None
        self.device = device
        self.state, self.error, self.attempts, self.backoff_s = "connected", None, 0, RECONNECT_FIRST_S
        context.setdefault("devices", {})[self.role] = device

    def close_device(self) -> None:
        if self.device is not None:
            try:
                self.device.close()
            except Exception:  # closing must never stop the others from closing
                log.exception("closing %s", self.role)
            self.device = None

    def close(self) -> None:
        self.close_device()
        if self.simulator is not None:
            try:
                self.simulator.close()
            except Exception:
                log.exception("stopping the %s simulator", self.role)
        self.state = "disconnected"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"driver": self.driver.name, "kind": self.kind, "simulated": self.config.simulated,
                               "state": self.state}
        if self.simulator is not None:
            out["address"] = self.simulator.address
        if self.error:
            out["error"] = self.error
        if self.state == "reconnecting":
            out["next_attempt_s"] = max(0.0, round(self.next_attempt - time.monotonic(), 1))
            out["attempts"] = self.attempts
        return out


class Instrument:
    """A named group of devices serving one method. Its devices are used by one thread at a
    time (the instrument's acquisition thread), except ``describe`` for ``status``."""

    def __init__(self, name: str, config: InstrumentConfig):
        self.name = name
        self.config = config
        self.method = config.plugin
        self.slots = {role: DeviceSlot(role, device) for role, device in config.devices.items()}
        #: What the simulated devices share (e.g. the simulated sample), and the simulators by role.
        self.context: dict[str, Any] = {}
        self.lock = threading.RLock()

    @property
    def simulated(self) -> bool:
        return self.config.simulated

    @property
    def devices(self) -> dict[str, Any]:
        return {role: slot.device for role, slot in self.slots.items() if slot.device is not None}

    def device(self, role: str) -> Any:
        slot = self.slots.get(role)
        if slot is None or slot.device is None:
            reason = "not configured" if slot is None else (slot.error or slot.state)
            raise DeviceError(f"{self.name}: no {role} available ({reason})")
        return slot.device

    def by_kind(self) -> dict[str, Any]:
        """Connected devices by kind (a temperature controller is also a thermometer)."""
        out: dict[str, Any] = {}
        for slot in self.slots.values():
            if slot.device is not None:
                out.setdefault(slot.kind, slot.device)
                if slot.kind == "temperature-controller":
                    out.setdefault("thermometer", slot.device)
        return out

    def connect(self) -> None:
        """Connect every device in the method's role order; on failure close what was opened."""
        if self.simulated:
            self.context.update(self.method.simulation_context(self.config))
        order = [r for r in self.method.roles if r in self.slots]
        try:
            for role in order:
                self.slots[role].open(self.context)
        except BaseException:
            self.close()
            raise
        self.method.check_instrument(self)

    def close(self) -> None:
        """Lasers off first, then everything else in reverse order; never raises."""
        slots = list(self.slots.values())
        for slot in sorted(reversed(slots), key=lambda s: s.kind != "laser"):
            slot.close()

    def healthy(self) -> list[str]:
        """Check every connected device answers; mark the ones that do not for reconnection."""
        lost = []
        for slot in self.slots.values():
            if slot.state != "connected":
                continue
            try:
                slot.device.describe()
            except ExoacqError as exc:
                self.lose(slot.role, str(exc))
                lost.append(slot.role)
        return lost

    def lose(self, role: str, reason: str) -> None:
        slot = self.slots[role]
        log.error("%s: %s lost: %s; reconnecting with backoff", self.name, role, reason)
        slot.close_device()
        slot.state, slot.error = "reconnecting", reason
        slot.next_attempt = time.monotonic() + slot.backoff_s

    def reconnect_due(self) -> None:
        """One reconnection attempt for each lost device whose backoff has passed."""
        now = time.monotonic()
        for slot in self.slots.values():
            if slot.state != "reconnecting" or now < slot.next_attempt:
                continue
            slot.attempts += 1
            try:
                slot.open(self.context)
                log.info("%s: %s reconnected after %d attempt(s)", self.name, slot.role, slot.attempts)
            except ExoacqError as exc:
                slot.error = str(exc)
                slot.backoff_s = min(slot.backoff_s * 2, RECONNECT_MAX_S)
                slot.next_attempt = now + slot.backoff_s

    @property
    def all_connected(self) -> bool:
        return all(s.state == "connected" for s in self.slots.values())

    def describe(self, details: bool = True) -> dict[str, Any]:
        """Per device: driver, state and, when connected, its identity and settings (units in keys)."""
        out = {}
        for role, slot in self.slots.items():
            entry = slot.describe()
            if details and slot.device is not None:
                try:
                    entry["settings"] = slot.device.describe()
                    if slot.kind == "laser":
                        entry["interlock"] = "open" if slot.device.interlock_open() else "closed"
                except ExoacqError as exc:
                    entry["error"] = str(exc)
                    if slot.kind == "laser":
                        entry["interlock"] = "unknown"
            out[role] = entry
        return out

    def settings_of(self, role: str) -> dict[str, Any]:
        """The operator-settable settings of a device: value, unit and range."""
        device = self.device(role)
        out = {}
        for name, setting in getattr(device, "settings", {}).items():
            try:
                value = getattr(device, setting.get)()
            except ExoacqError as exc:
                value = f"unreadable: {exc}"
            out[name] = {"value": value, "unit": setting.unit, "minimum": setting.low(device),
                         "maximum": setting.limit(device), "description": setting.description}
        return out
