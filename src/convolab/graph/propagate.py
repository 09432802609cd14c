"""Graph propagation: the normalised adjacency in CSR, CSR x dense, segment mean and broadcast.

Layouts: node and pixel features are row-major float arrays ``(n, c)``; a pixel's row is its
raster index ``i * W + j``. A graph is a `CSR` matrix (SciPy's three arrays, column indices
sorted within each row).

- ``normalized_adjacency(A)`` = D^-1/2 (A + I) D^-1/2 with D the row sums of A + I: the
  renormalised propagation matrix of Kipf & Welling (ICLR 2017), used by CEGCN (Liu et al.,
  IEEE TGRS 2021) and MSSGU (Liu et al., IEEE TGRS 2022) on superpixel graphs.
- ``csr_matmul(A, x)`` = A @ x by a Numba kernel that computes each row in stored order with
  fused multiply-adds: bit-identical for any thread count (see `convolab.graph._kernels`).
- ``Segments``: a segmentation's pixel index. ``segment_mean`` (pixels -> nodes, the mean of
  each segment's pixels, in pixel order) and ``broadcast`` (nodes -> pixels) are the
  encoder / decoder of CEGCN's graph branch (its matrix Q and Q^T, normalised).

Their torch autograd functions (for training) are in `convolab.graph.autograd`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import ConvError
from . import _kernels

_EMPTY = np.zeros(0, dtype=np.float64)


def _float_rows(x, what: str, n: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous float32/float64 2-D array with ``n`` rows; NaN/Inf refused."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ConvError(f"{what} must be 2-D (rows, channels), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    if n is not None and x.shape[0] != n:
        raise ConvError(f"shape mismatch: {what} has {x.shape[0]} rows, expected {n}")
    if not np.isfinite(x).all():
        raise ConvError(f"{what} contains NaN or Inf")
    return np.ascontiguousarray(x)


@dataclass(frozen=True)
class CSR:
    """A sparse matrix in compressed sparse row form (column indices sorted in each row)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def from_scipy(cls, a, dtype=np.float32) -> CSR:
        a = sp.csr_matrix(a, dtype=dtype)
        a.sum_duplicates()
        a.sort_indices()
        return cls(a.indptr.astype(np.int64), a.indices.astype(np.int64), a.data.astype(dtype),
                   (int(a.shape[0]), int(a.shape[1])))

    def to_scipy(self) -> sp.csr_matrix:
        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)

    def transpose(self) -> CSR:
        return CSR.from_scipy(self.to_scipy().T, dtype=self.data.dtype)

    def astype(self, dtype) -> CSR:
        return CSR(self.indptr, self.indices, self.data.astype(dtype), self.shape)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])


def normalized_adjacency(a, dtype=np.float32) -> CSR:
    """D^-1/2 (A + I) D^-1/2 for a symmetric non-negative adjacency ``a`` (dense or sparse).

    Raises
    ------
    ConvError
        ``a`` not square, not symmetric, negative or not finite.
    """
    a = sp.csr_matrix(a, dtype=np.float64)
    n, m = a.shape
    if n != m:
        raise ConvError(f"shape mismatch: adjacency must be square, got {a.shape}")
    if a.nnz and (not np.isfinite(a.data).all() or a.data.min() < 0):
        raise ConvError("adjacency weights must be finite and non-negative")
    if abs(a - a.T).max() > 1e-12 * max(1.0, abs(a).max()):
        raise ConvError("adjacency must be symmetric")
    a = a + sp.identity(n, format="csr")
    d = np.asarray(a.sum(axis=1)).ravel()
    s = sp.diags(1.0 / np.sqrt(d))
    return CSR.from_scipy(s @ a @ s, dtype=dtype)


def csr_matmul(a: CSR, x, out=None) -> np.ndarray:
    """``a @ x`` for a `CSR` ``a`` (n, m) and dense ``x`` (m, c), deterministic.

    Notes
    -----
    Threads split the rows; each row sums its entries in stored (column) order with fused
    multiply-adds, so the result does not depend on the thread count. It differs from
    SciPy's (separate multiply and add) by rounding only.
    """
    x = _float_rows(x, "features", a.shape[1])
    data = a.data if a.data.dtype == x.dtype else a.data.astype(x.dtype)
    if out is None:
        out = np.empty((a.shape[0], x.shape[1]), dtype=x.dtype)
    _kernels.csr_dense(a.indptr, a.indices, data, x, out)
    return out


@dataclass(frozen=True)
class Segments:
    """Index of a segmentation with labels 0..n-1: pixels sorted by segment (stable order)."""

    labels: np.ndarray  # (P,) int64, raster order
    order: np.ndarray  # (P,) pixels sorted by segment, raster order within a segment
    ptr: np.ndarray  # (n + 1,) run starts
    counts: np.ndarray  # (n,) pixels per segment

    @classmethod
    def from_labels(cls, labels) -> Segments:
        """Index a label map (any shape) whose labels are exactly 0..n-1, each used."""
        lab = np.asarray(labels)
        if lab.size == 0 or lab.dtype.kind not in "iu":
            raise ConvError(f"segment labels must be a non-empty integer array, got {lab.dtype} {lab.shape}")
        lab = lab.ravel().astype(np.int64)
        if lab.min() < 0:
            raise ConvError(f"segment labels must be >= 0, got {lab.min()}")
        counts = np.bincount(lab)
        if (counts == 0).any():
            raise ConvError(f"segment labels must be consecutive: label {int(np.argmin(counts))} is empty")
        order = np.argsort(lab, kind="stable").astype(np.int64)
        ptr = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        return cls(lab, order, ptr, counts.astype(np.int64))

    @property
    def n_segments(self) -> int:
        return int(self.counts.size)

    @property
    def n_pixels(self) -> int:
        return int(self.labels.size)


def segment_mean(seg: Segments, x) -> np.ndarray:
    """Mean of each segment's pixel rows: ``x`` (P, c) -> (S, c), summed in raster order."""
    x = _float_rows(x, "pixel features", seg.n_pixels)
    out = np.empty((seg.n_segments, x.shape[1]), dtype=x.dtype)
    _kernels.segment_sum(seg.order, seg.ptr, x, out, True)
    return out


def segment_sum(seg: Segments, x) -> np.ndarray:
    """Sum of each segment's pixel rows: ``x`` (P, c) -> (S, c), summed in raster order."""
    x = _float_rows(x, "pixel features", seg.n_pixels)
    out = np.empty((seg.n_segments, x.shape[1]), dtype=x.dtype)
    _kernels.segment_sum(seg.order, seg.ptr, x, out, False)
    return out


def broadcast(seg: Segments, h, scale=None) -> np.ndarray:
    """Each pixel gets its segment's row: ``h`` (S, c) -> (P, c) (times ``scale[s]`` if given)."""
    h = _float_rows(h, "node features", seg.n_segments)
    out = np.empty((seg.n_pixels, h.shape[1]), dtype=h.dtype)
    f = _EMPTY.astype(h.dtype) if scale is None else np.ascontiguousarray(scale, dtype=h.dtype)
    _kernels.broadcast(seg.labels, h, out, f)
    return out
