"""Numba kernel of the deviation lab: exact float32 fused multiply-add, elementwise.

Compiled without fast-math (no reassociation, no contraction), so the TwoSum below is exact.
"""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def fma_into(p, acc, out):  # pragma: no cover - compiled
    """``out[i] = RN32(p[i] + acc[i])`` for float64 ``p`` (exact products) and float32 ``acc``.

    TwoSum gives ``s = fl64(p + a)`` and its exact error ``e``; when ``e != 0`` and ``s`` has an
    even last bit, ``s`` moves one float64 ULP towards ``e`` (round to odd); the final float32
    conversion then rounds the exact sum correctly. ``out`` may be ``acc``. Arrays are flat.
    """
    buf = np.empty(1, np.float64)
    ubuf = buf.view(np.uint64)
    for i in range(p.size):
        a = np.float64(acc[i])
        q = p[i]
        s = q + a
        bb = s - q
        e = (q - (s - bb)) + (a - bb)
        if e != 0.0:
            buf[0] = s
            u = ubuf[0]
            if u & np.uint64(1) == 0:
                # IEEE bit patterns are monotone in magnitude: +1 moves away from zero
                if (e > 0) == (s > 0):
                    ubuf[0] = u + np.uint64(1)
                else:
                    ubuf[0] = u - np.uint64(1)
                s = buf[0]
        out[i] = np.float32(s)
