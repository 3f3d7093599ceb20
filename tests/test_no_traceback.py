"""Never a traceback from any ``exoacq`` verb on any input file or option (issue #9, item 1).

Every offline verb of every method (analyze, calibrate, simulate, bench) meets bad inputs:
empty, binary, truncated and wrongly named files, degenerate videos, options out of range
(negative, zero, NaN, infinite), missing, malformed and wrong-kind calibrations; the client
verbs meet a control endpoint where nothing listens. Each must end with ONE line
``exoacq: error: ...`` that names the problem and a non-zero exit status (argparse's usage
errors: status 2), never a traceback, and never the last-resort ``internal error`` of
exoacq.cli.main (that would be a bug caught, not a bad input recognised).

Speed: a case is the real command line in a process of its own, forked from one driver that
imported exoacq, numpy and OpenCV once (``python -m exoacq`` pays ~1.3 s of imports per
analysis; ~200 cases would take minutes). The child runs ``exoacq/__main__.py`` exactly as
``python -m exoacq`` does, with its own stdout/stderr files and exit status.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TESTDATA, run_cli

# A forking driver: one process imports exoacq once, then forks one child per case. A child
# runs `python -m exoacq ARGS` (runpy of exoacq/__main__.py); an exception escaping it prints
# its traceback as the interpreter would. Cases marked "idle" (waiting on a socket) do not
# count against the CPU parallelism.
_DRIVER = r'''
import importlib, json, os, runpy, sys, time, traceback
cases, parallel = json.load(sys.stdin)
for name in ("exoacq.cli", "exoacq.config", "exoacq.bus", "exoacq.client", "exoacq.batch", "exoacq.nta.cli",
             "exoacq.nta.cli_analyze", "exoacq.nta.offline", "exoacq.nta.calibration", "exoacq.nta.export",
             "exoacq.nta.simulate",
             "exoacq.dls.cli", "exoacq.dls.io", "exoacq.dls.analysis", "exoacq.flow.cli", "exoacq.flow.pipeline",
             "exoacq.flow.gating", "exoacq.flow.calibrate", "exoacq.flow.simulated", "scipy.optimize", "flowkit"):
    try:  # an optimisation only: a module moved is imported by the child as it needs it
        importlib.import_module(name)
    except ImportError:
        pass
try:
    importlib.import_module("exoacq.nta.analysis").warm_up()  # numba kernels compiled (or loaded) once
except Exception:
    pass

def child(case):
    os.setpgid(0, 0)  # its own process group: whatever it starts is ended with it
    os.chdir(case["cwd"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, suffix in ((1, ".out"), (2, ".err")):
        os.dup2(os.open(case["log"] + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.environ.update(case["env"])
    sys.argv = ["exoacq", *case["argv"]]
    code = 1
    try:
        runpy.run_module("exoacq", run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)

def end_group(pid):
    try:
        os.killpg(pid, 9)
    except (ProcessLookupError, PermissionError):
        pass

running, codes, started, elapsed, cpu, pending = {}, {}, {}, {}, {}, list(enumerate(cases))
while pending or running:
    busy = sum(1 for i, _ in running.values() if not cases[i]["idle"])
    while pending and (pending[0][1]["idle"] or busy < parallel):
        i, case = pending.pop(0)
        pid = os.fork()
        if pid == 0:
            child(case)
        running[pid] = (i, time.monotonic() + case["timeout"])
        started[i] = time.monotonic()
        busy += not case["idle"]
    pid, status, usage = os.wait4(-1, os.WNOHANG)
    if pid:
        i, _ = running.pop(pid)
        codes[i] = os.waitstatus_to_exitcode(status)
        elapsed[i] = time.monotonic() - started[i]
        cpu[i] = usage.ru_utime + usage.ru_stime
        end_group(pid)
        continue
    for pid, (i, deadline) in list(running.items()):
        if time.monotonic() > deadline:
            end_group(pid)
            os.waitpid(pid, 0)
            running.pop(pid)
            codes[i] = "timeout"
            elapsed[i] = time.monotonic() - started[i]
    time.sleep(0.005)
json.dump([[codes[i], elapsed[i], cpu.get(i)] for i in range(len(cases))], sys.stdout)
'''

#: CPU-bound cases run at once (the machine has 2 cores).
PARALLEL = 2


def run_cases(cases: dict[str, dict], work: Path) -> dict[str, dict]:
    """Run every case's command line (forked, see _DRIVER): {case id: {code, seconds, cpu_s, stdout, stderr}}."""
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    names = sorted(cases, key=lambda name: not cases[name].get("idle"))  # the socket waits first, in the background
    specs = [{"argv": cases[name]["argv"], "cwd": str(work), "env": cases[name].get("env", {}),
              "idle": cases[name].get("idle", False), "timeout": cases[name].get("timeout", 60.0),
              "log": str(logs / f"{i:04d}")} for i, name in enumerate(names)]
    done = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps([specs, PARALLEL]), capture_output=True,
                          text=True, timeout=300, cwd=work)
    assert done.returncode == 0, done.stderr
    results = {}
    for name, spec, (code, seconds, cpu_s) in zip(names, specs, json.loads(done.stdout)):
        results[name] = {"code": code, "seconds": seconds, "cpu_s": cpu_s,
                         "stdout": Path(spec["log"] + ".out").read_text(errors="replace"),
                         "stderr": Path(spec["log"] + ".err").read_text(errors="replace")}
    return results


def assert_one_line_error(result: dict, keyword: str) -> None:
    """A non-zero exit, no traceback, one ``exoacq: error:`` line (the last) naming ``keyword``."""
    stderr = result["stderr"]
    assert result["code"] != 0 and result["code"] != "timeout", result
    assert "Traceback" not in stderr, stderr
    assert "internal error" not in stderr, stderr  # the last-resort guard: a bug, not a recognised bad input
    errors = [line for line in stderr.splitlines() if line.startswith("exoacq: error:")]
    assert len(errors) == 1, stderr
    assert stderr.rstrip().splitlines()[-1] == errors[0], stderr
    assert re.search(keyword, errors[0], re.IGNORECASE), f"{keyword!r} not in {errors[0]!r}"
    if result["code"] == 2 and "--help" in errors[0]:
        return  # argparse's usage error
    assert result["code"] in (1, 2), result


# -- the inputs ----------------------------------------------------------------------------
def _write_avi(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    import cv2
    colour = frames[0].ndim == 3
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if colour else "Y800"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (frames[0].shape[1], frames[0].shape[0]), isColor=colour)
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of bad (and a few good) inputs for every method."""
    import cv2

    d = tmp_path_factory.mktemp("inputs")
    made = run_cli("simulate", "video", str(d / "good.avi"), "--frames", "20", "--width", "128", "--height", "96",
                   "--concentration-per-ml", "3e9")  # ~6 particles per frame
    assert made.returncode == 0, made.stderr
    good = d / "good.avi"
    data = good.read_bytes()
    (d / "truncated.avi").write_bytes(data[: len(data) // 2])
    (d / "header-only.avi").write_bytes(data[:2048])
    (d / "empty.avi").write_bytes(b"")
    for name in ("text.avi", "text.mov", "text.tif", "text.mp4", "text.npy"):
        (d / name).write_text("this is not a video\n")
    # FFmpeg renders these suffixes as "ANSI art" video: 175 frames of a correlator file were once analysed
    (d / "correlator.asc").write_text("ALV-7004 CGS-8F Data\r\n" + "".join(f"  {i * 1e-6:.6e}\t{0.9 / (1 + i):.6f}\r\n"
                                                                             for i in range(400)), encoding="cp1252")
    (d / "notes.txt").write_text("Sample 3, 1:1000 in PBS, 22 C\n" * 200)
    # files named as a configuration, calibration, SOP or key that are far too large (as /dev/zero, which was once
    # read whole: out of memory in the client, and in the daemon for a re-processing calibration)
    (d / "huge.toml").write_text("# padding\n" * 200_000)  # 2 MB
    (d / "huge.key").write_text("# padding\n" * 10_000)  # 100 kB
    # a video with a text header (YUV4MPEG2) and bright frames (no byte below 32): still a video
    bright = np.random.default_rng(2).integers(100, 120, (20, 96, 128), dtype=np.uint8)
    (d / "bright.y4m").write_bytes(b"YUV4MPEG2 W128 H96 F25:1 Ip A1:1 Cmono\n"
                                   + b"".join(b"FRAME\n" + f.tobytes() for f in bright))
    frames = list(np.random.default_rng(1).integers(0, 40, (20, 96, 128), dtype=np.uint8))
    capture = cv2.VideoCapture(str(good))
    real = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        real.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame)
    capture.release()
    assert len(real) == 20
    _write_avi(d / "one-frame.avi", real[:1])
    _write_avi(d / "two-frame.avi", real[:2])
    _write_avi(d / "black.avi", [np.zeros((96, 128), np.uint8)] * 20)
    _write_avi(d / "noise.avi", frames)
    _write_avi(d / "colour-black.avi", [np.zeros((96, 128, 3), np.uint8)] * 20)
    _write_avi(d / "colour.avi", [cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) for f in real])  # MJPG: lossy
    (d / "colour-frames").mkdir()
    for i, frame in enumerate(real):  # lossless: BT.601 luma of (v, v, v) is v
        cv2.imwrite(str(d / "colour-frames" / f"{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    cv2.imwritemulti(str(d / "good16.tif"), [f.astype(np.uint16) * 16 for f in real])
    (d / "empty-folder").mkdir()
    (d / "text-folder").mkdir()
    (d / "text-folder" / "notes.txt").write_text("no frames here\n")
    (d / "bad-png-folder").mkdir()
    (d / "bad-png-folder" / "0001.png").write_text("not a png")
    (d / "mixed-size-folder").mkdir()
    for i, frame in enumerate(real[:12]):
        cv2.imwrite(str(d / "mixed-size-folder" / f"{i:04d}.png"), frame if i != 7 else frame[:64, :64])
    cv2.imwritemulti(str(d / "mixed-depth.tif"), [f.astype(np.uint16) * 16 for f in real[:10]] + [real[10]])
    cv2.imwritemulti(str(d / "black16.tif"), [np.zeros((96, 128), np.uint16)] * 5)
    cv2.imwritemulti(str(d / "one16.tif"), [(real[0].astype(np.uint16) * 16)])
    np.save(d / "flat.npy", np.zeros((4, 5), np.uint8))
    np.save(d / "empty.npy", np.zeros((0, 96, 128), np.uint8))
    np.save(d / "tiny.npy", np.random.default_rng(0).integers(0, 255, (30, 2, 2)).astype(np.uint8))
    np.save(d / "nan.npy", np.full((20, 96, 128), np.nan, np.float32))
    (d / "malformed.toml").write_text("[calibration\nkind = \n")
    (d / "binary.toml").write_bytes(bytes(range(256)))
    shutil.copy(ROOT / "calibrations" / "nta" / "beads-100nm.toml", d / "wrong-kind.toml")
    shutil.copy(ROOT / "calibrations" / "flow" / "beads-silica.toml", d / "flow-beads.toml")
    nta_cal = (ROOT / "calibrations" / "nta" / "simulated-camera.toml").read_text()
    (d / "nta-cal-no-volume.toml").write_text(nta_cal.replace("detection_volume_nl = 0.08128", ""))
    (d / "nta-cal-negative.toml").write_text(nta_cal.replace("detection_volume_nl = 0.08128",
                                                             "detection_volume_nl = -1.0"))
    (d / "nta-cal-nan.toml").write_text(nta_cal.replace("pixel_size_um = 0.166", "pixel_size_um = nan"))
    # flow calibrations edited by hand (once: internal errors in Mie theory and compensation)
    flow_cal = (ROOT / "calibrations" / "flow" / "simulated-cytometer.toml").read_text()
    for name, old, new in (("flow-cal-zero-wavelength", "wavelength_nm = 488.0", "wavelength_nm = 0.0"),
                           ("flow-cal-huge-index", "refractive_index = 1.38", "refractive_index = 1e308"),
                           ("flow-cal-singular", "matrix = [[1.0, 0.10089514184262248], [0.021069012145285823, 1.0]]",
                            "matrix = [[1.0, 1.0], [1.0, 1.0]]")):
        assert old in flow_cal, old
        (d / f"{name}.toml").write_text(flow_cal.replace(old, new, 1))
    # DLS
    alv = TESTDATA / "dls" / "alv-cgs3" / "080622_3_0027_0001.ASC"
    if alv.exists():
        text = alv.read_bytes()
        (d / "half.ASC").write_bytes(text[: len(text) // 2])
        (d / "header.ASC").write_bytes(text[:300])
        (d / "cut-in-correlation.ASC").write_bytes(text[:text.index(b'"Correlation"') + 200])
        for name, (key, value) in {"zero-kelvin": ("Temperature", "0.00000"), "hot": ("Temperature", "800.00000"),
                                   "negative-viscosity": ("Viscosity", "-0.89"),
                                   "nan-wavelength": ("Wavelength", "nan"),
                                   "zero-wavelength": ("Wavelength", "0.0"),
                                   "refractive-index-0": ("Refractive Index", "0.0"),
                                   "angle-200": ("Angle", "200.00000"), "angle-0": ("Angle", "0.00000")}.items():
            pattern = rb"^(" + key.encode() + rb"[^:\r\n]*:\t)[^\r\n]*"
            changed = re.sub(pattern, rb"\g<1>" + value.encode(), text, count=1, flags=re.MULTILINE)
            assert changed != text, name
            (d / f"{name}.ASC").write_bytes(changed)
    (d / "empty.ASC").write_bytes(b"")
    (d / "binary.ASC").write_bytes(bytes(range(256)) * 4)
    (d / "text.ASC").write_text("hello\n")
    (d / "alv-only.ASC").write_text("ALV-7004/USB\r\n")
    (d / "empty.SIN").write_bytes(b"")
    (d / "params-only.SIN").write_text("[Parameters]\nAngle = 90\n")
    (d / "empty.ptu").write_bytes(b"")
    (d / "text.ptu").write_text("not photons\n")
    (d / "magic-only.ptu").write_bytes(b"PQTTTR\x00\x001.0.00\x00\x00")
    (d / "empty-dls-folder").mkdir()
    # flow
    (d / "empty.fcs").write_bytes(b"")
    (d / "text.fcs").write_text("not an FCS file\n")
    g11 = TESTDATA / "flow" / "G11.fcs"
    if g11.exists():
        raw = g11.read_bytes()
        (d / "truncated.fcs").write_bytes(raw[: len(raw) // 2])
        (d / "header-only.fcs").write_bytes(raw[:58])
        (d / "text-cut.fcs").write_bytes(raw[:300])
    (d / "fake-header.fcs").write_bytes(b"FCS3.1    " + b"       58     9999       0        0       0        0")
    (d / "malformed.xml").write_text("<gating:Gating-ML><unclosed>")
    (d / "not-gating.xml").write_text("<?xml version='1.0'?><root><child/></root>")
    (d / "empty.xml").write_text("")
    (d / "unknown-parameter.xml").write_text(_GATING_UNKNOWN_PARAMETER)
    (d / "malformed-config.toml").write_text("[instruments.x\n")
    (d / "nta-config.toml").write_text(_NTA_CONFIG)
    return d


_NTA_CONFIG = """
[instruments.sim]
method = "nta"
[instruments.sim.devices.laser]
driver = "obis"
simulated = true
[instruments.sim.devices.camera]
driver = "simulated-nta"
simulated = true
[instruments.sim.devices.temperature]
driver = "simulated-thermometer"
simulated = true
"""

_GATING_UNKNOWN_PARAMETER = """<?xml version="1.0" encoding="UTF-8"?>
<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating"
                  xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes">
  <gating:RectangleGate gating:id="EVs">
    <gating:dimension gating:min="10" gating:max="1000" gating:compensation-ref="uncompensated">
      <data-type:fcs-dimension data-type:name="NO-SUCH-PARAMETER"/>
    </gating:dimension>
  </gating:RectangleGate>
</gating:Gating-ML>
"""


# -- the cases: id -> command line and a word the error must name --------------------------
def _case(keyword: str, *argv: str, **extra) -> dict:
    """A bad command line: a one-line error naming ``keyword`` (a regular expression)."""
    return {"argv": list(argv), "keyword": keyword, **extra}


def _batch(inputs: list[str], *argv: str) -> dict:
    """A batch of bad inputs: one error line per input (naming it), the others go on, exit 1."""
    return {"argv": [*inputs, *argv], "batch": [Path(i).name for i in inputs]}


def _accepted(stdout: str, *argv: str) -> dict:
    """A good command line (the base the bad ones vary): exit 0 and ``stdout`` (a regular expression)."""
    return {"argv": list(argv), "stdout": stdout}


def nta_cases(d: Path) -> dict[str, dict]:
    good = str(d / "good.avi")
    ok = ["--pixel-size-um", "0.166", "--exposure-ms", "15", "--temperature-c", "25", "--minmass", "250"]
    cases = {
        "nta-good": _accepted(r'"particles_per_frame": [1-9].*"frames_analysed": 20,', good, *ok, "--json"),
        "nta-colour-frames": _accepted(r'"particles_per_frame": [1-9].*"frames_analysed": 20,',
                                       str(d / "colour-frames"), *ok, "--fps", "25", "--json"),
        "nta-colour-avi": _accepted(r'"particles_per_frame": [1-9].*"frames_analysed": 20,', str(d / "colour.avi"),
                                    *ok, "--json"),
        "nta-tiff16": _accepted(r'"particles_per_frame": [1-9].*"frames_analysed": 20,', str(d / "good16.tif"),
                                *ok[:-1], "4000", "--fps", "25", "--json"),
        "nta-batch-bad": _batch([str(d / n) for n in ("text.avi", "empty.avi", "truncated.avi", "black.avi")], *ok),
        "nta-missing": _case("no such file", str(d / "missing.avi"), *ok),
        "nta-empty-avi": _case("empty|not a video", str(d / "empty.avi"), *ok),
        "nta-text-avi": _case("not a video", str(d / "text.avi"), *ok),
        "nta-text-mov": _case("not a video", str(d / "text.mov"), *ok),
        "nta-text-mp4": _case("not a video", str(d / "text.mp4"), *ok),
        "nta-text-asc": _case("correlator.asc: a text file, not a video", str(d / "correlator.asc"), *ok),
        "nta-text-txt": _case("notes.txt: a text file, not a video", str(d / "notes.txt"), *ok),
        "nta-y4m-read": _case("bright.y4m: no particles found in 20 frames", str(d / "bright.y4m"), *ok),
        "nta-text-tif": _case("TIFF", str(d / "text.tif"), *ok),
        "nta-text-npy": _case("frame stack", str(d / "text.npy"), *ok),
        "nta-flat-npy": _case("3 dimensions", str(d / "flat.npy"), *ok),
        "nta-empty-npy": _case("no frames", str(d / "empty.npy"), *ok, "--fps", "25"),
        "nta-tiny-frames-npy": _case("2 x 2 pixels: too small", str(d / "tiny.npy"), *ok, "--fps", "25"),
        "nta-nan-npy": _case("nan.npy: the first frames hold NaN", str(d / "nan.npy"), *ok, "--fps", "25"),
        "nta-truncated-avi": _case("truncated", str(d / "truncated.avi"), *ok),
        "nta-header-only-avi": _case("truncated|no readable frame|not a video", str(d / "header-only.avi"), *ok),
        # a video of fewer frames than a track needs is refused (it once "succeeded" with no size, exit 0)
        "nta-one-frame": _case("too few frames", str(d / "one-frame.avi"), *ok),
        "nta-two-frame": _case("too few frames", str(d / "two-frame.avi"), *ok),
        "nta-black": _case("no particles", str(d / "black.avi"), *ok),
        "nta-noise": _case("no particles|tracks", str(d / "noise.avi"), *ok),
        "nta-colour-black": _case("no particles", str(d / "colour-black.avi"), *ok),
        "nta-empty-folder": _case("no inputs|PNG or TIFF", str(d / "empty-folder"), *ok),
        "nta-text-folder": _case("no inputs|PNG or TIFF", str(d / "text-folder"), *ok),
        "nta-bad-png-folder": _case("not a readable image", str(d / "bad-png-folder"), *ok, "--fps", "25"),
        "nta-mixed-size-folder": _case("0007.png: a frame of 64 x 64 pixels of uint8, the first 128 x 96 of uint8: "
                                       "the frames of a video must be alike", str(d / "mixed-size-folder"), *ok,
                                       "--fps", "25"),
        "nta-mixed-depth-tiff": _case("page 11: a frame of 128 x 96 pixels of uint8, the first 128 x 96 of uint16",
                                      str(d / "mixed-depth.tif"), *ok, "--fps", "25"),
        "nta-tiff16-black": _case("no particles", str(d / "black16.tif"), *ok, "--fps", "25"),
        "nta-tiff16-one": _case("too few frames", str(d / "one16.tif"), *ok, "--fps", "25"),  # as above
        "nta-tiff-no-fps": _case("frame rate", str(d / "black16.tif"), *ok),
        "nta-no-pixel-size": _case("pixel-size-um", good),
        "nta-glob-nothing": _case("no file matches", str(d / "nothing-*.avi"), *ok),
        "nta-empty-string": _case("an input is an empty string", "", *ok),  # once: the current folder as a batch
        "nta-workers-without-dask": _case("--workers sizes the local Dask cluster", good, *ok, "--workers", "2"),
        "nta-batch-bad-report": _case("report", good, str(d / "black.avi"), *ok, "--report", str(d / "r.html")),
        "nta-csv-no-folder": _case("no folder", good, *ok, "--csv", str(d / "no" / "such" / "x.csv")),
        "nta-report-no-folder": _case("no folder", good, *ok, "--report", str(d / "no" / "r.html")),
        "nta-csv-is-folder": _case("cannot write|folder|directory", good, *ok, "--csv", str(d / "empty-folder")),
        "nta-calibration-missing": _case("no such file|not found|cannot read", good, *ok, "--calibration",
                                         str(d / "missing.toml")),
        "nta-calibration-malformed": _case("TOML|malformed|invalid", good, *ok, "--calibration",
                                           str(d / "malformed.toml")),
        "nta-calibration-binary": _case("TOML|UTF-8|invalid|cannot read", good, *ok, "--calibration",
                                        str(d / "binary.toml")),
        "nta-calibration-wrong-kind": _case("kind|calibration", good, *ok, "--calibration",
                                            str(d / "wrong-kind.toml")),
        "nta-calibration-flow-kind": _case("kind|calibration", good, *ok, "--calibration",
                                           str(d / "flow-beads.toml")),
        "nta-calibration-folder": _case("folder|directory|cannot read", good, *ok, "--calibration",
                                        str(d / "empty-folder")),
        "nta-calibration-huge": _case("cannot read calibration .*huge.toml: larger than 1024 KiB", good, *ok,
                                      "--calibration", str(d / "huge.toml")),
        "nta-calibration-no-volume": _case("detection_volume_nl", good, *ok, "--calibration",
                                           str(d / "nta-cal-no-volume.toml")),
        "nta-calibration-negative-volume": _case("detection_volume_nl", good, *ok, "--calibration",
                                                 str(d / "nta-cal-negative.toml")),
        "nta-calibration-nan-pixel": _case("pixel_size_um", good, "--calibration", str(d / "nta-cal-nan.toml")),
        "nta-invalid-dask": _case("dask|scheduler|address", good, *ok, "--dask", "not an address"),
    }
    bad_options = {
        # absurd magnitudes (1e-300, 1e308) once ended as internal errors (recursion, overflow) or were accepted
        "fps": ["0", "-1", "nan", "inf", "x", "1e-300", "1e308"],
        "pixel-size-um": ["0", "-0.1", "nan", "inf", "1e-300", "1e308"],
        "temperature-c": ["-5", "0", "100", "nan", "inf", "-inf"],
        "viscosity-mpa-s": ["0", "nan", "inf", "1e-300", "1e308"],
        # nan must fail the range check (it once passed it and ended as an internal error in sizing)
        "exposure-ms": ["100", "-1", "nan", "inf"],
        "feature-diameter-px": ["10", "1", "0", "-3", "2.5"],
        # refused at once (-5 and -inf were once accepted, nan and inf failed late as "no particles found")
        "minmass": ["-5", "nan", "inf", "-inf", "1e-300"],
        "dilution": ["0", "-1", "nan", "inf"],
        "min-track-length": ["2", "0", "-1"],
        "search-range-px": ["0", "nan", "inf", "1e308"],
        "min-diameter-nm": ["0", "nan", "inf", "1e-300"],
        "false-detections-per-frame": ["0", "nan", "1e308"],
    }
    for option, values in bad_options.items():
        for value in values:
            argv = [a for a in ok]
            if f"--{option}" in argv:
                i = argv.index(f"--{option}")
                del argv[i:i + 2]
            cases[f"nta-{option}-{value}"] = _case(f"--{option}", good, *argv, f"--{option}={value}")
    for name, case in list(cases.items()):
        cases[name] = {**case, "argv": ["analyze", "nta", *case["argv"]]}
    # the same options reach calibrate nta and bench analyze
    beads = ["--bead-diameter-nm", "100", "--bead-concentration-per-ml", "3e8", "--laser-power-mw", "40",
             "--output", str(d / "cal-out.toml")]
    cases.update({
        "calibrate-nta-missing": _case("no such file", "calibrate", "nta", str(d / "missing.avi"), *beads, *ok),
        "calibrate-nta-text": _case("not a video", "calibrate", "nta", str(d / "text.avi"), *beads, *ok),
        "calibrate-nta-black": _case("no particles", "calibrate", "nta", str(d / "black.avi"), *beads, *ok),
        "calibrate-nta-one-frame": _case("frame", "calibrate", "nta", str(d / "one-frame.avi"), *beads, *ok),
        "calibrate-nta-output-no-folder": _case("no folder", "calibrate", "nta", good, *beads[:-1],
                                                str(d / "no" / "c.toml"), *ok),
        "calibrate-nta-with-calibration": _case("calibration", "calibrate", "nta", good, *beads, *ok,
                                                "--calibration", str(ROOT / "calibrations/nta/simulated-camera.toml")),
        "calibrate-nta-bead-diameter-nan": _case("bead-diameter-nm", "calibrate", "nta", good, *beads, *ok,
                                                 "--bead-diameter-nm", "nan"),
        "calibrate-nta-bead-concentration-inf": _case("bead-concentration-per-ml", "calibrate", "nta", good,
                                                      *beads, *ok, "--bead-concentration-per-ml", "inf"),
        "calibrate-nta-laser-0": _case("laser-power-mw", "calibrate", "nta", good, *beads, *ok,
                                       "--laser-power-mw", "0"),
        # these once wrote a calibration (1e-300 nm beads; a detection volume of 1e-15 nL)
        "calibrate-nta-bead-diameter-tiny": _case("bead-diameter-nm", "calibrate", "nta", good, *beads, *ok,
                                                  "--bead-diameter-nm", "1e-300"),
        "calibrate-nta-absurd-volume": _case(r"nL, a slab .* um deep under the .* field of view", "calibrate", "nta",
                                             good, *beads, *ok, "--bead-concentration-per-ml", "1e16",
                                             "--dilution", "1e-6"),
        # as nta-exposure-ms-nan
        "calibrate-nta-exposure-nan": _case("exposure-ms", "calibrate", "nta", good, *beads,
                                            *ok[:2], "--exposure-ms", "nan"),
        "bench-analyze-missing": _case("no such video", "bench", "analyze", str(d / "missing.avi"), *ok),
        "bench-analyze-text": _case("not a video", "bench", "analyze", str(d / "text.avi"), *ok),
        "bench-analyze-fps-inf": _case("fps", "bench", "analyze", good, *ok, "--fps", "inf"),
        "bench-analyze-minmass-nan": _case("minmass", "bench", "analyze", good, *ok[:4], "--minmass", "nan"),
    })
    return cases


def dls_cases(d: Path) -> dict[str, dict]:
    ptu = ["--angle", "90", "--wavelength-nm", "633"]
    cases = {
        "dls-good": _accepted(r"Z-average", str(TESTDATA / "dls" / "alv-cgs3" / "080622_3_0027_0001.ASC")),
        "dls-batch-bad": _batch([str(d / n) for n in ("empty.ASC", "binary.ASC", "text.ASC", "empty.ptu")]),
        "dls-missing": _case("no such file", str(d / "missing.ASC")),
        "dls-empty-asc": _case("empty", str(d / "empty.ASC")),
        "dls-binary-asc": _case("binary", str(d / "binary.ASC")),
        "dls-text-asc": _case("not a correlator file", str(d / "text.ASC")),
        "dls-alv-only": _case("ALV|correlation|line", str(d / "alv-only.ASC")),
        "dls-empty-sin": _case("empty", str(d / "empty.SIN")),
        "dls-params-only-sin": _case("SIN|correlation|line", str(d / "params-only.SIN")),
        "dls-empty-ptu": _case("empty|PTU", str(d / "empty.ptu"), *ptu),
        "dls-text-ptu": _case("PTU|PicoQuant", str(d / "text.ptu"), *ptu),
        "dls-magic-only-ptu": _case("PTU|header|truncated", str(d / "magic-only.ptu"), *ptu),
        "dls-ptu-no-optics": _case("--angle", str(d / "magic-only.ptu")),
        "dls-ptu-angle-inf": _case("--angle", str(d / "magic-only.ptu"), "--angle", "inf", "--wavelength-nm", "633"),
        "dls-ptu-temperature-nan": _case("--temperature-c", str(d / "magic-only.ptu"), *ptu, "--temperature-c", "nan"),
        "dls-empty-folder": _case("no inputs", str(d / "empty-dls-folder")),
        "dls-csv-single": _case("--csv", str(d / "text.ASC"), "--csv", str(d / "x.csv")),
        "dls-ri-inf": _case("refractive", str(d / "text.ASC"), "--particle-refractive-index", "inf"),
        "dls-ri-nan": _case("refractive", str(d / "text.ASC"), "--particle-refractive-index", "nan"),
        # 1e308 once left Mie theory looping for ever; -300 C and 180 degrees were accepted
        "dls-ri-huge": _case("refractive", str(d / "text.ASC"), "--particle-refractive-index", "1e308"),
        "dls-medium-ri-huge": _case("refractive", str(d / "magic-only.ptu"), *ptu, "--medium-refractive-index",
                                    "1e308"),
        "dls-ptu-angle-180": _case("--angle", str(d / "magic-only.ptu"), "--angle", "180", "--wavelength-nm", "633"),
        "dls-ptu-below-absolute-zero": _case("--temperature-c", str(d / "magic-only.ptu"), *ptu,
                                             "--temperature-c=-300"),
    }
    if (TESTDATA / "dls").is_dir():
        # a correlator file records its own optics and temperature: the .ptu options are said to be unused
        alv = str(TESTDATA / "dls" / "alv-cgs3" / "080622_3_0027_0001.ASC")
        cases["dls-asc-ptu-options"] = _accepted(r"--angle, --temperature-c not used: 080622_3_0027_0001.ASC "
                                                 r"records its own", alv, "--angle", "30", "--temperature-c", "30",
                                                 "--json")
        cases["dls-half-asc"] = _case("truncated|line|missing|incomplete|ends", str(d / "half.ASC"))
        cases["dls-header-asc"] = _case("truncated|line|missing|incomplete|ends", str(d / "header.ASC"))
        cases["dls-cut-in-correlation"] = _case("truncated|line|missing|incomplete|ends",
                                                str(d / "cut-in-correlation.ASC"))
        cases["dls-zero-kelvin"] = _case("temperature", str(d / "zero-kelvin.ASC"))
        cases["dls-hot"] = _case("temperature", str(d / "hot.ASC"))
        cases["dls-negative-viscosity"] = _case("viscosity", str(d / "negative-viscosity.ASC"))
        cases["dls-nan-wavelength"] = _case("wavelength", str(d / "nan-wavelength.ASC"))
        cases["dls-zero-wavelength"] = _case("wavelength", str(d / "zero-wavelength.ASC"))
        cases["dls-refractive-index-0"] = _case("refractive index", str(d / "refractive-index-0.ASC"))
        cases["dls-angle-200"] = _case("angle", str(d / "angle-200.ASC"))
        cases["dls-angle-0"] = _case("angle", str(d / "angle-0.ASC"))
    for name, case in list(cases.items()):
        cases[name] = {**case, "argv": ["analyze", "dls", *case["argv"]]}
    cases.update({
        "bench-correlator-duration-nan": _case("--duration", "bench", "correlator", "--duration", "nan"),
        "bench-correlator-duration-inf": _case("--duration", "bench", "correlator", "--duration", "inf"),
        "bench-correlator-rate-0": _case("--count-rate", "bench", "correlator", "--count-rate", "0"),
        "bench-correlator-rate-inf": _case("--count-rate", "bench", "correlator", "--count-rate", "inf"),
        "bench-correlator-duration-huge": _case("--duration", "bench", "correlator", "--duration", "1e308"),
    })
    return cases


def flow_cases(d: Path) -> dict[str, dict]:
    g11 = str(TESTDATA / "flow" / "G11.fcs")
    cases = {
        "flow-good": _accepted(r"5785 events", g11),
        "flow-marker-not-in-file": _accepted(r"Warning: marker\(s\) CD63: their parameters \(NOPE\) are not in the",
                                             g11, "--marker", "CD63=NOPE"),
        "flow-missing": _case("no such file", str(d / "missing.fcs")),
        "flow-empty": _case("empty|FCS", str(d / "empty.fcs")),
        "flow-text": _case("FCS", str(d / "text.fcs")),
        "flow-fake-header": _case("FCS|header|TEXT|offset|segment", str(d / "fake-header.fcs")),
        "flow-folder": _case("empty-folder: a folder, not an FCS file", str(d / "empty-folder")),
        "flow-empty-string": _case("a folder, not an FCS file", ""),
        # options that would be ignored (once without a word)
        "flow-final-gate-without-gates": _case("--final-gate names a gate of --gates", g11, "--final-gate", "x"),
        "flow-dilutions-without-series": _case("--dilutions goes with --dilution-series", g11, "--dilutions", "1"),
        "flow-two-files": _case("one FCS file", str(d / "text.fcs"), str(d / "empty.fcs")),
        "flow-series-one-file": _case("two or more", str(d / "text.fcs"), "--dilution-series"),
        "flow-series-bad-dilutions": _case("--dilutions", str(d / "text.fcs"), str(d / "empty.fcs"),
                                           "--dilution-series", "--dilutions", "1,x"),
        "flow-series-count": _case("--dilutions", str(d / "text.fcs"), str(d / "empty.fcs"), "--dilution-series",
                                   "--dilutions", "1,2,3"),
        "flow-bad-marker": _case("marker", str(d / "text.fcs"), "--marker", "CD63"),
        "flow-dilution-0": _case("--dilution", str(d / "text.fcs"), "--dilution", "0"),
        "flow-dilution-inf": _case("--dilution", g11, "--dilution", "inf"),
        "flow-flow-rate-inf": _case("--flow-rate-ul-min", g11, "--flow-rate-ul-min", "inf"),
        "flow-flow-rate-tiny": _case("--flow-rate-ul-min", g11, "--flow-rate-ul-min", "1e-300"),  # was ZeroDivision
        "flow-series-infinite-dilution": _case("--dilutions", str(d / "text.fcs"), str(d / "empty.fcs"),
                                               "--dilution-series", "--dilutions", "10,inf"),  # was an SVD failure
        "flow-threshold-nan": _case("--trigger-threshold", g11, "--trigger-threshold", "nan"),
        "flow-gates-missing": _case("no such file|not found|gates", g11, "--gates", str(d / "missing.xml")),
        "flow-gates-malformed": _case("XML|Gating-ML|gates", g11, "--gates", str(d / "malformed.xml")),
        "flow-gates-not-gating": _case("Gating-ML|gate", g11, "--gates", str(d / "not-gating.xml")),
        "flow-gates-empty": _case("XML|Gating-ML|gates|empty", g11, "--gates", str(d / "empty.xml")),
        "flow-gates-unknown-parameter": _case("NO-SUCH-PARAMETER", g11, "--gates", str(d / "unknown-parameter.xml")),
        "flow-final-gate-unknown": _case("gate", g11, "--gates", str(d / "unknown-parameter.xml"),
                                         "--final-gate", "nope"),
        "flow-gate-expr-bad": _case("gate", g11, "--gate", "garbage"),
        "flow-gate-expr-unknown": _case("NOPE", g11, "--gate", "NOPE>20"),
        "flow-gate-expr-nan": _case("gate", g11, "--gate", "SSC-H>nan"),
        "flow-calibration-missing": _case("no such file|not found|calibration", g11, "--calibration",
                                          str(d / "missing.toml")),
        "flow-calibration-malformed": _case("TOML|malformed|invalid", g11, "--calibration",
                                            str(d / "malformed.toml")),
        "flow-calibration-binary": _case("TOML|UTF-8|invalid|cannot read", g11, "--calibration",
                                         str(d / "binary.toml")),
        "flow-calibration-nta-kind": _case("kind|calibration", g11, "--calibration",
                                           str(ROOT / "calibrations/nta/simulated-camera.toml")),
        "flow-calibration-bead-set": _case("kind|calibration", g11, "--calibration", str(d / "flow-beads.toml")),
        "flow-calibration-zero-wavelength": _case("scatter.wavelength_nm: 0.0 is out of range", g11, "--calibration",
                                                  str(d / "flow-cal-zero-wavelength.toml")),
        "flow-calibration-huge-index": _case("scatter.particle.refractive_index: 1e\\+308 is out of range", g11,
                                             "--calibration", str(d / "flow-cal-huge-index.toml")),
        "flow-calibration-singular": _case("spillover.matrix is singular", g11, "--calibration",
                                           str(d / "flow-cal-singular.toml")),
        "flow-unstained-empty": _case("empty|FCS", g11, "--unstained", str(d / "empty.fcs")),
        "flow-unstained-missing": _case("no such file|not found", g11, "--unstained", str(d / "missing.fcs")),
        "flow-export-no-folder": _case("cannot write|no folder|directory", g11, "--export-fcs",
                                       str(d / "no" / "x.fcs")),
    }
    if (TESTDATA / "flow").is_dir():
        cases["flow-truncated"] = _case("truncated|ends|DATA|bytes", str(d / "truncated.fcs"))
        cases["flow-header-only"] = _case("truncated|ends|TEXT|bytes", str(d / "header-only.fcs"))
        cases["flow-text-cut"] = _case("truncated|ends|TEXT|bytes", str(d / "text-cut.fcs"))
    for name, case in list(cases.items()):
        cases[name] = {**case, "argv": ["analyze", "flow", *case["argv"]]}
    out = ["-o", str(d / "flow-cal.toml")]
    cases.update({
        "calibrate-flow-no-beads": _case("beads", "calibrate", "flow", *out),
        # refused before the simulation (1e308 once overflowed in Mie theory; a 1e308 core index was written)
        "calibrate-flow-huge-wavelength": _case("--wavelength-nm", "calibrate", "flow", "--simulated", *out,
                                                "--wavelength-nm", "1e308"),
        "calibrate-flow-huge-ev-index": _case("--ev-core-ri", "calibrate", "flow", "--simulated", *out,
                                              "--ev-core-ri", "1e308"),
        "simulate-flow-tiny-duration": _case("--duration", "simulate", "flow", str(d / "sim.fcs"), "--duration",
                                             "1e-300"),
        "calibrate-flow-empty": _case("empty|FCS", "calibrate", "flow", str(d / "empty.fcs"), *out),
        "calibrate-flow-text": _case("FCS", "calibrate", "flow", str(d / "text.fcs"), *out),
        "calibrate-flow-missing": _case("no such file|not found", "calibrate", "flow", str(d / "missing.fcs"), *out),
        "calibrate-flow-bead-set-missing": _case("bead set|no such file|not found", "calibrate", "flow", g11,
                                                 "--bead-set", str(d / "missing.toml"), *out),
        "calibrate-flow-bead-set-malformed": _case("TOML|malformed|invalid", "calibrate", "flow", g11,
                                                   "--bead-set", str(d / "malformed.toml"), *out),
        "calibrate-flow-bead-set-wrong-kind": _case("kind|bead", "calibrate", "flow", g11,
                                                    "--bead-set", str(d / "wrong-kind.toml"), *out),
        "calibrate-flow-mesf-spec": _case("--mesf", "calibrate", "flow", g11, "--mesf", "x.fcs", *out),
        "calibrate-flow-mesf-empty": _case("empty|FCS", "calibrate", "flow", g11, "--mesf",
                                           f"{d / 'empty.fcs'}:FL1-H:FITC", *out),
        "calibrate-flow-parameter": _case("NOPE", "calibrate", "flow", g11, "--parameter", "NOPE", *out),
        "calibrate-flow-valid-days": _case("--valid-days", "calibrate", "flow", g11, "--valid-days", "-1", *out),
        "calibrate-flow-half-angle-inf": _case("half-angle", "calibrate", "flow", g11, "--half-angle-deg", "inf",
                                               *out),
        "calibrate-flow-center-inf": _case("center", "calibrate", "flow", g11, "--center-deg", "inf", *out),
        "calibrate-flow-min-scatter-nan": _case("min-scatter", "calibrate", "flow", g11, "--min-scatter", "nan",
                                                *out),
        "calibrate-flow-simulated-with-file": _case("--simulated", "calibrate", "flow", g11, "--simulated", *out),
        "calibrate-flow-output-no-folder": _case("cannot write|no folder", "calibrate", "flow", g11, "-o",
                                                 str(d / "no" / "c.toml")),
        "simulate-flow-no-folder": _case("cannot write|no folder|directory", "simulate", "flow",
                                         str(d / "no" / "x.fcs"), "--duration", "0.01"),
        "simulate-flow-duration-inf": _case("--duration", "simulate", "flow", str(d / "x.fcs"), "--duration", "inf"),
        "simulate-flow-dilution-inf": _case("--dilution", "simulate", "flow", str(d / "x.fcs"), "--duration",
                                            "0.01", "--dilution", "inf"),
        "simulate-flow-seed-negative": _case("--seed", "simulate", "flow", str(d / "x.fcs"), "--duration", "0.01",
                                             "--seed", "-1"),
        "simulate-flow-config-missing": _case("no such file|not found", "simulate", "flow", str(d / "x.fcs"),
                                              "--config", str(d / "missing.toml")),
        "simulate-flow-config-malformed": _case("TOML|malformed|invalid", "simulate", "flow", str(d / "x.fcs"),
                                                "--config", str(d / "malformed-config.toml")),
        "simulate-flow-config-no-flow": _case("no flow instrument", "simulate", "flow", str(d / "x.fcs"),
                                              "--config", str(d / "nta-config.toml")),
        "bench-flow-seconds-inf": _case("--seconds", "bench", "flow", "--seconds", "inf"),
        "bench-flow-events-0": _case("--events", "bench", "flow", "--events", "0"),
        "bench-flow-events-negative": _case("--events", "bench", "flow", "--events=-5"),
    })
    return cases


def nta_other_cases(d: Path) -> dict[str, dict]:
    out = str(d / "sim.avi")
    return {
        "simulate-video-frames-0": _case("--frames", "simulate", "video", out, "--frames", "0"),
        "simulate-video-frames-negative": _case("--frames", "simulate", "video", out, "--frames=-3"),
        "simulate-video-width-0": _case("width", "simulate", "video", out, "--frames", "2", "--width", "0"),
        "simulate-video-height-negative": _case("height", "simulate", "video", out, "--frames", "2",
                                                "--height=-8"),
        "simulate-video-fps-inf": _case("--fps", "simulate", "video", out, "--frames", "2", "--fps", "inf"),
        "simulate-video-diameter-inf": _case("--diameter-nm", "simulate", "video", out, "--frames", "2",
                                             "--diameter-nm", "inf"),
        "simulate-video-concentration-inf": _case("--concentration-per-ml", "simulate", "video", out, "--frames",
                                                  "2", "--concentration-per-ml", "inf"),
        "simulate-video-concentration-huge": _case("--concentration-per-ml", "simulate", "video", out, "--frames",
                                                   "2", "--concentration-per-ml", "1e30"),
        "simulate-video-seed-negative": _case("--seed", "simulate", "video", out, "--frames", "2", "--seed=-1"),
        "simulate-video-mp4": _case("avi", "simulate", "video", str(d / "sim.mp4"), "--frames", "2"),
        "simulate-video-no-folder": _case("cannot write|no folder", "simulate", "video", str(d / "no" / "s.avi"),
                                          "--frames", "2"),
        "bench-locate-frames-0": _case("--frames", "bench", "locate", "--frames", "0"),
        "bench-locate-frames-negative": _case("--frames", "bench", "locate", "--frames=-1"),
        # --width/--height/--workers of bench realtime take positive_int (exoacq.cli_common): width 0 once ended
        # as "the daemon exited with code 2", workers 0 ran a benchmark that processed no frame (exit 0)
        "bench-realtime-width-0": _case("--width", "bench", "realtime", "--width", "0", "--duration", "1"),
        "bench-realtime-workers-0": _case("--workers", "bench", "realtime", "--workers", "0", "--duration", "1"),
        "bench-realtime-fps-inf": _case("--fps", "bench", "realtime", "--fps", "inf", "--duration", "1"),
        "bench-realtime-duration-inf": _case("--duration", "bench", "realtime", "--duration", "inf"),
        "bench-batch-videos-0": _case("video", "bench", "batch", "--videos", "0"),
        "bench-batch-frames-negative": _case("frames", "bench", "batch", "--frames=-1"),
        "bench-batch-width-0": _case("pixels", "bench", "batch", "--width", "0"),
        "bench-accuracy-unknown-case": _case("--cases", "bench", "accuracy", "--cases", "nope"),
        "bench-accuracy-captures-0": _case("--captures", "bench", "accuracy", "--captures", "0"),
        "bench-accuracy-capture-s-inf": _case("--capture-s", "bench", "accuracy", "--capture-s", "inf"),
        "worker-bad-endpoint": _case("endpoint|address|--frames", "worker", "--frames", "not an endpoint",
                                     "--features", "nope"),
    }


def core_cases(d: Path, port: int) -> dict[str, dict]:
    """Configuration helpers, and the client verbs against a control endpoint where nothing listens."""
    control = ["--control", f"tcp://127.0.0.1:{port}"]
    idle = {"idle": True, "timeout": 40.0}
    cases = {
        "config-check-missing": _case("no such file|not found|cannot read", "config", "check",
                                      str(d / "missing.toml")),
        "config-check-malformed": _case("TOML|malformed|invalid", "config", "check", str(d / "malformed.toml")),
        "config-check-binary": _case("TOML|UTF-8|invalid|cannot read", "config", "check", str(d / "binary.toml")),
        "config-check-folder": _case("folder|directory|cannot read", "config", "check", str(d / "empty-folder")),
        "config-check-no-file": _case("needs a FILE", "config", "check"),
        "config-example-with-file": _case("takes no file", "config", "example", str(d / "x.toml")),
        "config-check-huge": _case("cannot read configuration .*huge.toml: larger than 1024 KiB", "config", "check",
                                   str(d / "huge.toml")),
        "acquire-sop-huge": _case("cannot read SOP .*huge.toml: larger than 1024 KiB", "acquire", "nta", "--sop",
                                  str(d / "huge.toml"), *control),
        "status-key-huge": _case("huge.key: not a CurveZMQ key file \\(not a regular file of at most 64 KiB\\)",
                                 "status", "--key", str(d / "huge.key"), "--server-key", str(d / "huge.key"),
                                 *control),
        "web-operators-token-and-password": _case("give one of them", "web-operators", "add", "bob", "--token",
                                                  "--password-stdin", "--file", str(d / "operators.toml")),
        # a given --file's folder is not made (the default one is)
        "web-operators-no-folder": _case("no folder", "web-operators", "add", "bob", "--token", "--file",
                                         str(d / "no" / "such" / "operators.toml")),
        "sim-serve-config-missing": _case("no such file|not found|cannot read", "sim", "serve", "--config",
                                          str(d / "missing.toml")),
        "laser-off-config-malformed": _case("TOML|malformed|invalid", "laser", "off", "--config",
                                            str(d / "malformed.toml")),
        "daemon-no-config": _case("no configuration", "daemon"),
        "daemon-config-malformed": _case("TOML|malformed|invalid", "daemon", "--config", str(d / "malformed.toml")),
        "runs-show-no-id": _case("needs a run id", "runs", "show", *control),
        # once: version 1 approved whatever the number; an OverflowError; exit 0 with no output
        "runs-approve-version": _case("takes no version number", "runs", "approve", "r1", "99", *control),
        "audit-last-huge": _case("--last: 99999999999999999999 is too large", "audit", "show", "--data-dir",
                                 str(d), "--last", "99999999999999999999"),
        "watch-count-negative": _case("--count: -1 must be 1 or more", "watch", "--count=-1", *control),
        "set-value-nan": _case("value: nan is not a finite number", "set", "camera", "exposure_ms", "nan", *control),
        "export-output-no-folder": _case("no folder", "export", "bluesky", "r1", "--output",
                                         str(d / "no" / "x.jsonl"), *control),
        "acquire-nta-sop-missing": _case("cannot read SOP", "acquire", "nta", "--sop", str(d / "missing.toml"),
                                         *control),
        "unknown-verb": _case("invalid choice", "frobnicate"),
        "no-verb": _case("required", ),
        "runs-pick-not-a-number": _case("version", "runs", "pick", "r1", "x", *control),
        "demo-duration-nan": _case("--duration", "demo", "--duration", "nan"),
    }
    for name, argv in {
        "status": ["status"], "runs": ["runs"], "runs-show": ["runs", "show", "r1"], "runs-pick": ["runs", "pick", "r1",
                                                                                                    "2"],
        "runs-bead-checks": ["runs", "--bead-checks"], "reprocess": ["reprocess", "r1", "--set", "minmass=200"],
        "export": ["export", "bluesky", "r1"], "stop": ["stop"], "preview": ["preview", "on"],
        "set": ["set", "camera", "exposure_ms", "10"], "settings": ["settings"], "watch": ["watch", "--count", "1"],
        "acquire-nta": ["acquire", "nta", "--duration", "1"], "acquire-dls": ["acquire", "dls", "--duration", "1"],
        "acquire-flow": ["acquire", "flow", "--duration", "1"],
    }.items():
        cases[f"client-{name}"] = _case("no daemon answered", *argv, *control, **idle)
    cases["client-bad-endpoint"] = _case("endpoint|address|--control", "status", "--control", "not an endpoint")
    cases["client-bad-endpoint-port"] = _case("endpoint|address|--control", "status", "--control", "tcp://127.0.0.1:x")
    cases["reprocess-bad-set"] = _case("--set|KEY=VALUE", "reprocess", "r1", "--set", "minmass", *control)
    return cases


def all_cases(d: Path, port: int) -> dict[str, dict]:
    return {**nta_cases(d), **nta_other_cases(d), **dls_cases(d), **flow_cases(d), **core_cases(d, port)}


@pytest.fixture(scope="module")
def results(inputs) -> dict[str, tuple[dict, dict]]:
    """Every case run once (together, see run_cases): {id: (case, result)}."""
    cases = all_cases(inputs, _closed_port())
    ran = run_cases(cases, inputs)
    return {name: (case, ran[name]) for name, case in cases.items()}


_IDS = all_cases(Path("/inputs"), 0)


def _case_result(results: dict, case_id: str) -> tuple[dict, dict]:
    case, result = results[case_id]
    if not TESTDATA.is_dir() and any(str(TESTDATA) in a for a in case["argv"]):
        pytest.skip(f"needs the shared test data ({TESTDATA})")
    return case, result


@pytest.mark.parametrize("case_id", [k for k, c in _IDS.items() if "keyword" in c])
def test_one_line_error(results, case_id):
    case, result = _case_result(results, case_id)
    assert_one_line_error(result, case["keyword"])


@pytest.mark.parametrize("case_id", [k for k, c in _IDS.items() if "batch" in c])
def test_batch_of_bad_inputs(results, case_id):
    case, result = _case_result(results, case_id)
    stderr = result["stderr"]
    assert result["code"] == 1 and "Traceback" not in stderr and "internal error" not in stderr, result
    errors = [line for line in stderr.splitlines() if line.startswith("exoacq: error:")]
    named = [[n for n in case["batch"] if re.match(rf"exoacq: error: (\S*/)?{re.escape(n)}\b", line)]
             for line in errors]
    assert named == [[n] for n in case["batch"]], stderr  # one line per input, in order
    n = len(case["batch"])
    assert stderr.rstrip().splitlines()[-1] == f"exoacq: 0 of {n} inputs analysed, {n} failed", stderr


@pytest.mark.parametrize("case_id", [k for k, c in _IDS.items() if "stdout" in c])
def test_good_base_input(results, case_id):
    """The inputs the bad cases vary are good: each bad case fails for its own reason."""
    case, result = _case_result(results, case_id)
    assert result["code"] == 0, result["stderr"]
    assert "Traceback" not in result["stderr"] and "error" not in result["stderr"], result["stderr"]
    assert re.search(case["stdout"], result["stdout"]), result["stdout"][:2000]


def test_colour_frames_give_the_grey_video_s_numbers(results):
    """Colour is reduced to luma (BT.601): grey frames stored as colour PNGs give the same result."""
    grey = json.loads(results["nta-good"][1]["stdout"])
    colour = json.loads(results["nta-colour-frames"][1]["stdout"])
    assert colour["particles_per_frame"] == grey["particles_per_frame"] > 1.0
    assert colour["tracks"] == grey["tracks"]
    assert colour["diffusion_um2_s"] == grey["diffusion_um2_s"]


_GUARD = """
import sys
import exoacq.cli as cli

def cmd_config(args):
    raise RuntimeError("a bug\\nover two lines")

cli.cmd_config = cmd_config
sys.exit(cli.main(["config", "example"]))
"""


@pytest.mark.parametrize("debug", [False, True])
def test_last_resort_guard(debug):
    """An exception nothing recognised (a bug) is one line and exit 70 (EX_SOFTWARE); with
    EXOACQ_DEBUG=1 its traceback too."""
    env = {k: v for k, v in os.environ.items() if k != "EXOACQ_DEBUG"} | ({"EXOACQ_DEBUG": "1"} if debug else {})
    done = subprocess.run([sys.executable, "-c", _GUARD], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 70
    last = done.stderr.rstrip().splitlines()[-1]
    assert last == ("exoacq: error: internal error: RuntimeError: a bug over two lines "
                    "(a bug; run with EXOACQ_DEBUG=1 for the traceback)")
    if debug:
        assert "Traceback (most recent call last)" in done.stderr and "in cmd_config" in done.stderr
    else:
        assert done.stderr == last + "\n"
