"""``cuconv_gpu``: direct convolution on the NCHW input, no data transformation (cuConv).

After Jordà, Valero-Lara and Peña, "cuConv: CUDA implementation of convolution for CNN
inference" (Cluster Computing, 2022): consecutive threads compute consecutive output pixels of
one image, so the reads of each input row coalesce; the work is spread over output-channel
blocks and over the filter's taps, each (block of filters, group of taps) producing a partial
sum, and a second pass adds the partials of the R S taps (skipped when one program covers all
taps). For 1x1 filters, which have one tap, convolab splits the channel blocks the same way.
That split is what fills a GPU on the small-batch, small-image layers where GEMM-shaped
algorithms have too few output tiles (batch 1, OH OW <= 196).

Two paths:

- tensor cores (``tl.dot``; TF32 / float16 / bfloat16, or IEEE fp32 on the FMA units), when the
  group has >= 16 input and output channels: a program owns a BK x BP tile of (output channels
  of one group) x (output pixels of one image) and, for each tap of its tap group and each
  BC-channel block, multiplies the packed filter tile ``Wt[g, tap][k, c]`` by the input tile
  ``x[n, c, oh sh + r dh - pt, ow sw + s dw - pl]`` read straight from the NCHW tensor
  (zero-masked padding);
- scalar FMA, for depthwise and narrow groups: a BK x BP tile over all output channels (each row
  reads its own group's channels), one multiply-add per (channel, tap) into float32 accumulators.

Partials (float32, [split, N, K, OH OW]) are added in a fixed order by `convolab.gpu._reduce`:
the same plan gives the same bits on every run. Filter packed once per plan to ``[G][R S][Kg][Cg]``
(dot path) or kept as (K, Cg, R, S) (FMA path).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..spec import ConvSpec
from ._common import Config, DeviceInfo, cdiv, dot_precision, fill_split, smem_bytes, split_ranges
from ._reduce import reduce_splits
from ._tiles import store_channel_tile
from .implicit_gemm import pad_last

NAME = "cuconv_gpu"

#: index-only arguments are not specialised; strides, the padded filter row Cgp and the group
#: offsets are (their divisibility by 16 lets Triton vectorise)
_SHAPE_ARGS = ["Cg", "Kg", "H", "W", "OH", "OW", "R", "S", "sh", "sw", "pt", "pl", "dh", "dw", "N",
               "per_split", "splits"]


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _cuconv_dot_kernel(
    x, w, bias, out, part,
    Cg, Kg, H, W, OH, OW, R, S, sh, sw, pt, pl, dh, dw, N, per_split, splits,
    K, Cgp, swg, sxg, sxn, sxc, sxh, sxw, son, soc, soh, sow,
    BK: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_ns = tl.program_id(2)
    nkb = (Kg + BK - 1) // BK
    g = pid_k // nkb
    rk = (pid_k % nkb) * BK + tl.arange(0, BK)
    n = pid_ns // splits
    sk = pid_ns % splits
    P = OH * OW
    rp = pid_p * BP + tl.arange(0, BP)
    rc = tl.arange(0, BC)
    kmask = rk < Kg
    pmask = rp < P
    oh = rp // OW
    ow = rp % OW
    xg = x + n.to(tl.int64) * sxn + g.to(tl.int64) * sxg
    wg = w + g.to(tl.int64) * swg
    cbs = (Cg + BC - 1) // BC

    acc = tl.zeros((BK, BP), dtype=tl.float32)
    # iterations run over (tap, channel block); a split owns a range of them (whole taps when the
    # split divides the taps: cuConv's per-tap partial sums; channel blocks for 1x1 filters)
    for i in range(0, per_split):  # splits divide the steps evenly (`split_ranges`)
        it = sk * per_split + i
        tap = it // cbs
        c = (it - tap * cbs) * BC + rc
        r = tap // S
        s = tap - r * S
        ih = oh * sh + r * dh - pt
        iw = ow * sw + s * dw - pl
        pm = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        cm = c < Cg
        xt = tl.load(xg + (c * sxc)[:, None] + (ih * sxh + iw * sxw)[None, :],
                     mask=cm[:, None] & pm[None, :], other=0.0)
        # packed rows are zero-padded to Cgp: masking with Cgp keeps the mask 16-constant
        wt = tl.load(wg + (tap * Kg + rk)[:, None] * Cgp + c[None, :], mask=kmask[:, None] & (c < Cgp)[None, :],
                     other=0.0)
        acc = tl.dot(wt, xt, acc, input_precision=PREC)

    store_channel_tile(acc, out, part, bias, g * Kg + rk, rp, kmask, pmask, sk, n, N, K, P, oh, ow,
                       son, soc, soh, sow, HAS_BIAS, SPLIT)


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _cuconv_fma_kernel(
    x, w, bias, out, part,
    Cg, Kg, H, W, OH, OW, R, S, sh, sw, pt, pl, dh, dw, N, per_split, splits,
    K, Cgp, swg, sxg, sxn, sxc, sxh, sxw, son, soc, soh, sow,
    BK: tl.constexpr, BP: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_ns = tl.program_id(2)
    n = pid_ns // splits
    sk = pid_ns % splits
    P = OH * OW
    rk = pid_k * BK + tl.arange(0, BK)
    rp = pid_p * BP + tl.arange(0, BP)
    kmask = rk < K
    pmask = rp < P
    oh = rp // OW
    ow = rp % OW
    # each output channel reads the Cg input channels of its own group
    xk = x + n.to(tl.int64) * sxn + ((rk // Kg) * Cg).to(tl.int64) * sxc
    RS = R * S
    acc = tl.zeros((BK, BP), dtype=tl.float32)
    for i in range(0, per_split):
        tap = sk * per_split + i
        r = tap // S
        s = tap - r * S
        ih = oh * sh + r * dh - pt
        iw = ow * sw + s * dw - pl
        pm = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        m2 = kmask[:, None] & pm[None, :]
        pix = (ih * sxh + iw * sxw)[None, :]
        for c in range(0, Cg):
            xv = tl.load(xk[:, None] + c * sxc + pix, mask=m2, other=0.0).to(tl.float32)
            wv = tl.load(w + (rk * Cg + c) * RS + tap, mask=kmask, other=0.0).to(tl.float32)
            acc += wv[:, None] * xv

    store_channel_tile(acc, out, part, bias, rk, rp, kmask, pmask, sk, n, N, K, P, oh, ow,
                       son, soc, soh, sow, HAS_BIAS, SPLIT)


def supports(spec: ConvSpec) -> str | None:
    return None


def uses_dot(spec: ConvSpec) -> bool:
    """The tensor-core path needs >= 16 input and output channels per group (``tl.dot``'s minimum)."""
    return spec.Cg >= 16 and spec.Kg >= 16


def pack(spec: ConvSpec, w: torch.Tensor, kmajor: bool = True) -> torch.Tensor:
    """Dot path: (K, Cg, R, S) -> [G][R S][Kg][Cgp] (rows padded to 16 channels; the filter is the A
    operand here, K-major for every precision); FMA path: as is."""
    if not uses_dot(spec):
        return w.contiguous()
    G, Kg = spec.groups, spec.Kg
    wp = w.reshape(G, Kg, spec.Cg, spec.R, spec.S).permute(0, 3, 4, 1, 2).reshape(G, spec.R * spec.S, Kg, spec.Cg)
    return pad_last(wp, 16)


def _iters(spec: ConvSpec, cfg: Config) -> int:
    """Reduction steps: taps x channel blocks (tensor-core path) or taps (FMA path)."""
    t = cfg.tiles
    return spec.R * spec.S * (cdiv(spec.Cg, t["BC"]) if "BC" in t else 1)


def _splits(spec: ConvSpec, cfg: Config) -> tuple[int, int]:
    """(steps per split, split count)."""
    return split_ranges(_iters(spec, cfg), cfg.split)


def workspace_bytes(spec: ConvSpec, cfg: Config, itemsize: int) -> int:
    split = _splits(spec, cfg)[1]
    return 0 if split == 1 else split * spec.N * spec.K * spec.OH * spec.OW * 4


def shared_memory(cfg: Config, itemsize: int) -> int:
    t = cfg.tiles
    if "BC" not in t:
        return 0
    return smem_bytes(t["BK"] * t["BC"], t["BC"] * t["BP"], itemsize, cfg.num_stages)


def _programs(spec: ConvSpec, cfg: Config) -> int:
    t = cfg.tiles
    P = spec.OH * spec.OW
    kblocks = spec.groups * cdiv(spec.Kg, t["BK"]) if "BC" in t else cdiv(spec.K, t["BK"])
    return cdiv(P, t["BP"]) * kblocks * spec.N


def _fill_split(spec: ConvSpec, cfg: Config, dev: DeviceInfo) -> int:
    """Splits for about two waves of programs (cuConv's per-tap partial sums; for 1x1 filters,
    channel blocks), at least two steps each."""
    return fill_split(_programs(spec, cfg), _iters(spec, cfg), dev.sms, min_steps=1)


def candidates(spec: ConvSpec, dtype: str, dev: DeviceInfo) -> list[Config]:
    """Up to four tile shapes, each unsplit and split into tap groups that fill the device."""
    item = 4 if dtype == "float32" else 2
    base = []
    if uses_dot(spec):
        bc = min(32 if item == 4 else 64, max(16, triton.next_power_of_2(spec.Cg)))
        pix = max(16, triton.next_power_of_2(spec.OH * spec.OW))
        for bk, bp, warps in ((64, 64, 4), (128, 64, 8), (64, 128, 8), (32, 64, 4)):
            if bk > 64 and spec.Kg <= 64:
                continue
            cfg = Config.make(warps, 3, 1, BK=bk, BP=min(bp, pix), BC=bc)
            if shared_memory(cfg, item) <= dev.smem and cfg not in base:
                base.append(cfg)
    else:
        for bk, bp in ((16, 64), (32, 64), (16, 128), (8, 128)):
            base.append(Config.make(4, 1, 1, BK=bk, BP=bp))
    out = []
    for cfg in base:
        for s in sorted({1, _fill_split(spec, cfg, dev)}):
            out.append(Config(cfg.block, cfg.num_warps, cfg.num_stages, s))
    return out


def default(spec: ConvSpec, dtype: str, dev: DeviceInfo) -> Config:
    """64 x 64 (channels x pixels) tiles on the tensor-core path, 16 x 64 on the FMA path; tap
    groups to fill the device."""
    item = 4 if dtype == "float32" else 2
    if uses_dot(spec):
        bc = min(32 if item == 4 else 64, max(16, triton.next_power_of_2(spec.Cg)))
        bp = max(16, min(64, triton.next_power_of_2(spec.OH * spec.OW)))
        cfg = Config.make(4, 3, 1, BK=64, BP=bp, BC=bc)
    else:
        cfg = Config.make(4, 1, 1, BK=16, BP=64)
    return Config(cfg.block, cfg.num_warps, cfg.num_stages, _fill_split(spec, cfg, dev))


def launch(spec: ConvSpec, wp: torch.Tensor, x: torch.Tensor, bias, out: torch.Tensor, cfg: Config,
           dtype: str, precision: str) -> None:
    t = cfg.tiles
    per, split = _splits(spec, cfg)
    P = spec.OH * spec.OW
    part = (torch.empty((split, spec.N, spec.K, P), device=x.device, dtype=torch.float32)
            if split > 1 else out)
    common = (
        x, wp, bias if bias is not None else wp, out, part,
        spec.Cg, spec.Kg, spec.H, spec.W, spec.OH, spec.OW, spec.R, spec.S, spec.stride[0], spec.stride[1],
        spec.padding[2], spec.padding[0], spec.dilation[0], spec.dilation[1], spec.N, per, split,
        spec.K, wp.shape[-1], wp.stride(0), spec.Cg * x.stride(1), *x.stride(), *out.stride(),
    )
    if "BC" in t:
        grid = (cdiv(P, t["BP"]), spec.groups * cdiv(spec.Kg, t["BK"]), spec.N * split)
        _cuconv_dot_kernel[grid](
            *common, BK=t["BK"], BP=t["BP"], BC=t["BC"], PREC=dot_precision(dtype, precision),
            HAS_BIAS=bias is not None, SPLIT=split > 1, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    else:
        grid = (cdiv(P, t["BP"]), cdiv(spec.K, t["BK"]), spec.N * split)
        _cuconv_fma_kernel[grid](
            *common, BK=t["BK"], BP=t["BP"], HAS_BIAS=bias is not None, SPLIT=split > 1,
            num_warps=cfg.num_warps, num_stages=1,
        )
    if split > 1:
        reduce_splits(part, split, bias, out, layout=1)
