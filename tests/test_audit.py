"""The audit trail (exoacq.audit): the hash chain, and a real daemon's log of a run and its approval."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from conftest import RunningDaemon
from exoacq.audit import (GENESIS, LARGE_TEXT_CHARS, SYNC_DELAY_S, AuditLog, pop_claimed_operator, summarise,
                          verify)
from exoacq.bus import ControlClient
from exoacq.client import follow_run
from exoacq.errors import ExoacqError, ProtocolError

LOCAL = {"operator": "local", "authenticated": False}


def write_log(path: Path, entries: int = 4) -> None:
    log = AuditLog(path)
    for i in range(entries):
        log.append("control", {"command": "set", "params": {"value": i, "text": "é∆"}}, LOCAL, f"run-{i}")
    log.close()


def line_of(data: bytes, offset: int) -> int:
    """The line number (from 1) that holds byte ``offset`` (its line end included)."""
    return data[:offset].count(b"\n") + 1


def cli(*args: str, operator: str | None = None) -> subprocess.CompletedProcess:
    """``exoacq ARGS`` in a process of its own, stating ``operator`` ($EXOACQ_OPERATOR)."""
    env = {**os.environ, **({"EXOACQ_OPERATOR": operator} if operator else {})}
    return subprocess.run([sys.executable, "-m", "exoacq", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def main(capsys, *args: str, operator: str | None = None) -> subprocess.CompletedProcess:
    """``exoacq ARGS`` in this process (exoacq.cli.main: the same code, without a second start-up)."""
    from exoacq.cli import main as exoacq_main
    saved = os.environ.get("EXOACQ_OPERATOR")
    os.environ["EXOACQ_OPERATOR"] = operator or "tester"
    try:
        capsys.readouterr()
        code = exoacq_main(list(args))
    finally:
        if saved is None:
            del os.environ["EXOACQ_OPERATOR"]
        else:
            os.environ["EXOACQ_OPERATOR"] = saved
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


# -- the chain ---------------------------------------------------------------------------------
def test_a_log_verifies_and_a_reopened_log_continues_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    write_log(path, 2)  # a restarted daemon: seq 4, 5 linked to seq 3
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev"] == GENESIS and entries[3]["prev"] == entries[2]["hash"]
    assert entries[1]["payload"]["params"]["text"] == "é∆"
    result = verify(path)
    assert result.ok and result.entries == 5 and result.segments == 1 and result.head == entries[-1]["hash"]


def test_every_changed_byte_is_detected_and_names_its_entry(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    original = path.read_bytes()
    for offset in range(len(original)):
        changed = bytearray(original)
        changed[offset] ^= 0x01
        path.write_bytes(bytes(changed))
        result = verify(path)
        assert not result.ok, f"byte {offset} changed, the log still verifies"
        assert result.problems[0][0] == line_of(original, offset), (offset, result.problems)


def test_a_deleted_line_and_a_truncated_last_line_are_detected(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, 4)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1] + lines[2:]))
    result = verify(path)
    assert not result.ok and result.problems[0][:2] == (2, 3) and "broken link" in result.problems[0][2]
    assert len(result.problems) == 1  # one removed entry is one problem, not all that follow

    path.write_bytes(b"".join(lines)[:-20])
    result = verify(path)
    assert not result.ok and result.problems[0][0] == 4
    assert "unparseable" in result.problems[0][2] or "incomplete" in result.problems[0][2]


def test_a_damaged_tail_is_logged_and_a_new_segment_records_the_break(tmp_path, caplog):
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    path.write_bytes(path.read_bytes()[:-30])  # a write torn by a power loss
    with caplog.at_level(logging.ERROR, logger="exoacq.audit"):
        write_log(path, 1)
    assert "AUDIT LOG DAMAGED" in caplog.text
    entries = [json.loads(line) for line in path.read_text().splitlines()[3:]]
    assert entries[0]["kind"] == "daemon" and entries[0]["payload"]["event"] == "new_segment"
    assert entries[0]["prev"] == GENESIS and entries[0]["seq"] == 3 and entries[0]["payload"]["after_seq"] == 2
    assert "incomplete" in entries[0]["payload"]["reason"]
    result = verify(path)
    assert not result.ok and result.problems[0][0] == 3  # the torn line, then the break the daemon recorded:
    assert result.problems[1][0] == 4 and "a new segment begins" in result.problems[1][2]  # never re-chained
    assert len(result.problems) == 2 and result.segments == 2  # and the new segment is checked


def test_entries_a_full_disk_refused_are_counted_in_a_new_segment(tmp_path, caplog):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append("daemon", {"event": "start"}, LOCAL)
    writable, log._fd = log._fd, os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    with caplog.at_level(logging.ERROR, logger="exoacq.audit"):
        assert log.append("state", {"state": "done"}, LOCAL, "r") is None
        assert log.append("result", {"version": 1}, LOCAL, "r") is None
    assert "No space left on device" in caplog.text
    os.close(log._fd)
    log._fd = writable
    assert log.append("approval", {"version": 1}, LOCAL, "r")["seq"] == 3
    log.close()
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["kind"] for e in entries] == ["daemon", "daemon", "approval"]
    assert entries[1]["payload"]["reason"] == "2 entries could not be written (No space left on device)"
    result = verify(path)
    assert [p[:2] for p in result.problems] == [(2, 2)] and "a new segment begins" in result.problems[0][2]


def test_read_only_entries_are_synced_by_the_next_acting_entry_or_within_a_second(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append("control", {"command": "status", "acts": False}, LOCAL, sync=False)
    log.append("control", {"command": "ping", "acts": False}, LOCAL, sync=False)
    assert synced == [] and len(path.read_bytes().splitlines()) == 2  # written at once, not synced yet
    log.flush_due()
    assert synced == []  # not due: the oldest unsynced entry is younger than SYNC_DELAY_S
    log.unsynced_since -= SYNC_DELAY_S  # as if a second had passed
    log.flush_due()
    assert len(synced) == 1 and log.unsynced_since is None
    log.flush_due()
    assert len(synced) == 1  # nothing left to sync: no fsync
    log.append("control", {"command": "status", "acts": False}, LOCAL, sync=False)
    log.append("control", {"command": "set", "acts": True}, LOCAL)  # an acting entry: fsync'ed, the one before too
    assert len(synced) == 2 and log.unsynced_since is None
    log.append("control", {"command": "runs", "acts": False}, LOCAL, sync=False)
    log.close()  # syncs what is left
    assert len(synced) == 3
    assert verify(path).ok and verify(path).entries == 5


def test_large_values_are_summarised_and_claimed_operators_checked():
    text = "x" * (1 << 20)
    summary = summarise({"sop": text, "short": "abc"})
    assert summary["short"] == "abc"
    assert summary["sop"] == {"summarised": "text", "chars": 1 << 20,
                              "sha256": hashlib.sha256(text.encode()).hexdigest()}
    assert summarise("y" * LARGE_TEXT_CHARS) == "y" * LARGE_TEXT_CHARS
    assert summarise(list(range(5000)))["summarised"] == "json"
    request = {"operator": "alice", "run_id": "r"}
    assert pop_claimed_operator(request) == "alice" and request == {"run_id": "r"}
    for bad in (7, "", "a\nb", " alice", "x" * 65):
        with pytest.raises(ProtocolError):
            pop_claimed_operator({"operator": bad})


def test_verify_says_so_when_there_is_no_log(tmp_path, capsys):
    proc = main(capsys, "audit", "verify", "--data-dir", str(tmp_path))
    assert proc.returncode == 1 and proc.stderr.startswith("exoacq: error: no audit log at ")
    with pytest.raises(ExoacqError):
        verify(tmp_path / "audit.jsonl")


# -- a real daemon ------------------------------------------------------------------------------
SOP = """
name = "audit test: one short capture, analysed and exported"
method = "nta"
# Long enough (> 256 characters) to be recorded as its length and SHA-256 rather than as text.

[[steps]]
step = "capture"
count = 1
duration_s = 1.0

[[steps]]
step = "analyse"

[[steps]]
step = "export"
"""


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A daemon, one short NTA run by 'alice' (a stated name), approved via the CLI by 'bob'."""
    tmp = tmp_path_factory.mktemp("audit")
    daemon = RunningDaemon(tmp)
    code = None
    try:
        with ControlClient(daemon.control) as client:
            client.operator = "alice"  # the name the client states (default: $EXOACQ_OPERATOR or the login name)
            result = follow_run(client, {"method": "nta", "sop": SOP, "sample": "audited"}, timeout_s=120)
        approved = cli("runs", "approve", result["run_id"], "--comment", "release batch 7", "--control",
                       daemon.control, operator="bob")
        yield daemon, result, approved
    finally:
        if daemon.process.poll() is None:
            code = daemon.stop()
    assert code == 0, daemon.log.read_text()
    assert "Traceback" not in daemon.log.read_text()


def entries_of(daemon: RunningDaemon) -> list[dict]:
    return [json.loads(line) for line in (daemon.data_dir / "audit.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_run_and_its_approval_are_in_the_audit_log_with_their_operators(audited):
    daemon, result, approved = audited
    run_id = result["run_id"]
    assert approved.returncode == 0, approved.stderr
    assert f"run {run_id}: result version 1 approved by local (not authenticated; says bob) at " in approved.stdout
    entries = [e for e in entries_of(daemon) if e["run_id"] == run_id]
    acquire = [e for e in entries if e["kind"] == "control" and e["payload"]["command"] == "acquire"]
    assert len(acquire) == 1 and acquire[0]["payload"]["outcome"] == "ok"
    assert acquire[0]["claimed_operator"] == "alice" and acquire[0]["operator"] == "local"
    assert acquire[0]["authenticated"] is False
    assert acquire[0]["payload"]["params"]["sop"]["summarised"] == "text"  # the SOP text: length + SHA-256
    states = [e["payload"]["state"] for e in entries if e["kind"] == "state"]
    assert [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]] == \
        ["queued", "preparing", "acquiring", "processing", "done"]
    assert all(e["claimed_operator"] == "alice" for e in entries if e["kind"] in ("state", "result"))
    stored = daemon.data_dir / "runs" / run_id / "result.json"
    (stored_result,) = [e for e in entries if e["kind"] == "result"]
    assert stored_result["payload"]["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    (approval,) = [e for e in entries if e["kind"] == "approval"]
    assert approval["claimed_operator"] == "bob" and approval["payload"]["comment"] == "release batch 7"
    assert approval["payload"]["version"] == 1
    assert [e["kind"] for e in entries].index("approval") > [e["kind"] for e in entries].index("result")


@pytest.mark.slow
def test_only_a_finished_run_is_approved_and_only_once_by_the_same_operator(audited, capsys):
    daemon, result, _ = audited
    again = main(capsys, "runs", "approve", result["run_id"], "--control", daemon.control, operator="bob")
    assert again.returncode == 1 and "approved by local (not authenticated; says bob) already" in again.stderr
    other = main(capsys, "runs", "approve", result["run_id"], "--control", daemon.control, operator="carol")
    assert other.returncode == 0, other.stderr
    with ControlClient(daemon.control) as client:
        queued = client.request("acquire", method="nta", duration_s=30.0, captures=1, sample="to abort")["run_id"]
        with pytest.raises(ExoacqError, match="only a finished run"):
            client.request("approve", run_id=queued)
        client.request("stop", run_id=queued)
        record = client.request("run", run_id=result["run_id"])
    assert [a["claimed_operator"] for a in record["approvals"]] == ["bob", "carol"]
    assert record["operator"]["claimed_operator"] == "alice"
    refused = [e for e in entries_of(daemon) if e["kind"] == "control" and e["payload"]["outcome"] == "error"
               and e["payload"]["command"] == "approve"]
    assert {e["payload"]["error"]["code"] for e in refused} == {"already_approved", "not_approvable"}
    shown = main(capsys, "runs", "show", result["run_id"], "--control", daemon.control)
    assert "Run by local (not authenticated; says alice)" in shown.stdout
    assert "Approved by local (not authenticated; says bob) at " in shown.stdout


@pytest.mark.slow
def test_the_reports_say_who_ran_the_run_and_who_approved_it(audited, tmp_path, capsys):
    daemon, result, _ = audited
    at_the_end = Path(result["files"]["report"]).read_text(encoding="utf-8")  # the SOP's export step
    assert "Run by local (not authenticated; says alice)" in at_the_end and "Not approved yet" in at_the_end
    exported = main(capsys, "export", "report", result["run_id"], "--output", str(tmp_path / "r.html"),
                    "--control", daemon.control)
    assert exported.returncode == 0, exported.stderr
    now = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Run by local (not authenticated; says alice)" in now and "Not approved yet" not in now
    assert "Approved by local (not authenticated; says bob) at " in now and "release batch 7" in now
    # an export never lands in the daemon's data directory (it once replaced a run's raw data and the audit log)
    audit_log = daemon.data_dir / "audit.jsonl"
    before = audit_log.read_bytes()
    for argv in (["report", result["run_id"], "--output", str(daemon.data_dir / "runs" / result["run_id"] / "x.html")],
                 ["bluesky", result["run_id"], "--output", str(audit_log)]):
        refused = main(capsys, "export", *argv, "--control", daemon.control)
        assert refused.returncode == 2 and "it is in the daemon's data directory" in refused.stderr, refused.stderr
    assert audit_log.read_bytes()[:len(before)] == before


@pytest.mark.slow
def test_the_daemons_log_verifies_and_a_flipped_byte_is_named(audited, tmp_path, capsys):
    daemon, result, _ = audited
    proc = main(capsys, "audit", "verify", "--data-dir", str(daemon.data_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"audit log {daemon.data_dir / 'audit.jsonl'}: the chain holds: ")
    data = (daemon.data_dir / "audit.jsonl").read_bytes()
    middle = len(data) // 2
    changed = bytearray(data)
    changed[middle] ^= 0x01
    (tmp_path / "audit.jsonl").write_bytes(bytes(changed))
    line = line_of(data, middle)
    seq = json.loads(data.splitlines()[line - 1])["seq"]
    proc = cli("audit", "verify", "--data-dir", str(tmp_path))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("exoacq: error: audit log ") and f": line {line} (seq {seq}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

    shown = main(capsys, "audit", "show", "--data-dir", str(daemon.data_dir), "--run", result["run_id"], "--last", "3")
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 3


@pytest.mark.slow
def test_read_only_and_refused_requests_are_recorded_with_the_identity_not_the_reply(audited, capsys):
    daemon, result, _ = audited
    with ControlClient(daemon.control) as client:
        client.operator = "dave"
        client.request("status")
        after_status = entries_of(daemon)  # written before the reply was sent
        with pytest.raises(ExoacqError):
            client.request("no_such_command", x=1)
        with pytest.raises(ExoacqError):
            client.request("run", run_id="r" * 300)  # no run's id: summarised, not the entry's run_id
    garbage = b"\xff{not json" + bytes(range(256))
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.DEALER) as raw:
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(daemon.control)
        raw.send_multipart([b"", garbage])
        assert raw.poll(10_000), "no reply to a request that is not JSON"
        assert json.loads(raw.recv_multipart()[-1])["error"]["code"] == "bad_json"
    entries = entries_of(daemon)

    status = after_status[-1]
    assert status["kind"] == "control" and status["payload"]["command"] == "status"
    assert status["claimed_operator"] == "dave" and status["operator"] == "local" and status["authenticated"] is False
    assert status["payload"] == {"command": "status", "params": {}, "acts": False, "outcome": "ok"}  # no reply
    unknown = next(e for e in entries if e["kind"] == "control" and e["payload"]["command"] == "no_such_command")
    assert unknown["payload"] == {"command": "no_such_command", "params": {"x": 1}, "acts": False,
                                  "outcome": "error", "error": {"code": "unknown_command"}}
    assert unknown["claimed_operator"] == "dave"
    long_id = next(e for e in entries if e["kind"] == "control" and e["payload"]["command"] == "run"
                   and isinstance(e["payload"]["params"]["run_id"], dict))
    assert long_id["run_id"] is None and long_id["payload"]["params"]["run_id"]["chars"] == 300
    assert long_id["payload"]["outcome"] == "error" and "message" not in long_id["payload"]["error"]
    malformed = entries[-1]
    assert malformed["payload"] == {"command": "(not JSON)", "acts": False, "outcome": "error",
                                    "error": {"code": "bad_json"},
                                    "request": {"bytes": len(garbage), "sha256": hashlib.sha256(garbage).hexdigest()}}
    assert malformed["operator"] == "local" and malformed["authenticated"] is False
    acquire = next(e for e in entries if e["kind"] == "control" and e["payload"]["command"] == "acquire")
    assert acquire["payload"]["acts"] is True and "reply" in acquire["payload"]
    assert verify(daemon.data_dir / "audit.jsonl").ok

    everything = main(capsys, "audit", "show", "--data-dir", str(daemon.data_dir))
    assert " status -> ok" in everything.stdout and f"(not JSON) <{len(garbage)} bytes, sha256 " in everything.stdout
    acting = main(capsys, "audit", "show", "--data-dir", str(daemon.data_dir), "--acting")
    assert acting.returncode == 0 and " acquire " in acting.stdout and " approval " in acting.stdout
    for hidden in (" status ", " run run_id=", "(not JSON)", "no_such_command"):
        assert hidden not in acting.stdout
    # the fixture's last run may still be writing its state and result entries: count before and after
    acting_entries = lambda es: sum(1 for e in es if e["kind"] != "control" or e["payload"]["acts"])
    assert acting_entries(entries) <= len(acting.stdout.splitlines()) <= acting_entries(entries_of(daemon))
