"""The control protocol's requests (docs/protocol.md, Control): one ``_cmd_NAME`` method answers request NAME.

A part of :class:`exoacq.daemon.Daemon` (its base class), kept apart because it is another idea than the
daemon's loop: what each request may ask and what it answers. The daemon's main thread calls them
(exoacq.daemon.Daemon._on_control, after the request is parsed, its parameters checked against the
method's signature and the sender authorised: exoacq.security); they read and change the daemon's
state (``runners``, ``_runs``, ``store``, ``config``) and raise ExoacqError (code and message) for a
request that cannot be met.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from exoacq import __version__
from exoacq.bluesky import BLUESKY_FILE, read_jsonl
from exoacq.bus import STATUS_SCHEMA, connectable
from exoacq.errors import ExoacqError, ProtocolError
from exoacq.methods import RunStatus
from exoacq.reprocessing import is_version
from exoacq.run_folder import MAX_CHUNK_BYTES, list_files, read_chunk
from exoacq.runner import InstrumentRunner, Preview
from exoacq.storage import FINAL_STATES

log = logging.getLogger("exoacq.daemon")


class ControlCommands:
    """The requests of the control socket, answered from the daemon's state (a base class of Daemon)."""

    def _cmd_ping(self) -> dict[str, Any]:
        return {"version": __version__, "pid": os.getpid()}

    def _cmd_status(self) -> dict[str, Any]:
        d = self.config.daemon
        methods: dict[str, Any] = {}
        for runner in self.runners.values():
            method = runner.instrument.method
            entry = methods.setdefault(method.name, {"description": method.description,
                                                     "topics": sorted(method.topics), "instruments": []})
            entry["instruments"].append(runner.name)
        return {
            "schema": STATUS_SCHEMA,
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": time.time() - self._started,
            "data_dir": str(self.store.data_dir),
            "endpoints": {name: connectable(getattr(d, name)) for name in ("control", "results", "frames")},
            "metrics": self.metrics.url,
            "ready": all(r.service.ready for r in self.runners.values()),
            "simulated": all(r.instrument.simulated for r in self.runners.values()),
            "methods": methods,
            "instruments": {name: self._describe_runner(runner) for name, runner in self.runners.items()},
            "runs": [self._describe_run(r) for r in self._runs.values() if r.state not in FINAL_STATES],
            "security": self.security.describe(),
        }

    def _describe_runner(self, runner: InstrumentRunner) -> dict[str, Any]:
        current = runner.current
        instrument = runner.instrument
        state = ("busy" if current is not None else "preview" if runner.preview is not None
                 else "idle" if instrument.all_connected else "degraded")
        return {
            "method": instrument.method.name, "description": instrument.config.description,
            "state": state, "simulated": instrument.simulated,
            "run": None if current is None else current.run.run_id,
            "preview_error": runner.preview_error,
            "queued": [r.run.run_id for r in self._runs.values()
                       if r.state == "queued" and r.run.instrument == runner.name],
            "devices": instrument.describe(),
            "service": runner.service.describe(),
            "simulation": instrument.config.sample.model_dump(mode="json") if instrument.simulated else None,
        }

    def _describe_run(self, status: RunStatus) -> dict[str, Any]:
        return {"run_id": status.run.run_id, "method": status.run.method, "instrument": status.run.instrument,
                "state": status.state, "step": status.step, **status.acquisition}

    def _runner_for(self, method: str | None, instrument: str | None) -> InstrumentRunner:
        """The instrument named, or the only one serving the method; clear errors otherwise."""
        if instrument is not None:
            runner = self.runners.get(instrument) if isinstance(instrument, str) else None
            if runner is None:
                raise ProtocolError(f"unknown instrument {instrument!r}; this daemon has: "
                                    f"{', '.join(self.runners)}", code="unknown_instrument")
            if method is not None and runner.instrument.method.name != method:
                raise ProtocolError(f"instrument {instrument!r} runs method {runner.instrument.method.name}, "
                                    f"not {method}", code="wrong_method")
            return runner
        choices = [r for r in self.runners.values() if method is None or r.instrument.method.name == method]
        if len(choices) == 1:
            return choices[0]
        if not choices:
            served = sorted({r.instrument.method.name for r in self.runners.values()})
            raise ProtocolError(f"no instrument serves method {method!r}; this daemon runs: {', '.join(served)}",
                                code="unknown_method")
        raise ProtocolError(f"several instruments {'serve ' + method if method else 'exist'}: "
                            f"{', '.join(r.name for r in choices)}; name one with --instrument "
                            "(a request's instrument)",
                            code="ambiguous_instrument")

    def _cmd_acquire(self, method: str = "nta", instrument: str | None = None, sop: str | None = None,
                     **params: Any) -> dict[str, Any]:
        if not isinstance(method, str):
            raise ProtocolError(f"method = {method!r}: must be a method name")
        runner = self._runner_for(method, instrument)
        plugin = runner.instrument.method
        parsed = None
        if sop is not None:
            from exoacq.sop import parse_sop
            if not isinstance(sop, str) or len(sop) > 256 * 1024:
                raise ProtocolError("sop: must be the text of a SOP file (TOML or a NanoSight script), "
                                    "at most 256 KiB", code="bad_sop")
            parsed = parse_sop(sop, "sop")
            if parsed.method not in (None, method):
                raise ProtocolError(f"the SOP is for method {parsed.method}, not {method}", code="bad_sop")
            kinds = set(runner.instrument.by_kind()) | {s.kind for s in runner.instrument.slots.values()}
            missing = sorted(parsed.required_devices() - kinds)
            if missing:
                raise ProtocolError(f"the SOP needs a {' and a '.join(missing)}, which instrument "
                                    f"{runner.name} does not have", code="bad_sop")
        settings = plugin.validate_request(params, runner.instrument, sop=parsed)
        run_id = self.store.create(method, settings["sample"], settings, instrument=runner.name)
        run = plugin.make_run(run_id, settings, self.store.run_dir(run_id), runner.name)
        self._runs[run_id] = RunStatus(run)
        self._forget_old_runs()
        self._set_state(run_id, "queued")
        if runner.preview is not None:
            runner.preview.reason = f"run {run_id} started"
            runner.preview.stop.set()
        runner.queue.put(run)
        return {"run_id": run_id, "state": "queued", "instrument": runner.name}

    def _cmd_stop(self, run_id: str | None = None, instrument: str | None = None) -> dict[str, Any]:
        if run_id is not None:
            target = self._runs.get(run_id) if isinstance(run_id, str) else None
            if target is None or target.state in FINAL_STATES:
                raise ExoacqError(f"no active or queued run {run_id!r}", code="unknown_run")
        else:
            runners = [self._runner_for(None, instrument)] if instrument is not None else list(self.runners.values())
            running = [r.current for r in runners if r.current is not None and r.current.state not in FINAL_STATES]
            if not running:
                raise ExoacqError("no run in progress", code="no_run")
            if len(running) > 1:
                raise ExoacqError("several runs in progress: " + ", ".join(
                    f"{s.run.run_id} on {s.run.instrument}" for s in running) + "; name one with --run-id",
                    code="ambiguous_run")
            target = running[0]
        if target.state == "processing":
            raise ExoacqError(f"run {target.run.run_id} has finished acquiring and is being analysed; "
                              "it cannot be aborted now", code="too_late")
        target.run.request_abort("stopped by the operator")
        if target.state == "queued":
            self._set_state(target.run.run_id, "aborted", error="stopped by the operator before it started")
        return {"run_id": target.run.run_id, "state": "aborted" if target.state == "aborted" else "aborting"}

    def _cmd_preview(self, instrument: str | None = None, on: bool = True) -> dict[str, Any]:
        """Live mode: light on, frames published, features detected, nothing recorded."""
        if not isinstance(on, bool):
            raise ProtocolError(f"on = {on!r}: must be true or false")
        runner = self._runner_for(None, instrument) if instrument is not None else self._only_previewable()
        if not on:
            if runner.preview is None:
                return {"instrument": runner.name, "preview": False}
            runner.preview.reason = "stopped by the operator"
            runner.preview.stop.set()
            return {"instrument": runner.name, "preview": False}
        if runner.current is not None or any(r.state == "queued" and r.run.instrument == runner.name
                                             for r in self._runs.values()):
            raise ExoacqError(f"instrument {runner.name} is running a run; preview after it", code="busy")
        if runner.preview is None:
            runner.preview = Preview()  # visible at once; the thread takes it from the queue
            runner.queue.put(runner.preview)
        return {"instrument": runner.name, "preview": True}

    def _only_previewable(self) -> InstrumentRunner:
        if len(self.runners) == 1:
            return next(iter(self.runners.values()))
        raise ProtocolError(f"several instruments: {', '.join(self.runners)}; name one with --instrument "
                            "(a request's instrument)", code="ambiguous_instrument")

    def _cmd_set(self, device: str, setting: str, value: Any = None, instrument: str | None = None) -> dict[str, Any]:
        """Change a device's declared setting within its validated range."""
        runner = self._runner_for(None, instrument) if instrument is not None else self._only_previewable()
        inst = runner.instrument
        if device not in inst.slots:
            raise ProtocolError(f"instrument {runner.name} has no device {device!r}; its devices: "
                                f"{', '.join(inst.slots)}", code="unknown_device")
        target = inst.device(device)
        declared = getattr(target, "settings", {})
        if setting not in declared:
            raise ProtocolError(f"{device} has no setting {setting!r}; settable: "
                                f"{', '.join(declared) or 'none'}", code="unknown_setting")
        spec = declared[setting]
        if runner.current is not None and (device, setting) not in inst.method.settable_during_run:
            raise ExoacqError(f"instrument {runner.name} is recording run {runner.current.run.run_id}: "
                              f"{device}.{setting} cannot change during a run", code="busy")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ProtocolError(f"value = {value!r}: {device}.{setting} takes a number in {spec.unit}")
        minimum, maximum = spec.low(target), spec.limit(target)
        if not minimum <= value <= maximum:  # (an integer beyond a float's range cannot be shown with :g)
            shown = (f"{value:g}" if isinstance(value, float) or abs(value) < 10 ** 15
                     else f"a {len(str(abs(value)))}-digit number")
            raise ProtocolError(f"{device}.{setting} = {shown} {spec.unit} is out of range "
                                f"{minimum:g}..{maximum:g} {spec.unit}", code="out_of_range")
        getattr(target, spec.set)(value)
        now = getattr(target, spec.get)()
        log.info("%s: %s.%s set to %s %s", runner.name, device, setting, now, spec.unit)
        return {"instrument": runner.name, "device": device, "setting": setting, "value": now, "unit": spec.unit}

    def _cmd_settings(self, instrument: str | None = None) -> dict[str, Any]:
        """Every device's settable settings with value, unit and range."""
        runner = self._runner_for(None, instrument) if instrument is not None else self._only_previewable()
        out = {}
        for role, slot in runner.instrument.slots.items():
            if slot.device is not None:
                out[role] = runner.instrument.settings_of(role)
        return {"instrument": runner.name, "devices": out}

    def _cmd_runs(self, limit: int = 100) -> list[dict[str, Any]]:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ProtocolError(f"limit = {limit!r}: must be a positive integer")
        return self.store.list(limit)

    def _cmd_run(self, run_id: str, version: int | None = None) -> dict[str, Any]:
        if not isinstance(run_id, str):
            raise ProtocolError(f"run_id = {run_id!r}: must be a run id string")
        if version is not None and not is_version(version):
            raise ProtocolError(f"version = {version!r}: must be a result version number (1, 2, ...)")
        return self.store.get(run_id, version)

    def _cmd_run_files(self, run_id: str) -> list[dict[str, Any]]:
        """The regular files of a stored run's folder (exoacq.run_folder): path, bytes, modified."""
        return list_files(self.store.run_dir(self.store.get(run_id)["run_id"]))

    def _cmd_run_file(self, run_id: str, path: str, offset: int = 0, length: int = MAX_CHUNK_BYTES) -> dict[str, Any]:
        """A chunk of one file of a stored run's folder, base64 (exoacq.run_folder.read_chunk)."""
        return read_chunk(self.store.run_dir(self.store.get(run_id)["run_id"]), path, offset, length)

    # -- result versions: re-processing a stored run (exoacq.reprocessing) --------------------
    def _cmd_reprocess(self, run_id: str, overrides: dict[str, Any] | None = None,
                       reason: str | None = None) -> dict[str, Any]:
        """Analyse a stored run again with ``overrides``: reply at once with the version reserved; the
        method's hook runs in the re-processing thread; the version is stored and published when done."""
        return self.reprocessing.request(run_id, overrides, reason)

    def _cmd_select_version(self, run_id: str, version: int | None) -> dict[str, Any]:
        """The operator picks which version is the run's result (null: the newest again)."""
        return self.reprocessing.select(run_id, version)

    def _cmd_approve(self, run_id: str, comment: str | None = None) -> dict[str, Any]:
        """The sender approves a finished run (exoacq.audit_recorder: catalog and audit log)."""
        return self.audit.approve(run_id, comment)

    def _cmd_bluesky(self, run_id: str) -> list[list[Any]]:
        """A run's event-model documents, as ``[name, doc]`` pairs in the order they were published."""
        if not isinstance(run_id, str):
            raise ProtocolError(f"run_id = {run_id!r}: must be a run id string")
        path = self.store.run_dir(self.store.get(run_id)["run_id"]) / BLUESKY_FILE
        if not path.exists():
            raise ExoacqError(f"run {run_id} has no event-model documents (it never started, or was recorded "
                              "before exoacq kept them)", code="no_documents")
        return [[name, doc] for name, doc in read_jsonl(path)]
