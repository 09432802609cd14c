"""Integer kernels for `convolab.quant`: int8 x int8 -> int32 direct convolution.

``out[n, k, i, j] = sum_{c, r, s} w[k, c, r, s] * xp[n, g*Cg + c, i*sh + r*dh, j*sw + s*dw]``
on the zero-padded int8 input ``xp``, accumulated in int32 in the fixed order c, r, s (integer
addition is associative, so the order cannot change the result as long as no partial sum
overflows; the caller guarantees that, see `convolab.quant.intconv`). Parallel over
(image, output channel) -- independent outputs only; launch under `PARALLEL_LOCK`.
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
