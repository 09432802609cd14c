"""Numba kernels of the permutohedral lattice (Adams, Baek & Davis, Eurographics 2010).

Layout: positions ``(n, d)`` float64 (already divided by the filter's standard deviations and
multiplied by the lattice scale), values ``(n, c + 1)`` (last column the homogeneous weight 1).
A lattice point is keyed by the first ``d`` of its ``d + 1`` integer coordinates (they sum to 0).

Pipeline: ``embed`` (parallel over points: elevate onto the hyperplane sum = 0 of R^(d+1), find
the enclosing simplex by rounding to the nearest remainder-0 point and ranking the residuals,
barycentric weights, vertex hashes), ``insert`` (serial, in point order: open-addressing hash
table, so the lattice numbering is deterministic; ``merge`` lets a second half be inserted on
another thread), ``splat`` (serial scatter-add), ``simplex_neighbours`` (the neighbour pairs each
simplex's edges give for free), ``neighbours`` (parallel hash look-ups for the rest, along the
d + 1 lattice directions), ``blur`` (parallel over lattice points, one pass per direction with a
symmetric tap vector) and ``slice`` (parallel gather). No fast-math: every sum
runs in the order written, so the result is the same for any thread count.

Size: the permutohedral lattice's compiled stages (splat, blur, slice, hash table) share its
data layout and are compiled together.
"""

import numpy as np
from numba import njit, prange

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_P = np.uint64(2531011)
_S33 = np.uint64(33)
_LOW32 = np.uint64(0xFFFFFFFF)
#: points whose hash-table slots :func:`insert` loads ahead of the serial pass
_BATCH = 16


@njit(cache=True, nogil=True, inline="always")
def _mix(h):  # pragma: no cover - compiled
    """MurmurHash3's 64-bit finaliser."""
    h ^= h >> _S33
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    return h


@njit(cache=True, nogil=True)
def _hash_vec(key, d):  # pragma: no cover - compiled
    """``_mix`` of the polynomial ``sum_i key[i] P^(d - i)`` (mod 2^64): linear in the key, so
    the hash of a lattice neighbour follows from a point's with one multiply-add."""
    h = np.uint64(0)
    for i in range(d):
        h = (h + np.uint64(np.int64(key[i]))) * _P
    return _mix(h)


@njit(cache=True, nogil=True, inline="always")
def _same_key(lat_keys, e, key, d):  # pragma: no cover - compiled
    """Whether lattice point ``e`` is keyed by ``key``: its ``d`` stored coordinates compared in
    order, stopping at the first that differs."""
    for i in range(d):
        if lat_keys[e, i] != key[i]:
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def vertex(base, rank, r, key):  # pragma: no cover - compiled
    """Vertex ``r`` of a simplex: ``key[i] = base[i] + r - (d + 1) [rank[i] > d - r]``."""
    d = key.size
    for i in range(d):
        key[i] = base[i] + r - (d + 1) * (rank[i] > d - r)


@njit(parallel=True, cache=True, nogil=True)
def embed(pos, shift, factor, base, rank_out, bary, hashes, dirs):  # pragma: no cover - compiled
    """Simplex of each point of ``(pos - shift) * factor``.

    Writes the simplex as ``base (n, d)`` int32 and ``rank_out (n, d)`` int8 (vertex ``r``
    is :func:`vertex` of them), the barycentric weights ``bary (n, d+1)``, the vertices' hashes
    ``hashes (n, d+1)`` and ``dirs (n, d+1)``: vertex ``r + 1`` (mod d + 1) is one step from
    vertex ``r`` along lattice direction ``dirs[t, r]``.
    """
    n, d = pos.shape
    d1 = d + 1
    nchunk = (n + 255) // 256
    inv = np.empty(d + 1)
    for j in range(1, d + 1):
        inv[j] = 1.0 / np.sqrt(j * (j + 1.0))
    # powers[i] = P^(d - i) and their sum (the polynomial of a step that adds 1 everywhere)
    powers = np.empty(d, dtype=np.uint64)
    step_sum = np.uint64(0)
    pw = _P
    for i in range(d - 1, -1, -1):
        powers[i] = pw
        step_sum += pw
        pw *= _P
    for ch in prange(nchunk):
        elevated = np.empty(d1)
        rem0 = np.empty(d1, dtype=np.int64)
        rank = np.empty(d1, dtype=np.int64)
        b = np.empty(d1 + 1)
        for t in range(ch * 256, min(n, ch * 256 + 256)):
            # elevate (Helmert basis: orthonormal columns, so distances are preserved)
            sm = 0.0
            for j in range(d, 0, -1):
                cf = (pos[t, j - 1] - shift[j - 1]) * factor[j - 1] * inv[j]
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
                # vertex r + 1 differs from vertex r by the step along i where rank[i] = d - r
                dirs[t, d - rank[i]] = i
            b[0] += 1.0 + b[d1]
            # vertex 0 is ``rem0``; each next vertex is one step along ``dirs``, which adds
            # step_sum - (d + 1) P^(d - j) to the polynomial of _hash_vec (j < d)
            lin = np.uint64(0)
            for i in range(d):
                base[t, i] = rem0[i]
                rank_out[t, i] = rank[i]
                lin = (lin + np.uint64(rem0[i])) * _P
            for r in range(d1):
                bary[t, r] = b[r]
                hashes[t, r] = np.uint32(_mix(lin) & _LOW32)
                lin += step_sum
                j = dirs[t, r]
                if j < d:
                    lin -= np.uint64(d1) * powers[j]


@njit(cache=True, nogil=True)
def insert(base, rank, hashes, table, lat_keys, offsets, start, m, sink):  # pragma: no cover
    """Insert the vertices of points ``start..`` in order; stop before ``lat_keys`` overflows
    or the table gets more than half full.

    Returns ``(next_point, m)``: the first point not inserted and the lattice size so far.
    The insertion is serial (it numbers the lattice points in order), so it would wait on one
    cache miss after another; every ``_BATCH`` points, a first pass only reads the table slots
    and stored keys the batch will compare with (independent loads that overlap, summed into
    ``sink[0]`` so they are kept), then the serial pass finds them in cache.
    """
    n, d = base.shape
    d1 = d + 1
    mask = np.uint64(table.size - 1)
    cap = min(lat_keys.shape[0], table.size // 2)
    acc = np.int64(0)
    key = np.empty(d, dtype=np.int32)
    for t in range(start, n):
        if m + d1 > cap:
            sink[0] += acc
            return t, m
        if (t - start) % _BATCH == 0:
            for t2 in range(t, min(n, t + _BATCH)):
                for r in range(d1):
                    e = table[hashes[t2, r] & mask]
                    acc += e
                    if e >= 0:
                        acc += lat_keys[e, 0]
        for r in range(d1):
            vertex(base[t], rank[t], r, key)
            # neighbouring inputs (e.g. adjacent pixels) often share vertices (at the same
            # rank: vertex r has every coordinate = r mod d + 1): compare before hashing
            if t > start and hashes[t - 1, r] == hashes[t, r]:
                same = True
                for i in range(d):
                    if key[i] != base[t - 1, i] + r - d1 * (rank[t - 1, i] > d - r):
                        same = False
                        break
                if same:
                    offsets[t, r] = offsets[t - 1, r]
                    continue
            h = hashes[t, r] & mask
            while True:
                e = table[h]
                if e < 0:
                    table[h] = m
                    for i in range(d):
                        lat_keys[m, i] = key[i]
                    offsets[t, r] = m
                    m += 1
                    break
                if _same_key(lat_keys, e, key, d):
                    offsets[t, r] = e
                    break
                h = (h + np.uint64(1)) & mask
    sink[0] += acc
    return n, m


@njit(cache=True, nogil=True)
def merge(keys, start, table, lat_keys, m, remap, sink):  # pragma: no cover - compiled
    """Insert the lattice points ``keys[start:]`` (another table's, in its numbering order)
    into ``table``, writing each one's index here to ``remap``; stop before ``lat_keys``
    overflows or the table gets more than half full. Returns ``(next_key, m)``.

    Keys already present keep their index, the others are numbered from ``m`` on in order:
    inserting a second run of points into its own table and merging it so numbers the lattice
    exactly as inserting both runs into one table in order would.
    """
    mb, d = keys.shape
    mask = np.uint64(table.size - 1)
    cap = min(lat_keys.shape[0], table.size // 2)
    acc = np.int64(0)
    hs = np.empty(_BATCH, dtype=np.uint64)
    for e0 in range(start, mb, _BATCH):
        if m + _BATCH > cap:
            sink[0] += acc
            return e0, m
        e1 = min(mb, e0 + _BATCH)
        for e in range(e0, e1):
            hs[e - e0] = _hash_vec(keys[e], d) & mask
            f = table[hs[e - e0]]
            acc += f
            if f >= 0:
                acc += lat_keys[f, 0]
        for e in range(e0, e1):
            h = hs[e - e0]
            while True:
                f = table[h]
                if f < 0:
                    table[h] = m
                    for i in range(d):
                        lat_keys[m, i] = keys[e, i]
                    remap[e] = m
                    m += 1
                    break
                same = True
                for i in range(d):
                    if lat_keys[f, i] != keys[e, i]:
                        same = False
                        break
                if same:
                    remap[e] = f
                    break
                h = (h + np.uint64(1)) & mask
    sink[0] += acc
    return mb, m


@njit(parallel=True, cache=True, nogil=True)
def renumber(offsets, remap):  # pragma: no cover - compiled
    """``offsets[:] = remap[offsets]``."""
    n, d1 = offsets.shape
    for t in prange(n):
        for r in range(d1):
            offsets[t, r] = remap[offsets[t, r]]


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
        if _same_key(lat_keys, e, key, d):
            return e
        h = (h + np.uint64(1)) & mask


@njit(cache=True, nogil=True)
def simplex_neighbours(offsets, dirs, nbr):  # pragma: no cover - compiled
    """Fill the one-step slots of ``nbr`` known without hashing: consecutive vertices of each
    point's simplex are lattice neighbours along the direction ``dirs`` records."""
    n, d1 = offsets.shape
    for t in range(n):
        for r in range(d1):
            j = dirs[t, r]
            a = offsets[t, r]
            b = offsets[t, (r + 1) % d1]
            nbr[j, a, 0] = b
            nbr[j, b, 1] = a


@njit(parallel=True, cache=True, nogil=True)
def neighbours(table, lat_keys, m, radius, nbr):  # pragma: no cover - compiled
    """``nbr[j, e, 2k]`` / ``nbr[j, e, 2k+1]``: lattice point k+1 steps from e along +-direction j.

    A step along direction j adds 1 to every coordinate and subtracts d + 1 from coordinate j
    (for j = d only the implicit last coordinate changes). Missing points are -1. Only the
    forward steps are looked up: if f is k steps forward from e, e is k steps back from f (each
    point has one such e, so the parallel writes never collide). ``nbr`` holds -1 or the slots
    :func:`simplex_neighbours` filled (both directions); those are not looked up again.
    The look-ups of one point are done in stages (all hashes, then all first slots, then all
    key comparisons) so that their cache misses overlap.
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
        todo = np.empty(q, dtype=np.int64)
        for e in range(ch * 256, min(m, ch * 256 + 256)):
            nq = 0
            for j in range(d1):
                for k in range(1, radius + 1):
                    if nbr[j, e, 2 * k - 2] >= 0:
                        continue
                    u = j * radius + k - 1
                    for i in range(d):
                        keys[nq, i] = lat_keys[e, i] + k
                    if j < d:
                        keys[nq, j] = lat_keys[e, j] - k * d
                    hs[nq] = _hash_vec(keys[nq], d) & mask
                    todo[nq] = u
                    nq += 1
            for a in range(nq):
                cand[a] = table[hs[a]]
            for a in range(nq):
                f = cand[a]
                if f >= 0:
                    for i in range(d):
                        if lat_keys[f, i] != keys[a, i]:
                            f = _find_from(keys[a], table, lat_keys, d,
                                           (hs[a] + np.uint64(1)) & mask)
                            break
                if f >= 0:
                    u = todo[a]
                    j = u // radius
                    k = u % radius
                    nbr[j, e, 2 * k] = f
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


@njit(inline="always")
def normalise_row(out, t, den):  # pragma: no cover - compiled
    """``out[t] /= den``, NaN where nothing was splatted near the point (``den`` = 0)."""
    if den > 0.0:
        for k in range(out.shape[1]):
            out[t, k] = out[t, k] / den
    else:
        for k in range(out.shape[1]):
            out[t, k] = np.nan


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
        normalise_row(out, t, den)


@njit(cache=True, nogil=True)
def column_range(pos):  # pragma: no cover - compiled
    """Per-column minimum and maximum of ``pos (n, d)`` in one pass (n >= 1), and whether
    every entry is finite."""
    n, d = pos.shape
    lo = pos[0].copy()
    hi = pos[0].copy()
    finite = True
    for t in range(n):
        for i in range(d):
            v = pos[t, i]
            if v < lo[i]:
                lo[i] = v
            elif v > hi[i]:
                hi[i] = v
            elif v != v:
                finite = False
    for i in range(d):
        if not (np.isfinite(lo[i]) and np.isfinite(hi[i])):
            finite = False
    return lo, hi, finite
