"""Integer kernels for `convolab.quant`: int8 x int8 -> int32 direct convolution.

``out[n, k, i, j] = sum_{c, r, s} w[k, c, r, s] * xp[n, g*Cg + c, i*sh + r*dh, j*sw + s*dw]``
on the zero-padded int8 input ``xp``, accumulated in int32 in the fixed order c, r, s (integer
addition is associative, so the order cannot change the result as long as no partial sum
overflows; the caller guarantees that, see `convolab.quant.intconv`). Parallel over
(image, output channel) -- independent outputs only; launch under `PARALLEL_LOCK`.

`conv_int8_direct_kb` is the register-blocked form for layers with at least 4 output channels
per group: one job per (image, block of 4 output channels, output row), each loaded input
element feeds 4 accumulators (2-2.7x faster than `conv_int8_direct` on dense 3x3 and 1x1 layers,
measured on a loaded 2-core machine); the same sums in the same order, so the same integers.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, parallel=True)
def conv_int8_direct(xp, w, out, sh, sw, dh, dw, groups):  # pragma: no cover - compiled
    N = xp.shape[0]
    K, Cg, R, S = w.shape
    OH, OW = out.shape[2], out.shape[3]
    Kg = K // groups
    for job in prange(N * K):
        n = job // K
        k = job - n * K
        ci0 = (k // Kg) * Cg
        acc = np.zeros((OH, OW), dtype=np.int32)
        for c in range(Cg):
            for r in range(R):
                for s in range(S):
                    wv = np.int32(w[k, c, r, s])
                    if wv == 0:
                        continue
                    for i in range(OH):
                        row = xp[n, ci0 + c, i * sh + r * dh]
                        a = acc[i]
                        if sw == 1:
                            for j in range(OW):
                                a[j] += wv * np.int32(row[j + s * dw])
                        else:
                            for j in range(OW):
                                a[j] += wv * np.int32(row[j * sw + s * dw])
        out[n, k] = acc


@njit(cache=True, nogil=True, parallel=True)
def conv_int8_direct_kb(xp, w, out, sh, sw, dh, dw, groups):  # pragma: no cover - compiled
    N = xp.shape[0]
    K, Cg, R, S = w.shape
    OH, OW = out.shape[2], out.shape[3]
    Kg = K // groups
    KB = 4
    nkb = (Kg + KB - 1) // KB
    jobs = N * groups * nkb * OH
    for job in prange(jobs):
        i = job % OH
        t = job // OH
        kb = t % nkb
        t //= nkb
        g = t % groups
        n = t // groups
        k0 = g * Kg + kb * KB
        kn = min(KB, g * Kg + Kg - k0)
        acc = np.zeros((KB, OW), dtype=np.int32)
        ci0 = g * Cg
        for c in range(Cg):
            for r in range(R):
                row = xp[n, ci0 + c, i * sh + r * dh]
                for s in range(S):
                    if kn == KB:
                        w0 = np.int32(w[k0, c, r, s])
                        w1 = np.int32(w[k0 + 1, c, r, s])
                        w2 = np.int32(w[k0 + 2, c, r, s])
                        w3 = np.int32(w[k0 + 3, c, r, s])
                        off = s * dw
                        for j in range(OW):
                            xv = np.int32(row[j * sw + off])
                            acc[0, j] += w0 * xv
                            acc[1, j] += w1 * xv
                            acc[2, j] += w2 * xv
                            acc[3, j] += w3 * xv
                    else:
                        for q in range(kn):
                            wv = np.int32(w[k0 + q, c, r, s])
                            for j in range(OW):
                                acc[q, j] += wv * np.int32(row[j * sw + s * dw])
        for q in range(kn):
            out[n, k0 + q, i] = acc[q]
