"""Errors that reach an operator as one line, never a traceback."""
from __future__ import annotations


class ExoacqError(Exception):
    """An error the operator can act on. ``code`` is stable for programs."""

    code = "error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(ExoacqError):
    code = "bad_config"


class DeviceError(ExoacqError):
    code = "device_error"


class ProtocolError(ExoacqError):
    code = "bad_request"
