"""Exact (brute-force) high-dimensional filtering: the reference for the lattice methods.

``exact_filter`` computes ``out_i = sum_j k(|p_i - p_j|^2) v_j / sum_j k(|p_i - p_j|^2)`` over all
pairs in float64, O(n^2 (d + c)) time, in row chunks so memory stays ``chunk * n`` doubles;
squared distances are summed from coordinate differences (exactly 0 for a point and itself, no
cancellation) and the weighted sums are one GEMM per chunk.
Kernels (functions of the squared distance r2): ``gaussian`` exp(-r2 / 2), ``exponential``
exp(-sqrt(r2)), ``cauchy`` 1 / (1 + r2).

``exact_bilateral`` is the Gaussian case on an image grid, computed over the spatial window in
which a weight can still reach ``exp(-CUTOFF)`` (about 1e-16 of the centre pixel's weight 1):
every skipped term is below float64 rounding of the denominator, so it equals the all-pairs sum
to rounding while costing O(n sigma_s^2) instead of O(n^2).
"""

from __future__ import annotations

import numpy as np

from ..kernels import PARALLEL_LOCK

#: pairs whose Gaussian exponent exceeds this are skipped by ``exact_bilateral`` (e^-37 < 1e-16)
CUTOFF = 37.0


def _gaussian(r2):
    return np.exp(-0.5 * r2)


def _exponential(r2):
    return np.exp(-np.sqrt(r2))


def _cauchy(r2):
    return 1.0 / (1.0 + r2)


#: kernels as functions of the squared distance
KERNELS = {"gaussian": _gaussian, "exponential": _exponential, "cauchy": _cauchy}


def kernel_function(kernel):
    """The kernel as a function of the squared distance (a name in ``KERNELS`` or a callable)."""
    from ..errors import ConvError

    if callable(kernel):
        return kernel
    try:
        return KERNELS[kernel]
    except (KeyError, TypeError):
        raise ConvError(f"unknown kernel {kernel!r}; choose from {sorted(KERNELS)}") from None


def exact_filter(values, positions, kernel="gaussian", chunk_bytes: int = 1 << 26):
    """Normalised brute-force filter over all pairs, float64.

    Parameters
    ----------
    values : ndarray, shape (n, c)
    positions : ndarray, shape (n, d)
    kernel : str or callable
        ``"gaussian"``, ``"exponential"``, ``"cauchy"`` or a function of the squared distance.
    chunk_bytes : int
        Memory for one chunk of the weight matrix.

    Returns
    -------
    ndarray, shape (n, c), float64
    """
    k = kernel_function(kernel)
    v = np.asarray(values, dtype=np.float64)
    p = np.asarray(positions, dtype=np.float64)
    n = p.shape[0]
    out = np.empty((n, v.shape[1]), dtype=np.float64)
    va = np.concatenate([v, np.ones((n, 1))], axis=1)
    rows = max(1, int(chunk_bytes // (8 * max(n, 1))))
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        r2 = np.zeros((i1 - i0, n))
        for j in range(p.shape[1]):
            diff = p[i0:i1, j, None] - p[None, :, j]
            r2 += diff * diff
        acc = k(r2) @ va
        out[i0:i1] = acc[:, :-1] / acc[:, -1:]
    return out


def exact_bilateral(values, guide, sigma_spatial: float, step: int = 1):
    """Exact Gaussian bilateral filter on an image grid (windowed to float64 rounding).

    Parameters
    ----------
    values : ndarray, shape (H, W, c)
    guide : ndarray, shape (H, W, g)
        Range features already divided by the range sigma.
    sigma_spatial : float
        Spatial standard deviation in pixels.
    step : int
        Compute the outputs at every ``step``-th row and column only (each still sums over
        the whole window); 1 gives the whole image.

    Returns
    -------
    ndarray, shape (ceil(H / step), ceil(W / step), c), float64
    """
    from ._kernels_exact import bilateral_window

    v = np.ascontiguousarray(values, dtype=np.float64)
    g = np.ascontiguousarray(guide, dtype=np.float64)
    radius = int(np.ceil(np.sqrt(2.0 * CUTOFF) * sigma_spatial))
    H, W, c = v.shape
    out = np.empty((-(-H // step), -(-W // step), c), dtype=np.float64)
    with PARALLEL_LOCK:
        bilateral_window(v, g, float(sigma_spatial), radius, CUTOFF, int(step), out)
    return out
