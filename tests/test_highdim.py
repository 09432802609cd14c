"""convolab.highdim: exact reference, permutohedral lattice, bilateral grid, errors."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from convolab import ConvError
from convolab.highdim import (
    PermutohedralLattice,
    bilateral_filter,
    gaussian_filter,
    joint_bilateral_filter,
)
from convolab.highdim.exact import exact_bilateral, exact_filter
from convolab.highdim.grid import blur_taps, grid_filter, grid_shape
from convolab.highdim.permutohedral import LATTICE_SCALE


def naive(values, positions, k=lambda r2: np.exp(-0.5 * r2)):
    """Textbook double loop, float64."""
    v = np.asarray(values, float)
    p = np.asarray(positions, float)
    out = np.empty_like(v)
    for i in range(len(p)):
        w = k(((p - p[i]) ** 2).sum(axis=1))
        out[i] = (w[:, None] * v).sum(axis=0) / w.sum()
    return out


def rel_err(out, ref, v):
    """RMS error relative to the spread of the input values."""
    return float(np.sqrt(np.mean((out - ref) ** 2)) / v.std(axis=0).mean())


def smooth_cloud(n, d, seed=0, side=2.0):
    """Points uniform in a box of ``side`` standard deviations per axis, a smooth value field."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, side, size=(n, d))
    v = np.stack([np.sin(p.sum(1)), np.cos(p[:, 0])], axis=1)
    return p, v


# ----------------------------------------------------------------------------- exact


def test_exact_two_points_closed_form():
    # two points at distance t: out_0 = (v0 + e v1) / (1 + e), e = exp(-t^2 / 2)
    t = 0.7
    e = np.exp(-t * t / 2)
    v = np.array([[1.0, -2.0], [5.0, 4.0]])
    out = gaussian_filter(v, np.array([[0.0, 0.0], [t, 0.0]]), method="exact")
    np.testing.assert_allclose(out[0], (v[0] + e * v[1]) / (1 + e), rtol=1e-14)
    np.testing.assert_allclose(out[1], (v[1] + e * v[0]) / (1 + e), rtol=1e-14)


@pytest.mark.parametrize("kernel", ["gaussian", "exponential", "cauchy"])
def test_exact_filter_matches_naive(kernel):
    from convolab.highdim.exact import KERNELS

    rng = np.random.default_rng(1)
    p = rng.normal(size=(70, 3)) * 2
    v = rng.normal(size=(70, 2))
    got = exact_filter(v, p, kernel, chunk_bytes=8 * 70 * 9)  # 9-row chunks
    np.testing.assert_allclose(got, naive(v, p, KERNELS[kernel]), rtol=1e-12, atol=1e-13)


def test_exact_bilateral_window_equals_all_pairs():
    # sigma_s = 1: the window (radius 9) is smaller than the image, so the cut-off is exercised
    rng = np.random.default_rng(2)
    img = rng.random((40, 36, 3))
    ss, sr = 1.0, 0.3
    yy, xx = np.mgrid[:40, :36]
    pos = np.concatenate([yy[..., None] / ss, xx[..., None] / ss, img / sr], -1).reshape(-1, 5)
    ref = exact_filter(img.reshape(-1, 3), pos).reshape(img.shape)
    np.testing.assert_allclose(exact_bilateral(img, img / sr, ss), ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(exact_bilateral(img, img / sr, ss, step=3), ref[::3, ::3],
                               rtol=1e-12, atol=1e-14)
    out = bilateral_filter(img, ss, sr, method="exact")
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- lattice


@pytest.mark.parametrize("d", [1, 2, 3, 5, 8, 16])
def test_lattice_simplex_structure(d):
    """Barycentric weights >= 0 summing to 1 reproduce the elevated point from d+1 vertices
    that are remainder-k lattice points (all coordinates congruent to k mod d+1, sum 0)."""
    from convolab.highdim import _kernels_lattice as K

    rng = np.random.default_rng(d)
    pos = rng.normal(size=(200, d)) * 5
    base = np.empty((200, d), np.int32)
    rank = np.empty((200, d), np.int8)
    bary = np.empty((200, d + 1))
    hashes = np.empty((200, d + 1), np.uint32)
    dirs = np.empty((200, d + 1), np.int8)
    K.embed(pos, np.zeros(d), np.ones(d), base, rank, bary, hashes, dirs)
    r = np.arange(d + 1)[None, :, None]
    keys = base[:, None, :] + r - (d + 1) * (rank[:, None, :] > d - r)
    assert np.all(bary >= -1e-12)
    np.testing.assert_allclose(bary.sum(1), 1.0, rtol=0, atol=1e-12)
    # elevation with the Helmert basis (as the kernel does)
    helmert = np.zeros((d + 1, d))
    for j in range(1, d + 1):
        helmert[:j, j - 1] = 1.0
        helmert[j, j - 1] = -j
        helmert[:, j - 1] /= np.sqrt(j * (j + 1.0))
    elevated = pos @ helmert.T
    full = np.concatenate([keys, -keys.sum(2, keepdims=True)], axis=2).astype(float)
    np.testing.assert_allclose(np.einsum("nr,nrk->nk", bary, full), elevated, atol=1e-9)
    for r in range(d + 1):
        assert np.all((full[:, r] - r) % (d + 1) == 0)
        # vertex r + 1 (mod d + 1) is one lattice step from vertex r along direction dirs[:, r]
        step = np.ones((200, d + 1))
        step[np.arange(200), dirs[:, r]] -= d + 1
        np.testing.assert_array_equal(full[:, (r + 1) % (d + 1)] - full[:, r], step)
        assert all(int(hashes[t, r]) == int(K._hash_vec(keys[t, r].astype(np.int32), d)) % 2**32
                   for t in range(0, 200, 17))


@pytest.mark.parametrize("d", [1, 2, 3, 5, 9, 16])
def test_permutohedral_constant_and_linear(d):
    p, v = smooth_cloud(300, d, seed=d)
    lat = PermutohedralLattice(p)
    c = lat.filter(np.full((300, 1), 3.25))
    np.testing.assert_allclose(c, 3.25, rtol=1e-13)
    a = lat.filter(v)
    b = lat.filter(2.0 * v + 1.0)
    np.testing.assert_allclose(b, 2.0 * a + 1.0, rtol=1e-12, atol=1e-12)


# measured errors (seed d): 0.038, 0.043, 0.047, 0.036, 0.039; unfiltered values: 0.75-0.89
@pytest.mark.parametrize("d,limit", [(1, 0.06), (2, 0.065), (3, 0.07), (5, 0.055), (8, 0.06)])
def test_permutohedral_close_to_exact(d, limit):
    p, v = smooth_cloud(600, d, seed=d)
    err = rel_err(gaussian_filter(v, p), gaussian_filter(v, p, method="exact"), v)
    assert err < limit


def test_permutohedral_d16_on_a_plane():
    """Image-like data: points near a 2-D plane in R^16 (measured 0.19; unfiltered 0.54).

    The lattice kernel is flatter than the Gaussian near 0 and shorter-tailed beyond 2
    standard deviations, more so as d grows; this bounds that drift at d = 16."""
    rng = np.random.default_rng(16)
    q = rng.uniform(0, 6, size=(600, 2))
    basis, _ = np.linalg.qr(rng.normal(size=(16, 2)))
    p = q @ basis.T + 0.1 * rng.normal(size=(600, 16))
    v = np.stack([np.sin(q.sum(1)), np.cos(q[:, 0])], axis=1)
    ex = gaussian_filter(v, p, method="exact")
    assert rel_err(gaussian_filter(v, p), ex, v) < 0.25
    assert rel_err(v, ex, v) > 0.5


def test_permutohedral_far_points_do_not_mix():
    p = np.array([[0.0, 0.0], [0.3, 0.1], [60.0, 0.0], [0.0, 90.0]])
    v = np.array([[1.0], [1.0], [7.0], [-3.0]])
    out = gaussian_filter(v, p)
    np.testing.assert_allclose(out[:, 0], [1.0, 1.0, 7.0, -3.0], rtol=1e-15)


def test_permutohedral_permutation_equivariant_and_deterministic():
    p, v = smooth_cloud(500, 4, seed=3)
    perm = np.random.default_rng(0).permutation(500)
    a = gaussian_filter(v, p)
    np.testing.assert_allclose(gaussian_filter(v[perm], p[perm]), a[perm], rtol=1e-12,
                               atol=1e-12)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = gaussian_filter(v, p)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(one, a)
    np.testing.assert_array_equal(gaussian_filter(v, p), a)


def test_lattice_grows_past_initial_table():
    # scattered points: about (d + 1) n lattice points, far more than the first table holds
    rng = np.random.default_rng(4)
    p = rng.uniform(0, 400, size=(3000, 6))
    lat = PermutohedralLattice(p)
    assert lat.size > 4000
    np.testing.assert_allclose(lat.filter(np.ones((3000, 1))), 1.0, rtol=1e-13)
    # isolated points filter to themselves
    v = rng.normal(size=(3000, 1))
    np.testing.assert_allclose(lat.filter(v), v, rtol=1e-12)


@pytest.mark.parametrize("kind", ["image", "scattered"])
def test_lattice_split_insertion_numbers_like_serial(monkeypatch, kind):
    """Inserting each round's second half into its own table on another thread, then merging,
    gives the serial insertion's lattice exactly (numbering, neighbours, output), also when
    the tables grow and over several rounds."""
    import convolab.highdim.permutohedral as P

    rng = np.random.default_rng(7)
    if kind == "image":
        img = np.cumsum(rng.normal(scale=0.05, size=(60, 70, 3)), axis=1)
        yy, xx = np.mgrid[0:60, 0:70]
        p = np.concatenate([yy[..., None] / 3.0, xx[..., None] / 3.0, img / 0.1], -1)
        p = p.reshape(-1, 5)
    else:
        p = rng.uniform(0, 400, size=(3000, 6))
    v = rng.normal(size=(len(p), 2))
    monkeypatch.setattr(P, "_ROUND_BYTES", 1500 * 64)
    monkeypatch.setattr(P, "worker_count", lambda: 1)
    serial = P.PermutohedralLattice(p)
    monkeypatch.setattr(P, "worker_count", lambda: 2)
    monkeypatch.setattr(P, "_SPLIT_MIN", 64)
    split = P.PermutohedralLattice(p)
    assert split.size == serial.size
    np.testing.assert_array_equal(split.offsets, serial.offsets)
    np.testing.assert_array_equal(split.nbr, serial.nbr)
    np.testing.assert_array_equal(split.filter(v), serial.filter(v))


def test_lattice_scale_is_adams():
    assert LATTICE_SCALE == pytest.approx(np.sqrt(2 / 3))


# ----------------------------------------------------------------------------- grid


def test_grid_taps_and_shape():
    t = blur_taps(0.5)
    assert t[0] + 2 * t[1:].sum() == pytest.approx(1.0)
    # variance of tent + blur + tent is one standard deviation squared (in sigma units)
    k = np.arange(t.size)
    var_blur = 2 * np.sum(t[1:] * k[1:] ** 2) * 0.5**2
    assert var_blur + 2 * 0.5**2 / 6 == pytest.approx(1.0, rel=1e-3)
    assert grid_shape(np.array([[0.0, 1.0], [2.0, 1.1]]), 0.5) == (6, 2)


# measured errors (seed d): 0.0046, 0.0045, 0.0050, and about 0.005 at d = 4
@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_grid_close_to_exact(d):
    p, v = smooth_cloud(500, d, seed=d)
    err = rel_err(gaussian_filter(v, p, method="grid"), gaussian_filter(v, p, method="exact"), v)
    assert err < 0.008


def test_grid_constant_and_memory_limit():
    p, _ = smooth_cloud(200, 3)
    np.testing.assert_allclose(grid_filter(np.full((200, 1), -2.0), p), -2.0, rtol=1e-13)
    with pytest.raises(ConvError, match="memory_limit"):
        grid_filter(np.ones((200, 1)), p * 100, memory_limit=1 << 20)


# ----------------------------------------------------------------------------- bilateral


@pytest.mark.parametrize("method", ["permutohedral", "grid", "exact"])
def test_bilateral_preserves_step_edge(method):
    step = np.zeros((12, 12))
    step[:, 6:] = 1.0
    out = bilateral_filter(step, 2.0, 0.1, method=method)
    np.testing.assert_allclose(out, step, atol=1e-9)


def test_bilateral_large_sigma_color_is_gaussian_blur():
    # sigma_color >> contrast: the range weights are ~1 and the filter is a normalised blur
    rng = np.random.default_rng(5)
    img = rng.random((20, 20))
    ss = 1.5
    yy, xx = np.mgrid[:20, :20]
    pos = np.stack([yy / ss, xx / ss], -1).reshape(-1, 2)
    blur = exact_filter(img.reshape(-1, 1), pos).reshape(20, 20)
    np.testing.assert_allclose(bilateral_filter(img, ss, 1e4, method="exact"), blur, atol=1e-8)
    # measured RMS error 0.0068 (max 0.022) against a blur that moves pixels by 0.28 RMS
    err = bilateral_filter(img, ss, 1e4) - blur
    assert np.sqrt(np.mean(err**2)) < 0.01 and np.abs(err).max() < 0.03


def test_bilateral_dtypes_and_shapes():
    rng = np.random.default_rng(6)
    rgb8 = (rng.random((10, 9, 3)) * 255).astype(np.uint8)
    out = bilateral_filter(rgb8, 2.0, 0.2)
    assert out.shape == (10, 9, 3) and out.dtype == np.float64
    ref = bilateral_filter(rgb8 / 255.0, 2.0, 0.2)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    f32 = (rgb8 / 255.0).astype(np.float32)
    o32 = bilateral_filter(f32, 2.0, 0.2)
    assert o32.dtype == np.float32
    np.testing.assert_allclose(o32, bilateral_filter(f32.astype(np.float64), 2.0, 0.2), atol=1e-6)
    grey = bilateral_filter(rgb8[..., 0], 2.0, 0.2, method="grid")
    assert grey.shape == (10, 9)
    # sigma_color=None takes the image's standard deviation, as scikit-image does
    s = float(np.std(rgb8 / 255.0))
    np.testing.assert_array_equal(bilateral_filter(rgb8, 2.0, None), bilateral_filter(rgb8, 2.0, s))


def test_joint_bilateral_uses_guide_edges():
    # guide has an edge, image is noise: smoothing must not cross the guide's edge
    guide = np.zeros((16, 16))
    guide[:, 8:] = 1.0
    img = np.zeros((16, 16, 2))
    img[:, :8, 0] = 1.0
    img[:, 8:, 1] = 1.0
    for method in ("permutohedral", "grid", "exact"):
        out = joint_bilateral_filter(img, guide, 3.0, 0.1, method=method)
        np.testing.assert_allclose(out, img, atol=1e-9)
    rgb_guide = np.repeat(guide[..., None], 3, axis=2)
    out = joint_bilateral_filter(img, rgb_guide, 3.0, 0.1)
    np.testing.assert_allclose(out, img, atol=1e-9)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "values,positions,method,match",
    [
        (np.ones((3, 1)), np.ones((4, 2)), "exact", "same number of points"),
        (np.ones((3, 1, 1)), np.ones((3, 2)), "exact", r"values must have shape"),
        (np.ones((3, 1)), np.ones((3, 2, 1)), "exact", r"positions must have shape"),
        (np.ones((3, 0)), np.ones((3, 2)), "exact", "c >= 1"),
        (np.ones((3, 1)), np.ones((3, 2)), "fft", "unknown method"),
        (np.ones((3, 1)), np.ones((3, 5)), "grid", "d <= 4"),
        (np.ones((3, 1)), np.ones((3, 17)), "permutohedral", "d <= 16"),
        (np.array([[1.0], [np.nan], [0.0]]), np.ones((3, 2)), "exact", "non-finite"),
        (np.ones((3, 1)), np.array([[0, 1], [np.inf, 0], [1, 1.0]]), "grid", "non-finite"),
        (np.ones((3, 1), complex), np.ones((3, 2)), "exact", "real numeric"),
    ],
)
def test_gaussian_filter_errors(values, positions, method, match):
    with pytest.raises(ConvError, match=match):
        gaussian_filter(values, positions, method=method)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sigma_spatial=0.0), "sigma_spatial"),
        (dict(sigma_spatial=-1.0), "sigma_spatial"),
        (dict(sigma_color=0.0), "sigma_color"),
        (dict(sigma_color=float("nan")), "sigma_color"),
        (dict(sigma_spatial="wide"), "sigma_spatial"),
        (dict(image=np.ones((4, 4, 3, 2))), "channel-last"),
        (dict(image=np.ones((0, 4))), "empty"),
        (dict(image=np.full((4, 4), np.inf)), "non-finite"),
        (dict(image=np.ones((4, 4, 3)), method="grid"), "d <= 4"),
        (dict(method="bilinear"), "unknown method"),
    ],
)
def test_bilateral_errors(kwargs, match):
    args = dict(image=np.ones((4, 4)), sigma_spatial=1.0, sigma_color=0.1, method="permutohedral")
    args.update(kwargs)
    with pytest.raises(ConvError, match=match):
        bilateral_filter(**args)


def test_joint_bilateral_guide_errors():
    with pytest.raises(ConvError, match="height and width"):
        joint_bilateral_filter(np.ones((4, 4)), np.ones((4, 5)), 1.0, 0.1)
    with pytest.raises(ConvError, match="guide contains"):
        joint_bilateral_filter(np.ones((4, 4)), np.full((4, 4), np.nan), 1.0, 0.1)
    with pytest.raises(ConvError, match="standard deviation, which is 0"):
        joint_bilateral_filter(np.ones((4, 4)), np.ones((4, 4)), 1.0, None)


def test_vector_inputs_and_empty():
    p = np.linspace(0, 5, 40)
    v = np.sin(p)
    out = gaussian_filter(v, p, method="exact")
    assert out.shape == (40,)
    np.testing.assert_allclose(out, naive(v[:, None], p[:, None])[:, 0], rtol=1e-12)
    e = gaussian_filter(np.empty((0, 2)), np.empty((0, 3)))
    assert e.shape == (0, 2)


def test_lattice_unnormalised_output_and_float32():
    p, v = smooth_cloud(300, 3, seed=7)
    lat = PermutohedralLattice(p)
    raw = lat.filter(v, normalise=False)
    assert raw.shape == (300, 3) and np.all(raw[:, 2] > 0)
    np.testing.assert_allclose(raw[:, :2] / raw[:, 2:], lat.filter(v), rtol=1e-12)
    out32 = lat.filter(v.astype(np.float32))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, lat.filter(v), atol=1e-5)
    with pytest.raises(ConvError, match="taps must be"):
        lat.filter(v, taps=[1.0, 0.5, 0.2])
    with pytest.raises(ConvError, match="values must have shape"):
        lat.filter(v[:10])
