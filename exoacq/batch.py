"""Batch re-analysis: many recorded inputs through a method's offline analysis, one after
another or on a Dask cluster (``exoacq analyze METHOD INPUT... [--dask [ADDRESS]]``).

A method takes part by giving a :class:`BatchMethod`: an importable, top-level
``analyse_input(path, options) -> document`` (the very function a serial
analysis calls, so each input's numbers are the same wherever it runs; it
raises ExoacqError for a bad input), the file suffixes a folder's inputs have,
which folders are one input themselves (an NTA folder of frame images), and
the columns of the ``--csv`` summary.

- Inputs are files, folders and globs (:func:`expand_inputs`): a folder that is
  one input stays one; any other folder is expanded to the input files (and
  one-input folders) it holds.
- :func:`run_batch` yields one document per input as each finishes; a failed
  input is ``{"input": path, "error": reason}`` and the others go on. Serially
  (no client) the inputs run here in order; with a ``distributed.Client``, one
  task per input, streamed back with ``distributed.as_completed``.
- ``--dask`` alone starts a local cluster of worker processes (one thread
  each); ``--dask tcp://host:8786`` uses that scheduler. Workers need exoacq
  installed and the inputs (and a calibration file) on the same paths.
- On a Dask worker the options get ``threads`` = the worker's thread count, so
  that a method that parallelises an input uses its share of the machine.

This is core code: it imports no method package; the methods hand their
functions in.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exoacq.client import StatusLine
from exoacq.errors import ExoacqError

#: ``--dask`` without an address.
LOCAL = "local"
#: What a scheduler address looks like: ``tcp://host:8786``, ``tls://...``, or ``host:8786``.
_ADDRESS = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$|^[\w.\-]+:\d+$", re.IGNORECASE)
_GLOB = re.compile(r"[*?\[]")
#: How long to wait for a named scheduler before giving up.
CONNECT_TIMEOUT_S = 15


@dataclass(frozen=True)
class BatchMethod:
    """What a method gives the batch runner."""

    name: str
    #: ``analyse_input(path, options) -> document``: top-level and importable (it is pickled by
    #: reference to the workers); raises ExoacqError for a bad input.
    analyse: Callable[[str, dict[str, Any]], dict[str, Any]]
    #: Files in a folder that are inputs (lower case, with the dot).
    suffixes: tuple[str, ...]
    #: The ``--csv`` columns after ``input`` (``error`` is added last).
    columns: tuple[str, ...]
    #: One ``--csv`` row of a document: {column: value}.
    summary_row: Callable[[dict[str, Any]], dict[str, Any]]
    #: One line of text for a document (without --json).
    describe: Callable[[dict[str, Any]], str]
    #: A folder that is one input by itself (an NTA folder of frame images); None: no folder is.
    is_input_folder: Callable[[Path], bool] | None = None


# -- inputs ----------------------------------------------------------------------------------
def _refuse_empty(arguments: list[str]) -> None:
    """An input that is an empty string (or spaces) is a usage error: ``Path("")`` is the current folder."""
    if any(not argument.strip() for argument in arguments):
        raise ExoacqError("an input is an empty string: name a file, a folder or a glob", code="usage")


def single_input(arguments: list[str], is_input_folder: Callable[[Path], bool] | None = None) -> Path | None:
    """The one input of a command line that names exactly one file (or one-input folder), as
    before batches existed; None when the arguments make a batch."""
    _refuse_empty(arguments)
    if len(arguments) != 1:
        return None
    path = Path(arguments[0])
    if path.is_dir():
        return path if is_input_folder is not None and is_input_folder(path) else None
    if path.exists() or not _GLOB.search(arguments[0]):
        return path  # a file, or a missing one (the analysis says so, as before)
    return None


def expand_inputs(arguments: Iterable[str], suffixes: Iterable[str],
                  is_input_folder: Callable[[Path], bool] | None = None) -> list[Path]:
    """Files, folders and globs to the list of inputs, in the order given (each folder's and
    glob's sorted), without repeats. Anything naming nothing is a usage error, before any
    analysis starts."""
    suffixes = tuple(s.lower() for s in suffixes)
    found: dict[Path, None] = {}

    def folder(path: Path, named: str) -> None:
        if is_input_folder is not None and is_input_folder(path):
            found.setdefault(path)
            return
        members = [p for p in sorted(path.iterdir())
                   if (p.is_file() and p.suffix.lower() in suffixes)
                   or (p.is_dir() and is_input_folder is not None and is_input_folder(p))]
        if not members:
            what = ", ".join(suffixes) + (" files, or folders of frames" if is_input_folder else " files")
            raise ExoacqError(f"{named}: the folder holds no inputs ({what})", code="usage")
        for p in members:
            found.setdefault(p)

    arguments = list(arguments)
    _refuse_empty(arguments)
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            folder(path, argument)
        elif path.exists():
            found.setdefault(path)
        elif _GLOB.search(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                raise ExoacqError(f"{argument}: no file matches", code="usage")
            for match in map(Path, matches):
                if match.is_dir():
                    folder(match, str(match))
                else:
                    found.setdefault(match)
        else:
            raise ExoacqError(f"{argument}: no such file or directory", code="usage")
    return list(found)


# -- running ---------------------------------------------------------------------------------
def analyse_one(analyse: Callable[[str, dict[str, Any]], dict[str, Any]], path: str,
                options: dict[str, Any]) -> dict[str, Any]:
    """One input, as a task: its document naming it in ``input`` first, or ``{"input", "error"}``.
    Never raises for a bad input (nor for a bug in the analysis: the reason is reported)."""
    if "distributed" in sys.modules:  # on a Dask worker: use its threads, not the whole machine
        from distributed import get_worker
        try:
            worker = get_worker()
        except ValueError:
            pass
        else:
            options = {**options, "threads": _worker_threads(worker)}
    try:
        document = analyse(path, options)
    except ExoacqError as exc:
        return {"input": path, "error": " ".join(str(exc).split()) or type(exc).__name__}
    except Exception as exc:  # a bug must not stop the batch; it is reported with the input
        return {"input": path, "error": f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())}"}
    return {"input": path, **{k: v for k, v in document.items() if k != "input"}}


def _worker_threads(worker: Any) -> int:
    threads = getattr(worker, "nthreads", None)
    if threads is None:
        threads = worker.state.nthreads
    return int(threads)


def run_batch(analyse: Callable[[str, dict[str, Any]], dict[str, Any]], inputs: Iterable[Path | str],
              options: dict[str, Any], client: Any = None) -> Iterator[dict[str, Any]]:
    """One document per input as each finishes (see :func:`analyse_one`). ``client``: a
    ``distributed.Client`` (one task per input), or None to analyse here, in order."""
    paths = [str(p) for p in inputs]
    if client is None:
        for path in paths:
            yield analyse_one(analyse, path, options)
        return
    from distributed import as_completed

    futures = {client.submit(analyse_one, analyse, path, options, key=f"exoacq-analyse-{i}-{Path(path).name}",
                             pure=False): path for i, path in enumerate(paths)}
    try:
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as exc:  # the task's worker died, or the task could not be run
                reason = " ".join(str(exc).split()) or type(exc).__name__
                yield {"input": futures[future], "error": f"Dask: {type(exc).__name__}: {reason}"}
    finally:
        for future in futures:
            future.cancel()


def local_workers(inputs: int | None = None) -> int:
    """The local cluster's default size: one worker per CPU, at most one per input."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, inputs or cpus))


@contextlib.contextmanager
def dask_client(address: str = LOCAL, workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: of a new local cluster of ``workers`` worker processes (one
    thread each, no dashboard) when ``address`` is ``local``, else of the scheduler there."""
    try:
        import distributed
    except ImportError:
        raise ExoacqError("--dask needs Dask: pip install 'dask[distributed]'", code="usage") from None
    with contextlib.ExitStack() as stack:
        if address == LOCAL:
            cluster = distributed.LocalCluster(n_workers=workers or local_workers(), threads_per_worker=1,
                                               processes=True, dashboard_address=None,
                                               silence_logs=logging.ERROR)
            stack.enter_context(cluster)
            client = distributed.Client(cluster)
        else:
            if not _ADDRESS.match(address):
                raise ExoacqError(f"--dask {address}: not a scheduler address (tcp://host:8786)", code="usage")
            try:
                client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                raise ExoacqError(f"cannot reach the Dask scheduler at {address}: "
                                  f"{' '.join(str(exc).split()) or type(exc).__name__}") from None
            except ValueError as exc:
                raise ExoacqError(f"--dask {address}: {exc}", code="usage") from None
        stack.enter_context(client)
        yield client


# -- the command line ------------------------------------------------------------------------
def add_batch_options(p: argparse.ArgumentParser) -> None:
    """``--dask [ADDRESS]`` and ``--workers``, for an ``analyze`` verb taking many inputs."""
    p.add_argument("--dask", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                   help="one task per input on a Dask cluster: a local cluster of worker processes (`--dask` "
                        "after the inputs, or `--dask local`), or the scheduler at ADDRESS (tcp://host:8786)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes of the local Dask cluster (default: one per CPU, at most one per input)")


def split_dask_argument(args: argparse.Namespace, inputs: str = "inputs") -> None:
    """``--dask a.avi b.avi``: argparse took ``a.avi`` for the address; give it back to the inputs
    (a value naming a file, folder or glob, not an address). ``--workers`` without ``--dask`` is refused
    (one input, or a batch here, would ignore it)."""
    value = getattr(args, "dask", None)
    if value is None and getattr(args, "workers", None) is not None:
        raise ExoacqError("--workers sizes the local Dask cluster: give it with --dask", code="usage")
    if value is None or value == LOCAL or _ADDRESS.match(value):
        return
    if not (Path(value).exists() or _GLOB.search(value)):
        return  # neither: refused as an address
    setattr(args, inputs, [value, *getattr(args, inputs)])
    args.dask = LOCAL


class BatchProgress(StatusLine):
    """``batch: 3/6 inputs done (1 failed), 12 s`` on stderr: redrawn on a terminal, a line per
    input otherwise."""

    def __init__(self, total: int, stream=sys.stderr):
        super().__init__(stream)
        self.total, self.done, self.failed = total, 0, 0
        self.started = time.monotonic()

    def show(self, where: str = "") -> None:
        failed = f" ({self.failed} failed)" if self.failed else ""
        self._line(f"batch: {self.done}/{self.total} inputs done{failed}, {time.monotonic() - self.started:.0f} s"
                   f"{where}", final=False)

    def add(self, document: dict[str, Any]) -> None:
        self.done += 1
        self.failed += "error" in document
        self.show()

    def error(self, text: str) -> None:
        """A failed input's one line, kept above the bar."""
        self._line(text, final=True)


def run_batch_cli(method: BatchMethod, arguments: list[str], options: dict[str, Any], *, dask: str | None,
                  workers: int | None, json_lines: bool, csv_path: Path | None) -> int:
    """Expand ``arguments``, analyse every input (here or on Dask), print each document as it
    finishes (a JSON line each with ``json_lines``, else a line of text), write ``csv_path``;
    0 when every input was analysed, 1 when one or more failed (each reported on stderr)."""
    inputs = expand_inputs(arguments, method.suffixes, method.is_input_folder)
    if workers is not None and workers < 1:
        raise ExoacqError(f"--workers {workers}: must be >= 1", code="usage")
    if workers is not None and dask != LOCAL:
        raise ExoacqError("--workers sizes the local Dask cluster: give it with --dask alone", code="usage")
    if csv_path is not None and not csv_path.resolve().parent.is_dir():  # before a long batch, not after
        raise ExoacqError(f"cannot write {csv_path}: no folder {csv_path.resolve().parent}")
    columns = ("input", *method.columns, "error")
    progress = BatchProgress(len(inputs))
    with contextlib.ExitStack() as stack:
        stack.callback(progress.close)
        writer = None
        if csv_path is not None:
            try:
                handle = stack.enter_context(open(csv_path, "w", newline="", encoding="utf-8"))
            except OSError as exc:
                raise ExoacqError(f"cannot write {csv_path}: {exc.strerror}") from None
            writer = csv.DictWriter(handle, columns, extrasaction="ignore")
            writer.writeheader()
        client = None
        if dask is not None:
            progress.show(" (starting a local Dask cluster)" if dask == LOCAL else f" (connecting to {dask})")
            client = stack.enter_context(dask_client(dask, workers or local_workers(len(inputs))
                                                     if dask == LOCAL else None))
        progress.show()
        for document in run_batch(method.analyse, inputs, options, client):
            error = document.get("error")
            if error is not None:
                where = document["input"]
                progress.error(f"exoacq: error: {error}" if where in error else f"exoacq: error: {where}: {error}")
            if json_lines:
                print(json.dumps(document), flush=True)
            elif error is None:
                print(method.describe(document), flush=True)
            if writer is not None:
                row = {"input": document["input"], "error": error or ""}
                if error is None:
                    row.update(method.summary_row(document))
                writer.writerow({k: _cell(v) for k, v in row.items()})
                handle.flush()
            progress.add(document)
    if progress.failed:
        print(f"exoacq: {progress.done - progress.failed} of {progress.total} inputs analysed, "
              f"{progress.failed} failed", file=sys.stderr)
    return 1 if progress.failed else 0


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(_cell(v)) for v in value)
    if isinstance(value, float):
        return repr(value)
    return value
