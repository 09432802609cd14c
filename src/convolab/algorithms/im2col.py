"""``im2col``: unfold the input into a matrix, then BLAS GEMMs (all groups batched).

For image n the unfolded matrix is ``cols[g, (c, r, s), (oh, ow)]`` of shape
(groups, (C/groups) R S, OH OW), filled with padding applied on the fly; the output
``y[n]`` viewed as (groups, K/groups, OH OW) is ``w[g] @ cols[g]`` (``numpy.matmul``, which
calls the BLAS sgemm/dgemm). For large images the output rows are split between the worker
threads: each thread unfolds its rows and multiplies them with a single-threaded GEMM, so one
pool of threads does both phases (a Numba-parallel unfold next to multi-threaded BLAS calls made the
two pools fight for the cores: 2-3x slower on two cores). A 1x1, stride-1, unpadded
convolution needs no unfolding: the input itself is the matrix, one multi-threaded GEMM.

Workspace: the unfolded matrix of one image, C R S OH OW elements (0 for the 1x1 case).
Not deterministic across CPUs: the BLAS picks its kernel (and so its summation order) by the
SIMD width of the host.
"""

import contextlib
from typing import NamedTuple

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


class Prepared(NamedTuple):
    """The filter as one (K/groups) x (C/groups R S) matrix per group."""

    spec: ConvSpec
    wm: np.ndarray


def _prepare(spec: ConvSpec, w) -> Prepared:
    return Prepared(spec, np.ascontiguousarray(w.reshape(spec.groups, spec.Kg, spec.Cg * spec.R * spec.S)))


#: fewest output pixels per thread for which an image is split between threads
MIN_PART_COLUMNS = 256


def _run(prepared, x, out):
    from .._parallel import blas_one_thread, run_threads, worker_count
    from ..kernels._unfold import unfold_rows

    spec, wm = prepared
    G, P, OW = spec.groups, spec.OH * spec.OW, spec.OW
    if _direct_gemm(spec):
        for n in range(spec.N):
            np.matmul(wm, x[n].reshape(G, spec.Cg, P), out=out[n].reshape(G, spec.Kg, P))
        return
    CRS = spec.Cg * spec.R * spec.S
    flat = np.empty(G * CRS * P, dtype=x.dtype)  # the workspace: one image's unfolded matrix
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    pl, _, pt, _ = spec.padding
    # split rows between threads only when each part keeps a GEMM wide enough for the BLAS
    # kernel; otherwise one thread unfolds and the BLAS uses all threads for the GEMM
    parts = max(1, min(worker_count(), spec.OH, P // MIN_PART_COLUMNS))
    bounds = [spec.OH * t // parts for t in range(parts + 1)]
    # each part's rows get their own contiguous (G, CRS, rows*OW) block of the workspace
    tasks = [(i0, i1, flat[G * CRS * i0 * OW: G * CRS * i1 * OW].reshape(G, CRS, (i1 - i0) * OW))
             for i0, i1 in zip(bounds[:-1], bounds[1:], strict=True)]

    def part(n, i0, i1, cols):
        unfold_rows(x[n], cols, spec.R, spec.S, sh, sw, dh, dw, pt, pl, OW, i0, i1)
        np.matmul(wm, cols, out=out[n].reshape(G, spec.Kg, P)[:, :, i0 * OW: i1 * OW])

    with blas_one_thread() if parts > 1 else contextlib.nullcontext():
        for n in range(spec.N):
            run_threads(lambda t, n=n: part(n, *t), tasks)


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
