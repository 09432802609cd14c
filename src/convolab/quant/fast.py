"""Integer Winograd and SFC convolution with a per-frequency quantised transform domain.

A fast algorithm on an ``n x n`` input tile (``n = m + r - 1``) is
``vec(Y) = AT [(G vec(W)) * (BT vec(X))]`` (`convolab.transforms`); for C input channels the
products are summed over channels at each transform-domain point p ("frequency"):
``M[k, p] = sum_c U[k, c, p] V[c, p]`` with ``U = G W``, ``V = BT X``.

The quantised pipeline (as in the SFC paper's post-training recipe), stage by stage, with
where rounding happens:

1. spatial input codes ``xq = quantize(x, s_x, bits)`` (int8; per-tensor scale)  -- ROUNDING 1;
2. input transform ``V = BT xq``: exact integers. SFC's and F(2x2,3x3)'s ``BT`` have entries in
   {0, +-1}, F(4x4,3x3)'s are integers up to 25; |V[p]| <= 128 * ||BT[p]||_1 (16 for SFC-4,
   36 for SFC-6, 4 for F(2x2), 100 for F(4x4)), computed exactly in float32 (< 2**24);
3. transform-domain requantisation to ``b`` bits with one scale per frequency,
   ``Vq[p] = clip(rint(V[p] * s_x / s_v[p]), -qmax_b, qmax_b)``  -- ROUNDING 2 (and clipping);
   the multiplier ``s_x / s_v[p]`` is applied in float64, also by the compiled path
   (`convolab.quant.fastint8`; hardware would use a fixed-point multiplier; the result differs
   only where V * s_x / s_v lands within ~1e-16 of a half; a float32 product, 9% faster on the
   compiled path's 64-channel layers, moved two photographs of docs/quant.md's MSE-calibrated
   rows);
4. filter transform ``U = G W`` of the float weights (float64), quantised with one scale per
   (output channel, frequency), ``Uq = rint(U / s_u[k, p])`` -- ROUNDING 3, done once per layer.
   (SFC's ``G`` has entries in {0, +-1}, so ``G wq`` of integer weights is exact too -- the
   exact mode below uses that; Winograd's ``G`` has fractions: halves for F(2x2), down to 1/24
   (1/576 in 2D) for F(4x4), so the exact mode scales it by the common denominator);
5. channel reduction ``M = sum_c Uq Vq``: exact integers, int32 by construction
   (``max_{k,p} sum_c |Uq[k,c,p]| * qmax_b < 2**31`` is checked when the layer is built), done as
   a float GEMM per frequency (exact, see `convolab.quant.intconv`);
6. dequantisation ``M * s_u[k, p] * s_v[p]`` and the output transform ``AT`` (all the fractions:
   1/16 for SFC-4, 1/36 for SFC-6) in float64  -- ROUNDING 4, float64 only (relative 1e-16),
   then the float32 (or float64) result.

Exact mode (``transform_bits=None``): stage 3 is skipped and stage 4 uses the exact integer
filter transform ``(d_g G) wq`` of the int8 spatial weight codes; the output transform is done
in integers with ``d_a AT`` and divided exactly by ``d_a d_g``. The result is then bit-identical
to the int8 direct convolution ``reference.conv2d(xq, wq)``: the fast algorithm itself adds no
error, only the transform-domain requantisation does.

Error bound (`fast_error_bound`): with no clipping (thresholds at least max |value|),
``|e_u| <= s_u / 2``, ``|e_x| <= s_x / 2`` and ``|Vq s_v - s_x V| <= s_v / 2`` give, per output,
``|Y_q - Y| <= sum_p |AT[i, p]| sum_c ( s_u[k,p]/2 |Vq s_v|[c,p]
+ |U[k,c,p]| (s_v[p]/2 + s_x ||BT[p]||_1 / 2) )`` (plus float64 rounding). The bound shows why
SFC wins: its ``AT`` is what carries the fractions, while ``||BT[p]||_1`` and the range of
``U`` stay small, so each frequency's codes cover a range close to the spatial one; F(4x4)'s
``BT`` rows (norm up to 100) and ``G`` stretch the ranges that the same number of bits must cover.

Sources: Q. He et al., "Symbolic Fourier Convolution", ICML 2024 (per-frequency scales;
SFC-6(7x7) within 0.1-0.2% of fp32 top-1 at int8); A. Lavin, S. Gray, CVPR 2016 (Winograd);
J. Fernandez-Marques et al., "Searching for Winograd-aware Quantized Networks", MLSys 2020.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..algorithms.bilinear import supports_for
from ..algorithms.bilinear import tiles as tile_count
from ..errors import ConvError
from ..spec import ConvSpec
from ..transforms import sfc_2d, winograd_2d
from ..transforms.forms import Bilinear2D, scaled_int

#: quantised fast algorithms: name -> factory of the exact algorithm (names as the float engine)
FAST: dict[str, Callable[[], Bilinear2D]] = {
    "winograd_f2x3": lambda: winograd_2d(2, 3),
    "winograd_f4x3": lambda: winograd_2d(4, 3),
    "winograd_f6x3": lambda: winograd_2d(6, 3),
    "winograd_f2x5": lambda: winograd_2d(2, 5),
    "sfc4_4x3": lambda: sfc_2d(4, 4, 3),
    "sfc6_6x3": lambda: sfc_2d(6, 6, 3),
    "sfc6_6x3_nested": lambda: sfc_2d(6, 6, 3, native=False),
    "sfc6_7x3": lambda: sfc_2d(6, 7, 3),
    "sfc6_6x5": lambda: sfc_2d(6, 6, 5),
}


@dataclass(frozen=True)
class IntTransforms:
    """Integer and float forms of one fast algorithm.

    ``BT = BT_int / d_b``, ``G = G_int / d_g``, ``AT = AT_int / d_a`` with integer matrices and
    least common denominators ``d_*``; float64 copies for the quantised path.
    """

    name: str
    alg: Bilinear2D
    BT_int: np.ndarray
    d_b: int
    G_int: np.ndarray
    d_g: int
    AT_int: np.ndarray
    d_a: int
    BT: np.ndarray
    G: np.ndarray
    AT: np.ndarray

    #: the exact algorithm's output tile, taps, input tile (per dimension) and products per tile
    m = property(lambda self: self.alg.m)
    r = property(lambda self: self.alg.r)
    n = property(lambda self: self.alg.n)
    P = property(lambda self: self.alg.products)

    @property
    def bt_norms(self) -> np.ndarray:
        """``||BT[p]||_1`` per frequency (float64)."""
        return np.abs(self.BT).sum(axis=1)

    @property
    def unit_transforms(self) -> bool:
        """Whether every input- and filter-transform entry is in {0, +1, -1} (SFC; not Winograd)."""
        return (self.d_b == 1 and self.d_g == 1 and np.abs(self.BT_int).max() <= 1
                and np.abs(self.G_int).max() <= 1)


@cache
def transforms(name: str) -> IntTransforms:
    """The `IntTransforms` of a name in `FAST` (cached); `ConvError` for an unknown name."""
    if name not in FAST:
        raise ConvError(f"unknown fast algorithm {name!r}; known: {', '.join(FAST)}")
    alg = FAST[name]()
    bt, db = scaled_int(alg.BT)
    g, dg = scaled_int(alg.G)
    at, da = scaled_int(alg.AT)
    return IntTransforms(
        name, alg, bt, db, g, dg, at, da,
        bt.astype(np.float64) / db, g.astype(np.float64) / dg, at.astype(np.float64) / da,
    )


def supports(t: IntTransforms, spec: ConvSpec) -> str | None:
    """None when the fast algorithm can run ``spec``, else the reason (the float engine's rule)."""
    return supports_for(t.alg, spec)


def tiles(spec: ConvSpec, x: np.ndarray, t: IntTransforms) -> np.ndarray:
    """Input tiles ``(N, C, TH, TW, n*n)`` of the zero-padded input (copy, dtype of ``x``).

    Tiles step by m and overlap by r - 1; the bottom/right edge is padded with zeros so the last
    partial tiles are whole (their extra outputs are cropped).
    """
    m, n = t.m, t.n
    TH, TW = tile_count(spec, m)
    pl, pr, pt, pb = spec.padding
    eh = TH * m + t.r - 1 - spec.padded_H
    ew = TW * m + t.r - 1 - spec.padded_W
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb + eh), (pl, pr + ew)))
    win = sliding_window_view(xp, (n, n), axis=(2, 3))[:, :, ::m, ::m]
    return win.reshape(spec.N, spec.C, TH, TW, n * n)


def input_transform(spec: ConvSpec, x: np.ndarray, t: IntTransforms, dtype=np.float64) -> np.ndarray:
    """``V = BT vec(X)`` for every tile: shape (N, C, TH, TW, P) in ``dtype``.

    For int8 codes and float32 the result is the exact integer transform: every partial sum is an
    integer below ``128 * ||BT||_1 <= 12,800 < 2**24``.
    """
    tl = tiles(spec, x, t).astype(dtype)
    return tl @ t.BT.T.astype(dtype)


def output_transform(spec: ConvSpec, M: np.ndarray, t: IntTransforms) -> np.ndarray:
    """``Y = AT M`` per tile, reassembled: M (N, K, TH, TW, P) float64 -> (N, K, OH, OW)."""
    m = t.m
    N, K, TH, TW, _ = M.shape
    y = M @ t.AT.T  # (N, K, TH, TW, m*m)
    y = y.reshape(N, K, TH, TW, m, m).transpose(0, 1, 2, 4, 3, 5).reshape(N, K, TH * m, TW * m)
    return y[:, :, : spec.OH, : spec.OW]


def channel_reduce(spec: ConvSpec, U: np.ndarray, V: np.ndarray, dtype) -> np.ndarray:
    """``M[n, k, th, tw, p] = sum_c U[k, c, p] V[n, g*Cg + c, th, tw, p]`` per group.

    One GEMM per (frequency, group) over channels, batched by ``numpy.matmul``, in ``dtype``
    (float32 or float64; the caller makes sure every partial sum is an integer the dtype holds
    exactly, or accepts float rounding). U: (K, Cg, P); V: (N, C, TH, TW, P).
    """
    N, C, TH, TW, P = V.shape
    G, Cg, Kg = spec.groups, spec.Cg, spec.Kg
    T = N * TH * TW
    v = np.ascontiguousarray(V.transpose(4, 1, 0, 2, 3), dtype=dtype).reshape(P, G, Cg, T)
    u = np.ascontiguousarray(U.transpose(2, 0, 1), dtype=dtype).reshape(P, G, Kg, Cg)
    if Cg == 1:
        m = u * v  # (P, G, Kg, 1) * (P, G, 1, T): no reduction, one product each
    else:
        m = np.matmul(u, v)  # (P, G, Kg, T)
    return m.reshape(P, spec.K, N, TH, TW).transpose(2, 1, 3, 4, 0)


def filter_transform(w: np.ndarray, t: IntTransforms) -> np.ndarray:
    """``U = G vec(W)`` in float64: (K, Cg, r, r) -> (K, Cg, P)."""
    K, Cg = w.shape[:2]
    return w.reshape(K, Cg, -1).astype(np.float64) @ t.G.T


def filter_transform_int(wq: np.ndarray, t: IntTransforms) -> np.ndarray:
    """``d_g G vec(wq)`` exactly, in int64: (K, Cg, r, r) int -> (K, Cg, P)."""
    K, Cg = wq.shape[:2]
    return wq.reshape(K, Cg, -1).astype(np.int64) @ t.G_int.T


def exact_fast_conv(spec: ConvSpec, xq: np.ndarray, wq: np.ndarray, t: IntTransforms) -> np.ndarray:
    """The fast algorithm on int8 codes with no rounding at all: equals ``conv2d(xq, wq)`` exactly.

    V = BT xq (integers), U = (d_g G) wq (integers), M = sum_c U V (float64 GEMM, exact because
    every partial sum is an integer below 2**53, checked), Y' = (d_a AT) M in int64, and
    Y = Y' / (d_a d_g d_b) -- an exact division (checked).

    Returns
    -------
    numpy.ndarray of int64, shape spec.out_shape
    """
    reason = supports(t, spec)
    if reason is not None:
        raise ConvError(f"{t.name} cannot run {spec}: {reason}")
    U = filter_transform_int(wq, t)
    vmax = 128 * int(np.abs(t.BT_int).sum(axis=1).max())
    mbound = int(np.abs(U).sum(axis=1).max()) * vmax
    ybound = mbound * int(np.abs(t.AT_int).sum(axis=1).max())
    if ybound >= 2**53:
        raise ConvError(f"exact {t.name} would need integers beyond 2**53 (bound {ybound})")
    V = input_transform(spec, xq, t, np.float32 if vmax < 2**24 else np.float64)
    M = channel_reduce(spec, U, V, np.float64)  # exact: integers below 2**53
    Mi = M.astype(np.int64)
    Y = Mi @ t.AT_int.T.astype(np.int64)  # int64, exact
    N, K, TH, TW, _ = Mi.shape
    m = t.m
    Y = Y.reshape(N, K, TH, TW, m, m).transpose(0, 1, 2, 4, 3, 5).reshape(N, K, TH * m, TW * m)
    Y = Y[:, :, : spec.OH, : spec.OW]
    D = t.d_a * t.d_g * t.d_b
    q, rem = np.divmod(Y, D)
    if rem.any():  # pragma: no cover - impossible for an exact algorithm
        raise ConvError(f"{t.name}: output transform not exactly divisible by {D}")
    return q


def fast_error_bound(spec: ConvSpec, t: IntTransforms, U: np.ndarray, s_u: np.ndarray,
                     Vdeq: np.ndarray, s_v: np.ndarray, s_x: float) -> np.ndarray:
    """Elementwise a-priori bound on ``|Y_quantised - Y_exact|`` (no clipping assumed).

    Parameters
    ----------
    U : (K, Cg, P) float64, the exact filter transform; s_u : (K, P) its scales
    Vdeq : (N, C, TH, TW, P) float64, the dequantised transform-domain input ``Vq * s_v``
    s_v : (P,) transform-domain activation scales; s_x : spatial activation scale

    Returns
    -------
    numpy.ndarray, spec.out_shape: the bound of the module notes.
    """
    dv = s_v / 2 + s_x * t.bt_norms / 2  # |Vdeq - BT x| per frequency
    absV = np.abs(Vdeq)
    # sum_c s_u/2 |Vdeq| + |U| dv
    part1 = channel_reduce(spec, np.broadcast_to((s_u / 2)[:, None, :], U.shape), absV, np.float64)
    ones = np.ones_like(absV) * dv
    part2 = channel_reduce(spec, np.abs(U), ones, np.float64)
    bm = part1 + part2
    N, K, TH, TW, _ = bm.shape
    m = t.m
    y = bm @ np.abs(t.AT).T
    y = y.reshape(N, K, TH, TW, m, m).transpose(0, 1, 2, 4, 3, 5).reshape(N, K, TH * m, TW * m)
    return y[:, :, : spec.OH, : spec.OW]
