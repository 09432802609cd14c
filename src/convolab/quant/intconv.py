"""int8 x int8 -> int32 convolution, exact: direct (Numba, integer) and im2col (float GEMM).

Semantics: PyTorch's conv2d (cross-correlation, groups, stride, padding, dilation) on int8 codes,
``y[n,k,i,j] = sum_{c,r,s} xq[n, g*Cg+c, i*sh + r*dh - pt, j*sw + s*dw - pl] * wq[k,c,r,s]``,
returned as int32; no bias, no requantisation (see `convolab.quant.layer` for the float wrapper).

Overflow is impossible by construction. Before anything runs, the weights are checked:
``bound = 128 * max_k sum_{c,r,s} |wq[k,c,r,s]|`` bounds ``|partial sum|`` of every output for
*any* int8 input (|x| <= 128) and *any* summation order. It must be below ``2**31``
(`ConvError` otherwise; with int8 weights that needs C/groups * R * S >= 131,072 -- no real layer).

- ``"direct"``: the int8 microkernel (`convolab.kernels.int8`): activations shifted to unsigned
  bytes, channels last, four channels per 32-bit word; ``vpdpbusd`` dot products (AVX512-VNNI,
  AVX-VNNI) or, on CPUs without VNNI, portable widening multiplies -- the same integers on every
  path. Depthwise layers run on `convolab.kernels.int8.depthwise` (exact integer sums in
  float32, vectorised over output columns); other layers with fewer than `MICROKERNEL_MIN_KG`
  output channels per group, and weights whose shifted bound ``255 * max_k sum|w[k]|`` reaches
  ``2**31``, run on the plain Numba loops (`convolab.kernels._quant`, int32 accumulators).
- ``"im2col"``: unfold the int8 input into a float matrix and multiply with BLAS. This is exact:
  every product and every partial sum of the GEMM is an integer of magnitude <= ``bound``; a
  binary float format represents every integer below ``2**p`` (p = 24 for float32, 53 for
  float64) exactly, and IEEE addition, multiplication and fused multiply-add of exactly
  representable values whose exact result is representable return that result. So whatever
  blocking, order, SIMD width or FMA use the BLAS picks, the GEMM returns the exact integer
  sums. float32 is used when ``bound < 2**24`` (twice the speed), float64 otherwise
  (``bound < 2**31 < 2**53`` always holds after the check above).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConvError
from ..spec import ConvSpec

#: the bound on |partial sums| that int32 accumulation allows
INT32_LIMIT = 2**31
#: float32 represents every integer below this exactly
FLOAT32_EXACT = 2**24

METHODS = ("direct", "im2col")
#: output channels per group from which "direct" runs on the int8 microkernel (a tile holds
#: 32 of them: a depthwise layer would fill one lane in 32)
MICROKERNEL_MIN_KG = 8


def accumulation_bound(wq: np.ndarray, xmax: int = 128) -> int:
    """``xmax * max_k sum |wq[k]|``: bounds every partial sum for inputs with ``|x| <= xmax``."""
    w = np.abs(np.asarray(wq).astype(np.int64)).reshape(wq.shape[0], -1)
    return int(xmax) * int(w.sum(axis=1).max()) if w.size else 0


def check_int8(a, what: str) -> np.ndarray:
    """``a`` as a NumPy int8 array, or `ConvError` naming the dtype."""
    a = np.asarray(a)
    if a.dtype != np.int8:
        raise ConvError(f"{what} must be int8 codes (convolab.quant.quantize), got dtype {a.dtype}")
    return a


def gemm_dtype(bound: int) -> np.dtype:
    """float32 when the integer GEMM is exact in it (``bound < 2**24``), else float64."""
    return np.dtype(np.float32) if bound < FLOAT32_EXACT else np.dtype(np.float64)


#: what an `Int8Plan` returns
OUTPUTS = ("int32", "float32", "int8")
#: output-stage activations: name -> (code, lo, hi) of `convolab.kernels.int8.stage`
ACTIVATIONS = {None: (0, 0.0, 0.0), "relu": (1, 0.0, 0.0), "relu6": (2, 0.0, 6.0)}


def _activation(activation) -> tuple[int, float, float]:
    """(code, lo, hi) of an output-stage activation: None, ``"relu"``, ``"relu6"`` or
    ``("clamp", lo, hi)`` (hardtanh / clamp bounds, lo <= hi)."""
    if isinstance(activation, tuple) and len(activation) == 3 and activation[0] == "clamp":
        lo, hi = float(activation[1]), float(activation[2])
        if not lo <= hi:
            raise ConvError(f"clamp bounds must satisfy lo <= hi, got ({lo}, {hi})")
        return 2, lo, hi
    if not isinstance(activation, (str, type(None))) or activation not in ACTIVATIONS:
        raise ConvError("activation must be None, 'relu', 'relu6' or ('clamp', lo, hi); "
                        f"got {activation!r}")
    return ACTIVATIONS[activation]


class Int8Plan:
    """`conv2d_int8` for one layer: weights checked and prepared once (packed for the int8
    microkernel, or as an exact GEMM matrix), then called on inputs of one shape.

    ``plan(xq, out=None)`` returns the result (``out``: a C-contiguous array of the output shape
    and dtype to write it to). Build it with `plan_int8`. Outputs:

    - ``"int32"``: the exact integer sums (default);
    - ``"float32"``: ``act(float32(y) * scale[k] + bias[k])``, one rounding (fma);
    - ``"int8"``: requantised codes ``clip(rint(act(...) / out_scale), -127, 127)``, computed
      as ``rint(fma(float32(y), float32(scale[k] / out_scale), float32(bias[k] / out_scale)))``
      (half to even; the activation's bounds divided by ``out_scale`` too).

    On the int8 microkernel the output stage runs as the tiles store (a quarter of int32's
    bytes for int8); the other methods apply the same arithmetic to their int32 results, so
    every method gives the same floats and codes."""

    def __init__(self, x_shape, wq, stride=1, padding=0, dilation=1, groups=1,
                 method: str = "direct", output: str = "int32", scale=None, bias=None,
                 activation: str | None = None, out_scale: float | None = None):
        wq = check_int8(wq, "weight")
        if method not in METHODS:
            raise ConvError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        if output not in OUTPUTS:
            raise ConvError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
        _activation(activation)
        spec = ConvSpec.from_shapes(tuple(x_shape), wq.shape, stride, padding, dilation, groups,
                                    np.int8)
        bound = accumulation_bound(wq)
        if bound >= INT32_LIMIT:
            raise ConvError(
                f"int32 accumulation could overflow: 128 * max_k sum|w[k]| = {bound} >= 2**31 "
                f"(reduction length {spec.reduction_length})"
            )
        from ..kernels import int8 as mk8

        self._mk8 = mk8  # kept: an import statement per call cost microseconds
        self._dw = _depthwise_kernel(spec)
        self.spec = spec
        self.method = method
        self.output = output
        self.stage = self._stage(spec.K, output, scale, bias, activation, out_scale)
        self.wq = np.ascontiguousarray(wq)
        self._taps = None
        if method == "direct":
            self._prep = microkernel_packed(spec, self.wq)
            if self._prep is None and self._dw and spec.K == spec.C:
                self._taps = mk8.depthwise_taps(self.wq)
        else:
            self._prep = pack_im2col(spec, self.wq, gemm_dtype(bound))

    @staticmethod
    def _stage(K, output, scale, bias, activation, out_scale):
        from ..kernels import int8 as mk8

        if output == "int32":
            if scale is not None or bias is not None or activation or out_scale is not None:
                raise ConvError("scale, bias, activation and out_scale need output='float32' or "
                                "'int8' (int32 results are the exact sums)")
            return None
        if scale is None:
            raise ConvError(f"output={output!r} needs scale (a float or one per output channel)")
        sc = np.asarray(scale, dtype=np.float64)
        if sc.ndim > 1 or (sc.ndim == 1 and sc.shape != (K,)) or not np.all(np.isfinite(sc)):
            raise ConvError(f"scale must be a finite float or {K} of them, got {scale!r}")
        b = np.zeros(K) if bias is None else np.asarray(bias, dtype=np.float64)
        if b.shape != (K,) or not np.all(np.isfinite(b)):
            raise ConvError(f"bias must be {K} finite floats, got shape {b.shape}")
        act, lo, hi = _activation(activation)
        d = 1.0
        if output == "int8":
            if out_scale is None or not np.isfinite(out_scale) or out_scale <= 0:
                raise ConvError(f"output='int8' needs out_scale > 0, got {out_scale!r}")
            d = float(out_scale)
        elif out_scale is not None:
            raise ConvError("out_scale is for output='int8'")
        return mk8.stage(K, np.broadcast_to(sc, (K,)) / d, b / d, act, lo / d, hi / d)

    @property
    def path(self) -> str:
        """What computes it: the int8 microkernel's path (``vnni512``, ``vnni256``,
        ``generic``), ``loops`` or ``im2col``."""
        if self.method == "im2col":
            return "im2col"
        return "loops" if self._prep is None else self._prep.path

    def __call__(self, xq, out=None, threads: int | None = None) -> np.ndarray:
        """The layer on int8 codes ``xq`` on ``threads`` threads of the team (default:
        convolab's thread count; the microkernel and depthwise paths)."""
        xq = check_int8(xq, "input")
        if xq.shape != self.spec.x_shape:
            raise ConvError(f"input of shape {xq.shape}; this plan takes {self.spec.x_shape}")
        if out is None:
            out = np.empty(self.spec.out_shape, dtype=self.output)
        elif (out.shape != self.spec.out_shape or out.dtype != self.output
              or not out.flags.c_contiguous):
            raise ConvError(f"out must be a C-contiguous {self.output} array of shape "
                            f"{self.spec.out_shape}, got {out.dtype} {out.shape}")
        xq = np.ascontiguousarray(xq)
        if self.method == "direct" and self._prep is not None:
            self._mk8.conv(self.spec, xq, self._prep, out, threads, stage=self.stage)
            return out
        if self.method == "direct" and self._dw:
            self._mk8.depthwise(self.spec, xq, self.wq, out, threads, stage=self.stage,
                                taps=self._taps)
            return out
        acc = out if self.stage is None else np.empty(self.spec.out_shape, dtype=np.int32)
        if self.method == "direct":
            run_direct(self.spec, xq, self.wq, acc, None)
        else:
            run_im2col(self.spec, xq, self._prep, acc)
        if self.stage is not None:
            from ..kernels import int8 as mk8

            mk8.requant(acc, out, self.stage, threads)
        return out


    def bind(self, xq: np.ndarray, out: np.ndarray, threads: int | None = None):
        """This plan on these very arrays as a function of no arguments (checked once; on the
        int8 microkernel and depthwise kernel `convolab.kernels.int8.bind`: the job's
        arguments made once): for a caller that runs it again and again on the same buffers,
        one call at a time."""
        xq = check_int8(xq, "input")
        if (xq.shape != self.spec.x_shape or not xq.flags.c_contiguous
                or out.shape != self.spec.out_shape or out.dtype != self.output
                or not out.flags.c_contiguous):
            raise ConvError(f"bind takes C-contiguous int8 {self.spec.x_shape} codes and a "
                            f"{self.output} {self.spec.out_shape} output")
        if threads is None:
            from .._machine import worker_count

            threads = worker_count()
        if self.method == "direct" and self._prep is not None:
            return self._mk8.bind(self.spec, xq, self._prep, out, threads, self.stage)
        if self.method == "direct" and self._dw:
            return self._mk8.bind(self.spec, xq, None, out, threads, self.stage, wq=self.wq,
                                  taps=self._taps)
        return lambda: self(xq, out, threads)


def plan_int8(x_shape, wq, stride=1, padding=0, dilation=1, groups=1,
              method: str = "direct", output: str = "int32", scale=None, bias=None,
              activation: str | None = None, out_scale: float | None = None) -> Int8Plan:
    """An `Int8Plan`: `conv2d_int8` for inputs of shape ``x_shape`` with the weights prepared
    once (what a network or a benchmark calls repeatedly), returning the exact int32 sums or,
    with ``output="float32"`` / ``"int8"``, their output stage (see `Int8Plan`)."""
    return Int8Plan(x_shape, wq, stride, padding, dilation, groups, method, output, scale, bias,
                    activation, out_scale)


def conv2d_int8(xq, wq, stride=1, padding=0, dilation=1, groups=1, method: str = "direct") -> np.ndarray:
    """Exact integer convolution of int8 codes with int32 accumulation.

    Parameters
    ----------
    xq : numpy.ndarray of int8, shape (N, C, H, W)
    wq : numpy.ndarray of int8, shape (K, C/groups, R, S)
    stride, padding, dilation, groups
        As `convolab.conv2d` (PyTorch semantics).
    method : {"direct", "im2col"}

    Returns
    -------
    numpy.ndarray of int32, shape (N, K, OH, OW)
        Bit-exact: equal to ``convolab.reference.conv2d(xq, wq, ...)``.

    Raises
    ------
    ConvError
        Non-int8 arrays, bad shapes or hyper-parameters, an unknown method, or weights whose
        accumulation bound reaches ``2**31``.

    One call prepares the weights (checks their bound, packs them); `plan_int8` does that once
    for repeated calls.
    """
    xq = check_int8(xq, "input")
    wq = check_int8(wq, "weight")
    if method not in METHODS:
        raise ConvError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return Int8Plan(xq.shape, wq, stride, padding, dilation, groups, method)(xq)


def pad_int8(spec: ConvSpec, xq: np.ndarray) -> np.ndarray:
    pl, pr, pt, pb = spec.padding
    if not any(spec.padding):
        return np.ascontiguousarray(xq)
    return np.pad(xq, ((0, 0), (0, 0), (pt, pb), (pl, pr)))


def microkernel_packed(spec: ConvSpec, wq: np.ndarray):
    """The filter packed for the int8 microkernel (`convolab.kernels.int8.Packed`), or None
    where "direct" runs on the plain loops (few output channels per group, or a shifted
    accumulation bound of ``2**31`` or more)."""
    from ..kernels import int8 as mk8

    if spec.Kg < MICROKERNEL_MIN_KG or mk8.accumulation_bound_u8(wq) >= INT32_LIMIT:
        return None
    return mk8.Packed(wq, spec.groups, pointwise=mk8.pointwise(spec))


def _depthwise_kernel(spec: ConvSpec) -> bool:
    """Depthwise layers (one input channel per group) with at most 1024 taps run on
    `convolab.kernels.int8.depthwise` (its float32 sums are exact up to that size)."""
    return spec.groups == spec.C and spec.Cg == 1 and spec.R * spec.S <= 1024


def run_direct(spec: ConvSpec, xq: np.ndarray, wq: np.ndarray, out: np.ndarray,
               packed=False) -> None:
    """Direct int8 kernel into ``out`` (int32, spec.out_shape); weights already checked.
    ``packed``: `microkernel_packed`'s result when the caller keeps it (False: pack here)."""
    from ..kernels import PARALLEL_LOCK
    from ..kernels import int8 as mk8
    from ..kernels._quant import conv_int8_direct, conv_int8_direct_kb

    if packed is False:
        packed = microkernel_packed(spec, wq)
    if packed is not None:
        mk8.conv(spec, np.ascontiguousarray(xq), packed, out)
        return
    if _depthwise_kernel(spec):
        mk8.depthwise(spec, np.ascontiguousarray(xq), np.ascontiguousarray(wq), out)
        return
    xp = pad_int8(spec, xq)
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    kernel = conv_int8_direct_kb if spec.Kg >= 4 else conv_int8_direct
    with PARALLEL_LOCK:
        kernel(xp, wq, out, sh, sw, dh, dw, spec.groups)


def pack_im2col(spec: ConvSpec, wq: np.ndarray, dtype) -> np.ndarray:
    """Weights as (groups, K/groups, C/groups*R*S) in the exact GEMM dtype."""
    return np.ascontiguousarray(
        wq.reshape(spec.groups, spec.Kg, spec.reduction_length).astype(dtype)
    )


def run_im2col(spec: ConvSpec, xq: np.ndarray, wpack: np.ndarray, out: np.ndarray) -> None:
    """im2col + float GEMM (exact, see the module notes) into ``out`` (int32)."""
    from ..kernels._unfold import unfold_rows

    pl, _, pt, _ = spec.padding
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    OH, OW = spec.OH, spec.OW
    cols = np.empty((spec.groups, spec.reduction_length, OH * OW), dtype=wpack.dtype)
    res = np.empty((spec.groups, spec.Kg, OH * OW), dtype=wpack.dtype)
    for n in range(spec.N):
        unfold_rows(xq[n], cols, spec.R, spec.S, sh, sw, dh, dw, pt, pl, OW, 0, OH)
        np.matmul(wpack, cols, out=res)
        out[n] = res.reshape(spec.K, OH, OW)  # exact integers -> int32
