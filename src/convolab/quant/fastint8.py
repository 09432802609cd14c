"""The int8 fast algorithms at hardware speed: Winograd / SFC with a per-frequency quantised
transform domain (`convolab.quant.fast`), the channel sums as one int8 VNNI GEMM per
frequency on the int8 microkernel, the transforms compiled (`convolab.kernels._int8_fast`).

`plan_fast_int8` packs a layer once (the quantised filter transform ``Uq`` as a 1x1 layer with
one group per frequency, the dequantisation scales ``s_u[k, p] s_v[p]``, the requantisation
multipliers ``s_x / s_v[p]``) and returns a callable: int8 spatial codes in, the float32 output
``act(y + bias)`` out. `convolab.quant.QuantizedConv` runs its quantised fast algorithms through
it on float32 data; ``convolab bench --dtype int8`` times it against ONNX Runtime's
``QLinearConv``. The transform-domain codes and their integer sums are those of the NumPy
pipeline; the dequantisation and the output transform run in float32 (the NumPy pipeline's in
float64), so the outputs agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConvError
from ..spec import ConvSpec
from . import fast as _fast

#: bytes of a task's buffers (one k-block's products and outputs for a chunk of tiles), at
#: most: they stay in the L2 cache from the GEMMs to the NCHW planes
CHUNK_BYTES = 640 * 1024
#: activation codes of the output stage
ACTS = {None: 0, "relu": 1, "clamp": 2}


def _chunk_rows(rows: int, most: int, nkb: int, threads: int) -> int:
    """Tile rows per task (at most ``most``): the threads' last finish (tasks of a chunk's rows
    x ``nkb`` k-blocks taken in order, `convolab.kernels.microkernel.makespan`) as early as
    possible, then the fewest tasks. 64 -> 64 at 56x56 on SFC-4 (14 tile rows, 2 k-blocks):
    chunks of 4, 4, 4, 2 rows left a thread idle for a quarter of the second phase; 7 chunks
    of 2 do not."""
    from ..kernels.microkernel import makespan

    best = None
    for cr in range(most, 0, -1):
        sizes = [min(cr, rows - r0) for r0 in range(0, rows, cr) for _ in range(nkb)]
        key = (makespan(sizes, threads), len(sizes))
        if best is None or key < best[0]:
            best = (key, cr)
    return best[1]


class FastInt8Plan:
    """A quantised fast convolution prepared for one input shape (see `plan_fast_int8`)."""

    def __init__(self, spec: ConvSpec, name: str, Uq: np.ndarray, s_u: np.ndarray,
                 s_v: np.ndarray, s_x: float, tbits: int = 8, bias=None, act=None,
                 lo: float = 0.0, hi: float = 0.0, threads: int | None = None,
                 path: str | None = None):
        from ..algorithms import bilinear
        from ..kernels import int8 as K8
        from ..kernels._int8_fast import ALGORITHMS

        if name not in ALGORITHMS:
            raise ConvError(f"the compiled int8 fast path runs {', '.join(ALGORITHMS)}; got {name!r}")
        self.alg = ALGORITHMS.index(name)
        t = _fast.transforms(name)
        reason = _fast.supports(t, spec)
        if reason is not None:
            raise ConvError(f"{name} cannot run {spec}: {reason}")
        if spec.groups != 1:
            raise ConvError(f"the int8 fast path runs one group, got groups={spec.groups}")
        if act not in ACTS:
            raise ConvError(f"act must be one of {', '.join(map(str, ACTS))}, got {act!r}")
        K, C, P = spec.K, spec.C, t.P
        Uq = np.asarray(Uq)
        if Uq.shape != (K, C, P):
            raise ConvError(f"Uq must have shape {(K, C, P)}, got {Uq.shape}")
        q = (1 << (tbits - 1)) - 1
        if np.abs(Uq).max(initial=0) > 127:
            raise ConvError("Uq must hold int8 codes (|Uq| <= 127)")
        wq = np.ascontiguousarray(Uq.transpose(2, 0, 1)).reshape(P * K, C, 1, 1).astype(np.int8)
        bound = K8.accumulation_bound_u8(wq)
        if bound >= 2**31:
            raise ConvError(f"int32 accumulation could overflow in the transform domain "
                            f"(255 * max sum|Uq| = {bound})")
        self.spec, self.name, self.t = spec, name, t
        self.packed = K8.Packed(wq, P, path)
        kbw = K8.kb(self.packed.path)
        sc = (np.asarray(s_u, np.float64) * np.asarray(s_v, np.float64)[None, :]).T  # (P, K)
        self.scale = np.zeros(P * K + kbw, np.float32)
        self.scale[: P * K] = sc.reshape(-1)
        self.zero = np.zeros(P * K + kbw, np.float32)
        self.mult = float(s_x) / np.asarray(s_v, np.float64)
        self.qmax = q
        self.bias = (np.zeros(0, np.float32) if bias is None
                     else np.asarray(bias, np.float32).reshape(K))
        self.act, self.lo, self.hi = ACTS[act], np.float32(lo), np.float32(hi)
        self.m, self.r = t.m, t.r
        pl, _, pt, _ = spec.padding
        self.pt, self.pl = pt, pl
        TH, TW = bilinear.tiles(spec, t.m)
        C4 = -(-C // 4) * 4
        from .._machine import worker_count

        self.threads = worker_count() if threads is None else int(threads)
        n = max(1, self.threads)
        # tile rows per task: one k-block's products and outputs of a chunk's tiles within
        # CHUNK_BYTES, and at least four tasks (chunks x k-blocks) per thread where the layer
        # has them
        rows = spec.N * TH
        nkb = -(-K // kbw)
        per_tile = 4 * kbw * (P + t.m * t.m)
        most = max(1, min(rows, CHUNK_BYTES // (per_tile * TW)))
        self.cr = cr = _chunk_rows(rows, most, nkb, n)
        tc = cr * TW
        self._own = [(np.zeros(P * tc * kbw + 16, np.float32),
                      np.zeros(cr * t.m * TW * t.m * kbw + 16, np.float32)) for _ in range(n)]
        Hp, Wp = TH * t.m + t.r - 1, TW * t.m + t.r - 1
        self._xp = np.zeros(spec.N * Hp * Wp * C4 + 64, np.uint8)
        self._xu = np.zeros(rows * TW * P * C4 + 64, np.uint8)
        self._ctr = np.zeros(6, np.int64)
        # the job and the team, looked up once (an import in the call path costs microseconds)
        from ..kernels import team
        from ..kernels._int8_fast import fast_int8

        self._job, self._team = fast_int8, team

    def __call__(self, xq: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The layer on int8 codes ``xq`` (N, C, H, W): float32 (N, K, OH, OW)."""
        s = self.spec
        xq = np.ascontiguousarray(xq)
        shape = (s.N, s.C, s.H, s.W)
        if xq.dtype != np.int8 or xq.shape != shape:
            raise ConvError(f"expected int8 codes of shape {shape}, got {xq.dtype} {xq.shape}")
        if out is None:
            out = np.empty(s.out_shape, np.float32)
        self._ctr[:] = 0
        p = self.packed
        args = (self.alg, xq, self._xp, p.w, p.corr, self.scale, self.zero, out, self._ctr,
                self.bias, self.act, self.lo, self.hi, self.mult, self.qmax, self.m, self.r,
                self.pt, self.pl, self.cr, p.token, self._xu)
        self._team.run(self._job, args, self.threads, own=lambda i, n: self._own[i],
                       complete=True)
        return out


def plan_fast_int8(spec: ConvSpec, name: str, Uq, s_u, s_v, s_x: float, **kw) -> FastInt8Plan:
    """`FastInt8Plan` for layer ``spec`` (stride 1, one group) and fast algorithm ``name`` (a
    key of `convolab.quant.fast.FAST`): ``Uq`` (K, C, P) the int8 filter transform codes with
    scales ``s_u`` (K, P), ``s_v`` (P,) the transform-domain activation scales, ``s_x`` the
    spatial one; ``bias``, ``act`` (None, "relu", "clamp" with ``lo``, ``hi``), ``threads``,
    ``path`` (an int8 path of `convolab.kernels.int8`, default the fastest here)."""
    return FastInt8Plan(spec, name, Uq, s_u, s_v, s_x, **kw)
