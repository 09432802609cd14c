"""Pixel-wise RBF-kernel SVM: the spectral baseline of hyperspectral classification.

One-vs-rest soft-margin SVMs, ``k(x, y) = exp(-gamma ||x - y||^2)``, the bias absorbed in the
kernel (``k + 1``), each solved in the dual by coordinate descent (Hsieh et al., ICML 2008):
``alpha_i <- clip(alpha_i - (y_i f(x_i) - 1) / Q_ii, 0, C)`` swept in a fixed order until the
largest projected gradient is below ``tol``. The class is the largest decision value.
``fit_svm`` picks C and gamma (gamma in multiples of 1 / (n_features * variance), as
scikit-learn's ``gamma="scale"``) by 3-fold stratified cross-validation on the training set.
Features are standardised with the training set's mean and deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from ..errors import ConvError


@njit(cache=True, nogil=True)
def _dcd(q, y, c, tol, max_sweeps):  # pragma: no cover - compiled
    n = y.size
    alpha = np.zeros(n)
    grad = -np.ones(n)  # gradient of 1/2 a^T Q a - 1^T a, Q = y y^T K
    for _ in range(max_sweeps):
        worst = 0.0
        for i in range(n):
            g = grad[i]
            pg = g
            if alpha[i] <= 0.0:
                pg = min(g, 0.0)
            elif alpha[i] >= c:
                pg = max(g, 0.0)
            if abs(pg) > worst:
                worst = abs(pg)
            if pg != 0.0:
                old = alpha[i]
                new = min(max(old - g / q[i, i], 0.0), c)
                d = new - old
                if d != 0.0:
                    alpha[i] = new
                    for j in range(n):
                        grad[j] += d * q[i, j]
        if worst < tol:
            break
    return alpha * y


def _kernel(a, b, gamma):
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.exp(-gamma * np.maximum(d2, 0)) + 1.0


@dataclass
class SVM:
    """A fitted one-vs-rest RBF SVM (see `fit_svm`)."""

    x: np.ndarray
    coef: np.ndarray  # (n_classes, n_train): alpha_i y_i per class
    classes: np.ndarray
    gamma: float
    C: float
    mean: np.ndarray
    std: np.ndarray

    def decision(self, x) -> np.ndarray:
        z = (np.asarray(x, np.float64) - self.mean) / self.std
        out = np.empty((z.shape[0], self.classes.size))
        for s in range(0, z.shape[0], 4096):
            out[s:s + 4096] = _kernel(z[s:s + 4096], self.x, self.gamma) @ self.coef.T
        return out

    def predict(self, x) -> np.ndarray:
        return self.classes[np.argmax(self.decision(x), axis=1)]


def _train(z, y, classes, gamma, c):
    k = _kernel(z, z, gamma)
    coef = np.empty((classes.size, z.shape[0]))
    for i, cl in enumerate(classes):
        s = np.where(y == cl, 1.0, -1.0)
        coef[i] = _dcd(k * np.outer(s, s), s, c, 1e-3, 2000)
    return coef


def fit_svm(x, y, Cs=(1.0, 10.0, 100.0, 1000.0), gammas=(0.25, 1.0, 4.0), seed: int = 0) -> SVM:
    """Fit on ``x`` (n, f) with labels ``y`` (n,), C and gamma chosen by 3-fold CV."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ConvError(f"shape mismatch: features {x.shape} vs labels {y.shape}")
    if not np.isfinite(x).all():
        raise ConvError("SVM features contain NaN or Inf")
    classes = np.unique(y)
    if classes.size < 2:
        raise ConvError(f"an SVM needs at least 2 classes, got {classes.size}")
    mean, std = x.mean(0), np.maximum(x.std(0), 1e-12)
    z = (x - mean) / std
    base = 1.0 / z.shape[1]
    rng = np.random.default_rng(seed)
    fold = np.empty(y.size, dtype=int)
    for cl in classes:
        idx = np.flatnonzero(y == cl)
        fold[rng.permutation(idx)] = np.arange(idx.size) % 3
    best, best_acc = (Cs[0], gammas[0]), -1.0
    for g in gammas:
        for c in Cs:
            acc = 0.0
            for f in range(3):
                tr, te = fold != f, fold == f
                if np.unique(y[tr]).size < 2:
                    continue
                cls = np.unique(y[tr])
                coef = _train(z[tr], y[tr], cls, g * base, c)
                pred = cls[np.argmax(_kernel(z[te], z[tr], g * base) @ coef.T, axis=1)]
                acc += (pred == y[te]).sum()
            if acc > best_acc:
                best, best_acc = (c, g), acc
    c, g = best
    return SVM(z, _train(z, y, classes, g * base, c), classes, g * base, c, mean, std)
