"""Client side of the bus: start a run and follow it to its result.

Used by ``exoacq acquire`` and ``exoacq demo``; a pipeline in another
language does the same with two sockets (docs/protocol.md).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable


from exoacq.bus import ControlClient, loads, subscribe
from exoacq.errors import ExoacqError
from exoacq.storage import FINAL_STATES

#: Time for a new SUB socket's subscription to reach the publisher (ZeroMQ's slow joiner).
SUBSCRIBE_SETTLE_S = 0.3
#: With no document for this long, ask the daemon directly (a document may have been missed).
POLL_AFTER_S = 2.0


def follow_run(client: ControlClient, request: dict[str, Any],
               on_document: Callable[[str, dict[str, Any]], None] | None = None,
               timeout_s: float | None = None) -> dict[str, Any]:
    """Start a run and block until it ends; return its ``nta.result`` document.

    Raises ExoacqError if the run fails or is aborted. ``on_document`` sees
    every document of this run (topic, document), for progress display.
    """
    endpoints = client.request("status")["endpoints"]
    sub = subscribe(endpoints["results"], ["run.state", "nta.progress", "nta.result"])
    try:
        time.sleep(SUBSCRIBE_SETTLE_S)
        run_id = client.request("acquire", **request)["run_id"]
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last_seen = time.monotonic()
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise ExoacqError(f"run {run_id} did not finish within {timeout_s:g} s", code="timeout")
            if sub.poll(200):
                topic, payload = sub.recv_multipart()
                document = loads(payload)
                if document.get("run_id") != run_id:
                    continue
                last_seen = time.monotonic()
                topic = topic.decode()
                if on_document:
                    on_document(topic, document)
                if topic == "nta.result":
                    return document
                if topic == "run.state" and document["state"] in ("failed", "aborted"):
                    raise ExoacqError(f"run {run_id} {document['state']}: {document.get('error') or 'no reason given'}",
                                      code=f"run_{document['state']}")
            elif time.monotonic() - last_seen > POLL_AFTER_S:
                last_seen = time.monotonic()
                record = client.request("run", run_id=run_id)
                if record["state"] in FINAL_STATES:
                    if record["state"] == "done" and record.get("result"):
                        return record["result"]
                    raise ExoacqError(f"run {run_id} {record['state']}: {record.get('error') or 'no reason given'}",
                                      code=f"run_{record['state']}")
    except KeyboardInterrupt:
        try:
            client.request("stop", run_id=run_id, timeout_s=2.0)
            print(f"\nexoacq: run {run_id} aborted at the operator's request", file=sys.stderr)
        except (ExoacqError, UnboundLocalError):
            pass
        raise
    finally:
        sub.close(linger=0)


class StatusLine:
    """A status line on stderr: redrawn in place on a terminal, one line per update otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()

    def _line(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """One status message (kept on its own line)."""
        self._line(text, final=True)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class ProgressBar(StatusLine):
    """Run progress from published documents; once a second when not on a terminal."""

    def __init__(self, stream=sys.stderr, width: int = 24):
        super().__init__(stream)
        self.width = width
        self._last = 0.0

    def __call__(self, topic: str, document: dict[str, Any]) -> None:
        if topic == "run.state":
            self._line(f"run {document['run_id']}: {document['state']}", final=True)
        elif topic == "nta.progress":
            now = time.monotonic()
            if not self.tty and now - self._last < 1.0:
                return
            self._last = now
            frames = document["frames"]
            planned = frames.get("planned") or 1
            done = min(frames["acquired"] / planned, 1.0)
            bar = "#" * int(done * self.width) + "-" * (self.width - int(done * self.width))
            size = document["size_nm"]
            mean = f"{size['mean']:.0f} nm" if size.get("mean") is not None else "-"
            ppf = document.get("particles_per_frame")
            capture = f"capture {document['capture']}/{document['captures']} " if document["captures"] > 1 else ""
            text = (f"{capture}[{bar}] {document['elapsed_s']:5.1f}/{document['duration_s']:g} s  "
                    f"frames {frames['acquired']} ({frames['dropped']} dropped)  "
                    f"{'-' if ppf is None else round(ppf, 1)} particles/frame  "
                    f"{document['tracks']['used']} tracks  mean {mean}")
            self._line(text, final=False)


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def format_result(doc: dict[str, Any]) -> str:
    """A readable table of an ``nta.result`` document."""
    frames = doc["frames"]
    lines = [
        f"Run {doc['run_id']}  sample '{doc['sample']}'  ({len(doc.get('captures') or [1])} x {doc['duration_s']:g} s, "
        f"dilution x{doc['dilution']:g})",
        format_summary(doc),
        f"  Frames            {frames['acquired']} acquired, {frames['processed']} processed, "
        f"{frames['dropped']} dropped",
    ]
    se = doc.get("standard_error")
    if se:
        size = se["size_nm"]
        lines.append(f"  Standard error    mean {_num(size['mean'], '.1f')} nm, mode {_num(size['mode'], '.1f')} nm, "
                     f"D50 {_num(size['d50'], '.1f')} nm, concentration {_num(se['concentration_per_ml'], '.2g')} "
                     f"particles/mL (over {len(doc['captures'])} captures)")
    if doc.get("files"):
        tracks = doc["files"].get("tracks") or next(iter(doc["files"].values()))
        lines.append(f"  Tracks file       {tracks}{' (and one per capture)' if se else ''}")
    for warning in doc.get("warnings", []):
        lines.append(f"  Warning: {warning}")
    return "\n".join(lines)


def format_summary(doc: dict[str, Any]) -> str:
    """The statistics lines shared by live results and offline analyses."""
    num = _num
    size = doc["size_nm"]
    conc = doc.get("concentration_per_ml")
    volume = doc.get("detection_volume") or {}
    lines = [
        f"  Size (nm)         mean {num(size['mean'], '7.1f')}   mode {num(size['mode'], '7.1f')}   "
        f"SD {num(size['sd'], '6.1f')}",
        f"                    D10  {num(size['d10'], '7.1f')}   D50  {num(size['d50'], '7.1f')}   "
        f"D90 {num(size['d90'], '6.1f')}",
        "  Concentration     " + (f"{conc:.3g} particles/mL" + (f" (detection volume {volume['nl']:.4g} nL, "
                                  f"{volume.get('source')})" if volume.get("nl") else "")
                                  if conc is not None else "not reported (no detection volume)"),
        f"  Particles/frame   {num(doc['particles_per_frame'], '.1f')}",
        f"  Tracks            {doc['tracks']['used']} sized of {doc['tracks']['total']}",
        f"  Diffusion         mean {num(doc['diffusion_um2_s']['mean'], '.3g')} um^2/s, "
        f"median {num(doc['diffusion_um2_s']['median'], '.3g')} um^2/s",
        f"  Temperature       {num(doc['temperature_c'], '.2f')} C "
        f"(viscosity {num(doc['viscosity_mpa_s'], '.4f')} mPa s)",
    ]
    if "run_id" not in doc:  # an offline analysis: its warnings here
        lines += [f"  Warning: {w}" for w in doc.get("warnings", [])]
    return "\n".join(lines)
