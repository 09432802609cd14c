"""Compiled half of the int8 fast algorithms (Winograd and SFC with a per-frequency quantised
transform domain; the stages, and where each rounds, are those of `convolab.quant.fast`).

One job per layer call, run by every thread of a team job (`convolab.kernels.team`):

1. the int8 codes to their padded channels-last copy, shifted to unsigned bytes (rows as
   tasks, the int8 direct layers' packer `convolab.kernels._int8._pack_row`);
2. chunks of tile rows as tasks, each through:

   * each tile's input transform, ``V = S_in (B1 x B1) X`` (coefficients in {0, +-1}: exact
     integers in float32), requantised per frequency, ``Vq = clip(rint(V * mult[p]), -q, q)``
     with the float64 product of the reference pipeline, shifted to unsigned bytes for
     ``vpdpbusd`` and laid out as the int8 tiles read a grouped 1x1 layer's input: tile
     ``t``, frequency ``p``, channels (LLVM IR generated per algorithm from its
     transforms, `_make_in`);
   * one int8 GEMM per frequency on the int8 microkernel's tiles (`convolab.kernels._int8`, the
     frequencies as the groups of a 1x1 layer, the filter packed once by the plan): exact int32
     sums, stored as ``float32(sum) * scale[p, k]`` (the dequantisation ``s_u[k, p] s_v[p]``,
     one float32 multiply) channels last, ``M[p, t, k]``;
   * each tile's output transform (generated too; the float engine's stages and order) into
     the chunk's rows, channels last, then transposed to the float32 NCHW output in 16 x 16
     blocks and the layer's bias and activation applied along its rows.

The reference (`convolab.quant.layer.QuantizedConv` on NumPy) dequantises and transforms in
float64: the codes and the integer sums here are the same, the float32 tail differs from it by
float32 roundings (relative 1e-7 of the output's magnitude), far below the transform domain's
quantisation step.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._atomics import fetch_add, wait_until
from ._direct import _t16
from ._int8 import _i64, _mload, _mstore, _pack_row, _tile, _tile_tail
from ._int8_shape import MR, MR_TAIL
from ._microkernel import lanes_below, splat

#: the algorithms with compiled transforms, in the order of the job's ``alg`` code
ALGORITHMS = ("winograd_f2x3", "sfc4_4x3", "sfc6_6x3")
_F32 = ir.FloatType()
_V8 = ir.VectorType(ir.IntType(8), 16)
_V32 = ir.VectorType(ir.IntType(32), 16)
_VF = ir.VectorType(_F32, 16)
_VD = ir.VectorType(ir.DoubleType(), 16)


def _csr_rows(s) -> list:
    indptr, idx, val = s
    return [[(float(val[e]), int(idx[e])) for e in range(indptr[p], indptr[p + 1])]
            for p in range(len(indptr) - 1)]


def _lin(builder, terms):
    """``sum b * v`` over ``terms`` [(b, vector)] in their order, from the first term (the float
    engine's `_axpy`: ``dst = b src``, then ``dst += b src``; +-1 as an add or subtract)."""
    acc = None
    for b, v in terms:
        if acc is None:
            acc = v if b == 1.0 else (builder.fneg(v) if b == -1.0
                                      else builder.fmul(splat(builder, ir.Constant(_F32, b), _VF), v))
        elif b == 1.0:
            acc = builder.fadd(acc, v)
        elif b == -1.0:
            acc = builder.fsub(acc, v)
        else:
            acc = builder.fadd(acc, builder.fmul(splat(builder, ir.Constant(_F32, b), _VF), v))
    return ir.Constant(_VF, None) if acc is None else acc


def _masked(builder, store, base, off, v, mask, align):
    """``store`` (a masked store of ``v``'s type) of ``v`` at ``base + off`` under ``mask``."""
    builder.call(store, [v, builder.bitcast(builder.gep(base, [off]), v.type.as_pointer()),
                         ir.Constant(ir.IntType(32), align), mask])


def _stages(name):
    """The float engine's stages of ``name`` (`convolab.algorithms.bilinear.engine`), float32
    coefficients as Python floats."""
    from ..algorithms import bilinear

    eng = bilinear.engine(name)
    f = np.float32
    B1 = eng.B1.astype(f).astype(float)
    A1 = eng.A1.astype(f).astype(float)
    s_in = None if eng.s_in[0].size == 0 else _csr_rows(
        (eng.s_in[0], eng.s_in[1], eng.s_in[2].astype(f).astype(float)))
    s_out = None if eng.s_out[0].size == 0 else _csr_rows(
        (eng.s_out[0], eng.s_out[1], eng.s_out[2].astype(f).astype(float)))
    return eng.P, B1, A1, s_in, s_out


def _make_in(name: str):
    """``in_tile(xp, base, rowb, C4, c0, mult, q, xu, obase)``: channels ``c0 .. c0 + 15``
    (those below ``C4``) of the tile whose first input pixel is ``xp[base:]`` (unsigned codes
    shifted by 128, channels last, pixels ``C4`` bytes apart, rows ``rowb``) through the input
    transform -- 16-lane float32 vectors, the row pass, the column pass, the sparse stage --
    each frequency p then requantised, ``clip(rint(float64(V[p]) * mult[p]), -q, q)``, and
    stored shifted at ``xu[obase + p C4 + c]``."""
    P, B1, _, s_in, _ = _stages(name)
    n1, n = B1.shape

    def in_tile(typingctx, xp, base, rowb, C4, c0, mult, q, xu, obase):
        if not all(isinstance(t, types.Integer) for t in (base, rowb, C4, c0, obase)):
            return None
        sig = types.void(xp, base, rowb, C4, c0, mult, q, xu, obase)

        def codegen(context, builder, sig, args):
            base, rowb, C4, c0, obase = (context.cast(builder, args[k], sig.args[k], types.int64)
                                         for k in (1, 2, 3, 4, 8))
            q = context.cast(builder, args[6], sig.args[6], types.float64)
            xp = builder.bitcast(context.make_array(sig.args[0])(context, builder, args[0]).data,
                                 ir.IntType(8).as_pointer())
            mp = context.make_array(sig.args[5])(context, builder, args[5]).data
            xu = builder.bitcast(context.make_array(sig.args[7])(context, builder, args[7]).data,
                                 ir.IntType(8).as_pointer())
            mask = lanes_below(builder, builder.sub(C4, c0), 16)
            load8, store8 = _mload(builder, _V8), _mstore(builder, _V8)
            shift8 = ir.Constant(_V8, [128] * 16)
            shift32 = ir.Constant(_V32, [128] * 16)
            x = {}
            for i in range(n):
                for j in range(n):
                    off = builder.add(builder.add(base, builder.mul(_i64(i), rowb)),
                                      builder.add(builder.mul(_i64(j), C4), c0))
                    v = builder.call(load8, [builder.bitcast(builder.gep(xp, [off]), _V8.as_pointer()),
                                             ir.Constant(ir.IntType(32), 1), mask, shift8])
                    x[i, j] = builder.sitofp(builder.sub(builder.zext(v, _V32), shift32), _VF)
            z = {(a, j): _lin(builder, [(B1[a, i], x[i, j]) for i in range(n) if B1[a, i] != 0])
                 for j in range(n) for a in range(n1)}
            used = (range(n1 * n1) if s_in is None else sorted({c for row in s_in for _, c in row}))
            y = {}
            for qq in used:
                a, b = divmod(qq, n1)
                y[qq] = _lin(builder, [(B1[b, j], z[a, j]) for j in range(n) if B1[b, j] != 0])
            V = ([y[p] for p in range(P)] if s_in is None
                 else [_lin(builder, [(c, y[qq]) for c, qq in s_in[p]]) for p in range(P)])
            rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VD, [_VD]),
                                                  "llvm.rint.v16f64")
            mx, mn = (cgutils.get_or_insert_function(builder.module,
                                                     ir.FunctionType(_VD, [_VD, _VD]),
                                                     f"llvm.{op}num.v16f64")
                      for op in ("max", "min"))
            hi = splat(builder, q, _VD)
            lo = builder.fneg(hi)
            for p in range(P):
                mul = splat(builder, builder.load(builder.gep(mp, [_i64(p)])), _VD)
                d = builder.call(rint, [builder.fmul(builder.fpext(V[p], _VD), mul)])
                d = builder.call(mn, [builder.call(mx, [d, lo]), hi])
                b8 = builder.trunc(builder.add(builder.fptosi(d, _V32), shift32), _V8)
                _masked(builder, store8, xu, builder.add(obase, builder.add(builder.mul(_i64(p), C4), c0)),
                        b8, mask, 1)
            return context.get_dummy_value()

        return sig, codegen

    in_tile.__name__ = in_tile.__qualname__ = f"_in_{name}"
    return intrinsic(in_tile)


def _make_out(name: str):
    """``out_tile(M, mbase, ps, kn, Y, ybase, rs, ys)``: ``kn`` <= 16 output channels of the
    tile's products ``M[mbase + p ps + l]`` (lane l a channel) through the output transform
    (the sparse stage, ``A1`` twice; 16-lane float32 vectors), output (i, j) stored at
    ``Y[ybase + i rs + j ys + l]``."""
    P, _, A1, _, s_out = _stages(name)
    m, n2 = A1.shape

    def out_tile(typingctx, M, mbase, ps, kn, Y, ybase, rs, ys):
        if not all(isinstance(t, types.Integer) for t in (mbase, ps, kn, ybase, rs, ys)):
            return None
        sig = types.void(M, mbase, ps, kn, Y, ybase, rs, ys)

        def codegen(context, builder, sig, args):
            mbase, ps, kn, ybase, rs, ys = (context.cast(builder, args[k], sig.args[k], types.int64)
                                            for k in (1, 2, 3, 5, 6, 7))
            Mp = context.make_array(sig.args[0])(context, builder, args[0]).data
            Yp = context.make_array(sig.args[4])(context, builder, args[4]).data
            mask = lanes_below(builder, kn, 16)
            loadf, storef = _mload(builder, _VF), _mstore(builder, _VF)
            zero = ir.Constant(_VF, None)
            mv = []
            for p in range(P):
                off = builder.add(mbase, builder.mul(_i64(p), ps))
                mv.append(builder.call(loadf, [builder.bitcast(builder.gep(Mp, [off]), _VF.as_pointer()),
                                               ir.Constant(ir.IntType(32), 4), mask, zero]))
            src = (mv if s_out is None
                   else [_lin(builder, [(c, mv[p]) for c, p in s_out[qq]]) for qq in range(n2 * n2)])
            u = {(a, j): _lin(builder, [(A1[j, b], src[a * n2 + b]) for b in range(n2) if A1[j, b] != 0])
                 for a in range(n2) for j in range(m)}
            for i in range(m):
                for j in range(m):
                    yv = _lin(builder, [(A1[i, a], u[a, j]) for a in range(n2) if A1[i, a] != 0])
                    _masked(builder, storef, Yp, builder.add(ybase, builder.add(
                        builder.mul(_i64(i), rs), builder.mul(_i64(j), ys))), yv, mask, 4)
            return context.get_dummy_value()

        return sig, codegen

    out_tile.__name__ = out_tile.__qualname__ = f"_out_{name}"
    return intrinsic(out_tile)


_in_f2, _in_s4, _in_s6 = (_make_in(a) for a in ALGORITHMS)
_out_f2, _out_s4, _out_s6 = (_make_out(a) for a in ALGORITHMS)


@njit(inline="always")
def _in_tile(alg, xp, base, rowb, C4, mult, q, xu, obase):  # pragma: no cover - compiled
    for c0 in range(0, C4, 16):
        if alg == 0:
            _in_f2(xp, base, rowb, C4, c0, mult, q, xu, obase)
        elif alg == 1:
            _in_s4(xp, base, rowb, C4, c0, mult, q, xu, obase)
        else:
            _in_s6(xp, base, rowb, C4, c0, mult, q, xu, obase)


@njit(inline="always")
def _out_tile(alg, M, mbase, ps, kn, Y, ybase, rs, ys):  # pragma: no cover - compiled
    for k0 in range(0, kn, 16):
        nk = min(16, kn - k0)
        if alg == 0:
            _out_f2(M, mbase + k0, ps, nk, Y, ybase + k0, rs, ys)
        elif alg == 1:
            _out_s4(M, mbase + k0, ps, nk, Y, ybase + k0, rs, ys)
        else:
            _out_s6(M, mbase + k0, ps, nk, Y, ybase + k0, rs, ys)


@njit(cache=True, nogil=True)
def fast_int8(alg, xq, xp, wpk, corr, scale, zero, out, counter, bias, act, lo, hi, mult, qmax,
              m, r, pt, pl, cr, tok, xu, M, Yb):  # pragma: no cover - compiled
    """One thread's share of an int8 fast convolution (see the module notes): ``alg`` the
    algorithm's index in `ALGORITHMS`, ``xq`` int8 codes (N,
    C, H, W), ``xp`` uint8 for their shifted, padded channels-last copy (N, TH m + r - 1,
    TW m + r - 1, C4), ``wpk`` / ``corr`` the transform-domain filter packed as a 1x1 layer
    with P groups (`convolab.kernels.int8.pack_weights`; ``corr`` with KB zeros appended),
    ``scale`` float32 (P K + KB) the dequantisation per (frequency, output channel), ``zero``
    float32 zeros as long, ``out`` float32 (N, K, OH, OW), ``counter`` 6 zeroed int64; ``bias``
    float32 (K) or empty, ``act`` 0 none / 1 ReLU / 2 clamp(lo, hi); ``mult`` float64 (P)
    ``s_x / s_v``, ``qmax`` the transform codes' bound; ``m``, ``r`` the output tile and the
    kernel, ``pt``, ``pl`` the padding, ``cr`` tile rows per chunk; ``xu``, ``M``, ``Yb``: this
    thread's buffers (P cr TW KB float32, cr m TW m KB float32); ``xu`` uint8 (N TH TW P
    C4) the transform-domain codes, shared."""
    N, C, H, W = xq.shape
    K = out.shape[1]
    OH = out.shape[2]
    OW = out.shape[3]
    P = mult.shape[0]
    TH = (OH + m - 1) // m
    TW = (OW + m - 1) // m
    Hp = TH * m + r - 1
    Wp = TW * m + r - 1
    C4 = (C + 3) // 4 * 4
    xp32 = xp.view(np.uint32)
    xf = xq.reshape(xq.size)
    nrows = N * Hp
    while True:
        row = fetch_add(counter, 0)
        if row >= nrows:
            break
        _pack_row(xf, xp32, row, C, H, W, Hp, Wp, 1, C, C4, pt, pl, 1, 1, H * W, W)
        fetch_add(counter, 1)
    wait_until(counter, 1, nrows)
    # every tile's input transform, tile rows as tasks, into the layer's transform-domain
    # codes ``xu`` (tile t, frequency p, channels)
    rows = N * TH
    rowb = Wp * C4
    while True:
        row = fetch_add(counter, 2)
        if row >= rows:
            break
        img = row // TH
        th = row - img * TH
        for tw in range(TW):
            _in_tile(alg, xp, ((img * Hp + th * m) * Wp + tw * m) * C4, rowb, C4, mult, qmax,
                     xu, (row * TW + tw) * P * C4)
        fetch_add(counter, 3)
    wait_until(counter, 3, rows)
    nq = C4 // 4
    KB = corr.size - P * K
    nkb = (K + KB - 1) // KB
    blk = nq * 4 * KB
    nch = (rows + cr - 1) // cr
    taps = np.zeros(1, dtype=np.int64)
    iout = np.zeros(0, dtype=np.int32)
    Mf = M.reshape(M.size)
    rs = TW * m * KB
    OHOW = OH * OW
    of = out.reshape(out.size)
    # tasks (chunk of tile rows, k-block): the chunk's products of KB channels at every
    # frequency (each packed weight read once per task), their output transform and their
    # rows of the NCHW planes
    ntask = nch * nkb
    while True:
        task = fetch_add(counter, 4)
        if task >= ntask:
            break
        ch = task // nkb
        kb = task - ch * nkb
        r0 = ch * cr
        nr = min(rows, r0 + cr) - r0
        tc = nr * TW
        xb = r0 * TW * P * C4
        ntile = (tc + MR - 1) // MR
        k0 = kb * KB
        kn = min(KB, K - k0)
        for p in range(P):
            woff = (p * nkb + kb) * blk
            ob = p * tc * KB
            for qt in range(ntile):
                v0 = qt * MR
                npx = min(MR, tc - v0)
                if npx <= MR_TAIL:
                    _tile_tail(wpk, woff, xu, xb + p * C4, taps, 1, nq, v0, tc, 0, P * C4, iout,
                               ob, -KB, kn, npx, corr, p * K + k0, tok, Mf, scale, zero, 0,
                               np.float32(0), np.float32(0))
                else:
                    _tile(wpk, woff, xu, xb + p * C4, taps, 1, nq, v0, tc, 0, P * C4, iout, ob,
                          -KB, kn, npx, corr, p * K + k0, tok, Mf, scale, zero, 0,
                          np.float32(0), np.float32(0))
        for t in range(tc):
            rr = t // TW
            tw = t - rr * TW
            _out_tile(alg, Mf, t * KB, tc * KB, kn, Yb, (rr * m * TW + tw) * m * KB, rs, KB)
        # the chunk's output rows of these channels from channels last (Yb) to the NCHW
        # planes, 16 x 16 blocks transposed in registers, then bias and activation
        for rr in range(nr):
            row = r0 + rr
            img = row // TH
            h0 = (row - img * TH) * m
            for i in range(min(m, OH - h0)):
                h = h0 + i
                src = (rr * m + i) * rs
                for w0 in range(0, OW, 16):
                    nw = min(16, OW - w0)
                    for c0 in range(0, kn, 16):
                        nk = min(16, kn - c0)
                        _t16(Yb, src + w0 * KB + c0, KB, nw, nk, of,
                             ((img * K + k0 + c0) * OH + h) * OW + w0, OHOW, nk, nw)
                if bias.size or act:
                    for k in range(k0, k0 + kn):
                        b = bias[k] if bias.size else np.float32(0)
                        o = ((img * K + k) * OH + h) * OW
                        for w in range(OW):
                            y = of[o + w] + b
                            if act == 1:
                                y = max(y, np.float32(0))
                            elif act == 2:
                                y = min(max(y, lo), hi)
                            of[o + w] = y
        fetch_add(counter, 5)
    # every task finished before any thread returns (`team.run(..., complete=True)`)
    wait_until(counter, 5, ntask)
