"""Output-tile scatter and a finiteness check for the FFT convolution (``algorithms.fft``).

* ``scatter_tiles``: ``out[n, k, ti*th + a, tj*tw + b] = yt[a, b, k, q]`` for ``a < th``,
  ``b < tw`` inside the output (edge tiles are partial), where tile q of the chunk belongs to
  image ``tn[q]`` and starts at output pixel ``(oi0[q], oj0[q])``; ``yt`` is (th, Tw, K, Pc),
  the layout the inverse FFT over the two leading axes leaves. (The input side needs no kernel:
  overlapping tiles are a strided view that pocketfft reads directly.)
* ``all_finite``: no NaN or Inf in an array, without allocating.

Serial and GIL-free: the wrapper runs ``scatter_tiles`` on its Python worker threads, each on
its own range of output channels, so no OpenMP pool spins beside pocketfft's and the BLAS's
threads (notes/performance.md). Pure copies: no arithmetic, so exact and deterministic.
"""

from numba import njit


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
