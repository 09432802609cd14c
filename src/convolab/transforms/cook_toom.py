"""Winograd F(m, r) transforms by the Cook-Toom construction, exact in `fractions.Fraction`.

With ``n = m + r - 1`` interpolation points -- ``n - 1`` finite points ``a_i`` and the point at
infinity -- and the Vandermonde matrices ``V_k`` (n x k; row i is ``[1, a_i, ..., a_i^(k-1)]``,
the infinity row is the last unit vector ``e_k``), the 1D correlation
``y[i] = sum_k x[i+k] w[k]`` is

    y = AT [(G w) * (BT x)],   AT = V_m^T,   G = F^-1 V_r,   BT = F V_n^-T,

with ``F = diag(prod_{k != i} (a_i - a_k))`` (1 for the infinity row). This is the transpose
(Tellegen) of Toom-Cook polynomial multiplication: evaluate at the points, multiply pointwise,
interpolate. The 2D algorithm nests it: ``Y = AT [(G W G^T) * (BT X B)] A``, (m + r - 1)^2
products per m x m output tile.

Source: A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016;
A. L. Toom (1963), S. A. Cook (1966). Default points follow Lavin's wincnn: 0, +-1, +-2, +-1/2.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache

import numpy as np

from ..errors import ConvError
from .forms import Bilinear1D, Bilinear2D, finv, fmat, fzeros

#: the finite points used when none are given, in order (the first n - 1 are taken)
DEFAULT_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2), 3, -3, Fraction(1, 3),
                  Fraction(-1, 3), 4, -4, Fraction(1, 4), Fraction(-1, 4))

#: the tile sizes shipped by default: (m, r)
DEFAULT_SIZES = ((2, 3), (4, 3), (6, 3), (2, 5), (4, 5))


def _vandermonde(points, k: int) -> np.ndarray:
    """(len(points) + 1) x k: rows [1, a, ..., a^(k-1)] and the infinity row e_k."""
    v = fzeros((len(points) + 1, k))
    for i, a in enumerate(points):
        for j in range(k):
            v[i, j] = Fraction(a) ** j
    v[len(points), k - 1] = Fraction(1)
    return v


def cook_toom(m: int, r: int, points=None) -> Bilinear1D:
    """Exact 1D Winograd F(m, r) from ``m + r - 2`` distinct finite points (plus infinity).

    Parameters
    ----------
    m, r : int
        Outputs per tile and filter taps (both >= 1).
    points : sequence of int or Fraction, optional
        The finite interpolation points; default the first ``m + r - 2`` of `DEFAULT_POINTS`.

    Returns
    -------
    Bilinear1D
        ``AT`` (m x n), ``G`` (n x r), ``BT`` (n x n) with ``n = m + r - 1``.

    Raises
    ------
    ConvError
        Wrong number of points, or repeated points.
    """
    if m < 1 or r < 1:
        raise ConvError(f"F(m, r) needs m >= 1 and r >= 1, got F({m}, {r})")
    n = m + r - 1
    if points is None:
        if n - 1 > len(DEFAULT_POINTS):
            raise ConvError(f"F({m}, {r}) needs {n - 1} points; give them explicitly")
        points = DEFAULT_POINTS[: n - 1]
    pts = [Fraction(p) for p in points]
    if len(pts) != n - 1:
        raise ConvError(f"F({m}, {r}) needs {n - 1} finite points, got {len(pts)}: {points!r}")
    if len(set(pts)) != len(pts):
        raise ConvError(f"interpolation points must be distinct, got {points!r}")
    f = fzeros((n, n))
    for i, a in enumerate(pts):
        prod = Fraction(1)
        for j, b in enumerate(pts):
            if j != i:
                prod *= a - b
        f[i, i] = prod
    f[n - 1, n - 1] = Fraction(1)
    finv_diag = fzeros((n, n))
    for i in range(n):
        finv_diag[i, i] = 1 / f[i, i]
    AT = _vandermonde(pts, m).T.copy()
    G = finv_diag.dot(_vandermonde(pts, r))
    BT = f.dot(finv(_vandermonde(pts, n)).T)
    return Bilinear1D(f"F({m},{r})", m, r, fmat(AT), fmat(G), fmat(BT))


@cache
def winograd_2d(m: int, r: int, points: tuple | None = None) -> Bilinear2D:
    """The nested 2D Winograd F(m x m, r x r): (m + r - 1)^2 products per tile (cached)."""
    return Bilinear2D.nested(cook_toom(m, r, points), name=f"F({m}x{m},{r}x{r})")
