"""``direct``: straightforward convolution in Numba, no data transformation but zero padding.

Layout NCHW. Two kernels, both summing every output in (c, r, s) order from zero with one fused
multiply-add per product (``llvm.fma``), so the result is bit-identical for any thread count,
SIMD width, path and CPU (``deterministic=True``; the emulated order is ``seq+fma``):

* at least `TILE_MIN_KG` output channels per group, any stride and dilation: the
  register-blocked microkernel of `convolab.kernels._microkernel` (12 output pixels x 32 output
  channels in 24 vector accumulators), reading the zero-padded input in place -- the window of
  output (oh, ow) is rows oh*sh + r*dh, columns ow*sw + s*dw of each padded plane -- with the
  filter packed once in the plan as [groups][K/g / KB][C/g][R][S][KB];
* otherwise `convolab.kernels._direct`: parallel over (image, group, block of 4 output
  channels, block of output rows), see there for the register blocking. For strides > 1 the
  padded copy is split into sh x sw phase planes (padded pixel (i*sh + ph, j*sw + pw) goes to
  plane (ph, pw), position (i, j)): the inputs of consecutive outputs are then consecutive in
  memory and the kernel is the same flat, vectorised loop as for stride 1.

Cost: N K OH OW (C/groups) R S multiplications (the microkernel path also computes the padding
lanes of its last channel block and tile: counted); workspace = the zero-padded input copy
(N C (H+pt+pb) (W+pl+pr) elements, 0 without padding; for strides > 1 on the loops, the phase
planes: N C sh sw ceil(Hp/sh) ceil(Wp/sw) elements).
"""

from typing import NamedTuple

import numpy as np

from .._machine import worker_count
from ..kernels import microkernel as mk
from ..kernels import team
from ..registry import Algorithm, register
from ..spec import ConvSpec
from ._common import has_padding, pad, padded_bytes, padded_shape

#: output channels per group from which stride-1 layers use the register-blocked microkernel
TILE_MIN_KG = 32
#: ... and the least fraction of its channel lanes (blocks of 32 in float32) holding real
#: channels: 40 channels (62%) ran 72 GFLOP/s on the microkernel against 113 on the loops
TILE_MIN_USE = 0.75


def depthwise(spec: ConvSpec) -> bool:
    """One input channel per group: the depthwise kernel (any stride, dilation, padding)."""
    return spec.Cg == 1


#: whether strided and dilated layers use the microkernel too (see `tiled`): on the 2-core
#: Zen 4 VM it ran ResNet-50's strided layers at 137-187 GFLOP/s against 44-101 on the loops
#: (stem 7x7/2 187 vs 96; tools: the layers of --suite resnet50, one process, interleaved)
TILE_STRIDED = True


def tiled(spec: ConvSpec) -> bool:
    """Whether the layer runs on the register-blocked microkernel (enough output channels per
    group filling enough of the channel lanes; stride and dilation 1 unless `TILE_STRIDED`)."""
    if depthwise(spec) or spec.Kg < TILE_MIN_KG:
        return False
    if not TILE_STRIDED and (spec.stride != (1, 1) or spec.dilation != (1, 1)):
        return False
    return spec.Kg / mk.lanes_computed(spec) >= TILE_MIN_USE


def _multiplies(spec: ConvSpec) -> int:
    if not tiled(spec):
        return spec.direct_multiplies
    return mk.multiplies(spec, spec.OH * spec.OW)


def _supports(spec: ConvSpec):
    return None


def phases(spec: ConvSpec) -> tuple[int, int]:
    """Rows and columns of each stride phase plane: ceil(Hp / sh), ceil(Wp / sw)."""
    (sh, sw) = spec.stride
    return -(-spec.padded_H // sh), -(-spec.padded_W // sw)


def _workspace(spec: ConvSpec) -> int:
    if blocked_depthwise(spec):  # one block's planes and outputs per thread
        from .._parallel import worker_count
        from ..kernels._direct import depthwise_block_scratch

        return worker_count() * int(depthwise_block_scratch(spec.OH, spec.OW, spec.R, spec.S,
                                                            *spec.stride, *spec.dilation)) * 4
    if depthwise(spec):  # one padded (phase-split) plane per thread
        from .._parallel import worker_count

        hq, wq = phases(spec)
        return worker_count() * spec.stride[0] * spec.stride[1] * hq * wq * spec.compute_dtype.itemsize
    if spec.stride == (1, 1) or tiled(spec):
        return padded_bytes(spec)
    hq, wq = phases(spec)
    return spec.N * spec.C * spec.stride[0] * spec.stride[1] * hq * wq * spec.compute_dtype.itemsize


def tap_offsets(spec: ConvSpec) -> np.ndarray:
    """Input offsets of every product (c, r, s) of a group relative to output (0, 0), in the
    layout `_layout` produces (for depthwise layers: one plane's stride phases)."""
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    hq, wq = phases(spec)
    if spec.stride == (1, 1) and not depthwise(spec):
        hq, wq = spec.padded_H, spec.padded_W
    c, r, s = np.meshgrid(np.arange(spec.Cg), np.arange(spec.R), np.arange(spec.S), indexing="ij")
    plane = ((r * dh) % sh) * sw + (s * dw) % sw
    qoff = c * (sh * sw * hq * wq) + plane * (hq * wq) + ((r * dh) // sh) * wq + (s * dw) // sw
    return np.ascontiguousarray(qoff.reshape(-1), dtype=np.int64)


#: depthwise layers (one output per channel, float32) with at most this many output pixels per
#: plane run channel-blocked (`convolab.kernels._direct.depthwise_block_task`: 16 channels per
#: vector, register transposes in and out), as in `convolab.compile`'s executor: faster than the
#: per-plane kernel at every size measured, 7x7 to 112x112 (executor, one thread, Zen 4: 3x3
#: 144@56 0.42 -> 0.23 ms, 3x3/2 96@112 0.36 -> 0.25 ms); the cap bounds each thread's work
#: buffer (16 padded planes and their outputs: 1.6 MiB at 112x112)
DW_BLOCK_MAX_PIXELS = 112 * 112


def blocked_depthwise(spec: ConvSpec) -> bool:
    """Whether ``spec`` runs on the channel-blocked depthwise kernel."""
    return (depthwise(spec) and spec.K == spec.C and spec.OH * spec.OW <= DW_BLOCK_MAX_PIXELS
            and spec.compute_dtype == np.float32)


def pack_depthwise(spec: ConvSpec, w) -> np.ndarray:
    """The filter of a one-output-per-channel depthwise layer as [C / 16][R S][16] (lanes are
    channels, zero past C), for the channel-blocked kernel."""
    nbk = -(-spec.C // 16)
    wp = np.zeros((nbk * 16, spec.R * spec.S), np.float32)
    wp[: spec.C] = np.asarray(w, np.float32).reshape(spec.C, -1)
    return np.ascontiguousarray(wp.reshape(nbk, 16, -1).transpose(0, 2, 1))


class Prepared(NamedTuple):
    """A prepared direct convolution. The microkernel and the channel-blocked depthwise kernel
    take only ``packed`` (their filter packing); the per-plane depthwise kernel and the loops
    take the filter ``w``, the tap offsets ``qoff`` (`tap_offsets`), the (phase) plane's row
    length ``wrow`` and the input elements per channel ``cstride``."""

    spec: ConvSpec
    w: np.ndarray | None = None
    qoff: np.ndarray | None = None
    wrow: int = 0
    cstride: int = 0
    packed: np.ndarray | None = None


def _prepare(spec: ConvSpec, w) -> Prepared:
    """The tap offsets (`tap_offsets`) and the filter; for the microkernel path the packed
    filter instead, for the channel-blocked depthwise one its packing."""
    if tiled(spec):
        return Prepared(spec, packed=mk.pack_filter(spec, w, "rs"))
    if blocked_depthwise(spec):
        return Prepared(spec, packed=pack_depthwise(spec, w))
    hq, wq = phases(spec)
    if spec.stride == (1, 1) and not depthwise(spec):
        hq, wq = spec.padded_H, spec.padded_W
    return Prepared(spec, w, tap_offsets(spec), wq, spec.stride[0] * spec.stride[1] * hq * wq)


def _layout(x, spec: ConvSpec) -> np.ndarray:
    """The zero-padded input; for strides > 1 split into phase planes:
    ``xq[n, c, ph, pw, i, j] = padded x[n, c, i*sh + ph, j*sw + pw]``."""
    if spec.stride == (1, 1):
        return pad(x, spec)
    (sh, sw) = spec.stride
    hq, wq = phases(spec)
    pl, _, pt, _ = spec.padding
    xq = np.zeros((spec.N, spec.C, sh, sw, hq, wq), dtype=x.dtype)

    def span(p, lead, size, stride, count):
        # phase-p positions i (padded index i*stride + p) that fall on real pixels
        i0 = max(0, -(-(lead - p) // stride))
        i1 = min(count, (size - 1 + lead - p) // stride + 1)
        return i0, i1, i0 * stride + p - lead

    for ph in range(sh):
        i0, i1, r0 = span(ph, pt, spec.H, sh, hq)
        for pw in range(sw):
            j0, j1, c0 = span(pw, pl, spec.W, sw, wq)
            if i1 > i0 and j1 > j0:
                xq[:, :, ph, pw, i0:i1, j0:j1] = x[:, :, r0: r0 + (i1 - i0 - 1) * sh + 1: sh,
                                                   c0: c0 + (j1 - j0 - 1) * sw + 1: sw]
    return xq


def _run(prepared: Prepared, x, out):
    spec, w, qoff, wrow, cstride, wpk = prepared
    if depthwise(spec) and wpk is not None:
        from ..kernels._direct import depthwise_blocked

        pl, _, pt, _ = spec.padding
        team.run(depthwise_blocked, (x, wpk, out, *spec.stride, *spec.dilation, pt, pl, spec.R,
                                     spec.S, np.zeros(2, dtype=np.int64)), complete=True)
        return
    if depthwise(spec):
        from ..kernels._direct import depthwise_nchw

        pl, _, pt, _ = spec.padding
        hq, wq = phases(spec)
        team.run(depthwise_nchw, (x, w, out, qoff, *spec.stride, pt, pl, hq, wq,
                                  np.zeros(2, dtype=np.int64)), complete=True)
        return
    if wpk is not None:
        from ..kernels._microkernel import direct_tiles

        # the zero-padded copy is written by the job's threads
        xp = np.empty(padded_shape(spec), dtype=x.dtype) if has_padding(spec) else x
        per_pixel = spec.Cg * spec.padded_H * spec.padded_W / (spec.OH * spec.OW) * x.itemsize
        threads = worker_count()
        sp = mk.split(spec, spec.OH * spec.OW, per_pixel, wpk.shape[1], threads)
        counter = np.zeros(x.shape[0] + 3, dtype=np.int64)
        pl, _, pt, _ = spec.padding
        args = (x, xp, wpk, out, counter, spec.groups, spec.R, spec.S, sp.nkbr, sp.nchunk,
                *spec.stride, *spec.dilation, pt, pl)
        mk.run(direct_tiles, args, mk.warm_code("direct", 2, 32, 3, 1, x.dtype.name), x.dtype,
               threads)
        return
    from ..kernels._direct import direct_nchw

    xf = _layout(x, spec).reshape(spec.N, spec.C * cstride)
    team.run(direct_nchw, (xf, w, out, qoff, wrow, cstride, spec.groups,
                           np.zeros(2, dtype=np.int64)), complete=True)


register(
    Algorithm(
        name="direct",
        supports=_supports,
        prepare=_prepare,
        run=_run,
        workspace_bytes=_workspace,
        multiplies=_multiplies,
        kernel=lambda spec: "" if tiled(spec) else "depthwise" if depthwise(spec) else "loops",
        kernel_names={"": "register-blocked microkernel (tiles of 12 pixels x 32 channels)",
                      "depthwise": "depthwise kernel (channel-blocked on small planes, else per "
                                   "plane)",
                      "loops": "loops over the padded input (fewer than 32 channels per group)"},
        deterministic=True,
        cpu_invariant=True,
        summary="Numba over the zero-padded NCHW input (register-blocked microkernel for stride 1); "
        "fixed summation order",
        features={
            "workspace": "N·C·Hp·Wp (padded copy; 0 without padding); N·C·sh·sw·⌈Hp/sh⌉·⌈Wp/sw⌉ if "
            "strided with fewer than 32 channels per group",
            "multiplies": "N·K·OH·OW·(C/g)·R·S (from 32 channels per group: with the padding lanes of "
            "the last 32-channel block and 12-pixel tile)",
        },
    )
)
