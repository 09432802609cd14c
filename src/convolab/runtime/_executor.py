"""The runtime's executor: a run of convolutions as ONE parallel job, threads meeting at spin
barriers between operators instead of starting a parallel region per operator.

Numba's workqueue layer costs about 80 us to start each parallel region on a 2-vCPU KVM guest
(notes of issue 15), more than a whole batch-1 depthwise or pointwise layer takes; a network
of 50 such layers lost most of its time there. Here the calling thread and ``P - 1`` threads
of convolab's thread team (`convolab.kernels.team`, via `Team`) each run `worker` over the same
program: every operator's work is split into
tasks handed out by an atomic counter (a thread the OS pauses holds up one task, not a share),
and after each operator the threads wait for each other at a barrier (an atomic counter they
spin on, with ``pause``, then yielding the CPU). One wake-up per run, then about a microsecond
per operator.

Data: ``A`` is the float32 arena holding every activation (and padded copies), ``Wb`` the
float32 blob of packed filters and biases, ``Ib`` the int64 blob of tap offsets, ``prog`` one
row of int64 fields per operator (`F_*` below), ``fprm`` its float32 parameters (clamp
bounds), ``ctr`` the counters, `CS` per operator, zeroed before each run.

Operators:

* `OP_TILES`: a dense or grouped convolution, any stride and dilation, on the register-blocked
  microkernel (`convolab.kernels._microkernel.tile_tasks`, direct's tiled path: the window
  of output (oh, ow) is rows oh*sh + r*dh, columns ow*sw + s*dw of each zero-padded plane,
  `direct_geometry`); with padding, a first phase copies the input planes into the interior
  of a dedicated zero-bordered copy;
* `OP_DW`: a depthwise convolution (`convolab.kernels._direct.depthwise_task`), any stride;
* `OP_DWB`: the same, channel-blocked (`convolab.kernels._direct.depthwise_block_task`), for
  small planes with one output per channel;
* `OP_MAXPOOL`, `OP_ADAPTIVE`, `OP_LINEAR`: max pooling, adaptive (global) average pooling and
  a linear layer, the runtime's own kernels (`convolab.runtime._kernels`) on the arena, so a
  network's head and a stem's pooling do not leave the job (each had cost a return to Python,
  a team wake-up and 0.05-0.15 ms of cold interpreter after a long run; ResNet-50 batch 1);
* `OP_BIL`: a convolution planned for a Winograd / SFC algorithm whose point GEMMs run on the
  microkernel (`convolab.algorithms.bilinear`): its input copied to NHWC, then chunks of tiles
  (and shares of the k-blocks) as tasks, each the algorithm's own chunk kernel
  (`convolab.kernels._bilinear.chunk_mk_stage`).

Each applies the output stage (bias, residual, activation; `convolab.kernels._epilogue`) to
each task's outputs while they are in cache. Every output is computed by the same code as the
layer's algorithm alone (direct's kernels, or the bilinear algorithm's), in the same order: the
results are bit-identical to that algorithm followed by the output stage and do not depend on
the thread count.

Numba caches compiled code per source file: `worker` carries the code of the microkernel and
the depthwise task from `convolab.kernels` (the cache stamps cover that package's files).

Size: the worker and its operators are one module on purpose: Numba inlines the operators
(``inline="always"``) into `worker` and caches its compiled code per source file; the row
fields (``F_*``) that `convolab.runtime.program` writes and the `Team` that runs the worker
belong with them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..kernels._atomics import fetch_add, load_acquire, now_ns, spin_changed, wait_until
from ..kernels._bilinear import chunk_mk_stage, nhwc_rows
from ..kernels._direct import (
    copy_run,
    deinterleave2,
    depthwise_block_scratch,
    depthwise_block_task,
    depthwise_block_tasks,
    depthwise_scratch,
    depthwise_task,
    fill_phases,
)
from ..kernels._microkernel import direct_geometry, tile_tasks
from ..kernels._pointwise import LINEAR_NB, pointwise_task
from ..kernels._pointwise import PX as PV_PX
from ..kernels.team import _DONE as TEAM_DONE
from ..kernels.team import _GEN as TEAM_GEN
from ..kernels.team import _KEY as TEAM_KEY
from ._kernels import (
    LINEAR_KB,
    adaptive_avg_tasks,
    global_avg_blocked_tasks,
    linear_tasks,
    maxpool_blocked_tasks,
    maxpool_scratch,
    maxpool_tasks,
)

OP_TILES = 1
OP_DW = 2
OP_DWB = 3
OP_MAXPOOL = 4
OP_ADAPTIVE = 5
OP_LINEAR = 6
OP_BIL = 7
#: output features per tile of a packed linear weight
LINEAR_TILE = LINEAR_NB * LINEAR_KB

# fields of a program row
(F_KIND, F_N, F_C, F_H, F_W, F_K, F_OH, F_OW, F_G, F_R, F_S, F_X, F_XIMG, F_Y, F_YIMG, F_WOFF,
 F_BIAS, F_RES, F_ACT, F_A, F_B, F_C2, F_D, F_E, F_F, F_G2, F_SH, F_SW, F_DH, F_DW,
 F_TAB, F_PV, F_BLK, F_LANE) = range(34)
NF = 34
# OP_TILES extras: F_A nkbr, F_B nchunk, F_C2 padded (1), subsampled (2, F_D sh, F_E sw) or
# stride-phase (3: planes F_H = sh sw hq rows of F_W = wq, the taps' offsets at F_TAB in Ib)
# copy (0: none), F_D pt, F_E pl, F_F padded copy's
# offset (its planes Hp x Wp are F_H x F_W then; the input's are F_G2 // ... see `_tiles`),
# F_G2 input H*W... kept explicit below
# OP_TILES of a 1x1 layer, stride 1 on its (copied) planes, one group: F_PV > 0 runs it on the
# pixel-vector kernel (`convolab.kernels._pointwise`) in F_PV chunks of pixels per k-block
# OP_DW extras: F_A sh, F_B sw, F_C2 pt, F_D pl, F_E hq, F_F wq, F_G2 qoff offset in Ib
# OP_DWB (channel-blocked depthwise, one output per channel): F_C2 pt, F_D pl, F_SH..F_DW
# OP_MAXPOOL: F_R x F_S window, F_SH, F_SW stride, F_DH, F_DW dilation, F_A, F_B padding
# (`convolab.runtime._kernels.maxpool`); OP_ADAPTIVE: adaptive average pooling to F_OH x F_OW;
# OP_LINEAR: F_N rows of F_C features at F_X -> F_K outputs at F_Y, the packed weight at F_WOFF
# (`_kernels.pack_linear`, F_A tiles), bias at F_BIAS (-1: none)
# OP_BIL (a layer planned for a bilinear algorithm, `convolab.algorithms.bilinear`, whose
# point GEMMs run on the microkernel; one group): F_A m (output tile), F_B TH, F_C2 TW (tiles
# per image), F_D pt, F_E pl, F_F the NHWC copy's offset, F_G2 tile rows per chunk, F_SH shares
# of the k-blocks per chunk, F_DH transform points, F_DW the packed filter's k-block width, F_TAB
# the transforms' header in Ib ([n1, n, n2, len ip, len ii, len op, len oi, 0], then ip, ii,
# op, oi), F_SW their coefficients in Wb (B1, A1, iv, ov)
# F_BLK: channel-blocked activations (NCHW16c, `program._blocked_pairs` picks them): bit 1 the
# operator's output, bit 2 its input. OP_TILES of a 1x1 layer on the microkernel: its tiles
# store their 16-channel pixel vectors as they are (a residual read in the same layout) / its
# reduction reads runs of 16 channels per pixel (a strided 1x1's compact copy is made of
# pixel vectors); OP_TILES with F_C2 4: a k x k layer on its input's blocked bordered copy
# (tapped tiles); OP_DWB: the pixel vectors read where they lie instead of planes transposed;
# OP_MAXPOOL: pixel vectors in and out; OP_ADAPTIVE: global pooling of pixel vectors. Bit 4,
# OP_TILES on the microkernel: each tile prefetches its output lines (the output stage's mode
# bit 8, `convolab.kernels._microkernel._prefetch_tile_output`; `program.OUTPUT_PREFETCH_BYTES`)
# F_LANE (rows of an image-major run's lanes, `program._image_major_rows`): L 2^32 + l 2^16 +
# n0: the run's rows per image, its lanes (image n on lane n % l's buffers) and the images the
# lanes take; thread m of P runs the lanes m, m + P .. (each lane on one thread: P = l, or
# fewer where the team had fewer threads to give)
#: counters per operator: [0] barrier, [1] phase-1 tasks, [2] phase barrier, [3 + s] share s
#: of its tasks (`_share`: image s, or one image's s-th range of them); after all operators'
#: two more: the threads' places in the run and the threads that have left it (`worker`,
#: `Team.run`). `counters_per_row` of them per operator
CS_BASE = 3


def counters_per_row(nmax: int, P: int) -> int:
    """Counters per operator of a program whose rows hold up to ``nmax`` images, run on up to
    ``P`` threads (`_share`)."""
    return CS_BASE + max(nmax, P)


#: a thread takes small tasks in runs of consecutive ones, about this many runs per thread: a
#: 7x7 layer's channel-blocked depthwise task (16 channels of one image) or copy of a plane
#: takes a few hundred nanoseconds or less, as long as a fetch-and-add on a counter both
#: threads hit
GRABS = 32


@njit(inline="always")
def _barrier(ctr, i, P):  # pragma: no cover - compiled
    """Wait until ``P`` threads have arrived at counter ``i`` (`wait_until`)."""
    fetch_add(ctr, i)
    wait_until(ctr, i, P)


@njit(inline="always")
def _image(k, N, P, me):  # pragma: no cover - compiled
    """The ``k``-th image thread ``me`` of ``P`` takes tasks from: its own share of the batch
    first (images ``me N / P ..``), then the others' in turn. Every operator shares the batch
    out alike, so a thread mostly reads the images it wrote itself, from its own core's L2."""
    return (k + me * N // P) % N


@njit(inline="always")
def _shares(N, P):  # pragma: no cover - compiled
    """How many shares a row's tasks are taken in (`_share`)."""
    return P if N == 1 else N


@njit(inline="always")
def _share(k, N, P, me, ntask):  # pragma: no cover - compiled
    """The ``k``-th share of a row's tasks that thread ``me`` of ``P`` takes: ``(n, s, t0,
    t1)``, image ``n``'s tasks ``t0 .. t1 - 1`` from counter ``CS_BASE + s`` (``ntask`` per
    image). Several images: one share per image, in `_image` order. One image on several
    threads: ``P`` consecutive ranges, thread m's own (the m-th) first, then the others'. A
    layer's tasks are numbered by output channels first (ranges of k-blocks, blocks of 16
    depthwise channels), so a thread takes about the channels it wrote in the layer before
    and reads them from its own core's L2 -- the depthwise layer after an expansion, above
    all: those split by one counter had read half their input from the other core's cache
    and ran 1.2-1.5x faster on two threads than on one."""
    if N == 1 and P > 1:
        p = (me + k) % P
        return 0, p, p * ntask // P, (p + 1) * ntask // P
    n = _image(k, N, P, me)
    return n, n, 0, ntask


@njit(inline="always")
def _epi(op, fprm, Wb, A, res_off):  # pragma: no cover - compiled
    bias = op[F_BIAS]
    mode = (2 if bias >= 0 else 0) | (4 if op[F_RES] >= 0 else 0) | (8 if op[F_BLK] & 4 else 0)
    eb = Wb[bias: bias + op[F_K]] if bias >= 0 else Wb[0:1]
    return (eb, A, res_off, mode, op[F_ACT], fprm[0], fprm[1])


@njit(inline="always")
def _tiles(j, op, fprm, P, me, A, Wb, Ib, ctr, CS, KB):  # pragma: no cover - compiled
    N, C, Hp, Wp, K = op[F_N], op[F_C], op[F_H], op[F_W], op[F_K]
    OH, OW, G, R, S = op[F_OH], op[F_OW], op[F_G], op[F_R], op[F_S]
    nkbr, nchunk = op[F_A], op[F_B]
    src = op[F_X]
    ximg = op[F_XIMG]
    if op[F_C2]:
        # phase 1: copy each input plane (H x W at op[F_X], images op[F_XIMG] apart) into the
        # interior of the zero-bordered padded copy at op[F_F] (F_C2 = 1; 4: a channel-blocked
        # input's rows of pixel vectors, for the tapped tiles), or its every F_D-th row and
        # F_E-th column into compact Hp x Wp planes there (F_C2 = 2: a strided 1x1, run as a
        # stride-1 one)
        H = op[F_G2] // 65536
        W = op[F_G2] % 65536
        pt, pl = op[F_D], op[F_E]
        dst = op[F_F]
        # planes in runs of consecutive ones, about GRABS per thread (copying a 7x7 plane
        # takes about as long as a fetch-and-add on a counter both threads hit); a
        # channel-blocked input (F_BLK bit 2, F_C2 = 2 or 4) by blocks of 16 planes
        blk = op[F_BLK] & 2 != 0
        nplane = N * C // 16 if blk else N * C
        run = max(1, nplane // (GRABS * P))
        while True:
            t0 = fetch_add(ctr, j * CS + 1) * run
            if t0 >= nplane:
                break
            for t in range(t0, min(nplane, t0 + run)):
                if blk and op[F_C2] == 4:  # rows of pixel vectors into the bordered copy
                    s0 = op[F_X] + (t // (C // 16)) * ximg + (t % (C // 16)) * 16 * H * W
                    d0 = dst + t * 16 * Hp * Wp + (pt * Wp + pl) * 16
                    for h in range(H):
                        copy_run(A, d0 + h * Wp * 16, A, s0 + h * W * 16, W * 16)
                    continue
                if blk:  # 16-channel pixel vectors of every pt-th row, pl-th column
                    s0 = op[F_X] + (t // (C // 16)) * ximg + (t % (C // 16)) * 16 * H * W
                    d0 = dst + t * 16 * Hp * Wp
                    for h in range(Hp):
                        for w in range(Wp):
                            copy_run(A, d0 + (h * Wp + w) * 16, A,
                                     s0 + (h * pt * W + w * pl) * 16, 16)
                    continue
                n = t // C
                c = t - n * C
                s0 = op[F_X] + n * ximg + c * H * W
                if op[F_C2] == 2:
                    d0 = dst + t * Hp * Wp
                    for h in range(Hp):
                        if pl == 2 and W == 2 * Wp and h + 1 < Hp:
                            # whole vectors of pairs split by shuffles; the odd columns land in
                            # the next compact row, which its own copy then overwrites (the
                            # strided scalar loop took 9% of a 1x1 stride-2 layer: 256 -> 512
                            # at 56x56)
                            deinterleave2(A, d0 + h * Wp, A, d0 + (h + 1) * Wp, A,
                                           s0 + h * pt * W, Wp)
                            continue
                        for w in range(Wp):
                            A[d0 + h * Wp + w] = A[s0 + h * pt * W + w * pl]
                elif op[F_C2] == 3:
                    sh, sw = op[F_SH], op[F_SW]
                    d0 = dst + t * Hp * Wp
                    fill_phases(A[d0: d0 + Hp * Wp], A, s0, H, W, sh, sw, pt, pl,
                                Hp // (sh * sw), Wp, A.dtype.type(0))
                else:
                    d0 = dst + t * Hp * Wp + pt * Wp + pl
                    for h in range(H):
                        copy_run(A, d0 + h * Wp, A, s0 + h * W, W)
        _barrier(ctr, j * CS + 2, P)
        src = dst
        ximg = C * Hp * Wp
    Cg = C // G
    Kg = K // G
    nkb = (Kg + KB - 1) // KB
    OHOW = OH * OW
    npc = op[F_PV]
    if npc > 0:  # 1x1 on planes of OHOW pixels: tasks (k-block, chunk of whole tiles)
        ntile = (OHOW + PV_PX - 1) // PV_PX
        # the residual of output A[o] at A[o + erd], the same offset for every image
        epi = _epi(op, fprm, Wb, A, op[F_RES] - op[F_Y])
        for k in range(_shares(N, P)):
            n, s, t0, t1 = _share(k, N, P, me, nkb * npc)
            yoff = op[F_Y] + n * op[F_YIMG]
            while True:
                t = t0 + fetch_add(ctr, j * CS + CS_BASE + s)
                if t >= t1:
                    break
                kb = t // npc
                ch = t - kb * npc
                p0 = (ch * ntile // npc) * PV_PX
                p1 = min(OHOW, ((ch + 1) * ntile // npc) * PV_PX)
                pointwise_task(Wb, op[F_WOFF], KB, A, src + n * ximg, yoff, OHOW, C, K, kb, p0,
                               p1, epi)
        return
    tabo = -1  # no tap table
    cstride = Hp * Wp
    if op[F_C2] == 3:  # stride-phase planes: each tap's offset from the table, rows of wq
        Cgk, FWe, FHe, istep, fwstep, cs, rowlen = Cg, 1, R * S, 0, 0, 1, Wp
        tabo = op[F_TAB]
    elif op[F_C2] == 4:  # a k x k layer on its channel-blocked bordered copy: runs of the taps
        # (offsets from the table) of each channel, 16 channels a block, blocks 16 Hp Wp apart
        Cgk, FWe, FHe, istep, fwstep = Cg // 16, 16, R * S, 0, 1
        cs, rowlen = 16 * op[F_SW], 16 * op[F_SH] * Wp
        cstride = 16 * Hp * Wp
        tabo = op[F_TAB]
    elif op[F_BLK] & 2:  # a 1x1 layer on channel-blocked input: runs of 16 channels per pixel
        Cgk, FWe, FHe, istep, fwstep, cs, rowlen = Cg // 16, 1, 16, 1, 0, 16, 16 * Wp
        cstride = 16 * Hp * Wp
    else:
        Cgk, FWe, FHe, istep, fwstep, cs, rowlen = direct_geometry(
            Cg, R, S, Hp, Wp, op[F_SH], op[F_SW], op[F_DH], op[F_DW])
    for k in range(_shares(N, P)):
        n, s, t0, t1 = _share(k, N, P, me, G * nkbr * nchunk)
        epi = _epi(op, fprm, Wb, A, op[F_RES] + n * op[F_YIMG])
        # out of line (`tile_tasks`): inlined into the worker, the general kernel ran at a third
        # of its speed (3x3 512@7 2.9 -> 2.2 ms, strided 3x3 128@56 on phase planes 2.7 -> 2.2)
        tile_tasks(Wb, op[F_WOFF], A, src + n * ximg, cstride, Cgk, FWe, FHe, istep, fwstep,
                   cs, rowlen, A, op[F_Y] + n * op[F_YIMG], ctr, j * CS + CS_BASE + s,
                   (t0, t1), nchunk, nkbr, nkb, Cg, Kg, KB, R * S, OHOW, OW, epi, Ib, tabo,
                   op[F_BLK] & 3)


@njit(inline="always")
def _dw(j, op, fprm, P, me, A, Wb, Ib, ctr, CS, scratch):  # pragma: no cover - compiled
    N, C, H, W, K = op[F_N], op[F_C], op[F_H], op[F_W], op[F_K]
    OH, OW, sh, sw, hq, wq = op[F_OH], op[F_OW], op[F_A], op[F_B], op[F_E], op[F_F]
    epi = _epi(op, fprm, Wb, A, op[F_RES])
    nb = sh * sw * hq * wq
    buf = scratch[:nb]
    acc = scratch[nb + (-nb) % 16: nb + (-nb) % 16 + (OH - 1) * wq + OW]
    # planes (image, channel) in `_share` order (one image on P threads: P ranges of channels)
    for k in range(_shares(1, P) if N == 1 else 1):
        if N == 1:
            _, s, t0, t1 = _share(k, 1, P, me, C)
            slot = j * CS + CS_BASE + s
        else:  # every image's planes from one counter
            slot, t0, t1 = j * CS + 1, 0, N * C
        while True:
            t = t0 + fetch_add(ctr, slot)
            if t >= t1:
                break
            depthwise_task(t, A, op[F_X], Wb, op[F_WOFF], A, op[F_Y], Ib, op[F_G2], C, H, W,
                           K // C, op[F_R] * op[F_S], OH, OW, sh, sw, op[F_C2], op[F_D], hq, wq,
                           buf, acc, epi)


@njit(inline="always")
def _dwb(j, op, fprm, P, me, A, Wb, ctr, CS, scratch):  # pragma: no cover - compiled
    N, C, H, W = op[F_N], op[F_C], op[F_H], op[F_W]
    epi = _epi(op, fprm, Wb, A, op[F_RES])
    # tasks image by image (each image's from its own counter), in `_share` order, taken in
    # runs of `run` consecutive ones
    per = depthwise_block_tasks(1, C, op[F_OH], op[F_OW], op[F_R], op[F_S], op[F_SH], op[F_SW],
                                op[F_DH], op[F_DW])
    run = max(1, N * per // (GRABS * P))
    for k in range(_shares(N, P)):
        n, s, g0, g1 = _share(k, N, P, me, (per + run - 1) // run)
        while True:
            g = g0 + fetch_add(ctr, j * CS + CS_BASE + s)
            if g >= g1:
                break
            for t in range(n * per + g * run, n * per + min(per, g * run + run)):
                _dwb_task(t, op, A, Wb, scratch, epi, C, H, W)


@njit(inline="always")
def _dwb_task(t, op, A, Wb, scratch, epi, C, H, W):  # pragma: no cover - compiled
    """`depthwise_block_task` ``t`` of the row; with its input and output both channel-blocked
    (``F_BLK`` 3, the usual case between 1x1 layers) a copy compiled for that constant, whose
    paths for NCHW input and output fold away: the general copy kept their state live
    through the rows' loops (3x3 1152@7, alone: 40.8 -> 23.3 us, Xeon)."""
    blk = op[F_BLK] & 3
    if blk == 3:
        depthwise_block_task(t, A, op[F_X], Wb, op[F_WOFF], A, op[F_Y], C, H, W, op[F_R],
                             op[F_S], op[F_OH], op[F_OW], op[F_SH], op[F_SW], op[F_DH],
                             op[F_DW], op[F_C2], op[F_D], scratch, epi, 3)
    else:
        depthwise_block_task(t, A, op[F_X], Wb, op[F_WOFF], A, op[F_Y], C, H, W, op[F_R],
                             op[F_S], op[F_OH], op[F_OW], op[F_SH], op[F_SW], op[F_DH],
                             op[F_DW], op[F_C2], op[F_D], scratch, epi, blk)


@njit(inline="always")
def _bil(j, op, fprm, P, A, Wb, Ib, ctr, CS, scratch):  # pragma: no cover - compiled
    N, C, H, W, K, OH, OW = op[F_N], op[F_C], op[F_H], op[F_W], op[F_K], op[F_OH], op[F_OW]
    m, TH, TW, pt, pl, xo = op[F_A], op[F_B], op[F_C2], op[F_D], op[F_E], op[F_F]
    cr, ks, npt, KB = op[F_G2], op[F_SH], op[F_DH], op[F_DW]
    # phase 1: the input to NHWC, rows in runs of consecutive ones
    nhwc_rows(A, op[F_X], op[F_XIMG], A, xo, N, C, H, W, ctr, j * CS + 1,
              max(1, N * H // (GRABS * P)))
    _barrier(ctr, j * CS + 2, P)
    tb = op[F_TAB]
    n1, n, n2 = Ib[tb], Ib[tb + 1], Ib[tb + 2]
    o1 = tb + 8
    o2 = o1 + Ib[tb + 3]
    o3 = o2 + Ib[tb + 4]
    o4 = o3 + Ib[tb + 5]
    ip, ii, opp, oi = Ib[o1:o2], Ib[o2:o3], Ib[o3:o4], Ib[o4:o4 + Ib[tb + 6]]
    f1 = op[F_SW] + n1 * n
    f2 = f1 + m * n2
    f3 = f2 + Ib[tb + 4]
    B1 = Wb[op[F_SW]:f1].reshape((n1, n))
    A1 = Wb[f1:f2].reshape((m, n2))
    iv, ov = Wb[f2:f3], Wb[f3:f3 + Ib[tb + 6]]
    nkb = (K + KB - 1) // KB
    wpk = Wb[op[F_WOFF]: op[F_WOFF] + npt * nkb * C * KB].reshape((npt, nkb, C, KB))
    xh = A[xo: xo + N * H * W * C].reshape((N, H, W, C))
    out = A[op[F_Y]: op[F_Y] + N * K * OH * OW].reshape((N, K, OH, OW))
    eb, _, _, mode, code, lo, hi = _epi(op, fprm, Wb, A, 0)
    roff = op[F_RES] - op[F_Y]
    vsz = npt * cr * TW * C
    vsz += (-vsz) % 16
    rows = N * TH
    nch = (rows + cr - 1) // cr
    while True:
        t = fetch_add(ctr, j * CS + CS_BASE)
        if t >= nch * ks:
            break
        ch = t // ks
        kp = t - ch * ks
        kb0 = kp * nkb // ks
        kb1 = (kp + 1) * nkb // ks
        r0 = ch * cr
        tc = (min(rows, r0 + cr) - r0) * TW
        nk = min(K, kb1 * KB) - kb0 * KB
        V = scratch[:npt * tc * C].reshape((npt, tc, C))
        M = scratch[vsz: vsz + npt * tc * nk].reshape((npt, tc, nk))
        chunk_mk_stage(xh, out, wpk, V, M, K, kb0, kb1, r0, TH, TW, m, pt, pl, B1, ip, ii, iv, A1,
                       opp, oi, ov, A, op[F_Y], eb, roff, mode, code, lo, hi)


@njit(inline="always")
def _pool(j, op, A, ctr, CS, scratch, P):  # pragma: no cover - compiled
    N, C, H, W, OH, OW = op[F_N], op[F_C], op[F_H], op[F_W], op[F_OH], op[F_OW]
    x = A[op[F_X]: op[F_X] + N * C * H * W].reshape((N, C, H, W))
    y = A[op[F_Y]: op[F_Y] + N * C * OH * OW].reshape((N, C, OH, OW))
    if op[F_KIND] == OP_MAXPOOL and op[F_BLK] & 2:  # pixel vectors in and out
        maxpool_blocked_tasks(A, op[F_X], op[F_Y], N, C, H, W, OH, OW, op[F_R], op[F_S],
                              op[F_SH], op[F_SW], op[F_A], op[F_B], op[F_DH], op[F_DW], ctr,
                              j * CS + 1, max(1, N * (C // 16) * OH // (GRABS * P)))
    elif op[F_KIND] == OP_MAXPOOL:
        maxpool_tasks(x, y, op[F_R], op[F_S], op[F_SH], op[F_SW], op[F_A], op[F_B], op[F_DH],
                      op[F_DW], ctr, j * CS + 1, scratch)
    elif op[F_BLK] & 2:  # global pooling of a channel-blocked input
        global_avg_blocked_tasks(A, op[F_X], y, N, C, H * W, ctr, j * CS + 1)
    else:
        adaptive_avg_tasks(x, y, ctr, j * CS + 1)


@njit(inline="always")
def _linear(j, op, A, Wb, ctr, CS):  # pragma: no cover - compiled
    N, C, K = op[F_N], op[F_C], op[F_K]
    x = A[op[F_X]: op[F_X] + N * C].reshape((N, C))
    y = A[op[F_Y]: op[F_Y] + N * K].reshape((N, K))
    nt = op[F_A]
    wp = Wb[op[F_WOFF]: op[F_WOFF] + nt * C * LINEAR_TILE].reshape((nt, C, LINEAR_TILE))
    bias = op[F_BIAS]
    b = Wb[bias: bias + K] if bias >= 0 else Wb[0:1]
    linear_tasks(x, wp, b, bias >= 0, y, ctr, j * CS + 1)


@njit(inline="always")
def _row(j, op, fprm, P, me, A, Wb, Ib, ctr, CS, KB, scratch):  # pragma: no cover - compiled
    kind = op[F_KIND]
    if kind == OP_TILES:
        _tiles(j, op, fprm, P, me, A, Wb, Ib, ctr, CS, KB)
    elif kind == OP_DW:
        _dw(j, op, fprm, P, me, A, Wb, Ib, ctr, CS, scratch)
    elif kind == OP_DWB:
        _dwb(j, op, fprm, P, me, A, Wb, ctr, CS, scratch)
    elif kind == OP_MAXPOOL or kind == OP_ADAPTIVE:
        _pool(j, op, A, ctr, CS, scratch, P)
    elif kind == OP_LINEAR:
        _linear(j, op, A, Wb, ctr, CS)
    elif kind == OP_BIL:
        _bil(j, op, fprm, P, A, Wb, Ib, ctr, CS, scratch)


@njit(nogil=True, cache=True)
def worker(P, prog, fprm, A, Wb, Ib, ctr, CS, KB, stamps, scratch):  # pragma: no cover - compiled
    """Run every operator of ``prog`` with ``P`` threads (this one of them); ``scratch``: this
    thread's work buffer (the largest depthwise operator's, `scratch_elements`). ``stamps``:
    empty, or ``len(prog) + 1`` int64 slots that receive the monotonic clock (ns) before the
    first operator and as each operator's barrier is passed (`tools/executor_profile.py`: each
    operator's time inside the run, caches as the run leaves them)."""
    timed = stamps.size > prog.shape[0]
    me = fetch_add(ctr, ctr.size - 2)  # this thread's place among the run's P (`_image`)
    if timed:
        stamps[0] = now_ns()
    nrow = prog.shape[0]
    j = 0
    while j < nrow:
        lane = prog[j, F_LANE]
        L = lane >> 32
        nl = max(1, (lane >> 16) & 65535)
        n0 = lane & 65535
        if lane > 0 and j + L * n0 <= nrow:
            # an image-major run's lanes: this thread's images, each layer's tasks all its
            # own (one thread: no barrier between its rows), then one barrier for all
            for n in range(n0):
                if (n % nl) % P != me:
                    continue
                for jj in range(j + n * L, j + n * L + L):
                    _row(jj, prog[jj], fprm[jj], 1, 0, A, Wb, Ib, ctr, CS, KB, scratch)
                    if timed:
                        stamps[jj + 1] = now_ns()
            j += L * n0
            _barrier(ctr, (j - 1) * CS, P)
            continue
        _row(j, prog[j], fprm[j], P, me, A, Wb, Ib, ctr, CS, KB, scratch)
        _barrier(ctr, j * CS, P)
        if timed:
            stamps[j + 1] = now_ns()
        j += 1
    # this thread is done with the counters: `Team.run` waits for every thread's mark (in
    # compiled code) before its caller may zero them for the next run
    fetch_add(ctr, ctr.size - 1)


@njit(nogil=True, cache=True)
def serve(ctl, i, gen, budget, key, P, prog, fprm, A, Wb, Ib, ctr, CS, KB, stamps,
          scratch):  # pragma: no cover - compiled
    """A team thread's resident loop (`convolab.kernels.team.Team.run`'s ``resident``): run
    `worker` for generation ``gen``, mark it done in the team's control words (``ctl``, thread
    ``i``), then spin for the next generation and run it too while its key (``ctl[1]``) is
    ``key`` -- the same program on the same arrays: a compiled model called again -- without
    returning to Python, whose GIL the caller holds until it enters its own `worker`. Returns
    the last generation run, when another job comes or ``budget`` ns pass without one."""
    while True:
        worker(P, prog, fprm, A, Wb, Ib, ctr, CS, KB, stamps, scratch)
        ctl[TEAM_DONE + 8 * i] = gen
        nxt = spin_changed(ctl, TEAM_GEN, gen, budget)
        if nxt == gen or load_acquire(ctl, TEAM_KEY) != key:
            return gen
        gen = nxt


@njit(nogil=True, cache=True)
def _left(ctr, n):  # pragma: no cover - compiled
    """Wait until ``n`` threads have left `worker` (its last counter)."""
    wait_until(ctr, ctr.size - 1, n)


#: ``stamps`` of an untimed run
NO_STAMPS = np.zeros(0, dtype=np.int64)


def scratch_elements(prog: np.ndarray) -> int:
    """Elements of one thread's work buffer for ``prog``: the largest depthwise or max-pooling
    operator's padded plane and output run (`convolab.kernels._direct.depthwise_scratch`,
    `convolab.runtime._kernels.maxpool_scratch`), 64-byte aligned."""
    need = 16
    for op in prog:
        if op[F_KIND] == OP_DW:
            nb, na = depthwise_scratch(op[F_A], op[F_B], op[F_E], op[F_F], op[F_OH], op[F_OW])
            need = max(need, nb + (-nb) % 16 + na)
        elif op[F_KIND] == OP_DWB:
            need = max(need, depthwise_block_scratch(op[F_OH], op[F_OW], op[F_R], op[F_S],
                                                     op[F_SH], op[F_SW], op[F_DH], op[F_DW]))
        elif op[F_KIND] == OP_MAXPOOL:
            need = max(need, maxpool_scratch(op[F_H], op[F_W], op[F_OH], op[F_OW], op[F_R],
                                             op[F_S], op[F_SH], op[F_SW], op[F_A], op[F_B],
                                             op[F_DH], op[F_DW]))
        elif op[F_KIND] == OP_BIL:  # a chunk's transformed input and products (`_bil`)
            tc = op[F_G2] * op[F_C2]
            vsz = op[F_DH] * tc * op[F_C]
            need = max(need, vsz + (-vsz) % 16 + op[F_DH] * tc * op[F_K])
    return int(need)


WARM_CODE = (
    "import numpy as np; from convolab.runtime._executor import worker, NF; "
    "worker(1, np.zeros((0, NF), np.int64), np.zeros((0, 2), np.float32), np.zeros(1, np.float32), "
    "np.zeros(1, np.float32), np.zeros(1, np.int64), np.zeros(1, np.int64), 4, 32, "
    "np.zeros(0, np.int64), "
    "np.zeros(16, np.float32))"
)


#: team threads stay in `serve` between runs of the same program (see `Team.run`)
RESIDENT = True


class Team:
    """Runs `worker` on the process's thread team (`convolab.kernels.team`: threads that spin a
    while between jobs instead of sleeping), each thread with a work buffer of its own. If
    another Python thread's job holds the team, the program runs on the calling thread alone
    (its barriers then wait for one thread)."""

    def __init__(self, P: int):
        self.P = P
        self._scratch: list | None = None

    @property
    def _threads(self) -> list:
        from ..kernels import team

        return team.shared()._threads

    def run(self, args, scratch: int) -> None:
        """Run `worker` over ``args`` (``P`` first, all but the scratch buffer, ``stamps``
        last) on up to ``P`` threads; ``scratch``: elements each thread's work buffer needs."""
        from ..kernels import load_from_cache, team

        if self._scratch is None or self._scratch[0].size < scratch:
            self._scratch = [np.zeros(scratch + 16, dtype=np.float32)[:scratch]
                             for _ in range(self.P)]
        load_from_cache(worker, (*args, self._scratch[0]), WARM_CODE, "float32")
        t = team.shared()
        n = max(1, min(args[0], t.size, len(self._scratch)))
        # (a program without rows has no barrier: the caller would finish and withdraw the
        # job before a team thread took it, then wait in `_left` for that thread forever)
        if n > 1 and args[1].shape[0] and t.lock.acquire(blocking=False):
            try:
                # complete: no wait for the team threads to report back from Python (the
                # GIL's hand-over took 80-120 us a run, median, ResNet-50 and EfficientNet-
                # Lite0 batch 1, 2 vCPUs); the counters' last slot says when they are past
                # every barrier instead
                # a resident loop on the team thread (`serve`) unless the run is timed: the
                # next call of the same program then starts it without a GIL hand-over
                resident = (serve, id(args[1])) if args[-1].size == 0 and RESIDENT else None
                t.run(worker, (n, *args[1:]), n, own=self._scratch, complete=True,
                      resident=resident)
                _left(args[6], n)
            finally:
                t.lock.release()
            return
        worker(1, *args[1:], self._scratch[0])


def new_program(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, NF), dtype=np.int64), np.zeros((n, 2), dtype=np.float32)
