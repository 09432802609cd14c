"""Superpixel scales of a hyperspectral cube: PCA, SLIC, nesting, region adjacency, k hops.

Layouts: a cube is ``(H, W, B)`` (bands last, as scikit-image's ``channel_axis=-1``); a
segmentation is an ``(H, W)`` int map with labels 0..S-1; a graph is a SciPy CSR ``(S, S)``.

- ``pca``: the top principal components of the pixel spectra (covariance eigenvectors in
  float64, each sign fixed so its largest loading is positive): deterministic.
- ``slic``: SLIC (Achanta et al., IEEE TPAMI 2012) from scikit-image on the first few
  components, rescaled to [0, 1], labels made consecutive.
- ``nest``: each fine segment gets one parent, the coarse segment it overlaps most; the coarse
  map is rebuilt as the union of its children (MSSGU's nested superpixels 2048/1024/512/256,
  Liu et al., IEEE TGRS 2022).
- ``region_adjacency``: segments that share a 4-neighbour pixel edge, weighted by the
  similarity of their mean features, ``w_ij = exp(-||m_i - m_j||^2 / (2 sigma^2))`` with sigma
  the median edge distance by default (CEGCN, Liu et al., IEEE TGRS 2021).
- ``khop``: nodes within k hops of each other, the same similarity weights (MDGCN's 1-, 2-,
  3-hop scales, Wan et al., IEEE TGRS 2020).
- ``build_scales``: all of it for a cube, returning `SuperpixelScales` with the normalised
  adjacency of each scale (`convolab.graph.propagate.normalized_adjacency`) and the transfer
  matrices between scales used by the cross fusion (row-normalised pixel overlaps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..errors import ConvError
from . import _kernels
from .propagate import CSR, Segments, normalized_adjacency, segment_mean


def _check_cube(cube, what: str = "cube") -> np.ndarray:
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise ConvError(f"{what} must be (H, W, bands), got shape {cube.shape}")
    if cube.dtype.kind not in "fiu":
        raise ConvError(f"{what} must be numeric, got {cube.dtype}")
    if cube.shape[0] < 2 or cube.shape[1] < 2 or cube.shape[2] < 1:
        raise ConvError(f"{what} is too small: shape {cube.shape}")
    if not np.isfinite(cube).all():
        raise ConvError(f"{what} contains NaN or Inf")
    return cube


def pca(cube, n_components: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Project each pixel spectrum on the top ``n_components`` principal components.

    Returns
    -------
    pcs : ndarray (H, W, n_components) float32
    explained : ndarray (n_components,)
        Fraction of the total variance of each component.
    """
    cube = _check_cube(cube)
    h, w, b = cube.shape
    if not 1 <= n_components <= b:
        raise ConvError(f"n_components must be in 1..{b} (the band count), got {n_components}")
    x = cube.reshape(-1, b).astype(np.float32)
    x = x - x.astype(np.float64).mean(axis=0).astype(np.float32)
    # the covariance by one float32 GEMM (float32 rounding, far below the eigen-gaps that
    # matter here), its eigen-decomposition in float64
    cov = (x.T @ x).astype(np.float64) / max(1, x.shape[0] - 1)
    cov = (cov + cov.T) / 2
    val, vec = np.linalg.eigh(cov)
    val, vec = val[::-1][:n_components], vec[:, ::-1][:, :n_components]
    big = np.argmax(np.abs(vec), axis=0)
    vec = vec * np.sign(vec[big, np.arange(n_components)])
    total = max(float(np.trace(cov)), 1e-300)
    return (x @ vec.astype(np.float32)).reshape(h, w, n_components), val / total


def relabel(labels) -> np.ndarray:
    """Labels made consecutive 0..S-1 in order of first appearance in raster order."""
    lab = np.asarray(labels)
    _, first, inv = np.unique(lab.ravel(), return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inv].reshape(lab.shape).astype(np.int32)


def slic(features, n_segments: int, compactness: float = 0.1, n_channels: int = 3) -> np.ndarray:
    """SLIC superpixels of an ``(H, W, C)`` feature image on its first ``n_channels`` channels.

    The channels are rescaled together to [0, 1] (one min and max over all of them, so their
    relative variance is kept); ``compactness`` is in those units (scikit-image's meaning).
    """
    from skimage.segmentation import slic as _slic

    f = _check_cube(features, "features")
    if n_segments < 1:
        raise ConvError(f"n_segments must be >= 1, got {n_segments}")
    f = f[..., : max(1, n_channels)].astype(np.float64)
    lo, hi = f.min(), f.max()
    f = (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)
    lab = _slic(f, n_segments=int(n_segments), compactness=compactness, channel_axis=-1,
                start_label=0, enforce_connectivity=True, convert2lab=False)
    return relabel(lab)


def nest(fine, coarse) -> tuple[np.ndarray, np.ndarray]:
    """Make ``coarse`` a union of ``fine``'s segments.

    Each fine segment's parent is the coarse segment holding most of its pixels (ties: the
    lowest label). Returns ``(parent, nested)``: parent (S_fine,) and the nested coarse map
    (labels consecutive, a coarse segment left with no child disappears).
    """
    f = np.asarray(fine)
    c = np.asarray(coarse)
    if f.shape != c.shape:
        raise ConvError(f"shape mismatch: fine segmentation {f.shape} vs coarse {c.shape}")
    nf, nc = int(f.max()) + 1, int(c.max()) + 1
    counts = np.bincount(f.ravel().astype(np.int64) * nc + c.ravel(), minlength=nf * nc).reshape(nf, nc)
    parent = np.argmax(counts, axis=1)
    nested = relabel(parent[f])
    # the parent of each fine segment in the relabelled map
    new_parent = np.zeros(nf, dtype=np.int64)
    new_parent[f.ravel()] = nested.ravel()
    return new_parent, nested


def _similarity(rows, cols, means, sigma):
    d2 = ((means[rows] - means[cols]) ** 2).sum(axis=1)
    if sigma is None:
        med = float(np.median(d2)) if d2.size else 1.0
        s2 = med / 2 if med > 0 else 1.0
    else:
        if not sigma > 0:
            raise ConvError(f"sigma must be > 0, got {sigma}")
        s2 = float(sigma) ** 2
    return np.exp(-d2 / (2 * s2))


def region_adjacency(labels, features, sigma: float | None = None) -> sp.csr_matrix:
    """Weighted region adjacency graph of a segmentation (4-neighbour contacts).

    Parameters
    ----------
    labels : (H, W) int, labels 0..S-1
    features : (H, W, C)
        Per-pixel features; segment means set the weights.
    sigma : float, optional
        Similarity width; default: sqrt(median squared edge distance / 2), i.e. the median
        edge gets weight exp(-1).

    Returns
    -------
    scipy.sparse.csr_matrix (S, S), symmetric, zero diagonal, float64.
    """
    lab = np.asarray(labels)
    feat = _check_cube(features, "features")
    if lab.shape != feat.shape[:2]:
        raise ConvError(f"shape mismatch: labels {lab.shape} vs features {feat.shape[:2]}")
    seg = Segments.from_labels(lab)
    means = segment_mean(seg, feat.reshape(-1, feat.shape[2]).astype(np.float64))
    adj = _kernels.adjacent_pairs(lab.astype(np.int64), seg.n_segments)
    rows, cols = np.nonzero(adj)
    w = _similarity(rows, cols, means, sigma)
    return sp.csr_matrix((w, (rows, cols)), shape=(seg.n_segments, seg.n_segments))


def khop(adj, k: int, means=None, sigma: float | None = None) -> sp.csr_matrix:
    """Graph joining nodes within ``k`` hops of each other in ``adj``.

    Weights: the feature similarity of the node ``means`` (as `region_adjacency`), or 1 when
    ``means`` is None. ``k = 1`` keeps ``adj``'s edges.
    """
    if k < 1:
        raise ConvError(f"k must be >= 1, got {k}")
    a = sp.csr_matrix(adj, dtype=np.float64)
    n = a.shape[0]
    b = (a != 0).astype(np.int64) + sp.identity(n, dtype=np.int64, format="csr")
    reach = b.copy()
    for _ in range(k - 1):
        reach = ((reach @ b) != 0).astype(np.int64)
    reach = sp.csr_matrix(reach)
    reach.setdiag(0)
    reach.eliminate_zeros()
    rows, cols = reach.nonzero()
    w = np.ones(rows.size) if means is None else _similarity(rows, cols, np.asarray(means, np.float64), sigma)
    return sp.csr_matrix((w, (rows, cols)), shape=(n, n))


def transfer(src, dst) -> sp.csr_matrix:
    """Row-normalised pixel overlap: (S_dst, S_src), row i = fractions of dst segment i's pixels
    in each src segment. Multiplying node features of ``src`` by it gives the mean over each
    ``dst`` segment of the broadcast ``src`` features."""
    s = np.asarray(src).ravel()
    d = np.asarray(dst).ravel()
    ns, nd = int(s.max()) + 1, int(d.max()) + 1
    m = sp.csr_matrix((np.ones(s.size), (d, s)), shape=(nd, ns))
    m.sum_duplicates()
    return sp.diags(1.0 / np.asarray(m.sum(axis=1)).ravel()) @ m


@dataclass
class SuperpixelScales:
    """The graphs of a cube at several scales (finest first).

    Attributes
    ----------
    pcs : (H, W, n_components) float32, standardised (zero mean, unit variance per component)
    labels : list of (H, W) int32 maps
    segments : list of `Segments`
    adjacency : list of scipy CSR weighted graphs
    a_hat : list of `CSR` normalised adjacencies (float32)
    cross : dict (dst, src) -> `CSR` transfer matrix (float32) and its transpose
    parents : list of (S_s,) parent indices into scale s + 1 (nested only)
    timings : seconds per step
    """

    pcs: np.ndarray
    labels: list
    segments: list
    adjacency: list
    a_hat: list
    cross: dict
    parents: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def sizes(self) -> list[int]:
        return [s.n_segments for s in self.segments]


def build_scales(cube, n_segments=(400, 200, 100), n_components: int = 30, nested: bool = True,
                 hops=None, compactness: float = 0.1, slic_channels: int = 3, sigma: float | None = None,
                 segmentations=None) -> SuperpixelScales:
    """PCA, superpixels at several scales and their graphs.

    Parameters
    ----------
    cube : (H, W, B)
    n_segments : sequence of int
        SLIC segment counts, finest first (ignored with ``hops`` or ``segmentations``).
    hops : sequence of int, optional
        Instead of several SLIC scales, one SLIC at ``n_segments[0]`` and the k-hop graphs of
        its region adjacency for each k here (MDGCN's scales).
    nested : bool
        Rebuild each coarser scale as a union of the finer one's segments (`nest`).
    segmentations : sequence of (H, W) int maps, optional
        Given superpixel maps (e.g. `convolab.graph.scene.indian_pines_segments`) instead of SLIC.
    """
    t0 = time.perf_counter()
    pcs, _ = pca(cube, n_components)
    pcs = (pcs - pcs.mean(axis=(0, 1))) / np.maximum(pcs.std(axis=(0, 1)), 1e-12)
    pcs = pcs.astype(np.float32)
    t1 = time.perf_counter()
    if segmentations is not None:
        maps = [relabel(m) for m in segmentations]
        for m in maps:
            if m.shape != pcs.shape[:2]:
                raise ConvError(f"shape mismatch: segmentation {m.shape} vs cube {pcs.shape[:2]}")
    elif hops:
        maps = [slic(pcs, n_segments[0], compactness, slic_channels)] * len(hops)
    else:
        maps = [slic(pcs, n, compactness, slic_channels) for n in n_segments]
    parents = []
    if nested and not hops:
        for i in range(1, len(maps)):
            p, maps[i] = nest(maps[i - 1], maps[i])
            parents.append(p)
    t2 = time.perf_counter()
    segs = [Segments.from_labels(m) for m in maps]
    if hops:
        base = region_adjacency(maps[0], pcs, sigma)
        means = segment_mean(segs[0], pcs.reshape(-1, pcs.shape[2]).astype(np.float64))
        adjs = [khop(base, k, means, sigma) for k in hops]
    else:
        adjs = [region_adjacency(m, pcs, sigma) for m in maps]
    a_hat = [normalized_adjacency(a) for a in adjs]
    cross = {}
    for i in range(len(maps)):
        for j in range(len(maps)):
            if i != j:
                m = CSR.from_scipy(transfer(maps[j], maps[i]))
                cross[(i, j)] = (m, m.transpose())
    t3 = time.perf_counter()
    return SuperpixelScales(pcs, maps, segs, adjs, a_hat, cross, parents,
                            {"pca": t1 - t0, "superpixels": t2 - t1, "graphs": t3 - t2})
