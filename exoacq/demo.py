"""``exoacq demo``: a daemon with simulated instruments, one short NTA run, a table.

The daemon runs as a child process on free loopback ports with its own data
directory, exactly as an operator would start it; the run goes through the
same control and results sockets as ``exoacq acquire``.
"""
from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from exoacq.bus import ControlClient
from exoacq.client import ProgressBar, follow_run, format_result
from exoacq.errors import ExoacqError

DAEMON_START_TIMEOUT_S = 90.0


def free_tcp_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_tcp_port()}"


#: Attempts at starting a daemon whose free ports another process took between choosing and binding them.
PORT_RACE_ATTEMPTS = 3


def start_daemon(data_dir: Path, log_path: Path, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, simulated: bool = True) -> tuple[subprocess.Popen, str]:
    """Start ``exoacq daemon [--simulated]`` on free ports; return it and its control endpoint once it answers.
    A port found free can be taken by another process before the daemon binds it: the daemon then exits
    with "Address already in use", and is started again on other ports (PORT_RACE_ATTEMPTS in all)."""
    for attempt in range(1, PORT_RACE_ATTEMPTS + 1):
        try:
            return _start_daemon(data_dir, log_path, extra, env, simulated)
        except ExoacqError:
            if attempt == PORT_RACE_ATTEMPTS or "Address already in use" not in _read_text(log_path):
                raise
    raise AssertionError("unreachable")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _start_daemon(data_dir: Path, log_path: Path, extra: list[str] | None, env: dict[str, str] | None,
                  simulated: bool) -> tuple[subprocess.Popen, str]:
    control = free_tcp_endpoint()
    command = [sys.executable, "-m", "exoacq", "daemon", *(["--simulated"] if simulated else []), "--data-dir", str(data_dir),
               "--control", control, "--results", free_tcp_endpoint(), "--frames", free_tcp_endpoint(),
               # metrics on any free loopback port (its URL is in `status`), unless the caller picks one
               *([] if "--metrics" in (extra or []) else ["--metrics", "127.0.0.1:0"]), *(extra or [])]
    log = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
    with ControlClient(control, timeout_s=1.0) as client:
        while True:
            if process.poll() is not None:
                raise ExoacqError(f"the daemon exited with code {process.returncode}; its log: {log_path}")
            try:
                status = client.request("status")
                if status["ready"]:
                    return process, control
            except ExoacqError:
                pass
            if time.monotonic() > deadline:
                process.kill()
                raise ExoacqError(f"the daemon did not start within {DAEMON_START_TIMEOUT_S:g} s; its log: {log_path}")
            time.sleep(0.2)


def stop_daemon(process: subprocess.Popen, timeout_s: float = 5.0) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise ExoacqError(f"the daemon did not stop within {timeout_s:g} s of SIGTERM") from None


def run_demo(duration_s: float = 30.0) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="exoacq-demo-"))
    log_path = data_dir / "daemon.log"
    print(f"exoacq demo: starting a daemon with simulated instruments (data and log in {data_dir})", file=sys.stderr)
    process, control = start_daemon(data_dir, log_path)
    try:
        with ControlClient(control) as client:
            status = client.request("status")
            nta = status["instruments"]["nta"]
            truth = nta["simulation"]
            devices = {role: d.get("settings") or {} for role, d in nta["devices"].items()}
            component = truth["components"][0]
            print(f"exoacq demo: simulated sample: {component['diameter_nm']:g} nm spheres (n = "
                  f"{component['refractive_index']:g}) in water at {truth['temperature_c']:g} C, "
                  f"{truth['concentration_per_ml']:.3g} particles/mL; "
                  f"laser {devices['laser'].get('model', '?')}", file=sys.stderr)
            bar = ProgressBar()
            try:
                result = follow_run(client, {"method": "nta", "duration_s": duration_s, "captures": 1,
                                                     "sample": "demo 100 nm beads"},
                                    on_document=bar, timeout_s=duration_s + 120)
            finally:
                bar.close()
    finally:
        code = stop_daemon(process)
    print(format_result(result))
    mean, true_nm = result["size_nm"]["mean"], component["diameter_nm"]
    # the simulator draws its particle count (Poisson): the realised concentration is the truth
    drawn = devices["camera"].get("sample") or {}
    true_per_ml = truth["concentration_per_ml"]
    if drawn.get("particle_count") is not None and drawn.get("box_um"):
        true_per_ml = drawn["particle_count"] / math.prod(drawn["box_um"]) * 1e12
    if mean is not None:
        print(f"\nSimulated truth: {true_nm:.1f} nm, {true_per_ml:.3g} particles/mL (drawn; nominal "
              f"{truth['concentration_per_ml']:.3g}); measured mean {mean:.1f} nm ({100 * (mean / true_nm - 1):+.1f} %)"
              + ("" if result["concentration_per_ml"] is None else
                 f", concentration {result['concentration_per_ml']:.3g} particles/mL "
                 f"({100 * (result['concentration_per_ml'] / true_per_ml - 1):+.0f} %)")
              + f".\nA {duration_s:g} s video holds a few hundred tracks: expect a few % on sizes and a scatter of "
                "~ 15 % (1 SD) on the concentration, the count of particles in view renewing slowly; "
                "`exoacq bench accuracy` measures with 2 x 60 s per sample.")
    if code != 0:
        raise ExoacqError(f"the daemon exited with code {code}; its log: {log_path}")
    return 0
