"""im2win kernels: the window transform and a register-blocked microkernel (Numba + LLVM IR).

Window tensor, one image at a time, flat::

    win[(c * OH + oh) * Vw * FH + w * FH + fh] = x[c, oh*sh + fh*dh - pt, w - pl]   (0 outside)

for ``w < Vw = Vc * sw`` (padded columns; ``Vc`` "virtual" output columns per row, enough to
cover the ``OW`` real ones), followed by a zeroed tail. Output pixel ``(oh, ow)`` is virtual
column ``q = oh * Vc + ow``, and its window for channel ``c`` starts at
``c * OH * Vw * FH + q * sw * FH``: one uniform stride along q, rows included, so a tile of
``MR`` consecutive q is addressed like a tile of a GEMM. Columns with ``ow >= OW`` are computed
from finite data of the next row (or the zeroed tail) and never stored.

Packed filter: ``wpk[g, kb, c, fw, fh, 0:KB]`` = ``w[g*Kg + kb*KB + l, c, fh, fw]`` (zero for
lanes past the group's channels): the paper's [K][C][FW][FH] filter, blocked by KB output
channels, so that for dilation 1 each output's reduction over (fw, fh) walks the window slice
and the filter slice with unit stride.

Microkernel: ``MR`` virtual columns x ``KB = NV * (64 / itemsize)`` output channels held in
``MR * NV`` 512-bit accumulators (LLVM legalises the vector type on narrower CPUs). Each step
loads NV filter vectors, broadcasts one window element per column, and does a separate
multiply and add per accumulator. Every output is the sum over (c, fw, fh) in that order,
from zero: no reassociation, no FMA contraction, so the result does not depend on thread
count or SIMD width. Written as LLVM IR because Numba's loops did not keep the accumulators
in registers.

Source: Lu, Chu, Liu, "Im2win: Memory Efficient Convolution On SIMD Architectures" (HPEC 2022).
"""

from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

#: virtual output columns per microkernel tile
MR = 12
#: 512-bit vectors of output channels per tile
NV = 2


def lanes(itemsize: int) -> int:
    """Output channels per tile (KB) for a compute dtype of ``itemsize`` bytes."""
    return NV * (64 // itemsize)


@intrinsic
def _microkernel(typingctx, w, woff, x, xoff, cstride, Cg, FWe, FHe, fwstep, colstride,
                 out, obase, OHOW, kn, q0, Vc, OW, Qend):
    ints = (woff, xoff, cstride, Cg, FWe, FHe, fwstep, colstride, obase, OHOW, kn, q0, Vc, OW,
            Qend)
    if not all(isinstance(t, types.Integer) for t in ints):
        return None
    sig = types.void(w, woff, x, xoff, cstride, Cg, FWe, FHe, fwstep, colstride,
                     out, obase, OHOW, kn, q0, Vc, OW, Qend)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        a = [
            context.cast(builder, v, t, types.int64) if isinstance(t, types.Integer) else v
            for v, t in zip(args, sig.args, strict=True)
        ]
        (wa, woff, xa, xoff, cstride, Cg, FWe, FHe, fwstep, colstride,
         oa, obase, OHOW, kn, q0, Vc, OW, Qend) = a
        flt = context.get_value_type(sig.args[0].dtype)
        size = context.get_abi_sizeof(flt)
        VL = 64 // size
        KB = VL * NV
        vty = ir.VectorType(flt, VL)
        vpty = vty.as_pointer()
        kbc = ir.Constant(i64, KB)
        wp = context.make_array(sig.args[0])(context, builder, wa).data
        xp = context.make_array(sig.args[2])(context, builder, xa).data
        op = context.make_array(sig.args[10])(context, builder, oa).data
        wp = builder.gep(wp, [woff])
        xp = builder.gep(xp, [xoff])
        accs = [[cgutils.alloca_once(builder, vty) for _ in range(NV)] for _ in range(MR)]
        zero = ir.Constant(vty, None)
        for row in accs:
            for p in row:
                builder.store(zero, p)
        coloffs = [builder.mul(colstride, ir.Constant(i64, j)) for j in range(MR)]
        mask = ir.Constant(ir.VectorType(i32, VL), [0] * VL)
        undef = ir.Constant(vty, ir.Undefined)
        red = builder.mul(FWe, FHe)
        with cgutils.for_range(builder, Cg) as lc:
            xc = builder.gep(xp, [builder.mul(lc.index, cstride)])
            wc = builder.gep(wp, [builder.mul(builder.mul(lc.index, red), kbc)])
            with cgutils.for_range(builder, FWe) as lf:
                xf = builder.gep(xc, [builder.mul(lf.index, fwstep)])
                wf = builder.gep(wc, [builder.mul(builder.mul(lf.index, FHe), kbc)])
                with cgutils.for_range(builder, FHe) as lh:
                    xh = builder.gep(xf, [lh.index])
                    wh = builder.gep(wf, [builder.mul(lh.index, kbc)])
                    wv = [
                        builder.load(
                            builder.bitcast(builder.gep(wh, [ir.Constant(i64, v * VL)]), vpty),
                            align=size,
                        )
                        for v in range(NV)
                    ]
                    for j in range(MR):
                        s = builder.load(builder.gep(xh, [coloffs[j]]))
                        b = builder.shuffle_vector(
                            builder.insert_element(undef, s, ir.Constant(i32, 0)), undef, mask
                        )
                        for v in range(NV):
                            acc = builder.load(accs[j][v])
                            builder.store(builder.fadd(acc, builder.fmul(wv[v], b)), accs[j][v])
        # scatter the tile: lanes are output channels (stride OH*OW in the output)
        tmp = builder.bitcast(cgutils.alloca_once(builder, ir.ArrayType(flt, KB)), flt.as_pointer())
        for j in range(MR):
            q = builder.add(q0, ir.Constant(i64, j))
            oh = builder.udiv(q, Vc)
            ow = builder.sub(q, builder.mul(oh, Vc))
            valid = builder.and_(
                builder.icmp_unsigned("<", ow, OW), builder.icmp_unsigned("<", q, Qend)
            )
            with builder.if_then(valid):
                for v in range(NV):
                    dst = builder.bitcast(builder.gep(tmp, [ir.Constant(i64, v * VL)]), vpty)
                    builder.store(builder.load(accs[j][v]), dst, align=size)
                ob = builder.gep(op, [builder.add(obase, builder.add(builder.mul(oh, OW), ow))])
                with cgutils.for_range(builder, kn) as ll:
                    val = builder.load(builder.gep(tmp, [ll.index]))
                    builder.store(val, builder.gep(ob, [builder.mul(ll.index, OHOW)]))
        return context.get_dummy_value()

    return sig, codegen


@njit(parallel=True, cache=True, nogil=True)
def im2win_conv(x, win, wpk, out, groups, FW, FH, sh, sw, dh, dw, pt, pl, Vc, nchunk):  # pragma: no cover - compiled
    """Convolve ``x`` (N, C, H, W) into ``out`` (N, K, OH, OW), one image at a time.

    ``win`` is the flat window buffer (its tail past ``C*OH*Vc*sw*FH`` already zeroed),
    ``wpk`` the packed filter; ``nchunk`` splits each k-block's columns into that many tasks.
    """
    N, C, H, W = x.shape
    K = out.shape[1]
    OH = out.shape[2]
    OW = out.shape[3]
    KB = wpk.shape[-1]
    wflat = wpk.reshape(wpk.size)
    Cg = C // groups
    Kg = K // groups
    Vw = Vc * sw
    rowlen = Vw * FH
    cstride = OH * rowlen
    OHOW = OH * OW
    Qend = (OH - 1) * Vc + OW
    nq = (Qend + MR - 1) // MR
    nkb = (Kg + KB - 1) // KB
    ntask = groups * nkb * nchunk
    # dilation 1: the (fw, fh) reduction is one contiguous run of FW*FH elements
    if dw == 1:
        FWe, FHe = 1, FW * FH
    else:
        FWe, FHe = FW, FH
    # window columns holding input data: pl <= w < pl + W
    wlo = min(pl, Vw)
    whi = min(pl + W, Vw)
    for n in range(N):
        xn = x[n]
        on = out[n].reshape(K * OHOW)
        for t in prange(C * OH):
            c = t // OH
            oh = t - c * OH
            base = t * rowlen
            for fh in range(FH):
                ih = oh * sh + fh * dh - pt
                if ih < 0 or ih >= H:
                    for w in range(Vw):
                        win[base + w * FH + fh] = 0
                else:
                    for w in range(wlo):
                        win[base + w * FH + fh] = 0
                    for w in range(wlo, whi):
                        win[base + w * FH + fh] = xn[c, ih, w - pl]
                    for w in range(whi, Vw):
                        win[base + w * FH + fh] = 0
        for t in prange(ntask):
            ch = t % nchunk
            r = t // nchunk
            kb = r % nkb
            g = r // nkb
            k0 = g * Kg + kb * KB
            kn = min(KB, (g + 1) * Kg - k0)
            woff = (g * nkb + kb) * Cg * FW * FH * KB
            xg = g * Cg * cstride
            for qt in range(ch * nq // nchunk, (ch + 1) * nq // nchunk):
                q0 = qt * MR
                _microkernel(wflat, woff, win, xg + q0 * sw * FH, cstride, Cg, FWe, FHe,
                             dw * FH, sw * FH, on, k0 * OHOW, OHOW, kn, q0, Vc, OW, Qend)
