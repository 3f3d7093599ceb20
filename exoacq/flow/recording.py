"""A flow acquisition as it records: trace blocks in, events out, live figures for progress documents.

The :class:`Recorder` owns the pulse detector of one run. Blocks are cut at
the requested live time, so the analysed volume is exactly flow rate x live
time; the event rate is kept per block for the live trace.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from exoacq.devices import TraceBlock
from exoacq.flow.pulses import PulseDetector, Trigger

#: Points of the event-rate trace kept for progress documents.
RATE_POINTS = 600


def trigger_from_settings(settings: Any) -> Trigger:
    """The pulse trigger a flow instrument's settings describe."""
    if settings.trigger_level_counts is not None:
        return Trigger(channel=settings.trigger_channel, mode="absolute", level_counts=settings.trigger_level_counts,
                       hysteresis=settings.hysteresis)
    return Trigger(channel=settings.trigger_channel, mode="sigma", k_sigma=settings.trigger_k_sigma,
                   hysteresis=settings.hysteresis)


def dot_plot_axes(settings: Any) -> tuple[str, str]:
    """Side scatter height against the first marker's parameter (or the first fluorescence height)."""
    x = f"{settings.trigger_channel}-H"
    y = next(iter(settings.markers.values()), "FL1-H")
    return x, y


class Recorder:
    """Pulses found in a run's trace blocks, and the run's live figures."""

    def __init__(self, channels: list[str], sample_rate_hz: float, settings: Any,
                 on_events: Callable[[pd.DataFrame], None] | None = None):
        self.channels = list(channels)
        #: Called with each table of events as it is kept (a daemon run: into its run.h5).
        self.on_events = on_events
        self.sample_rate_hz = float(sample_rate_hz)
        self.detector = PulseDetector(self.channels, self.sample_rate_hz, trigger_from_settings(settings))
        self.axes = dot_plot_axes(settings)
        self._tables: list[pd.DataFrame] = []
        self.live_time_s = 0.0
        self.samples = 0
        self.events_total = 0
        self.blocks = 0
        #: Volts of one count per channel, as the digitizer reported with the first block.
        self.volts_per_count: dict[str, float] | None = None
        self._rate_time_s: list[float] = []
        self._rate_per_s: list[float] = []

    def add(self, block: TraceBlock, limit_s: float | None = None) -> pd.DataFrame:
        """Search a block for pulses (cut at ``limit_s`` of live time); return its events."""
        samples = block.samples
        if limit_s is not None:
            remaining = int(round((limit_s - self.live_time_s) * self.sample_rate_hz))
            samples = samples[:, :max(0, remaining)]
        n = samples.shape[1]
        if n == 0:
            return self.detector.flush()
        if self.volts_per_count is None:
            self.volts_per_count = {c: float(v) for c, v in zip(self.channels, np.asarray(block.volts_per_count))}
        events = self.detector.process(np.ascontiguousarray(samples), start_s=block.start_s,
                                       contiguous=block.contiguous)
        block_s = n / self.sample_rate_hz
        self.live_time_s += block_s
        self.samples += n
        self.blocks += 1
        self._keep(events)
        self._rate_time_s.append(round(self.live_time_s, 6))
        self._rate_per_s.append(len(events) / block_s)
        return events

    def finish(self) -> None:
        """Close a pulse left open at the end of the last block."""
        self._keep(self.detector.flush())

    def _keep(self, events: pd.DataFrame) -> None:
        if len(events):
            self._tables.append(events)
            self.events_total += len(events)
            if self.on_events is not None:
                self.on_events(events)

    def events(self) -> pd.DataFrame:
        """Every event of the run so far, in time order."""
        if not self._tables:
            return self.detector.flush().iloc[0:0]
        if len(self._tables) > 1:
            self._tables = [pd.concat(self._tables, ignore_index=True)]
        return self._tables[0]

    def progress(self, dot_plot_points: int) -> dict[str, Any]:
        """The live part of a ``flow.progress`` document."""
        recent = self._tables[-4:]
        x_name, y_name = self.axes
        xs, ys = [], []
        coincident = 0
        for table in self._tables:
            if "Coincident" in table:
                coincident += int(np.count_nonzero(table["Coincident"].to_numpy()))
        if dot_plot_points:
            tail = pd.concat(recent, ignore_index=True).tail(dot_plot_points) if recent else None
            if tail is not None and x_name in tail and y_name in tail:
                xs = np.round(tail[x_name].to_numpy(dtype=float), 3).tolist()
                ys = np.round(tail[y_name].to_numpy(dtype=float), 3).tolist()
        keep = slice(max(0, len(self._rate_time_s) - RATE_POINTS), None)
        d = self.detector
        return {
            "live_time_s": round(self.live_time_s, 6),
            "events": self.events_total,
            "event_rate_per_s": self._rate_per_s[-1] if self._rate_per_s else 0.0,
            "mean_event_rate_per_s": self.events_total / self.live_time_s if self.live_time_s else 0.0,
            "coincident_events": coincident,
            "trigger": {"channel": d.trigger.channel, "threshold_counts": _number(getattr(d, "threshold_counts", None)),
                        "baseline_counts": _number((getattr(d, "baseline_counts", None) or {}).get(d.trigger.channel)),
                        "noise_counts": _number((getattr(d, "noise_counts", None) or {}).get(d.trigger.channel))},
            "rate_trace": {"time_s": self._rate_time_s[keep], "rate_per_s": self._rate_per_s[keep]},
            "dot_plot": {"x_parameter": x_name, "y_parameter": y_name, "x": xs, "y": ys},
        }


def empty_progress(settings: Any) -> dict[str, Any]:
    """The live part of a progress document before the first block."""
    x_name, y_name = dot_plot_axes(settings)
    return {"live_time_s": 0.0, "events": 0, "event_rate_per_s": 0.0, "mean_event_rate_per_s": 0.0,
            "coincident_events": 0,
            "trigger": {"channel": settings.trigger_channel, "threshold_counts": None, "baseline_counts": None,
                        "noise_counts": None},
            "rate_trace": {"time_s": [], "rate_per_s": []},
            "dot_plot": {"x_parameter": x_name, "y_parameter": y_name, "x": [], "y": []}}


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
