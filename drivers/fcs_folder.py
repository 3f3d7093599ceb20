"""A commercial cytometer through its FCS exports: a watched folder.

CytoFLEX, Attune NxT, NanoFCM and other cytometers are driven by their own
software, which exports one FCS file per sample. This device watches the
export folder and hands over each new file once it is complete
(:class:`~exoacq.drivers.watched_folder.WatchedFolder`); the flow method reads,
analyses and publishes it.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

from exoacq.drivers.watched_folder import WatchedFolder
from exoacq.registry import Driver, DriverOptions


class FCSFolderOptions(DriverOptions):
    #: The folder the cytometer's software exports its FCS files to.
    path: str
    #: Which files are measurements.
    patterns: list[str] = ["*.fcs", "*.FCS"]
    #: A file is complete once its size has not changed for this long.
    settle_s: float = Field(1.0, ge=0.0, le=600.0)
    #: Also analyse the files already there at start.
    process_existing: bool = False
    #: The cytometer's make and model, for the records.
    instrument: str = "cytometer"
    #: The sample flow rate the cytometer ran at, for concentrations of files without $VOL; None: unknown.
    flow_rate_ul_min: float | None = Field(None, gt=0.0, le=1000.0)


class FCSFolder(WatchedFolder):
    """New, complete FCS files in a folder, oldest first (implements the ``cytometer`` kind)."""

    def __init__(self, options: FCSFolderOptions):
        super().__init__(options.path, patterns=tuple(options.patterns), what="cytometer",
                         settle_s=options.settle_s, process_existing=options.process_existing,
                         instrument=options.instrument)
        self.flow_rate_ul_min = options.flow_rate_ul_min

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "flow_rate_ul_min": self.flow_rate_ul_min}


def _open(options: FCSFolderOptions, address: str | None, context: dict[str, Any]) -> FCSFolder:
    return FCSFolder(options)


DRIVER = Driver(name="fcs-folder", kind="cytometer", options=FCSFolderOptions, open=_open,
                description="a commercial cytometer's FCS exports (CytoFLEX, Attune, NanoFCM) in a watched folder")
