"""The tracking core's processes, as the daemon runs them: one linker, N locate workers.

Frames fan out from the daemon's frame PUSH socket to the workers (ZeroMQ
PUSH/PULL: each frame goes to one worker with room in its queue); feature
tables flow to the linker, which orders them and links. Workers on other
hosts connect to the same two endpoints (fixed ports in ``[tracking]``); the
ones started here are watched and restarted. A run they were serving goes
on, marked degraded: a dead worker's queued frames, and the frames a dead
linker had linked, are counted as dropped by the tracker
(exoacq.nta.frame_order), and the restarted linker gets the capture under way
again (exoacq.nta.service).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import zmq

from exoacq.bus import connectable, dumps

log = logging.getLogger("exoacq.tracking")


class TrackingPipeline:
    def __init__(self, ctx: zmq.Context, *, workers: int, frames_endpoint: str, events_endpoint: str,
                 features_bind: str, security: Any = None, detector: str | None = None):
        self.ctx = ctx
        #: The instrument's detector: the workers started here compile only it before they say hello.
        self.detector = detector
        #: With CurveZMQ keys (exoacq.security): the processes get ``--keys-dir`` and serve/connect with CURVE.
        self.security = security
        self._process_args = security.process_args() if security is not None else []
        self.n_workers = workers
        self.frames_endpoint = frames_endpoint
        self.events_endpoint = events_endpoint
        self.features_bind = features_bind
        self.features_endpoint: str | None = None
        #: The linker has warmed up and serves (its ``ready`` event; ``bound`` came before, with its endpoint).
        self.linker_ready = False
        self.linker: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.workers_ready: set[int] = set()
        self.control: zmq.Socket | None = None
        #: Restarts since the daemon started (for ``status`` and the metrics).
        self.restarts = {"linker": 0, "workers": 0}
        #: Whether the core has been ready once (a core that dies before is a start-up failure).
        self.has_been_ready = False

    # -- processes -------------------------------------------------------------------
    def _spawn(self, module: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", module, *args, *self._process_args,
                                 "--parent-pid", str(os.getpid())])

    def start(self) -> None:
        """Start the linker; the workers follow once it reports its endpoint (``bound``, :meth:`on_event`)."""
        self.features_endpoint = None
        self.linker_ready = False
        self.workers_ready.clear()
        self.linker = self._spawn("exoacq.nta.tracker", "--events", self.events_endpoint, "--bind", self.features_bind)

    def _start_worker(self) -> subprocess.Popen:
        return self._spawn("exoacq.nta.worker", "--frames", self.frames_endpoint, "--features", self.features_endpoint,
                           *(["--detector", self.detector] if self.detector else []))

    @property
    def ready(self) -> bool:
        local = {w.pid for w in self.workers}
        return (self.linker_ready and self.features_endpoint is not None
                and len(self.workers_ready & local) >= self.n_workers)

    def on_event(self, event: dict[str, Any]) -> bool:
        """Handle the linker's own events; False for the ones about runs."""
        kind = event.get("event")
        if kind == "bound":  # its features endpoint, before its own warm-up: the workers start beside it
            self.features_endpoint = connectable(event["features"])
            if self.control is not None:
                self.control.close(linger=0)
            self.control = self.ctx.socket(zmq.PUSH)
            self.control.setsockopt(zmq.LINGER, 0)
            self.control.setsockopt(zmq.SNDHWM, 1000)  # run messages (small, a few per capture); send never waits
            if self.security is not None and self.security.curve:
                self.security.internal_keys().apply(self.control)
            self.control.connect(self.features_endpoint)
            self.workers = [self._start_worker() for _ in range(self.n_workers)]
            return True
        if kind == "ready":  # warmed up and serving
            self.linker_ready = True
            self.has_been_ready |= self.ready
            return True
        if kind == "worker":
            self.workers_ready.add(event["pid"])
            self.has_been_ready |= self.ready
            return True
        return False

    @property
    def restarting(self) -> bool:
        """The linker was restarted and has not reported its endpoint yet (run messages wait)."""
        return self.features_endpoint is None

    def check(self) -> str | None:
        """Restart what died; return what happened (why the run it served is degraded), or None."""
        if self.linker is not None and (code := self.linker.poll()) is not None:
            log.error("the tracking core's linker exited with code %s; restarting the tracking core", code)
            self._stop_workers(kill=True)  # their frames' features had nowhere to go: nothing to finish
            self.start()
            self.restarts["linker"] += 1
            return (f"the tracking core's linker exited with code {code} and was restarted: the tracks of the "
                    "capture under way until then were lost; its frames are counted as dropped by the tracker")
        for i, worker in enumerate(self.workers):
            if (code := worker.poll()) is not None:
                log.error("locate worker %s exited with code %s; restarting it", worker.pid, code)
                self.workers_ready.discard(worker.pid)
                self.send("worker.lost", {"pid": worker.pid})
                self.workers[i] = self._start_worker()
                self.restarts["workers"] += 1
                return (f"a locate worker exited with code {code} and was restarted: the frames queued for it "
                        "were lost and are counted as dropped by the tracker")
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
                "workers": {"local": [w.pid for w in self.workers], "ready": len(self.workers_ready)},
                "restarts": dict(self.restarts)}

    # -- stopping -----------------------------------------------------------------------
    def _stop_workers(self, kill: bool = False) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill() if kill else worker.terminate()
        for worker in self.workers:
            _wait_or_kill(worker)
        self.workers = []

    def stop(self) -> None:
        """Stop the workers and the linker together: each takes a few tenths of a second to end."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
        if self.linker is not None and self.linker.poll() is None and not self.send("shutdown", {}):
            self.linker.terminate()
        for process in [*self.workers, *([] if self.linker is None else [self.linker])]:
            _wait_or_kill(process)
        self.workers = []
        if self.control is not None:
            self.control.close(linger=0)


def _wait_or_kill(process: subprocess.Popen, timeout_s: float = 1.0) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
