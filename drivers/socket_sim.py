"""The base of simulated VISA instruments: SCPI lines on a loopback TCP socket.

A subclass implements :meth:`SocketSimulator.reply` (one program message in,
its responses out, called with ``_lock`` held); this class listens on
127.0.0.1 at a free port, whose VISA resource string
(``TCPIP0::127.0.0.1::<port>::SOCKET``) any VISA program opens, serves one
session at a time from a daemon thread, keeps the transcript of exchanged
lines and injects the faults of a real connection (``silent``, :meth:`unplug`).
A response is a text line, or bytes (an IEEE 488.2 definite-length block),
shown in the transcript as its header and length: ``#9000250000<250000 bytes>``.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import threading


class SocketSimulator:
    """Serve :meth:`reply` on a loopback socket; ``with Sim() as sim: Driver(sim.address)``."""

    name = "instrument"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._transcript: list[tuple[str, str]] = []
        #: Fault injection: commands are read and none is answered.
        self.silent = False
        self._server: socket.socket | None = None
        self._client: socket.socket | None = None
        self._wake: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    def reply(self, line: str) -> list[str | bytes]:
        """The responses to one program message (called with the lock held)."""
        raise NotImplementedError

    # -- public API ----------------------------------------------------------
    def start(self):
        """Listen on 127.0.0.1 (a free port) and serve from a daemon thread."""
        if self._thread is None:
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            self._server, self._port = server, server.getsockname()[1]
            self._wake = os.pipe()
            self._thread = threading.Thread(target=self._serve, name=f"{self.name}-sim", daemon=True)
            self._thread.start()
        return self

    @property
    def address(self) -> str:
        """The VISA resource string: ``TCPIP0::127.0.0.1::<port>::SOCKET``."""
        return f"TCPIP0::127.0.0.1::{self._port}::SOCKET"

    @property
    def port(self) -> int:
        return self._port

    def close(self) -> None:
        """Stop serving and close the sockets (a client sees the connection end). Idempotent."""
        self._stop(reset=False)

    def unplug(self) -> None:
        """The cable is pulled: the connection is reset and the port closed."""
        self._stop(reset=True)

    def __enter__(self):
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

    # -- serving -----------------------------------------------------------------
    def _serve(self) -> None:
        server, wake = self._server, self._wake
        assert server is not None and wake is not None
        while True:
            try:
                ready, _, _ = select.select([server, wake[0]], [], [])
                if wake[0] in ready:
                    return
                client, _ = server.accept()
            except (OSError, ValueError):
                return
            with self._lock:
                self._client = client
            try:
                if not self._serve_client(client):
                    return
            finally:
                with self._lock:
                    if self._client is client:
                        self._client = None
                try:
                    client.close()
                except OSError:
                    pass

    def _serve_client(self, client: socket.socket) -> bool:
        """Answer one VISA session until it disconnects (True) or serving stops (False)."""
        assert self._wake is not None
        wake = self._wake[0]
        pending = b""
        while True:
            try:
                ready, _, _ = select.select([client, wake], [], [])
                if wake in ready:
                    return False
                chunk = client.recv(4096)
                # Acknowledge at once: a client that writes a command and then a
                # query (Nagle on, as pyvisa-py's sockets) would otherwise wait for
                # the delayed ACK, ~40 ms per set command.
                if hasattr(socket, "TCP_QUICKACK"):
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except (OSError, ValueError):
                return True
            if not chunk:
                return True
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                line = raw.decode("ascii", errors="replace").strip()
                if not line:
                    continue
                with self._lock:
                    self._transcript.append(("rx", line))
                    if self.silent:
                        continue
                    replies = self.reply(line)
                    self._transcript.extend(("tx", _shown(reply)) for reply in replies)
                if replies:
                    try:
                        client.sendall(b"".join(_encoded(r) + b"\n" for r in replies))
                    except OSError:
                        return True

    def _stop(self, *, reset: bool) -> None:
        if self._thread is None:
            return
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                if reset:  # close with RST: the peer's next read or write fails at once
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
            except OSError:
                pass
        assert self._wake is not None and self._server is not None
        os.write(self._wake[1], b"x")
        self._thread.join(timeout=2.0)
        self._thread = None
        self._server.close()
        for fd in self._wake:
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake = None


def _encoded(reply: str | bytes) -> bytes:
    return reply.encode("ascii", "replace") if isinstance(reply, str) else reply


def _shown(reply: str | bytes) -> str:
    """A text reply as it is; a binary block as its header and length."""
    if isinstance(reply, str):
        return reply
    header = 2 + int(reply[1:2])
    return f"{reply[:header].decode()}<{len(reply) - header} bytes>"


# -- SCPI parameters, as every simulated SCPI instrument parses them ------------------------
class ScpiError(Exception):
    """A command the instrument refuses: its SCPI error code goes to the error queue."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def one_parameter(params: list[str]) -> str:
    """The single parameter of a command: -109 "Missing parameter", -108 "Parameter not allowed"."""
    if not params or not params[0]:
        raise ScpiError(-109)
    if len(params) > 1:
        raise ScpiError(-108)
    return params[0]


def scpi_boolean(text: str) -> bool:
    """ON/1 or OFF/0; anything else -224 "Illegal parameter value"."""
    word = text.upper()
    if word in ("ON", "1"):
        return True
    if word in ("OFF", "0"):
        return False
    raise ScpiError(-224)
