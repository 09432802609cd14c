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


@functools.lru_cache(maxsize=512)
def split(spec, vtot: int, bytes_per_pixel: float, nkb: int, threads: int) -> Split:
    """Tasks per image: at least four per thread (where the layer has that many tiles x
    k-blocks), cut so that the filter and the input are read from memory as few times as
    possible.

    A task runs its k-blocks one after the other, each over its range of tiles: the filter is
    read once per range of tiles (``nchunk`` times in all) and the input once per range of
    k-blocks (``nkbr`` times), provided a range of tiles' input stays in the L2 cache while a
    task loops over several k-blocks (at most `CHUNK_BYTES`). The split with the least of
    ``nchunk * filter + nkbr * input`` wins: pixels are cut on large planes with small
    filters, k-blocks on small planes with large filters. (A rule that cut pixels first sent
    EfficientNet-Lite0's 320 -> 1280 1x1 head at 7x7, 5 tiles, as 2 x 5 tasks that each
    streamed half the 1.6 MB filter for one tile.) ``bytes_per_pixel``: input bytes per
    virtual pixel, all channels of a group.
    """
    itemsize = spec.compute_dtype.itemsize
    G = spec.groups
    panel = spec.reduction_length * kb(spec) * itemsize
    nq = -(-vtot // MR)
    filt = panel * nkb
    inp = bytes_per_pixel * MR * nq
    want = min(TASKS_PER_THREAD * threads, G * nkb * nq)
    best = None
    for nchunk in range(1, nq + 1):
        least = min(nkb, max(1, -(-want // (G * nchunk))))
        # the fewest ranges of k-blocks that make enough tasks, or one k-block per task (its
        # input then need not stay in the L2 from one k-block to the next)
        for nkbr in (least, nkb) if least < nkb else (least,):
            if G * nkbr * nchunk < want:
                continue
            if nkbr < nkb and inp / nchunk > CHUNK_BYTES and nchunk < nq:
                continue  # several k-blocks per task over a range of tiles too large for the L2
            cost = nchunk * filt + nkbr * inp
            if best is None or cost < best[0]:
                best = (cost, nkbr, nchunk)
        if least == 1 and inp / nchunk <= CHUNK_BYTES and G * nchunk >= want:
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
