"""convolab.compile(model, example, quantize=QuantConfig(...)): int8 compiled models.

The quantised model is checked against an emulation of its arithmetic written here from the
documented stages (`convolab.runtime.quantized`): per-tensor scales max|x| / 127 of the float
graph's values, codes by `convolab.quant.quantize`, exact integer sums by the float64
reference, the output stage ``fma(float32(sum), float32(s_x s_w / d), float32(b / d))`` rounded
half to even and clamped for int8 outputs; the rest in float. A code off by one step would move
the output by about 1e-2 of its range: the tolerance (1e-4) catches it.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import convolab  # noqa: E402
from convolab.errors import ConvError  # noqa: E402
from convolab.quant import QuantConfig, quantize  # noqa: E402
from convolab.reference import conv2d as ref_conv  # noqa: E402


def bn(c):
    b = nn.BatchNorm2d(c)
    with torch.no_grad():
        b.weight.uniform_(0.5, 1.5)
        b.bias.normal_(0, 0.2)
        b.running_mean.normal_(0, 0.2)
        b.running_var.uniform_(0.5, 2.0)
    return b


class Block(nn.Module):
    """An inverted residual: 1x1 expansion + ReLU6, depthwise 3x3 + ReLU6, 1x1 projection,
    residual add."""

    def __init__(self, c, e, stride=1, k=3):
        super().__init__()
        self.res = stride == 1
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), bn(e), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(e, e, k, stride, k // 2, groups=e, bias=False), bn(e),
                                nn.ReLU6())
        self.proj = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), bn(c))

    def forward(self, x):
        y = self.proj(self.dw(self.expand(x)))
        return x + y if self.res else y


class Net(nn.Module):
    """Stem 3x3/2 + ReLU, two residual blocks, a dense 3x3 + SiLU (an activation the int8
    stage does not apply), a grouped 3x3, max pooling, global pooling, a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), bn(16), nn.ReLU())
        self.b1 = Block(16, 48)
        self.b2 = Block(16, 64, k=5)
        self.dense = nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1), bn(32), nn.SiLU())
        self.grouped = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=4), nn.Hardtanh(-1.0, 2.5))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.b2(self.b1(self.stem(x)))
        x = F.max_pool2d(self.grouped(self.dense(x)), 2)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    cal = [torch.randn(2, 3, 32, 32, generator=g) for _ in range(3)]
    x = torch.randn(3, 3, 32, 32, generator=g)
    return cal, x


@pytest.fixture(scope="module")
def qm(net, data):
    cal, x = data
    return convolab.compile(net, x[:1], quantize=QuantConfig("direct"), calibration=cal,
                            threads=2)


def _stage_codes(acc, scale, bias, lo, hi):
    """The int8 output stage: clamp(rint(fma(float32(acc), float32(scale), float32(bias))))."""
    v = (acc.astype(np.float32).astype(np.float64) * scale.astype(np.float32)[None, :, None, None]
         + bias.astype(np.float32)[None, :, None, None]).astype(np.float32)
    lo_c = max(-127.0, float(np.rint(np.float32(lo))))
    hi_c = min(127.0, float(np.rint(np.float32(hi))))
    return np.clip(np.rint(v), lo_c, hi_c).astype(np.int8)


def emulate(qm, x: np.ndarray) -> np.ndarray:
    """The quantised model's arithmetic, layer by layer, in NumPy / PyTorch."""
    g = qm.graph
    vals: dict = {g.inputs[0]: x}
    codes: dict = {}
    act_f = {"none": lambda t: t, "relu": torch.relu, "silu": F.silu}
    for i, n in enumerate(g.nodes):
        if n.kind == "input":
            continue
        if n.kind == "conv":
            c = qm._convs[i]
            xi = n.inputs[0]
            q = codes[xi] if xi in codes else quantize(vals[xi], qm.scales[xi])
            acc = ref_conv(q.astype(np.float64), c.wq.astype(np.float64), None, **c.args)
            b = np.zeros(c.wq.shape[0]) if c.bias is None else c.bias
            lo, hi = {"relu": (0.0, np.inf), "clamp": (c.lo, c.hi)}.get(c.act, (-np.inf, np.inf))
            if c.s_y is not None:
                d = c.s_y
                codes[i] = _stage_codes(acc, c.s_x * c.s_w / d, b / d, lo / d, hi / d)
                continue
            y = (acc.astype(np.float32).astype(np.float64)
                 * (c.s_x * c.s_w).astype(np.float32)[None, :, None, None]
                 + b.astype(np.float32)[None, :, None, None]).astype(np.float32)
            if c.residual:
                y = y + vals[n.inputs[1]]
            t = torch.from_numpy(y)
            t = t.clamp(lo, hi) if c.act in ("relu", "clamp") else act_f[c.act](t)
            vals[i] = t.numpy()
            continue
        ins = [torch.from_numpy(np.ascontiguousarray(vals[j])) for j in n.inputs]
        a = n.attrs
        if n.kind == "maxpool":
            t = F.max_pool2d(ins[0], a["k"], a["stride"], a["padding"], a["dilation"], a["ceil"])
        elif n.kind == "adaptive_avg":
            t = F.adaptive_avg_pool2d(ins[0], a["size"])
        elif n.kind == "reshape":
            t = ins[0].reshape(ins[0].shape[0], -1)
        elif n.kind == "linear":
            t = F.linear(ins[0], torch.from_numpy(a["w"]), torch.from_numpy(a["b"]))
        else:
            raise AssertionError(f"emulate: no {n.kind}")
        vals[i] = t.numpy()
    return vals[g.outputs[0]]


def test_int8_network_matches_the_emulated_arithmetic(qm, data):
    _, x = data
    y = qm(x)
    ref = emulate(qm, x.numpy())
    assert isinstance(y, torch.Tensor) and y.shape == (3, 10)
    err = float(np.abs(y.numpy() - ref).max() / np.abs(ref).max())
    assert err < 1e-4, err


def test_int8_outputs_where_only_convolutions_read_them(qm):
    outs = {name.split(" (")[0]: epi for name, _, _, _, epi, _ in
            ((L.name, L.where, L.spec, L.algorithm, L.epilogue, L.runs) for L in qm.layers())}
    kinds = [e.split("-> ")[1] for e in outs.values()]
    # both expansions and both depthwise layers hand int8 codes on; the stem (a residual add
    # reads it too), the projections (residual adds), the SiLU layer and the grouped layer
    # before pooling write float32
    assert kinds == ["float32", "int8", "int8", "float32", "int8", "int8", "float32", "float32",
                     "float32"], outs
    assert all(L.algorithm == "direct int8" for L in qm.layers())


def test_scales_are_the_calibrated_ranges(net, data, qm):
    """minmax: every value a convolution reads gets max |x| / 127 over the calibration set."""
    cal, _ = data
    x_in = qm.graph.inputs[0]
    amax = max(float(c.abs().max()) for c in cal)
    assert qm.scales[x_in] == pytest.approx(amax / 127, rel=1e-12)
    assert set(qm.scales) == {c.node.inputs[0] for c in qm._convs.values()}


def test_close_to_float_and_same_bits_on_any_thread_count(net, data, qm):
    cal, x = data
    with torch.no_grad():
        ref = net(x)
    y2 = qm(x)
    assert float((y2 - ref).abs().max() / ref.abs().max()) < 0.05
    q1 = convolab.compile(net, x[:1], quantize=QuantConfig("direct"), calibration=cal, threads=1)
    assert torch.equal(q1(x), y2)


def test_arrays_in_arrays_out_and_new_batch_sizes(qm, data):
    _, x = data
    a = qm(x.numpy())
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    np.testing.assert_array_equal(a, qm(x).numpy())
    one = qm(x[1:2])
    np.testing.assert_array_equal(one.numpy(), a[1:2])


def test_fast_algorithm_runs_the_dense_3x3_layer(net, data):
    cal, x = data
    q = convolab.compile(net, x[:1], quantize=QuantConfig("sfc4_4x3"), calibration=cal, threads=2)
    algos = [L.algorithm for L in q.layers()]
    assert algos.count("sfc4_4x3 int8/t8") == 1, algos  # the dense 3x3 stride-1 layer only
    with torch.no_grad():
        ref = net(x)
    y = q(x)
    assert float((y - ref).abs().max() / ref.abs().max()) < 0.08


def test_bad_input_and_options_are_refused(net, data, qm):
    cal, x = data
    with pytest.raises(ConvError, match="float32"):
        qm(x.double())
    with pytest.raises(ConvError, match="shape"):
        qm(x[:, :2])
    bad = x.clone()
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(ConvError, match="non-finite"):
        qm(bad)
    with pytest.raises(ConvError, match="leave algorithm"):
        convolab.compile(net, x[:1], quantize=QuantConfig("direct"), algorithm="direct")
    with pytest.raises(ConvError, match="calibration= is for quantize="):
        convolab.compile(net, x[:1], calibration=cal)
    with pytest.raises(ConvError, match="QuantConfig"):
        convolab.compile(net, x[:1], quantize="int8")
    bad_cal = [c.clone() for c in cal]
    bad_cal[1][0, 0, 0, 0] = float("inf")
    with pytest.raises(ConvError, match="non-finite"):
        convolab.compile(net, x[:1], quantize=QuantConfig("direct"), calibration=bad_cal)


@pytest.mark.parametrize("shape, w_shape, kw", [
    ((1, 16, 9, 9), (32, 16, 3, 3), dict(padding=1)),  # channel tiles
    ((2, 8, 28, 28), (24, 8, 1, 1), {}),  # pointwise tiles
    ((1, 24, 10, 10), (24, 1, 5, 5), dict(padding=2, stride=2, groups=24)),  # depthwise
    ((1, 8, 6, 6), (4, 2, 3, 3), dict(padding=1, groups=4)),  # few channels per group: loops
])
@pytest.mark.parametrize("output", ["int8", "float32"])
def test_bound_int8_plans_give_the_plans_results(shape, w_shape, kw, output):
    from convolab.quant import plan_int8

    rng = np.random.default_rng(3)
    x = rng.integers(-127, 128, shape, dtype=np.int8)
    w = rng.integers(-127, 128, w_shape, dtype=np.int8)
    K = w_shape[0]
    extra = dict(out_scale=40.0) if output == "int8" else {}
    p = plan_int8(shape, w, **kw, output=output, scale=np.linspace(0.5, 1.5, K),
                  bias=np.arange(K) - K / 2, activation=("clamp", -300.0, 2000.0), **extra)
    want = p(x, None, 2)
    y = np.full_like(want, 7)
    run = p.bind(x, y, 2)
    run()
    np.testing.assert_array_equal(y, want)
    x[...] = rng.integers(-127, 128, shape, dtype=np.int8)  # the bound call reads x again
    run()
    np.testing.assert_array_equal(y, p(x, None, 1))
    with pytest.raises(ConvError, match="bind takes"):
        p.bind(x[:, :, :-1], y)


def test_recalibration_uses_only_its_own_samples_and_a_failed_one_changes_nothing(net, data):
    cal, x = data
    q = convolab.compile(net, x[:1], quantize=QuantConfig("sfc4_4x3"), calibration=cal,
                         threads=2)
    before = dict(q.scales)
    y = q(x)
    bad = [cal[0], cal[1].clone()]
    bad[1][0, 0, 0, 0] = float("nan")
    with pytest.raises(ConvError, match="non-finite"):
        q.calibrate(bad)
    assert q.scales == before
    assert torch.equal(q(x), y)
    q.calibrate([c * 0.5 for c in cal])  # these samples alone: the input's range halves
    x_in = q.graph.inputs[0]
    assert q.scales[x_in] == pytest.approx(before[x_in] / 2, rel=1e-12)  # not max(old, new)
    q.calibrate(cal)
    assert q.scales == before and torch.equal(q(x), y)
