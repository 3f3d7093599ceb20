"""A stored run's folder, read from the control socket: the ``run_files`` and ``run_file`` commands.

Clients on other hosts (the web console) get a run's files (CSV, reports, tracks,
videos) through the daemon, in chunks, without a file share. Only regular files
inside the run's folder are served: a path is relative (POSIX), has no ``..``,
and resolves (symlinks followed) inside the folder; anything else is refused
(``bad_request``), a missing file is ``unknown_file``.
"""
from __future__ import annotations

import base64
import os
import stat
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from exoacq.errors import ExoacqError, ProtocolError

#: Largest chunk ``run_file`` returns (bytes, before base64).
MAX_CHUNK_BYTES = 1024 * 1024


def _utc_iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def list_files(folder: Path) -> list[dict[str, Any]]:
    """Every regular file under ``folder`` (symbolic links are not followed nor listed), sorted by path:
    ``path`` (relative, POSIX), ``bytes`` and ``modified`` (UTC ISO 8601)."""
    files = []
    for directory, _, names in os.walk(folder, followlinks=False):
        for name in names:
            path = Path(directory) / name
            try:
                info = path.lstat()
            except OSError:  # removed meanwhile
                continue
            if stat.S_ISREG(info.st_mode):
                files.append({"path": path.relative_to(folder).as_posix(), "bytes": info.st_size,
                              "modified": _utc_iso(info.st_mtime)})
    return sorted(files, key=lambda f: f["path"])


def resolve(folder: Path, path: str) -> Path:
    """``path`` (relative to ``folder``) as a real path inside it; ProtocolError when it could leave it."""
    if not path or "\x00" in path or "\\" in path:
        raise ProtocolError(f"path = {path[:200]!r}: a file of the run's folder, relative, with '/' between parts")
    parts = PurePosixPath(path)
    if parts.is_absolute() or (len(path) > 1 and path[1] == ":"):
        raise ProtocolError(f"path = {path[:200]!r}: must be relative to the run's folder, not absolute")
    if ".." in parts.parts:
        raise ProtocolError(f"path = {path[:200]!r}: '..' is not allowed (files inside the run's folder only)")
    root = folder.resolve()
    real = (root / parts).resolve()
    if real != root and root not in real.parents:
        raise ProtocolError(f"path = {path[:200]!r}: leads outside the run's folder (a symbolic link)")
    return real


def read_chunk(folder: Path, path: str, offset: int = 0, length: int = MAX_CHUNK_BYTES) -> dict[str, Any]:
    """``length`` bytes of a regular file of the run's folder from ``offset``: ``path``, ``bytes`` (the file's
    size), ``offset``, ``data`` (base64) and ``eof`` (the chunk reaches the end of the file)."""
    real = resolve(folder, path)
    try:
        info = real.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ExoacqError(f"the run has no file {path[:200]!r} (run_files lists them)", code="unknown_file") from None
    except OSError as exc:  # a name too long, a loop of links, no permission
        raise ProtocolError(f"path = {path[:200]!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ProtocolError(f"path = {path[:200]!r}: not a regular file")
    if offset > info.st_size:
        raise ProtocolError(f"offset = {offset}: beyond the end of {path[:200]!r} ({info.st_size} bytes)",
                            code="out_of_range")
    # O_NONBLOCK: a FIFO swapped in after the check must not hang the daemon; fstat checks what was opened
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:  # removed or replaced by a link since the check, no permission
        raise ProtocolError(f"path = {path[:200]!r}: cannot be read ({exc.strerror or exc})") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise ProtocolError(f"path = {path[:200]!r}: not a regular file")
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    return {"path": path, "bytes": opened.st_size, "offset": offset, "data": base64.b64encode(data).decode("ascii"),
            "eof": offset + len(data) >= opened.st_size}
