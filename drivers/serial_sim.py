"""Serve an emulated serial instrument on a pseudo-terminal.

A simulator subclasses :class:`PtySimulator` and implements :meth:`reply`
(one received command in, the reply strings out); the base class owns the
pty, the serving thread and the transcript. Programs talk to
:attr:`PtySimulator.port` with pyserial exactly as to a USB serial adapter
(a pty ignores the baud rate).
"""
from __future__ import annotations

import os
import pty
import select
import threading
import tty


class PtySimulator:
    """Base of the serial-instrument simulators. ``with Sim() as sim: Driver(sim.port)``.

    Commands are split at CR or LF (empty ones ignored). ``transcript`` holds
    ("rx", command) and ("tx", reply) pairs without terminators. Fault
    injection for tests: ``silent = True`` reads commands and answers none;
    :meth:`unplug` removes the port as a pulled USB cable does.
    """

    #: Short name used in thread names and by ``exoacq sim serve``.
    name = "serial-device"
    #: Appended to every reply string when it is written.
    reply_terminator = "\r\n"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._transcript: list[tuple[str, str]] = []
        self._fds: list[int] = []
        self._port = ""
        self._thread: threading.Thread | None = None
        self.silent = False

    # -- what a subclass implements ------------------------------------------
    def reply(self, command: str) -> list[str]:
        """The replies to one received command (called with the lock held)."""
        raise NotImplementedError

    def encode(self, reply: str) -> bytes:
        """One reply as bytes on the wire (default: ASCII plus ``reply_terminator``)."""
        return (reply + self.reply_terminator).encode("ascii")

    # -- public API ----------------------------------------------------------
    def start(self) -> "PtySimulator":
        """Open the pty (raw mode) and serve it from a daemon thread."""
        if self._thread is None:
            master, slave = pty.openpty()
            tty.setraw(slave)
            wake_r, wake_w = os.pipe()
            self._fds = [master, slave, wake_r, wake_w]
            self._port = os.ttyname(slave)
            self._thread = threading.Thread(target=self._serve, name=f"{self.name}-sim", daemon=True)
            self._thread.start()
        return self

    @property
    def port(self) -> str:
        """Path of the pty slave, e.g. ``/dev/pts/3``: the driver's port."""
        return self._port

    @property
    def address(self) -> str:
        """Where a program connects (``exoacq sim serve`` prints it): the port."""
        return self._port

    def close(self) -> None:
        """Stop serving and close every fd. Idempotent."""
        if self._thread is not None:
            os.write(self._fds[3], b"x")
            self._thread.join(timeout=2.0)
            self._thread = None
            for fd in self._fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds = []

    def unplug(self) -> None:
        """The cable is pulled: the port stops existing for whoever has it open."""
        self.close()

    def __enter__(self) -> "PtySimulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def transcript(self) -> list[tuple[str, str]]:
        """Lines exchanged, without terminators: ("rx", received) / ("tx", sent)."""
        with self._lock:
            return list(self._transcript)

    def clear_transcript(self) -> None:
        with self._lock:
            self._transcript.clear()

    # -- serving ---------------------------------------------------------------
    def _serve(self) -> None:
        master, wake = self._fds[0], self._fds[2]
        pending = b""
        while True:
            ready, _, _ = select.select([master, wake], [], [])
            if wake in ready:
                return
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            *lines, pending = (pending + chunk.replace(b"\r", b"\n")).split(b"\n")
            for raw in lines:
                line = raw.decode("ascii", errors="replace").strip()
                if not line:
                    continue
                with self._lock:
                    self._transcript.append(("rx", line))
                    if self.silent:
                        continue
                    replies = self.reply(line)
                    self._transcript.extend(("tx", reply) for reply in replies)
                if replies:
                    try:
                        os.write(master, b"".join(self.encode(r) for r in replies))
                    except OSError:
                        return
