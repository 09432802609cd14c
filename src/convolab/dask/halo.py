"""Block geometry of chunked sliding-window operations: which input rows each output block
reads, with what padding, from which input chunks.

One spatial axis at a time. The input has chunk boundaries ``0 = h_0 < h_1 < ... < h_m = H``;
a window operation with padding ``(p_lo, p_hi)``, stride ``s`` and window extent ``k`` (the
dilated kernel, ``dilation (R - 1) + 1``) has ``O = (H + p_lo + p_hi - k) // s + 1`` outputs,
output ``i`` reading input rows ``[i s - p_lo, i s - p_lo + k)``.

**Stride-aware alignment.** Output ``i`` belongs to the input chunk that holds input row
``i s`` (for a "same" convolution at stride 1, the window's centre): the output block of chunk
``j`` is ``[ceil(h_j / s), ceil(h_{j+1} / s))`` clipped to ``[0, O]``. The output chunks are
thus the input chunks divided by the stride -- a "same" convolution keeps the input's chunks,
chunks in multiples of the stride give regular output chunks, as zarr stores want. Every
output is in exactly one block, so it is computed exactly once; blocks that come out empty
(chunks smaller than the stride) are dropped, and a block whose windows lie wholly in the
padding is merged into its neighbour. A block reads the rows its windows cover: ``p_lo`` rows
before its share and ``k - 1 - p_lo`` after (a *halo* of ``k - 1`` rows in all, the kernel's
reach), taken from as many neighbouring chunks as that needs -- so chunks smaller than the
reach and uneven last chunks need no rechunking.

**Padding.** A block's input range is clipped to ``[0, H)``; what was cut off becomes the
block's own padding, so only blocks at the array's borders are padded, by the amounts of the
whole convolution, and the block's windows are the whole convolution's windows, element by
element.

Filters that keep the image size (``convolab.dask.filters``) use `centred_blocks`: output
blocks equal to the chunks, each reading ``radius`` rows either side, clipped to the image.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from ..errors import ConvError


@dataclass(frozen=True)
class Block:
    """One output block along one axis.

    Attributes
    ----------
    out : (int, int)
        Output rows ``[out[0], out[1])``.
    rows : (int, int)
        Input rows read, ``[rows[0], rows[1])``, inside ``[0, H)``.
    pad : (int, int)
        Padding before and after ``rows`` (non-zero only at the array's borders).
    pieces : tuple of (int, int, int)
        ``(chunk index, start, stop)``: the input rows as slices of the input's chunks, in order.
    """

    out: tuple[int, int]
    rows: tuple[int, int]
    pad: tuple[int, int]
    pieces: tuple[tuple[int, int, int], ...]

    @property
    def size(self) -> int:
        """Output rows in the block."""
        return self.out[1] - self.out[0]


def boundaries(chunks) -> list[int]:
    """Chunk sizes -> boundaries ``[0, h_1, ..., H]``."""
    b = [0]
    for c in chunks:
        b.append(b[-1] + int(c))
    return b


def pieces(bounds: list[int], lo: int, hi: int) -> tuple[tuple[int, int, int], ...]:
    """Input rows ``[lo, hi)`` as ``(chunk, start, stop)`` slices of the chunks ``bounds`` gives
    (empty chunks skipped)."""
    out = []
    for j in range(len(bounds) - 1):
        a, b = max(lo, bounds[j]), min(hi, bounds[j + 1])
        if a < b:
            out.append((j, a - bounds[j], b - bounds[j]))
    return tuple(out)


def window_blocks(chunks, pad: tuple[int, int], stride: int, extent: int, axis: str = "H") -> tuple[Block, ...]:
    """The output blocks of a strided window operation along one axis (see the module notes).

    Parameters
    ----------
    chunks : sequence of int
        The input's chunk sizes along the axis.
    pad : (int, int)
        Padding before and after the input.
    stride : int
    extent : int
        The window's extent in input rows (dilated kernel size).
    axis : str
        The axis' name, for messages.

    Returns
    -------
    tuple of Block
        In order, covering the outputs ``[0, O)`` exactly once.
    """
    bounds = boundaries(chunks)
    H = bounds[-1]
    p_lo, p_hi = pad
    O = (H + p_lo + p_hi - extent) // stride + 1
    if O < 1:
        raise ConvError(f"empty output along {axis}: window {extent} does not fit {H} + padding {pad}")
    cuts = [0]
    for h in bounds[1:-1]:
        b = min(max(-(-h // stride), 0), O)
        if b > cuts[-1]:
            cuts.append(b)
    if cuts[-1] < O:
        cuts.append(O)
    spans = list(zip(cuts[:-1], cuts[1:], strict=True))

    def reads(o0, o1):
        lo = o0 * stride - p_lo
        hi = (o1 - 1) * stride - p_lo + extent
        return lo, hi, max(lo, 0), min(hi, H)

    # a block whose windows all lie in the padding reads no input: merge it into a neighbour
    merged: list[list[int]] = []
    for o0, o1 in spans:
        _, _, a, b = reads(o0, o1)
        if merged and (a >= b or _empty(merged[-1], reads)):
            merged[-1][1] = o1
        else:
            merged.append([o0, o1])
    if _empty(merged[0], reads):
        raise ConvError(
            f"every window along {axis} lies in the padding {pad} (input {H}, window {extent}, "
            f"stride {stride}): there is no input to chunk"
        )
    out = []
    for o0, o1 in merged:
        lo, hi, a, b = reads(o0, o1)
        out.append(Block((o0, o1), (a, b), (a - lo, hi - b), pieces(bounds, a, b)))
    return tuple(out)


def _empty(span, reads) -> bool:
    _, _, a, b = reads(*span)
    return a >= b


def centred_blocks(chunks, radius: int) -> tuple[Block, ...]:
    """Output blocks equal to the input chunks, each reading ``radius`` rows either side
    (clipped to the array: no padding). Empty chunks give no block."""
    if radius < 0:
        raise ConvError(f"halo radius must be >= 0, got {radius}")
    bounds = boundaries(chunks)
    H = bounds[-1]
    out = []
    for j in range(len(bounds) - 1):
        o0, o1 = bounds[j], bounds[j + 1]
        if o0 == o1:
            continue
        a, b = max(0, o0 - radius), min(H, o1 + radius)
        out.append(Block((o0, o1), (a, b), (0, 0), pieces(bounds, a, b)))
    return tuple(out)


def out_chunks(blocks) -> tuple[int, ...]:
    """The output chunk sizes of a tuple of blocks."""
    return tuple(b.size for b in blocks)


def halo_rows(blocks) -> int:
    """Input rows read beyond each block's own share, summed over the blocks (the halo
    traffic along this axis; a chunk read by two blocks counts twice)."""
    return sum(b.rows[1] - b.rows[0] for b in blocks) - (blocks[-1].rows[1] - blocks[0].rows[0])



@dataclass
class _Strips:
    """The parts of one chunk that blocks read as halo: ``lead`` whole leading axes, then one
    ``((lo, hi), ...)`` per part (filled while the graph is built; opaque to Dask)."""

    lead: int
    bounds: list


def _cut(chunk, strips: _Strips) -> tuple:
    """Contiguous copies of a chunk's halo parts, in ``strips.bounds`` order."""
    return tuple(np.ascontiguousarray(chunk[(slice(None),) * strips.lead
                                            + tuple(slice(lo, hi) for lo, hi in b)])
                 for b in strips.bounds)


def piece(dsk: dict, name: str, key: tuple, lead: int, bounds: tuple, full: tuple):
    """What a block task reads of chunk ``key``: ``lead`` whole leading axes, then ``[lo, hi)``
    of each following axis (``bounds``, the chunk's extents ``full``); the chunk's own key when
    that is all of it. Else one task per chunk (named after ``name`` and the chunk) cuts every
    part any block reads of it, where the chunk lives, and a block takes its part out of that
    task's small result: Dask then moves only halo strips between workers. Written inline in the
    block's task, a slice had moved the whole chunk to the block's worker -- for a 3x3
    convolution of 64 x 512 x 512 chunks, up to eight 64 MiB chunks for 0.4 MiB of halo (a 2048 x
    2048 image on two workers: 1.1-4.0 s of transfers per run, `tools/dask_overhead.py`); a task
    per slice instead made 549 tasks of the 4096 x 4096 benchmark's 64 blocks, now 193."""
    if all(lo == 0 and hi == n for (lo, hi), n in zip(bounds, full, strict=True)):
        return key
    k = (f"{name}-halo", *key[1:])
    if k not in dsk:
        dsk[k] = (_cut, key, _Strips(lead, []))
    strips = dsk[k][2]
    b = tuple(tuple(v) for v in bounds)
    if b not in strips.bounds:
        strips.bounds.append(b)
    return (operator.getitem, k, strips.bounds.index(b))
