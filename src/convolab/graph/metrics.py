"""Classification metrics of remote sensing: confusion matrix, OA, AA, Cohen's kappa.

``confusion(y_true, y_pred, n_classes)``: ``m[i, j]`` = pixels of true class i predicted j
(classes 0..n-1). OA = trace / total; AA = mean over the classes present in ``y_true`` of
their recall ``m[i, i] / sum_j m[i, j]``; kappa = (p_o - p_e) / (1 - p_e) with
p_e = sum_i (row_i * col_i) / total^2 (Cohen 1960).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConvError


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Confusion matrix (n_classes, n_classes) int64, rows the true classes."""
    t = np.asarray(y_true).ravel()
    p = np.asarray(y_pred).ravel()
    if t.shape != p.shape:
        raise ConvError(f"shape mismatch: y_true has {t.size} labels, y_pred {p.size}")
    if t.size == 0:
        raise ConvError("no labels to score (empty y_true)")
    if t.dtype.kind not in "iu" or p.dtype.kind not in "iu":
        raise ConvError(f"labels must be integers, got {t.dtype} and {p.dtype}")
    for a, what in ((t, "y_true"), (p, "y_pred")):
        if a.min() < 0 or a.max() >= n_classes:
            raise ConvError(f"{what} has labels outside 0..{n_classes - 1}: {a.min()}..{a.max()}")
    return np.bincount(t.astype(np.int64) * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def overall_accuracy(m) -> float:
    m = np.asarray(m, dtype=np.float64)
    return float(np.trace(m) / m.sum())


def per_class_accuracy(m) -> np.ndarray:
    """Recall of each class; NaN for a class with no true pixel."""
    m = np.asarray(m, dtype=np.float64)
    rows = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, np.diag(m) / rows, np.nan)


def average_accuracy(m) -> float:
    return float(np.nanmean(per_class_accuracy(m)))


def kappa(m) -> float:
    m = np.asarray(m, dtype=np.float64)
    n = m.sum()
    po = np.trace(m) / n
    pe = float((m.sum(axis=0) * m.sum(axis=1)).sum() / (n * n))
    return float((po - pe) / (1 - pe)) if pe < 1 else 1.0


def scores(y_true, y_pred, n_classes: int) -> dict:
    """OA, AA, kappa, per-class accuracy and the confusion matrix in one dict."""
    m = confusion(y_true, y_pred, n_classes)
    return {"oa": overall_accuracy(m), "aa": average_accuracy(m), "kappa": kappa(m),
            "per_class": per_class_accuracy(m), "confusion": m}
