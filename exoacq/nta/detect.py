"""Fast feature detection for NTA frames: trackpy.locate's algorithm, compiled and streamed.

``locate_fast`` is the Crocker-Grier method (Crocker & Grier 1996, J. Colloid Interface
Sci. 179:298) as trackpy.locate implements it with preprocess=True (trackpy, Allan et al.,
doi:10.5281/zenodo.1226458), so its feature table, and a ``minmass``, mean the same:
bandpass = Gaussian blur (sigma ``noise_size``, 4-sigma kernel, zero border) minus a boxcar
of side ``smoothing_size`` (edges repeated; for integer frames both 1-D passes truncate, as
trackpy's run in the frame's type: ~0.9 ADU more mass per disc pixel), 0 below
``threshold``; candidates = pixels equal to the maximum of their window of side
int(2 separation / sqrt 2) (trackpy's grey dilation), above the 64th percentile of the
non-zero bandpassed pixels, >= max(diameter // 2, separation // 2 - 1, smoothing_size // 2)
from the edges; refinement = centroid in a disc of radius diameter // 2, moved by a pixel
while it is > 0.6 px off (10 times at most); mass, size (radius of gyration), ecc, signal
(peak) of the bandpassed image and raw_mass of the frame in that disc; mass <= minmass
dropped, then the dimmer of two features closer than separation.

Differences, all small: float32 numba kernels streaming the frame through a ring of rows
in cache (trackpy: float64 scipy filters); no quantisation of the bandpassed image to the
frame's integer type (< 1e-4 of the mass for uint16; trackpy quantises uint8 and float
frames to 8 bits, lowering its masses by up to half a step per disc pixel); the percentile
from 16 evenly spaced rows (it only sorts out noise maxima); index 0..n-1; ``ep`` is NaN
(trackpy's static error needs a frame-wide dilation, ~0.3 ms; see trackpy.uncertainty).

Measured (exoacq.nta.locate_bench: simulated camera, 100 nm particles, one core of a busy
2-core VM, trackpy 0.7 numba engine): 1280 x 1024 uint16, ~150 in focus: 4.5 ms per frame
(3.9 ms at best; bandpass 2.1, maxima 0.5, refinement of ~5000 candidates 0.65) against
101 ms, 23x; 640 x 480: 1.2 ms against 25 ms, 21x. The features are trackpy's (positions
within 2e-4 px, mass ratio 1.00005, at most 1.0004), and so is the RMS error against the
simulator's truth (0.19-0.24 px, motion blur included).
"""
from __future__ import annotations

import functools
import math
import threading

import numba
import numpy as np
import pandas as pd

#: trackpy.locate's columns, and ``raw_max``: the brightest raw pixel in the disc (inverted with ``invert``), to
#: recognise saturated (clipped) features.
COLUMNS = ["y", "x", "mass", "size", "ecc", "signal", "raw_mass", "ep", "raw_max"]
_jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "nsz", "reassoc"})


@_jit
def _box(vb, vs, new, src, add, sub, inv, half, trunc):
    """Frame row src -> new (float32); boxcar column sums vs += add - sub, their means vb
    (truncated for integer frames, as trackpy's boxcar in the frame's own type)."""
    for x in range(len(new)):
        new[x] = np.float32(src[x])
    for x in range(len(vs)):
        vs[x] = s = vs[x] + add[x] - sub[x]
        vb[x] = np.float32(np.int32(s * inv + half)) if trunc else s * inv


@_jit
def _sym(dst, g, m, u1, d1, u2, d2, u3, d3, u4, d4):
    """dst = sum of the taps 0-4 of a symmetric filter g: m, then pairs (u_k, d_k)."""
    for x in range(len(dst)):
        dst[x] = g[0] * m[x] + g[1] * (u1[x] + d1[x]) + g[2] * (u2[x] + d2[x]) + g[3] * (u3[x] + d3[x]) \
            + g[4] * (u4[x] + d4[x])


@_jit
def _pair(dst, w, u, d):
    for x in range(len(dst)):
        dst[x] += w * (u[x] + d[x])


@_jit
def _add(dst, a, c):
    for x in range(len(dst)):
        dst[x] = a[x] + c[x]


@_jit
def _final(o, lp, t, inv, half, thr, trunc, cmax, carg, y):
    """o = lp - boxcar (sum of the six rows t / box), 0 below thr; running column maxima, rows."""
    t0, t1, t2, t3, t4, t5 = t
    for x in range(len(o)):
        s = ((t0[x] + t1[x]) + (t2[x] + t3[x]) + (t4[x] + t5[x])) * inv + half
        v = lp[x] - (np.float32(np.int32(s)) if trunc else s)
        o[x] = v = v if v >= thr else np.float32(0.0)
        up = v > cmax[x]
        cmax[x], carg[x] = (v if up else cmax[x]), (y if up else carg[x])


@_jit
def _bandpass(raw, gk, box, trunc, thr, b, out):
    """Bandpass ``raw`` into ``out`` row by row, through a ring of rows kept in cache, and the
    maxima of its b x b blocks with their positions. Short loops over separately allocated
    rows, so that LLVM vectorises them (rows of one 2-D array for vs, lp, cmax: 3x slower)."""
    H, W = raw.shape
    rg, rb = len(gk) // 2, box // 2
    g = np.zeros(max(rg + 1, 5), np.float32)
    g[:rg + 1] = gk[rg:]
    inv, half = np.float32(1.0 / box), np.float32(0.5 / box) if trunc else np.float32(0.0)
    R = max(rg, rb + 1)
    NR, L, pg = 2 * R + 1, W + 2 * rb, max(rg, 4)
    ring = np.zeros((NR + 2, W), np.float32)  # frame rows y - R .. y + R; NR: zeros; NR + 1: scratch
    top = 0  # the boxcar along a row: box >> top sums of 2**top values, one per lower bit; <= 6 terms
    while (box >> top) + sum([box >> l & 1 for l in range(top)]) > 6:
        top += 1
    tl, to, n, off = np.full(6, -1), np.zeros(6, np.int64), 0, 0  # the terms' level and offset
    for l in [top] * (box >> top) + [l for l in range(top - 1, -1, -1) if box >> l & 1]:
        tl[n], to[n], n, off = l, off, n + 1, off + (1 << l)
    lev = np.zeros((top + 1, L), np.float32)  # lev[l, x]: sum of 2**l boxcar column means from x - rb
    vgp, vs, lp, zero, cmax = np.zeros(W + 2 * pg, np.float32), np.zeros(W, np.float32), np.zeros(W, np.float32), \
        np.zeros(W, np.float32), np.zeros(W, np.float32)
    carg = np.zeros(W, np.int32)
    vg, vb = vgp[pg:pg + W], lev[0, rb:rb + W]
    hv = (vg, vgp[pg - 1:pg - 1 + W], vgp[pg + 1:pg + 1 + W], vgp[pg - 2:pg - 2 + W], vgp[pg + 2:pg + 2 + W],
          vgp[pg - 3:pg - 3 + W], vgp[pg + 3:pg + 3 + W], vgp[pg - 4:pg - 4 + W], vgp[pg + 4:pg + 4 + W])

    def term(i):
        return lev[tl[i], to[i]:to[i] + W] if tl[i] >= 0 else zero
    terms = (term(0), term(1), term(2), term(3), term(4), term(5))
    bmax = np.zeros(((H + b - 1) // b, (W + b - 1) // b), np.float32)
    bary, barx = np.zeros(bmax.shape, np.int32), np.zeros(bmax.shape, np.int32)
    for j in range(-rb - 1, max(rb, R)):  # column sums of rows -rb - 1 .. rb - 1 (edges repeated); ring
        for x in range(W):
            vs[x] += np.float32(raw[min(max(j, 0), H - 1), x]) if j < rb else 0.0
            ring[j % NR, x] = np.float32(raw[j, x]) if 0 <= j < min(R, H) else ring[j % NR, x]
    for y in range(H):
        def row(k):
            return ring[(y + k) % NR] if 0 <= y + k < H else ring[NR]

        _box(vb, vs, ring[(y + R) % NR] if y + R < H else ring[NR + 1], raw[min(y + R, H - 1)],
             ring[min(y + rb, H - 1) % NR], ring[max(y - rb - 1, 0) % NR], inv, half, trunc)
        lev[0, :rb], lev[0, rb + W:] = vb[0], vb[W - 1]
        _sym(vg, g, row(0), row(-1), row(1), row(-2), row(2), row(-3), row(3), row(-4), row(4))  # Gaussian
        for k in range(5, rg + 1):
            _pair(vg, g[k], row(-k), row(k))
        _sym(lp, g, *hv)
        for k in range(5, rg + 1):
            _pair(lp, g[k], vgp[pg - k:pg - k + W], vgp[pg + k:pg + k + W])
        for l in range(1, top + 1):
            p = 1 << (l - 1)
            _add(lev[l, :L - 2 * p + 1], lev[l - 1, :L - 2 * p + 1], lev[l - 1, p:L - p + 1])
        _final(out[y], lp, terms, inv, half, thr, trunc, cmax, carg, np.int32(y))
        if y % b == b - 1 or y == H - 1:  # block maxima, first position
            for bx in range(bmax.shape[1]):
                v, at = np.float32(0.0), bx * b
                for x in range(bx * b, min(W, bx * b + b)):
                    v, at = (cmax[x], x) if cmax[x] > v else (v, at)
                bmax[y // b, bx], bary[y // b, bx], barx[y // b, bx] = v, carg[at] if v > 0 else y, at
            cmax[:] = 0.0
    return bmax, bary, barx


@_jit
def _none_above(bp, y0, y1, x0, x1, v):
    for yy in range(y0, y1 + 1):
        for xx in range(x0, x1 + 1):
            if bp[yy, xx] > v:
                return False
    return True


@_jit
def _maxima(bp, bmax, bary, barx, b, lo, hi, thr, margin):
    """Pixels equal to the maximum of their window [p - lo, p + hi] (trackpy's grey dilation,
    ties kept). A block lies in the window of each of its pixels, so only its maximum can be
    one, and the window reaches into the 8 neighbouring blocks only: a brighter maximum of
    one of them in the window rejects it, one outside calls for a look at the pixels."""
    H, W = bp.shape
    nby, nbx = bmax.shape
    rej, scan = np.zeros((nby, nbx), np.int32), np.zeros((nby, nbx), np.int32)
    for di in range(-1, 2):
        for dj in range(-1, 2):
            j0, j1 = max(0, -dj), nbx - max(0, dj)
            for i in range(max(0, -di), nby - max(0, di)):
                w, qy, qx = bmax[i + di, j0 + dj:j1 + dj], bary[i + di, j0 + dj:j1 + dj], barx[i + di, j0 + dj:j1 + dj]
                v, py, px, rj, sc = bmax[i, j0:j1], bary[i, j0:j1], barx[i, j0:j1], rej[i, j0:j1], scan[i, j0:j1]
                for j in range(j1 - j0):
                    dy, dx = qy[j] - py[j], qx[j] - px[j]
                    inside = (dy >= -lo) & (dy <= hi) & (dx >= -lo) & (dx <= hi)
                    rj[j] |= np.int32((w[j] > v[j]) & inside)
                    sc[j] |= np.int32((w[j] > v[j]) & ~inside)
    found, n = np.empty((nby * nbx, 2), np.int64), 0
    for i in range(nby):
        for j in range(nbx):
            v, py, px = bmax[i, j], bary[i, j], barx[i, j]
            if rej[i, j] or v <= thr or min(py, px) < margin or py > H - 1 - margin or px > W - 1 - margin:
                continue
            y0, y1, x0, x1 = max(py - lo, 0), min(py + hi, H - 1), max(px - lo, 0), min(px + hi, W - 1)
            ok = True
            for ii in range(max(i - 1, 0), min(i + 2, nby) if scan[i, j] else 0):
                for jj in range(max(j - 1, 0), min(j + 2, nbx)):
                    if ok and bmax[ii, jj] > v:
                        ok = _none_above(bp, max(y0, ii * b), min(y1, ii * b + b - 1), max(x0, jj * b),
                                         min(x1, jj * b + b - 1), v)
            if ok:
                found[n, 0], found[n, 1], n = py, px, n + 1
    return found[:n]


@_jit
def _refine(bp, coords, r, spans, max_iter, shift):
    """trackpy's refine_com: the centroid in the disc (its row i spans columns spans[i]), the
    disc moved by a pixel while that is > shift off; y, x, mass and the disc's corner."""
    H, W = bp.shape
    res, corner = np.empty((len(coords), 3)), np.empty((len(coords), 2), np.int64)
    for f in range(len(coords)):
        cy, cx = coords[f, 0], coords[f, 1]
        for _ in range(max_iter):
            sy, sx, mass, oy, ox = cy - r, cx - r, 0.0, 0.0, 0.0
            for i in range(2 * r + 1):
                row, t, tx = bp[sy + i, sx + spans[i, 0]:sx + spans[i, 1] + 1], np.float32(0.0), np.float32(0.0)
                for k in range(len(row)):
                    t, tx = t + row[k], tx + row[k] * np.float32(k)
                mass, oy, ox = mass + t, oy + t * i, ox + tx + t * spans[i, 0]
            oy, ox = oy / mass - r, ox / mass - r
            res[f, 0], res[f, 1], res[f, 2], corner[f, 0], corner[f, 1] = oy + cy, ox + cx, mass, sy, sx
            if abs(oy) < shift and abs(ox) < shift:
                break
            cy = min(max(cy + (1 if oy > shift else (-1 if oy < -shift else 0)), r), H - 1 - r)
            cx = min(max(cx + (1 if ox > shift else (-1 if ox < -shift else 0)), r), W - 1 - r)
    return res, corner


@_jit
def _far(res, sep):
    """Drops the dimmer of two features closer than sep (trackpy's where_close: on equal mass
    the one with the smaller y + x); pairs from a sweep in y."""
    keep, order = np.ones(len(res), np.bool_), np.argsort(res[:, 0])
    for a in range(len(order)):
        for c in range(a + 1, len(order)):
            i, j = order[a], order[c]
            if res[j, 0] - res[i, 0] >= sep:
                break
            if (res[j, 0] - res[i, 0]) ** 2 + (res[j, 1] - res[i, 1]) ** 2 < (sep * (1 - 1e-7)) ** 2:
                lower = res[i, 2] < res[j, 2] or (res[i, 2] == res[j, 2] and res[i, 0] + res[i, 1] <= res[j, 0] + res[j, 1])
                keep[i if lower else j] = False
    return keep


@_jit
def _characterize(raw, bp, corner, mass, mask_y, mask_x, r2, cmask, smask):
    """size (radius of gyration), ecc, signal and raw_mass in each final disc, as trackpy; and raw_max."""
    out = np.empty((len(corner), 5))
    for f in range(len(corner)):
        rg = e1 = e2 = sig = rm = rmax = 0.0
        for i in range(len(mask_y)):
            px = np.float64(bp[corner[f, 0] + mask_y[i], corner[f, 1] + mask_x[i]])
            rg, e1, e2, sig = rg + r2[i] * px, e1 + cmask[i] * px, e2 + smask[i] * px, max(sig, px)
            value = np.float64(raw[corner[f, 0] + mask_y[i], corner[f, 1] + mask_x[i]])
            rm, rmax = rm + value, max(rmax, value)
        centre = bp[corner[f, 0] + mask_y[len(mask_y) // 2], corner[f, 1] + mask_x[len(mask_y) // 2]]
        out[f] = math.sqrt(rg / mass[f]), math.sqrt(e1 ** 2 + e2 ** 2) / (mass[f] - centre + 1e-6), sig, rm, rmax
    return out


def locate_fast(frame: np.ndarray, diameter: int, minmass: float = 0.0, *, invert: bool = False,
                separation: float | None = None, noise_size: float = 1.0, smoothing_size: int | None = None,
                threshold: float | None = None) -> pd.DataFrame:
    """Features of one 2-D frame (uint8/16, other integers, float), as ``trackpy.locate(frame,
    diameter, minmass, ...)`` finds them: columns y, x (pixel centres at integers), mass, size,
    ecc, signal, raw_mass, ep (NaN), raw_max, float64. ``invert``: dark particles on a light background."""
    raw = np.ascontiguousarray(frame)
    is_int, box = np.issubdtype(raw.dtype, np.integer), int(diameter if smoothing_size is None else smoothing_size)
    if raw.ndim != 2 or int(diameter) % 2 == 0 or box % 2 == 0 or diameter < 1 or not 0 <= noise_size < box:
        raise ValueError("need a 2-D frame, odd diameter and smoothing_size, 0 <= noise_size < smoothing_size")
    r, sep = int(diameter) // 2, float(int(diameter) + 1 if separation is None else separation)
    thr = (1.0 if is_int else 1 / 255.0) if threshold is None else float(threshold)
    if invert:
        raw = raw ^ np.iinfo(raw.dtype).max if is_int else 1.0 - raw
    if raw.dtype != np.uint16:  # compiled for uint16 and float32 (exact for integers below 2**24)
        raw = raw.astype(np.float32, copy=False)
    raw = raw.view()
    raw.flags.writeable = False  # one compiled variant for frames from np.frombuffer and the rest
    lw = int(4 * noise_size + 0.5)
    gk = np.exp(np.arange(-lw, lw + 1) ** 2 / (-2.0 * noise_size ** 2)) if noise_size > 0 else np.ones(1)
    size = int(2 * sep / math.sqrt(2))  # trackpy's dilation window [p - lo, p + hi]; blocks of b
    lo, hi = (size - 1) // 2, size // 2
    b, margin, mask = max(min(lo, hi) + 1, 1), max(r, int(sep // 2 - 1), box // 2), _masks(r)
    bp = getattr(_SCRATCH, "bp", None)
    if bp is None or bp.shape != raw.shape:  # kept: a fresh 5 MB array costs page faults every frame
        bp = _SCRATCH.bp = np.empty(raw.shape, np.float32)
    bmax, bary, barx = _bandpass(raw, (gk / gk.sum()).astype(np.float32), box, is_int, np.float32(thr), b, bp)
    sample = bp[::max(1, raw.shape[0] // 16)]
    sample = sample[sample > 0]
    if sample.size == 0 or min(raw.shape) <= 2 * margin:
        return pd.DataFrame({c: pd.Series(dtype=np.float64) for c in COLUMNS})
    k = 0.64 * (sample.size - 1)  # the 64th percentile, interpolated as numpy's
    i = min(int(k) + 1, sample.size - 1)
    part = np.partition(sample, [int(k), i])
    coords = _maxima(bp, bmax, bary, barx, b, lo, hi, part[int(k)] + (part[i] - part[int(k)]) * (k - int(k)), margin)
    res, corner = _refine(bp, coords, r, mask["spans"], 10, 0.6)
    keep = np.flatnonzero(res[:, 2] > minmass)
    keep = keep[_far(res[keep], sep)]
    res, corner = res[keep], corner[keep]
    extra = _characterize(raw, bp, corner, res[:, 2], *mask["disc"])
    return pd.DataFrame(np.column_stack([res, extra[:, :4], np.full(len(res), np.nan), extra[:, 4]]), columns=COLUMNS)


_SCRATCH = threading.local()


@functools.lru_cache
def _masks(r: int) -> dict:
    """trackpy's disc of radius r: its pixels (row-major) with r^2, cos and sin of 2 theta, and
    the column span of each of its rows."""
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    inside = (yy / max(r, 1)) ** 2 + (xx / max(r, 1)) ** 2 <= 1
    theta = np.arctan2(yy, xx)[inside]
    return {"disc": (*(np.asarray(a[inside] + r, np.int64) for a in (yy, xx)),
                     (yy ** 2 + xx ** 2)[inside].astype(np.float64), np.cos(2 * theta), np.sin(2 * theta)),
            "spans": np.array([[np.flatnonzero(q).min(), np.flatnonzero(q).max()] for q in inside])}
