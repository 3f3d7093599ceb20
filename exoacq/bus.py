"""The ZeroMQ bus: documents, frames and control requests (docs/protocol.md).

Everything on a socket is JSON (UTF-8) or a raw pixel buffer; nothing is
pickled. Documents are plain dicts with a ``schema`` ("name/version"), the
``run_id`` they belong to (or null) and a UTC ``time``.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

import numpy as np
import zmq

from exoacq.errors import ExoacqError

#: Versions of the core's document schemas (docs/schemas/*.json); methods declare their own topics.
#: /2: run.state names the instrument and the SOP step (docs/protocol.md, Versions).
SCHEMAS = {
    "run.state": "exoacq.run.state/2",
}
#: The shape of the ``status`` reply; /2: methods and instruments with their devices.
STATUS_SCHEMA = "exoacq.status/2"

#: Frame topic on the live-frames PUB and on the tracker socket.
FRAME_TOPIC = b"frame"


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    """Numpy scalars/arrays to Python; NaN and inf to None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(obj: Any) -> bytes:
    return json.dumps(_plain(obj), allow_nan=False, separators=(",", ":")).encode("utf-8")


def loads(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def make_document(topic: str, run_id: str | None, *, schema: str | None = None, **payload: Any) -> dict[str, Any]:
    """A published document: schema, run_id and time first, then the payload.

    ``schema`` is the topic's schema id; the core's topics have theirs in SCHEMAS."""
    return {"schema": schema or SCHEMAS[topic], "run_id": run_id, "time": utc_now_iso(), **payload}


def publish(socket: zmq.Socket, topic: str, document: dict[str, Any]) -> None:
    socket.send_multipart([topic.encode("ascii"), dumps(document)])


def send_frame(socket: zmq.Socket, header: dict[str, Any], frame: np.ndarray, flags: int = 0) -> None:
    """Topic, JSON header, then the pixel buffer without a copy (zmq keeps a
    reference to ``frame`` until it is sent, so the caller must not reuse it)."""
    header = {**header, "shape": list(frame.shape), "dtype": frame.dtype.str}
    socket.send_multipart([FRAME_TOPIC, dumps(header), frame], flags=flags, copy=False)


def decode_frame(parts: list) -> tuple[dict[str, Any], np.ndarray]:
    """Inverse of :func:`send_frame` for a received multipart message."""
    header = loads(bytes(parts[1]))
    frame = np.frombuffer(parts[2].buffer if hasattr(parts[2], "buffer") else parts[2], dtype=np.dtype(header["dtype"]))
    return header, frame.reshape(header["shape"])


def connect(socket: zmq.Socket, address: str, what: str = "endpoint") -> None:
    """``socket.connect(address)``; an address ZeroMQ cannot parse is a one-line ExoacqError
    (the socket is closed), not a ZMQError traceback."""
    try:
        socket.connect(address)
    except zmq.ZMQError:
        socket.close(linger=0)
        raise ExoacqError(f"{what} {address!r}: not a ZeroMQ endpoint (e.g. tcp://127.0.0.1:5555, "
                          "ipc:///run/exoacq/control)", code="usage") from None


class ControlClient:
    """Request/reply to the daemon's control ROUTER over a DEALER socket."""

    def __init__(self, address: str, timeout_s: float = 5.0, context: zmq.Context | None = None):
        self.address = address
        self.timeout_s = timeout_s
        self._ctx = context or zmq.Context.instance()
        self._socket = self._ctx.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        connect(self._socket, address, "control endpoint")

    def request(self, command: str, timeout_s: float | None = None, **params: Any) -> Any:
        """Send one request and return its ``result``; raise ExoacqError on an error reply."""
        self._socket.send_multipart([b"", dumps({"command": command, **params})])
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if not self._socket.poll(int(timeout * 1000)):
            raise ExoacqError(
                f"no daemon answered at {self.address} within {timeout:g} s (is `exoacq daemon` running?)",
                code="no_daemon")
        reply = loads(self._socket.recv_multipart()[-1])
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise ExoacqError(error.get("message", "the daemon refused the request"), code=error.get("code", "error"))
        return reply.get("result")

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscribe(address: str, topics: list[str] | None = None, context: zmq.Context | None = None) -> zmq.Socket:
    """A SUB socket on the results PUB for the given topics (all when None)."""
    socket = (context or zmq.Context.instance()).socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    connect(socket, address, "results endpoint")
    for topic in topics or [""]:
        socket.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
    return socket

