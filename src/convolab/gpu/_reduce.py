"""The second pass of a split reduction: add the partial sums in a fixed order.

A kernel that splits its reduction (split-K in `implicit_gemm_gpu` / `im2win_gpu`, tap groups
in `cuconv_gpu`) writes float32 partials ``part[s, e]`` for s = 0 .. split-1. This pass computes
``((part[0] + part[1]) + part[2]) + ...`` for every output element e, adds the bias, rounds once
to the output dtype and stores through the output's strides. No atomics: the same plan gives
the same bits on every run.

Element order ``e`` of the partials: layout 0 is pixel-major ``[N*OH*OW, K]`` (the implicit
GEMMs' M x N tile order), layout 1 is ``[N, K, OH*OW]`` (cuConv's NCHW order).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit(do_not_specialize=["total", "splits", "K", "P", "OW"])
def _split_reduce_kernel(
    part, bias, out, total, splits, K, P, OW, son, soc, soh, sow,
    LAYOUT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    em = e < total
    acc = tl.load(part + e, mask=em, other=0.0)
    for s in range(1, splits):
        acc += tl.load(part + s * total + e, mask=em, other=0.0)
    if LAYOUT == 0:
        k = e % K
        m = e // K
        n = m // P
        p = m % P
    else:
        p = e % P
        nk = e // P
        k = nk % K
        n = nk // K
    if HAS_BIAS:
        acc += tl.load(bias + k, mask=em, other=0.0).to(tl.float32)
    oh = p // OW
    ow = p % OW
    tl.store(out + n * son + k * soc + oh * soh + ow * sow, acc.to(out.dtype.element_ty), mask=em)


def reduce_splits(part: torch.Tensor, splits: int, bias, out: torch.Tensor, layout: int) -> None:
    """Sum ``part`` (``splits`` x N*K*OH*OW float32) into ``out`` (N, K, OH, OW), any strides."""
    N, K, OH, OW = out.shape
    total = N * K * OH * OW
    grid = (triton.cdiv(total, _BLOCK),)
    _split_reduce_kernel[grid](
        part, bias if bias is not None else part, out, total, splits, K, OH * OW, OW, *out.stride(),
        LAYOUT=layout, HAS_BIAS=bias is not None, BLOCK=_BLOCK, num_warps=4,
    )
