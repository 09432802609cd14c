"""The fused output stage shared by the kernels that support it: ``y = act(y + b[k] + r)``.

Used inside the microkernel's tile tasks and the depthwise kernel (while the tile's or the
plane's output is still in cache) and by `convolab.runtime`'s standalone epilogue. Layout:
flat float32 arrays; a run of ``n`` outputs of one channel ``k``.

``mode`` bits: 1 multiply by a per-channel scale (standalone BatchNorm), 2 add the bias,
4 add the residual. The order is PyTorch's: ``((y * scale) + b) + r``, then the activation.
Activation codes: 0 none, 1 ReLU, 2 clamp(lo, hi) (ReLU6, hardtanh), 3 SiLU, 4 Hardswish,
5 Sigmoid, 6 GELU (erf), 7 GELU (tanh approximation), 8 Hardsigmoid; NaN propagates through
every one, as in PyTorch. ReLU and clamp are PyTorch's bit for bit, a zero's sign included
(`relu`, `clamp`: compares and selects, also in the kernels' vector stages). Elementwise: the
result does not depend on how outputs are split.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types, uint64
from numba.core import cgutils
from numba.extending import intrinsic

# float32 constants (an integer or float64 literal would promote the arithmetic to float64)
F0 = np.float32(0)
F1 = np.float32(1)
_F3 = np.float32(3)
_F6 = np.float32(6)
_HALF = np.float32(0.5)
_SQRT1_2 = np.float32(0.7071067811865476)
_SQRT_2_PI = np.float32(0.7978845608028654)
_GELU_C = np.float32(0.044715)


def _nan_minmax(name):
    def impl(typingctx, a, b):
        if not (isinstance(a, types.Float) and isinstance(b, types.Float)):
            return None
        ret = a if a.bitwidth >= b.bitwidth else b
        sig = ret(a, b)

        def codegen(context, builder, sig, args):
            ty = context.get_value_type(sig.return_type)
            vals = [context.cast(builder, v, t, sig.return_type) for v, t in zip(args, sig.args, strict=True)]
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ty, [ty, ty]),
                f"llvm.{name}.{'f32' if ty == ir.FloatType() else 'f64'}")
            return builder.call(fn, vals)

        return sig, codegen

    impl.__name__ = f"nan_{name}"
    return intrinsic(impl)


#: ``max(a, b)`` that returns NaN if either is NaN (``llvm.maximum``; max pooling):
#: branch-free, so loops over it vectorise; a compare-and-branch form was scalar inside the
#: larger kernels and mispredicted on real activations (4x slower)
maximum = _nan_minmax("maximum")


@njit(inline="always")
def relu(v):  # pragma: no cover - compiled
    """ReLU as PyTorch computes it: ``v < 0 ? 0 : v`` (NaN stays, -0.0 keeps its sign; the
    vector stages' `convolab.kernels._microkernel.relu_vec`)."""
    return F0 if v < F0 else v


@njit(inline="always")
def clamp(v, lo, hi):  # pragma: no cover - compiled
    """Clamp as PyTorch computes it: ``t = v < lo ? lo : v``, then ``t > hi ? hi : t`` (NaN
    stays; `convolab.kernels._microkernel.clamp_vec`)."""
    t = lo if v < lo else v
    return hi if t > hi else t


@njit(inline="always")
def _clip6(t):  # pragma: no cover - compiled
    return clamp(t, F0, _F6)


@njit(inline="always")
def act(v, code, lo, hi):  # pragma: no cover - compiled
    """Activation ``code`` of ``v`` (float32)."""
    if code == 1:
        return relu(v)
    if code == 2:
        return clamp(v, lo, hi)
    if code == 3:
        return v / (F1 + math.exp(-v))
    if code == 4:
        return v * _clip6(v + _F3) / _F6
    if code == 5:
        return F1 / (F1 + math.exp(-v))
    if code == 6:
        return v * _HALF * (F1 + math.erf(v * _SQRT1_2))
    if code == 7:
        return v * _HALF * (F1 + math.tanh(_SQRT_2_PI * (v + _GELU_C * v * v * v)))
    if code == 8:
        return _clip6(v + _F3) / _F6
    return v


@njit(cache=True, nogil=True)
def run(d, do, r, ro, n, a, b, mode, code, lo, hi):  # pragma: no cover - compiled
    """``d[do + i] = act(d[do + i] * a + b + r[ro + i])`` for ``i < n`` in place, the terms by
    ``mode``. In place on purpose: with a separate source array LLVM must check at run time
    that the two ranges do not overlap, and for an in-place call (the same array and offset)
    it fell back to scalar code (4x slower). Unsigned indices, so that LLVM vectorises the
    loops (see `convolab.kernels._direct`)."""
    n = uint64(n)
    do = uint64(do)
    ro = uint64(ro)
    if mode & 4:
        if mode & 1:
            for i in range(n):
                d[do + i] = act(d[do + i] * a + b + r[ro + i], code, lo, hi)
        elif mode & 2:
            if code == 0:
                for i in range(n):
                    d[do + i] = d[do + i] + b + r[ro + i]
            else:
                for i in range(n):
                    d[do + i] = act(d[do + i] + b + r[ro + i], code, lo, hi)
        else:
            for i in range(n):
                d[do + i] = act(d[do + i] + r[ro + i], code, lo, hi)
    elif mode & 1:
        for i in range(n):
            d[do + i] = act(d[do + i] * a + b, code, lo, hi)
    elif mode & 2:
        if code == 1:
            for i in range(n):
                d[do + i] = relu(d[do + i] + b)
        elif code == 2:
            for i in range(n):
                d[do + i] = clamp(d[do + i] + b, lo, hi)
        elif code == 0:
            for i in range(n):
                d[do + i] = d[do + i] + b
        else:
            for i in range(n):
                d[do + i] = act(d[do + i] + b, code, lo, hi)
    elif code == 1:
        for i in range(n):
            d[do + i] = relu(d[do + i])
    elif code == 2:
        for i in range(n):
            d[do + i] = clamp(d[do + i], lo, hi)
    else:
        for i in range(n):
            d[do + i] = act(d[do + i], code, lo, hi)
