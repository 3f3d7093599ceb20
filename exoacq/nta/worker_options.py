"""The locate worker's command-line options, declared once for both ways a worker starts: ``python -m
exoacq.nta.worker`` (the daemon starts its own workers so) and ``exoacq worker`` (an operator, on this or
another host). Here, not in exoacq.nta.worker, so that the CLI does not import the worker's numba and pandas
to build its parser."""
from __future__ import annotations

import argparse

from exoacq.nta import DETECTORS


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """``--frames``, ``--features`` (the endpoints to connect to) and ``--detector``."""
    parser.add_argument("--frames", required=True,
                        help="the instrument's tracking frames endpoint (the daemon PUSHes frames there; "
                             "`exoacq status --json` shows it)")
    parser.add_argument("--features", required=True,
                        help="the instrument's tracking features endpoint (the linker PULLs features there)")
    parser.add_argument("--detector", choices=DETECTORS, default=None,
                        help="compile only this detector before serving (the instrument's settings.detector; the "
                             "daemon passes it to the workers it starts); default: both. A frame that asks for the "
                             "other is still served, the first one after compiling it")


def detectors_to_warm(detector: str | None) -> tuple[str, ...]:
    """The detectors a worker compiles before it says hello: ``--detector``'s, or both."""
    return DETECTORS if detector is None else (detector,)
