"""The float64 / exact-integer reference convolution: the oracle for every test.

Deliberately simple and obviously correct: pad with zeros, take the (dilated, strided)
sliding windows as a view, and contract each group with ``numpy.einsum``. Floating inputs are
computed in float64 (error about 1e-16 relative to ``|x| (*) |w|``); integer inputs are
computed exactly in int64 (Python ints would be needed beyond 2**63; `conv2d` checks this).
Never optimise this module.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import ConvError
from .spec import ConvSpec


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1) -> np.ndarray:
    """Reference 2D cross-correlation with PyTorch's conv2d semantics.

    Returns float64 for floating inputs and int64 for integer inputs.
    """
    x = np.asarray(x)
    w = np.asarray(w)
    b = None if bias is None else np.asarray(bias)
    spec = ConvSpec.from_arrays(x, w, b, stride, padding, dilation, groups)
    integer = all(a.dtype.kind in "iu" for a in (x, w) + (() if b is None else (b,)))
    acc = np.int64 if integer else np.float64
    if integer:
        bound = (
            np.abs(x.astype(object)).max() * np.abs(w.astype(object)).max() * spec.reduction_length
            + (0 if b is None else np.abs(b.astype(object)).max())
        )
        if bound >= 2**63:
            raise ConvError(f"integer reference could overflow int64 (bound {bound})")
    return _correlate(spec, x.astype(acc), w.astype(acc), None if b is None else b.astype(acc))


def _correlate(spec: ConvSpec, x, w, b):
    pl, pr, pt, pb = spec.padding
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    win = sliding_window_view(xp, (spec.dilated_R, spec.dilated_S), axis=(2, 3))
    win = win[:, :, : spec.OH * sh : sh, : spec.OW * sw : sw, ::dh, ::dw]
    y = np.empty(spec.out_shape, dtype=x.dtype)
    Cg, Kg = spec.Cg, spec.Kg
    for g in range(spec.groups):
        y[:, g * Kg : (g + 1) * Kg] = np.einsum(
            "ncijrs,kcrs->nkij",
            win[:, g * Cg : (g + 1) * Cg],
            w[g * Kg : (g + 1) * Kg],
            optimize=True,
        )
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def magnitude(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1) -> np.ndarray:
    """``|x| (*) |w| + |b|`` in float64: the scale of rounding errors in each output."""
    return conv2d(
        np.abs(np.asarray(x, dtype=np.float64)),
        np.abs(np.asarray(w, dtype=np.float64)),
        None if bias is None else np.abs(np.asarray(bias, dtype=np.float64)),
        stride,
        padding,
        dilation,
        groups,
    )


def errors(y, ref, scale=None) -> dict[str, float]:
    """Error measures of ``y`` against the reference output ``ref``.

    Returns ``max_abs`` (max |y - ref|), ``max_rel`` (max_abs / max |ref|) and, when
    ``scale`` (from `magnitude`) is given, ``normwise`` (max_abs / max scale): the quantity
    every algorithm's ``error_bound`` bounds. NaNs in ``y`` where ``ref`` is finite give inf.
    """
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    diff = np.abs(y - ref)
    both_nan = np.isnan(y) & np.isnan(ref)
    same_inf = np.isinf(ref) & (y == ref)
    diff = np.where(both_nan | same_inf, 0.0, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)
    max_abs = float(diff.max()) if diff.size else 0.0
    finite_ref = ref[np.isfinite(ref)]
    ref_max = float(np.abs(finite_ref).max()) if finite_ref.size else 0.0
    out = {"max_abs": max_abs, "max_rel": max_abs / ref_max if ref_max > 0 else max_abs}
    if scale is not None:
        s = np.asarray(scale, dtype=np.float64)
        s = s[np.isfinite(s)]
        smax = float(s.max()) if s.size else 0.0
        out["normwise"] = max_abs / smax if smax > 0 else max_abs
    return out
