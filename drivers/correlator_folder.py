"""A hardware correlator through the files its software writes: a watched folder.

ALV (``.ASC``) and correlator.com (``.SIN``) correlators come with their own
acquisition software, which writes one file per measurement. This device
watches the folder the software writes to and hands over each new file once
it is complete (:class:`~exoacq.drivers.watched_folder.WatchedFolder`); the DLS
method reads, analyses and publishes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from exoacq.drivers.watched_folder import WatchedFolder
from exoacq.registry import Driver, DriverOptions


class CorrelatorFolder(WatchedFolder):
    """New, complete correlator files in a folder, oldest first (implements the ``correlator`` kind)."""

    def __init__(self, path: str | Path, *, patterns: tuple[str, ...] = ("*.ASC", "*.asc", "*.SIN", "*.sin"),
                 settle_s: float = 1.0, process_existing: bool = False, instrument: str = ""):
        super().__init__(path, patterns=patterns, what="correlator", settle_s=settle_s,
                         process_existing=process_existing, instrument=instrument)


class CorrelatorFolderOptions(DriverOptions):
    #: The folder the correlator's software writes its files to.
    path: str
    #: Which files are measurements.
    patterns: list[str] = ["*.ASC", "*.asc", "*.SIN", "*.sin"]
    #: A file is complete once its size has not changed for this long.
    settle_s: float = Field(1.0, ge=0.0, le=600.0)
    #: Also analyse the files already there at start.
    process_existing: bool = False
    #: The correlator's make and model, for the records.
    instrument: str = "ALV-7004"


def _open(options: CorrelatorFolderOptions, address: str | None, context: dict[str, Any]) -> CorrelatorFolder:
    return CorrelatorFolder(options.path, patterns=tuple(options.patterns), settle_s=options.settle_s,
                            process_existing=options.process_existing, instrument=options.instrument)


DRIVER = Driver(name="correlator-folder", kind="correlator", options=CorrelatorFolderOptions, open=_open,
                description="a hardware correlator's files (ALV .ASC, correlator.com .SIN) in a watched folder")
