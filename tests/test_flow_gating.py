"""Compensation, threshold gates and Gating-ML 2.0 gates, checked against FlowKit on real files."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TESTDATA
from exoacq.errors import ExoacqError
from exoacq.flow.fcs import FCSData, read_fcs, write_fcs
from exoacq.flow.gating import GateSet, ThresholdGate, compensate, parse_threshold

flowkit = pytest.importorskip("flowkit")

FLOW = TESTDATA / "flow"
GATES_XML = Path(__file__).parent / "data" / "flow" / "scatter_fl1_gates.xml"
needs_testdata = pytest.mark.skipif(not FLOW.is_dir(), reason=f"real FCS test files not found in {FLOW}")


def flowkit_sample(path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return flowkit.Sample(str(path), **options)


def test_compensation_recovers_true_signals():
    """measured = true x S  ->  compensate() returns true (three detectors, 20-35 % spillover)."""
    rng = np.random.default_rng(3)
    true = pd.DataFrame({"SSC-H": rng.gamma(2, 500, 1000), "FL1-H": rng.gamma(2, 800, 1000),
                         "FL2-H": rng.gamma(2, 300, 1000), "FL3-H": rng.gamma(2, 100, 1000)})
    detectors = ["FL1-H", "FL2-H", "FL3-H"]
    spill = pd.DataFrame([[1.0, 0.35, 0.05], [0.02, 1.0, 0.20], [0.0, 0.08, 1.0]], index=detectors, columns=detectors)
    measured = true.copy()
    measured[detectors] = true[detectors].to_numpy() @ spill.to_numpy()
    data = FCSData(events=measured, keywords={}, version="3.1", path="synthetic.fcs", spillover=spill)
    result = compensate(data)
    np.testing.assert_allclose(result.to_numpy(), true.to_numpy(), rtol=1e-10)
    pd.testing.assert_frame_equal(data.events, measured)                 # input untouched
    # no spillover: the events unchanged
    plain = FCSData(events=measured, keywords={}, version="3.1", path="x.fcs")
    pd.testing.assert_frame_equal(compensate(plain), measured)


def test_singular_spillover_is_an_error():
    events = pd.DataFrame({"FL1-H": [1.0, 2.0], "FL2-H": [3.0, 4.0]})
    spill = pd.DataFrame([[1.0, 1.0], [1.0, 1.0]], index=["FL1-H", "FL2-H"], columns=["FL1-H", "FL2-H"])
    with pytest.raises(ExoacqError, match="bad.fcs: spillover matrix is singular"):
        compensate(FCSData(events=events, keywords={}, version="3.1", path="bad.fcs", spillover=spill))


@needs_testdata
def test_compensation_of_test_comp_example_matches_flowkit():
    data = read_fcs(FLOW / "test_comp_example.fcs")
    sample = flowkit_sample(FLOW / "test_comp_example.fcs", ignore_offset_error=True)
    sample.apply_compensation(sample.get_metadata()["spill"])
    np.testing.assert_allclose(compensate(data).to_numpy(), sample.get_events(source="comp"), rtol=1e-12)


@needs_testdata
def test_nontrivial_spillover_written_read_and_applied_like_flowkit(tmp_path):
    """The LSRII file's $SPILL is the identity; write its events with a real-looking $SPILLOVER."""
    source = read_fcs(FLOW / "test_comp_example.fcs")
    detectors = list(source.spillover.columns)            # the 14 fluorescence detectors
    matrix = np.eye(len(detectors))
    for (source_name, detector), fraction in {("Ax488-A", "PE-A"): 0.22, ("Ax488-A", "PE-TR-A"): 0.04,
                                              ("PE-A", "PE-TR-A"): 0.31, ("PE-A", "PE-Cy7-A"): 0.03,
                                              ("PE-TR-A", "PE-Cy7-A"): 0.12, ("PE-A", "Ax488-A"): 0.01}.items():
        matrix[detectors.index(source_name), detectors.index(detector)] = fraction
    spill_text = ",".join([str(len(detectors)), *detectors, *(f"{v:g}" for v in matrix.ravel())])
    path = write_fcs(tmp_path / "spill.fcs", source.events, keywords={"$SPILLOVER": spill_text},
                     timestep_s=source.timestep_s)
    data = read_fcs(path)
    assert data.warnings == []
    np.testing.assert_array_equal(data.spillover.to_numpy(), matrix)
    assert list(data.spillover.index) == detectors
    sample = flowkit_sample(path)
    sample.apply_compensation(sample.get_metadata()["spillover"])
    ours = compensate(data)
    np.testing.assert_allclose(ours.to_numpy(), sample.get_events(source="comp"), rtol=1e-9, atol=1e-9)
    # PE-A loses 22 % of Ax488-A's signal (and more): compensated PE-A is lower where Ax488-A is bright
    bright = data.events["Ax488-A"] > data.events["Ax488-A"].quantile(0.9)
    assert (ours.loc[bright, "PE-A"] < data.events.loc[bright, "PE-A"]).mean() > 0.9


def test_parse_threshold_forms():
    assert parse_threshold("SSC-H>200") == ThresholdGate("SSC-H", low=200.0, name="SSC-H>200", low_inclusive=False)
    assert parse_threshold("FL1-H<=1e4") == ThresholdGate("FL1-H", high=1e4, name="FL1-H<=1e4", high_inclusive=True)
    assert parse_threshold(" SSC-H >= 1.5e2 ").low == 150.0
    gate = parse_threshold("Diameter:50-200")
    assert (gate.parameter, gate.low, gate.high, gate.name) == ("Diameter", 50.0, 200.0, "Diameter:50-200")
    assert parse_threshold("BL 530/30-A:-10-200").low == -10.0               # names with spaces, '/' and '-'
    for text in ("SSC-H=200", "Diameter:200-50", "SSC-H>", "200"):
        with pytest.raises(ExoacqError, match="threshold gate"):
            parse_threshold(text)


def test_threshold_boundaries_and_nan():
    events = pd.DataFrame({"SSC-H": [199.0, 200.0, 201.0, np.nan], "Diameter": [49.0, 50.0, 200.0, 120.0]})
    assert parse_threshold("SSC-H>200").mask(events).tolist() == [False, False, True, False]
    assert parse_threshold("SSC-H>=200").mask(events).tolist() == [False, True, True, False]
    assert parse_threshold("SSC-H<=200").mask(events).tolist() == [True, True, False, False]
    assert parse_threshold("Diameter:50-200").mask(events).tolist() == [False, True, False, True]   # [50, 200)


def test_threshold_gateset_is_a_hierarchy_and_fast():
    rng = np.random.default_rng(0)
    n = 2_000_000
    events = pd.DataFrame({"SSC-H": rng.exponential(300, n), "FL1-H": rng.normal(100, 50, n),
                           "Diameter": rng.lognormal(np.log(110), 0.4, n), "Time": np.linspace(0, 60, n)})
    gates = GateSet.thresholds([parse_threshold("SSC-H>200"), parse_threshold("Diameter:50-200"),
                                parse_threshold("FL1-H>=150")])
    assert gates.final == "FL1-H>=150" and gates.parents["Diameter:50-200"] == "SSC-H>200"
    assert gates.parameters() == ["Diameter", "FL1-H", "SSC-H"]
    best = min(_timed(gates.apply, events) for _ in range(3))
    assert best < 0.2, f"{best:.3f} s for 2 million events"
    masks = gates.apply(events)
    ssc, d, fl1 = (events[c].to_numpy() for c in ("SSC-H", "Diameter", "FL1-H"))
    np.testing.assert_array_equal(masks["SSC-H>200"], ssc > 200)
    np.testing.assert_array_equal(masks["Diameter:50-200"], (ssc > 200) & (d >= 50) & (d < 200))
    np.testing.assert_array_equal(masks["FL1-H>=150"], (ssc > 200) & (d >= 50) & (d < 200) & (fl1 >= 150))
    # exponential: P(SSC-H > 200) = exp(-2/3)
    assert masks["SSC-H>200"].mean() == pytest.approx(np.exp(-200 / 300), abs=0.002)
    assert GateSet.thresholds([ThresholdGate("SSC-H", low=10)], final=None).final == "10<=SSC-H"
    with pytest.raises(ExoacqError, match="needs parameter 'FSC-H'"):
        GateSet.thresholds([parse_threshold("FSC-H>1")]).apply(events.head())
    with pytest.raises(ExoacqError, match="final gate 'nope'"):
        GateSet.thresholds([parse_threshold("SSC-H>1")], final="nope")


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


@needs_testdata
def test_gatingml_rectangle_and_polygon_match_flowkit_on_data1():
    gates = GateSet.from_gatingml(GATES_XML)
    assert gates.parents == {"Scatter": None, "FL1pos": "Scatter"} and gates.final == "FL1pos"
    assert gates.parameters() == ["FL1-H", "FL2-H", "FSC-H", "SSC-H"]
    data = read_fcs(FLOW / "data1.fcs")
    masks = gates.apply(data.events)
    reference = flowkit.parse_gating_xml(str(GATES_XML)).gate_sample(flowkit_sample(FLOW / "data1.fcs"))
    for name in ("Scatter", "FL1pos"):
        np.testing.assert_array_equal(masks[name], reference.get_gate_membership(name))
    assert int(masks["Scatter"].sum()) == 10070 and int(masks["FL1pos"].sum()) == 2680
    assert not (masks["FL1pos"] & ~masks["Scatter"]).any()                   # child within its parent
    # the rectangle is min <= x < max on both scatter axes
    fsc, ssc = data.events["FSC-H"], data.events["SSC-H"]
    np.testing.assert_array_equal(masks["Scatter"], (fsc >= 40) & (fsc < 120) & (ssc >= 10) & (ssc < 60))


@needs_testdata
def test_gatingml_then_thresholds_nests_the_thresholds_in_the_final_gate():
    events = read_fcs(FLOW / "data1.fcs").events
    gates = GateSet.from_gatingml(GATES_XML).then(GateSet.thresholds([parse_threshold("FL3-H>5")]))
    assert gates.final == "FL3-H>5" and gates.parents["FL3-H>5"] == "FL1pos"
    assert gates.parameters() == ["FL1-H", "FL2-H", "FL3-H", "FSC-H", "SSC-H"]
    masks = gates.apply(events)
    np.testing.assert_array_equal(masks["FL3-H>5"], masks["FL1pos"] & (events["FL3-H"].to_numpy() > 5))
    assert 0 < masks["FL3-H>5"].sum() < masks["FL1pos"].sum() == 2680
    with pytest.raises(ExoacqError, match="gate names used twice"):
        gates.then(GateSet.thresholds([parse_threshold("FL3-H>5")]))


@needs_testdata
def test_gatingml_hierarchy_restricts_the_polygon(tmp_path):
    root_only = tmp_path / "polygon_at_root.xml"
    root_only.write_text(GATES_XML.read_text().replace(' gating:parent_id="Scatter"', ""))
    events = read_fcs(FLOW / "data1.fcs").events
    with pytest.raises(ExoacqError, match="several leaf gates \\(Scatter, FL1pos\\): name the final gate"):
        GateSet.from_gatingml(root_only)
    alone = GateSet.from_gatingml(root_only, final="FL1pos").apply(events)["FL1pos"]
    nested = GateSet.from_gatingml(GATES_XML).apply(events)
    assert alone.sum() > nested["FL1pos"].sum()
    np.testing.assert_array_equal(nested["FL1pos"], alone & nested["Scatter"])


def test_gatingml_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<not-gating-ml>")
    with pytest.raises(ExoacqError, match="bad.xml: not a usable Gating-ML 2.0 file") as info:
        GateSet.from_gatingml(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ExoacqError, match="missing.xml: not a usable Gating-ML"):
        GateSet.from_gatingml(tmp_path / "missing.xml")
    gates = GateSet.from_gatingml(GATES_XML)
    with pytest.raises(ExoacqError, match=r"gates need parameters \['FL2-H', 'FSC-H'\]"):
        gates.apply(pd.DataFrame({"FL1-H": [1.0], "SSC-H": [2.0]}))


FCS_COMPENSATED_GATE = """<?xml version="1.0" encoding="UTF-8"?>
<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating"
    xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes">
  <gating:RectangleGate gating:id="Ax488pos">
    <gating:dimension gating:min="1000" gating:compensation-ref="FCS">
      <data-type:fcs-dimension data-type:name="Ax488-A"/>
    </gating:dimension>
  </gating:RectangleGate>
</gating:Gating-ML>
"""


@needs_testdata
def test_gatingml_with_fcs_compensation_needs_the_spillover(tmp_path):
    xml = tmp_path / "fcs_comp.xml"
    xml.write_text(FCS_COMPENSATED_GATE)
    gates = GateSet.from_gatingml(xml)
    data = read_fcs(FLOW / "test_comp_example.fcs")
    with pytest.raises(ExoacqError, match='compensation-ref="FCS" but no spillover'):
        gates.apply(data.events)
    masks = gates.apply(data.events, spillover=data.spillover)
    sample = flowkit_sample(FLOW / "test_comp_example.fcs", ignore_offset_error=True)
    reference = flowkit.parse_gating_xml(str(xml)).gate_sample(sample)
    np.testing.assert_array_equal(masks["Ax488pos"], reference.get_gate_membership("Ax488pos"))
    assert 0 < masks["Ax488pos"].sum() < len(data.events)
