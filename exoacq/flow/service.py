"""The flow method's part of the daemon, for one instrument.

With a digitizer, a run records detector traces for ``duration_s`` of live
time: each block is searched for pulses as it arrives (trigger on the
scatter channel, height / area / width on every channel), the live event
rate and dot plot go out as ``flow.progress``, and at the end the events are
calibrated, gated and analysed against the controls attached to the run,
written as an FCS 3.1 file, and published as ``flow.result``. With a
cytometer's export folder, each new FCS file is analysed and its result
published as it appears (``run_id`` null).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from exoacq.bus import make_document
from exoacq.errors import DeviceError, ExoacqError
from exoacq.flow.plugin import FlowRun as Run
from exoacq.flow.run_events import WAKE_EVENT, EventsToRunFile
from exoacq.methods import FolderWatcher, MethodService, RunStatus, make_safe

log = logging.getLogger("exoacq.flow")

#: Fields of a result document that are the daemon's, not the analysis's.
RESULT_OWN = {"schema", "run_id", "time", "method", "instrument", "complete"}
#: Event-rate trace points kept for progress documents.
RATE_POINTS = 600


class FlowService(MethodService):
    def __init__(self, instrument, context):
        super().__init__(instrument, context)
        self.settings = instrument.config.options
        self._watcher: FolderWatcher | None = None
        self.files_published = 0
        #: Each run's events, as acquired, into its run.h5 (flow/events).
        self.to_run_file = EventsToRunFile(instrument.name, context.emit, context.record)

    # -- lifetime -------------------------------------------------------------------
    def start(self) -> None:
        if "cytometer" in self.instrument.slots:
            self._watcher = FolderWatcher(self, "cytometer", self.settings.watch_interval_s, self.analyse_file)
            self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {"ready": True, "files_published": self.files_published,
                "trigger": {"channel": s.trigger_channel, "k_sigma": s.trigger_k_sigma,
                            "level_counts": s.trigger_level_counts, "hysteresis": s.hysteresis},
                "calibration": s.calibration, "markers": dict(s.markers)}

    # -- the engine (acquisition thread) --------------------------------------------
    def _flow_rate_ul_min(self) -> tuple[float | None, str]:
        """The sample flow rate and where it came from."""
        if "pump" in self.instrument.slots:
            pump = self.instrument.device("pump")
            rate = getattr(pump, "rate_ul_min", None)
            if callable(rate):
                return float(rate()), "pump"
        if self.settings.flow_rate_ul_min is not None:
            return self.settings.flow_rate_ul_min, "settings.flow_rate_ul_min"
        simulation = self.instrument.context.get("flow_simulation")
        if simulation is not None and self.instrument.config.simulated:
            return simulation.flow_rate_ul_min, "simulation.flow_rate_ul_min"
        return None, "unknown"

    def setup(self, run: Run) -> None:
        from exoacq.flow.pipeline import load_controls

        digitizer = self.instrument.device("digitizer")
        if self.settings.trigger_channel not in digitizer.channels:
            raise ExoacqError(f"trigger channel {self.settings.trigger_channel!r} is not one of the digitizer's "
                              f"channels ({', '.join(digitizer.channels)})", code="bad_settings")
        run.controls = load_controls(run.settings["controls"], self.context.data_dir / "runs")
        source = self.instrument.context.get("flow_source")
        if self.instrument.config.devices["digitizer"].simulated and hasattr(source, "load"):
            # the simulated operator loads the run's tube
            source.load(dilution=run.settings["dilution"], control=run.settings["control"])
        rate, rate_source = self._flow_rate_ul_min()
        run.settings["flow_rate_ul_min"], run.settings["flow_rate_source"] = rate, rate_source
        if "laser" in self.instrument.slots:
            laser = self.instrument.device("laser")
            faults = laser.faults()
            if faults:
                raise DeviceError(f"laser reports faults: {', '.join(faults)}")
            laser.set_emission(True)
        if "pump" in self.instrument.slots:
            self.instrument.device("pump").run()
        self.context.emit({"event": "settings", "run_id": run.run_id, "instruments": self.instrument.describe()})

    def exec(self, run: Run) -> dict[str, Any]:
        from exoacq.flow.recording import Recorder

        digitizer = self.instrument.device("digitizer")
        recorder = Recorder(digitizer.channels, digitizer.sample_rate_hz, self.settings,
                            on_events=self.to_run_file.sink(run.run_id))
        duration = run.settings["duration_s"]
        digitizer.start()
        started = last = time.monotonic()
        try:
            while not run.abort.is_set() and recorder.live_time_s < duration:
                block = digitizer.read(1.0)
                now = time.monotonic()
                if block is not None:
                    recorder.add(block, limit_s=duration)
                elif now - started > duration + 30.0:
                    raise DeviceError(f"digitizer: no traces for {now - started:.0f} s (is it triggering?)")
                if now - last >= self.settings.progress_interval_s:
                    last = now
                    self.context.emit({"event": "flow", "run_id": run.run_id, **recorder.progress(
                        self.settings.dot_plot_points)})
        finally:
            self.to_run_file.wake(run.run_id)  # on an error too: what was acquired reaches run.h5
            digitizer.stop()
        recorder.finish()
        self.context.emit({"event": "flow", "run_id": run.run_id, **recorder.progress(self.settings.dot_plot_points)})
        if not run.abort.is_set():
            run.analysis = self._analyse(run, recorder)
            self.context.emit({"event": "analysis", "run_id": run.run_id})
        return {"events": recorder.events_total, "live_time_s": round(recorder.live_time_s, 6),
                "samples": recorder.samples}

    def _analyse(self, run: Run, recorder: Any) -> dict[str, Any]:
        from exoacq.flow.pipeline import analyse_recording

        return analyse_recording(run, recorder, self.settings, self.instrument.name)

    def teardown(self, run: Run) -> None:
        steps = [lambda: self.instrument.device("digitizer").stop()]
        if "pump" in self.instrument.slots:
            steps.append(lambda: self.instrument.device("pump").stop())
        if "laser" in self.instrument.slots:
            steps.insert(0, lambda: self.instrument.device("laser").set_emission(False))
        make_safe(steps)

    # -- events, results, progress (main thread) ------------------------------------------
    def on_event(self, status: RunStatus | None, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in (WAKE_EVENT, "flow"):  # the last "flow" of a run follows its last events
            self.to_run_file.drain()
            if kind == WAKE_EVENT:
                return
        if kind == "file_result":
            self.files_published += 1
            self.context.publish("flow.result", event["document"])
            return
        if status is None:
            return
        if kind == "settings":
            status.data["instruments"] = event["instruments"]
        elif kind == "flow":
            status.data["live"] = event
            status.acquisition.update({"events": event["events"], "live_time_s": event["live_time_s"]})
            self.context.progress_now(status)

    def on_processing(self, status: RunStatus) -> None:
        analysis = getattr(status.run, "analysis", None)
        if analysis is None:
            self.context.fail(status, "the run ended without events to analyse")
            return
        self.context.finish(status, self._result(status, analysis))

    def _result(self, status: RunStatus, analysis: dict[str, Any]) -> dict[str, Any]:
        run = status.run
        body = {k: v for k, v in analysis.items() if k not in RESULT_OWN | {"sample", "dilution", "control"}}
        return make_document(
            "flow.result", run.run_id, schema=self.instrument.method.topics["flow.result"], method="flow",
            instrument=run.instrument, complete=True, sample=run.settings["sample"],
            dilution=run.settings["dilution"], control=run.settings["control"], **body,
            settings={"acquisition": run.settings, "analysis": self.settings.model_dump(mode="json"),
                      "instruments": status.data.get("instruments", {})})

    def progress(self, status: RunStatus) -> dict[str, Any] | None:
        from exoacq.flow.recording import empty_progress

        run = status.run
        live = status.data.get("live") or empty_progress(self.settings)
        fields = {k: v for k, v in live.items() if k not in ("event", "run_id")}
        return {"state": status.state, "duration_s": run.settings["duration_s"], "sample": run.settings["sample"],
                "control": run.settings["control"], **fields}

    # -- a cytometer's export folder (a FolderWatcher's thread) ------------------------------
    def analyse_file(self, path: Path, folder: Any = None) -> dict[str, Any]:
        """An exported FCS file's result document (``run_id`` null, ``source`` the file); an unreadable
        file gives a document with ``error`` and no measurements."""
        from exoacq.flow.pipeline import analyse_fcs_file

        schema = self.instrument.method.topics["flow.result"]
        common = {"method": "flow", "instrument": self.instrument.name, "source": str(path)}
        try:
            body = analyse_fcs_file(path, self.settings,
                                    flow_rate_ul_min=getattr(folder, "flow_rate_ul_min", None))
        except ExoacqError as exc:
            log.error("%s: %s", self.instrument.name, exc)
            return make_document("flow.result", None, schema=schema, **common, complete=False, error=str(exc),
                                 parameters=[], events={"total": 0, "gated": 0}, concentration_per_ml=None,
                                 markers={}, warnings=[str(exc)])
        body = {k: v for k, v in body.items() if k not in RESULT_OWN | {"source"}}
        return make_document("flow.result", None, schema=schema, **common, complete=True, **body)

