"""What every method's command-line verbs share: argument types, the control option, and
``acquire`` (start a run on the daemon, show its progress, print its result)."""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from exoacq.errors import ExoacqError

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


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text} must be {least} or more")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (a count of frames, events, videos, workers)."""
    return _whole(text, 1)


def seed_int(text: str) -> int:
    """A random seed: a whole number >= 0 (numpy's SeedSequence takes no negative seed)."""
    return _whole(text, 0)


def add_control(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--control", default=default_control(),
                   help="daemon control endpoint (default: $EXOACQ_CONTROL or %(default)s)")
    return p


def add_acquire_options(p: argparse.ArgumentParser) -> None:
    """The options of ``exoacq acquire METHOD`` that every method has."""
    p.add_argument("--sample", default="unnamed", help="sample name")
    p.add_argument("--dilution", type=positive_float, default=1.0, help="dilution factor (default %(default)s: neat)")
    p.add_argument("--instrument", help="instrument to run on (default: the only one serving the method)")
    p.add_argument("--sop", type=Path, help="a SOP file (TOML, or a NanoSight script) the run follows")
    p.add_argument("--json", action="store_true", help="print the final result document alone on stdout")
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
            request["sop"] = args.sop.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ExoacqError(f"cannot read SOP {args.sop}: {getattr(exc, 'strerror', None) or exc}",
                              code="usage") from None
    bar = ProgressBar()
    with ControlClient(args.control) as client:
        try:
            result = follow_run(client, request, on_document=bar)
        finally:
            bar.close()
    print(json.dumps(result) if args.json else format_result(result))
    return 0
