"""What the instruments do, declared as Protocols.

A real driver and its simulated twin implement the same Protocol; the daemon
chooses one at connect time from the configuration (``simulated = true``) and
never asks which it got (the ophyd-async model). Methods are blocking and
return plain Python values in the units their names state.
"""
from __future__ import annotations

from dataclasses import dataclass
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

    def interlock_open(self) -> bool:
        """True while the safety interlock is open (emission impossible)."""


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


def ring_overrun(now_mono: float, next_ready_mono: float, interval_s: float, buffer_frames: int) -> int:
    """Frames a camera's ring of ``buffer_frames`` buffers has lost by ``now_mono`` when the next
    frame to take was ready at ``next_ready_mono`` and frames follow every ``interval_s``: those read
    out by now but not taken, beyond the newest ``buffer_frames`` (0 for a consumer on time)."""
    waiting = int((now_mono - next_ready_mono) // interval_s) + 1
    return max(0, waiting - buffer_frames)


@runtime_checkable
class Thermometer(Device, Protocol):
    def temperature_c(self) -> float:
        """Sample temperature in degrees Celsius."""


@runtime_checkable
class TemperatureController(Thermometer, Protocol):
    """A sample-stage temperature controller (TEC): a thermometer that also holds a set point."""

    def set_setpoint_c(self, setpoint_c: float) -> None:
        """Set the target temperature (validated against the controller's limits)."""

    def setpoint_c(self) -> float: ...

    def set_output(self, on: bool) -> None:
        """Switch the regulation (the TEC current) on or off."""

    def output(self) -> bool: ...


@runtime_checkable
class Pump(Device, Protocol):
    """A syringe pump moving sample through the flow cell. Volumes in uL, rates in uL/min."""

    def set_diameter_mm(self, diameter_mm: float) -> None:
        """Inner diameter of the syringe (the pump converts volumes to plunger travel)."""

    def set_rate_ul_min(self, rate_ul_min: float) -> None: ...

    def set_direction(self, infuse: bool) -> None:
        """Infuse (push sample through the cell) or withdraw."""

    def set_volume_ul(self, volume_ul: float | None) -> None:
        """Stop by itself after this volume; None (or 0): run until stopped."""

    def run(self) -> None: ...

    def stop(self) -> None: ...

    def running(self) -> bool: ...

    def dispensed_ul(self) -> float:
        """Volume moved since the counter was last cleared (infused minus withdrawn)."""


@dataclass(frozen=True)
class Setting:
    """A device setting an operator may change while previewing (``set``): the
    names of the device's getter and setter methods, the unit and the range.
    ``minimum`` and ``maximum`` may name a device attribute holding the limit (e.g. ``max_power_mw``)."""

    get: str
    set: str
    unit: str
    minimum: float | str
    maximum: float | str
    description: str = ""

    def low(self, device: Any) -> float:
        return float(getattr(device, self.minimum)) if isinstance(self.minimum, str) else float(self.minimum)

    def limit(self, device: Any) -> float:
        return float(getattr(device, self.maximum)) if isinstance(self.maximum, str) else float(self.maximum)


@runtime_checkable
class PhotonCounter(Device, Protocol):
    """A single-photon detector with a time tagger: photon arrival times, in ticks of
    ``resolution_s`` since ``start()``, ascending, delivered in chunks."""

    resolution_s: float
    #: Scattering angle and laser wavelength of the detector's optics.
    angle_deg: float
    wavelength_nm: float

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def read(self, timeout_s: float = 0.5) -> "np.ndarray":
        """The photons that arrived since the last read (int64 ticks, ascending); an empty
        array when none came within ``timeout_s``."""


@dataclass
class TraceBlock:
    """Detector traces a digitizer recorded: ``samples`` int16 [channel, sample], in ADC counts
    relative to the digitizer's reference level; volts = samples x volts_per_count + offset_v."""

    samples: np.ndarray
    volts_per_count: np.ndarray
    offset_v: np.ndarray
    #: Time of the first sample, seconds since ``start()``.
    start_s: float
    #: True when the block follows the previous one without a gap (a pulse may straddle the boundary).
    contiguous: bool


@runtime_checkable
class Digitizer(Device, Protocol):
    """Detector traces (a nano flow cytometer's scatter and fluorescence detectors), in blocks."""

    #: Names of the recorded channels, in the order of ``TraceBlock.samples`` ("SSC", "FL1", ...).
    channels: list[str]
    sample_rate_hz: float

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def read(self, timeout_s: float = 1.0) -> TraceBlock | None:
        """The next block of traces, or None when none was recorded within ``timeout_s``."""
