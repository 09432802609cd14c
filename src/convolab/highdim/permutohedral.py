"""Permutohedral-lattice Gaussian filtering (Adams, Baek & Davis, Eurographics 2010).

Layout: positions ``(n, d)`` in units of the filter's standard deviation, values ``(n, c)``.
The filter computes ``out_i ~= sum_j k(p_i - p_j) v_j / sum_j k(p_i - p_j)`` with
``k(x) = exp(-|x|^2 / 2)`` by splat / blur / slice:

1. scale the positions by ``LATTICE_SCALE * (d + 1)`` and elevate them onto the hyperplane
   ``sum = 0`` of R^(d+1) (orthonormal Helmert basis);
2. find the enclosing simplex of the lattice A*_d scaled by d + 1 (round to the nearest
   remainder-0 point, rank the residuals, repair the coordinate sum) and the barycentric weights;
3. splat ``w * [v, 1]`` onto the d + 1 vertices (hash table keyed by integer coordinates);
4. blur with the taps ``[1/2, 1, 1/2]`` along each of the d + 1 lattice directions in turn;
5. slice with the same weights and divide by the homogeneous channel.

Cost O(d^2 n) for the embedding and splat/slice plus O(d^2 m) for the blur's neighbour look-ups
and O(d c m) for the blur, with ``m <= n (d + 1)`` lattice points (for image features m is a
fraction of n). ``LATTICE_SCALE`` is Adams et al.'s ``sqrt(2/3)``: the blur then has covariance
``3/4 I`` in position space and splat + slice add about the rest of a unit variance. The
resulting kernel is flatter than the Gaussian near 0 and has almost no weight beyond about 2.5
standard deviations, increasingly so as d grows: accurate for dense data such as image
features, less so for sparse high-dimensional point clouds (see the tests).

The lattice (positions, simplex weights, hash table, neighbour lists) is built once by
:class:`PermutohedralLattice` and can filter many value arrays with any symmetric blur taps; the
learned splat / blur / slice operators of :mod:`convolab.highdim.learned` use that.
"""

from __future__ import annotations

import numpy as np

from .._parallel import run_threads, worker_count
from ..errors import ConvError
from ..kernels import PARALLEL_LOCK

#: Adams et al.'s lattice scale: positions are multiplied by ``LATTICE_SCALE * (d + 1)``
LATTICE_SCALE = float(np.sqrt(2.0 / 3.0))
#: the Gaussian blur taps (centre, then distance 1) along each lattice direction
GAUSSIAN_TAPS = (1.0, 0.5)
#: largest feature dimension supported
MAX_D = 16
#: rounds of at least this many points insert their two halves on two threads
_SPLIT_MIN = 1 << 14
#: memory for the simplices of one embed / insert round
_ROUND_BYTES = 1 << 25


class PermutohedralLattice:
    """A permutohedral lattice built over a fixed set of positions.

    Parameters
    ----------
    positions : ndarray, shape (n, d)
        Feature positions in units of the Gaussian's standard deviation (finite, d <= 16).
    scale : float or ndarray of shape (d,), optional
        Extra per-dimension factors applied to the positions before the lattice scale
        (1 by default; the learned operators fit them).
    radius : int, optional
        Blur radius in lattice steps that :meth:`filter` will support (1 for the Gaussian).

    Attributes
    ----------
    n, d : int
        Number of points and feature dimension.
    size : int
        Number of lattice points touched by the splat.

    Notes
    -----
    Building costs O(d^2 n): the elevation and simplex search are parallel over points; the
    hash-table insertion numbers the lattice points in order of first appearance, so the
    numbering (and every result) is deterministic. With two or more threads the second half
    of each round is inserted into a table of its own on another thread and merged in order,
    which gives the same numbering.
    """

    def __init__(self, positions, scale=None, radius: int = 1):
        from . import _kernels_lattice as K

        pos = np.asarray(positions, dtype=np.float64)
        if pos.ndim != 2:
            raise ConvError(f"positions must have shape (n, d); got shape {pos.shape}")
        n, d = pos.shape
        if not 1 <= d <= MAX_D:
            raise ConvError(f"the permutohedral lattice supports 1 <= d <= {MAX_D}; got d = {d}")
        if radius < 1:
            raise ConvError(f"radius must be >= 1; got {radius}")
        s = np.ones(d) if scale is None else np.broadcast_to(np.asarray(scale, float), (d,))
        factor = np.ascontiguousarray(s * (LATTICE_SCALE * (d + 1)), dtype=np.float64)
        lo, hi, finite = K.column_range(pos) if n else (np.zeros(d), np.zeros(d), True)
        if not finite:
            raise ConvError("positions contain non-finite values (NaN or inf)")
        if n and np.max((hi - lo) * np.abs(factor)) > 2.0**28:
            raise ConvError(
                "positions span more than the lattice's integer range "
                f"(largest scaled coordinate {np.max((hi - lo) * np.abs(factor)):.3g}); "
                "use larger sigmas"
            )
        self.n, self.d, self.radius = n, d, int(radius)
        d1 = d + 1
        self.offsets = np.empty((n, d1), dtype=np.int32)
        self.bary = np.empty((n, d1), dtype=np.float64)
        dirs = np.empty((n, d1), dtype=np.int8)
        # sized for about n lattice points (typical of image features); grows by rehashing
        table = np.full(1 << max(10, int(np.ceil(np.log2(max(2 * n, 1))))), -1, dtype=np.int32)
        lat_keys = np.empty((table.size // 2, d), dtype=np.int32)
        m = 0
        sink = np.zeros(1, dtype=np.int64)
        # points per embed/insert round: few rounds (each parallel launch costs about a
        # millisecond), the round's simplices within about _ROUND_BYTES
        chunk = int(np.clip(_ROUND_BYTES // (5 * d + 4 * d1), 256, 1 << 20))
        split = worker_count() > 1
        with PARALLEL_LOCK:
            for c0 in range(0, n, chunk):
                c1 = min(n, c0 + chunk)
                base = np.empty((c1 - c0, d), dtype=np.int32)
                rank = np.empty((c1 - c0, d), dtype=np.int8)
                hashes = np.empty((c1 - c0, d1), dtype=np.uint32)
                K.embed(pos[c0:c1], lo, factor, base, rank, self.bary[c0:c1], hashes,
                        dirs[c0:c1])
                offsets = self.offsets[c0:c1]
                if not split or c1 - c0 < _SPLIT_MIN:
                    table, lat_keys, m = _insert(K, base, rank, hashes, offsets, table,
                                                 lat_keys, m, sink)
                    continue
                # the serial insertion is the bottleneck: insert the round's second half into
                # a table of its own on another thread, then merge it (same numbering)
                h = (c1 - c0) // 2
                size = 1 << max(10, int(np.ceil(np.log2(h * d1 // 2 + 1))))
                own = np.full(size, -1, dtype=np.int32)
                own_keys = np.empty((size // 2, d), dtype=np.int32)

                jobs = (
                    (base[:h], rank[:h], hashes[:h], offsets[:h], table, lat_keys, m, sink),
                    (base[h:], rank[h:], hashes[h:], offsets[h:], own, own_keys, 0,
                     np.zeros(1, dtype=np.int64)),
                )
                (table, lat_keys, m), (_, own_keys, mb) = run_threads(
                    lambda job: _insert(K, *job), jobs
                )
                remap = np.empty(mb, dtype=np.int32)
                start = 0
                while True:
                    start, m = K.merge(own_keys[:mb], start, table, lat_keys, m, remap, sink)
                    if start == mb:
                        break
                    table, lat_keys = _grow(K, table, lat_keys, m)
                K.renumber(offsets[h:], remap)
            self.size = m
            self.nbr = np.full((d1, m, 2 * self.radius), -1, dtype=np.int32)
            K.simplex_neighbours(self.offsets, dirs, self.nbr)
            K.neighbours(table, lat_keys, m, self.radius, self.nbr)

    def filter(self, values, taps=GAUSSIAN_TAPS, normalise: bool = True):
        """Splat ``values``, blur with ``taps`` along every lattice direction, slice.

        Parameters
        ----------
        values : ndarray, shape (n, c)
            Values at the lattice's positions (float32 or float64; others become float64).
        taps : sequence of float
            Symmetric blur taps, centre first (at most ``radius + 1``).
        normalise : bool
            Divide by the filtered homogeneous channel (True), or return the unnormalised
            filtered values with the homogeneous channel appended as the last column.

        Returns
        -------
        ndarray, shape (n, c) (or (n, c + 1) when not normalised)
        """
        from . import _kernels_lattice as K

        v = np.asarray(values)
        if v.ndim != 2 or v.shape[0] != self.n:
            raise ConvError(f"values must have shape ({self.n}, c); got shape {v.shape}")
        dtype = v.dtype if v.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        t = np.zeros(self.radius + 1, dtype=dtype)
        taps = np.asarray(taps, dtype=dtype)
        if taps.ndim != 1 or not 1 <= taps.size <= self.radius + 1:
            raise ConvError(f"taps must be a vector of 1..{self.radius + 1} numbers")
        t[: taps.size] = taps
        n, c = v.shape
        vals = np.empty((n, c + 1), dtype=dtype)
        vals[:, :c] = v
        vals[:, c] = 1
        lat = np.zeros((self.size, c + 1), dtype=dtype)
        tmp = np.empty_like(lat)
        with PARALLEL_LOCK:
            K.splat(vals, self.offsets, self.bary.astype(dtype, copy=False), lat)
            if K.blur(lat, tmp, self.nbr, t):
                lat = tmp
            if normalise:
                out = np.empty((n, c), dtype=dtype)
                K.slice_normalise(lat, self.offsets, self.bary.astype(dtype, copy=False), out)
                return out
            out = np.zeros((n, c + 1), dtype=dtype)
            bary = self.bary.astype(dtype, copy=False)
            for r in range(self.d + 1):
                out += bary[:, r : r + 1] * lat[self.offsets[:, r]]
            return out


def _grow(K, table, lat_keys, m):
    """A hash table twice as large holding the lattice points ``0..m-1``, and a key store to
    match."""
    table = np.full(2 * table.size, -1, dtype=np.int32)
    K.rehash(lat_keys, m, table)
    grown = np.empty((table.size // 2, lat_keys.shape[1]), dtype=np.int32)
    grown[:m] = lat_keys[:m]
    return table, grown


def _insert(K, base, rank, hashes, offsets, table, lat_keys, m, sink):
    """Insert every vertex of the simplices ``base``/``rank`` in order, growing the table as
    needed. Returns ``(table, lat_keys, m)``."""
    start = 0
    while True:
        start, m = K.insert(base, rank, hashes, table, lat_keys, offsets, start, m, sink)
        if start == base.shape[0]:
            return table, lat_keys, m
        table, lat_keys = _grow(K, table, lat_keys, m)


def permutohedral_filter(values, positions, taps=GAUSSIAN_TAPS, scale=None):
    """Normalised Gaussian filter of ``values`` at ``positions`` on the permutohedral lattice.

    Parameters
    ----------
    values : ndarray, shape (n, c)
    positions : ndarray, shape (n, d)
        In units of the Gaussian's standard deviation.
    taps, scale
        See :class:`PermutohedralLattice`.

    Returns
    -------
    ndarray, shape (n, c)
    """
    radius = max(1, len(np.atleast_1d(taps)) - 1)
    return PermutohedralLattice(positions, scale=scale, radius=radius).filter(values, taps)
