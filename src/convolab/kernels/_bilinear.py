"""Kernels of the bilinear (Winograd / SFC) engine: tile transforms and per-point GEMMs.

Tiles: the output is cut into m x m tiles, TH = ceil(OH/m) by TW = ceil(OW/m) per image; a
"tile row" is (image, th) and tile t of a chunk of tile rows ``[r0, r1)`` is
``(row - r0) * TW + tw``. Input tile (row, tw) is the n x n window of the zero-padded input at
``(th*m, tw*m)``; samples beyond the padded input read as zero (partial edge tiles).

Transform-domain layout, per chunk: ``V[p, c, t]`` (points, input channels, tiles) and
``M[p, k, t]``; for each point ``M[p] = Wt[p] @ V[p]`` is one GEMM (K x C) @ (C x T).

Input transform of a tile row, per channel, vectorised along the row:
  A) ``Z1[a, col] = sum_i B1[a, i] xrow[i, col]`` over the whole padded row strip;
  B) ``Z[a, b, tw] = sum_j B1[b, j] Z1[a, tw*m + j]``;
  C) ``V[p, c, t] = sum_q S_in[p, q] Z[q, tw]`` (sparse; a copy when S_in is the identity).
Output transform, per output channel: ``M'[q, tw] = sum_p S_out[q, p] M[p, k, t]``, then
``Y = A1 M' A1^T``, written where inside the output.

Every sum runs in a fixed order with separate multiply and add (no fast-math); zero matrix
entries are skipped. Parallel loops split only independent channels or points.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True)
def _input_rows(x, img, ci, th, m, pt, pl, xb):  # pragma: no cover - compiled
    H = x.shape[2]
    W = x.shape[3]
    n = xb.shape[0]
    for i in range(n):
        ih = th * m + i - pt
        if ih >= 0 and ih < H:
            for j in range(W):
                xb[i, pl + j] = x[img, ci, ih, j]
        else:
            for j in range(W):
                xb[i, pl + j] = 0.0


@njit(parallel=True, cache=True, nogil=True)
def input_transform(x, V, g, r0, r1, TH, TW, m, pt, pl, B1, sp, si, sv):  # pragma: no cover
    P, Cg, _ = V.shape
    n1, n = B1.shape
    Wb = TW * m + n - m
    ident = sp.shape[0] == 0
    for c in prange(Cg):
        ci = g * Cg + c
        xb = np.zeros((n, Wb), dtype=V.dtype)
        z1 = np.empty((n1, Wb), dtype=V.dtype)
        zt = np.empty((n1, n, TW), dtype=V.dtype)
        z = np.empty((n1 * n1, TW), dtype=V.dtype)
        for row in range(r0, r1):
            img = row // TH
            th = row - img * TH
            tb = (row - r0) * TW
            _input_rows(x, img, ci, th, m, pt, pl, xb)
            for a in range(n1):  # A) vertical, along the whole strip
                for col in range(Wb):
                    z1[a, col] = 0.0
                for i in range(n):
                    b = B1[a, i]
                    if b != 0.0:
                        for col in range(Wb):
                            z1[a, col] += b * xb[i, col]
                for j in range(n):
                    for tw in range(TW):
                        zt[a, j, tw] = z1[a, tw * m + j]
            for a in range(n1):  # B) horizontal, vectorised over the tiles of the row
                for bb in range(n1):
                    q = a * n1 + bb
                    if ident:
                        dst = V[q, c, tb : tb + TW]
                    else:
                        dst = z[q]
                    for tw in range(TW):
                        dst[tw] = 0.0
                    for j in range(n):
                        b = B1[bb, j]
                        if b != 0.0:
                            for tw in range(TW):
                                dst[tw] += b * zt[a, j, tw]
            if not ident:  # C) sparse non-separable stage
                for p in range(P):
                    dst = V[p, c, tb : tb + TW]
                    for tw in range(TW):
                        dst[tw] = 0.0
                    for e in range(sp[p], sp[p + 1]):
                        q = si[e]
                        v = sv[e]
                        for tw in range(TW):
                            dst[tw] += v * z[q, tw]


@njit(parallel=True, cache=True, nogil=True)
def point_gemms(Wt, V, M):  # pragma: no cover - compiled
    # one GEMM per transform-domain point; the BLAS is limited to one thread by the caller
    for p in prange(V.shape[0]):
        np.dot(Wt[p], V[p], M[p])


@njit(parallel=True, cache=True, nogil=True)
def output_transform(M, out, g, r0, r1, TH, TW, m, A1, sp, si, sv):  # pragma: no cover
    P, Kg, _ = M.shape
    n2 = A1.shape[1]
    OH = out.shape[2]
    OW = out.shape[3]
    ident = sp.shape[0] == 0
    for k in prange(Kg):
        kk = g * Kg + k
        mp = np.empty((n2 * n2, TW), dtype=M.dtype)
        u = np.empty((n2, m, TW), dtype=M.dtype)
        y = np.empty((m, TW), dtype=M.dtype)
        for row in range(r0, r1):
            img = row // TH
            th = row - img * TH
            tb = (row - r0) * TW
            if ident:
                for q in range(n2 * n2):
                    for tw in range(TW):
                        mp[q, tw] = M[q, k, tb + tw]
            else:
                for q in range(n2 * n2):
                    for tw in range(TW):
                        mp[q, tw] = 0.0
                    for e in range(sp[q], sp[q + 1]):
                        p = si[e]
                        v = sv[e]
                        for tw in range(TW):
                            mp[q, tw] += v * M[p, k, tb + tw]
            for a in range(n2):  # U[a, j] = sum_b A1[j, b] M'[a, b]
                for j in range(m):
                    for tw in range(TW):
                        u[a, j, tw] = 0.0
                    for bb in range(n2):
                        v = A1[j, bb]
                        if v != 0.0:
                            for tw in range(TW):
                                u[a, j, tw] += v * mp[a * n2 + bb, tw]
            for i in range(m):  # Y[i, j] = sum_a A1[i, a] U[a, j]
                oh = th * m + i
                if oh >= OH:
                    break
                for j in range(m):
                    for tw in range(TW):
                        y[j, tw] = 0.0
                    for a in range(n2):
                        v = A1[i, a]
                        if v != 0.0:
                            for tw in range(TW):
                                y[j, tw] += v * u[a, j, tw]
                orow = out[img, kk, oh]
                for tw in range(TW):
                    for j in range(m):
                        ow = tw * m + j
                        if ow < OW:
                            orow[ow] = y[j, tw]
