"""``exoacq audit verify|show`` (offline: they read ``<data_dir>/audit.jsonl``, no daemon needed)
and ``exoacq runs approve RUN_ID`` (a request to the daemon)."""
from __future__ import annotations

import argparse
import json
from collections import deque
from pathlib import Path
from typing import Any

from exoacq.audit import AUDIT_FILE, acts, format_entry, read_entries, signature_lines, verify
from exoacq.cli_common import positive_int
from exoacq.errors import ExoacqError


def add_audit_verbs(sub: Any, parser_class: type) -> None:
    """The ``audit`` verb and its actions, on the top-level sub-parsers."""
    p = sub.add_parser("audit", help="the audit trail: who did what (hash-chained log in the data directory)")
    audit = p.add_subparsers(dest="what", required=True, metavar="ACTION", parser_class=parser_class)
    p = audit.add_parser("verify", help="check the hash chain of the audit log: exit 0 and a summary when it "
                                        "holds, else name the first bad entry (line and seq)")
    _data_dir_options(p)
    p.set_defaults(func=cmd_audit_verify)
    p = audit.add_parser("show", help="list audit log entries (not a check: `audit verify` is)")
    _data_dir_options(p)
    p.add_argument("--run", dest="run_id", metavar="ID", help="only the entries of this run")
    p.add_argument("--acting", action="store_true",
                   help="hide the requests that could change nothing (read-only commands such as status, and "
                        "refused requests: not JSON, too large, unknown command)")
    p.add_argument("--last", type=positive_int, metavar="N", help="only the last N entries (after --run and --acting)")
    p.add_argument("--json", action="store_true", help="the entries as JSON lines, exactly as stored")
    p.set_defaults(func=cmd_audit_show)


def _data_dir_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="the daemon's data directory (default: the one of --config, "
                                                 "else the daemon's default)")
    p.add_argument("--config", type=Path, help="the daemon's configuration file (for its data directory)")


def audit_path(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return args.data_dir / AUDIT_FILE
    from exoacq.config import DaemonConfig, load_config
    daemon = load_config(args.config).daemon if args.config is not None else DaemonConfig()
    return daemon.resolved_data_dir() / AUDIT_FILE


def cmd_audit_verify(args: argparse.Namespace) -> int:
    result = _read(audit_path(args), verify)
    if not result.ok:
        raise ExoacqError(result.summary(), code="audit_broken")
    print(result.summary())
    return 0


def cmd_audit_show(args: argparse.Namespace) -> int:
    if args.last is not None and args.last < 1:
        raise ExoacqError(f"--last {args.last}: must be 1 or more", code="usage")
    path = audit_path(args)
    if not path.exists():
        raise ExoacqError(f"no audit log at {path} (has a daemon run with this --data-dir?)", code="no_audit_log")

    def wanted(rows: Any) -> Any:
        for number, entry in rows:
            if args.run_id is not None and (entry is None or entry.get("run_id") != args.run_id):
                continue
            if args.acting and entry is not None and not acts(entry):
                continue
            yield number, entry

    # streamed, only the last N kept: a log with every status request of months can be large
    rows = _read(path, lambda p: deque(wanted(read_entries(p)), maxlen=args.last))
    for number, entry in rows:
        if entry is None:
            print(f"line {number}: unparseable (see `exoacq audit verify`)")
        else:
            print(json.dumps(entry, sort_keys=True) if args.json else format_entry(entry))
    return 0


def _read(path: Path, reader: Any) -> Any:
    try:
        return reader(path)
    except OSError as exc:
        raise ExoacqError(f"cannot read the audit log {path}: {exc.strerror or exc}") from None


def approve(client: Any, args: argparse.Namespace) -> int:
    """``exoacq runs approve RUN_ID [--comment TEXT]``: the run's current result version."""
    if getattr(args, "pick", None) is not None or getattr(args, "show_version", None) is not None:
        raise ExoacqError("`exoacq runs approve` approves the run's current result version and takes no version "
                          "number: make another version current first (`exoacq runs pick RUN_ID N`)", code="usage")
    params: dict[str, Any] = {"run_id": args.run_id}
    if args.comment is not None:
        params["comment"] = args.comment
    reply = client.request("approve", **params)
    if args.json:
        print(json.dumps(reply))
        return 0
    print(f"run {reply['run_id']}: result version {reply['version']} approved by {reply['approved_by']} "
          f"at {reply['time']}")
    return 0


def print_signatures(record: dict[str, Any]) -> None:
    """Who ran a stored run and who approved it, as ``runs show`` prints them."""
    for line in signature_lines(record):
        print(f"  {line}")

