"""The ZeroMQ bus: documents, frames and control requests (docs/protocol.md).

Everything on a socket is JSON (UTF-8) or a raw pixel buffer; nothing is
pickled. Documents are plain dicts with a ``schema`` ("name/version"), the
``run_id`` they belong to (or null) and a UTC ``time``.
"""
from __future__ import annotations

import json
import logging
import math
import secrets
from datetime import datetime, timezone
from typing import Any

import numpy as np
import zmq

from exoacq.errors import ExoacqError

log = logging.getLogger("exoacq.bus")

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


#: Event-model documents whose schema forbids extra keys: sent as composed (an event has its own
#: ``seq_num`` per stream); counted all the same. start, descriptor and stop allow ``seq``/``daemon``.
UNSTAMPED_TOPICS = frozenset({"bluesky.event", "bluesky.event_page", "bluesky.resource", "bluesky.datum",
                              "bluesky.datum_page"})


#: What :class:`Publisher` adds to a document for its subscribers: not part of the result itself (a
#: stored result has neither; see :func:`without_transport`).
TRANSPORT_FIELDS = ("seq", "daemon")


def without_transport(document: dict[str, Any]) -> dict[str, Any]:
    """A received document as the daemon stores it: without ``seq`` and ``daemon``."""
    return {k: v for k, v in document.items() if k not in TRANSPORT_FIELDS}


class Publisher:
    """The daemon's results publisher: every document gets ``seq`` and ``daemon`` (docs/protocol.md).

    ``seq`` counts the documents of each topic since the daemon started (1, 2, ...), so a subscriber
    that sees a gap knows how many it missed (a PUB socket drops for a slow subscriber without
    telling anyone); ``daemon`` is a random id of this daemon start, so a client notices a restart.
    After sending, each ``observer(topic, document)`` is called (the durable run file, the metrics);
    an observer that raises is logged and does not stop publishing. Not thread-safe: one thread
    (the daemon's main thread) publishes."""

    def __init__(self, socket: zmq.Socket, observers: list | None = None, boot_id: str | None = None):
        self.socket = socket
        self.observers = list(observers or [])
        self.boot_id = boot_id or secrets.token_hex(8)
        #: Documents published per topic (the last ``seq`` of each topic).
        self.sequence: dict[str, int] = {}
        #: Documents that could not be sent (the socket refused them: e.g. closed); a PUB socket's own
        #: drops for slow subscribers are invisible here and show up as ``seq`` gaps at the subscriber.
        self.dropped: dict[str, int] = {}

    def publish(self, topic: str, document: dict[str, Any]) -> dict[str, Any]:
        """Send ``document`` (with ``seq`` and ``daemon`` added) on ``topic``; returns what was sent."""
        seq = self.sequence.get(topic, 0) + 1
        self.sequence[topic] = seq
        if topic not in UNSTAMPED_TOPICS:
            document = {**document, "seq": seq, "daemon": self.boot_id}
        try:
            self.socket.send_multipart([topic.encode("ascii"), dumps(document)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # EAGAIN cannot happen on PUB; anything else: counted, logged, not raised
            self.dropped[topic] = self.dropped.get(topic, 0) + 1
            log.warning("document %s #%d not published: %s", topic, seq, zmq.strerror(exc.errno))
        for observer in self.observers:
            try:
                observer(topic, document)
            except Exception:
                log.exception("a publish observer failed on %s #%d", topic, seq)
        return document


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


def connectable(address: str) -> str:
    """An address a local client can connect to: a wildcard bind (``*`` or 0.0.0.0, also as ZeroMQ's
    LAST_ENDPOINT reports it) becomes loopback."""
    return address.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")


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

    def __init__(self, address: str, timeout_s: float = 5.0, context: zmq.Context | None = None,
                 keys: Any = None):
        """``keys``: an :class:`exoacq.security.ClientKeys` for a daemon that uses CurveZMQ (or None)."""
        self.address = address
        self.timeout_s = timeout_s
        #: Also for the subscriptions made on this daemon's behalf (``subscribe(..., keys=client.keys)``).
        self.keys = keys
        from exoacq.audit import stated_operator
        #: The name this client states in its requests ($EXOACQ_OPERATOR, else the login name), for the
        #: audit trail as ``claimed_operator``; the daemon trusts only the identity of a client key.
        self.operator = stated_operator()
        self._ctx = context or zmq.Context.instance()
        self._socket = self._ctx.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.apply(self._socket)
        # failed security handshakes (a refused key, keys on one side only): said when no reply comes
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                                        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        try:
            connect(self._socket, address, "control endpoint")
        except ExoacqError:
            self._monitor.close(linger=0)
            raise

    def request(self, command: str, timeout_s: float | None = None, **params: Any) -> Any:
        """Send one request and return its ``result``; raise ExoacqError on an error reply."""
        operator = {"operator": self.operator} if self.operator else {}
        self._socket.send_multipart([b"", dumps({"command": command, **operator, **params})])
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if not self._socket.poll(int(timeout * 1000)):
            from exoacq.security import handshake_problem
            problem = handshake_problem(self._monitor)
            raise ExoacqError(
                f"no daemon answered at {self.address} within {timeout:g} s: "
                + (problem or "is `exoacq daemon` running? (a daemon reachable off its host also needs --key "
                              "and --server-key)"), code="no_daemon")
        reply = loads(self._socket.recv_multipart()[-1])
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise ExoacqError(error.get("message", "the daemon refused the request"), code=error.get("code", "error"))
        return reply.get("result")

    def reachable(self, endpoint: str) -> str:
        """An endpoint from the daemon's ``status`` as this client connects to it (a daemon on another
        host reports its wildcard binds as 127.0.0.1: that becomes the control address's host)."""
        from exoacq.security import as_seen_from
        return as_seen_from(endpoint, self.address)

    def close(self) -> None:
        if not self._socket.closed:
            self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscribe(address: str, topics: list[str] | None = None, context: zmq.Context | None = None,
              keys: Any = None) -> zmq.Socket:
    """A SUB socket on the results PUB for the given topics (all when None); ``keys``: an
    :class:`exoacq.security.ClientKeys` for a daemon that uses CurveZMQ (e.g. ``client.keys``)."""
    socket = (context or zmq.Context.instance()).socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(socket)
    connect(socket, address, "results endpoint")
    for topic in topics or [""]:
        socket.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
    return socket

