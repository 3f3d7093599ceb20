"""systemd's notify protocol (sd_notify(3)): one datagram to $NOTIFY_SOCKET.

A no-op when the daemon is not started by systemd with Type=notify.
"""
from __future__ import annotations

import os
import socket


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
            sock.sendall(message.encode("utf-8"))
        except OSError:
            return False
    return True
