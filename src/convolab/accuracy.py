"""The accuracy study: Winograd and SFC against direct convolution in fp32, fp16 and low-bit ints.

For direct convolution and every registered Winograd / SFC variant this measures the relative
RMSE ``sqrt(mean((y - y64)^2) / mean(y64^2))`` against the float64 reference
(`convolab.reference.conv2d`) on ReLU-like activations (``max(0, N(0, 1))``) and He-initialised
weights (``N(0, 2 / (C r^2))``), "same" padding, fixed seeds, in three settings:

fp32
    The real algorithm (`convolab.conv2d` with ``algorithm=name``) on float32 data.
fp16
    Every stage rounded to float16: input and weights rounded, then the input transform
    ``BT x``, the filter transform ``G w``, the channel reduction ``sum_c U V`` and the output
    transform ``AT M`` are each computed in float32 from float16 operands and rounded to
    float16 (direct: float16 operands, float32 accumulation, float16 result) -- the
    arithmetic of an fp16 inference kernel with fp32 accumulators.
int-b (b = 8, 6, 4)
    Quantisation in the transform domain, as the SFC paper does: the transformed input ``V``
    gets one symmetric scale per transform point ("frequency", max-abs over the batch, channels
    and tiles), the transformed weights ``U`` one per (output channel, point); integer products
    are summed exactly and rescaled, and the output transform runs in float64. Direct
    convolution is the identity transform: one scale for the input tensor, one per output
    channel for the weights. Scales are calibrated on the data itself (max-abs, no clipping).

The emulations use the exact full matrices of each algorithm (`convolab.transforms`) on
tiles of the zero-padded input (partial edge tiles zero-extended, outputs cropped).

Source of the protocol: Q. He et al., "Symbolic Fourier Convolution", ICML 2024 (fp16 and
per-frequency int8 post-training quantisation of Winograd and SFC).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import reference

#: the Winograd / SFC variants studied, by kernel size (registered algorithm names)
VARIANTS = {
    3: ["winograd_f2x3", "winograd_f4x3", "winograd_f6x3", "sfc4_4x3", "sfc6_6x3",
        "sfc6_6x3_nested", "sfc6_7x3"],
    5: ["winograd_f2x5", "sfc6_6x5"],
}


@dataclass
class Row:
    """One algorithm's results: relative RMSE per setting (keys ``fp32``, ``fp16``, ``int8``...)."""

    name: str
    kernel: int
    products_per_output: float
    errors: dict = field(default_factory=dict)


def rel_rmse(y, ref) -> float:
    """``sqrt(mean((y - ref)^2) / mean(ref^2))`` in float64."""
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.sqrt(np.mean((y - ref) ** 2) / np.mean(ref**2)))


def _data(batch, channels, out_channels, size, r, seed):
    rng = np.random.default_rng([seed, r])
    x = np.maximum(rng.standard_normal((batch, channels, size, size)), 0.0)
    w = rng.standard_normal((out_channels, channels, r, r)) * np.sqrt(2.0 / (channels * r * r))
    return x, w


def _tiles(x, m, r, pad):
    """(N, C, TH, TW, n*n) tiles of the zero-padded (and zero-extended) input."""
    N, C, H, W = x.shape
    OH, OW = H + 2 * pad - r + 1, W + 2 * pad - r + 1
    TH, TW = -(-OH // m), -(-OW // m)
    n = m + r - 1
    xp = np.zeros((N, C, TH * m + r - 1, TW * m + r - 1), dtype=x.dtype)
    xp[:, :, pad : pad + H, pad : pad + W] = x
    win = np.lib.stride_tricks.sliding_window_view(xp, (n, n), axis=(2, 3))[:, :, ::m, ::m]
    return win.reshape(N, C, TH, TW, n * n), (OH, OW)


def _untile(y, m, OH, OW):
    """(N, K, TH, TW, m*m) output tiles -> (N, K, OH, OW)."""
    N, K, TH, TW, _ = y.shape
    y = y.reshape(N, K, TH, TW, m, m).transpose(0, 1, 2, 4, 3, 5).reshape(N, K, TH * m, TW * m)
    return y[:, :, :OH, :OW]


def _f16(a):
    return np.asarray(a, dtype=np.float32).astype(np.float16)


def _fp16_bilinear(alg, x, w, pad):
    BT, G, AT = (np.asarray(a, dtype=np.float32) for a in (alg.BT, alg.G, alg.AT))
    K, C, r, _ = w.shape
    xt, (OH, OW) = _tiles(_f16(x), alg.m, r, pad)
    V = _f16(np.einsum("pl,nctsl->nctsp", BT, xt.astype(np.float32), optimize=True))
    U = _f16(np.einsum("pj,kcj->kcp", G, _f16(w).astype(np.float32).reshape(K, C, r * r)))
    M = _f16(np.einsum("kcp,nctsp->nktsp", U.astype(np.float32), V.astype(np.float32),
                       optimize=True))
    Y = _f16(np.einsum("ip,nktsp->nktsi", AT, M.astype(np.float32), optimize=True))
    return _untile(Y, alg.m, OH, OW)


def _quantise(a, axes, bits):
    """Symmetric max-abs quantisation of ``a`` with one scale per index of the axes not in ``axes``."""
    qmax = 2 ** (bits - 1) - 1
    amax = np.max(np.abs(a), axis=axes, keepdims=True)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    return np.clip(np.rint(a / scale), -qmax, qmax), scale


def _int_bilinear(alg, x, w, pad, bits):
    BT, G, AT = (np.asarray(a, dtype=np.float64) for a in (alg.BT, alg.G, alg.AT))
    K, C, r, _ = w.shape
    xt, (OH, OW) = _tiles(x, alg.m, r, pad)
    V = np.einsum("pl,nctsl->nctsp", BT, xt, optimize=True)
    U = np.einsum("pj,kcj->kcp", G, w.reshape(K, C, r * r))
    Vq, sv = _quantise(V, (0, 1, 2, 3), bits)  # one scale per point p
    Uq, su = _quantise(U, (1,), bits)  # one scale per (k, p)
    M = np.einsum("kcp,nctsp->nktsp", Uq, Vq, optimize=True)  # exact: integers < 2^53
    M = M * sv.reshape(1, 1, 1, 1, -1) * su.reshape(1, K, 1, 1, -1)
    Y = np.einsum("ip,nktsp->nktsi", AT, M, optimize=True)
    return _untile(Y, alg.m, OH, OW)


def _int_direct(x, w, pad, bits):
    xq, sx = _quantise(x, None, bits)
    wq, sw = _quantise(w, (1, 2, 3), bits)
    y = reference.conv2d(xq, wq, padding=pad)
    return y * float(sx.reshape(())) * sw.reshape(1, -1, 1, 1)


def study(batch: int = 2, channels: int = 32, out_channels: int = 32, size: int = 28,
          bits=(8, 6, 4), seed: int = 0, variants: dict | None = None) -> list[Row]:
    """Run the study; return one `Row` per (kernel size, algorithm), direct first per size.

    Parameters
    ----------
    batch, channels, out_channels, size : int
        Shape of the synthetic layer (``size x size`` images, "same" padding).
    bits : sequence of int
        Integer widths for the transform-domain quantisation.
    seed : int
        Seed of the data (the study is deterministic for a given seed).
    variants : dict, optional
        ``{kernel size: [algorithm names]}``; default `VARIANTS`.
    """
    import convolab

    from .algorithms import bilinear

    rows = []
    for r, names in (variants or VARIANTS).items():
        pad = (r - 1) // 2
        x, w = _data(batch, channels, out_channels, size, r, seed)
        ref = reference.conv2d(x, w, padding=pad)
        row = Row("direct", r, float(r * r))
        row.errors["fp32"] = rel_rmse(
            convolab.conv2d(x.astype(np.float32), w.astype(np.float32), padding=pad,
                            algorithm="direct"), ref)
        row.errors["fp16"] = rel_rmse(
            _f16(reference.conv2d(_f16(x), _f16(w), padding=pad)), ref)
        for b in bits:
            row.errors[f"int{b}"] = rel_rmse(_int_direct(x, w, pad, b), ref)
        rows.append(row)
        for name in names:
            alg = bilinear.engine(name).alg
            row = Row(name, r, alg.products / alg.m**2)
            row.errors["fp32"] = rel_rmse(
                convolab.conv2d(x.astype(np.float32), w.astype(np.float32), padding=pad,
                                algorithm=name), ref)
            row.errors["fp16"] = rel_rmse(_fp16_bilinear(alg, x, w, pad), ref)
            for b in bits:
                row.errors[f"int{b}"] = rel_rmse(_int_bilinear(alg, x, w, pad, b), ref)
            rows.append(row)
    return rows


def targets(rows: list[Row], settings=("fp16", "int8")) -> dict:
    """SFC-6(6x6,3x3)'s error over F(2x2,3x3)'s and over F(4x4,3x3)'s, per setting.

    The issue's goal: <= 1.3 and <= 0.35 respectively, in fp16 and int8.
    """
    by = {row.name: row for row in rows}
    out = {}
    if not all(k in by for k in ("sfc6_6x3", "winograd_f2x3", "winograd_f4x3")):
        return out
    for s in settings:
        if s in by["sfc6_6x3"].errors:
            e = by["sfc6_6x3"].errors[s]
            out[s] = {"vs_f2x3": e / by["winograd_f2x3"].errors[s],
                      "vs_f4x3": e / by["winograd_f4x3"].errors[s]}
    return out
