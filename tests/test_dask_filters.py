"""convolab.dask's image filters: bit-identical to convolab.highdim's on the whole image, what the
permutohedral lattice does at chunk borders, the halo's reach, bad inputs. (On the cluster:
tests/test_dask.py.)"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from skimage import data

import convolab.dask as cd
import convolab.highdim as hd
from convolab.dask import filters
from convolab.errors import ConvError
from convolab.highdim.permutohedral import PermutohedralLattice


def same(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=False) and \
        np.array_equal(np.signbit(a), np.signbit(b))


@pytest.fixture(scope="module")
def images():
    rgb = data.astronaut()[100:172, 150:230]
    return {
        "grey float32": (rgb.mean(axis=2) / 255).astype(np.float32),
        "grey uint8": data.camera()[200:260, 240:310],
        "rgb float64": rgb / 255.0,
    }


CHUNKS = [(16, 25), (5, 40), (40, 7)]


@pytest.mark.parametrize("method", ["permutohedral", "exact"])
@pytest.mark.parametrize("name", ["grey float32", "grey uint8", "rgb float64"])
def test_bilateral_bit_identical(images, name, method):
    img = images[name]
    ref = hd.bilateral_filter(img, 2.5, 0.1, method=method)
    for hw in CHUNKS:
        x = da.from_array(img, chunks=hw + img.shape[2:])
        y = cd.bilateral_filter(x, 2.5, 0.1, method=method)
        assert y.chunks[:2] == x.chunks[:2]
        assert same(y.compute(), ref), hw


def test_joint_and_gaussian_bit_identical(images):
    img, guide = images["rgb float64"], images["grey float32"]
    ref = hd.joint_bilateral_filter(img, guide, 3.0, 0.15)
    y = cd.joint_bilateral_filter(da.from_array(img, chunks=(20, 30, 3)), da.from_array(guide, chunks=9), 3.0, 0.15)
    assert same(y.compute(), ref)
    # gaussian_filter on the pixel grid: positions (y / s, x / s, features), with and without features
    H, W = guide.shape
    feats = np.stack([guide / 0.2, np.sqrt(guide) / 0.3], axis=-1)
    for f in (feats, None):
        pos = [np.repeat(np.arange(H) / 2.0, W), np.tile(np.arange(W) / 2.0, H)]
        if f is not None:
            pos += [f[..., 0].ravel(), f[..., 1].ravel()]
        ref = hd.gaussian_filter(img.reshape(-1, 3), np.stack(pos, axis=1)).reshape(img.shape)
        fd = None if f is None else da.from_array(f, chunks=(11, 17, 2))
        y = cd.gaussian_filter(da.from_array(img, chunks=(11, 17, 3)), fd, sigma_spatial=2.0)
        assert same(y.compute(), ref)
    # exact: the windowed sum, equal to the all-pairs one to rounding
    y = cd.gaussian_filter(da.from_array(img, chunks=(30, 30, 3)), da.from_array(feats, chunks=(30, 30, 2)),
                           sigma_spatial=2.0, method="exact").compute()
    pos = np.concatenate([np.stack([np.repeat(np.arange(H) / 2.0, W), np.tile(np.arange(W) / 2.0, H)], 1),
                          feats.reshape(-1, 2)], axis=1)
    ref = hd.gaussian_filter(img.reshape(-1, 3), pos, method="exact").reshape(img.shape)
    assert np.abs(y - ref).max() < 1e-12


def test_lattice_reach_bounds_the_impulse_response():
    """Nothing travels further through splat / blur / slice than `lattice_reach` (the halo)."""
    rng = np.random.default_rng(0)
    for d in (2, 3, 5):
        worst = 0.0
        for _ in range(3):
            pos = rng.uniform(0, 6, (3000, d))
            i = int(rng.integers(len(pos)))
            v = np.zeros((len(pos), 1))
            v[i] = 1
            out = PermutohedralLattice(pos).filter(v, normalise=False)[:, 0]
            worst = max(worst, np.sqrt(((pos[out != 0] - pos[i]) ** 2).sum(axis=1)).max())
        assert 0.6 * filters.lattice_reach(d) < worst <= filters.lattice_reach(d), d
    assert filters.halo_radius("permutohedral", 3, 2.0) == int(np.ceil(2 * filters.lattice_reach(3))) + 1
    assert filters.halo_radius("exact", 3, 2.0) == int(np.ceil(np.sqrt(74) * 2))


def _seams(shape, step, width=2):
    m = np.zeros(shape[:2], bool)
    for k in range(step, shape[0], step):
        m[k - width:k + width] = True
    for k in range(step, shape[1], step):
        m[:, k - width:k + width] = True
    return m


def test_lattice_at_chunk_borders(monkeypatch):
    """Pinned to the image's corner, every block's lattice is the whole image's: the same bits.
    Filtered on its own, a block's lattice shifts with the block's corner and the result moves by
    the lattice's shift variance (about its error against the exact filter); a halo short of the
    reach leaves the seams short of contributions."""
    img = (data.camera()[200:296, 200:296] / 255.0)
    ss, sc = 3.0, 0.1
    one = hd.bilateral_filter(img, ss, sc)
    exact = hd.bilateral_filter(img, ss, sc, method="exact")
    x = da.from_array(img, chunks=32)
    with dask.config.set(scheduler="sync"):
        assert same(cd.bilateral_filter(x, ss, sc).compute(), one)
        monkeypatch.setattr(filters, "filter_block",
                            lambda *a, _f=filters.filter_block: _f(*a, anchored=False))
        alone = cd.bilateral_filter(x, ss, sc).compute()
        monkeypatch.undo()
        short = filters._filter(x, x, ss, sc, "permutohedral", None, radius=4).compute()
    lattice_error = np.abs(one - exact).max()
    shift = np.abs(alone - one)
    assert 0.1 * lattice_error < shift.max() < 5 * lattice_error
    # the block-alone lattice is no worse against the exact filter: a shift, not a defect
    rms = [np.sqrt(np.mean((a - exact) ** 2)) for a in (one, alone)]
    assert abs(rms[1] - rms[0]) < 0.05 * rms[0]
    seam = _seams(img.shape, 32)
    err = np.abs(short - one)
    assert err[~seam].max() < err[seam].max() and err[seam].max() > 1e-4


def test_bad_inputs(images):
    img = images["rgb float64"]
    with pytest.raises(ConvError, match="dask.array.from_array"):
        cd.bilateral_filter(img, 2.0, 0.1)
    with pytest.raises(ConvError, match=r"rechunk\(\{2: -1\}\)"):
        cd.bilateral_filter(da.from_array(img, chunks=(20, 20, 1)), 2.0, 0.1)
    with pytest.raises(ConvError, match="grid"):
        cd.bilateral_filter(da.from_array(img, chunks=(20, 20, 3)), 2.0, 0.1, method="grid")
    with pytest.raises(ConvError, match="unknown method"):
        cd.bilateral_filter(da.from_array(img, chunks=(20, 20, 3)), 2.0, 0.1, method="nope")
    with pytest.raises(ConvError, match="sigma_spatial"):
        cd.bilateral_filter(da.from_array(img, chunks=(20, 20, 3)), 0, 0.1)
    with pytest.raises(ConvError, match="height and width"):
        cd.joint_bilateral_filter(da.from_array(img, chunks=(20, 20, 3)), da.from_array(img[:5], chunks=5), 2.0, 0.1)
    with pytest.raises(ConvError, match=r"rechunk the image to smaller chunks"):
        cd.bilateral_filter(da.from_array(img, chunks=(72, 80, 3)), 2.0, 0.1, memory_limit=100_000)
    bad = img.copy()
    bad[3, 3, 0] = np.nan
    with pytest.raises(ConvError, match="non-finite"):
        cd.bilateral_filter(da.from_array(bad, chunks=(20, 20, 3)), 2.0, 0.1).compute()


def test_sigma_color_none(images):
    """sigma_color=None: the guide's standard deviation, computed by Dask."""
    img = images["grey float32"]
    y = cd.bilateral_filter(da.from_array(img, chunks=20), 2.0, None).compute()
    s = float(da.std(da.from_array(img, chunks=20)).compute())
    assert same(y, cd.bilateral_filter(da.from_array(img, chunks=20), 2.0, s).compute())
    assert np.abs(y - hd.bilateral_filter(img, 2.0, None)).max() < 1e-5
