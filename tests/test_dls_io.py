"""DLS files: ALV .ASC (the real files in testdata, read, written, cut), correlator.com .SIN and
PicoQuant PTU (T2). Values checked here were read by eye from the files."""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTDATA

from exoacq.dls.io import DLSFileError, PhotonFileError, read_alv, read_dls_file, read_sin, write_alv, write_sin
from exoacq.dls.ptu import read_ptu, write_ptu
from exoacq.dls.record import Correlation, DLSRecord

DLS = TESTDATA / "dls"
CGS3 = DLS / "alv-cgs3"
BLANKS = DLS / "alv-blanks"
needs_data = pytest.mark.skipif(not CGS3.is_dir() or not BLANKS.is_dir(),
                                reason=f"DLS test data not found at {DLS} (../shared/testdata)")
ALL_ASC = sorted(CGS3.glob("*.ASC")) + sorted(BLANKS.glob("*.ASC")) if DLS.is_dir() else []

#: file -> (angle, vendor "Cumulant 2.Order" Hydrodyn. Radius [nm]), by eye from each file.
ALV_7004 = {
    "080622_3_0027_0001.ASC": (30.0, 149.42), "080622_3_0027_averaged.ASC": (30.0, 132.51),
    "080622_3_0031_0001.ASC": (70.0, 126.82), "080622_3_0031_averaged.ASC": (70.0, 126.96),
    "080622_3_0035_0001.ASC": (110.0, 114.64), "080622_3_0035_averaged.ASC": (110.0, 114.49),
    "080622_3_0039_0001.ASC": (150.0, 111.78), "080622_3_0039_averaged.ASC": (150.0, 113.96),
}


def one_line_error(exc: pytest.ExceptionInfo, path: Path, line: int | None = None) -> str:
    message = str(exc.value)
    assert "\n" not in message and "\r" not in message and "Traceback" not in message
    assert message.startswith(f"{path}:"), message
    if line is not None:
        assert message.startswith(f"{path}:{line}: "), message
    return message


# -- ALV: the real files ---------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("name", sorted(ALV_7004))
def test_alv_7004_files_read(name):
    record = read_alv(CGS3 / name)
    angle, radius_nm = ALV_7004[name]
    assert record.format == "alv-asc" and record.instrument == "ALV-7004/USB"
    assert record.wavelength_nm == 632.8 and record.refractive_index == 1.332 and record.duration_s == 10
    assert 24.7 < record.temperature_c < 24.8
    # Mode "C-CH0/1+1/0": the cross-correlations both ways in the first two columns
    assert [c.channel for c in record.correlations] == ["CH0/1", "CH1/0"]
    for c in record.correlations:
        assert c.angle_deg == angle and c.lag_s.size == 199
        assert c.lag_s[0] == pytest.approx(2.5e-8) and c.lag_s[-1] == pytest.approx(3.14573)
        assert c.count_trace_hz.size == c.count_trace_time_s.size == 253
        assert c.vendor_cumulants[2]["radius_nm"] == pytest.approx(radius_nm)
        assert set(c.vendor_cumulants) == {1, 2, 3}
    assert len(record.header["StandardDeviation"]) == 199


@needs_data
def test_alv_7004_values_by_eye():
    record = read_alv(CGS3 / "080622_3_0027_averaged.ASC")
    assert record.temperature_c == pytest.approx(297.91756 - 273.15)
    assert record.viscosity_mpa_s == 0.8949
    first, second = record.correlations
    assert first.g2_minus_1[0] == 2.57125 and second.g2_minus_1[0] == 2.58674
    assert first.g2_minus_1[-1] == -1.33216e-2
    assert first.count_rate_hz == pytest.approx(589233.38) and second.count_rate_hz == pytest.approx(586247.88)
    assert first.count_trace_time_s[0] == 0.03906 and first.count_trace_hz[0] == pytest.approx(621855.59)
    assert second.count_trace_hz[0] == pytest.approx(619017.94)
    cumulants = first.vendor_cumulants
    assert cumulants[1] == {"gamma_per_s": 88.345, "diffusion_um2_s": 1.8849, "radius_nm": 129.30}
    assert cumulants[2]["gamma_per_s"] == 86.208 and cumulants[2]["mu2_per_s2"] == -596.19
    assert cumulants[2]["pdi"] == pytest.approx(-596.19 / 86.208 ** 2)
    assert cumulants[3]["mu2_per_s2"] == 22.745 and cumulants[3]["mu3_per_s3"] == 132900
    assert record.header["Mode"] == "C-CH0/1+1/0" and record.header["Monitor Diode"] == "40958.10"
    assert record.header["Date"] == "08.06.2022" and record.header["FloatDur [ms]"] == "9961"
    assert record.header["StandardDeviation"][0] == 3.86344e-2


@needs_data
def test_alv_blanks_have_eight_angles():
    toluene = read_alv(BLANKS / "toluene_averaged.ASC")
    water = read_alv(BLANKS / "water_averaged.ASC")
    assert toluene.instrument == "ALV-7004 CGS-8F Data, Averaged Run Data"
    for record in (toluene, water):
        assert [c.angle_deg for c in record.correlations] == [26, 42, 58, 74, 90, 106, 122, 138]
        assert [c.channel for c in record.correlations] == [f"CH{i}" for i in range(1, 9)]
        assert record.duration_s == 90.0 and record.header["Runs"] == "3"
        for c in record.correlations:
            assert c.lag_s.size == 182 and c.lag_s[0] == pytest.approx(1e-7) and c.lag_s[-1] == pytest.approx(2.93601)
            assert c.count_trace_hz is None and not c.vendor_cumulants
    assert toluene.temperature_c == pytest.approx(19.80251) and toluene.viscosity_mpa_s == 1.00661
    assert toluene.correlations[0].g2_minus_1[0] == -0.129873
    assert toluene.correlations[0].count_rate_hz == pytest.approx(32244.39)
    assert water.correlations[7].count_rate_hz == pytest.approx(1136.07)
    assert water.header["Samplename"] == "093 2021 Wasser"


def assert_same_record(a: DLSRecord, b: DLSRecord) -> None:
    for name in ("wavelength_nm", "temperature_c", "viscosity_mpa_s", "refractive_index", "duration_s", "instrument"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.header == b.header
    assert len(a.correlations) == len(b.correlations)
    for x, y in zip(a.correlations, b.correlations):
        assert (x.channel, x.angle_deg, x.count_rate_hz, x.vendor_cumulants) == \
            (y.channel, y.angle_deg, y.count_rate_hz, y.vendor_cumulants)
        assert np.array_equal(x.lag_s, y.lag_s) and np.array_equal(x.g2_minus_1, y.g2_minus_1)
        for left, right in ((x.count_trace_time_s, y.count_trace_time_s), (x.count_trace_hz, y.count_trace_hz)):
            assert (left is None and right is None) or np.array_equal(left, right)


@needs_data
@pytest.mark.parametrize("path", ALL_ASC, ids=lambda p: p.name)
def test_alv_write_read_round_trip(path, tmp_path):
    record = read_alv(path)
    out = write_alv(tmp_path / path.name, record)
    data = out.read_bytes()
    assert data.count(b"\r\n") == data.count(b"\n") and "°".encode("latin-1") in data   # CRLF, Windows-1252
    assert_same_record(record, read_alv(out))
    original = path.read_bytes()
    if "blanks" in str(path):
        assert data == original
    else:   # identical but for ALV's copies of the first count-rate columns into the unused slots 3 and 4
        strip = re.compile(rb'"Count Rate".*?\r\n\r\n', re.S)
        assert strip.sub(b"", data) == strip.sub(b"", original)


@needs_data
@pytest.mark.parametrize("mode, channels", [
    ("A-CH0+1  C-CH0/1+1/0", ["CH0", "CH1", "CH0/1", "CH1/0"]),   # autos in slots 1-2, crosses in 3-4
    ("A-CH1", ["col1", "CH1"]),                                    # CH1 in slot 2; slot 1 holds data: kept, unnamed
    ("A- A-CH2", ["col1", "col2", "CH2"]),
    ("Something Else", ["col1", "col2"]),
])
def test_alv_7004_modes(mode, channels, tmp_path):
    data = (CGS3 / "080622_3_0027_0001.ASC").read_bytes().replace(b'"C-CH0/1+1/0"', f'"{mode}"'.encode())
    (tmp_path / "mode.ASC").write_bytes(data)
    record = read_alv(tmp_path / "mode.ASC")
    assert [c.channel for c in record.correlations] == channels
    by_name = {c.channel: c for c in record.correlations}
    if "CH1" in by_name:
        assert by_name["CH1"].g2_minus_1[0] == 0.895137 and by_name["CH1"].count_rate_hz == pytest.approx(582321.44)
    if "CH0/1" in by_name:
        assert not by_name["CH0/1"].g2_minus_1.any()
        assert np.array_equal(by_name["CH0/1"].count_trace_hz, by_name["CH0"].count_trace_hz)


def test_alv_write_acquired_record(tmp_path):
    lag_s = 25e-9 * 2.0 ** np.arange(30)
    g = 0.9 * np.exp(-2 * 1000.0 * lag_s)
    t = np.arange(1, 11) * 0.5
    record = DLSRecord(wavelength_nm=633.0, temperature_c=25.0, viscosity_mpa_s=None, refractive_index=1.332,
                       correlations=[Correlation(angle_deg=90.0, lag_s=lag_s, g2_minus_1=g, count_rate_hz=123456.7,
                                                 count_trace_time_s=t, count_trace_hz=np.full(10, 123456.7),
                                                 subruns=[g, g], channel="detector")],
                       duration_s=5.0, source="run-1", format="exoacq")
    back = read_alv(write_alv(tmp_path / "run.ASC", record))
    c = back.correlations[0]
    assert back.viscosity_mpa_s is None and back.temperature_c == pytest.approx(25.0) and back.duration_s == 5
    assert c.channel == "CH0" and back.header["Mode"] == "A-CH0" and back.header["Runs"] == "2"
    np.testing.assert_allclose(c.lag_s, lag_s, rtol=1e-5)
    np.testing.assert_allclose(c.g2_minus_1, g, rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(c.count_trace_hz, 123456.7, rtol=1e-7)
    assert c.count_rate_hz == pytest.approx(123456.7)
    sin = read_sin(write_sin(tmp_path / "run.SIN", record))
    assert sin.header["Mode"] == "Single Auto" and sin.correlations[0].channel == "CH0"
    np.testing.assert_allclose(sin.correlations[0].g2_minus_1, g, atol=2e-6)


def test_alv_write_several_angles(tmp_path):
    lag_s = 1e-7 * 2.0 ** np.arange(20)
    corrs = [Correlation(angle_deg=a, lag_s=lag_s, g2_minus_1=np.exp(-a * lag_s), count_rate_hz=1000.0 * a)
             for a in (30.0, 90.0, 150.0)]
    record = DLSRecord(wavelength_nm=532.0, temperature_c=20.0, viscosity_mpa_s=1.002, refractive_index=1.332,
                       correlations=corrs, duration_s=30.0)
    back = read_alv(write_alv(tmp_path / "multi.ASC", record))
    assert back.instrument.startswith("ALV-7004 CGS-8F")
    assert [(c.channel, c.angle_deg, c.count_rate_hz) for c in back.correlations] == [
        ("CH1", 30.0, 30000.0), ("CH2", 90.0, 90000.0), ("CH3", 150.0, 150000.0)]


# -- ALV: broken files -------------------------------------------------------------------------
def line_of(data: bytes, marker: bytes, after: int = 0) -> tuple[int, int]:
    """(byte offset, 1-based line) of a marker in a file."""
    at = data.index(marker, after)
    return at, data.count(b"\n", 0, at) + 1


@needs_data
@pytest.mark.parametrize("where", ["header mid-line", "header line end", "correlation mid-row",
                                   "correlation line end", "count rate mid-row", "count rate line end",
                                   "cumulant line end", "standard deviation line end", "last row mid-number"])
def test_alv_truncated_files(where, tmp_path):
    data = (CGS3 / "080622_3_0031_averaged.ASC").read_bytes()
    corr, _ = line_of(data, b'"Correlation"')
    count, _ = line_of(data, b'"Count Rate"')
    cumulant, _ = line_of(data, b"Hydrodyn. Radius", data.index(b'"Cumulant 2.Order"'))
    sd, _ = line_of(data, b'"StandardDeviation"')
    cut = {
        "header mid-line": data.index(b"Wavelength") + 5,
        "header line end": data.index(b"\r\n", data.index(b"Wavelength")) + 2,
        "correlation mid-row": corr + 3000 + 17,
        "correlation line end": data.index(b"\r\n", corr + 3000) + 2,
        "count rate mid-row": count + 2000 + 9,
        "count rate line end": data.index(b"\r\n", count + 2000) + 2,
        "cumulant line end": data.index(b"\r\n", cumulant) + 2,
        "standard deviation line end": data.index(b"\r\n", sd + 1500) + 2,
        "last row mid-number": len(data) - 6,
    }[where]
    path = tmp_path / "cut.ASC"
    path.write_bytes(data[:cut])
    lines = data[:cut].count(b"\n") + (0 if data[:cut].endswith(b"\n") else 1)
    with pytest.raises(DLSFileError) as exc:
        read_alv(path)
    message = one_line_error(exc, path)
    line = int(message[len(str(path)) + 1:].split(":", 1)[0])
    assert 1 <= line <= lines, message
    if "mid" in where:
        assert line == lines and "middle of a line" in message
    with pytest.raises(DLSFileError):
        read_dls_file(path)


@needs_data
def test_alv_broken_rows(tmp_path):
    data = (CGS3 / "080622_3_0027_0001.ASC").read_bytes()
    at, line = line_of(data, b"  7.50000E-005\t")
    end = data.index(b"\r\n", at)
    short = data[:at] + data[at:end].rsplit(b"\t", 1)[0] + data[end:]   # a row with 4 values of 5
    (tmp_path / "short.ASC").write_bytes(short)
    with pytest.raises(DLSFileError) as exc:
        read_alv(tmp_path / "short.ASC")
    assert "has 4 values" in one_line_error(exc, tmp_path / "short.ASC", line)

    garbled = data[:at] + data[at:end].replace(b"E+000", b"E+0x0", 1) + data[end:]
    (tmp_path / "garbled.ASC").write_bytes(garbled)
    with pytest.raises(DLSFileError) as exc:
        read_alv(tmp_path / "garbled.ASC")
    assert "is not a number" in one_line_error(exc, tmp_path / "garbled.ASC", line)

    swapped = data.replace(b"  7.50000E-005\t", b"  1.00000E-005\t", 1)
    (tmp_path / "lags.ASC").write_bytes(swapped)
    with pytest.raises(DLSFileError) as exc:
        read_alv(tmp_path / "lags.ASC")
    assert "must be positive and increasing" in one_line_error(exc, tmp_path / "lags.ASC", line)

    at, line = line_of(data, b"  1.00000E-004\t")
    gap = data[:at] + b"\r\n" + data[at:]                                  # a blank line inside the block
    (tmp_path / "gap.ASC").write_bytes(gap)
    with pytest.raises(DLSFileError) as exc:
        read_alv(tmp_path / "gap.ASC")
    assert "outside any block" in one_line_error(exc, tmp_path / "gap.ASC", line + 1)

    header = data.replace(b"Wavelength [nm] :\t     632.80000", b"Wavelength [nm] :\t     n/a")
    (tmp_path / "header.ASC").write_bytes(header)
    with pytest.raises(DLSFileError) as exc:
        read_alv(tmp_path / "header.ASC")
    one_line_error(exc, tmp_path / "header.ASC", line_of(data, b"Wavelength")[1])


@pytest.mark.parametrize("content, line, text", [
    (b"", 1, "empty file"),
    (b"Sample,Size\r\nA,100\r\n", 1, "not an ALV .ASC file"),
    (b"Sample,Size\r\nA,100", 1, "not an ALV .ASC file"),
    (b"ALV-7004/USB\r\nDate :\t\"1.1.2020\"\r\n\x00\x01\x02\xff\xfe\r\n", 3, "binary data"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", 2, "binary data"),
    (b"ALV-7004/USB\r\nthis is not a header line\r\n", 2, "expected 'Key : value'"),
])
def test_alv_not_alv(tmp_path, content, line, text):
    path = tmp_path / "x.ASC"
    path.write_bytes(content)
    with pytest.raises(DLSFileError) as exc:
        read_alv(path)
    assert text in one_line_error(exc, path, line)


def test_alv_multi_run_table(tmp_path):
    """The ALV-5000/6000 "Correlation (Multi, Averaged)" table: Average and single runs per channel."""
    rows = "\r\n".join(f"  {lag:.5E}\t  {0.3 - k * 0.01:.5E}\t  {0.31 - k * 0.01:.5E}\t  {0.29 - k * 0.01:.5E}\t"
                       for k, lag in enumerate([2e-4, 4e-4, 6e-4, 8e-4]))
    text = ('ALV-5000/E-WIN Data\r\nTemperature [K] :\t     298.15000\r\nViscosity [cp]  :\t       0.89000\r\n'
            'Refractive Index:\t       1.33200\r\nWavelength [nm] :\t     488.00000\r\nAngle [°]       :\t      90.00000\r\n'
            'Duration [s]    :\t        20\r\nRuns            :\t         2\r\nMode            :\t"SINGLE AUTO CH0"\r\n'
            'MeanCR0 [kHz]   :\t     100.35390\r\n\r\n"Correlation (Multi, Averaged)"\r\n'
            '"Lag [ms]"\t"Average"\t" 1, 100.000"\t" 2, 100.000"\t\r\n' + rows + '\r\n\r\n"Count Rate"\r\n'
            + "".join(f"  {t:12.5f}\t  {100 + t:12.5f}\r\n" for t in (5.0, 10.0, 15.0, 20.0)))
    path = tmp_path / "multi.asc"
    path.write_bytes(text.encode("cp1252"))
    (c,) = read_alv(path).correlations
    assert c.channel == "CH0" and c.count_rate_hz == pytest.approx(100353.90)
    np.testing.assert_allclose(c.g2_minus_1, [0.30, 0.29, 0.28, 0.27])
    np.testing.assert_allclose(c.subruns, [[0.31, 0.30, 0.29, 0.28], [0.29, 0.28, 0.27, 0.26]])
    np.testing.assert_allclose(c.count_trace_hz, [105e3, 110e3, 115e3, 120e3])


# -- correlator.com .SIN ---------------------------------------------------------------------
def sin_text() -> str:
    """A Flex (correlator.com) Dual Cross file laid out like the vendor's: g2 with baseline 1,
    unfilled channels 0, the raw-count and histogram sections the reader skips."""
    lags = 1.5625e-9 * np.concatenate([np.arange(1, 33), 32 * 2.0 ** (np.arange(1, 60) / 8)])
    g2 = [1 + 0.8 * np.exp(-2 * 2000 * lags), 1 + 0.79 * np.exp(-2 * 2000 * lags)]
    valid = lags < 10.0
    lines = ["FLXA", "Version= 1d", "", "[Parameters]", "Duration= 30.000000", "Mode = Dual Cross",
             "Sample= Polystyrene", "Index= 1.332000", "WaveLength= 532.000000", "Angle= 90.000000",
             "Viscosity= 0.910000", "Temperature= 23.000000", "BaselineTime= 0.010000", "FirstChannel= 32", "",
             "[CorrelationFunction]"]
    lines += [f"{t:e}\t{a if ok else 0:e}\t{b if ok else 0:e}" for t, a, b, ok in zip(lags, *g2, valid)]
    lines += ["", "[RawCorrelationFunction]", "[Delay_Correlation_BaseA_BaseB_Samples]",
              "1.562500e-09\t3.900000e+01\t1.186327e+06\t2.774622e+06\t4.000000e+01\t2.774622e+06", "",
              "[IntensityHistory]", "TraceNumber= 4"]
    lines += [f"{t:f}\t{4000 + t:e}\t{9000 + t:e}" for t in (0.0, 0.629150, 1.258301, 1.887451)]
    lines += ["", "[Histogram]", "SampleTime= 2.000000 us", "0.996158\t0.990915", "0.003741\t0.008938"]
    return "\r\n".join(lines) + "\r\n"


def test_sin_file(tmp_path):
    path = tmp_path / "liposomes.SIN"
    path.write_bytes(sin_text().encode("cp1252"))
    record = read_dls_file(path)
    assert record.format == "sin" and record.instrument == "FLXA"
    assert (record.wavelength_nm, record.temperature_c, record.viscosity_mpa_s, record.refractive_index,
            record.duration_s) == (532.0, 23.0, 0.91, 1.332, 30.0)
    a, b = record.correlations
    assert (a.channel, b.channel, a.angle_deg) == ("CH0/1", "CH1/0", 90.0)
    assert a.lag_s[0] == 1.5625e-9 and a.lag_s[-1] < 10.0          # the unfilled tail dropped
    assert a.g2_minus_1[0] == pytest.approx(0.8, abs=1e-5)          # g2 in the file, g2-1 here
    assert b.g2_minus_1[0] == pytest.approx(0.79, abs=1e-5)
    np.testing.assert_allclose(a.count_trace_hz, [4000, 4000.62915, 4001.258301, 4001.887451], rtol=1e-6)
    np.testing.assert_allclose(b.count_trace_hz, [9000, 9000.62915, 9001.258301, 9001.887451], rtol=1e-6)
    assert a.count_trace_time_s[1] == 0.62915 and a.count_rate_hz == pytest.approx(4000.943725)

    back = read_sin(write_sin(tmp_path / "again.SIN", record))
    assert back.header["Mode"] == "Dual Cross"
    for x, y in zip(record.correlations, back.correlations):
        assert x.channel == y.channel
        np.testing.assert_allclose(y.lag_s, x.lag_s, rtol=1e-6)
        np.testing.assert_allclose(y.g2_minus_1, x.g2_minus_1, atol=2e-6)
        np.testing.assert_allclose(y.count_trace_hz, x.count_trace_hz, rtol=1e-6)


def test_sin_broken(tmp_path):
    text = sin_text()
    cut = tmp_path / "cut.SIN"
    cut.write_bytes(text[:text.index("[IntensityHistory]")].encode())
    with pytest.raises(DLSFileError) as exc:
        read_sin(cut)
    assert "IntensityHistory" in one_line_error(exc, cut)
    short = tmp_path / "short.SIN"
    short.write_bytes(text[:text.index("1.258301")].encode())
    with pytest.raises(DLSFileError) as exc:
        read_dls_file(short)
    assert "TraceNumber" in one_line_error(exc, short)
    mode = tmp_path / "mode.SIN"
    mode.write_bytes(text.replace("Dual Cross", "Triple Twist").encode())
    with pytest.raises(DLSFileError) as exc:
        read_sin(mode)
    assert "Triple Twist" in one_line_error(exc, mode, 6)


def test_sin_integer_mode(tmp_path):
    text = sin_text().replace("Mode = Dual Cross", "Mode= 1    1    0    1")
    path = tmp_path / "int.SIN"
    path.write_bytes(text.encode())
    a, b = read_sin(path).correlations
    assert (a.channel, b.channel) == ("CH1", "CH0/1")
    assert a.count_trace_hz[0] == 9000 and b.count_trace_hz[0] == 4000


# -- PTU ---------------------------------------------------------------------------------------
def ptu_tags(path: Path) -> tuple[dict, int]:
    """The tags of a PTU file, parsed by the documented layout (not by the reader under test)."""
    data = path.read_bytes()
    assert data[:8] == b"PQTTTR\0\0"
    tags, at = {}, 16
    while True:
        name, index, kind = struct.unpack_from("<32siI", data, at)
        name = name.rstrip(b"\0").decode()
        value = data[at + 40:at + 48]
        at += 48
        if kind == 0x4001FFFF:
            length = struct.unpack("<q", value)[0]
            tags[name] = data[at:at + length].rstrip(b"\0").decode()
            at += length
        elif kind in (0x20000008, 0x21000008):
            tags[name] = struct.unpack("<d", value)[0]
        else:
            tags[name] = struct.unpack("<q", value)[0]
        if name == "Header_End":
            return tags, at


def make_ptu(path: Path, record_type: int, records: list[int], resolution_s: float = 1e-12) -> Path:
    def tag(name: str, kind: int, raw: bytes) -> bytes:
        return struct.pack("<32siI", name.encode(), -1, kind) + raw
    header = (b"PQTTTR\0\0" + b"1.0.00\0\0"
              + tag("MeasDesc_GlobalResolution", 0x20000008, struct.pack("<d", resolution_s))
              + tag("TTResultFormat_TTTRRecType", 0x10000008, struct.pack("<q", record_type))
              + tag("TTResult_NumberOfRecords", 0x10000008, struct.pack("<q", len(records)))
              + tag("Header_End", 0xFFFF0008, bytes(8)))
    path.write_bytes(header + np.asarray(records, dtype="<u4").tobytes())
    return path


def test_ptu_round_trip_over_many_overflows(tmp_path):
    wrap = 1 << 25
    rng = np.random.default_rng(1)
    ticks = np.sort(rng.integers(0, 40 * wrap, 5000))
    ticks = np.concatenate([[0, 3, 3], ticks, [ticks[-1] + 1000 * wrap, ticks[-1] + (wrap + 5) * wrap + 7]])
    path = write_ptu(tmp_path / "photons.ptu", ticks, 1e-9, channel=2, duration_s=1.3)
    tags, start = ptu_tags(path)
    assert tags["TTResultFormat_TTTRRecType"] == 0x01010204 and tags["Measurement_Mode"] == 2
    assert tags["MeasDesc_GlobalResolution"] == 1e-9 and tags["HW_Type"] == "HydraHarp"
    records = np.frombuffer(path.read_bytes()[start:], dtype="<u4")
    assert records.size == tags["TTResult_NumberOfRecords"]
    overflow = records[(records >> 25) == 0x7F]
    assert records.size - overflow.size == ticks.size
    assert (overflow & (wrap - 1)).sum() == ticks[-1] // wrap   # overflow counts add up; a gap > 2^25-1 needs two
    photons = read_ptu(path)
    assert photons.resolution_s == 1e-9 and photons.duration_s == pytest.approx(1.3)
    assert photons.ticks.dtype == np.int64 and np.array_equal(photons.ticks, ticks)
    assert np.all(photons.channels == 2) and np.array_equal(photons.by_channel()[2], ticks)
    assert read_ptu(path, channel=0).ticks.size == 0


def test_ptu_hand_made_records(tmp_path):
    ovf = (1 << 31) | (63 << 25)
    hydra = [5, ovf | 3, (1 << 25) | 7, (1 << 31) | (2 << 25) | 9, ovf, (1 << 31) | 11, 13]
    photons = read_ptu(make_ptu(tmp_path / "h.ptu", 0x01010204, hydra))
    # overflow of 3 periods, a marker (skipped), one more overflow (0 means 1), a sync event
    assert photons.ticks.tolist() == [5, 3 * 2 ** 25 + 7, 4 * 2 ** 25 + 13]
    assert photons.channels.tolist() == [0, 1, 0]
    assert read_ptu(tmp_path / "h.ptu", channel=-1).ticks.tolist() == [4 * 2 ** 25 + 11]
    v1 = read_ptu(make_ptu(tmp_path / "v1.ptu", 0x00010204, [5, ovf | 3, 7]))
    assert v1.ticks.tolist() == [5, 33_552_000 + 7]                    # V1: one overflow per record
    pico = [(1 << 28) | 5, 0xF << 28, 0xF << 28, (0xF << 28) | 0x20 | 1, 8]
    ph = read_ptu(make_ptu(tmp_path / "p.ptu", 0x00010203, pico, resolution_s=4e-12))
    assert ph.ticks.tolist() == [5, 2 * 210_698_240 + 8] and ph.channels.tolist() == [1, 0]
    assert ph.resolution_s == 4e-12 and ph.record_type == "PicoHarp T2"


def test_ptu_broken(tmp_path):
    good = write_ptu(tmp_path / "good.ptu", np.arange(0, 10_000, 7), 1e-12)
    data = good.read_bytes()
    cases = {"cut.ptu": (data[:-10], "file truncated"), "head.ptu": (data[:300], "Header_End"),
             "junk.ptu": (b"hello world\r\n", "no 'PQTTTR' magic"),
             "t3.ptu": (make_ptu(tmp_path / "t3", 0x00010304, [1, 2]).read_bytes(), "T3-mode")}
    for name, (content, text) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DLSFileError) as exc:
            read_ptu(tmp_path / name)
        assert text in one_line_error(exc, tmp_path / name), name
    backwards = make_ptu(tmp_path / "back.ptu", 0x01010204, [10, 5])
    with pytest.raises(DLSFileError, match="goes backwards"):
        read_ptu(backwards)


def test_read_dls_file_refuses_photons(tmp_path):
    path = write_ptu(tmp_path / "photons.ptu", np.arange(100), 1e-9)
    with pytest.raises(PhotonFileError) as exc:
        read_dls_file(path)
    assert "photon arrival times, not a correlation" in one_line_error(exc, path)
    assert "correlates" in str(exc.value)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(DLSFileError) as exc:
        read_dls_file(text)
    assert "not a correlator file" in one_line_error(exc, text, 1)
    with pytest.raises(DLSFileError) as exc:
        read_dls_file(tmp_path / "missing.ASC")
    assert "cannot read" in one_line_error(exc, tmp_path / "missing.ASC")


@needs_data
def test_read_dls_file_reads_alv():
    record = read_dls_file(BLANKS / "water_averaged.ASC")
    assert record.format == "alv-asc" and len(record.correlations) == 8
