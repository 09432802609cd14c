"""``im2col``: unfold the input into a matrix, then one BLAS GEMM per image (all groups batched).

For image n the unfolded matrix is ``cols[g, (c, r, s), (oh, ow)]`` of shape
(groups, (C/groups) R S, OH OW), filled with padding applied on the fly; the output
``y[n]`` viewed as (groups, K/groups, OH OW) is ``w[g] @ cols[g]`` (``numpy.matmul``, which
calls the BLAS sgemm/dgemm). A 1x1, stride-1, unpadded convolution needs no unfolding: the
input itself is the matrix.

Workspace: the unfolded matrix of one image, C R S OH OW elements (0 for the 1x1 case).
Not deterministic across CPUs: the BLAS picks its kernel (and so its summation order) by the
SIMD width of the host.
"""

import numpy as np

from ..registry import Algorithm, register
from ..spec import ConvSpec


def _direct_gemm(spec: ConvSpec) -> bool:
    return (
        spec.R == 1 and spec.S == 1 and spec.stride == (1, 1) and not any(spec.padding)
    )


def _workspace(spec: ConvSpec) -> int:
    if _direct_gemm(spec):
        return 0
    return spec.C * spec.R * spec.S * spec.OH * spec.OW * spec.compute_dtype.itemsize


def _prepare(spec: ConvSpec, w):
    return (spec, np.ascontiguousarray(w.reshape(spec.groups, spec.Kg, spec.Cg * spec.R * spec.S)))


def _run(prepared, x, out):
    from ..kernels._unfold import unfold

    spec, wm = prepared
    G, P = spec.groups, spec.OH * spec.OW
    if _direct_gemm(spec):
        for n in range(spec.N):
            np.matmul(wm, x[n].reshape(G, spec.Cg, P), out=out[n].reshape(G, spec.Kg, P))
        return
    cols = np.empty((G, spec.Cg * spec.R * spec.S, P), dtype=x.dtype)
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    pl, _, pt, _ = spec.padding
    for n in range(spec.N):
        unfold(x[n], cols, spec.R, spec.S, sh, sw, dh, dw, pt, pl, spec.OH, spec.OW)
        np.matmul(wm, cols, out=out[n].reshape(G, spec.Kg, P))


register(
    Algorithm(
        name="im2col",
        supports=lambda spec: None,
        prepare=_prepare,
        run=_run,
        workspace_bytes=_workspace,
        multiplies=lambda spec: spec.direct_multiplies,
        deterministic=False,
        summary="unfold to a (C·R·S) x (OH·OW) matrix per image, then BLAS GEMM",
        features={
            "workspace": "C·R·S·OH·OW per image (0 for 1x1/s1/p0)",
            "multiplies": "N·K·OH·OW·(C/g)·R·S",
        },
    )
)
