"""Numba kernel of the exact (brute-force) bilateral filter on an image grid.

Layout: ``values (H, W, c)``, ``guide (H, W, g)`` already divided by the range sigma, float64.
``out[y, x] = sum_q w(q) values[q] / sum_q w(q)`` with
``w(q) = exp(-((yq - y)^2 + (xq - x)^2) / (2 sigma_s^2) - |guide[q] - guide[y, x]|^2 / 2)``
over the window ``|yq - y|, |xq - x| <= radius``; pairs whose exponent exceeds ``cutoff`` are
skipped. Outputs are computed at rows and columns ``0, step, 2 step, ...`` (``out`` has shape
``(ceil(H / step), ceil(W / step), c)``; step 1 is the whole image). Parallel over output rows;
each output's sums run in raster order of the window.
"""

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, nogil=True)
def bilateral_window(values, guide, sigma_s, radius, cutoff, step, out):  # pragma: no cover - compiled
    H, W, c = values.shape
    g = guide.shape[2]
    inv = 0.5 / (sigma_s * sigma_s)
    for oy in prange(out.shape[0]):
        y = oy * step
        acc = np.empty(c)
        for ox in range(out.shape[1]):
            x = ox * step
            for k in range(c):
                acc[k] = 0.0
            den = 0.0
            y0 = max(0, y - radius)
            y1 = min(H, y + radius + 1)
            x0 = max(0, x - radius)
            x1 = min(W, x + radius + 1)
            for yq in range(y0, y1):
                dy = (yq - y) * (yq - y) * inv
                if dy > cutoff:
                    continue
                for xq in range(x0, x1):
                    e = dy + (xq - x) * (xq - x) * inv
                    if e > cutoff:
                        continue
                    for k in range(g):
                        diff = guide[yq, xq, k] - guide[y, x, k]
                        e += 0.5 * diff * diff
                    if e > cutoff:
                        continue
                    w = np.exp(-e)
                    den += w
                    for k in range(c):
                        acc[k] += w * values[yq, xq, k]
            for k in range(c):
                out[oy, ox, k] = acc[k] / den
