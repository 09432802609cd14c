"""Convolution schedules on encrypted slot vectors: CAConv, RAConv and multiplexed (MPConv).

All three compute PyTorch's cross-correlation with "same" padding, ``p = (R-1)/2``:
``y[o, i', j'] = sum_{c, dy, dx} w[o, c, dy, dx] * x[c, s*i' + dy - p, s*j' + dx - p]`` for
R in {1, 3} and stride s in {1, 2}, written only in backend operations (see `backend`). The
layouts are those of `layout`; a tap (dy, dx) is a uniform slot shift ``off``, the boundary is
a 0/1 mask folded into the weight plaintexts. Costs for a 3x3 layer (T = 8 non-centre taps,
n blocks per ciphertext):

- ``ca_conv`` (HyPHEN CAConv; CA in, RA out): rotate each input ciphertext by the 8 tap
  offsets; per output channel o, ``P_o = sum_{t, tap} rot(ct_t, off) * M[o, t, tap]`` (block j
  of M holds ``w[o, t*n + j, tap]`` times the tap's boundary mask), rescale, then
  rotate-and-sum over the blocks (steps block, 2*block, ...) so every block holds the sum.
  rot = 8 ceil(Cin/n) + Cout log2 n, PMult = 9 ceil(Cin/n) Cout, depth 1.
- ``ra_conv`` (HyPHEN RAConv; RA in, CA out, rotations moved to the output side): per output
  ciphertext g and tap, ``A = sum_i ct_i * Q`` where Q is the masked weight block pattern
  pre-rotated by ``-off``; rescale; ``out_g = sum_tap rot(A, off)``.
  rot = 8 ceil(Cout/n), PMult = 9 Cin ceil(Cout/n), depth 1.
- ``mp_conv`` (multiplexed parallel convolution, Lee et al., ICML 2022; MP in, MP out): 8
  shared tap rotations; for each of ``q = ceil(Cout/p)`` groups (copy u of the input computes
  output channel ``group*p + u``): 9 PMults, a rotate-and-sum over the k^2 multiplexed
  positions and the t sub-blocks (2 log2 k + log2 t rotations), then for each copy one mask
  PMult and one rotation that places the channel at its multiplexed output position
  ("BeforeCopy" = p); finally log2 p_out rotations replicate the result ("AfterCopy").
  rot = 8 + q (2 log2 k + log2 t + p) + log2 p_out, PMult = q (9 + p), depth 2.
  The rotate-and-sum accumulates towards the last multiplexed position (negative steps),
  so each of the p placements of a group is a real shift and the counts equal the formula
  above. The public C++ implementation accumulates towards the first position, so its very
  first placement is a zero shift that it skips (one rotation fewer per layer), and it
  replicates with p_out - 1 rotations instead of log2 p_out.

A product whose plaintext is all zero (e.g. a vertical tap of a one-row map) is skipped and
not counted, and a rotation is only done when its result is used; in a ciphertext list,
None stands for a ciphertext of zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConvError
from .layout import Layout, check_fits


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


def _out_size(n: int, stride: int) -> int:
    return (n - 1) // stride + 1


def _taps(lay: Layout, R: int, p: int, stride: int, out_off: np.ndarray):
    """(dy, dx, slot offset, block mask over the output pixel offsets) for each tap."""
    H, W = lay.height, lay.width
    OH, OW = out_off.shape
    taps = []
    for dy in range(R):
        for dx in range(R):
            rows = np.arange(OH) * stride + dy - p
            cols = np.arange(OW) * stride + dx - p
            valid = ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]
            mask = np.zeros(lay.block)
            mask[out_off[valid]] = 1.0
            off = lay.gap * ((dy - p) * lay.grid_w + (dx - p))
            taps.append((dy, dx, off, mask))
    return taps


def _strided(lay: Layout, kind: str, channels: int, stride: int) -> Layout:
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
    out_lay = _strided(lay, kind_out, w.shape[0], stride)
    return lay, w, R, out_lay, _taps(lay, R, p, stride, out_lay.pixel_offsets())


def ca_conv(be, x: EncTensor, w: np.ndarray, stride: int = 1) -> EncTensor:
    """HyPHEN CAConv: CA-packed input, RA-packed output; see the module docstring.

    Parameters
    ----------
    be : Backend
        The backend that evaluates (and counts) the operations.
    x : EncTensor
        The encrypted input in the CA layout.
    w : array_like, shape (Cout, Cin, R, R)
        Plaintext weights, R = 1 or 3; padding is (R-1)/2.
    stride : {1, 2}
        Stride; the output keeps the grid with the gap multiplied by the stride.

    Returns
    -------
    EncTensor
        The encrypted output in the RA layout (None entries are all-zero ciphertexts).
    """
    lay, w, R, out_lay, taps = _setup("ca_conv", x, w, stride, "CA", "RA")
    Cout, Cin = w.shape[:2]
    n, Bs = lay.n_blocks, lay.block
    rotated: dict = {}

    def rot(t, off):
        if (t, off) not in rotated:
            rotated[t, off] = be.rotate(x.cts[t], off)
        return rotated[t, off]

    outs = []
    for o in range(Cout):
        acc = None
        for t, ct in enumerate(x.cts):
            if ct is None:
                continue
            chans = w[o, t * n : min((t + 1) * n, Cin)]
            wv = np.zeros((n, R, R))
            wv[: len(chans)] = chans
            for dy, dx, off, mask in taps:
                plain = (wv[:, dy, dx][:, None] * mask[None, :]).reshape(-1)
                if not plain.any():
                    continue
                r = rot(t, off)
                acc = _acc(be, acc, be.multiply_plain(r, be.encode(plain, r)))
        if acc is not None:
            acc = be.rescale(acc)
            for e in range(n.bit_length() - 1):
                acc = be.add(acc, be.rotate(acc, Bs << e))
        outs.append(acc)
    return EncTensor(out_lay, outs)


def ra_conv(be, x: EncTensor, w: np.ndarray, stride: int = 1) -> EncTensor:
    """HyPHEN RAConv: RA-packed input, CA-packed output; see the module docstring.

    Parameters
    ----------
    be : Backend
        The backend that evaluates (and counts) the operations.
    x : EncTensor
        The encrypted input in the RA layout.
    w : array_like, shape (Cout, Cin, R, R)
        Plaintext weights, R = 1 or 3; padding is (R-1)/2.
    stride : {1, 2}
        Stride; the output keeps the grid with the gap multiplied by the stride.

    Returns
    -------
    EncTensor
        The encrypted output in the CA layout (None entries are all-zero ciphertexts).
    """
    lay, w, R, out_lay, taps = _setup("ra_conv", x, w, stride, "RA", "CA")
    Cout, Cin = w.shape[:2]
    n = lay.n_blocks
    outs = []
    for g in range(out_lay.num_ciphertexts):
        wg = np.zeros((n, Cin, R, R))
        part = w[g * n : min((g + 1) * n, Cout)]
        wg[: len(part)] = part
        out = None
        for dy, dx, off, mask in taps:
            A = None
            for i, ct in enumerate(x.cts):
                if ct is None:
                    continue
                plain = (wg[:, i, dy, dx][:, None] * mask[None, :]).reshape(-1)
                if not plain.any():
                    continue
                A = _acc(be, A, be.multiply_plain(ct, be.encode(np.roll(plain, off), ct)))
            if A is not None:
                out = _acc(be, out, be.rotate(be.rescale(A), off))
        outs.append(out)
    return EncTensor(out_lay, outs)


def mp_conv(be, x: EncTensor, w: np.ndarray, stride: int = 1) -> EncTensor:
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

    Returns
    -------
    EncTensor
        The encrypted output in the multiplexed (k * stride) layout (None entries are all-zero ciphertexts).
    """
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
    out_lay = Layout("MP", Cout, h // stride, wd // stride, ko, lay.grid_h, gw, S)
    check_fits(out_lay)
    q = -(-Cout // pi)

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
            rotated[off] = be.rotate(x.cts[0], off)
        return rotated[off]

    # placement masks: the reduced value of copy u sits at sub-block ti-1, cell (k-1, k-1)
    # of every output pixel (rows/columns k*stride*i')
    sel = np.zeros((ti, h, k, wd, k))
    sel[ti - 1, ::stride, k - 1, ::stride, k - 1] = 1.0
    sel = sel.reshape(-1)

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
            for step in ([1 << e for e in range(k.bit_length() - 1)]
                         + [gw << e for e in range(k.bit_length() - 1)]
                         + [B << e for e in range(ti.bit_length() - 1)]):
                acc = be.add(acc, be.rotate(acc, -step))
            for u in range(o_hi - grp * pi):
                o = grp * pi + u
                mask = np.zeros(S)
                mask[u * span : u * span + ti * B] = sel
                placed = be.multiply_plain(acc, be.encode(mask, acc))
                src = u * span + (ti - 1) * B + (k - 1) * (gw + 1)
                dst = (o // (ko * ko)) * B + ((o % (ko * ko)) // ko) * gw + o % ko
                total = _acc(be, total, be.rotate(placed, src - dst))
    if total is not None:
        total = be.rescale(total)
        po = out_lay.copies
        for e in range(po.bit_length() - 1):
            total = be.add(total, be.rotate(total, -((S // po) << e)))
    return EncTensor(out_lay, [total])
