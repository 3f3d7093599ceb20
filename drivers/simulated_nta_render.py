"""Rendering and read-out kernels of the simulated NTA camera (exoacq.drivers.simulated_nta).

numba, cached on disk, GIL released (other threads run meanwhile): :func:`render_psf` draws each
particle's expected photoelectrons (a Gaussian PSF integrated over each pixel, along its blur track);
:func:`expose` reads the image out (Poisson shot noise, read noise, gain, offset, rounding,
clipping), exactly, with its own SplitMix64 uniforms; pixels without signal are drawn from the
inverse-CDF tables of :func:`inverse_cdf_table`. 1280 x 1024 with ~400 particles takes ~7 ms on
one core, 640 x 480 ~2 ms.
"""
from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

MIN_PHOTONS = 0.5  # particles expected to give fewer photoelectrons in a frame are not drawn
TAIL_E = 0.01  # a PSF patch reaches out to where the Gaussian tail falls below this, e/pixel
LUT_BITS = 16  # resolution of the inverse-CDF table of background pixel values
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31, _S48 = (np.uint64(v) for v in (11, 27, 30, 31, 64 - LUT_BITS))
_jit = numba.njit(cache=True, nogil=True)


@_jit
def _next(state):
    """SplitMix64 (Steele, Lea & Flood 2014): the next state and its 64 random bits."""
    state += _GOLDEN
    z = (state ^ (state >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return state, z ^ (z >> _S31)


@_jit
def _unit(bits):
    """A uniform on [0, 1): the top 53 of 64 random bits."""
    return np.float64(bits >> _S11) * 2.0 ** -53


@_jit
def _inverse_cdf(tables, bits):
    """Exact inverse-CDF draw, lo + #{cdf <= u}, u from ``bits``: the table entry of u's bin
    (its top LUT_BITS bits), or a binary search if a step of the CDF lies inside the bin."""
    table, straddle, cdf, lo = tables
    j = np.intp(bits >> _S48)
    return lo + np.searchsorted(cdf, _unit(bits), side="right") if straddle[j] else np.int64(table[j])


@_jit
def _poisson(state, mean):
    """Poisson(mean): inversion (sequential search) below 10, numba's PTRS (Hoermann 1993) above."""
    if mean >= 10.0:
        return state, np.int64(np.random.poisson(mean))
    state, bits = _next(state)
    u = _unit(bits)
    if u < 1.0 - mean:  # 1 - mean <= exp(-mean) = P(0): zero, no exp needed (a squeeze)
        return state, np.int64(0)
    k, p = 0, math.exp(-mean)
    f = p
    while u >= f and k < 200:  # k = 200 only if u lies beyond the float64 CDF (< 1e-16)
        k += 1
        p *= mean / k
        f += p
    return state, np.int64(k)


@_jit
def _pixel_masses(out, first, centre, sd, scale):
    """scale x the mass of a 1-D Gaussian (centre, sd; px) in pixels first, first + 1, ...:
    (erf(b) - erf(a)) / 2, a and b a pixel's edges in units of sd sqrt(2)."""
    inv = 1.0 / (math.sqrt(2.0) * sd)
    lo = math.erf((first - 0.5 - centre) * inv)
    for i in range(out.size):
        hi = math.erf((first + i + 0.5 - centre) * inv)
        out[i] = scale * max(0.5 * (hi - lo), 0.0)
        lo = hi


@_jit
def render_psf(image, xs, ys, sig, ph):
    """Add expected photoelectrons per pixel to ``image`` (float32): particle p at sub-step k
    gives ph[p, k] e through a Gaussian PSF (sd sig[p, k] px) at (xs, ys)[p, k], integrated
    over each pixel (row mass x column mass), in a square patch reaching nsig PSF sds past
    the blur track (the tail < TAIL_E e/px), cut at the edges; under MIN_PHOTONS e: none."""
    h, w = image.shape
    for p in range(ph.shape[0]):
        total = ph[p].sum()
        if total < MIN_PHOTONS:
            continue
        cx, cy = np.rint(xs[p].mean()), np.rint(ys[p].mean())
        peak = total / (2.0 * math.pi * sig[p].min() ** 2)
        nsig = min(max(math.sqrt(2.0 * math.log(max(peak / TAIL_E, 1.0))), 3.0), 7.0)
        reach = math.ceil(max(np.abs(xs[p] - cx).max(), np.abs(ys[p] - cy).max()) + nsig * sig[p].max())
        r0, r1 = max(int(cy) - reach, 0), min(int(cy) + reach, h - 1)
        c0, c1 = max(int(cx) - reach, 0), min(int(cx) + reach, w - 1)
        if r0 > r1 or c0 > c1:
            continue
        gy, gx = np.empty(r1 - r0 + 1, np.float32), np.empty(c1 - c0 + 1, np.float32)
        for k in range(ph.shape[1]):
            _pixel_masses(gy, r0, ys[p, k], sig[p, k], ph[p, k])
            _pixel_masses(gx, c0, xs[p, k], sig[p, k], 1.0)
            for r in range(gy.size):
                row, a = image[r0 + r, c0:c1 + 1], gy[r]
                for c in range(gx.size):
                    row[c] += a * gx[c]


@_jit
def expose(out, signal, seed, adu, electrons, offset, gain, read_noise, max_adu):
    """Read ``out`` (ADU) from ``signal`` (expected e/px, zeroed on the way), exactly:
    Poisson(s + b) = Poisson(s) + Poisson(b), b the stray light. With no signal electron
    (always if s = 0, else with probability exp(-s)) a pixel reads round(offset + gain
    (Poisson(b) + read noise)), drawn from ``adu`` (exact, clipped to 0..max_adu); else
    offset + gain (n + Poisson(b) (``electrons``) + read noise N(0, 1)), rounded, clipped.
    Uniforms: SplitMix64 from ``seed``; normal, PTRS: numba's generator (per thread), seeded."""
    np.random.seed(seed & 0xFFFFFFFF)
    state = np.uint64(seed)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            state, bits = _next(state)
            n = 0
            if signal[r, c] > 0.0:
                state, n = _poisson(state, np.float64(signal[r, c]))
                signal[r, c] = 0.0
            if n == 0:
                out[r, c] = _inverse_cdf(adu, bits)
            else:
                v = offset + gain * (n + _inverse_cdf(electrons, bits) + read_noise * np.random.standard_normal())
                out[r, c] = min(max(np.rint(v), 0.0), max_adu)


def inverse_cdf_table(cdf: np.ndarray, lo: int, dtype: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(table, straddle, cdf, lo) for ``_inverse_cdf``: per bin of u, lo + #{cdf <= bin start},
    and whether a CDF step falls inside the bin (then the kernel searches)."""
    cdf = np.minimum(np.maximum.accumulate(cdf), 1.0)
    cdf[-1] = 1.0
    grid = np.arange((1 << LUT_BITS) + 1) / (1 << LUT_BITS)
    first = np.searchsorted(cdf, grid[:-1], side="right")
    last = np.searchsorted(cdf, np.nextafter(grid[1:], 0.0), side="right")
    return (lo + first).astype(dtype), first != last, cdf, lo
