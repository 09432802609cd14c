"""Helpers shared by the algorithm modules."""

import numpy as np

from ..spec import ConvSpec


def padded_shape(spec: ConvSpec) -> tuple[int, int, int, int]:
    return (spec.N, spec.C, spec.padded_H, spec.padded_W)


def has_padding(spec: ConvSpec) -> bool:
    return any(spec.padding)


def padded_bytes(spec: ConvSpec) -> int:
    """Bytes of a zero-padded copy of the input (0 when there is no padding)."""
    if not has_padding(spec):
        return 0
    return int(np.prod(padded_shape(spec))) * spec.compute_dtype.itemsize


def pad(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Zero-padded copy of ``x`` (or ``x`` itself when the spec has no padding)."""
    if not has_padding(spec):
        return x
    pl, pr, pt, pb = spec.padding
    xp = np.zeros(padded_shape(spec), dtype=x.dtype)
    xp[:, :, pt : pt + spec.H, pl : pl + spec.W] = x
    return xp
