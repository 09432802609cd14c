"""Compiled half of the int8 microkernel (geometry, paths and packing: `convolab.kernels.int8`).

`conv_int8_tiles` is a team job (`convolab.kernels.team`): its threads first write the
unsigned, zero-padded, channels-last copy of the int8 input (`_pack_row`, rows handed out by
an atomic counter), then run tile tasks (image, group, range of k-blocks, range of output
rows). A tile (`_make_tile`) sums, per output channel and pixel, the taps in (r, s) order and
within a tap the channels four at a time (one ``vpdpbusd`` per pixel and vector of channels),
subtracts the shift correction and stores its int32 results in NCHW (transposed in registers
on 16-lane paths). Integer sums do not depend on their order, so the result is the same on
every path, thread count and CPU.

Size: one module for the same reason as `_microkernel`: the int8 tile, pointwise, depthwise and
output-stage intrinsics share one code generator (masked loads and stores, the VNNI / widening-
multiply paths) and their drivers inline them.
"""

from __future__ import annotations

import contextlib

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._atomics import fetch_add, wait_until
from ._direct import depthwise_block_scratch, depthwise_block_task, depthwise_block_tasks
from ._int8_shape import MR, MR_TAIL, NV, PW_MK, PW_NV
from ._microkernel import (
    _fma_fn,
    _transpose16,
    clamp_vec,
    int64_scalars,
    lanes_below,
    scalars_typed,
    splat,
)

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _i64(v):
    return ir.Constant(_I64, v)


def _path(tok) -> str:
    """The path a token array's dtype selects (`convolab.kernels.int8.token`)."""
    return {types.uint8: "vnni512", types.uint16: "vnni256", types.int16: "generic"}[tok.dtype]


def _dot(builder, path, L):
    """``f(acc, a, w)``: per int32 lane, ``acc + sum_{i<4} u8(a[4l+i]) * s8(w[4l+i])``, ``a``
    and ``w`` being <L x i32> vectors of four bytes per lane."""
    vty = ir.VectorType(_I32, L)
    if path != "generic":
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty, vty]),
            f"llvm.x86.avx512.vpdpbusd.{32 * L}")
        return lambda acc, a, w: builder.call(fn, [acc, a, w])
    bty = ir.VectorType(_I8, 4 * L)
    wide = ir.VectorType(_I32, 4 * L)

    def dot(acc, a, w):
        p = builder.mul(builder.zext(builder.bitcast(a, bty), wide),
                        builder.sext(builder.bitcast(w, bty), wide))
        for i in range(4):
            part = builder.shuffle_vector(p, p, ir.Constant(ir.VectorType(_I32, L),
                                                            [4 * j + i for j in range(L)]))
            acc = builder.add(acc, part)
        return acc

    return dot


def _vsuffix(vty) -> str:
    """LLVM's name of a vector type in intrinsic names: ``v16f32``, ``v16i8``..."""
    e = vty.element
    return f"v{vty.count}{'f32' if e == ir.FloatType() else f'i{e.width}'}"


def _mload(builder, vty):
    """``llvm.masked.load`` of vectors ``vty`` (pointer, alignment, mask, pass-through)."""
    mty = ir.VectorType(ir.IntType(1), vty.count)
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty.as_pointer(), _I32, mty, vty]),
        f"llvm.masked.load.{_vsuffix(vty)}.p0")


def _mstore(builder, vty):
    """``llvm.masked.store`` of vectors ``vty`` (value, pointer, alignment, mask)."""
    mty = ir.VectorType(ir.IntType(1), vty.count)
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), _I32, mty]),
        f"llvm.masked.store.{_vsuffix(vty)}.p0")


def _signature(tys, arrays, floats):
    """``void(*tys)`` when every argument but the ``arrays`` and ``floats`` positions is an
    integer and those at ``floats`` floats (else None: Numba tries other typings)."""
    return types.void(*tys) if scalars_typed(tys, arrays, floats) else None


def _named_intrinsic(fn, name: str):
    """`intrinsic` of a factory's code generator under its own ``name`` (each variant a
    distinct intrinsic in Numba's errors and caches)."""
    fn.__name__ = fn.__qualname__ = name
    return intrinsic(fn)


def _make_tile(mr: int):
    """The tile intrinsic for ``mr`` consecutive output pixels ``v0 ..`` of an image (row after
    row: a tile may cross row ends), pixels past ``v0 + n - 1`` repeating that one.

    ``tile(w, woff, x, xbase, taps, ntap, nq, v0, OW, rowb, ps, out, obase, OHOW, kn, n, corr,
    k0, tok)``: pixel ``v`` (output ``(v // OW, v % OW)``) reads its tap ``t`` from the 4-byte
    words ``x[xbase + (v // OW) rowb + (v % OW) ps + taps[t] + 4 q]``, ``q < nq``; the filter's
    k-block starts at ``w[woff]`` ([taps][nq][KB][4]); channel ``k < kn`` of pixel ``v0 + j``,
    ``j < n``, is stored at ``out[obase + k OHOW + v0 + j]`` minus ``corr[k0 + k]``. Each pixel's
    address is computed once per tile (the tap loop keeps the ``mr`` pointers in registers)."""

    def tile(typingctx, w, woff, x, xbase, taps, ntap, nq, v0, OW, rowb, ps, out, obase, OHOW,
             kn, n, corr, k0, tok, fout, scale, bias, act, lo, hi):
        arrays = (0, 2, 4, 11, 16, 18, 19, 20, 21)
        floats = (23, 24)
        sig = _signature((w, woff, x, xbase, taps, ntap, nq, v0, OW, rowb, ps, out, obase, OHOW,
                          kn, n, corr, k0, tok, fout, scale, bias, act, lo, hi), arrays, floats)
        if sig is None:
            return None

        def codegen(context, builder, sig, args):
            a = int64_scalars(context, builder, sig, args, arrays, floats)
            path = _path(sig.args[18])
            L = 8 if path == "vnni256" else 16
            KB = NV * L
            vty = ir.VectorType(_I32, L)
            dot = _dot(builder, path, L)

            def data(i):
                return context.make_array(sig.args[i])(context, builder, a[i]).data

            wp = builder.bitcast(data(0), _I8.as_pointer())
            xp = builder.bitcast(data(2), _I8.as_pointer())
            tp = data(4)
            op = data(11)
            cp = data(16)
            woff, xbase, ntap, nq, v0, OW, rowb, ps = a[1], a[3], a[5], a[6], a[7], a[8], a[9], a[10]
            obase, OHOW, kn, n, k0 = a[12], a[13], a[14], a[15], a[17]
            xb = builder.gep(xp, [xbase])
            # pixel j: output (oh, ow) from v0's, stepping along the row and wrapping
            oh = builder.udiv(v0, OW)
            ow = builder.sub(v0, builder.mul(oh, OW))
            offs = []
            for j in range(mr):
                if j:
                    inside = builder.icmp_signed("<", _i64(j), n)
                    nxt = builder.add(ow, _i64(1))
                    wrap = builder.icmp_signed(">=", nxt, OW)
                    oh = builder.select(inside, builder.select(wrap, builder.add(oh, _i64(1)), oh),
                                        oh)
                    ow = builder.select(inside, builder.select(wrap, _i64(0), nxt), ow)
                offs.append(builder.add(builder.mul(oh, rowb), builder.mul(ow, ps)))
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(vty, None))
                     for _ in range(NV)] for _ in range(mr)]
            step = _i64(4 * KB)
            with cgutils.for_range(builder, ntap) as lt:
                toff = builder.load(builder.gep(tp, [lt.index]))
                wt = builder.gep(wp, [builder.add(woff, builder.mul(builder.mul(lt.index, nq),
                                                                    step))])
                pt = [builder.gep(xb, [builder.add(offs[j], toff)]) for j in range(mr)]
                with cgutils.for_range(builder, nq) as lq:
                    wq = builder.gep(wt, [builder.mul(lq.index, step)])
                    wv = [builder.load(builder.bitcast(builder.gep(wq, [_i64(v * 4 * L)]),
                                                       vty.as_pointer()), align=1)
                          for v in range(NV)]
                    q4 = builder.shl(lq.index, _i64(2))
                    for j in range(mr):
                        word = builder.load(builder.bitcast(builder.gep(pt[j], [q4]),
                                                            _I32.as_pointer()), align=1)
                        b = splat(builder, word, vty)
                        for v in range(NV):
                            builder.store(dot(builder.load(accs[j][v]), b, wv[v]), accs[j][v])
            # minus the shift correction (corr has KB spare entries at its end)
            cb = builder.gep(cp, [k0])
            corr = [builder.load(builder.bitcast(builder.gep(cb, [_i64(v * L)]), vty.as_pointer()),
                                 align=4) for v in range(NV)]
            vals = [[builder.sub(builder.load(accs[j][v]), corr[v]) for v in range(NV)]
                    for j in range(mr)]
            # a float output array: the output stage (`_requant`), else int32 results
            floaty = builder.icmp_signed(
                ">", context.make_array(sig.args[19])(context, builder, a[19]).nitems, _i64(0))
            with builder.if_else(floaty) as (as_float, as_int):
                with as_float:
                    fty = ir.VectorType(ir.FloatType(), L)
                    narrow = sig.args[19].dtype == types.int8
                    st = _Stage(context, builder, sig, a, L, k0, narrow)
                    if narrow:
                        ys = [[builder.fptosi(st.apply(vals[j][v], v), vty) for v in range(NV)]
                              for j in range(mr)]
                        _store_tile(builder, ys, vty, builder.bitcast(data(19), _I8.as_pointer()),
                                    obase, v0, OHOW, kn, n, mr, L, narrow=True)
                    else:
                        fp = builder.bitcast(data(19), ir.FloatType().as_pointer())
                        # OHOW < 0: channels last, pixel v's channels at obase + v (-OHOW),
                        # the scale only (`_Stage.scaled`: the int8 fast algorithms' products)
                        cl = builder.icmp_signed("<", OHOW, _i64(0))
                        with builder.if_else(cl) as (last, planes):
                            with last:
                                ys = [[st.scaled(vals[j][v], v) for v in range(NV)]
                                      for j in range(mr)]
                                _store_tile_cl(builder, ys, fty, fp, obase, v0,
                                               builder.neg(OHOW), kn, n, mr, L)
                            with planes:
                                ys = [[st.apply(vals[j][v], v) for v in range(NV)]
                                      for j in range(mr)]
                                _store_tile(builder, ys, fty, fp, obase, v0, OHOW, kn, n, mr, L)
                with as_int:
                    _store_tile(builder, vals, vty, op, obase, v0, OHOW, kn, n, mr, L)
            return context.get_dummy_value()

        return sig, codegen

    return _named_intrinsic(tile, f"_int8_tile_{mr}")


def _bounds(builder, act, lo, hi, narrow, L):
    """The activation code ``act`` (0 none, 1 ReLU, 2 clamp) with float32 ``lo``, ``hi`` as two
    splatted bounds of ``L`` lanes: -inf / +inf, 0 / +inf or lo / hi; for int8 codes rounded
    (rint) and kept within +-127 (see `_Stage`)."""
    fl = ir.FloatType()
    lo = builder.select(builder.icmp_signed("==", act, _i64(0)), ir.Constant(fl, float("-inf")),
                        builder.select(builder.icmp_signed("==", act, _i64(1)),
                                       ir.Constant(fl, 0.0), lo))
    hi = builder.select(builder.icmp_signed("==", act, _i64(2)), hi, ir.Constant(fl, float("inf")))
    if narrow:
        rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(fl, [fl]),
                                              "llvm.rint.f32")
        smax, smin = (cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(fl, [fl, fl]), f"llvm.{op}.f32")
            for op in ("maximum", "minimum"))
        lo = builder.call(smax, [builder.call(rint, [lo]), ir.Constant(fl, -127.0)])
        hi = builder.call(smin, [builder.call(rint, [hi]), ir.Constant(fl, 127.0)])
    fty = ir.VectorType(fl, L)
    return splat(builder, lo, fty), splat(builder, hi, fty)


class _Stage:
    """The output stage of a tile, its activation turned into two bounds once per tile:
    ``min(max(fma(float(v), scale[k], bias[k]), lo'), hi')`` with ``lo'``, ``hi'`` = -inf,
    +inf (none), 0, +inf (ReLU) or lo, hi (clamp); for int8 codes ``min(max(rint(fma(...)),
    L), H)`` with ``L = max(-127, rint(lo'))``, ``H = min(127, rint(hi'))`` -- the same values
    as the activation followed by ``clip(rint(.), -127, 127)``, rint being monotonic; two
    compare-and-blend pairs per vector (`convolab.kernels._microkernel.clamp_vec`: NaN kept, a
    zero's sign kept, PyTorch's clamp) instead of six operations (`_stage_run` applies the
    same to runs)."""

    def __init__(self, context, builder, sig, a, L, k0, narrow):
        self.builder = builder
        self.fty = fty = ir.VectorType(ir.FloatType(), L)
        self.L, self.k0, self.narrow = L, k0, narrow
        self.sp = context.make_array(sig.args[20])(context, builder, a[20]).data
        self.bp = context.make_array(sig.args[21])(context, builder, a[21]).data
        self.fma = _fma_fn(builder, fty)
        lo = context.cast(builder, a[23], sig.args[23], types.float32)
        hi = context.cast(builder, a[24], sig.args[24], types.float32)
        self.lo, self.hi = _bounds(builder, a[22], lo, hi, narrow, L)
        self.rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(fty, [fty]),
                                                   f"llvm.rint.v{L}f32")

    def scaled(self, v, vi):
        """``float32(v) * scale[k]`` only: no bias, no bounds (the channels-last store of
        `_store_tile_cl`, whose callers pass no bias or activation)."""
        b, fty = self.builder, self.fty
        off = b.add(self.k0, _i64(vi * self.L))
        sc = b.load(b.bitcast(b.gep(self.sp, [off]), fty.as_pointer()), align=4)
        return b.fmul(b.sitofp(v, fty), sc)

    def apply(self, v, vi):
        """The stage of int32 vector ``v`` whose lanes are channels ``k0 + vi L ..``."""
        b, fty = self.builder, self.fty
        off = b.add(self.k0, _i64(vi * self.L))
        sc = b.load(b.bitcast(b.gep(self.sp, [off]), fty.as_pointer()), align=4)
        bi = b.load(b.bitcast(b.gep(self.bp, [off]), fty.as_pointer()), align=4)
        y = b.call(self.fma, [b.sitofp(v, fty), sc, bi])
        if self.narrow:
            y = b.call(self.rint, [y])
        return clamp_vec(b, y, self.lo, self.hi)


def _store_tile(builder, vals, vty, op, obase, v0, OHOW, kn, n, mr, L, narrow=False):
    """Store tile ``vals[j][v]`` (pixel j, lanes = channels ``v L ..``) in NCHW: channel
    ``k < kn`` of pixel ``v0 + j``, ``j < n``, at ``op[obase + k OHOW + v0 + j]``: on 16 lanes
    transposed in registers and stored channel by channel under a mask, on 8 through a buffer
    on the stack. ``narrow``: int32 ``vals`` stored as int8 (``op`` an i8 pointer)."""
    KB = NV * L
    ob = builder.gep(op, [builder.add(obase, v0)])
    if L == 16:
        sty = ir.VectorType(_I8, 16) if narrow else vty
        mstore = _mstore(builder, sty)
        lanes = ir.Constant(ir.VectorType(_I64, 16), list(range(16)))
        m = builder.icmp_signed("<", lanes, splat(builder, n, ir.VectorType(_I64, 16)))
        zero = ir.Constant(vty, None)
        for v in range(NV):
            cols = _transpose16(builder, [vals[j][v] if j < mr else zero
                                          for j in range(16)])
            for lane in range(16):
                k = v * 16 + lane
                with builder.if_then(builder.icmp_signed("<", _i64(k), kn)):
                    ptr = builder.gep(ob, [builder.mul(_i64(k), OHOW)])
                    col = builder.trunc(cols[lane], sty) if narrow else cols[lane]
                    builder.call(mstore, [col, builder.bitcast(ptr, sty.as_pointer()),
                                          ir.Constant(_I32, 1 if narrow else 4), m])
    else:  # through a buffer on the stack, element by element
        buf = cgutils.alloca_once(builder, ir.ArrayType(vty.element, mr * KB))
        bp = builder.bitcast(buf, vty.element.as_pointer())
        for j in range(mr):
            for v in range(NV):
                builder.store(vals[j][v], builder.bitcast(
                    builder.gep(bp, [_i64(j * KB + v * L)]), vty.as_pointer()), align=4)
        with cgutils.for_range(builder, kn) as lk:
            row = builder.gep(ob, [builder.mul(lk.index, OHOW)])
            with cgutils.for_range(builder, n) as lj:
                e = builder.load(builder.gep(bp, [builder.add(builder.mul(lj.index,
                                                                          _i64(KB)),
                                                              lk.index)]))
                builder.store(builder.trunc(e, _I8) if narrow else e,
                              builder.gep(row, [lj.index]))


def _store_tile_cl(builder, vals, vty, op, obase, v0, ps, kn, n, mr, L):
    """Store tile ``vals[j][v]`` channels last: vector ``v`` of pixel ``v0 + j``, ``j < n``, at
    ``op[obase + (v0 + j) ps + v L]``, its lanes past ``kn`` masked (the transform-domain
    products of `convolab.kernels._int8_fast`, which its output transform reads as vectors of
    channels)."""
    mstore = _mstore(builder, vty)
    for v in range(NV):
        m = lanes_below(builder, builder.sub(kn, _i64(v * L)), L)
        for j in range(mr):
            with builder.if_then(builder.icmp_signed("<", _i64(j), n)):
                off = builder.add(obase, builder.add(builder.mul(builder.add(v0, _i64(j)), ps),
                                                     _i64(v * L)))
                builder.call(mstore, [vals[j][v], builder.bitcast(builder.gep(op, [off]),
                                                                  vty.as_pointer()),
                                      ir.Constant(_I32, 4), m])


_tile = _make_tile(MR)
#: the image's last tile when it has at most `MR_TAIL` pixels (7x7: 49 = 4 x 12 + 1 pixels
#: computed as 52, not 60)
_tile_tail = _make_tile(MR_TAIL)


def _make_quad_run(step: int):
    """``quad_run(xu, s, plane, xp, d, stride, count)``: for ``w < count``, ``xp[d + w stride] =
    word(xu[s + w step], xu[s + plane + w step], xu[s + 2 plane + w step], xu[s + 3 plane + w
    step]) ^ 0x80808080`` (little-endian bytes: the four channels of a pixel, shifted to
    unsigned), 16 pixels at a time: four loads of ``16 step`` bytes (masked in a last, partial
    block; every ``step``-th byte kept), interleaved into 16 words by two shuffles, stored as one
    vector where ``stride`` is 1, else word by word. (Bound by the cache's bandwidth on large
    planes: 256 channels at 56x56, 0.09 ms, about 18 GB/s; byte by byte it took 0.54.)"""

    def quad_run(typingctx, xu, s, plane, xp, d, stride, count):
        if not all(isinstance(t, types.Integer) for t in (s, plane, d, stride, count)):
            return None
        sig = types.void(xu, s, plane, xp, d, stride, count)

        def codegen(context, builder, sig, args):
            xa, s, plane, pa, d, stride, count = [
                context.cast(builder, v, t, types.int64) if i not in (0, 3) else v
                for i, (v, t) in enumerate(zip(args, sig.args, strict=True))]
            src = builder.bitcast(context.make_array(sig.args[0])(context, builder, xa).data,
                                  _I8.as_pointer())
            dst = builder.bitcast(context.make_array(sig.args[3])(context, builder, pa).data,
                                  _I32.as_pointer())
            nb = 16 * step
            bty = ir.VectorType(_I8, nb)
            w16 = ir.VectorType(_I32, 16)
            mload = _mload(builder, bty)
            flip = ir.Constant(w16, [0x80808080 - (1 << 32)] * 16)
            lo = ir.Constant(ir.VectorType(_I32, 32), [16 * (i % 2) + i // 2 for i in range(32)])
            quad = ir.Constant(ir.VectorType(_I32, 64),
                               [(i // 2) % 2 * 32 + (i // 4) * 2 + i % 2 for i in range(64)])
            keep = ir.Constant(ir.VectorType(_I32, 16), [step * i for i in range(16)])
            lanes = ir.Constant(ir.VectorType(_I64, nb), list(range(nb)))
            nblk = builder.sdiv(builder.add(count, _i64(15)), _i64(16))
            with cgutils.for_range(builder, nblk) as lb:
                w0 = builder.mul(lb.index, _i64(16))
                rem = builder.sub(count, w0)
                # the bytes up to the last pixel's: lanes < step (rem - 1) + 1
                m = builder.icmp_signed("<", lanes, splat(builder, builder.add(
                    builder.mul(builder.sub(rem, _i64(1)), _i64(step)), _i64(1)),
                    ir.VectorType(_I64, nb)))
                rows = []
                for i in range(4):
                    ptr = builder.gep(src, [builder.add(builder.add(s, builder.mul(plane, _i64(i))),
                                                        builder.mul(w0, _i64(step)))])
                    r = builder.call(mload, [builder.bitcast(ptr, bty.as_pointer()),
                                             ir.Constant(_I32, 1), m, ir.Constant(bty, None)])
                    rows.append(builder.shuffle_vector(r, r, keep) if step > 1 else r)
                # (c0, c1) and (c2, c3) byte pairs per pixel, then the pairs of pairs
                p01 = builder.shuffle_vector(rows[0], rows[1], lo)
                p23 = builder.shuffle_vector(rows[2], rows[3], lo)
                words = builder.xor(builder.bitcast(builder.shuffle_vector(p01, p23, quad), w16),
                                    flip)
                base = builder.gep(dst, [builder.add(d, builder.mul(w0, stride))])
                dense = builder.and_(builder.icmp_signed("==", stride, _i64(1)),
                                     builder.icmp_signed(">=", rem, _i64(16)))
                with builder.if_else(dense, likely=True) as (whole, words1):
                    with whole:  # quad planes (the pointwise layout): 16 adjacent words
                        builder.store(words, builder.bitcast(base, w16.as_pointer()), align=4)
                    with words1:
                        for j in range(16):
                            with builder.if_then(builder.icmp_signed("<", _i64(j), rem),
                                                 likely=True):
                                builder.store(builder.extract_element(words,
                                                                      ir.Constant(_I32, j)),
                                              builder.gep(base, [builder.mul(_i64(j), stride)]),
                                              align=4)
            return context.get_dummy_value()

        return sig, codegen

    return _named_intrinsic(quad_run, f"_quad_run_{step}")


#: the quad runs of stride 1 and 2
_quad_run, _quad_run2 = (_make_quad_run(step) for step in (1, 2))


@njit(nogil=True, inline="always")
def _pack_row(x, xp, r, C, H, W, Hp, Wp, G, Cg, Cg4, pt, pl, ssh, ssw, HWi,
              Wi):  # pragma: no cover - compiled
    """Row ``r`` (image ``r // Hp``, padded row ``r % Hp``) of the padded channels-last copy
    ``xp`` (viewed as 32-bit words: four channels of a pixel per word):
    ``xp[n, hp, wp, g Cg4 + c] = x[n, g Cg + c, hp - pt, wp - pl] + 128`` inside the input,
    128 (the shifted zero) elsewhere and in the padding channels. (A word is built from four
    planes' bytes and stored once: storing byte by byte, 256 -> 64 1x1 at 56x56 spent 0.6 of
    its 1 ms packing.) With ``ssh``, ``ssw`` > 1 (a strided 1x1 layer, run as a stride-1 one)
    the H x W input read is every ``ssh``-th row and ``ssw``-th column of the real input's
    planes (``HWi`` elements, rows of ``Wi``)."""
    n = r // Hp
    h = r - n * Hp - pt
    Ct4 = G * Cg4 // 4
    o = r * Wp * Ct4
    if h < 0 or h >= H:
        xp[o: o + Wp * Ct4] = 0x80808080
        return
    if pl > 0:
        xp[o: o + pl * Ct4] = 0x80808080
    if Wp > W + pl:
        xp[o + (pl + W) * Ct4: o + Wp * Ct4] = 0x80808080
    nq = Cg4 // 4
    full = Cg // 4
    xu = x.view(np.uint8)
    for g in range(G):
        src = (n * C + g * Cg) * HWi + h * ssh * Wi
        d = o + pl * Ct4 + g * nq
        for q in range(full):
            if ssw == 1:
                _quad_run(xu, src + 4 * q * HWi, HWi, xp, d + q, Ct4, W)
            elif ssw == 2:
                _quad_run2(xu, src + 4 * q * HWi, HWi, xp, d + q, Ct4, W)
            else:
                for w in range(W):
                    b = src + 4 * q * HWi + w * ssw
                    v = (np.uint32(xu[b]) | (np.uint32(xu[b + HWi]) << 8)
                         | (np.uint32(xu[b + 2 * HWi]) << 16) | (np.uint32(xu[b + 3 * HWi]) << 24))
                    xp[d + q + w * Ct4] = v ^ np.uint32(0x80808080)
        if full < nq:
            for w in range(W):
                v = np.uint32(0)
                for i in range(Cg - 4 * full):
                    v |= np.uint32(xu[src + (4 * full + i) * HWi + w * ssw]) << (8 * i)
                xp[d + full + w * Ct4] = v ^ np.uint32(0x80808080)


@njit(cache=True, nogil=True)
def conv_int8_tiles(x, xp, wpk, corr, taps, nq, out, counter, N, C, H, W, K, OH, OW, G, Cg, Hp,
                    Wp, pt, pl, sh, sw, nkbr, nchunk, tok, fout, stage, sub):  # pragma: no cover
    """One thread's share of an int8 convolution (every thread of a team job calls it, with
    ``counter`` (4 int64) zeroed): ``x`` flat int8 NCHW codes, ``xp`` flat uint8 buffer of
    ``N Hp Wp G Cg4`` for the shifted padded copy, ``wpk`` / ``corr`` from
    `convolab.kernels.int8.pack_weights` (``corr`` with KB zeros appended), ``taps`` from
    `tap_offsets`: each a run of ``nq`` 4-byte words (a tap's ``Cg4`` channels, or a whole
    filter row's ``S Cg4`` where those lie side by side), ``out`` flat int32 NCHW. Tasks:
    (image, group, ``nkbr`` ranges of k-blocks, ``nchunk`` ranges of tiles); a tile is `MR`
    consecutive pixels of the image (the last one of an image shorter), crossing row ends.
    With a non-empty ``fout`` (float32 or int8, flat NCHW) the tiles store the output stage
    there instead: ``act(float(y) * scale[k] + bias[k])`` (``stage = (scale, bias, act, lo,
    hi)``: float32 arrays of K + KB entries, act 0 none, 1 ReLU, 2 clamp(lo, hi)), for int8
    then ``clip(rint(.), -127, 127)``."""
    Cg4 = (Cg + 3) // 4 * 4
    Ct = G * Cg4
    nrows = N * Hp
    xp32 = xp.view(np.uint32)
    # a strided 1x1 layer runs as a stride-1 one on every ssh-th row, ssw-th column: sub =
    # (ssh, ssw, real input H, real input W); (1, 1, H, W) otherwise
    ssh, ssw, Hi, Wi = sub
    HWi = Hi * Wi
    while True:
        r = fetch_add(counter, 0)
        if r >= nrows:
            break
        _pack_row(x, xp32, r, C, H, W, Hp, Wp, G, Cg, Cg4, pt, pl, ssh, ssw, HWi, Wi)
        fetch_add(counter, 1)
    wait_until(counter, 1, nrows)
    Kg = K // G
    ntap = taps.size
    KB = corr.size - K
    nkb = (Kg + KB - 1) // KB
    OHOW = OH * OW
    ps = sw * Ct
    blk = ntap * nq * 4 * KB
    scale, bias, act, lo, hi = stage
    ntile = (OHOW + MR - 1) // MR
    ntask = N * G * nkbr * nchunk
    rowb = sh * Wp * Ct
    while True:
        t = fetch_add(counter, 2)
        if t >= ntask:
            break
        rc = t % nchunk
        u = t // nchunk
        kr = u % nkbr
        u //= nkbr
        g = u % G
        n = u // G
        q0 = rc * ntile // nchunk
        q1 = (rc + 1) * ntile // nchunk
        xim = n * Hp * Wp * Ct + g * Cg4
        for kb in range(kr * nkb // nkbr, (kr + 1) * nkb // nkbr):
            k0 = g * Kg + kb * KB
            kn = min(KB, (g + 1) * Kg - k0)
            woff = (g * nkb + kb) * blk
            ob = (n * K + k0) * OHOW
            for q in range(q0, q1):
                v0 = q * MR
                npx = min(MR, OHOW - v0)
                if npx <= MR_TAIL:
                    _tile_tail(wpk, woff, xp, xim, taps, ntap, nq, v0, OW, rowb, ps, out, ob,
                               OHOW, kn, npx, corr, k0, tok, fout, scale, bias, act, lo, hi)
                else:
                    _tile(wpk, woff, xp, xim, taps, ntap, nq, v0, OW, rowb, ps, out, ob, OHOW,
                          kn, npx, corr, k0, tok, fout, scale, bias, act, lo, hi)
        fetch_add(counter, 3)
    # every task finished before any thread returns (`team.run(..., complete=True)`)
    wait_until(counter, 3, ntask)


@contextlib.contextmanager
def _blocks16(builder, count):
    """A generated loop over ``count`` (int64) elements in blocks of 16: yields the block's
    first index and its lane mask (lanes below ``count``)."""
    lanes = ir.Constant(ir.VectorType(_I64, 16), list(range(16)))
    nblk = builder.sdiv(builder.add(count, _i64(15)), _i64(16))
    with cgutils.for_range(builder, nblk) as lb:
        i0 = builder.mul(lb.index, _i64(16))
        yield i0, builder.icmp_signed("<", lanes, splat(builder, builder.sub(count, i0),
                                                           ir.VectorType(_I64, 16)))


def _load16(builder, mload, base, off, vty, align: int, mask):
    """The masked load of a ``vty`` vector at ``base[off]`` (masked lanes zero)."""
    ptr = builder.bitcast(builder.gep(base, [off]), vty.as_pointer())
    return builder.call(mload, [ptr, ir.Constant(_I32, align), mask, ir.Constant(vty, None)])


@intrinsic
def _stage_run(typingctx, dst, doff, src, soff, count, s, b, act, lo, hi):
    """The output stage of a run of sums: ``dst[doff + i] = min(max(fma(float(src[soff + i]),
    s, b), lo'), hi')`` for ``i < count`` (``src`` int32 or float32 holding integers), and for
    an int8 ``dst`` ``min(max(rint(fma(...)), L), H)`` -- the tiles' stage (`_Stage`, the same
    bounds), 16 at a time, masked in the last block."""
    if not all(isinstance(t, types.Integer) for t in (doff, soff, count, act)):
        return None
    if src.dtype not in (types.int32, types.float32) or dst.dtype not in (types.float32,
                                                                          types.int8):
        return None
    sig = types.void(dst, doff, src, soff, count, s, b, act, lo, hi)

    def codegen(context, builder, sig, args):
        da, doff, sa, soff, count, sv, bv, act, lo, hi = [
            context.cast(builder, v, t, types.int64) if i in (1, 3, 4, 7)
            else (context.cast(builder, v, t, types.float32) if i in (5, 6, 8, 9) else v)
            for i, (v, t) in enumerate(zip(args, sig.args, strict=True))]
        narrow = sig.args[0].dtype == types.int8
        dp = context.make_array(sig.args[0])(context, builder, da).data
        sp = context.make_array(sig.args[2])(context, builder, sa).data
        fl = ir.FloatType()
        fty = ir.VectorType(fl, 16)
        sety = context.get_value_type(sig.args[2].dtype)
        svt = ir.VectorType(sety, 16)
        dvt = ir.VectorType(_I8, 16) if narrow else fty
        mload, mstore = _mload(builder, svt), _mstore(builder, dvt)
        fma = _fma_fn(builder, fty)
        rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(fty, [fty]),
                                              "llvm.rint.v16f32")
        lo, hi = _bounds(builder, act, lo, hi, narrow, 16)
        sv, bv = splat(builder, sv, fty), splat(builder, bv, fty)
        with _blocks16(builder, count) as (i0, m):
            v = _load16(builder, mload, sp, builder.add(soff, i0), svt, 4, m)
            if sety != fl:
                v = builder.sitofp(v, fty)
            y = builder.call(fma, [v, sv, bv])
            if narrow:
                y = builder.call(rint, [y])
            y = clamp_vec(builder, y, lo, hi)
            if narrow:
                y = builder.trunc(builder.fptosi(y, ir.VectorType(_I32, 16)), dvt)
            builder.call(mstore, [y, builder.bitcast(builder.gep(dp, [builder.add(doff, i0)]),
                                                     dvt.as_pointer()),
                                  ir.Constant(_I32, 1 if narrow else 4), m])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def requant(acc, out, K, HW, scale, bias, act, lo, hi, counter):  # pragma: no cover
    """``out = act(float32(acc) * scale[k] + bias[k])`` with one rounding (fma), then with
    ``code`` the int8 code ``clip(rint(.), -127, 127)`` (half to even), for int32 results
    computed elsewhere: the tiles' output stage (`_stage_run`, the same bounds), so every
    int8 method gives the same floats and codes; planes handed out by ``counter[0]``, counted
    done in ``counter[1]`` (a team job that returns once all are done)."""
    n = acc.size // HW
    while True:
        p = fetch_add(counter, 0)
        if p >= n:
            break
        k = p % K
        o = p * HW
        _stage_run(out, o, acc, o, HW, scale[k], bias[k], act, lo, hi)
        fetch_add(counter, 1)
    wait_until(counter, 1, n)


def _make_pw_tile(mk: int, npv: int):
    """The pointwise tile: ``mk`` output channels x ``npv`` vectors of pixels (pixels in the
    lanes), for a 1x1 layer of stride 1 on quad planes ``[C4 / 4][HW][4]`` (unsigned, shifted):
    a step loads each pixel vector's four channels (one 64-byte load on 16 lanes) and
    broadcasts each output channel's four weights, one ``vpdpbusd`` per (channel, vector), so
    its results are stored as whole rows of pixels (no transposes).

    ``pw(w, woff, x, xbase, qstride, nq, out, obase, OHOW, kn, npx, corr, k0, tok, fout, scale,
    bias, act, lo, hi)``: step ``q < nq`` reads vector ``j`` at byte ``xbase + q qstride + j
    4L`` of ``x`` and channel ``k``'s word at ``w[woff + 4 (q mk + k)]``; channel ``k < kn``,
    pixel ``i < npx`` is stored at ``out[obase + k OHOW + i]`` (int32 minus ``corr[k0 + k]``),
    or the output stage's float32 / int8 at ``fout[...]`` when ``fout`` is not empty."""

    def pw(typingctx, w, woff, x, xbase, qstride, nq, out, obase, OHOW, kn, npx, corr, k0, tok,
           fout, scale, bias, act, lo, hi):
        arrays = (0, 2, 6, 11, 13, 14, 15, 16)
        floats = (18, 19)
        sig = _signature((w, woff, x, xbase, qstride, nq, out, obase, OHOW, kn, npx, corr, k0,
                          tok, fout, scale, bias, act, lo, hi), arrays, floats)
        if sig is None:
            return None

        def codegen(context, builder, sig, args):
            a = int64_scalars(context, builder, sig, args, arrays, floats)
            path = _path(sig.args[13])
            L = 8 if path == "vnni256" else 16
            vty = ir.VectorType(_I32, L)
            fty = ir.VectorType(ir.FloatType(), L)
            dot = _dot(builder, path, L)

            def data(i):
                return context.make_array(sig.args[i])(context, builder, a[i]).data

            wp = builder.bitcast(data(0), _I32.as_pointer())
            xp = builder.bitcast(data(2), _I8.as_pointer())
            woff, xbase, qstride, nq = a[1], a[3], a[4], a[5]
            obase, OHOW, kn, npx, k0 = a[7], a[8], a[9], a[10], a[12]
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(vty, None))
                     for _ in range(npv)] for _ in range(mk)]
            xb = builder.gep(xp, [xbase])
            wb = builder.gep(wp, [builder.sdiv(woff, _i64(4))])
            with cgutils.for_range(builder, nq) as lq:
                xq = builder.gep(xb, [builder.mul(lq.index, qstride)])
                xv = [builder.load(builder.bitcast(builder.gep(xq, [_i64(4 * L * j)]),
                                                   vty.as_pointer()), align=4)
                      for j in range(npv)]
                wq = builder.gep(wb, [builder.mul(lq.index, _i64(mk))])
                for k in range(mk):
                    b = splat(builder, builder.load(builder.gep(wq, [_i64(k)]), align=4), vty)
                    for j in range(npv):
                        builder.store(dot(builder.load(accs[k][j]), xv[j], b), accs[k][j])
            cp = data(11)
            lanes = ir.Constant(ir.VectorType(_I64, L), list(range(L)))
            masks = [builder.icmp_signed("<", lanes, splat(builder, builder.sub(
                npx, _i64(j * L)), ir.VectorType(_I64, L))) for j in range(npv)]
            fo = context.make_array(sig.args[14])(context, builder, a[14])
            staged = builder.icmp_signed(">", fo.nitems, _i64(0))
            narrow = sig.args[14].dtype == types.int8
            ety = _I8 if narrow else ir.FloatType()
            sty = ir.VectorType(ety, L)
            fstore, istore = _mstore(builder, sty), _mstore(builder, vty)
            op = data(6)
            fp = builder.bitcast(fo.data, ety.as_pointer())
            sp = data(15)
            bp = data(16)
            fma_v = _fma_fn(builder, fty)
            rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(fty, [fty]),
                                                  f"llvm.rint.v{L}f32")
            act = a[17]
            # the activation as two bounds (see `_Stage`), once per tile
            lo, hi = _bounds(builder, act, context.cast(builder, a[18], sig.args[18], types.float32),
                             context.cast(builder, a[19], sig.args[19], types.float32), narrow, L)
            for k in range(mk):
                with builder.if_then(builder.icmp_signed("<", _i64(k), kn)):
                    kk = builder.add(k0, _i64(k))
                    c = splat(builder, builder.load(builder.gep(cp, [kk])), vty)
                    row = builder.add(obase, builder.mul(_i64(k), OHOW))
                    with builder.if_else(staged) as (st, raw):
                        with st:
                            sc = splat(builder, builder.load(builder.gep(sp, [kk])), fty)
                            bi = splat(builder, builder.load(builder.gep(bp, [kk])), fty)
                            for j in range(npv):
                                y = builder.call(fma_v, [builder.sitofp(builder.sub(
                                    builder.load(accs[k][j]), c), fty), sc, bi])
                                if narrow:
                                    y = builder.call(rint, [y])
                                y = clamp_vec(builder, y, lo, hi)
                                if narrow:
                                    y = builder.trunc(builder.fptosi(y, vty), sty)
                                ptr = builder.gep(fp, [builder.add(row, _i64(j * L))])
                                builder.call(fstore, [y, builder.bitcast(ptr, sty.as_pointer()),
                                                      ir.Constant(_I32, 1), masks[j]])
                        with raw:
                            for j in range(npv):
                                ptr = builder.gep(op, [builder.add(row, _i64(j * L))])
                                builder.call(istore, [builder.sub(builder.load(accs[k][j]), c),
                                                      builder.bitcast(ptr, vty.as_pointer()),
                                                      ir.Constant(_I32, 4), masks[j]])
            return context.get_dummy_value()

        return sig, codegen

    return _named_intrinsic(pw, f"_int8_pw_{mk}x{npv}")


_pw = _make_pw_tile(PW_MK, PW_NV)


@njit(cache=True, nogil=True)
def conv_int8_pw(x, xp, wpk, corr, out, counter, N, C, H, W, OH, OW, sh, sw, K, nkbr, nchunk,
                 TP, tok, fout, stage):  # pragma: no cover - compiled
    """One thread's share of a 1x1 int8 layer (one group, no padding) with pixels in the lanes
    (`_make_pw_tile`; every thread of a team job calls it, ``counter`` (4 int64) zeroed): the
    threads first write the quad planes ``xp`` (``[N][C4 / 4][OH OW][4]`` bytes, shifted, every
    ``sh``-th row and ``sw``-th column of the input; handed out plane by plane), then tasks
    (image, ``nchunk`` ranges of pixel tiles of ``TP`` pixels, ``nkbr`` ranges of k-blocks of
    `PW_MK` channels) from ``counter[2]``. ``wpk``: [k-blocks][C4 / 4][PW_MK][4] int8;
    ``corr``: the shift correction per channel, PW_MK spare entries; output as
    `conv_int8_tiles`."""
    nq = (C + 3) // 4
    full = C // 4
    xu = x.view(np.uint8)
    xp32 = xp.view(np.uint32)
    HWi = H * W
    HW = OH * OW
    while True:
        t = fetch_add(counter, 0)
        if t >= N * nq:
            break
        n = t // nq
        q = t - n * nq
        src = (n * C + 4 * q) * HWi
        d = t * HW
        if q < full and sh == 1 and sw == 1:
            _quad_run(xu, src, HWi, xp32, d, 1, HW)
        elif q < full:  # a strided 1x1: output pixel (oh, ow) reads (oh sh, ow sw)
            for oh in range(OH):
                if sw == 1:
                    _quad_run(xu, src + oh * sh * W, HWi, xp32, d + oh * OW, 1, OW)
                elif sw == 2:
                    _quad_run2(xu, src + oh * sh * W, HWi, xp32, d + oh * OW, 1, OW)
                else:
                    for ow in range(OW):
                        o = src + oh * sh * W + ow * sw
                        v = (np.uint32(xu[o]) | (np.uint32(xu[o + HWi]) << 8)
                             | (np.uint32(xu[o + 2 * HWi]) << 16)
                             | (np.uint32(xu[o + 3 * HWi]) << 24))
                        xp32[d + oh * OW + ow] = v ^ np.uint32(0x80808080)
        else:
            for i in range(HW):
                o = src + (i // OW) * sh * W + (i % OW) * sw
                v = np.uint32(0)
                for c in range(C - 4 * full):
                    v |= np.uint32(xu[o + c * HWi]) << (8 * c)
                xp32[d + i] = v ^ np.uint32(0x80808080)
        fetch_add(counter, 1)
    wait_until(counter, 1, N * nq)
    scale, bias, act, lo, hi = stage
    nkb = (K + PW_MK - 1) // PW_MK
    ntile = (HW + TP - 1) // TP
    ntask = N * nkbr * nchunk
    while True:
        t = fetch_add(counter, 2)
        if t >= ntask:
            break
        kr = t % nkbr
        u = t // nkbr
        ch = u % nchunk
        n = u // nchunk
        # a chunk of tiles' input stays in the L1 cache while the task runs its k-blocks
        for kb in range(kr * nkb // nkbr, (kr + 1) * nkb // nkbr):
            k0 = kb * PW_MK
            kn = min(PW_MK, K - k0)
            for tt in range(ch * ntile // nchunk, (ch + 1) * ntile // nchunk):
                p0 = tt * TP
                _pw(wpk, kb * nq * PW_MK * 4, xp, (n * nq * HW + p0) * 4, HW * 4, nq, out,
                    (n * K + k0) * HW + p0, HW, kn, min(TP, HW - p0), corr, k0, tok, fout,
                    scale, bias, act, lo, hi)
        fetch_add(counter, 3)
    wait_until(counter, 3, ntask)


def _make_dw_run(step: int):
    """``dw_run(acc, xp, xoff, offs, wts, ntap, count)``: ``acc[i] = sum_t wts[t] * xp[xoff +
    offs[t] + step i]`` for ``i < count`` (float32, taps in order, each a fused multiply-add),
    64 sums at a time in four 16-lane registers (masked in the last block): each sum is loaded
    and stored once, not once per tap. With ``step`` 2 (a 2-strided layer) each vector of 16
    inputs comes from two loads, their even lanes kept."""

    def dw_run(typingctx, acc, xp, xoff, offs, wts, ntap, count):
        if not all(isinstance(t, types.Integer) for t in (xoff, ntap, count)):
            return None
        sig = types.void(acc, xp, xoff, offs, wts, ntap, count)

        def codegen(context, builder, sig, args):
            aa, xa, xoff, oa, wa, ntap, count = [
                context.cast(builder, v, t, types.int64) if i in (2, 5, 6) else v
                for i, (v, t) in enumerate(zip(args, sig.args, strict=True))]
            ap = context.make_array(sig.args[0])(context, builder, aa).data
            xp = context.make_array(sig.args[1])(context, builder, xa).data
            op = context.make_array(sig.args[3])(context, builder, oa).data
            wp = context.make_array(sig.args[4])(context, builder, wa).data
            fty = ir.VectorType(ir.FloatType(), 16)
            vty64 = ir.VectorType(_I64, 16)
            mload, mstore = _mload(builder, fty), _mstore(builder, fty)
            fma = _fma_fn(builder, fty)
            lanes = ir.Constant(vty64, list(range(16)))
            even = ir.Constant(ir.VectorType(_I32, 16), [2 * i for i in range(16)])
            nblk = builder.sdiv(builder.add(count, _i64(63)), _i64(64))
            xb = builder.gep(xp, [xoff])
            with cgutils.for_range(builder, nblk) as lb:
                i0 = builder.mul(lb.index, _i64(64))
                masks, lmasks = [], []
                for j in range(4):
                    rem = builder.sub(count, builder.add(i0, _i64(16 * j)))
                    masks.append(builder.icmp_signed("<", lanes, splat(builder, rem, vty64)))
                    # the inputs read: elements up to step (rem - 1), in step vectors of 16
                    last = builder.mul(builder.sub(rem, _i64(1)), _i64(step))
                    lmasks.append([builder.icmp_signed(
                        "<=", builder.add(lanes, ir.Constant(vty64, [16 * h] * 16)),
                        splat(builder, last, vty64)) for h in range(step)])
                accs = [cgutils.alloca_once_value(builder, ir.Constant(fty, None))
                        for _ in range(4)]
                with cgutils.for_range(builder, ntap) as lt:
                    o = builder.add(builder.load(builder.gep(op, [lt.index])),
                                    builder.mul(i0, _i64(step)))
                    wv = splat(builder, builder.load(builder.gep(wp, [lt.index])), fty)
                    for j in range(4):
                        parts = []
                        for h in range(step):
                            ptr = builder.bitcast(builder.gep(xb, [builder.add(
                                o, _i64(16 * (step * j + h)))]), fty.as_pointer())
                            parts.append(builder.call(mload, [ptr, ir.Constant(_I32, 4),
                                                              lmasks[j][h],
                                                              ir.Constant(fty, None)]))
                        v = parts[0] if step == 1 else builder.shuffle_vector(parts[0], parts[1],
                                                                              even)
                        builder.store(builder.call(fma, [wv, v, builder.load(accs[j])]),
                                      accs[j])
                for j in range(4):
                    ptr = builder.bitcast(builder.gep(ap, [builder.add(i0, _i64(16 * j))]),
                                          fty.as_pointer())
                    builder.call(mstore, [builder.load(accs[j]), ptr, ir.Constant(_I32, 4),
                                          masks[j]])
            return context.get_dummy_value()

        return sig, codegen

    return _named_intrinsic(dw_run, f"_dw_run_{step}")


#: the depthwise runs of stride 1 and 2
_dw_run, _dw_run2 = (_make_dw_run(step) for step in (1, 2))


@intrinsic
def _cvt_run(typingctx, dst, doff, src, soff, count):
    """``dst[doff + i] = src[soff + i]`` for ``i < count``, converted (int8 -> float32, exact;
    float32 -> int32, of integer values), 16 at a time (masked in the last block): the depthwise
    kernel's plane conversions without per-row slices."""
    if not all(isinstance(t, types.Integer) for t in (doff, soff, count)):
        return None
    pair = (src.dtype, dst.dtype)
    if pair not in ((types.int8, types.float32), (types.float32, types.int32)):
        return None
    sig = types.void(dst, doff, src, soff, count)

    def codegen(context, builder, sig, args):
        da, doff, sa, soff, count = [
            context.cast(builder, v, t, types.int64) if i in (1, 3, 4) else v
            for i, (v, t) in enumerate(zip(args, sig.args, strict=True))]
        dp = context.make_array(sig.args[0])(context, builder, da).data
        sp = context.make_array(sig.args[2])(context, builder, sa).data
        sety = context.get_value_type(sig.args[2].dtype)
        dety = context.get_value_type(sig.args[0].dtype)
        svt = ir.VectorType(sety, 16)
        dvt = ir.VectorType(dety, 16)

        mload, mstore = _mload(builder, svt), _mstore(builder, dvt)
        with _blocks16(builder, count) as (i0, m):
            v = _load16(builder, mload, sp, builder.add(soff, i0), svt, 1, m)
            v = builder.sitofp(v, dvt) if dety == ir.FloatType() else builder.fptosi(v, dvt)
            builder.call(mstore, [v, builder.bitcast(builder.gep(dp, [builder.add(doff, i0)]),
                                                     dvt.as_pointer()), ir.Constant(_I32, 4), m])
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _store_sums(of, f32f, q8f, o, src, soff, count, s, b, act, lo, hi):  # pragma: no cover
    """``count`` exact sums (float32 ``src[soff:]``) to the output at ``o``: through the output
    stage into ``f32f`` or ``q8f`` when that one is non-empty (`_stage_run`), else as int32
    into ``of`` (`_cvt_run`)."""
    if f32f.size:
        _stage_run(f32f, o, src, soff, count, s, b, act, lo, hi)
    elif q8f.size:
        _stage_run(q8f, o, src, soff, count, s, b, act, lo, hi)
    else:
        _cvt_run(of, o, src, soff, count)


@njit(cache=True, nogil=True)
def depthwise_int8(x, w, out, counter, K, OH, OW, R, S, sh, sw, dh, dw, pt, pl, f32, q8, stage,
                   plane):  # pragma: no cover - compiled
    """One thread's share of a depthwise int8 convolution (groups = C, K = m C; a team job,
    ``counter`` (2 int64) zeroed, ``plane`` this thread's float32 work buffer of at least
    `depthwise_int8_buffer` elements): the exact int32 sums, computed in float32. Each
    input plane is converted once into a zero-padded float32 plane; every product (at most
    128 x 128) and every partial sum (at most 128 * sum|w[k]| < 2**24 for kernels up to 32x32
    taps of int8 weights) is an integer float32 holds exactly, so the additions' order does not
    matter and the result equals the integer reference; the loops over output columns
    vectorise. Tasks: (image, input channel), from ``counter[0]``. With a non-empty ``f32``
    (float32) or ``q8`` (int8) of the output's shape, the output stage ``stage`` (as
    `conv_int8_tiles`) is stored there instead of the int32 sums in ``out``."""
    scale, bias, act, lo, hi = stage
    N, C, H, W = x.shape
    m = K // C
    Hp = (OH - 1) * sh + (R - 1) * dh + 1
    Wp = (OW - 1) * sw + (S - 1) * dw + 1
    slack = (S - 1) * dw
    xp = plane[:Hp * Wp + slack]
    xp[Hp * Wp:] = 0
    dense = sh == 1 and sw == 1
    offs = np.empty(R * S, dtype=np.int64)
    wts = np.empty(R * S, dtype=np.float32)
    for t in range(R * S):
        offs[t] = (t // S) * dh * Wp + (t % S) * dw
    # stride 1: the sums over whole planes of Wp columns (the S - 1 last of each row dropped
    # when stored), one run of OH Wp per tap; else row by row
    acc = plane[Hp * Wp + slack: Hp * Wp + slack + (OH * Wp if dense else OW)]
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    f32f = f32.reshape(f32.size)
    q8f = q8.reshape(q8.size)
    h1 = min(H, Hp - pt)
    w1 = min(W, Wp - pl)
    while True:
        t = fetch_add(counter, 0)
        if t >= N * C:
            break
        n = t // C
        c = t - n * C
        # the zero-padded float32 plane: zeros, then the rows converted (`_cvt_run`; slicing
        # row by row cost more than the conversion)
        xp[:Hp * Wp] = 0
        for h in range(h1):
            _cvt_run(xp, (h + pt) * Wp + pl, xf, ((n * C + c) * H + h) * W, w1)
        for j in range(m):
            k = c * m + j
            if dense:
                for t in range(R * S):
                    wts[t] = np.float32(w[k, 0, t // S, t % S])
                _dw_run(acc, xp, 0, offs, wts, R * S, OH * Wp)
                for oh in range(OH):
                    o = ((n * K + k) * OH + oh) * OW
                    _store_sums(of, f32f, q8f, o, acc, oh * Wp, OW, scale[k], bias[k], act, lo,
                                hi)
                continue
            if sw == 2:  # 2-strided columns: a vector's inputs from two loads (`_dw_run2`)
                for t in range(R * S):
                    wts[t] = np.float32(w[k, 0, t // S, t % S])
                for oh in range(OH):
                    _dw_run2(acc, xp, oh * sh * Wp, offs, wts, R * S, OW)
                    o = ((n * K + k) * OH + oh) * OW
                    _store_sums(of, f32f, q8f, o, acc, 0, OW, scale[k], bias[k], act, lo, hi)
                continue
            for oh in range(OH):
                acc[:] = 0
                for r in range(R):
                    base = (oh * sh + r * dh) * Wp
                    for s in range(S):
                        wv = np.float32(w[k, 0, r, s])
                        o = base + s * dw
                        # indices from 0 into views (no negative-index wrap-around, no
                        # temporaries): the loops vectorise
                        if sw == 1:
                            xs = xp[o: o + OW]
                            for ow in range(OW):
                                acc[ow] += wv * xs[ow]
                        else:
                            xs = xp[o: o + (OW - 1) * sw + 1]
                            for ow in range(OW):
                                acc[ow] += wv * xs[ow * sw]
                o = ((n * K + k) * OH + oh) * OW
                _store_sums(of, f32f, q8f, o, acc, 0, OW, scale[k], bias[k], act, lo, hi)
        fetch_add(counter, 1)
    # every plane finished before any thread returns (`team.run(..., complete=True)`)
    wait_until(counter, 1, N * C)


@njit(cache=True, nogil=True)
def depthwise_int8_blocked(x, wpk, out, counter, OH, OW, R, S, sh, sw, dh, dw, pt, pl, f32, q8,
                           stage, buf):  # pragma: no cover - compiled
    """`depthwise_int8` for one output per channel on the float kernels' channel-blocked
    depthwise task (`convolab.kernels._direct.depthwise_block_task`: 16 channels per vector,
    register transposes in and out, bands in the L2): tasks (image, block of 16 channels), each
    running the blocked kernel on its 16 int8 input planes (converted to float32, exactly, as
    the transposes load them) into 16 float32 planes (every product and partial sum an integer
    float32 holds exactly: the integer reference's sums, whatever the order), then storing them
    as `depthwise_int8` does (int32, or the output stage). ``wpk``: the taps as float32, packed
    once per plan (`pack_depthwise_taps`). ``buf``: this thread's work buffer of
    `depthwise_int8_blocked_buffer` elements. The per-plane kernel took 1.1-1.8x as long (the
    fp32 runtime's measurements of the same kernels; int8 3x3 128@56, 2 threads: see
    docs/quant.md); converting the planes in a pass of their own and packing the taps per
    task, 1.08-1.5x (Zen 4, 2 threads, EfficientNet-Lite0's layers from 112x112 to 7x7; the
    largest factors on the smallest planes)."""
    scale, bias, act, lo, hi = stage
    N, C, H, W = x.shape
    T = R * S
    nbk = (C + 15) // 16
    HW = H * W
    OHOW = OH * OW
    need = depthwise_block_scratch(OH, OW, R, S, sh, sw, dh, dw)
    o2 = need + (-need) % 16  # the block's output planes
    nband = depthwise_block_tasks(1, 16, OH, OW, R, S, sh, sw, dh, dw)
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    f32f = f32.reshape(f32.size)
    q8f = q8.reshape(q8.size)
    epi = (buf, buf, 0, 0, 0, np.float32(0), np.float32(0))
    while True:
        task = fetch_add(counter, 0)
        if task >= N * nbk:
            break
        n = task // nbk
        b = task - n * nbk
        c0 = b * 16
        cn = min(16, C - c0)
        for band in range(nband):
            depthwise_block_task(band, xf, (n * C + c0) * HW, wpk, b * T * 16, buf, o2, cn, H, W,
                                 R, S, OH, OW, sh, sw, dh, dw, pt, pl, buf, epi, 0)
        for li in range(cn):
            k = c0 + li
            o = (n * C + k) * OHOW
            _store_sums(of, f32f, q8f, o, buf, o2 + li * OHOW, OHOW, scale[k], bias[k], act, lo,
                        hi)
        fetch_add(counter, 1)
    wait_until(counter, 1, N * nbk)


def depthwise_int8_blocked_buffer(spec) -> int:
    """float32 elements of `depthwise_int8_blocked`'s work buffer per thread: the blocked
    task's own, then 16 input planes, 16 output planes and the taps, each 64-byte aligned."""
    from ._direct import depthwise_block_scratch as scratch

    need = int(scratch(spec.OH, spec.OW, spec.R, spec.S, *spec.stride, *spec.dilation))
    parts = [need, 16 * spec.OH * spec.OW]
    return sum(p + (-p) % 16 for p in parts)


def pack_depthwise_taps(wq) -> np.ndarray:
    """A depthwise filter (C, 1, R, S) of int8 codes as `depthwise_int8_blocked` reads it:
    float32 ``[C / 16][R S][16]``, zeros past C."""
    C, _, R, S = wq.shape
    nbk = -(-C // 16)
    p = np.zeros((nbk * 16, R * S), dtype=np.float32)
    p[:C] = np.asarray(wq, dtype=np.float32).reshape(C, R * S)
    return np.ascontiguousarray(p.reshape(nbk, 16, R * S).transpose(0, 2, 1)).reshape(-1)


def depthwise_int8_buffer(spec) -> int:
    """float32 elements of `depthwise_int8`'s work buffer per thread: the padded plane it reads
    and the sums (a plane of Wp columns at stride 1, else one output row)."""
    Hp = (spec.OH - 1) * spec.stride[0] + (spec.R - 1) * spec.dilation[0] + 1
    Wp = (spec.OW - 1) * spec.stride[1] + (spec.S - 1) * spec.dilation[1] + 1
    return Hp * Wp + (spec.S - 1) * spec.dilation[1] + max(spec.OH * Wp, spec.OW)
