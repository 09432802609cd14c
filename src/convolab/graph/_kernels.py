"""Numba kernels of `convolab.graph`: CSR x dense, segment sums, broadcast, region adjacency.

Layouts: dense features are row-major ``(n, c)`` (one row per node or pixel); a sparse matrix
is CSR (``indptr``, ``indices``, ``data``) with the column indices of each row in increasing
order; a segmentation is given by its pixels sorted by segment (``order``, stable) and the run
starts ``ptr`` (segment ``s`` owns ``order[ptr[s]:ptr[s + 1]]``).

Determinism: threads split rows (nodes, segments, pixels), never a reduction. Each output row
is ``fma(a_last, x_last, ... fma(a_0, x_0, 0))`` over its entries in stored order, one fused
multiply-add per product (``llvm.fma``, exact on every CPU), no fast-math: the result is
bit-identical for any thread count, SIMD width and CPU.
"""

import numpy as np
from numba import njit, prange

from ..kernels._microkernel import fma


@njit(cache=True, nogil=True, parallel=True)
def csr_dense(indptr, indices, data, x, out):  # pragma: no cover - compiled
    """``out = A @ x`` for CSR ``A`` (n, m) and dense ``x`` (m, c), row by row."""
    n = indptr.size - 1
    c = x.shape[1]
    for i in prange(n):
        for j in range(c):
            out[i, j] = 0
        for p in range(indptr[i], indptr[i + 1]):
            k = indices[p]
            a = data[p]
            for j in range(c):
                out[i, j] = fma(a, x[k, j], out[i, j])


@njit(cache=True, nogil=True, parallel=True)
def segment_sum(order, ptr, x, out, mean):  # pragma: no cover - compiled
    """``out[s] = sum (or mean) of x[p]`` over the pixels ``p`` of segment ``s``, in pixel order."""
    n = ptr.size - 1
    c = x.shape[1]
    for s in prange(n):
        for j in range(c):
            out[s, j] = 0
        for q in range(ptr[s], ptr[s + 1]):
            p = order[q]
            for j in range(c):
                out[s, j] += x[p, j]
        if mean:
            cnt = ptr[s + 1] - ptr[s]
            for j in range(c):
                out[s, j] = out[s, j] / cnt


@njit(cache=True, nogil=True, parallel=True)
def broadcast(labels, h, out, scale):  # pragma: no cover - compiled
    """``out[p] = h[labels[p]]`` (times ``scale[labels[p]]`` unless ``scale`` is empty)."""
    n = labels.size
    c = h.shape[1]
    use = scale.size > 0
    for p in prange(n):
        s = labels[p]
        if use:
            f = scale[s]
            for j in range(c):
                out[p, j] = h[s, j] * f
        else:
            for j in range(c):
                out[p, j] = h[s, j]


@njit(cache=True, nogil=True)
def adjacent_pairs(labels, n_segments):  # pragma: no cover - compiled
    """Boolean (S, S) matrix: segments that touch through a 4-neighbour pixel pair."""
    h, w = labels.shape
    adj = np.zeros((n_segments, n_segments), dtype=np.bool_)
    for i in range(h):
        for j in range(w):
            a = labels[i, j]
            if j + 1 < w:
                b = labels[i, j + 1]
                if a != b:
                    adj[a, b] = True
                    adj[b, a] = True
            if i + 1 < h:
                b = labels[i + 1, j]
                if a != b:
                    adj[a, b] = True
                    adj[b, a] = True
    return adj


@njit(cache=True, nogil=True, parallel=True)
def broadcast_add_t(labels, h, out):  # pragma: no cover - compiled
    """``out[j, p] += h[labels[p], j]``: node rows added to a channel-major (c, P) pixel array."""
    n = labels.size
    c = h.shape[1]
    for j in prange(c):
        for p in range(n):
            out[j, p] += h[labels[p], j]
