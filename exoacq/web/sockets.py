"""The console's two WebSockets: the daemon's documents, and one instrument's live view.

* ``/ws/events``: text messages ``{"topic", "doc"}``: first ``{"topic": "snapshot", "doc":
  bridge.snapshot()}``, then every document the daemon publishes (a browser that falls 256 documents
  behind loses the oldest, never holds up the others: :class:`exoacq.web.bridge.EventSubscription`).
* ``/ws/live/{instrument}[?max_width=960]``: the browser sends the text ``next`` when it is ready for
  a frame (once at the start, then as each frame arrives); each ``next`` gets ONE binary message:
  a uint32 big-endian header length, the header JSON (UTF-8: :meth:`DaemonBridge.next_frame`'s header
  plus ``sent``, time.time() when sent), then the JPEG. A slow browser gets fewer frames, never a
  queue. An unknown instrument or no daemon: one text message ``{"ok": false, "error": {"code",
  "message"}}``, then the socket closes.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from typing import Any, Awaitable, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

from exoacq.errors import ExoacqError

log = logging.getLogger("exoacq.web")


async def events_socket(websocket: WebSocket, bridge: Any) -> None:
    """``{"topic": "snapshot", "doc": ...}``, then every document as ``{"topic", "doc"}``."""
    await websocket.accept()
    subscription = bridge.events()

    async def send_events() -> None:
        await websocket.send_text(json.dumps({"topic": "snapshot", "doc": bridge.snapshot()}))
        while True:
            topic, doc = await subscription.get()
            await websocket.send_text(json.dumps({"topic": topic, "doc": doc}))

    try:
        await _until_closed(websocket, send_events(), on_text=None)
    finally:
        subscription.close()


async def live_socket(websocket: WebSocket, bridge: Any, ask: Callable[..., Awaitable[Any]]) -> None:
    """One binary message per "next": uint32 BE header length, header JSON (+ ``sent``), JPEG;
    ``ask(command, **params)``: a daemon request (to check the instrument)."""
    instrument = websocket.path_params["instrument"]
    max_width = 960
    with contextlib.suppress(ValueError):
        max_width = min(max(int(websocket.query_params.get("max_width", max_width)), 64), 4096)
    await websocket.accept()
    try:
        status = await ask("status")
        if instrument not in status["instruments"]:
            raise ExoacqError(f"no instrument {instrument!r} (instruments: "
                              f"{', '.join(status['instruments']) or 'none'})", code="unknown_instrument")
    except ExoacqError as exc:
        await websocket.send_text(json.dumps({"ok": False, "error": {"code": exc.code, "message": str(exc)}}))
        await websocket.close(code=1008 if exc.code == "unknown_instrument" else 1011)
        return
    wanted = asyncio.Event()
    credits = [0]

    def on_text(text: str) -> None:
        if text.strip() == "next":
            credits[0] += 1
            wanted.set()

    async def send_frames() -> None:
        after_seq = 0
        while True:
            await wanted.wait()
            got = await bridge.next_frame(instrument, after_seq, max_width=max_width)
            if got is None:
                continue
            header, jpeg = got
            after_seq = header.get("seq") or after_seq
            header = {**header, "sent": time.time()}
            text = json.dumps(header).encode("utf-8")
            credits[0] -= 1
            if credits[0] <= 0:
                credits[0] = 0
                wanted.clear()
            await websocket.send_bytes(struct.pack(">I", len(text)) + text + jpeg)

    await _until_closed(websocket, send_frames(), on_text=on_text)


async def _until_closed(websocket: WebSocket, sender: Any, on_text: Any) -> None:
    """Run ``sender`` until it ends or the client goes away (reading the client's messages meanwhile)."""
    async def read() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if on_text is not None and message.get("text") is not None:
                on_text(message["text"])

    reader, writer = asyncio.ensure_future(read()), asyncio.ensure_future(sender)
    try:
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, writer):
            task.cancel()
        results = await asyncio.gather(reader, writer, return_exceptions=True)
    for result in results:
        if isinstance(result, ExoacqError):
            with contextlib.suppress(Exception):
                await websocket.send_text(json.dumps({"ok": False, "error": {"code": result.code,
                                                                             "message": str(result)}}))
                await websocket.close(code=1011)
        elif isinstance(result, Exception) and not isinstance(result, (WebSocketDisconnect, RuntimeError,
                                                                        asyncio.CancelledError)):
            log.error("WebSocket %s: %s: %s", websocket.url.path, type(result).__name__, result)
            with contextlib.suppress(Exception):
                await websocket.close(code=1011)
