"""Direct convolution kernel (NCHW, zero-padded input), parallel over independent outputs.

Task = (image n, group g, block of up to KB output channels, output row oh). Each task
accumulates a KB x OW tile: for c, r, s (in that order) it multiplies one input row
segment by KB weights. Every output is the sum over (c, r, s) in lexicographic order,
starting from zero, with separate multiply and add (no FMA): the result is bit-identical for
any thread count and vector width.
"""

import numpy as np
from numba import njit, prange

KB = 8


@njit(parallel=True, cache=True, nogil=True)
def direct_nchw(xp, w, out, sh, sw, dh, dw, groups):  # pragma: no cover - compiled
    N, C, Hp, Wp = xp.shape
    K, Cg, R, S = w.shape
    OH = out.shape[2]
    OW = out.shape[3]
    Kg = K // groups
    nkb = (Kg + KB - 1) // KB
    ntask = N * groups * nkb * OH
    for t in prange(ntask):
        oh = t % OH
        rest = t // OH
        kb = rest % nkb
        rest = rest // nkb
        g = rest % groups
        n = rest // groups
        k0 = g * Kg + kb * KB
        kn = min(KB, (g + 1) * Kg - k0)
        acc = np.zeros((KB, OW), dtype=out.dtype)
        for c in range(Cg):
            ci = g * Cg + c
            for r in range(R):
                row = xp[n, ci, oh * sh + r * dh]
                for s in range(S):
                    off = s * dw
                    for kk in range(kn):
                        wv = w[k0 + kk, c, r, s]
                        if sw == 1:
                            for j in range(OW):
                                acc[kk, j] += wv * row[off + j]
                        else:
                            for j in range(OW):
                                acc[kk, j] += wv * row[off + j * sw]
        for kk in range(kn):
            for j in range(OW):
                out[n, k0 + kk, oh, j] = acc[kk, j]
