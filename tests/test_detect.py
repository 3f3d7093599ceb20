"""locate_fast (exoacq/nta/detect.py) against trackpy.locate and the simulator's truth."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import trackpy as tp
from scipy.spatial import cKDTree

from exoacq.nta.detect import COLUMNS, locate_fast
from exoacq.nta.locate_bench import DIAMETER, MINMASS, _render, bench_locate


@pytest.fixture(scope="module")
def frames():
    """Three 640 x 480 frames of the simulated camera, ~100 detectable 100 nm particles each."""
    return _render(640, 480, 100, 3, seed=7)


def _trackpy(frame, *args, **kwargs) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.locate(frame, *args, engine="numba", **kwargs)


def _nearest(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """For each feature of a, the distance to and index of the nearest feature of b."""
    return cKDTree(b[["y", "x"]].to_numpy()).query(a[["y", "x"]].to_numpy())


def _rms_against_truth(features: list[pd.DataFrame], truths: list[np.ndarray]) -> tuple[float, int]:
    d = np.concatenate([cKDTree(f[["x", "y"]].to_numpy()).query(t, distance_upper_bound=1.5)[0]
                        for f, t in zip(features, truths)])
    d = d[np.isfinite(d)]
    return float(np.sqrt(np.mean(d ** 2))), len(d)


def test_same_features_positions_and_mass_as_trackpy(frames):
    images, truths = frames
    ours = [locate_fast(im, DIAMETER, MINMASS) for im in images]
    theirs = [_trackpy(im, DIAMETER, minmass=MINMASS).reset_index(drop=True) for im in images]
    assert sum(map(len, theirs)) > 200
    ratios = []
    for a, b in zip(ours, theirs):
        assert list(a.columns) == COLUMNS and all(a[c].dtype == np.float64 for c in COLUMNS)
        d_ab, _ = _nearest(a, b)
        d_ba, i = _nearest(b, a)
        assert np.mean(d_ab < 0.5) >= 0.95 and np.mean(d_ba < 0.5) >= 0.95  # both directions
        same = d_ba < 0.01  # the same feature: compare the characterisation
        assert same.mean() >= 0.95
        ratios.append(a["mass"].to_numpy()[i[same]] / b["mass"].to_numpy()[same])
        for col in ("size", "ecc", "signal", "raw_mass"):
            np.testing.assert_allclose(a[col].to_numpy()[i[same]], b[col].to_numpy()[same], rtol=0.02, atol=1e-3)
    assert np.median(np.concatenate(ratios)) == pytest.approx(1.0, abs=0.03)  # minmass means the same
    assert np.all(np.abs(np.concatenate(ratios) - 1) < 0.03)
    # Localisation against the simulator's truth: at least as good as trackpy's.
    rms_ours, n_ours = _rms_against_truth(ours, truths)
    rms_theirs, n_theirs = _rms_against_truth(theirs, truths)
    assert n_ours >= n_theirs - 2 and n_ours > 200
    assert rms_ours <= rms_theirs + 0.02
    assert rms_ours < 0.35  # localisation plus motion blur, in px


@pytest.mark.parametrize("kwargs", [dict(separation=8.0, noise_size=1.5, smoothing_size=15),
                                    dict(noise_size=0.7, smoothing_size=13, threshold=3.0)])
def test_other_parameters_follow_trackpy(frames, kwargs):
    image = frames[0][1]
    a = locate_fast(image, 9, 200.0, **kwargs)
    b = _trackpy(image, 9, minmass=200.0, **kwargs)
    assert len(b) > 50 and abs(len(a) - len(b)) <= 0.03 * len(b)
    d, i = _nearest(b, a)
    assert np.mean(d < 0.01) >= 0.95
    np.testing.assert_allclose(a["mass"].to_numpy()[i[d < 0.01]], b["mass"].to_numpy()[d < 0.01], rtol=0.03)


def _spots(shape, centres, amplitude=400.0, sigma=1.8, offset=120, dtype=np.uint16) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    image = np.full(shape, float(offset))
    for y, x in centres:
        image += amplitude * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma ** 2))
    image += np.random.default_rng(3).normal(0, 3, shape)
    return np.clip(np.rint(image), 0, np.iinfo(dtype).max).astype(dtype)


def test_edge_margin_as_trackpy():
    # Margin max(diameter // 2, separation // 2 - 1, smoothing // 2) = 5 px for diameter 11.
    centres = [(2, 60), (4, 100), (5, 140), (6, 180), (40, 1), (60, 4.2), (80, 5.0), (100, 194), (117, 100),
               (60, 60)]
    image = _spots((120, 200), centres)
    a, b = locate_fast(image, 11, 300.0), _trackpy(image, 11, minmass=300.0)
    assert len(a) == len(b) and 0 < len(a) < len(centres)
    d, _ = _nearest(b, a)
    assert np.all(d < 0.01)
    found = {tuple(c) for c in np.rint(a[["y", "x"]].to_numpy()).astype(int)}
    assert (60, 60) in found and (5, 140) in found and (2, 60) not in found and (117, 100) not in found


def test_invert_finds_dark_particles(frames):
    image = frames[0][0]
    bright = locate_fast(image, DIAMETER, MINMASS)
    assert len(bright) > 50
    dark = locate_fast(65535 - image, DIAMETER, MINMASS, invert=True)  # inverted over the dtype's range
    pd.testing.assert_frame_equal(dark, bright)
    # 12-bit data inverted in uint16: values near 65535 in float32 (ulp 0.004 ADU), same features.
    dark12 = locate_fast(4095 - image, DIAMETER, MINMASS, invert=True)
    d, _ = _nearest(bright, dark12)
    assert len(dark12) == len(bright) and np.mean(d < 1e-3) >= 0.95 and np.mean(d < 0.5) >= 0.98
    darkf = locate_fast(1.0 - image / 4095.0, DIAMETER, MINMASS / 4095.0, invert=True, threshold=1 / 4095)
    assert np.mean(_nearest(bright, darkf)[0] < 0.1) >= 0.9


def test_black_and_flat_frames_give_empty_tables():
    for image in (np.zeros((100, 120), np.uint16), np.full((100, 120), 200, np.uint16), np.zeros((5, 5))):
        features = locate_fast(image, 11, 0.0)
        assert len(features) == 0 and list(features.columns) == COLUMNS
        assert all(features[c].dtype == np.float64 for c in COLUMNS)
    with pytest.raises(ValueError):
        locate_fast(np.zeros((50, 50), np.uint16), 10)


def test_uint8_and_float_frames(frames):
    image = frames[0][0]
    ref = locate_fast(image, DIAMETER, MINMASS)
    # Float frames: trackpy's default threshold is 1/255 of full scale; here 1 ADU as for integers.
    as_float = locate_fast(image / 4095.0, DIAMETER, MINMASS / 4095.0, threshold=1 / 4095)  # float64
    assert abs(len(as_float) - len(ref)) <= 0.05 * len(ref)
    assert np.mean(_nearest(ref, as_float)[0] < 0.1) >= 0.9  # no integer boxcar truncation: ~0.02 px
    eight = np.clip((image.astype(float) - 100) / 4, 0, 255).astype(np.uint8)
    a, b = locate_fast(eight, DIAMETER, MINMASS / 4), _trackpy(eight, DIAMETER, minmass=MINMASS / 4)
    assert len(b) > 50 and np.mean(_nearest(b, a)[0] < 0.5) >= 0.9  # trackpy quantises to 8 bits
    pd.testing.assert_frame_equal(locate_fast(image.astype(np.int32), DIAMETER, MINMASS), ref)


def test_bench_locate_structure():
    result = bench_locate(cases=((640, 480, 30),), frames=2)
    assert result["machine"]["cpus"] >= 1 and result["machine"]["threads"] == 1
    (case,) = result["cases"]
    assert (case["width"], case["height"], case["particles"]) == (640, 480, 30)
    for name in ("exoacq", "trackpy_python", "trackpy_numba"):
        stats = case[name]
        assert stats["fps"] > 0 and stats["frames"] >= 1 and stats["found"] >= stats["matched"] > 0
        assert 0 < stats["rms_px"] < 1.5
    assert case["exoacq"]["frames"] == case["trackpy_numba"]["frames"] == 2
    assert case["speedup_vs_numba"] == pytest.approx(case["exoacq"]["fps"] / case["trackpy_numba"]["fps"])
