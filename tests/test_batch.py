"""Batch re-analysis: many inputs (files, folders, globs) through `exoacq analyze`, one after
another or on Dask (a scheduler and workers in processes of their own), each input's numbers
those of its serial analysis; a bad input reported and the others analysed; the benchmark."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from conftest import ROOT, TESTDATA, run_cli
from exoacq.batch import expand_inputs, single_input, split_dask_argument
from exoacq.cli import build_parser
from exoacq.errors import ExoacqError
from exoacq.nta.bench_batch import max_relative_difference
from exoacq.nta.cli_analyze import VIDEO_SUFFIXES, is_frame_folder
from exoacq.nta.simulate import write_simulated_video

CALIBRATION = ROOT / "calibrations" / "nta" / "simulated-camera.toml"
#: The simulated camera's calibration: pixel size, frame rate and minmass from it; concentrations.
ANALYSIS = ["--calibration", str(CALIBRATION), "--temperature-c", "25", "--exposure-ms", "15"]
ALV = TESTDATA / "dls" / "alv-cgs3"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A folder of five small simulated videos (different seeds) and a corrupt one."""
    folder = tmp_path_factory.mktemp("batch") / "videos"
    folder.mkdir()
    for seed in range(1, 6):
        write_simulated_video(folder / f"sample-{seed}.avi", frames=120, width=320, height=240, seed=seed,
                              concentration_per_ml=1e9)
    good = (folder / "sample-1.avi").read_bytes()
    (folder / "corrupt.avi").write_bytes(good[:200] + bytes(4000))  # a damaged header
    return folder


def good_videos(folder: Path) -> list[Path]:
    return sorted(folder.glob("sample-*.avi"))


@pytest.fixture(scope="module")
def serial(videos) -> dict[str, dict]:
    """Each good video analysed alone, as before batches (one `analyze nta VIDEO --json` each)."""
    procs = {str(v): subprocess.Popen([sys.executable, "-m", "exoacq", "analyze", "nta", str(v), *ANALYSIS, "--json"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for v in good_videos(videos)}
    documents = {}
    for path, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        documents[path] = json.loads(out)
        assert "input" not in documents[path] and documents[path]["video"] == path  # the one-input document
    return documents


#: The same numbers, to the last bit: the analysis sums over the tracks in an order of their own
#: content (exoacq.nta.distribution), whatever order the tracker numbered them in.
LAST_BITS = 0.0


def assert_same_analysis(document: dict, alone: dict) -> None:
    """``document`` (of a batch) is ``alone`` (the video analysed by itself) with ``input`` added:
    every key, string, integer (tracks, histogram counts) the same, every number to the last bits."""
    assert document["input"] == alone["video"]
    batch = {k: v for k, v in document.items() if k != "input"}
    assert batch.keys() == alone.keys()
    for key in ("tracks", "frames_analysed", "particles_per_frame", "warnings", "settings"):
        assert batch[key] == alone[key], key
    assert batch["histogram"]["counts"] == alone["histogram"]["counts"]
    assert max_relative_difference(batch, alone) <= LAST_BITS, batch


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("exoacq: error:")]


# -- inputs ----------------------------------------------------------------------------------
def test_inputs_are_files_folders_and_globs(tmp_path):
    videos = tmp_path / "runs"
    (videos / "day2").mkdir(parents=True)
    for name in ("b.avi", "a.MOV", "notes.txt", "day2/c.avi"):
        (videos / name).write_bytes(b"x")
    frames = videos / "frames-run"  # a folder of frame images: one video
    frames.mkdir()
    for i in range(3):
        (frames / f"f{i:03d}.png").write_bytes(b"x")

    def expand(*arguments):
        return expand_inputs([str(a) for a in arguments], VIDEO_SUFFIXES, is_frame_folder)

    # a folder of videos is expanded to them (and to its folders of frames), sorted; not to other files
    assert expand(videos) == [videos / "a.MOV", videos / "b.avi", frames]
    assert expand(frames) == [frames]
    assert expand(f"{videos}/**/*.avi") == [videos / "b.avi", videos / "day2" / "c.avi"]
    assert expand(videos / "b.avi", videos, videos / "day2") == \
        [videos / "b.avi", videos / "a.MOV", frames, videos / "day2" / "c.avi"]  # no repeats, order kept
    for bad, message in ((tmp_path / "missing.avi", "missing.avi: no such file or directory"),
                         (f"{videos}/*.mp4", "*.mp4: no file matches"),
                         (tmp_path, "the folder holds no inputs")):
        with pytest.raises(ExoacqError) as raised:
            expand(videos / "b.avi", bad)
        assert message in str(raised.value) and raised.value.code == "usage"

    # one file, a missing file or a folder of frames is one input, analysed as before batches
    assert single_input([str(videos / "b.avi")], is_frame_folder) == videos / "b.avi"
    assert single_input([str(tmp_path / "missing.avi")], is_frame_folder) == tmp_path / "missing.avi"
    assert single_input([str(frames)], is_frame_folder) == frames
    for batch in ([str(videos)], [f"{videos}/*.avi"], [str(videos / "b.avi")] * 2):
        assert single_input(batch, is_frame_folder) is None


def test_dask_option_takes_an_address_or_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a.avi", "b.avi"):
        (tmp_path / name).write_bytes(b"x")
    parser = build_parser()

    def parse(*argv):
        args = parser.parse_args(["analyze", "nta", *argv])
        split_dask_argument(args)
        return args.inputs, args.dask

    assert parse("a.avi", "b.avi") == (["a.avi", "b.avi"], None)
    assert parse("a.avi", "b.avi", "--dask") == (["a.avi", "b.avi"], "local")
    assert parse("--dask", "a.avi", "b.avi") == (["a.avi", "b.avi"], "local")  # a.avi is not an address
    assert parse("a.avi", "--dask", "tcp://10.0.0.2:8786") == (["a.avi"], "tcp://10.0.0.2:8786")
    assert parse("--dask", "scheduler.lab:8786", "a.avi") == (["a.avi"], "scheduler.lab:8786")
    assert parse("--dask", "*.avi", "b.avi") == (["*.avi", "b.avi"], "local")
    assert parse("--dask", "local", "a.avi") == (["a.avi"], "local")
    assert parse("a.avi", "--dask=scheduler") == (["a.avi"], "scheduler")  # refused later: not an address


# -- NTA on Dask: a scheduler and two workers, each a process of its own --------------------------
class DaskProcesses:
    """`dask-scheduler` on loopback and workers of one thread each, as separate processes."""

    def __init__(self, tmp: Path):
        self.scheduler_file = tmp / "scheduler.json"
        self.log = tmp / "dask.log"
        self.procs: list[subprocess.Popen] = []

    def start(self, workers: int = 2) -> None:
        """The scheduler, then the workers; returns once they are all registered."""
        self._start("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(self.scheduler_file))
        deadline = time.monotonic() + 60
        while not self.scheduler_file.exists() or not self.scheduler_file.read_text().strip():
            assert time.monotonic() < deadline and self.procs[0].poll() is None, self.log.read_text()
            time.sleep(0.1)
        self.address = json.loads(self.scheduler_file.read_text())["address"]
        assert self.address.startswith("tcp://127.0.0.1:")
        for _ in range(workers):
            self._start("distributed.cli.dask_worker", "--scheduler-file", str(self.scheduler_file), "--nthreads", "1",
                        "--host", "127.0.0.1", "--no-dashboard")
        from distributed import Client
        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
            self.workers = len(client.scheduler_info(n_workers=-1)["workers"])

    def _start(self, module: str, *args: str) -> None:
        with open(self.log, "ab") as log:  # each its own process group: the worker's nanny and its child
            self.procs.append(subprocess.Popen([sys.executable, "-m", module, *args], stdout=log, stderr=log,
                                               start_new_session=True))

    def stop(self) -> None:
        """Every process started, whatever happened (each by its own process group: a worker's
        nanny and the worker process it spawned)."""
        def signal_group(proc: subprocess.Popen, number: int) -> None:
            try:
                os.killpg(proc.pid, number)
            except ProcessLookupError:
                pass
        for proc in reversed(self.procs):
            signal_group(proc, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            signal_group(proc, signal.SIGKILL)  # anything left of that group
            proc.wait(timeout=5)


@pytest.mark.slow
def test_videos_on_a_dask_scheduler_give_their_serial_numbers(videos, serial, tmp_path):
    cluster = DaskProcesses(tmp_path)
    try:
        cluster.start(workers=2)
        assert cluster.workers == 2
        inputs = [str(v) for v in good_videos(videos)]
        inputs.insert(3, str(videos / "corrupt.avi"))  # six videos, one of them corrupt
        proc = run_cli("analyze", "nta", *inputs, *ANALYSIS, "--dask", cluster.address, "--json", timeout=180)
    finally:
        cluster.stop()
    documents = json_lines(proc.stdout)
    assert proc.returncode == 1, proc.stderr  # one failed ...
    assert sorted(d["input"] for d in documents) == sorted(inputs)  # ... and every input has its line
    failed = [d for d in documents if "error" in d]
    assert len(failed) == 1 and set(failed[0]) == {"input", "error"}
    assert failed[0]["input"] == str(videos / "corrupt.avi") and "corrupt.avi" in failed[0]["error"]
    lines = errors(proc.stderr)
    assert len(lines) == 1 and "corrupt.avi" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert "5 of 6 inputs analysed, 1 failed" in proc.stderr
    for document in documents:
        if "error" in document:
            continue
        alone = serial[document["input"]]
        assert document["video"] == document["input"]  # NTA documents keep `video`
        assert alone["concentration_per_ml"] is not None and alone["tracks"]["used"] > 0
        assert alone["size_nm"]["mean"] is not None
        # size_nm, concentration, tracks, histogram, ...: the whole document is the serial analysis'
        assert_same_analysis(document, alone)


# -- serial batches: folders, globs, --csv -----------------------------------------------------
def test_a_folder_of_videos_serially_with_a_summary_csv(videos, serial, tmp_path):
    table = tmp_path / "summary.csv"
    proc = run_cli("analyze", "nta", str(videos), *ANALYSIS, "--json", "--csv", str(table), timeout=180)
    assert proc.returncode == 1, proc.stderr  # the corrupt one
    documents = json_lines(proc.stdout)
    expected = sorted(str(p) for p in videos.iterdir())
    assert [d["input"] for d in documents] == expected  # serially: in order
    by_input = {d["input"]: d for d in documents}
    for path, alone in serial.items():
        assert_same_analysis(by_input[path], alone)
    assert len(errors(proc.stderr)) == 1 and "Traceback" not in proc.stderr

    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["input"] for r in rows] == expected  # one row per input
    assert list(rows[0])[0] == "input" and list(rows[0])[-1] == "error"
    for row in rows:
        if row["input"].endswith("corrupt.avi"):
            assert "corrupt.avi" in row["error"] and row["size_mean_nm"] == ""
            continue
        document = by_input[row["input"]]
        assert row["error"] == ""
        assert float(row["size_mean_nm"]) == document["size_nm"]["mean"]
        assert float(row["concentration_per_ml"]) == document["concentration_per_ml"]
        assert int(row["tracks_used"]) == document["tracks"]["used"]
        assert int(row["frames_analysed"]) == 120


def test_globs_frame_folders_and_text_output(videos, serial, tmp_path):
    # a folder of frame images is one video: the frames of sample-2.avi give sample-2's numbers
    frames = tmp_path / "sample-2-frames"
    frames.mkdir()
    capture = cv2.VideoCapture(str(videos / "sample-2.avi"))
    i = 0
    while (read := capture.read())[0]:
        cv2.imwrite(str(frames / f"frame{i:04d}.png"), cv2.cvtColor(read[1], cv2.COLOR_BGR2GRAY))
        i += 1
    assert i == 120
    proc = run_cli("analyze", "nta", f"{videos}/sample-[13].avi", str(frames), *ANALYSIS, "--fps", "25", "--json")
    assert proc.returncode == 0, proc.stderr
    documents = {d["input"]: d for d in json_lines(proc.stdout)}
    assert list(documents) == [str(videos / "sample-1.avi"), str(videos / "sample-3.avi"), str(frames)]
    two = serial[str(videos / "sample-2.avi")]
    for key in ("size_nm", "concentration_per_ml", "tracks", "histogram"):
        assert max_relative_difference(documents[str(frames)][key], two[key]) <= LAST_BITS, key
    assert_same_analysis(documents[str(videos / "sample-1.avi")], serial[str(videos / "sample-1.avi")])

    # without --json: a line per input on stdout; progress on stderr
    proc = run_cli("analyze", "nta", f"{videos}/sample-[45].avi", *ANALYSIS)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(videos / "sample-4.avi") + ": mean ")
    assert "tracks" in lines[0] and "particles/mL" in lines[0]
    assert "batch: 2/2 inputs done" in proc.stderr and not errors(proc.stderr)


def test_batch_usage_errors_come_before_any_analysis(videos, tmp_path):
    (tmp_path / "empty").mkdir()
    two = [str(p) for p in good_videos(videos)[:2]]
    cases = [
        ([*two, str(tmp_path / "missing.avi"), *ANALYSIS], 2, "missing.avi: no such file or directory"),
        ([str(tmp_path / "empty"), *ANALYSIS], 2, "the folder holds no inputs"),
        ([f"{tmp_path}/*.avi", *ANALYSIS], 2, "no file matches"),
        ([*two, *ANALYSIS, "--report", str(tmp_path / "r.html")], 2, "--report writes one video's report"),
        ([*two, "--temperature-c", "25"], 2, "--pixel-size-um is required"),  # once, not once per input
        ([*two, *ANALYSIS, "--csv", str(tmp_path / "no-folder" / "s.csv")], 1, "cannot write"),
        ([*two, *ANALYSIS, "--workers", "2"], 2, "--workers sizes the local Dask cluster"),
        ([*two, *ANALYSIS, "--dask=scheduler"], 2, "--dask scheduler: not a scheduler address"),
    ]
    for args, code, message in cases:
        proc = run_cli("analyze", "nta", *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert len(errors(proc.stderr)) == 1 and message in errors(proc.stderr)[0], (args, proc.stderr)
        assert proc.stdout == "" and "batch: 1/" not in proc.stderr and "Traceback" not in proc.stderr


# -- DLS -------------------------------------------------------------------------------------
@pytest.mark.skipif(not ALV.is_dir(), reason=f"real ALV files not found at {ALV}")
def test_a_folder_of_alv_files_is_one_document_per_file(tmp_path):
    table = tmp_path / "dls.csv"
    proc = run_cli("analyze", "dls", str(ALV), "--json", "--csv", str(table))
    assert proc.returncode == 0, proc.stderr
    files = sorted(str(p) for p in ALV.iterdir() if p.suffix.upper() == ".ASC")
    documents = json_lines(proc.stdout)
    assert [d["input"] for d in documents] == files
    for document in documents:
        assert "error" not in document and document["measurements"], document.get("error")
        assert all(m["z_average_nm"] > 0 for m in document["measurements"])
    alone = run_cli("analyze", "dls", files[-1], "--json")  # the same as the file analysed by itself
    assert alone.returncode == 0, alone.stderr
    assert {k: v for k, v in documents[-1].items() if k != "input"} == json.loads(alone.stdout)
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["input"] for r in rows] == files
    for row, document in zip(rows, documents):
        assert int(row["measurements"]) == len(document["measurements"])
        assert float(row["z_average_nm"].split(";")[0]) == document["measurements"][0]["z_average_nm"]
        assert row["error"] == ""


# -- the benchmark ---------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_batch_reports_both_times_and_the_speedup():
    proc = run_cli("bench", "batch", "--videos", "3", "--frames", "40", "--width", "160", "--height", "120", "--json",
                   timeout=240)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["inputs"] == 3 and result["video"]["frames"] == 40
    for run in ("workers_1", "workers_2"):
        assert result[run]["seconds"] > 0 and result[run]["cpu_seconds"] > 0 and result[run]["threads_per_worker"] == 1
    assert result["speedup"] == pytest.approx(result["workers_1"]["seconds"] / result["workers_2"]["seconds"])
    assert result["max_relative_difference"] <= 1e-12  # the same documents on 1 and on 2 workers
    assert isinstance(result["identical"], bool)
    assert result["machine"]["cpus"] >= 1 and result["machine"]["dask"]
