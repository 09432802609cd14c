"""The compiled int8 fast algorithms (`convolab.quant.fastint8`): the NumPy pipeline's codes and
integer sums, VNNI GEMMs per frequency, the float32 tail within float32 rounding of the float64
reference; the same bits on every int8 path and thread count."""

import numpy as np
import pytest

from convolab.errors import ConvError
from convolab.kernels import int8 as mk8
from convolab.kernels._int8_fast import ALGORITHMS
from convolab.quant import QuantConfig, QuantizedConv
from convolab.quant.fastint8 import plan_fast_int8
from convolab.spec import ConvSpec

CASES = [  # N, C, H, W, K, padding (l, r, t, b)
    (1, 16, 14, 14, 32, (1, 1, 1, 1)),
    (2, 5, 13, 11, 37, (1, 1, 1, 1)),  # channels not a multiple of 4, K of 16; partial tiles
    (1, 40, 9, 17, 20, (0, 2, 1, 0)),  # asymmetric padding
    (1, 64, 7, 7, 70, (1, 1, 1, 1)),
]


def layer(case, name, seed=0):
    N, C, H, W, K, pad = case
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((N, C, H, W)), -0.5).astype(np.float32)
    w = (rng.standard_normal((K, C, 3, 3)) * 0.2).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    q = QuantizedConv(w, b, padding=pad, config=QuantConfig(name)).calibrate(x)
    return x, q, ConvSpec(N, C, H, W, K, 3, 3, padding=pad)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ALGORITHMS)
def test_compiled_path_matches_the_numpy_pipeline(name, case):
    x, q, _ = layer(case, name)
    y32 = q(x)  # float32: the compiled path
    y64 = q(x.astype(np.float64))  # float64: the NumPy pipeline, float64 tail
    assert q._fast_plans  # the compiled path ran
    scale = np.abs(y64).max()
    # same codes and integer sums: only float32 roundings of the dequantisation and the
    # output transform (a transform-domain step is about 1e-2 of the output's range)
    np.testing.assert_allclose(y32, y64, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_path_and_thread_count_gives_the_same_bits(name):
    x, q, spec = layer(CASES[1], name, seed=1)
    xq = q.codes(x)
    outs = []
    for path in mk8.available_paths():
        for threads in (1, 2, 3):
            p = plan_fast_int8(spec, name, q.Uq.astype(np.int8), q.s_u, q.s_v, q.s_x,
                               bias=q.bias, act="relu", threads=threads, path=path)
            outs.append(p(xq))
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    assert outs[0].min() == 0.0 and outs[0].max() > 0  # ReLU after the bias


def test_output_stage_clamp_and_bias():
    x, q, spec = layer(CASES[0], "sfc4_4x3")
    xq = q.codes(x)
    args = (spec, "sfc4_4x3", q.Uq.astype(np.int8), q.s_u, q.s_v, q.s_x)
    plain = plan_fast_int8(*args)(xq)
    clamped = plan_fast_int8(*args, bias=q.bias, act="clamp", lo=-0.5, hi=0.75)(xq)
    want = np.clip(plain + q.bias.astype(np.float32)[None, :, None, None], -0.5, 0.75)
    np.testing.assert_array_equal(clamped, want)


def test_fast_plan_errors():
    x, q, spec = layer(CASES[0], "sfc6_6x3")
    args = (q.Uq.astype(np.int8), q.s_u, q.s_v, q.s_x)
    with pytest.raises(ConvError, match="runs winograd_f2x3, sfc4_4x3, sfc6_6x3"):
        plan_fast_int8(spec, "winograd_f4x3", *args)
    with pytest.raises(ConvError, match="cannot run"):
        plan_fast_int8(ConvSpec(1, 16, 14, 14, 32, 3, 3, stride=(2, 2)), "sfc6_6x3", *args)
    with pytest.raises(ConvError, match="Uq must have shape"):
        plan_fast_int8(spec, "sfc6_6x3", q.Uq[:, :3].astype(np.int8), *args[1:])
    with pytest.raises(ConvError, match="act must be one of"):
        plan_fast_int8(spec, "sfc6_6x3", *args, act="gelu")
    p = plan_fast_int8(spec, "sfc6_6x3", *args)
    with pytest.raises(ConvError, match="expected int8 codes of shape"):
        p(q.codes(x).astype(np.int16))
    with pytest.raises(ConvError, match="expected int8 codes of shape"):
        p(q.codes(x)[:, :3])


def test_recalibration_rebuilds_the_compiled_plan():
    x, q, _ = layer(CASES[0], "sfc6_6x3")
    q(x)
    before = dict(q._fast_plans)
    q.calibrate(x * 2)
    y = q(x * 2)
    assert not any(p is before.get(k) for k, p in q._fast_plans.items())
    np.testing.assert_allclose(y, q((x * 2).astype(np.float64)), rtol=0,
                               atol=2e-6 * np.abs(y).max())


@pytest.mark.parametrize("name", ALGORITHMS)
def test_transform_domain_codes_are_the_numpy_pipelines(name):
    # the compiled input transform and requantisation write exactly the NumPy pipeline's
    # codes (shifted by 128), tile by tile, frequency by frequency
    x, q, spec = layer(CASES[1], name, seed=2)
    p = plan_fast_int8(spec, name, q.Uq.astype(np.int8), q.s_u, q.s_v, q.s_x)
    xq = q.codes(x)
    p(xq)
    Vq = q._transform_codes(spec, xq)  # (N, C, TH, TW, P)
    N, C, TH, TW, P = Vq.shape
    C4 = -(-C // 4) * 4
    got = p._xu[: N * TH * TW * P * C4].reshape(N, TH, TW, P, C4)[..., :C].astype(np.int16) - 128
    np.testing.assert_array_equal(got, Vq.transpose(0, 2, 3, 4, 1))
