"""systemd's notify protocol (sd_notify(3)): one datagram to $NOTIFY_SOCKET.

A no-op when the daemon is not started by systemd with Type=notify.
:class:`Watchdog` is what the daemon's main loop calls on every pass: it pings
systemd's watchdog (``WATCHDOG=1``) and keeps the unit's ``STATUS=`` line up to
date. Because the ping comes from the main loop itself, a hung main loop stops
pinging and systemd restarts the daemon (``WatchdogSec=`` in the unit).
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any


def notify(message: str) -> bool:
    """Send e.g. ``READY=1``, ``STATUS=...`` or ``STOPPING=1``; True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            # never blocks: a listener that does not read costs a message, not the daemon's main loop
            sock.send(message.encode("utf-8"), socket.MSG_DONTWAIT)
        except OSError:
            return False
    return True


def watchdog_interval_s(environ: Mapping[str, str] = os.environ) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds (systemd's advice), or None when systemd does not watch
    this process: no WATCHDOG_USEC, or WATCHDOG_PID names another process (sd_watchdog_enabled(3))."""
    try:
        timeout_us = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    if timeout_us <= 0 or (pid and pid != str(os.getpid())):
        return None
    return timeout_us / 2e6


class Watchdog:
    """Watchdog pings and the ``STATUS=`` line, sent from the caller's loop (never from a thread).

    ``tick(status)`` is cheap when nothing is due: it sends ``WATCHDOG=1`` once half of the
    watchdog timeout has passed since the last ping, and ``STATUS=<status()>`` when that text
    changed (checked at most every ``status_every_s``)."""

    def __init__(self, environ: Mapping[str, str] = os.environ, status_every_s: float = 0.5):
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self.interval_s = watchdog_interval_s(environ) if self.enabled else None
        self.status_every_s = status_every_s
        self._last_ping = float("-inf")
        self._last_status_check = float("-inf")
        self.status: str | None = None

    def tick(self, status: Callable[[], str]) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.interval_s is not None and now - self._last_ping >= self.interval_s:
            notify("WATCHDOG=1")
            self._last_ping = now
        if now - self._last_status_check >= self.status_every_s:
            self._last_status_check = now
            text = status()
            if text != self.status:
                self.status = text
                notify(f"STATUS={text}")


def status_line(runners: Mapping[str, Any]) -> str:
    """What the daemon is doing, in one line for ``systemctl status``, e.g.
    ``serving 1 instrument: nta idle`` or ``serving 2 instruments: nta: run R acquiring capture 2/3; dls idle``."""
    parts = []
    for name, runner in runners.items():
        current = runner.current
        if current is not None:
            text = f"{name}: run {current.run.run_id} {current.state}"
            capture, captures = current.data.get("capture"), current.run.settings.get("captures")
            if capture and captures:
                text += f" capture {capture}/{captures}"
            if current.step:
                text += f" step {current.step.get('index')}/{current.step.get('of')} {current.step.get('step')}"
        elif runner.preview is not None:
            text = f"{name} preview"
        elif not runner.instrument.all_connected:
            waiting = [role for role, slot in runner.instrument.slots.items() if slot.state != "connected"]
            text = f"{name} degraded ({', '.join(waiting)} reconnecting)"
        else:
            text = f"{name} idle"
        parts.append(text)
    count = len(parts)
    return f"serving {count} instrument{'' if count == 1 else 's'}: " + "; ".join(parts)
