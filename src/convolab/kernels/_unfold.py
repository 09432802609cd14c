"""im2col unfolding with padding applied on the fly (no padded copy of the input).

``cols[g, (c*R + r)*S + s, oh*OW + ow] = x[g*Cg + c, oh*sh + r*dh - pt, ow*sw + s*dw - pl]``
(zero outside the image). Serial on purpose: it runs between BLAS calls, and a second thread
pool spinning beside OpenBLAS's made im2col 2-4x slower on two cores (notes/performance.md).
"""

from numba import njit


@njit(cache=True, nogil=True)
def unfold(x, cols, R, S, sh, sw, dh, dw, pt, pl, OH, OW):  # pragma: no cover - compiled
    # x: (C, H, W) one image; cols: (groups, Cg*R*S, OH*OW)
    C, H, W = x.shape
    G = cols.shape[0]
    Cg = C // G
    for g in range(G):
        for c in range(Cg):
            ci = g * Cg + c
            for r in range(R):
                for s in range(S):
                    row = (c * R + r) * S + s
                    # valid ow range: 0 <= ow*sw + s*dw - pl < W
                    off = s * dw - pl
                    j0 = 0
                    while j0 < OW and j0 * sw + off < 0:
                        j0 += 1
                    j1 = OW
                    while j1 > j0 and (j1 - 1) * sw + off >= W:
                        j1 -= 1
                    for i in range(OH):
                        ih = i * sh + r * dh - pt
                        base = i * OW
                        if ih < 0 or ih >= H:
                            for j in range(OW):
                                cols[g, row, base + j] = 0
                            continue
                        src = x[ci, ih]
                        for j in range(j0):
                            cols[g, row, base + j] = 0
                        if sw == 1:
                            for j in range(j0, j1):
                                cols[g, row, base + j] = src[j + off]
                        else:
                            for j in range(j0, j1):
                                cols[g, row, base + j] = src[j * sw + off]
                        for j in range(j1, OW):
                            cols[g, row, base + j] = 0
