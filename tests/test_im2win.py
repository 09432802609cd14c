"""im2win: correctness on the papers' 12 layers and generated specs, exact workspace, determinism."""

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from conftest import conv_cases, make_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convolab
from convolab import reference
from convolab.bench.suites import SUITES
from convolab.registry import summation_bound
from convolab.spec import ConvSpec

ALGO = convolab.registry.get("im2win")
LAYERS12 = SUITES["im2win12"][0](1)


def _kw(spec: ConvSpec) -> dict:
    return dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=spec.groups)


def _run(spec: ConvSpec, x, w):
    """im2win through the registry record, output pre-filled with NaN inside guard zones."""
    cd = spec.compute_dtype
    prepared = ALGO.prepare(spec, np.ascontiguousarray(w, dtype=cd))
    size = int(np.prod(spec.out_shape))
    buf = np.full(size + 128, -7.0, dtype=cd)
    out = buf[64 : 64 + size].reshape(spec.out_shape)
    out[...] = np.nan
    ALGO.run(prepared, np.ascontiguousarray(x, dtype=cd), out)
    assert (buf[:64] == -7).all() and (buf[64 + size :] == -7).all(), "wrote outside the output"
    return out


def _check(spec: ConvSpec, x, w, y, channels=None):
    """Normwise error of ``y`` (on output ``channels``) within the algorithm's bound."""
    assert not np.isnan(y).any(), "unwritten (NaN) outputs"
    kw = _kw(spec)
    if channels is not None:  # the reference on a subset of output channels (groups == 1)
        w, y = w[channels], y[:, channels]
    ref = reference.conv2d(x, w, **kw)
    err = reference.errors(y, ref, reference.magnitude(x, w, **kw))["normwise"]
    tol = ALGO.error_bound(spec, spec.dtype) + summation_bound(spec, np.float64)
    assert err <= tol, f"{spec}: normwise error {err:.3e} > bound {tol:.3e}"


@pytest.mark.parametrize("name,spec", LAYERS12, ids=[n.split()[0] for n, _ in LAYERS12])
def test_papers_layers_batch1(name, spec):
    x, w, _ = make_data(spec.x_shape, spec.w_shape, bias=False)
    y = _run(spec, x, w)
    # every output is written; the float64 reference on the first and last lanes of blocks
    channels = np.array(sorted({c for c in (0, 1, 15, 16, 31, 32, spec.K // 2, spec.K - 1)
                                if c < spec.K}))
    _check(spec, x, w, y, channels)


@st.composite
def wide_cases(draw):
    """Channel counts that give several 32-lane blocks, ragged last blocks and groups."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    Cg = draw(st.integers(1, 12))
    Kg = draw(st.integers(1, 70))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    dR, dS = dilation[0] * (R - 1) + 1, dilation[1] * (S - 1) + 1
    H = draw(st.integers(max(1, dR - pads[2] - pads[3]), 20))
    W = draw(st.integers(max(1, dS - pads[0] - pads[1]), 20))
    return dict(x=(draw(st.integers(1, 2)), groups * Cg, H, W), w=(groups * Kg, Cg, R, S),
                stride=stride, padding=pads, dilation=dilation, groups=groups)


def _case(case, dtype=np.float32, seed=0):
    x, w, _ = make_data(case["x"], case["w"], dtype, bias=False, seed=seed)
    kw = {k: v for k, v in case.items() if k not in ("x", "w")}
    spec = ConvSpec.from_arrays(x, w, **kw)
    assert ALGO.supports(spec) is None
    _check(spec, x, w, _run(spec, x, w))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(case=conv_cases())
def test_generated_specs(case):
    """Groups, depthwise, dilation, asymmetric padding, stride > kernel, batch > 1."""
    _case(case)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(case=wide_cases())
def test_generated_wide_specs(case):
    _case(case)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(case=wide_cases())
def test_generated_float64(case):
    _case(case, np.float64)


@pytest.mark.parametrize(
    "case",
    [
        dict(x=(2, 3, 1, 1), w=(4, 3, 1, 1)),
        dict(x=(1, 3, 1, 1), w=(40, 3, 3, 3), padding=1),
        dict(x=(1, 2, 1, 9), w=(5, 2, 1, 3), padding=(0, 0, 0, 0)),
        dict(x=(2, 4, 7, 7), w=(4, 1, 7, 7), groups=4, padding=(6, 0, 0, 6)),
        dict(x=(1, 5, 13, 11), w=(33, 5, 2, 2), stride=(6, 5)),  # stride > kernel
        dict(x=(2, 7, 4, 5), w=(40, 7, 1, 1)),  # 20 pixels: a tile of 12, two tiles of 4
        dict(x=(1, 9, 3, 7), w=(33, 9, 1, 1)),  # 21 pixels: two tiles of 12
    ],
)
def test_edge_shapes(case):
    _case(case)


def test_api_and_float16():
    x, w, b = make_data((2, 6, 10, 9), (35, 6, 3, 3), np.float16)
    y = convolab.conv2d(x, w, b, padding=(1, 0, 2, 1), algorithm="im2win")
    assert y.dtype == np.float16
    ref = reference.conv2d(x, w, b, padding=(1, 0, 2, 1))
    spec = ConvSpec.from_arrays(x, w, b, padding=(1, 0, 2, 1))
    err = reference.errors(y, ref, reference.magnitude(x, w, b, padding=(1, 0, 2, 1)))["normwise"]
    assert err <= ALGO.error_bound(spec, np.float16)


def _peak(spec: ConvSpec) -> int:
    x, w, _ = make_data(spec.x_shape, spec.w_shape, bias=False)
    prepared = ALGO.prepare(spec, w)
    out = np.empty(spec.out_shape, np.float32)
    ALGO.run(prepared, x, out)  # compile and first touch outside the measurement
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        ALGO.run(prepared, x, out)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "case",
    [
        dict(x=(2, 16, 30, 30), w=(32, 16, 3, 3), padding=1),
        dict(x=(1, 3, 67, 67), w=(40, 3, 11, 11), stride=4),
        dict(x=(3, 8, 24, 20), w=(12, 2, 5, 3), stride=(2, 1), padding=(1, 2, 0, 3), groups=4),
        dict(x=(1, 12, 30, 30), w=(12, 1, 3, 3), dilation=2, padding=2, groups=12),
    ],
)
def test_workspace_matches_measured_peak(case):
    kw = {k: v for k, v in case.items() if k not in ("x", "w")}
    spec = ConvSpec.from_shapes(case["x"], case["w"], **kw)
    stated = ALGO.workspace_bytes(spec)
    peak = _peak(spec)
    assert abs(peak - stated) <= 0.1 * stated, (stated, peak)


def test_workspace_of_papers_layers_vs_im2col():
    """The window tensor: <= 0.50 x im2col's workspace on every layer, <= 0.40 on average."""
    im2col = convolab.registry.get("im2col")
    ratios = [ALGO.workspace_bytes(s) / im2col.workspace_bytes(s) for _, s in LAYERS12]
    assert max(ratios) <= 0.50 and np.mean(ratios) <= 0.40, ratios
    for (_, s), r in zip(LAYERS12, ratios, strict=True):  # the layout's W/(FW OW), less the
        # input columns that no window reads (the 32 bytes of task counters left out)
        r = (ALGO.workspace_bytes(s) - 32 * s.N) / im2col.workspace_bytes(s)
        assert (s.W - s.stride[1]) / (s.S * s.OW) < r <= s.W / (s.S * s.OW)


def test_workspace_holds_two_windows_from_batch_two():
    one = ConvSpec.from_shapes((1, 64, 56, 56), (64, 64, 3, 3))
    eight = ConvSpec.from_shapes((8, 64, 56, 56), (64, 64, 3, 3))
    window = 64 * 54 * 56 * 3 * 4
    assert ALGO.workspace_bytes(one) == window + 32
    assert ALGO.workspace_bytes(eight) == 2 * window + 8 * 32


def test_multiplies_count_the_tile_waste():
    full = ConvSpec.from_shapes((1, 64, 56, 56), (64, 64, 3, 3))  # 54*54 pixels = 243 tiles
    assert ALGO.multiplies(full) == full.direct_multiplies
    ragged = ConvSpec.from_shapes((2, 6, 7, 7), (40, 3, 3, 3), groups=2)  # 25 pixels, Kg 20
    assert ALGO.multiplies(ragged) == 2 * 2 * 32 * (24 + 4) * 3 * 3 * 3
    seven = ConvSpec.from_shapes((1, 6, 5, 5), (40, 6, 1, 1))  # 25 = 12 + 12 + 1
    eight = ConvSpec.from_shapes((1, 6, 4, 5), (40, 6, 1, 1))  # 20 = 12 + 4 + 4
    nine = ConvSpec.from_shapes((1, 6, 3, 7), (40, 6, 1, 1))  # 21 = 12 + 12 (9 > 8)
    for spec, pixels in ((seven, 28), (eight, 20), (nine, 24)):
        assert ALGO.multiplies(spec) == (32 + 16) * pixels * 6  # a last k-block of 8: 16 lanes


def test_deterministic_across_thread_counts():
    import numba

    x, w, _ = make_data((2, 24, 17, 19), (70, 24, 3, 3), bias=False)
    spec = ConvSpec.from_arrays(x, w, padding=1)
    ys = []
    saved = numba.get_num_threads()
    try:
        for n in sorted({1, saved}):
            numba.set_num_threads(n)
            ys.append(_run(spec, x, w))
    finally:
        numba.set_num_threads(saved)
    for y in ys[1:]:
        np.testing.assert_array_equal(y, ys[0])


_SUBPROCESS = """
import sys, numpy as np, convolab
rng = np.random.default_rng(3)
x = rng.standard_normal((1, 20, 11, 13)).astype(np.float32)
w = rng.standard_normal((40, 20, 3, 3)).astype(np.float32)
y = convolab.conv2d(x, w, padding=(1, 2, 0, 1), algorithm="im2win")
sys.stdout.write(y.tobytes().hex())
"""


def test_bit_identical_on_generic_cpu_single_thread():
    """SSE2-only code (NUMBA_CPU_NAME=generic) and one thread give the very same bits."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 20, 11, 13)).astype(np.float32)
    w = rng.standard_normal((40, 20, 3, 3)).astype(np.float32)
    y = convolab.conv2d(x, w, padding=(1, 2, 0, 1), algorithm="im2win")
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_NUM_THREADS="1", CONVOLAB_NO_PREWARM="1")
    res = subprocess.run([sys.executable, "-c", _SUBPROCESS], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    assert bytes.fromhex(res.stdout) == y.tobytes()


def test_nan_and_inf_propagate_exactly_like_the_reference():
    """Each output sums exactly its own window's products: zero lanes and repeated pixels of
    a partial tile never reach a stored output."""
    rng = np.random.default_rng(5)
    x, w, _ = make_data((2, 5, 9, 8), (40, 5, 3, 3), bias=False)
    for value in (np.nan, np.inf, -np.inf, np.inf):
        x[tuple(int(rng.integers(0, s)) for s in x.shape)] = value
    spec = ConvSpec.from_arrays(x, w, padding=1)
    with np.errstate(invalid="ignore"):
        ref = reference.conv2d(x, w, padding=1)
    y = _run(spec, x, w)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
