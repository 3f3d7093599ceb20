"""What every method's command-line verbs share: argument types, the control option, and
``acquire`` (start a run on the daemon, show its progress, print its result)."""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from exoacq.errors import ExoacqError
from exoacq.textfile import read_text_file

DEFAULT_CONTROL = "tcp://127.0.0.1:5555"


def default_control() -> str:
    return os.environ.get("EXOACQ_CONTROL", DEFAULT_CONTROL)


def finite_float(text: str) -> float:
    """Any finite number (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (``nan`` and ``inf`` are refused: a rate, a size or a duration is finite)."""
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def float_in(low: float, high: float, unit: str = "") -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` to ``high`` (both included), for a physical quantity
    whose plausible range is known (a frame rate, a pixel size, a refractive index): a value far outside
    it is a typing slip, and would reach the analysis as overflows or endless loops."""
    units = f" {unit}" if unit else ""

    def parse(text: str) -> float:
        value = finite_float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text}{units} is out of range: from {low:g} to {high:g}{units}")
        return value
    parse.__name__ = f"number from {low:g} to {high:g}{units}"
    return parse


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text} must be {least} or more")
    if value > 2 ** 62:  # a count, a seed: beyond what numpy and Python's sequences take (ssize_t)
        raise argparse.ArgumentTypeError(f"{text} is too large (at most 2**62)")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (a count of frames, events, videos, workers)."""
    return _whole(text, 1)


def seed_int(text: str) -> int:
    """A random seed: a whole number >= 0 (numpy's SeedSequence takes no negative seed)."""
    return _whole(text, 0)


def refuse_data_dir_output(output: Path, status: dict[str, Any]) -> None:
    """An export's ``--output`` must not lie in the daemon's data directory (``status``'s ``data_dir``): it
    would overwrite a run's raw data or the audit trail, which the daemon keeps there."""
    data_dir = status.get("data_dir")
    if data_dir and Path(output).resolve().is_relative_to(Path(data_dir).resolve()):
        raise ExoacqError(f"cannot write {output}: it is in the daemon's data directory {data_dir} (runs and the "
                          "audit trail are kept there); write the export elsewhere", code="usage")


def add_control(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--control", default=default_control(),
                   help="daemon control endpoint (default: $EXOACQ_CONTROL or %(default)s)")
    return add_client_keys(p)


def add_client_keys(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--key`` and ``--server-key``: a client's CurveZMQ keys for a daemon reachable off its host."""
    p.add_argument("--key", type=Path, default=os.environ.get("EXOACQ_KEY") or None,
                   help="your CurveZMQ secret key file (NAME.key_secret from `exoacq keys add`), for a daemon "
                        "reachable off its host (default: $EXOACQ_KEY)")
    p.add_argument("--server-key", type=Path, default=os.environ.get("EXOACQ_SERVER_KEY") or None,
                   help="the daemon's public key file (server.key) (default: $EXOACQ_SERVER_KEY)")
    return p


def client_keys(args: argparse.Namespace) -> Any:
    """The :class:`exoacq.security.ClientKeys` of ``--key`` and ``--server-key``, or None."""
    from exoacq.security import load_client_keys
    return load_client_keys(getattr(args, "key", None), getattr(args, "server_key", None))


def add_acquire_options(p: argparse.ArgumentParser) -> None:
    """The options of ``exoacq acquire METHOD`` that every method has."""
    p.add_argument("--sample", default="unnamed", help="sample name")
    p.add_argument("--dilution", type=positive_float, default=1.0, help="dilution factor (default %(default)s: neat)")
    p.add_argument("--instrument", help="instrument to run on (default: the only one serving the method)")
    p.add_argument("--sop", type=Path, help="a SOP file (TOML, or a NanoSight script) the run follows")
    p.add_argument("--json", action="store_true", help="print the final result document alone on stdout")
    p.add_argument("--daemon-timeout", type=positive_float, default=None, metavar="S",
                   help="seconds without a document from the daemon before it is asked whether it is still "
                        "there (default 2: a dead daemon is reported within ~5 s; raise it on a slow link, or "
                        "to wait for a daemon that restarts)")
    add_control(p)


def run_acquisition(args: argparse.Namespace, method: str, params: dict[str, Any]) -> int:
    """Start a run with the common options plus the method's ``params``; follow it to its result."""
    from exoacq.bus import ControlClient
    from exoacq.client import ProgressBar, follow_run, format_result

    request = {"method": method, "sample": args.sample, "dilution": args.dilution, **params}
    if args.instrument:
        request["instrument"] = args.instrument
    if args.sop is not None:
        try:
            request["sop"] = read_text_file(args.sop)
        except (OSError, UnicodeDecodeError) as exc:
            raise ExoacqError(f"cannot read SOP {args.sop}: {getattr(exc, 'strerror', None) or exc}",
                              code="usage") from None
    bar = ProgressBar()
    with ControlClient(args.control, keys=client_keys(args)) as client:
        try:
            result = follow_run(client, request, on_document=bar, silent_after_s=args.daemon_timeout)
        finally:
            bar.close()
    print(json.dumps(result) if args.json else format_result(result))
    return 0
