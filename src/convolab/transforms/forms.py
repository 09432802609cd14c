"""Exact bilinear algorithms on a tile: the common form of Winograd and SFC.

A 1D bilinear algorithm for the correlation ``y[i] = sum_k x[i+k] w[k]`` (``m`` outputs, ``r``
taps, ``n = m + r - 1`` inputs) is three matrices: ``y = AT @ ((G @ w) * (BT @ x))`` with
``BT`` of shape (P, n), ``G`` (P, r) and ``AT`` (m, P); ``P`` is the number of products.

A 2D algorithm works on an ``n x n`` input tile, an ``r x r`` filter and an ``m x m`` output
tile, flattened row-major: ``vec(Y) = AT @ ((G @ vec(W)) * (BT @ vec(X)))``. It may be *nested*
(separable: ``BT = kron(BT1, BT1)`` and so on, ``Y = AT1 [(G1 W G1^T) * (BT1 X BT1^T)] AT1^T``)
or not (SFC's native form). Either way it also carries a factorisation used by the fast
engine (`convolab.algorithms.bilinear`):

- input:  ``Z = B1 X B1^T`` (separable, ``B1`` of shape (n1, n)), then ``V = S_in @ vec(Z)``;
- filter: ``U = G @ vec(W)``, computed once per plan (no factorisation needed);
- output: ``M' = reshape(S_out @ M, (n2, n2))``, then ``Y = A1 M' A1^T`` (``A1``: (m, n2)).

``S_in`` / ``S_out`` are None for nested algorithms (identity). Every matrix holds
`fractions.Fraction` entries (NumPy object arrays), so identities are checked exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import reduce
from math import lcm

import numpy as np


def fmat(rows) -> np.ndarray:
    """A 2D NumPy object array of `fractions.Fraction` from nested sequences."""
    a = np.array(rows, dtype=object)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    out = np.empty(a.shape, dtype=object)
    for idx, v in np.ndenumerate(a):
        out[idx] = Fraction(v)
    return out


def fzeros(shape) -> np.ndarray:
    """An object array of Fraction zeros."""
    out = np.empty(shape, dtype=object)
    out.fill(Fraction(0))
    return out


def fkron(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact Kronecker product of two Fraction matrices."""
    out = fzeros((a.shape[0] * b.shape[0], a.shape[1] * b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[i * b.shape[0] : (i + 1) * b.shape[0], j * b.shape[1] : (j + 1) * b.shape[1]] = (
                a[i, j] * b
            )
    return out


def finv(a: np.ndarray) -> np.ndarray:
    """Exact inverse of a square Fraction matrix (Gauss-Jordan); ValueError if singular."""
    n = a.shape[0]
    aug = np.concatenate([fmat(a), fmat(np.eye(n, dtype=int))], axis=1)
    for col in range(n):
        piv = next((r for r in range(col, n) if aug[r, col] != 0), None)
        if piv is None:
            raise ValueError("singular matrix")
        aug[[col, piv]] = aug[[piv, col]]
        aug[col] = aug[col] / aug[col, col]
        for r in range(n):
            if r != col and aug[r, col] != 0:
                aug[r] = aug[r] - aug[r, col] * aug[col]
    return aug[:, n:]


def scaled_int(a: np.ndarray) -> tuple[np.ndarray, int]:
    """``(D * a as int64, D)`` with D the least common denominator of the entries of ``a``."""
    d = reduce(lcm, (Fraction(v).denominator for v in a.flat), 1)
    ints = np.array([int(Fraction(v) * d) for v in a.flat], dtype=np.int64).reshape(a.shape)
    return ints, d


def fdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact product of two Fraction matrices, computed in scaled integer arithmetic."""
    ai, da = scaled_int(a)
    bi, db = scaled_int(b)
    prod = ai.astype(object).dot(bi.astype(object)) if max(ai.shape + bi.shape) > 4096 else (
        ai.dot(bi)
    )
    d = da * db
    out = np.empty(prod.shape, dtype=object)
    for idx, v in np.ndenumerate(prod):
        out[idx] = Fraction(int(v), d)
    return out


def correlation_tensor_1d(m: int, r: int) -> np.ndarray:
    """T[i, k, l] = 1 if l == i + k: the correlation ``y[i] = sum_k w[k] x[i+k]`` as a tensor."""
    n = m + r - 1
    t = np.zeros((m, r, n), dtype=np.int64)
    for i in range(m):
        for k in range(r):
            t[i, k, i + k] = 1
    return t


def is_exact(AT: np.ndarray, G: np.ndarray, BT: np.ndarray, target: np.ndarray) -> bool:
    """Whether ``sum_p AT[i,p] G[p,k] BT[p,l] == target[i,k,l]`` exactly (integer arithmetic)."""
    a, da = scaled_int(AT)
    g, dg = scaled_int(G)
    b, db = scaled_int(BT)
    got = np.einsum("ip,pk,pl->ikl", a, g, b)
    return bool(np.array_equal(got, target * (da * dg * db)))


def correlation_tensor_2d(m: int, r: int) -> np.ndarray:
    """The 2D correlation as a tensor over row-major flattened output/filter/input tiles."""
    t1 = correlation_tensor_1d(m, r)
    n = m + r - 1
    return np.einsum("ikl,jqs->ijkqls", t1, t1).reshape(m * m, r * r, n * n)


@dataclass(frozen=True)
class _Bilinear:
    """What the 1D and 2D forms share: ``m`` outputs and ``r`` taps per dimension, and the
    exactness check of their full matrices ``AT``, ``G``, ``BT`` against ``_correlation``."""

    name: str
    m: int
    r: int

    @property
    def n(self) -> int:
        return self.m + self.r - 1

    @property
    def products(self) -> int:
        """Products per tile (per input channel and output channel pair)."""
        return self.BT.shape[0]

    def is_exact(self) -> bool:
        """Whether the full transforms compute the correlation exactly for every input."""
        return is_exact(self.AT, self.G, self.BT, self._correlation(self.m, self.r))


@dataclass(frozen=True)
class Bilinear1D(_Bilinear):
    """A 1D bilinear correlation algorithm ``y = AT ((G w) * (BT x))`` with exact entries.

    Attributes
    ----------
    name : str
    m, r : int
        Outputs and taps; the input has ``n = m + r - 1`` samples.
    AT, G, BT : numpy.ndarray of Fraction
        Shapes (m, P), (P, r), (P, n).
    """

    AT: np.ndarray
    G: np.ndarray
    BT: np.ndarray

    _correlation = staticmethod(correlation_tensor_1d)


@dataclass(frozen=True)
class Bilinear2D(_Bilinear):
    """A 2D bilinear algorithm on an ``n x n`` tile, with its fast factorisation.

    Attributes
    ----------
    name : str
    m, r : int
        Output tile ``m x m``, filter ``r x r``; input tile ``n x n`` with ``n = m + r - 1``.
    BT, G, AT : numpy.ndarray of Fraction
        Full transforms, shapes (P, n*n), (P, r*r), (m*m, P), on row-major flattened tiles.
    B1, A1 : numpy.ndarray of Fraction
        Separable stages: ``Z = B1 X B1^T`` and ``Y = A1 M' A1^T``.
    S_in, S_out : numpy.ndarray of Fraction or None
        Non-separable stages (None: identity): ``V = S_in vec(Z)``, ``vec(M') = S_out M``.
    separable : bool
        True for nested algorithms (``S_in`` and ``S_out`` are None).
    """

    BT: np.ndarray
    G: np.ndarray
    AT: np.ndarray
    B1: np.ndarray
    A1: np.ndarray
    S_in: np.ndarray | None = None
    S_out: np.ndarray | None = None

    _correlation = staticmethod(correlation_tensor_2d)

    @property
    def separable(self) -> bool:
        return self.S_in is None and self.S_out is None

    def factorisation_matches(self) -> bool:
        """Whether the fast factorisation multiplies out to the full transforms exactly."""
        bt = fkron(self.B1, self.B1)
        at = fkron(self.A1, self.A1)
        if self.S_in is not None:
            bt = fdot(self.S_in, bt)
        if self.S_out is not None:
            at = fdot(at, self.S_out)
        return bool(np.array_equal(bt, self.BT) and np.array_equal(at, self.AT))

    @classmethod
    def nested(cls, alg: Bilinear1D, name: str | None = None) -> Bilinear2D:
        """The separable 2D algorithm ``Y = AT [(G W G^T) * (BT X B)] A``."""
        return cls(
            name or alg.name, alg.m, alg.r,
            BT=fkron(alg.BT, alg.BT), G=fkron(alg.G, alg.G), AT=fkron(alg.AT, alg.AT),
            B1=alg.BT, A1=alg.AT,
        )

    @classmethod
    def from_matrices(cls, name: str, m: int, r: int, BT, G, AT) -> Bilinear2D:
        """Any 2D bilinear algorithm from its full matrices (no separable stage exploited)."""
        BT, G, AT = fmat(BT), fmat(G), fmat(AT)
        n = m + r - 1
        P = BT.shape[0]
        if BT.shape != (P, n * n) or G.shape != (P, r * r) or AT.shape != (m * m, P):
            raise ValueError(
                f"expected BT ({P}, {n * n}), G ({P}, {r * r}), AT ({m * m}, {P}); got "
                f"{BT.shape}, {G.shape}, {AT.shape}"
            )
        eye = fmat(np.eye(n, dtype=int))
        return cls(
            name, m, r, BT=BT, G=G, AT=AT, B1=eye, A1=fmat(np.eye(m, dtype=int)),
            S_in=BT, S_out=AT,
        )

    def apply(self, x, w) -> np.ndarray:
        """Exact output tile (m x m, Fractions) for an n x n input tile and r x r filter."""
        xv = fmat(np.asarray(x)).reshape(-1)
        wv = fmat(np.asarray(w)).reshape(-1)
        y = self.AT.dot(self.G.dot(wv) * self.BT.dot(xv))
        return y.reshape(self.m, self.m)
