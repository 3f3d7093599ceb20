"""``exoacq bench realtime --console``: the operator's console attached to a benchmarked daemon.

The console is what an operator would run: an ``exoacq web`` process (a bus client of the
daemon) and a headless chromium showing ``/live/<instrument>``. The page keeps its own
figures in ``window.exoacqLive`` (frames drawn, features drawn on the last frame, the
latencies of its last 200 frames: exposure start to drawn, in ms); this reads them every
``interval_s`` and sums them up over the acquisition, with the CPU each part used.

Priority: on a host shared with the daemon, the console should yield the CPU to the
acquisition (the daemon is what must keep up; a viewer may skip frames). The console's
processes (``exoacq web``, which does so itself by default: ``exoacq web --nice``, chromium and
Playwright's driver) therefore run ``nice`` by ``CONSOLE_NICE`` (``niceness=0``: at the daemon's
priority; a browser on the operator's own computer, as usual, costs the instrument nothing at all). Chromium run as root (as in CI)
also sets its IO and compositor threads to nice -8 and its renderer back to 0, above the daemon,
which a normal user's browser cannot do: the console's thread gives up that right before it starts
the browser (:func:`forgo_raising_priority`), so the bench measures what an operator's browser
does. ``console.nice`` in the report states which priority was measured.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from exoacq.errors import ExoacqError
from exoacq.web.cli import CONSOLE_NICE  # how much lower the console's CPU priority is than the daemon's

log = logging.getLogger("exoacq.web.bench")

WEB_START_TIMEOUT_S = 60.0
PAGE_TIMEOUT_S = 30.0

#: What the probe reads on the page (latencies of the last 200 frames, newest last).
_READ_LIVE = """() => {
  const live = window.exoacqLive;
  if (!live) return null;
  return {framesDrawn: live.framesDrawn, overlayDrawn: live.overlayDrawn,
          overlayFrames: live.overlayFrames === undefined ? null : live.overlayFrames,
          latencies_ms: Array.from(live.latencies_ms || [])};
}"""


def start_web(control: str, data_dir: Path, log_path: Path, *, port: int | None = None,
              extra: list[str] | None = None, niceness: int = 0) -> tuple[subprocess.Popen, str]:
    """Start ``exoacq web`` on a free loopback port against ``control`` (``--nice niceness``: the
    console lowers its own priority); return it and its base URL once ``/api/status`` answers (the
    daemon reached through it)."""
    from exoacq.demo import free_tcp_port
    port = port or free_tcp_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "exoacq", "web", "--nice", str(niceness),
               "--listen", f"127.0.0.1:{port}", "--control", control, "--data-dir", str(data_dir), *(extra or [])]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + WEB_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise ExoacqError(f"`exoacq web` exited with code {process.returncode}: {_last_line(log_path)}")
        try:
            with urllib.request.urlopen(f"{base}/api/status", timeout=2.0) as reply:
                if json.loads(reply.read()).get("ok"):
                    return process, base
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_web(process)
            raise ExoacqError(f"`exoacq web` did not answer within {WEB_START_TIMEOUT_S:g} s; its log: {log_path}")
        time.sleep(0.2)


def stop_web(process: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """Stop an ``exoacq web`` process (SIGTERM, then SIGKILL); its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _process_table() -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, CPU seconds used so far)} of every process (Linux /proc; {} elsewhere)."""
    table: dict[int, tuple[int, float]] = {}
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return table


def _children(table: dict[int, tuple[int, float]]) -> dict[int, list[int]]:
    """{pid: its child pids} of a :func:`_process_table`."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    return children


def _descendants(children: dict[int, list[int]], root: int) -> list[int]:
    """Every descendant of ``root`` in a :func:`_children` map."""
    found, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack += children.get(pid, [])
    return found


def cpu_seconds(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each group of processes (each root pid with its descendants);
    a process in several groups counts in the first; "browser": this process's other
    descendants (Playwright's driver and chromium). Empty where /proc is not there."""
    table = _process_table()
    if not table:
        return {}
    children = _children(table)
    seen: set[int] = set()
    totals: dict[str, float] = {}
    for group, roots in groups.items():
        total = 0.0
        for pid in (p for root in roots if root in table for p in (root, *_descendants(children, root))):
            if pid not in seen:
                seen.add(pid)
                total += table[pid][1]
        totals[group] = total
    # the rest of this process's descendants (a group's processes take all their descendants along)
    totals["browser"] = sum(table[pid][1] for pid in _descendants(children, os.getpid()) if pid not in seen)
    return totals


def _last_line(path: Path) -> str:
    lines = Path(path).read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"


#: Linux prctl(2) option and capability(7) number.
_PR_CAPBSET_DROP, _CAP_SYS_NICE = 24, 23


def forgo_raising_priority() -> None:
    """The processes this thread starts from now on cannot raise their CPU priority, as a normal
    user's cannot: run as root (as in CI), chromium sets its IO and compositor threads to nice -8
    and its renderer back to 0, above the daemon, whatever nice it was started at. Dropping
    CAP_SYS_NICE from this thread's bounding set (per thread on Linux, kept across fork and exec)
    stops that; a process that is not root has nothing to drop."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_CAPBSET_DROP, _CAP_SYS_NICE, 0, 0, 0) != 0:
        log.warning("could not drop CAP_SYS_NICE for the console's browser (%s): it may run above the daemon",
                    os.strerror(ctypes.get_errno()))


def _autogroup(pid: int | str) -> str | None:
    """``/autogroup-N`` of a process (Linux with autogroup scheduling), or None."""
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            return f.read().split()[0]
    except (OSError, IndexError):
        return None


def nice_other_sessions(niceness: int) -> int:
    """Give ``niceness`` to the autogroups of this process's descendants that are not in its own;
    the number of processes found in other autogroups.

    Linux's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``, on in Debian's and
    most distributions' kernels) first shares the CPU between sessions, then inside each session by
    nice. Chromium starts in a session of its own (setsid), so the nice 19 of all its threads
    weighed nothing against the daemon's session (on a 2-core VM, the console bench dropped 33 to
    79 camera frames in 10 s with chromium's session at nice 0, 3 and 8 with it at 19). A session's
    own nice (``/proc/PID/autogroup``, sched(7)) is what puts it below the daemon's, as the
    console's processes are meant to be."""
    if sys.platform != "linux" or (own := _autogroup("self")) is None:
        return 0
    count, done = 0, set()
    for pid in _descendants(_children(_process_table()), os.getpid()):
        group = _autogroup(pid)
        if group is None or group == own:
            continue
        count += 1
        if group in done:
            continue
        try:
            with open(f"/proc/{pid}/autogroup", "w") as f:
                f.write(str(niceness))
            done.add(group)
        except OSError as exc:
            log.warning("could not lower the CPU priority of the console's browser (session of pid %d: %s): "
                        "it competes with the daemon", pid, exc.strerror)
    return count


class LivePageProbe:
    """A headless chromium on a live page, read every ``interval_s`` in a thread of its own
    (Playwright's sync API lives in the thread that started it)."""

    def __init__(self, url: str, *, interval_s: float = 0.5, cpu_groups: dict[str, list[int]] | None = None,
                 niceness: int = 0):
        self.url = url
        self.interval_s = interval_s
        self.niceness = niceness
        #: {group: root pids} whose CPU time is read with each reading (see cpu_seconds)
        self.cpu_groups = cpu_groups or {}
        self.cpu: list[tuple[float, dict[str, float]]] = []
        #: (time.time(), framesDrawn, overlayDrawn, overlayFrames or None, latencies of the frames
        #: drawn since the previous reading, ms)
        self.samples: list[tuple[float, int, int, int | None, list[float]]] = []
        self.console_errors: list[str] = []
        self._ready = threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="console-probe", daemon=True)

    def start(self) -> None:
        """Open the page; return once its script is running (``window.exoacqLive`` is there)."""
        self._thread.start()
        self._ready.wait(PAGE_TIMEOUT_S + 30)
        if self._error is not None:
            raise ExoacqError(f"the console's live page {self.url}: {self._error}")
        if not self._ready.is_set():
            raise ExoacqError(f"the console's live page {self.url} did not open within {PAGE_TIMEOUT_S:g} s")

    def stop(self) -> None:
        self._done.set()
        self._thread.join(30)

    def _run(self) -> None:
        from playwright.sync_api import sync_playwright

        from exoacq.web.browser import launch_chromium
        try:
            if self.niceness > 0 and sys.platform == "linux":
                # on Linux the nice value is per thread, and inherited by the processes a thread starts:
                # this thread, Playwright's driver and chromium (all their threads) yield to the daemon
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.niceness)
                forgo_raising_priority()
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    if self.niceness > 0:
                        nice_other_sessions(self.niceness)  # chromium's session: see there
                    page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
                    page.on("pageerror", lambda e: self.console_errors.append(str(e)))
                    page.goto(self.url, timeout=PAGE_TIMEOUT_S * 1000)
                    page.wait_for_function("() => window.exoacqLive !== undefined", timeout=PAGE_TIMEOUT_S * 1000)
                    self._ready.set()
                    previous = 0
                    while not self._done.wait(self.interval_s):
                        live = page.evaluate(_READ_LIVE)
                        if live is None:
                            continue
                        drawn = int(live["framesDrawn"])
                        new = max(0, min(drawn - previous, len(live["latencies_ms"])))
                        latencies = live["latencies_ms"]
                        fresh = [float(x) for x in latencies[len(latencies) - new:]] if new else []
                        previous = drawn
                        now = time.time()
                        self.samples.append((now, drawn, int(live["overlayDrawn"] or 0), live["overlayFrames"], fresh))
                        self.cpu.append((now, cpu_seconds(self.cpu_groups)))
                finally:
                    browser.close()
        except BaseException as error:  # reported by start() or summary()
            self._error = error
            self._ready.set()

    def summary(self, start: float, end: float) -> dict[str, Any]:
        """The page's figures over [start, end] (UNIX seconds: the acquisition)."""
        if self._error is not None:
            raise ExoacqError(f"the console's live page {self.url}: {self._error}")
        inside = [s for s in self.samples if start <= s[0] <= end]
        latencies = np.array([x for s in inside[1:] for x in s[4]])
        if len(inside) >= 2:
            frames_drawn = inside[-1][1] - inside[0][1]
            fps = frames_drawn / (inside[-1][0] - inside[0][0])
        else:
            frames_drawn, fps = 0, 0.0
        counted = [s[3] for s in inside if s[3] is not None]
        if len(counted) >= 2:  # the page counts frames drawn with features itself
            overlay_frames = counted[-1] - counted[0]
        else:  # else: readings whose frame had features drawn on it
            overlay_frames = sum(1 for s in inside[1:] if s[2] > 0)
        cpu = [c for c in self.cpu if start <= c[0] <= end and c[1]]
        cpu_percent = None
        if len(cpu) >= 2:
            (t0, first), (t1, last) = cpu[0], cpu[-1]
            cpu_percent = {group: round(100.0 * (last[group] - first.get(group, 0.0)) / (t1 - t0), 1) for group in last}
        return {
            "frames_drawn": int(frames_drawn),
            "fps": round(float(fps), 2),
            "latency_ms": {"p50": float(np.percentile(latencies, 50)) if latencies.size else None,
                           "p95": float(np.percentile(latencies, 95)) if latencies.size else None,
                           "max": float(latencies.max()) if latencies.size else None,
                           "frames": int(latencies.size)},
            "overlay_frames": int(overlay_frames),
            "overlay_counted_by": "page" if len(counted) >= 2 else "readings",
            "readings": len(inside),
            # CPU use during the acquisition, % of one core: the daemon (with its tracking core),
            # `exoacq web`, the browser (chromium and Playwright's driver)
            "cpu_percent": cpu_percent,
            "console_errors": list(self.console_errors),
        }


def require_browser() -> None:
    """Raise a one-line error when no headless chromium can be driven here."""
    from exoacq.web.browser import chromium_problem

    problem = chromium_problem()
    if problem:
        raise ExoacqError(f"--console needs a headless chromium: {problem}", code="no_browser")


class AttachedConsole:
    """``exoacq web`` against a daemon plus a headless chromium on its live page, as a context
    manager: ``with AttachedConsole(control, "nta", tmp) as console: ...; console.summary(t0, t1)``."""

    def __init__(self, control: str, instrument: str, work_dir: Path, *, interval_s: float = 0.5,
                 daemon_pid: int | None = None, niceness: int = CONSOLE_NICE):
        require_browser()
        if not 0 <= niceness <= 19:
            raise ExoacqError(f"--console-nice {niceness}: must be 0 (the daemon's priority) to 19", code="usage")
        self.control, self.instrument, self.work_dir = control, instrument, Path(work_dir)
        self.daemon_pid = daemon_pid
        self.niceness = niceness if sys.platform == "linux" else 0
        self.interval_s = interval_s
        self.web: subprocess.Popen | None = None
        self.probe: LivePageProbe | None = None
        self.log_path = self.work_dir / "web.log"

    def __enter__(self) -> "AttachedConsole":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.web, base = start_web(self.control, self.work_dir / "web-data", self.log_path, niceness=self.niceness)
        try:
            groups = {"daemon": [self.daemon_pid] if self.daemon_pid else [], "web": [self.web.pid]}
            self.probe = LivePageProbe(f"{base}/live/{self.instrument}", interval_s=self.interval_s, cpu_groups=groups,
                                       niceness=self.niceness)
            self.probe.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.probe is not None:
            self.probe.stop()
        if self.web is not None:
            stop_web(self.web)

    def summary(self, start: float, end: float) -> dict[str, Any]:
        assert self.probe is not None
        return {**self.probe.summary(start, end), "nice": self.niceness}
