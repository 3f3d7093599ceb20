"""The multi-tau software correlator: g2 from time tags equals multipletau's on the binned stream.

multipletau.autocorrelate(counts, m, normalize=True) returns G = g2 - 1 (lag 0 first); our
channels are its lags 1.. . Agreement is asked within 1e-6 relative on g2 on every lag both
report; the sums are exact integers, so in practice it is ~1e-15.
"""
import numpy as np
import pytest

multipletau = pytest.importorskip("multipletau")

from exoacq.dls.correlator import MultiTauCorrelator  # noqa: E402
from exoacq.dls.correlator_bench import bench_correlator, decay_rate_per_s, photon_stream  # noqa: E402
from exoacq.errors import ConfigError, ExoacqError  # noqa: E402

RES = 1e-9


def poisson_ticks(rate_hz, duration_s, seed, resolution_s=RES):
    rng = np.random.default_rng(seed)
    end = int(round(duration_s / resolution_s))
    return np.sort(rng.integers(0, end, rng.poisson(rate_hz * duration_s))), end


def multipletau_g2(ticks, base_ticks, n_bins, m=16):
    """{lag in base bins: g2} of multipletau on the tags binned at the base time."""
    counts = np.bincount(ticks // base_ticks, minlength=n_bins)[:n_bins].astype(float)
    result = multipletau.autocorrelate(counts, m=m, deltat=1.0, normalize=True)
    return {int(round(lag)): g + 1.0 for lag, g in result[1:]}


def assert_agrees(correlator, ticks, n_bins, m=16, at_least=1):
    base = correlator._base
    theirs = multipletau_g2(ticks, base, n_bins, m)
    g2 = correlator.g2()
    lags = np.rint(correlator.lag_s / correlator.base_lag_s).astype(int)
    ours = dict(zip(lags.tolist(), g2))
    common = sorted(set(theirs) & {k for k, g in ours.items() if np.isfinite(g)})
    assert len(common) >= at_least
    rel = np.array([abs(ours[k] / theirs[k] - 1) for k in common])
    assert rel.max() < 1e-6, (common[int(rel.argmax())], rel.max())
    # every lag multipletau has and the correlator's layout covers is reported (finite) by us
    assert set(theirs) & set(ours) <= set(common)
    return common


def test_default_layout_is_16_then_8_per_octave_like_multipletau_m16():
    c = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=1.0)
    k = np.rint(c.lag_s / 25e-9).astype(int)
    assert k[:16].tolist() == list(range(1, 17))
    assert k[16:24].tolist() == list(range(18, 33, 2))
    assert k[24:32].tolist() == list(range(36, 65, 4))
    assert c.lag_s.size == 16 + 21 * 8 + 1 and c.lag_s[-1] <= 1.0 < c.lag_s[-1] * 10 / 9
    mt = multipletau.autocorrelate(np.ones(16 * 2 ** 6) + np.arange(16 * 2 ** 6) % 3, m=16, deltat=25e-9)
    np.testing.assert_allclose(c.lag_s[:mt.shape[0] - 1], mt[1:, 0], rtol=1e-12)
    assert MultiTauCorrelator(RES).base_lag_s == RES


def test_uncorrelated_poisson_stream_agrees_with_multipletau():
    ticks, end = poisson_ticks(5e6, 0.02, seed=1)
    c = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=1.0)
    c.add(ticks, end_tick=end)
    common = assert_agrees(c, ticks, end // 25)
    assert len(common) >= 16 + 10 * 8
    assert c.photons == ticks.size and c.duration_s == pytest.approx(0.02)
    assert c.count_rate_hz == pytest.approx(5e6, rel=0.02)
    g2 = c.g2()
    assert np.nanmax(np.abs(g2[:100] - 1)) < 0.05              # no correlation beyond noise


def test_correlated_stream_agrees_and_decays_at_the_simulated_rate():
    gamma = 2e4                                                # fast decay: 4000 correlation times in 0.2 s
    ticks = photon_stream(0.2, 5e6, RES, seed=2, gamma_per_s=gamma)
    c = MultiTauCorrelator(RES, base_lag_s=100e-9, max_lag_s=0.01)
    c.add(ticks, end_tick=200_000_000)
    assert_agrees(c, ticks, 200_000_000 // 100, at_least=100)
    g = c.g2_minus_1()
    expected = np.exp(-2 * gamma * c.lag_s)                    # beta = 1 (one speckle), g2 - 1 = exp(-2 Gamma tau)
    assert np.mean(g[:16]) == pytest.approx(np.mean(expected[:16]), abs=0.06)
    near = np.argmin(np.abs(c.lag_s - 1 / (2 * gamma)))
    assert g[near] == pytest.approx(expected[near], abs=0.06)
    assert abs(g[-1]) < 0.05
    assert decay_rate_per_s() == pytest.approx(1716, rel=0.01)  # the benchmark's 100 nm sample at 90 deg


@pytest.mark.parametrize("base_ticks, rate_hz, m", [(1, 5e6, 16), (1000, 5e6, 16), (25, 5e6, 8), (40, 2e7, 32)])
def test_photon_mode_and_other_layouts_agree(base_ticks, rate_hz, m):
    """Tags straight into the correlator vs. tags binned at the base time into multipletau:
    photon mode (base = one tick, ~0.005 photons/bin), dense bins (5 photons/bin), m = 8, 32."""
    ticks, end = poisson_ticks(rate_hz, 0.004, seed=base_ticks)
    c = MultiTauCorrelator(RES, base_lag_s=base_ticks * RES, max_lag_s=1e-3, first_channels=m, per_octave=m // 2)
    c.add(ticks, end_tick=end)
    assert_agrees(c, ticks, end // base_ticks, m=m, at_least=m + 2)


@pytest.mark.parametrize("n_bins", [999, 1001, 1023, 4097, 12345])
def test_odd_lengths_drop_the_last_bin_of_each_level_like_multipletau(n_bins):
    rng = np.random.default_rng(n_bins)
    ticks = np.sort(rng.integers(0, n_bins * 25, n_bins // 2))
    c = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=1e-3)
    c.add(ticks, end_tick=n_bins * 25 + 7)                     # 7 ticks into a bin that stays open
    assert_agrees(c, ticks, n_bins, at_least=40)


def test_chunked_equals_whole_exactly():
    ticks = photon_stream(0.02, 5e6, RES, seed=3)
    ticks = np.sort(np.concatenate([ticks, ticks[::7]]))       # repeated tags, some split across chunks
    end = 20_000_000
    whole = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=0.01, trace_bin_s=0.001)
    whole.add(ticks, end_tick=end)
    rng = np.random.default_rng(0)
    cuts = np.sort(np.concatenate([rng.integers(0, ticks.size, 40), [0, 0, 5, 6, ticks.size, ticks.size]]))
    chunked = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=0.01, trace_bin_s=0.001)
    chunked._block = 1000                                      # blocks inside chunks too
    for piece in np.split(ticks, cuts):
        chunked.add(piece)
    chunked.add([], end_tick=end)
    np.testing.assert_array_equal(chunked.g2(), whole.g2())
    np.testing.assert_array_equal(chunked.g2("symmetric"), whole.g2("symmetric"))
    np.testing.assert_array_equal(chunked._sums, whole._sums)
    assert chunked.photons == whole.photons
    np.testing.assert_array_equal(chunked.count_trace(0.002)[1], whole.count_trace(0.002)[1])
    assert_agrees(chunked, ticks, end // 25, at_least=100)


def test_sparse_and_dense_levels_give_identical_sums():
    ticks, end = poisson_ticks(5e6, 0.01, seed=4)
    results = []
    for occupancy in (0.0, 0.01, np.inf):                      # all dense / adaptive / all sparse
        c = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=1e-3)
        c._dense_occupancy = occupancy
        c.add(ticks[: ticks.size // 2])
        c.add(ticks[ticks.size // 2:], end_tick=end)
        results.append(c._sums.copy())
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_live_curve_counts_only_closed_bins():
    """During acquisition (no end_tick) the bin of the last photon is still open: the curve so
    far is multipletau's on the bins before it."""
    ticks, _ = poisson_ticks(5e6, 0.01, seed=5)
    c = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=1e-3)
    half = ticks[: ticks.size // 2]
    c.add(half)
    assert_agrees(c, half, int(half[-1]) // 25, at_least=50)


def test_symmetric_normalisation_is_schatzels():
    ticks, end = poisson_ticks(3e6, 0.002, seed=6)
    c = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=1e-4)
    c.add(ticks, end_tick=end)
    counts = np.bincount(ticks // 25, minlength=end // 25)
    level, lag = c._ch_level, c._ch_j
    expected = []
    for s, j in zip(level, lag):
        n = (counts.size >> s) << s
        x = counts[:n].reshape(-1, 2 ** s).sum(axis=1).astype(float)
        m = x.size - j
        expected.append(m * np.dot(x[:m], x[j:]) / (x[:m].sum() * x[j:].sum()))
    np.testing.assert_allclose(c.g2("symmetric"), expected, rtol=1e-12)
    with pytest.raises(ConfigError, match="normalization"):
        c.g2("bogus")


def test_no_photons():
    c = MultiTauCorrelator(RES, base_lag_s=25e-9)
    c.add([])
    assert c.photons == 0 and c.duration_s == 0 and c.count_rate_hz == 0.0
    assert np.isnan(c.g2()).all() and np.isnan(c.g2_minus_1()).all()
    c.add(np.array([], np.int64), end_tick=100_000)
    assert np.isnan(c.g2()).all() and np.isnan(c.g2("symmetric")).all()
    assert c.duration_s == pytest.approx(1e-4) and c.count_rate_hz == 0.0
    time_s, rate_hz = c.count_trace()
    assert time_s.size == 0 and rate_hz.size == 0


def test_one_photon():
    c = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=1e-5)
    c.add([1234])
    assert np.isnan(c.g2()).all()                             # its bin is still open
    c.add([], end_tick=40_000)
    ticks = np.array([1234])
    assert_agrees(c, ticks, 1600, at_least=40)
    assert c.photons == 1 and c.count_rate_hz == pytest.approx(1 / 40e-6)


def test_photons_only_in_the_first_chunk():
    ticks, _ = poisson_ticks(5e6, 0.001, seed=7)
    c = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=1e-3)
    c.add(ticks)
    for end in (2_000_000, 3_000_000, 4_000_000):
        c.add(np.array([], np.int64), end_tick=end)
    assert_agrees(c, ticks, 4_000_000 // 25, at_least=60)


def test_max_lag_beyond_the_data():
    ticks, end = poisson_ticks(5e6, 10e-6, seed=8)            # 400 bins, lags up to 1 s
    c = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=1.0)
    c.add(ticks, end_tick=end)
    g2 = c.g2()
    assert np.isfinite(g2[:40]).all() and np.isnan(g2[-100:]).all()
    assert (c.products[np.isnan(g2)] == 0).all() and (c.products[np.isfinite(g2)] > 0).all()
    assert_agrees(c, ticks, end // 25, at_least=30)


def test_bad_time_tags_are_refused_and_leave_the_state_alone():
    c = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=1e-4)
    c.add([10, 20, 30])
    with pytest.raises(ExoacqError, match=r"not ascending: tag 2 \(5\) follows 50"):
        c.add([40, 50, 5])
    with pytest.raises(ExoacqError, match="time tag 25 comes before tick 30"):
        c.add([25, 40])
    with pytest.raises(ExoacqError, match="end_tick 30 is not after the last time tag 30"):
        c.add([], end_tick=30)
    c.add([40, 50], end_tick=10_000)
    fresh = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=1e-4)
    fresh.add([10, 20, 30, 40, 50], end_tick=10_000)
    np.testing.assert_array_equal(c.g2(), fresh.g2())
    assert c.photons == 5


@pytest.mark.parametrize("kwargs, message", [
    ({"base_lag_s": 2.5e-9}, "not a whole number"),
    ({"base_lag_s": 24e-9, "max_lag_s": 1e-9}, "shorter than the first lag"),
    ({"first_channels": 0}, "first_channels"),
    ({"per_octave": 1.5}, "per_octave"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MultiTauCorrelator(2e-9, **kwargs)


def test_count_trace_and_reset():
    ticks, end = poisson_ticks(1e6, 0.1, seed=9)
    c = MultiTauCorrelator(RES, base_lag_s=25e-9, max_lag_s=1e-3, trace_bin_s=0.01)
    c.add(ticks[ticks < 55_000_000])
    c.add(ticks[ticks >= 55_000_000], end_tick=end)
    time_s, rate_hz = c.count_trace()
    np.testing.assert_allclose(time_s, np.arange(10) * 0.01 + 0.005)
    np.testing.assert_array_equal(rate_hz * 0.01, np.bincount(ticks // 10_000_000, minlength=10))
    time_s, rate_hz = c.count_trace(bin_s=0.05)
    assert time_s.tolist() == pytest.approx([0.025, 0.075]) and rate_hz == pytest.approx([1e6, 1e6], rel=0.02)
    with pytest.raises(ConfigError, match="whole multiple"):
        c.count_trace(bin_s=0.015)
    c.add([], end_tick=end + 6_000_000)                        # 60 % of a further bin observed: shown
    time_s, rate_hz = c.count_trace()
    assert time_s[-1] == pytest.approx(0.103) and rate_hz[-1] == 0
    c.reset()
    assert c.photons == 0 and np.isnan(c.g2()).all() and c.count_trace()[0].size == 0
    c.add(ticks, end_tick=end)
    assert_agrees(c, ticks, end // 25, at_least=60)


def test_bench_correlator_reports_both_and_agrees():
    """Correctness of the benchmark document only; the speed figures are reported, not asserted."""
    result = bench_correlator(duration_s=0.01, repeats=1)
    assert result["exoacq"]["photons_per_s"] > 0 and result["multipletau"]["photons_per_s"] > 0
    assert result["simulator"]["realtime_factor"] > 0 and result["simulator"]["photons_per_s"] > 0
    assert result["max_rel_diff"] < 1e-6 and result["lags_compared"] > 100
    assert result["photons"] == pytest.approx(5e4, rel=0.2)
    assert result["settings"]["base_lag_s"] == 25e-9 and result["machine"]["cpus"] >= 1
