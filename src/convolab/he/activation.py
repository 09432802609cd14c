"""Polynomial activations on encrypted slot vectors: the degree-2 activation of HyPHEN-style
networks and the composite-polynomial ReLU of the multiplexed baseline.

- `poly2`: ``p(x) = c0 + c1 x + c2 x^2`` evaluated as ``x * (c2 x + c1) + c0``: one PMult,
  one CMult, two plaintext additions, depth 2 (HyPHEN's final version uses degree-2
  activations, AESPA; convolab's default is the least-squares fit of ReLU on [-1, 1],
  ``3/32 + x/2 + 15/32 x^2``).
- `eval_odd`: an odd polynomial of degree ``d`` at the optimal depth ``ceil(log2(d + 1))``
  in the power basis: powers ``x^2, x^4, ...`` by squaring, leaves ``c1 x + (c3 x) x^2``
  (the constants multiplied into ``x`` first, so a leaf is depth 2), and
  ``p = p_lo + x^(2^(J-1)) p_hi`` splits. Degree 15: 10 CMults, degree 27: 17.
- `composite_relu`: ``ReLU(x) = x (1 + sign(x)) / 2`` with ``sign`` approximated by a
  composition of odd polynomials; the baseline's authors use degrees 15, 15 and 27 (depth
  4 + 4 + 5 = 13, plus 1 for the product with x: 14 levels, which is what their published
  ResNet-20 log shows, 16 -> 2 per ReLU; snu-ccl/FHE-MP-CNN, ``minimax_ReLU_seal``). Their
  polynomials are minimax fits evaluated in an optimised Chebyshev-basis tree; convolab
  evaluates polynomials of the same degrees at the same depth with `eval_odd`, so its operation
  counts are its own. The default polynomials are the closed-form sign approximations
  ``f_n(x) = sum_{i<=n} 4^-i C(2i, i) x (1 - x^2)^i`` of degree ``2n + 1`` (Cheon, Kim, Kim,
  Lee, Lee, ASIACRYPT 2020), with the input divided by ``bound`` (folded into the first
  polynomial) so that ``|x| <= bound`` maps into [-1, 1].

Every function runs on any `Backend` and also has a plain NumPy twin (``*_plain``) that the
tests and the network references use.
"""

from __future__ import annotations

from math import comb

import numpy as np

from ..errors import ConvError

#: least-squares degree-2 fit of ReLU on [-1, 1]: 3/32 + x/2 + 15/32 x^2
RELU_FIT = (3 / 32, 1 / 2, 15 / 32)

#: degrees of the baseline's composite sign approximation (Lee et al., ICML 2022 code)
SIGN_DEGREES = (15, 15, 27)


def poly2(be, ct, coeffs=RELU_FIT):
    """``c0 + c1 x + c2 x^2`` of one ciphertext (depth 2)."""
    c0, c1, c2 = (float(c) for c in coeffs)
    S = be.slots
    t = be.rescale(be.multiply_plain(ct, be.encode(np.full(S, c2), ct)))
    t = be.add_plain(t, be.encode(np.full(S, c1), t, for_add=True))
    y = be.rescale(be.multiply(ct, t))
    return be.add_plain(y, be.encode(np.full(S, c0), y, for_add=True))


def poly2_plain(x, coeffs=RELU_FIT):
    c0, c1, c2 = coeffs
    return c0 + c1 * x + c2 * x * x


def sign_poly(n: int) -> np.ndarray:
    """Power-basis coefficients (index = power) of ``f_n``, odd, degree ``2n + 1``."""
    if n < 0:
        raise ConvError(f"sign polynomial order must be >= 0, got n={n}")
    p = np.zeros(2 * n + 2)
    base = np.polynomial.polynomial
    for i in range(n + 1):
        term = base.polymul([0.0, 1.0], base.polypow([1.0, 0.0, -1.0], i)) * comb(2 * i, i) / 4**i
        p[: len(term)] += term
    return p


def sign_polys(degrees=SIGN_DEGREES, bound: float = 1.0) -> list[np.ndarray]:
    """The composite sign approximation: ``f_n`` of each odd degree, the first one taking
    ``x / bound``."""
    polys = []
    for d in degrees:
        if d < 1 or d % 2 == 0:
            raise ConvError(f"sign polynomial degrees must be odd and >= 1, got {d}")
        polys.append(sign_poly((d - 1) // 2))
    if bound <= 0:
        raise ConvError(f"bound must be > 0, got bound={bound}")
    polys[0] = polys[0] / float(bound) ** np.arange(len(polys[0]))
    return polys


def odd_depth(degree: int) -> int:
    """Depth of `eval_odd` for an odd polynomial of this degree."""
    return max(1, int(degree).bit_length())


def _check_odd(coeffs) -> np.ndarray:
    c = np.asarray(coeffs, dtype=np.float64)
    if c.ndim != 1 or len(c) < 2 or len(c) % 2:
        raise ConvError(f"an odd polynomial needs an even number (>= 2) of coefficients, got {c.shape}")
    if np.any(c[0::2]):
        raise ConvError("the polynomial is not odd: even-power coefficients must be zero")
    return c


def eval_odd(be, ct, coeffs):
    """An odd polynomial (power-basis ``coeffs``, index = power) of one ciphertext at depth
    ``ceil(log2(degree + 1))``; see the module docstring."""
    c = _check_odd(coeffs)
    d = len(c) - 1
    D = odd_depth(d)
    S = be.slots
    powers = {}  # 2^j -> ciphertext of x^(2^j)
    p = ct
    for j in range(1, D):
        p = be.rescale(be.multiply(p, p))
        powers[1 << j] = p

    def times_const(v, a):
        return be.rescale(be.multiply_plain(v, be.encode(np.full(S, float(a)), v)))

    def rec(cs, J):
        """cs[i] = coefficient of x^(2i+1), i < 2^(J-1); depth <= J."""
        if not np.any(cs):
            return None
        if J <= 2:
            out = times_const(ct, cs[0]) if cs[0] else None
            if len(cs) > 1 and cs[1]:
                t3 = be.rescale(be.multiply(times_const(ct, cs[1]), powers[2]))
                out = t3 if out is None else be.add(out, t3)
            return out
        half = 1 << (J - 2)
        lo, hi = rec(cs[:half], J - 1), rec(cs[half:], J - 1)
        if hi is None:
            return lo
        hi = be.rescale(be.multiply(hi, powers[1 << (J - 1)]))
        return hi if lo is None else be.add(lo, hi)

    odd = np.zeros(1 << (D - 1))
    odd[: (d + 1) // 2] = c[1::2]
    out = rec(odd, D)
    if out is None:
        raise ConvError("the polynomial is zero")
    return out


def eval_odd_plain(x, coeffs):
    return np.polynomial.polynomial.polyval(x, np.asarray(coeffs, dtype=np.float64))


def composite_relu(be, ct, polys):
    """``x (1 + s(x)) / 2`` with ``s = polys[-1](... polys[0](x))``; depth
    ``sum(odd_depth) + 1``."""
    if not polys:
        raise ConvError("composite_relu needs at least one polynomial")
    s = ct
    for i, p in enumerate(polys):
        p = _check_odd(p)
        s = eval_odd(be, s, p / 2 if i == len(polys) - 1 else p)
    s = be.add_plain(s, be.encode(np.full(be.slots, 0.5), s, for_add=True))
    return be.rescale(be.multiply(s, ct))


def composite_relu_plain(x, polys):
    s = x
    for p in polys:
        s = eval_odd_plain(s, p)
    return x * (1 + s) / 2


def composite_depth(polys) -> int:
    """Levels `composite_relu` consumes."""
    return sum(odd_depth(len(p) - 1) for p in polys) + 1
