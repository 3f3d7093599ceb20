"""Files an instrument's own software writes to a folder, handed over once complete.

Hardware correlators (ALV, correlator.com) and commercial cytometers
(CytoFLEX, Attune, NanoFCM) come with acquisition software that writes one
file per measurement. A :class:`WatchedFolder` hands over each new file once it
is complete (its size unchanged for ``settle_s``), oldest first; the method
reads, analyses and publishes it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from exoacq.errors import DeviceError


class WatchedFolder:
    """New, complete files matching ``patterns`` in a folder; ``what`` names the device in errors."""

    def __init__(self, path: str | Path, *, patterns: tuple[str, ...], what: str, settle_s: float = 1.0,
                 process_existing: bool = False, instrument: str = ""):
        self.path = Path(path)
        self.patterns = tuple(patterns)
        self.what = what
        self.settle_s = float(settle_s)
        self.process_existing = process_existing
        self.instrument = instrument
        self._seen: set[Path] = set()
        self._sizes: dict[Path, tuple[int, float]] = {}
        self._connected = False

    def connect(self) -> None:
        if not self.path.is_dir():
            raise DeviceError(f"{self.what}: folder {self.path} does not exist (or is not a folder)")
        if not self.process_existing:
            self._seen = set(self._candidates())
        self._connected = True

    def close(self) -> None:
        self._connected = False

    def describe(self) -> dict[str, Any]:
        return {"model": f"{self.instrument or self.what} files", "folder": str(self.path),
                "patterns": list(self.patterns), "settle_s": self.settle_s, "files_seen": len(self._seen)}

    def _candidates(self) -> list[Path]:
        found: set[Path] = set()
        for pattern in self.patterns:
            found.update(p for p in self.path.glob(pattern) if p.is_file())
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def poll(self) -> list[Path]:
        """Files that appeared since the last poll and have not changed for ``settle_s``."""
        if not self._connected:
            raise DeviceError(f"{self.what}: not watching {self.path} (call connect() first)")
        try:
            candidates = self._candidates()
        except OSError as exc:
            raise DeviceError(f"{self.what}: cannot read folder {self.path} ({exc.strerror})") from None
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
