"""Training / test splits of a labelled scene: stratified random and spatially disjoint.

Labels are an ``(H, W)`` int map, 0 = unlabelled, classes 1..n. A split is two boolean masks.

- ``random_split``: per class, ``per_class`` pixels drawn at random (half the class if it has
  fewer than ``2 * per_class``); every other labelled pixel is a test pixel. Training and test
  pixels then share fields and superpixels, which inflates the accuracy of spatial methods.
- ``disjoint_split``: per class, the training pixels are a compact block (the ``per_class``
  pixels of that class nearest a random seed pixel of it); a labelled pixel is a test pixel
  only if it lies farther than ``radius`` pixels (Chebyshev distance) from every training
  pixel and, when ``segments`` is given, in no superpixel that holds a training pixel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import ConvError


def _check(labels, per_class):
    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.dtype.kind not in "iu":
        raise ConvError(f"labels must be a 2-D integer map, got {lab.dtype} {lab.shape}")
    if per_class < 1:
        raise ConvError(f"per_class must be >= 1, got {per_class}")
    classes = np.unique(lab[lab > 0])
    if classes.size == 0:
        raise ConvError("labels have no labelled pixel (all 0)")
    for c in range(1, int(classes.max()) + 1):
        if c not in classes:
            raise ConvError(f"class {c} is empty: no pixel has label {c}")
    return lab, classes


def _n_train(n, per_class):
    return min(per_class, max(1, n // 2))


def random_split(labels, per_class: int = 15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random split: (train, test) boolean masks."""
    lab, classes = _check(labels, per_class)
    rng = np.random.default_rng(seed)
    train = np.zeros(lab.shape, dtype=bool)
    flat = lab.ravel()
    for c in classes:
        idx = np.flatnonzero(flat == c)
        train.ravel()[rng.choice(idx, size=_n_train(idx.size, per_class), replace=False)] = True
    return train, (lab > 0) & ~train


def disjoint_split(labels, per_class: int = 15, seed: int = 0, radius: int = 5,
                   segments=None) -> tuple[np.ndarray, np.ndarray]:
    """Spatially disjoint split: (train, test) boolean masks (see the module docstring)."""
    lab, classes = _check(labels, per_class)
    if radius < 0:
        raise ConvError(f"radius must be >= 0, got {radius}")
    if segments is not None and np.shape(segments) != lab.shape:
        raise ConvError(f"shape mismatch: segments {np.shape(segments)} vs labels {lab.shape}")
    rng = np.random.default_rng(seed)
    train = np.zeros(lab.shape, dtype=bool)
    for c in classes:
        ys, xs = np.nonzero(lab == c)
        k = int(rng.integers(ys.size))
        d = (ys - ys[k]) ** 2 + (xs - xs[k]) ** 2
        near = np.argsort(d, kind="stable")[: _n_train(ys.size, per_class)]
        train[ys[near], xs[near]] = True
    blocked = ndimage.binary_dilation(train, structure=np.ones((2 * radius + 1, 2 * radius + 1), bool)) \
        if radius > 0 else train.copy()
    if segments is not None:
        seg = np.asarray(segments)
        blocked |= np.isin(seg, np.unique(seg[train]))
    return train, (lab > 0) & ~blocked
