"""``direct``: its two kernels (the register-blocked microkernel and the flat-run loops) sum in
the same order, so they agree bit for bit, at any stride and dilation; both match the
reference."""

import numpy as np
import pytest
from conftest import check_against_reference, make_data

import convolab
from convolab.algorithms import direct as D
from convolab.spec import ConvSpec


@pytest.mark.parametrize(
    "x_shape,w_shape,kw,dtype",
    [
        ((1, 64, 14, 14), (64, 64, 3, 3), {"padding": 1}, np.float32),
        ((2, 16, 9, 13), (96, 16, 3, 3), {"padding": (0, 2, 1, 0)}, np.float32),  # asymmetric
        ((1, 8, 5, 3), (32, 8, 3, 3), {"padding": 1}, np.float32),  # fewer pixels than a tile
        ((1, 64, 11, 7), (128, 32, 1, 1), {"groups": 2}, np.float32),  # grouped 1x1
        ((2, 12, 10, 10), (48, 12, 5, 5), {"padding": 2}, np.float64),  # float64: 16 lanes
        ((1, 3, 23, 21), (64, 3, 7, 7), {"stride": 2, "padding": 3}, np.float32),  # a stem
        ((2, 16, 13, 12), (32, 16, 3, 3), {"stride": (2, 3), "padding": 1, "dilation": (1, 2)},
         np.float32),  # strided and dilated
        ((1, 64, 9, 9), (64, 64, 1, 1), {"stride": 2}, np.float32),  # downsampling 1x1
        ((1, 8, 12, 12), (32, 8, 3, 3), {"stride": 2, "padding": 1}, np.float64),
        # a last k-block of one vector of channels (16 float32, 8 float64 lanes), on rows
        # crossed by tiles and on dense ones, a fused residual: the one-vector tiles
        ((2, 24, 9, 11), (48, 24, 3, 3), {"padding": 1}, np.float32),
        ((1, 40, 7, 7), (80, 40, 1, 1), {}, np.float32),
        ((1, 12, 6, 9), (40, 12, 1, 1), {}, np.float64),
        # 3x3 on a 7x7 plane: a tile per output row (MR_ROW), a last one-vector k-block
        ((2, 32, 7, 7), (48, 32, 3, 3), {"padding": 1}, np.float32),
        # 3x3 stride 1 on rows that 14-pixel tiles cross (MR_WIDE on the general kernel)
        ((1, 16, 10, 12), (32, 16, 3, 3), {"padding": 1}, np.float32),
    ],
)
def test_microkernel_and_loops_agree_bit_for_bit(monkeypatch, x_shape, w_shape, kw, dtype):
    x, w, _ = make_data(x_shape, w_shape, bias=False)
    x, w = x.astype(dtype), w.astype(dtype)
    spec = ConvSpec.from_arrays(x, w, None, **kw)
    assert D.tiled(spec)
    tiled = convolab.conv2d(x, w, algorithm="direct", **kw)
    check_against_reference(tiled, x, w, None, kw, convolab.registry.get("direct").error_bound(spec, dtype))
    monkeypatch.setattr(D, "TILE_MIN_KG", 10**9)
    assert not D.tiled(spec)
    loops = convolab.conv2d(x, w, algorithm="direct", **kw)
    np.testing.assert_array_equal(tiled, loops)


def test_microkernel_only_where_lanes_are_used():
    def spec(k, stride=1, dilation=1):
        return ConvSpec.from_shapes((1, 8, 10, 10), (k, 8, 3, 3), stride, 1, dilation)

    assert D.tiled(spec(64)) and D.tiled(spec(96)) and D.tiled(spec(48))
    assert not D.tiled(spec(16))  # below TILE_MIN_KG
    assert D.tiled(spec(40))  # 40 of 48 lanes: a last k-block of 8 channels computes 16
    assert not D.tiled(spec(34))  # 34 of 64 lanes
    assert D.tiled(spec(64, stride=2)) and D.tiled(spec(64, dilation=2))
    assert not D.tiled(spec(16, stride=2))
    # the count includes the lanes and pixels the microkernel computes past the layer
    s = spec(48)
    assert convolab.registry.get("direct").multiplies(s) == 48 * 100 * 72  # 32 + 16 lanes
    assert convolab.registry.get("direct").multiplies(spec(50)) == 64 * 100 * 72
    assert convolab.registry.get("direct").multiplies(spec(16, stride=2)) == spec(16, stride=2).direct_multiplies


def test_microkernel_compiled_in_a_child_and_loaded_from_cache(tmp_path):
    """With an empty Numba cache, the first stride-1 call compiles the microkernel in a child
    process (`load_from_cache`) and this process loads it from the cache."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, convolab\n"
        "from convolab.kernels._microkernel import direct_tiles\n"
        "x = np.ones((1, 4, 6, 6), np.float32); w = np.ones((32, 4, 3, 3), np.float32)\n"
        "y = convolab.conv2d(x, w, padding=1, algorithm='direct')\n"
        "assert y[0, 0, 2, 2] == 36.0\n"
        "print(sum(direct_tiles.stats.cache_hits.values()), sum(direct_tiles.stats.cache_misses.values()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CONVOLAB_NO_PREWARM"}
    env["NUMBA_CACHE_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    hits, misses = map(int, r.stdout.split())
    assert (hits, misses) == (1, 0)


@pytest.mark.parametrize(
    "C, H, W, k, stride, padding, dilation",
    [
        (32, 17, 15, 3, 1, 1, 1),
        (40, 14, 14, 5, 2, 2, 1),  # strided, a partial block of 8 channels
        (16, 9, 11, 3, 1, (0, 2), 2),  # dilated, asymmetric
        (24, 7, 7, 7, 1, 3, 1),
    ],
)
def test_blocked_depthwise_equals_the_per_plane_kernel(monkeypatch, C, H, W, k, stride, padding,
                                                       dilation):
    # the channel-blocked kernel reorders no arithmetic: bit for bit the per-plane kernel's
    from convolab.algorithms import direct

    rng = np.random.default_rng(C + H)
    x = rng.standard_normal((2, C, H, W), dtype=np.float32)
    w = rng.standard_normal((C, 1, k, k), dtype=np.float32)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=C, algorithm="direct")
    p = convolab.plan(x.shape, w, **kw)
    assert direct.blocked_depthwise(p.spec) and p._prepared.packed is not None  # the packed filter
    blocked = p(x)
    monkeypatch.setattr(direct, "DW_BLOCK_MAX_PIXELS", 0)
    plane = convolab.plan(x.shape, w, **kw)
    assert plane._prepared.packed is None  # the per-plane kernel's
    assert np.array_equal(blocked, plane(x))


def test_split_gives_threads_even_shares():
    # 160 -> 960 at 7x7 on 2 threads: 30 k-blocks x 5 tiles. Cut by bytes alone it ran as 8
    # ranges of 3 or 4 k-blocks (one thread idle for the last task's difference); the split
    # now weighs that idle time and cuts 30 into ranges the threads share evenly
    from convolab.kernels import microkernel as mk

    spec = ConvSpec(1, 160, 7, 7, 960, 1, 1)
    nkb = -(-spec.K // mk.kb(spec))
    sp = mk.split(spec, 49, spec.C * 4.0, nkb, 2)
    assert sp.nkbr * sp.nchunk >= mk.TASKS_PER_THREAD * 2
    ends = mk._ends(nkb, sp.nkbr)
    sizes = [e - s for s, e in zip([0] + ends[:-1], ends, strict=True)]
    assert mk.makespan(sizes * sp.nchunk, 2) * 2 == sum(sizes) * sp.nchunk
    # the makespan model: tasks taken in order by whichever thread is free first
    assert mk.makespan([3, 4, 3, 4, 3, 4, 4, 4], 2) == 16 and mk.makespan([5, 1, 1], 1) == 7
    # a large plane with a small filter is still cut by pixels (the filter read once per chunk)
    big = ConvSpec(1, 16, 112, 112, 96, 1, 1)
    assert mk.split(big, 112 * 112, 16 * 4.0, 3, 2).nkbr == 1
    # however many chunks it takes to keep a chunk's input within CHUNK_BYTES (52 MB here)
    huge = ConvSpec(1, 64, 448, 448, 64, 3, 3, padding=(1, 1, 1, 1))
    per_pixel = 64 * 450 * 450 / (448 * 448) * 4
    sp = mk.split(huge, 448 * 448, per_pixel, 2, 2)
    assert sp.nkbr == 1 and per_pixel * 448 * 448 / sp.nchunk <= mk.CHUNK_BYTES
