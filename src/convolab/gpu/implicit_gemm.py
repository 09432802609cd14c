"""``implicit_gemm_gpu``: channels-last implicit GEMM in Triton.

The convolution as a GEMM per group g, never materialised:
``Y[m, k] = sum_{r, s, c} X[m; r, s, c] * Wp[g, (r S + s) Cg + c, k]`` with rows
m = (n, oh, ow) (M = N OH OW), columns k in the group's Kg output channels and the reduction over
the R S taps times the Cg channels. Row m's operand for tap (r, s) is the input pixel
``(oh sh + r dh - pt, ow sw + s dw - pl)``, masked to zero in the padding; a program loads a
BM x BK tile of those (one channel block of one tap) and a BK x BN tile of the packed filter,
and accumulates their ``tl.dot`` in float32, for every tap and channel block in order. The
input is read through its strides: a channels-last tensor (``torch.channels_last``, NHWC in
memory) gives contiguous BK-channel rows; an NCHW tensor works too, with strided rows.

Filter packed once per plan: K-major ``[G][Kg][R S Cg]`` for the tensor-core paths (TF32
instructions need that layout for both operands; 16-bit ones take it too), N-major
``[G][R S Cg][Kg]`` for IEEE float32, whose dot runs on the FMA units (see `kmajor`). On the
tensor-core paths a 1x1, stride-1, unpadded convolution of a channels-last input skips the index
arithmetic: its A operand is the input itself. Programs run
over (BM x BN tiles in GROUP_M-swizzled order, groups, splits). With split > 1 the tap x channel
iterations are cut into ranges, each program writes a float32 partial, and
`convolab.gpu._reduce` adds them in a fixed order: no atomics, so a pinned plan gives the same
bits on every run. Workspace: none, or split x N K OH OW float32 partials.

Source: the implicit-GEMM formulation of cuDNN (Chetlur et al., 2014) and of the im2win GPU
paper's GEMM phase (Lu et al., Euro-Par 2023).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..spec import ConvSpec
from ._common import Config, DeviceInfo, cdiv, dot_precision, fill_split, smem_bytes, split_ranges
from ._reduce import reduce_splits
from ._tiles import pixel_tile, store_pixel_tile

NAME = "implicit_gemm_gpu"

#: index-only arguments are not specialised (one compiled kernel serves many layers); those that
#: set addresses or the channel masks (strides, Cg, the padded filter row KT, K of the partials)
#: are, so that Triton knows their divisibility by 16, vectorises the loads and pipelines them
#: (with Cg unspecialised the channel mask's constancy is unknown: scalar loads, no pipelining)
_SHAPE_ARGS = ["N", "H", "W", "Kg", "OH", "OW", "M", "R", "S", "sh", "sw", "pt", "pl", "dh", "dw",
               "per_split"]


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _igemm_kernel(
    x, w, bias, out, part,
    N, H, W, Cg, Kg, OH, OW, M, R, S, sh, sw, pt, pl, dh, dw, per_split,
    K, WS, swg, sxg, sog, sxn, sxc, sxh, sxw, son, soc, soh, sow,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    PREC: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, DENSE: tl.constexpr, KMAJOR: tl.constexpr,
):
    g, sk, rm, rn, rk, mmask, nmask, n, oh, ow = pixel_tile(M, Kg, OH, OW, BM, BN, BK, GROUP_M)
    ih0 = oh * sh - pt
    iw0 = ow * sw - pl
    if DENSE:  # 1x1, stride 1, no padding, rows of sxw channels back to back: A is a plain matrix
        xrow = x + rm.to(tl.int64) * sxw + g.to(tl.int64) * sxg
    else:
        xrow = x + n.to(tl.int64) * sxn + g.to(tl.int64) * sxg
    wg = w + g.to(tl.int64) * swg
    cb_count = (Cg + BK - 1) // BK

    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for i in range(0, per_split):  # splits divide the steps evenly (`split_ranges`)
        it = sk * per_split + i
        tap = it // cb_count
        c = (it - tap * cb_count) * BK + rk
        r = tap // S
        s = tap - r * S
        cm = c < Cg
        if DENSE:
            a = tl.load(xrow[:, None] + c[None, :], mask=mmask[:, None] & cm[None, :], other=0.0)
        else:
            ih = ih0 + r * dh
            iw = iw0 + s * dw
            vm = mmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(xrow[:, None] + (ih * sxh + iw * sxw)[:, None] + c[None, :] * sxc,
                        mask=vm[:, None] & cm[None, :], other=0.0)
        kk = tap * Cg + c
        if KMAJOR:  # tensor cores: [Kg][WS] rows, the B tile loaded as [BN, BK] and transposed in place
            b = tl.load(wg + rn[:, None] * WS + kk[None, :], mask=nmask[:, None] & cm[None, :], other=0.0)
            acc = tl.dot(a, tl.trans(b), acc, input_precision=PREC)
        else:  # IEEE fp32 on the FMA units: [R S Cg][WS] rows, zero-padded, so masking with WS keeps
            # the mask 16-constant
            b = tl.load(wg + kk[:, None] * WS + rn[None, :], mask=cm[:, None] & (rn < WS)[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PREC)

    store_pixel_tile(acc, out, part, bias, rm, rn, mmask, nmask, g, sk, n, oh, ow, M, K, Kg,
                     son, sog, soc, soh, sow, HAS_BIAS, SPLIT)


def supports(spec: ConvSpec) -> str | None:
    return None


def pack(spec: ConvSpec, w: torch.Tensor, kmajor: bool = True) -> torch.Tensor:
    """(K, Cg, R, S) -> K-major ``[G][Kg][R S Cg]`` (tensor cores) or N-major ``[G][R S Cg][Kg]``
    (IEEE fp32 on the FMA units), the reduction in (r, s, c) order, rows zero-padded to a multiple
    of 16 elements (aligned rows)."""
    G, Kg = spec.groups, spec.Kg
    wp = w.reshape(G, Kg, spec.Cg, spec.R, spec.S).permute(0, 1, 3, 4, 2).reshape(G, Kg, spec.R * spec.S * spec.Cg)
    return pad_last(wp if kmajor else wp.transpose(1, 2), 16)


def kmajor(dtype: str, precision: str) -> bool:
    """Tensor-core paths take the filter K-major (TF32 wgmma requires it for both operands);
    IEEE float32, whose ``tl.dot`` runs on the FMA units, takes it N-major: measured on an H200,
    K-major with a transposed tile ran IEEE fp32 at half speed (ResNet-50 3x3 64@56, batch 32:
    0.388 vs 0.200 ms) while it raised TF32 from 0.36x to 0.70x cuDNN's geomean."""
    return not (dtype == "float32" and precision == "ieee")


def dense(spec: ConvSpec, x: torch.Tensor) -> bool:
    """True for a 1x1, stride-1, unpadded convolution of a channels-last-contiguous input: the
    GEMM's A operand is then the input itself, rows of C channels back to back."""
    N, C, H, W = x.shape
    return (spec.R == spec.S == 1 and spec.stride == (1, 1) and spec.padding == (0, 0, 0, 0)
            and tuple(x.stride()) == (H * W * C, 1, W * C, C))


def pad_last(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """``t`` contiguous with its last axis zero-padded to a multiple of ``multiple``."""
    n = t.shape[-1]
    if n % multiple == 0:
        return t.contiguous()
    out = t.new_zeros((*t.shape[:-1], cdiv(n, multiple) * multiple))
    out[..., :n] = t
    return out


def _iters(spec: ConvSpec, cfg: Config) -> int:
    return spec.R * spec.S * cdiv(spec.Cg, cfg.tiles["BK"])


def workspace_bytes(spec: ConvSpec, cfg: Config, itemsize: int) -> int:
    split = split_ranges(_iters(spec, cfg), cfg.split)[1]
    return 0 if split == 1 else split * spec.N * spec.K * spec.OH * spec.OW * 4


def shared_memory(cfg: Config, itemsize: int) -> int:
    t = cfg.tiles
    return smem_bytes(t["BM"] * t["BK"], t["BK"] * t["BN"], itemsize, cfg.num_stages)


def _tiles(spec: ConvSpec, cfg: Config) -> int:
    t = cfg.tiles
    return cdiv(spec.N * spec.OH * spec.OW, t["BM"]) * cdiv(spec.Kg, t["BN"]) * spec.groups


def _fill_split(spec: ConvSpec, cfg: Config, dev: DeviceInfo) -> int:
    """A split count that gives about two waves of programs, keeping >= 4 iterations per split."""
    return fill_split(_tiles(spec, cfg), _iters(spec, cfg), dev.sms)


def candidates(spec: ConvSpec, dtype: str, dev: DeviceInfo) -> list[Config]:
    """Configurations worth timing for ``spec`` (at most five tile shapes, one BK and stage count
    per dtype), within the device's shared memory, each split to fill the device if its tiles
    are few."""
    item = 4 if dtype == "float32" else 2
    bk = 16 if spec.Cg <= 16 else (32 if item == 4 else 64)
    stages = 3 if item == 4 else 4
    M, Kg = spec.N * spec.OH * spec.OW, spec.Kg
    shapes = [(128, 128, 8), (128, 64, 4), (64, 128, 4), (64, 64, 4), (64, 32, 4)]
    if item == 2 and M >= 16384:  # big 16-bit GEMMs: wider tiles keep the tensor cores fed
        shapes = ([(128, 256, 8)] if Kg >= 256 else []) + [(256, 128, 8)] + shapes
    out = []
    for bm, bn, warps in shapes:
        if (bn > 64 and Kg <= 64) or (bn > 32 and Kg <= 32) or (bn == 32 and Kg > 32) or (bn > 128 and Kg < 256):
            continue
        st = 3 if bm * bn > 128 * 128 else stages
        cfg = Config.make(warps, st, 1, BM=bm, BN=bn, BK=bk, GROUP_M=8)
        while shared_memory(cfg, item) > dev.smem and cfg.num_stages > 1:
            cfg = Config(cfg.block, cfg.num_warps, cfg.num_stages - 1, 1)
        out.append(Config(cfg.block, cfg.num_warps, cfg.num_stages, _fill_split(spec, cfg, dev)))
    return out[:5]


def default(spec: ConvSpec, dtype: str, dev: DeviceInfo) -> Config:
    """The configuration used without measuring: 128 x 128 tiles (64 / 32 wide for few output
    channels), BK 32 (float32) or 64 (16-bit), split to fill the device when tiles are few."""
    item = 4 if dtype == "float32" else 2
    bn = 128 if spec.Kg > 64 else (64 if spec.Kg > 32 else 32)
    bm = 128 if spec.N * spec.OH * spec.OW >= 4096 else 64
    bk = 16 if spec.Cg <= 16 else (32 if item == 4 else 64)
    warps = 8 if bm * bn >= 128 * 128 else 4
    cfg = Config.make(warps, 3 if item == 4 else 4, 1, BM=bm, BN=bn, BK=bk, GROUP_M=8)
    while shared_memory(cfg, item) > dev.smem and cfg.num_stages > 1:
        cfg = Config(cfg.block, cfg.num_warps, cfg.num_stages - 1, 1)
    split = _fill_split(spec, cfg, dev)
    return Config(cfg.block, cfg.num_warps, cfg.num_stages, split)


def launch(spec: ConvSpec, wp: torch.Tensor, x: torch.Tensor, bias, out: torch.Tensor, cfg: Config,
           dtype: str, precision: str) -> None:
    t = cfg.tiles
    iters = _iters(spec, cfg)
    per, split = split_ranges(iters, cfg.split)
    M = spec.N * spec.OH * spec.OW
    part = torch.empty((split, M, spec.K), device=x.device, dtype=torch.float32) if split > 1 else out
    grid = (cdiv(M, t["BM"]) * cdiv(spec.Kg, t["BN"]), spec.groups, split)
    _igemm_kernel[grid](
        x, wp, bias if bias is not None else wp, out, part,
        spec.N, spec.H, spec.W, spec.Cg, spec.Kg, spec.OH, spec.OW, M, spec.R, spec.S,
        spec.stride[0], spec.stride[1], spec.padding[2], spec.padding[0], spec.dilation[0], spec.dilation[1],
        per, spec.K, wp.shape[2], wp.stride(0), spec.Cg * x.stride(1), spec.Kg * out.stride(1),
        *x.stride(), *out.stride(),
        BM=t["BM"], BN=t["BN"], BK=t["BK"], GROUP_M=t["GROUP_M"], PREC=dot_precision(dtype, precision),
        HAS_BIAS=bias is not None, SPLIT=split > 1, DENSE=kmajor(dtype, precision) and dense(spec, x),
        KMAJOR=kmajor(dtype, precision),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if split > 1:
        reduce_splits(part, split, bias, out, layout=0)
