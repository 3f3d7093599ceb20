"""Connect the configured instruments: real drivers or their simulated twins.

The choice is made here, once, at connect time; everything after sees only
the Protocols of :mod:`exoacq.devices`. A simulated laser is the real OBIS
driver talking over a real serial line (a pseudo-terminal) to the OBIS
simulator; the simulated camera sees exactly the light that simulator emits.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from exoacq.config import Config
from exoacq.devices import Camera, Laser, Thermometer
from exoacq.errors import ConfigError, DeviceError


@dataclass
class Instruments:
    laser: Laser
    camera: Camera
    thermometer: Thermometer
    simulated: bool
    #: The simulated hardware behind simulated instruments, by name (for tests and benchmarks).
    simulators: dict[str, Any] = field(default_factory=dict)
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("laser", "camera", "thermometer"):
            try:
                out[name] = getattr(self, name).describe()
            except DeviceError as exc:
                out[name] = {"error": str(exc)}
        return out

    def close(self) -> None:
        """Laser off first, then everything else; never raises."""
        self._stack.close()


def connect_instruments(config: Config) -> Instruments:
    from exoacq.drivers.obis import ObisLaser
    from exoacq.drivers.obis_sim import ObisSimulator
    from exoacq.drivers.simulated_nta import SampleComponent, make_simulated_nta

    cfg = config.instruments
    if not cfg.camera.simulated:
        raise ConfigError(f"instruments.camera.driver = {cfg.camera.driver!r} has no real-hardware backend yet; "
                          "set instruments.camera.simulated = true")
    if not cfg.thermometer.simulated:
        raise ConfigError(f"instruments.thermometer.driver = {cfg.thermometer.driver!r} has no real-hardware "
                          "backend yet; set instruments.thermometer.simulated = true")

    stack = ExitStack()
    try:
        port = cfg.laser.port
        simulators: dict[str, Any] = {}
        if cfg.laser.simulated:
            simulator = ObisSimulator().start()
            stack.callback(simulator.close)
            port = simulator.port
            simulators["laser"] = simulator
        laser = ObisLaser(port, timeout_s=cfg.laser.timeout_s, power_mw=cfg.laser.power_mw)
        laser.connect()
        stack.callback(laser.close)  # LIFO: the laser goes off before the simulator stops
        if not cfg.laser.simulated:
            raise ConfigError("instruments.camera.simulated = true needs instruments.laser.simulated = true "
                              "(the simulated camera sees the simulated laser's light)")

        sim = config.simulation
        camera, thermometer, sample = make_simulated_nta(
            [SampleComponent(**c.model_dump()) for c in sim.components],
            sim.concentration_per_ml,
            temperature_c=sim.temperature_c,
            drift_um_s=tuple(sim.drift_um_s),
            illumination_mw=lambda: simulator.emitted_power_mw,
            seed=sim.seed,
            width=cfg.camera.width, height=cfg.camera.height,
            frame_rate_hz=cfg.camera.frame_rate_hz, exposure_ms=cfg.camera.exposure_ms,
            bit_depth=cfg.camera.bit_depth, pixel_size_um=cfg.camera.pixel_size_um,
        )
        camera.connect()
        stack.callback(camera.close)
        thermometer.connect()
        stack.callback(thermometer.close)
        simulators["sample"] = sample
    except ValueError as exc:
        stack.close()
        raise ConfigError(f"simulated instrument: {exc}") from None
    except BaseException:
        stack.close()
        raise
    return Instruments(laser, camera, thermometer, simulated=True, simulators=simulators, _stack=stack)
