"""Analysis of one nano flow cytometry acquisition (or FCS file): the body of a ``flow.result``.

Every number follows MIFlowCyt-EV (Welsh et al. 2020, J. Extracell. Vesicles 9:1713526):
calibrated scatter (diameter, with the stated EV model of the calibration) and fluorescence
(MESF), and the controls it asks for. The choices, stated:

- **Counted events.** Events in the final gate whose scatter is at or above the trigger
  threshold (``trigger_threshold_au``, in the units of the calibrated scatter parameter, height
  above baseline). With a scatter calibration the threshold maps to ``detection_limit_nm``, the
  diameter whose *model* scatter equals it: the counted events are then "the particles above the
  detection limit", and their sizes are the size statistics (events with a valid diameter only:
  beyond the first Mie oscillation the calibration returns NaN).
- **Concentration** = counted events x dilution / analysed volume; the volume is $VOL when known,
  else flow rate x duration; ``null`` when neither is known. The Poisson uncertainty (sqrt N)
  is carried. A **buffer-only** control in the same gate is counted per volume (its own volume,
  or its duration at the sample's flow rate), reported and subtracted, its Poisson uncertainty
  added in quadrature.
- **Markers.** Threshold at ``control_percentile`` (99.5th) of a control's events in the same
  gate: the marker's fluorescence-minus-one (FMO) control when attached (all stains but this one:
  it also holds the spread of the other fluorochromes' spillover after compensation; Roederer 2001,
  Cytometry 45:194), else the isotype control (it also carries non-specific binding), else the
  unstained control. Positive fraction =
  (f_sample - f_control) / (1 - f_control), clipped to [0, 1]. Without a control the threshold
  is ``marker_min_mesf`` (calibrated) or the noise of the sample's own negative population
  (centre + 5 sigma, from its 2.3rd and 15.9th percentiles), with a warning that it is not
  control-based.
- **Detergent lysis.** Rate-corrected (per volume or per second, x dilution, buffer subtracted)
  gated events that remain after lysis, over the sample's; above ``LYSIS_REMAINING_LIMIT``
  (10 %) the population is flagged ``non_vesicular`` (Welsh 2020; Osteikoetxea 2015).
- **Swarm from one run** (van der Pol et al. 2012, J. Thromb. Haemost. 10:919): total event rate
  above ``MAX_EVENT_RATE_PER_S`` (1.1e4/s: the swarm-free limit of one Apogee A60 study,
  REFERENCES.md), coincident-event fraction above ``MAX_COINCIDENT_FRACTION`` (5 %), or a
  broadened pulse-width distribution (95th/50th percentile of the trigger width above
  ``MAX_WIDTH_SPREAD``: merged pulses of several particles are long). :func:`dilution_series`
  is the definitive test: count rate must scale with dilution, median scatter must not change.
  ``overlap_loss_estimate`` = 1 - exp(-rate x median width) is the fraction of particles lost to
  overlapping pulses for a paralyzable dead time of one median width (Knoll 2010, Radiation Detection
  and Measurement, ch. 4): an upper estimate, reported, not corrected for (on the simulated
  instrument at 3,000 events/s it says 6 %; 4.4 % are lost).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from exoacq.errors import ExoacqError

if TYPE_CHECKING:
    from exoacq.flow.calibration import FlowCalibration
    from exoacq.flow.gating import GateSet

MAX_EVENT_RATE_PER_S = 1.1e4      # swarm-free below 1.1e4 events/s (Apogee A60 study, REFERENCES.md)
MAX_COINCIDENT_FRACTION = 0.05    # more than 5 % multi-peak pulses: the sample is too concentrated
MAX_WIDTH_SPREAD = 3.0            # 95th / 50th percentile of the trigger width
CONTROL_PERCENTILE = 99.5         # marker threshold: this percentile of the control's gated events
NOISE_K_SIGMA = 5.0               # marker threshold without a control: negative centre + 5 sigma
LYSIS_REMAINING_LIMIT = 0.10      # lysed control keeping > 10 % of the sample's events: not vesicular
DILUTION_SLOPE_TOLERANCE = 0.10   # d log(rate) / d log(1/dilution) must lie in 1 +- 0.10
MEDIAN_SCATTER_TOLERANCE = 0.05   # median scatter may change by at most 5 % over a dilution series
HISTOGRAM_EDGES_NM = np.geomspace(20.0, 1000.0, 61)   # 60 log-spaced bins, ~6.7 % wide


#: The longest acquisition a Time column may span (a day): beyond it, the column is damaged.
MAX_ACQUISITION_S = 86400.0


@dataclass
class FlowInput:
    """One acquisition: its event table and what is known of the volume it came from."""
    events: pd.DataFrame
    duration_s: float | None = None
    volume_nl: float | None = None          # analysed volume ($VOL, nL)
    flow_rate_ul_min: float | None = None
    dilution: float = 1.0                   # sample was diluted this many times before measuring
    source: str = ""
    keywords: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)   # carried into the result (e.g. the FCS reader's)

    @classmethod
    def from_fcs(cls, data: Any, *, flow_rate_ul_min: float | None = None, dilution: float = 1.0) -> "FlowInput":
        """From an :class:`exoacq.flow.fcs.FCSData` (its Time already in seconds when $TIMESTEP is known):
        compensated events (spillover applied when the file has one), duration from the Time range or
        $BTIM/$ETIM, $VOL."""
        from exoacq.flow.gating import compensate
        events = compensate(data) if data.spillover is not None else data.events
        time_column = next((c for c in events.columns if str(c).lower() == "time"), None)
        duration_s, notes = None, list(data.warnings)
        clock_s = _btim_etim_s(data.keywords)
        if time_column is not None and len(events) > 1 and data.timestep_s:
            t = events[time_column].to_numpy()
            duration_s = float(t.max() - t.min())
            if not 0.0 < duration_s <= MAX_ACQUISITION_S:
                notes.append(f"the Time parameter spans {duration_s:.4g} s (a damaged Time column?): not used for "
                             f"the duration{' ($BTIM-$ETIM is)' if clock_s else ''}")
                duration_s = None
            elif clock_s and not 0.5 < duration_s / clock_s < 2.0:
                notes.append(f"duration from Time x $TIMESTEP ({duration_s:.4g} s) disagrees with $BTIM-$ETIM "
                             f"({clock_s:.4g} s); the Time range is used")
        if not duration_s:
            duration_s = clock_s
        return cls(events=events, duration_s=duration_s, volume_nl=data.volume_nl, flow_rate_ul_min=flow_rate_ul_min,
                   dilution=dilution, source=str(data.path), keywords=dict(data.keywords), warnings=notes)


@dataclass
class Controls:
    """MIFlowCyt-EV controls attached to a sample (each optional)."""
    buffer: FlowInput | None = None        # buffer only: background events, subtracted
    unstained: FlowInput | None = None     # sample without antibodies: marker thresholds
    isotype: FlowInput | None = None       # isotype-labelled sample: marker thresholds (preferred)
    lysed: FlowInput | None = None         # detergent-lysed sample: non-vesicular events survive
    fmo: dict[str, FlowInput] = field(default_factory=dict)   # marker -> fluorescence-minus-one control


def _btim_etim_s(keywords: dict) -> float | None:
    """Duration from FCS $BTIM/$ETIM (hh:mm:ss[.cc] in 3.x; hh:mm:ss[:tt] (1/60 s) in 2.0)."""
    def seconds(text: str) -> float:
        parts = text.strip().split(":")
        s = int(parts[0]) * 3600 + int(parts[1]) * 60 + float(parts[2])
        return s + (int(parts[3]) / 60.0 if len(parts) > 3 else 0.0)
    try:
        d = seconds(keywords["$ETIM"]) - seconds(keywords["$BTIM"])
    except (KeyError, ValueError, IndexError):
        return None
    return d + 86400.0 if d < 0 else (d or None)


def _number(x: Any) -> float | None:
    """A JSON number, or None for NaN / inf / missing."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _column(table: pd.DataFrame, parameter: str, what: str, source: str) -> np.ndarray:
    if parameter not in table.columns:
        raise ExoacqError(f"{source or 'events'}: no parameter {parameter!r} for {what} "
                          f"(parameters: {', '.join(map(str, table.columns))})", code="bad_parameter")
    return table[parameter].to_numpy()


def calibrated_events(events: pd.DataFrame, calibration: "FlowCalibration | None") -> pd.DataFrame:
    """The event table plus ``Diameter`` (nm) and ``<ch>-MESF`` columns from the calibration (a shallow copy:
    the input is not modified)."""
    if calibration is None:
        return events
    table = events.copy(deep=False)
    if calibration.scatter is not None:
        scatter = _column(events, calibration.scatter.parameter, "the scatter calibration", "")
        table["Diameter"] = calibration.scatter.diameter_nm(scatter.astype(np.float64, copy=False))
    for parameter, fluorescence in calibration.fluorescence.items():
        name = parameter.split("-")[0] + "-MESF"
        if parameter in events.columns and name not in table.columns:
            table[name] = fluorescence.mesf(events[parameter].to_numpy(np.float64))
    return table


def _gated(table: pd.DataFrame, gates: "GateSet | None") -> np.ndarray:
    if gates is None:
        return np.ones(len(table), dtype=bool)
    masks = gates.apply(table)
    if gates.final not in masks:
        raise ExoacqError(f"gates: final gate {gates.final!r} not among {sorted(masks)}", code="bad_gates")
    return np.asarray(masks[gates.final], dtype=bool)


def _volume_ul(data: FlowInput, duration_s: float | None, flow_rate_ul_min: float | None) -> float | None:
    """Analysed volume: $VOL when known, else flow rate x duration."""
    if data.volume_nl:
        return data.volume_nl / 1000.0
    if flow_rate_ul_min and duration_s:
        return flow_rate_ul_min * duration_s / 60.0
    return None


class _Counted:
    """The counted events of one input: gated and above the trigger threshold."""

    def __init__(self, data: FlowInput, calibration, gates, scatter_parameter, threshold_au, role: str):
        if not isinstance(data.events, pd.DataFrame):
            raise ExoacqError(f"{data.source or role}: events must be a pandas DataFrame, got "
                              f"{type(data.events).__name__}", code="bad_parameter")
        if data.dilution is None or not data.dilution > 0:
            raise ExoacqError(f"{data.source or role}: dilution must be > 0, got {data.dilution!r}", code="bad_parameter")
        if data.duration_s is not None and not data.duration_s >= 0:
            raise ExoacqError(f"{data.source or role}: duration_s must be >= 0, got {data.duration_s!r}",
                              code="bad_parameter")
        self.data, self.role = data, role
        self.table = calibrated_events(data.events, calibration)
        self.gated = _gated(self.table, gates)
        self.counted = self.gated
        if threshold_au is not None and scatter_parameter is not None:
            scatter = _column(self.table, scatter_parameter, "the trigger threshold", data.source or role)
            self.counted = self.gated & (scatter >= threshold_au)
        self.n_total, self.n_gated, self.n = len(self.table), int(self.gated.sum()), int(self.counted.sum())
        self.duration_s = float(data.duration_s) if data.duration_s else None

    def values(self, parameter: str) -> np.ndarray:
        return _column(self.table, parameter, "analysis", self.data.source or self.role)[self.counted]


def _size(sample: _Counted, edges_nm: np.ndarray) -> tuple[dict | None, dict | None]:
    d = sample.values("Diameter")
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None, {"edges_nm": edges_nm.tolist(), "counts": [0] * (len(edges_nm) - 1)}
    d10, d50, d90 = np.quantile(d, [0.1, 0.5, 0.9])
    size = {"median": float(d50), "d10": float(d10), "d90": float(d90), "mean": float(d.mean()), "events": int(d.size)}
    log_edges = np.log10(np.maximum(edges_nm, 1e-300))
    if edges_nm[0] > 0 and np.allclose(np.diff(log_edges), log_edges[1] - log_edges[0]):   # numpy's fast path
        counts, _ = np.histogram(np.log10(d), bins=len(edges_nm) - 1, range=(log_edges[0], log_edges[-1]))
    else:
        counts, _ = np.histogram(d, bins=edges_nm)
    return size, {"edges_nm": [float(e) for e in edges_nm], "counts": counts.tolist()}


def _noise_threshold(x: np.ndarray) -> float:
    """Centre + k sigma of the negative population, from the low tail (robust to up to ~80 % positives):
    sigma = P15.9 - P2.3, centre = P15.9 + sigma (a Gaussian's -1 and -2 sigma points)."""
    p2, p16 = np.quantile(x, [0.02275, 0.15866])
    sigma = max(p16 - p2, 1e-12)
    return float(p16 + sigma + NOISE_K_SIGMA * sigma)


def _markers(sample: _Counted, markers: dict[str, str], controls: dict[str, _Counted], calibration,
             percentile: float, marker_min_mesf: float | None, warnings: list[str]) -> tuple[dict, dict]:
    fallback = "isotype" if "isotype" in controls else "unstained" if "unstained" in controls else None
    fractions, thresholds = {}, {}
    for name, parameter in markers.items():
        role = f"FMO {name}" if f"FMO {name}" in controls else fallback
        x = sample.values(parameter)
        fluorescence = calibration.fluorescence.get(parameter) if calibration is not None else None
        f_control = 0.0
        if role is not None:
            xc = controls[role].values(parameter)
            if xc.size == 0:
                raise ExoacqError(f"{role} control: no events in the gate for marker {name} ({parameter})",
                                  code="bad_control")
            if xc.size < 10.0 / (1.0 - percentile / 100.0):
                warnings.append(f"marker {name}: {role} control has only {xc.size} gated events; its "
                                f"{percentile}th percentile rests on fewer than 10 events")
            threshold = float(np.percentile(xc, percentile))
            f_control = float(np.count_nonzero(xc > threshold)) / xc.size
            method = f"{percentile}th percentile of the {role} control in the same gate"
        elif marker_min_mesf is not None and fluorescence is not None:
            threshold = 10.0 ** ((math.log10(marker_min_mesf) - fluorescence.intercept) / fluorescence.slope)
            method = f"calibrated: {marker_min_mesf:g} MESF (not control-based)"
            warnings.append(f"marker {name}: threshold at {marker_min_mesf:g} MESF, not control-based (MIFlowCyt-EV "
                            "asks for an unstained or isotype control)")
        else:
            threshold = _noise_threshold(x) if x.size else math.nan
            method = f"noise: negative population + {NOISE_K_SIGMA:g} sigma (not control-based)"
            warnings.append(f"marker {name}: threshold from the noise of the sample itself, not control-based "
                            "(attach an unstained or isotype control)")
        f_sample = float(np.count_nonzero(x > threshold)) / x.size if x.size else math.nan
        fraction = min(max((f_sample - f_control) / (1.0 - f_control), 0.0), 1.0) if x.size else math.nan
        fractions[name] = _number(fraction)
        thresholds[name] = {
            "parameter": parameter, "threshold_au": _number(threshold), "method": method,
            "threshold_mesf": _number(fluorescence.mesf(np.array([threshold]))[0]) if fluorescence else None,
            "sample_fraction_above": _number(f_sample), "control_fraction_above": f_control if role else None,
        }
    return fractions, thresholds


def _swarm(sample: _Counted, scatter_parameter: str | None, limits: dict[str, float]) -> dict:
    reasons, table = [], sample.table
    rate = sample.n_total / sample.duration_s if sample.duration_s else None
    if rate is not None and rate > limits["max_event_rate_per_s"]:
        reasons.append(f"event rate {rate:.3g}/s above {limits['max_event_rate_per_s']:.3g}/s")
    coincident = float(np.mean(table["Coincident"].to_numpy() > 0.5)) if "Coincident" in table and len(table) else None
    if coincident is not None and coincident > limits["max_coincident_fraction"]:
        reasons.append(f"coincident events {100 * coincident:.1f} % above {100 * limits['max_coincident_fraction']:g} %")
    width = (scatter_parameter or "SSC-H").split("-")[0] + "-W"
    spread = loss = None
    if width in table and len(table) >= 20:
        p50, p95 = np.quantile(table[width].to_numpy(), [0.5, 0.95])
        spread = float(p95 / p50) if p50 > 0 else None
        if rate is not None:   # paralyzable dead time = median width (Knoll 2010, ch. 4): an upper estimate
            loss = float(-math.expm1(-rate * p50 * 1e-6))
        if spread is not None and spread > limits["max_width_spread"]:
            reasons.append(f"pulse width broadened: 95th/50th percentile {spread:.2f} above {limits['max_width_spread']:g}")
    return {"flag": bool(reasons), "reasons": reasons, "event_rate_per_s": _number(rate),
            "coincident_fraction": coincident, "width_spread": spread, "overlap_loss_estimate": loss,
            "limits": dict(limits)}


def analyze(sample: FlowInput, *, calibration: "FlowCalibration | None" = None, gates: "GateSet | None" = None,
            markers: dict[str, str] | None = None, controls: Controls | None = None,
            trigger_threshold_au: float | None = None, scatter_parameter: str | None = None,
            control_percentile: float = CONTROL_PERCENTILE, marker_min_mesf: float | None = None,
            max_event_rate_per_s: float = MAX_EVENT_RATE_PER_S,
            max_coincident_fraction: float = MAX_COINCIDENT_FRACTION, max_width_spread: float = MAX_WIDTH_SPREAD,
            lysis_remaining_limit: float = LYSIS_REMAINING_LIMIT,
            histogram_edges_nm: Sequence[float] | None = None) -> dict[str, Any]:
    """Analyse one acquisition: the body of a ``flow.result`` document (see the module docstring)."""
    if not 50.0 <= control_percentile < 100.0:
        raise ExoacqError(f"control_percentile must be in [50, 100), got {control_percentile}", code="bad_parameter")
    if not isinstance(sample.events, pd.DataFrame):
        raise ExoacqError(f"{sample.source or 'sample'}: events must be a pandas DataFrame, got "
                          f"{type(sample.events).__name__}", code="bad_parameter")
    warnings: list[str] = list(sample.warnings)
    if scatter_parameter is None:
        if calibration is not None and calibration.scatter is not None:
            scatter_parameter = calibration.scatter.parameter
        elif "SSC-H" in sample.events.columns:
            scatter_parameter = "SSC-H"
    if trigger_threshold_au is not None and scatter_parameter is None:
        raise ExoacqError("trigger_threshold_au given but no scatter parameter to apply it to", code="bad_parameter")
    args = (calibration, gates, scatter_parameter, trigger_threshold_au)
    s = _Counted(sample, *args, role="sample")
    controls = controls or Controls()
    attached = {role: _Counted(data, *args, role=role) for role, data in vars(controls).items()
                if data is not None and role != "fmo"}
    unknown = set(controls.fmo) - set(markers or {})
    if unknown:
        raise ExoacqError(f"FMO controls for markers not analysed: {sorted(unknown)}", code="bad_control")
    attached.update({f"FMO {m}": _Counted(data, *args, role=f"FMO {m} control") for m, data in controls.fmo.items()})
    if s.duration_s is None:
        warnings.append("duration unknown: no event rate, and no concentration unless $VOL is known")
    volume_ul = _volume_ul(sample, s.duration_s, sample.flow_rate_ul_min)

    # detection limit and size
    calibrated = calibration is not None and calibration.scatter is not None
    detection_limit_nm = None
    if calibrated and trigger_threshold_au is not None:
        detection_limit_nm = _number(calibration.scatter.diameter_nm(np.array([float(trigger_threshold_au)]))[0])
        if detection_limit_nm is None:
            warnings.append(f"trigger threshold {trigger_threshold_au:g} a.u. is outside the scatter calibration's range")
    elif calibrated:
        warnings.append("trigger threshold unknown: no detection limit stated; all gated events counted")
    edges = np.asarray(HISTOGRAM_EDGES_NM if histogram_edges_nm is None else histogram_edges_nm, float)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ExoacqError("histogram_edges_nm must be 2 or more increasing diameters (nm)", code="bad_parameter")
    size, histogram = _size(s, edges) if calibrated else (None, None)
    if not calibrated:
        warnings.append("no scatter calibration: no diameters (MIFlowCyt-EV asks for calibrated scatter)")

    # controls: buffer subtraction, lysis
    report: dict[str, Any] = {}
    conc = var = None
    if volume_ul:
        conc, var = s.n / volume_ul, s.n / volume_ul ** 2
    if "buffer" in attached:
        b = attached["buffer"]
        b_volume = _volume_ul(b.data, b.duration_s, b.data.flow_rate_ul_min or sample.flow_rate_ul_min)
        entry = {"events": b.n, "rate_per_s": _number(b.n / b.duration_s) if b.duration_s else None,
                 "concentration_per_ml": _number(1000.0 * b.n / b_volume) if b_volume else None, "subtracted": False}
        if conc is not None and b_volume:
            conc, var = conc - b.n / b_volume, var + b.n / b_volume ** 2
            entry["subtracted"] = True
        elif conc is not None:
            warnings.append("buffer control: its volume (or duration) is unknown, not subtracted")
        report["buffer"] = entry
    for role in ("unstained", "isotype"):
        if role in attached:
            report[role] = {"events": attached[role].n, "gated": attached[role].n_gated}
    if controls.fmo:
        report["fmo"] = {m: {"events": attached[f"FMO {m}"].n} for m in controls.fmo}
    if "lysed" in attached:
        report["lysed"] = _lysis(s, attached["lysed"], attached.get("buffer"), lysis_remaining_limit, warnings)

    concentration = uncertainty = None
    if conc is not None:
        if conc < 0:
            warnings.append("buffer-only control has more events per volume than the sample: concentration set to 0")
        concentration = 1000.0 * sample.dilution * max(conc, 0.0)
        uncertainty = 1000.0 * sample.dilution * math.sqrt(var)
    else:
        warnings.append("volume unknown (no $VOL, no flow rate x duration): concentration not computed")

    fractions, thresholds = ({}, {})
    if markers:
        fractions, thresholds = _markers(s, markers, attached, calibration, control_percentile, marker_min_mesf, warnings)
    limits = {"max_event_rate_per_s": max_event_rate_per_s, "max_coincident_fraction": max_coincident_fraction,
              "max_width_spread": max_width_spread}
    swarm = _swarm(s, scatter_parameter, limits)
    if swarm["flag"]:
        warnings.append("possible swarm: " + "; ".join(swarm["reasons"]) + " (dilute and check with a dilution series)")
    return {
        "source": sample.source, "parameters": [str(c) for c in sample.events.columns],
        "events": {"total": s.n_total, "gated": s.n_gated, "counted": s.n},
        "duration_s": _number(s.duration_s), "volume_ul": _number(volume_ul), "dilution": float(sample.dilution),
        "flow_rate_ul_min": _number(60.0 * volume_ul / s.duration_s if volume_ul and s.duration_s else None),
        "concentration_per_ml": _number(concentration), "concentration_uncertainty_per_ml": _number(uncertainty),
        "trigger_threshold_au": _number(trigger_threshold_au), "detection_limit_nm": detection_limit_nm,
        "size_nm": size, "size_histogram": histogram,
        "size_model": _model(calibration) if calibrated else None,
        "markers": fractions, "marker_thresholds": thresholds,
        "controls": report, "swarm": swarm, "warnings": warnings,
    }


def _model(calibration) -> dict:
    p = calibration.scatter.particle
    return {"parameter": calibration.scatter.parameter, "particle": p.name, "refractive_index": p.refractive_index,
            "shell_refractive_index": p.shell_refractive_index, "shell_thickness_nm": p.shell_thickness_nm}


def _lysis(s: _Counted, lysed: _Counted, buffer: _Counted | None, limit: float, warnings: list[str]) -> dict:
    """Fraction of the sample's counted events left after detergent lysis: per uL (or per s when a volume is
    unknown), buffer background subtracted, x dilution."""
    inputs = [s, lysed] + ([buffer] if buffer is not None else [])
    volumes = [_volume_ul(c.data, c.duration_s, c.data.flow_rate_ul_min or s.data.flow_rate_ul_min) for c in inputs]
    if all(volumes):
        per = [c.n / v for c, v in zip(inputs, volumes)]
    elif all(c.duration_s for c in inputs):
        per = [c.n / c.duration_s for c in inputs]
    else:
        warnings.append("lysed control: durations unknown, remaining fraction from raw counts (not rate-corrected)")
        per = [float(c.n) for c in inputs]
    background = per[2] if buffer is not None else 0.0
    a = max(per[0] - background, 0.0) * s.data.dilution
    b = max(per[1] - background, 0.0) * lysed.data.dilution
    fraction = b / a if a > 0 else math.nan
    flag = bool(fraction > limit) if math.isfinite(fraction) else False
    if flag:
        warnings.append(f"{100 * fraction:.0f} % of the events survive detergent lysis (limit {100 * limit:g} %): "
                        "not vesicular (protein aggregates, lipoproteins or debris)")
    return {"events": lysed.n, "events_remaining_fraction": _number(fraction), "non_vesicular": flag, "limit": limit}


def dilution_series(points: Sequence[tuple[float, FlowInput]], *, calibration: "FlowCalibration | None" = None,
                    gates: "GateSet | None" = None, scatter_parameter: str = "SSC-H",
                    slope_tolerance: float = DILUTION_SLOPE_TOLERANCE,
                    median_tolerance: float = MEDIAN_SCATTER_TOLERANCE,
                    max_event_rate_per_s: float = MAX_EVENT_RATE_PER_S) -> dict[str, Any]:
    """Swarm check over a dilution series (van der Pol 2012; Welsh 2020): free of swarm when the count rate
    scales with dilution (slope of log rate against log(1/dilution) in 1 +- ``slope_tolerance``, fitted with
    Poisson weights sqrt(N)) and the median scatter does not change (each point's within ``median_tolerance``
    of the most diluted point's, a change counted only when it also exceeds 3 standard errors of the medians;
    standard error of a median from the order statistics n/2 +- sqrt(n)/2)."""
    if len(points) < 2:
        raise ExoacqError("dilution series: needs at least 2 points", code="bad_parameter")
    rows, warnings = [], []
    for dilution, data in points:
        if not dilution > 0:
            raise ExoacqError(f"dilution series {data.source}: dilution must be > 0, got {dilution!r}", code="bad_parameter")
        c = _Counted(data, calibration, gates, None, None, role=f"dilution {dilution:g}")
        if not c.duration_s:
            raise ExoacqError(f"dilution series {data.source or dilution}: duration unknown, no count rate",
                              code="bad_parameter")
        x = np.sort(c.values(scatter_parameter).astype(np.float64))
        n = x.size
        median = float(np.median(x)) if n else math.nan
        half = 0.5 * math.sqrt(n) if n else 0.0
        se = (x[min(n - 1, int(n / 2 + half))] - x[max(0, int(n / 2 - half))]) / 2.0 if n else math.nan
        rows.append({"dilution": float(dilution), "events": n, "rate_per_s": n / c.duration_s,
                     "median_scatter_au": median, "median_se_au": float(se),
                     "total_rate_per_s": c.n_total / c.duration_s})
    rows.sort(key=lambda r: -r["dilution"])
    ref = rows[0]
    for r in rows:
        change = r["median_scatter_au"] / ref["median_scatter_au"] - 1.0
        se = math.hypot(r["median_se_au"], ref["median_se_au"]) / ref["median_scatter_au"]
        r["median_change"] = _number(change)
        r["median_changed"] = bool(abs(change) > median_tolerance and abs(change) > 3.0 * se)
        r["rate_above_limit"] = bool(r["total_rate_per_s"] > max_event_rate_per_s)
    usable = [r for r in rows if r["events"] > 0]
    if len(usable) < 2:
        raise ExoacqError("dilution series: fewer than 2 points with gated events", code="bad_parameter")
    x = np.log([1.0 / r["dilution"] for r in usable])
    y = np.log([r["rate_per_s"] for r in usable])
    if np.ptp(x) == 0:
        raise ExoacqError("dilution series: all points have the same dilution", code="bad_parameter")
    slope = float(np.polyfit(x, y, 1, w=np.sqrt([r["events"] for r in usable]))[0])
    slope_ok = abs(slope - 1.0) <= slope_tolerance
    if not slope_ok:
        warnings.append(f"count rate does not scale with dilution: slope {slope:.3f} outside 1 +- {slope_tolerance:g}")
    changed = [r["dilution"] for r in rows if r["median_changed"]]
    if changed:
        warnings.append(f"median scatter changes by more than {100 * median_tolerance:g} % at dilution(s) "
                        + ", ".join(f"{d:g}" for d in changed))
    over = [r["dilution"] for r in rows if r["rate_above_limit"]]
    if over:
        warnings.append(f"event rate above {max_event_rate_per_s:.3g}/s at dilution(s) " + ", ".join(f"{d:g}" for d in over))
    return {"swarm_free": bool(slope_ok and not changed), "slope": slope, "slope_tolerance": slope_tolerance,
            "median_tolerance": median_tolerance, "points": rows, "warnings": warnings}


def bench_analysis(n_events: int = 2_000_000, repeats: int = 3, seed: int = 1) -> dict[str, Any]:
    """Events per second through calibration (diameter, 2 x MESF), threshold gates and the statistics
    (size, 2 markers against an unstained control, concentration, swarm) on one core: median of
    ``repeats`` timed runs after a warm-up. Synthetic EV events: log-normal 40-300 nm."""
    from exoacq.flow.bench import median_time_s
    from exoacq.flow.calibration import FlowCalibration, FluorescenceCalibration, ScatterCalibration
    from exoacq.flow.gating import GateSet, parse_threshold
    from exoacq.flow.scatter import Collection, ev
    rng = np.random.default_rng(seed)
    scatter = ScatterCalibration(parameter="SSC-H", wavelength_nm=488.0, medium_refractive_index=1.333,
                                 collection=Collection(), gain_au_per_nm2=50.0, particle=ev(), beads=[],
                                 residuals_percent=[])
    fluorescence = {p: FluorescenceCalibration(parameter=p, fluorochrome=f, slope=1.0, intercept=math.log10(2.0),
                                               beads=[]) for p, f in (("FL1-H", "AF488"), ("FL2-H", "PE"))}
    calibration = FlowCalibration(scatter=scatter, fluorescence=fluorescence, created="", source="bench", provenance={})

    grid_nm = np.geomspace(20.0, 1000.0, 200)
    grid_au = scatter.scatter_au(grid_nm)

    def table(n: int, stained: bool) -> pd.DataFrame:
        d = np.exp(rng.normal(math.log(90.0), 0.35, n))
        ssc = np.exp(np.interp(np.log(d), np.log(grid_nm), np.log(grid_au))) * rng.normal(1.0, 0.05, n)
        ssc += rng.normal(0.0, 5.0, n)
        fl = {ch: np.abs(rng.normal(20.0, 5.0, n)) + (stained * (rng.random(n) < 0.3) * rng.lognormal(6.0, 0.5, n))
              for ch in ("FL1-H", "FL2-H")}
        return pd.DataFrame({"SSC-H": ssc, "SSC-W": rng.normal(3.0, 0.3, n), **fl,
                             "Time": np.sort(rng.random(n)) * 200.0, "Coincident": (rng.random(n) < 0.01) * 1.0})
    sample = FlowInput(table(n_events, True), duration_s=200.0, flow_rate_ul_min=1.0, dilution=100.0)
    controls = Controls(unstained=FlowInput(table(max(n_events // 10, 1000), False), duration_s=200.0,
                                            flow_rate_ul_min=1.0))
    gates = GateSet.thresholds([parse_threshold("SSC-H>30"), parse_threshold("Diameter:40-1000")])
    threshold = float(scatter.scatter_au(np.array([60.0]))[0])
    def run() -> dict:
        return analyze(sample, calibration=calibration, gates=gates, markers={"CD63": "FL1-H", "CD81": "FL2-H"},
                       controls=controls, trigger_threshold_au=threshold)
    result = run()  # the warm-up; the timed runs give the same result
    seconds, times = median_time_s(run, repeats)
    n_processed = n_events + len(controls.unstained.events)
    return {"events_per_s": n_processed / seconds, "n_events": n_processed, "seconds": seconds,
            "times_s": times, "gated": result["events"]["gated"], "median_nm": result["size_nm"]["median"]}
