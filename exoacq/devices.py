"""What the instruments do, declared as Protocols.

A real driver and its simulated twin implement the same Protocol; the daemon
chooses one at connect time from the configuration (``simulated = true``) and
never asks which it got (the ophyd-async model). Methods are blocking and
return plain Python values in the units their names state.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Device(Protocol):
    def connect(self) -> None:
        """Open the connection and check the device answers; raise DeviceError if not."""

    def close(self) -> None:
        """Leave the device safe (laser off, acquisition stopped) and release the port. Idempotent."""

    def describe(self) -> dict[str, Any]:
        """Identity and current settings, with units in the keys, for run records."""


@runtime_checkable
class Laser(Device, Protocol):
    @property
    def max_power_mw(self) -> float: ...

    def identify(self) -> str: ...

    def set_power_mw(self, power_mw: float) -> None:
        """Set the output power set point (validated against 0..max_power_mw)."""

    def power_mw(self) -> float:
        """Measured output power."""

    def set_emission(self, on: bool) -> None: ...

    def emission(self) -> bool: ...

    def faults(self) -> list[str]:
        """Active faults as readable strings; empty when healthy."""


@runtime_checkable
class Camera(Device, Protocol):
    """A camera is a small class that fills buffers it is handed (pymmcore-plus model).

    The acquisition engine owns the threads, the buffers and the transport.
    """

    width: int
    height: int
    dtype: np.dtype
    bit_depth: int
    frame_rate_hz: float
    exposure_ms: float
    pixel_size_um: float
    #: Frames lost inside the camera because fill() came too late (a ring buffer overrun); cumulative.
    frames_dropped: int

    def start(self) -> None:
        """Start the frame clock (a real camera starts streaming)."""

    def stop(self) -> None: ...

    def fill(self, buffer: np.ndarray) -> float:
        """Block until the next frame, write it into ``buffer`` (height x width,
        ``dtype``) and return its exposure start as a UNIX time in seconds."""


@runtime_checkable
class Thermometer(Device, Protocol):
    def temperature_c(self) -> float:
        """Sample temperature in degrees Celsius."""
