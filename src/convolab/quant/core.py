"""Symmetric post-training quantisation: scales, quantize / dequantize, calibration observers.

Conventions (symmetric, no zero point, restricted range):

- a ``b``-bit signed code is an integer in ``[-qmax, qmax]`` with ``qmax = 2**(b-1) - 1``
  (127 for int8; -128 is never produced, so negation never overflows and ``|q| <= qmax``);
- ``quantize(x, s) = clip(rint(x / s), -qmax, qmax)`` -- round half to even, computed in float64
  -- and ``dequantize(q, s) = q * s``;
- weights: one scale per output channel, ``s_w[k] = max |w[k]| / qmax`` (no clipping);
- activations: one scale per tensor, ``s_x = t / qmax`` where the clipping threshold ``t`` is
  calibrated on sample inputs by `Observer`: ``"minmax"`` (``t = max |x|``), ``"percentile"``
  (``t`` = the given percentile of ``|x|``) or ``"mse"`` (``t`` minimising the mean squared
  quantisation error of the samples over a grid of candidate thresholds);
- the transform-domain variants (fast algorithms, `convolab.quant.fast`) use the same observer
  with one column per transform-domain point ("frequency").

A scale must be a finite float > 0; ``bits`` must be in 2..16. Anything else raises
`convolab.ConvError` naming the value.

Source: the standard per-channel symmetric post-training recipe (Krishnamoorthi, "Quantizing
deep convolutional networks for efficient inference: A whitepaper", 2018; Nagel et al., "A White
Paper on Neural Network Quantization", 2021).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConvError

#: calibration methods an `Observer` understands
METHODS = ("minmax", "percentile", "mse")


def check_bits(bits) -> int:
    """``bits`` as an int in 2..16, else `ConvError`."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= int(bits) <= 16:
        raise ConvError(f"bits must be an integer from 2 to 16, got {bits!r}")
    return int(bits)


def qmax(bits: int) -> int:
    """Largest code of a symmetric ``bits``-bit quantiser: ``2**(bits-1) - 1``."""
    return (1 << (check_bits(bits) - 1)) - 1


def code_dtype(bits: int) -> np.dtype:
    """The integer dtype that holds ``bits``-bit codes: int8 up to 8 bits, else int16."""
    return np.dtype(np.int8) if check_bits(bits) <= 8 else np.dtype(np.int16)


def check_scale(scale, what: str = "scale") -> np.ndarray:
    """``scale`` as a float64 array after checking every entry is finite and > 0."""
    try:
        s = np.asarray(scale, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConvError(f"{what} must be a positive float or an array of them, got {scale!r}") from None
    bad = ~np.isfinite(s) | (s <= 0)
    if bad.any():
        first = s[bad].flat[0] if s.ndim else float(s)
        raise ConvError(
            f"{what} must be finite and > 0 (a symmetric quantiser's step); got {first!r}"
            + (f" at index {tuple(int(i) for i in np.argwhere(bad)[0])}" if s.ndim else "")
        )
    return s


def _broadcast_scale(s: np.ndarray, ndim: int, axis, shape) -> np.ndarray:
    if s.ndim == 0:
        return s
    if axis is None:
        raise ConvError(f"an array of {s.size} scales needs axis= (the axis they run along)")
    ax = axis if axis >= 0 else axis + ndim
    if not 0 <= ax < ndim:
        raise ConvError(f"axis {axis} out of range for a {ndim}-D array")
    if s.shape != (shape[ax],):
        raise ConvError(f"{s.size} scales for axis {axis} of length {shape[ax]}")
    view = [1] * ndim
    view[ax] = shape[ax]
    return s.reshape(view)


def quantize(x, scale, bits: int = 8, axis: int | None = None) -> np.ndarray:
    """Symmetric quantisation ``clip(rint(x / scale), -qmax, qmax)``.

    Parameters
    ----------
    x : array_like of float
        float16, float32 or float64 values.
    scale : float or 1-D array of float
        Step size(s), finite and > 0; an array gives one scale per index along ``axis``.
    bits : int
        Code width, 2..16.
    axis : int, optional
        The axis a 1-D ``scale`` runs along (e.g. 0 for per-output-channel weights).

    Returns
    -------
    numpy.ndarray
        int8 codes (int16 above 8 bits), all in ``[-qmax, qmax]``.

    Raises
    ------
    ConvError
        Non-float input, a scale that is not finite and positive, wrong number of scales,
        bits outside 2..16.
    """
    b = check_bits(bits)
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise ConvError(f"quantize takes float16/32/64 values, got dtype {x.dtype}")
    s = _broadcast_scale(check_scale(scale), x.ndim, axis, x.shape)
    q = qmax(b)
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.rint(x.astype(np.float64) / s)
    if np.isnan(v).any():
        raise ConvError("quantize got NaN values")
    return np.clip(v, -q, q).astype(code_dtype(b))


def dequantize(q, scale, axis: int | None = None, dtype=np.float32) -> np.ndarray:
    """``q * scale`` as ``dtype`` (float32 by default); the inverse of `quantize` up to rounding.

    Raises
    ------
    ConvError
        Non-integer codes, bad scales (see `quantize`).
    """
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        raise ConvError(f"dequantize takes integer codes, got dtype {q.dtype}")
    s = _broadcast_scale(check_scale(scale), q.ndim, axis, q.shape)
    return (q.astype(np.float64) * s).astype(dtype)


def weight_scales(w, bits: int = 8, axis: int = 0) -> np.ndarray:
    """Per-output-channel symmetric scales ``max |w[k]| / qmax`` (1.0 for an all-zero channel).

    ``axis`` is the output-channel axis (0 for (K, C/groups, R, S) weights); the result has one
    float64 scale per index along it.
    """
    w = np.asarray(w)
    if w.dtype.kind != "f":
        raise ConvError(f"weights must be float16/32/64, got dtype {w.dtype}")
    if not np.isfinite(w).all():
        raise ConvError("weights contain NaN or infinity")
    a = np.moveaxis(np.abs(w.astype(np.float64)), axis, 0).reshape(w.shape[axis], -1)
    amax = a.max(axis=1) if a.shape[1] else np.zeros(a.shape[0])
    return np.where(amax > 0, amax / qmax(bits), 1.0)


# ---------------------------------------------------------------------------- calibration
def _mse_threshold(v: np.ndarray, amax: float, q: int, grid: int = 100) -> float:
    """The threshold in ``amax * (1..grid)/grid`` with the least squared error on ``|v|``."""
    if amax <= 0 or v.size == 0:
        return amax
    cands = amax * np.arange(1, grid + 1, dtype=np.float64) / grid
    s = cands / q
    best, best_t = np.inf, amax
    for lo in range(0, grid, 25):  # bounded temporaries: 25 candidates x samples
        ss = s[lo : lo + 25, None]
        e = np.minimum(np.rint(v[None, :] / ss), q) * ss - v[None, :]
        err = np.einsum("ij,ij->i", e, e)
        i = int(np.argmin(err))
        if err[i] < best:
            best, best_t = float(err[i]), float(cands[lo + i])
    return best_t


class Observer:
    """Running statistics of activations, per column, for calibrating symmetric scales.

    Call `update` with arrays whose last axis has ``columns`` entries (1 for a per-tensor scale:
    pass ``x.reshape(-1, 1)``; P for per-frequency scales), then `scales`.

    Parameters
    ----------
    columns : int
        Independent scales calibrated (last axis of the updates).
    method : {"minmax", "percentile", "mse"}
        How the clipping threshold is chosen (see the module notes).
    percentile : float
        For ``"percentile"``: the percentile of ``|x|`` (default 99.99).
    sample : int
        Values of ``|x|`` kept per column (a uniform random subsample with a fixed seed) for the
        percentile and MSE methods; the maximum is always exact.
    """

    def __init__(self, columns: int = 1, method: str = "minmax", percentile: float = 99.99,
                 sample: int = 1 << 15, seed: int = 0):
        if method not in METHODS:
            raise ConvError(f"calibration method must be one of {', '.join(METHODS)}; got {method!r}")
        if not 0 < percentile <= 100:
            raise ConvError(f"percentile must be in (0, 100], got {percentile!r}")
        self.columns = int(columns)
        self.method = method
        self.percentile = float(percentile)
        self.sample = int(sample)
        self.amax = np.zeros(self.columns)
        self.count = 0
        self._kept: np.ndarray | None = None
        self._rng = np.random.default_rng(seed)

    def update(self, a) -> None:
        """Add samples: ``a`` is float with last axis ``columns``."""
        a = np.asarray(a)
        if a.dtype.kind != "f":
            raise ConvError(f"calibration samples must be float, got dtype {a.dtype}")
        if a.shape[-1:] != (self.columns,):
            raise ConvError(f"calibration samples need a last axis of {self.columns}, got shape {a.shape}")
        v = np.abs(a.reshape(-1, self.columns))
        if not np.isfinite(v).all():
            raise ConvError("calibration samples contain NaN or infinity")
        if v.shape[0] == 0:
            return
        self.amax = np.maximum(self.amax, v.max(axis=0))
        self.count += v.shape[0]
        if self.method == "minmax":
            return
        if v.shape[0] > self.sample:
            v = v[self._rng.choice(v.shape[0], self.sample, replace=False)]
        kept = v if self._kept is None else np.concatenate([self._kept, v])
        if kept.shape[0] > self.sample:
            kept = kept[self._rng.choice(kept.shape[0], self.sample, replace=False)]
        self._kept = np.ascontiguousarray(kept, dtype=np.float64)

    def thresholds(self, bits: int = 8) -> np.ndarray:
        """Clipping threshold per column (float64)."""
        if self.count == 0:
            raise ConvError("no calibration samples were observed")
        if self.method == "minmax":
            return self.amax.copy()
        if self.method == "percentile":
            return np.minimum(np.percentile(self._kept, self.percentile, axis=0), self.amax)
        q = qmax(bits)
        return np.array([_mse_threshold(self._kept[:, j], float(self.amax[j]), q)
                         for j in range(self.columns)])

    def scales(self, bits: int = 8) -> np.ndarray:
        """Scale per column: threshold / qmax (1.0 for a column that was always zero)."""
        t = self.thresholds(bits)
        return np.where(t > 0, t / qmax(bits), 1.0)


@dataclass(frozen=True)
class QuantConfig:
    """How one convolution is quantised.

    Attributes
    ----------
    algorithm : str
        ``"direct"`` or ``"im2col"`` (int8 x int8 -> int32 in the spatial domain), or a fast
        algorithm of `convolab.quant.fast.FAST` (``"winograd_f2x3"``, ``"winograd_f4x3"``,
        ``"sfc4_4x3"``, ``"sfc6_6x3"``, ``"sfc6_7x3"``, ...).
    bits : int
        Spatial code width of activations and weights (default 8).
    transform_bits : int or None
        Fast algorithms: code width of the transform domain (per-frequency activation scales,
        per (output channel, frequency) weight scales). None keeps the exact integer transform
        of the spatial codes (no rounding in the transform domain: bit-exact with direct).
    calibration : {"minmax", "percentile", "mse"}
        How activation thresholds are calibrated (spatial and transform domain).
    percentile : float
        For ``calibration="percentile"``.
    fallback : str
        Spatial algorithm for layers a fast algorithm cannot run (``"im2col"`` or ``"direct"``).
    """

    algorithm: str = "im2col"
    bits: int = 8
    transform_bits: int | None = 8
    calibration: str = "minmax"
    percentile: float = 99.99
    fallback: str = "im2col"

    def __post_init__(self):
        from .fast import FAST

        check_bits(self.bits)
        if self.bits > 8:
            raise ConvError(f"spatial codes are int8: bits must be <= 8, got {self.bits}")
        if self.transform_bits is not None:
            check_bits(self.transform_bits)
            if self.transform_bits > 8:
                raise ConvError(f"transform_bits must be <= 8 or None (exact), got {self.transform_bits}")
        known = ("direct", "im2col", *FAST)
        if self.algorithm not in known:
            raise ConvError(f"unknown quantised algorithm {self.algorithm!r}; known: {', '.join(known)}")
        if self.fallback not in ("direct", "im2col"):
            raise ConvError(f"fallback must be 'direct' or 'im2col', got {self.fallback!r}")
        if self.calibration not in METHODS:
            raise ConvError(f"calibration must be one of {', '.join(METHODS)}; got {self.calibration!r}")
        if not 0 < self.percentile <= 100:
            raise ConvError(f"percentile must be in (0, 100], got {self.percentile!r}")

    @property
    def fast(self) -> bool:
        return self.algorithm not in ("direct", "im2col")

    def label(self) -> str:
        """Short text: ``sfc6_6x3 int8/t6`` (transform bits after the slash)."""
        if not self.fast:
            return f"{self.algorithm} int{self.bits}"
        t = "exact" if self.transform_bits is None else f"t{self.transform_bits}"
        return f"{self.algorithm} int{self.bits}/{t}"
