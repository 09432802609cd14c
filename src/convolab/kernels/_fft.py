"""Tile gather and scatter for the overlap-save FFT convolution (``convolab.algorithms.fft``).

Layouts (overlap-save tiles of an NCHW image, zero padding applied on the fly):

* ``gather_tiles``: ``xt[a, b, c, q] = x[n, c, ti*th + a - pt, tj*tw + b - pl]`` (zero outside
  the image) for the tile ``p = p0 + q`` of image ``n = p // (nth*ntw)`` at tile row
  ``ti = (p // ntw) % nth``, tile column ``tj = p % ntw``; ``xt`` is (Th, Tw, C, Pc), so the 2D
  FFT runs over the two leading axes with (channel, tile) as contiguous SIMD lanes and the
  spectra come out as (frequency, channel, tile): the operand of the per-frequency GEMM.
* ``scatter_tiles``: ``out[n, k, ti*th + a, tj*tw + b] = yt[a, b, k, q]`` for ``a < th``,
  ``b < tw`` inside the output (edge tiles are partial).

Both are serial and release the GIL: the wrapper runs them on its Python worker threads, each
on its own range of channels, so no OpenMP pool spins beside pocketfft's and the BLAS's threads
(notes/performance.md). Pure copies: no arithmetic, so exact and deterministic.
"""

from numba import njit


@njit(cache=True, nogil=True)
def gather_tiles(x, xt, tn, ti0, tj0, c0, c1):  # pragma: no cover - compiled
    # channels c0 <= c < c1 of the chunk's tiles; tile q: image tn[q], top-left input pixel
    # (ti0[q], tj0[q]) (negative inside the padding)
    N, C, H, W = x.shape
    Th, Tw, _, Pc = xt.shape
    for a in range(Th):
        for c in range(c0, c1):
            for b in range(Tw):
                for q in range(Pc):
                    ih = ti0[q] + a
                    jw = tj0[q] + b
                    if ih < 0 or ih >= H or jw < 0 or jw >= W:
                        xt[a, b, c, q] = 0
                    else:
                        xt[a, b, c, q] = x[tn[q], c, ih, jw]


@njit(cache=True, nogil=True)
def scatter_tiles(yt, out, tn, oi0, oj0, th, tw, k0, k1):  # pragma: no cover - compiled
    # output channels k0 <= k < k1; tile q: image tn[q], top-left output pixel (oi0[q], oj0[q]);
    # reads run along the contiguous tile axis, each tile's output row is written left to right
    N, K, OH, OW = out.shape
    Pc = yt.shape[3]
    for a in range(th):
        for k in range(k0, k1):
            for b in range(tw):
                for q in range(Pc):
                    i = oi0[q] + a
                    j = oj0[q] + b
                    if i < OH and j < OW:
                        out[tn[q], k, i, j] = yt[a, b, k, q]


@njit(cache=True, nogil=True)
def all_finite(x):  # pragma: no cover - compiled
    # True when no element is NaN or +-Inf; reads x once, allocates nothing
    flat = x.reshape(-1)
    for i in range(flat.size):
        v = flat[i]
        if v - v != 0:
            return False
    return True
