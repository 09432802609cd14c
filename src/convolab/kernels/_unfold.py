"""im2col unfolding with padding applied on the fly (no padded copy of the input).

For the output rows ``i0 <= oh < i1`` of one image::

    cols[g, (c*R + r)*S + s, (oh - i0)*OW + ow] = x[g*Cg + c, oh*sh + r*dh - pt, ow*sw + s*dw - pl]

(zero outside the image). Serial: `convolab.algorithms.im2col` runs one call per thread, each
followed by that thread's own single-threaded GEMM.
"""

from numba import njit


@njit(cache=True, nogil=True)
def unfold_rows(x, cols, R, S, sh, sw, dh, dw, pt, pl, OW, i0, i1):  # pragma: no cover - compiled
    # x: (C, H, W) one image; cols: (groups, Cg*R*S, (i1-i0)*OW)
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
                    for i in range(i0, i1):
                        ih = i * sh + r * dh - pt
                        base = (i - i0) * OW
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
