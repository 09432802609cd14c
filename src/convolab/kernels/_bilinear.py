"""Kernels of the bilinear (Winograd / SFC) engine: tile transforms and per-point GEMMs.

Layout: channels last. The caller converts the input to NHWC (``xh[n, h, w, c]``); every
transform step is a vector operation along the contiguous channel axis -- no strided gathers
of tile elements -- and each output pixel's K-vector is scattered into the NCHW output. For few
input channels (vectors too short) `input_transform_tiles` reads the NCHW input instead and
vectorises along the tiles: it gathers ``D[i, j, t]`` and writes ``V[p, c, t]``.

Tiles: the output is cut into m x m tiles, TH = ceil(OH/m) by TW = ceil(OW/m) per image; tile
t of a chunk starting at tile row r0 is tile row ``r0 + t // TW`` (image ``row // TH``, ``th =
row % TH``), column ``tw = t % TW``. Input tile t is the n x n window of the zero-padded input
at ``(th*m, tw*m)``; samples outside the input read as zero (padding and partial edge tiles).

Transform-domain layout, per chunk: ``V[p, t, c]`` and ``M[p, t, k]``; for each point
``M[p] = V[p] @ Wt[p]`` is one GEMM (T x C) @ (C x K).

- input, per tile: ``Z1[a, j] = sum_i B1[a, i] X[i, j]``, ``Z[a, b] = sum_j B1[b, j] Z1[a, j]``
  written straight into ``V[a*n1 + b, t]`` -- or, for a non-separable algorithm,
  ``V[p, t] = sum_q S_in[p, q] Z[q]`` (sparse);
- output, per tile: ``M'[q] = sum_p S_out[q, p] M[p, t]`` (or M itself),
  ``U[a, j] = sum_b A1[j, b] M'[a*n2 + b]``, ``Y[i, j] = sum_a A1[i, a] U[a, j]``, stored (NCHW)
  where inside the output.

Every sum runs in a fixed order (first term assigned, then added); multiplications by +-1 are
exact, so they are done as copies, additions or subtractions; zero entries are skipped; no
fast-math. The kernels are serial and release the GIL: the caller runs them on Python threads
over disjoint tiles, points or chunks (no OpenMP pool to fight the BLAS's or PyTorch's).
"""

import numpy as np
from numba import njit

from ._atomics import fetch_add
from ._direct import _t16
from ._epilogue import F0, F1
from ._epilogue import run as epilogue_run
from ._microkernel import point_gemms_mk


@njit(cache=True, nogil=True, inline="always")
def _axpy(dst, src, b, first):  # pragma: no cover - compiled
    """dst (=|+=) b * src over the whole (1D, contiguous) vectors."""
    T = dst.shape[0]
    if first:
        if b == 1.0:
            for t in range(T):
                dst[t] = src[t]
        elif b == -1.0:
            for t in range(T):
                dst[t] = -src[t]
        else:
            for t in range(T):
                dst[t] = b * src[t]
    else:
        if b == 1.0:
            for t in range(T):
                dst[t] += src[t]
        elif b == -1.0:
            for t in range(T):
                dst[t] -= src[t]
        else:
            for t in range(T):
                dst[t] += b * src[t]


@njit(inline="always")
def _tile(t, r0, TH, TW):  # pragma: no cover - compiled
    """Tile t of a chunk starting at tile row r0 -> (image, tile row th in it, tile column tw)."""
    rr = t // TW
    tw = t - rr * TW
    row = r0 + rr
    img = row // TH
    return img, row - img * TH, tw


@njit(inline="always")
def _columns_and_core(Z1, Z, V, col, B1, n, n1, P, ident, sp, si, sv):  # pragma: no cover
    """Second half of an input transform: ``Z[a, b] = sum_j B1[b, j] Z1[a, j]`` (straight into
    ``V[:, col]`` for separable algorithms), then ``V[p, col] = sum_q S_in[p, q] Z[q]``."""
    for a in range(n1):
        for bb in range(n1):
            q = a * n1 + bb
            dst = V[q, col] if ident else Z[q]
            first = True
            for j in range(n):
                b = B1[bb, j]
                if b != 0.0:
                    _axpy(dst, Z1[a, j], b, first)
                    first = False
            if first:
                dst[:] = 0.0
    if not ident:
        for p in range(P):
            dst = V[p, col]
            first = True
            for e in range(sp[p], sp[p + 1]):
                _axpy(dst, Z[si[e]], sv[e], first)
                first = False
            if first:
                dst[:] = 0.0


@njit(cache=True, nogil=True)
def input_transform(xh, V, g, r0, TH, TW, m, pt, pl, B1, sp, si, sv, t0, t1):  # pragma: no cover
    P, tc, Cg = V.shape
    n1, n = B1.shape
    H = xh.shape[1]
    W = xh.shape[2]
    c0 = g * Cg
    ident = sp.shape[0] == 0
    Z1 = np.empty((n1, n, Cg), dtype=V.dtype)
    Z = np.empty((1 if ident else n1 * n1, Cg), dtype=V.dtype)
    for t in range(t0, t1):
        img, th, tw = _tile(t, r0, TH, TW)
        h0 = th * m - pt
        w0 = tw * m - pl
        for j in range(n):  # Z1[a, j] = sum_i B1[a, i] X[i, j]
            w = w0 + j
            inside = w >= 0 and w < W
            for a in range(n1):
                first = True
                if inside:
                    for i in range(n):
                        b = B1[a, i]
                        h = h0 + i
                        if b != 0.0 and h >= 0 and h < H:
                            _axpy(Z1[a, j], xh[img, h, w, c0 : c0 + Cg], b, first)
                            first = False
                if first:
                    Z1[a, j, :] = 0.0
        _columns_and_core(Z1, Z, V, t, B1, n, n1, P, ident, sp, si, sv)


@njit(cache=True, nogil=True)
def _gather(x, ci, r0, r1, TH, TW, m, pt, pl, xb, D):  # pragma: no cover - compiled
    """D[i, j, t] = padded input of tile t at (i, j); zero outside. xb: a zeroed row buffer."""
    H = x.shape[2]
    W = x.shape[3]
    n = D.shape[0]
    for row in range(r0, r1):
        img = row // TH
        th = row - img * TH
        tb = (row - r0) * TW
        for i in range(n):
            ih = th * m + i - pt
            if ih < 0 or ih >= H:
                for j in range(n):
                    D[i, j, tb : tb + TW] = 0.0
                continue
            src = x[img, ci, ih]
            for col in range(W):  # xb[pl : pl + W] = the row; the margins stay zero
                xb[pl + col] = src[col]
            for j in range(n):
                dst = D[i, j]
                for tw in range(TW):
                    dst[tb + tw] = xb[tw * m + j]


@njit(cache=True, nogil=True)
def input_transform_tiles(x, V, g, r0, r1, TH, TW, m, pt, pl, B1, sp, si, sv, c0, c1):
    # pragma: no cover - compiled; NCHW input, V[p, c, t]: vectors along the tiles (small C)
    P, Cg, tc = V.shape
    n1, n = B1.shape
    ident = sp.shape[0] == 0
    D = np.empty((n, n, tc), dtype=V.dtype)
    xb = np.zeros(TW * m + n - m + x.shape[3] + pl, dtype=V.dtype)
    Z1 = np.empty((n1, n, tc), dtype=V.dtype)
    Z = np.empty((1 if ident else n1 * n1, tc), dtype=V.dtype)
    for c in range(c0, c1):
        _gather(x, g * Cg + c, r0, r1, TH, TW, m, pt, pl, xb, D)
        for a in range(n1):  # Z1[a, j] = sum_i B1[a, i] D[i, j]
            for j in range(n):
                first = True
                for i in range(n):
                    b = B1[a, i]
                    if b != 0.0:
                        _axpy(Z1[a, j], D[i, j], b, first)
                        first = False
                if first:
                    Z1[a, j, :] = 0.0
        _columns_and_core(Z1, Z, V, c, B1, n, n1, P, ident, sp, si, sv)


@njit(cache=True, nogil=True)
def point_gemms(Wt, V, M, p0, p1):  # pragma: no cover - compiled
    # one GEMM per transform-domain point; the BLAS is limited to one thread by the caller
    for p in range(p0, p1):
        np.dot(V[p], Wt[p], M[p])


@njit(cache=True, nogil=True)
def point_gemms_tiles(Wt, V, M, p0, p1):  # pragma: no cover - compiled
    # V[p] is (C x T) here: M[p] = V[p]^T @ Wt[p]
    for p in range(p0, p1):
        np.dot(V[p].T, Wt[p], M[p])


@njit(cache=True, nogil=True)
def output_transform(M, out, k0, r0, TH, TW, m, A1, sp, si, sv, t0, t1):  # pragma: no cover
    # M[p, t, k] holds output channels k0 .. k0 + M.shape[2] - 1
    P, tc, Kg = M.shape
    n2 = A1.shape[1]
    OH = out.shape[2]
    OW = out.shape[3]
    ident = sp.shape[0] == 0
    mp = np.empty((1 if ident else n2 * n2, Kg), dtype=M.dtype)
    U = np.empty((n2, m, Kg), dtype=M.dtype)
    Y = np.empty(Kg, dtype=M.dtype)
    # Storing each pixel's K values straight into the planes thrashes the L1 cache when the
    # planes fall into few of its sets (planes a multiple of 2 KiB apart: F(2x2,3x3) ran 1.6x
    # slower on 64x64 outputs than on 65x65). Then a run of tiles in one tile row is gathered
    # per output channel and stored plane by plane (elsewhere that copy cost 10-20%); the
    # buffer's rows are padded so that its channels do not alias themselves.
    pb = OH * OW * out.itemsize
    g = 4096
    while pb % g:
        g //= 2
    buffered = Kg > 8 * (4096 // g)  # planes per 4 KiB-indexed set (of 12 ways)
    rowlen = TW * m + 16
    Yb = np.empty((Kg if buffered else 0, m, rowlen), dtype=M.dtype)
    tw_a = 0
    for t in range(t0, t1):
        img, th, tw = _tile(t, r0, TH, TW)
        if t == t0 or tw == 0:
            tw_a = tw  # first tile of the run
        if not ident:  # M'[q] = sum_p S_out[q, p] M[p, t]
            for q in range(n2 * n2):
                first = True
                for e in range(sp[q], sp[q + 1]):
                    _axpy(mp[q], M[si[e], t], sv[e], first)
                    first = False
                if first:
                    mp[q, :] = 0.0
        for a in range(n2):  # U[a, j] = sum_b A1[j, b] M'[a, b]
            for j in range(m):
                first = True
                for bb in range(n2):
                    v = A1[j, bb]
                    if v != 0.0:
                        src = M[a * n2 + bb, t] if ident else mp[a * n2 + bb]
                        _axpy(U[a, j], src, v, first)
                        first = False
                if first:
                    U[a, j, :] = 0.0
        for i in range(m):  # Y[i, j] = sum_a A1[i, a] U[a, j], stored where inside
            oh = th * m + i
            if oh >= OH:
                break
            for j in range(m):
                ow = tw * m + j
                if ow >= OW:
                    break
                first = True
                for a in range(n2):
                    v = A1[i, a]
                    if v != 0.0:
                        _axpy(Y, U[a, j], v, first)
                        first = False
                if first:
                    Y[:] = 0.0
                if not buffered:
                    for k in range(Kg):  # scatter into the NCHW output
                        out[img, k0 + k, oh, ow] = Y[k]
                    continue
                col = (tw - tw_a) * m + j
                for k in range(Kg):
                    Yb[k, i, col] = Y[k]
        if buffered and (t == t1 - 1 or tw == TW - 1):  # the run ends: store it, where inside
            ow_a = tw_a * m
            ncol = min((tw + 1 - tw_a) * m, OW - ow_a)
            for k in range(Kg):
                for i in range(min(m, OH - th * m)):
                    dst = out[img, k0 + k, th * m + i]
                    src = Yb[k, i]
                    for c in range(ncol):
                        dst[ow_a + c] = src[c]


@njit(cache=True, nogil=True)
def chunk(xh, out, Wt, V, M, g, r0, TH, TW, m, pt, pl, B1, ip, ii, iv, A1, op, oi, ov):
    # pragma: no cover - compiled; one chunk of tiles, all three phases, one thread
    tc = V.shape[1]
    input_transform(xh, V, g, r0, TH, TW, m, pt, pl, B1, ip, ii, iv, 0, tc)
    point_gemms(Wt, V, M, 0, V.shape[0])
    output_transform(M, out, g * M.shape[2], r0, TH, TW, m, A1, op, oi, ov, 0, tc)


@njit(cache=True, nogil=True)
def chunk_tiles(x, out, Wt, V, M, g, r0, r1, TH, TW, m, pt, pl, B1, ip, ii, iv, A1, op, oi, ov):
    # pragma: no cover - compiled; as `chunk`, with the tile-vectorised input transform
    input_transform_tiles(x, V, g, r0, r1, TH, TW, m, pt, pl, B1, ip, ii, iv, 0, V.shape[1])
    point_gemms_tiles(Wt, V, M, 0, V.shape[0])
    output_transform(M, out, g * M.shape[2], r0, TH, TW, m, A1, op, oi, ov, 0, M.shape[1])


# ------------------------------------------------------------------------ microkernel GEMMs
# With many channels the point GEMMs run on the register-blocked microkernel of direct and
# im2win, from weights packed once in the plan (`convolab.kernels._microkernel.point_gemms_mk`):
# no packing per call, each weight read once per 12 tiles.


@njit(cache=True, nogil=True)
def chunk_mk(xh, out, wpk, V, M, g, Kg, kb0, kb1, r0, TH, TW, m, pt, pl, B1, ip, ii, iv, A1, op,
             oi, ov):
    # pragma: no cover - compiled; one chunk of tiles, output channels of k-blocks kb0..kb1
    tc = V.shape[1]
    input_transform(xh, V, g, r0, TH, TW, m, pt, pl, B1, ip, ii, iv, 0, tc)
    point_gemms_mk(wpk, V, M, kb0, kb1, Kg)
    output_transform(M, out, g * Kg + kb0 * wpk.shape[3], r0, TH, TW, m, A1, op, oi, ov, 0, tc)


# ------------------------------------------------------------------ inside the runtime's executor
# `convolab.runtime._executor` runs a layer planned for a bilinear algorithm (microkernel GEMMs,
# one group) as one of its operators: its input copied to NHWC by rows, then chunks of tiles
# (and, with few chunks, shares of the k-blocks) handed out as tasks, each running `chunk_mk`
# and the output stage on the outputs it wrote while they are in cache. Same kernels as the
# standalone algorithm, the output stage in the runtime's order: the same bits.


@njit(cache=True, nogil=True)
def nhwc_row(src, s0, dst, d0, C, H, W, h):  # pragma: no cover - compiled
    """Input row ``h`` of one NCHW image at ``src[s0]`` into the NHWC copy at ``dst[d0]``:
    ``dst[d0 + (h W + w) C + c] = src[s0 + (c H + h) W + w]``, 16 x 16 blocks transposed in
    registers (`convolab.kernels._direct._t16`)."""
    HW = H * W
    for c0 in range(0, C, 16):
        ml = min(16, C - c0)
        for w0 in range(0, W, 16):
            nl = min(16, W - w0)
            _t16(src, s0 + c0 * HW + h * W + w0, HW, ml, nl, dst, d0 + (h * W + w0) * C + c0, C,
                 nl, ml)


@njit(cache=True, nogil=True)
def nhwc_rows(src, s0, ximg, dst, d0, N, C, H, W, ctr, slot, run):  # pragma: no cover - compiled
    """The NHWC copy (`nhwc_row`) of ``N`` images ``ximg`` apart, as tasks of ``run``
    consecutive input rows taken from counter ``ctr[slot]``."""
    nrow = N * H
    t0 = fetch_add(ctr, slot) * run
    while t0 < nrow:
        for t in range(t0, min(nrow, t0 + run)):
            n = t // H
            nhwc_row(src, s0 + n * ximg, dst, d0 + n * H * W * C, C, H, W, t - n * H)
        t0 = fetch_add(ctr, slot) * run


@njit(cache=True, nogil=True)
def chunk_mk_stage(xh, out, wpk, V, M, Kg, kb0, kb1, r0, TH, TW, m, pt, pl, B1, ip, ii, iv, A1,
                   op, oi, ov, y, yoff, eb, roff, mode, code, lo, hi):  # pragma: no cover
    """`chunk_mk` (one group) for tile rows ``r0 ..`` and k-blocks ``kb0 .. kb1 - 1``, then the
    output stage (`convolab.kernels._epilogue.run`, ``mode`` bits 2 bias ``eb``, 4 residual at
    ``y[o + roff]``) over the rows of those channels it wrote; ``y`` is ``out`` flat from
    ``yoff``."""
    chunk_mk(xh, out, wpk, V, M, 0, Kg, kb0, kb1, r0, TH, TW, m, pt, pl, B1, ip, ii, iv, A1, op,
             oi, ov)
    if mode == 0 and code == 0:
        return
    N, K, OH, OW = out.shape
    KB = wpk.shape[3]
    k0 = kb0 * KB
    k1 = min(Kg, kb1 * KB)
    r1 = r0 + V.shape[1] // TW
    for img in range(r0 // TH, (r1 - 1) // TH + 1):
        oh0 = (max(r0, img * TH) - img * TH) * m
        oh1 = min(OH, (min(r1, (img + 1) * TH) - img * TH) * m)
        if oh1 <= oh0:
            continue
        for k in range(k0, k1):
            o = yoff + ((img * K + k) * OH + oh0) * OW
            b = eb[k] if mode & 2 else F0
            epilogue_run(y, o, y, o + roff, (oh1 - oh0) * OW, F1, b, mode, code, lo, hi)
