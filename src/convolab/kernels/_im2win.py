"""im2win kernels: the window transform and a register-blocked microkernel (Numba + LLVM IR).

Window tensor, one image at a time, flat::

    win[(c * OH + oh) * Vw * FH + w * FH + fh] = x[c, oh*sh + fh*dh - pt, w - pl]   (0 outside)

for the ``Vw = (OW-1)*sw + (FW-1)*dw + 1`` padded columns that some output reads (``W`` when
the layer has no padding and the stride fits). The window of output pixel (oh, ow) for
channel ``c`` starts at ``c*OH*Vw*FH + oh*Vw*FH + ow*sw*FH`` and, for dilation 1, is the
contiguous run of FW*FH elements that the filter slice below matches.

Packed filter: ``wpk[g, kb, c, fw, fh, 0:KB]`` = ``w[g*Kg + kb*KB + l, c, fh, fw]`` (zero for
lanes past the group's channels): the paper's [K][C][FW][FH] filter, blocked by KB output
channels.

Microkernel: a tile is ``MR`` consecutive output pixels (in (oh, ow) order, so a tile may span
rows; the pixels of a short last tile repeat the last pixel) x ``KB = NV * (64 / itemsize)``
output channels, held in ``MR * NV`` 512-bit accumulators (LLVM legalises the vector type on
narrower CPUs). Each step loads NV filter vectors, broadcasts one window element per pixel,
and does a separate multiply and add per accumulator: each window element loaded serves KB
output channels, each filter vector MR pixels. Every output is the sum over (c, fw, fh) in
that order, from zero: no reassociation, no FMA contraction, so the result does not depend
on thread count or SIMD width. Written as LLVM IR because Numba's loops did not keep the
accumulators in registers. The tile's pixels are consecutive in every output plane, so in
float32 the tile is transposed in registers and stored with one masked vector store per
output channel.

Source: Lu, Chu, Liu, "Im2win: Memory Efficient Convolution On SIMD Architectures" (HPEC 2022).
"""

from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

#: output pixels per microkernel tile
MR = 12
#: pixels per tile of the narrow microkernel that finishes a short last tile
MR_TAIL = 4
#: 512-bit vectors of output channels per tile
NV = 2


def lanes(itemsize: int) -> int:
    """Output channels per tile (KB) for a compute dtype of ``itemsize`` bytes."""
    return NV * (64 // itemsize)


def _i64(v: int):
    return ir.Constant(ir.IntType(64), v)


def _make_microkernel(MR: int, pixel_major: bool = False):
    """The microkernel intrinsic for tiles of ``MR`` pixels; ``pixel_major``: it takes one more
    argument, ``ostride``, and stores pixel ``p``'s channels at ``out[obase + p*ostride + k]``
    (instead of ``out[obase + k*OHOW + p]``)."""

    if pixel_major:
        def microkernel(typingctx, w, woff, x, xoff, cstride, Cg, FWe, FHe, fwstep, rowlen,
                        colstride, out, obase, OHOW, OW, kn, p0, ostride):
            return _microkernel_typer(MR, typingctx, w, woff, x, xoff, cstride, Cg, FWe, FHe,
                                      fwstep, rowlen, colstride, out, obase, OHOW, OW, kn, p0,
                                      ostride)
    else:
        def microkernel(typingctx, w, woff, x, xoff, cstride, Cg, FWe, FHe, fwstep, rowlen,
                        colstride, out, obase, OHOW, OW, kn, p0):
            return _microkernel_typer(MR, typingctx, w, woff, x, xoff, cstride, Cg, FWe, FHe,
                                      fwstep, rowlen, colstride, out, obase, OHOW, OW, kn, p0)

    microkernel.__name__ = microkernel.__qualname__ = (
        f"_microkernel_{MR}" + ("_pixel_major" if pixel_major else ""))
    return intrinsic(microkernel)


def _microkernel_typer(MR, typingctx, w, woff, x, xoff, cstride, Cg, FWe, FHe, fwstep, rowlen,
                       colstride, out, obase, OHOW, OW, kn, p0, ostride=None):
    """One tile: pixels p0 .. p0+MR-1 (flat oh*OW + ow) x KB channels from ``k0``.

    ``woff``: the k-block's packed filter; ``xoff``: the group's first window channel;
    ``obase``: ``k0 * OHOW`` in the image's flat output; ``kn``: real channels in the block;
    ``ostride`` (pixel-major variant): elements between two pixels' output channels.
    """
    ints = (woff, xoff, cstride, Cg, FWe, FHe, fwstep, rowlen, colstride, obase, OHOW, OW, kn,
            p0) + (() if ostride is None else (ostride,))
    if not all(isinstance(t, types.Integer) for t in ints):
        return None
    sig = types.void(w, woff, x, xoff, cstride, Cg, FWe, FHe, fwstep, rowlen, colstride,
                     out, obase, OHOW, OW, kn, p0, *(() if ostride is None else (ostride,)))

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        a = [
            context.cast(builder, v, t, types.int64) if isinstance(t, types.Integer) else v
            for v, t in zip(args, sig.args, strict=True)
        ]
        (wa, woff, xa, xoff, cstride, Cg, FWe, FHe, fwstep, rowlen, colstride,
         oa, obase, OHOW, OW, kn, p0) = a[:17]
        flt = context.get_value_type(sig.args[0].dtype)
        size = context.get_abi_sizeof(flt)
        VL = 64 // size
        KB = VL * NV
        vty = ir.VectorType(flt, VL)
        vpty = vty.as_pointer()
        wp = context.make_array(sig.args[0])(context, builder, wa).data
        xp = context.make_array(sig.args[2])(context, builder, xa).data
        op = context.make_array(sig.args[11])(context, builder, oa).data
        wp = builder.gep(wp, [woff])
        xp = builder.gep(xp, [xoff])
        if ostride is None:
            _prefetch_ahead(builder, op, obase, OHOW, kn, p0, MR)
        # window offset of each pixel; pixels past the last one repeat it
        last = builder.sub(OHOW, _i64(1))
        p = builder.select(builder.icmp_unsigned("<", p0, OHOW), p0, last)
        oh = builder.udiv(p, OW)
        ow = builder.sub(p, builder.mul(oh, OW))
        coloffs = []
        for j in range(MR):
            if j:
                inside = builder.icmp_unsigned("<", builder.add(p0, _i64(j)), OHOW)
                nxt = builder.add(ow, _i64(1))
                wrap = builder.icmp_unsigned(">=", nxt, OW)
                oh = builder.select(inside, builder.select(wrap, builder.add(oh, _i64(1)), oh), oh)
                ow = builder.select(inside, builder.select(wrap, _i64(0), nxt), ow)
            coloffs.append(builder.add(builder.mul(oh, rowlen), builder.mul(ow, colstride)))
        # one base pointer per pixel and one running index shared by all pixels (computing
        # each address from the pixel's offset made the in-process JIT code slower still)
        colptrs = [builder.gep(xp, [off]) for off in coloffs]
        accs = [[cgutils.alloca_once(builder, vty) for _ in range(NV)] for _ in range(MR)]
        zero = ir.Constant(vty, None)
        for row in accs:
            for ptr in row:
                builder.store(zero, ptr)
        mask = ir.Constant(ir.VectorType(i32, VL), [0] * VL)
        undef = ir.Constant(vty, ir.Undefined)
        kbc = _i64(KB)
        # one loop over the Cg*FWe runs of FHe contiguous window elements (dilation 1: one run
        # of FW*FH per channel), an inner loop over a run
        xoff_v = cgutils.alloca_once_value(builder, _i64(0))
        fw_v = cgutils.alloca_once_value(builder, _i64(0))
        jump = builder.sub(cstride, builder.mul(builder.sub(FWe, _i64(1)), fwstep))
        runw = builder.mul(FHe, kbc)
        with cgutils.for_range(builder, builder.mul(Cg, FWe)) as ls:
            xs = builder.load(xoff_v)
            ws = builder.gep(wp, [builder.mul(ls.index, runw)])
            with cgutils.for_range(builder, FHe) as lh:
                xi = builder.add(xs, lh.index)
                wh = builder.gep(ws, [builder.mul(lh.index, kbc)])
                wv = [
                    builder.load(builder.bitcast(builder.gep(wh, [_i64(v * VL)]), vpty),
                                 align=size)
                    for v in range(NV)
                ]
                for j in range(MR):
                    s = builder.load(builder.gep(colptrs[j], [xi]))
                    b = builder.shuffle_vector(
                        builder.insert_element(undef, s, ir.Constant(i32, 0)), undef, mask
                    )
                    for v in range(NV):
                        acc = builder.load(accs[j][v])
                        builder.store(builder.fadd(acc, builder.fmul(wv[v], b)), accs[j][v])
            fw = builder.add(builder.load(fw_v), _i64(1))
            wrap = builder.icmp_unsigned(">=", fw, FWe)
            builder.store(builder.select(wrap, _i64(0), fw), fw_v)
            builder.store(builder.add(builder.load(xoff_v), builder.select(wrap, jump, fwstep)),
                          xoff_v)
        if ostride is not None:
            _store_pixel_major(builder, accs, vty, size, op, obase, OHOW, kn, p0, MR, a[17])
        elif VL == 16 and MR <= 16:
            _store_transposed(builder, accs, vty, op, obase, OHOW, kn, p0, MR)
        else:
            _store_scalar(context, builder, accs, vty, flt, op, obase, OHOW, kn, p0, MR)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _fetch_add(typingctx, arr, i):
    """``old = arr[i]; arr[i] += 1`` atomically (int64 array): hands out task numbers."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None
    sig = types.int64(arr, i)

    def codegen(context, builder, sig, args):
        ptr = context.make_array(sig.args[0])(context, builder, args[0]).data
        idx = context.cast(builder, args[1], sig.args[1], types.int64)
        return builder.atomic_rmw("add", builder.gep(ptr, [idx]), _i64(1), "monotonic")

    return sig, codegen


@intrinsic
def _strided_copy(typingctx, dst, doff, stride, src, soff, n):
    """``dst[doff + i*stride] = src[soff + i]`` for ``i < n``: one row into the window.

    A plain pointer loop; Numba's own loop (signed-index wraparound checks, slicing) ran
    2.5-4x slower on the window transform.
    """
    ints = (doff, stride, soff, n)
    if not all(isinstance(t, types.Integer) for t in ints):
        return None
    sig = types.void(dst, doff, stride, src, soff, n)

    def codegen(context, builder, sig, args):
        d = context.make_array(sig.args[0])(context, builder, args[0]).data
        s = context.make_array(sig.args[3])(context, builder, args[3]).data
        doff, stride, soff, n = (
            context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 2, 4, 5)
        )
        d = builder.gep(d, [doff])
        s = builder.gep(s, [soff])
        with cgutils.for_range(builder, n) as lp:
            v = builder.load(builder.gep(s, [lp.index]))
            builder.store(v, builder.gep(d, [builder.mul(lp.index, stride)]))
        return context.get_dummy_value()

    return sig, codegen


def _prefetch_ahead(builder, op, obase, OHOW, kn, p0, MR):
    """Prefetch (for writing) the output lines of the first and last pixels two tiles ahead.

    A tile writes a short run in each of its KB output-channel planes; without prefetching,
    those scattered write misses stalled the core when the output does not fit in the cache.
    """
    i32 = ir.IntType(32)
    i8p = ir.IntType(8).as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
    prefetch = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    last = builder.sub(OHOW, _i64(1))
    offs = []
    for d in (2 * MR, 3 * MR - 1):
        p = builder.add(p0, _i64(d))
        p = builder.select(builder.icmp_unsigned("<", p, OHOW), p, last)
        offs.append(builder.add(obase, p))
    with cgutils.for_range(builder, kn) as lk:
        plane = builder.mul(lk.index, OHOW)
        for off in offs:
            ptr = builder.bitcast(builder.gep(op, [builder.add(off, plane)]), i8p)
            builder.call(prefetch, [ptr, ir.Constant(i32, 1), ir.Constant(i32, 3),
                                    ir.Constant(i32, 1)])


def _store_scalar(context, builder, accs, vty, flt, op, obase, OHOW, kn, p0, MR):
    """Store the tile lane by lane (lanes are output channels, OH*OW apart in the output)."""
    VL = vty.count
    size = context.get_abi_sizeof(flt)
    vpty = vty.as_pointer()
    tmp = builder.bitcast(cgutils.alloca_once(builder, ir.ArrayType(flt, VL * NV)),
                          flt.as_pointer())
    for j in range(MR):
        p = builder.add(p0, _i64(j))
        with builder.if_then(builder.icmp_unsigned("<", p, OHOW)):
            for v in range(NV):
                dst = builder.bitcast(builder.gep(tmp, [_i64(v * VL)]), vpty)
                builder.store(builder.load(accs[j][v]), dst, align=size)
            ob = builder.gep(op, [builder.add(obase, p)])
            with cgutils.for_range(builder, kn) as ll:
                val = builder.load(builder.gep(tmp, [ll.index]))
                builder.store(val, builder.gep(ob, [builder.mul(ll.index, OHOW)]))


def _store_pixel_major(builder, accs, vty, size, op, obase, OHOW, kn, p0, MR, ostride):
    """Store each real pixel's KB channels (``kn`` of them real) as NV vectors at
    ``op[obase + p*ostride]`` (masked where fewer than a vector's lanes are real)."""
    i32 = ir.IntType(32)
    VL = vty.count
    flt = "f32" if size == 4 else "f64"
    mty = ir.VectorType(ir.IntType(1), VL)
    fnty = ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), i32, mty])
    mstore = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.store.v{VL}{flt}.p0")
    lanes = ir.Constant(ir.VectorType(ir.IntType(64), VL), list(range(VL)))
    masks = []
    for v in range(NV):
        left = builder.sub(kn, _i64(v * VL))
        splat = builder.shuffle_vector(
            builder.insert_element(ir.Constant(ir.VectorType(ir.IntType(64), VL), ir.Undefined),
                                   left, ir.Constant(i32, 0)),
            ir.Constant(ir.VectorType(ir.IntType(64), VL), ir.Undefined),
            ir.Constant(ir.VectorType(i32, VL), [0] * VL))
        masks.append(builder.icmp_signed("<", lanes, splat))
    for j in range(MR):
        p = builder.add(p0, _i64(j))
        with builder.if_then(builder.icmp_unsigned("<", p, OHOW)):
            base = builder.gep(op, [builder.add(obase, builder.mul(p, ostride))])
            for v in range(NV):
                ptr = builder.bitcast(builder.gep(base, [_i64(v * VL)]), vty.as_pointer())
                builder.call(mstore, [builder.load(accs[j][v]), ptr, ir.Constant(i32, size),
                                      masks[v]])


def _transpose16(builder, rows):
    """16x16 transpose of 16-lane vectors by four exchanges of one index bit each."""
    rows = list(rows)
    i32 = ir.IntType(32)
    for b in (1, 2, 4, 8):
        lo = ir.Constant(ir.VectorType(i32, 16), [i if not i & b else 16 + i - b for i in range(16)])
        hi = ir.Constant(ir.VectorType(i32, 16), [i + b if not i & b else 16 + i for i in range(16)])
        for r in range(16):
            if r & b:
                continue
            a, c = rows[r], rows[r + b]
            rows[r], rows[r + b] = builder.shuffle_vector(a, c, lo), builder.shuffle_vector(a, c, hi)
    return rows


def _store_transposed(builder, accs, vty, op, obase, OHOW, kn, p0, MR):
    """Transpose the tile in registers (lane j = pixel p0 + j) and store each output channel's
    run of pixels with one masked vector store."""
    i32 = ir.IntType(32)
    mty = ir.VectorType(ir.IntType(1), 16)
    fnty = ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), i32, mty])
    mstore = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.store.v16f32.p0")
    zero = ir.Constant(vty, None)
    cols = [
        _transpose16(builder, [builder.load(accs[j][v]) if j < MR else zero for j in range(16)])
        for v in range(NV)
    ]
    # pixels p0 .. p0 + n - 1 are real: n = min(MR, OHOW - p0)
    n = builder.sub(OHOW, p0)
    n = builder.select(builder.icmp_unsigned("<", n, _i64(MR)), n, _i64(MR))
    bits = builder.sub(builder.shl(_i64(1), n), _i64(1))
    m = builder.bitcast(builder.trunc(bits, ir.IntType(16)), mty)
    base = builder.gep(op, [builder.add(obase, p0)])
    for v in range(NV):
        for lane in range(16):
            kk = v * 16 + lane
            with builder.if_then(builder.icmp_unsigned("<", _i64(kk), kn)):
                ptr = builder.bitcast(builder.gep(base, [builder.mul(_i64(kk), OHOW)]),
                                      vty.as_pointer())
                builder.call(mstore, [cols[v][lane], ptr, ir.Constant(i32, 4), m])


_microkernel = _make_microkernel(MR)
_microkernel_tail = _make_microkernel(MR_TAIL)
_microkernel_pm = _make_microkernel(MR, pixel_major=True)
_microkernel_pm_tail = _make_microkernel(MR_TAIL, pixel_major=True)


@njit(parallel=True, cache=True, nogil=True)
def im2win_conv(x, win, wpk, out, counter, P, groups, FW, FH, sh, sw, dh, dw, pt, pl, Vw, nkbr,
                nchunk):  # pragma: no cover - compiled
    """Convolve ``x`` (N, C, H, W) into ``out`` (N, K, OH, OW), one image at a time.

    ``win`` is the flat window buffer (C*OH*Vw*FH elements), ``wpk`` the packed filter,
    ``counter`` two int64 task counters, ``P`` the thread count. A task is (group, range of
    k-blocks, range of tiles): the k-blocks are split into ``nkbr`` ranges and the tiles into
    ``nchunk`` ranges; a task runs its k-blocks in the outer loop and its tiles in the inner
    one. Tasks are handed out by an atomic counter, so a thread that the OS pauses holds up
    one task, not a fixed share of the work.
    """
    N, C, H, W = x.shape
    K = out.shape[1]
    OH = out.shape[2]
    OW = out.shape[3]
    KB = wpk.shape[-1]
    wflat = wpk.reshape(wpk.size)
    xflat = x.reshape(x.size)
    Cg = C // groups
    Kg = K // groups
    rowlen = Vw * FH
    cstride = OH * rowlen
    OHOW = OH * OW
    nkb = (Kg + KB - 1) // KB
    ntask = groups * nkbr * nchunk
    # dilation 1: the (fw, fh) reduction is one contiguous run of FW*FH elements
    if dw == 1:
        FWe, FHe = 1, FW * FH
    else:
        FWe, FHe = FW, FH
    # window columns holding input data: pl <= w < pl + W
    wlo = min(pl, Vw)
    whi = min(pl + W, Vw)
    for n in range(N):
        on = out[n].reshape(K * OHOW)
        counter[0] = 0
        for _ in prange(P):
            while True:
                t = _fetch_add(counter, 0)
                if t >= C * OH:
                    break
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
                        _strided_copy(win, base + wlo * FH + fh, FH, xflat,
                                      (n * C + c) * H * W + ih * W + wlo - pl, whi - wlo)
                        for w in range(whi, Vw):
                            win[base + w * FH + fh] = 0
        counter[1] = 0
        for _ in prange(P):
            run_tile_tasks(wflat, win, 0, cstride, FWe, FHe, dw * FH, rowlen, sw * FH, on, counter,
                           1, ntask, nchunk, nkbr, nkb, Cg, Kg, KB, FW * FH, OHOW, OW)


@njit(inline="always")
def run_tile_tasks(wflat, src, srcbase, cstride, FWe, FHe, fwstep, rowlen, colstride, on,
                   counter, ci, ntask, nchunk, nkbr, nkb, Cg, Kg, KB, taps, OHOW, OW):
    # pragma: no cover - compiled
    """One thread's share of a layer's microkernel tiles, for any input layout the microkernel
    can address: tasks (group, range of k-blocks, range of tiles) are taken from
    ``counter[ci]`` until ``ntask`` are handed out. ``srcbase``: the image's first element in
    ``src``; ``cstride``: elements between its channels; ``taps``: R S (filter elements per
    channel in the packed filter); ``on``: the image's flat output."""
    nq = (OHOW + MR - 1) // MR
    while True:
        t = _fetch_add(counter, ci)
        if t >= ntask:
            break
        ch = t % nchunk
        r = t // nchunk
        kr = r % nkbr
        g = r // nkbr
        xg = srcbase + g * Cg * cstride
        for kb in range(kr * nkb // nkbr, (kr + 1) * nkb // nkbr):
            k0 = g * Kg + kb * KB
            kn = min(KB, (g + 1) * Kg - k0)
            woff = (g * nkb + kb) * Cg * taps * KB
            for qt in range(ch * nq // nchunk, (ch + 1) * nq // nchunk):
                p0 = qt * MR
                if OHOW - p0 > MR - MR_TAIL:
                    _microkernel(wflat, woff, src, xg, cstride, Cg, FWe, FHe, fwstep, rowlen,
                                 colstride, on, k0 * OHOW, OHOW, OW, kn, p0)
                else:  # a last tile of at most MR - MR_TAIL pixels: narrow tiles
                    for p in range(p0, OHOW, MR_TAIL):
                        _microkernel_tail(wflat, woff, src, xg, cstride, Cg, FWe, FHe, fwstep,
                                          rowlen, colstride, on, k0 * OHOW, OHOW, OW, kn, p)


@njit(parallel=True, cache=True, nogil=True)
def direct_tiles(xp, wpk, out, counter, P, groups, R, S, nkbr, nchunk):  # pragma: no cover
    """Direct convolution, stride and dilation 1, of the zero-padded input ``xp``
    (N, C, Hp, Wp) with the microkernel: the window of output pixel (oh, ow) for channel c is
    rows oh .. oh+R-1 of the padded plane, columns ow .. ow+S-1 (runs of S contiguous
    elements), reduced in (c, r, s) order. ``wpk``: [groups][k-blocks][C/g][R][S][KB]."""
    N, C, Hp, Wp = xp.shape
    K = out.shape[1]
    OHOW = out.shape[2] * out.shape[3]
    OW = out.shape[3]
    KB = wpk.shape[-1]
    wflat = wpk.reshape(wpk.size)
    xflat = xp.reshape(xp.size)
    Cg = C // groups
    Kg = K // groups
    nkb = (Kg + KB - 1) // KB
    ntask = groups * nkbr * nchunk
    for n in range(N):
        on = out[n].reshape(K * OHOW)
        counter[0] = 0
        for _ in prange(P):
            run_tile_tasks(wflat, xflat, n * C * Hp * Wp, Hp * Wp, R, S, Wp, Wp, 1, on, counter,
                           0, ntask, nchunk, nkbr, nkb, Cg, Kg, KB, R * S, OHOW, OW)


@njit(cache=True, nogil=True)
def point_gemms_mk(wpk, V, M, kb0, kb1, Kg):  # pragma: no cover - compiled
    """Per transform-domain point ``p``: ``M[p, t, k - kb0 KB] = sum_c V[p, t, c] Wt[p, c, k]``
    for the k-blocks ``kb0 .. kb1 - 1``, on the microkernel (serial; the caller's threads split
    the tiles or the k-blocks). ``wpk[p, kb, c, l] = Wt[p, c, kb KB + l]`` (zero past ``Kg``);
    ``V[p]`` is read as an image of ``T`` pixels whose channels are adjacent (channel stride 1,
    pixel stride C), and each tile stored pixel by pixel (row stride ``M.shape[2]``). The sum
    over c runs in order, from zero."""
    P, T, C = V.shape
    nkb = wpk.shape[1]
    KB = wpk.shape[3]
    nk = M.shape[2]
    wflat = wpk.reshape(wpk.size)
    vflat = V.reshape(V.size)
    mflat = M.reshape(M.size)
    for p in range(P):
        for kb in range(kb0, kb1):
            kn = min(KB, Kg - kb * KB)
            woff = (p * nkb + kb) * C * KB
            obase = p * T * nk + (kb - kb0) * KB
            for p0 in range(0, T, MR):
                if T - p0 > MR - MR_TAIL:
                    _microkernel_pm(wflat, woff, vflat, p * T * C, 1, C, 1, 1, 0, 0, C, mflat,
                                    obase, T, T, kn, p0, nk)
                else:
                    for q in range(p0, T, MR_TAIL):
                        _microkernel_pm_tail(wflat, woff, vflat, p * T * C, 1, C, 1, 1, 0, 0, C,
                                             mflat, obase, T, T, kn, q, nk)
