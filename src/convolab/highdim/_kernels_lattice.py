"""Numba kernels of the permutohedral lattice (Adams, Baek & Davis, Eurographics 2010).

Layout: positions ``(n, d)`` float64 (already divided by the filter's standard deviations and
multiplied by the lattice scale), values ``(n, c + 1)`` (last column the homogeneous weight 1).
A lattice point is keyed by the first ``d`` of its ``d + 1`` integer coordinates (they sum to 0).

Pipeline: ``embed`` (parallel over points: elevate onto the hyperplane sum = 0 of R^(d+1), find
the enclosing simplex by rounding to the nearest remainder-0 point and ranking the residuals,
barycentric weights), ``insert`` (serial, in point order: open-addressing hash table, so the
lattice numbering is deterministic), ``splat`` (serial scatter-add), ``neighbours`` (parallel hash
look-ups along the d + 1 lattice directions), ``blur`` (parallel over lattice points, one pass per
direction with a symmetric tap vector) and ``slice`` (parallel gather). No fast-math: every sum
runs in the order written, so the result is the same for any thread count.
"""

import numpy as np
from numba import njit, prange

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_P = np.uint64(2531011)
_S33 = np.uint64(33)
_MASK32 = np.int64(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def _hash_vec(key, d):  # pragma: no cover - compiled
    h = np.uint64(0)
    for i in range(d):
        h = (h + np.uint64(np.int64(key[i]) & _MASK32)) * _P
    h ^= h >> _S33
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    return h


@njit(parallel=True, cache=True, nogil=True)
def embed(pos, keys, bary):  # pragma: no cover - compiled
    """Simplex vertices ``keys (n, d+1, d)`` int32 and barycentric weights ``bary (n, d+1)``."""
    n, d = pos.shape
    d1 = d + 1
    nchunk = (n + 255) // 256
    inv = np.empty(d + 1)
    for j in range(1, d + 1):
        inv[j] = 1.0 / np.sqrt(j * (j + 1.0))
    for ch in prange(nchunk):
        elevated = np.empty(d1)
        rem0 = np.empty(d1, dtype=np.int64)
        rank = np.empty(d1, dtype=np.int64)
        b = np.empty(d1 + 1)
        for t in range(ch * 256, min(n, ch * 256 + 256)):
            # elevate (Helmert basis: orthonormal columns, so distances are preserved)
            sm = 0.0
            for j in range(d, 0, -1):
                cf = pos[t, j - 1] * inv[j]
                elevated[j] = sm - j * cf
                sm += cf
            elevated[0] = sm
            # nearest remainder-0 point, coordinate sum
            s = 0
            for i in range(d1):
                rd = np.int64(np.floor(elevated[i] / d1 + 0.5))
                rem0[i] = rd * d1
                s += rd
                rank[i] = 0
            # rank the residuals
            for i in range(d):
                di = elevated[i] - rem0[i]
                for j in range(i + 1, d1):
                    if di < elevated[j] - rem0[j]:
                        rank[i] += 1
                    else:
                        rank[j] += 1
            # bring the point back onto the plane sum = 0
            for i in range(d1):
                rank[i] += s
                if rank[i] < 0:
                    rank[i] += d1
                    rem0[i] += d1
                elif rank[i] > d:
                    rank[i] -= d1
                    rem0[i] -= d1
            for i in range(d1 + 1):
                b[i] = 0.0
            for i in range(d1):
                v = (elevated[i] - rem0[i]) / d1
                b[d - rank[i]] += v
                b[d - rank[i] + 1] -= v
            b[0] += 1.0 + b[d1]
            for r in range(d1):
                for i in range(d):
                    keys[t, r, i] = rem0[i] + r - d1 * (rank[i] > d - r)
                bary[t, r] = b[r]


@njit(cache=True, nogil=True)
def insert(keys, table, lat_keys, offsets, start, m):  # pragma: no cover - compiled
    """Insert the vertices of points ``start..`` in order; stop before ``lat_keys`` overflows
    or the table gets more than half full.

    Returns ``(next_point, m)``: the first point not inserted and the lattice size so far.
    """
    n, d1, d = keys.shape
    mask = np.uint64(table.size - 1)
    cap = min(lat_keys.shape[0], table.size // 2)
    for t in range(start, n):
        if m + d1 > cap:
            return t, m
        for r in range(d1):
            if t > start:
                # neighbouring inputs (e.g. adjacent pixels) often share vertices: skip the hash
                same = True
                for i in range(d):
                    if keys[t, r, i] != keys[t - 1, r, i]:
                        same = False
                        break
                if same:
                    offsets[t, r] = offsets[t - 1, r]
                    continue
            h = _hash_vec(keys[t, r], d) & mask
            while True:
                e = table[h]
                if e < 0:
                    table[h] = m
                    for i in range(d):
                        lat_keys[m, i] = keys[t, r, i]
                    offsets[t, r] = m
                    m += 1
                    break
                same = True
                for i in range(d):
                    if lat_keys[e, i] != keys[t, r, i]:
                        same = False
                        break
                if same:
                    offsets[t, r] = e
                    break
                h = (h + np.uint64(1)) & mask
    return n, m


@njit(cache=True, nogil=True)
def rehash(lat_keys, m, table):  # pragma: no cover - compiled
    """Fill an empty (all -1) ``table`` with the lattice points ``0..m-1``."""
    d = lat_keys.shape[1]
    mask = np.uint64(table.size - 1)
    for e in range(m):
        h = _hash_vec(lat_keys[e], d) & mask
        while table[h] >= 0:
            h = (h + np.uint64(1)) & mask
        table[h] = e


@njit(cache=True, nogil=True)
def splat(values, offsets, bary, lat):  # pragma: no cover - compiled
    n, c1 = values.shape
    d1 = offsets.shape[1]
    for t in range(n):
        for r in range(d1):
            o = offsets[t, r]
            w = bary[t, r]
            for k in range(c1):
                lat[o, k] += w * values[t, k]


@njit(cache=True, nogil=True)
def _find_from(key, table, lat_keys, d, h):  # pragma: no cover - compiled
    """Index of ``key`` probing from slot ``h`` on, or -1."""
    mask = np.uint64(table.size - 1)
    while True:
        e = table[h]
        if e < 0:
            return -1
        same = True
        for i in range(d):
            if lat_keys[e, i] != key[i]:
                same = False
                break
        if same:
            return e
        h = (h + np.uint64(1)) & mask


@njit(parallel=True, cache=True, nogil=True)
def neighbours(table, lat_keys, m, radius, nbr):  # pragma: no cover - compiled
    """``nbr[j, e, 2k]`` / ``nbr[j, e, 2k+1]``: lattice point k+1 steps from e along +-direction j.

    A step along direction j adds 1 to every coordinate and subtracts d + 1 from coordinate j
    (for j = d only the implicit last coordinate changes). Missing points are -1. Only the
    forward steps are looked up: if f is k steps forward from e, e is k steps back from f (each
    point has one such e, so the parallel writes never collide). ``nbr`` must be filled with -1.
    The (d + 1) radius look-ups of one point are done in stages (all hashes, then all first
    slots, then all key comparisons) so that their cache misses overlap.
    """
    d = lat_keys.shape[1]
    d1 = d + 1
    q = d1 * radius
    mask = np.uint64(table.size - 1)
    nchunk = (m + 255) // 256
    for ch in prange(nchunk):
        keys = np.empty((q, d), dtype=np.int32)
        hs = np.empty(q, dtype=np.uint64)
        cand = np.empty(q, dtype=np.int32)
        for e in range(ch * 256, min(m, ch * 256 + 256)):
            for j in range(d1):
                for k in range(1, radius + 1):
                    u = j * radius + k - 1
                    for i in range(d):
                        keys[u, i] = lat_keys[e, i] + k
                    if j < d:
                        keys[u, j] = lat_keys[e, j] - k * d
                    hs[u] = _hash_vec(keys[u], d) & mask
            for u in range(q):
                cand[u] = table[hs[u]]
            for u in range(q):
                f = cand[u]
                if f >= 0:
                    for i in range(d):
                        if lat_keys[f, i] != keys[u, i]:
                            f = _find_from(keys[u], table, lat_keys, d,
                                           (hs[u] + np.uint64(1)) & mask)
                            break
                j = u // radius
                k = u % radius
                nbr[j, e, 2 * k] = f
                if f >= 0:
                    nbr[j, f, 2 * k + 1] = e


@njit(parallel=True, cache=True, nogil=True)
def blur(lat, tmp, nbr, taps):  # pragma: no cover - compiled
    """One pass of the symmetric filter ``taps`` (centre first) along every direction in turn."""
    d1, m, two_r = nbr.shape
    c1 = lat.shape[1]
    radius = two_r // 2
    src = lat
    dst = tmp
    for j in range(d1):
        for e in prange(m):
            for k in range(c1):
                dst[e, k] = taps[0] * src[e, k]
            for q in range(radius):
                a = nbr[j, e, 2 * q]
                b = nbr[j, e, 2 * q + 1]
                t = taps[q + 1]
                if a >= 0:
                    for k in range(c1):
                        dst[e, k] += t * src[a, k]
                if b >= 0:
                    for k in range(c1):
                        dst[e, k] += t * src[b, k]
        sw = src
        src = dst
        dst = sw
    return (d1 % 2) == 1  # True when the result is in ``tmp``


@njit(parallel=True, cache=True, nogil=True)
def slice_normalise(lat, offsets, bary, out):  # pragma: no cover - compiled
    n, c = out.shape
    d1 = offsets.shape[1]
    for t in prange(n):
        den = 0.0
        for k in range(c):
            out[t, k] = 0.0
        for r in range(d1):
            o = offsets[t, r]
            w = bary[t, r]
            for k in range(c):
                out[t, k] += w * lat[o, k]
            den += w * lat[o, c]
        if den > 0.0:
            for k in range(c):
                out[t, k] = out[t, k] / den
        else:
            for k in range(c):
                out[t, k] = np.nan
