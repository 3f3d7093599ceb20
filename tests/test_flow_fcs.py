"""FCS reading (real files from FlowIO/FlowKit) and FCS 3.1 writing read back by FlowKit."""
from __future__ import annotations

import math
import struct
import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import TESTDATA
from exoacq.errors import ExoacqError
from exoacq.flow.fcs import FCSData, parse_text_segment, read_fcs, write_fcs

flowkit = pytest.importorskip("flowkit")

FLOW = TESTDATA / "flow"
pytestmark = pytest.mark.skipif(not FLOW.is_dir(), reason=f"real FCS test files not found in {FLOW}")

# README of the test data: version, events, parameters
KNOWN = {
    "G11.fcs": ("3.1", 5785, 12),
    "B01_KC-A-W---91-US.fcs": ("3.1", 1589, 14),
    "data1.fcs": ("2.0", 13367, 8),
    "3FITC_4PE_004.fcs": ("2.0", 94569, 4),
    "test_comp_example.fcs": ("3.0", 10703, 18),
    "index_sorted_example.fcs": ("3.0", 384, 13),
}


def flowkit_raw(name: str, **options) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return flowkit.Sample(str(FLOW / name), **options).get_events(source="raw")


def test_every_testdata_file_opens_or_says_why():
    files = sorted(FLOW.glob("*.fcs"))
    assert len(files) >= 8
    for path in files:
        try:
            data = read_fcs(path)
        except ExoacqError as exc:   # allowed, but only as a one-line message naming the file
            assert "\n" not in str(exc) and path.name in str(exc)
            continue
        assert data.events.shape == (int(data.keywords["$TOT"]), int(data.keywords["$PAR"]))
        assert list(data.events.columns) == [data.keywords[f"$P{i}N"] for i in range(1, data.events.shape[1] + 1)]


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_files_events_parameters_and_values_match_flowkit(name):
    version, n_events, n_par = KNOWN[name]
    data = read_fcs(FLOW / name)
    assert (data.version, *data.events.shape) == (version, n_events, n_par)
    # FlowKit's own preprocessed ("raw") events: log decoding, gain, timestep; bit for bit
    expected = flowkit_raw(name, ignore_offset_error=(name == "test_comp_example.fcs"))
    np.testing.assert_array_equal(data.events.to_numpy(), expected)


def test_data1_fcs20_log_and_gain_decoding_follow_the_standard():
    data = read_fcs(FLOW / "data1.fcs")
    assert data.keywords["$P1G"] == "3.67" and data.keywords["$P3E"] == "4,0"
    # linear FSC-H = stored channel / $PnG: back-multiplied it is a 10-bit integer channel
    channel = data.events["FSC-H"].to_numpy() * 3.67
    np.testing.assert_allclose(channel, np.round(channel), atol=1e-9)
    assert 0 <= channel.min() and channel.max() < 1024
    # log FL1-H = 10^(4 x channel / 1024) (f2 = 0 read as 1): log10 x 256 is an integer channel
    fl1_channel = np.log10(data.events["FL1-H"].to_numpy()) * 1024 / 4
    np.testing.assert_allclose(fl1_channel, np.round(fl1_channel), atol=1e-9)
    assert data.events["FL1-H"].max() == pytest.approx(1000.0)      # channel 768 of 1024 = 3 decades
    assert data.volume_nl is None and data.timestep_s is None and data.spillover is None


def test_vol_and_timestep_are_parsed():
    g11 = read_fcs(FLOW / "G11.fcs")
    assert g11.volume_nl == 46000.0 and g11.timestep_s == 0.001       # Attune NxT: 46 uL analysed
    b01 = read_fcs(FLOW / "B01_KC-A-W---91-US.fcs")
    assert b01.volume_nl == 25016.0 and b01.timestep_s == 0.1
    # Time is in seconds: stored ticks x $TIMESTEP (flowkit preprocess=False gives the ticks)
    ticks = flowkit_raw("G11.fcs", preprocess=False)[:, 0]
    np.testing.assert_allclose(g11.events["Time"].to_numpy(), ticks * 0.001, rtol=1e-15)
    assert g11.warnings == [] and b01.warnings == []


def test_test_comp_example_off_by_one_is_read_with_a_warning_and_spillover():
    data = read_fcs(FLOW / "test_comp_example.fcs")
    assert data.events.shape == (10703, 18)
    assert len(data.warnings) == 1 and "1 byte longer" in data.warnings[0] and "10703 events" in data.warnings[0]
    assert data.spillover is not None and data.spillover.shape == (14, 14)
    assert list(data.spillover.columns)[:2] == ["Ax488-A", "PE-A"]
    assert data.timestep_s == 0.01


def _variable_int_raw_time() -> np.ndarray:
    raw = (FLOW / "variable_int_example.fcs").read_bytes()[6081:6189]           # $BEGINDATA-$ENDDATA
    return np.array([event[-1] for event in struct.iter_unpack("<" + "H" * 25 + "I", raw)], dtype=np.int64)


def test_variable_int_widths_masked_to_pnr_and_bad_timestep():
    data = read_fcs(FLOW / "variable_int_example.fcs")
    assert data.events.shape == (2, 26)
    assert data.keywords["$P25B"] == "16" and data.keywords["$P26B"] == "32" and data.keywords["$P26R"] == "11209599"
    # $P26R = 11,209,599 -> next power of two 2^24: the 32-bit Time values keep their 24 low bits
    raw = _variable_int_raw_time()
    assert (raw >= 2 ** 24).all()                     # the stored words do carry high bits
    np.testing.assert_array_equal(data.events["Time"].to_numpy(), raw & (2 ** 24 - 1))
    assert data.events["Time"].tolist() == [8265081.0, 15691602.0]
    np.testing.assert_array_equal(flowkit_raw("variable_int_example.fcs", preprocess=False)[:, 25],
                                  data.events["Time"].to_numpy())   # flowio masks the same way
    # $TIMESTEP = 'xxxxxxxxx': FlowKit raises on it; we read the events and say so
    assert data.timestep_s is None
    assert any("$TIMESTEP" in w and "xxxxxxxxx" in w for w in data.warnings)
    # log channels ($PnE 4,1 over $PnR 65536) lie within 1..10^4
    assert ((data.events["FSC LogH"] >= 1) & (data.events["FSC LogH"] <= 1e4)).all()


def test_offset_discrepancy_recovered_only_because_the_text_length_is_proven():
    data = read_fcs(FLOW / "data_start_offset_discrepancy_example.fcs")
    message = data.warnings[0]
    assert "5555" in message and "6081" in message and "used TEXT" in message and "108 bytes" in message
    # 2 events x (25 x 16 + 32 bits) = 108 bytes at the TEXT offset: the same events as variable_int_example
    same = read_fcs(FLOW / "variable_int_example.fcs")
    pd.testing.assert_frame_equal(data.events, same.events)


def test_offset_discrepancy_that_cannot_be_resolved_is_an_error(tmp_path):
    raw = (FLOW / "data_start_offset_discrepancy_example.fcs").read_bytes()
    assert raw.count(b"00006081") == 1
    broken = tmp_path / "neither.fcs"
    broken.write_bytes(raw.replace(b"00006081", b"00006091"))   # TEXT now 98 bytes, HEADER 634: neither fits
    with pytest.raises(ExoacqError, match=r"neither\.fcs: HEADER says DATA is bytes 5555-6188.*cannot tell"):
        read_fcs(broken)


def test_exact_length_wins_over_off_by_one(tmp_path):
    raw = bytearray((FLOW / "test_comp_example.fcs").read_bytes())
    assert raw[34:42] == b"  773934"                      # HEADER $ENDDATA, equal to TEXT's (one byte long)
    raw[34:42] = b"  773933"                              # now HEADER is exact, TEXT still one byte long
    (tmp_path / "fixed_header.fcs").write_bytes(bytes(raw))
    data = read_fcs(tmp_path / "fixed_header.fcs")
    assert len(data.warnings) == 1 and "used HEADER" in data.warnings[0] and "773933" in data.warnings[0]
    pd.testing.assert_frame_equal(data.events, read_fcs(FLOW / "test_comp_example.fcs").events)


def test_empty_acquisition_writes_and_reads(tmp_path):
    data = read_fcs(write_fcs(tmp_path / "empty.fcs", pd.DataFrame({"SSC-H": [], "Time": []})))
    assert data.events.shape == (0, 2) and data.warnings == ["$TOT = 0: the file holds no events"]


def test_truncated_garbage_and_missing_files_give_one_line_errors(tmp_path):
    g11 = (FLOW / "G11.fcs").read_bytes()
    cases = {
        "truncated.fcs": (g11[:100_000], r"truncated\.fcs: DATA segment ends at byte 285871 .*truncated"),
        "header_only.fcs": (g11[:200], r"header_only\.fcs: TEXT segment 58-8191 is outside"),
        "garbage.fcs": (bytes(range(256)) * 10, r"garbage\.fcs: not an FCS file"),
        "empty.fcs": (b"", r"empty\.fcs: not an FCS file"),
        "version.fcs": (b"FCS4.0" + g11[6:], r"unsupported FCS version '4.0'"),
    }
    for name, (content, pattern) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ExoacqError, match=pattern) as info:
            read_fcs(tmp_path / name)
        assert "\n" not in str(info.value) and info.value.code == "bad_fcs"
    with pytest.raises(ExoacqError, match="nothere.fcs: cannot read file"):
        read_fcs(tmp_path / "nothere.fcs")


def test_damaged_keywords_are_errors_and_a_damaged_time_column_is_not_the_duration(tmp_path):
    """Once read silently: $TOT = 0 over a full DATA segment ("0 events"), $BYTEORD 9,9,9,9, and a Time column
    whose last value is 1e35 ticks (a duration of 1e32 s)."""
    from exoacq.flow.pipeline import fcs_input

    g11 = (FLOW / "G11.fcs").read_bytes()
    assert g11.count(b"/$TOT/5785/") == 1 and g11.count(b"/$BYTEORD/1,2,3,4/") == 1
    (tmp_path / "tot0.fcs").write_bytes(g11.replace(b"/$TOT/5785/", b"/$TOT/0000/"))
    with pytest.raises(ExoacqError, match=r"tot0\.fcs: \$TOT = 0, but the DATA segment \(8192-285871\) holds 277680 "
                                          r"bytes: \$TOT is damaged"):
        read_fcs(tmp_path / "tot0.fcs")
    (tmp_path / "byteord.fcs").write_bytes(g11.replace(b"/$BYTEORD/1,2,3,4/", b"/$BYTEORD/9,9,9,9/"))
    with pytest.raises(ExoacqError, match=r"byteord\.fcs: \$BYTEORD '9,9,9,9': only little-endian"):
        read_fcs(tmp_path / "byteord.fcs")
    good = read_fcs(FLOW / "G11.fcs")
    time = list(good.events.columns).index("Time")
    damaged = bytearray(g11)
    last = 8192 + ((len(good.events) - 1) * len(good.events.columns) + time) * 4   # $DATATYPE F, little-endian
    damaged[last:last + 4] = struct.pack("<f", 1e35)
    (tmp_path / "time.fcs").write_bytes(bytes(damaged))
    flow = fcs_input(tmp_path / "time.fcs")
    assert flow.duration_s == pytest.approx(fcs_input(FLOW / "G11.fcs").duration_s, rel=0.2)  # $BTIM-$ETIM
    assert any(w.startswith("the Time parameter spans 1e+32 s (a damaged Time column?)") for w in flow.warnings)


def test_text_segment_parser_keeps_dollar_and_escaped_delimiters():
    text = parse_text_segment(b"/$TOT/3/$P1N/FL1//x/EXOACQ_NOTE/cost $5 a//b//")
    assert text == {"$TOT": "3", "$P1N": "FL1/x", "EXOACQ_NOTE": "cost $5 a/b/"}
    assert parse_text_segment(b"\x0c$PAR\x0c2\x0c") == {"$PAR": "2"}      # form-feed delimiter (FACSAria)


def _acquisition_table(n: int = 5000) -> pd.DataFrame:
    rng = np.random.default_rng(11)
    diameter = rng.lognormal(np.log(120), 0.3, n)
    diameter[::97] = np.nan                                   # not invertible on the monotone Mie branch
    return pd.DataFrame({
        "SSC-H": rng.gamma(3, 300, n), "SSC-A": rng.gamma(3, 900, n), "SSC-W": rng.uniform(1, 5, n),
        "FL1-H": rng.normal(50, 20, n), "Time": np.sort(rng.uniform(0, 60, n)), "Diameter": diameter,
        "FL1-MESF": rng.lognormal(6, 1, n),
    })


WRITTEN_KEYWORDS = {"EXOACQ_RUN_ID": "run-0042", "EXOACQ_SAMPLE": "EV plasma / SEC fr. 7-9",
                    "EXOACQ_DILUTION": "100", "$CYT": "exoacq simulated nano flow", "$P1S": "side scatter"}


def test_write_fcs31_reads_back_in_flowkit_with_identical_events_and_keywords(tmp_path):
    table = _acquisition_table()
    path = write_fcs(tmp_path / "run.fcs", table, keywords=WRITTEN_KEYWORDS,
                     calibration={"Diameter": "1,nm", "FL1-MESF": "1,MESF"}, volume_nl=1234.5, timestep_s=1e-6)
    sample = flowkit.Sample(path)
    assert sample.version == "3.1" and sample.pnn_labels == list(table.columns)
    assert sample.pns_labels[0] == "side scatter"
    got = sample.get_events(source="raw")
    stored32 = table.to_numpy().astype(np.float32).astype(np.float64)
    not_time = [i for i, c in enumerate(table.columns) if c != "Time"]
    np.testing.assert_array_equal(got[:, not_time], stored32[:, not_time])     # float32-exact, NaN included
    t = table.columns.get_loc("Time")
    np.testing.assert_array_equal(got[:, t], np.float32(table["Time"] / 1e-6).astype(np.float64) * 1e-6)
    np.testing.assert_allclose(got[:, t], table["Time"], rtol=1e-7)          # seconds again
    meta = sample.get_metadata()   # FlowKit lower-cases keys and drops "$"
    expected = {"exoacq_run_id": "run-0042", "exoacq_sample": "EV plasma / SEC fr. 7-9", "exoacq_dilution": "100",
                "cyt": "exoacq simulated nano flow", "p1s": "side scatter", "p6calibration": "1,nm",
                "p7calibration": "1,MESF", "vol": "1234.5", "timestep": "1e-06", "datatype": "F",
                "tot": str(len(table)), "par": "7"}
    assert {k: meta.get(k) for k in expected} == expected


def test_write_then_read_fcs_round_trip(tmp_path):
    table = _acquisition_table(2000)
    path = write_fcs(tmp_path / "run.fcs", table, keywords=WRITTEN_KEYWORDS,
                     calibration={"Diameter": "1,nm"}, volume_nl=2000.0, timestep_s=1e-6)
    data = read_fcs(path)
    assert isinstance(data, FCSData) and data.version == "3.1" and data.warnings == []
    assert data.volume_nl == 2000.0 and data.timestep_s == 1e-6 and data.spillover is None
    for key, value in WRITTEN_KEYWORDS.items():
        assert data.keywords[key] == value
    assert data.keywords["$P6CALIBRATION"] == "1,nm" and data.keywords["$TIMESTEP"] == "1e-06"
    same = table.astype(np.float32).astype(np.float64)
    for column in table.columns:
        if column != "Time":
            np.testing.assert_array_equal(data.events[column].to_numpy(), same[column].to_numpy())
    np.testing.assert_allclose(data.events["Time"], table["Time"], rtol=1e-7)
    # without timestep_s, Time is written in seconds with $TIMESTEP = 1 (FCS 3.1: required with a Time parameter)
    again = read_fcs(write_fcs(tmp_path / "plain.fcs", table[["SSC-H", "Time"]]))
    assert again.timestep_s == 1.0
    np.testing.assert_array_equal(again.events["Time"], table["Time"].astype(np.float32).astype(np.float64))


def test_write_fcs_refuses_what_would_be_written_wrong(tmp_path):
    table = _acquisition_table(10)
    bad = [
        (dict(keywords={"$EXOACQ_RUN": "1"}), "only FCS 3.1 standard keywords start with '\\$'"),
        (dict(keywords={"CYT": "x"}), "only FCS 3.1 standard keywords"),   # a standard name needs its "$"
        (dict(keywords={"EXOACQ_NOTE": ""}), "empty value"),
        (dict(keywords={"$TOT": "3"}), "set by write_fcs"),
        (dict(calibration={"Diameter": "nm"}), "'factor,unit'"),
        (dict(calibration={"Size": "1,nm"}), "not a parameter"),
        (dict(volume_nl=-1.0), "volume_nl must be positive"),
    ]
    for options, pattern in bad:
        with pytest.raises(ExoacqError, match=pattern):
            write_fcs(tmp_path / "x.fcs", table, **options)
    assert math.isfinite(read_fcs(write_fcs(tmp_path / "ok.fcs", table)).events["SSC-H"].iloc[0])
