"""SFC-N(m, r): symbolic-Fourier convolution, exact, in nested and native 2D forms.

An N-point DFT whose roots of unity stay symbolic: the N-point cyclic correlation
``c[i] = sum_k x[o + (i+k) mod N] w[k]`` on the core ``x[o : o+N]`` is split by the Chinese
remainder theorem over the cyclotomic factors of ``z^N - 1`` (``X(z) = sum_l x_l z^l``,
``W'(z) = sum_k w_k z^-k``, ``C = X W' mod z^N - 1``):

- N = 6: (z-1)(z+1)(z^2+z+1)(z^2-z+1);  N = 4: (z-1)(z+1)(z^2+1).
- A degree-1 factor costs one product. In a degree-2 ring ``Q[z]/(z^2 + p z + 1)`` the product
  costs three (Karatsuba): ``a0 b0``, ``a1 b1``, ``(a0 + s a1)(b0 + s b1)``, the sign ``s``
  chosen so that every input and filter transform entry stays in {0, +1, -1} (residues of
  ``z^j`` have coefficients in {0, +-1}).
- The ``N - r + 1`` outputs whose window does not wrap come straight from the cyclic result;
  each wrapped tap of the other outputs is repaired by a correction product
  ``(x[true] - x[wrapped]) * w[k]``. The core offset is ``o = (r - 1) // 2``.

All fractions (the CRT reconstruction) sit in the output transform ``AT``.

The *nested* 2D form is the tensor square (separable). The *native* 2D form does the N x N
cyclic core as a 2D CRT: blocks of degree (2, 2) -- ``Q[u, v]/(Phi(u), Psi(v))`` -- split into
two copies of ``Q[u]/Phi(u)`` by ``v -> eps u^e`` for the two roots of ``Psi`` in that field
(an integer 4 x 4 change of basis, determinant +-3 or +-4, whose inverse goes into the output
transform), so they cost 2 x 3 = 6 products instead of 9. Input and filter transforms stay in
{0, +-1} because every monomial ``u^a v^b`` maps to a signed power of ``u``.

Products per tile (native / nested): SFC-6(6x6,3x3) 88 / 100, SFC-4(4x4,3x3) 46 / 49,
SFC-6(7x7,3x3) 132 / 144, SFC-6(6x6,5x5) 184 / 196.

Source: Q. He, Y. Zhao, Y. Gao, J. Du, Y. Du, "Symbolic Fourier Convolution" (SFC),
ICML 2024; the construction here is re-derived from the CRT and verified exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import numpy as np

from ..errors import ConvError
from .forms import Bilinear1D, Bilinear2D, fdot, finv, fkron, fmat, fzeros

#: cyclotomic polynomials Phi_d of degree <= 2, coefficients from z^0 up
CYCLOTOMIC = {1: (-1, 1), 2: (1, 1), 3: (1, 1, 1), 4: (1, 0, 1), 6: (1, -1, 1)}

#: the shipped variants: (N, m, r)
DEFAULT_VARIANTS = ((4, 4, 3), (6, 6, 3), (6, 7, 3), (6, 6, 5))


def _reduce(coeffs, phi) -> list:
    """Coefficients (low to high, length deg Phi) of a polynomial modulo the monic ``phi``."""
    c = [Fraction(v) for v in coeffs]
    deg = len(phi) - 1
    for top in range(len(c) - 1, deg - 1, -1):
        lead = c[top]
        if lead:
            for t in range(deg + 1):
                c[top - deg + t] -= lead * phi[t]
    c += [Fraction(0)] * max(0, deg - len(c))
    return c[:deg]


def _power(e: int, phi, sign: int = 1) -> list:
    """Coefficients of ``sign * z^e mod phi`` (e >= 0)."""
    return _reduce([0] * e + [sign], phi)


def _in_unit_set(rows) -> bool:
    return all(v in (-1, 0, 1) for row in rows for v in row)


@dataclass(frozen=True)
class _Block:
    d: int  # the cyclotomic index: Phi_d
    rows: tuple  # product indices in the 1D algorithm (1 or 3)
    s: int  # Karatsuba sign (0 for degree 1)

    @property
    def phi(self):
        return CYCLOTOMIC[self.d]

    @property
    def deg(self) -> int:
        return len(self.phi) - 1


def _karatsuba(phi, s: int) -> np.ndarray:
    """2 x 3 reconstruction (m1, m2, m3) -> (c0, c1) in Q[z]/(z^2 + p z + q)."""
    q, p = phi[0], phi[1]
    return fmat([[1, -q, 0], [-s, -s - p, s]])


def _parts(N: int, m: int, r: int):
    """The 1D SFC algorithm plus its block structure (for the native 2D form)."""
    if N not in (2, 3, 4, 6):
        raise ConvError(f"SFC-N needs N in (2, 3, 4, 6) (cyclotomic factors of degree <= 2), got {N}")
    if r < 1 or m < 1:
        raise ConvError(f"SFC-{N}({m}, {r}) needs m >= 1 and r >= 1")
    if r > N:
        raise ConvError(f"SFC-{N}({m}, {r}): the filter (r = {r}) must fit the cycle (N = {N})")
    n = m + r - 1
    o = (r - 1) // 2
    if o + N > n:
        raise ConvError(f"SFC-{N}({m}, {r}): the {N}-point core does not fit the {n}-point tile")
    in_rows, f_rows, blocks, recon = [], [], [], []
    for d in sorted(CYCLOTOMIC):
        if N % d:
            continue
        phi = CYCLOTOMIC[d]
        R = np.array([_power(j, phi) for j in range(N)], dtype=object).T  # deg x N
        Wr = np.array([_power((-k) % N, phi) for k in range(r)], dtype=object).T  # deg x r
        start = len(in_rows)
        if len(phi) == 2:
            in_rows.append(list(R[0]))
            f_rows.append(list(Wr[0]))
            blocks.append(_Block(d, (start,), 0))
            recon.append(fmat([[1]]))
            continue
        for s in (-1, 1):
            ri, rf = R[0] + s * R[1], Wr[0] + s * Wr[1]
            if _in_unit_set([ri, rf]):
                break
        else:  # pragma: no cover - every degree-2 cyclotomic ring has a valid sign
            raise ConvError(f"no Karatsuba sign keeps Phi_{d}'s transforms in {{0, +-1}}")
        in_rows += [list(R[0]), list(R[1]), list(ri)]
        f_rows += [list(Wr[0]), list(Wr[1]), list(rf)]
        blocks.append(_Block(d, (start, start + 1, start + 2), s))
        recon.append(_karatsuba(phi, s))
    # CRT: residues -> cyclic output; R_all stacks the reductions of z^j (N x N)
    R_all = fmat(
        [row for d in sorted(CYCLOTOMIC) if N % d == 0
         for row in np.array([_power(j, CYCLOTOMIC[d]) for j in range(N)], dtype=object).T]
    )
    P_core = len(in_rows)
    rec = fzeros((N, P_core))  # block-diagonal: products -> residue coefficients
    row = col = 0
    for k in recon:
        rec[row : row + k.shape[0], col : col + k.shape[1]] = k
        row, col = row + k.shape[0], col + k.shape[1]
    AT_cyc = finv(R_all).dot(rec)  # N x P_core
    # corrections for wrapped taps
    corr = {}
    for j in range(m):
        i = (j - o) % N
        for k in range(r):
            src = o + (i + k) % N
            if src != j + k:
                corr.setdefault((j + k, src, k), []).append(j)
    P = P_core + len(corr)
    BT, G, AT = fzeros((P, n)), fzeros((P, r)), fzeros((m, P))
    for p in range(P_core):
        BT[p, o : o + N] = in_rows[p]
        G[p, :] = f_rows[p]
    for j in range(m):
        AT[j, :P_core] = AT_cyc[(j - o) % N]
    corrections = []
    for p, ((true, src, k), outs) in enumerate(corr.items(), start=P_core):
        BT[p, true] += 1
        BT[p, src] -= 1
        G[p, k] = Fraction(1)
        for j in outs:
            AT[j, p] += 1
        corrections.append(p)
    alg = Bilinear1D(f"SFC-{N}({m},{r})", m, r, AT, G, BT)
    return alg, blocks, corrections


def sfc_1d(N: int, m: int, r: int) -> Bilinear1D:
    """Exact 1D SFC-N(m, r): ``y = AT ((G w) * (BT x))``, BT and G entries in {0, +-1}.

    Parameters
    ----------
    N : int
        Cycle length: 2, 3, 4 or 6 (the cyclotomic factors of ``z^N - 1`` have degree <= 2).
    m, r : int
        Outputs and taps per tile; ``r <= N <= m + r - 1 - (r - 1) // 2``.

    Returns
    -------
    Bilinear1D
    """
    return _parts(N, m, r)[0]


def _roots(d1: int, d2: int) -> list[tuple[int, int]]:
    """(eps, e) with eps u^e the two distinct roots of Phi_d2 in Q[u]/Phi_d1."""
    phi1, phi2 = CYCLOTOMIC[d1], CYCLOTOMIC[d2]
    found, seen = [], []
    for e in range(d1):
        for eps in (1, -1):
            val = [Fraction(0)] * (len(phi1) - 1)
            for t, c in enumerate(phi2):
                term = _power(e * t, phi1, eps**t)
                val = [a + c * b for a, b in zip(val, term, strict=True)]
            root = _power(e, phi1, eps)
            if not any(val) and root not in seen:
                seen.append(root)
                found.append((eps, e))
    if len(found) != 2:  # pragma: no cover - degree-2 cyclotomic fields of N | 12 are Galois
        raise ConvError(f"Phi_{d2} does not split in Q[u]/Phi_{d1}")
    return found


@cache
def sfc_2d(N: int, m: int, r: int, native: bool = True) -> Bilinear2D:
    """Exact 2D SFC-N(m x m, r x r), native (non-separable core) or nested.

    Parameters
    ----------
    N, m, r : int
        As `sfc_1d`.
    native : bool
        True: the 2D CRT core where each (degree 2, degree 2) block costs 6 products instead
        of 9. False: the nested (separable) tensor square of `sfc_1d`.

    Returns
    -------
    Bilinear2D
        Full transforms ``BT``, ``G`` (entries in {0, +-1}) and ``AT``, plus the factorisation
        ``B1 = BT1``, ``A1 = AT1`` with the sparse stages ``S_in`` / ``S_out`` (native only).
    """
    alg, blocks, corrections = _parts(N, m, r)
    kind = "native" if native else "nested"
    name = f"SFC-{N}({m}x{m},{r}x{r}) {kind}"
    if not native:
        return Bilinear2D.nested(alg, name=name)
    P1 = alg.products
    groups = [b.rows for b in blocks] + [(p,) for p in corrections]
    deg2 = {b.rows: b for b in blocks if b.deg == 2}
    s_in, s_out = [], []  # per product: {Z flat index: coeff}, {M' flat index: coeff}
    one = Fraction(1)
    for g1 in groups:
        for g2 in groups:
            if g1 in deg2 and g2 in deg2:
                b1, b2 = deg2[g1], deg2[g2]
                phi1 = b1.phi
                comps = []
                for eps, e in _roots(b1.d, b2.d):
                    phik = fzeros((2, 4))  # residue basis u^a v^b, flat a * 2 + b
                    for a in range(2):
                        for b in range(2):
                            phik[:, a * 2 + b] = _power(a + e * b, phi1, eps**b)
                    comps.append(phik)
                T = np.concatenate(comps, axis=0)
                Tinv = finv(T)
                K = _karatsuba(phi1, b1.s)
                L1 = fmat([[1, 0], [0, 0], [1, b1.s]])
                L2 = fmat([[1, 0], [0, 0], [1, b2.s]])
                zidx = [g1[a] * P1 + g2[b] for a in range(2) for b in range(2)]
                for k, phik in enumerate(comps):
                    for row, kcol in zip(
                        (phik[0], phik[1], phik[0] + b1.s * phik[1]), range(3), strict=True
                    ):
                        s_in.append({zidx[q]: row[q] for q in range(4) if row[q]})
                        yres = Tinv[:, 2 * k : 2 * k + 2].dot(K[:, kcol]).reshape(2, 2)
                        mblk = L1.dot(yres).dot(L2.T)  # 3 x 3 virtual Karatsuba products
                        s_out.append(
                            {g1[a] * P1 + g2[b]: mblk[a, b] for a in range(3) for b in range(3)
                             if mblk[a, b]}
                        )
            else:
                for i in g1:
                    for j in g2:
                        s_in.append({i * P1 + j: one})
                        s_out.append({i * P1 + j: one})
    P = len(s_in)
    S_in, S_out = fzeros((P, P1 * P1)), fzeros((P1 * P1, P))
    for p in range(P):
        for q, v in s_in[p].items():
            S_in[p, q] = v
        for q, v in s_out[p].items():
            S_out[q, p] = v
    BT = fdot(S_in, fkron(alg.BT, alg.BT))
    G = fdot(S_in, fkron(alg.G, alg.G))
    AT = fdot(fkron(alg.AT, alg.AT), S_out)
    return Bilinear2D(name, m, r, BT=BT, G=G, AT=AT, B1=alg.BT, A1=alg.AT, S_in=S_in, S_out=S_out)
