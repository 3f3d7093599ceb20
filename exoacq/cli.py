"""The ``exoacq`` command line: daemon, clients, simulators and the demo.

The core verbs are here; each method plugin adds its own under ``acquire``,
``analyze``, ``calibrate``, ``simulate`` and ``bench`` (``exoacq acquire
nta``). Every failure the operator can act on ends as one line on stderr,
``exoacq: error: ...``, and a non-zero exit status; never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from exoacq import __version__
from exoacq.cli_common import add_control, finite_float, positive_float, positive_int, refuse_data_dir_output
from exoacq.errors import ConfigError, ExoacqError

#: Verbs whose sub-commands the methods supply.
METHOD_VERBS = {
    "acquire": "run an acquisition on the daemon and print its result",
    "analyze": "analyse recorded data offline (same code as the daemon)",
    "calibrate": "measure a calibration from a standard",
    "simulate": "write test data from a simulated instrument",
    "bench": "benchmarks, exoacq and its baseline side by side (JSON)",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"exoacq: error: {message} (see `{self.prog} --help`)\n")


def build_parser(registry: Any = None) -> argparse.ArgumentParser:
    from exoacq.registry import installed

    parser = _Parser(prog="exoacq", description="Acquisition daemon and clients for EV characterization.")
    parser.add_argument("--version", action="version", version=f"exoacq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("daemon", help="run the acquisition daemon")
    p.add_argument("--config", type=Path, help="configuration file (TOML); see `exoacq config example`")
    p.add_argument("--simulated", action="store_true",
                   help="simulated instruments: with --config, every device's simulated twin; alone, one "
                        "simulated instrument per installed method")
    p.add_argument("--data-dir", type=Path, help="where runs are stored (overrides the file)")
    p.add_argument("--control", help="control endpoint (overrides the file)")
    p.add_argument("--results", help="results endpoint (overrides the file)")
    p.add_argument("--frames", help="live frames endpoint (overrides the file)")
    p.add_argument("--keys-dir", type=Path, help="CurveZMQ keys, needed when an endpoint is reachable off this host "
                                                 "(overrides the file; default ~/.config/exoacq/keys)")
    p.add_argument("--metrics", metavar="HOST:PORT|off",
                   help="Prometheus endpoint (overrides the file; default 127.0.0.1:9464; port 0: any free port)")
    p.add_argument("--metrics-allow-remote", action="store_true", default=None,
                   help="allow a metrics address off loopback (it has no authentication)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_daemon)

    verbs: dict[str, Any] = {"exoacq": sub}
    for verb, text in METHOD_VERBS.items():
        p = sub.add_parser(verb, help=text)
        metavar = {"bench": "BENCHMARK", "simulate": "WHAT"}.get(verb, "METHOD")
        verbs[verb] = p.add_subparsers(dest="what", required=True, metavar=metavar, parser_class=_Parser)

    p = add_control(sub.add_parser("status", help="daemon, methods, instruments and their devices, runs"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = add_control(sub.add_parser("watch", help="print published documents as JSON lines (missed documents, "
                                             "a restarted or vanished daemon: on stderr)"))
    p.add_argument("topics", nargs="*", metavar="TOPIC", help="topics (prefixes) to show; default all")
    p.add_argument("--count", type=positive_int, default=None, help="exit after this many documents")
    p.set_defaults(func=cmd_watch)

    p = add_control(sub.add_parser("stop", help="abort the running run (the only one, or the one named)"))
    p.add_argument("--run-id", help="abort this run (queued or current)")
    p.add_argument("--instrument", help="abort the run on this instrument")
    p.set_defaults(func=cmd_stop)

    p = add_control(sub.add_parser("runs", help="list past runs; `runs show ID` (its result versions too); "
                                                "`runs pick ID N` (which version is the run's result); "
                                                "`runs approve ID` (approve a finished run)"))
    p.add_argument("action", nargs="?", choices=["show", "pick", "approve"],
                   help="show one run, pick its result version, or approve it (recorded with your identity)")
    p.add_argument("run_id", nargs="?", help="run id for `show`, `pick` and `approve`")
    p.add_argument("--comment", help="`approve`: a comment kept with the approval")
    p.add_argument("pick", nargs="?", metavar="N", help="`pick`: the version number, or `newest`")
    p.add_argument("--version", dest="show_version", type=int, metavar="N",
                   help="`show`: this result version instead of the run's result")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=50)
    # A method may add its own listing (an option and a view(client, args) -> exit status): ``verbs["runs"]``.
    p.set_defaults(func=cmd_runs, views=[])
    verbs["runs"] = p

    p = add_control(sub.add_parser("reprocess", help="analyse a stored run's raw data again with other analysis "
                                                     "settings: a new result version, the earlier ones kept"))
    p.add_argument("run_id")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an analysis setting to change, e.g. --set minmass=300 (repeat for several; NTA: "
                        "minmass, min_track_length, feature_diameter_px, search_range_px, min_diameter_nm, "
                        "detector, calibration, detection_volume_nl)")
    p.add_argument("--reason", help="why (kept with the version), e.g. 'new calibration 2026-12'")
    p.add_argument("--json", action="store_true", help="print the new version's result document alone on stdout")
    p.set_defaults(func=cmd_reprocess)

    p = add_control(sub.add_parser("preview", help="live mode on an instrument: light on, frames and features "
                                                   "published, nothing recorded"))
    p.add_argument("state", choices=["on", "off"])
    p.add_argument("--instrument", help="default: the only instrument")
    p.set_defaults(func=cmd_preview)

    p = add_control(sub.add_parser("set", help="change a device setting (exposure, gain, laser power, pump flow, "
                                               "set temperature) within its range; `exoacq settings` lists them"))
    p.add_argument("device", help="the device's role in the instrument (laser, camera, pump, temperature)")
    p.add_argument("setting", help="e.g. power_mw, exposure_ms, rate_ul_min, setpoint_c")
    p.add_argument("value", type=finite_float)
    p.add_argument("--instrument", help="default: the only instrument")
    p.set_defaults(func=cmd_set)

    p = add_control(sub.add_parser("settings", help="the settable device settings with values, units and ranges"))
    p.add_argument("--instrument", help="default: the only instrument")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser("export", help="a run's documents in a standard form")
    export = p.add_subparsers(dest="what", required=True, metavar="FORMAT", parser_class=_Parser)
    p = add_control(export.add_parser("bluesky", help="the run as bluesky event-model documents (JSONL: one "
                                                       "[name, doc] pair per line)"))
    p.add_argument("run_id")
    p.add_argument("--output", type=Path, help="write here (default: stdout)")
    p.set_defaults(func=cmd_export_bluesky)
    verbs["export"] = export  # methods add their own formats (NTA: `export report`)

    from exoacq.audit_cli import add_audit_verbs
    add_audit_verbs(sub, _Parser)  # exoacq audit verify|show

    p = sub.add_parser("config", help="configuration helpers")
    p.add_argument("action", choices=["example", "check"], help="print a commented example, or check a file")
    p.add_argument("file", nargs="?", type=Path, help="file to check")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("sim", help="hardware simulators for other programs (vendor tools, scripts)")
    sim = p.add_subparsers(dest="what", required=True, metavar="ACTION", parser_class=_Parser)
    p = sim.add_parser("serve", help="serve simulated devices on real transports until stopped; one JSON line "
                                     "per simulator (name, driver, kind, port) first")
    p.add_argument("--config", type=Path, help="serve the simulated twins of this configuration's devices "
                                               "(default: one of each driver that has a simulator)")
    p.set_defaults(func=cmd_sim_serve)

    from exoacq.keys_cli import add_keys_parser
    add_keys_parser(sub)  # exoacq keys init|add|list: CurveZMQ keys for a daemon reachable off its host

    from exoacq.web.cli import add_web_verbs
    add_web_verbs(sub, _Parser)  # exoacq web (the console in the browser), exoacq web-operators add|list|remove

    p = sub.add_parser("laser", help="laser safety: switch every configured laser off (systemd ExecStopPost)")
    p.add_argument("state", choices=["off"])
    p.add_argument("--config", type=Path, required=True, help="the daemon's configuration")
    p.set_defaults(func=cmd_laser_off)

    p = sub.add_parser("demo", help="simulated instruments, a short acquisition of 100 nm particles, a result table")
    p.add_argument("--duration", type=positive_float, default=30.0, help="seconds of video (default %(default)s)")
    p.set_defaults(func=cmd_demo)

    registry = registry or installed()
    for name, method in sorted(registry.methods.items()):
        method.add_cli(verbs)
    return parser


#: Exit status of an unexpected exception (sysexits.h EX_SOFTWARE: an internal software error).
EX_SOFTWARE = 70


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ExoacqError as exc:
        for line in str(exc).splitlines() or ["unknown error"]:
            print(f"exoacq: error: {line}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) or exc.code == "usage" else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last resort: a bug, not a bad input (those are ExoacqErrors)
        return internal_error(exc)


def internal_error(exc: Exception) -> int:
    """One line for an exception nothing recognised, and EX_SOFTWARE; the traceback too when the
    environment has ``EXOACQ_DEBUG=1``."""
    if os.environ.get("EXOACQ_DEBUG", "") not in ("", "0"):
        traceback.print_exception(exc, file=sys.stderr)
    message = " ".join(str(exc).split()) or "(no message)"
    print(f"exoacq: error: internal error: {type(exc).__name__}: {message} "
          "(a bug; run with EXOACQ_DEBUG=1 for the traceback)", file=sys.stderr)
    return EX_SOFTWARE


# -- commands ------------------------------------------------------------------------
def cmd_daemon(args: argparse.Namespace) -> int:
    from exoacq.config import load_config
    from exoacq.daemon import run_daemon

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.config is None and not args.simulated:
        raise ConfigError("no configuration: give --config FILE, or --simulated for simulated instruments")
    config = load_config(args.config, simulated=args.simulated)
    for name in ("control", "results", "frames", "data_dir", "keys_dir", "metrics", "metrics_allow_remote"):
        value = getattr(args, name)
        if value is not None:
            setattr(config.daemon, name, value)
    return run_daemon(config)


def _client(args: argparse.Namespace):
    from exoacq.bus import ControlClient
    from exoacq.cli_common import client_keys
    return ControlClient(args.control, keys=client_keys(args))


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.request("status")
    if args.json:
        print(json.dumps(status))
        return 0
    print(f"exoacq daemon {status['version']} (pid {status['pid']}, up {status['uptime_s']:.0f} s, "
          f"{'simulated' if status['simulated'] else 'hardware'}, {'ready' if status['ready'] else 'starting'})")
    for name, address in status["endpoints"].items():
        print(f"  {name:<8} {address}")
    print(f"  data     {status['data_dir']}")
    security = status.get("security") or {}
    if security.get("curve"):
        print(f"  security CurveZMQ (reachable off this host); clients {', '.join(security['authorized_clients'])}; "
              f"refused: {security['refused_keys']} key(s), {security['refused_commands']} command(s); "
              f"oversize requests {security['oversize_requests']}")
    if "metrics" in status:  # a daemon older than the metrics endpoint has no such key
        print(f"  metrics  {status['metrics'] or 'off'}")
    methods = [f"{m} ({len(v['instruments'])} instrument(s))" for m, v in status["methods"].items()]
    print(f"  methods  {', '.join(methods)}")
    for name, inst in status["instruments"].items():
        run = f", run {inst['run']}" if inst["run"] else ""
        queued = f", queued {', '.join(inst['queued'])}" if inst["queued"] else ""
        print(f"  instrument {name} ({inst['method']}): {inst['state']}{run}{queued}")
        for role, device in inst["devices"].items():
            settings = device.get("settings") or {}
            extra = ""
            if device["kind"] == "laser":
                emission = settings.get("emission")
                extra = (f", emission {'on' if emission else 'off'}" if emission is not None else "") + \
                    f", interlock {device.get('interlock', 'unknown')}"
            where = f" at {device['address']}" if device.get("address") else ""
            problem = f": {device['error']}" if device.get("error") else ""
            print(f"    {role:<12} {device['driver']}{' (simulated)' if device['simulated'] else ''}{where}: "
                  f"{device['state']}{extra}{problem}")
    for run in status["runs"]:
        step = f", step {run['step']['index']}/{run['step']['of']} {run['step']['step']}" if run.get("step") else ""
        print(f"  run      {run['run_id']} on {run['instrument']}: {run['state']}{step}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from exoacq.liveness import watch_documents  # also reports seq gaps, restarts, a daemon gone

    with _client(args) as client:
        endpoints = client.request("status")["endpoints"]
    return watch_documents(client.address, client.reachable(endpoints["results"]), args.topics or None, args.count,
                           keys=client.keys)


def cmd_stop(args: argparse.Namespace) -> int:
    with _client(args) as client:
        reply = client.request("stop", run_id=args.run_id, instrument=args.instrument)
    print(f"run {reply['run_id']}: {reply['state']}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for dest, view in args.views:  # a method's own listing (NTA: --bead-checks)
            if getattr(args, dest, False):
                return view(client, args)
        if args.action in ("show", "pick", "approve") and not args.run_id:
            raise ExoacqError(f"`exoacq runs {args.action}` needs a run id (see `exoacq runs`)", code="usage")
        if args.action == "pick":
            return _pick_version(client, args)
        if args.action == "approve":
            from exoacq.audit_cli import approve
            return approve(client, args)
        if args.action == "show":
            if args.pick is not None:
                raise ExoacqError(f"unexpected {args.pick!r}: `exoacq runs show RUN_ID [--version N]`", code="usage")
            params = {} if args.show_version is None else {"version": args.show_version}
            record = client.request("run", run_id=args.run_id, **params)
            if args.json:
                print(json.dumps(record))
            else:
                _print_run(record)
            return 0
        runs = client.request("runs", limit=args.limit)
    if args.json:
        print(json.dumps(runs))
        return 0
    print(f"{'run_id':<28} {'method':<6} {'instrument':<12} {'state':<10} {'started':<25} sample")
    for r in runs:
        print(f"{r['run_id']:<28} {r['method']:<6} {r.get('instrument') or '-':<12} {r['state']:<10} "
              f"{r['started'] or '-':<25} {r['sample']}")
    return 0


def _print_run(record: dict[str, Any]) -> None:
    """A stored run as `runs show` prints it: the run, its result versions, then the result shown."""
    from exoacq.client import format_result, format_versions
    print(f"{record['run_id']}: {record['state']}  sample '{record['sample']}'  instrument "
          f"{record.get('instrument') or '-'}  started {record['started']}  finished {record['finished']}")
    if record.get("error"):
        print(f"  error: {record['error']}")
    from exoacq.durable import describe_kept  # its run.h5: what it holds (what was kept after a crash)
    for line in describe_kept(record.get("data_file")):
        print(line)
    from exoacq.audit_cli import print_signatures
    print_signatures(record)  # run by ..., approved by ... (or not yet)
    print(format_versions(record))
    if record.get("result"):
        print(f"result version {record.get('version') or record.get('current_version')}:")
        print(format_result(record["result"]))


def _pick_version(client: Any, args: argparse.Namespace) -> int:
    if args.pick is None:
        raise ExoacqError("`exoacq runs pick RUN_ID N` needs a version number (or `newest`)", code="usage")
    if args.pick == "newest":
        version = None
    else:
        try:
            version = int(args.pick)
        except ValueError:
            raise ExoacqError(f"version {args.pick!r}: must be a version number (1, 2, ...) or `newest`",
                              code="usage") from None
    reply = client.request("select_version", run_id=args.run_id, version=version)
    if args.json:
        print(json.dumps(reply))
    else:
        how = "picked by the operator" if reply["picked_version"] is not None else "the newest"
        print(f"run {reply['run_id']}: its result is version {reply['current_version']} ({how})")
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    from exoacq.client import StatusLine, follow_reprocess, parse_overrides

    overrides = parse_overrides(args.overrides)
    line = StatusLine()
    shown: set[str] = set()

    def on_version(document: dict[str, Any]) -> None:
        state = document["state"]
        if state in shown:
            return
        shown.add(state)
        waiting = document.get("waiting") or 0
        behind = f" (after {waiting} other re-processing{'s' if waiting > 1 else ''})" if waiting else ""
        line.message(f"run {document['run_id']}: version {document['version']} {state}{behind}")

    with _client(args) as client:
        document = follow_reprocess(client, args.run_id, overrides, reason=args.reason, on_version=on_version)
        if args.json:
            print(json.dumps(document))
            return 0
        line.message(f"run {args.run_id}: version {document['version']} done")
        _print_run(client.request("run", run_id=args.run_id, version=document["version"]))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    with _client(args) as client:
        reply = client.request("preview", instrument=args.instrument, on=args.state == "on")
    print(f"instrument {reply['instrument']}: preview {'on' if reply['preview'] else 'off'}")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    with _client(args) as client:
        reply = client.request("set", instrument=args.instrument, device=args.device, setting=args.setting,
                               value=args.value)
    print(f"instrument {reply['instrument']}: {reply['device']}.{reply['setting']} = {reply['value']} {reply['unit']}")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    with _client(args) as client:
        reply = client.request("settings", instrument=args.instrument)
    if args.json:
        print(json.dumps(reply))
        return 0
    print(f"instrument {reply['instrument']}:")
    for device, settings in reply["devices"].items():
        for name, s in settings.items():
            print(f"  {device}.{name:<14} {s['value']} {s['unit']}  (range {s['minimum']:g}..{s['maximum']:g}) "
                  f"{s['description']}")
    return 0


def cmd_export_bluesky(args: argparse.Namespace) -> int:
    if args.output is not None and not args.output.resolve().parent.is_dir():
        raise ExoacqError(f"cannot write {args.output}: no folder {args.output.resolve().parent}", code="usage")
    with _client(args) as client:
        status = client.request("status")  # no daemon: said after the usual 5 s, not after the export's 30 s
        if args.output is not None:
            refuse_data_dir_output(args.output, status)
        pairs = client.request("bluesky", run_id=args.run_id, timeout_s=30.0)
    text = "".join(json.dumps(pair) + "\n" for pair in pairs)
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ExoacqError(f"cannot write {args.output}: {exc.strerror}") from None
        print(f"{len(pairs)} documents of run {args.run_id} -> {args.output}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from exoacq.config import example_text, load_config

    if args.action == "example":
        if args.file is not None:
            raise ExoacqError(f"`exoacq config example` takes no file ({args.file}); it prints the example on "
                              "stdout", code="usage")
        sys.stdout.write(example_text())
        return 0
    if args.file is None:
        raise ExoacqError("`exoacq config check` needs a FILE", code="usage")
    config = load_config(args.file)
    names = ", ".join(f"{n} ({i.method})" for n, i in config.instruments.items()) or "none"
    print(f"{args.file}: valid; instruments: {names}")
    return 0


def cmd_sim_serve(args: argparse.Namespace) -> int:
    from exoacq.simserve import serve
    return serve(args.config)


def cmd_laser_off(args: argparse.Namespace) -> int:
    from exoacq.simserve import lasers_off
    return lasers_off(args.config)


def cmd_demo(args: argparse.Namespace) -> int:
    from exoacq.demo import run_demo
    return run_demo(duration_s=args.duration)
