"""The DLS method's part of the daemon, for one instrument.

With a photon-counting detector, a run is ``runs`` sub-runs of ``duration_s``:
the photons of each are correlated in real time by the multi-tau correlator
(live curves in ``dls.progress``), the sub-runs are analysed together (dust
rejection, cumulants, inversion) and the result published as ``dls.result``.
With a hardware correlator, each new file in its folder is analysed and its
result published as it appears (a thread of its own reads and analyses).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from exoacq.bus import make_document
from exoacq.errors import DeviceError, ExoacqError, ProtocolError
from exoacq.dls.plugin import DLSRun as Run
from exoacq.methods import FolderWatcher, MethodService, RunStatus, make_safe
from exoacq.physics import temperature_drift_warning

log = logging.getLogger("exoacq.dls")

#: Points of the count-rate trace kept for progress documents.
TRACE_POINTS = 600
#: Fields of a result document that are the daemon's, not the analysis's.
RESULT_OWN = {"schema", "run_id", "time", "method", "instrument", "complete"}


def progress_fit(lag_s, g2_minus_1, *, q_per_nm: float, temperature_c: float, viscosity_mpa_s: float,
                 fit_fraction: float) -> dict[str, Any] | None:
    """The live fit of ``dls.progress``: the 2nd-order cumulant fit (exoacq.dls.cumulants.cumulants, as the
    result's) of the curve so far (up to its first lag without data), as ``lag_s`` (the fit range),
    ``g2_minus_1`` (the fitted curve there), ``z_average_nm`` and ``pdi``; None while there is no
    correlation to fit (exoacq.dls.quality.correlation_check) or the fit fails or gives no decay."""
    from exoacq.dls.cumulants import cumulants, hydrodynamic_diameter_nm
    from exoacq.dls.quality import correlation_check

    try:
        if not correlation_check(lag_s, g2_minus_1, fit_fraction=fit_fraction)["correlated"]:
            return None
        fit = cumulants(lag_s, g2_minus_1, order=2, fit_fraction=fit_fraction)
    except ValueError:
        return None
    diameter = hydrodynamic_diameter_nm(fit["gamma_per_s"], q_per_nm, temperature_c, viscosity_mpa_s)
    if diameter is None:
        return None
    lag = np.asarray(lag_s, float)
    tau = lag[(lag >= fit["fit_start_lag_s"]) & (lag <= fit["fit_end_lag_s"])]
    # ln(g2 - 1) = ln(intercept) - 2 Gamma tau + mu2 tau^2 (the model cumulants fitted)
    curve = fit["intercept"] * np.exp(-2.0 * fit["gamma_per_s"] * tau + fit["mu2_per_s2"] * tau**2)
    return {"lag_s": tau.tolist(), "g2_minus_1": curve.tolist(), "z_average_nm": diameter, "pdi": fit["pdi"]}


class DLSService(MethodService):
    def __init__(self, instrument, context):
        super().__init__(instrument, context)
        self.settings = instrument.config.options
        self._watcher: FolderWatcher | None = None
        self.files_published = 0

    # -- lifetime -------------------------------------------------------------------
    def start(self) -> None:
        if "correlator" in self.instrument.slots:
            self._watcher = FolderWatcher(self, "correlator", self.settings.watch_interval_s, self.analyse_file)
            self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()

    def describe(self) -> dict[str, Any]:
        return {"ready": True, "files_published": self.files_published,
                "correlator": {"base_lag_s": self.settings.base_lag_s, "max_lag_s": self.settings.max_lag_s,
                               "first_channels": self.settings.first_channels,
                               "per_octave": self.settings.per_octave}}

    # -- the engine (acquisition thread) --------------------------------------------
    def _temperature_c(self) -> float:
        if "temperature" in self.instrument.slots:
            return float(self.instrument.device("temperature").temperature_c())
        return self.settings.temperature_c

    def setup(self, run: Run) -> None:
        detector = self.instrument.device("detector")
        angle = run.settings.get("angle_deg")
        if angle is not None and abs(angle - detector.angle_deg) > 1e-6:
            if not hasattr(detector, "set_angle_deg"):
                raise ProtocolError(f"the detector is fixed at {detector.angle_deg:g} degrees; this instrument "
                                    f"cannot measure at angle_deg = {angle:g}")
            detector.set_angle_deg(angle)
        run.settings["angle_deg"] = detector.angle_deg
        run.settings["temperature_start_c"] = self._temperature_c()
        if "laser" in self.instrument.slots:
            laser = self.instrument.device("laser")
            faults = laser.faults()
            if faults:
                raise DeviceError(f"laser reports faults: {', '.join(faults)}")
            laser.set_emission(True)
        self.context.emit({"event": "settings", "run_id": run.run_id, "instruments": self.instrument.describe()})

    def exec(self, run: Run) -> dict[str, Any]:
        from exoacq.dls.correlator import MultiTauCorrelator

        detector = self.instrument.device("detector")
        s = self.settings
        runs, duration = run.settings["runs"], run.settings["duration_s"]
        end_tick = int(round(duration / detector.resolution_s))
        curves, traces, photons = [], [], 0
        lag_s = None
        for index in range(1, runs + 1):
            if run.abort.is_set():
                break
            correlator = MultiTauCorrelator(detector.resolution_s, base_lag_s=s.base_lag_s, max_lag_s=s.max_lag_s,
                                            first_channels=s.first_channels, per_octave=s.per_octave)
            detector.start()
            started = last = time.monotonic()
            try:
                while not run.abort.is_set():
                    ticks = detector.read(0.2)
                    done = ticks.size > 0 and ticks[-1] >= end_tick
                    ticks = ticks[ticks < end_tick] if done else ticks
                    if ticks.size:
                        correlator.add(ticks)
                    now = time.monotonic()
                    if done or now - started > duration + 30.0:
                        break
                    if now - last >= s.progress_interval_s:
                        last = now
                        self._progress(run, index, runs, correlator, now - started)
            finally:
                detector.stop()
            if run.abort.is_set():
                break
            if correlator.photons == 0:
                raise DeviceError(f"detector: no photon in sub-run {index} ({duration:g} s): is the laser on and "
                                  "the detector's shutter open?")
            self._progress(run, index, runs, correlator, duration)
            lag_s = correlator.lag_s
            curves.append(correlator.g2_minus_1())
            # the sub-run's curve, for the run's run.h5 (dls/correlations; exoacq.durable)
            self.context.emit({"event": "rows", "run_id": run.run_id, "dataset": "dls/correlations",
                               "rows": [[index, t, g] for t, g in zip(lag_s.tolist(), curves[-1].tolist())]})
            traces.append(correlator.count_trace())
            photons += correlator.photons
        run.settings["temperature_end_c"] = self._temperature_c()
        if curves and not run.abort.is_set():
            run.analysis = self._analyse(run, detector, lag_s, curves, traces)
            self.context.emit({"event": "analysis", "run_id": run.run_id})
        return {"photons": photons, "runs_completed": len(curves)}

    def _progress(self, run: Run, index: int, runs: int, correlator: Any, elapsed_s: float) -> None:
        from exoacq.dls.cumulants import scattering_vector_per_nm
        from exoacq.physics import water_viscosity_iapws_mpa_s

        time_s, rate_hz = correlator.count_trace()
        keep = slice(max(0, len(time_s) - TRACE_POINTS), None)
        s, detector = self.settings, self.instrument.device("detector")
        g2_minus_1, temperature_c = correlator.g2_minus_1(), run.settings["temperature_start_c"]
        medium = s.medium_refractive_index or getattr(detector, "medium_refractive_index", None) or 1.332
        fit = progress_fit(correlator.lag_s, g2_minus_1, fit_fraction=s.fit_fraction,
                           q_per_nm=scattering_vector_per_nm(detector.angle_deg, detector.wavelength_nm, medium),
                           temperature_c=temperature_c,
                           viscosity_mpa_s=s.viscosity_mpa_s or water_viscosity_iapws_mpa_s(temperature_c))
        self.context.emit({
            "event": "dls", "run_id": run.run_id, "run": index, "runs": runs, "elapsed_s": round(elapsed_s, 3),
            "photons": int(correlator.photons), "count_rate_hz": correlator.count_rate_hz,
            "lag_s": correlator.lag_s.tolist(), "g2_minus_1": g2_minus_1.tolist(), "fit": fit,
            "count_trace": {"time_s": np.asarray(time_s)[keep].tolist(), "rate_hz": np.asarray(rate_hz)[keep].tolist()},
        })

    def _analyse(self, run: Run, detector: Any, lag_s: np.ndarray, curves: list, traces: list) -> dict[str, Any]:
        """The sub-runs as one measurement (dust rejected by the analysis), analysed and written to the run's folder."""
        from exoacq.dls.analysis import analyze_record
        from exoacq.dls.io import write_alv
        from exoacq.dls.record import Correlation, DLSRecord

        s, duration = self.settings, run.settings["duration_s"]
        times = [np.asarray(t) + k * duration for k, (t, _) in enumerate(traces)]
        trace_t = np.concatenate(times) if times else None
        trace_hz = np.concatenate([np.asarray(r) for _, r in traces]) if traces else None
        temperature_c = (run.settings["temperature_start_c"] + run.settings["temperature_end_c"]) / 2
        medium = s.medium_refractive_index or getattr(detector, "medium_refractive_index", None) or 1.332
        correlation = Correlation(angle_deg=detector.angle_deg, lag_s=lag_s, g2_minus_1=np.mean(curves, axis=0),
                                  count_rate_hz=float(np.mean(trace_hz)) if trace_hz is not None else None,
                                  count_trace_time_s=trace_t, count_trace_hz=trace_hz, subruns=list(curves),
                                  channel="detector")
        record = DLSRecord(wavelength_nm=detector.wavelength_nm, temperature_c=temperature_c,
                           viscosity_mpa_s=s.viscosity_mpa_s, refractive_index=medium, correlations=[correlation],
                           duration_s=duration * len(curves), source=run.run_id, format="exoacq",
                           instrument=self.instrument.name)
        analysis = analyze_record(record, particle_refractive_index=s.particle_refractive_index,
                                  fit_fraction=s.fit_fraction)
        drift = temperature_drift_warning(run.settings["temperature_start_c"], run.settings["temperature_end_c"],
                                          "measurement")  # the set point may change while measuring
        if drift:
            analysis["warnings"] = [drift, *analysis.get("warnings", [])]
        files = {}
        try:
            asc = run.output_dir / "correlation.ASC"
            write_alv(asc, record)
            files["correlation"] = str(asc)
            curves_path = run.output_dir / "subruns.json"
            curves_path.write_text(json.dumps({"lag_s": lag_s.tolist(), "g2_minus_1": [c.tolist() for c in curves]}))
            files["subruns"] = str(curves_path)
        except (OSError, ValueError) as exc:
            analysis.setdefault("warnings", []).append(f"cannot write the run's files: {getattr(exc, 'strerror', None) or exc}")
        analysis["files"] = files
        return analysis

    def teardown(self, run: Run) -> None:
        steps = [lambda: self.instrument.device("detector").stop()]
        if "laser" in self.instrument.slots:
            steps.insert(0, lambda: self.instrument.device("laser").set_emission(False))
        make_safe(steps)

    # -- events, results, progress (main thread) ------------------------------------------
    def on_event(self, status: RunStatus | None, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "file_result":
            self.files_published += 1
            self.context.publish("dls.result", event["document"])
            return
        if status is None:
            return
        if kind == "settings":
            status.data["instruments"] = event["instruments"]
        elif kind == "rows":  # a finished sub-run's correlation curve: into the run's run.h5
            self.context.record(status.run.run_id, event["dataset"], event["rows"])
        elif kind == "dls":
            status.data["live"] = event
            status.acquisition.update({"photons": event["photons"], "elapsed_s": event["elapsed_s"]})
            self.context.progress_now(status)

    def on_processing(self, status: RunStatus) -> None:
        run = status.run
        analysis = getattr(run, "analysis", None)
        if analysis is None:
            self.context.fail(status, "the run ended without a correlation to analyse")
            return
        self.context.finish(status, self._result(status, analysis, complete=True))

    def _result(self, status: RunStatus, analysis: dict[str, Any], complete: bool) -> dict[str, Any]:
        run = status.run
        body = {k: v for k, v in analysis.items() if k not in RESULT_OWN}
        body["correlator"] = analysis.get("instrument")
        return make_document(
            "dls.result", run.run_id, schema=self.instrument.method.topics["dls.result"], method="dls",
            instrument=run.instrument, complete=complete, sample=run.settings["sample"],
            dilution=run.settings["dilution"], duration_s=run.settings["duration_s"], runs=run.settings["runs"],
            **body, settings={"acquisition": run.settings, "analysis": self.settings.model_dump(mode="json"),
                              "instruments": status.data.get("instruments", {})})

    def progress(self, status: RunStatus) -> dict[str, Any] | None:
        live = status.data.get("live")
        run = status.run
        base = {"state": status.state, "run": 0, "runs": run.settings["runs"], "duration_s": run.settings["duration_s"],
                "elapsed_s": 0.0, "angle_deg": run.settings.get("angle_deg"), "photons": 0, "count_rate_hz": None,
                "lag_s": [], "g2_minus_1": [], "fit": None, "count_trace": {"time_s": [], "rate_hz": []}}
        if live:
            base.update({k: live[k] for k in ("run", "elapsed_s", "photons", "count_rate_hz", "lag_s", "g2_minus_1",
                                              "fit", "count_trace")})
        return base

    # -- a hardware correlator's folder (a FolderWatcher's thread) ---------------------------
    def analyse_file(self, path: Path, correlator: Any = None) -> dict[str, Any]:
        """A correlator file's result document (``run_id`` null, ``source`` the file); an unreadable
        file gives a document with ``error`` and no measurements."""
        from exoacq.dls.analysis import analyze_record
        from exoacq.dls.io import read_dls_file

        schema = self.instrument.method.topics["dls.result"]
        common = {"method": "dls", "instrument": self.instrument.name, "complete": True, "source": str(path)}
        try:
            record = read_dls_file(path)
            analysis = analyze_record(record, particle_refractive_index=self.settings.particle_refractive_index,
                                      fit_fraction=self.settings.fit_fraction)
        except ExoacqError as exc:
            log.error("%s: %s", self.instrument.name, exc)
            return make_document("dls.result", None, schema=schema, **{**common, "complete": False}, error=str(exc),
                                 measurements=[], extrapolated=None, warnings=[str(exc)])
        body = {k: v for k, v in analysis.items() if k not in RESULT_OWN | {"source"}}
        body["correlator"] = analysis.get("instrument")
        return make_document("dls.result", None, schema=schema, **common, **body)
