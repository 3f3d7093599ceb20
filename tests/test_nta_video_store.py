"""A capture's kept raw video (exoacq.nta.video_store): lossless, with its frame list, never slowing the camera."""
from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

from exoacq.drivers.simulated_nta import SampleComponent, make_simulated_nta
from exoacq.errors import ExoacqError
from exoacq.nta.settings import NTASettings
from exoacq.nta.video import open_video
from exoacq.nta.video_store import VideoRecorder, kept_frames, read_frames_table


def simulated_frames(n: int, seed: int = 3) -> list[np.ndarray]:
    """Frames of the simulated camera (640 x 480, 12 bits in uint16, 100 nm beads at 3e8 /mL)."""
    camera, _, _ = make_simulated_nta([SampleComponent(100.0)], 3e8, illumination_mw=None, seed=seed,
                                      realtime=False)
    camera.connect()
    camera.start()
    frames = []
    for _ in range(n):
        frame = np.empty((camera.height, camera.width), camera.dtype)
        camera.fill(frame)
        frames.append(frame)
    return frames


def test_the_kept_video_gives_back_every_pixel_and_the_camera_numbering(tmp_path):
    frames = simulated_frames(12)
    assert frames[0].dtype == np.uint16 and frames[0].max() > 255  # 12-bit values: 8-bit video would clip
    numbers = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 13, 14]  # the camera lost frames 4, 11 and 12
    tracked = [n != 7 for n in numbers]  # the tracking core's queue was full for frame 7
    recorder = VideoRecorder(tmp_path, 640, 480, np.dtype(np.uint16), 25.0)
    for k, (number, frame) in enumerate(zip(numbers, frames)):
        assert recorder.offer(number, 1000.0 + number / 25.0, frame, tracked[k])
    kept = recorder.close()
    assert kept["frames_written"] == 12 and kept["frames_lost"] == 0 and kept["error"] is None
    assert kept["files"] == {"video": str(tmp_path / "video.zst"), "frames": str(tmp_path / "frames.csv")}
    table = read_frames_table(tmp_path)
    assert table["frame_number"].tolist() == numbers
    assert table["timestamp_s"].tolist() == [1000.0 + n / 25.0 for n in numbers]  # exact: written with repr
    assert table["tracked"].tolist() == [int(t) for t in tracked] and table["in_video"].tolist() == [1] * 12
    back = list(kept_frames(tmp_path))
    assert [(n, t) for n, t, _ in back] == list(zip(numbers, tracked))
    for (_, _, frame), original in zip(back, frames):
        assert frame.dtype == np.uint16 and np.array_equal(frame, original)
    # `exoacq analyze` reads it too, in its own bit depth
    video = open_video(tmp_path / "video.zst")
    assert (video.fps, video.frame_count, video.width, video.height) == (25.0, 12, 640, 480)
    assert all(np.array_equal(a, b) for a, b in zip(video.frames(), frames))


def test_8_bit_frames_are_kept_as_8_bit(tmp_path):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (48, 64), dtype=np.uint8) for _ in range(5)]
    recorder = VideoRecorder(tmp_path, 64, 48, np.dtype(np.uint8), 30.0)
    for n, frame in enumerate(frames):
        recorder.offer(n, n / 30.0, frame, True)
    recorder.close()
    back = [f for _, _, f in kept_frames(tmp_path)]
    assert len(back) == 5 and all(b.dtype == np.uint8 and np.array_equal(b, f) for b, f in zip(back, frames))


def test_a_full_writer_queue_drops_frames_from_the_video_without_waiting(tmp_path):
    frames = simulated_frames(40, seed=5)
    recorder = VideoRecorder(tmp_path, 640, 480, np.dtype(np.uint16), 25.0, queue_frames=2)
    t = time.perf_counter()
    for n, frame in enumerate(frames):  # far faster than 25 frames/s: the encoder cannot keep up
        recorder.offer(n, n / 25.0, frame, True)
    offering_s = time.perf_counter() - t
    kept = recorder.close()
    assert offering_s < 0.2  # never waits for the encoder
    assert 0 < kept["frames_lost"] < 40 and kept["frames_written"] + kept["frames_lost"] == 40
    table = read_frames_table(tmp_path)
    assert len(table) == 40 and table["in_video"].sum() == kept["frames_written"]
    back = list(kept_frames(tmp_path))  # the frames that are in the video, each with its own number
    assert [n for n, _, _ in back] == table.loc[table["in_video"] == 1, "frame_number"].tolist()
    assert all(np.array_equal(f, frames[n]) for n, _, f in back)


def test_disk_per_minute_of_simulated_camera_video(tmp_path):
    """Measured: ~260 MB a minute (640 x 480, 25 frames/s, 12 bits), ~28 % of the raw 16-bit frames."""
    frames = simulated_frames(50, seed=7)
    recorder = VideoRecorder(tmp_path, 640, 480, np.dtype(np.uint16), 25.0, queue_frames=64)
    for n, frame in enumerate(frames):
        recorder.offer(n, n / 25.0, frame, True)
    assert recorder.close()["frames_lost"] == 0
    mb_per_min = (tmp_path / "video.zst").stat().st_size / 1e6 / 50 * 25 * 60
    raw_mb_per_min = 640 * 480 * 2 * 25 * 60 / 1e6
    print(f"kept video: {mb_per_min:.0f} MB/min ({mb_per_min / raw_mb_per_min:.0%} of raw); "
          f"5 x 60 s run: {5 * mb_per_min / 1000:.2f} GB")
    assert 150 < mb_per_min < 400 and mb_per_min < 0.45 * raw_mb_per_min


def test_a_capture_without_its_video_or_frame_list_is_a_one_line_error(tmp_path):
    with pytest.raises(ExoacqError, match=r"video\.zst is missing: .*keep_video = false") as missing:
        list(kept_frames(tmp_path))
    assert "\n" not in str(missing.value) and missing.value.code == "no_video"
    (tmp_path / "video.zst").write_bytes(b"")
    with pytest.raises(ExoacqError, match=r"frames\.csv is missing"):
        list(kept_frames(tmp_path))
    pd.DataFrame({"frame_number": [0]}).to_csv(tmp_path / "frames.csv", index=False)
    with pytest.raises(ExoacqError, match="columns timestamp_s, tracked, in_video are missing"):
        read_frames_table(tmp_path)


def test_keep_video_is_on_by_default_and_save_frames_is_its_old_name():
    assert NTASettings().keep_video is True
    assert NTASettings(save_frames=True).keep_video is True
    assert NTASettings(save_frames=False).keep_video is False
    assert NTASettings(keep_video=False).keep_video is False
    with pytest.raises(ValueError, match="save_frames is the old name of keep_video"):
        NTASettings(save_frames=True, keep_video=False)


def test_the_encoder_is_a_process_of_its_own_at_the_lowest_priority(tmp_path):
    """Compressing never competes with the camera's thread: not for the daemon's GIL (a process of
    its own) and not for the CPU (SCHED_IDLE, or nice 19 where that is refused)."""
    recorder = VideoRecorder(tmp_path, 64, 48, np.dtype(np.uint16), 25.0)
    encoder = recorder._encoder
    assert encoder.pid != os.getpid()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # it lowers its priority as it starts
        policy = os.sched_getscheduler(encoder.pid)
        if policy == os.SCHED_IDLE or os.getpriority(os.PRIO_PROCESS, encoder.pid) == 19:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the encoder kept the daemon's CPU priority")
    frames = simulated_frames(3, seed=2)
    for n, frame in enumerate(frames):
        recorder.offer(n, n / 25.0, frame[:48, :64].copy(), True)
    kept = recorder.close()
    assert kept["frames_written"] == 3 and kept["error"] is None and encoder.returncode == 0


def test_an_encoder_that_stops_is_reported_not_raised(tmp_path):
    """The encoder process killed mid-capture: the acquisition goes on, the frames it did not take are
    counted as lost and the reason is in the result (a one-line error, never a traceback)."""
    recorder = VideoRecorder(tmp_path, 64, 48, np.dtype(np.uint16), 25.0)
    recorder._encoder.kill()
    recorder._encoder.wait()
    for n in range(5):
        recorder.offer(n, n / 25.0, np.zeros((48, 64), np.uint16), True)
    kept = recorder.close()
    assert kept["frames_written"] == 0 and kept["frames_lost"] == 5
    assert "video encoder" in kept["error"] and "\n" not in kept["error"]
    assert read_frames_table(tmp_path)["in_video"].sum() == 0


def test_a_folder_that_cannot_hold_the_video_is_a_one_line_error(tmp_path):
    with pytest.raises(ExoacqError, match="not a writable folder"):
        VideoRecorder(tmp_path / "missing", 64, 48, np.dtype(np.uint16), 25.0)
    with pytest.raises(ExoacqError, match="uint8 or uint16 only"):
        VideoRecorder(tmp_path, 64, 48, np.dtype(np.float32), 25.0)


def test_a_stopped_run_does_not_wait_for_the_queued_frames(tmp_path):
    """close(abandon=True), as when the run is stopped: what is still queued is counted as lost, and
    closing takes about one frame's encoding, not the whole queue's."""
    frames = simulated_frames(30, seed=4)
    recorder = VideoRecorder(tmp_path, 640, 480, np.dtype(np.uint16), 25.0, queue_frames=64)
    for n, frame in enumerate(frames[:3]):
        recorder.offer(n, n / 25.0, frame, True)
    time.sleep(1.0)  # the encoder starts and takes some (how many depends on the machine's load)
    for n, frame in enumerate(frames[3:], start=3):
        recorder.offer(n, n / 25.0, frame, True)
    kept = recorder.close(abandon=True)
    assert kept["frames_written"] + kept["frames_lost"] == 30 and kept["frames_lost"] > 0
    assert kept["error"] is None
    back = list(kept_frames(tmp_path))  # what was written is a readable video, in order
    assert [n for n, _, _ in back] == list(range(kept["frames_written"]))
    assert all(np.array_equal(f, frames[n]) for n, _, f in back)


def test_the_video_file_is_zstandard_frames_of_byte_planes_as_documented(tmp_path):
    """What exoacq.nta.raw_video promises a reader without exoacq: a Zstandard stream (the header in a
    skippable frame, which `zstd -d` passes over), then each frame's byte planes, low bytes first."""
    import zstandard

    frames = simulated_frames(3, seed=8)
    recorder = VideoRecorder(tmp_path, 640, 480, np.dtype(np.uint16), 25.0)
    for n, frame in enumerate(frames):
        recorder.offer(n, n / 25.0, frame, True)
    assert recorder.close()["frames_written"] == 3
    with open(tmp_path / "video.zst", "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    assert len(data) == 3 * 640 * 480 * 2
    for k, frame in enumerate(frames):
        planes = np.frombuffer(data, np.uint8)[k * 640 * 480 * 2:(k + 1) * 640 * 480 * 2]
        image = planes.reshape(2, -1).T.copy().view("<u2").reshape(480, 640)
        assert np.array_equal(image, frame)


def test_a_cut_video_reads_its_whole_frames_then_says_it_is_cut(tmp_path):
    frames = simulated_frames(4, seed=9)
    recorder = VideoRecorder(tmp_path, 640, 480, np.dtype(np.uint16), 25.0)
    for n, frame in enumerate(frames):
        recorder.offer(n, n / 25.0, frame, True)
    recorder.close()
    video = tmp_path / "video.zst"
    video.write_bytes(video.read_bytes()[:-1000])  # a process killed while writing the last frame
    back = []
    with pytest.raises(ExoacqError, match=r"video\.zst: the video ends after 3 of the 4 frames") as cut:
        for item in kept_frames(tmp_path):
            back.append(item)
    assert "\n" not in str(cut.value) and [n for n, _, _ in back] == [0, 1, 2]
    (tmp_path / "video.zst").write_bytes(b"not a video at all")
    with pytest.raises(ExoacqError, match="not a raw video kept by exoacq"):
        list(kept_frames(tmp_path))


def test_runs_kept_as_ffv1_before_are_still_read(tmp_path):
    """Runs recorded by earlier versions keep video.mkv (FFV1): their frames are read as before."""
    from exoacq.nta.bench_analyze import open_ffv1_writer

    frames = simulated_frames(3, seed=10)
    writer = open_ffv1_writer(tmp_path / "video.mkv", 640, 480, np.dtype(np.uint16), 25.0)
    for frame in frames:
        writer.write(frame)
    writer.release()
    pd.DataFrame({"frame_number": [0, 2, 3], "timestamp_s": [0.0, 0.08, 0.12], "tracked": [1, 1, 0],
                  "in_video": [1, 1, 1]}).to_csv(tmp_path / "frames.csv", index=False)
    back = list(kept_frames(tmp_path))
    assert [(n, t) for n, t, _ in back] == [(0, True), (2, True), (3, False)]
    assert all(np.array_equal(f, original) for (_, _, f), original in zip(back, frames))
