"""The tracking core's processes, as the daemon runs them: one linker, N locate workers.

Frames fan out from the daemon's frame PUSH socket to the workers (ZeroMQ
PUSH/PULL: each frame goes to one worker with room in its queue); feature
tables flow to the linker, which orders them and links. Workers on other
hosts connect to the same two endpoints (fixed ports in ``[tracking]``); the
ones started here are watched and restarted, and a run they were serving is
failed rather than quietly losing frames.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import zmq

from exoacq.bus import dumps

log = logging.getLogger("exoacq.tracking")


class TrackingPipeline:
    def __init__(self, ctx: zmq.Context, *, workers: int, frames_endpoint: str, events_endpoint: str,
                 features_bind: str):
        self.ctx = ctx
        self.n_workers = workers
        self.frames_endpoint = frames_endpoint
        self.events_endpoint = events_endpoint
        self.features_bind = features_bind
        self.features_endpoint: str | None = None
        self.linker: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.workers_ready: set[int] = set()
        self.control: zmq.Socket | None = None

    # -- processes -------------------------------------------------------------------
    def _spawn(self, module: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", module, *args, "--parent-pid", str(os.getpid())])

    def start(self) -> None:
        """Start the linker; the workers follow once it reports its endpoint (:meth:`on_event`)."""
        self.features_endpoint = None
        self.workers_ready.clear()
        self.linker = self._spawn("exoacq.nta.tracker", "--events", self.events_endpoint, "--bind", self.features_bind)

    def _start_worker(self) -> subprocess.Popen:
        return self._spawn("exoacq.nta.worker", "--frames", self.frames_endpoint, "--features", self.features_endpoint)

    @property
    def ready(self) -> bool:
        local = {w.pid for w in self.workers}
        return self.features_endpoint is not None and len(self.workers_ready & local) >= self.n_workers

    def on_event(self, event: dict[str, Any]) -> bool:
        """Handle the linker's own events; False for the ones about runs."""
        kind = event.get("event")
        if kind == "ready":
            self.features_endpoint = event["features"].replace("://0.0.0.0:", "://127.0.0.1:")
            if self.control is not None:
                self.control.close(linger=0)
            self.control = self.ctx.socket(zmq.PUSH)
            self.control.setsockopt(zmq.LINGER, 0)
            self.control.connect(self.features_endpoint)
            self.workers = [self._start_worker() for _ in range(self.n_workers)]
            return True
        if kind == "worker":
            self.workers_ready.add(event["pid"])
            return True
        return False

    def check(self) -> str | None:
        """Restart what died; return what happened (for failing the run it served), or None."""
        if self.linker is not None and (code := self.linker.poll()) is not None:
            log.error("the tracking core's linker exited with code %s; restarting the tracking core", code)
            self._stop_workers()
            self.start()
            return f"the tracking core exited with code {code}"
        for i, worker in enumerate(self.workers):
            if (code := worker.poll()) is not None:
                log.error("locate worker %s exited with code %s; restarting it", worker.pid, code)
                self.workers_ready.discard(worker.pid)
                self.workers[i] = self._start_worker()
                return f"a locate worker exited with code {code}"
        return None

    def send(self, topic: str, message: dict[str, Any]) -> bool:
        """A run message to the linker; False if it cannot take it now."""
        if self.control is None:
            return False
        try:
            self.control.send_multipart([topic.encode("ascii"), dumps(message)], flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def describe(self) -> dict[str, Any]:
        return {"pid": self.linker.pid if self.linker else None, "ready": self.ready,
                "frames": self.frames_endpoint, "features": self.features_endpoint,
                "workers": {"local": [w.pid for w in self.workers], "ready": len(self.workers_ready)}}

    # -- stopping -----------------------------------------------------------------------
    def _stop_workers(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in self.workers:
            _wait_or_kill(worker)
        self.workers = []

    def stop(self) -> None:
        self._stop_workers()
        if self.linker is not None and self.linker.poll() is None:
            if not self.send("shutdown", {}):
                self.linker.terminate()
            _wait_or_kill(self.linker)
        if self.control is not None:
            self.control.close(linger=0)


def _wait_or_kill(process: subprocess.Popen, timeout_s: float = 1.0) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
