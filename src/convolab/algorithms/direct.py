"""``direct``: straightforward convolution in Numba, no data transformation but zero padding.

Layout NCHW. Parallel over (image, group, block of 4 output channels, block of output rows);
see `convolab.kernels._direct` for the register blocking. Every output is summed in (c, r, s)
order with separate multiply and add, so the result is bit-identical for any thread count and
SIMD width (``deterministic=True``). For strides > 1 the padded copy is split into sh x sw
phase planes (padded pixel (i*sh + ph, j*sw + pw) goes to plane (ph, pw), position (i, j)):
the inputs of consecutive outputs are then consecutive in memory and the kernel is the same
flat, vectorised loop as for stride 1.

Cost: N K OH OW (C/groups) R S multiplications; workspace = the zero-padded input copy
(N C (H+pt+pb) (W+pl+pr) elements, 0 without padding; for strides > 1, the phase planes:
N C sh sw ceil(Hp/sh) ceil(Wp/sw) elements).
"""

import numpy as np

from ..kernels import PARALLEL_LOCK
from ..registry import Algorithm, register
from ..spec import ConvSpec
from ._common import pad, padded_bytes


def _supports(spec: ConvSpec):
    return None


def _phases(spec: ConvSpec) -> tuple[int, int]:
    """Rows and columns of each stride phase plane: ceil(Hp / sh), ceil(Wp / sw)."""
    (sh, sw) = spec.stride
    return -(-spec.padded_H // sh), -(-spec.padded_W // sw)


def _workspace(spec: ConvSpec) -> int:
    if spec.stride == (1, 1):
        return padded_bytes(spec)
    hq, wq = _phases(spec)
    return spec.N * spec.C * spec.stride[0] * spec.stride[1] * hq * wq * spec.compute_dtype.itemsize


def _prepare(spec: ConvSpec, w):
    """Input offsets of every product (c, r, s) relative to output (0, 0), for the layout
    `_layout` produces."""
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    hq, wq = _phases(spec)
    if spec.stride == (1, 1):
        hq, wq = spec.padded_H, spec.padded_W
    c, r, s = np.meshgrid(np.arange(spec.Cg), np.arange(spec.R), np.arange(spec.S), indexing="ij")
    plane = ((r * dh) % sh) * sw + (s * dw) % sw
    qoff = c * (sh * sw * hq * wq) + plane * (hq * wq) + ((r * dh) // sh) * wq + (s * dw) // sw
    return spec, w, np.ascontiguousarray(qoff.reshape(-1), dtype=np.int64), wq, sh * sw * hq * wq


def _layout(x, spec: ConvSpec) -> np.ndarray:
    """The zero-padded input; for strides > 1 split into phase planes:
    ``xq[n, c, ph, pw, i, j] = padded x[n, c, i*sh + ph, j*sw + pw]``."""
    if spec.stride == (1, 1):
        return pad(x, spec)
    (sh, sw) = spec.stride
    hq, wq = _phases(spec)
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


def _run(prepared, x, out):
    from ..kernels._direct import direct_nchw

    spec, w, qoff, wrow, cstride = prepared
    xf = _layout(x, spec).reshape(spec.N, spec.C * cstride)
    with PARALLEL_LOCK:
        direct_nchw(xf, w, out, qoff, wrow, cstride, spec.groups)


register(
    Algorithm(
        name="direct",
        supports=_supports,
        prepare=_prepare,
        run=_run,
        workspace_bytes=_workspace,
        multiplies=lambda spec: spec.direct_multiplies,
        deterministic=True,
        summary="Numba loops over a zero-padded NCHW input; fixed summation order",
        features={
            "workspace": "N·C·Hp·Wp (padded copy; 0 without padding); N·C·sh·sw·⌈Hp/sh⌉·⌈Wp/sw⌉ if strided",
            "multiplies": "N·K·OH·OW·(C/g)·R·S",
        },
    )
)
