"""Convolution schedules on encrypted slot vectors: CAConv, RAConv, multiplexed, shortcuts.

All convolutions compute PyTorch's cross-correlation with "same" padding, ``p = (R-1)/2``:
``y[o, i', j'] = sum_{c, dy, dx} w[o, c, dy, dx] * x[c, s*i' + dy - p, s*j' + dx - p]`` for
R in {1, 3} and stride s in {1, 2}, written only in backend operations (see `backend`). The
layouts are those of `layout`; a tap (dy, dx) is a uniform slot shift ``off``, the boundary is
a 0/1 mask folded into the weight plaintexts. Costs for a 3x3 layer (8 non-centre taps):

- ``ca_conv`` (HyPHEN CAConv, Kim et al., IEEE Access 2023; CA in, RA out): rotate each input
  ciphertext by the 8 tap offsets (a hoisted group with ``hoist=True``); per output channel o,
  ``P_o = sum_{t, tap} rot(ct_t, off) * M[o, t, tap]`` (M holds ``w[o, c, tap]`` at every slot
  of channel c, times the tap's boundary mask), rescale, then rotate-and-sum over the ``m``
  distinct channels of a ciphertext: log2(cells) steps inside a pixel's gap cells (1, 2, ...
  along a cell row, ``grid_w``, ... across rows) and log2(period) steps over blocks, so
  every block holds the channel sum at gap cell (0, 0) of each pixel.
  rot = 8 ceil(Cin/m) + Cout log2 m, PMult = 9 ceil(Cin/m) Cout, depth 1.
- ``ra_conv`` (HyPHEN RAConv; RA in, CA out with ``distinct=m``, rotations moved to the
  output side): for each group of ``P = min(m, n)`` output channels and each tap,
  ``A = sum_i ct_i * Q`` where Q holds the masked weights of output channel ``g*P + j`` in
  block j (and its copies), pre-rotated by ``-off``; ``out = sum_tap rot(A, off)``. With 2D
  gap packing (``m > n``), ``cells = m/n`` such groups are moved into gap cells ``(a, b)`` of
  one ciphertext by one rotation each (``-(a*grid_w + b)``); one rescale per output ciphertext.
  rot = 8 ceil(Cout/P) + (cells - 1) per output ciphertext, PMult = 9 Cin ceil(Cout/P), depth 1.
- ``mp_conv`` (multiplexed parallel convolution, Lee et al., ICML 2022; MP in, MP out): 8
  shared tap rotations; for each of ``q = ceil(Cout/p)`` groups (copy u of the input computes
  output channel ``group*p + u``): 9 PMults, a rotate-and-sum over the k^2 multiplexed
  positions and the t sub-blocks, one rotation and one mask PMult per output channel placed at
  its multiplexed output position, and copies of the result. Two counting variants:
  ``"authors"`` (default) as the authors' code (snu-ccl/FHE-MP-CNN, cnn_seal.cpp
  ``multiplexed_parallel_convolution_seal``) runs: the sum accumulates towards the first
  position, so the first placement is a zero shift (free); a non-power-of-two t (the 3-channel
  image) is summed with t - 1 rotations; the ``p_out`` copies take ``p_out - 1`` rotations, and
  steps 34..55 and 57..61 are done as two rotations (33 and the rest; its
  ``memory_save_rotate``). rot = 8 + q (2 log2 k + log2 t) + (Cout - 1) + (p_out - 1),
  PMult = 9 q + Cout, depth 2. ``"doubling"`` (convolab's earlier counting): the sum
  accumulates towards the last position so every placement is a rotation, copies by log2 p_out
  doublings, t padded to a power of two: rot = 8 + q (2 log2 k + log2 t) + Cout + log2 p_out.
- ``mp_downsample``: the option-A shortcut of a stride-2 block in the multiplexed layout
  (every second pixel, channel c to channel ``c + C/2`` of 2C, as the authors' pretrained
  CIFAR ResNets pad): one mask PMult and one rotation per (row cell a, sub-block) pair, k t of
  them, then the copies (``p_out - 1`` rotations; authors' ``multiplexed_parallel_downsampling_seal``).
- ``ca_relayout``: a CA tensor into another CA layout (other ``distinct``, more channels, and
  for the stride-2 shortcut every second pixel): one mask PMult per (source ciphertext,
  target ciphertext, shift) group and one rotation per non-zero shift, plus log2 doublings
  when the target repeats its channels more often; depth 1. Same positions and a stride-2
  shortcut: only the masks.

A product whose plaintext is all zero (e.g. a vertical tap of a one-row map) is skipped and
not counted, and a rotation is only done when its result is used; in a ciphertext list,
None stands for a ciphertext of zeros.

Size: the four schedules share the tap geometry (`_taps`, `_setup`), the layouts' slot
indices and the cost formulas their tests check them against; split by schedule, each would
re-derive them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConvError
from .layout import Layout, check_fits, log2, with_distinct

#: counting variants of the multiplexed baseline
MP_VARIANTS = ("authors", "doubling")


@dataclass
class EncTensor:
    """An encrypted feature map: its layout and its ciphertexts (None = all zeros)."""

    layout: Layout
    cts: list


def _acc(be, acc, term):
    return term if acc is None else be.add(acc, term)


def check_kernel(w: np.ndarray, stride: int, channels: int) -> tuple[int, int]:
    """Validate weights (Cout, Cin, R, R) with R in {1, 3} and stride in {1, 2}."""
    if w.ndim != 4:
        raise ConvError(f"weights must be 4-D (Cout, Cin, R, S), got shape {w.shape}")
    R, S = w.shape[2:]
    if (R, S) not in ((1, 1), (3, 3)):
        raise ConvError(f"unsupported kernel {R}x{S}: convolab.he supports 1x1 and 3x3")
    if stride not in (1, 2):
        raise ConvError(f"unsupported stride={stride}: convolab.he supports 1 and 2")
    if w.shape[1] != channels:
        raise ConvError(f"weights have Cin={w.shape[1]} but the input has channels={channels}")
    return R, (R - 1) // 2


def check_variant(variant: str) -> str:
    if variant not in MP_VARIANTS:
        raise ConvError(f"unknown multiplexed variant {variant!r}; choose from {MP_VARIANTS}")
    return variant


def _out_size(n: int, stride: int) -> int:
    return (n - 1) // stride + 1


def _taps(lay: Layout, R: int, p: int, stride: int, out_off: np.ndarray):
    """(dy, dx, slot offset, valid output pixel offsets) for each tap."""
    H, W = lay.height, lay.width
    OH, OW = out_off.shape
    taps = []
    for dy in range(R):
        for dx in range(R):
            rows = np.arange(OH) * stride + dy - p
            cols = np.arange(OW) * stride + dx - p
            valid = ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]
            off = lay.gap * ((dy - p) * lay.grid_w + (dx - p))
            taps.append((dy, dx, off, out_off[valid]))
    return taps


def output_layout(lay: Layout, kind: str, channels: int, stride: int) -> Layout:
    """The layout of a convolution's output: same grid, gap times the stride, dense."""
    return Layout(
        kind, channels, _out_size(lay.height, stride), _out_size(lay.width, stride),
        lay.gap * stride, lay.grid_h, lay.grid_w, lay.slots,
    )


def _setup(name: str, x: EncTensor, w, stride: int, kind_in: str, kind_out: str):
    """Checks shared by the CA/RA schedules: input layout, kernel, stride; the output layout and
    the taps of the stride-adjusted kernel."""
    lay = x.layout
    if lay.kind != kind_in:
        raise ConvError(f"{name} needs a {kind_in}-packed input, got {lay.kind}")
    w = np.asarray(w, dtype=np.float64)
    R, p = check_kernel(w, stride, lay.channels)
    out_lay = output_layout(lay, kind_out, w.shape[0], stride)
    return lay, w, R, out_lay, _taps(lay, R, p, stride, out_lay.pixel_offsets())


def _ca_index(lay: Layout, offsets: np.ndarray) -> np.ndarray:
    """(m, copies * len(offsets)) slot indices of the m distinct channel positions of a CA
    ciphertext at in-block ``offsets`` (pixel offsets, cell (0, 0))."""
    m, P, Bs = lay.distinct, lay.blocks_per_copy, lay.block
    r = np.arange(m)
    blocks = (r % P)[:, None] + P * np.arange(lay.n_blocks // P)[None, :]
    cells = np.array([lay.cell_offset(e) for e in r // P])
    base = blocks * Bs + cells[:, None]
    return (base[:, :, None] + np.asarray(offsets).reshape(-1)[None, None, :]).reshape(m, -1)


def ca_conv(be, x: EncTensor, w: np.ndarray, stride: int = 1, hoist: bool = False) -> EncTensor:
    """HyPHEN CAConv: CA-packed input (any ``distinct``), RA-packed output; see the module
    docstring.

    Parameters
    ----------
    be : Backend
        The backend that evaluates (and counts) the operations.
    x : EncTensor
        The encrypted input in a CA layout.
    w : array_like, shape (Cout, Cin, R, R)
        Plaintext weights, R = 1 or 3; padding is (R-1)/2.
    stride : {1, 2}
        Stride; the output keeps the grid with the gap multiplied by the stride.
    hoist : bool
        Count the tap rotations of each input ciphertext as one hoisted group.

    Returns
    -------
    EncTensor
        The encrypted output in the RA layout (values at gap cell (0, 0) of each pixel; None
        entries are all-zero ciphertexts).
    """
    lay, w, R, out_lay, taps = _setup("ca_conv", x, w, stride, "CA", "RA")
    Cout, Cin = w.shape[:2]
    m, P, cols = lay.distinct, lay.blocks_per_copy, lay.cell_cols
    idx = [_ca_index(lay, vo) for _, _, _, vo in taps]
    S = be.slots
    rotated = []
    for t, ct in enumerate(x.cts):
        chans = w[:, t * m : min((t + 1) * m, Cin)]
        need = [off for (dy, dx, off, vo) in taps if len(vo) and chans[:, :, dy, dx].any()]
        rotated.append(be.rotate_many(ct, need, hoist) if ct is not None else {})
    outs = []
    for o in range(Cout):
        acc = None
        for t, ct in enumerate(x.cts):
            if ct is None:
                continue
            wv = np.zeros((m, R, R))
            part = w[o, t * m : min((t + 1) * m, Cin)]
            wv[: len(part)] = part
            for k, (dy, dx, off, vo) in enumerate(taps):
                if not len(vo) or not wv[:, dy, dx].any():
                    continue
                plain = np.zeros(S)
                plain[idx[k]] = wv[:, dy, dx][:, None]
                r = rotated[t][off]
                acc = _acc(be, acc, be.multiply_plain(r, be.encode(plain, r)))
        if acc is not None:
            acc = be.rescale(acc)
            steps = ([1 << e for e in range(log2(cols))]
                     + [lay.grid_w << e for e in range(log2(lay.cells // cols))]
                     + [lay.block << e for e in range(log2(P))])
            for s in steps:
                acc = be.add(acc, be.rotate(acc, s))
        outs.append(acc)
    return EncTensor(out_lay, outs)


def ra_conv(be, x: EncTensor, w: np.ndarray, stride: int = 1,
            distinct: int | None = None) -> EncTensor:
    """HyPHEN RAConv: RA-packed input, CA-packed output with ``distinct`` channels per
    ciphertext (replicated, or 2D gap packed above the number of blocks); see the module
    docstring.

    Parameters
    ----------
    be : Backend
        The backend that evaluates (and counts) the operations.
    x : EncTensor
        The encrypted input in the RA layout (read at gap cell (0, 0)).
    w : array_like, shape (Cout, Cin, R, R)
        Plaintext weights, R = 1 or 3; padding is (R-1)/2.
    stride : {1, 2}
        Stride; the output keeps the grid with the gap multiplied by the stride.
    distinct : int, optional
        Distinct output channels per ciphertext ``m`` (power of two); default the number of
        blocks (dense CA).

    Returns
    -------
    EncTensor
        The encrypted output in the CA layout (None entries are all-zero ciphertexts).
    """
    lay, w, R, out_lay, taps = _setup("ra_conv", x, w, stride, "RA", "CA")
    out_lay = with_distinct(out_lay, distinct)
    Cout, Cin = w.shape[:2]
    n, P, Bs, S = lay.n_blocks, out_lay.blocks_per_copy, lay.block, be.slots
    # slots of each block's valid output pixels, pre-rotated by -off: Q = roll(plain, off)
    idx = [(np.arange(n)[:, None] * Bs + vo[None, :] + off) % S for _, _, off, vo in taps]
    sparse = []
    for g in range(-(-Cout // P)):
        wg = np.zeros((P, Cin, R, R))
        part = w[g * P : min((g + 1) * P, Cout)]
        wg[: len(part)] = part
        wg = np.tile(wg, (n // P, 1, 1, 1))
        out = None
        for k, (dy, dx, off, vo) in enumerate(taps):
            if not len(vo):
                continue
            A = None
            for i, ct in enumerate(x.cts):
                if ct is None or not wg[:, i, dy, dx].any():
                    continue
                plain = np.zeros(S)
                plain[idx[k]] = wg[:, i, dy, dx][:, None]
                A = _acc(be, A, be.multiply_plain(ct, be.encode(plain, ct)))
            if A is not None:
                out = _acc(be, out, be.rotate(A, off))
        sparse.append(out)
    outs = []
    for t in range(out_lay.num_ciphertexts):
        acc = None
        for e in range(out_lay.cells):
            g = t * out_lay.cells + e
            if g < len(sparse) and sparse[g] is not None:
                acc = _acc(be, acc, be.rotate(sparse[g], -out_lay.cell_offset(e)))
        outs.append(None if acc is None else be.rescale(acc))
    return EncTensor(out_lay, outs)


def _authors_rotate(be, ct, step: int):
    """A rotation as the baseline's code does it (``memory_save_rotate``): steps 34..55 and
    57..61 (mod slots) as a rotation by 33 and one by the rest."""
    s = int(step) % be.slots
    if 34 <= s <= 55 or 57 <= s <= 61:
        return be.rotate(be.rotate(ct, 33), s - 33)
    return be.rotate(ct, s)


def _mp_copies(be, total, po: int, variant: str):
    """Replicate the first ``S/po`` slots ``po`` times."""
    S = be.slots
    if variant == "authors":
        base = total
        for u in range(1, po):
            total = be.add(total, _authors_rotate(be, base, -u * (S // po)))
        return total
    for e in range(log2(po)):
        total = be.add(total, be.rotate(total, -((S // po) << e)))
    return total


def mp_conv(be, x: EncTensor, w: np.ndarray, stride: int = 1,
            variant: str = "authors") -> EncTensor:
    """Multiplexed parallel convolution (Lee et al.): MP in, MP out; see the module docstring.

    Parameters
    ----------
    be : Backend
        The backend that evaluates (and counts) the operations.
    x : EncTensor
        The encrypted input in the multiplexed (MP) layout.
    w : array_like, shape (Cout, Cin, R, R)
        Plaintext weights, R = 1 or 3; padding is (R-1)/2.
    stride : {1, 2}
        Stride; the output keeps the grid with k multiplied by the stride (even maps only).
    variant : {"authors", "doubling"}
        Counting variant (see the module docstring).

    Returns
    -------
    EncTensor
        The encrypted output in the multiplexed (k * stride) layout (None entries are all-zero
        ciphertexts); with ``"authors"`` its number of sub-blocks is exactly ``ceil(Cout/ko^2)``.
    """
    check_variant(variant)
    lay = x.layout
    if lay.kind != "MP":
        raise ConvError(f"mp_conv needs a multiplexed (MP) input, got {lay.kind}")
    w = np.asarray(w, dtype=np.float64)
    R, p = check_kernel(w, stride, lay.channels)
    Cout, Cin = w.shape[:2]
    h, wd, k = lay.height, lay.width, lay.gap
    if stride == 2 and (h % 2 or wd % 2):
        raise ConvError(
            f"multiplexed stride-2 convolution needs an even map, got {h}x{wd}"
        )
    S, B, gw = lay.slots, lay.block, lay.grid_w
    ti, pi = lay.sub_blocks, lay.copies
    span = S // pi
    ko = k * stride
    authors = variant == "authors"
    out_lay = Layout("MP", Cout, h // stride, wd // stride, ko, lay.grid_h, gw, S,
                     t=-(-Cout // (ko * ko)) if authors else 0)
    check_fits(out_lay)
    q = -(-Cout // pi)
    rotate = (lambda ct, s: _authors_rotate(be, ct, s)) if authors else be.rotate

    # tap validity over input pixels, and slot shifts (one pixel = k grid cells)
    taps = []
    for dy in range(R):
        for dx in range(R):
            rows = np.arange(h) + dy - p
            cols = np.arange(wd) + dx - p
            valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < wd))[None, :]
            taps.append((dy, dx, k * ((dy - p) * gw + (dx - p)), valid.astype(np.float64)))
    rotated: dict = {}

    def rot(off):
        if off not in rotated:
            rotated[off] = rotate(x.cts[0], off)
        return rotated[off]

    if authors:
        # the sum of copy u sits at its sub-block 0, cell (0, 0) of every output pixel; the
        # output pixel (i', j') of channel o goes to sub-block o // ko^2, cell of o
        out_pix = np.zeros((h // stride, ko, wd // stride, ko))
        out_pix[:, 0, :, 0] = 1.0
        out_pix = out_pix.reshape(-1)
        red = [1 << e for e in range(log2(k))] + [gw << e for e in range(log2(k))]
    else:
        # the sum of copy u sits at sub-block ti-1, cell (k-1, k-1) of every output pixel
        sel = np.zeros((ti, h, k, wd, k))
        sel[ti - 1, ::stride, k - 1, ::stride, k - 1] = 1.0
        sel = sel.reshape(-1)
        red = ([1 << e for e in range(log2(k))] + [gw << e for e in range(log2(k))]
               + [B << e for e in range(log2(ti))])

    total = None
    if x.cts[0] is not None:
        for grp in range(q):
            wv = np.zeros((pi, ti * k * k, R, R))
            o_hi = min((grp + 1) * pi, Cout)
            wv[: o_hi - grp * pi, :Cin] = w[grp * pi : o_hi]
            acc = None
            for dy, dx, off, valid in taps:
                U = wv[:, :, dy, dx].reshape(pi, ti, 1, k, 1, k) * valid[None, None, :, None, :, None]
                plain = np.zeros((pi, span))
                plain[:, : ti * B] = U.reshape(pi, -1)
                plain = plain.reshape(-1)
                if not plain.any():
                    continue
                r = rot(off)
                acc = _acc(be, acc, be.multiply_plain(r, be.encode(plain, r)))
            if acc is None:
                continue
            acc = be.rescale(acc)
            for step in red:
                acc = be.add(acc, rotate(acc, step if authors else -step))
            if authors:
                if ti & (ti - 1) == 0:
                    for e in range(log2(ti)):
                        acc = be.add(acc, rotate(acc, B << e))
                else:
                    base = acc
                    for tt in range(1, ti):
                        acc = be.add(acc, rotate(base, B * tt))
            for u in range(o_hi - grp * pi):
                o = grp * pi + u
                dst = (o // (ko * ko)) * B + ((o % (ko * ko)) // ko) * gw + o % ko
                if authors:
                    mask = np.zeros(S)
                    mask[dst : dst + len(out_pix)] = out_pix[: S - dst]
                    r = rotate(acc, u * span - dst)
                    placed = be.multiply_plain(r, be.encode(mask, r))
                else:
                    mask = np.zeros(S)
                    mask[u * span : u * span + ti * B] = sel
                    src = u * span + (ti - 1) * B + (k - 1) * (gw + 1)
                    placed = rotate(be.multiply_plain(acc, be.encode(mask, acc)), src - dst)
                total = _acc(be, total, placed)
    if total is not None:
        total = _mp_copies(be, be.rescale(total), out_lay.copies, variant)
    return EncTensor(out_lay, [total])


def mp_downsample(be, x: EncTensor, variant: str = "authors") -> EncTensor:
    """Option-A shortcut of a stride-2 block in the multiplexed layout: every second pixel of
    the C input channels, placed as channels ``C/2 .. 3C/2 - 1`` of a 2C-channel map (zeros
    elsewhere) in the multiplexed layout with ``k_out = 2k``; see the module docstring.

    Raises
    ------
    ConvError
        If the input is not multiplexed, its map is not even or C is odd.
    """
    check_variant(variant)
    lay = x.layout
    if lay.kind != "MP":
        raise ConvError(f"mp_downsample needs a multiplexed (MP) input, got {lay.kind}")
    C, h, wd, k = lay.channels, lay.height, lay.width, lay.gap
    if h % 2 or wd % 2 or C % 2:
        raise ConvError(f"mp_downsample needs an even map and channel count, got {C}x{h}x{wd}")
    S, B, gw, ti = lay.slots, lay.block, lay.grid_w, lay.sub_blocks
    ko, ho, wo, co = 2 * k, h // 2, wd // 2, 2 * C
    out_lay = Layout("MP", co, ho, wo, ko, lay.grid_h, gw, S,
                     t=-(-co // (ko * ko)) if variant == "authors" else 0)
    check_fits(out_lay)
    rows, cols = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
    groups: dict = {}
    for a in range(k):
        for tb in range(ti):
            for b in range(k):
                c = tb * k * k + a * k + b
                if c >= C:
                    continue
                src = tb * B + (2 * k * rows + a) * gw + 2 * k * cols + b
                c2 = c + C // 2
                dst = ((c2 // (ko * ko)) * B + (ko * rows + (c2 % (ko * ko)) // ko) * gw
                       + ko * cols + c2 % ko)
                shift = int(src.flat[0] - dst.flat[0])
                groups.setdefault((a, tb, shift), []).append(src.reshape(-1))
    total = None
    if x.cts[0] is not None:
        for (_, _, shift), srcs in groups.items():
            mask = np.zeros(S)
            mask[np.concatenate(srcs)] = 1.0
            placed = be.multiply_plain(x.cts[0], be.encode(mask, x.cts[0]))
            total = _acc(be, total, _authors_rotate(be, placed, shift) if variant == "authors"
                         else be.rotate(placed, shift))
    if total is not None:
        total = _mp_copies(be, be.rescale(total), out_lay.copies, variant)
    return EncTensor(out_lay, [total])


def relayout_plan(lay: Layout, out_lay: Layout, subsample: bool = False):
    """The groups of `ca_relayout`: ``({(source ct, target ct, shift): source slot indices},
    fill steps)``; the fill steps replicate a target whose channels repeat more often."""
    if lay.kind != "CA" or out_lay.kind != "CA":
        raise ConvError(f"ca_relayout maps CA to CA, got {lay.kind} -> {out_lay.kind}")
    s = 2 if subsample else 1
    if (out_lay.grid_h, out_lay.grid_w, out_lay.slots) != (lay.grid_h, lay.grid_w, lay.slots) or (
        out_lay.gap != lay.gap * s or out_lay.height != _out_size(lay.height, s)
        or out_lay.width != _out_size(lay.width, s)
    ):
        raise ConvError(f"cannot relayout {lay.describe()} to {out_lay.describe()}"
                        f"{' (subsampled)' if subsample else ''}")
    if out_lay.channels < lay.channels:
        raise ConvError(f"ca_relayout cannot drop channels: {lay.channels} -> {out_lay.channels}")
    keep = out_lay.pixel_offsets().reshape(-1)
    Bs, n, S = lay.block, lay.n_blocks, lay.slots
    P_in, P_out = lay.blocks_per_copy, out_lay.blocks_per_copy
    src_every = P_out if P_out % P_in == 0 else P_in
    groups: dict = {}
    for c in range(lay.channels):
        ts, bs, cs = lay.position(c)
        td, bd, cd = out_lay.position(c)
        shift = ((bs - bd) * Bs + cs - cd) % S
        blocks = bs + src_every * np.arange(n // src_every)
        groups.setdefault((ts, td, shift), []).append((blocks[:, None] * Bs + cs + keep[None, :]).reshape(-1))
    fill = [] if P_out % P_in == 0 else [(P_out * Bs) << e for e in range(log2(P_in // P_out))]
    return {k: np.concatenate(v) for k, v in groups.items()}, fill


def ca_relayout(be, x: EncTensor, out_lay: Layout, subsample: bool = False) -> EncTensor:
    """A CA tensor in another CA layout: channel c of ``x`` becomes channel c of ``out_lay``
    (which may have more channels: those are zero), every second pixel with ``subsample`` (the
    option-A shortcut of a stride-2 block, ``out_lay`` then having twice the gap); see the
    module docstring. Costs one level.

    Raises
    ------
    ConvError
        If a layout is not CA, the grids differ, ``out_lay`` has fewer channels or its pixels
        are not those of ``x`` (or every second one with ``subsample``).
    """
    groups, fill = relayout_plan(x.layout, out_lay, subsample)
    outs = [None] * out_lay.num_ciphertexts
    for (ts, td, shift), idx in groups.items():
        ct = x.cts[ts]
        if ct is None:
            continue
        mask = np.zeros(be.slots)
        mask[idx] = 1.0
        outs[td] = _acc(be, outs[td], be.rotate(be.multiply_plain(ct, be.encode(mask, ct)), shift))
    for i, ct in enumerate(outs):
        if ct is not None:
            for st in fill:
                ct = be.add(ct, be.rotate(ct, -st))
            outs[i] = be.rescale(ct)
    return EncTensor(out_lay, outs)


def add_tensors(be, a: EncTensor, b: EncTensor) -> EncTensor:
    """Slot-wise sum of two encrypted maps in the same layout (None = zeros)."""
    if a.layout != b.layout:
        raise ConvError(f"cannot add {a.layout.describe()} and {b.layout.describe()}")
    cts = [
        y if x is None else x if y is None else be.add(x, y)
        for x, y in zip(a.cts, b.cts, strict=True)
    ]
    return EncTensor(a.layout, cts)
