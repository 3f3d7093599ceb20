"""`exoacq web`'s JSON API, WebSockets and logins, against a real daemon (simulated instruments) and a
real `exoacq web` process, over HTTP(S) with httpx and the `websockets` client."""
from __future__ import annotations

import asyncio
import threading
import json
import select
import signal
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets

from exoacq.bus import ControlClient
from exoacq.errors import ExoacqError

pytestmark = pytest.mark.slow

CONSOLE_OPERATOR = "console-test"

def run_async(coroutine):
    """asyncio.run in a thread of its own: the suite's other files (Playwright's synchronous API) may leave
    an event loop running in this thread, and asyncio.run refuses to start inside one."""
    outcome = {}

    def target():
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]



def start_web(control: str, tmp: Path, *extra: str, listen: str = "127.0.0.1:0") -> tuple[subprocess.Popen, str]:
    """`exoacq web` on a free port; its process and the URL it prints when it serves."""
    command = [sys.executable, "-m", "exoacq", "web", "--listen", listen, "--control", control,
               "--data-dir", str(tmp / "web-data"), *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([process.stdout], [], [], 30.0)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("exoacq web: open "):
        process.kill()
        raise AssertionError(f"`exoacq web` did not start: {line!r} {process.communicate()[1]}")
    url = line.split()[3].rstrip("/")
    port = url.rsplit(":", 1)[1]
    return process, f"{url.split('://')[0]}://127.0.0.1:{port}"


def stop_web(process: subprocess.Popen) -> tuple[int, float, str]:
    """SIGTERM; the exit code, the seconds it took and stderr."""
    t0 = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return process.returncode, time.monotonic() - t0, stderr


@pytest.fixture(scope="module")
def web(daemon, tmp_path_factory):
    process, base = start_web(daemon.control, tmp_path_factory.mktemp("web"), "--operator", CONSOLE_OPERATOR)
    with httpx.Client(base_url=base, timeout=30) as client:
        yield client
    code, seconds, stderr = stop_web(process)
    assert code == 0 and seconds < 5, (code, seconds, stderr)
    assert "Traceback" not in stderr, stderr


def audit_entries(daemon) -> list[dict]:
    return [json.loads(line) for line in (daemon.data_dir / "audit.jsonl").read_text().splitlines()]


def test_status_is_the_daemons(web, daemon):
    reply = web.get("/api/status")
    assert reply.status_code == 200 and reply.json()["ok"]
    status = reply.json()["result"]
    with ControlClient(daemon.control) as client:
        direct = client.request("status")
    assert status["pid"] == direct["pid"] and status["data_dir"] == direct["data_dir"]
    assert set(status["instruments"]) == set(direct["instruments"]) and "nta" in status["instruments"]
    assert web.get("/api/me").json()["result"] == {"operator": CONSOLE_OPERATOR, "login_required": False}
    missing = web.get("/api/no-such-route")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("field, text, value", [("dilution", "0", 0), ("captures", "five", "five"),
                                                 ("duration_s", "-2", -2)])
def test_bad_form_input_gets_the_control_sockets_code_and_message(web, daemon, field, text, value):
    with ControlClient(daemon.control) as client, pytest.raises(ExoacqError) as direct:
        client.request("acquire", **{field: value})
    reply = web.post("/api/acquire", data={field: text, "sample": "bad input", "instrument": ""})
    assert reply.status_code == 400
    assert reply.json() == {"ok": False, "error": {"code": direct.value.code, "message": str(direct.value)}}


def test_a_sop_file_that_is_not_utf8_is_named(web):
    reply = web.post("/api/acquire", data={"sample": "x"}, files={"sop": ("old.txt", b"captures = 2 \xff\xfe\n")})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "bad_request" and "old.txt" in error["message"] and "UTF-8" in error["message"]


def test_unknown_run_is_404_with_the_daemons_message(web):
    reply = web.get("/api/runs/nta-19990101-000000-0000")
    assert reply.status_code == 404
    assert reply.json()["error"] == {"code": "unknown_run", "message": "no run with id 'nta-19990101-000000-0000'"}


async def _live_frames(base: str, instrument: str, count: int) -> list[tuple[dict, bytes]]:
    frames = []
    async with websockets.connect(base.replace("http", "ws") + f"/ws/live/{instrument}?max_width=320") as ws:
        for _ in range(count):
            await ws.send("next")
            message = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(message, bytes)
            (length,) = struct.unpack(">I", message[:4])
            frames.append((json.loads(message[4:4 + length]), message[4 + length:]))
    return frames


def test_live_view_in_preview_sends_one_jpeg_per_next(web):
    reply = web.post("/api/preview", data={"instrument": "nta", "on": "true"})
    assert reply.status_code == 200, reply.text
    try:
        frames = run_async(_live_frames(str(web.base_url), "nta", 3))
    finally:
        assert web.post("/api/preview", json={"instrument": "nta", "on": False}).json()["result"]["preview"] is False
    seqs = [header["seq"] for header, _ in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    for header, jpeg in frames:
        assert jpeg[:3] == b"\xff\xd8\xff" and jpeg[-2:] == b"\xff\xd9"
        assert header["instrument"] == "nta" and header["preview"] is True and header["run_id"] is None
        rows, columns = header["shape"]
        binning = round(1 / header["scale"])
        assert header["display_shape"] == [rows // binning, columns // binning] and columns // binning <= 320
        assert header["count"] == len(header["features"]["x"]) and header["sent"] >= header["encoded"]
        assert 0 < header["sent"] - header["timestamp"] < 5
    unknown = run_async(_first_message(str(web.base_url) + "/ws/live/no-such-instrument"))
    assert json.loads(unknown)["error"]["code"] == "unknown_instrument"


async def _first_message(url: str, origin: str | None = None) -> str:
    async with websockets.connect(url.replace("http", "ws"), origin=origin) as ws:
        return await asyncio.wait_for(ws.recv(), 10)


async def _collect_events(base: str, stop: asyncio.Event, out: list[dict]) -> None:
    async with websockets.connect(base.replace("http", "ws") + "/ws/events") as ws:
        while not stop.is_set():
            try:
                out.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
            except asyncio.TimeoutError:
                pass


def test_an_acquisition_its_headline_its_files_and_its_events(web, daemon):
    async def scenario() -> tuple[str, list[dict]]:
        events: list[dict] = []
        stop = asyncio.Event()
        collector = asyncio.ensure_future(_collect_events(str(web.base_url), stop, events))
        await asyncio.sleep(1.0)  # the subscription is made
        async with httpx.AsyncClient(base_url=web.base_url, timeout=30) as client:
            reply = await client.post("/api/acquire", data={"method": "nta", "sample": "API test 42",
                                                            "dilution": "10", "captures": "1", "duration_s": "2"},
                                      files={"sop": ("", b"")})  # a file input left empty
            assert reply.status_code == 200, reply.text
            run_id = reply.json()["result"]["run_id"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if any(e["topic"] == "run.state" and e["doc"]["run_id"] == run_id and e["doc"]["state"] == "done"
                       for e in events):
                    break
                await asyncio.sleep(0.2)
        stop.set()
        await collector
        return run_id, events

    run_id, events = run_async(scenario())
    assert events[0]["topic"] == "snapshot" and set(events[0]["doc"]) == {"progress", "states", "heartbeat"}
    states = [e["doc"]["state"] for e in events if e["topic"] == "run.state" and e["doc"]["run_id"] == run_id]
    assert states[-1] == "done" and "acquiring" in states
    assert any(e["topic"] == "nta.result" and e["doc"]["run_id"] == run_id for e in events)

    record = web.get(f"/api/runs/{run_id}").json()["result"]
    result = record["result"]
    assert record["state"] == "done" and record["sample"] == "API test 42"
    assert record["settings"]["dilution"] == 10 and record["settings"]["captures"] == 1
    assert record["headline"]["size_mean_nm"] == result["size_nm"]["mean"] and 50 < result["size_nm"]["mean"] < 200
    assert record["headline"]["concentration_per_ml"] == result["concentration_per_ml"]
    assert record["operator"]["claimed_operator"] == CONSOLE_OPERATOR

    listed = web.get("/api/runs", params={"sample": "api TEST", "method": "nta", "state": "done"}).json()["result"]
    assert [r["run_id"] for r in listed] == [run_id] and listed[0]["headline"] == record["headline"]
    assert web.get("/api/runs", params={"sample": "api test", "method": "dls"}).json()["result"] == []
    samples = {s["sample"]: s for s in web.get("/api/samples").json()["result"]}
    assert samples["API test 42"]["runs"] == 1 and samples["API test 42"]["methods"] == ["nta"]

    files = {f["path"]: f for f in record["files"]}
    folder = Path(record["directory"])
    assert folder.is_relative_to(daemon.data_dir)
    for name in ("result.json", "tracks.csv", "video.zst"):
        on_disk = (folder / name).read_bytes()
        assert files[name]["bytes"] == len(on_disk)
        reply = web.get(f"/api/runs/{run_id}/files/{name}")
        assert reply.status_code == 200 and reply.content == on_disk
        assert reply.headers["content-disposition"].startswith(f'attachment; filename="{name}"')
    assert json.loads(web.get(f"/api/runs/{run_id}/files/result.json").content) == result
    assert web.get(f"/api/runs/{run_id}/files/result.json").headers["content-type"] == "application/json"
    missing = web.get(f"/api/runs/{run_id}/files/no-such.csv")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_file"
    outside = web.get(f"/api/runs/{run_id}/files/..%2F..%2Faudit.jsonl")
    assert outside.status_code == 400 and outside.json()["error"]["code"] == "bad_request"

    for path in ("/", "/live/nta", "/acquire", "/runs", f"/runs/{run_id}", "/samples"):
        page = web.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        assert CONSOLE_OPERATOR in page.text, path
    report = web.get("/samples/API test 42/report", params={"runs": run_id})
    assert report.status_code == 200 and "API test 42" in report.text and run_id in report.text
    other = web.get("/samples/another sample/report", params={"runs": run_id})
    assert other.status_code == 400 and "API test 42" in other.text


def test_other_sites_are_refused(web):
    """A page on another site cannot drive the console (CSRF), nor reach it by a name of its own (DNS rebinding)."""
    forged = web.post("/api/preview", json={"instrument": "nta", "on": True}, headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "cross_origin"
    rebound = web.get("/api/status", headers={"Host": "evil.example:8080"})
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "bad_host"
    own = web.post("/api/stop", json={"instrument": "nta"}, headers={"Origin": str(web.base_url)})
    assert own.status_code == 400 and own.json()["error"]["code"] == "no_run"  # through to the daemon
    with pytest.raises(websockets.InvalidStatus) as refused:
        run_async(_first_message(str(web.base_url) + "/ws/events", origin="http://evil.example"))
    assert refused.value.response.status_code == 403


def test_off_loopback_without_logins_and_tls_is_refused_in_one_line(daemon):
    result = subprocess.run([sys.executable, "-m", "exoacq", "web", "--listen", "0.0.0.0:0", "--control",
                             daemon.control], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("exoacq: error: --listen 0.0.0.0:0 is reachable off this host")


@pytest.fixture(scope="module")
def tls_web(daemon, tmp_path_factory):
    """`exoacq web` on all interfaces with an operators file (alice: password; robot: token) and a
    self-signed certificate."""
    tmp = tmp_path_factory.mktemp("tls-web")
    subprocess.run(["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")], check=True, capture_output=True)
    operators = tmp / "operators.toml"
    added = subprocess.run([sys.executable, "-m", "exoacq", "web-operators", "add", "alice", "--password-stdin",
                            "--file", str(operators)], input="correct horse\n", capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    added = subprocess.run([sys.executable, "-m", "exoacq", "web-operators", "add", "robot", "--token",
                            "--file", str(operators)], capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    token = added.stdout.splitlines()[-1]
    assert operators.stat().st_mode & 0o777 == 0o600 and token not in operators.read_text()
    process, base = start_web(daemon.control, tmp, "--operators", str(operators), "--tls-cert", str(tmp / "cert.pem"),
                              "--tls-key", str(tmp / "key.pem"), listen="0.0.0.0:0")
    assert base.startswith("https://")
    yield base, token, tmp / "cert.pem"
    code, seconds, stderr = stop_web(process)
    assert code == 0 and seconds < 5, (code, seconds, stderr)
    assert "Traceback" not in stderr and "failed login as 'alice'" in stderr, stderr


def test_login_is_required_off_loopback(tls_web, daemon):
    base, token, cert = tls_web
    with httpx.Client(base_url=base, verify=ssl.create_default_context(cafile=str(cert)), timeout=30) as anonymous:
        reply = anonymous.get("/api/status")
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "not_logged_in"
        page = anonymous.get("/runs?sample=x")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fruns%3Fsample%3Dx"
        assert anonymous.get("/login").status_code == 200
        assert anonymous.get("/api/status", headers={"Authorization": "Bearer " + token}).status_code == 200
        t0 = time.monotonic()
        assert anonymous.get("/api/status", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert time.monotonic() - t0 >= 0.9  # failed attempts are slowed down
    context = ssl.create_default_context(cafile=str(cert))
    with pytest.raises(websockets.InvalidStatus) as refused:
        run_async(_first_message_tls(base + "/ws/events", context, {}))
    assert refused.value.response.status_code == 401
    snapshot = run_async(_first_message_tls(base + "/ws/events", context, {"Authorization": "Bearer " + token}))
    assert json.loads(snapshot)["topic"] == "snapshot"

    with httpx.Client(base_url=base, verify=ssl.create_default_context(cafile=str(cert)), timeout=30) as browser:
        t0 = time.monotonic()
        wrong = browser.post("/login", data={"name": "alice", "password": "wrong horse"})
        assert wrong.status_code == 401 and time.monotonic() - t0 >= 0.9 and "exoacq_session" not in browser.cookies
        login = browser.post("/login", data={"name": "alice", "password": "correct horse", "next": "/acquire"})
        assert login.status_code == 303 and login.headers["location"] == "/acquire"
        cookie = login.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert browser.get("/api/me").json()["result"] == {"operator": "alice", "login_required": True}
        started = browser.post("/api/acquire", json={"sample": "alice's sample", "captures": 1, "duration_s": 30})
        assert started.status_code == 200, started.text
        run_id = started.json()["result"]["run_id"]
        stopped = browser.post("/api/stop", data={"run_id": run_id})
        assert stopped.status_code == 200 and stopped.json()["result"]["run_id"] == run_id
        assert browser.post("/logout").status_code == 303
        assert browser.get("/api/me").status_code == 401

    acquire = [e for e in audit_entries(daemon) if e["kind"] == "control" and e["payload"].get("command") == "acquire"
               and (e["payload"].get("reply") or {}).get("run_id") == run_id]
    assert len(acquire) == 1
    assert acquire[0]["claimed_operator"] == "alice" and acquire[0]["operator"] == "local"
    stop = [e for e in audit_entries(daemon) if e["kind"] == "control" and e["payload"].get("command") == "stop"
            and e["run_id"] == run_id]
    assert stop and stop[-1]["claimed_operator"] == "alice"


async def _first_message_tls(url: str, context: ssl.SSLContext, headers: dict) -> str:
    async with websockets.connect(url.replace("https", "wss"), ssl=context, additional_headers=headers) as ws:
        return await asyncio.wait_for(ws.recv(), 10)


def test_the_console_talks_to_a_keyed_daemon_with_its_own_key(tmp_path):
    """A daemon reachable off its host (CurveZMQ): the console connects with its own key, which the
    audit trail records as the identity; the person is the claimed operator."""
    from exoacq.demo import free_tcp_endpoint, stop_daemon
    from exoacq.security import load_client_keys

    keys = tmp_path / "keys"
    for argv in (["init"], ["add", "web-console"]):
        made = subprocess.run([sys.executable, "-m", "exoacq", "keys", "--dir", str(keys), *argv],
                              capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
    secret, server_key = keys / "clients" / "web-console.key_secret", keys / "server.key"
    control = free_tcp_endpoint()
    off_host = [e.replace("tcp://127.0.0.1:", "tcp://0.0.0.0:") for e in (control, free_tcp_endpoint())]
    with open(tmp_path / "daemon.log", "wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "exoacq", "daemon", "--simulated", "--data-dir",
                                   str(tmp_path / "data"), "--keys-dir", str(keys), "--control", off_host[0],
                                   "--results", off_host[1], "--frames", free_tcp_endpoint(), "--metrics", "off"],
                                  stdout=log, stderr=subprocess.STDOUT)
    web_process = None
    try:
        deadline = time.monotonic() + 90
        with ControlClient(control, timeout_s=1.0, keys=load_client_keys(secret, server_key)) as client:
            while True:
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
                try:
                    if client.request("status")["ready"]:
                        break
                except ExoacqError:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.2)
        web_process, base = start_web(control, tmp_path, "--key", str(secret), "--server-key", str(server_key),
                                      "--operator", "bob")
        with httpx.Client(base_url=base, timeout=30) as web:
            status = web.get("/api/status").json()["result"]
            assert status["security"]["curve"] is True
            assert web.post("/api/preview", data={"instrument": "nta", "on": "true"}).status_code == 200
            assert web.post("/api/preview", data={"instrument": "nta", "on": "false"}).status_code == 200
    finally:
        if web_process is not None:
            code, _, stderr = stop_web(web_process)
            assert code == 0, stderr
        assert stop_daemon(daemon) == 0
    entries = [json.loads(line) for line in (tmp_path / "data" / "audit.jsonl").read_text().splitlines()]
    previews = [e for e in entries if e["kind"] == "control" and e["payload"].get("command") == "preview"]
    assert len(previews) == 2
    for entry in previews:
        assert entry["operator"] == "web-console" and entry["authenticated"] is True
        assert entry["claimed_operator"] == "bob" and entry["payload"]["outcome"] == "ok"
