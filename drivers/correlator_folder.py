"""A hardware correlator through the files its software writes: a watched folder.

ALV (``.ASC``) and correlator.com (``.SIN``) correlators come with their own
acquisition software, which writes one file per measurement. This device
watches the folder the software writes to and hands over each new file once
it is complete (its size unchanged for ``settle_s``); the DLS method reads,
analyses and publishes it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field

from exoacq.errors import DeviceError
from exoacq.registry import Driver, DriverOptions


class CorrelatorFolder:
    """New, complete correlator files in a folder, oldest first (implements the ``correlator`` kind)."""

    def __init__(self, path: str | Path, *, patterns: tuple[str, ...] = ("*.ASC", "*.asc", "*.SIN", "*.sin"),
                 settle_s: float = 1.0, process_existing: bool = False, instrument: str = ""):
        self.path = Path(path)
        self.patterns = tuple(patterns)
        self.settle_s = float(settle_s)
        self.process_existing = process_existing
        self.instrument = instrument
        self._seen: set[Path] = set()
        self._sizes: dict[Path, tuple[int, float]] = {}
        self._connected = False

    def connect(self) -> None:
        if not self.path.is_dir():
            raise DeviceError(f"correlator: folder {self.path} does not exist (or is not a folder)")
        if not self.process_existing:
            self._seen = set(self._candidates())
        self._connected = True

    def close(self) -> None:
        self._connected = False

    def describe(self) -> dict[str, Any]:
        return {"model": f"{self.instrument or 'correlator'} files", "folder": str(self.path),
                "patterns": list(self.patterns), "settle_s": self.settle_s, "files_seen": len(self._seen)}

    def _candidates(self) -> list[Path]:
        found: set[Path] = set()
        for pattern in self.patterns:
            found.update(p for p in self.path.glob(pattern) if p.is_file())
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def poll(self) -> list[Path]:
        """Files that appeared since the last poll and have not changed for ``settle_s``."""
        if not self._connected:
            raise DeviceError(f"correlator: not watching {self.path} (call connect() first)")
        try:
            candidates = self._candidates()
        except OSError as exc:
            raise DeviceError(f"correlator: cannot read folder {self.path} ({exc.strerror})") from None
        now, ready = time.monotonic(), []
        for path in candidates:
            if path in self._seen:
                continue
            try:
                size = path.stat().st_size
            except OSError:
                continue  # removed meanwhile
            last = self._sizes.get(path)
            if last is None or last[0] != size:
                self._sizes[path] = (size, now)
            elif now - last[1] >= self.settle_s:
                ready.append(path)
                self._seen.add(path)
                del self._sizes[path]
        return ready


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
