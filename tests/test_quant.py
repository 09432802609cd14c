"""convolab.quant: quantisers, calibration, exact int8 convolution, integer Winograd / SFC."""

from __future__ import annotations

import numpy as np
import pytest

from convolab import ConvError, reference
from convolab.kernels import int8 as mk8
from convolab.quant import (
    FAST,
    Observer,
    QuantConfig,
    QuantizedConv,
    accumulation_bound,
    conv2d_int8,
    dequantize,
    intconv,
    plan_int8,
    qmax,
    quantize,
    weight_scales,
)
from convolab.quant import fast as qfast
from convolab.spec import ConvSpec

RNG = np.random.default_rng(20240601)
#: every fast algorithm with an exact int64 path (F(6x6,3x3) needs integers beyond 2**53)
EXACT_FAST = [n for n in FAST if n != "winograd_f6x3"]
REQUIRED_FAST = ["winograd_f2x3", "winograd_f4x3", "sfc4_4x3", "sfc6_6x3", "sfc6_7x3"]


def int8(shape, lo=-128, hi=127):
    return RNG.integers(lo, hi + 1, size=shape).astype(np.int8)


# ---------------------------------------------------------------------------- quantisers
def test_quantize_rounds_half_to_even_and_clips_symmetric():
    x = np.array([-300.0, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 126.6, 127.5, 1e9], dtype=np.float32)
    q = quantize(x, 1.0)
    assert q.dtype == np.int8
    assert q.tolist() == [-127, -2, -2, 0, 0, 2, 2, 127, 127, 127]
    assert quantize(x, 1.0, bits=4).tolist() == [-7, -2, -2, 0, 0, 2, 2, 7, 7, 7]
    assert quantize(np.array([1000.0]), 1.0, bits=12).dtype == np.int16
    assert qmax(8) == 127 and qmax(6) == 31 and qmax(4) == 7


def test_quantize_per_channel_and_dequantize_roundtrip():
    w = RNG.standard_normal((5, 3, 3, 3))
    s = weight_scales(w)
    assert np.allclose(s, np.abs(w).reshape(5, -1).max(1) / 127)
    q = quantize(w, s, axis=0)
    assert np.abs(q).reshape(5, -1).max(1).tolist() == [127] * 5  # each channel uses the full range
    back = dequantize(q, s, axis=0, dtype=np.float64)
    assert np.all(np.abs(back - w) <= s.reshape(-1, 1, 1, 1) / 2 + 1e-15)
    z = np.zeros((2, 4))
    assert weight_scales(z).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan, np.inf])
def test_bad_scale_is_named(scale):
    with pytest.raises(ConvError, match="finite and > 0"):
        quantize(np.ones(3, np.float32), scale)
    with pytest.raises(ConvError, match="finite and > 0"):
        dequantize(np.ones(3, np.int8), np.array([1.0, scale, 1.0]), axis=0)


def test_bad_dtypes_bits_and_axis():
    with pytest.raises(ConvError, match="float16/32/64"):
        quantize(np.ones(3, np.int32), 1.0)
    with pytest.raises(ConvError, match="integer codes"):
        dequantize(np.ones(3, np.float32), 1.0)
    for b in (1, 17, True, 8.0):
        with pytest.raises(ConvError, match="bits"):
            quantize(np.ones(3, np.float32), 1.0, bits=b)
    with pytest.raises(ConvError, match="axis"):
        quantize(np.ones((2, 3), np.float32), np.ones(2))
    with pytest.raises(ConvError, match="3 scales for axis 0 of length 2"):
        quantize(np.ones((2, 3), np.float32), np.ones(3), axis=0)
    with pytest.raises(ConvError, match="NaN"):
        quantize(np.array([np.nan], np.float32), 1.0)


# ---------------------------------------------------------------------------- calibration
def test_observer_minmax_percentile_mse():
    v = np.arange(10000, dtype=np.float64).reshape(-1, 1)
    o = Observer(1, "minmax")
    o.update(v[:5000])
    o.update(-v[5000:])
    assert o.thresholds().tolist() == [9999.0]
    assert o.scales().tolist() == [9999.0 / 127]
    p = Observer(1, "percentile", percentile=99.0, sample=1 << 14)
    p.update(v)
    assert p.thresholds()[0] == pytest.approx(np.percentile(v, 99.0))
    # MSE: heavy (Laplace) tails are clipped at 4 bits near the known optimum 5.03 b
    # (Banner et al., ACIQ, 2019); uniform values are not clipped
    m = Observer(1, "mse")
    m.update(np.random.default_rng(0).laplace(size=(30000, 1)))
    assert 4.0 < m.thresholds(4)[0] < 6.0 < m.amax[0]
    u = Observer(1, "mse")
    u.update(RNG.uniform(-1, 1, (20000, 1)))
    assert u.thresholds(8)[0] > 0.9
    # per-column (per-frequency) scales
    c = Observer(3, "minmax")
    c.update(np.array([[1.0, -2.0, 0.0], [0.5, 1.0, 0.0]]))
    assert c.scales(4).tolist() == [1 / 7, 2 / 7, 1.0]


def test_observer_errors():
    with pytest.raises(ConvError, match="calibration method"):
        Observer(1, "kl")
    with pytest.raises(ConvError, match="no calibration samples"):
        Observer(1).scales()
    o = Observer(2)
    with pytest.raises(ConvError, match="last axis of 2"):
        o.update(np.ones((4, 3)))
    with pytest.raises(ConvError, match="NaN"):
        o.update(np.array([[np.nan, 1.0]]))
    with pytest.raises(ConvError, match="float"):
        o.update(np.ones((2, 2), np.int8))


def test_quant_config_errors():
    for kw, msg in (({"algorithm": "fft"}, "unknown quantised algorithm"), ({"bits": 9}, "bits must be <= 8"),
                    ({"transform_bits": 1}, "bits must be an integer"), ({"calibration": "kl"}, "calibration"),
                    ({"fallback": "sfc6_6x3"}, "fallback"), ({"percentile": 0}, "percentile")):
        with pytest.raises(ConvError, match=msg):
            QuantConfig(**kw)
    assert QuantConfig("sfc6_6x3", transform_bits=None).label() == "sfc6_6x3 int8/exact"


# ---------------------------------------------------------------------------- exact int8 convolution
SPECS = [
    dict(x=(2, 6, 11, 13), w=(4, 3, 3, 3), stride=(1, 2), padding=1, dilation=(1, 2), groups=2),
    dict(x=(1, 8, 9, 9), w=(8, 1, 3, 3), stride=1, padding=1, dilation=1, groups=8),  # depthwise
    dict(x=(3, 5, 7, 6), w=(7, 5, 1, 1), stride=1, padding=0, dilation=1, groups=1),  # pointwise
    dict(x=(1, 3, 12, 10), w=(4, 3, 5, 3), stride=2, padding=(2, 1, 0, 3), dilation=1, groups=1),
    # >= 4 output channels per group: the register-blocked direct kernel, with a partial block
    dict(x=(2, 6, 11, 13), w=(10, 3, 3, 2), stride=(2, 1), padding=(1, 0, 2, 1), dilation=(2, 1), groups=2),
]


@pytest.mark.parametrize("method", ["direct", "im2col"])
@pytest.mark.parametrize("case", SPECS)
def test_conv2d_int8_is_bit_exact(method, case):
    x, w = int8(case["x"]), int8(case["w"])
    kw = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    y = conv2d_int8(x, w, method=method, **kw)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, reference.conv2d(x, w, **kw))


@pytest.mark.parametrize("method", ["direct", "im2col"])
def test_conv2d_int8_extremes_in_both_gemm_dtypes(method):
    # all products at +-128*127: the largest sums int8 codes can make
    for C in (8, 140):  # bound 128*127*C*9 below 2**24 (float32 GEMM), then above (float64)
        x = np.where(RNG.random((1, C, 6, 6)) < 0.5, -128, 127).astype(np.int8)
        w = np.full((6, C, 3, 3), -127, np.int8)
        w[1::2] = 127
        bound = accumulation_bound(w)
        assert intconv.gemm_dtype(bound) == (np.float32 if C == 8 else np.float64)
        np.testing.assert_array_equal(conv2d_int8(x, w, padding=1, method=method),
                                      reference.conv2d(x, w, padding=1))
    xs = np.full((1, C, 3, 3), -128, np.int8)
    assert conv2d_int8(xs, w, method=method)[0, 1, 0, 0] == -128 * 127 * C * 9


def test_conv2d_int8_overflow_and_dtype_errors():
    w = np.full((1, 16384, 3, 3), 127, np.int8)  # 128 * 127 * 147456 >= 2**31
    assert accumulation_bound(w) >= 2**31
    with pytest.raises(ConvError, match="overflow"):
        conv2d_int8(np.zeros((1, 16384, 3, 3), np.int8), w)
    with pytest.raises(ConvError, match="input must be int8"):
        conv2d_int8(np.zeros((1, 2, 3, 3), np.int16), np.zeros((1, 2, 3, 3), np.int8))
    with pytest.raises(ConvError, match="weight must be int8"):
        conv2d_int8(np.zeros((1, 2, 3, 3), np.int8), np.zeros((1, 2, 3, 3), np.float32))
    with pytest.raises(ConvError, match="method"):
        conv2d_int8(np.zeros((1, 2, 3, 3), np.int8), np.zeros((1, 2, 3, 3), np.int8), method="fft")
    with pytest.raises(ConvError, match="groups"):
        conv2d_int8(np.zeros((1, 3, 3, 3), np.int8), np.zeros((2, 1, 3, 3), np.int8), groups=2)


# the int8 microkernel: >= 8 output channels per group; partial k-blocks, tails of rows,
# channels per group not a multiple of 4, strides, dilation, asymmetric padding, batches
MK_SPECS = [
    dict(x=(2, 13, 9, 17), w=(40, 13, 3, 3), stride=1, padding=1, dilation=1, groups=1),
    dict(x=(1, 24, 10, 26), w=(48, 8, 3, 3), stride=(2, 1), padding=(1, 2, 0, 1), dilation=(1, 2), groups=3),
    dict(x=(3, 64, 7, 7), w=(33, 64, 1, 1), stride=1, padding=0, dilation=1, groups=1),
    dict(x=(1, 3, 23, 23), w=(16, 3, 7, 7), stride=2, padding=3, dilation=1, groups=1),
    dict(x=(1, 16, 5, 30), w=(32, 8, 5, 5), stride=1, padding=2, dilation=1, groups=2),
    # 1x1 on planes of >= 784 pixels: the pointwise tiles (pixels in the lanes), C % 4 != 0
    dict(x=(2, 22, 28, 30), w=(20, 22, 1, 1), stride=1, padding=0, dilation=1, groups=1),
    # a strided 1x1 (ResNet's downsampling): the pointwise tiles on every other pixel
    dict(x=(1, 13, 56, 57), w=(24, 13, 1, 1), stride=2, padding=0, dilation=1, groups=1),
    # a strided 1x1 on the channel tiles: packed alone, every (2, 3)-th pixel
    dict(x=(1, 24, 15, 17), w=(32, 12, 1, 1), stride=(2, 3), padding=0, dilation=1, groups=2),
]


@pytest.mark.parametrize("path", mk8.available_paths())
def test_int8_microkernel_every_path_is_bit_exact(path, monkeypatch):
    monkeypatch.setenv("CONVOLAB_INT8_PATH", path)
    for case in MK_SPECS:
        x, w = int8(case["x"]), int8(case["w"])
        kw = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
        spec = ConvSpec.from_arrays(x, w, None, kw["stride"], kw["padding"], kw["dilation"],
                                    kw["groups"])
        packed = intconv.microkernel_packed(spec, w)
        assert packed.path == path and packed.pointwise == (case["w"][2:] == (1, 1)
                                                            and spec.OH * spec.OW >= 784)
        ref = reference.conv2d(x, w, **kw)
        np.testing.assert_array_equal(conv2d_int8(x, w, method="direct", **kw), ref,
                                      err_msg=f"{path} {case}")
        # the fused output stages equal the same stage applied to the exact sums
        sc = np.linspace(1e-3, 3e-3, w.shape[0])
        for output, extra in (("float32", {}), ("int8", {"out_scale": 0.5})):
            got = plan_int8(x.shape, w, **kw, output=output, scale=sc, activation="relu6",
                            **extra)(x)
            want = plan_int8(x.shape, w, **kw, method="im2col", output=output, scale=sc,
                             activation="relu6", **extra)(x)
            np.testing.assert_array_equal(got, want, err_msg=f"{path} {output} {case}")
    # extremes: every product +-128*127 (after the shift 0..255 x -127..127)
    x = np.where(RNG.random((1, 20, 6, 14)) < 0.5, -128, 127).astype(np.int8)
    wx = np.full((32, 20, 3, 3), -127, np.int8)
    wx[1::2] = 127
    np.testing.assert_array_equal(conv2d_int8(x, wx, padding=1), reference.conv2d(x, wx, padding=1))
    assert mk8.Packed(wx, 1, path).path == path


@pytest.mark.parametrize("case", [
    dict(x=(2, 6, 11, 13), w=(12, 1, 3, 3), stride=(2, 1), padding=(1, 2, 0, 1), dilation=(1, 2)),
    dict(x=(1, 5, 9, 9), w=(5, 1, 5, 5), stride=1, padding=2, dilation=1),
    dict(x=(1, 3, 8, 20), w=(3, 1, 3, 3), stride=2, padding=0, dilation=2),
    # the 2-strided layers of inverted-residual networks (3x3 and 5x5), odd sizes, > 64 columns
    dict(x=(2, 5, 13, 151), w=(5, 1, 3, 3), stride=2, padding=1, dilation=1),
    dict(x=(1, 4, 9, 17), w=(8, 1, 5, 5), stride=2, padding=2, dilation=1),
    # one output per channel, more than a block of 16 and a partial one: the blocked kernel
    dict(x=(2, 40, 14, 15), w=(40, 1, 3, 3), stride=1, padding=1, dilation=1),
    dict(x=(1, 36, 17, 12), w=(36, 1, 5, 5), stride=2, padding=(1, 2, 1, 2), dilation=1),
    dict(x=(1, 20, 9, 9), w=(20, 1, 3, 3), stride=1, padding=2, dilation=2),
])
def test_depthwise_int8_exact(case):
    x, w = int8(case["x"]), int8(case["w"])
    kw = {k: case[k] for k in ("stride", "padding", "dilation")}
    G = case["x"][1]
    np.testing.assert_array_equal(conv2d_int8(x, w, groups=G, **kw),
                                  reference.conv2d(x, w, groups=G, **kw))
    # extremes: every product -128 * -128
    xe = np.full(case["x"], -128, np.int8)
    we = np.full(case["w"], -128, np.int8)
    np.testing.assert_array_equal(conv2d_int8(xe, we, groups=G, **kw),
                                  reference.conv2d(xe, we, groups=G, **kw))
    # its fused output stages: the same floats and codes as im2col's int32 sums staged after
    sc = np.linspace(1e-2, 3e-2, w.shape[0])
    for output, extra in (("float32", {}), ("int8", {"out_scale": 0.25})):
        got, want = (plan_int8(x.shape, w, groups=G, **kw, method=m, output=output, scale=sc,
                               bias=np.arange(w.shape[0]) - 2.0, activation="relu6", **extra)(x)
                     for m in ("direct", "im2col"))
        np.testing.assert_array_equal(got, want)


def test_depthwise_int8_blocked_equals_per_plane(monkeypatch):
    # the channel-blocked kernel and the per-plane one: the same int32 sums and stages
    x, w = int8((2, 40, 13, 11)), int8((40, 1, 3, 3))
    kw = dict(groups=40, stride=2, padding=1)
    sc = np.linspace(1e-2, 3e-2, 40)
    outs = []
    for blocked in (True, False):
        monkeypatch.setattr(mk8, "DW_BLOCKED", blocked)
        outs.append([conv2d_int8(x, w, **kw)] + [
            plan_int8(x.shape, w, **kw, output=o, scale=sc, activation="relu", **e)(x)
            for o, e in (("float32", {}), ("int8", {"out_scale": 0.5}))])
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_plan_int8_prepares_once_and_checks_its_calls():
    w = int8((40, 16, 3, 3))
    p = plan_int8((2, 16, 9, 11), w, padding=1)
    assert p.path == mk8.best_path() and plan_int8((2, 16, 9, 11), w, method="im2col").path == "im2col"
    assert plan_int8((1, 8, 5, 5), int8((8, 1, 3, 3)), groups=8).path == "loops"
    out = np.empty(p.spec.out_shape, np.int32)
    for _ in range(2):  # the same plan, two inputs
        x = int8((2, 16, 9, 11))
        assert p(x, out) is out
        np.testing.assert_array_equal(out, reference.conv2d(x, w, padding=1))
    with pytest.raises(ConvError, match=r"input of shape \(1, 16, 9, 11\)"):
        p(int8((1, 16, 9, 11)))
    with pytest.raises(ConvError, match="out must be a C-contiguous int32"):
        p(x, np.empty(p.spec.out_shape, np.float32))
    with pytest.raises(ConvError, match="method"):
        plan_int8((2, 16, 9, 11), w, method="winograd")


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_plan_int8_output_stages_same_on_every_method(activation):
    rng = np.random.default_rng(3)
    x, w = int8((2, 16, 9, 11)), int8((40, 16, 3, 3))
    sc, b = rng.random(40) * 2e-3, rng.standard_normal(40) * 3
    exact = reference.conv2d(x, w, padding=1) * sc[None, :, None, None] + b[None, :, None, None]
    if activation:
        exact = np.clip(exact, 0, 6 if activation == "relu6" else np.inf)
    got = {}
    for m in ("direct", "im2col"):
        f = plan_int8(x.shape, w, padding=1, method=m, output="float32", scale=sc, bias=b,
                      activation=activation)(x)
        q = plan_int8(x.shape, w, padding=1, method=m, output="int8", scale=sc, bias=b,
                      activation=activation, out_scale=0.04)(x)
        assert f.dtype == np.float32 and q.dtype == np.int8
        np.testing.assert_allclose(f, exact, rtol=1e-6, atol=1e-5)
        inside = np.abs(exact) < 126 * 0.04  # not saturated: within half a step
        assert np.abs(q * 0.04 - exact)[inside].max() <= 0.02 * (1 + 1e-5)
        assert np.all(q[exact >= 127.5 * 0.04] == 127) and q.min() >= -127
        got[m] = (f, q)
    np.testing.assert_array_equal(got["direct"][0], got["im2col"][0])
    np.testing.assert_array_equal(got["direct"][1], got["im2col"][1])


def test_plan_int8_output_stage_errors():
    w = int8((8, 4, 1, 1))
    with pytest.raises(ConvError, match="output must be one of"):
        plan_int8((1, 4, 3, 3), w, output="uint8")
    with pytest.raises(ConvError, match="needs scale"):
        plan_int8((1, 4, 3, 3), w, output="float32")
    with pytest.raises(ConvError, match="scale must be a finite float or 8"):
        plan_int8((1, 4, 3, 3), w, output="float32", scale=np.ones(3))
    with pytest.raises(ConvError, match="out_scale > 0"):
        plan_int8((1, 4, 3, 3), w, output="int8", scale=1.0, out_scale=0.0)
    with pytest.raises(ConvError, match="activation must be"):
        plan_int8((1, 4, 3, 3), w, output="float32", scale=1.0, activation="gelu")
    with pytest.raises(ConvError, match="need output='float32' or 'int8'"):
        plan_int8((1, 4, 3, 3), w, bias=np.zeros(8))


def test_int8_paths_choice_and_shifted_bound_fallback(monkeypatch):
    assert "generic" in mk8.available_paths()
    monkeypatch.setenv("CONVOLAB_INT8_PATH", "avx9000")
    with pytest.raises(ConvError, match="CONVOLAB_INT8_PATH must be one of"):
        mk8.best_path()
    monkeypatch.delenv("CONVOLAB_INT8_PATH")
    assert mk8.best_path() == mk8.available_paths()[0]
    # 128 * sum|w| < 2**31 <= 255 * sum|w|: the shifted inputs could overflow -> plain loops
    w = np.full((8, 8192, 3, 3), 127, np.int8)
    x = int8((1, 8192, 3, 3))
    spec = ConvSpec.from_arrays(x, w, None, 1, 0, 1, 1)
    assert accumulation_bound(w) < 2**31 <= mk8.accumulation_bound_u8(w)
    assert intconv.microkernel_packed(spec, w) is None
    np.testing.assert_array_equal(conv2d_int8(x, w), reference.conv2d(x, w))
    # depthwise stays on the loops too
    dw = ConvSpec.from_arrays(int8((1, 8, 5, 5)), int8((8, 1, 3, 3)), None, 1, 1, 1, 8)
    assert intconv.microkernel_packed(dw, int8((8, 1, 3, 3))) is None


# ---------------------------------------------------------------------------- integer fast algorithms
def test_transform_entries_sfc_unit_winograd_not():
    for name in ("sfc4_4x3", "sfc6_6x3", "sfc6_7x3", "sfc6_6x3_nested", "sfc6_6x5"):
        t = qfast.transforms(name)
        assert t.unit_transforms, name
        assert set(np.unique(t.BT_int)) <= {-1, 0, 1} and set(np.unique(t.G_int)) <= {-1, 0, 1}
    f4 = qfast.transforms("winograd_f4x3")
    assert not f4.unit_transforms and f4.d_g == 576 and np.abs(f4.BT_int).max() == 25
    f2 = qfast.transforms("winograd_f2x3")
    assert f2.d_b == 1 and np.abs(f2.BT_int).max() == 1 and f2.d_g == 4  # G holds halves
    assert qfast.transforms("sfc6_6x3").d_a == 36 and qfast.transforms("sfc4_4x3").d_a == 16


@pytest.mark.parametrize("name", REQUIRED_FAST + ["sfc6_6x3_nested"])
def test_input_transform_of_codes_is_exact_integer(name):
    t = qfast.transforms(name)
    x = np.where(RNG.random((2, 3, 13, 11)) < 0.5, -128, 127).astype(np.int8)  # worst case magnitudes
    spec = ConvSpec.from_shapes(x.shape, (4, 3, 3, 3), padding=1, dtype=np.int8)
    V = qfast.input_transform(spec, x, t, np.float32)
    exact = qfast.tiles(spec, x, t).astype(np.int64) @ t.BT_int.T
    np.testing.assert_array_equal(V, exact)
    assert np.abs(exact).max() <= 128 * np.abs(t.BT_int).sum(1).max()


@pytest.mark.parametrize("name", EXACT_FAST)
def test_exact_fast_conv_bit_exact(name):
    t = qfast.transforms(name)
    r = t.r
    for xs, ws, pad, groups in (((2, 4, 2 * t.m + 3, t.m + 1), (6, 2, r, r), 1, 2),
                                ((1, 3, 9, 17), (3, 1, r, r), (0, 2, 1, 0), 3)):
        x, w = int8(xs), int8(ws, -127, 127)
        spec = ConvSpec.from_arrays(x, w, padding=pad, groups=groups)
        np.testing.assert_array_equal(qfast.exact_fast_conv(spec, x, w, t),
                                      reference.conv2d(x, w, padding=pad, groups=groups))


def test_channel_reduce_exact_in_float32_at_int32_codes():
    spec = ConvSpec.from_shapes((1, 900, 3, 3), (2, 900, 3, 3), dtype=np.float32)
    U = np.full((2, 900, 5), 127.0)
    U[1] = -127
    V = RNG.choice([-127.0, 127.0], size=(1, 900, 1, 1, 5))
    M = qfast.channel_reduce(spec, U, V, np.float32)  # |partial sums| <= 900 * 127**2 < 2**24
    exact = np.einsum("kcp,nctup->nktup", U.astype(np.int64), V.astype(np.int64))
    np.testing.assert_array_equal(M, exact)


def relu_data(shape, seed=0):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal(shape), 0).astype(np.float32)


@pytest.mark.parametrize("name", REQUIRED_FAST)
def test_exact_mode_layer_equals_direct_int8(name):
    x = relu_data((2, 6, 15, 14))
    w = (np.random.default_rng(1).standard_normal((4, 6, 3, 3)) * 0.2).astype(np.float32)
    b = np.arange(4, dtype=np.float32)
    fast = QuantizedConv(w, b, padding=1, config=QuantConfig(name, transform_bits=None)).calibrate(x)
    direct = QuantizedConv(w, b, padding=1, config=QuantConfig("direct")).calibrate(x)
    assert fast.label == f"{name} int8/exact"
    np.testing.assert_array_equal(fast(x), direct(x))


@pytest.mark.parametrize("bits", [8, 6, 4])
@pytest.mark.parametrize("name", ["direct", "im2col"] + REQUIRED_FAST)
def test_quantised_error_within_bound(name, bits):
    """|y_q - conv(x, w)| <= the a-priori bound of `QuantizedConv.error_bound` (no clipping)."""
    x = relu_data((2, 5, 14, 15), seed=bits)
    w = np.random.default_rng(7).standard_normal((3, 5, 3, 3)).astype(np.float32)
    cfg = QuantConfig(name, bits=bits if name in ("direct", "im2col") else 8, transform_bits=bits)
    q = QuantizedConv(w, None, padding=1, config=cfg).calibrate(x)
    y = q(x).astype(np.float64)
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    bound = q.error_bound(x)
    err = np.abs(y - ref)
    slack = 1e-6 * np.abs(ref).max()  # float32 output rounding
    assert np.all(err <= bound + slack)
    assert err.max() > 0  # it is quantised


def rel_rmse(name, bits=8):
    x = relu_data((2, 16, 24, 24), seed=3)
    w = (np.random.default_rng(5).standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32)
    cfg = QuantConfig(name, transform_bits=bits)
    y = QuantizedConv(w, padding=1, config=cfg).calibrate(x)(x).astype(np.float64)
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    return float(np.sqrt(np.mean((y - ref) ** 2) / np.mean(ref**2)))


def test_documented_int8_errors_and_sfc_vs_winograd():
    """The relative RMSE of the module notes (random ReLU data, 16 channels): SFC-6 close to direct
    int8, Winograd F(4x4) several times worse."""
    e = {n: rel_rmse(n) for n in ["direct"] + REQUIRED_FAST}
    assert e["direct"] < 0.015
    assert e["sfc6_6x3"] < 1.5 * e["direct"] and e["sfc6_7x3"] < 1.5 * e["direct"]
    assert e["sfc6_6x3"] <= 0.35 * e["winograd_f4x3"]
    assert e["sfc6_6x3"] <= 1.3 * e["winograd_f2x3"]
    assert e["winograd_f4x3"] > 3 * e["direct"]
    e4 = {n: rel_rmse(n, 4) for n in ("sfc6_6x3", "winograd_f4x3")}
    assert e4["winograd_f4x3"] > 1.0 > 0.3 > e4["sfc6_6x3"]  # F(4x4) useless at 4 bits


# ---------------------------------------------------------------------------- the layer
def test_layer_fallback_calibration_methods_and_errors():
    w = np.random.default_rng(2).standard_normal((4, 3, 3, 3)).astype(np.float32)
    x = relu_data((1, 3, 10, 10))
    q = QuantizedConv(w, stride=2, config=QuantConfig("sfc6_6x3"))
    assert q.algorithm == "im2col" and "stride" in q.note
    with pytest.raises(ConvError, match="not calibrated"):
        q(x)
    q.calibrate(x)
    np.testing.assert_array_equal(
        q(x), QuantizedConv(w, stride=2, config=QuantConfig("im2col")).calibrate(x)(x))
    five = QuantizedConv(np.ones((2, 3, 5, 5), np.float32), config=QuantConfig("winograd_f4x3"))
    assert five.algorithm == "im2col" and "(got 5x5)" in five.note
    for method in ("percentile", "mse"):
        qm = QuantizedConv(w, padding=1, config=QuantConfig("sfc6_6x3", calibration=method)).calibrate([x, 2 * x])
        assert qm.s_v.shape == (88,) and np.all(qm.s_v > 0)
        assert qm(x).dtype == np.float32
    with pytest.raises(ConvError, match="input must be float"):
        q(x.astype(np.int8))
    with pytest.raises(ConvError, match="weights must be float"):
        QuantizedConv(w.astype(np.int8))
    with pytest.raises(ConvError, match="bias must have shape"):
        QuantizedConv(w, np.ones(3))
    with pytest.raises(ConvError, match="QuantConfig"):
        QuantizedConv(w, config="sfc6_6x3")


def test_direct_and_im2col_layers_are_bit_identical():
    x = relu_data((2, 8, 9, 9), seed=4)
    w = np.random.default_rng(6).standard_normal((8, 1, 3, 3)).astype(np.float32)
    outs = [QuantizedConv(w, np.ones(8), padding=1, groups=8, config=QuantConfig(m, bits=b)).calibrate(x)(x)
            for b in (8, 5) for m in ("direct", "im2col")]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[2], outs[3])
    assert not np.array_equal(outs[0], outs[2])
