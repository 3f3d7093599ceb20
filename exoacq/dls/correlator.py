"""Real-time multi-tau software correlator working directly from photon time tags.

Multiple-tau (Schätzel, Drewel & Stimac 1988; Schätzel 1990)
----------------------------------------------------------------
A DLS correlator estimates the intensity autocorrelation at lags spread evenly on a
log scale from nanoseconds to seconds. The multiple-tau scheme does it with a few
hundred channels: the photon counts are binned at the base time tau0 (level 0);
level s re-bins level s-1 by summing neighbouring pairs, so its bins are 2^s tau0
wide. Level 0 correlates lags 1..16 tau0; every further level adds 8 lags
(9..16 of its own bins: 18..32 tau0 at level 1, 36..64 tau0 at level 2, ...) - the
"16 channels then 8 per octave" layout of the ALV and LSI hardware correlators, and
the ``m=16`` layout of the ``multipletau`` package (m channels on level 0, m/2 on each
level after). A lag's relative resolution (bin width / lag) therefore stays at
1/8..1/16, so the statistical accuracy at long lags is that of the coarse bins
(Schätzel 1990, "Noise on photon correlation data. I. Autocorrelation functions",
Quantum Opt. 2, 287-305; Schätzel, Drewel, Stimac 1988, J. Mod. Opt. 35, 711-718).
``first_channels`` and ``per_octave`` change the layout: level s >= 1 has the lags
J//2 + 1 .. J//2 + per_octave of its bins, J the longest lag (in its own bins) of level s-1.

From time tags, without a loop per empty bin
--------------------------------------------
At 5 Mcounts/s and 25 ns bins there are 0.125 photons per level-0 bin, and 1 s of
lag takes ~22 levels. A correlator that walks every bin of every level spends almost
all of its time multiplying zeros. Here each level holds its new bins either
*sparse* - the non-empty bins as (bin index, count), made for level 0 straight from
the sorted tags - or *dense* (an array of counts) once the fraction of its new bins that
are non-empty reaches ``_DENSE_OCCUPANCY`` times its number of lags (16 % at 16 lags,
8 % at 8: the measured break-even). In the benchmark stream (5 Mcounts/s, 25 ns) level 0
(0.12 photons/bin) stays sparse and the levels from 50 ns on are dense. A sparse level
correlates each non-empty bin with the earlier non-empty bins at most the level's longest lag back (a handful at low
occupancy: the cost goes with photon pairs, as in photon-mode correlators - Magatti &
Ferri 2001, Appl. Opt. 40, 4011; Wahl et al. 2003, Opt. Express 11, 3583); a dense level
is a short vectorised product loop per lag. Each level hands its pair sums to the
next. All of it is compiled (numba); tags are processed in blocks of ``_BLOCK``
photons, every level per block, so the working set stays in cache and a live
acquisition can feed chunks of any size: the state (the last bins of every level,
the still-open bin) is carried exactly over chunk boundaries, and the result does not
depend on how the stream was cut.

Exact sums and the normalisation
--------------------------------
Per channel (level s, lag j bins) the correlator keeps integer sums over the M = N_s - j
complete pairs of level s (N_s = the number of complete level-s bins: a level-s bin
counts only when all its 2^s base bins have closed, which is also how
``multipletau`` drops an odd last bin at each level):
S = sum c_i c_{i+j}, A = sum_{i<M} c_i (the earlier bins), B = sum_{i>=j} c_i (the later).
``g2()`` is then, with nbar = 2^s * (photons / N_0) the mean count per level-s bin,

    normalization="multipletau":  g2 = 1 + sum (c_i - nbar)(c_{i+j} - nbar) / (M nbar^2)
                                     = S/(M nbar^2) - (A + B)/(M nbar) + 2

exactly what ``multipletau.autocorrelate(counts, m=first_channels, normalize=True) + 1``
returns for the same tags binned at the base time (fluctuations about the run's mean,
divided by M and the squared mean; lag 0 is not a channel here), and

    normalization="symmetric":    g2 = M S / (A B)

Schätzel's symmetric normalisation of the hardware correlators (each lag divided by
the means of the very bins it used), which removes the bias of a drifting or short
run. Both agree for long, stationary runs.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from exoacq.errors import ConfigError, ExoacqError

__all__ = ["MultiTauCorrelator"]

#: Photons per compiled block (all levels are updated per block: the working set stays in cache).
_BLOCK = 1 << 14
#: A level turns dense (an array of counts) when the fraction of its new bins that are non-empty
#: reaches this times its number of lags (sparse work goes with photons, dense with bins x lags).
_DENSE_OCCUPANCY = 0.01


# ----------------------------------------------------------------------------- compiled kernels

@numba.njit(cache=True)
def _bin_index(tick, start, base, inv_base):
    """(tick - start) // base without an integer division (float estimate, corrected by one)."""
    d = tick - start
    q = np.int64(d * inv_base)
    q -= q * base > d
    q += (q + 1) * base <= d
    return q


@numba.njit(cache=True)
def _check_and_trace(ticks, start, trace_ticks, first_bin, out):
    """Count the photons per count-trace bin (``out[k]`` is trace bin ``first_bin + k``).

    Returns -1 when the tags are ascending, else the index of the first tag smaller than
    its predecessor (nothing counted is then used)."""
    n = ticks.size
    if n == 0:
        return -1
    b = first_bin
    boundary = start + (b + 1) * trace_ticks
    previous = ticks[0]
    for i in range(n):
        t = ticks[i]
        if t < previous:
            return i
        previous = t
        while t >= boundary:
            b += 1
            boundary += trace_ticks
        out[b - first_bin] += 1
    return -1


@numba.njit(cache=True)
def _sparse_level(s, idx, cnt, n, f_old, f_new, jmn, jmx, hist, head, sums, totals,
                  c_idx, c_cnt, acc, out_idx, out_cnt, parents):
    """One level from its new complete non-empty bins (ascending ``idx[:n]`` in [f_old, f_new)).

    Updates the lag sums, totals, first and last bins of level ``s``; returns the number
    of non-empty parent bins written to ``out_*`` (the next level's new complete bins)."""
    width = hist.shape[1]
    first = f_old - width
    nc = 0
    for k in range(width):                      # the level's last bins before this block
        c = hist[s, k]
        if c != 0:
            c_idx[nc] = first + k
            c_cnt[nc] = c
            nc += 1
    n_hist = nc
    total = 0
    for k in range(n):
        b = idx[k]
        c = cnt[k]
        c_idx[nc] = b
        c_cnt[nc] = c
        nc += 1
        total += c
        if b < width:
            head[s, b] = c
    totals[s] += total

    for j in range(jmn, jmx + 1):
        acc[j] = 0
    for p in range(n_hist, nc):                 # each new bin with the earlier ones <= jmx bins back
        b = c_idx[p]
        c = c_cnt[p]
        q = p - 1
        while q >= 0:
            d = b - c_idx[q]
            if d > jmx:
                break
            if d >= jmn:
                acc[d] += c * c_cnt[q]
            q -= 1
    for j in range(jmn, jmx + 1):
        sums[s, j] += acc[j]

    low = f_new - width
    for k in range(width):
        hist[s, k] = 0
    for p in range(nc - 1, -1, -1):
        b = c_idx[p]
        if b < low:
            break
        hist[s, b - low] = c_cnt[p]

    n_out = 0
    if parents:
        p_low = 2 * (f_old // 2)                # a parent is complete when both its children are
        p_high = 2 * (f_new // 2)
        for p in range(nc):
            b = c_idx[p]
            if b < p_low:
                continue
            if b >= p_high:
                break
            parent = b >> 1
            if n_out > 0 and out_idx[n_out - 1] == parent:
                out_cnt[n_out - 1] += c_cnt[p]
            else:
                out_idx[n_out] = parent
                out_cnt[n_out] = c_cnt[p]
                n_out += 1
    return n_out


@numba.njit(cache=True)
def _to_dense(s, idx, cnt, n, f_old, f_new, hist):
    """A level's new bins as an array of counts, preceded by its last ``width`` bins."""
    width = hist.shape[1]
    w = np.zeros(width + f_new - f_old)
    for k in range(width):
        w[k] = hist[s, k]
    for k in range(n):
        w[width + idx[k] - f_old] = cnt[k]
    return w


@numba.njit(cache=True, fastmath=True)
def _dense_level(s, w, f_old, f_new, jmn, jmx, hist, head, sums, totals, parents):
    """One level from ``w``: its last ``width`` bins then its new complete bins [f_old, f_new).

    Counts are small integers held exactly in float64 (sums per block stay far below 2^53,
    so the vectorised, reassociated sums are exact). Returns the next level's array.
    (Loops run over slices from index 0: numba then needs no negative-index check and
    LLVM vectorises them.)"""
    width = hist.shape[1]
    n = f_new - f_old
    new = w[width:width + n]
    for j in range(jmn, jmx + 1):
        earlier = w[width - j:width - j + n]
        a = 0.0
        for k in range(n):
            a += new[k] * earlier[k]
        sums[s, j] += np.int64(a)
    total = 0.0
    for k in range(n):
        total += new[k]
    totals[s] += np.int64(total)
    for k in range(max(f_old, 0), min(f_new, width)):
        head[s, k] = np.int64(w[width + k - f_old])
    for k in range(width):
        hist[s, k] = np.int64(w[n + k])
    if not parents:
        return np.empty(0)
    p0 = f_old // 2
    n2 = f_new // 2 - p0
    w2 = np.empty(width + n2)
    for k in range(width):
        w2[k] = hist[s + 1, k]
    pairs = w[2 * p0 - f_old + width:]
    out = w2[width:]
    for p in range(n2):
        out[p] = pairs[2 * p] + pairs[2 * p + 1]
    return w2


@numba.njit(cache=True)
def _correlate(ticks, start, base, inv_base, final_bins, block, dense_occupancy,
               jmin, jmax, hist, head, sums, totals, complete, pending):
    """Feed sorted tags through every level; ``final_bins`` base bins are complete afterwards.

    ``complete[s]`` is the number of complete bins of level s; ``pending`` the open base
    bin (index, photons) that a later tag may still fall into."""
    n = ticks.size
    levels = jmin.size
    width = hist.shape[1]
    cap = block + width + levels + 8
    a_idx = np.empty(cap, np.int64)
    a_cnt = np.empty(cap, np.int64)
    b_idx = np.empty(cap, np.int64)
    b_cnt = np.empty(cap, np.int64)
    c_idx = np.empty(cap + width, np.int64)
    c_cnt = np.empty(cap + width, np.int64)
    acc = np.zeros(width + 1, np.int64)
    bins = np.empty(block, np.int64)
    pos = 0
    while True:
        end = min(pos + block, n)
        if end < n:
            target = _bin_index(ticks[end], start, base, inv_base)  # bins before the next tag are complete
        else:
            target = final_bins
        # level 0: the non-empty complete base bins of this block, as (bin, count), branch-free:
        # every tag's bin, then one entry per run of equal bins (slot 0 kept for the open bin)
        m = end - pos
        block_ticks = ticks[pos:end]
        for i in range(m):
            bins[i] = _bin_index(block_ticks[i], start, base, inv_base)
        ne = 1
        for i in range(m - 1):
            a_idx[ne] = bins[i]
            a_cnt[ne] = i + 1                   # run end, made a count below
            ne += bins[i] != bins[i + 1]
        if m > 0:
            a_idx[ne] = bins[m - 1]
            a_cnt[ne] = m
            ne += 1
        previous_end = 0
        for k in range(1, ne):
            run_end = a_cnt[k]
            a_cnt[k] = run_end - previous_end
            previous_end = run_end
        first = 1
        if pending[1] > 0:                      # photons of the bin left open by the last block
            if ne > 1 and a_idx[1] == pending[0]:
                a_cnt[1] += pending[1]
            else:
                a_idx[0] = pending[0]
                a_cnt[0] = pending[1]
                first = 0
        pending[1] = 0
        if ne > first and a_idx[ne - 1] >= target:
            ne -= 1
            pending[0] = a_idx[ne]
            pending[1] = a_cnt[ne]
        ne -= first

        dense = False
        w = np.empty(0)
        src_idx, src_cnt, dst_idx, dst_cnt = a_idx[first:], a_cnt[first:], b_idx, b_cnt
        f_new = target
        for s in range(levels):
            f_old = complete[s]
            if f_new <= f_old:
                break
            parents = s + 1 < levels
            if not dense and ne >= dense_occupancy * (jmax[s] - jmin[s] + 1) * (f_new - f_old):
                w = _to_dense(s, src_idx, src_cnt, ne, f_old, f_new, hist)
                dense = True
            if dense:
                w = _dense_level(s, w, f_old, f_new, jmin[s], jmax[s], hist, head, sums, totals, parents)
            else:
                ne = _sparse_level(s, src_idx, src_cnt, ne, f_old, f_new, jmin[s], jmax[s], hist, head, sums,
                                   totals, c_idx, c_cnt, acc, dst_idx, dst_cnt, parents)
                src_idx, src_cnt, dst_idx, dst_cnt = dst_idx, dst_cnt, src_idx, src_cnt
            complete[s] = f_new
            f_new = f_new // 2
        pos = end
        if pos >= n:
            break


# ----------------------------------------------------------------------------- the correlator

def _layout(base_ticks: int, max_lag_ticks: float, first_channels: int, per_octave: int):
    """Channels as (level, lag in the level's bins), and each level's lag range."""
    channels, jmin, jmax = [], [], []
    level, lo, hi = 0, 1, first_channels
    while level < 60:
        width = base_ticks << level
        kept = [j for j in range(lo, hi + 1) if j * width <= max_lag_ticks]
        if not kept:
            break
        channels += [(level, j) for j in kept]
        jmin.append(lo)
        jmax.append(kept[-1])
        if len(kept) < hi - lo + 1:
            break
        level, lo, hi = level + 1, hi // 2 + 1, hi // 2 + per_octave
    return channels, np.array(jmin, np.int64), np.array(jmax, np.int64)


class MultiTauCorrelator:
    """Multi-tau autocorrelation of a photon stream given as time tags, fed in chunks.

    ``resolution_s``: the tagger's tick. ``base_lag_s``: the first lag and level-0 bin
    (default: one tick; must be a whole number of ticks). ``max_lag_s``: the longest lag.
    ``first_channels`` lags on level 0, then ``per_octave`` per level (16 and 8: the
    ALV/LSI layout, ``multipletau`` m=16). ``start_tick``: the tick at which the
    measurement started (bins are aligned to it). ``trace_bin_s``: the finest bin of the
    count-rate trace. See the module docstring for the algorithm and normalisation.

    ``add(ticks)`` takes ascending int64 tags (ticks of ``resolution_s``); ``end_tick``
    says that time is complete up to it (no photon before it is still to come), which
    closes the last bins; without it, the bin holding the last photon stays open.
    """

    def __init__(self, resolution_s: float, *, base_lag_s: float | None = None, max_lag_s: float = 1.0,
                 first_channels: int = 16, per_octave: int = 8, start_tick: int = 0, trace_bin_s: float = 0.1):
        if not (resolution_s > 0 and math.isfinite(resolution_s)):
            raise ConfigError(f"correlator: resolution_s must be a positive time, not {resolution_s!r}")
        base_lag_s = resolution_s if base_lag_s is None else base_lag_s
        base = round(base_lag_s / resolution_s)
        if base < 1 or abs(base * resolution_s - base_lag_s) > 1e-6 * base_lag_s:
            raise ConfigError(f"correlator: base_lag_s {base_lag_s:g} s is not a whole number of "
                              f"{resolution_s:g} s ticks")
        if int(first_channels) != first_channels or first_channels < 1:
            raise ConfigError(f"correlator: first_channels must be a positive integer, not {first_channels!r}")
        if int(per_octave) != per_octave or per_octave < 1:
            raise ConfigError(f"correlator: per_octave must be a positive integer, not {per_octave!r}")
        if not max_lag_s >= base_lag_s * (1 - 1e-9):
            raise ConfigError(f"correlator: max_lag_s {max_lag_s:g} s is shorter than the first lag "
                              f"{base_lag_s:g} s")
        trace_ticks = round(trace_bin_s / resolution_s)
        if trace_ticks < 1:
            raise ConfigError(f"correlator: trace_bin_s {trace_bin_s:g} s is shorter than a tick")
        self.resolution_s = float(resolution_s)
        self.base_lag_s = base * self.resolution_s
        self.max_lag_s = float(max_lag_s)
        self.first_channels, self.per_octave = int(first_channels), int(per_octave)
        self.start_tick = int(start_tick)
        self.trace_bin_s = trace_ticks * self.resolution_s
        self._base = int(base)
        self._trace_ticks = int(trace_ticks)
        channels, self._jmin, self._jmax = _layout(self._base, max_lag_s / resolution_s * (1 + 1e-9),
                                                   self.first_channels, self.per_octave)
        self._ch_level = np.array([c[0] for c in channels], np.int64)
        self._ch_j = np.array([c[1] for c in channels], np.int64)
        self.lag_s = self._ch_j * (2.0 ** self._ch_level) * self.base_lag_s
        self._width = int(self._jmax.max())
        self._dense_occupancy = _DENSE_OCCUPANCY
        self._block = _BLOCK
        self.reset()

    def reset(self) -> None:
        """Forget all photons (the layout stays)."""
        levels, width = self._jmin.size, self._width
        self._hist = np.zeros((levels, width), np.int64)
        self._head = np.zeros((levels, width), np.int64)
        self._sums = np.zeros((levels, width + 1), np.int64)
        self._totals = np.zeros(levels, np.int64)
        self._complete = np.zeros(levels, np.int64)
        self._pending = np.array([-1, 0], np.int64)
        self._trace = np.zeros(64, np.int64)
        self._last_tick: int | None = None
        self._closed_tick = self.start_tick        # time declared complete by end_tick
        self._end_tick = self.start_tick           # observed end: last photon + 1 tick or end_tick
        self.photons = 0

    # -------------------------------------------------------------- feeding

    def add(self, ticks, *, end_tick: int | None = None) -> None:
        """Correlate the next chunk of ascending time tags (any size, may be empty).

        ``end_tick``: time is complete up to this tick (exclusive): closes the bins before it."""
        t = np.ascontiguousarray(ticks, dtype=np.int64)
        if t.ndim != 1:
            raise ExoacqError(f"correlator: time tags must be a 1-D array, not shape {t.shape}", code="bad_data")
        if t.size:
            floor = max(self._closed_tick, self._last_tick if self._last_tick is not None else self.start_tick)
            if t[0] < floor:
                raise ExoacqError(f"correlator: time tag {int(t[0])} comes before tick {floor}, already correlated "
                                  "(tags must ascend, from start_tick, across chunks)", code="bad_data")
            first_bin = (int(t[0]) - self.start_tick) // self._trace_ticks
            last_bin = (int(t[-1]) - self.start_tick) // self._trace_ticks
            counts = np.zeros(max(last_bin - first_bin + 1, 1), np.int64)
            bad = _check_and_trace(t, self.start_tick, self._trace_ticks, first_bin, counts)
            if bad >= 0:
                raise ExoacqError(f"correlator: time tags not ascending: tag {bad} ({int(t[bad])}) follows "
                                  f"{int(t[bad - 1])}", code="bad_data")
        if end_tick is not None:
            end_tick = int(end_tick)
            last = int(t[-1]) if t.size else self._last_tick
            if last is not None and end_tick <= last:
                raise ExoacqError(f"correlator: end_tick {end_tick} is not after the last time tag {last}",
                                  code="bad_data")
        final = int(self._complete[0])
        if t.size:
            final = max(final, (int(t[-1]) - self.start_tick) // self._base)
        if end_tick is not None:
            final = max(final, (end_tick - self.start_tick) // self._base)
        _correlate(t, self.start_tick, self._base, 1.0 / self._base, final, self._block, self._dense_occupancy,
                   self._jmin, self._jmax, self._hist, self._head, self._sums, self._totals, self._complete,
                   self._pending)
        if t.size:
            if last_bin >= self._trace.size:
                grown = np.zeros(max(2 * self._trace.size, last_bin + 1), np.int64)
                grown[:self._trace.size] = self._trace
                self._trace = grown
            self._trace[first_bin:last_bin + 1] += counts
            self._last_tick = int(t[-1])
            self._end_tick = max(self._end_tick, self._last_tick + 1)
            self.photons += int(t.size)
        if end_tick is not None:
            self._closed_tick = max(self._closed_tick, end_tick)
            self._end_tick = max(self._end_tick, end_tick)

    # -------------------------------------------------------------- results

    @property
    def duration_s(self) -> float:
        """Time observed so far: to the last photon, or to ``end_tick`` when given."""
        return (self._end_tick - self.start_tick) * self.resolution_s

    @property
    def count_rate_hz(self) -> float:
        """Mean count rate so far (0 before any time has passed)."""
        duration = self.duration_s
        return self.photons / duration if duration > 0 else 0.0

    def _pair_sums(self):
        level, j = self._ch_level, self._ch_j
        complete = self._complete[level]
        products = complete - j
        tails = np.cumsum(self._hist[:, ::-1], axis=1)      # [s, j-1]: the last j complete bins
        heads = np.cumsum(self._head, axis=1)               # [s, j-1]: the first j bins
        total = self._totals[level]
        earlier = total - tails[level, j - 1]
        later = total - heads[level, j - 1]
        return self._sums[level, j], earlier, later, products

    @property
    def products(self) -> np.ndarray:
        """Per channel, the number of bin pairs M it averages so far (0: no estimate yet)."""
        return np.maximum(self._complete[self._ch_level] - self._ch_j, 0)

    def g2(self, normalization: str = "multipletau") -> np.ndarray:
        """Normalised intensity autocorrelation g2 at ``lag_s`` (NaN where no pair is complete yet).

        ``"multipletau"``: fluctuations about the run's mean (= multipletau normalize=True, + 1);
        ``"symmetric"``: Schätzel's symmetric normalisation M S / (A B)."""
        sums, earlier, later, products = (a.astype(float) for a in self._pair_sums())
        out = np.full(self.lag_s.size, np.nan)
        ok = products > 0
        if normalization == "multipletau":
            if self._complete[0] == 0 or self._totals[0] == 0:
                return out
            nbar = self._totals[0] / self._complete[0] * 2.0 ** self._ch_level[ok]
            m = products[ok]
            out[ok] = sums[ok] / (m * nbar * nbar) - (earlier[ok] + later[ok]) / (m * nbar) + 2.0
        elif normalization == "symmetric":
            ok &= (earlier > 0) & (later > 0)
            out[ok] = products[ok] * sums[ok] / (earlier[ok] * later[ok])
        else:
            raise ConfigError(f"correlator: normalization must be 'multipletau' or 'symmetric', "
                              f"not {normalization!r}")
        return out

    def g2_minus_1(self, normalization: str = "multipletau") -> np.ndarray:
        """g2 - 1 at ``lag_s`` (the Siegert form beta |g1|^2 for a Gaussian field)."""
        return self.g2(normalization) - 1.0

    def count_trace(self, bin_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Count rate over time: (bin centre time_s from the start, rate_hz).

        ``bin_s``: a whole multiple of ``trace_bin_s`` (default: ``trace_bin_s``). Complete bins,
        plus the last one when at least half of it has been observed (its rate over that part)."""
        k = 1 if bin_s is None else round(bin_s / self.trace_bin_s)
        if k < 1 or abs(k * self.trace_bin_s - (bin_s or self.trace_bin_s)) > 1e-6 * k * self.trace_bin_s:
            raise ConfigError(f"correlator: count trace bin {bin_s!r} s is not a whole multiple of "
                              f"trace_bin_s {self.trace_bin_s:g} s")
        width = k * self._trace_ticks
        observed = self._end_tick - self.start_tick
        n_full, rest = divmod(observed, width)
        n = n_full + (1 if 2 * rest >= width else 0)
        fine = np.zeros(n * k, np.int64)
        m = min(fine.size, self._trace.size)
        fine[:m] = self._trace[:m]
        counts = fine.reshape(n, k).sum(axis=1).astype(float)
        widths = np.full(n, float(width))
        if n > n_full:
            widths[-1] = rest
        time_s = (np.arange(n) * width + widths / 2) * self.resolution_s
        return time_s, counts / (widths * self.resolution_s)
