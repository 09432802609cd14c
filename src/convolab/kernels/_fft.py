"""Tile gather and scatter for the overlap-save FFT convolution (``convolab.algorithms.fft``).

Layouts (overlap-save tiles of an NCHW image, zero padding applied on the fly):

* ``gather_tiles``: ``xt[a, b, c, q] = x[n, c, ti*th + a - pt, tj*tw + b - pl]`` (zero outside
  the image) for the tile ``p = p0 + q`` of image ``n = p // (nth*ntw)`` at tile row
  ``ti = (p // ntw) % nth``, tile column ``tj = p % ntw``; ``xt`` is (Th, Tw, C, Pc), so the 2D
  FFT runs over the two leading axes with (channel, tile) as contiguous SIMD lanes and the
  spectra come out as (frequency, channel, tile): the operand of the per-frequency GEMM.
* ``scatter_tiles``: ``out[n, k, ti*th + a, tj*tw + b] = yt[a, b, k, q]`` for ``a < th``,
  ``b < tw`` inside the output (edge tiles are partial).

Both are serial on purpose: they run between pocketfft and BLAS calls, and a third spinning
thread pool on two cores costs more than it gains (notes/performance.md). Pure copies: no
arithmetic, so they are exact and deterministic.
"""

from numba import njit


@njit(cache=True, nogil=True)
def gather_tiles(x, xt, tn, ti0, tj0):  # pragma: no cover - compiled
    # tile q of the chunk: image tn[q], top-left input pixel (ti0[q], tj0[q]) (may be < 0)
    N, C, H, W = x.shape
    Th, Tw, _, Pc = xt.shape
    for a in range(Th):
        for c in range(C):
            for b in range(Tw):
                for q in range(Pc):
                    ih = ti0[q] + a
                    jw = tj0[q] + b
                    if ih < 0 or ih >= H or jw < 0 or jw >= W:
                        xt[a, b, c, q] = 0
                    else:
                        xt[a, b, c, q] = x[tn[q], c, ih, jw]


@njit(cache=True, nogil=True)
def scatter_tiles(yt, out, tn, oi0, oj0, th, tw):  # pragma: no cover - compiled
    # tile q of the chunk: image tn[q], top-left output pixel (oi0[q], oj0[q])
    N, K, OH, OW = out.shape
    Pc = yt.shape[3]
    for q in range(Pc):
        n = tn[q]
        i0 = oi0[q]
        j0 = oj0[q]
        ni = min(th, OH - i0)
        nj = min(tw, OW - j0)
        for k in range(K):
            for a in range(ni):
                for b in range(nj):
                    out[n, k, i0 + a, j0 + b] = yt[a, b, k, q]


@njit(cache=True, nogil=True)
def all_finite(x):  # pragma: no cover - compiled
    # True when no element is NaN or +-Inf; reads x once, allocates nothing
    flat = x.reshape(-1)
    for i in range(flat.size):
        v = flat[i]
        if v - v != 0:
            return False
    return True
