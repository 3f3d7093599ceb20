"""Pulse detection on digitised flow-cytometer traces (exoacq.flow.pulses).

Synthetic Gaussian pulses of known height, area and width on a noisy int16 baseline: the
detector must recover them (height within the noise, area within 2 %, width = time above the
hysteresis level of a Gaussian, 2 sigma sqrt(2 ln(H / L))), trigger as configured, flag
coincidences and saturation, and give the same events whatever way the stream is cut.
"""
import math

import numpy as np
import pandas as pd
import pytest

from exoacq.errors import ExoacqError
from exoacq.flow.pulses import PulseDetector, Trigger, estimate_baseline
from exoacq.flow.pulses_bench import bench_pulses, synthetic_trace

FS = 20e6                   # samples per second
US = 1e6 / FS               # microseconds per sample
CHANNELS = ["SSC", "FL1", "FL2"]
BASELINE = (100.0, 50.0, -20.0)


def make_trace(pulses, n, *, noise=2.0, sigma=8.0, seed=0, baseline=BASELINE):
    """int16 [3, n]: Gaussian pulses ``(center_sample, (h_SSC, h_FL1, h_FL2))`` of ``sigma`` samples + white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = rng.normal(0.0, noise, (3, n)) + np.asarray(baseline)[:, None]
    for center, heights in pulses:
        shape = np.exp(-(t - center) ** 2 / (2 * sigma ** 2))
        x += np.asarray(heights, dtype=float)[:, None] * shape[None, :]
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def run(trace, trigger=Trigger(), **kw):
    detector = PulseDetector(CHANNELS, FS, trigger, **kw)
    events = pd.concat([detector.process(trace, start_s=0.0), detector.flush()], ignore_index=True)
    return detector, events


def test_known_gaussian_pulses_are_recovered():
    sigma = 8.0
    heights = [300.0, 1000.0, 3000.0, 600.0]
    centers = [2000.3, 5000.7, 8000.5, 11000.0]
    trace = make_trace([(c, (h, 0.5 * h, 0.0)) for c, h in zip(centers, heights)], 14000, sigma=sigma)
    trigger = Trigger(mode="absolute", level_counts=40.0, hysteresis=0.5)
    detector, events = run(trace, trigger)
    # the baseline and noise were estimated from the trace itself (pulses excluded)
    assert detector.baseline_counts["SSC"] == pytest.approx(100.0, abs=0.3)
    assert detector.baseline_counts["FL2"] == pytest.approx(-20.0, abs=0.3)
    assert detector.noise_counts["FL1"] == pytest.approx(2.0, rel=0.1)
    assert detector.threshold_counts == pytest.approx(detector.baseline_counts["SSC"] + 40.0)
    assert len(events) == 4
    level_above = 0.5 * 40.0
    for (_, ev), h, c in zip(events.iterrows(), heights, centers):
        assert ev["Time"] == pytest.approx(c / FS, abs=1.0 / FS)
        assert ev["SSC-H"] == pytest.approx(h, abs=6 + 0.003 * h)
        assert ev["FL1-H"] == pytest.approx(0.5 * h, abs=6 + 0.003 * h)
        area = h * sigma * math.sqrt(2 * math.pi) * US             # counts x us
        assert ev["SSC-A"] == pytest.approx(area, rel=0.02)
        assert ev["FL1-A"] == pytest.approx(0.5 * area, rel=0.02)
        assert abs(ev["FL2-A"]) < 0.01 * area                      # noise only
        width = 2 * sigma * math.sqrt(2 * math.log(h / level_above)) * US
        assert ev["SSC-W"] == pytest.approx(width, abs=0.06)        # ~1 sample at 20 MHz
        assert ev["Coincident"] == 0.0 and ev["Saturated"] == 0.0
    assert detector.samples_processed == 14000
    assert detector.live_time_s == pytest.approx(14000 / FS)


def test_absolute_and_sigma_triggers():
    trace = make_trace([(1000, (25, 0, 0)), (3000, (60, 0, 0))], 5000, noise=2.0, sigma=6.0)
    sigma_detector, by_sigma = run(trace, Trigger(mode="sigma", k_sigma=5.0))
    noise = sigma_detector.noise_counts["SSC"]
    assert sigma_detector.threshold_counts == pytest.approx(sigma_detector.baseline_counts["SSC"] + 5 * noise)
    assert len(by_sigma) == 2                                       # threshold ~10 counts: both pulses
    absolute_detector, by_level = run(trace, Trigger(mode="absolute", level_counts=40.0))
    assert absolute_detector.threshold_counts == pytest.approx(absolute_detector.baseline_counts["SSC"] + 40)
    assert len(by_level) == 1 and by_level["SSC-H"].iloc[0] == pytest.approx(60, abs=7)
    # baseline and noise given: nothing estimated, the level is known before any data
    given = PulseDetector(CHANNELS, FS, Trigger(k_sigma=4.0), dict(zip(CHANNELS, BASELINE)),
                          {c: 2.5 for c in CHANNELS})
    assert given.threshold_counts == pytest.approx(110.0)


def test_hysteresis_prevents_double_counting_noisy_pulses():
    """Slow pulses barely above the threshold: noise makes them cross it several times."""
    centers = np.arange(400, 30 * 800, 800)
    trace = make_trace([(c, (32, 0, 0)) for c in centers], 30 * 800, noise=2.0, sigma=40.0, seed=4)
    base = dict(zip(CHANNELS, BASELINE))
    noise = {c: 2.0 for c in CHANNELS}
    _, schmitt = run(trace, Trigger(mode="absolute", level_counts=20.0, hysteresis=0.5), baseline_counts=base,
                     noise_counts=noise)
    _, no_hysteresis = run(trace, Trigger(mode="absolute", level_counts=20.0, hysteresis=1.0),
                           baseline_counts=base, noise_counts=noise)
    assert len(schmitt) == len(centers)
    assert np.allclose(schmitt["Time"], centers / FS, atol=30 / FS)
    assert schmitt["Coincident"].sum() == 0
    assert len(no_hysteresis) > len(centers) + 10


def test_coincidence_flag():
    sigma = 8.0
    trace = make_trace([(1000, (1000, 0, 0)),                          # single
                        (3000, (1000, 0, 0)), (3000 + 3 * sigma, (1000, 0, 0)),    # resolved pair: dip to 65 %
                        (5000, (1000, 0, 0)), (5000 + 4 * sigma, (400, 0, 0)),     # unequal pair
                        (7000, (1000, 0, 0)), (7000 + 1.5 * sigma, (1000, 0, 0)),  # unresolvable: one bump
                        (9000, (1000, 0, 0)), (9000 + 2.6 * sigma, (1000, 0, 0))],  # valley ~83 % > 70 %
                       11000, sigma=sigma)
    _, events = run(trace, Trigger(mode="absolute", level_counts=40.0))
    assert len(events) == 5
    assert events["Coincident"].tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
    single_area = 1000 * sigma * math.sqrt(2 * math.pi) * US
    assert events["SSC-A"].iloc[1] == pytest.approx(2 * single_area, rel=0.02)
    assert events["SSC-A"].iloc[2] == pytest.approx(1.4 * single_area, rel=0.02)
    # noisy singles are never flagged
    noisy = synthetic_trace(0.01, events_per_s=2_000, seed=5, band_limited_noise=False)[0]
    assert run(noisy)[1]["Coincident"].sum() == 0


def test_block_splitting_gives_identical_events():
    trace, _ = synthetic_trace(0.02, seed=3)                       # 100,000 events/s, coincidences
    reference_detector, whole = run(trace)
    base, noise = reference_detector.baseline_counts, reference_detector.noise_counts
    _, whole = run(trace, baseline_counts=base, noise_counts=noise)
    rng = np.random.default_rng(1)
    n = trace.shape[1]
    cuts = np.unique(np.concatenate([rng.choice(np.arange(1, n), 400, replace=False),
                                     np.arange(5000, 5040)]))      # and a run of 1-sample blocks
    detector = PulseDetector(CHANNELS, FS, Trigger(), base, noise)
    frames = [detector.process(np.ascontiguousarray(trace[:, a:b]), start_s=a / FS)
              for a, b in zip(np.r_[0, cuts], np.r_[cuts, n])]
    split = pd.concat(frames + [detector.flush()], ignore_index=True)
    assert len(whole) > 1000 and whole["Coincident"].sum() > 10
    pd.testing.assert_frame_equal(whole, split, check_exact=True)
    assert detector.pulses_truncated == 0


def test_non_contiguous_blocks_drop_open_pulses():
    trace = make_trace([(1000, (500, 0, 0)), (3000, (500, 0, 0)), (5000, (500, 0, 0))], 6000)
    detector = PulseDetector(CHANNELS, FS, Trigger(), dict(zip(CHANNELS, BASELINE)), {c: 2.0 for c in CHANNELS})
    first = detector.process(trace[:, :3000].copy(), start_s=0.0)           # ends at the peak of pulse 2
    assert len(first) == 1 and detector.pulses_truncated == 0
    second = detector.process(trace[:, 4000:].copy(), start_s=1.0, contiguous=False)
    assert detector.pulses_truncated == 1                                    # pulse 2 dropped
    second = pd.concat([second, detector.flush()], ignore_index=True)
    assert len(second) == 1
    assert second["Time"].iloc[0] == pytest.approx(1.0 + 1000 / FS, abs=1 / FS)   # its own segment's clock
    third = detector.process(trace[:, 2990:].copy(), start_s=2.0, contiguous=False)  # starts mid-pulse
    third = pd.concat([third, detector.flush()], ignore_index=True)
    assert len(third) == 1 and detector.pulses_truncated == 2


def test_saturated_pulses_are_detected_and_flagged():
    trace = make_trace([(1000, (40000, 100, 0)), (3000, (1000, 5000, 0)), (5000, (1000, 100, 0))], 6000)
    _, events = run(trace)
    assert len(events) == 3
    assert events["Saturated"].tolist() == [1.0, 0.0, 0.0]
    assert events["SSC-H"].iloc[0] == pytest.approx(32767 - 100, abs=1)   # a lower bound of the true height
    _, twelve_bit = run(trace, saturation_counts={"FL1": 4095})
    assert twelve_bit["Saturated"].tolist() == [1.0, 1.0, 0.0]


def test_empty_traces_give_empty_tables_with_the_columns():
    detector = PulseDetector(CHANNELS, FS, Trigger())
    columns = ["Time", "SSC-H", "SSC-A", "SSC-W", "FL1-H", "FL1-A", "FL2-H", "FL2-A", "Coincident", "Saturated"]
    assert detector.columns == columns
    empty = detector.process(np.zeros((3, 0), dtype=np.int16), start_s=0.0)
    assert list(empty.columns) == columns and len(empty) == 0
    quiet = detector.process(make_trace([], 5000), start_s=0.0)
    assert list(quiet.columns) == columns and len(quiet) == 0
    assert len(detector.flush()) == 0
    fl1_trigger = PulseDetector(CHANNELS, FS, Trigger(channel="FL1"))
    assert fl1_trigger.columns.index("FL1-W") == 5


def test_bad_input_raises_exoacq_error():
    detector = PulseDetector(CHANNELS, FS, Trigger())
    for bad in (np.zeros((3, 2000)), np.zeros((2, 2000), dtype=np.int16), np.zeros(2000, dtype=np.int16),
                [[0, 1], [0, 1], [0, 1]]):
        with pytest.raises(ExoacqError):
            detector.process(bad, start_s=0.0)
    with pytest.raises(ExoacqError, match="1000 are needed"):
        detector.process(np.zeros((3, 10), dtype=np.int16), start_s=0.0)
    for kwargs in (dict(trigger=Trigger(channel="FL9")), dict(trigger=Trigger(mode="absolute")),
                   dict(trigger=Trigger(hysteresis=1.5)), dict(trigger=Trigger(mode="median")),
                   dict(trigger=Trigger(), sample_rate_hz=0.0),
                   dict(trigger=Trigger(), baseline_counts={"SSX": 0.0}),
                   dict(trigger=Trigger(mode="absolute", level_counts=40000.0), baseline_counts={"SSC": 0.0,
                        "FL1": 0.0, "FL2": 0.0})):
        args = dict(channels=CHANNELS, sample_rate_hz=FS) | kwargs
        with pytest.raises(ExoacqError):
            PulseDetector(**args)
    with pytest.raises(ExoacqError):
        estimate_baseline(np.zeros((0,), dtype=np.int16))


def test_estimate_baseline_excludes_pulses():
    trace, _ = synthetic_trace(0.01, events_per_s=100_000, seed=2, baseline_counts=(100.0,),
                               median_height_counts=(400.0,), noise_counts=5.0, band_limited_noise=False)
    assert (trace[0] > 115).mean() > 0.15                         # a crowded trace: pulses 20 % of the time
    median, sigma = estimate_baseline(trace[0])
    assert median == pytest.approx(100.0, abs=0.5)                 # 0.1 sigma
    assert sigma == pytest.approx(5.0, rel=0.1)
    assert float(np.median(trace[0])) > median + 1                 # the plain median is pulled up
    flat_median, flat_sigma = estimate_baseline(np.full(1000, 7, dtype=np.int16))
    assert flat_median == pytest.approx(7.0, abs=0.05) and 1 / math.sqrt(12) <= flat_sigma < 0.5


def test_bench_pulses_reports_throughput_and_counts():
    result = bench_pulses(seconds=0.02, repeats=1, block_samples=1 << 16)
    assert result["channels"] == 3 and result["events_per_s_in_trace"] == 100_000
    assert result["sample_rate_hz"] == 20e6 and result["samples"] == 400_000
    assert result["samples_per_s"] > 0
    # Poisson arrivals: pulses closer than about their width merge (coincidences)
    assert 0.7 * result["true_events"] < result["detected_events"] <= result["true_events"]
    assert result["coincident_events"] > 0


def test_overlong_pulses_and_gaps():
    """A baseline step longer than max_pulse_samples is not an event; an empty gap block ends a segment."""
    trace = make_trace([(1000, (500, 0, 0)), (9000, (500, 0, 0))], 10000)
    trace[0, 3000:7000] += 200                                      # a 4000-sample step (e.g. a bubble)
    base, noise = dict(zip(CHANNELS, BASELINE)), {c: 2.0 for c in CHANNELS}
    whole = PulseDetector(CHANNELS, FS, Trigger(), base, noise, max_pulse_samples=1000)
    events = pd.concat([whole.process(trace, start_s=0.0), whole.flush()], ignore_index=True)
    assert len(events) == 2 and whole.pulses_too_long == 1
    split = PulseDetector(CHANNELS, FS, Trigger(), base, noise, max_pulse_samples=1000)
    parts, carried = [], []
    for a in range(0, 10000, 700):
        parts.append(split.process(trace[:, a:a + 700].copy(), start_s=a / FS))
        carried.append(split._tail.shape[1])
    pd.testing.assert_frame_equal(events, pd.concat(parts + [split.flush()], ignore_index=True))
    assert split.pulses_too_long == 1
    assert max(carried) < 1000 + 1024 + 2 + 700                     # samples carried stay bounded
    gap = PulseDetector(CHANNELS, FS, Trigger(), base, noise)
    gap.process(trace[:, :1000].copy(), start_s=0.0)                # ends at the peak of the first pulse
    gap.process(np.zeros((3, 0), dtype=np.int16), start_s=0.5, contiguous=False)
    assert gap.pulses_truncated == 1
    after = gap.process(trace[:, 8000:].copy(), start_s=0.4)        # contiguous=True, but after a gap
    after = pd.concat([after, gap.flush()], ignore_index=True)
    assert after["Time"].tolist() == pytest.approx([0.4 + 1000 / FS], abs=1 / FS)


def test_dense_triggering_on_noise_is_consistent():
    """A trigger in the noise (thousands of 'pulses'): the kernel's buffers grow; cuts change nothing."""
    trace = make_trace([], 100_000, noise=3.0)
    trigger = Trigger(mode="absolute", level_counts=2.0, hysteresis=0.0)
    base, noise = dict(zip(CHANNELS, BASELINE)), {c: 3.0 for c in CHANNELS}
    _, whole = run(trace, trigger, baseline_counts=base, noise_counts=noise)
    assert len(whole) > 100_000 / 64                               # more than the first buffer holds
    detector = PulseDetector(CHANNELS, FS, trigger, base, noise)
    parts = [detector.process(trace[:, a:a + 7919].copy(), start_s=a / FS) for a in range(0, 100_000, 7919)]
    pd.testing.assert_frame_equal(whole, pd.concat(parts + [detector.flush()], ignore_index=True))
    assert (whole["SSC-W"] > 0).all() and (whole["SSC-H"] > 2.0).all()
