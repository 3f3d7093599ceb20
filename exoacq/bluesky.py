"""Runs as bluesky event-model documents, so that any event-model consumer (Tiled, databroker,
bluesky-widgets) ingests exoacq runs without knowing exoacq.

For every run the daemon composes, with the ``event-model`` package:

* a **RunStart** (sample, dilution, method, instrument, the acquisition settings, the
  instrument's method settings and its ``calibration``);
* an **EventDescriptor** per stream, its data keys with units (read from the key
  names: ``diameter_nm`` is in nm) and their shapes: ``progress`` (the method's
  progress documents), ``result`` (the result's numbers), and one stream per
  list of records in the result (NTA ``captures``, DLS ``measurements``);
* the **Events**, and a **RunStop** with the exit status (success, fail, abort).

Nested fields are flattened with ``__`` (``size_nm__mean``); lists of numbers are
array data keys. The documents are published on the results socket (topics
``bluesky.start``, ``bluesky.descriptor``, ``bluesky.event``, ``bluesky.stop``)
and kept beside the run as ``bluesky.jsonl``, one ``[name, doc]`` pair per line
as bluesky's JSONL serializer writes them (``exoacq export bluesky RUN_ID``).
"""
from __future__ import annotations

import copy

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import event_model

#: A run's event-model documents, beside its other files (one [name, document] pair per line).
BLUESKY_FILE = "bluesky.jsonl"
#: Key-name suffixes and their units, longest first.
UNITS = (("_um2_s", "um^2/s"), ("_ul_min", "uL/min"), ("_per_ml", "1/mL"), ("_mpa_s", "mPa*s"), ("_per_s", "1/s"),
         ("_um_s", "um/s"), ("_nm", "nm"), ("_um", "um"), ("_ms", "ms"), ("_hz", "Hz"), ("_mw", "mW"),
         ("_px", "px"), ("_nl", "nL"), ("_ul", "uL"), ("_deg", "deg"), ("_c", "degC"), ("_s", "s"))
#: Fields that are bookkeeping, not data.
SKIP = {"schema", "run_id", "time", "method", "instrument", "sample", "state", "settings", "files", "warnings",
        "source", "error", "complete"}


def units_of(path: tuple[str, ...]) -> str | None:
    """The unit a key path states: its last part that ends in a unit suffix."""
    for part in reversed(path):
        for suffix, unit in UNITS:
            if part.endswith(suffix):
                return unit
    return None


def flatten(document: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, tuple[Any, tuple[str, ...]]]:
    """Numbers, strings and lists of numbers of a document, by flattened key (with their key path)."""
    out: dict[str, tuple[Any, tuple[str, ...]]] = {}
    for key, value in document.items():
        if not prefix and key in SKIP:
            continue
        path = (*prefix, str(key))
        name = "__".join(path).replace(".", "_").replace("/", "_")
        if isinstance(value, dict):
            out.update(flatten(value, path))
        elif isinstance(value, bool) or isinstance(value, (int, float, str)) or value is None:
            out[name] = (value, path)
        elif isinstance(value, list) and all(isinstance(v, (int, float)) or v is None for v in value):
            out[name] = (value, path)
    return out


def _data_key(value: Any, path: tuple[str, ...]) -> dict[str, Any]:
    if isinstance(value, list):
        key = {"dtype": "array", "shape": [len(value)]}
    elif isinstance(value, str):
        key = {"dtype": "string", "shape": []}
    elif isinstance(value, bool):
        key = {"dtype": "boolean", "shape": []}
    else:
        key = {"dtype": "number" if not isinstance(value, int) else "integer", "shape": []}
    key["source"] = "exoacq:" + ".".join(path)
    unit = units_of(path)
    if unit:
        key["units"] = unit
    return key


def epoch(iso_time: str | None) -> float:
    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp() if iso_time else 0.0


class RunDocuments:
    """The event-model documents of one run, composed as it goes (by one thread)."""

    def __init__(self, *, run_id: str, method: str, instrument: str | None, sample: str,
                 settings: dict[str, Any], time_s: float, method_settings: dict[str, Any] | None = None):
        # copies: the RunStart is the settings as the run started, whatever the run adds to them later
        settings, method_settings = copy.deepcopy(settings), copy.deepcopy(method_settings or {})
        metadata = {"run_id": run_id, "sample": sample, "dilution": settings.get("dilution"), "method": method,
                    "instrument": instrument, "plan_name": f"exoacq.{method}", "exoacq_settings": settings,
                    "method_settings": method_settings, "calibration": method_settings.get("calibration")}
        self._run = event_model.compose_run(time=time_s, metadata=metadata)
        self._streams: dict[str, Any] = {}
        self._keys: dict[str, list[str]] = {}
        self.stopped = False

    def start(self) -> list[tuple[str, dict[str, Any]]]:
        return [("start", self._run.start_doc)]

    def add(self, stream: str, document: dict[str, Any], time_s: float) -> list[tuple[str, dict[str, Any]]]:
        """An Event of ``stream`` from a document (its descriptor first, the first time)."""
        if self.stopped:
            return []
        fields = flatten(document)
        out = []
        if stream not in self._streams:
            data_keys = {name: _data_key(value, path) for name, (value, path) in fields.items()}
            bundle = self._run.compose_descriptor(data_keys=data_keys, name=stream, time=time_s)
            self._streams[stream], self._keys[stream] = bundle, list(data_keys)
            out.append(("descriptor", bundle.descriptor_doc))
        keys = self._keys[stream]
        data = {k: fields[k][0] if k in fields else None for k in keys}  # the descriptor's keys, always
        event = self._streams[stream].compose_event(data=data, timestamps={k: time_s for k in keys}, time=time_s)
        out.append(("event", event))
        return out

    def result(self, document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The result's numbers, and one stream per list of records in it (captures, measurements)."""
        time_s = epoch(document.get("time"))
        out = self.add("result", document, time_s)
        for key, value in document.items():
            if key not in SKIP and isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for record in value:
                    out += self.add(key, record, time_s)
        return out

    def stop(self, exit_status: str, reason: str = "", time_s: float | None = None) -> list[tuple[str, dict[str, Any]]]:
        if self.stopped:
            return []
        self.stopped = True
        return [("stop", self._run.compose_stop(exit_status=exit_status, reason=reason or "", time=time_s))]


def validate(name: str, document: dict[str, Any]) -> None:
    """Check one document against event-model's own schema (raises jsonschema's ValidationError)."""
    event_model.schema_validators[event_model.DocumentNames[name]].validate(document)


def write_jsonl(path: Path, pairs: list[tuple[str, dict[str, Any]]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for name, doc in pairs:
            f.write(json.dumps([name, doc]) + "\n")


def read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                name, doc = json.loads(line)
                yield name, doc
