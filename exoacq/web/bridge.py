"""The web console's only link to the daemon: control requests, published documents, live frames.

:class:`DaemonBridge` is an ordinary bus client (docs/protocol.md), so the console can run
on another machine and never slows an acquisition:

* **control**: :meth:`DaemonBridge.request`, thread-safe; each request uses an idle
  :class:`exoacq.bus.ControlClient` (DEALER) from a small pool, or a new one, so that requests
  from several threads run side by side; a client whose request timed out is closed, never
  reused (its late reply would answer the next request);
* **results**: one thread reads every topic, keeps a :meth:`snapshot` (the latest progress per
  instrument, the latest ``run.state`` per run, the latest heartbeat) and hands each document to
  every :class:`EventSubscription` (an asyncio queue per browser connection, bounded: a slow
  browser loses its oldest documents, counted, and never holds up the others);
* **frames**: one thread reads ``frame`` and ``features`` and keeps, per instrument, only the
  newest frame and the newest ``features`` document. :meth:`next_frame` encodes that newest
  frame when a viewer asks (exoacq.web.live, in a worker thread): a backlog is never encoded.
  The frames socket is connected only while someone watches (a :meth:`next_frame` call in the
  last WATCH_IDLE_S seconds): the daemon's frames PUB is an XPUB, so with no subscriber its
  acquisition threads send no frame at all, and an idle console costs it nothing.

A restarted daemon (a document with another ``daemon`` boot id) is followed: ``status`` is read
again for the results and frames endpoints, and the sockets reconnect if they moved. When nothing
has been heard for SILENT_AFTER_S (the daemon is down, or came back on other ports), ``status``
is asked every PROBE_EVERY_S until it answers.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from exoacq.bus import ControlClient, connect, loads, subscribe
from exoacq.errors import ExoacqError
from exoacq.web.live import decode_frame

log = logging.getLogger("exoacq.web.bridge")

#: Run states kept in the snapshot (the newest runs'; older ones are asked of the daemon).
MAX_STATES = 200
#: The frames socket stays connected this long after the last next_frame call.
WATCH_IDLE_S = 10.0
#: Frame messages the frames socket queues before ZeroMQ drops (a frame is several MB: keep none old).
FRAMES_RCVHWM = 2
#: The focus score is measured again at most this often (s) per instrument, not on every frame
#: shown: ~8 ms of CPU for a 1280x1024 frame on the 2-core CI VM, more than the JPEG; an operator
#: turning the focus sees it move 5 times a second.
FOCUS_INTERVAL_S = 0.2
#: With no document for this long (two heartbeats missed), ``status`` is asked ...
SILENT_AFTER_S = 3.0
#: ... and again this often until the daemon answers.
PROBE_EVERY_S = 3.0
PROBE_TIMEOUT_S = 1.0
#: Idle control clients kept for reuse.
POOL_SIZE = 4


@dataclass(frozen=True, eq=False)
class _Live:
    """One received frame: its header, its pixels (a view of ``message``'s buffer, no copy)."""

    header: dict[str, Any]
    pixels: np.ndarray
    message: zmq.Frame
    seq: int


class EventSubscription:
    """Published documents for one consumer on one asyncio loop: ``await sub.get()`` ->
    ``(topic, document)``. At most ``maxsize`` wait; when full the OLDEST is dropped (``dropped``
    counts them). The documents are shared between subscriptions: read them, do not change them.
    Make it with :meth:`DaemonBridge.events` (from the loop); ``close()`` when done (or
    ``with bridge.events() as sub:``)."""

    def __init__(self, bridge: "DaemonBridge", loop: asyncio.AbstractEventLoop, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"maxsize = {maxsize}: an event subscription holds at least 1 document")
        self._bridge = bridge
        self._loop = loop
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize)
        #: Documents dropped because this consumer fell ``maxsize`` behind.
        self.dropped = 0
        self.closed = False

    def _put(self, topic: str, document: dict[str, Any]) -> None:
        """On the loop's thread: queue a document, dropping the oldest when full."""
        if self.closed:
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait((topic, document))

    async def get(self) -> tuple[str, dict[str, Any]]:
        """The next document: ``(topic, document)``; waits for one."""
        return await self._queue.get()

    def qsize(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """Stop receiving documents (those queued stay readable)."""
        self.closed = True
        self._bridge._unsubscribe(self)

    def __enter__(self) -> "EventSubscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DaemonBridge:
    """The console's connection to one daemon (see the module's description).

    ``control``: the daemon's control endpoint (the results and frames endpoints come from its
    ``status``); ``keys``: an :class:`exoacq.security.ClientKeys` (CurveZMQ) for every socket, or
    None; ``operator``: the name stated in requests when a request names none (default:
    ``$EXOACQ_OPERATOR``, else the login name), recorded by the daemon as ``claimed_operator``.
    """

    def __init__(self, control: str, *, keys: Any = None, operator: str | None = None,
                 context: zmq.Context | None = None):
        from exoacq.audit import pop_claimed_operator, stated_operator
        self.control = control
        self.keys = keys
        #: The default ``operator`` of requests (a bad name is a one-line ExoacqError, bad_operator).
        self.operator = pop_claimed_operator({"operator": operator}) if operator is not None else stated_operator()
        self._ctx = context or zmq.Context.instance()
        self._pool: list[ControlClient] = []
        self._pool_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: The daemon's results and frames endpoints as this console connects to them (None: unknown yet).
        self.endpoints: dict[str, str] | None = None
        #: This daemon start's boot id (from its documents), and whether ``status`` must be read again.
        self.boot_id: str | None = None
        self._reread_status = threading.Event()
        # the snapshot, under _state_lock
        self._state_lock = threading.Lock()
        self._progress: dict[str, dict[str, Any]] = {}
        self._states: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._heartbeat: dict[str, Any] | None = None
        self._subscriptions: set[EventSubscription] = set()
        # live frames, under _frames_lock
        self._frames_lock = threading.Lock()
        self._frames: dict[str, _Live] = {}
        self._features: dict[str, dict[str, Any]] = {}
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        #: {instrument: (time.monotonic(), focus score)} of the newest measurement (FOCUS_INTERVAL_S).
        self._focus: dict[str, tuple[float, float]] = {}
        #: The last encoded frame per (instrument, max_width), for other viewers of the same frame.
        self._encoded: dict[tuple[str, int], tuple[_Live, dict[str, Any], bytes]] = {}
        self._watch_until = 0.0
        #: What went past: documents and frames received, malformed messages skipped, restarts seen.
        self.counters = {"documents": 0, "frames": 0, "features": 0, "malformed": 0, "restarts": 0,
                         "frames_encoded": 0}

    # -- life --------------------------------------------------------------------------------
    def start(self) -> None:
        """Read the daemon's endpoints and start the results and frames threads. A daemon that does
        not answer yet is not an error: the bridge keeps asking (requests meanwhile raise no_daemon);
        a control endpoint that is not a ZeroMQ endpoint is (ExoacqError, code ``usage``)."""
        probe = self._ctx.socket(zmq.DEALER)
        connect(probe, self.control, "control endpoint")  # a bad endpoint: one line, now
        probe.close(linger=0)
        try:
            self._read_status(timeout_s=1.0)
        except ExoacqError as exc:
            if exc.code != "no_daemon":
                raise
            log.warning("%s; the console keeps trying", exc)
        for name, target in (("results", self._results_loop), ("frames", self._frames_loop)):
            thread = threading.Thread(target=target, name=f"exoacq-web-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop the threads and close every socket."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._threads.clear()
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for client in pool:
            client.close()

    def __enter__(self) -> "DaemonBridge":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- control -----------------------------------------------------------------------------
    def request(self, command: str, *, operator: str | None = None, timeout_s: float = 5.0, **params: Any) -> Any:
        """Send one control request and return its ``result`` (thread-safe; blocks: from asyncio code
        call it in a worker thread). The request states ``operator`` (this one, else the bridge's).
        An error reply raises ExoacqError with the daemon's code and message verbatim; no reply
        within ``timeout_s`` raises ExoacqError code ``no_daemon``."""
        stated = operator if operator is not None else self.operator
        if stated is not None:
            params["operator"] = stated
        client = self._client()
        try:
            result = client.request(command, timeout_s=timeout_s, **params)
        except ExoacqError as exc:
            if exc.code == "no_daemon":  # a late reply may still come: this socket is done
                client.close()
            else:
                self._release(client)
            raise
        except BaseException:
            client.close()
            raise
        self._release(client)
        return result

    def _client(self) -> ControlClient:
        with self._pool_lock:
            if self._pool:
                return self._pool.pop()
        return ControlClient(self.control, context=self._ctx, keys=self.keys)

    def _release(self, client: ControlClient) -> None:
        with self._pool_lock:
            if len(self._pool) < POOL_SIZE and not self._stop.is_set():
                self._pool.append(client)
                return
        client.close()

    def _read_status(self, timeout_s: float) -> dict[str, Any]:
        """Ask ``status``; note the results and frames endpoints (as reachable from here)."""
        from exoacq.security import as_seen_from
        status = self.request("status", timeout_s=timeout_s)
        reported = status.get("endpoints") or {}
        self.endpoints = {name: as_seen_from(reported[name], self.control) for name in ("results", "frames")}
        return status

    # -- documents ---------------------------------------------------------------------------
    def events(self, maxsize: int = 256) -> EventSubscription:
        """A new subscription to every published document, for the running asyncio loop. Take the
        :meth:`snapshot` after subscribing, so that nothing falls between the two."""
        subscription = EventSubscription(self, asyncio.get_running_loop(), maxsize)
        with self._state_lock:
            self._subscriptions.add(subscription)
        return subscription

    def _unsubscribe(self, subscription: EventSubscription) -> None:
        with self._state_lock:
            self._subscriptions.discard(subscription)

    def snapshot(self) -> dict[str, Any]:
        """What the console knows now: ``progress`` {instrument: latest ``<method>.progress``},
        ``states`` {run_id: latest ``run.state``} (the last MAX_STATES runs, oldest first) and
        ``heartbeat`` (the latest ``daemon.heartbeat``, or None)."""
        with self._state_lock:
            return {"progress": dict(self._progress), "states": dict(self._states), "heartbeat": self._heartbeat}

    def _results_loop(self) -> None:
        _keep_running(self._stop, "results", self._read_results)

    def _read_results(self) -> None:
        from exoacq.liveness import HEARTBEAT_TOPIC
        socket: zmq.Socket | None = None
        endpoint: str | None = None
        last_heard = last_probe = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                silent = now - last_heard > SILENT_AFTER_S and now - last_probe > PROBE_EVERY_S
                if self.endpoints is None or self._reread_status.is_set() or silent:
                    last_probe = now
                    self._reread_status.clear()
                    try:
                        self._read_status(timeout_s=PROBE_TIMEOUT_S)
                    except ExoacqError as exc:
                        log.debug("status: %s", exc)
                wanted = self.endpoints["results"] if self.endpoints else None
                if wanted != endpoint:
                    if socket is not None:
                        socket.close(linger=0)
                    socket = subscribe(wanted, None, context=self._ctx, keys=self.keys) if wanted else None
                    endpoint = wanted
                if socket is None:
                    self._stop.wait(0.2)
                    continue
                if not socket.poll(200):
                    continue
                last_heard = time.monotonic()
                for _ in range(1000):  # what is there, then look at the clock again
                    try:
                        parts = socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._on_document(parts, HEARTBEAT_TOPIC)
        finally:
            if socket is not None:
                socket.close(linger=0)

    def _on_document(self, parts: list[bytes], heartbeat_topic: str) -> None:
        try:
            if len(parts) != 2:
                raise ValueError(f"{len(parts)} parts")
            topic, document = parts[0].decode("ascii"), loads(parts[1])
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            self.counters["malformed"] += 1
            log.debug("a malformed document skipped: %s", exc)
            return
        self.counters["documents"] += 1
        boot = document.get("daemon")
        if isinstance(boot, str) and boot != self.boot_id:
            if self.boot_id is not None:  # the daemon restarted: its runs in progress were interrupted
                self.counters["restarts"] += 1
                log.info("the daemon restarted (boot id %s, was %s): reading its status again", boot, self.boot_id)
                with self._state_lock:
                    self._progress.clear()
                self._reread_status.set()
            self.boot_id = boot
        with self._state_lock:
            if topic == heartbeat_topic:
                self._heartbeat = document
            elif topic == "run.state" and isinstance(document.get("run_id"), str):
                self._states.pop(document["run_id"], None)
                self._states[document["run_id"]] = document
                while len(self._states) > MAX_STATES:
                    self._states.popitem(last=False)
            elif topic.endswith(".progress"):
                run = self._states.get(document.get("run_id")) or {}
                instrument = document.get("instrument") or run.get("instrument") or topic.removesuffix(".progress")
                self._progress[str(instrument)] = document
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            try:
                subscription._loop.call_soon_threadsafe(subscription._put, topic, document)
            except RuntimeError:  # its loop is closed: nobody will read it
                self._unsubscribe(subscription)

    # -- live frames -------------------------------------------------------------------------
    async def next_frame(self, instrument: str, after_seq: int, *, max_width: int = 960,
                         timeout_s: float = 1.0) -> tuple[dict[str, Any], bytes] | None:
        """The newest live frame of ``instrument`` other than ``after_seq`` (the ``seq`` the viewer
        has: 0 at first), as ``(header, JPEG bytes)``; None if none comes within ``timeout_s``.
        Live ``seq`` only grows, except when the daemon restarts (it counts from 1 again): any other
        ``seq`` is newer. Only the newest frame is ever encoded, in a worker thread."""
        self._watch_until = max(self._watch_until, time.monotonic() + WATCH_IDLE_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            with self._frames_lock:
                live = self._frames.get(instrument)
                features = self._features.get(instrument)  # the newest at the frame's choice
                if live is None or live.seq == after_seq:
                    live = None
                    waiter = loop.create_future()
                    self._waiters.setdefault(instrument, []).append((loop, waiter))
            if live is not None:
                break
            remaining = deadline - loop.time()
            try:
                if remaining > 0:
                    await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                pass
            finally:
                with self._frames_lock:
                    waiting = self._waiters.get(instrument, [])
                    if (loop, waiter) in waiting:
                        waiting.remove((loop, waiter))
            if loop.time() >= deadline and not waiter.done():
                return None
        key = (instrument, max_width)
        with self._frames_lock:
            cached = self._encoded.get(key)
        if cached is not None and cached[0] is live:  # another viewer of the same frame
            return cached[1], cached[2]
        header, jpeg = await asyncio.to_thread(self._encode, live, features, max_width)
        with self._frames_lock:
            self._encoded[key] = (live, header, jpeg)
            self.counters["frames_encoded"] += 1
        return header, jpeg

    def _encode(self, live: _Live, doc: dict[str, Any] | None, max_width: int) -> tuple[dict[str, Any], bytes]:
        """The viewer's header and JPEG of one frame, with the features in its own header (preview) or
        those of ``doc``, the newest ``features`` document, when it is of the same capture (a worker
        thread). The tracking core's features are of a recent frame (``features_frame_number``),
        usually a frame or two behind the one shown, as they come from its linker."""
        from exoacq.web.live import display_image, encode_jpeg, focus_score
        image, scale, levels = display_image(live.pixels, max_width)
        jpeg = encode_jpeg(image)
        h = live.header
        instrument, now = h.get("instrument"), time.monotonic()
        measured = self._focus.get(instrument)
        if measured is None or now - measured[0] >= FOCUS_INTERVAL_S:
            measured = self._focus[instrument] = (now, focus_score(live.pixels))
        focus = measured[1]
        preview = bool(h.get("preview", False))
        empty = {"x": [], "y": [], "mass": []}
        if preview:
            features = h.get("features") or empty
            tails, minmass, features_frame = h.get("tails") or [], h.get("minmass"), h.get("frame_number")
        else:
            if doc is not None and doc.get("run_id") == h.get("run_id") and doc.get("capture") == h.get("capture"):
                features, tails = doc.get("features") or empty, doc.get("tails") or []
                minmass, features_frame = doc.get("minmass"), doc.get("frame_number")
            else:  # no features of this capture yet
                features, tails, minmass, features_frame = empty, [], None, None
        header = {"instrument": h.get("instrument"), "run_id": h.get("run_id"), "capture": h.get("capture"),
                  "preview": preview, "frame_number": h.get("frame_number"), "seq": live.seq,
                  "timestamp": h.get("timestamp"), "exposure_ms": h.get("exposure_ms"),
                  "shape": list(live.pixels.shape), "display_shape": list(image.shape[:2]), "scale": scale,
                  "levels": [levels[0], levels[1]], "focus_score": focus,
                  "features": {k: features.get(k) or [] for k in ("x", "y", "mass")},
                  "features_frame_number": features_frame, "tails": tails,
                  "count": len(features.get("x") or []), "minmass": minmass, "encoded": time.time()}
        return header, jpeg

    def _frames_loop(self) -> None:
        _keep_running(self._stop, "frames", self._read_frames)

    def _read_frames(self) -> None:
        socket: zmq.Socket | None = None
        endpoint: str | None = None
        try:
            while not self._stop.is_set():
                watching = time.monotonic() < self._watch_until
                wanted = self.endpoints["frames"] if watching and self.endpoints else None
                if wanted != endpoint:
                    if socket is not None:
                        socket.close(linger=0)
                        with self._frames_lock:  # frames of a closed watch are stale by the next one
                            self._frames.clear()
                            self._features.clear()
                            self._encoded.clear()
                    socket = self._frames_socket(wanted) if wanted else None
                    endpoint = wanted
                if socket is None:
                    self._stop.wait(0.1)
                    continue
                if not socket.poll(100):
                    continue
                for _ in range(100):
                    try:
                        parts = socket.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_frames_message(parts)
        finally:
            if socket is not None:
                socket.close(linger=0)

    def _frames_socket(self, endpoint: str) -> zmq.Socket:
        socket = self._ctx.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, FRAMES_RCVHWM)
        if self.keys is not None:
            self.keys.apply(socket)
        connect(socket, endpoint, "frames endpoint")
        socket.setsockopt(zmq.SUBSCRIBE, b"frame")
        socket.setsockopt(zmq.SUBSCRIBE, b"features")
        return socket

    def _on_frames_message(self, parts: list[zmq.Frame]) -> None:
        """Keep a frame or a features document as its instrument's newest; a malformed message is
        counted and skipped."""
        try:
            topic = parts[0].bytes
            if topic == b"frame" and len(parts) == 3:
                header, pixels = decode_frame(parts[1].bytes, parts[2].buffer)
                live = _Live(header, pixels, parts[2], header["seq"])
                instrument = header["instrument"]
                with self._frames_lock:
                    self._frames[instrument] = live
                    waiters = self._waiters.pop(instrument, [])
                self.counters["frames"] += 1
                for loop, waiter in waiters:
                    try:
                        loop.call_soon_threadsafe(_wake, waiter)
                    except RuntimeError:  # that loop is closed
                        pass
            elif topic == b"features" and len(parts) == 2:
                document = loads(parts[1].bytes)
                if not isinstance(document, dict) or not isinstance(document.get("instrument"), str):
                    raise ValueError("a features document without its instrument")
                with self._frames_lock:
                    self._features[document["instrument"]] = document
                self.counters["features"] += 1
            else:
                raise ValueError(f"topic {topic[:32]!r} with {len(parts)} parts")
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            self.counters["malformed"] += 1
            log.debug("a malformed frames message skipped: %s", exc)


def _keep_running(stop: threading.Event, what: str, read: Any) -> None:
    """Run a reading loop until ``stop``; a failure (a bug, a socket error) is logged with its traceback
    and the loop starts again a second later, with new sockets: the console never goes deaf silently."""
    while not stop.is_set():
        try:
            read()
        except Exception:
            log.exception("the console's %s reader failed; starting it again", what)
            stop.wait(1.0)


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
