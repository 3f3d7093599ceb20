"""Export of NTA results: ExperimentSummary.csv (NanoSight layout) and the HTML report."""
from __future__ import annotations

import csv
import io
import math
import statistics
from html.parser import HTMLParser

import pytest

import exoacq
from exoacq.nta.export import average_captures, write_experiment_summary_csv, write_html_report

SAMPLE = 'EV <lot&42> "µ-filtered"'
CENTRES = [2.5, 7.5, 12.5, 17.5, 22.5]
SETTINGS = {
    "acquisition": {"duration_s": 60, "sample": SAMPLE, "dilution": 1000},
    "tracking": {"frame_rate_hz": 30.0, "exposure_ms": 10.0, "pixel_size_um": 0.166, "min_track_length": 10,
                 "objective": "20x, field 212 µm", "note": "drift → none"},  # "→" is not ISO-8859-1
    "instruments": {"laser": {"wavelength_nm": 488, "power_mw": 40.0}, "camera": {"gain": 2}},
}
CALIBRATION = {"source": "nta-volume.toml v2", "detection_volume_nl": 0.92, "uncertainty_nl": 0.05}
#: Per capture: (mean, mode, sd, d10, d50, d90), concentration, particles/frame, tracks used, T, counts.
KNOWN = [
    ((110.0, 100.0, 30.0, 70.0, 105.0, 150.0), 2.0e9, 40.0, 500, 24.0, [0, 5, 10, 4, 1]),
    ((120.0, 104.0, 34.0, 76.0, 112.0, 162.0), 2.6e9, 46.0, 560, 24.5, [1, 6, 12, 6, 0]),
    ((116.0, 98.0, 31.0, 72.0, 108.0, 155.0), 2.3e9, 43.5, 530, 25.0, [0, 4, 9, 5, 2]),
]
STATS = ["Mean (nm)", "Mode (nm)", "SD (nm)", "D10 (nm)", "D50 (nm)", "D90 (nm)"]


def make_capture(i: int) -> dict:
    size, conc, ppf, used, temp, counts = KNOWN[i]
    total = sum(counts)
    return {
        "run_id": f"nta-run-{i + 1}", "time": f"2026-01-0{i + 1}T10:00:00Z", "sample": SAMPLE,
        "size_nm": dict(zip(["mean", "mode", "sd", "d10", "d50", "d90"], size)),
        "concentration_per_ml": conc, "particles_per_frame": ppf, "tracks": {"total": used + 100, "used": used},
        "temperature_c": temp, "viscosity_mpa_s": 0.91 - 0.01 * i,
        "histogram": {"bin_width_nm": 5.0, "bin_centres_nm": list(CENTRES), "counts": list(counts),
                      "concentration_per_ml": [c / total * conc for c in counts]},
        "frames": {"planned": 1800, "acquired": 1800, "processed": 1800 - i, "dropped": i,
                   "dropped_by": {"camera": 0, "tracker": i}},
        "warnings": [f"only {used} tracks <checked> & kept"] if i == 1 else [],
    }


@pytest.fixture
def captures() -> list[dict]:
    return [make_capture(i) for i in range(3)]


def mean_se(values):
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def read_csv(path) -> tuple[bytes, list[list[str]]]:
    raw = path.read_bytes()
    return raw, list(csv.reader(io.StringIO(raw.decode("iso-8859-1"), newline="")))


def block(rows: list[list[str]], title: str) -> list[list[str]]:
    """Rows after a title row up to the next empty row."""
    start = rows.index([title]) + 1
    end = next(i for i in range(start, len(rows)) if not rows[i])
    return rows[start:end]


def test_csv_layout_results_and_graph_data(tmp_path, captures):
    path = tmp_path / "ExperimentSummary.csv"
    write_experiment_summary_csv(path, captures, sample=SAMPLE, settings=SETTINGS)
    raw, rows = read_csv(path)
    assert raw.count(b"\n") == raw.count(b"\r\n") > 50  # CRLF line ends only
    assert "µ".encode("iso-8859-1") in raw and "µ".encode("utf-8") not in raw  # Latin-1, not UTF-8
    text = raw.decode("iso-8859-1")
    assert "drift ? none" in text  # not encodable: replaced
    assert ["Software", "exoacq"] in rows and ["Version", exoacq.__version__] in rows
    assert ["Sample", SAMPLE] in rows
    assert any(r[0] == "Date" and r[1].startswith("20") for r in rows if r)
    assert ["tracking.pixel_size_um", "0.166", "µm"] in rows
    assert ["instruments.laser.power_mw", "40.0", "mW"] in rows

    results = block(rows, "[Results]")
    assert results[0] == ["Statistic", "Capture 1", "Capture 2", "Capture 3", "Average", "Standard Error"]
    table = {r[0]: [float(v) for v in r[1:]] for r in results[1:]}
    for k, label in enumerate(STATS):
        values = [c[0][k] for c in KNOWN]
        avg, se = mean_se(values)
        assert table[label][:3] == values
        assert table[label][3] == pytest.approx(avg) and table[label][4] == pytest.approx(se)
    for label, idx in [("Concentration (particles / ml)", 1), ("Particles per frame (particles / frame)", 2),
                       ("Valid tracks (count)", 3), ("Temperature (°C)", 4)]:
        values = [c[idx] for c in KNOWN]
        avg, se = mean_se(values)
        assert table[label] == pytest.approx(values + [avg, se])
    assert table["Concentration (particles / ml)"][3] == pytest.approx(2.3e9)
    assert table["Concentration (particles / ml)"][4] == pytest.approx(0.3e9 / math.sqrt(3))

    size_blocks = [i for i, r in enumerate(rows) if r == ["[Size Data]"]]
    assert len(size_blocks) == 3
    second = rows[size_blocks[1] + 1:]
    assert second[0] == ["Capture", "2"] and ["Mean (nm)", "120.0"] in second[:12]
    assert ["Warning", "only 560 tracks <checked> & kept"] in rows
    assert ["Capture 2: only 560 tracks <checked> & kept"] in block(rows, "[Warnings]")

    graph = block(rows, "Graph Data")
    assert graph[0] == (["Bin centre (nm)"] + ["Concentration (particles / ml)"] * 3
                        + ["Concentration average (particles / ml)", "Standard Error (particles / ml)"])
    assert [float(r[0]) for r in graph[1:]] == CENTRES
    for j, r in enumerate(graph[1:]):
        per = [make_capture(i)["histogram"]["concentration_per_ml"][j] for i in range(3)]
        avg, se = mean_se(per)
        assert [float(v) for v in r[1:]] == pytest.approx(per + [avg, se])


def test_capture_without_concentration_gives_counts(tmp_path, captures):
    captures[2]["concentration_per_ml"] = None
    del captures[2]["histogram"]["concentration_per_ml"]
    path = tmp_path / "summary.csv"
    write_experiment_summary_csv(path, captures, sample="s", settings=SETTINGS)
    _, rows = read_csv(path)
    graph = block(rows, "Graph Data")
    assert graph[0] == (["Bin centre (nm)"] + ["Counts (particles per bin)"] * 3
                        + ["Counts average (particles per bin)", "Standard Error (particles per bin)"])
    for j, r in enumerate(graph[1:]):
        per = [KNOWN[i][5][j] for i in range(3)]
        assert [float(v) for v in r[1:]] == pytest.approx(per + list(mean_se(per)))
    conc = next(r for r in block(rows, "[Results]") if r[0] == "Concentration (particles / ml)")
    assert conc[3] == "n/a"
    assert [float(v) for v in conc[4:]] == pytest.approx(list(mean_se([2.0e9, 2.6e9])))
    warnings = [r[0] for r in block(rows, "[Warnings]")]
    assert any("averaged over 2 of 3 captures" in w for w in warnings)
    assert any("size distribution in counts" in w for w in warnings)


def test_mismatched_bins_raise(tmp_path, captures):
    captures[1]["histogram"]["bin_centres_nm"] = [1.0, 3.0, 5.0, 7.0, 9.0]
    with pytest.raises(ValueError, match="bins do not match.*capture 2"):
        average_captures(captures)
    with pytest.raises(ValueError, match="bins do not match"):
        write_experiment_summary_csv(tmp_path / "x.csv", captures, sample="s", settings={})
    with pytest.raises(ValueError, match="bins do not match"):
        write_html_report(tmp_path / "x.html", captures, sample="s", settings={}, calibration=None)
    captures[1] = make_capture(1)
    captures[0]["histogram"]["counts"].append(3)
    with pytest.raises(ValueError, match="capture 1: 6 histogram counts values for 5 bins"):
        average_captures(captures)


def test_shorter_histogram_is_padded_with_empty_bins(captures):
    h = captures[0]["histogram"]
    h["bin_centres_nm"] += [27.5, 32.5]
    h["counts"] += [2, 1]
    h["concentration_per_ml"] += [1e8, 5e7]
    avg = average_captures(captures)
    hist = avg["histogram"]
    assert hist["bin_centres_nm"] == CENTRES + [27.5, 32.5]
    assert [v[-1] for v in hist["values"]] == [5e7, 0.0, 0.0]
    assert hist["average"][-1] == pytest.approx(5e7 / 3)
    assert any("padded" in w for w in avg["warnings"])


def test_average_structure_and_edge_cases(captures):
    avg = average_captures(captures[:1])
    assert avg["n"] == 1 and avg["stats"]["mean_nm"]["average"] == 110.0
    assert avg["stats"]["mean_nm"]["se"] is None and avg["histogram"]["se"][0] is None
    with pytest.raises(ValueError, match="no captures"):
        average_captures([])


class Checker(HTMLParser):
    """Tag balance (void elements aside) and the text content."""
    VOID = {"meta", "br", "hr", "img", "input", "link", "polyline", "polygon", "line", "path", "rect", "circle"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.text, self.counts = [], [], [], {}

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_html_report(tmp_path, captures):
    path = tmp_path / "report.html"
    write_html_report(path, captures, sample=SAMPLE, settings=SETTINGS, calibration=CALIBRATION)
    source = path.read_text(encoding="utf-8")
    checker = Checker()
    checker.feed(source)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert checker.counts["table"] >= 5 and checker.counts["svg"] == 1 and checker.counts["polyline"] == 4
    assert "http://" not in source.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no external assets
    assert "<script" not in source and "src=" not in source
    # the sample name escaped, "µ" kept
    assert "EV &lt;lot&amp;42&gt; &quot;µ-filtered&quot;" in source and "<lot&42>" not in source
    text = "".join(checker.text)
    assert SAMPLE in text
    # statistics: average ± standard error and per capture
    avg, se = mean_se([c[0][0] for c in KNOWN])
    assert f"{avg:.1f} ± {se:.1f}" in text
    assert "2.300e+09 ± 1.732e+08" in text and "2.600e+09" in text
    # warnings prominently, escaped
    assert 'class="warnings"' in source
    assert "Capture 2: only 560 tracks &lt;checked&gt; &amp; kept" in source
    assert source.index('class="warnings"') < source.index("<h2>Statistics</h2>")
    # settings with units, calibration
    assert "pixel_size_um" in text and "µm" in text and "mW" in text and "Acquisition" in text
    assert "nta-volume.toml v2" in text and "detection_volume_nl" in text


def test_html_report_without_calibration_or_warnings(tmp_path, captures):
    captures[1]["warnings"] = []
    path = tmp_path / "report.html"
    write_html_report(path, captures, average_captures(captures), sample="plain", settings={}, calibration=None)
    source = path.read_text(encoding="utf-8")
    assert "<h2>Calibration</h2>\n<p>none</p>" in source
    assert "No warnings." in source and 'class="warnings"' not in source
