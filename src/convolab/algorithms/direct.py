"""``direct``: straightforward convolution in Numba, no data transformation but zero padding.

Layout NCHW. Parallel over (image, group, block of 8 output channels, output row); each task
keeps an 8 x OW accumulator tile and streams input rows through it. Every output is summed in
(c, r, s) order with separate multiply and add, so the result is bit-identical for any thread
count and SIMD width (``deterministic=True``).

Cost: N K OH OW (C/groups) R S multiplications; workspace = the zero-padded input copy
(N C (H+pt+pb) (W+pl+pr) elements, 0 without padding).
"""

from ..kernels import PARALLEL_LOCK
from ..registry import Algorithm, register
from ..spec import ConvSpec
from ._common import pad, padded_bytes


def _supports(spec: ConvSpec):
    return None


def _prepare(spec: ConvSpec, w):
    return (spec, w)


def _run(prepared, x, out):
    from ..kernels._direct import direct_nchw

    spec, w = prepared
    xp = pad(x, spec)
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    with PARALLEL_LOCK:
        direct_nchw(xp, w, out, sh, sw, dh, dw, spec.groups)


register(
    Algorithm(
        name="direct",
        supports=_supports,
        prepare=_prepare,
        run=_run,
        workspace_bytes=padded_bytes,
        multiplies=lambda spec: spec.direct_multiplies,
        deterministic=True,
        summary="Numba loops over a zero-padded NCHW input; fixed summation order",
        features={
            "workspace": "N·C·(H+pt+pb)·(W+pl+pr) (padded copy; 0 without padding)",
            "multiplies": "N·K·OH·OW·(C/g)·R·S",
        },
    )
)
