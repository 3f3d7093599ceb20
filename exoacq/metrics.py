"""The daemon's Prometheus endpoint (``[daemon] metrics``, ``exoacq daemon --metrics HOST:PORT|off``).

Thread safety by construction: the daemon's main thread builds a plain dict
(:meth:`DaemonMetrics.refresh`, every ``REFRESH_S``) from what it owns (runs,
instruments, the catalog, the publisher's counters) and from the documents it
publishes (:meth:`DaemonMetrics.observe`, a publisher observer), and swaps it
in with one assignment. The HTTP server thread (prometheus-client's
``start_http_server``) only reads the last dict: a scrape never touches the
daemon's internals, and a hung main loop shows as an old
``exoacq_metrics_snapshot_timestamp_seconds``.

There is no authentication on the endpoint: it binds to loopback unless
``metrics_allow_remote`` says otherwise.

Frame counters are method-neutral: any method whose progress or result
documents carry a ``frames`` object (``acquired``, ``processed``, ``dropped_by``;
docs/schemas/nta.progress.json) is counted, per instrument, since the daemon
started.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from exoacq import __version__
from exoacq.errors import ConfigError, ExoacqError
from exoacq.storage import FINAL_STATES

#: How often the main loop rebuilds the snapshot a scrape reads.
REFRESH_S = 0.5
#: Device states of exoacq.instruments.DeviceSlot (each a 0/1 sample of exoacq_device_state).
DEVICE_STATES = ("connected", "reconnecting", "disconnected")
#: Frame counters taken from a document's ``frames`` object: metric suffix -> how to read it.
FRAME_COUNTERS = {
    "received": lambda f: f.get("acquired"),
    "processed": lambda f: f.get("processed"),
    "dropped_camera": lambda f: (f.get("dropped_by") or {}).get("camera"),
    "dropped_tracker": lambda f: (f.get("dropped_by") or {}).get("tracker"),
}


def parse_address(text: str, allow_remote: bool = False) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0: any free port) or ``off`` (None).

    A host that is not loopback is refused unless ``allow_remote``: the endpoint has no
    authentication, and the run and device states it shows are nobody else's business."""
    if text.strip().lower() == "off":
        return None
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"metrics = {text!r}: must be HOST:PORT (e.g. 127.0.0.1:9464, [::1]:9464) or off")
    if not allow_remote and not _is_loopback(host):
        raise ConfigError(f"metrics = {text!r}: not a loopback address, and the metrics endpoint has no "
                          "authentication; use 127.0.0.1:PORT (scrape through an SSH tunnel or a Prometheus "
                          "agent on this host) or allow it with --metrics-allow-remote "
                          "([daemon] metrics_allow_remote = true)")
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    """An IP literal on loopback, or a name that resolves only to loopback addresses."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).partition("%")[0]).is_loopback
                               for info in infos)


class DaemonMetrics:
    """The daemon's counters and the snapshot the endpoint serves. All methods but ``collect``
    run in the daemon's main thread."""

    def __init__(self, daemon: Any, address: str = "off", allow_remote: bool = False):
        self.daemon = daemon
        self.address = parse_address(address, allow_remote)  # refused before anything is bound
        self.url: str | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._started_s = time.time()
        self._last_refresh = float("-inf")
        #: Counters since the daemon started.
        self.requests = 0
        self.request_errors: dict[str, int] = {}
        self.frames: dict[str, dict[str, int]] = {}  # instrument -> FRAME_COUNTERS key -> frames
        #: The last frame counts seen per run not yet finished (counters add what is new).
        self._run_frames: dict[str, dict[str, int]] = {}
        #: Per instrument: (last_frame_timestamp, when the daemon published it), from its progress documents.
        self._last_frame: dict[str, tuple[float, float]] = {}
        self._backlog: dict[str, int] = {}
        self._runs_seq = -1
        self._run_counts: list[tuple[str, str, int]] = []
        self.snapshot: dict[str, Any] = {}

    # -- the HTTP endpoint (its own thread, prometheus-client's) ------------------------
    def start(self) -> None:
        """Serve ``/metrics`` on the configured address (nothing when ``off``)."""
        if self.address is None:
            return
        self.daemon.publisher.observers.append(self.observe)
        self.refresh(force=True)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SnapshotCollector(self))
        ProcessCollector(registry=registry)  # memory, CPU, open file descriptors of the daemon
        host, port = self.address
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            hint = ("another daemon on this port? use --metrics HOST:PORT or --metrics off"
                    if exc.errno == errno.EADDRINUSE else "give an address of this host, e.g. 127.0.0.1:9464")
            raise ExoacqError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} ({hint})",
                              code="bind_failed") from None
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self._server.server_port}/metrics"

    def stop(self) -> None:
        """Stop serving. The server notices within its 0.5 s poll; that wait runs beside the rest of the
        daemon's shutdown (a thread of its own) instead of before it, and the process does not wait for it at
        exit (a daemon thread: the server has nothing to finish, and its socket closes with the process)."""
        server, self._server = self._server, None
        if server is not None:
            threading.Thread(target=lambda: (server.shutdown(), server.server_close()), name="metrics-stop",
                             daemon=True).start()

    # -- what the main thread reports --------------------------------------------------
    def count_request(self, reply: dict[str, Any]) -> None:
        """A control request answered (``reply`` as sent): counted, errors by their code."""
        self.requests += 1
        if not reply.get("ok"):
            code = str((reply.get("error") or {}).get("code", "error"))[:40]
            self.request_errors[code] = self.request_errors.get(code, 0) + 1

    def observe(self, topic: str, document: dict[str, Any]) -> None:
        """A publisher observer: frame counts from progress and result documents, run ends from run.state."""
        run_id, instrument = document.get("run_id"), document.get("instrument")
        if not isinstance(run_id, str) or not isinstance(instrument, str):
            return
        if topic == "run.state":
            if document.get("state") in FINAL_STATES:
                self._run_frames.pop(run_id, None)
                self._backlog[instrument] = 0
                self._last_frame.pop(instrument, None)
            return
        frames = document.get("frames")
        if not isinstance(frames, dict) or document.get("version", 1) != 1:  # a re-processed version: no new frames
            return
        seen = self._run_frames.setdefault(run_id, {})
        totals = self.frames.setdefault(instrument, dict.fromkeys(FRAME_COUNTERS, 0))
        for key, read in FRAME_COUNTERS.items():
            value = read(frames)
            if isinstance(value, int) and value > seen.get(key, 0):
                totals[key] += value - seen.get(key, 0)
                seen[key] = value
        self._backlog[instrument] = max(0, seen.get("received", 0) - seen.get("processed", 0))
        stamp = document.get("last_frame_timestamp")
        if document.get("state") == "acquiring" and isinstance(stamp, (int, float)):
            self._last_frame[instrument] = (float(stamp), time.time())

    def refresh(self, force: bool = False) -> None:
        """Rebuild the snapshot (at most every REFRESH_S unless ``force``); the main loop calls it each pass."""
        now = time.monotonic()
        if self.address is None or (not force and now - self._last_refresh < REFRESH_S):
            return
        self._last_refresh = now
        daemon = self.daemon
        publisher = daemon.publisher
        if publisher.sequence.get("run.state", 0) != self._runs_seq:  # the catalog changed: count again
            self._runs_seq = publisher.sequence.get("run.state", 0)
            self._run_counts = daemon.store.count_by_state()
        instruments = {}
        for name, runner in daemon.runners.items():
            current = runner.current
            acquiring = current is not None and current.state == "acquiring" and name in self._last_frame
            stamp, seen_at = self._last_frame.get(name, (0.0, 0.0))
            instruments[name] = {
                "method": runner.instrument.method.name,
                "run_in_progress": int(current is not None),
                "frames": dict(self.frames.get(name) or dict.fromkeys(FRAME_COUNTERS, 0)),
                "backlog_frames": self._backlog.get(name, 0) if current is not None else 0,
                "latency_s": max(0.0, seen_at - stamp) if acquiring else None,
                "devices": {role: {"driver": slot.driver.name, "state": slot.state}
                            for role, slot in runner.instrument.slots.items()},
            }
        self.snapshot = {  # one assignment: the server thread sees the old dict or this one, never half
            "time_s": time.time(),
            "uptime_s": time.time() - self._started_s,
            "boot_id": publisher.boot_id,
            "threads": threading.active_count(),
            "instruments": instruments,
            "reprocess_queue_jobs": daemon.reprocessing.waiting(),
            "runs": list(self._run_counts),
            "requests": self.requests,
            "request_errors": dict(self.request_errors),
            "published": dict(publisher.sequence),
            "publish_failed": dict(publisher.dropped),
            # clients the CurveZMQ handshake turned away (they get no reply, so no error code above)
            "refused_keys": (daemon.security.describe().get("refused_keys", 0)
                             if getattr(daemon, "security", None) is not None else 0),
        }


def _counts_by(name: str, documentation: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    """A counter family with one sample per key of ``counts`` (sorted), the key as ``label``."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


class _SnapshotCollector(Collector):
    """Metric families from the last snapshot (runs in the HTTP server's thread)."""

    def __init__(self, metrics: DaemonMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        snap = self.metrics.snapshot
        if not snap:
            return
        info = GaugeMetricFamily("exoacq_daemon_info", "This daemon: version and the id of this start "
                                 "(the daemon field of published documents)", labels=["version", "boot_id", "pid"])
        info.add_metric([__version__, snap["boot_id"], str(os.getpid())], 1)
        yield info
        yield GaugeMetricFamily("exoacq_daemon_uptime_seconds", "Seconds since the daemon started",
                                value=snap["uptime_s"])
        yield GaugeMetricFamily("exoacq_metrics_snapshot_timestamp_seconds", "When the daemon's main loop last "
                                "refreshed these metrics (Unix time; an old value: a stuck main loop)",
                                value=snap["time_s"])
        yield GaugeMetricFamily("exoacq_daemon_threads", "Threads in the daemon process", value=snap["threads"])
        yield from self._instruments(snap["instruments"])
        yield GaugeMetricFamily("exoacq_reprocess_queue_jobs", "Re-processing jobs waiting for the "
                                "re-processing thread", value=snap["reprocess_queue_jobs"])
        runs = GaugeMetricFamily("exoacq_runs", "Runs in the catalog by instrument and state",
                                 labels=["instrument", "state"])
        for instrument, state, count in snap["runs"]:
            runs.add_metric([instrument, state], count)
        yield runs
        requests = CounterMetricFamily("exoacq_control_requests", "Control requests answered")
        requests.add_metric([], snap["requests"])
        yield requests
        yield _counts_by("exoacq_control_request_errors", "Control requests answered with an error, by error "
                         "code", "code", snap["request_errors"])
        refused = CounterMetricFamily("exoacq_curve_clients_refused", "Connections refused for an unknown "
                                      "CurveZMQ key (when the daemon is reachable off this host)")
        refused.add_metric([], snap["refused_keys"])
        yield refused
        yield _counts_by("exoacq_published_documents", "Documents published on the results socket, by topic "
                         "(the last seq of the topic)", "topic", snap["published"])
        yield _counts_by("exoacq_publish_failures", "Documents the results socket refused, by topic (a slow "
                         "subscriber's own drops show as seq gaps on its side)", "topic", snap["publish_failed"])

    @staticmethod
    def _instruments(instruments: dict[str, Any]) -> Iterator[Any]:
        labels = ["instrument"]
        received = CounterMetricFamily("exoacq_frames_received", "Frames the camera delivered to the daemon",
                                       labels=labels)
        processed = CounterMetricFamily("exoacq_frames_processed", "Frames the tracking core processed",
                                        labels=labels)
        dropped = CounterMetricFamily("exoacq_frames_dropped", "Frames lost: by the camera (acquisition late) or "
                                      "by the tracker (its queue full)", labels=["instrument", "by"])
        latency = GaugeMetricFamily("exoacq_frame_to_result_latency_seconds", "Age of the newest processed frame "
                                    "when its result was published, while a run acquires", labels=labels)
        backlog = GaugeMetricFamily("exoacq_tracker_backlog_frames", "Frames acquired but not yet processed in "
                                    "the run in progress", labels=labels)
        in_progress = GaugeMetricFamily("exoacq_run_in_progress", "1 while the instrument runs a run",
                                        labels=["instrument", "method"])
        devices = GaugeMetricFamily("exoacq_device_state", "1 for the state each device is in",
                                    labels=["instrument", "device", "driver", "state"])
        for name, entry in instruments.items():
            frames = entry["frames"]
            received.add_metric([name], frames["received"])
            processed.add_metric([name], frames["processed"])
            dropped.add_metric([name, "camera"], frames["dropped_camera"])
            dropped.add_metric([name, "tracker"], frames["dropped_tracker"])
            if entry["latency_s"] is not None:
                latency.add_metric([name], entry["latency_s"])
            backlog.add_metric([name], entry["backlog_frames"])
            in_progress.add_metric([name, entry["method"]], entry["run_in_progress"])
            for role, device in entry["devices"].items():
                for state in DEVICE_STATES:
                    devices.add_metric([name, role, device["driver"], state], int(device["state"] == state))
        yield from (received, processed, dropped, latency, backlog, in_progress, devices)
