"""Security (issue 12, item 3): loopback by default, CurveZMQ off this host, bounded control requests.

Real CLI, real daemon subprocess bound to 0.0.0.0 with keys made by ``exoacq keys``, real CURVE
clients (authorised, unauthorised, keyless) connecting through the host's LAN address when it has one.
"""
from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time

import pytest
import zmq

from exoacq.bus import ControlClient, dumps, loads, subscribe
from exoacq.config import load_config
from exoacq.demo import free_tcp_endpoint, stop_daemon
from exoacq.errors import ConfigError, ExoacqError
from exoacq.security import MAX_REQUEST_BYTES, DaemonSecurity, as_seen_from, is_local, load_client_keys

from conftest import laser_settings, run_cli


def _host_address() -> str | None:
    """This host's non-loopback IPv4 address, if it has one (nothing is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def _off_host(endpoint: str) -> str:
    return endpoint.replace("tcp://127.0.0.1:", "tcp://0.0.0.0:")


def _via(endpoint: str, host: str | None) -> str:
    """Where a client connects to a 0.0.0.0 bind: the LAN address (still CURVE), else loopback."""
    return endpoint.replace("tcp://127.0.0.1:", f"tcp://{host}:") if host else endpoint


def test_endpoints_local_or_not():
    assert all(is_local(e) for e in ("tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555",
                                      "tcp://127.0.0.1:*", "ipc:///run/exoacq/control", "inproc://x",
                                      "tcp://lo:5555"))
    assert not any(is_local(e) for e in ("tcp://0.0.0.0:5556", "tcp://*:5556", "tcp://192.0.2.2:5556",
                                          "tcp://[::]:5556", "tcp://eth0:5556", "pgm://eth0;239.1.1.1:5555"))
    assert as_seen_from("tcp://127.0.0.1:5556", "tcp://192.0.2.2:5555") == "tcp://192.0.2.2:5556"
    assert as_seen_from("tcp://127.0.0.1:5556", "tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5556"


def test_off_host_bind_without_keys_is_refused_naming_the_socket(tmp_path):
    runs = {}
    for name in ("results", "control"):  # both daemons at once
        endpoint = _off_host(free_tcp_endpoint())
        runs[name] = endpoint, subprocess.Popen(
            [sys.executable, "-m", "exoacq", "daemon", "--simulated", "--data-dir", str(tmp_path / name),
             "--keys-dir", str(tmp_path / "no-keys"), f"--{name}", endpoint],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, (endpoint, process) in runs.items():
        _, stderr = process.communicate(timeout=60)
        assert process.returncode != 0
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr
        assert lines[0].startswith(f"exoacq: error: the {name} socket {endpoint} is reachable off this host: "
                                   "CurveZMQ keys are required (exoacq keys init"), lines[0]
        assert not (tmp_path / name).exists()  # refused before anything was created


def test_off_host_tracking_socket_needs_keys_and_unsafe_keys_are_refused(tmp_path, keys):
    config = load_config(None, simulated=True)
    config.instruments["nta"].options.tracking.frames = "tcp://0.0.0.0:*"
    config.daemon.keys_dir = tmp_path / "none"
    with pytest.raises(ConfigError, match="instrument nta tracking frames socket tcp://0.0.0.0:\\* is reachable"):
        DaemonSecurity.from_config(config)
    config.daemon.keys_dir = keys["dir"]
    security = DaemonSecurity.from_config(config)
    assert security.curve and security.off_host == ["instrument nta tracking frames socket tcp://0.0.0.0:*"]
    assert security.process_args() == ["--keys-dir", str(keys["dir"])]
    config = load_config(None, simulated=True)
    config.daemon.control = "tcp://0.0.0.0:5555"
    config.daemon.keys_dir = tmp_path
    run_cli("keys", "--dir", str(tmp_path), "init")
    with pytest.raises(ConfigError, match="no client is authorised"):
        DaemonSecurity.from_config(config)
    (tmp_path / "server.key_secret").chmod(0o644)
    with pytest.raises(ConfigError, match="others may read the daemon's secret key"):
        DaemonSecurity.from_config(config)


def test_a_file_in_place_of_the_keys_directory_is_one_line(tmp_path):
    """``keys init`` and ``keys add`` with --dir naming a file (or a folder inside one): a one-line error, not
    an internal FileExistsError / NotADirectoryError."""
    (tmp_path / "notes.txt").write_text("not a folder\n")
    for where in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "keys"):
        for action in (["init"], ["add", "bob"]):
            proc = run_cli("keys", "--dir", str(where), *action)
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.strip() == f"exoacq: error: keys directory {where}: {tmp_path / 'notes.txt'} is a " \
                                          "file, not a folder", proc.stderr


# -- a daemon reachable off its host, with keys ----------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Keys made with the CLI: the server's pair and alice authorised; mallory's pair, not authorised."""
    base = tmp_path_factory.mktemp("keys")
    server, other = base / "server", base / "other"
    for argv in (["--dir", str(server), "init"], ["--dir", str(server), "add", "alice"],
                 ["--dir", str(other), "init"], ["--dir", str(other), "add", "mallory"]):
        proc = run_cli("keys", *argv)
        assert proc.returncode == 0, proc.stderr
    listing = run_cli("keys", "--dir", str(server), "list", "--json")
    assert [row["name"] for row in json.loads(listing.stdout)] == ["server", "alice"]
    secret = server / "clients" / "alice.key_secret"
    assert secret.stat().st_mode & 0o777 == 0o600 and (server / "server.key_secret").stat().st_mode & 0o777 == 0o600
    return {"dir": server, "alice": secret, "mallory": other / "clients" / "mallory.key_secret",
            "server_key": server / "server.key"}


@pytest.fixture(scope="module")
def secure_daemon(tmp_path_factory, keys):
    tmp = tmp_path_factory.mktemp("secure")
    control, results = free_tcp_endpoint(), free_tcp_endpoint()
    log_path = tmp / "daemon.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "exoacq", "daemon", "--simulated", "--data-dir", str(tmp / "data"),
             "--keys-dir", str(keys["dir"]), "--control", _off_host(control), "--results", _off_host(results),
             "--frames", free_tcp_endpoint()], stdout=log, stderr=subprocess.STDOUT)
    host = _host_address()
    alice = load_client_keys(keys["alice"], keys["server_key"])
    deadline = time.monotonic() + 90
    with ControlClient(_via(control, host), timeout_s=1.0, keys=alice) as client:
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if client.request("status")["ready"]:
                    break
            except ExoacqError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
    yield {"control": _via(control, host), "results": _via(results, host), "alice": alice, "log": log_path,
           "mallory": load_client_keys(keys["mallory"], keys["server_key"]), "keys": keys, "data_dir": tmp / "data"}
    assert stop_daemon(process) == 0
    assert "Traceback" not in log_path.read_text()


def _received(sub: zmq.Socket) -> int:
    count = 0
    while sub.poll(0):
        sub.recv_multipart()
        count += 1
    return count


def test_authorised_client_works_and_others_get_nothing(secure_daemon):
    d, keys = secure_daemon, secure_daemon["keys"]
    subs = {name: subscribe(d["results"], None, keys=k) for name, k in
            (("alice", d["alice"]), ("mallory", d["mallory"]), ("none", None))}
    cli = subprocess.Popen([sys.executable, "-m", "exoacq", "status", "--control", d["control"], "--key",
                            str(keys["mallory"]), "--server-key", str(keys["server_key"])],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # waits 5 s: meanwhile...
    try:
        # an unauthorised key and no key: no reply at all, and the error says why (keys)
        with ControlClient(d["control"], timeout_s=1.0, keys=d["mallory"]) as client:
            with pytest.raises(ExoacqError, match="refused this client's key"):
                client.request("preview", on=True)  # a hostile laser-on: refused by the handshake
        with ControlClient(d["control"], timeout_s=1.0) as client:
            with pytest.raises(ExoacqError, match="no daemon answered .*CurveZMQ keys"):
                client.request("status")

        # the authorised operator: status and a short acquisition through the CLI (control and results)
        key_args = ["--control", d["control"], "--key", str(keys["alice"]), "--server-key", str(keys["server_key"])]
        status = json.loads(run_cli("status", "--json", *key_args).stdout)
        # a locate worker elsewhere joins with an authorised key; one without a key never does
        tracker = status["instruments"]["nta"]["service"]["tracker"]
        worker = [sys.executable, "-m", "exoacq", "worker", "--frames", tracker["frames"], "--features",
                  tracker["features"]]
        workers = [subprocess.Popen([*worker, "--key", str(keys["alice"]), "--server-key", str(keys["server_key"])]),
                   subprocess.Popen(worker)]
        # the tracking core's frame socket (on loopback) is a CURVE server too: a keyless PULL gets no frame
        thief = zmq.Context.instance().socket(zmq.PULL)
        thief.setsockopt(zmq.LINGER, 0)
        thief.connect(status["instruments"]["nta"]["service"]["tracker"]["frames"])
        subs["thief"] = thief
        assert status["security"]["curve"] and status["security"]["authorized_clients"] == ["alice"]
        assert status["security"]["refused_keys"] >= 1
        assert status["instruments"]["nta"]["state"] == "idle" and not laser_settings(status)["emission"]
        proc = run_cli("acquire", "nta", "--duration", "1", "--captures", "1", "--json", "--sample", "curve",
                       *key_args)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        time.sleep(0.3)
        assert _received(subs["alice"]) > 0
        assert _received(subs["mallory"]) == 0 and _received(subs["none"]) == 0 and _received(thief) == 0
        assert result["frames"]["processed"] > 0, result["frames"]  # the workers (the daemon's key) got them
        deadline = time.monotonic() + 30
        with ControlClient(d["control"], keys=d["alice"]) as client:
            while True:
                tracker = client.request("status")["instruments"]["nta"]["service"]["tracker"]
                if tracker["workers"]["ready"] > len(tracker["workers"]["local"]):
                    break
                assert time.monotonic() < deadline, tracker
                time.sleep(0.2)
        # the keyless worker, started at the same time, has had as long: it is not in
        assert tracker["workers"]["ready"] == len(tracker["workers"]["local"]) + 1, tracker
        assert "control: acquire from alice (key " in d["log"].read_text()  # logged with the identity
        assert result["run_id"]
        stdout, stderr = cli.communicate(timeout=30)  # the CLI with an unauthorised key: one line, exit 1
        assert cli.returncode == 1 and stderr.count("\n") == 1 and "refused this client's key" in stderr, stderr
    finally:
        for process in locals().get("workers", []):
            process.kill()  # the keyless one waits forever to say hello: SIGTERM would not end it
            process.wait(timeout=10)
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
        for sub in subs.values():
            sub.close(linger=0)


def _raw_request(d: dict, payload: bytes, timeout_s: float = 5.0) -> dict | None:
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    d["alice"].apply(dealer)
    dealer.connect(d["control"])
    try:
        dealer.send_multipart([b"", payload])
        return loads(dealer.recv_multipart()[-1]) if dealer.poll(int(timeout_s * 1000)) else None
    finally:
        dealer.close(linger=0)


def _padded(size: int) -> bytes:
    head, tail = b'{"command":"ping","pad":"', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_request_size_limit(secure_daemon):
    d = secure_daemon
    reply = _raw_request(d, _padded(MAX_REQUEST_BYTES - 1))  # every request up to 1 MiB gets a reply
    assert reply is not None and reply["ok"] is False and reply["error"]["code"] == "bad_request"
    reply = _raw_request(d, _padded(MAX_REQUEST_BYTES + 1))
    assert reply["error"]["code"] == "request_too_large"
    assert _raw_request(d, _padded(8 * MAX_REQUEST_BYTES), timeout_s=1.0) is None  # cut off by ZeroMQ
    with ControlClient(d["control"], keys=d["alice"]) as client:
        assert client.request("status")["security"]["oversize_requests"] == 1
    # the audit trail has both, with alice's key as the identity: the size and SHA-256, never the bytes
    entries = [json.loads(line) for line in (d["data_dir"] / "audit.jsonl").read_text().splitlines()]
    (too_large,) = [e for e in entries if e["kind"] == "control" and e["payload"]["command"] == "(too large)"]
    data = _padded(MAX_REQUEST_BYTES + 1)
    assert too_large["payload"]["request"] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert too_large["operator"] == "alice" and too_large["authenticated"] is True and too_large["key"]
    (ping,) = [e for e in entries if e["kind"] == "control" and e["payload"]["command"] == "ping"]  # refused unread
    data = _padded(MAX_REQUEST_BYTES - 1)
    assert ping["payload"] == {"command": "ping", "acts": False, "outcome": "error", "error": {"code": "bad_request"},
                               "request": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    assert ping["operator"] == "alice" and ping["authenticated"] is True


def test_schema_errors_are_clear_replies(secure_daemon):
    d = secure_daemon
    for request, code, text in (
            ({"command": "runs", "limit": "ten"}, "bad_request", "limit = 'ten': must be a whole number"),
            ({"command": "runs", "limit": 10**9}, "out_of_range", "limit = 1000000000: must be from 1"),
            ({"command": "preview", "on": "yes"}, "bad_request", "on = 'yes': must be true or false"),
            ({"command": "reprocess", "run_id": "x", "overrides": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}},
             "bad_request", "nested too deeply"),
            ({"command": "run", "run_id": "r" * 5000}, "bad_request", "a text of 5000 characters")):
        reply = _raw_request(d, dumps(request))
        assert reply["error"]["code"] == code and text in reply["error"]["message"], reply
    for raw in (b'{"command":"runs","limit":NaN}', b'{"command":"runs","limit":1e999}', b"[" * 100_000):
        reply = _raw_request(d, raw)
        assert reply["ok"] is False and reply["error"]["code"] in ("bad_json", "bad_request"), reply


def test_unauthenticated_client_cannot_act_while_off_host(keys):
    """A client that got in without a key (here over inproc, which has no handshake) may read but not act."""
    from exoacq.daemon import Daemon

    config = load_config(None, simulated=True)
    config.daemon.control = _off_host(free_tcp_endpoint())
    config.daemon.results, config.daemon.frames = free_tcp_endpoint(), free_tcp_endpoint()
    config.daemon.keys_dir = keys["dir"]
    daemon = Daemon(config)
    try:
        daemon.control.bind("inproc://test-control")
        dealer = daemon.ctx.socket(zmq.DEALER)
        dealer.connect("inproc://test-control")
        replies = {}
        for command in ("status", "preview", "set", "acquire", "stop"):
            dealer.send_multipart([b"", dumps({"command": command})])
            daemon._on_control(daemon.control.recv_multipart(copy=False))
            replies[command] = loads(dealer.recv_multipart()[-1])
        assert replies["status"]["ok"] and replies["status"]["result"]["security"]["refused_commands"] == 0
        for command in ("preview", "acquire", "stop"):
            assert replies[command]["error"]["code"] == "not_authorized", replies[command]
        assert replies["set"]["error"]["code"] == "bad_request"  # its parameters are checked first
        assert daemon.current_client is None
        dealer.close(linger=0)
    finally:
        daemon.security.stop()
        daemon.store.close()
        daemon.ctx.destroy(linger=0)
