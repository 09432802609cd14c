"""Numba kernels of the bilateral grid (Paris & Durand 2006; Chen, Paris & Durand 2007).

Layout: grid coordinates ``g (n, d)`` float64 (positions / spacing, shifted to start at 0), a
dense grid stored flat as ``(cells, c + 1)`` in C order over ``dims`` (last axis fastest), values
``(n, c + 1)`` with the homogeneous weight last. ``splat`` scatters each value into the 2^d
corners of its cell with multilinear weights (serial, point order), ``blur_axis`` convolves one
axis with symmetric taps and zero boundary (parallel over cells), ``slice_normalise`` gathers
multilinearly and divides by the homogeneous channel (parallel over points).
"""

import numpy as np
from numba import njit, prange

from ._kernels_lattice import normalise_row


@njit(inline="always")
def _corner(g, t, corner, dims, strides):  # pragma: no cover - compiled
    """Multilinear weight and flat cell index of one of point t's 2^d surrounding grid corners
    (bit k of ``corner`` selects the upper neighbour along axis k)."""
    w = 1.0
    idx = 0
    for k in range(g.shape[1]):
        b = np.int64(np.floor(g[t, k]))
        if b > dims[k] - 2:
            b = dims[k] - 2
        f = g[t, k] - b
        if (corner >> k) & 1:
            w *= f
            idx += (b + 1) * strides[k]
        else:
            w *= 1.0 - f
            idx += b * strides[k]
    return w, idx


@njit(cache=True, nogil=True)
def splat(g, values, dims, strides, grid):  # pragma: no cover - compiled
    n, d = g.shape
    c1 = values.shape[1]
    ncorner = 1 << d
    for t in range(n):
        for corner in range(ncorner):
            w, idx = _corner(g, t, corner, dims, strides)
            for q in range(c1):
                grid[idx, q] += w * values[t, q]


@njit(parallel=True, cache=True, nogil=True)
def blur_axis(src, dst, size, stride, taps):  # pragma: no cover - compiled
    cells, c1 = src.shape
    radius = taps.size - 1
    for e in prange(cells):
        x = (e // stride) % size
        for q in range(c1):
            dst[e, q] = taps[0] * src[e, q]
        for k in range(1, radius + 1):
            t = taps[k]
            if x - k >= 0:
                a = e - k * stride
                for q in range(c1):
                    dst[e, q] += t * src[a, q]
            if x + k < size:
                b = e + k * stride
                for q in range(c1):
                    dst[e, q] += t * src[b, q]


@njit(parallel=True, cache=True, nogil=True)
def slice_normalise(g, dims, strides, grid, out):  # pragma: no cover - compiled
    n, d = g.shape
    c = out.shape[1]
    ncorner = 1 << d
    for t in prange(n):
        den = 0.0
        for q in range(c):
            out[t, q] = 0.0
        for corner in range(ncorner):
            w, idx = _corner(g, t, corner, dims, strides)
            for q in range(c):
                out[t, q] += w * grid[idx, q]
            den += w * grid[idx, c]
        normalise_row(out, t, den)
