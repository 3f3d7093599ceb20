"""From events to a flow result: the same steps for a daemon run, a watched folder's file and
``exoacq analyze flow`` (calibration, gates, markers, controls; FCS 3.1 out).

A run's events are written as ``events.fcs`` in its folder with the keywords a
later analysis needs (``EXOACQ_DILUTION``, ``EXOACQ_FLOW_RATE_UL_MIN``,
``EXOACQ_LIVE_TIME_S``, ``EXOACQ_CONTROL``, ``EXOACQ_TRIGGER_THRESHOLD_AU``...), so
that the run serves as a control for another: ``controls = {"unstained": RUN_ID}``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

import numpy as np

from exoacq import __version__
from exoacq.errors import ExoacqError

#: The file of a run's events, in its folder.
EVENTS_FILE = "events.fcs"
#: Units of calibrated parameters ($PnCALIBRATION, FCS 3.1).
CALIBRATED_UNITS = {"Diameter": "1,nm"}


def _keyword_float(keywords: dict[str, str], key: str) -> float | None:
    value = keywords.get(key)
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def fcs_input(path: Path | str, *, dilution: float | None = None, flow_rate_ul_min: float | None = None) -> Any:
    """An FCS file as an analysis input (:class:`exoacq.flow.analysis.FlowInput`), with the
    reader's warnings; a file exoacq wrote brings its own dilution, flow rate and live time."""
    from exoacq.flow.analysis import FlowInput
    from exoacq.flow.fcs import read_fcs

    data = read_fcs(path)
    kw = data.keywords
    if dilution is None:
        dilution = _keyword_float(kw, "EXOACQ_DILUTION") or 1.0
    if flow_rate_ul_min is None:
        flow_rate_ul_min = _keyword_float(kw, "EXOACQ_FLOW_RATE_UL_MIN")
    flow = FlowInput.from_fcs(data, flow_rate_ul_min=flow_rate_ul_min, dilution=dilution)
    live = _keyword_float(kw, "EXOACQ_LIVE_TIME_S")
    if live:
        flow.duration_s = live
    return flow


def load_controls(controls: dict[str, str], runs_dir: Path) -> dict[str, Any]:
    """The control runs attached to a sample (kind -> run id), read from their events files."""
    out = {}
    for kind, run_id in controls.items():
        path = Path(runs_dir) / run_id / EVENTS_FILE
        if not path.exists():
            raise ExoacqError(f"{kind} control {run_id}: no events file {path} (is it a finished flow run "
                              "of this daemon?)", code="bad_control")
        out[kind] = fcs_input(path)
    return out


def analysis_files(settings: Any) -> tuple[Any, Any]:
    from exoacq.flow.settings_files import load_analysis_files
    return load_analysis_files(settings)


#: Keywords under which an FCS file carries its spillover (its events are compensated when read).
SPILLOVER_KEYWORDS = ("$SPILLOVER", "$SPILL", "SPILL")


def spillover_keyword(spillover: pd.DataFrame) -> str:
    """FCS 3.1 $SPILLOVER: "n,name_1,...,name_n,s_11,s_12,...,s_nn" (rows: sources)."""
    names = [str(c) for c in spillover.columns]
    values = [repr(float(v)) for v in spillover.to_numpy().ravel()]
    return ",".join([str(len(names)), *names, *values])


def compensate_events(events: pd.DataFrame, spillover: pd.DataFrame | None) -> pd.DataFrame:
    """Spillover removed from the heights named in the matrix and from the matching areas
    (``FL1-H`` -> ``FL1-A``): measured = true x S, so true = measured x S^-1 per event."""
    if spillover is None:
        return events
    names = [str(c) for c in spillover.columns]
    if not all(n in events.columns for n in names):
        return events
    out = events.copy()
    matrix = spillover.to_numpy(dtype=float)
    groups = [names]
    areas = [n[:-2] + "-A" for n in names if n.endswith("-H")]
    if len(areas) == len(names) and all(a in events.columns for a in areas):
        groups.append(areas)
    for columns in groups:
        measured = out[columns].to_numpy(dtype=float)
        out[columns] = np.linalg.solve(matrix.T, measured.T).T
    return out


def _compensated(flow: Any, calibration: Any) -> Any:
    """An analysis input compensated with the calibration's spillover, unless its file had its own."""
    spillover = getattr(calibration, "spillover", None)
    if spillover is None or any(k in flow.keywords for k in SPILLOVER_KEYWORDS):
        return flow
    flow.events = compensate_events(flow.events, spillover)
    flow.keywords = {**flow.keywords, "$SPILLOVER": spillover_keyword(spillover)}
    return flow


#: A sample's trigger-channel noise above this multiple of the reference's (the calibration's beads, or the
#: buffer control), or its baseline this many reference noise SDs above the reference's, means unresolved
#: particles add up under the pulses: swarm (van der Pol et al. 2012, J. Thromb. Haemost. 10:919).
SWARM_NOISE_RATIO = 1.5
SWARM_BASELINE_SHIFT_SIGMA = 3.0


def level_keywords(detector: Any, volts_per_count: dict[str, float] | None = None) -> dict[str, str]:
    """Each channel's baseline and noise (counts), and the digitizer's volts per count, as FCS
    keywords of the events file."""
    out = {f"EXOACQ_VOLTS_PER_COUNT_{c}": repr(float(v)) for c, v in (volts_per_count or {}).items()}
    for channel, value in (detector.baseline_counts or {}).items():
        out[f"EXOACQ_BASELINE_COUNTS_{channel}"] = repr(float(value))
    for channel, value in (detector.noise_counts or {}).items():
        out[f"EXOACQ_NOISE_COUNTS_{channel}"] = repr(float(value))
    return out


def levels(keywords: dict[str, str], channel: str) -> tuple[float, float] | None:
    """(baseline, noise) of a channel recorded in an events file's keywords, or None."""
    baseline = _keyword_float(keywords, f"EXOACQ_BASELINE_COUNTS_{channel}")
    noise = _keyword_float(keywords, f"EXOACQ_NOISE_COUNTS_{channel}")
    return None if baseline is None or noise is None else (baseline, noise)


def baseline_check(sample: Any, calibration: Any, buffer: Any = None) -> tuple[dict | None, str | None]:
    """The sample's trigger-channel baseline against the reference (the buffer control's, else the
    calibration's): (the comparison, a swarm reason or None)."""
    channel = sample.keywords.get("EXOACQ_TRIGGER_CHANNEL") or (getattr(calibration, "detector", None) or {}).get(
        "channel")
    own = levels(sample.keywords, channel) if channel else None
    if own is None:
        return None, None
    reference, source = None, None
    if buffer is not None and levels(buffer.keywords, channel) is not None:
        reference, source = levels(buffer.keywords, channel), "the buffer control"
    elif getattr(calibration, "detector", None) and calibration.detector.get("channel") == channel:
        reference = (calibration.detector["baseline_counts"], calibration.detector["noise_counts"])
        source = "the calibration's bead run"
    check = {"channel": channel, "baseline_counts": own[0], "noise_counts": own[1],
             "volts_per_count": _keyword_float(sample.keywords, f"EXOACQ_VOLTS_PER_COUNT_{channel}"),
             "reference": None if reference is None else {"source": source, "baseline_counts": reference[0],
                                                          "noise_counts": reference[1]}}
    if reference is None:
        return check, None
    if own[1] > SWARM_NOISE_RATIO * reference[1] or own[0] - reference[0] > SWARM_BASELINE_SHIFT_SIGMA * reference[1]:
        return check, (f"the {channel} baseline is {own[0]:.1f} counts with noise {own[1]:.2f}, against "
                       f"{reference[0]:.1f} and {reference[1]:.2f} in {source}: unresolved particles add up "
                       "under the pulses")
    return check, None


def scale_mismatch(check: dict | None, calibration: Any) -> str | None:
    """A warning when the digitizer's scale (volts per count) differs from the one the calibration was
    measured at: heights in counts, hence diameters and MESF, would be off by that factor."""
    detector = getattr(calibration, "detector", None) or {}
    calibrated = detector.get("volts_per_count")
    now = (check or {}).get("volts_per_count")
    if not calibrated or not now or abs(now / calibrated - 1.0) < 1e-3:
        return None
    return (f"the digitizer's {detector.get('channel')} scale is {now:.4g} V/count but the calibration was measured "
            f"at {calibrated:.4g} V/count: heights, diameters and MESF are off by a factor {now / calibrated:.3g}; "
            "restore the digitizer's settings or calibrate again at these")


def analyse(sample: Any, *, calibration: Any, gates: Any, markers: dict[str, str], controls: dict[str, Any],
            trigger_threshold_au: float | None) -> dict[str, Any]:
    """The analysis (:func:`exoacq.flow.analysis.analyze`) of compensated inputs, with the input's reader
    warnings kept and the calibration's validity checked."""
    from datetime import date

    from exoacq.flow.analysis import Controls, analyze

    sample = _compensated(sample, calibration)
    controls = {kind: _compensated(flow, calibration) for kind, flow in controls.items()}
    present = {m: p for m, p in markers.items() if p in sample.events.columns}
    result = analyze(sample, calibration=calibration, gates=gates, markers=present,
                     controls=Controls(**controls), trigger_threshold_au=trigger_threshold_au)
    check, reason = baseline_check(sample, calibration, controls.get("buffer"))
    mismatch = scale_mismatch(check, calibration)
    if mismatch:
        result["warnings"].append(mismatch)
    result["swarm"]["baseline"] = check
    if reason:
        result["swarm"]["flag"] = True
        result["swarm"]["reasons"].append(reason)
        result["warnings"].append(f"possible swarm: {reason} (dilute and check with a dilution series)")
    missing = sorted(set(markers) - set(present))
    if missing:
        result["warnings"].append(f"marker(s) {', '.join(missing)}: their parameters "
                                  f"({', '.join(markers[m] for m in missing)}) are not in the data")
    result["warnings"] = list(dict.fromkeys(list(getattr(sample, "warnings", [])) + result["warnings"]))
    if calibration is not None:
        expired = calibration.expires is not None and str(calibration.expires) < date.today().isoformat()
        result["calibration"] = {"source": calibration.source, "created": calibration.created,
                                 "expires": calibration.expires, "expired": expired,
                                 "spillover": None if calibration.spillover is None
                                 else [str(c) for c in calibration.spillover.columns]}
        if expired:
            result["warnings"].append(f"the calibration {calibration.source} expired on {calibration.expires}: "
                                      "measure the beads again")
    return result


def export_events(path: Path, events: pd.DataFrame, calibration: Any, *, keywords: dict[str, str],
                  volume_nl: float | None, timestep_s: float | None = None) -> Path:
    """Write events with their calibrated parameters (``Diameter`` nm, ``<param>-MESF``) as FCS 3.1.

    As FCS does, the detector values are stored uncompensated with the spillover in $SPILLOVER
    (a reader compensates them); MESF is computed from the compensated values."""
    from exoacq.flow.analysis import calibrated_events
    from exoacq.flow.fcs import write_fcs

    keywords = dict(keywords)
    spillover = getattr(calibration, "spillover", None)
    if spillover is not None and not any(k in keywords for k in SPILLOVER_KEYWORDS) and all(
            str(c) in events.columns for c in spillover.columns):
        table = calibrated_events(compensate_events(events, spillover), calibration)
        raw = [c for c in events.columns if c in table.columns]
        table[raw] = events[raw].to_numpy()
        keywords["$SPILLOVER"] = spillover_keyword(spillover)
    else:
        table = calibrated_events(events, calibration)
    units = {name: unit for name, unit in CALIBRATED_UNITS.items() if name in table.columns}
    units.update({name: "1,MESF" for name in table.columns if str(name).endswith("-MESF")})
    return write_fcs(path, table, keywords=keywords, calibration=units, volume_nl=volume_nl, timestep_s=timestep_s)


def analyse_recording(run: Any, recorder: Any, settings: Any, instrument: str) -> dict[str, Any]:
    """A daemon run's events: analysed against its controls, written to ``events.fcs``."""
    from exoacq.flow.analysis import FlowInput

    calibration, gates = analysis_files(settings)
    events = recorder.events()
    detector = recorder.detector
    baseline = (detector.baseline_counts or {}).get(detector.trigger.channel)
    threshold_au = (detector.threshold_counts - baseline) if detector.threshold_counts is not None else None
    flow_rate = run.settings.get("flow_rate_ul_min")
    live_s = recorder.live_time_s
    keywords = {"$CYT": f"exoacq {instrument}", "EXOACQ_VERSION": __version__, "EXOACQ_RUN_ID": run.run_id,
                "EXOACQ_SAMPLE": run.settings["sample"], "EXOACQ_DILUTION": repr(float(run.settings["dilution"])),
                "EXOACQ_CONTROL": run.settings["control"] or "sample", "EXOACQ_LIVE_TIME_S": repr(live_s),
                "EXOACQ_SAMPLE_RATE_HZ": repr(recorder.sample_rate_hz),
                **level_keywords(detector, recorder.volts_per_count)}
    if flow_rate:
        keywords["EXOACQ_FLOW_RATE_UL_MIN"] = repr(float(flow_rate))
    if threshold_au is not None:
        keywords["EXOACQ_TRIGGER_CHANNEL"] = detector.trigger.channel
        keywords["EXOACQ_TRIGGER_THRESHOLD_AU"] = repr(float(threshold_au))
    volume_nl = flow_rate * live_s / 60.0 * 1000.0 if flow_rate else None
    # The events are kept first: a failing analysis (a bad gate) must not lose the acquisition.
    files, problems = {}, []
    try:
        files["fcs"] = str(export_events(run.output_dir / EVENTS_FILE, events, calibration, keywords=keywords,
                                         volume_nl=volume_nl))
    except (OSError, ExoacqError) as exc:
        problems.append(f"cannot write the run's FCS file: {getattr(exc, 'strerror', None) or exc}")
    sample = FlowInput(events=events, duration_s=live_s, volume_nl=None, flow_rate_ul_min=flow_rate,
                       dilution=run.settings["dilution"], source=run.run_id, keywords=dict(keywords))
    result = analyse(sample, calibration=calibration, gates=gates, markers=settings.markers,
                     controls=run.controls, trigger_threshold_au=threshold_au)
    result["acquisition"] = {"live_time_s": live_s, "samples": recorder.samples, "blocks": recorder.blocks,
                             "sample_rate_hz": recorder.sample_rate_hz, "channels": recorder.channels,
                             "flow_rate_ul_min": flow_rate, "flow_rate_source": run.settings.get("flow_rate_source"),
                             "trigger": {"channel": detector.trigger.channel,
                                         "threshold_counts": detector.threshold_counts,
                                         "baseline_counts": baseline,
                                         "noise_counts": (detector.noise_counts or {}).get(detector.trigger.channel),
                                         "pulses_truncated": detector.pulses_truncated}}
    result["files"] = files
    result["warnings"] += problems
    return result


def analyse_fcs_file(path: Path, settings: Any, *, flow_rate_ul_min: float | None = None,
                     dilution: float | None = None) -> dict[str, Any]:
    """An exported FCS file analysed with an instrument's settings (a watched cytometer folder)."""
    calibration, gates = analysis_files(settings)
    sample = fcs_input(path, dilution=dilution, flow_rate_ul_min=flow_rate_ul_min or settings.flow_rate_ul_min)
    threshold = _keyword_float(sample.keywords, "EXOACQ_TRIGGER_THRESHOLD_AU")
    return analyse(sample, calibration=calibration, gates=gates, markers=settings.markers, controls={},
                   trigger_threshold_au=threshold)

