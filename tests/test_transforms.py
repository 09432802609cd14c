"""Exact checks of the Winograd (Cook-Toom) and SFC transform matrices."""

from fractions import Fraction

import numpy as np
import pytest

from convolab.errors import ConvError
from convolab.transforms import cook_toom, sfc_1d, sfc_2d, winograd_2d
from convolab.transforms.cook_toom import DEFAULT_SIZES
from convolab.transforms.forms import Bilinear2D, fmat
from convolab.transforms.symbolic_fourier import DEFAULT_VARIANTS


def correlate(x, w):
    """Exact 2D correlation of an n x n tile with an r x r filter (Python ints / Fractions)."""
    r = len(w)
    m = len(x) - r + 1
    return [[sum(x[i + a][j + b] * w[a][b] for a in range(r) for b in range(r)) for j in range(m)]
            for i in range(m)]


@pytest.mark.parametrize("m,r", DEFAULT_SIZES)
def test_cook_toom_exact(m, r):
    alg = cook_toom(m, r)
    n = m + r - 1
    assert alg.BT.shape == (n, n) and alg.G.shape == (n, r) and alg.AT.shape == (m, n)
    assert alg.is_exact()
    assert all(isinstance(v, Fraction) for v in alg.BT.flat)


def test_cook_toom_f23_is_lavins():
    alg = cook_toom(2, 3)
    # Lavin & Gray's F(2,3), up to the sign of the first row of B^T and G
    assert np.array_equal(alg.BT, fmat([[-1, 0, 1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]]))
    half = Fraction(1, 2)
    assert np.array_equal(alg.G, fmat([[-1, 0, 0], [half, half, half], [half, -half, half], [0, 0, 1]]))
    assert np.array_equal(alg.AT, fmat([[1, 1, 1, 0], [0, 1, -1, 1]]))


def test_cook_toom_custom_points_and_errors():
    assert cook_toom(3, 2, [0, Fraction(1, 3), -3]).is_exact()
    broken = cook_toom(2, 3)
    broken.AT[0, 0] += 1
    assert not broken.is_exact()
    with pytest.raises(ConvError, match="distinct"):
        cook_toom(2, 3, [0, 1, 1])
    with pytest.raises(ConvError, match="needs 3 finite points"):
        cook_toom(2, 3, [0, 1])


@pytest.mark.parametrize("m,r", [(2, 3), (4, 3), (6, 3), (2, 5)])
def test_winograd_2d_exact(m, r):
    alg = winograd_2d(m, r)
    n = m + r - 1
    assert alg.products == n * n and alg.separable
    assert alg.is_exact() and alg.factorisation_matches()
    rng = np.random.default_rng(m * 10 + r)
    x = rng.integers(-9, 10, (n, n)).tolist()
    w = rng.integers(-9, 10, (r, r)).tolist()
    assert alg.apply(x, w).tolist() == correlate(x, w)


def test_sfc6_1d_matches_the_paper_matrices():
    alg = sfc_1d(6, 6, 3)
    BT = [[0, 1, 1, 1, 1, 1, 1, 0], [0, 1, -1, 1, -1, 1, -1, 0], [0, 1, 0, -1, 1, 0, -1, 0],
          [0, 0, 1, -1, 0, 1, -1, 0], [0, 1, -1, 0, 1, -1, 0, 0], [0, 1, 0, -1, -1, 0, 1, 0],
          [0, 0, 1, 1, 0, -1, -1, 0], [0, 1, 1, 0, -1, -1, 0, 0], [1, 0, 0, 0, 0, 0, -1, 0],
          [0, -1, 0, 0, 0, 0, 0, 1]]
    G = [[1, 1, 1], [1, -1, 1], [1, -1, 0], [0, -1, 1], [1, 0, -1], [1, 1, 0], [0, -1, -1],
         [1, 0, -1], [1, 0, 0], [0, 0, 1]]
    AT6 = [[1, -1, -2, 1, 1, 2, -1, -1, 6, 0], [1, 1, 1, -2, 1, 1, -2, 1, 0, 0],
           [1, -1, 1, 1, -2, -1, -1, 2, 0, 0], [1, 1, -2, 1, 1, -2, 1, 1, 0, 0],
           [1, -1, 1, -2, 1, -1, 2, -1, 0, 0], [1, 1, 1, 1, -2, 1, 1, -2, 0, 6]]
    assert np.array_equal(alg.BT, fmat(BT))
    assert np.array_equal(alg.G, fmat(G))
    assert np.array_equal(alg.AT * 6, fmat(AT6))


@pytest.mark.parametrize("N,m,r,products", [(4, 4, 3, 7), (6, 6, 3, 10), (6, 7, 3, 12),
                                            (6, 6, 5, 14), (3, 3, 3, 6), (4, 3, 2, 5)])
def test_sfc_1d_exact(N, m, r, products):
    alg = sfc_1d(N, m, r)
    assert alg.products == products
    assert alg.is_exact()
    assert set(alg.BT.flat) <= {-1, 0, 1} and set(alg.G.flat) <= {-1, 0, 1}


@pytest.mark.parametrize("N,m,r", DEFAULT_VARIANTS)
@pytest.mark.parametrize("native", [True, False])
def test_sfc_2d_exact(N, m, r, native):
    counts = {(4, 4, 3): (46, 49), (6, 6, 3): (88, 100), (6, 7, 3): (132, 144),
              (6, 6, 5): (184, 196)}
    alg = sfc_2d(N, m, r, native)
    assert alg.products == counts[(N, m, r)][0 if native else 1]
    assert alg.separable is not native
    assert alg.is_exact()
    assert alg.factorisation_matches()
    assert set(alg.BT.flat) <= {-1, 0, 1} and set(alg.G.flat) <= {-1, 0, 1}
    assert not (alg.BT == 0).all(axis=1).any() and not (alg.G == 0).all(axis=1).any()
    n = m + r - 1
    rng = np.random.default_rng(N * 100 + m * 10 + r)
    x = rng.integers(-50, 51, (n, n)).tolist()
    w = rng.integers(-50, 51, (r, r)).tolist()
    assert alg.apply(x, w).tolist() == correlate(x, w)


def test_native_core_block_change_of_basis():
    # the (2,2) blocks of SFC-6 split with an integer change of basis: S_out holds thirds
    alg = sfc_2d(6, 6, 3)
    dens = {v.denominator for v in alg.S_out.flat}
    assert dens == {1, 3}
    assert set(alg.S_in.flat) <= {-1, 0, 1}


def test_from_matrices_round_trip_and_errors():
    nat = sfc_2d(4, 4, 3)
    gen = Bilinear2D.from_matrices("generic", 4, 3, nat.BT, nat.G, nat.AT)
    assert gen.is_exact() and gen.factorisation_matches() and not gen.separable
    with pytest.raises(ValueError, match="expected BT"):
        Bilinear2D.from_matrices("bad", 4, 3, nat.BT[:, :-1], nat.G, nat.AT)


def test_sfc_bad_parameters():
    with pytest.raises(ConvError, match="N in"):
        sfc_1d(5, 4, 3)
    with pytest.raises(ConvError, match="must fit the cycle"):
        sfc_1d(4, 4, 5)
    with pytest.raises(ConvError, match="does not fit"):
        sfc_1d(6, 2, 3)
