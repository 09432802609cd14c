"""Learned splat / blur / slice operators, in the spirit of AccNet (Dai et al., NeurIPS 2018).

AccNet writes splatting, blurring and slicing as convolutions and trains their weights so that
the pipeline computes a new (possibly non-Gaussian) high-dimensional filter. This module keeps
the permutohedral lattice's structure (splat and slice by barycentric weights) and makes two
things parameters:

* the symmetric blur taps ``[t_0, t_1, ..., t_R]`` applied along each of the d + 1 lattice
  directions (``t_0 = 1`` fixed: the normalised output does not depend on a common factor);
* a per-dimension position scale ``s_k`` applied before the lattice is built.

The operator ``out_i = S B^(d+1) P [v, 1]`` normalised by its homogeneous channel is fitted by
bounded nonlinear least squares (``scipy.optimize.least_squares``, trust-region reflective,
finite-difference Jacobian; taps kept >= 0 so every weight stays positive) to the exact
normalised filter with a target kernel ``k(|p_i - p_j|^2)`` (``exact.KERNELS``: Gaussian,
exponential exp(-r), Cauchy 1 / (1 + r^2)) on sample data. The fit starts at the Gaussian
operator (taps [1, 1/2, 0, ...], unit scales), so "before" is the standard permutohedral filter
applied where another kernel was wanted.

Cost: one fit evaluates the operator ``(R + d + 1)`` times per iteration, each O(d^2 n).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConvError
from .exact import exact_filter, kernel_function
from .permutohedral import PermutohedralLattice


@dataclass
class LearnedSBS:
    """A splat / blur / slice operator with learned blur taps and per-dimension scales.

    Attributes
    ----------
    taps : ndarray, shape (R + 1,)
        Blur taps along each lattice direction, centre first.
    scale : ndarray, shape (d,)
        Factors applied to each position dimension before the lattice.
    kernel : str
        Name of the target kernel it was fitted to (informational).
    history : dict
        Fit record: ``rmse_before``, ``rmse_after`` (training data), ``nfev``, ``cost``.
    """

    taps: np.ndarray
    scale: np.ndarray
    kernel: str = "gaussian"
    history: dict = field(default_factory=dict)

    @property
    def radius(self) -> int:
        return len(self.taps) - 1

    def filter(self, values, positions) -> np.ndarray:
        """Apply the operator: normalised filter of ``values (n, c)`` at ``positions (n, d)``."""
        v = np.asarray(values, dtype=np.float64)
        v = v[:, None] if v.ndim == 1 else v
        p = np.asarray(positions, dtype=np.float64)
        p = p[:, None] if p.ndim == 1 else p
        if p.shape[1] != self.scale.size:
            raise ConvError(
                f"this operator was fitted for d = {self.scale.size}; positions have d = {p.shape[1]}"
            )
        lat = PermutohedralLattice(p, scale=self.scale, radius=self.radius)
        return lat.filter(np.ascontiguousarray(v), self.taps)


def gaussian_sbs(d: int, radius: int = 2) -> LearnedSBS:
    """The standard Gaussian operator (taps [1, 1/2, 0, ...], unit scales) as a LearnedSBS."""
    taps = np.zeros(radius + 1)
    taps[0], taps[1] = 1.0, 0.5
    return LearnedSBS(taps=taps, scale=np.ones(d), kernel="gaussian")


def rmse(a, b) -> float:
    """Root-mean-square difference."""
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def fit_sbs(
    positions,
    values,
    kernel="exponential",
    radius: int = 2,
    fit_scale: bool = True,
    fit_taps: bool = True,
    max_nfev: int = 200,
    target=None,
    groups=None,
) -> LearnedSBS:
    """Fit blur taps and per-dimension scales so that splat / blur / slice matches ``kernel``.

    Parameters
    ----------
    positions : ndarray, shape (n, d)
        Sample positions (in the kernel's units).
    values : ndarray, shape (n, c)
        Sample values.
    kernel : str or callable
        Target kernel of the squared distance (``"gaussian"``, ``"exponential"``, ``"cauchy"``
        or a function); the target output is the exact normalised filter with it.
    radius : int
        Number of blur taps beyond the centre (lattice steps along each direction).
    fit_scale, fit_taps : bool
        Which parameters to fit (both by default; taps only, or scales only, for ablations).
    max_nfev : int
        Budget of residual evaluations of the least-squares solver.
    target : ndarray, optional
        Precomputed target output (else ``exact_filter(values, positions, kernel)``).
    groups : sequence of int, optional
        Group label of each position dimension; dimensions with the same label share one
        scale (e.g. ``[0, 0, 1, 1, 1]`` for (y, x, r, g, b)). Default: one scale per dimension.

    Returns
    -------
    LearnedSBS
        With ``history`` holding the training RMSE before (the Gaussian operator) and after.
    """
    from scipy.optimize import least_squares

    p = np.asarray(positions, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    v = v[:, None] if v.ndim == 1 else v
    if p.ndim != 2 or v.ndim != 2 or p.shape[0] != v.shape[0]:
        raise ConvError(
            f"positions (n, d) and values (n, c) must match; got {p.shape} and {v.shape}"
        )
    if radius < 1:
        raise ConvError(f"radius must be >= 1; got {radius}")
    if not (fit_scale or fit_taps):
        raise ConvError("nothing to fit: fit_scale and fit_taps are both False")
    name = kernel if isinstance(kernel, str) else getattr(kernel, "__name__", "custom")
    kernel_function(kernel)
    y = exact_filter(v, p, kernel) if target is None else np.asarray(target, dtype=np.float64)
    d = p.shape[1]
    labels = np.arange(d) if groups is None else np.asarray(groups)
    if labels.shape != (d,):
        raise ConvError(f"groups must give one label per dimension ({d}); got {groups!r}")
    _, group_of = np.unique(labels, return_inverse=True)
    ng = int(group_of.max()) + 1
    start = gaussian_sbs(d, radius)
    v = np.ascontiguousarray(v)

    def unpack(x):
        taps, scale = start.taps.copy(), start.scale.copy()
        i = 0
        if fit_taps:
            taps[1:] = x[:radius]
            i = radius
        if fit_scale:
            scale = np.exp(x[i : i + ng])[group_of]
        return taps, scale

    def residual(x):
        taps, scale = unpack(x)
        out = PermutohedralLattice(p, scale=scale, radius=radius).filter(v, taps)
        r = (out - y).ravel()
        return np.where(np.isfinite(r), r, 1.0) / np.sqrt(r.size)

    x0, lo, hi = [], [], []
    if fit_taps:
        x0 += list(start.taps[1:])
        lo += [0.0] * radius
        hi += [10.0] * radius
    if fit_scale:
        x0 += [0.0] * ng
        lo += [-3.0] * ng
        hi += [3.0] * ng
    x0 = np.array(x0)
    before = float(np.sqrt(np.sum(residual(x0) ** 2)))
    res = least_squares(
        residual, x0, bounds=(lo, hi), method="trf", diff_step=1e-3, max_nfev=max_nfev
    )
    taps, scale = unpack(res.x)
    after = float(np.sqrt(np.sum(residual(res.x) ** 2)))
    return LearnedSBS(
        taps=taps,
        scale=scale,
        kernel=name,
        history={"rmse_before": before, "rmse_after": after, "nfev": int(res.nfev),
                 "cost": float(res.cost)},
    )
