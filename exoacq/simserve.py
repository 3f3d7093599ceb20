"""Simulators for other programs (``exoacq sim serve``) and the laser guard (``exoacq laser off``).

``sim serve`` starts simulated devices on their real transports (a
pseudo-terminal for a serial device, a loopback socket behind a VISA resource
string for a VISA one) and prints one JSON line per simulator, before
anything else: ``{"name", "driver", "kind", "port"}``. Any program can then talk to
them: a vendor tool, a pyserial script, pyvisa with the pure-Python backend.

``laser off`` is the separate guard that systemd runs after the daemon has
stopped, however it stopped (``ExecStopPost``): it opens every configured
real laser and switches its emission off.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from exoacq.errors import ExoacqError
from exoacq.registry import installed


def _simulators(config_path: Path | None) -> list[tuple[str, Any, Any, Any]]:
    """(name, driver, simulator, wire) for each simulator to serve; ``wire()``, called once the
    simulator has started, lets the driver connect it to its instrument's simulation (e.g. the
    simulated sample an oscilloscope's twin digitizes), as the daemon does when it opens the device."""
    registry = installed()
    if config_path is None:
        return [(name, driver, driver.simulator(driver.options()), None)
                for name, driver in sorted(registry.drivers.items()) if driver.simulator is not None]
    from exoacq.config import load_config

    config = load_config(config_path, registry=registry)
    out = []
    for instrument_name, instrument in config.instruments.items():
        context = dict(instrument.plugin.simulation_context(instrument))
        for role, device in instrument.devices.items():
            if device.plugin.simulator is not None:
                simulator = device.plugin.simulator(device.options)
                context.setdefault("simulators", {})[role] = simulator

                def wire(device=device, simulator=simulator, context=context) -> None:
                    device.plugin.open(device.options, simulator.address, context)  # not connected: wiring only

                out.append((f"{instrument_name}.{role}", device.plugin, simulator, wire))
    if not out:
        raise ExoacqError(f"{config_path}: no device in it has a simulator to serve", code="usage")
    return out


def serve(config_path: Path | None = None, stop: threading.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop``); exit status 0."""
    stop = stop or threading.Event()
    started = []
    if threading.current_thread() is threading.main_thread():
        # Before the first JSON line: a supervisor may stop us as soon as it has read them.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        for name, driver, simulator, wire in _simulators(config_path):
            simulator.start()
            started.append(simulator)
            if wire is not None:
                wire()
            print(json.dumps({"name": name, "driver": driver.name, "kind": driver.kind,
                              "port": simulator.address}), flush=True)
        print(f"exoacq: serving {len(started)} simulator(s); stop with Ctrl-C or SIGTERM", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        for simulator in reversed(started):
            simulator.close()
    return 0


def lasers_off(config_path: Path) -> int:
    """Switch off every real laser of the configuration; 0 if all answered, 1 otherwise."""
    from exoacq.config import load_config

    config = load_config(config_path)
    failed = 0
    count = 0
    for instrument_name, instrument in config.instruments.items():
        for role, device in instrument.devices.items():
            if device.plugin.kind != "laser" or device.simulated:
                continue  # a simulated laser dies with the daemon that served it
            count += 1
            where = f"{instrument_name}.{role}"
            laser = device.plugin.open(device.options, None, {})
            try:
                laser.connect()
                laser.set_emission(False)
                print(f"{where}: emission off")
            except ExoacqError as exc:
                failed += 1
                print(f"exoacq: error: {where}: could not switch the laser off: {exc}", file=sys.stderr)
            finally:
                laser.close()
    if count == 0:
        print("no real laser configured")
    return 1 if failed else 0
