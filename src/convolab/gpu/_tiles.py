"""Pieces the GPU kernels share, as Triton device functions (inlined where they are called).

- `grouped_tile`: the program -> (row tile, column tile) map in GROUP_M-swizzled order, so that
  programs running together reuse the same column tiles of the filter from L2;
- `pixel_tile`: the prologue of the implicit GEMMs' [pixels x output channels] programs: the
  program's group, split, row and column indices, their masks and the rows' (n, oh, ow);
- `store_pixel_tile`: the epilogue of a [pixels x output channels] tile (the implicit GEMMs):
  either float32 partials ``part[split, m, k]`` for `convolab.gpu._reduce`, or bias, one rounding
  to the output dtype and a store through the output's strides;
- `store_channel_tile`: the same for a [output channels x pixels] tile of one image (cuConv),
  partials ``part[split, n, k, p]``.
"""

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    num_m = (M + BM - 1) // BM
    num_n = (N + BN - 1) // BN
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    gsz = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % width) % gsz, (pid % width) // gsz


@triton.jit
def pixel_tile(M, Kg, OH, OW, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """A program over (row-tile x column-tile, group, split) -> (g, sk, rm, rn, rk, mmask, nmask,
    n, oh, ow): rows m = (n, oh, ow) of the M = N OH OW output pixels, columns the group's Kg
    output channels, rk the first BK-long step of the reduction."""
    pid = tl.program_id(0)
    g = tl.program_id(1)
    sk = tl.program_id(2)
    pid_m, pid_n = grouped_tile(pid, M, Kg, BM, BN, GROUP_M)

    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mmask = rm < M
    nmask = rn < Kg
    P = OH * OW
    n = rm // P
    p = rm % P
    oh = p // OW
    ow = p % OW
    return g, sk, rm, rn, rk, mmask, nmask, n, oh, ow


@triton.jit
def store_pixel_tile(acc, out, part, bias, rm, rn, mmask, nmask, g, sk, n, oh, ow, M, K, Kg,
                     son, sog, soc, soh, sow, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr):
    kk = g * Kg + rn
    omask = mmask[:, None] & nmask[None, :]
    if SPLIT:
        dst = part + sk.to(tl.int64) * M * K + rm.to(tl.int64)[:, None] * K + kk[None, :]
        tl.store(dst, acc, mask=omask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias + kk, mask=nmask, other=0.0).to(tl.float32)[None, :]
        orow = out + n.to(tl.int64) * son + g.to(tl.int64) * sog + oh * soh + ow * sow
        tl.store(orow[:, None] + (rn * soc)[None, :], acc.to(out.dtype.element_ty), mask=omask)


@triton.jit
def store_channel_tile(acc, out, part, bias, kk, rp, kmask, pmask, sk, n, N, K, P, oh, ow,
                       son, soc, soh, sow, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr):
    omask = kmask[:, None] & pmask[None, :]
    if SPLIT:
        dst = part + ((sk * N + n).to(tl.int64) * K + kk[:, None]) * P + rp[None, :]
        tl.store(dst, acc, mask=omask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias + kk, mask=kmask, other=0.0).to(tl.float32)[:, None]
        dst = out + n.to(tl.int64) * son + (kk * soc)[:, None] + (oh * soh + ow * sow)[None, :]
        tl.store(dst, acc.to(out.dtype.element_ty), mask=omask)
