"""Direct convolution kernel (NCHW, zero-padded input), parallel over independent outputs.

A task computes a block of output channels (4, or 1 for the remainder of K/groups) over a
block of output rows. The rows of a block are computed as one flat run over the input row
width (``p = i * wrow + j``; the input of output ``p`` for product (c, r, s) is then
``p + qoff[(c, r, s)]``: one contiguous slice per product), and the ``wrow - OW`` wrapped
columns are discarded. For unit stride the input is the zero-padded image (``wrow`` = padded
width); for strided layers it is the padded image split into stride phases (see
`convolab.algorithms.direct`), which makes every product's inputs contiguous again.
The reduction over (c, r, s) is flattened and consumed four
products at a time, so each accumulator load/store serves four multiply-adds and each loaded
input vector serves four output channels; the inner loop is a plain contiguous loop that LLVM
vectorises to the host's full SIMD width (16 float32 lanes with AVX-512).

Summation order, whatever the path: every output is ``fma(w_n, x_n, ... fma(w_1, x_1, fma(w_0,
x_0, 0)))`` over its products in (c, r, s) lexicographic order -- one fused multiply-add per
product (``llvm.fma``, exact on every CPU), no fast-math -- the order and rounding of the
microkernel (`convolab.kernels._microkernel`). Vector lanes are different outputs, threads own
disjoint outputs: the result is bit-identical for any thread count, SIMD width and CPU.

Size: the depthwise kernels (blocked and per plane), the small-channel loops and the phase-
plane fill share their row helpers and are inlined into the runtime's executor together; one
compiled unit.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types, uint64
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._atomics import fetch_add, wait_until
from ._epilogue import F0, F1
from ._epilogue import run as epilogue_run
from ._microkernel import (
    _fma_fn,
    _masked_store,
    _transpose16,
    clamp_vec,
    fma,
    lanes_below,
    masked_load,
    relu_vec,
    splat,
)

# Index arithmetic in the inner loops is unsigned (uint64): Numba adds a negative-index
# wrap-around select to every signed index, which stops LLVM from vectorising the loop, and
# slicing views in the loop would cost reference-count updates per slice.


@njit(inline="always")
def _taps4_k4(acc, a0, a1, a2, a3, x, o0, o1, o2, o3, w, k0, k1, k2, k3, L):  # pragma: no cover
    w00, w01, w02, w03 = w[k0], w[k0 + 1], w[k0 + 2], w[k0 + 3]
    w10, w11, w12, w13 = w[k1], w[k1 + 1], w[k1 + 2], w[k1 + 3]
    w20, w21, w22, w23 = w[k2], w[k2 + 1], w[k2 + 2], w[k2 + 3]
    w30, w31, w32, w33 = w[k3], w[k3 + 1], w[k3 + 2], w[k3 + 3]
    for j in range(L):
        u0 = x[o0 + j]
        u1 = x[o1 + j]
        u2 = x[o2 + j]
        u3 = x[o3 + j]
        v = acc[a0 + j]
        v = fma(w00, u0, v)
        v = fma(w01, u1, v)
        v = fma(w02, u2, v)
        v = fma(w03, u3, v)
        acc[a0 + j] = v
        v = acc[a1 + j]
        v = fma(w10, u0, v)
        v = fma(w11, u1, v)
        v = fma(w12, u2, v)
        v = fma(w13, u3, v)
        acc[a1 + j] = v
        v = acc[a2 + j]
        v = fma(w20, u0, v)
        v = fma(w21, u1, v)
        v = fma(w22, u2, v)
        v = fma(w23, u3, v)
        acc[a2 + j] = v
        v = acc[a3 + j]
        v = fma(w30, u0, v)
        v = fma(w31, u1, v)
        v = fma(w32, u2, v)
        v = fma(w33, u3, v)
        acc[a3 + j] = v


@njit(inline="always")
def _tap1_k4(acc, a0, a1, a2, a3, x, o0, w, k0, k1, k2, k3, L):  # pragma: no cover
    w00, w10, w20, w30 = w[k0], w[k1], w[k2], w[k3]
    for j in range(L):
        u0 = x[o0 + j]
        acc[a0 + j] = fma(w00, u0, acc[a0 + j])
        acc[a1 + j] = fma(w10, u0, acc[a1 + j])
        acc[a2 + j] = fma(w20, u0, acc[a2 + j])
        acc[a3 + j] = fma(w30, u0, acc[a3 + j])


@njit(inline="always")
def _taps4_k1(acc, a0, x, o0, o1, o2, o3, w, k0, L):  # pragma: no cover
    w00, w01, w02, w03 = w[k0], w[k0 + 1], w[k0 + 2], w[k0 + 3]
    for j in range(L):
        v = acc[a0 + j]
        v = fma(w00, x[o0 + j], v)
        v = fma(w01, x[o1 + j], v)
        v = fma(w02, x[o2 + j], v)
        v = fma(w03, x[o3 + j], v)
        acc[a0 + j] = v


@njit(inline="always")
def _tap1_k1(acc, a0, x, o0, w, k0, L):  # pragma: no cover
    w00 = w[k0]
    for j in range(L):
        acc[a0 + j] = fma(w00, x[o0 + j], acc[a0 + j])


@njit(cache=True, nogil=True)
def direct_nchw(xf, w, out, qoff, wrow, cstride, groups, counter):  # pragma: no cover - compiled
    """``xf``: (N, C*cstride) flat images whose output rows run ``wrow`` elements apart;
    ``qoff[q]``: input offset of product q = (c, r, s) of a group, relative to output (0, 0).
    One thread's share of a team job (`convolab.kernels.team`): tasks (image, group, block of
    channels, block of rows) from ``counter[0]``, finished ones counted in ``counter[1]`` (zeroed
    by the caller; a complete team job)."""
    N = xf.shape[0]
    K, Cg, R, S = w.shape
    OH = out.shape[2]
    OW = out.shape[3]
    Kg = K // groups
    T = R * S
    Q = Cg * T
    RB = max(1, min(OH, 1024 // wrow))
    nrb = (OH + RB - 1) // RB
    nk4 = Kg // 4
    nkt = nk4 + Kg % 4  # channel blocks: nk4 of four channels, then single channels
    wf = w.reshape(K * Cg * T)
    # round each run up to whole 16-lane vectors when the extra lanes (discarded, like the
    # wrapped columns) stay inside the input array, so no scalar epilogue runs
    width = ((RB * wrow + 15) // 16) * 16
    total = xf.shape[1]
    qmax = 0
    for q in range(Q):
        qmax = max(qmax, qoff[q])
    ntask = N * groups * nkt * nrb
    while True:
        task = fetch_add(counter, 0)
        if task >= ntask:
            break
        rb = task % nrb
        rest = task // nrb
        kb = rest % nkt
        rest = rest // nkt
        g = rest % groups
        n = rest // groups
        oh0 = rb * RB
        rows = min(RB, OH - oh0)
        base = g * Cg * cstride + oh0 * wrow
        Li = (rows - 1) * wrow + OW
        Lr = ((Li + 15) // 16) * 16
        L = uint64(Lr if base + qmax + Lr <= total else Li)
        kk = 4 if kb < nk4 else 1
        k0 = g * Kg + (kb * 4 if kb < nk4 else nk4 * 4 + (kb - nk4))
        acc = np.zeros(kk * width, dtype=out.dtype)
        xn = xf[n]
        a0 = uint64(0)
        a1 = uint64(width)
        a2 = uint64(2 * width)
        a3 = uint64(3 * width)
        wstep = uint64(Q)
        q = 0
        while q < Q:
            o0 = uint64(base + qoff[q])
            wk0 = uint64(k0 * Q + q)
            if q + 4 <= Q:
                o1 = uint64(base + qoff[q + 1])
                o2 = uint64(base + qoff[q + 2])
                o3 = uint64(base + qoff[q + 3])
                if kk == 4:
                    _taps4_k4(acc, a0, a1, a2, a3, xn, o0, o1, o2, o3, wf,
                              wk0, wk0 + wstep, wk0 + 2 * wstep, wk0 + 3 * wstep, L)
                else:
                    _taps4_k1(acc, a0, xn, o0, o1, o2, o3, wf, wk0, L)
                q += 4
            else:
                if kk == 4:
                    _tap1_k4(acc, a0, a1, a2, a3, xn, o0, wf,
                             wk0, wk0 + wstep, wk0 + 2 * wstep, wk0 + 3 * wstep, L)
                else:
                    _tap1_k1(acc, a0, xn, o0, wf, wk0, L)
                q += 1
        for q in range(kk):
            for i in range(rows):
                for j in range(OW):
                    out[n, k0 + q, oh0 + i, j] = acc[q * width + i * wrow + j]
        fetch_add(counter, 1)
    wait_until(counter, 1, ntask)  # all tasks done before any thread returns (complete job)


@intrinsic
def copy_run(typingctx, dst, doff, src, soff, n):
    """``dst[doff + i] = src[soff + i]`` for ``i < n``, the two runs not overlapping (the
    caller's promise): one ``llvm.memcpy``. Numba's slice assignment within one array (the
    executor's arena) must allow for overlap and copied element by element: 3% of a 3x3
    layer's time (64 -> 64 at 56x56, one thread, Zen 4) went to copying its planes into the
    padded copy."""
    if not all(isinstance(t, types.Integer) for t in (doff, soff, n)):
        return None
    sig = types.void(dst, doff, src, soff, n)

    def codegen(context, builder, sig, args):
        d = context.make_array(sig.args[0])(context, builder, args[0]).data
        s = context.make_array(sig.args[2])(context, builder, args[2]).data
        doff, soff, n = (context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 3, 4))
        size = context.get_abi_sizeof(context.get_value_type(sig.args[0].dtype))
        cgutils.raw_memcpy(builder, builder.gep(d, [doff]), builder.gep(s, [soff]), n, size, 4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def max16(typingctx, dst, doff, src, soff):
    """``dst[doff + i] = maximum(dst[doff + i], src[soff + i])`` for ``i < 16`` (float32; NaN
    if either is, `convolab.kernels._epilogue.maximum`'s rule): one 16-lane
    ``llvm.maximum`` on unaligned loads, the runs not overlapping. A loop of 16 scalar
    `maximum` calls in a pooling window (channel-blocked max pooling) ran three times slower
    than the NCHW kernel's long vectorised runs."""
    if not all(isinstance(t, types.Integer) for t in (doff, soff)):
        return None
    if dst.dtype != types.float32 or src.dtype != types.float32:
        return None
    sig = types.void(dst, doff, src, soff)

    def codegen(context, builder, sig, args):
        vty = ir.VectorType(ir.FloatType(), 16)
        d = context.make_array(sig.args[0])(context, builder, args[0]).data
        s = context.make_array(sig.args[2])(context, builder, args[2]).data
        doff, soff = (context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 3))
        dp = builder.bitcast(builder.gep(d, [doff]), vty.as_pointer())
        sp = builder.bitcast(builder.gep(s, [soff]), vty.as_pointer())
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty]),
                                            "llvm.maximum.v16f32")
        builder.store(builder.call(fn, [builder.load(dp, align=4), builder.load(sp, align=4)]),
                      dp, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def maxwin16(typingctx, dst, doff, src, soff, kh, kw, rstep, sstep):
    """``dst[doff + i]`` = the `maximum` of ``src[soff + r rstep + s sstep + i]`` over the
    window's taps in row-major order (the first tap, then each later one), ``i < 16``
    (float32): the running maximum in a register, one store (`max16` per tap stored and
    reloaded it each time)."""
    if not all(isinstance(t, types.Integer) for t in (doff, soff, kh, kw, rstep, sstep)):
        return None
    if dst.dtype != types.float32 or src.dtype != types.float32:
        return None
    sig = types.void(dst, doff, src, soff, kh, kw, rstep, sstep)

    def codegen(context, builder, sig, args):
        vty = ir.VectorType(ir.FloatType(), 16)
        d = context.make_array(sig.args[0])(context, builder, args[0]).data
        s = context.make_array(sig.args[2])(context, builder, args[2]).data
        doff, soff, kh, kw, rstep, sstep = (context.cast(builder, args[k], sig.args[k], types.int64)
                                            for k in (1, 3, 4, 5, 6, 7))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty]),
                                            "llvm.maximum.v16f32")

        def load(off):
            return builder.load(builder.bitcast(builder.gep(s, [off]), vty.as_pointer()),
                                align=4)

        acc = cgutils.alloca_once_value(builder, load(soff))
        with cgutils.for_range(builder, kh) as lr:
            row = builder.add(soff, builder.mul(lr.index, rstep))
            with cgutils.for_range(builder, kw) as ls:
                first = builder.and_(
                    builder.icmp_unsigned("==", lr.index, ir.Constant(lr.index.type, 0)),
                    builder.icmp_unsigned("==", ls.index, ir.Constant(ls.index.type, 0)))
                with builder.if_then(builder.not_(first)):
                    v = load(builder.add(row, builder.mul(ls.index, sstep)))
                    builder.store(builder.call(fn, [builder.load(acc), v]), acc)
        builder.store(builder.load(acc),
                      builder.bitcast(builder.gep(d, [doff]), vty.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def deinterleave2(typingctx, d0, o0, d1, o1, src, so, n):
    """``d0[o0 + j] = src[so + 2j]``, ``d1[o1 + j] = src[so + 2j + 1]`` for ``j < n``: whole
    vectors of pairs loaded at once and split by two shuffles (a strided scalar loop moved 2
    elements per nanosecond and was most of a stride-2 depthwise layer's time), then a scalar
    tail."""
    if not all(isinstance(t, types.Integer) for t in (o0, o1, so, n)):
        return None
    sig = types.void(d0, o0, d1, o1, src, so, n)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        flt = context.get_value_type(sig.args[0].dtype)
        VL = 64 // context.get_abi_sizeof(flt)
        ptrs = [context.make_array(sig.args[k])(context, builder, args[k]).data for k in (0, 2, 4)]
        o0, o1, so, n = (context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 3, 5, 6))
        p0 = builder.gep(ptrs[0], [o0])
        p1 = builder.gep(ptrs[1], [o1])
        ps = builder.gep(ptrs[2], [so])
        wide = ir.VectorType(flt, 2 * VL)
        half = ir.VectorType(flt, VL)
        even = ir.Constant(ir.VectorType(i32, VL), [2 * k for k in range(VL)])
        odd = ir.Constant(ir.VectorType(i32, VL), [2 * k + 1 for k in range(VL)])
        undef = ir.Constant(wide, ir.Undefined)
        nv = builder.udiv(n, ir.Constant(i64, VL))
        with cgutils.for_range(builder, nv) as lp:
            j = builder.mul(lp.index, ir.Constant(i64, VL))
            v = builder.load(builder.bitcast(builder.gep(ps, [builder.add(j, j)]), wide.as_pointer()),
                             align=4)
            builder.store(builder.shuffle_vector(v, undef, even),
                          builder.bitcast(builder.gep(p0, [j]), half.as_pointer()), align=4)
            builder.store(builder.shuffle_vector(v, undef, odd),
                          builder.bitcast(builder.gep(p1, [j]), half.as_pointer()), align=4)
        # the last n % VL pairs: one masked load, the same shuffles, masked stores (a scalar
        # loop here was most of a 56-wide row: 12 of its 28 pairs)
        start = builder.mul(nv, ir.Constant(i64, VL))
        rem = builder.sub(n, start)
        with builder.if_then(builder.icmp_signed(">", rem, ir.Constant(i64, 0))):
            mstore, _ = _masked_store(builder, half, 4)
            al = ir.Constant(i32, 4)
            v = builder.call(masked_load(builder, wide), [
                builder.bitcast(builder.gep(ps, [builder.add(start, start)]), wide.as_pointer()),
                al, lanes_below(builder, builder.add(rem, rem), 2 * VL), undef])
            m = lanes_below(builder, rem, VL)
            builder.call(mstore, [builder.shuffle_vector(v, undef, even), builder.bitcast(
                builder.gep(p0, [start]), half.as_pointer()), al, m])
            builder.call(mstore, [builder.shuffle_vector(v, undef, odd), builder.bitcast(
                builder.gep(p1, [start]), half.as_pointer()), al, m])
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def fill_phases(buf, xflat, src, H, W, sh, sw, pt, pl, hq, wq, fill):  # pragma: no cover - compiled
    """The plane ``xflat[src : src + H*W]`` padded with ``fill`` and split into stride phases:
    padded pixel (i, j) at ``buf[((i % sh) * sw + j % sw) * hq * wq + (i // sh) * wq + j // sw]``."""
    buf[:] = fill
    for h in range(H):
        i = h + pt
        row = ((i % sh) * sw) * hq * wq + (i // sh) * wq
        xrow = uint64(src + h * W)
        if sw == 2:
            # column w goes to phase (pl + w) % 2, position (pl + w) // 2
            p0 = pl % 2
            d0 = row + p0 * hq * wq + pl // 2
            d1 = row + (1 - p0) * hq * wq + (pl + 1) // 2
            deinterleave2(buf, d0, buf, d1, xflat, xrow, W // 2)
            if W % 2:
                buf[d0 + W // 2] = xflat[xrow + uint64(W - 1)]
            continue
        for pw in range(sw):
            # columns j = w + pl with j % sw == pw
            w0 = (pw - pl) % sw
            dst = uint64(row + pw * hq * wq + (w0 + pl) // sw)
            xs = xrow + uint64(w0)
            if sw == 1:
                for q in range(W):
                    buf[dst + uint64(q)] = xflat[xs + uint64(q)]
            else:
                for q in range((W - w0 + sw - 1) // sw):
                    buf[dst + uint64(q)] = xflat[xs + uint64(q * sw)]


def depthwise_scratch(sh, sw, hq, wq, OH, OW) -> tuple[int, int]:
    """Elements of the two work buffers of `depthwise_task`: the padded, phase-split plane and
    the flat run of ``(OH - 1) wq + OW`` outputs, rounded up to whole 16-lane vectors (the
    plane gets the slack those extra, discarded outputs read)."""
    run = -(-((OH - 1) * wq + OW) // 16) * 16
    return sh * sw * hq * wq + 16, run


@njit(nogil=True)
def depthwise_task(task, xflat, xbase, wf, wbase, of, obase, qoff, qbase, C, H, W, Kg, T, OH,
                   OW, sh, sw, pt, pl, hq, wq, buf, acc, epi):  # pragma: no cover - compiled
    """Plane ``task`` = (image n, channel c) of a depthwise convolution: pad the input plane
    (``xflat[xbase + task H W:]``, split into stride phases) into ``buf``, which stays in the
    cache, then compute output planes ``c Kg .. c Kg + Kg - 1`` of image n (at ``obase`` in
    ``of``). Output (oh, ow) reads tap t at ``buf[oh wq + ow + qoff[qbase + t]]``, so the
    outputs are computed as one flat run over ``p = oh wq + ow`` (``acc``; the ``wq - OW``
    wrapped columns are computed and dropped): one long vectorised loop even for 7x7 planes,
    whose rows were too short for vectors. 3x3 filters in one pass of 9 fused multiply-adds
    per output, others 4 taps per pass. ``wf[wbase + k T + t]``: tap t of channel k. Every
    output is ``fma(w_8, x_8, ... fma(w_0, x_0, 0))`` in (r, s) order: the order of the other
    direct kernels. Then the output stage ``epi = (ebias, eres, eoff, emode, ecode, elo,
    ehi)`` (`convolab.kernels._epilogue`; ``emode`` and ``ecode`` 0: none) over each plane
    while it is in cache, the residual at ``eres[eoff + plane offset]``."""
    ebias, eres, eoff, emode, ecode, elo, ehi = epi
    n = task // C
    c = task - n * C
    K = C * Kg
    zero = xflat.dtype.type(0)
    # the run rounded up to whole 16-lane vectors: no scalar remainder loop (for a 7x7 plane,
    # 3x3 taps, L = 61 outputs had run entirely in one); the extra outputs read the slack at
    # the end of buf and are discarded with the wrapped columns
    L = uint64(((OH - 1) * wq + OW + 15) // 16 * 16)
    fill_phases(buf, xflat, xbase + task * H * W, H, W, sh, sw, pt, pl, hq, wq, zero)
    for kk in range(Kg):
        k = c * Kg + kk
        wk = wbase + k * T
        plane = (n * K + k) * OH * OW
        ob = obase + plane
        if T == 9:
            w0, w1, w2, w3, w4 = wf[wk], wf[wk + 1], wf[wk + 2], wf[wk + 3], wf[wk + 4]
            w5, w6, w7, w8 = wf[wk + 5], wf[wk + 6], wf[wk + 7], wf[wk + 8]
            q0, q1, q2 = uint64(qoff[qbase]), uint64(qoff[qbase + 1]), uint64(qoff[qbase + 2])
            q3, q4, q5 = uint64(qoff[qbase + 3]), uint64(qoff[qbase + 4]), uint64(qoff[qbase + 5])
            q6, q7, q8 = uint64(qoff[qbase + 6]), uint64(qoff[qbase + 7]), uint64(qoff[qbase + 8])
            for b in range(L):
                v = fma(w0, buf[b + q0], zero)
                v = fma(w1, buf[b + q1], v)
                v = fma(w2, buf[b + q2], v)
                v = fma(w3, buf[b + q3], v)
                v = fma(w4, buf[b + q4], v)
                v = fma(w5, buf[b + q5], v)
                v = fma(w6, buf[b + q6], v)
                v = fma(w7, buf[b + q7], v)
                v = fma(w8, buf[b + q8], v)
                acc[b] = v
        else:
            for b in range(L):
                acc[b] = zero
            t = 0
            while t < T:
                if t + 4 <= T:
                    _taps4_k1(acc, uint64(0), buf, uint64(qoff[qbase + t]),
                              uint64(qoff[qbase + t + 1]), uint64(qoff[qbase + t + 2]),
                              uint64(qoff[qbase + t + 3]), wf, uint64(wk + t), L)
                    t += 4
                else:
                    _tap1_k1(acc, uint64(0), buf, uint64(qoff[qbase + t]), wf, uint64(wk + t), L)
                    t += 1
        staged = (emode != 0 or ecode != 0) and emode & 4 == 0
        if staged:  # no residual: the output stage over the whole vectors of the run
            epilogue_run(acc, 0, eres, 0, L, F1, ebias[k] if emode & 2 else F0, emode, ecode,
                         elo, ehi)
        for oh in range(OH):
            src = uint64(oh * wq)
            dst = uint64(ob + oh * OW)
            for j in range(uint64(OW)):
                of[dst + j] = acc[src + j]
        if (emode != 0 or ecode != 0) and not staged:
            epilogue_run(of, ob, eres, eoff + plane, OH * OW, F1,
                         ebias[k] if emode & 2 else F0, emode, ecode, elo, ehi)


class _VectorStage:
    """Bias (lanes below ``nb`` of ``eb[ebo:]``) and ReLU / clamp on 16-lane vectors, by
    ``emode`` (bit 2) and ``ecode`` (1, 2), as `convolab.kernels._epilogue.run` computes them."""

    def __init__(self, builder, vty, size, ebp, ebo, nb, emode, ecode, lo, hi):
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        self.vty, self.builder = vty, builder
        ptr = builder.bitcast(builder.gep(ebp, [ebo]), vty.as_pointer())
        zero = ir.Constant(vty, None)
        bias = cgutils.alloca_once_value(builder, zero)
        self.add = builder.icmp_unsigned("!=", builder.and_(emode, ir.Constant(i64, 2)),
                                         ir.Constant(i64, 0))
        with builder.if_then(self.add):
            builder.store(builder.call(masked_load(builder, vty),
                                       [ptr, ir.Constant(i32, size), lanes_below(builder, nb, 16),
                                        zero]), bias)
        self.bias = builder.load(bias)
        self.relu = builder.icmp_unsigned("==", ecode, ir.Constant(i64, 1))
        self.clamp = builder.icmp_unsigned("==", ecode, ir.Constant(i64, 2))
        self.lo = splat(builder, lo, vty)
        self.hi = splat(builder, hi, vty)

    def apply(self, v):
        b = self.builder
        v = b.select(self.add, b.fadd(v, self.bias), v)
        v = b.select(self.relu, relu_vec(b, v), v)
        return b.select(self.clamp, clamp_vec(b, v, self.lo, self.hi), v)


@intrinsic
def _t16(typingctx, src, so, ss, nr, nl, dst, do, ds, nd, ml):
    """Transpose a 16x16 block between two layouts: rows ``i < nr`` are ``src[so + i ss + l]``
    for lanes ``l < nl`` (other rows and lanes zero); after the transpose, rows ``j < nd`` are
    stored to ``dst[do + j ds + l]`` for lanes ``l < ml``. Masked loads and stores, so the
    block may lie at the end of a row or of an array. Between NCHW planes and 16-lane pixels.
    ``src`` and ``dst`` hold the same type, or ``src`` signed integers (int8 codes) that are
    converted, exactly, to ``dst``'s float as they are loaded."""
    if not all(isinstance(t, types.Integer) for t in (so, ss, nr, nl, do, ds, nd, ml)):
        return None
    if src.dtype != dst.dtype and not (isinstance(src.dtype, types.Integer) and src.dtype.signed
                                       and isinstance(dst.dtype, types.Float)):
        return None
    sig = types.void(src, so, ss, nr, nl, dst, do, ds, nd, ml)

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        flt = context.get_value_type(sig.args[5].dtype)
        size = context.get_abi_sizeof(flt)
        vty = ir.VectorType(flt, 16)
        ety = context.get_value_type(sig.args[0].dtype)
        esize = context.get_abi_sizeof(ety)
        vsrc = ir.VectorType(ety, 16)
        mload = masked_load(builder, vsrc)
        mstore, _ = _masked_store(builder, vty, size)
        sp = context.make_array(sig.args[0])(context, builder, args[0]).data
        dp = context.make_array(sig.args[5])(context, builder, args[5]).data
        so, ss, nr, nl, do, ds, nd, ml = (context.cast(builder, args[k], sig.args[k], types.int64)
                                          for k in (1, 2, 3, 4, 6, 7, 8, 9))
        lmask = lanes_below(builder, nl, 16)
        smask = lanes_below(builder, ml, 16)
        zero = ir.Constant(vty, None)
        rows = []
        for i in range(16):
            slot = cgutils.alloca_once_value(builder, zero)
            with builder.if_then(builder.icmp_signed("<", ir.Constant(i64, i), nr)):
                ptr = builder.bitcast(builder.gep(sp, [builder.add(so, builder.mul(ir.Constant(i64, i), ss))]),
                                      vsrc.as_pointer())
                v = builder.call(mload, [ptr, ir.Constant(i32, esize), lmask,
                                         ir.Constant(vsrc, None)])
                builder.store(v if vsrc == vty else builder.sitofp(v, vty), slot)
            rows.append(builder.load(slot))
        cols = _transpose16(builder, rows)
        for j in range(16):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(i64, j), nd)):
                ptr = builder.bitcast(builder.gep(dp, [builder.add(do, builder.mul(ir.Constant(i64, j), ds))]),
                                      vty.as_pointer())
                builder.call(mstore, [cols[j], ptr, ir.Constant(i32, size), smask])
        return context.get_dummy_value()

    return sig, codegen


#: (S, stride) with unit dilation for which `_dw_row` reuses each loaded input vector across
#: taps (the depthwise kernels of MobileNet / EfficientNet); others take its general loop
DW_ROW_SHAPES = ((3, 1), (5, 1), (3, 2), (5, 2))
#: output pixels per block of `_dw_row` (one accumulator each) on rows at least that wide; 8 on
#: narrower ones. A pixel's taps are a chain of dependent multiply-adds: 8 chains at a time
#: kept one FMA port of Zen 4 busy but not two of a Xeon. EfficientNet-Lite0 batch 1, one
#: thread, each layer's time inside the run against ONNX Runtime's (tools/ort_gap.py, Xeon,
#: 2026-12-07): 5x5 672@14 0.99x -> 0.89-0.91x, 5x5 240@28 1.28x -> 1.17x; 14 at 7x7 (half a
#: block dropped) 1.20x -> 1.59x, hence 8 there
DW_BLOCK = 14


@intrinsic
def _dw_row(typingctx, x, buf, out, obase, xbase, rstride, ih0, H, W, col0, zbase, sw, dh, dw, R,
            S, wf, wbase, OW, eb, ebo, nb, emode, ecode, elo, ehi):
    """One output row of a channel-blocked depthwise convolution: ``out[obase + 16 p + l] =
    sum over taps (r, s) of wf[wbase + 16 (r S + s) + l] * X(ih0 + r dh, col0 + p sw + s dw)``
    for ``p < OW`` (``out``: the work buffer ``buf`` itself, or a channel-blocked output),
    each pixel's taps fused multiply-added in (r, s) order from zero. ``X(i, j)`` is the
    16-lane pixel ``x[xbase + i rstride + 16 j:]`` where ``0 <= i < H`` and ``0 <= j < W``,
    and zero elsewhere (the padding), read as the 16 zeros at ``buf[zbase:]``: so the rows may
    be a band copied into ``buf`` or the channel-blocked input itself, read where it lies.
    Pixels in blocks of `DW_BLOCK` (8 on narrower rows), their accumulators kept in registers
    over all the taps (one filter
    vector loaded per tap serves the block); blocks whose columns all lie inside the rows load
    them without a check, the others (the row's first and last, and every block of a small
    plane) choose each column's pointer (the pixel or the zero vector) first. Pixels of the
    row's last block past its end are computed and dropped. Then the output stage, lanes being
    channels: ``emode`` 2 adds ``eb[ebo + l]`` (lanes below ``nb``), ``ecode`` 1 ReLU, 2
    clamp(elo, ehi) -- the order and rounding of `convolab.kernels._epilogue.run` without a
    residual."""
    ints = (obase, xbase, rstride, ih0, H, W, col0, zbase, sw, dh, dw, R, S, wbase, OW, ebo, nb,
            emode, ecode)
    if not all(isinstance(t, types.Integer) for t in ints):
        return None
    if not (isinstance(elo, types.Float) and isinstance(ehi, types.Float)):
        return None
    if not all(isinstance(a, types.Array) and a.dtype == buf.dtype for a in (x, out)):
        return None
    sig = types.void(x, buf, out, obase, xbase, rstride, ih0, H, W, col0, zbase, sw, dh, dw, R,
                     S, wf, wbase, OW, eb, ebo, nb, emode, ecode, elo, ehi)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        flt = context.get_value_type(sig.args[1].dtype)
        size = context.get_abi_sizeof(flt)
        vty = ir.VectorType(flt, 16)
        vp = vty.as_pointer()
        xp = context.make_array(sig.args[0])(context, builder, args[0]).data
        bp = context.make_array(sig.args[1])(context, builder, args[1]).data
        outp = context.make_array(sig.args[2])(context, builder, args[2]).data
        wp = context.make_array(sig.args[16])(context, builder, args[16]).data
        ebp = context.make_array(sig.args[19])(context, builder, args[19]).data
        (obase, xbase, rstride, ih0, H, W, col0, zbase, sw, dh, dw, R, S, wbase, OW, ebo, nb,
         emode, ecode) = (context.cast(builder, args[k], sig.args[k], types.int64)
                          for k in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 18, 20, 21,
                                    22, 23))
        lo, hi = (context.cast(builder, args[k], sig.args[k], sig.args[1].dtype) for k in (24, 25))
        stage = _VectorStage(builder, vty, size, ebp, ebo, nb, emode, ecode, lo, hi)
        fmaf = _fma_fn(builder, vty)
        c16 = ir.Constant(i64, 16)
        pv = cgutils.alloca_once_value(builder, ir.Constant(i64, 0))
        zero = ir.Constant(vty, None)
        zp = builder.gep(bp, [zbase])

        def c(v):
            return ir.Constant(i64, v)

        def vload(ptr):
            return builder.load(builder.bitcast(ptr, vp), align=size)

        def row_ptr(r):
            # kernel row r's input row, or the zero vector's row where it is padding
            ih = builder.add(ih0, builder.mul(r, dh))
            ok = builder.icmp_unsigned("<", ih, H)
            return builder.select(ok, builder.gep(xp, [builder.add(xbase, builder.mul(ih, rstride))]), zp)

        def pixel(rowp, col, colok):
            # the 16-lane input pixel at column col of the row; where colok (0 <= col < W) is
            # given and false, the zero vector (a padding row's pointer is the zero row's, as
            # wide as the input rows)
            ptr = builder.gep(rowp, [builder.mul(col, c16)])
            if colok is not None:
                ptr = builder.select(colok, ptr, zp)
            return vload(ptr)

        def block(nb, keep, shape, checked):
            # keep: how many of the nb pixels are stored. shape (S, sw) with unit dilation,
            # known when the code is generated: each input vector of a kernel row is loaded
            # once and serves every (pixel, tap) that reads it (3x3: 10 loads for 24 fused
            # multiply-adds instead of 24; the loads, not the FMAs, bounded the loop); each
            # pixel still receives its taps in (r, s) order.
            accs = [cgutils.alloca_once(builder, vty) for _ in range(nb)]
            for a in accs:
                builder.store(zero, a)
            p = builder.load(pv)
            cp = builder.add(col0, builder.mul(p, sw))  # the block's first input column
            oks = None
            if shape is not None and checked:  # each column's check, once for all rows
                oks = [builder.icmp_unsigned("<", builder.add(cp, c(jj)), W)
                       for jj in range((nb - 1) * shape[1] + shape[0])]
            with cgutils.for_range(builder, R) as lr:
                rowp = row_ptr(lr.index)
                wr = builder.add(wbase, builder.mul(builder.mul(lr.index, S), c16))
                if shape is not None:
                    Sc, swc = shape
                    wvs = [vload(builder.gep(wp, [builder.add(wr, c(16 * s_))])) for s_ in range(Sc)]
                    for jj in range((nb - 1) * swc + Sc):
                        xv = pixel(rowp, builder.add(cp, c(jj)), oks[jj] if oks else None)
                        for s_ in range(Sc):
                            q, rem = divmod(jj - s_, swc)
                            if rem == 0 and 0 <= q < nb:
                                builder.store(builder.call(fmaf, [wvs[s_], xv,
                                                                  builder.load(accs[q])]), accs[q])
                else:
                    with cgutils.for_range(builder, S) as ls:
                        cs = builder.add(cp, builder.mul(ls.index, dw))
                        wv = vload(builder.gep(wp, [builder.add(wr, builder.mul(ls.index, c16))]))
                        for q, a in enumerate(accs):
                            col = builder.add(cs, builder.mul(c(q), sw))
                            xv = pixel(rowp, col, builder.icmp_unsigned("<", col, W))
                            builder.store(builder.call(fmaf, [wv, xv, builder.load(a)]), a)
            o = builder.add(obase, builder.mul(p, c16))
            for q, a in enumerate(accs):
                ptr = builder.bitcast(builder.gep(outp, [builder.add(o, c(16 * q))]), vp)
                if keep is None:
                    builder.store(stage.apply(builder.load(a)), ptr, align=size)
                else:
                    with builder.if_then(builder.icmp_signed("<", c(q), keep)):
                        builder.store(stage.apply(builder.load(a)), ptr, align=size)
            builder.store(builder.add(p, c(nb)), pv)

        def checked_block(keep, shape, nbk):
            # the block's columns, first to last, all inside the rows: no per-column check
            # (rows that are padding read the zero row, as long as the rows are)
            p = builder.load(pv)
            first = builder.add(col0, builder.mul(p, sw))
            last = builder.add(builder.add(first, builder.mul(c(nbk - 1), sw)),
                               builder.mul(builder.sub(S, c(1)), dw))
            inside = builder.and_(builder.icmp_signed(">=", first, c(0)),
                                  builder.icmp_signed("<", last, W))
            if shape is None:
                block(nbk, keep, shape, True)
                return
            with builder.if_else(inside) as (then, otherwise):
                with then:
                    block(nbk, keep, shape, False)
                with otherwise:
                    block(nbk, keep, shape, True)

        def row(shape, nbk):
            bbcond = builder.append_basic_block("dw8.cond")
            bbbody = builder.append_basic_block("dw8.body")
            bbend = builder.append_basic_block("dw8.end")
            builder.branch(bbcond)
            builder.position_at_end(bbcond)
            more = builder.icmp_signed("<=", builder.add(builder.load(pv), c(nbk)), OW)
            builder.cbranch(more, bbbody, bbend)
            builder.position_at_end(bbbody)
            checked_block(None, shape, nbk)
            builder.branch(bbcond)
            builder.position_at_end(bbend)
            # the row's last pixels as one more block: independent accumulators keep the FMA
            # pipes busy where single pixels waited on each tap's latency
            left = builder.sub(OW, builder.load(pv))
            with builder.if_then(builder.icmp_signed(">", left, c(0))):
                checked_block(left, shape, nbk)

        def rows(shape):
            # blocks of DW_BLOCK pixels on rows at least that wide, of 8 on narrower ones
            with builder.if_else(builder.icmp_signed(">=", OW, c(DW_BLOCK))) as (wide, narrow):
                with wide:
                    row(shape, DW_BLOCK)
                with narrow:
                    row(shape, 8)

        def dispatch(shapes):
            if not shapes:
                rows(None)
                return
            Sc, swc = shapes[0]
            match = builder.and_(builder.and_(
                builder.icmp_signed("==", S, c(Sc)), builder.icmp_signed("==", sw, c(swc))),
                builder.icmp_signed("==", dw, c(1)))
            with builder.if_else(match) as (then, otherwise):
                with then:
                    rows((Sc, swc))
                with otherwise:
                    dispatch(shapes[1:])

        dispatch(DW_ROW_SHAPES)
        return context.get_dummy_value()

    return sig, codegen


#: bytes of the work buffer of one channel-blocked depthwise task (`depthwise_block_task`): a
#: band of output rows and the padded input rows it reads, 16 lanes each, stays in the L2
#: cache (whole 112x112 planes took 1.6 MiB: MobileNetV2's 96-channel 3x3/2 layer at 112x112
#: ran at 1.7x ONNX Runtime's time inside a network's run)
DW_BAND_BYTES = 256 * 1024


@njit(cache=True, nogil=True)
def depthwise_band_rows(OH, OW, R, S, sh, sw, dh, dw):  # pragma: no cover - compiled
    """Output rows per band of a channel-blocked depthwise task: as many as keep the band's
    padded input rows and outputs (16 lanes of 4 bytes each) within `DW_BAND_BYTES`, the
    bands then evened out."""
    Wp = (OW - 1) * sw + (S - 1) * dw + 1
    fixed = ((R - 1) * dh + 1 - sh) * Wp
    ob = (DW_BAND_BYTES // 64 - fixed) // (sh * Wp + OW)
    ob = max(1, min(OH, ob))
    nb = (OH + ob - 1) // ob
    return (OH + nb - 1) // nb


@njit(cache=True, nogil=True)
def depthwise_block_scratch(OH, OW, R, S, sh, sw, dh, dw):  # pragma: no cover - compiled
    """Elements of `depthwise_block_task`'s work buffer: a band's padded input rows, its
    outputs and a row of zeros as wide as the input (`_dw_row` reads the padding there), 16
    lanes each."""
    ob = depthwise_band_rows(OH, OW, R, S, sh, sw, dh, dw)
    Wp = (OW - 1) * sw + (S - 1) * dw + 1
    rows = (ob - 1) * sh + (R - 1) * dh + 1
    # the zero row: the input is at most Wp + sw - 1 wide; then room for the reads of a row's
    # last block past the band's end
    return 16 * (rows * Wp + ob * OW + Wp + sw + DW_BLOCK * sw)


@njit(inline="always")
def depthwise_block_tasks(N, C, OH, OW, R, S, sh, sw, dh, dw):  # pragma: no cover - compiled
    """Tasks of a channel-blocked depthwise layer: (image, block of 16 channels, band)."""
    ob = depthwise_band_rows(OH, OW, R, S, sh, sw, dh, dw)
    return N * ((C + 15) // 16) * ((OH + ob - 1) // ob)


def _in_place_source(xflat, buf):  # pragma: no cover - typed by its overload
    """What `depthwise_block_task` reads a channel-blocked input from: ``xflat`` itself, or,
    where its type is not the work buffer's (int8 codes, converted as they are copied, never
    read in place), ``buf`` -- so that the in-place branch types for every input."""


@overload(_in_place_source, inline="always")
def _in_place_source_typed(xflat, buf):
    if xflat.dtype == buf.dtype:
        return lambda xflat, buf: xflat
    return lambda xflat, buf: buf


@njit(nogil=True)
def depthwise_block_task(task, xflat, xbase, wf, wbase, of, obase, C, H, W, R, S, OH, OW, sh, sw,
                         dh, dw, pt, pl, buf, epi, xblocked):  # pragma: no cover - compiled
    """Task ``task = (n ceil(C / 16) + b) nbands + band`` of a depthwise convolution with one
    output per channel, channel-blocked: output rows ``band * OB ..`` (`depthwise_band_rows`)
    of channels ``16 b .. 16 b + 15`` of image n. The padded input rows the band reads are
    copied into ``buf`` as 16-lane pixels (lanes are channels; lanes past C stay zero) unless
    the input is channel-blocked already (then `_dw_row` reads it where it lies, the padding
    from a row of zeros in ``buf``: the copy had cost up to 0.9x the arithmetic, Zen 4, 96
    channels 3x3/2 at 112x112), every output pixel then is one vector, the taps of a few
    pixels at a time accumulated in registers (`_dw_row`), the band's outputs are copied back
    to their NCHW planes and the output stage applied plane by plane. For planes from 7x7 (where `depthwise_task`'s
    per-plane passes over a few dozen outputs cost more than its arithmetic) to 112x112 (in
    bands that stay in the L2 cache). ``wf[wbase + (b T + t) 16 + l]``: tap t of channel
    16 b + l (packed by the plan, zero past C). Every output is ``fma(w_{T-1}, x_{T-1}, ...
    fma(w_0, x_0, 0))`` in (r, s) order: bit for bit `depthwise_task`'s result, whatever the
    bands. ``xblocked`` bit 2: the input is channel-blocked (NCHW16c: channel ``16 b + l`` of
    pixel p at ``16 b HW + 16 p + l``, C a multiple of 16): read in place, nothing copied;
    bit 1: so is the output (with a fused output stage: no residual); the bits of the
    executor's ``F_BLK``."""
    ebias, eres, eoff, emode, ecode, elo, ehi = epi
    nbk = (C + 15) // 16
    OB = depthwise_band_rows(OH, OW, R, S, sh, sw, dh, dw)
    nband = (OH + OB - 1) // OB
    band = task % nband
    rest = task // nband
    n = rest // nbk
    b = rest - n * nbk
    c0 = b * 16
    cn = min(16, C - c0)
    T = R * S
    oh0 = band * OB
    oh1 = min(OH, oh0 + OB)
    hp0 = oh0 * sh  # the band's first padded input row
    rows = (oh1 - oh0 - 1) * sh + (R - 1) * dh + 1
    Wp = (OW - 1) * sw + (S - 1) * dw + 1
    zero = xflat.dtype.type(0)
    nin = uint64(16 * rows * Wp)
    zrow = nin + uint64(16 * OB * OW)  # the zero row `_dw_row` reads the padding from
    HW = H * W
    src0 = xbase + (n * C + c0) * HW
    # a channel-blocked input is read where it lies (16-lane pixels, rows of W); an NCHW one
    # is first copied into buf: the band's padded rows as 16-lane pixels (lanes past C zero)
    inplace = xblocked & 2 != 0
    if inplace:
        for i in range(uint64(16 * (Wp + sw))):
            buf[zrow + i] = zero
    else:
        w0 = max(0, -pl)
        w1 = min(W, Wp - pl)
        for r in range(rows):
            h = hp0 + r - pt
            row = uint64(r * Wp * 16)
            if h < 0 or h >= H or w1 <= w0 or cn < 16:
                for i in range(uint64(Wp * 16)):
                    buf[row + i] = zero
                if h < 0 or h >= H:
                    continue
                if cn < 16:  # a partial block: lanes past C stay zero
                    for l in range(cn):
                        src = uint64(src0 + l * HW + h * W)
                        for w in range(w0, w1):
                            buf[row + uint64((w + pl) * 16 + l)] = xflat[src + uint64(w)]
                continue
            # zero the row's borders; each interior pixel's 16 channels gathered into one vector
            for i in range(uint64((w0 + pl) * 16)):
                buf[row + i] = zero
            for i in range(uint64((w1 + pl) * 16), uint64(Wp * 16)):
                buf[row + i] = zero
            for w in range(w0, w1, 16):
                # 16 channels x up to 16 pixels of the row, transposed to pixel vectors
                cnt = min(16, w1 - w)
                _t16(xflat, src0 + h * W + w, HW, 16, cnt, buf, row + uint64((w + pl) * 16), 16,
                     cnt, 16)
    wb = uint64(wbase + b * T * 16)
    # bias and ReLU / clamp on the pixel vectors (lanes are channels) unless a residual comes
    # first (then by the pass over each plane below, as the other kernels do)
    fused = emode & 4 == 0 and emode & 1 == 0 and ecode <= 2
    fm = emode if fused else 0
    fc = ecode if fused else 0
    OHOW = OH * OW
    ob = obase + (n * C + c0) * OHOW
    # a channel-blocked output (its stage is fused: bias, ReLU / clamp) takes the rows' pixel
    # vectors where they belong; an NCHW one gets them transposed from the work buffer
    direct_out = xblocked & 1 != 0
    for oh in range(oh0, oh1):
        o = uint64(ob + oh * OW * 16) if direct_out else nin + uint64((oh - oh0) * OW * 16)
        if inplace:
            _dw_row(_in_place_source(xflat, buf), buf, of if direct_out else buf, o, src0,
                    16 * W, oh * sh - pt, H, W,
                    -pl, zrow, sw, dh, dw, R, S, wf, wb, OW, ebias, c0 if emode & 2 else 0, cn,
                    fm, fc, elo, ehi)
        else:
            # the copied rows are padded: no check (a row's last block reads on past its end,
            # into the next row or the slack, for outputs it drops)
            _dw_row(buf, buf, of if direct_out else buf, o, 0, 16 * Wp, oh * sh - hp0, rows,
                    Wp + DW_BLOCK * sw, 0, zrow, sw, dh, dw, R, S, wf, wb, OW, ebias,
                    c0 if emode & 2 else 0, cn, fm, fc, elo, ehi)
    if direct_out:
        return
    q0 = oh0 * OW
    q1 = oh1 * OW
    for p0 in range(q0, q1, 16):
        nr = min(16, q1 - p0)
        _t16(buf, nin + uint64((p0 - q0) * 16), 16, nr, 16, of, ob + p0, OHOW, cn, nr)
    if (emode != 0 or ecode != 0) and not fused:
        for l in range(cn):
            k = c0 + l
            plane = (n * C + k) * OHOW + q0
            epilogue_run(of, obase + plane, eres, eoff + plane, q1 - q0, F1,
                         ebias[k] if emode & 2 else F0, emode, ecode, elo, ehi)


@njit(cache=True, nogil=True)
def depthwise_blocked(x, wpk, out, sh, sw, dh, dw, pt, pl, R, S,
                      counter):  # pragma: no cover - compiled
    """Depthwise convolution with one output per channel, channel-blocked
    (`depthwise_block_task`), tasks (image, block of 16 channels, band of rows) from
    ``counter[0]``, finished ones counted in ``counter[1]`` (one thread's share of a complete
    team job, `convolab.kernels.team`); ``wpk``: the filter packed [C / 16][R S][16], zero past
    C."""
    N, C, H, W = x.shape
    OH = out.shape[2]
    OW = out.shape[3]
    of = out.reshape(out.size)
    xflat = x.reshape(x.size)
    wf = wpk.reshape(wpk.size)
    buf = np.empty(depthwise_block_scratch(OH, OW, R, S, sh, sw, dh, dw), dtype=x.dtype)
    ntask = depthwise_block_tasks(N, C, OH, OW, R, S, sh, sw, dh, dw)
    while True:
        task = fetch_add(counter, 0)
        if task >= ntask:
            break
        depthwise_block_task(task, xflat, 0, wf, 0, of, 0, C, H, W, R, S, OH, OW, sh, sw, dh, dw,
                             pt, pl, buf, (of, of, 0, 0, 0, F0, F0), 0)
        fetch_add(counter, 1)
    wait_until(counter, 1, ntask)  # all tasks done before any thread returns (complete job)


@njit(cache=True, nogil=True)
def depthwise_nchw(x, w, out, qoff, sh, sw, pt, pl, hq, wq, counter):  # pragma: no cover - compiled
    """Depthwise convolution (one input channel per group; K/C outputs per channel), tasks
    (image, channel plane) from ``counter[0]``, finished ones counted in ``counter[1]``
    (`depthwise_task`; one thread's share of a complete team job, `convolab.kernels.team`)."""
    N, C, H, W = x.shape
    K = w.shape[0]
    T = w.shape[2] * w.shape[3]
    OH = out.shape[2]
    OW = out.shape[3]
    wf = w.reshape(K * T)
    of = out.reshape(out.size)
    xflat = x.reshape(x.size)
    nb = sh * sw * hq * wq + 16  # as `depthwise_scratch`
    na = ((OH - 1) * wq + OW + 15) // 16 * 16
    buf = np.empty(nb, dtype=x.dtype)
    acc = np.empty(na, dtype=x.dtype)
    while True:
        task = fetch_add(counter, 0)
        if task >= N * C:
            break
        depthwise_task(task, xflat, 0, wf, 0, of, 0, qoff, 0, C, H, W, K // C, T, OH, OW, sh, sw,
                       pt, pl, hq, wq, buf, acc, (of, of, 0, 0, 0, F0, F0))
        fetch_add(counter, 1)
    wait_until(counter, 1, N * C)  # all tasks done before any thread returns (complete job)
