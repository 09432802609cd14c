"""Deviation metrics: how far apart are two outputs that should be the same?

All functions take NumPy arrays of equal shape and compare them element by element.

- `equivalence_classes`: outputs grouped by their bytes (dtype, shape and every bit), the
  count used by Schlögl, Hofer and Böhme, "Causes and Effects of Unanticipated Numerical
  Deviations in Neural Network Inference Frameworks" (NeurIPS 2023) to compare platforms.
- `remaining_bits`: per element, the number of leading mantissa bits two floating-point values
  share (23 for equal float32 values, 0 when sign or exponent differ), the paper's "remaining
  precision"; `bits_histogram` gives its distribution.
- `ulp_distance`: per element, how many representable values lie between the two (the IEEE
  bit patterns mapped to a monotone integer line, so ``+0`` and ``-0`` are 0 apart).
- `reference_errors`: max absolute, max elementwise-relative and normwise-relative error of an
  output against a float64 reference.
- `l0` (count of elements whose bits differ) and `l2` (Euclidean distance, in float64).
- `compare`: all of the pairwise ones in one dict.

Notes
-----
Remaining precision is a bitwise measure: values one ULP apart across a carry (``0x3f7fffff``
vs ``0x3f800000``, i.e. ``0.99999994`` vs ``1.0``) share no leading mantissa bits, and values
of opposite sign or different binade share none either, however close they are. That is the
definition the paper uses; `ulp_distance` is the robust companion measure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import ConvError

#: unsigned integer type of the same width, and mantissa bits, per floating dtype
_FLOAT_BITS = {
    np.dtype(np.float16): (np.uint16, 10),
    np.dtype(np.float32): (np.uint32, 23),
    np.dtype(np.float64): (np.uint64, 52),
}


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ConvError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise ConvError(f"cannot compare arrays of dtypes {a.dtype} and {b.dtype}")
    if a.dtype not in _FLOAT_BITS:
        raise ConvError(f"unsupported dtype {a.dtype}; use float16, float32 or float64")
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


def mantissa_bits(dtype) -> int:
    """Stored mantissa bits of a floating dtype (10, 23, 52): the maximum of `remaining_bits`."""
    dtype = np.dtype(dtype)
    if dtype not in _FLOAT_BITS:
        raise ConvError(f"unsupported dtype {dtype}; use float16, float32 or float64")
    return _FLOAT_BITS[dtype][1]


def equivalence_classes(outputs: Mapping | Sequence) -> list[list]:
    """Group outputs whose bytes are identical.

    Parameters
    ----------
    outputs : mapping of key -> array, or sequence of arrays
        The outputs of one computation under different configurations.

    Returns
    -------
    list of list
        One list of keys (indices for a sequence) per class, classes ordered by their first
        member, members in input order. Two arrays are in one class exactly when they have the
        same dtype, shape and bytes (so ``+0`` and ``-0`` differ; NaNs with equal payloads match).
    """
    items = outputs.items() if isinstance(outputs, Mapping) else enumerate(outputs)
    groups: dict[tuple, list] = {}
    for key, arr in items:
        arr = np.ascontiguousarray(arr)
        groups.setdefault((arr.dtype.str, arr.shape, arr.tobytes()), []).append(key)
    return list(groups.values())


def class_count(outputs: Mapping | Sequence) -> int:
    """Number of bitwise equivalence classes among ``outputs`` (see `equivalence_classes`)."""
    return len(equivalence_classes(outputs))


def remaining_bits(a, b) -> np.ndarray:
    """Per element, the leading mantissa bits ``a`` and ``b`` share.

    Parameters
    ----------
    a, b : ndarray
        Same shape and floating dtype (float16, float32 or float64).

    Returns
    -------
    ndarray of int8
        The number of leading stored-mantissa bits that agree: the full mantissa width (10 / 23
        / 52) where the values are equal (``+0 == -0``, NaN with NaN), 0 where the sign or the
        exponent differ or exactly one is NaN, else the count of leading equal bits of the
        stored mantissas.
    """
    a, b = _pair(a, b)
    utype, m = _FLOAT_BITS[a.dtype]
    ua = a.view(utype).astype(np.uint64)
    ub = b.view(utype).astype(np.uint64)
    mask = np.uint64((1 << m) - 1)
    same_head = (ua >> np.uint64(m)) == (ub >> np.uint64(m))
    diff = (ua ^ ub) & mask
    # bit length of diff, exactly: frexp gives diff = f * 2**e with f in [0.5, 1); for
    # float64 mantissas (< 2**52) the integer converts to float64 exactly
    _, blen = np.frexp(diff.astype(np.float64))
    bits = np.where(same_head, m - blen, 0)
    an, bn = np.isnan(a), np.isnan(b)
    bits = np.where(a == b, m, bits)
    bits = np.where(an & bn, m, np.where(an | bn, 0, bits))
    return bits.astype(np.int8)


def bits_histogram(bits, dtype=np.float32) -> np.ndarray:
    """Counts of each remaining-bits value 0 .. mantissa_bits(dtype) (index = bits)."""
    m = mantissa_bits(dtype)
    return np.bincount(np.asarray(bits, dtype=np.int64).ravel(), minlength=m + 1)


def _ordered(u: np.ndarray, width: int) -> np.ndarray:
    """Map IEEE bit patterns to integers that increase with the value (+0 and -0 both to 0)."""
    sign = np.uint64(1) << np.uint64(width - 1)
    mag = (u & (sign - np.uint64(1))).astype(np.int64)
    return np.where((u & sign) != 0, -mag, mag)


def ulp_distance(a, b) -> np.ndarray:
    """Per element, the number of representable values between ``a`` and ``b`` (int64).

    0 for equal values (including ``+0`` vs ``-0`` and NaN vs NaN), 1 for neighbours, and the
    largest int64 where exactly one is NaN. Infinities count as the value after the largest
    finite number.
    """
    a, b = _pair(a, b)
    utype, _ = _FLOAT_BITS[a.dtype]
    width = 8 * a.dtype.itemsize
    oa = _ordered(a.view(utype).astype(np.uint64), width)
    ob = _ordered(b.view(utype).astype(np.uint64), width)
    d = np.abs(oa - ob)
    an, bn = np.isnan(a), np.isnan(b)
    big = np.iinfo(np.int64).max
    return np.where(an & bn, 0, np.where(an | bn, big, d))


def l0(a, b) -> int:
    """Number of elements whose bit patterns differ."""
    a, b = _pair(a, b)
    utype, _ = _FLOAT_BITS[a.dtype]
    return int(np.count_nonzero(a.view(utype) != b.view(utype)))


def l2(a, b) -> float:
    """Euclidean distance ``sqrt(sum((a - b)**2))`` computed in float64."""
    a, b = _pair(a, b)
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.sqrt(np.sum(d * d)))


def reference_errors(y, ref) -> dict[str, float]:
    """Errors of ``y`` against a (float64) reference ``ref`` of the same shape.

    Returns
    -------
    dict
        ``max_abs``: max |y - ref|; ``max_rel``: max |y - ref| / |ref| over elements with
        ``ref != 0`` (inf if ``y`` is nonzero where ``ref`` is 0); ``normwise``: max_abs /
        max |ref|.
    """
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if y.shape != ref.shape:
        raise ConvError(f"cannot compare arrays of shapes {y.shape} and {ref.shape}")
    if y.size == 0:
        return {"max_abs": 0.0, "max_rel": 0.0, "normwise": 0.0}
    diff = np.abs(y - ref)
    max_abs = float(diff.max())
    nz = ref != 0
    rel = float((diff[nz] / np.abs(ref[nz])).max()) if nz.any() else 0.0
    if np.any(diff[~nz] > 0):
        rel = float("inf")
    rmax = float(np.abs(ref).max())
    return {
        "max_abs": max_abs,
        "max_rel": rel,
        "normwise": max_abs / rmax if rmax > 0 else max_abs,
    }


def compare(a, b) -> dict:
    """All pairwise deviation measures of ``a`` against ``b``.

    Returns
    -------
    dict
        ``identical`` (bytes equal), ``l0``, ``l2``, ``max_ulp``, ``min_bits`` (least
        remaining bits over all elements), ``mean_bits`` and ``bits_histogram`` (counts of
        0 .. mantissa width remaining bits).
    """
    a, b = _pair(a, b)
    bits = remaining_bits(a, b)
    ulp = ulp_distance(a, b)
    m = mantissa_bits(a.dtype)
    return {
        "identical": a.tobytes() == b.tobytes(),
        "l0": l0(a, b),
        "l2": l2(a, b),
        "max_ulp": int(ulp.max()) if ulp.size else 0,
        "min_bits": int(bits.min()) if bits.size else m,
        "mean_bits": float(bits.mean()) if bits.size else float(m),
        "bits_histogram": bits_histogram(bits, a.dtype),
    }
