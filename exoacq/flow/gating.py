"""Compensation and gates for flow cytometry event tables.

- Compensation (Bagwell & Adams 1993, Ann. N.Y. Acad. Sci. 677:167; Roederer 2001, Cytometry
  45:194): measured = true x S, with S the file's spillover matrix (rows = fluorochromes,
  columns = detectors, diagonal 1), so true = measured x S^-1, solved per event as FlowKit /
  flowutils do (numpy.linalg.solve(S.T, X.T).T).
- Gates: simple threshold gates ("SSC-H>200", "Diameter:50-200") evaluated with numpy, or
  Gating-ML 2.0 files (Spidlen et al. 2015, Cytometry A 87:683) parsed and applied by FlowKit
  (rectangle, polygon, ellipsoid, boolean, quadrant gates, transforms and compensation refs).
  A child gate only holds events of its parent: masks follow the hierarchy.
"""
from __future__ import annotations

import io
import re
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from exoacq.errors import ExoacqError
from exoacq.flow.fcs import FCSData

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COMPARISON = re.compile(rf"^\s*(?P<param>.+?)\s*(?P<op><=|>=|<|>)\s*(?P<value>{_NUMBER})\s*$")
_RANGE = re.compile(rf"^\s*(?P<param>.+?)\s*:\s*(?P<low>{_NUMBER})\s*-\s*(?P<high>{_NUMBER})\s*$")


def compensate(data: FCSData) -> pd.DataFrame:
    """Events with the file's spillover removed (a copy; unchanged when the file has none)."""
    events = data.events.copy()
    if data.spillover is None:
        return events
    detectors = list(data.spillover.columns)
    missing = [d for d in detectors if d not in events.columns]
    if missing:
        raise ExoacqError(f"{Path(data.path).name}: spillover detectors not in the events: {missing}",
                          code="bad_fcs")
    spill = data.spillover.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(spill)) or np.linalg.cond(spill) > 1e12:
        raise ExoacqError(f"{Path(data.path).name}: spillover matrix is singular or not finite", code="bad_fcs")
    measured = events[detectors].to_numpy(dtype=np.float64)
    events[detectors] = np.linalg.solve(spill.T, measured.T).T
    return events


@dataclass(frozen=True)
class ThresholdGate:
    """low <= value < high by default (the Gating-ML 2.0 rectangle convention); None = open."""
    parameter: str
    low: float | None = None
    high: float | None = None
    name: str = ""
    low_inclusive: bool = True
    high_inclusive: bool = False

    def mask(self, events: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the events inside the gate (NaN values are outside)."""
        if self.parameter not in events.columns:
            raise ExoacqError(f"gate {self.name or self.parameter!r} needs parameter {self.parameter!r}, "
                              f"not among {list(events.columns)}", code="bad_gate")
        values = events[self.parameter].to_numpy()
        inside = np.isfinite(values) if values.dtype.kind == "f" else np.ones(len(values), dtype=bool)
        if self.low is not None:
            inside &= (values >= self.low) if self.low_inclusive else (values > self.low)
        if self.high is not None:
            inside &= (values <= self.high) if self.high_inclusive else (values < self.high)
        return inside


def parse_threshold(text: str) -> ThresholdGate:
    """"SSC-H>200", "FL1-H<=1e4" or "Diameter:50-200" (low <= x < high) -> ThresholdGate named ``text``."""
    match = _COMPARISON.match(text)
    if match:
        param, op, value = match["param"], match["op"], float(match["value"])
        if op in (">", ">="):
            return ThresholdGate(param, low=value, name=text.strip(), low_inclusive=op == ">=")
        return ThresholdGate(param, high=value, name=text.strip(), high_inclusive=op == "<=")
    match = _RANGE.match(text)
    if match:
        low, high = float(match["low"]), float(match["high"])
        if not low < high:
            raise ExoacqError(f"threshold gate {text!r}: the range needs low < high", code="bad_gate")
        return ThresholdGate(match["param"], low=low, high=high, name=text.strip())
    raise ExoacqError(f"threshold gate {text!r} not understood: use PARAM>X, PARAM>=X, PARAM<X, PARAM<=X "
                      f"or PARAM:LOW-HIGH", code="bad_gate")


class GateSet:
    """Named gates in a hierarchy; ``final`` is the gate whose events count as "gated"."""

    def __init__(self, parents: dict[str, str | None], final: str, *, thresholds: list[ThresholdGate] = (),
                 strategy=None, gate_paths: dict[str, tuple[str, tuple[str, ...]]] | None = None, source=""):
        self.parents = dict(parents)            # gate name -> parent gate name (None at the root)
        self.final = final
        self.source = source
        self._thresholds = {g.name: g for g in thresholds}
        self._strategy = strategy               # flowkit.GatingStrategy for Gating-ML files
        self._gate_paths = gate_paths or {}     # our name -> (FlowKit gate id, ancestor path)
        if final not in self.parents:
            raise ExoacqError(f"final gate {final!r} is not among the gates {list(self.parents)}", code="bad_gate")

    @property
    def names(self) -> list[str]:
        return list(self.parents)

    @classmethod
    def thresholds(cls, gates: list[ThresholdGate], final: str | None = None) -> "GateSet":
        """Threshold gates applied in sequence: each gate is the child of the one before it, so the
        last (the leaf, the default ``final``) holds the events that pass all of them."""
        if not gates:
            raise ExoacqError("no threshold gates given", code="bad_gate")
        gates = [g if g.name else ThresholdGate(g.parameter, g.low, g.high, _describe(g), g.low_inclusive,
                                                g.high_inclusive) for g in gates]
        names = [g.name for g in gates]
        if len(set(names)) != len(names):
            raise ExoacqError(f"threshold gate names repeat: {names}", code="bad_gate")
        parents = {name: (names[i - 1] if i else None) for i, name in enumerate(names)}
        return cls(parents, final or names[-1], thresholds=gates, source="thresholds")

    @classmethod
    def from_gatingml(cls, path, final: str | None = None) -> "GateSet":
        """Gates of a Gating-ML 2.0 file, parsed by FlowKit. ``final`` defaults to the only leaf gate."""
        import flowkit

        path = Path(path)
        try:
            strategy = flowkit.parse_gating_xml(str(path))
            ids = strategy.get_gate_ids()
        except Exception as exc:   # FileNotFoundError, lxml / FlowKit parsing errors
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ExoacqError(f"{path.name}: not a usable Gating-ML 2.0 file ({message})", code="bad_gate") from None
        if not ids:
            raise ExoacqError(f"{path.name}: no gates in the Gating-ML file", code="bad_gate")
        counts = {}
        for gate_id, _ in ids:
            counts[gate_id] = counts.get(gate_id, 0) + 1

        def our_name(gate_id, ancestors):   # the gate id, or its path when the id repeats
            return gate_id if counts[gate_id] == 1 else "/".join((*ancestors[1:], gate_id))

        gate_paths, parents = {}, {}
        for gate_id, ancestors in ids:
            name = our_name(gate_id, ancestors)
            gate_paths[name] = (gate_id, ancestors)
            parents[name] = None if len(ancestors) <= 1 else our_name(ancestors[-1], ancestors[:-1])
        if final is None:
            leaves = [n for n in parents if n not in parents.values()]
            if len(leaves) != 1:
                raise ExoacqError(f"{path.name}: several leaf gates ({', '.join(leaves)}): name the final gate",
                                  code="bad_gate")
            final = leaves[0]
        return cls(parents, final, strategy=strategy, gate_paths=gate_paths, source=str(path))

    def then(self, other: "GateSet") -> "GateSet":
        """This set followed by ``other`` (threshold gates): other's root gates become children of
        this set's final gate, and other's final gate becomes the final one."""
        if other._strategy is not None:
            raise ExoacqError("only threshold gates can follow a gate set", code="bad_gate")
        clash = sorted(set(self.parents) & set(other.parents))
        if clash:
            raise ExoacqError(f"gate names used twice: {clash}", code="bad_gate")
        parents = {**self.parents, **{n: (p if p is not None else self.final) for n, p in other.parents.items()}}
        return GateSet(parents, other.final, thresholds=[*self._thresholds.values(), *other._thresholds.values()],
                       strategy=self._strategy, gate_paths=self._gate_paths, source=self.source)

    def parameters(self) -> list[str]:
        """Event parameters the gates read (from FlowKit dimensions for Gating-ML gates)."""
        return sorted({g.parameter for g in self._thresholds.values()} | self._flowkit_parameters())

    def _flowkit_parameters(self) -> set[str]:
        found = set()
        for gate_id, ancestors in self._gate_paths.values():
            gate = self._strategy.get_gate(gate_id, ancestors)
            for dim in getattr(gate, "dimensions", []) or []:
                found.add(getattr(dim, "id", None) or getattr(dim, "ratio_ref", None))
        return {x for x in found if x}

    def _uses_fcs_compensation(self) -> bool:
        return any(getattr(dim, "compensation_ref", None) == "FCS"
                   for gate_id, ancestors in self._gate_paths.values()
                   for dim in getattr(self._strategy.get_gate(gate_id, ancestors), "dimensions", []) or [])

    def apply(self, events: pd.DataFrame, *, spillover: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
        """Gate name -> boolean mask over the events; a child's mask lies within its parent's.

        ``spillover`` (FCSData.spillover) is needed by Gating-ML gates whose dimensions use
        compensation-ref="FCS"; FlowKit then compensates as it does for the file itself.
        """
        masks = self._apply_flowkit(events, spillover) if self._strategy is not None else {}
        for name, parent in self.parents.items():     # parents come before their children
            if name in self._thresholds:
                own = self._thresholds[name].mask(events)
                masks[name] = own if parent is None else own & masks[parent]
        return masks

    def _apply_flowkit(self, events: pd.DataFrame, spillover: pd.DataFrame | None) -> dict[str, np.ndarray]:
        import flowio
        import flowkit

        missing = sorted(p for p in self._flowkit_parameters() if p not in events.columns)
        if missing:
            raise ExoacqError(f"{Path(self.source).name}: gates need parameters {missing}, not among "
                              f"{list(events.columns)}", code="bad_gate")
        if spillover is None and self._uses_fcs_compensation():
            raise ExoacqError(f"{Path(self.source).name}: gates use compensation-ref=\"FCS\" but no spillover "
                              f"matrix was given (it would be read as uncompensated)", code="bad_gate")
        names = [str(c) for c in events.columns]
        values = array("f")
        values.frombytes(np.ascontiguousarray(events.to_numpy(dtype=np.float32)).tobytes())
        metadata = {}
        if spillover is not None:
            labels = list(spillover.columns)
            metadata["spillover"] = ",".join([str(len(labels)), *labels,
                                              *(repr(float(v)) for v in spillover.to_numpy().ravel())])
        try:
            handle = io.BytesIO()
            flowio.create_fcs(handle, values, names, metadata_dict=metadata)
            handle.seek(0)
            sample = flowkit.Sample(flowio.FlowData(handle), sample_id="events")
            results = self._strategy.gate_sample(sample)
            return {name: np.asarray(results.get_gate_membership(gate_id, "/".join(ancestors)), dtype=bool)
                    for name, (gate_id, ancestors) in self._gate_paths.items()}
        except Exception as exc:   # FlowKit: missing compensation, transforms, bad dimensions...
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ExoacqError(f"{Path(self.source).name}: FlowKit could not apply the gates ({message})",
                              code="bad_gate") from None


def _describe(gate: ThresholdGate) -> str:
    low = "" if gate.low is None else f"{gate.low:g}{'<=' if gate.low_inclusive else '<'}"
    high = "" if gate.high is None else f"{'<=' if gate.high_inclusive else '<'}{gate.high:g}"
    return f"{low}{gate.parameter}{high}"
