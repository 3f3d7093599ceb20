"""The overlapped offline pipeline (exoacq.nta.offline, exoacq.nta.video.read_ahead) and `bench analyze`.

Decoding runs in a thread of its own, ahead of detection and linking: the
results must be those of decoding in line, to the bit, and the decoder's
errors must reach the operator as the same one-line messages.
"""
from __future__ import annotations

import json
import threading
import time

import pytest

from conftest import run_cli
from exoacq.errors import ExoacqError

ANALYSIS = ["--pixel-size-um", "0.166", "--minmass", "250", "--temperature-c", "25", "--exposure-ms", "15"]
FRAMES = 120


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline") / "beads.avi"
    proc = run_cli("simulate", "video", str(path), "--frames", str(FRAMES), "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    return path


def params_for(video_path, minmass=250.0):
    from exoacq.nta.parameters import TrackingParameters
    from exoacq.nta.video import open_video

    video = open_video(video_path)
    return TrackingParameters.for_sample(frame_rate_hz=video.fps, exposure_ms=15.0, pixel_size_um=0.166,
                                         temperature_c=25.0, min_diameter_nm=30.0, minmass=minmass,
                                         frame_width_px=video.width, frame_height_px=video.height)


def analyse(path, minmass=250.0, **options):
    from exoacq.nta.offline import analyze_video
    from exoacq.nta.video import open_video

    return analyze_video(open_video(path), params_for(path, minmass), **options)


def as_json(summary):
    return json.dumps(summary, sort_keys=True)


def decoder_threads():
    return [t for t in threading.enumerate() if t.name == "video-decoder"]


def test_read_ahead_keeps_order_and_bounds_the_queue():
    import numpy as np

    from exoacq.nta.video import read_ahead

    produced = []

    def frames():
        for i in range(50):
            produced.append(i)
            yield np.full((2, 2), i, np.uint16)

    out = []
    for frame in read_ahead(frames(), max_frames=3):
        out.append(int(frame[0, 0]))
        if len(out) == 5:
            time.sleep(0.2)  # a slow consumer: the decoder waits, 3 frames ahead at most (+1 in its hands)
            assert len(produced) <= 5 + 3 + 1
    assert out == list(range(50))
    assert not decoder_threads()


def test_read_ahead_raises_the_decoders_error_after_its_frames_and_stops_when_closed():
    import numpy as np

    from exoacq.nta.video import read_ahead

    def broken():
        for i in range(4):
            yield np.zeros((2, 2), np.uint8) + i
        raise ExoacqError("beads.avi: the video ends after 4 of the 9 frames its header announces")

    got = []
    with pytest.raises(ExoacqError, match=r"^beads.avi: the video ends after 4 of the 9 frames"):
        for frame in read_ahead(broken(), max_frames=2):
            got.append(int(frame[0, 0]))
    assert got == [0, 1, 2, 3]

    released = threading.Event()

    def endless():
        try:
            while True:
                yield np.zeros((2, 2), np.uint8)
        finally:
            released.set()  # as Video.frames releases its capture

    frames = read_ahead(endless(), max_frames=2)
    next(frames)
    frames.close()
    assert released.is_set() and not decoder_threads()


def test_overlapped_decoding_gives_the_sequential_result_to_the_bit(video, tmp_path):
    from exoacq.nta.bench_analyze import write_ffv1_copy

    sequential = analyse(video, overlap_decoding=False)
    overlapped = analyse(video)
    assert overlapped["frames_analysed"] == FRAMES
    assert sum(overlapped["features_per_frame"]) > 1000 and overlapped["tracks"]["used"] > 20
    assert as_json(overlapped) == as_json(sequential)
    # the same frames through a lossless FFV1 copy (as the daemon keeps videos): the same result again
    ffv1 = write_ffv1_copy(video, tmp_path / "beads.mkv")
    assert as_json(analyse(ffv1)) == as_json(sequential)
    # a threshold chosen from the first frames' noise (taken from the decoder's queue before the rest)
    automatic = analyse(video, minmass=None)
    assert automatic["threshold"]["rule"] == "noise" and automatic["threshold"]["minmass"] > 0
    assert automatic["frames_analysed"] == FRAMES and len(automatic["features_per_frame"]) == FRAMES
    assert as_json(automatic) == as_json(analyse(video, minmass=None, overlap_decoding=False))
    assert not decoder_threads()


def test_truncated_video_message_is_unchanged(video, tmp_path):
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    messages = []
    for overlap in (False, True):
        with pytest.raises(ExoacqError) as error:
            analyse(truncated, overlap_decoding=overlap)
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    read = int(messages[0].split("ends after ")[1].split()[0])
    assert 30 <= read <= 45  # a third of 120 frames
    assert messages[0] == (f"{truncated}: the video ends after {read} of the {FRAMES} frames its header announces "
                           "(truncated or damaged file)")
    assert not decoder_threads()


def test_an_error_in_detection_stops_the_decoder(video):
    import dataclasses

    from exoacq.nta.offline import analyze_video
    from exoacq.nta.video import open_video

    params = dataclasses.replace(params_for(video), detector="bogus")
    with pytest.raises(ValueError, match="detector = 'bogus'"):
        analyze_video(open_video(video), params)
    assert not decoder_threads()


def test_a_bad_frame_read_by_the_decoder_thread_is_one_line(video, tmp_path):
    import cv2

    from exoacq.nta.video import open_video

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(open_video(video).frames()):
        if i == 40:
            break
        cv2.imwrite(str(folder / f"f{i:03d}.png"), frame)
    (folder / "f030.png").write_bytes(b"not a png")
    proc = run_cli("analyze", "nta", str(folder), *ANALYSIS, "--fps", "25")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("exoacq: error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors == [f"exoacq: error: {folder / 'f030.png'}: not a readable image"]


def test_a_frame_of_nan_or_inf_is_left_out_and_said(video, tmp_path):
    """A stack of float frames (a user's processed video) with a corrupt frame: that frame is left out (its
    tracks end there) and a warning names it; a stack whose first frames are all corrupt is refused."""
    import numpy as np

    from exoacq.nta.video import open_video

    frames = np.array([f for _, f in zip(range(40), open_video(video).frames())], np.float32)
    bad = frames.copy()
    bad[3] = np.nan
    bad[20, 7, 9] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    proc = run_cli("analyze", "nta", str(tmp_path / "bad.npy"), *ANALYSIS, "--fps", "25", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["frames_analysed"] == 38
    assert ("2 frame(s) hold NaN or infinite pixel values (the first: frame 3): left out of the analysis, "
            "tracks end at them") in result["warnings"]
    np.save(tmp_path / "all-bad.npy", np.full((12, 64, 64), np.nan, np.float32))
    proc = run_cli("analyze", "nta", str(tmp_path / "all-bad.npy"), *ANALYSIS, "--fps", "25")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"exoacq: error: {tmp_path / 'all-bad.npy'}: the first frames "
                                                    "hold NaN or infinite pixel values: not a camera's image")


@pytest.mark.slow
def test_bench_analyze_reports_the_video_and_its_ffv1_copy(tmp_path):
    small = tmp_path / "small.avi"
    made = run_cli("simulate", "video", str(small), "--frames", "80", "--width", "320", "--height", "240",
                   "--concentration-per-ml", "1e9", "--seed", "5")
    assert made.returncode == 0, made.stderr
    proc = run_cli("bench", "analyze", str(small), *ANALYSIS, "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["frames"] == 80 and set(result["cases"]) == {"input", "ffv1"}
    assert (result["cases"]["input"]["codec"], result["cases"]["ffv1"]["codec"]) == ("RAW", "FFV1")
    for name, case in result["cases"].items():
        assert case["frames"] == 80 and case["minmass"] == 250.0  # a given threshold: the baseline's too
        assert case["exoacq_s"] > 0 and case["trackpy_s"] > 0 and case["exoacq_command_s"] > case["exoacq_s"]
        assert case["cpu_s"]["exoacq"] > 0 and case["cpu_s"]["trackpy"] > 0
        assert case["trackpy_command_s"] > 0
        assert case["runs"] == {k: [pytest.approx(case[k], abs=1e-3)]
                                for k in ("exoacq_s", "exoacq_command_s", "trackpy_s", "trackpy_command_s")}
        assert result["speedup"][name] == case["speedup"] == pytest.approx(case["trackpy_s"] / case["exoacq_s"])
        assert case["speedup_command"] == pytest.approx(case["trackpy_s"] / case["exoacq_command_s"])
        assert case["speedup_both_commands"] == pytest.approx(case["trackpy_command_s"] / case["exoacq_command_s"])
        assert case["same_result_as_input"] is True  # FFV1 is lossless: exoacq's result to the bit
        # the same particles: the same tracks (first frame and length of each, in the process and as a script);
        # features at the threshold within 0.2 % (float32 and float64 band-passes differ at the threshold)
        assert case["same_tracks"] is True
        assert case["tracks_used"]["exoacq"] == case["tracks_used"]["trackpy"] >= 15
        assert case["features"]["exoacq"] == pytest.approx(case["features"]["trackpy"], rel=0.002)
    assert result["cases"]["ffv1"]["features"] == result["cases"]["input"]["features"]


def test_the_trackpy_baseline_finds_exoacqs_tracks_on_dark_particles(video, tmp_path):
    """8-bit frames reach trackpy as 16-bit integers, inverted as 8 bits first when the particles are dark
    (``--invert``, as exoacq's detector inverts them): the baseline's tracks and features at the threshold are
    exoacq's (bench_analyze.trackpy_pipeline)."""
    import dataclasses

    import numpy as np

    from exoacq.nta.bench_analyze import Baseline, exoacq_spans, trackpy_pipeline, trackpy_spans
    from exoacq.nta.offline import analyze_video
    from exoacq.nta.video import open_video

    dark = np.array([255 - f for _, f in zip(range(60), open_video(video).frames())], np.uint8)
    np.save(tmp_path / "dark.npy", dark)
    params = dataclasses.replace(params_for(video), invert=True, frame_rate_hz=25.0)
    trackers = []
    summary = analyze_video(open_video(tmp_path / "dark.npy"), params, tracked=trackers.append)
    exoacq = exoacq_spans(trackers[0])
    baseline = Baseline(params.feature_diameter_px, True, params.pixel_size_um, params.frame_rate_hz,
                        250.0, 250.0, summary["link_search_range_px"], summary["tracks"]["min_length_frames"])
    features, kept, msd = trackpy_pipeline(tmp_path / "dark.npy", baseline)
    assert len(exoacq) == summary["tracks"]["used"] == msd.shape[1] >= 10
    assert trackpy_spans(kept) == exoacq
    assert int((features["mass"] >= 250.0).sum()) == pytest.approx(sum(summary["features_per_frame"]), rel=0.002)


def test_the_baseline_uses_the_threshold_exoacq_chose():
    from types import SimpleNamespace

    from exoacq.nta.bench_analyze import baseline_minmass

    params = SimpleNamespace(minmass=300.0, link_minmass=300.0)
    chosen = {"minmass": 187.5, "rule": "noise", "link_minmass": 125.0}
    assert baseline_minmass({"threshold": chosen}, params) == (187.5, 125.0)
    assert baseline_minmass({"threshold": {"minmass": 187.5, "rule": "fixed"}}, params) == (187.5, 187.5)
    assert baseline_minmass({"threshold": {"minmass": None}}, params) == (300.0, 300.0)
    assert baseline_minmass({}, params) == (300.0, 300.0)


def test_bench_arguments_give_back_the_analysis_options():
    import argparse

    from exoacq.nta.bench_analyze import analysis_argv
    from exoacq.nta.cli_analyze import add_analysis_options

    parser = argparse.ArgumentParser()
    add_analysis_options(parser)
    argv = [*ANALYSIS, "--invert", "--no-volume-correction", "--fps", "30"]
    args = parser.parse_args(argv)
    assert vars(parser.parse_args(analysis_argv(args))) == vars(args)


def test_read_ahead_starts_decoding_at_once_and_closes_unstarted():
    """The command starts decoding before it imports the analysis: the decoder must run before the
    first frame is asked for, and stop when closed unused."""
    import numpy as np

    from exoacq.nta.video import read_ahead

    produced = []
    released = threading.Event()

    def frames():
        try:
            for i in range(100):
                produced.append(i)
                yield np.full((2, 2), i, np.uint8)
        finally:
            released.set()

    ahead = read_ahead(frames(), max_frames=4)
    deadline = time.monotonic() + 10
    while len(produced) < 5 and time.monotonic() < deadline:  # 4 in the queue, 1 in the decoder's hands
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(produced) == 5  # decoded without being asked, and no further than the queue allows
    ahead.close()
    assert released.is_set() and not decoder_threads()
    assert list(ahead) == []
