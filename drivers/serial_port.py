"""Opening a serial port and naming what went wrong with it, for every serial driver.

A port is a device path (``/dev/ttyUSB0``, a pseudo-terminal) or a pyserial
URL (``socket://host:port``, ``loop://``).
"""
from __future__ import annotations

import os

import serial

try:  # pyserial's POSIX port flushes with termios, whose error is not an OSError
    from termios import error as _TermiosError
except ImportError:  # Windows
    class _TermiosError(Exception):  # type: ignore[no-redef]
        pass

#: What a serial exchange raises when the port fails (unplugged adapter, closed pty).
SERIAL_ERRORS = (serial.SerialException, OSError, _TermiosError)


def reason(exc: BaseException) -> str:
    """The operating-system reason of an I/O error, else its first line."""
    number = getattr(exc, "errno", None)
    if number is None and exc.args and isinstance(exc.args[0], int):  # termios.error
        number = exc.args[0]
    if isinstance(number, int) and number > 0:
        return os.strerror(number)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_port(port: str, *, baudrate: int, timeout_s: float, device: str) -> serial.SerialBase:
    """Open ``port``; DeviceError "DEVICE: cannot open serial port P (reason)" if it cannot be."""
    from exoacq.errors import DeviceError

    opener = serial.serial_for_url if "://" in port else serial.Serial
    try:
        return opener(port, baudrate=baudrate, timeout=timeout_s, write_timeout=timeout_s)
    except (*SERIAL_ERRORS, ValueError) as exc:
        raise DeviceError(f"{device}: cannot open serial port {port} ({reason(exc)})") from None


def close_quietly(port: serial.SerialBase | None) -> None:
    """Close a port that may already be gone (unplugged) or never opened."""
    try:
        port.close()  # type: ignore[union-attr]
    except Exception:
        pass
