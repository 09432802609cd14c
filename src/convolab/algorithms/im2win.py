"""``im2win``: the image-to-window layout with a register-blocked Numba microkernel.

Layout (Lu, Chu, Liu, "Im2win: Memory Efficient Convolution On SIMD Architectures",
HPEC 2022): for each image, channel and output row, the FH input rows that the row's windows
touch are stored column by column, so that the FH vertical elements of one input column are
adjacent: ``win[c, oh, w*FH + fh] = x[c, oh*sh + fh*dh - pt, w - pl]``, zero in the padding
(written straight into the window tensor; the input is never padded as a whole). The filter
is transposed to [K][C][FW][FH]. The window of output (oh, ow) for channel c is then the
slice starting at ``win[c, oh, ow*sw*FH]`` -- contiguous, of length FW*FH, when the
horizontal dilation is 1 -- in the same order as the transposed filter.

Kernel (`convolab.kernels._microkernel`, shared with direct and the Winograd/SFC point GEMMs):
tiles of 12 consecutive output pixels x 32 output channels (16 in float64) in 24 AVX-512
accumulators; each window element loaded is used for 32 output channels and each filter
vector for 12 pixels. Parallel over (group, block of output channels, range of pixels) of one
image at a time (a thread done with its share moves on to the next image's window): threads
share no output, and every output sums its (C/groups) FW FH products in (c, fw, fh) order
with one fused multiply-add each, so the result is bit-identical for any thread count, SIMD
width and CPU. An NHWC-style window
(``win[g, oh, w, fh, c]``, channels innermost: one contiguous run of FW FH C/g per output)
was tried with the microkernel of the time and ran 11% slower (geomean of the papers' 12
layers, one thread), so the papers' NCHW window stays.

Workspace: the window tensor of one image, C OH Vw FH elements, where Vw = (OW-1) sw +
(FW-1) dw + 1 <= W + pl + pr is the number of padded input columns that some output reads
(about W/(FW OW) of im2col's C R S OH OW); two of them from batch 2, so that the next image's
window is built while the last tiles of the current one run (the whole batch runs in one
parallel region), plus four int64 task counters per image. Multiplications
include the lanes of a last, partial block of output channels and the repeated pixels of a
last, partial tile (a short last tile runs as tiles of 4 pixels).
"""

from typing import NamedTuple

import numpy as np

from .._machine import worker_count
from ..kernels import microkernel as mk
from ..registry import Algorithm, register
from ..spec import ConvSpec


def _geometry(spec: ConvSpec) -> dict:
    """Window row width ``Vw`` (padded input columns some output reads), tensor size."""
    sw, dw = spec.stride[1], spec.dilation[1]
    Vw = (spec.OW - 1) * sw + (spec.S - 1) * dw + 1
    return dict(Vw=Vw, size=spec.C * spec.OH * Vw * spec.R)


def _buffers(N: int) -> int:
    """Window tensors held at once: two from batch 2 (image n+1's window is built while image
    n's last tiles run), else one."""
    return min(N, 2)


def _workspace(spec: ConvSpec) -> int:
    # the window tensors and four int64 task counters per image
    return _buffers(spec.N) * _geometry(spec)["size"] * spec.compute_dtype.itemsize + 32 * spec.N


def _multiplies(spec: ConvSpec) -> int:
    return mk.multiplies(spec, spec.OH * spec.OW)


class Prepared(NamedTuple):
    """The packed filter [groups][K/groups / KB][C/groups][FW][FH][KB] (zero-filled lanes) and
    the window tensor's geometry (`_geometry`)."""

    spec: ConvSpec
    wpk: np.ndarray
    geo: dict


def _prepare(spec: ConvSpec, w) -> Prepared:
    return Prepared(spec, mk.pack_filter(spec, w, "sr"), _geometry(spec))


def _run(prepared, x, out):
    from ..kernels._microkernel import im2win_conv

    spec, wpk, geo = prepared
    assert wpk.shape[-1] == mk.lanes(x.itemsize)
    N = x.shape[0]
    win = np.empty(_buffers(N) * geo["size"], dtype=x.dtype)
    counter = np.zeros(4 * N, dtype=np.int64)
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    pl, _, pt, _ = spec.padding
    # window bytes per output pixel, all channels of a group
    per_pixel = spec.Cg * geo["Vw"] * spec.R * x.itemsize / spec.OW
    threads = worker_count()
    sp = mk.split(spec, spec.OH * spec.OW, per_pixel, wpk.shape[1], threads)
    args = (x, win, wpk, out, counter, spec.groups, spec.S, spec.R, sh, sw, dh, dw, pt, pl,
            geo["Vw"], sp.nkbr, sp.nchunk)
    mk.run(im2win_conv, args, mk.warm_code("im2win", 1, 4, 3, 1, x.dtype.name), x.dtype, threads)


register(
    Algorithm(
        name="im2win",
        supports=lambda spec: None,
        prepare=_prepare,
        run=_run,
        workspace_bytes=_workspace,
        multiplies=_multiplies,
        deterministic=True,
        cpu_invariant=True,
        summary="window tensor [C][OH][W·R] of one image + 12x32 register-blocked Numba kernel",
        features={
            "workspace": "C·OH·W'·R per image (two images from batch 2), W' = (OW-1)·sw + "
            "(S-1)·dw + 1 padded columns read (≈ W/(S·OW) of im2col)",
            "multiplies": "N·K'·P'·(C/g)·R·S, K' = K rounded up to 32 lanes per group, "
            "P' = OH·OW rounded up to 12-pixel tiles (a short last tile to 4-pixel tiles)",
        },
    )
)
