"""The register-blocked microkernel (Numba + LLVM IR) and every compiled function that runs it.

Geometry, packing and task splitting are in `convolab.kernels.microkernel`; this module holds
the intrinsics and the drivers of direct (`direct_tiles`), im2win (`im2win_conv`, with its
window transform) and the Winograd/SFC point GEMMs (`point_gemms_mk`). They live in one file
on purpose: Numba's cache is invalidated per source file, so a function that inlines the
microkernel from another file would keep running a stale copy after the microkernel changes
(`convolab.kernels._bilinear.chunk_mk` calls `point_gemms_mk`: touch that file too when the
code generated here changes).

Microkernel: a tile is ``MR`` consecutive virtual pixels ``v0 .. v0+MR-1`` x ``KB = NV * (64 /
itemsize)`` output channels, in ``MR * NV`` 512-bit accumulators (LLVM legalises the vector
type on narrower CPUs). Pixel ``v`` reads its window at ``x[xoff + v*cs + i]`` for reduction
offsets ``i``: runs of ``FHe`` elements ``istep`` apart, ``Cg * FWe`` runs, the next run
``fwstep`` further (``jump`` after the ``FWe``-th). Each step loads NV filter vectors,
broadcasts one input element per pixel and does one fused multiply-add per accumulator
(``llvm.fma``): each input element loaded serves KB output channels, each filter vector MR
pixels. The MR pixels are addressed from one pointer per three pixels (``p, p + cs, p + 2cs``),
so the loop needs five general registers for them and nothing spills. Written as LLVM IR
because Numba's loops did not keep the accumulators in registers.

Stores: for NCHW outputs, in float32 the tile is transposed in registers and each output
channel's run of pixels within a grid row stored with one masked vector store (pixels of the
grid's padding columns are skipped); in float64 element by element. Point GEMMs store pixel by
pixel (``out[obase + v*ostride + k]``).

Source of the layout: Lu, Chu, Liu, "Im2win: Memory Efficient Convolution On SIMD
Architectures" (HPEC 2022).

Size: one module because its variants (straight, general, table, blocked, pixel-major, tails)
are built by the same code generator and the drivers that inline them must be compiled from the
same source (Numba caches per file); split, each file would repeat the generator.
"""

from contextlib import contextmanager

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._atomics import fetch_add, fetch_add_n, wait_until
from ._epilogue import F0, F1
from ._epilogue import run as epilogue_run
from .microkernel import MR, MR_ROW, MR_TAIL, MR_WIDE, NV

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
#: steps of the reduction ahead of which a tile prefetches the packed filter (a step reads 128
#: bytes of it: 16 steps are 2 KiB, about a memory latency of multiply-adds)
WEIGHT_PREFETCH_STEPS = 16
#: steps of a long reduction run (a 1x1 layer's channels, one plane apart in NCHW) ahead of
#: which a tile prefetches its input (also `convolab.kernels._pointwise`'s pixel vectors). Each
#: step of such a run reads a line of another plane, which no hardware prefetcher predicts; at
#: two 512-bit multiply-add ports (Intel Xeon) a step is half as long as at Zen 4's rate and
#: those misses showed: ResNet-50 batch 1, one thread, each layer's time inside the run against
#: ONNX Runtime's (tools/ort_gap.py, Xeon, 2026-12-07): 1x1 512 -> 128 at 28x28 1.75x -> 1.23x,
#: 2048 -> 512 at 7x7 1.34x -> 1.16x, 256 -> 64 at 56x56 (pixel vectors) 1.72x -> 1.31x; the
#: whole call 1.29x -> 1.23x. Tiles of unit stride with short runs (a row of taps) prefetch
#: the next channel's row: 3x3 64@56 1.23-1.25x -> 1.16-1.18x; tap tables (stride-2 layers on
#: phase planes) the same tap of the next channel (their 9 taps read 6 rows of 4 phase planes,
#: twice the lines of a stride-1 layer): 3x3 128@56/2 1.60x -> 1.45x, 256@28/2 1.34x -> 1.25x.
#: Both were first tried on the runtime-stride kernels, whose spilled registers made them 10%
#: and 40-60% slower; those still do not prefetch on short runs
INPUT_PREFETCH_STEPS = 8
# No output prefetch: tiles once prefetched (for writing) the lines of every output channel two
# tiles ahead, 64 prefetches per tile. In the runtime that loop was most of a tile's fixed cost
# (1x1 256 -> 1024 at 14x14, executor, one thread, Zen 4: 0.987 -> 0.922 ms; t(C) = a + b C
# fitted over C = 128..1024 gave a = 0.103 ms for 544 tiles, 0.033 ms without), and no layer,
# alone or inside ResNet-50 / EfficientNet-Lite0 / MobileNetV2 at batch 1 and 8, ran slower
# without it (ResNet-50 batch 1, one thread: 1.07x -> 1.05x ONNX Runtime's time).


def _i64(v: int):
    return ir.Constant(_I64, v)


@contextmanager
def _for_range_rolled(builder, count):
    """`cgutils.for_range` whose loop LLVM must not unroll (``llvm.loop.unroll.disable``).

    Unrolled by two, the tile loop's consecutive steps read overlapping inputs (for ``cs`` =
    1, pixel j of step i+1 is pixel j+1 of step i); LLVM then kept the shared broadcasts
    alive across both steps and spilled accumulators to the stack.
    """
    mod = builder.module
    off = mod.add_metadata([ir.MetaDataString(mod, "llvm.loop.unroll.disable")])
    loop_id = mod.add_metadata([None, off])
    loop_id.operands = (loop_id, off)  # a loop ID's first operand is itself
    bbcond = builder.append_basic_block("rolled.cond")
    bbbody = builder.append_basic_block("rolled.body")
    bbend = builder.append_basic_block("rolled.end")
    bbstart = builder.basic_block
    builder.branch(bbcond)
    with builder.goto_block(bbcond):
        index = builder.phi(_I64, name="rolled.index")
        builder.cbranch(builder.icmp_signed("<", index, count), bbbody, bbend)
    with builder.goto_block(bbbody):
        yield index
        bbbody = builder.basic_block
        incr = builder.add(index, _i64(1))
        builder.branch(bbcond).set_metadata("llvm.loop", loop_id)
    index.add_incoming(_i64(0), bbstart)
    index.add_incoming(incr, bbbody)
    builder.position_at_end(bbend)


def _fma_fn(builder, ty):
    """``llvm.fma`` for the LLVM type ``ty`` (scalar or vector float)."""
    if isinstance(ty, ir.VectorType):
        name = f"llvm.fma.v{ty.count}{'f32' if ty.element == ir.FloatType() else 'f64'}"
    else:
        name = f"llvm.fma.{'f32' if ty == ir.FloatType() else 'f64'}"
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty, ty]), name)


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` with one rounding (``llvm.fma``), for float32 or float64 scalars of one
    type; LLVM's loop vectoriser widens it to vector FMAs."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None
    sig = a(a, b, c)

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(sig.return_type)
        return builder.call(_fma_fn(builder, ty), list(args))

    return sig, codegen



def _make_microkernel(mr: int, pixel_major: bool = False, straight: bool = False,
                      table: bool = False, blocked: bool = False, nv: int = NV,
                      stage: tuple[int, int] | None = None, pixel_stride: int = 0,
                      tapped: bool = False, rows: int = 1):
    """The microkernel intrinsic for tiles of ``mr`` pixels, pixels past ``OHOW - 1`` repeating
    it. ``straight``: the tile's pixels lie in one output row (the caller checks), addressed
    from one pointer per three pixels. With ``pixel_major`` it takes one more argument,
    ``ostride``, and stores pixel ``v``'s channels at ``out[obase + v*ostride + k]`` instead of
    ``out[obase + k*OHOW + v]``. With ``table`` (the taps of a strided layer on its
    stride-phase planes) four more: ``OWr`` and ``OHOWr``: pixels are then virtual, ``OW`` (>
    ``OWr``) of them per row and ``OHOW`` in all, the columns ``OWr .. OW - 1`` of each row
    computed but not stored; virtual pixel (oh, ow) is stored at ``out[obase + k*OHOWr +
    oh*OWr + ow]`` (`_store_virtual`); and ``tab`` and ``tabo``: the reduction's run of
    ``FHe`` elements reads element ``i`` at ``tab[tabo + i]`` from the run's start instead of
    ``i * istep``.

    With ``blocked`` the tile is stored channel-blocked (NCHW16c: 16 channels of a pixel in one
    vector, `_store_pixel_major`; with ``table`` its real pixels only,
    `_store_virtual_blocked`), with bias and ReLU / clamp but no residual. ``nv`` < `NV`: the
    tile computes its first ``nv`` vectors of channels only (a last k-block with at most ``nv``
    vectors of real channels; the filter keeps its KB-wide packing). ``pixel_stride`` > 0: the
    ``cs`` argument is that constant (1: stride 1 and tap tables, 16: channel-blocked input),
    compiled into the tile (offsets folded, no stride register to spill); the caller checks it.

    Every variant but ``pixel_major`` ends with the output stage's eight arguments, ``eb, eko,
    er, erd, emode, ecode, elo, ehi``: float32 tiles stored transposed become ``act(y +
    eb[eko + k] + er[erd + i])`` for output element ``i`` of channel ``k`` of the k-block
    before they are stored (`_epilogue_vector`; ``emode`` bits 2 bias, 4 residual, 8 prefetch
    the tile's output lines before its reduction (`_prefetch_tile_output`); ``ecode`` 0 none, 1
    ReLU, 2 clamp(elo, ehi)), the order and rounding of
    `convolab.kernels._epilogue.run`; other tiles ignore them.

    ``tapped`` (implies ``table``'s arguments): each step's tap offset from the table, the
    tiles over real pixels as without a table (``OWr``, ``OHOWr`` unused): a k x k layer on a
    zero-bordered channel-blocked copy of its input, the runs (16 channels of a block, ``FWe``
    16, ``fwstep`` 1) of ``FHe`` = R S taps each, pixels ``cs`` = 16 x stride apart.
    ``rows`` 2 (straight): the tile's pixels are two output rows of ``mr`` / 2 (7x7 planes)."""
    table = table or tapped
    if table:
        def microkernel(typingctx, w, woff, x, xoff, cstride, Cg, FWe, FHe, istep, fwstep, cs, out,
                        obase, OHOW, OW, rowlen, kn, v0, OWr, OHOWr, tab, tabo, eb, eko, er, erd,
                        emode, ecode, elo, ehi):
            return _typer(mr, straight, (w, woff, x, xoff, cstride, Cg, FWe, FHe, istep, fwstep,
                                         cs, out, obase, OHOW, OW, rowlen, kn, v0, OWr, OHOWr,
                                         tab, tabo, eb, eko, er, erd, emode, ecode, elo, ehi),
                          table=True, blocked=blocked, pixel_stride=pixel_stride,
                          tapped=tapped, rows=rows)
    elif pixel_major:
        def microkernel(typingctx, w, woff, x, xoff, cstride, Cg, FWe, FHe, istep, fwstep, cs, out,
                        obase, OHOW, OW, rowlen, kn, v0, ostride):
            return _typer(mr, straight, (w, woff, x, xoff, cstride, Cg, FWe, FHe, istep, fwstep,
                                         cs, out, obase, OHOW, OW, rowlen, kn, v0, ostride),
                          pixel_major=True)
    else:
        def microkernel(typingctx, w, woff, x, xoff, cstride, Cg, FWe, FHe, istep, fwstep, cs, out,
                        obase, OHOW, OW, rowlen, kn, v0, eb, eko, er, erd, emode, ecode, elo, ehi):
            return _typer(mr, straight, (w, woff, x, xoff, cstride, Cg, FWe, FHe, istep, fwstep,
                                         cs, out, obase, OHOW, OW, rowlen, kn, v0, eb, eko, er,
                                         erd, emode, ecode, elo, ehi), blocked=blocked, nv=nv,
                          stage=stage, pixel_stride=pixel_stride)

    microkernel.__name__ = microkernel.__qualname__ = (
        f"_microkernel_{mr}" + ("_straight" if straight else "")
        + ("_pixel_major" if pixel_major else "")
        + ("_tapped" if tapped else "_table" if table else "")
        + ("_blocked" if blocked else "") + ("" if nv == NV else f"_nv{nv}")
        + ("" if stage is None else f"_m{stage[0]}_c{stage[1]}")
        + (f"_cs{pixel_stride}" if pixel_stride else "") + (f"_rows{rows}" if rows > 1 else ""))
    return intrinsic(microkernel)


def scalars_typed(tys, arrays, floats) -> bool:
    """An intrinsic's argument types: those at ``floats`` are floats, every other one not at
    ``arrays`` an integer."""
    return (all(isinstance(t, types.Integer) for i, t in enumerate(tys)
                if i not in arrays and i not in floats)
            and all(isinstance(tys[i], types.Float) for i in floats))


def int64_scalars(context, builder, sig, args, arrays, floats) -> list:
    """An intrinsic's arguments, the integers (all but ``arrays`` and ``floats``) cast to
    int64."""
    return [context.cast(builder, v, t, types.int64) if i not in arrays and i not in floats
            else v for i, (v, t) in enumerate(zip(args, sig.args, strict=True))]


def _typer(mr, straight, tys, pixel_major=False, table=False, blocked=False, nv=NV, stage=None,
           pixel_stride=0, tapped=False, rows=1):
    """Signature and code of one tile: pixels ``v0 .. v0+mr-1`` x KB channels (``kn`` real).

    ``woff``: the k-block's packed filter; ``xoff``: the group's first input element;
    ``obase``: the k-block's first output element (NCHW: ``k0 * OHOW``); pixel ``v`` is output
    (v // OW, v % OW) and reads its window from ``(v // OW) * rowlen + (v % OW) * cs``;
    """
    ne = 0 if pixel_major else 8  # the output stage's arguments, last
    nt = len(tys)
    arrays = (0, 2, 11) + ((nt - 8, nt - 6) if ne else ()) + ((20,) if table else ())
    floats = (nt - 2, nt - 1) if ne else ()
    if not scalars_typed(tys, arrays, floats):
        return None
    sig = types.void(*tys)

    def codegen(context, builder, sig, args):
        a = int64_scalars(context, builder, sig, args, arrays, floats)
        if stage is not None:  # the output stage known when compiled: no tests per vector
            # (emode's bit 8, prefetch the output, stays a run-time choice)
            a[nt - 4] = builder.or_(builder.and_(a[nt - 4], _i64(8)), _i64(stage[0]))
            a[nt - 3] = _i64(stage[1])
        (wa, woff, xa, xoff, cstride, Cg, FWe, FHe, istep, fwstep, cs, oa, obase, OHOW, OW,
         rowlen, kn, v0) = a[:18]
        unit = pixel_stride
        if unit:  # the pixel stride known when compiled (the caller checks cs == unit):
            cs = _i64(unit)  # constant offsets, one pointer for the tile's pixels
        flt = context.get_value_type(sig.args[0].dtype)
        size = context.get_abi_sizeof(flt)
        VL = 64 // size
        KB = VL * NV
        vty = ir.VectorType(flt, VL)
        vpty = vty.as_pointer()
        fmaf = _fma_fn(builder, vty)
        i8p = ir.IntType(8).as_pointer()
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]),
            "llvm.prefetch.p0")
        wp = builder.gep(context.make_array(sig.args[0])(context, builder, wa).data, [woff])
        xp = builder.gep(context.make_array(sig.args[2])(context, builder, xa).data, [xoff])
        op = context.make_array(sig.args[11])(context, builder, oa).data
        if table:
            tabp = context.make_array(sig.args[20])(context, builder, a[20]).data
        # pixel pointers: one per three pixels (offsets 0, cs, 2cs) in a full tile; one per
        # pixel, clamped to the last, in a short one
        if straight:
            # all mr pixels in one output row: one pointer per three pixels, offsets 0, cs, 2cs
            oh, ow = _divmod(builder, v0, OW)
            row = builder.add(builder.mul(oh, rowlen), builder.mul(ow, cs))
            offs = [_i64(0), cs, builder.add(cs, cs)]
            per = mr // rows  # pixels per output row
            pix = []
            for q in range(rows):  # row q of the tile: rowlen further
                rq = builder.add(row, builder.mul(_i64(q), rowlen))
                bases = [builder.gep(xp, [builder.add(rq, builder.mul(_i64(3 * g), cs))])
                         for g in range(-(-per // 3))]
                pix += [(bases[j // 3], offs[j % 3]) for j in range(per)]
        else:
            # one pointer per pixel: pixel v is output (v // OW, v % OW), its window at
            # (v // OW) * rowlen + (v % OW) * cs; pixels past the last repeat it
            last = builder.sub(OHOW, _i64(1))
            v = builder.select(builder.icmp_unsigned("<", v0, OHOW), v0, last)
            oh, ow = _divmod(builder, v, OW)
            pix = []
            for j in range(mr):
                if j:
                    inside = builder.icmp_unsigned("<", builder.add(v0, _i64(j)), OHOW)
                    nxt = builder.add(ow, _i64(1))
                    wrap = builder.icmp_unsigned(">=", nxt, OW)
                    oh = builder.select(inside, builder.select(wrap, builder.add(oh, _i64(1)), oh),
                                        oh)
                    ow = builder.select(inside, builder.select(wrap, _i64(0), nxt), ow)
                off = builder.add(builder.mul(oh, rowlen), builder.mul(ow, cs))
                pix.append((builder.gep(xp, [off]), _i64(0)))
        # nv < NV: the tile's first nv vectors of channels only (a last k-block of at most
        # nv VL real channels; the filter is packed KB wide all the same)
        accs = [[cgutils.alloca_once(builder, vty) for _ in range(nv)] for _ in range(mr)]
        zero = ir.Constant(vty, None)
        for row in accs:
            for ptr in row:
                builder.store(zero, ptr)
        kbc = _i64(KB)
        # a loop over the Cg*FWe runs of FHe input elements istep apart, an inner one over a run
        xoff_v = cgutils.alloca_once_value(builder, _i64(0))
        fw_v = cgutils.alloca_once_value(builder, _i64(0))
        jump = builder.sub(cstride, builder.mul(builder.sub(FWe, _i64(1)), fwstep))
        runw = builder.mul(FHe, kbc)
        # which tiles prefetch their input, how far ahead (see INPUT_PREFETCH_STEPS): long runs
        # (a 1x1 layer's channels, one plane apart) INPUT_PREFETCH_STEPS steps; at unit stride
        # short runs the next channel's row and tap tables the next channel's tap (cstride);
        # pixels 16 elements apart (channel-blocked input: each pixel's line serves 16 steps,
        # the next block's lines follow in order) none
        yes, no = ir.Constant(ir.IntType(1), 1), ir.Constant(ir.IntType(1), 0)
        virtual = table and not tapped  # tiles of virtual pixels (stride-phase planes)
        if tapped:
            # straight tiles: one line of the next block's window per step (pixel min(fw,
            # mr - 1) at the step's tap: every line of it within a block's 16 R S steps)
            # (stride 1, the pixel stride a constant; with it at run time, stride 2, the
            # prefetches took the layer from 1.3x to 2.5x ONNX Runtime's time)
            long_run, pf_dist = (yes if straight and unit in (16, 32) else no), cstride
        elif table:
            long_run, pf_dist = (yes if unit == 1 else no), cstride
        elif unit == 16 and straight:
            # the next 16-channel block's line of pixel lh (< mr) at step lh of each run: a
            # block's lines lie a plane of pixel vectors after the last one's, where no
            # hardware prefetcher looks (1x1 1024 -> 256 at 14x14 inside ResNet-50)
            long_run, pf_dist = yes, cstride
        elif unit == 16:
            long_run, pf_dist = no, cstride
        else:
            long_run = builder.icmp_signed(">=", FHe, _i64(INPUT_PREFETCH_STEPS))
            pf_dist = builder.mul(istep, _i64(INPUT_PREFETCH_STEPS))
            if unit == 1:
                pf_dist = builder.select(long_run, pf_dist, cstride)
                long_run = yes

        def reduction(pf):
            with cgutils.for_range(builder, builder.mul(Cg, FWe)) as ls:
                xs = builder.load(xoff_v)
                ws = builder.gep(wp, [builder.mul(ls.index, runw)])
                with _for_range_rolled(builder, FHe) as lh:
                    if table:
                        xi = builder.add(xs, builder.load(builder.gep(
                            tabp, [builder.add(a[21], lh)])))
                    else:
                        xi = builder.add(xs, builder.mul(lh, istep))
                    wh = builder.gep(ws, [builder.mul(lh, kbc)])
                    wv = [builder.load(builder.bitcast(builder.gep(wh, [_i64(v * VL)]), vpty),
                                       align=size) for v in range(nv)]
                    # the packed filter is read in order: fetch the lines WEIGHT_PREFETCH_STEPS
                    # steps ahead (into the next k-block at the end of this one), so a filter
                    # streamed from memory, once per layer, does not stall the first tiles
                    for v in range(nv):
                        builder.call(prefetch, [builder.bitcast(
                            builder.gep(wh, [_i64(WEIGHT_PREFETCH_STEPS * KB + v * VL)]), i8p),
                            ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
                    # the input `pf_dist` elements ahead, at the tile's first and last pixel
                    if pf and tapped:
                        fw = builder.load(fw_v)
                        per = mr // rows
                        q = builder.select(builder.icmp_unsigned("<", fw, _i64(per)), _i64(0),
                                           _i64(rows - 1))
                        jc = builder.sub(fw, builder.mul(q, _i64(per)))
                        jc = builder.select(builder.icmp_unsigned("<", jc, _i64(per)), jc,
                                            _i64(per - 1))
                        off = builder.add(builder.add(xi, pf_dist), builder.mul(jc, cs))
                        off = builder.add(off, builder.mul(q, rowlen))
                        builder.call(prefetch, [builder.bitcast(builder.gep(pix[0][0], [off]),
                                                                i8p),
                                                ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                                                ir.Constant(_I32, 1)])
                    elif pf and unit == 16 and straight:
                        lhc = builder.select(builder.icmp_unsigned("<", lh, _i64(mr)), lh,
                                             _i64(mr - 1))
                        off = builder.add(builder.add(xs, pf_dist), builder.mul(lhc, _i64(16)))
                        builder.call(prefetch, [builder.bitcast(builder.gep(pix[0][0], [off]),
                                                                i8p),
                                                ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                                                ir.Constant(_I32, 1)])
                    for base, off in ((pix[0], pix[-1]) if pf and unit != 16 and not tapped
                                      else ()):
                        builder.call(prefetch, [builder.bitcast(builder.gep(
                            base, [builder.add(builder.add(xi, off), pf_dist)]), i8p),
                            ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
                    for j, (base, off) in enumerate(pix):
                        s = builder.load(builder.gep(base, [builder.add(xi, off)]))
                        b = splat(builder, s, vty)
                        for v in range(nv):
                            acc = builder.load(accs[j][v])
                            builder.store(builder.call(fmaf, [wv[v], b, acc]), accs[j][v])
                fw = builder.add(builder.load(fw_v), _i64(1))
                wrap = builder.icmp_unsigned(">=", fw, FWe)
                builder.store(builder.select(wrap, _i64(0), fw), fw_v)
                builder.store(builder.add(builder.load(xoff_v),
                                          builder.select(wrap, jump, fwstep)), xoff_v)

        epi = None
        if ne and VL == 16 and mr <= 16:
            epi = _Epi(context, builder, sig, a, nt - 8, flt, vty)
        if epi is not None and blocked and not virtual:
            # NCHW16c: the tile's pixels are one run of lines per vector of channels
            _prefetch_tile_output(builder, prefetch, op,
                                  builder.add(obase, builder.mul(v0, _i64(VL))),
                                  [builder.mul(_i64(i * VL), OHOW) for i in range(nv)],
                                  [_i64(j * VL) for j in range(mr)], epi)
        elif epi is not None and not blocked:
            if virtual:  # virtual pixel (oh, ow) at oh OWr + ow of planes OHOWr apart
                voh, vow = _divmod(builder, v0, OW)
                first, pstride = builder.add(builder.mul(voh, a[18]), vow), a[19]
            else:
                first, pstride = v0, OHOW
            # every channel's first and last pixel's line
            _prefetch_tile_output(builder, prefetch, op, builder.add(obase, first),
                                  [builder.mul(_i64(kk), pstride) for kk in range(nv * VL)],
                                  [_i64(0), _i64(mr - 1)] if mr > 1 else [_i64(0)], epi)
        # two copies of the loop: a branch per step around the prefetches (short runs skip
        # them) cost 3x3 layers 10% (Xeon)
        with builder.if_else(long_run) as (then, otherwise):
            with then:
                reduction(True)
            with otherwise:
                reduction(False)
        n = builder.sub(OHOW, v0)
        n = builder.select(builder.icmp_unsigned("<", n, _i64(mr)), n, _i64(mr))
        if pixel_major:
            _store_pixel_major(builder, accs, vty, size, op, obase, kn, v0, n, a[18])
        elif virtual and blocked:  # NCHW16c, the real pixels of the virtual ones
            _store_virtual_blocked(builder, accs, vty, size, op, obase, OW, kn, v0, n, a[18],
                                   a[19], epi)
        elif blocked and epi is not None:  # NCHW16c
            _store_blocked(builder, accs, vty, size, op, obase, kn, v0, n,
                           builder.mul(_i64(VL), OHOW), epi)
        elif blocked:
            _store_pixel_major(builder, accs, vty, size, op, obase, kn, v0, n, _i64(VL),
                               builder.mul(_i64(VL), OHOW))
        elif virtual:
            _store_virtual(context, builder, accs, vty, flt, op, obase, OW, kn, v0, n, a[18], a[19],
                           epi)
        elif VL == 16 and mr <= 16:
            _store_transposed(builder, accs, vty, op, obase, OHOW, kn, v0, n, epi)
        else:
            _store_scalar(context, builder, accs, vty, flt, op, obase, OHOW, kn, v0, n)
        return context.get_dummy_value()

    return sig, codegen


class _Epi:
    """The fused output stage of float32 tiles (see `_make_microkernel`)."""

    def __init__(self, context, builder, sig, a, e, flt, vty):
        self.eb = context.make_array(sig.args[e])(context, builder, a[e]).data
        self.er = context.make_array(sig.args[e + 2])(context, builder, a[e + 2]).data
        self.eko, self.erd, self.mode, self.code = a[e + 1], a[e + 3], a[e + 4], a[e + 5]
        self.lo = context.cast(builder, a[e + 6], sig.args[e + 6], sig.args[0].dtype)
        self.hi = context.cast(builder, a[e + 7], sig.args[e + 7], sig.args[0].dtype)
        self.vty = vty
        self.cur = cgutils.alloca_once(builder, vty)
        self.mload = masked_load(builder, vty)

    def apply(self, builder, v, kk, index, mask):
        """``act(v + eb[eko + kk] + er[erd + index + lane])`` by mode and code (the residual
        loaded under ``mask``)."""
        builder.store(v, self.cur)
        bits = builder.and_(self.mode, _i64(2))
        with builder.if_then(builder.icmp_unsigned("!=", bits, _i64(0))):
            b = builder.load(builder.gep(self.eb, [builder.add(self.eko, _i64(kk))]))
            builder.store(builder.fadd(builder.load(self.cur), splat(builder, b, self.vty)), self.cur)
        bits = builder.and_(self.mode, _i64(4))
        with builder.if_then(builder.icmp_unsigned("!=", bits, _i64(0))):
            ptr = builder.bitcast(builder.gep(self.er, [builder.add(self.erd, index)]),
                                  self.vty.as_pointer())
            r = builder.call(self.mload, [ptr, ir.Constant(_I32, 4), mask,
                                          ir.Constant(self.vty, None)])
            builder.store(builder.fadd(builder.load(self.cur), r), self.cur)
        return self._activation(builder)

    def _activation(self, builder):
        """ReLU (code 1) or clamp(lo, hi) (code 2) of the vector in ``cur``; returns it."""
        with builder.if_then(builder.icmp_unsigned("==", self.code, _i64(1))):
            builder.store(relu_vec(builder, builder.load(self.cur)), self.cur)
        with builder.if_then(builder.icmp_unsigned("==", self.code, _i64(2))):
            lo, hi = splat(builder, self.lo, self.vty), splat(builder, self.hi, self.vty)
            builder.store(clamp_vec(builder, builder.load(self.cur), lo, hi), self.cur)
        return builder.load(self.cur)

    def apply_lanes(self, builder, v, k0, mask):
        """``act(v + eb[eko + k0 + lane])`` by mode (bias) and code, lanes being output
        channels (the bias loaded under ``mask``); no residual."""
        builder.store(v, self.cur)
        bits = builder.and_(self.mode, _i64(2))
        with builder.if_then(builder.icmp_unsigned("!=", bits, _i64(0))):
            ptr = builder.bitcast(builder.gep(self.eb, [builder.add(self.eko, _i64(k0))]),
                                  self.vty.as_pointer())
            b = builder.call(self.mload, [ptr, ir.Constant(_I32, 4), mask,
                                          ir.Constant(self.vty, None)])
            builder.store(builder.fadd(builder.load(self.cur), b), self.cur)
        return self._activation(builder)


def _prefetch_tile_output(builder, prefetch, op, start, rows, cols, epi):
    """Where the output stage's ``emode`` has bit 8: prefetch, for writing, the lines a tile
    will store (``op[start + r + c]`` for each ``r`` in ``rows``, ``c`` in ``cols``: NCHW, each
    channel's first and last pixel; channel-blocked, every line of each vector of channels),
    and the residual's lines where the output stage reads one that the output does not
    overwrite (``erd`` != 0). Issued before
    the reduction, which takes thousands of cycles: a layer writing a batch's output to lines in
    no cache otherwise stalled on each tile's 32-64 store misses (read for ownership) as its
    stores drained. Xeon, ResNet-50-like 256 -> 1024 1x1 at 14x14, batch 8, one thread, the
    network's last layer (output to memory): 7.4 -> 5.7 ms (ONNX Runtime 4.7)."""
    i8p = ir.IntType(8).as_pointer()

    def lines(base, rw):
        for r in rows:
            for c in cols:
                builder.call(prefetch, [builder.bitcast(builder.gep(base, [builder.add(r, c)]),
                                                        i8p),
                                        ir.Constant(_I32, rw), ir.Constant(_I32, 3),
                                        ir.Constant(_I32, 1)])

    with builder.if_then(builder.icmp_unsigned("!=", builder.and_(epi.mode, _i64(8)), _i64(0))):
        lines(builder.gep(op, [start]), 1)
        has_res = builder.icmp_unsigned("!=", builder.and_(epi.mode, _i64(4)), _i64(0))
        apart = builder.and_(has_res, builder.icmp_unsigned("!=", epi.erd, _i64(0)))
        with builder.if_then(apart, likely=False):
            lines(builder.gep(epi.er, [builder.add(epi.erd, start)]), 0)


def _divmod(builder, v, d):
    q = builder.udiv(v, d)
    return q, builder.sub(v, builder.mul(q, d))


def _store_scalar(context, builder, accs, vty, flt, op, obase, OHOW, kn, v0, n):
    """Store the tile lane by lane (lanes are output channels, OH*OW apart in the output)."""
    VL = vty.count
    size = context.get_abi_sizeof(flt)
    vpty = vty.as_pointer()
    tmp = builder.bitcast(cgutils.alloca_once(builder, ir.ArrayType(flt, VL * NV)),
                          flt.as_pointer())
    for j in range(len(accs)):
        with builder.if_then(builder.icmp_unsigned("<", _i64(j), n)):
            for v in range(len(accs[j])):
                dst = builder.bitcast(builder.gep(tmp, [_i64(v * VL)]), vpty)
                builder.store(builder.load(accs[j][v]), dst, align=size)
            ob = builder.gep(op, [builder.add(obase, builder.add(v0, _i64(j)))])
            with cgutils.for_range(builder, kn) as ll:  # kn <= nv VL
                val = builder.load(builder.gep(tmp, [ll.index]))
                builder.store(val, builder.gep(ob, [builder.mul(ll.index, OHOW)]))


def _lane_masks(builder, vty, kn):
    """Per vector of the tile, the lanes (output channels) below ``kn``."""
    VL = vty.count
    return [lanes_below(builder, builder.sub(kn, _i64(v * VL)), VL) for v in range(NV)]


def _suffix(vty):
    return f"v{vty.count}{'f32' if vty.element == ir.FloatType() else 'f64'}"


def _masked_store(builder, vty, size):
    """``llvm.masked.store`` for vectors ``vty``, and the mask's type."""
    mty = ir.VectorType(ir.IntType(1), vty.count)
    fnty = ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), _I32, mty])
    return cgutils.get_or_insert_function(builder.module, fnty,
                                          f"llvm.masked.store.{_suffix(vty)}.p0"), mty


def masked_load(builder, vty):
    """``llvm.masked.load`` for vectors ``vty`` (pointer, alignment, mask, pass-through)."""
    mty = ir.VectorType(ir.IntType(1), vty.count)
    fnty = ir.FunctionType(vty, [vty.as_pointer(), _I32, mty, vty])
    return cgutils.get_or_insert_function(builder.module, fnty,
                                          f"llvm.masked.load.{_suffix(vty)}.p0")


def relu_vec(builder, v):
    """ReLU as PyTorch computes it, ``v < 0 ? +0.0 : v``: NaN stays NaN, -0.0 stays -0.0 (its
    sign kept, as ``torch.relu`` keeps it). One compare and one blend: ``llvm.maximum``, which
    the output stages used before, lowers to six instructions on x86 (the operands' signs, two
    blends, max, an unordered compare, a masked move), and on Intel cores they share the two
    multiply-add ports (a ReLU6 stage, twelve of them per vector, took as long as a 1x1
    layer's reduction over 24 channels)."""
    zero = ir.Constant(v.type, None)
    return builder.select(builder.fcmp_ordered("<", v, zero), zero, v)


def clamp_vec(builder, v, lo, hi):
    """Clamp as PyTorch computes it (``hardtanh``, ``relu6``, ``clamp``) for vector bounds
    ``lo``, ``hi`` (splats): ``t = v < lo ? lo : v``, then ``t > hi ? hi : t``. NaN fails both
    compares and stays; a value equal to a bound is kept (so a zero keeps its sign, -0.0
    against bounds of +0.0 too). Four instructions."""
    t = builder.select(builder.fcmp_ordered("<", v, lo), lo, v)
    return builder.select(builder.fcmp_ordered(">", t, hi), hi, t)


def splat(builder, s, ty):
    """Scalar ``s`` in every lane of vector type ``ty``."""
    undef = ir.Constant(ty, ir.Undefined)
    return builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(_I32, 0)), undef,
                                  ir.Constant(ir.VectorType(_I32, ty.count), [0] * ty.count))


def lanes_below(builder, n, count):
    """The mask of the lanes ``l < n`` of a ``count``-lane vector (``n`` an i64)."""
    lanes = ir.Constant(ir.VectorType(_I64, count), list(range(count)))
    return builder.icmp_signed("<", lanes, splat(builder, n, ir.VectorType(_I64, count)))


def _store_pixel_major(builder, accs, vty, size, op, obase, kn, v0, n, ostride, vstride=None):
    """Store each real pixel's KB channels (``kn`` of them real) as NV vectors: vector i of
    pixel ``v`` at ``op[obase + v*ostride + i*vstride]`` (``vstride`` default: the vector
    length, the channels contiguous), masked where fewer than a vector's lanes are real. The
    channel-blocked store without an output stage (NCHW16c: vector i of the k-block at ``16 i
    OHOW`` from its first plane, pixel ``v`` at ``16 v``) is ``ostride`` 16, ``vstride`` 16
    OHOW; with one, `_store_blocked`."""
    VL = vty.count
    vstride = _i64(VL) if vstride is None else vstride
    mstore, _ = _masked_store(builder, vty, size)
    masks = _lane_masks(builder, vty, kn)
    for j in range(len(accs)):
        with builder.if_then(builder.icmp_unsigned("<", _i64(j), n)):
            v = builder.add(v0, _i64(j))
            base = builder.gep(op, [builder.add(obase, builder.mul(v, ostride))])
            for i in range(len(accs[j])):
                val = builder.load(accs[j][i])
                ptr = builder.bitcast(builder.gep(base, [builder.mul(_i64(i), vstride)]),
                                      vty.as_pointer())
                builder.call(mstore, [val, ptr, ir.Constant(_I32, size), masks[i]])


def _store_blocked(builder, accs, vty, size, op, obase, kn, v0, n, vstride, epi):
    """Store a float32 tile channel-blocked (NCHW16c: vector i of pixel ``v`` at ``op[obase +
    16 v + i vstride]``, masked where fewer than 16 lanes are real channels) after the whole
    output stage, ``act(y + b + r)`` in that order, the residual ``r`` read at the same
    offset from ``er[erd ...]`` (a blocked residual). The bias vectors are loaded once per
    tile (-0.0 where there is none: ``y + -0.0`` is ``y``, bit for bit) and the stage's
    branches taken once per tile, not per vector."""
    VL = vty.count
    mstore, _ = _masked_store(builder, vty, size)
    masks = _lane_masks(builder, vty, kn)
    nv = len(accs[0])
    bias = [cgutils.alloca_once_value(builder, ir.Constant(vty, [-0.0] * VL)) for _ in range(nv)]
    with builder.if_then(builder.icmp_unsigned("!=", builder.and_(epi.mode, _i64(2)), _i64(0))):
        for i in range(nv):
            ptr = builder.bitcast(builder.gep(epi.eb, [builder.add(epi.eko, _i64(i * VL))]),
                                  vty.as_pointer())
            builder.store(builder.call(epi.mload, [ptr, ir.Constant(_I32, 4), masks[i],
                                                   ir.Constant(vty, None)]), bias[i])
    bvec = [builder.load(b) for b in bias]
    zero = ir.Constant(vty, None)
    has_res = builder.icmp_unsigned("!=", builder.and_(epi.mode, _i64(4)), _i64(0))

    def store(res, code):
        lo, hi = splat(builder, epi.lo, vty), splat(builder, epi.hi, vty)
        for j in range(len(accs)):
            with builder.if_then(builder.icmp_unsigned("<", _i64(j), n)):
                base = builder.add(obase, builder.mul(builder.add(v0, _i64(j)), _i64(VL)))
                for i in range(nv):
                    idx = builder.add(base, builder.mul(_i64(i), vstride))
                    val = builder.fadd(builder.load(accs[j][i]), bvec[i])
                    if res:
                        rp = builder.bitcast(builder.gep(epi.er, [builder.add(epi.erd, idx)]),
                                             vty.as_pointer())
                        val = builder.fadd(val, builder.call(epi.mload, [
                            rp, ir.Constant(_I32, 4), masks[i], zero]))
                    if code == 1:
                        val = relu_vec(builder, val)
                    elif code == 2:
                        val = clamp_vec(builder, val, lo, hi)
                    ptr = builder.bitcast(builder.gep(op, [idx]), vty.as_pointer())
                    builder.call(mstore, [val, ptr, ir.Constant(_I32, size), masks[i]])

    with builder.if_else(has_res) as (with_res, without):
        for res, blk in ((True, with_res), (False, without)):
            with blk:
                is1 = builder.icmp_unsigned("==", epi.code, _i64(1))
                is2 = builder.icmp_unsigned("==", epi.code, _i64(2))
                with builder.if_else(is1) as (relu, other):
                    with relu:
                        store(res, 1)
                    with other:
                        with builder.if_else(is2) as (clamp, none):
                            with clamp:
                                store(res, 2)
                            with none:
                                store(res, 0)


def _transpose16(builder, rows):
    """16x16 transpose of 16-lane vectors by four exchanges of one index bit each."""
    rows = list(rows)
    for b in (1, 2, 4, 8):
        lo = ir.Constant(ir.VectorType(_I32, 16), [i if not i & b else 16 + i - b for i in range(16)])
        hi = ir.Constant(ir.VectorType(_I32, 16), [i + b if not i & b else 16 + i for i in range(16)])
        for r in range(16):
            if r & b:
                continue
            a, c = rows[r], rows[r + b]
            rows[r], rows[r + b] = builder.shuffle_vector(a, c, lo), builder.shuffle_vector(a, c, hi)
    return rows


def _tile_columns(builder, accs, vty):
    """The float32 tile transposed in registers: per vector of channels, 16 vectors whose lane
    j is pixel j (zero past the tile's pixels)."""
    zero = ir.Constant(vty, None)
    mr = len(accs)
    return [_transpose16(builder, [builder.load(accs[j][v]) if j < mr else zero
                                   for j in range(16)]) for v in range(len(accs[0]))]


def _store_channels(builder, cols, vty, op, start, stride, kn, m, epi):
    """Each real output channel ``kk < kn``: its pixel vector (after the output stage, if any)
    stored under mask ``m`` at ``op[start + kk stride]``."""
    mstore, _ = _masked_store(builder, vty, 4)
    base = builder.gep(op, [start])
    for v in range(len(cols)):
        for lane in range(16):
            kk = v * 16 + lane
            with builder.if_then(builder.icmp_unsigned("<", _i64(kk), kn)):
                off = builder.mul(_i64(kk), stride)
                ptr = builder.bitcast(builder.gep(base, [off]), vty.as_pointer())
                val = cols[v][lane]
                if epi is not None:
                    val = epi.apply(builder, val, kk, builder.add(start, off), m)
                builder.call(mstore, [val, ptr, ir.Constant(_I32, 4), m])


def _store_transposed(builder, accs, vty, op, obase, OHOW, kn, v0, n, epi=None):
    """Transpose the tile in registers (lane j = pixel v0 + j) and store each output channel's
    run of ``n`` pixels with one masked vector store."""
    _, mty = _masked_store(builder, vty, 4)
    cols = _tile_columns(builder, accs, vty)
    bits = builder.sub(builder.shl(_i64(1), n), _i64(1))
    m = builder.bitcast(builder.trunc(bits, ir.IntType(16)), mty)
    _store_channels(builder, cols, vty, op, builder.add(obase, v0), OHOW, kn, m, epi)


def _store_virtual_blocked(builder, accs, vty, size, op, obase, OWv, kn, v0, n, OWr, OHOWr, epi):
    """Store a tile of virtual pixels ``v0 .. v0 + n - 1`` (rows of ``OWv``, the first ``OWr``
    of each real) channel-blocked: real pixel (oh, ow)'s vector i at ``op[obase + 16 (oh OWr
    + ow) + i 16 OHOWr]`` (`_store_pixel_major`'s layout over the real pixels), after the
    output stage's bias and ReLU / clamp on lane vectors."""
    VL = vty.count
    mstore, _ = _masked_store(builder, vty, size)
    masks = _lane_masks(builder, vty, kn)
    oh, ow = _divmod(builder, v0, OWv)
    for j in range(len(accs)):
        if j:  # the next virtual pixel: one column on, or the next row's first
            nxt = builder.add(ow, _i64(1))
            wrap = builder.icmp_unsigned(">=", nxt, OWv)
            oh = builder.select(wrap, builder.add(oh, _i64(1)), oh)
            ow = builder.select(wrap, _i64(0), nxt)
        real = builder.and_(builder.icmp_unsigned("<", _i64(j), n),
                            builder.icmp_unsigned("<", ow, OWr))
        with builder.if_then(real):
            p = builder.add(builder.mul(oh, OWr), ow)
            base = builder.gep(op, [builder.add(obase, builder.mul(p, _i64(VL)))])
            for i in range(len(accs[j])):
                val = builder.load(accs[j][i])
                if epi is not None:
                    val = epi.apply_lanes(builder, val, i * VL, masks[i])
                ptr = builder.bitcast(builder.gep(base, [builder.mul(_i64(i * VL), OHOWr)]),
                                      vty.as_pointer())
                builder.call(mstore, [val, ptr, ir.Constant(_I32, size), masks[i]])


def _store_virtual(context, builder, accs, vty, flt, op, obase, OWv, kn, v0, n, OWr, OHOWr,
                   epi=None):
    """Store a tile of virtual pixels ``v0 .. v0 + n - 1`` (rows of ``OWv``, the first ``OWr``
    of each real): the tile is cut into its runs of real pixels within one row, and each
    output channel's run stored with one masked vector store whose pointer is set back by the
    run's first lane (float32; float64 and other widths lane by lane)."""
    VL = vty.count
    mr = len(accs)
    if VL == 16 and mr <= 16:
        _, mty = _masked_store(builder, vty, 4)
        cols = _tile_columns(builder, accs, vty)
    else:
        size = context.get_abi_sizeof(flt)
        tmp = builder.bitcast(cgutils.alloca_once(builder, ir.ArrayType(flt, VL * NV * mr)),
                              flt.as_pointer())
        for j in range(mr):
            for v in range(len(accs[j])):
                dst = builder.bitcast(builder.gep(tmp, [_i64((j * NV + v) * VL)]),
                                      vty.as_pointer())
                builder.store(builder.load(accs[j][v]), dst, align=size)
    # runs: j from 0 to n; at each, the virtual pixel's row and column
    jv = cgutils.alloca_once_value(builder, _i64(0))
    bbcond = builder.append_basic_block("virt.cond")
    bbbody = builder.append_basic_block("virt.body")
    bbend = builder.append_basic_block("virt.end")
    builder.branch(bbcond)
    builder.position_at_end(bbcond)
    j = builder.load(jv)
    builder.cbranch(builder.icmp_signed("<", j, n), bbbody, bbend)
    builder.position_at_end(bbbody)
    oh, ow = _divmod(builder, builder.add(v0, j), OWv)
    real = builder.icmp_signed("<", ow, OWr)
    # a run of real pixels: min(OWr - ow, n - j) of them; a run of padding columns: skipped
    left = builder.sub(n, j)
    run_real = builder.sub(OWr, ow)
    run_real = builder.select(builder.icmp_signed("<", run_real, left), run_real, left)
    run_pad = builder.sub(OWv, ow)
    run = builder.select(real, run_real, run_pad)
    with builder.if_then(real):
        dst = builder.add(obase, builder.add(builder.mul(oh, OWr), ow))
        if VL == 16 and mr <= 16:
            bits = builder.shl(builder.sub(builder.shl(_i64(1), run), _i64(1)), j)
            m = builder.bitcast(builder.trunc(bits, ir.IntType(16)), mty)
            _store_channels(builder, cols, vty, op, builder.sub(dst, j), OHOWr, kn, m, epi)
        else:
            with cgutils.for_range(builder, run) as lp:
                src = builder.mul(builder.add(j, lp.index), _i64(NV * VL))
                ob = builder.gep(op, [builder.add(dst, lp.index)])
                with cgutils.for_range(builder, kn) as ll:
                    val = builder.load(builder.gep(tmp, [builder.add(src, ll.index)]))
                    builder.store(val, builder.gep(ob, [builder.mul(ll.index, OHOWr)]))
    builder.store(builder.add(j, run), jv)
    builder.branch(bbcond)
    builder.position_at_end(bbend)


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


#: kernel heights up to which `_window_row` builds window rows with vector shuffles
WINDOW_FH_MAX = 11


@intrinsic
def _window_row(typingctx, dst, doff, src, soff, rstep, f0, f1, FH, Vw, wlo, whi):
    """One row of the im2win window, 16 columns at a time: ``dst[doff + w*FH + fh] =
    src[soff + fh*rstep + w]`` where ``f0 <= fh < f1`` and ``wlo <= w < whi``, else 0, for
    ``w < Vw``, ``fh < FH <= WINDOW_FH_MAX``. Each block loads the FH input rows' 16 columns
    (masked: padding rows and columns read nothing), interleaves them with shuffles and
    stores FH vectors. The scalar strided stores it replaced ran at about 0.7 elements a
    cycle (3x3 64@56, batch 8, one thread: 2.3 ms of a 19 ms layer)."""
    ints = (doff, soff, rstep, f0, f1, FH, Vw, wlo, whi)
    if not all(isinstance(t, types.Integer) for t in ints):
        return None
    sig = types.void(dst, doff, src, soff, rstep, f0, f1, FH, Vw, wlo, whi)
    L = 16

    def codegen(context, builder, sig, args):
        flt = context.get_value_type(sig.args[0].dtype)
        size = context.get_abi_sizeof(flt)
        vty = ir.VectorType(flt, L)
        mload = masked_load(builder, vty)
        mstore, _ = _masked_store(builder, vty, size)
        d = context.make_array(sig.args[0])(context, builder, args[0]).data
        sp = context.make_array(sig.args[2])(context, builder, args[2]).data
        doff, soff, rstep, f0, f1, FH, Vw, wlo, whi = (
            context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 3, 4, 5, 6, 7, 8, 9, 10))
        zero = ir.Constant(vty, None)
        align = ir.Constant(_I32, size)
        lanes = ir.Constant(ir.VectorType(_I64, L), list(range(L)))
        nblk = builder.sdiv(builder.add(Vw, _i64(L - 1)), _i64(L))
        bbend = builder.append_basic_block("win.end")
        switch = builder.switch(FH, bbend)
        for F in range(1, WINDOW_FH_MAX + 1):
            bb = builder.append_basic_block(f"win.fh{F}")
            switch.add_case(ir.Constant(_I64, F), bb)
            builder.position_at_end(bb)
            with cgutils.for_range(builder, nblk) as lp:
                w0 = builder.mul(lp.index, _i64(L))
                w = builder.add(splat(builder, w0, lanes.type), lanes)
                cols = builder.and_(builder.icmp_signed(">=", w, splat(builder, wlo, lanes.type)),
                                    builder.icmp_signed("<", w, splat(builder, whi, lanes.type)))
                rows = []
                for fh in range(F):
                    ok = builder.and_(builder.icmp_signed("<=", f0, _i64(fh)),
                                      builder.icmp_signed(">", f1, _i64(fh)))
                    mask = builder.and_(cols, splat(builder, ok, cols.type))
                    off = builder.add(builder.add(soff, builder.mul(rstep, _i64(fh))), w0)
                    ptr = builder.bitcast(builder.gep(sp, [off]), vty.as_pointer())
                    rows.append(builder.call(mload, [ptr, align, mask, zero]))
                # elements left in this row from the block's start
                left = builder.mul(builder.sub(Vw, w0), _i64(F))
                for j in range(F):
                    out = None
                    for r in range(F):
                        idx = [i for i in range(L) if (L * j + i) % F == r]
                        if not idx:
                            continue
                        if out is None:
                            mask = [(L * j + i) // F if i in idx else 0 for i in range(L)]
                            out = builder.shuffle_vector(rows[r], rows[r], ir.Constant(
                                ir.VectorType(_I32, L), mask))
                        else:
                            mask = [L + (L * j + i) // F if i in idx else i for i in range(L)]
                            out = builder.shuffle_vector(out, rows[r], ir.Constant(
                                ir.VectorType(_I32, L), mask))
                    # lane i of output vector j is column (L j + i) // F - block-relative
                    smask = lanes_below(builder, builder.sub(left, _i64(L * j)), L)
                    ptr = builder.bitcast(builder.gep(d, [builder.add(doff, builder.add(
                        builder.mul(w0, _i64(F)), _i64(L * j)))]), vty.as_pointer())
                    builder.call(mstore, [out, ptr, align, smask])
            builder.branch(bbend)
        builder.position_at_end(bbend)
        return context.get_dummy_value()

    return sig, codegen


_microkernel = _make_microkernel(MR)
_microkernel_straight = _make_microkernel(MR, straight=True)
# tiles of MR_WIDE pixels for the short-run layers (`run_tile_tasks`)
_microkernel_w = _make_microkernel(MR_WIDE)
_microkernel_straight_w = _make_microkernel(MR_WIDE, straight=True)
_microkernel_straight_nv1_w = _make_microkernel(MR_WIDE, straight=True, nv=1)
_microkernel_straight_br_w = _make_microkernel(MR_WIDE, straight=True, stage=(2, 1))
# one output row of 7 pixels (`MR_ROW`: 7x7 planes, whose 14-pixel tiles all crossed a row end)
_microkernel_straight_row = _make_microkernel(MR_ROW, straight=True)
# the same for stride-1 layers (cs = 1 known when compiled: see `run_tile_tasks`)
_microkernel_straight_u = _make_microkernel(MR, straight=True, pixel_stride=1)
_microkernel_straight_br_u = _make_microkernel(MR, straight=True, stage=(2, 1), pixel_stride=1)
_microkernel_straight_w_u = _make_microkernel(MR_WIDE, straight=True, pixel_stride=1)
_microkernel_straight_br_w_u = _make_microkernel(MR_WIDE, straight=True, stage=(2, 1),
                                                 pixel_stride=1)
_microkernel_straight_row_u = _make_microkernel(MR_ROW, straight=True, pixel_stride=1)
_microkernel_table_u = _make_microkernel(MR, straight=True, table=True, pixel_stride=1)
# 1x1 layers on channel-blocked input: pixels 16 elements apart
_microkernel_straight_c16 = _make_microkernel(MR, straight=True, pixel_stride=16)
_microkernel_straight_br_c16 = _make_microkernel(MR, straight=True, stage=(2, 1),
                                                 pixel_stride=16)


def _straight_pair(plain, br):
    """A tile call that runs ``br`` (compiled for bias + ReLU) for that output stage and
    ``plain`` for any other: the dispatch `run_tile_tasks` makes for each straight variant."""

    @njit(inline="always")
    def call(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep, cs, on, ob, OHOW, OW,
             rowlen, kn, v0, ebias, k0, eres, erd, fm, fc, elo, ehi):  # pragma: no cover
        if (fm & 7) == 2 and fc == 1:
            br(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep, cs, on, ob, OHOW, OW,
               rowlen, kn, v0, ebias, k0, eres, erd, fm, fc, elo, ehi)
        else:
            plain(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep, cs, on, ob, OHOW,
                  OW, rowlen, kn, v0, ebias, k0, eres, erd, fm, fc, elo, ehi)

    return call


_straight_w_u = _straight_pair(_microkernel_straight_w_u, _microkernel_straight_br_w_u)
_straight_c16 = _straight_pair(_microkernel_straight_c16, _microkernel_straight_br_c16)
_straight_u = _straight_pair(_microkernel_straight_u, _microkernel_straight_br_u)
_microkernel_tail = _make_microkernel(MR_TAIL)
_microkernel_pm = _make_microkernel(MR, pixel_major=True, straight=True)
_microkernel_pm_tail = _make_microkernel(MR_TAIL, pixel_major=True)
_microkernel_table = _make_microkernel(MR, straight=True, table=True)
_microkernel_table_tail = _make_microkernel(MR_TAIL, table=True)
_microkernel_blocked = _make_microkernel(MR, straight=True, blocked=True)
# ... with the pixel stride compiled in: NCHW planes (1) or channel-blocked input (16)
_microkernel_blocked_u = _make_microkernel(MR, straight=True, blocked=True, pixel_stride=1)
_microkernel_blocked_c16 = _make_microkernel(MR, straight=True, blocked=True, pixel_stride=16)
# ... a last k-block of one vector of real channels (K = 80, 112: a second vector had run empty)
_microkernel_blocked_nv1_u = _make_microkernel(MR, straight=True, blocked=True, nv=1,
                                               pixel_stride=1)
_microkernel_blocked_nv1_c16 = _make_microkernel(MR, straight=True, blocked=True, nv=1,
                                                 pixel_stride=16)
_microkernel_blocked_tail = _make_microkernel(MR_TAIL, blocked=True)
_microkernel_table_blocked = _make_microkernel(MR, straight=True, table=True, blocked=True)
_microkernel_table_blocked_tail = _make_microkernel(MR_TAIL, table=True, blocked=True)
# k x k layers on a channel-blocked zero-bordered copy (`run_tile_tasks`' ``oblk`` bit 2): tiles
# of 14 pixels (rows of 56, 28, 14), of one 7-pixel row, of 12 across row ends, and tails
_tapped_w = _make_microkernel(MR_WIDE, straight=True, tapped=True, blocked=True)
_tapped_row = _make_microkernel(MR_ROW, straight=True, tapped=True, blocked=True)
_tapped = _make_microkernel(MR, tapped=True, blocked=True)
_tapped_straight = _make_microkernel(MR, straight=True, tapped=True, blocked=True)
# ... stride 1, the pixel stride (16) a constant
_tapped_w_c16 = _make_microkernel(MR_WIDE, straight=True, tapped=True, blocked=True,
                                  pixel_stride=16)
_tapped_row_c16 = _make_microkernel(MR_ROW, straight=True, tapped=True, blocked=True,
                                    pixel_stride=16)
# ... stride 2 (32)
_tapped_w_c32 = _make_microkernel(MR_WIDE, straight=True, tapped=True, blocked=True,
                                  pixel_stride=32)
_tapped_row_c32 = _make_microkernel(MR_ROW, straight=True, tapped=True, blocked=True,
                                    pixel_stride=32)
# ... two rows of 7 (7x7 planes: 14 pixels, 28 accumulators, as the wide tiles)
_tapped_rows2_c16 = _make_microkernel(MR_WIDE, straight=True, tapped=True, blocked=True,
                                      pixel_stride=16, rows=2)
_tapped_rows2_c32 = _make_microkernel(MR_WIDE, straight=True, tapped=True, blocked=True,
                                      pixel_stride=32, rows=2)
_tapped_tail = _make_microkernel(MR_TAIL, tapped=True, blocked=True)
# a last k-block of at most 16 float32 channels (K = 80, 112 ...: half its lanes had run empty)
_microkernel_straight_nv1 = _make_microkernel(MR, straight=True, nv=1)
# straight tiles of bias + ReLU compiled for that output stage (ResNet-style 3x3 and 1x1 layers)
_microkernel_straight_br = _make_microkernel(MR, straight=True, stage=(2, 1))
_microkernel_tail_nv1 = _make_microkernel(MR_TAIL, nv=1)


@njit(inline="always")
def run_tile_tasks(wflat, wbase, src, srcbase, cstride, Cgk, FWe, FHe, istep, fwstep, cs, rowlen,
                   on, obase0, counter, ci, span, nchunk, nkbr, nkb, Cg, Kg, KB, taps, OHOW, OW,
                   epi, tab, tabo, oblk):  # pragma: no cover - compiled
    """One thread's share of a layer's tiles, for any input layout the microkernel can address: tasks
    ``t = (group nkbr + range of k-blocks) nchunk + range of tiles`` from ``span = (t0, t1)``
    are taken in order, task ``t0 + counter[ci]`` (fetch-and-add) until ``t1``; returns how
    many this thread ran. ``wbase``: the packed filter's first
    element in ``wflat``; ``srcbase``: the image's first element in ``src``; ``cstride``:
    elements between its channels; ``Cgk``, ``FWe``, ``FHe``, ``istep``, ``fwstep``: the
    reduction's runs (see the microkernel); ``rowlen``, ``cs``: elements between the windows of
    two output rows, of two neighbouring outputs; ``taps``: filter elements per channel in the
    packed filter; ``on``, ``obase0``: the flat output and the image's first element in it;
    ``tab``, ``tabo``: a tap table (``tabo`` >= 0) or none (-1); ``oblk`` bit 1: the output is
    stored channel-blocked; bit 2 with a tap table: a k x k layer on a channel-blocked copy
    (tiles of real pixels, the ``tapped`` kernels; the output blocked too).
    Tiles within one output row run on the straight kernel, tiles across a row end on the
    general one (unless rows are dense, ``rowlen == OW cs``: then every full tile is straight).

    Output stage ``epi = (ebias, eres, eoff, emode, ecode, elo, ehi)``
    (`convolab.kernels._epilogue`; ``emode`` and ``ecode`` 0: none): float32 tiles apply bias,
    residual and ReLU / clamp as they are stored (the microkernel's output-stage arguments);
    otherwise, once a task's tiles are stored, each of its channels' pixel run becomes
    ``act(y + ebias[k] + eres[eoff + k OHOW + v])`` while still in cache. (Calls of more than
    30 arguments compile to ``f(*args)``, which Numba cannot inline: hence the tuple.)"""
    ebias, eres, eoff, emode, ecode, elo, ehi = epi
    # Tiles of real pixels: within an output row on the straight kernel, across a row end on
    # the general one. OWv = rowlen / cs (pixels per row of the grid the input is read on)
    # == OW: rows are dense, every full tile straight. Computing the padding columns instead
    # ("virtual rows", dropped when stored) cost more once the general kernel ran at the
    # straight kernel's speed: it did in small compiled functions (direct's and im2win's
    # kernels; the executor calls this from one out of line), at a third of it when inlined
    # into the executor's large worker (executor, one thread, Zen 4, 3x3 stride 1 layers of
    # ResNet-50: 512@7 2.9 -> 2.2 ms, 256@14 2.5 -> 2.0, 128@28 2.4 -> 2.1, 64@56 2.2 -> 2.1).
    OWv = rowlen // cs if cs > 0 and rowlen % cs == 0 else 0
    dense = OWv == OW
    # a tap table (tabo >= 0; -1: none): the run's elements at tab[tabo + i] (stride-phase
    # planes, rowlen >= OW, cs = 1), tiles over virtual rows of the phase width, on the table
    # kernels (`_store_virtual` drops the wrapped columns)
    tapped = tabo >= 0 and oblk & 2 != 0
    table = tabo >= 0 and not tapped
    # oblk != 0: the output is stored channel-blocked (NCHW16c, `_store_pixel_major`; dense rows
    # or a tap table, K a multiple of 16 and a fused output stage only, which the caller
    # guarantees)
    blocked = oblk & 1 != 0
    VHW = (OHOW // OW - 1) * OWv + OW if table else OHOW
    # bias, residual and ReLU / clamp applied by float32 tiles as they are stored; other
    # stages (a scale, SiLU...) or float64 by a pass over each task's outputs after
    fused = ecode <= 2 and emode & 1 == 0 and wflat.itemsize == 4
    fm = emode if fused else 0
    fc = ecode if fused else 0
    erd = eoff - obase0
    # dense layers read as plain planes with short runs (a row of taps: 3x3, 5x5 stride 1) on
    # tiles of MR_WIDE pixels, the others (1x1 runs over the channels, tap tables, blocked
    # output) of MR (see `convolab.kernels.microkernel.MR_WIDE`)
    wide = not table and not blocked and FHe < INPUT_PREFETCH_STEPS
    mr = MR_WIDE if wide else MR
    if wide and OW == MR_ROW:
        mr = MR_ROW  # a tile per output row, on the straight kernel
    if tapped:  # whole rows of 14 pixels, or two of 7, where they divide a row
        mr = MR_WIDE if OW % MR_WIDE == 0 else MR_ROW if OW == MR_ROW else MR
        if OW == MR_ROW and (cs == 16 or cs == 32):
            mr = MR_WIDE
    nq = (VHW + mr - 1) // mr
    nfull = VHW // mr
    done = 0
    while True:
        t = span[0] + fetch_add(counter, ci)
        if t >= span[1]:
            break
        ch = t % nchunk
        r = t // nchunk
        kr = r % nkbr
        g = r // nkbr
        xg = srcbase + g * Cg * cstride
        q0 = ch * nq // nchunk
        q1 = (ch + 1) * nq // nchunk
        for kb in range(kr * nkb // nkbr, (kr + 1) * nkb // nkbr):
            k0 = g * Kg + kb * KB
            kn = min(KB, (g + 1) * Kg - k0)
            woff = wbase + (g * nkb + kb) * Cg * taps * KB
            ob = obase0 + k0 * OHOW
            # a last k-block of one vector of real channels: tiles of that vector only
            half = kn * wflat.itemsize <= 64
            for qt in range(q0, q1):
                v0 = qt * mr
                if tapped and OW == MR_ROW and mr == MR_WIDE:  # two rows; an odd last one
                    if qt >= nfull and cs == 16:
                        _tapped_row_c16(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep,
                                        fwstep, cs, on, ob, OHOW, OW, rowlen, kn, v0, OW, OHOW,
                                        tab, tabo, ebias, k0, eres, erd, fm, fc, elo, ehi)
                    elif qt >= nfull:
                        _tapped_row_c32(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep,
                                        fwstep, cs, on, ob, OHOW, OW, rowlen, kn, v0, OW, OHOW,
                                        tab, tabo, ebias, k0, eres, erd, fm, fc, elo, ehi)
                    elif cs == 16:
                        _tapped_rows2_c16(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep,
                                          fwstep, cs, on, ob, OHOW, OW, rowlen, kn, v0, OW, OHOW,
                                          tab, tabo, ebias, k0, eres, erd, fm, fc, elo, ehi)
                    else:
                        _tapped_rows2_c32(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep,
                                          fwstep, cs, on, ob, OHOW, OW, rowlen, kn, v0, OW, OHOW,
                                          tab, tabo, ebias, k0, eres, erd, fm, fc, elo, ehi)
                elif tapped:
                    if qt >= nfull:
                        for v in range(v0, OHOW, MR_TAIL):
                            _tapped_tail(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep,
                                         fwstep, cs, on, ob, OHOW, OW, rowlen, kn, v, OW, OHOW,
                                         tab, tabo, ebias, k0, eres, erd, fm, fc, elo, ehi)
                    elif mr == MR_WIDE and cs == 16:
                        _tapped_w_c16(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep,
                                      cs, on, ob, OHOW, OW, rowlen, kn, v0, OW, OHOW, tab, tabo,
                                      ebias, k0, eres, erd, fm, fc, elo, ehi)
                    elif mr == MR_WIDE and cs == 32:
                        _tapped_w_c32(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep,
                                      cs, on, ob, OHOW, OW, rowlen, kn, v0, OW, OHOW, tab, tabo,
                                      ebias, k0, eres, erd, fm, fc, elo, ehi)
                    elif mr == MR_WIDE:
                        _tapped_w(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep, cs,
                                  on, ob, OHOW, OW, rowlen, kn, v0, OW, OHOW, tab, tabo, ebias,
                                  k0, eres, erd, fm, fc, elo, ehi)
                    elif mr == MR_ROW:  # strides other than 1 and 2 (7x7: two rows above)
                        _tapped_row(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep,
                                    cs, on, ob, OHOW, OW, rowlen, kn, v0, OW, OHOW, tab, tabo,
                                    ebias, k0, eres, erd, fm, fc, elo, ehi)
                    elif v0 % OW + MR <= OW:
                        _tapped_straight(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep,
                                         fwstep, cs, on, ob, OHOW, OW, rowlen, kn, v0, OW, OHOW,
                                         tab, tabo, ebias, k0, eres, erd, fm, fc, elo, ehi)
                    else:
                        _tapped(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep, cs,
                                on, ob, OHOW, OW, rowlen, kn, v0, OW, OHOW, tab, tabo, ebias, k0,
                                eres, erd, fm, fc, elo, ehi)
                elif table and blocked:
                    if qt >= nfull:
                        for v in range(v0, VHW, MR_TAIL):
                            _microkernel_table_blocked_tail(
                                wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep, cs,
                                on, ob, VHW, OWv, rowlen, kn, v, OW, OHOW, tab, tabo, ebias, k0,
                                eres, erd, fm, fc, elo, ehi)
                    else:
                        _microkernel_table_blocked(
                            wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep, cs, on,
                            ob, VHW, OWv, rowlen, kn, v0, OW, OHOW, tab, tabo, ebias, k0, eres,
                            erd, fm, fc, elo, ehi)
                elif table:
                    if qt >= nfull:
                        for v in range(v0, VHW, MR_TAIL):
                            _microkernel_table_tail(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                                    istep, fwstep, cs, on, ob, VHW, OWv, rowlen,
                                                    kn, v, OW, OHOW, tab, tabo, ebias, k0, eres,
                                                    erd, fm, fc, elo, ehi)
                    elif cs == 1:
                        _microkernel_table_u(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep,
                                             fwstep, cs, on, ob, VHW, OWv, rowlen, kn, v0, OW,
                                             OHOW, tab, tabo, ebias, k0, eres, erd, fm, fc, elo,
                                             ehi)
                    else:
                        _microkernel_table(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep,
                                           fwstep, cs, on, ob, VHW, OWv, rowlen, kn, v0, OW, OHOW,
                                           tab, tabo, ebias, k0, eres, erd, fm, fc, elo, ehi)
                elif blocked:
                    if qt >= nfull:
                        for v in range(v0, OHOW, MR_TAIL):
                            _microkernel_blocked_tail(wflat, woff, src, xg, cstride, Cgk, FWe,
                                                      FHe, istep, fwstep, cs, on, ob, OHOW, OW,
                                                      rowlen, kn, v, ebias, k0, eres, erd, fm,
                                                      fc, elo, ehi)
                    elif half and cs == 16:
                        _microkernel_blocked_nv1_c16(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                                     istep, fwstep, cs, on, ob, OHOW, OW, rowlen,
                                                     kn, v0, ebias, k0, eres, erd, fm, fc, elo,
                                                     ehi)
                    elif half and cs == 1:
                        _microkernel_blocked_nv1_u(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                                   istep, fwstep, cs, on, ob, OHOW, OW, rowlen, kn,
                                                   v0, ebias, k0, eres, erd, fm, fc, elo, ehi)
                    elif cs == 16:
                        _microkernel_blocked_c16(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                                 istep, fwstep, cs, on, ob, OHOW, OW, rowlen, kn,
                                                 v0, ebias, k0, eres, erd, fm, fc, elo, ehi)
                    elif cs == 1:
                        _microkernel_blocked_u(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                               istep, fwstep, cs, on, ob, OHOW, OW, rowlen, kn,
                                               v0, ebias, k0, eres, erd, fm, fc, elo, ehi)
                    else:
                        _microkernel_blocked(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep,
                                             fwstep, cs, on, ob, OHOW, OW, rowlen, kn, v0,
                                             ebias, k0, eres, erd, fm, fc, elo, ehi)
                elif qt >= nfull:  # the last, partial tile: narrow tiles
                    for v in range(v0, OHOW, MR_TAIL):
                        if half:
                            _microkernel_tail_nv1(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                                  istep, fwstep, cs, on, ob, OHOW, OW, rowlen,
                                                  kn, v, ebias, k0, eres, erd, fm, fc, elo, ehi)
                        else:
                            _microkernel_tail(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                              istep, fwstep, cs, on, ob, OHOW, OW, rowlen, kn, v,
                                              ebias, k0, eres, erd, fm, fc, elo, ehi)
                elif mr == MR_ROW and cs == 1:
                    _microkernel_straight_row_u(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                                istep, fwstep, cs, on, ob, OHOW, OW, rowlen, kn,
                                                v0, ebias, k0, eres, erd, fm, fc, elo, ehi)
                elif mr == MR_ROW:
                    _microkernel_straight_row(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                              istep, fwstep, cs, on, ob, OHOW, OW, rowlen, kn,
                                              v0, ebias, k0, eres, erd, fm, fc, elo, ehi)
                elif wide and cs == 1 and not half and (dense or v0 % OW + mr <= OW):
                    # stride 1: the pixels' offsets are constants (the runtime-cs kernel kept cs
                    # in a register that LLVM spilled inside this large function's loop)
                    _straight_w_u(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep,
                                  cs, on, ob, OHOW, OW, rowlen, kn, v0, ebias, k0, eres, erd, fm,
                                  fc, elo, ehi)
                elif wide and (dense or v0 % OW + mr <= OW):
                    if half:
                        _microkernel_straight_nv1_w(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                                    istep, fwstep, cs, on, ob, OHOW, OW, rowlen,
                                                    kn, v0, ebias, k0, eres, erd, fm, fc, elo,
                                                    ehi)
                    elif (fm & 7) == 2 and fc == 1:
                        _microkernel_straight_br_w(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                                   istep, fwstep, cs, on, ob, OHOW, OW, rowlen,
                                                   kn, v0, ebias, k0, eres, erd, fm, fc, elo,
                                                   ehi)
                    else:
                        _microkernel_straight_w(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                                istep, fwstep, cs, on, ob, OHOW, OW, rowlen, kn,
                                                v0, ebias, k0, eres, erd, fm, fc, elo, ehi)
                elif wide:
                    _microkernel_w(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep,
                                   cs, on, ob, OHOW, OW, rowlen, kn, v0, ebias, k0, eres, erd, fm,
                                   fc, elo, ehi)
                elif cs == 16 and not half and (dense or v0 % OW + MR <= OW):
                    _straight_c16(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep,
                                  cs, on, ob, OHOW, OW, rowlen, kn, v0, ebias, k0, eres, erd, fm,
                                  fc, elo, ehi)
                elif cs == 1 and not half and (dense or v0 % OW + MR <= OW):
                    _straight_u(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep, cs,
                                on, ob, OHOW, OW, rowlen, kn, v0, ebias, k0, eres, erd, fm, fc,
                                elo, ehi)
                elif dense or v0 % OW + MR <= OW:
                    if half:
                        _microkernel_straight_nv1(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                                  istep, fwstep, cs, on, ob, OHOW, OW, rowlen,
                                                  kn, v0, ebias, k0, eres, erd, fm, fc, elo, ehi)
                    elif (fm & 7) == 2 and fc == 1:
                        _microkernel_straight_br(wflat, woff, src, xg, cstride, Cgk, FWe, FHe,
                                                 istep, fwstep, cs, on, ob, OHOW, OW, rowlen, kn,
                                                 v0, ebias, k0, eres, erd, fm, fc, elo, ehi)
                    else:
                        _microkernel_straight(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep,
                                              fwstep, cs, on, ob, OHOW, OW, rowlen, kn, v0,
                                              ebias, k0, eres, erd, fm, fc, elo, ehi)
                else:
                    _microkernel(wflat, woff, src, xg, cstride, Cgk, FWe, FHe, istep, fwstep, cs,
                                 on, ob, OHOW, OW, rowlen, kn, v0,
                             ebias, k0, eres, erd, fm, fc, elo, ehi)
            if (emode != 0 or ecode != 0) and not fused and not blocked:
                v0 = q0 * mr
                n = min(OHOW, q1 * mr) - v0
                if table:  # the real pixels before virtual pixels q0 mr and q1 mr
                    va = min(VHW, q0 * mr)
                    vb = min(VHW, q1 * mr)
                    v0 = (va // OWv) * OW + min(va % OWv, OW)
                    n = (vb // OWv) * OW + min(vb % OWv, OW) - v0
                for k in range(k0, k0 + kn):
                    o = obase0 + k * OHOW + v0
                    epilogue_run(on, o, eres, eoff + k * OHOW + v0, n, F1,
                                  ebias[k] if emode & 2 else F0, emode, ecode, elo, ehi)
        done += 1
    return done


@njit(nogil=True, cache=True)
def tile_tasks(wflat, wbase, src, srcbase, cstride, Cgk, FWe, FHe, istep, fwstep, cs, rowlen, on,
               obase0, counter, ci, span, nchunk, nkbr, nkb, Cg, Kg, KB, taps, OHOW, OW, epi,
               tab, tabo, oblk):  # pragma: no cover - compiled
    """`run_tile_tasks` in a function of its own, for drivers to call, not inline: inlined
    into a larger function (the runtime's executor, or direct's driver once it was no longer
    a parallel region's body), the microkernel's general kernel (tiles across row ends) ran
    at a third to a half of its speed (register allocation over the caller's whole body;
    executor, one thread, Zen 4: 3x3 512@7 2.9 -> 2.2 ms, strided 3x3 128@56 on phase planes
    2.7 -> 2.2; direct 3x3 512@7 5.9 -> 2.1 ms)."""
    return run_tile_tasks(wflat, wbase, src, srcbase, cstride, Cgk, FWe, FHe, istep, fwstep, cs,
                          rowlen, on, obase0, counter, ci, span, nchunk, nkbr, nkb, Cg, Kg, KB,
                          taps, OHOW, OW, epi, tab, tabo, oblk)


@njit(nogil=True)
def _window_rows(win, base0, xflat, xbase, t0, t1, C, H, W, OH, FH, Vw, sh, dh, pt, pl, wlo,
                 whi):  # pragma: no cover - compiled
    """Window rows ``t0 .. t1-1`` (row ``t = c OH + oh``) of one image, whose first element
    is ``xflat[xbase]``, into ``win[base0 + t Vw FH ...]``."""
    rowlen = Vw * FH
    for t in range(t0, t1):
        c = t // OH
        oh = t - c * OH
        base = base0 + t * rowlen
        ih0 = oh * sh - pt
        if FH <= WINDOW_FH_MAX:
            # kernel rows fh in [f0, f1) read input rows inside the image
            f0 = 0 if ih0 >= 0 else min(FH, (-ih0 + dh - 1) // dh)
            f1 = max(f0, min(FH, (H - ih0 + dh - 1) // dh))
            _window_row(win, base, xflat, xbase + c * H * W + ih0 * W - pl, dh * W, f0, f1, FH,
                        Vw, wlo, whi)
            continue
        for fh in range(FH):
            ih = oh * sh + fh * dh - pt
            if ih < 0 or ih >= H:
                for w in range(Vw):
                    win[base + w * FH + fh] = 0
            else:
                for w in range(wlo):
                    win[base + w * FH + fh] = 0
                _strided_copy(win, base + wlo * FH + fh, FH, xflat,
                              xbase + c * H * W + ih * W + wlo - pl, whi - wlo)
                for w in range(whi, Vw):
                    win[base + w * FH + fh] = 0


@njit(cache=True, nogil=True)
def im2win_conv(x, win, wpk, out, counter, groups, FW, FH, sh, sw, dh, dw, pt, pl, Vw, nkbr,
                nchunk):  # pragma: no cover - compiled
    """One thread's share of convolving ``x`` (N, C, H, W) into ``out`` (N, K, OH, OW), image
    by image; every thread of a team job calls it (`convolab.kernels.team`).

    Window tensor of one image, flat: ``win[(c*OH + oh)*Vw*FH + w*FH + fh] = x[c, oh*sh +
    fh*dh - pt, w - pl]`` (0 outside) for the ``Vw`` padded columns some output reads; the
    window of output (oh, ow) starts at ``oh*Vw*FH + ow*sw*FH``. ``win`` holds one or two
    such windows: with two, image n+1's window is built while the last tiles of image n
    still run. ``wpk`` is the packed filter ([g][kb][c][fw][fh][KB]), ``counter`` 4 N
    zeroed int64 counters: per image, transform tasks handed out and finished, tile tasks
    handed out and finished. A transform task is a run of window rows,
    a tile task (group, range of k-blocks, range of tiles); both are handed out by atomic
    counters, so a thread that the OS pauses holds up one task, not a fixed share of the
    work. A thread waits only for work that has been handed out (a window complete before
    its tiles, a window's tiles finished before the buffer is rebuilt), never for a thread to
    arrive: the job is correct whatever number of threads runs it, one included.
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
    wsize = C * cstride
    nbuf = win.size // wsize
    OHOW = OH * OW
    nkb = (Kg + KB - 1) // KB
    ntask = groups * nkbr * nchunk
    # dilation 1: the (fw, fh) reduction is one contiguous run of FW*FH elements; 1x1: the
    # channels are one run, cstride apart
    Cgk, FWe, FHe, istep = Cg, FW, FH, 1
    if FW * FH == 1:
        Cgk, FHe, istep = 1, Cg, cstride
    elif dw == 1:
        FWe, FHe = 1, FW * FH
    # window columns holding input data: pl <= w < pl + W
    wlo = min(pl, Vw)
    whi = max(wlo, min(pl + W, Vw))
    # window rows per transform task, about 32 KiB written: one row a task (a few hundred
    # stores) left the two threads of a batch-8 3x3 64@56 layer contending for the counter
    # (transform 2.0 ms on one thread, 2.0 on two; in tasks of rows 2.3 and 1.4)
    rows = max(1, 8192 // rowlen)
    nrt = (C * OH + rows - 1) // rows
    for n in range(N):
        b = (n % nbuf) * wsize
        if n >= nbuf:  # the buffer's previous image: all its tiles finished
            wait_until(counter, 4 * (n - nbuf) + 3, ntask)
        while True:
            i = fetch_add(counter, 4 * n)
            if i >= nrt:
                break
            _window_rows(win, b, xflat, n * C * H * W, i * rows, min((i + 1) * rows, C * OH),
                         C, H, W, OH, FH, Vw, sh, dh, pt, pl, wlo, whi)
            fetch_add(counter, 4 * n + 1)
        wait_until(counter, 4 * n + 1, nrt)
        on = out[n].reshape(K * OHOW)
        k = tile_tasks(wflat, 0, win, b, cstride, Cgk, FWe, FHe, istep, dw * FH, sw * FH,
                       rowlen, on, 0, counter, 4 * n + 2, (0, ntask), nchunk, nkbr, nkb, Cg, Kg,
                       KB, FW * FH, OHOW, OW, (on, on, 0, 0, 0, F0, F0), counter, -1, 0)
        if k > 0:
            fetch_add_n(counter, 4 * n + 3, k)
    # every image's tiles finished before any thread returns (`team.run(..., complete=True)`)
    for n in range(N):
        wait_until(counter, 4 * n + 3, ntask)


@njit(inline="always")
def direct_geometry(Cg, R, S, Hp, Wp, sh, sw, dh, dw):  # pragma: no cover - compiled
    """The microkernel's reduction runs for direct convolution on zero-padded planes Hp x Wp
    (order c, r, s): ``(Cgk, FWe, FHe, istep, fwstep, cs, rowlen)``. Runs of S taps ``dw``
    apart along a row, one per kernel row (``dh`` rows apart); for S = 1 one run of R down a
    column; for 1x1 one run over the channels. The window of output (oh, ow) starts at
    ``oh * sh * Wp + ow * sw``: ``rowlen = sh * Wp``, ``cs = sw``."""
    if R * S == 1:
        return 1, R, Cg, Hp * Wp, dh * Wp, sw, sh * Wp
    if S == 1:
        return Cg, 1, R, dh * Wp, dh * Wp, sw, sh * Wp
    return Cg, R, S, dw, dh * Wp, sw, sh * Wp


@njit(nogil=True)
def _padded_rows(xp, xflat, r0, r1, H, W, Hp, Wp, pt, pl):  # pragma: no cover - compiled
    """Rows ``r0 .. r1 - 1`` (row ``r = plane * Hp + hp`` of all the batch's planes) of the
    zero-padded copy ``xp`` (flat) of ``xflat``: zeros outside the input, a copy inside."""
    for r in range(r0, r1):
        q = r // Hp
        h = r - q * Hp - pt
        o = r * Wp
        if h < 0 or h >= H:
            xp[o: o + Wp] = 0
            continue
        xp[o: o + pl] = 0
        src = (q * H + h) * W
        xp[o + pl: o + pl + W] = xflat[src: src + W]
        xp[o + pl + W: o + Wp] = 0


@njit(cache=True, nogil=True)
def direct_tiles(x, xp, wpk, out, counter, groups, R, S, nkbr, nchunk, sh, sw, dh, dw, pt,
                 pl):  # pragma: no cover
    """One thread's share of a direct convolution of ``x`` (N, C, H, W), any stride and
    dilation: the window of output (oh, ow) is rows oh*sh + r*dh, columns ow*sw + s*dw of
    each zero-padded plane, reduced in (c, r, s) order (`direct_geometry`). ``wpk``:
    [groups][k-blocks][C/g][R][S][KB].

    Every thread of a team job calls it (`convolab.kernels.team`), with ``counter`` (N + 2
    int64) zeroed by the caller. Where ``xp`` (N, C, Hp, Wp) is not ``x`` itself, the threads
    first write it, the zero-padded copy, in runs of about 32 KiB of rows handed out by
    ``counter[0]`` (``counter[1]`` counts the finished runs; a serial copy before the job
    took a tenth of a 3x3 64@56 layer's time on two threads); then image n's tile tasks come
    from ``counter[2 + n]``, and a thread done with one image's tasks starts on the next;
    ``counter[N + 2]`` counts the finished tasks, and no thread returns before all are (a
    `complete` team job). Any number of threads, one included, computes the whole output."""
    N, C, Hp, Wp = xp.shape
    H = x.shape[2]
    W = x.shape[3]
    K = out.shape[1]
    OH = out.shape[2]
    OW = out.shape[3]
    OHOW = OH * OW
    KB = wpk.shape[-1]
    wflat = wpk.reshape(wpk.size)
    xflat = xp.reshape(xp.size)
    if Hp != H or Wp != W:
        rows = max(1, 8192 // Wp)
        nrows = N * C * Hp
        nrt = (nrows + rows - 1) // rows
        src = x.reshape(x.size)
        while True:
            i = fetch_add(counter, 0)
            if i >= nrt:
                break
            _padded_rows(xflat, src, i * rows, min(nrows, (i + 1) * rows), H, W, Hp, Wp, pt, pl)
            fetch_add(counter, 1)
        wait_until(counter, 1, nrt)
    Cg = C // groups
    Kg = K // groups
    nkb = (Kg + KB - 1) // KB
    ntask = groups * nkbr * nchunk
    Cgk, FWe, FHe, istep, fwstep, cs, rowlen = direct_geometry(Cg, R, S, Hp, Wp, sh, sw, dh, dw)
    for n in range(N):
        on = out[n].reshape(K * OHOW)
        k = tile_tasks(wflat, 0, xflat, n * C * Hp * Wp, Hp * Wp, Cgk, FWe, FHe, istep, fwstep,
                       cs, rowlen, on, 0, counter, 2 + n, (0, ntask), nchunk, nkbr, nkb, Cg, Kg,
                       KB, R * S, OHOW, OW, (on, on, 0, 0, 0, F0, F0), counter, -1, 0)
        if k > 0:
            fetch_add_n(counter, N + 2, k)
    # every tile finished before any thread returns (`team.run(..., complete=True)`)
    wait_until(counter, N + 2, N * ntask)


@njit(cache=True, nogil=True)
def point_gemms_mk(wpk, V, M, kb0, kb1, Kg):  # pragma: no cover - compiled
    """Per transform-domain point ``p``: ``M[p, t, k - kb0 KB] = sum_c V[p, t, c] Wt[p, c, k]``
    for the k-blocks ``kb0 .. kb1 - 1``, on the microkernel (serial; the caller's threads split
    the tiles or the k-blocks). ``wpk[p, kb, c, l] = Wt[p, c, kb KB + l]`` (zero past ``Kg``);
    ``V[p]`` is read as one output row of ``T`` pixels ``C`` apart whose channels are adjacent
    (one run of C), each tile stored pixel by pixel (row stride ``M.shape[2]``). The sum over c runs in
    order, from zero."""
    P, T, C = V.shape
    nkb = wpk.shape[1]
    KB = wpk.shape[3]
    nk = M.shape[2]
    wflat = wpk.reshape(wpk.size)
    vflat = V.reshape(V.size)
    mflat = M.reshape(M.size)
    nfull = T // MR
    for p in range(P):
        for kb in range(kb0, kb1):
            kn = min(KB, Kg - kb * KB)
            woff = (p * nkb + kb) * C * KB
            obase = p * T * nk + (kb - kb0) * KB
            for qt in range(nfull):
                _microkernel_pm(wflat, woff, vflat, p * T * C, 0, 1, 1, C, 1, 0, C, mflat, obase,
                                T, T, T * C, kn, qt * MR, nk)
            for q in range(nfull * MR, T, MR_TAIL):
                _microkernel_pm_tail(wflat, woff, vflat, p * T * C, 0, 1, 1, C, 1, 0, C, mflat,
                                     obase, T, T, T * C, kn, q, nk)
