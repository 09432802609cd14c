"""``fft`` (overlap-save FFT + per-frequency complex GEMM) against the float64 reference.

Every check pre-fills the output with NaN, compares normwise with `reference.errors` and uses
``fft.error_bound`` as the tolerance. Small forced tiles (``tile=``, ``chunk=``) exercise the
tiling path (many partial tiles, several chunks) without large images.
"""

import math
import os
import tracemalloc

import numpy as np
import pytest
from conftest import conv_cases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convolab
from convolab import reference
from convolab.algorithms import fft
from convolab.errors import ConvError, UnsupportedError
from convolab.spec import ConvSpec

LAYERS = {
    "7x7 p3": dict(x=(1, 8, 28, 28), w=(8, 8, 7, 7), padding=3),
    "9x9 p4 batch 2": dict(x=(2, 4, 30, 30), w=(6, 4, 9, 9), padding=4),
    "11x11 valid": dict(x=(1, 3, 40, 36), w=(4, 3, 11, 11)),
    "depthwise 7x7": dict(x=(2, 6, 20, 20), w=(6, 1, 7, 7), padding=3, groups=6),
    "depthwise x2 5x5": dict(x=(1, 3, 12, 12), w=(6, 1, 5, 5), padding=2, groups=3),
    "grouped 5x5 asym": dict(x=(1, 8, 17, 19), w=(12, 2, 5, 5), padding=(1, 2, 3, 0), groups=4),
    "dilated 3x3": dict(x=(1, 4, 21, 18), w=(5, 4, 3, 3), padding=3, dilation=(3, 2)),
    "kernel > image": dict(x=(1, 2, 4, 5), w=(3, 2, 7, 7), padding=3),
    "1x1": dict(x=(1, 6, 9, 9), w=(4, 6, 1, 1)),
    "1x1 image": dict(x=(3, 2, 1, 1), w=(2, 2, 1, 1)),
    "2x2 image 3x3": dict(x=(1, 2, 2, 2), w=(2, 2, 3, 3), padding=1),
    "rect 3x7": dict(x=(2, 3, 11, 23), w=(4, 3, 3, 7), padding=(3, 3, 1, 1)),
}


def _kw(case):
    return {k: v for k, v in case.items() if k not in ("x", "w")}


def _data(case, dtype, seed=0, kind="normal"):
    rng = np.random.default_rng(seed)
    if kind == "relu":
        x = np.maximum(rng.standard_normal(case["x"]), 0)
    elif kind == "uniform":
        x = rng.random(case["x"])
    else:
        x = rng.standard_normal(case["x"])
    w = rng.standard_normal(case["w"])
    return x.astype(dtype), w.astype(dtype)


def check(case, dtype, tile=None, chunk=None, seed=0, kind="normal"):
    """Run prepare/run directly (forced tiling allowed); return (normwise error, bound)."""
    x, w = _data(case, dtype, seed, kind)
    kw = _kw(case)
    spec = ConvSpec.from_arrays(x, w, None, **kw)
    assert fft._supports(spec) is None
    cd = spec.compute_dtype
    prep = fft.prepare(spec, np.ascontiguousarray(w, dtype=cd), tile=tile, chunk=chunk)
    out = np.full(spec.out_shape, np.nan, dtype=cd)
    fft.run(prep, np.ascontiguousarray(x, dtype=cd), out)
    assert not np.isnan(out).any(), "unwritten (NaN) outputs"
    ref = reference.conv2d(x, w, None, **kw)
    err = reference.errors(out, ref, reference.magnitude(x, w, None, **kw))["normwise"]
    bound = fft.error_bound(spec, dtype, tile)
    assert err <= bound, f"normwise error {err:.3e} > bound {bound:.3e} ({prep.tiling})"
    return err, bound, prep.tiling


def test_tile_lengths_match_scipy_next_fast_len():
    # fft's own 5-smooth search (no scipy.fft import at plan time) agrees with pocketfft's
    from scipy.fft import next_fast_len

    assert [fft.next_fast_len(n) for n in range(1, 3001)] == [
        next_fast_len(n, real=True) for n in range(1, 3001)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_named_layers_default_tiling(layer, dtype):
    check(LAYERS[layer], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_named_layers_smallest_tiles(layer, dtype):
    # output tiles of 1-2 pixels: the kernel is larger than the tile, every tile overlaps, many
    # edge tiles are partial, and tiny chunks split the GEMMs
    case = LAYERS[layer]
    spec = ConvSpec.from_shapes(case["x"], case["w"], **_kw(case))
    for extra, chunk in ((0, 1), (1, 3)):
        tile = (spec.dilated_R + extra, spec.dilated_S + extra)
        _, _, t = check(case, dtype, tile=tile, chunk=chunk, seed=1)
        assert (t.th, t.tw) == (1 + extra, 1 + extra)
        assert t.tiles == spec.N * math.ceil(spec.OH / t.th) * math.ceil(spec.OW / t.tw)


def test_overlap_tiling_path_is_exercised():
    case = dict(x=(3, 5, 37, 29), w=(7, 5, 5, 3), padding=(1, 0, 2, 2))
    # chunks of tile rows (7 -> one row of 5 tiles; 12 -> two rows), of images (45 -> one
    # image of 40 tiles; 85 -> two), and everything at once
    for chunk, size, count in ((7, 5, 24), (12, 10, 12), (45, 40, 3), (85, 80, 2), (None, 120, 1)):
        for dtype in (np.float32, np.float64):
            err, bound, t = check(case, dtype, tile=(9, 8), chunk=chunk or 1000)
            assert (t.th, t.tw) == (5, 6) and (t.nth, t.ntw) == (8, 5)
            assert (t.chunk, t.chunks) == (size, count)
            assert len(t.chunk_list(3)) == count
            # partial edge tiles: the grid overhangs the output
            assert t.nth * t.th > 37 and t.ntw * t.tw > 27


def test_unpadded_input_is_read_in_place():
    # no padding and tiles that fit inside the image: the tiles are a view of the input itself
    case = dict(x=(2, 3, 23, 23), w=(4, 3, 4, 4))
    spec = ConvSpec.from_shapes(case["x"], case["w"])
    assert fft._in_place(spec, 8, 8, 4, 4)  # 4 tiles of 5 outputs: 4 * 5 + 3 = 23 rows
    x, w = _data(case, np.float32)
    for chunk in (4, 16, 32):
        check(case, np.float32, tile=8, chunk=chunk)
        prep = fft.prepare(spec, w, tile=8, chunk=chunk)
        ws = fft.fft_workspace_bytes(spec, 8, chunk)
        assert ws <= _measured_peak(prep, x) <= ws + 16384


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=conv_cases(max_hw=16, stride_one=True), data=st.data())
def test_generated_stride_one_specs(case, data):
    spec = ConvSpec.from_shapes(case["x"], case["w"], **_kw(case))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    tile = data.draw(st.one_of(
        st.none(),
        st.tuples(st.integers(spec.dilated_R, spec.dilated_R + 8),
                  st.integers(spec.dilated_S, spec.dilated_S + 8)),
    ))
    chunk = data.draw(st.one_of(st.none(), st.integers(1, 9)))
    check(case, dtype, tile=tile, chunk=chunk, seed=data.draw(st.integers(0, 3)))


def test_public_api_with_bias_and_float16():
    case = LAYERS["9x9 p4 batch 2"]
    rng = np.random.default_rng(3)
    for dtype in (np.float16, np.float32, np.float64):
        x, w = _data(case, dtype, seed=3)
        b = rng.standard_normal(case["w"][0]).astype(dtype)
        spec = ConvSpec.from_arrays(x, w, b, **_kw(case))
        out = np.full(spec.out_shape, np.nan, dtype=dtype)
        y = convolab.conv2d(x, w, b, algorithm="fft", out=out, **_kw(case))
        assert y is out
        ref = reference.conv2d(x, w, b, **_kw(case))
        mag = reference.magnitude(x, w, b, **_kw(case))
        assert reference.errors(y, ref, mag)["normwise"] <= fft.error_bound(spec, dtype)
        p = convolab.plan(x.shape, w, b, algorithm="fft", **_kw(case))
        assert p.algorithm == "fft" and p.error_bound == fft.error_bound(spec, dtype)
        np.testing.assert_array_equal(p(x), y)


def test_bound_holds_for_activation_like_data_with_large_tiles():
    case = dict(x=(1, 16, 60, 60), w=(8, 16, 7, 7), padding=3)
    for kind in ("normal", "relu", "uniform"):
        for tile in (None, 16, 64):
            err, bound, _ = check(case, np.float32, tile=tile, kind=kind, seed=2)
            # measured errors are a few unit roundoffs; the bound is a worst case
            assert err < 8 * 2.0**-24


def test_error_bound_grows_with_the_transform():
    spec = ConvSpec.from_shapes((1, 8, 64, 64), (8, 8, 5, 5), padding=2)
    bounds = [fft.error_bound(spec, np.float32, tile=t) for t in (8, 16, 32, 64)]
    assert bounds == sorted(bounds) and bounds[0] > 0
    assert fft.error_bound(spec, np.float64, tile=16) < 1e-11
    b16 = fft.error_bound(spec, np.float16, tile=16)
    assert b16 > fft.error_bound(spec, np.float32, tile=16) + 2.0**-12


def test_pocketfft_threads_do_not_change_the_result(monkeypatch):
    x, w = _data(dict(x=(2, 6, 33, 30), w=(5, 6, 7, 7)), np.float32, seed=5)
    spec = ConvSpec.from_arrays(x, w, padding=3)
    outs = []
    for workers in (1, 2, 3):
        monkeypatch.setattr(fft, "WORKERS", workers)
        prep = fft.prepare(spec, w, tile=16, chunk=5)
        out = np.empty(spec.out_shape, np.float32)
        fft.run(prep, x, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_strided_is_unsupported_with_reason():
    x, w = _data(dict(x=(1, 3, 16, 16), w=(4, 3, 7, 7)), np.float32)
    spec = ConvSpec.from_arrays(x, w, stride=(1, 2), padding=3)
    reason = convolab.registry.get("fft").supports(spec)
    assert reason is not None and "stride" in reason
    with pytest.raises(UnsupportedError, match="stride"):
        convolab.conv2d(x, w, stride=2, padding=3, algorithm="fft")


def test_bad_tilings_raise():
    spec = ConvSpec.from_shapes((1, 2, 10, 10), (2, 2, 3, 3), dilation=2)
    with pytest.raises(ConvError, match="smaller than the dilated kernel 5x5"):
        fft.tiling(spec, tile=4)
    with pytest.raises(ConvError, match="chunk"):
        fft.tiling(spec, tile=8, chunk=0)
    with pytest.raises(ConvError, match="tile"):
        fft.tiling(spec, tile="big")


def test_nonfinite_filters_and_inputs_propagate_exactly():
    case = dict(x=(1, 3, 12, 12), w=(4, 3, 5, 5), padding=2)
    x, w = _data(case, np.float32)
    w[1, 2, 0, 0] = np.nan
    ref = reference.conv2d(x, w, padding=2)
    y = convolab.conv2d(x, w, padding=2, algorithm="fft")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(y[finite], ref[finite], rtol=0, atol=1e-4)


def _measured_peak(prep, x):
    out = np.empty(prep.spec.out_shape, x.dtype)
    fft.run(prep, x, out)  # compile and warm up
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fft.run(prep, x, out)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_workspace_is_the_measured_peak():
    case = dict(x=(3, 6, 40, 33), w=(10, 6, 7, 5), padding=(2, 2, 3, 3))
    x, w = _data(case, np.float32)
    spec = ConvSpec.from_arrays(x, w, **_kw(case))
    # default; row chunks; image chunks; one chunk
    for tile, chunk in ((None, None), ((12, 10), 7), ((12, 10), 60), ((16, 32), 1000)):
        prep = fft.prepare(spec, w, tile=tile, chunk=chunk)
        ws = fft.fft_workspace_bytes(spec, tile, chunk)
        # the arrays counted are all that is allocated, up to a few KiB of Python objects
        assert ws <= _measured_peak(prep, x) <= ws + 16384, (tile, chunk, ws)
        assert fft.workspace_bytes(spec, tile, chunk) >= ws
    # a NaN input takes the direct path: its padded copy is within workspace_bytes too
    x[0, 0, 0, 0] = np.nan
    assert _measured_peak(prep, x) <= fft.workspace_bytes(spec, (16, 32), 1000) + 16384


def test_multiplies_formula_by_hand():
    # one 8x8 tile, N = C = K = 1: F = 8 * 5 = 40 complex products (x4 real), and two real 2D
    # FFTs of 8 x 8, each 8 rows x 8 log2 8 + 2 x 5 columns x 8 log2 8 = 192 + 240
    spec = ConvSpec.from_shapes((1, 1, 8, 8), (1, 1, 3, 3))
    assert fft.tiling(spec, tile=8).tiles == 1
    assert fft.multiplies(spec, tile=8) == 4 * 40 + 2 * (192 + 240)
    # groups: the GEMM term scales with C/groups, the FFTs with C + K
    g = ConvSpec.from_shapes((2, 8, 8, 8), (4, 2, 3, 3), groups=4)
    t = fft.tiling(g, tile=8)
    assert fft.multiplies(g, tile=8) == 4 * 40 * 4 * 2 * t.tiles + (8 + 4) * t.tiles * 432


def test_tile_choice_keeps_the_bound_within_the_default_budget_when_it_can():
    from convolab.registry import summation_bound

    spec = ConvSpec.from_shapes((8, 16, 224, 224), (16, 16, 11, 11), padding=5)
    budget = fft.MAX_ERROR_FACTOR * summation_bound(spec, np.float32)
    assert fft.error_bound(spec, np.float32) <= budget
    # depthwise: every tile's bound is over the budget; the fastest tile is still chosen
    dw = ConvSpec.from_shapes((1, 8, 40, 40), (8, 1, 7, 7), padding=3, groups=8)
    Th, Tw = fft.choose_tile(dw)
    assert fft.error_bound(dw, np.float32) > fft.MAX_ERROR_FACTOR * summation_bound(dw, np.float32)
    assert fft._cost(dw, Th, Tw) == min(
        fft._cost(dw, a, b) for a in fft._lengths(7, 46) for b in fft._lengths(7, 46))


def test_large_kernels_need_far_fewer_multiplies_and_small_transforms():
    for shape in (((1, 64, 56, 56), (64, 64, 7, 7), 3), ((8, 16, 224, 224), (16, 16, 11, 11), 5)):
        spec = ConvSpec.from_shapes(shape[0], shape[1], padding=shape[2])
        Th, Tw = fft.choose_tile(spec)
        assert Th >= spec.R and Tw >= spec.S
        assert fft.multiplies(spec) * 5 < spec.direct_multiplies
        assert Th * Tw < spec.padded_H * spec.padded_W  # the transform follows the kernel
        assert fft.workspace_bytes(spec) < 128 << 20


def _child_conv(q, x, w):
    q.put(convolab.conv2d(x, w, padding=3, algorithm="fft"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_runs_in_a_forked_child_after_the_parent_used_the_threads():
    import multiprocessing

    x, w = _data(dict(x=(1, 8, 30, 30), w=(8, 8, 7, 7)), np.float32, seed=7)
    y = convolab.conv2d(x, w, padding=3, algorithm="fft")  # starts the worker threads
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_conv, args=(q, x, w))
    p.start()
    try:
        np.testing.assert_array_equal(q.get(timeout=60), y)
    finally:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
