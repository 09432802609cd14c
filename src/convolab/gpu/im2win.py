"""``im2win_gpu``: the im2win window tensor built on the GPU, then a GEMM over contiguous window rows.

Layout (after Lu et al., "Im2win: An Efficient Convolution Paradigm on GPU", Euro-Par 2023,
arXiv 2306.14316), channels innermost so that the GEMM reads whole rows:
``win[n, g, oh, v, fh, c] = x[n, g Cg + c, oh sh + fh dh - pt, v - pl]`` (zero in the padding)
for the Vw = (OW-1) sw + (S-1) dw + 1 padded input columns v that some output reads. The window
of output (n, oh, ow) in group g is then the run of S R Cg elements starting at
``win[n, g, oh, ow sw, 0, 0]``, in the order of the packed filter (`pack`): one
contiguous row of the GEMM's A operand when the horizontal dilation is 1 (S runs of R Cg, dw R Cg
apart, otherwise). Consecutive outputs' rows overlap (sw R Cg apart), so the GEMM re-reads the
window from cache rather than an im2col matrix from memory.

Two kernels, both timed as part of the call (the paper leaves the transform out of its timings):
the window build (a program per (n, g, oh, fh) and block of columns x channels: coalesced reads of
input rows, contiguous writes of channel runs) and the GEMM (BM x BN tiles of rows x output
channels, BK-long steps along the window row, float32 accumulation with ``tl.dot``; split-K reduced
in a fixed order by `convolab.gpu._reduce`, never atomics).

Workspace: the window tensor, N C OH Vw R elements of the input dtype (about Vw / (OW S) of
im2col's N C R S OH OW: 0.24-0.47 over the papers' 12 layers), plus split partials if split.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..spec import ConvSpec
from . import implicit_gemm
from ._common import Config, DeviceInfo, cdiv, dot_precision, fill_split, split_ranges
from ._reduce import reduce_splits
from ._tiles import pixel_tile, store_pixel_tile

NAME = "im2win_gpu"


@triton.jit(do_not_specialize=["G", "H", "W", "OH", "Vw", "R", "sh", "pt", "pl", "dh"])
def _window_kernel(
    x, win, Cg, G, H, W, OH, Vw, R, sh, pt, pl, dh, sxg, sxn, sxc, sxh, sxw,
    BV: tl.constexpr, BC: tl.constexpr,
):
    pid = tl.program_id(0)
    fh = pid % R
    t = pid // R
    oh = t % OH
    t = t // OH
    g = t % G
    n = t // G
    v = tl.program_id(1) * BV + tl.arange(0, BV)
    c = tl.program_id(2) * BC + tl.arange(0, BC)
    # the row index as a block (an `&` of a scalar and a block mask breaks Triton's interpreter)
    ih = v * 0 + (oh * sh + fh * dh - pt)
    iw = v - pl
    vm = v < Vw
    cm = c < Cg
    inside = vm & (iw >= 0) & (iw < W) & (ih >= 0) & (ih < H)
    src = x + n.to(tl.int64) * sxn + g.to(tl.int64) * sxg + (c * sxc)[:, None] + (ih * sxh + iw * sxw)[None, :]
    vals = tl.load(src, mask=cm[:, None] & inside[None, :], other=0.0)
    row = ((n * G + g) * OH + oh).to(tl.int64) * Vw
    dst = win + ((row + v)[None, :] * R + fh) * Cg + c[:, None]
    tl.store(dst, vals, mask=cm[:, None] & vm[None, :])


@triton.jit(do_not_specialize=["Kg", "G", "OH", "OW", "Vw", "M", "S", "sw", "dw", "per_split"])
def _win_gemm_kernel(
    win, w, bias, out, part,
    Kg, G, OH, OW, Vw, M, S, sw, dw, per_split, RC, K, WS, swg, sog, son, soc, soh, sow,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    PREC: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, CONTIG: tl.constexpr, KMAJOR: tl.constexpr,
):
    g, sk, rm, rn, rk, mmask, nmask, n, oh, ow = pixel_tile(M, Kg, OH, OW, BM, BN, BK, GROUP_M)
    row = win + (((n * G + g) * OH + oh).to(tl.int64) * Vw + ow * sw) * RC
    wg = w + g.to(tl.int64) * swg

    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for i in range(0, per_split):  # splits divide the steps evenly (`split_ranges`)
        it = sk * per_split + i
        if CONTIG:
            kk = it * BK + rk
            km = kk < S * RC
            off = kk
            wrow = kk
        else:
            cbs = (RC + BK - 1) // BK
            s = it // cbs
            kc = (it - s * cbs) * BK + rk
            km = kc < RC
            off = s * dw * RC + kc
            wrow = s * RC + kc
        a = tl.load(row[:, None] + off[None, :], mask=mmask[:, None] & km[None, :], other=0.0)
        if KMAJOR:  # tensor cores (see implicit_gemm.kmajor)
            b = tl.load(wg + rn[:, None] * WS + wrow[None, :], mask=nmask[:, None] & km[None, :], other=0.0)
            acc = tl.dot(a, tl.trans(b), acc, input_precision=PREC)
        else:  # IEEE fp32: N-major rows zero-padded to WS
            b = tl.load(wg + wrow[:, None] * WS + rn[None, :], mask=km[:, None] & (rn < WS)[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PREC)

    store_pixel_tile(acc, out, part, bias, rm, rn, mmask, nmask, g, sk, n, oh, ow, M, K, Kg,
                     son, sog, soc, soh, sow, HAS_BIAS, SPLIT)


def supports(spec: ConvSpec) -> str | None:
    return None


def window_columns(spec: ConvSpec) -> int:
    """Vw: padded input columns that some output reads."""
    return (spec.OW - 1) * spec.stride[1] + (spec.S - 1) * spec.dilation[1] + 1


def window_elements(spec: ConvSpec) -> int:
    return spec.N * spec.C * spec.OH * window_columns(spec) * spec.R


def im2col_elements(spec: ConvSpec) -> int:
    """Size of the im2col matrix the window tensor replaces (N C R S OH OW)."""
    return spec.N * spec.C * spec.R * spec.S * spec.OH * spec.OW


def pack(spec: ConvSpec, w: torch.Tensor, kmajor: bool = True) -> torch.Tensor:
    """(K, Cg, R, S) -> the weights in the window row's (s, r, c) order, K-major ``[G][Kg][S R Cg]``
    (tensor cores) or N-major ``[G][S R Cg][Kg]`` (IEEE fp32), rows zero-padded to 16 elements."""
    G, Kg = spec.groups, spec.Kg
    wp = w.reshape(G, Kg, spec.Cg, spec.R, spec.S).permute(0, 1, 4, 3, 2).reshape(G, Kg, spec.S * spec.R * spec.Cg)
    return implicit_gemm.pad_last(wp if kmajor else wp.transpose(1, 2), 16)


def _contig(spec: ConvSpec) -> bool:
    return spec.dilation[1] == 1


def _iters(spec: ConvSpec, cfg: Config) -> int:
    bk = cfg.tiles["BK"]
    rc = spec.R * spec.Cg
    return cdiv(spec.S * rc, bk) if _contig(spec) else spec.S * cdiv(rc, bk)


def workspace_bytes(spec: ConvSpec, cfg: Config, itemsize: int) -> int:
    split = split_ranges(_iters(spec, cfg), cfg.split)[1]
    partials = 0 if split == 1 else split * spec.N * spec.K * spec.OH * spec.OW * 4
    return window_elements(spec) * itemsize + partials


shared_memory = implicit_gemm.shared_memory


def _adapt(spec: ConvSpec, cfg: Config, dev: DeviceInfo) -> Config:
    """The implicit GEMM's configuration, with the reduction length of the window rows."""
    t = cfg.tiles
    rc = spec.R * spec.Cg
    bk = t["BK"]
    while bk > 16 and (rc if not _contig(spec) else spec.S * rc) <= bk // 2:
        bk //= 2
    cfg = Config.make(cfg.num_warps, cfg.num_stages, 1, **{**t, "BK": bk})
    return Config(cfg.block, cfg.num_warps, cfg.num_stages,
                  fill_split(implicit_gemm._tiles(spec, cfg), _iters(spec, cfg), dev.sms))


def candidates(spec: ConvSpec, dtype: str, dev: DeviceInfo) -> list[Config]:
    out = []
    for cfg in implicit_gemm.candidates(spec, dtype, dev):
        c = _adapt(spec, cfg, dev)
        if c not in out:
            out.append(c)
    return out


def default(spec: ConvSpec, dtype: str, dev: DeviceInfo) -> Config:
    return _adapt(spec, implicit_gemm.default(spec, dtype, dev), dev)


def _window_blocks(spec: ConvSpec) -> tuple[int, int]:
    bc = min(64, triton.next_power_of_2(spec.Cg))
    bv = max(16, min(128, 4096 // bc))
    return bv, bc


def build_window(spec: ConvSpec, x: torch.Tensor, win: torch.Tensor) -> None:
    """Fill ``win`` (N G OH Vw R Cg elements) from ``x`` (N, C, H, W), any strides."""
    vw = window_columns(spec)
    bv, bc = _window_blocks(spec)
    grid = (spec.N * spec.groups * spec.OH * spec.R, cdiv(vw, bv), cdiv(spec.Cg, bc))
    _window_kernel[grid](
        x, win, spec.Cg, spec.groups, spec.H, spec.W, spec.OH, vw, spec.R,
        spec.stride[0], spec.padding[2], spec.padding[0], spec.dilation[0], spec.Cg * x.stride(1), *x.stride(),
        BV=bv, BC=bc, num_warps=4,
    )


def launch(spec: ConvSpec, wp: torch.Tensor, x: torch.Tensor, bias, out: torch.Tensor, cfg: Config,
           dtype: str, precision: str) -> None:
    t = cfg.tiles
    vw = window_columns(spec)
    win = torch.empty(window_elements(spec), device=x.device, dtype=x.dtype)
    build_window(spec, x, win)
    iters = _iters(spec, cfg)
    per, split = split_ranges(iters, cfg.split)
    M = spec.N * spec.OH * spec.OW
    part = torch.empty((split, M, spec.K), device=x.device, dtype=torch.float32) if split > 1 else out
    grid = (cdiv(M, t["BM"]) * cdiv(spec.Kg, t["BN"]), spec.groups, split)
    _win_gemm_kernel[grid](
        win, wp, bias if bias is not None else wp, out, part,
        spec.Kg, spec.groups, spec.OH, spec.OW, vw, M, spec.S, spec.stride[1], spec.dilation[1], per,
        spec.R * spec.Cg, spec.K, wp.shape[2], wp.stride(0), spec.Kg * out.stride(1), *out.stride(),
        BM=t["BM"], BN=t["BN"], BK=t["BK"], GROUP_M=t["GROUP_M"], PREC=dot_precision(dtype, precision),
        HAS_BIAS=bias is not None, SPLIT=split > 1, CONTIG=_contig(spec),
        KMAJOR=implicit_gemm.kmajor(dtype, precision),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if split > 1:
        reduce_splits(part, split, bias, out, layout=0)
