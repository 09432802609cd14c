"""`QuantizedConv`: one float convolution run in integer arithmetic after calibration.

Float weights and inputs in, float output out; inside, int8 codes and exact integer
accumulation. The life cycle is post-training quantisation:

1. build it from the float weights (weight codes and, for fast algorithms, the quantised filter
   transform are made once);
2. ``calibrate(samples)`` (or `observe` several times, then `freeze`): activation scales from
   sample inputs -- one per tensor in the spatial domain, one per frequency in the transform
   domain of a fast algorithm (`convolab.quant.core.Observer`);
3. call it: ``y = layer(x)``.

Per call (spatial algorithms, ``"direct"`` / ``"im2col"``):
``y[n,k] = s_x s_w[k] * conv_int32(quantize(x, s_x), quantize(w, s_w)) + b[k]`` in float64,
rounded once to the output dtype (the exact int32 sums from the int8 microkernel, the depthwise
kernel or im2col; `convolab.quant.plan_int8` has the float32 / int8 output stages that run as
the tiles store).
Fast algorithms: see `convolab.quant.fast` (the stages and where they round). Float32 (or
float16) data on Winograd F(2x2,3x3), SFC-4 or SFC-6 with one group runs compiled
(`convolab.quant.fastint8`: the same codes and integer sums, the dequantisation and output
transform in float32); float64 data keeps the NumPy pipeline (float64 throughout).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConvError
from ..spec import ConvSpec
from . import fast as _fast
from . import intconv as _ic
from .core import Observer, QuantConfig, qmax, quantize, weight_scales

#: transform-domain values kept per frequency for percentile / MSE calibration
FREQ_SAMPLE = 4096


class QuantizedConv:
    """A 2D convolution with fixed float weights, computed with quantised integer arithmetic.

    Parameters
    ----------
    w : numpy.ndarray, float, shape (K, C/groups, R, S)
    bias : numpy.ndarray, shape (K,), optional
        Added in float after dequantisation.
    stride, padding, dilation, groups
        As `convolab.conv2d`.
    config : QuantConfig
        Algorithm, bit widths and calibration method. A fast algorithm that cannot run this layer
        (stride, dilation or kernel size) is replaced by ``config.fallback``; `note` says why.

    Attributes
    ----------
    algorithm : str
        What runs: ``"direct"``, ``"im2col"`` or a fast algorithm name.
    label : str
        ``algorithm`` with bit widths, for reports.
    note : str
        Why a fast algorithm was not used (empty otherwise).
    s_w : numpy.ndarray (K,)
        Spatial per-output-channel weight scales (spatial algorithms and exact mode).
    s_x : float
        Spatial activation scale (after calibration).
    s_u : numpy.ndarray (K, P), s_v : numpy.ndarray (P,)
        Transform-domain weight and activation scales (quantised fast algorithms).

    Raises
    ------
    ConvError
        Non-float weights, bad hyper-parameters, or weights whose integer accumulation could
        overflow int32.
    """

    def __init__(self, w, bias=None, stride=1, padding=0, dilation=1, groups=1,
                 config: QuantConfig | None = None):
        config = QuantConfig() if config is None else config
        if not isinstance(config, QuantConfig):
            raise ConvError(f"config must be a QuantConfig, got {type(config).__name__}")
        w = np.asarray(w)
        if w.dtype.kind != "f":
            raise ConvError(f"weights must be float16/32/64, got dtype {w.dtype}")
        if w.ndim != 4:
            raise ConvError(f"weight must be 4-D (K, C/groups, R, S), got shape {w.shape}")
        if bias is not None:
            bias = np.asarray(bias, dtype=np.float64)
            if bias.shape != (w.shape[0],):
                raise ConvError(f"bias must have shape ({w.shape[0]},), got {bias.shape}")
        self.config = config
        self.w = np.ascontiguousarray(w, dtype=np.float64)
        self.bias = bias
        self._args = (stride, padding, dilation, groups)
        probe = self._spec((1, w.shape[1] * (groups if isinstance(groups, int) else 1), 64, 64),
                           np.float32, validate_only=True)
        self.note = ""
        algo = config.algorithm
        self.t = None
        if config.fast:
            t = _fast.transforms(algo)
            reason = _fast.supports(t, probe)
            if reason is None:
                self.t = t
            else:
                self.note = f"{algo} cannot run it: {reason}"
                algo = config.fallback
        self.algorithm = algo
        self.bits = config.bits
        self.tbits = config.transform_bits if self.t is not None else None
        self.s_x: float | None = None
        self.s_v: np.ndarray | None = None
        self._obs_x = Observer(1, config.calibration, config.percentile)
        self._obs_v = None
        if self.t is None or self.tbits is None:  # spatial codes of the weights
            self.s_w = weight_scales(self.w, self.bits)
            self.wq = quantize(self.w, self.s_w, self.bits, axis=0)
            bound = _ic.accumulation_bound(self.wq)
            if bound >= _ic.INT32_LIMIT:
                raise ConvError(f"int32 accumulation could overflow: 128 * max_k sum|wq[k]| = {bound}")
            self._wpack = None
            self._mk = False  # the int8 microkernel's packed filter, made at the first call
            if self.t is None and algo == "im2col":
                self._wpack_dtype = _ic.gemm_dtype(bound)
        if self.t is not None and self.tbits is not None:
            t, q = self.t, qmax(self.tbits)
            U = _fast.filter_transform(self.w, t)  # (K, Cg, P)
            amax = np.abs(U).max(axis=1)  # (K, P)
            self.s_u = np.where(amax > 0, amax / q, 1.0)
            self.U = U
            self.Uq = np.clip(np.rint(U / self.s_u[:, None, :]), -q, q)
            bound = int(np.abs(self.Uq).sum(axis=1).max()) * q
            if bound >= _ic.INT32_LIMIT:
                raise ConvError(f"int32 accumulation could overflow in the transform domain (bound {bound})")
            self._gemm = _ic.gemm_dtype(bound)
            self._obs_v = Observer(t.P, config.calibration, config.percentile, sample=FREQ_SAMPLE)

    # ------------------------------------------------------------------ helpers
    @property
    def label(self) -> str:
        if self.t is None:
            return f"{self.algorithm} int{self.bits}"
        tb = "exact" if self.tbits is None else f"t{self.tbits}"
        return f"{self.algorithm} int{self.bits}/{tb}"

    def _spec(self, x_shape, dtype, validate_only=False) -> ConvSpec:
        stride, padding, dilation, groups = self._args
        if validate_only:
            try:
                return ConvSpec.from_shapes(x_shape, self.w.shape, stride, padding, dilation, groups, dtype)
            except ConvError as e:
                if "empty output" not in str(e):
                    raise
                big = (x_shape[0], x_shape[1], 4096, 4096)
                return ConvSpec.from_shapes(big, self.w.shape, stride, padding, dilation, groups, dtype)
        return ConvSpec.from_shapes(x_shape, self.w.shape, stride, padding, dilation, groups, dtype)

    def _check_x(self, x) -> tuple[np.ndarray, ConvSpec]:
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise ConvError(f"input must be float16/32/64, got dtype {x.dtype}")
        if x.ndim != 4:
            raise ConvError(f"input must be 4-D (N, C, H, W), got shape {x.shape}")
        return x, self._spec(x.shape, x.dtype)

    # ------------------------------------------------------------------ calibration
    def observe(self, x) -> None:
        """Record activation statistics of a sample input (float, (N, C, H, W))."""
        x, spec = self._check_x(x)
        self._obs_x.update(x.reshape(-1, 1))
        if self._obs_v is not None:
            V = _fast.input_transform(spec, x.astype(np.float64), self.t)
            self._obs_v.update(V.reshape(-1, self.t.P))

    def freeze(self) -> None:
        """Turn the observed statistics into scales (s_x, and s_v for the transform domain)."""
        self.__dict__.pop("_fast_plans", None)  # made with the old scales
        self.s_x = float(self._obs_x.scales(self.bits)[0])
        if self._obs_v is not None:
            self.s_v = self._obs_v.scales(self.tbits)

    def calibrate(self, samples) -> QuantizedConv:
        """`observe` every array in ``samples`` (or one array), then `freeze`. Returns self."""
        if isinstance(samples, np.ndarray):
            samples = [samples]
        for x in samples:
            self.observe(x)
        self.freeze()
        return self

    @property
    def calibrated(self) -> bool:
        return self.s_x is not None and (self._obs_v is None or self.s_v is not None)

    # ------------------------------------------------------------------ the call
    def __call__(self, x, out=None) -> np.ndarray:
        """The quantised convolution of float ``x``; returns ``x``'s float dtype (float32 for float16).

        ``out`` (optional) receives the result (shape and dtype must match).
        """
        if not self.calibrated:
            raise ConvError("QuantizedConv is not calibrated: call calibrate(samples) first")
        x, spec = self._check_x(x)
        y = self._run(spec, x)
        if self.bias is not None:
            y += self.bias.reshape(1, -1, 1, 1)
        odt = np.float64 if x.dtype == np.float64 else np.float32
        if out is None:
            return y.astype(odt)
        if out.shape != spec.out_shape:
            raise ConvError(f"out has shape {out.shape}, expected {spec.out_shape}")
        out[...] = y
        return out

    def codes(self, x) -> np.ndarray:
        """The int8 spatial codes of ``x`` this layer computes with."""
        return quantize(np.asarray(x), self.s_x, self.bits)

    def _run(self, spec: ConvSpec, x: np.ndarray) -> np.ndarray:
        xq = np.ascontiguousarray(self.codes(x))
        if self.t is None:
            acc = np.empty(spec.out_shape, dtype=np.int32)
            if self.algorithm == "direct":
                if self._mk is False:
                    self._mk = _ic.microkernel_packed(spec, self.wq)
                _ic.run_direct(spec, xq, self.wq, acc, self._mk)
            else:
                if self._wpack is None or self._wpack.shape[0] != spec.groups:
                    self._wpack = _ic.pack_im2col(spec, self.wq, self._wpack_dtype)
                _ic.run_im2col(spec, xq, self._wpack, acc)
            return acc * (self.s_x * self.s_w).reshape(1, -1, 1, 1)
        if self.tbits is None:
            acc = _fast.exact_fast_conv(spec, xq, self.wq, self.t)
            return acc * (self.s_x * self.s_w).reshape(1, -1, 1, 1)
        if x.dtype != np.float64 and self._compiled_fast(spec):
            return self._fast_plans[spec](xq)
        Vq = self._transform_codes(spec, xq)
        M = _fast.channel_reduce(spec, self.Uq, Vq, self._gemm)  # exact integers
        scale = (self.s_u * self.s_v[None, :])[:, None, None, :]  # (K, 1, 1, P)
        return _fast.output_transform(spec, M.astype(np.float64) * scale, self.t)

    def _compiled_fast(self, spec: ConvSpec) -> bool:
        """Whether float32 data runs on the compiled int8 fast path
        (`convolab.quant.fastint8`: the same codes and integer sums, VNNI GEMMs, the
        dequantisation and output transform in float32), its plan made for ``spec`` if so."""
        from ..kernels._int8_fast import ALGORITHMS
        from .fastint8 import FastInt8Plan

        if self.t.name not in ALGORITHMS or spec.groups != 1:
            return False
        plans = self.__dict__.setdefault("_fast_plans", {})
        if spec not in plans:
            plans[spec] = FastInt8Plan(spec, self.t.name, self.Uq.astype(np.int8), self.s_u,
                                       self.s_v, self.s_x, self.tbits)
        return True

    def _transform_codes(self, spec: ConvSpec, xq: np.ndarray) -> np.ndarray:
        """Stages 2-3: exact integer transform of the codes, requantised per frequency."""
        q = qmax(self.tbits)
        V = _fast.input_transform(spec, xq, self.t, np.float32)  # exact integers
        return np.clip(np.rint(V * (self.s_x / self.s_v)), -q, q).astype(self._gemm)

    # ------------------------------------------------------------------ analysis
    def error_bound(self, x) -> np.ndarray:
        """Elementwise bound on ``|self(x) - conv(x, w)|`` (exact float convolution, no bias).

        Valid when nothing clips (``calibration="minmax"`` on data covering ``x``). Spatial:
        ``sum (s_w/2 |x~| + |w| s_x/2)`` over the receptive field (``x~`` the dequantised input);
        fast algorithms: `convolab.quant.fast.fast_error_bound`; exact mode: the spatial bound.
        """
        from ..reference import conv2d as ref_conv

        x, spec = self._check_x(x)
        xq = self.codes(x)
        stride, padding, dilation, groups = self._args
        if self.t is None or self.tbits is None:
            xt = np.abs(xq.astype(np.float64) * self.s_x)
            a = ref_conv(xt, np.broadcast_to((self.s_w / 2)[:, None, None, None], self.w.shape).copy(),
                         None, stride, padding, dilation, groups)
            b = ref_conv(np.full(x.shape, self.s_x / 2), np.abs(self.w), None, stride, padding, dilation,
                         groups)
            return a + b
        Vdeq = self._transform_codes(spec, xq).astype(np.float64) * self.s_v
        return _fast.fast_error_bound(spec, self.t, self.U, self.s_u, Vdeq, self.s_v, self.s_x)
