"""The register-blocked microkernel's geometry, without Numba: one home for what direct, im2win
and the Winograd/SFC point GEMMs share (the compiled half is `convolab.kernels._microkernel`).

A tile is `MR` consecutive *virtual pixels* x `KB` output channels (``KB = NV * 64 / itemsize``:
32 in float32, 16 in float64), held in ``MR * NV`` vector accumulators. Virtual pixels number
the positions of a strided grid that the input is read on: pixel ``v`` reads its window at
``v * cs`` (``cs``: elements between two neighbouring pixels' windows). Each caller maps its
output onto such a grid:

* direct (stride 1): the zero-padded plane, ``v = oh * Wp + ow``, ``cs = 1``;
* im2win: the window tensor, ``v = oh * Vv + ow`` with ``Vv`` window columns per stride step,
  ``cs = sw * FH``;
* point GEMMs: ``v`` = tile, ``cs`` = C (one row, no padding).

Grid rows are ``Vv`` pixels wide of which the first ``OW`` are outputs: the ``Vv - OW``
others (direct: the S - 1 padding columns) are computed and not stored, so a tile never needs
more than one pointer per three pixels. The last ``vtot % MR`` pixels run as tiles of
`MR_TAIL` (their last pixel repeated).

Every output is the sum of its products in the reduction's order (channel, then taps), from
zero, each step a fused multiply-add (``llvm.fma``: one rounding per step, the same on every
x86-64 CPU; where a CPU lacks FMA units, LLVM calls the correctly rounded libm routine). The
result therefore depends on neither the thread count, nor the SIMD width, nor the CPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

#: virtual pixels per tile
MR = 12
#: pixels per tile of the narrow kernel that finishes a row of tiles
MR_TAIL = 4
#: virtual pixels per tile of dense layers read as plain planes whose reduction runs are short
#: (a row of taps: 3x3, 5x5 stride 1): 28 accumulators of the 32 vector registers; a tile's
#: filter vectors, streamed from the L2 on layers of 64+ channels, serve 14 pixels instead of
#: 12, and rows of 56, 28, 14 and 7 outputs (every ImageNet network's) are whole numbers of
#: tiles (at 12 a tile in four crossed a row end, on the general kernel). ResNet-50 batch 1, one
#: thread, each 3x3 layer's time inside the run against ONNX Runtime's (tools/ort_gap.py, Xeon,
#: 2026-12-07): 64@56 1.39x -> 1.29x, 128@28 1.26x -> 1.18-1.22x, 256@14 1.24x -> 1.08-1.13x,
#: 512@7 unchanged. Tap tables (strided layers) and 1x1 layers ran slower at 14 (the stem
#: 1.22x -> 1.63x): they keep `MR`
MR_WIDE = 14
#: pixels per tile of those layers on 7x7 planes: one output row each, on the straight kernel
#: (their 14-pixel tiles each crossed a row end, on the general kernel, whose 14 pixel pointers
#: spilled registers in the inner loop)
MR_ROW = 7
#: 512-bit vectors of output channels per tile
NV = 2
#: bytes of input a task's tiles should span when it loops over all k-blocks (half an L2)
CHUNK_BYTES = 256 * 1024
#: tasks per thread a layer's split aims at (where it has that many tiles x k-blocks)
TASKS_PER_THREAD = 4


def lanes(itemsize: int) -> int:
    """Output channels per tile (KB) for a compute dtype of ``itemsize`` bytes."""
    return NV * (64 // itemsize)


def kb(spec) -> int:
    """KB for the layer's compute dtype."""
    return lanes(spec.compute_dtype.itemsize)


def pixels_computed(vtot: int) -> int:
    """Virtual pixels the tiles compute for a grid of ``vtot``: whole tiles of `MR`, the rest
    in tiles of `MR_TAIL`."""
    rest = vtot % MR
    return vtot - rest + -(-rest // MR_TAIL) * MR_TAIL


def lanes_computed(spec) -> int:
    """Output channels the tiles compute per group: every lane of every k-block (zero lanes
    past the group's channels included), except in a last k-block of at most one vector of
    real channels, whose tiles compute that vector only (the straight and tail tiles; tiles
    across a row end compute all `NV`)."""
    b = kb(spec)
    vl = b // NV
    full, rest = divmod(spec.Kg, b)
    return full * b + (0 if rest == 0 else vl if rest <= vl else b)


def multiplies(spec, vtot: int) -> int:
    """Multiplications of the tiles over a layer whose images each have ``vtot`` virtual
    pixels (`lanes_computed` channels per group)."""
    return (spec.N * spec.groups * lanes_computed(spec) * pixels_computed(vtot)
            * spec.reduction_length)


def pack_filter(spec, w, taps_order: str) -> np.ndarray:
    """The filter as the tiles read it: [groups][K/groups / KB][C/groups][taps][KB], zero lanes
    past the group's channels; ``taps_order`` "sr" (im2win: [S][R], the window's column-major
    taps) or "rs" (direct: [R][S])."""
    b = kb(spec)
    G, Kg, Cg, R, S = spec.groups, spec.Kg, spec.Cg, spec.R, spec.S
    nkb = -(-Kg // b)
    wg = np.zeros((G, nkb * b, Cg, R, S), dtype=w.dtype)
    wg[:, :Kg] = w.reshape(G, Kg, Cg, R, S)
    axes = (0, 1, 3, 5, 4, 2) if taps_order == "sr" else (0, 1, 3, 4, 5, 2)
    return np.ascontiguousarray(wg.reshape(G, nkb, b, Cg, R, S).transpose(axes))


@dataclass(frozen=True)
class Split:
    """How a layer's tiles are cut into tasks: ``nkbr`` ranges of k-blocks x ``nchunk``
    ranges of tiles per group (tasks are handed out by an atomic counter)."""

    nkbr: int
    nchunk: int


#: multiply-adds a task's byte of input or filter read again is worth (`split`): weighs the
#: bytes a split reads more than once against the time its tasks leave a thread idle at the
#: end of a layer. Most of those bytes come back from the L2 / L3 cache, not memory.
#: MobileNetV2 / EfficientNet-Lite0 batch 1, 2 threads, Zen 4, the old split (bytes only)
#: against this one in blocks of calls taking turns, median: 0.5 -> 0.980 / 0.971 and
#: 0.988 / 0.976; 1.0 -> 0.991 / 0.999; 0.25 -> 1.006 / 0.988; ResNet-50 b1 / b8 and
#: MobileNetV2 b8 at 0.5: 0.980, 1.006, 0.999
FMAS_PER_BYTE = 0.5


def _ends(n: int, parts: int) -> list[int]:
    """Where ``n`` units cut into ``parts`` ranges end, as the tile drivers cut them
    (range ``i`` is ``i n // parts .. (i + 1) n // parts``)."""
    return [(i + 1) * n // parts for i in range(parts)]


def makespan(sizes: list[float], threads: int) -> float:
    """When the last of ``threads`` equally fast threads finishes, each taking the next task
    (in order) when it is free, as the atomic counter hands them out."""
    if threads <= 1:
        return float(sum(sizes))
    free = [0.0] * threads
    for s in sizes:
        i = free.index(min(free))
        free[i] += s
    return max(free)


@functools.lru_cache(maxsize=512)
def split(spec, vtot: int, bytes_per_pixel: float, nkb: int, threads: int) -> Split:
    """Tasks per image: at least four per thread (where the layer has that many tiles x
    k-blocks), cut so that the filter and the input are read from memory as few times as
    possible and the threads finish together.

    A task runs its k-blocks one after the other, each over its range of tiles: the filter is
    read once per range of tiles (``nchunk`` times in all) and the input once per range of
    k-blocks (``nkbr`` times), provided a range of tiles' input stays in the L2 cache while a
    task loops over several k-blocks (at most `CHUNK_BYTES`): pixels are cut on large planes
    with small filters, k-blocks on small planes with large filters. (A rule that cut pixels
    first sent EfficientNet-Lite0's 320 -> 1280 1x1 head at 7x7, 5 tiles, as 2 x 5 tasks that
    each streamed half the 1.6 MB filter for one tile.) Each split's estimated time is its
    multiply-adds, stretched by the time the threads wait for the last task (`makespan`: the
    tasks' real pixels and lanes, handed out in order), plus `FMAS_PER_BYTE` per byte read;
    the least wins. Uneven tasks had cost 6-7% of a small layer's time on 2 threads: 160 ->
    960 at 7x7 cut its 30 k-blocks into 8 ranges of 3 or 4 (0.081 ms, 1.87x one thread), into
    10 ranges of 3 it runs in 0.076 ms (1.98x; executor, Zen 4, MobileNetV2 batch 1).
    ``bytes_per_pixel``: input bytes per virtual pixel, all channels of a group.
    """
    itemsize = spec.compute_dtype.itemsize
    G = spec.groups
    b = kb(spec)
    panel = spec.reduction_length * b * itemsize
    nq = -(-vtot // MR)
    filt = panel * nkb
    inp = bytes_per_pixel * MR * nq
    want = min(TASKS_PER_THREAD * threads, G * nkb * nq)
    # each k-block's computed lanes (`lanes_computed`) and each tile's computed pixels
    # (`pixels_computed`), summed by the ranges a split cuts
    rest = spec.Kg - (nkb - 1) * b
    lane = [b] * (nkb - 1) + [b // NV if 0 < rest <= b // NV else b]
    full = vtot // MR
    tail = pixels_computed(vtot) - full * MR
    pix = [MR] * full + ([tail] if tail else [])
    lane_sum = [0] + list(np.cumsum(lane))
    pix_sum = [0] + list(np.cumsum(pix))
    work = float(lane_sum[-1] * pix_sum[-1] * G) * spec.reduction_length
    most = 4 * want
    best = None
    enough = 0  # chunks from which more only read the filter again (see below)
    for nchunk in range(1, nq + 1):
        least = min(nkb, max(1, -(-want // (G * nchunk))))
        # k-block ranges from the fewest that make enough tasks up to a few more (even
        # ranges), or one k-block per task (its input then need not stay in the L2 from one
        # k-block to the next)
        cands = set(range(least, min(nkb, 2 * least + threads) + 1)) | {nkb}
        ce = _ends(len(pix), nchunk)
        chunk = [pix_sum[e] - pix_sum[s] for s, e in zip([0] + ce[:-1], ce, strict=True)]
        for nkbr in sorted(cands):
            if G * nkbr * nchunk < want or (least < nkbr < nkb and G * nkbr * nchunk > most):
                continue
            if nkbr < nkb and inp / nchunk > CHUNK_BYTES and nchunk < nq:
                continue  # several k-blocks per task over a range of tiles too large for the L2
            ke = _ends(nkb, nkbr)
            kr = [lane_sum[e] - lane_sum[s] for s, e in zip([0] + ke[:-1], ke, strict=True)]
            sizes = [k * c for _ in range(G) for k in kr for c in chunk]  # task order
            stretch = makespan(sizes, threads) * threads / sum(sizes)
            cost = work * stretch + FMAS_PER_BYTE * (nchunk * filt + nkbr * inp)
            if best is None or cost < best[0]:
                best = (cost, nkbr, nchunk)
        if not enough and least == 1 and inp / nchunk <= CHUNK_BYTES and G * nchunk >= want:
            enough = nchunk
        if enough and nchunk >= 2 * enough:
            break  # more chunks only read the filter more often
    _, nkbr, nchunk = best
    return Split(int(nkbr), int(nchunk))


def warm_code(algorithm: str, C: int, K: int, R: int, padding: int, dtype: str) -> str:
    """Python source that compiles an algorithm's microkernel path for one dtype in a child
    process (see `convolab.kernels.load_from_cache`)."""
    return (f"import numpy as np, convolab; convolab.conv2d(np.ones((1, {C}, 4, 4), '{dtype}'), "
            f"np.ones(({K}, {C}, {R}, {R}), '{dtype}'), padding={padding}, "
            f"algorithm='{algorithm}')")


def run(kernel, args, warm: str, dtype, threads: int) -> None:
    """Run a microkernel driver on ``threads`` threads of the team (`convolab.kernels.team`),
    its machine code loaded from Numba's cache (or compiled in a child process first)."""
    from . import load_from_cache, team

    load_from_cache(kernel, args, warm, np.dtype(dtype).name)
    # the drivers return once all their tiles are done (`team.Team.run`'s ``complete``)
    team.run(kernel, args, threads, complete=True)
