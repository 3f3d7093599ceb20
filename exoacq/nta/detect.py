"""Fast feature detection for NTA frames: trackpy.locate's algorithm, compiled and streamed.

``locate_fast`` is the Crocker-Grier method (Crocker & Grier 1996, J. Colloid
Interface Sci. 179:298) exactly as trackpy.locate implements it with
preprocess=True (trackpy: Allan et al., doi:10.5281/zenodo.1226458), so that
its feature table, and a ``minmass`` threshold, mean the same:

* bandpass: Gaussian blur (sigma ``noise_size``, truncated at 4 sigma, zero
  border) minus a boxcar of side ``smoothing_size`` (edge-replicated), clipped
  to 0 below ``threshold``. For integer frames trackpy's boxcar runs in the
  frame's integer type, so each of its two 1-D passes truncates (the
  background comes out ~0.9 ADU low); that is reproduced, as it adds ~0.9 ADU
  per mask pixel to every mass;
* candidates: pixels equal to the maximum of their square window of side
  int(2 separation / sqrt 2) (trackpy's grey dilation, same offsets) and
  above the 64th percentile of the non-zero bandpassed pixels, at least
  max(diameter // 2, separation // 2 - 1, smoothing_size // 2) from the edges;
* refinement: centroid in a disc of radius diameter // 2, the disc moved one
  pixel whenever the centroid is > 0.6 px off its centre, up to 10 times;
  mass, size (radius of gyration), ecc, signal (peak) of the bandpassed image
  and raw_mass of the frame in the final disc; then features with mass <=
  minmass are dropped, and the dimmer of two closer than ``separation``;
* ep: trackpy's static error from the mean and SD of the frame where no
  bandpassed pixel is non-zero within the disc radius (NaN if there is none).

Differences, all small: computed in float32 with numba-compiled streaming
kernels (row by row, in cache) instead of float64 scipy filters; trackpy then
quantises the bandpassed image to the frame's integer type (to 8 bits for
float frames), this does not (for uint16 frames that is < 1e-4 of the mass;
for uint8 or float frames trackpy's masses are lower by up to half a
quantisation step per disc pixel); the percentile comes from every 8th row;
index is 0..n-1 (trackpy keeps the candidates' numbers).

Measured (``exoacq.nta.locate_bench``, simulated 100 nm particles, 1280 x 1024
uint16, ~150 in focus, one core of a 2-core VM): see the README/report; about
2-3 ms per frame against ~95 ms for trackpy 0.7 with numba, same features,
localisation RMS and mass as trackpy (median mass ratio 1.000).
"""
from __future__ import annotations

import math

import numba
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

COLUMNS = ["y", "x", "mass", "size", "ecc", "signal", "raw_mass", "ep"]


_JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "nsz", "reassoc"})


@numba.njit(**_JIT)
def _bandpass(raw, gk, box, trunc, thr, b, cols, out):
    """Bandpass ``raw`` into ``out`` row by row (a ring of rows in cache). Also returns the
    b x b block maxima (value, row, col) and the count, sum and sum of squares of ``raw``
    where no bandpassed pixel is non-zero within the disc whose column half-heights are
    ``cols`` (trackpy's measure_noise), from per-column runs of zeros."""
    H, W = raw.shape
    rg, rb, r = len(gk) // 2, box // 2, len(cols) // 2
    inv, half = np.float32(1.0 / box), np.float32(0.5 / box)
    R = max(rg, rb + 1)
    ring = np.zeros((2 * R + 1, W), np.float32)
    vgp, vbp = np.zeros(W + 2 * rg, np.float32), np.zeros(W + 2 * rb, np.float32)
    vg, vb = vgp[rg:rg + W], vbp[rb:rb + W]
    s1, s2 = np.empty(W + 2 * rb, np.float32), np.empty(W + 2 * rb, np.float32)
    vs, acc, lp, zero = np.zeros(W, np.float32), np.empty(W, np.float32), np.empty(W, np.float32), np.zeros(W, np.float32)
    bmax = np.zeros(((H + b - 1) // b, (W + b - 1) // b), np.float32)
    barg = np.zeros(bmax.shape + (2,), np.int64)
    cmax, carg = np.zeros(W, np.float32), np.zeros(W, np.int64)
    runs = np.full((r + 1, W), 2 * r + 1, np.int32)  # zero runs ending at the last r + 1 rows
    ok = np.empty(W, np.bool_)
    stats = np.zeros(3)
    for j in range(-rb, rb + 1):
        for x in range(W):
            vs[x] += np.float32(raw[min(max(j, 0), H - 1), x])
    for j in range(min(R, H)):
        for x in range(W):
            ring[j % (2 * R + 1), x] = np.float32(raw[j, x])
    for y in range(H + r):
        if y < H:
            if y + R < H:
                dst, src = ring[(y + R) % (2 * R + 1)], raw[y + R]
                for x in range(W):
                    dst[x] = np.float32(src[x])
            if y > 0:  # vertical boxcar: running column sums, edge rows repeated
                a, c = ring[min(y + rb, H - 1) % (2 * R + 1)], ring[max(y - rb - 1, 0) % (2 * R + 1)]
                for x in range(W):
                    vs[x] += a[x] - c[x]
            c = ring[y % (2 * R + 1)]  # vertical Gaussian, zero outside
            for x in range(W):
                vg[x] = gk[rg] * c[x]
            for k in range(1, rg + 1):
                a = ring[(y - k) % (2 * R + 1)] if y >= k else zero
                c = ring[(y + k) % (2 * R + 1)] if y + k < H else zero
                for x in range(W):
                    vg[x] += gk[rg + k] * (a[x] + c[x])
            for x in range(W):  # integer frames: trackpy's boxcar pass truncates
                vb[x] = np.float32(np.int32(vs[x] * inv + half)) if trunc else vs[x] * inv
            vbp[:rb], vbp[rb + W:] = vb[0], vb[W - 1]
            for x in range(W):  # horizontal Gaussian
                lp[x] = gk[rg] * vg[x]
            for k in range(rg):
                a, c = vgp[k:k + W], vgp[2 * rg - k:2 * rg - k + W]
                for x in range(W):
                    lp[x] += gk[k] * (a[x] + c[x])
            acc[:], n, p, off, cur, nxt = 0.0, box, 1, 0, vbp, s1  # horizontal boxcar by doubling
            while True:
                if n & 1:
                    a = cur[off:off + W]
                    for x in range(W):
                        acc[x] += a[x]
                    off += p
                n >>= 1
                if n == 0:
                    break
                m = len(vbp) - 2 * p + 1
                a, c, d = cur[:m], cur[p:p + m], nxt[:m]
                for x in range(m):
                    d[x] = a[x] + c[x]
                cur, nxt, p = nxt, (s2 if nxt is s1 else s1), 2 * p
            o, zr = out[y], runs[y % (r + 1)]
            pr = runs[(y - 1) % (r + 1)]
            for x in range(W):
                v = lp[x] - (np.float32(np.int32(acc[x] * inv + half)) if trunc else acc[x] * inv)
                v = v if v >= thr else np.float32(0.0)
                o[x] = v
                up = v > cmax[x]
                cmax[x], carg[x] = (v if up else cmax[x]), (y if up else carg[x])
                zr[x] = min(pr[x] + 1, 2 * r + 1) if v == 0 else 0
            if y % b == b - 1 or y == H - 1:
                for x in range(W):
                    if cmax[x] > bmax[y // b, x // b]:
                        bmax[y // b, x // b], barg[y // b, x // b, 0], barg[y // b, x // b, 1] = cmax[x], carg[x], x
                    cmax[x] = 0.0
        yc = y - r  # background test of row yc: column x + dx zero from yc - h to yc + h
        if yc < 0:
            continue
        ok[:] = True
        for i in range(2 * r + 1):
            dx, h = i - r, cols[i]
            last = min(yc + h, H - 1)
            need, zr = last - (yc - h) + 1, runs[last % (r + 1)]
            a, q = zr[max(dx, 0):W + min(dx, 0)], ok[max(-dx, 0):W - max(dx, 0)]
            for x in range(len(q)):
                q[x] = q[x] and a[x] >= need
        for x in range(W):
            if ok[x]:
                v = np.float64(raw[yc, x])
                stats[0] += 1.0
                stats[1] += v
                stats[2] += v * v
    return bmax, barg, stats


@numba.njit(**_JIT)
def _maxima(bp, bmax, barg, b, lo, hi, thr, margin):
    """Block maxima that are the maximum of their window [p - lo, p + hi] (trackpy's grey
    dilation, ties kept); a block lies inside any window of its pixels, so only its maximum
    can be one, and the window reaches into the 8 neighbouring blocks only."""
    H, W = bp.shape
    nby, nbx = bmax.shape
    found = np.empty((nby * nbx, 2), np.int64)
    n = 0
    for i in range(nby):
        for j in range(nbx):
            v, py, px = bmax[i, j], barg[i, j, 0], barg[i, j, 1]
            if v <= thr or min(py, px) < margin or py > H - 1 - margin or px > W - 1 - margin:
                continue
            y0, y1, x0, x1 = max(py - lo, 0), min(py + hi, H - 1), max(px - lo, 0), min(px + hi, W - 1)
            ok = True
            for ii in range(max(i - 1, 0), min(i + 2, nby)):
                for jj in range(max(j - 1, 0), min(j + 2, nbx)):
                    if not ok or bmax[ii, jj] <= v:
                        continue
                    qy, qx = barg[ii, jj, 0], barg[ii, jj, 1]
                    if y0 <= qy <= y1 and x0 <= qx <= x1:
                        ok = False
                        continue
                    for yy in range(max(y0, ii * b), min(y1, ii * b + b - 1) + 1):
                        for xx in range(max(x0, jj * b), min(x1, jj * b + b - 1) + 1):
                            ok = ok and bp[yy, xx] <= v
            if ok:
                found[n, 0], found[n, 1] = py, px
                n += 1
    return found[:n]


@numba.njit(**_JIT)
def _refine(bp, coords, r, spans, max_iter, shift):
    """trackpy's refine_com: centroid in the disc (rows r + dy, columns spans[dy]), the disc
    moved a pixel while the centroid is > shift off; y, x, mass and the final disc origin."""
    H, W = bp.shape
    res, origin = np.empty((len(coords), 3)), np.empty((len(coords), 2), np.int64)
    for f in range(len(coords)):
        cy, cx = coords[f, 0], coords[f, 1]
        for _ in range(max_iter):
            sy, sx, mass, oy, ox = cy - r, cx - r, 0.0, 0.0, 0.0
            for i in range(2 * r + 1):
                row = bp[sy + i, sx + spans[i, 0]:sx + spans[i, 1] + 1]
                t, tx = np.float32(0.0), np.float32(0.0)
                for k in range(len(row)):
                    t += row[k]
                    tx += row[k] * np.float32(k)
                mass += t
                oy += t * i
                ox += tx + t * spans[i, 0]
            oy, ox = oy / mass - r, ox / mass - r
            res[f, 0], res[f, 1], res[f, 2], origin[f, 0], origin[f, 1] = oy + cy, ox + cx, mass, sy, sx
            if abs(oy) < shift and abs(ox) < shift:
                break
            cy += 1 if oy > shift else (-1 if oy < -shift else 0)
            cx += 1 if ox > shift else (-1 if ox < -shift else 0)
            cy, cx = min(max(cy, r), H - 1 - r), min(max(cx, r), W - 1 - r)
    return res, origin


@numba.njit(**_JIT)
def _characterize(raw, bp, origin, mass, mask_y, mask_x, r2, cmask, smask):
    """size (radius of gyration), ecc, signal and raw_mass in each final disc, as trackpy."""
    out = np.empty((len(origin), 4))
    for f in range(len(origin)):
        sy, sx = origin[f, 0], origin[f, 1]
        rg = e1 = e2 = sig = rm = 0.0
        for i in range(len(mask_y)):
            px = np.float64(bp[sy + mask_y[i], sx + mask_x[i]])
            rg += r2[i] * px
            e1 += cmask[i] * px
            e2 += smask[i] * px
            sig = max(sig, px)
            rm += np.float64(raw[sy + mask_y[i], sx + mask_x[i]])
        centre = bp[sy + mask_y[len(mask_y) // 2], sx + mask_x[len(mask_y) // 2]]
        out[f, 0], out[f, 1] = math.sqrt(rg / mass[f]), math.sqrt(e1 ** 2 + e2 ** 2) / (mass[f] - centre + 1e-6)
        out[f, 2], out[f, 3] = sig, rm
    return out


def locate_fast(frame: np.ndarray, diameter: int, minmass: float = 0.0, *, invert: bool = False,
                separation: float | None = None, noise_size: float = 1.0, smoothing_size: int | None = None,
                threshold: float | None = None) -> pd.DataFrame:
    """Features of one 2-D frame, as ``trackpy.locate(frame, diameter, minmass, ...)`` returns them."""
    raw = np.ascontiguousarray(frame)
    if raw.ndim != 2:
        raise ValueError(f"frame must be 2-D, got shape {raw.shape}")
    is_int = np.issubdtype(raw.dtype, np.integer)
    diameter, box = int(diameter), int(diameter if smoothing_size is None else smoothing_size)
    if diameter % 2 == 0 or box % 2 == 0:
        raise ValueError("diameter and smoothing_size must be odd integers")
    if not 0 <= noise_size < box:
        raise ValueError("noise_size must be >= 0 and smaller than smoothing_size")
    r = diameter // 2
    sep = float(diameter + 1 if separation is None else separation)
    thr = (1.0 if is_int else 1 / 255.0) if threshold is None else float(threshold)
    if invert:
        raw = raw ^ np.iinfo(raw.dtype).max if is_int else 1.0 - raw
    if not is_int and raw.dtype != np.float32:
        raw = raw.astype(np.float32)
    lw = int(4 * noise_size + 0.5)
    gk = np.exp(np.arange(-lw, lw + 1) ** 2 / (-2.0 * noise_size ** 2)) if noise_size > 0 else np.ones(1)
    size = int(2 * sep / math.sqrt(2))  # trackpy's dilation window: [p - lo, p + hi]
    lo, hi = (size - 1) // 2, size // 2
    b = max(min(lo, hi) + 1, 1)
    margin = max(r, int(sep // 2 - 1), box // 2)
    mask = _masks(r)
    bp = np.empty(raw.shape, np.float32)
    bmax, barg, (n_bg, s_bg, s2_bg) = _bandpass(raw, (gk / gk.sum()).astype(np.float32), box, is_int,
                                                np.float32(thr), b, mask["cols"], bp)
    sample = bp[::max(1, raw.shape[0] // 32)]  # the percentile from about 32 rows
    sample = sample[sample > 0]
    if sample.size == 0 or min(raw.shape) <= 2 * margin:
        return pd.DataFrame({c: pd.Series(dtype=np.float64) for c in COLUMNS})
    coords = _maxima(bp, bmax, barg, b, lo, hi, np.float32(np.percentile(sample, 64)), margin)
    res, origin = _refine(bp, coords, r, mask["spans"], 10, 0.6)
    keep = res[:, 2] > minmass
    res, origin = res[keep], origin[keep]
    if len(res) > 1:  # the dimmer of two features closer than separation (trackpy's where_close)
        scaled = res[:, :2] / sep
        pairs = cKDTree(scaled).query_pairs(1 - 1e-7, output_type="ndarray")
        if len(pairs):
            i, j = pairs[:, 0], pairs[:, 1]
            tie = res[i, 2] == res[j, 2]
            drop = np.where(res[i, 2] > res[j, 2], j, i)
            drop[tie] = np.where(scaled[i[tie]].sum(1) > scaled[j[tie]].sum(1), j[tie], i[tie])
            res, origin = np.delete(res, np.unique(drop), axis=0), np.delete(origin, np.unique(drop), axis=0)
    extra = _characterize(raw, bp, origin, res[:, 2], *mask["disc"])
    black = s_bg / n_bg if n_bg else np.nan
    noise = math.sqrt(max(s2_bg / n_bg - black ** 2, 0.0)) if n_bg > 1 else np.nan
    ep = noise / (extra[:, 3] - mask["npx"] * black) * noise_size * mask["moment"]  # trackpy's static error
    return pd.DataFrame(np.column_stack([res, extra, ep]), columns=COLUMNS)


_MASKS: dict[int, dict] = {}


def _masks(r: int) -> dict:
    """trackpy's disc of radius r: its pixels in row-major order with r^2, cos and sin of 2 theta;
    column spans per row; half-heights per column; pixel count; sqrt(sum of x^2)."""
    if r not in _MASKS:
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        inside = (yy / max(r, 1)) ** 2 + (xx / max(r, 1)) ** 2 <= 1
        theta = np.arctan2(yy, xx)[inside]
        spans = np.array([[np.flatnonzero(row).min(), np.flatnonzero(row).max()] for row in inside], np.int64)
        _MASKS[r] = {"disc": (*(np.asarray(a[inside] + r, np.int64) for a in (yy, xx)),
                              (yy ** 2 + xx ** 2)[inside].astype(np.float64), np.cos(2 * theta), np.sin(2 * theta)),
                     "spans": spans, "cols": (inside.sum(axis=0) // 2).astype(np.int64), "npx": int(inside.sum()),
                     "moment": math.sqrt(float((xx[inside] ** 2).sum()))}
    return _MASKS[r]
