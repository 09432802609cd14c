"""Pointwise (1x1, stride 1) convolution with pixels in the vector lanes, for NCHW planes.

The shared microkernel (`convolab.kernels._microkernel`) puts output channels in the lanes: a
tile is 12 pixels x 32 channels, transposed in registers before each channel's 12 pixels are
stored. On a 1x1 layer with few input channels (C = 16-40 at 56x56 and 112x112 in MobileNetV2
and EfficientNet) the reduction is 16-40 steps long and that transpose and the 32 short
stores cost as much as the multiply-adds (executor, one thread, Zen 4: 16 -> 96 at 112x112
ran at 47 GFLOP/s).

Here a tile is `KR` output channels x `NPV` vectors of 16 consecutive pixels of an NCHW plane
(48 pixels): each step loads NPV input vectors of channel c (contiguous in the plane),
broadcasts KR filter values and does KR NPV fused multiply-adds; each accumulator is 16
consecutive pixels of one output channel, stored as it is (no transpose), after the same
output stage (bias, residual, ReLU / clamp). Every output is the sum over c in order, from
zero, one ``llvm.fma`` per step: the same bits as the microkernel's.

The filter is read in the microkernel's packing ([k-block][c][KB] for a 1x1 layer, one group):
tile rows are KR consecutive lanes of a k-block.
"""

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._epilogue import F0, F1
from ._epilogue import run as epilogue_run
from ._microkernel import (
    INPUT_PREFETCH_STEPS,
    _Epi,
    _fma_fn,
    _i64,
    _masked_store,
    int64_scalars,
    lanes_below,
    masked_load,
    scalars_typed,
    splat,
)

#: output channels per tile
KR = 8
#: 16-lane pixel vectors per tile
NPV = 3
#: pixels per tile
PX = 16 * NPV
#: input channels below which a tile prefetches its successor's output lines without a residual
#: (a short reduction leaves the store misses exposed; a long one hides them, and the
#: prefetches then only cost: see `_make_tile`)
PREFETCH_MAX_CHANNELS = 192
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _vector_ops(builder):
    """16-lane float32 vectors: the type, its pointer, the alignment operand, ``llvm.fma``,
    ``llvm.masked.load`` / ``store`` and the mask type."""
    vty = ir.VectorType(ir.FloatType(), 16)
    mstore, mty = _masked_store(builder, vty, 4)
    return (vty, vty.as_pointer(), ir.Constant(_I32, 4), _fma_fn(builder, vty),
            masked_load(builder, vty), mstore, mty)


def _make_tile(full: bool, stage: tuple[int, int] | None = None):
    """The tile intrinsic ``tile(w, woff, wstride, x, xoff, P, C, out, ooff, kn, p0, npx, eb,
    eko, er, erd, emode, ecode, elo, ehi)``: for rows ``i < kn`` and pixels ``p0 <= p < p0 +
    npx`` (``npx <= PX``; exactly PX when ``full``), ``out[ooff + i P + p] = stage(sum_c
    w[woff + c wstride + i] x[xoff + c P + p])``, the output stage of `_Epi` with channel
    ``eko + i`` and residual ``er[erd + ooff + i P + p]``."""

    def impl(typingctx, w, woff, wstride, x, xoff, P, C, out, ooff, kn, p0, npx, eb, eko, er,
             erd, emode, ecode, elo, ehi):
        tys = (w, woff, wstride, x, xoff, P, C, out, ooff, kn, p0, npx, eb, eko, er, erd, emode,
               ecode, elo, ehi)
        arrays = (0, 3, 7, 12, 14)
        floats = (18, 19)
        if not (scalars_typed(tys, arrays, floats) and isinstance(w, types.Array)
                and w.dtype == types.float32):
            return None
        sig = types.void(*tys)

        def codegen(context, builder, sig, args):
            a = int64_scalars(context, builder, sig, args, arrays, floats)
            if stage is not None:  # the output stage known when compiled: no tests per vector
                a[16], a[17] = _i64(stage[0]), _i64(stage[1])
            woff, wstride, xoff, P, C, ooff, kn, p0, npx = (a[i] for i in (1, 2, 4, 5, 6, 8, 9,
                                                                            10, 11))
            flt = ir.FloatType()
            vty, vpty, align, fmaf, mload, mstore, mty = _vector_ops(builder)
            wp = builder.gep(context.make_array(sig.args[0])(context, builder, a[0]).data, [woff])
            xp = builder.gep(context.make_array(sig.args[3])(context, builder, a[3]).data,
                             [builder.add(xoff, p0)])
            op = context.make_array(sig.args[7])(context, builder, a[7]).data
            epi = _Epi(context, builder, sig, a, 12, flt, vty)
            zero = ir.Constant(vty, None)
            if full:
                masks = [ir.Constant(mty, [1] * 16)] * NPV
            else:
                masks = [lanes_below(builder, builder.sub(npx, _i64(16 * j)), 16)
                         for j in range(NPV)]
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(NPV)]
                    for _ in range(KR)]
            if full:
                # the next tile's output lines (for writing) where its reduction is short or a
                # residual is added, and then its residual lines: 2 KR NPV streams, more than
                # the hardware prefetcher follows. Executor, one thread, Zen 4, inside the
                # networks' runs: with the prefetch, EfficientNet-Lite0's 32 -> 16 at 112x112
                # (batch 8) 1.23 ms against 1.58 without, 96 -> 24 at 56x56 1.19 / 1.29;
                # without it, ResNet-50's 256 -> 64 at 56x56 ran at 1.07x ONNX Runtime's time
                # against 1.20x with it, 512 -> 128 at 28x28 1.01x / 1.09x; its 64 -> 256 + the
                # residual at 1.17-1.27x with the prefetches, 1.24-1.40x without
                i8p = ir.IntType(8).as_pointer()
                prefetch = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]),
                    "llvm.prefetch.p0")
                has_res = builder.icmp_unsigned("!=", builder.and_(a[16], _i64(4)), _i64(0))
                short = builder.icmp_signed("<", C, _i64(PREFETCH_MAX_CHANNELS))
                for i in range(KR):
                    nxt = builder.add(builder.add(builder.add(ooff, builder.mul(_i64(i), P)), p0),
                                      _i64(PX))
                    for j in range(NPV):
                        at = builder.add(nxt, _i64(16 * j))
                        with builder.if_then(builder.or_(has_res, short)):
                            builder.call(prefetch, [builder.bitcast(builder.gep(op, [at]), i8p),
                                                    ir.Constant(_I32, 1), ir.Constant(_I32, 3),
                                                    ir.Constant(_I32, 1)])
                        # the residual's own lines, unless the output overwrites it (the same
                        # lines, prefetched for writing above)
                        apart = builder.icmp_unsigned("!=", epi.erd, _i64(0))
                        with builder.if_then(builder.and_(has_res, apart)):
                            rp = builder.gep(epi.er, [builder.add(epi.erd, at)])
                            builder.call(prefetch, [builder.bitcast(rp, i8p),
                                                    ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                                                    ir.Constant(_I32, 1)])
            if full:
                i8p = ir.IntType(8).as_pointer()
                prefetch = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]),
                    "llvm.prefetch.p0")
                ahead = builder.mul(P, _i64(INPUT_PREFETCH_STEPS))
            with cgutils.for_range(builder, C) as lp:
                c = lp.index
                xrow = builder.gep(xp, [builder.mul(c, P)])
                if full:  # the input of the channel INPUT_PREFETCH_STEPS steps ahead
                    for j in range(NPV):
                        builder.call(prefetch, [builder.bitcast(builder.gep(
                            xrow, [builder.add(ahead, _i64(16 * j))]), i8p),
                            ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
                xs = []
                for j in range(NPV):
                    ptr = builder.bitcast(builder.gep(xrow, [_i64(16 * j)]), vpty)
                    if full:
                        xs.append(builder.load(ptr, align=4))
                    else:
                        xs.append(builder.call(mload, [ptr, align, masks[j], zero]))
                wrow = builder.gep(wp, [builder.mul(c, wstride)])
                for i in range(KR):
                    wv = splat(builder, builder.load(builder.gep(wrow, [_i64(i)])), vty)
                    for j in range(NPV):
                        builder.store(builder.call(fmaf, [xs[j], wv, builder.load(accs[i][j])]),
                                      accs[i][j])
            for i in range(KR):
                with builder.if_then(builder.icmp_signed("<", _i64(i), kn)):
                    row = builder.add(builder.add(ooff, builder.mul(_i64(i), P)), p0)
                    for j in range(NPV):
                        index = builder.add(row, _i64(16 * j))
                        v = epi.apply(builder, builder.load(accs[i][j]), i, index, masks[j])
                        ptr = builder.bitcast(builder.gep(op, [index]), vpty)
                        if full:
                            builder.store(v, ptr, align=4)
                        else:
                            builder.call(mstore, [v, ptr, align, masks[j]])
            return context.get_dummy_value()

        return sig, codegen

    impl.__name__ = impl.__qualname__ = "_pv_tile" + ("_full" if full else "") + (
        "" if stage is None else f"_m{stage[0]}_c{stage[1]}")
    return intrinsic(impl)


_pv_tile_full = _make_tile(True)
_pv_tile = _make_tile(False)
# full tiles of ResNet-style output stages compiled for them (bias + ReLU, bias + residual +
# ReLU): the output stage's tests per vector folded away. Tiles alone, one thread, Zen 4: 64 ->
# 256 at 56x56 with bias + ReLU 0.959-0.968 -> 0.937-0.946 ms, with the residual 1.030-1.036 ->
# 1.015-1.027; 256 -> 64 0.922 -> 0.914; 128 -> 512 at 28x28 + residual 0.983-1.004 -> 0.974-0.997
_pv_tile_full_br = _make_tile(True, (2, 1))
_pv_tile_full_brr = _make_tile(True, (6, 1))


@njit(nogil=True, cache=True)
def pointwise_task(wflat, woff, KB, A, xoff, yoff, P, C, K, kb, p0, p1,
                   epi):  # pragma: no cover - compiled
    """Output channels ``kb KB .. kb KB + KB - 1`` (those below ``K``) of pixels ``p0 .. p1 -
    1`` of one image: input planes at ``A[xoff + c P]``, output planes at ``A[yoff + k P]``,
    the k-block's packed filter at ``wflat[woff + kb C KB]``. ``epi = (ebias, eres, erd,
    emode, ecode, elo, ehi)``: the residual of output ``A[o]`` is ``eres[erd + o]``; stages
    other than bias, residual and ReLU / clamp run as a pass over the task's outputs after."""
    ebias, eres, erd, emode, ecode, elo, ehi = epi
    fused = ecode <= 2 and emode & 1 == 0
    fm = emode if fused else 0
    fc = ecode if fused else 0
    k1 = min(K, kb * KB + KB)
    wk = woff + kb * C * KB
    for p in range(p0, p1, PX):
        npx = min(PX, p1 - p)
        for k0 in range(kb * KB, k1, KR):
            kn = min(KR, k1 - k0)
            if npx == PX and fm == 2 and fc == 1:
                _pv_tile_full_br(wflat, wk + k0 - kb * KB, KB, A, xoff, P, C, A, yoff + k0 * P,
                                 kn, p, npx, ebias, k0, eres, erd, fm, fc, elo, ehi)
            elif npx == PX and fm == 6 and fc == 1:
                _pv_tile_full_brr(wflat, wk + k0 - kb * KB, KB, A, xoff, P, C, A, yoff + k0 * P,
                                  kn, p, npx, ebias, k0, eres, erd, fm, fc, elo, ehi)
            elif npx == PX:
                _pv_tile_full(wflat, wk + k0 - kb * KB, KB, A, xoff, P, C, A, yoff + k0 * P, kn,
                              p, npx, ebias, k0, eres, erd, fm, fc, elo, ehi)
            else:
                _pv_tile(wflat, wk + k0 - kb * KB, KB, A, xoff, P, C, A, yoff + k0 * P, kn, p,
                         npx, ebias, k0, eres, erd, fm, fc, elo, ehi)
    if (emode != 0 or ecode != 0) and not fused:
        for k in range(kb * KB, k1):
            o = yoff + k * P + p0
            epilogue_run(A, o, eres, erd + o, p1 - p0, F1, ebias[k] if emode & 2 else F0,
                         emode, ecode, elo, ehi)


#: 16-feature blocks of a linear layer's packed weight per tile (independent accumulators)
LINEAR_NB = 4


@intrinsic
def linear_tile(typingctx, wp, woff, C, x, xoff, out, ooff, kn, b, boff, has_bias):
    """Up to ``16 LINEAR_NB`` outputs of a linear layer (float32): ``out[ooff + k] = sum_c
    x[xoff + c] wp[woff + c 16 LINEAR_NB + k] (+ b[boff + k])`` for ``k < kn``; ``wp`` packed
    as [tile][C][16 LINEAR_NB] (`convolab.runtime._kernels.pack_linear`, zero past the
    features): one contiguous stream per tile (four streams C 16 apart shared cache sets when
    C was a power of two: 2048 channels ran 3x slower than 1280). One vector
    accumulator per block, one fused multiply-add per channel in channel order from zero,
    then the bias: LINEAR_NB independent chains hide the multiply-add latency (a loop over a
    16-element array ran at 8 GFLOP/s on EfficientNet-Lite0's classifier, 0.32 ms)."""
    ints = (woff, C, xoff, ooff, kn, boff)
    if not all(isinstance(t, types.Integer) for t in ints):
        return None
    if not all(isinstance(a, types.Array) and a.dtype == types.float32 for a in (wp, x, out, b)):
        return None
    sig = types.void(wp, woff, C, x, xoff, out, ooff, kn, b, boff, has_bias)

    def codegen(context, builder, sig, args):
        woff, C, xoff, ooff, kn, boff = (context.cast(builder, args[i], sig.args[i], types.int64)
                                         for i in (1, 2, 4, 6, 7, 9))
        has_bias = context.cast(builder, args[10], sig.args[10], types.boolean)
        vty, vpty, align, fmaf, mload, mstore, _ = _vector_ops(builder)
        wbase = builder.gep(context.make_array(sig.args[0])(context, builder, args[0]).data, [woff])
        xp = builder.gep(context.make_array(sig.args[3])(context, builder, args[3]).data, [xoff])
        op = builder.gep(context.make_array(sig.args[5])(context, builder, args[5]).data, [ooff])
        bp = builder.gep(context.make_array(sig.args[8])(context, builder, args[8]).data, [boff])
        zero = ir.Constant(vty, None)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(LINEAR_NB)]
        with cgutils.for_range(builder, C) as lp:
            c = lp.index
            xv = splat(builder, builder.load(builder.gep(xp, [c])), vty)
            for i in range(LINEAR_NB):
                off = builder.add(builder.mul(c, _i64(16 * LINEAR_NB)), _i64(16 * i))
                wv = builder.load(builder.bitcast(builder.gep(wbase, [off]), vpty), align=4)
                builder.store(builder.call(fmaf, [xv, wv, builder.load(accs[i])]), accs[i])
        bias = splat(builder, has_bias, ir.VectorType(ir.IntType(1), 16))
        for i in range(LINEAR_NB):
            mask = lanes_below(builder, builder.sub(kn, _i64(16 * i)), 16)
            v = builder.load(accs[i])
            bptr = builder.bitcast(builder.gep(bp, [_i64(16 * i)]), vpty)
            bv = builder.call(mload, [bptr, align, builder.and_(mask, bias), zero])
            v = builder.select(has_bias, builder.fadd(v, bv), v)
            optr = builder.bitcast(builder.gep(op, [_i64(16 * i)]), vpty)
            builder.call(mstore, [v, optr, align, mask])
        return context.get_dummy_value()

    return sig, codegen
