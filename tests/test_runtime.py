"""convolab.runtime.compile: a captured PyTorch model run by convolab's runtime.

Every model is checked against the unfused module run by PyTorch in float64 (a deep copy,
``.double()``), relative to the largest reference value; the passes are checked on the
optimised graph (``cm.graph``: folded counts, node kinds, the fused convolution's epilogue).
Small models and images only: every test runs in well under a few seconds once the kernels
are compiled.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import convolab  # noqa: E402
from convolab.runtime import compile  # noqa: E402, A004

#: max |y - ref| / max |ref| allowed for float32 against the float64 reference
TOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def bn(c: int) -> nn.BatchNorm2d:
    """A BatchNorm with non-trivial affine parameters and running statistics."""
    b = nn.BatchNorm2d(c)
    with torch.no_grad():
        b.weight.uniform_(0.5, 1.5)
        b.bias.normal_()
        b.running_mean.normal_()
        b.running_var.uniform_(0.5, 2.0)
    return b


def reference(model, x):
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double())


def rel_err(y, ref) -> float:
    y = torch.as_tensor(y)
    return float((y.double() - ref).abs().max() / ref.abs().max())


def check(model, x, tol=TOL, fallback=False, **kw):
    """Compile ``model`` at ``x``, assert its output matches float64 PyTorch; return it."""
    model = model.eval()
    cm = compile(model, x, **kw)
    if not fallback:
        assert cm.fallback_ops == {}
    y = cm(x)
    ref = reference(model, x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    assert tuple(y.shape) == tuple(ref.shape)
    err = rel_err(y, ref)
    assert err <= tol, f"relative error {err:.3e} > {tol:.1e}"
    return cm


def kinds(cm) -> list[str]:
    return [n.kind for n in cm.graph.nodes]


def convs(cm):
    return [n for n in cm.graph.nodes if n.kind == "conv"]


# ============================================================================ folding, fusion
ACTIVATIONS = [
    ("relu", lambda: nn.ReLU(), "relu", None),
    ("relu_inplace", lambda: nn.ReLU(inplace=True), "relu", None),
    ("relu6", lambda: nn.ReLU6(), "clamp", (0.0, 6.0)),
    ("relu6_inplace", lambda: nn.ReLU6(inplace=True), "clamp", (0.0, 6.0)),
    ("hardtanh", lambda: nn.Hardtanh(-2.0, 3.0), "clamp", (-2.0, 3.0)),
    ("clamp", lambda: Lambda(lambda t: torch.clamp(t, -1.0, 2.0)), "clamp", (-1.0, 2.0)),
    ("clamp_min", lambda: Lambda(lambda t: t.clamp(min=0.5)), "clamp", (0.5, float("inf"))),
    ("clamp_max", lambda: Lambda(lambda t: t.clamp(max=0.25)), "clamp", (float("-inf"), 0.25)),
    ("silu", lambda: nn.SiLU(), "silu", None),
    ("silu_inplace", lambda: nn.SiLU(inplace=True), "silu", None),
    ("hardswish", lambda: nn.Hardswish(), "hardswish", None),
    ("hardsigmoid", lambda: nn.Hardsigmoid(), "hardsigmoid", None),
    ("sigmoid", lambda: nn.Sigmoid(), "sigmoid", None),
    ("gelu", lambda: nn.GELU(), "gelu", None),
    ("gelu_tanh", lambda: nn.GELU(approximate="tanh"), "gelu_tanh", None),
    ("F.relu6", lambda: Lambda(F.relu6), "clamp", (0.0, 6.0)),
    ("hardsigmoid_inplace", lambda: nn.Hardsigmoid(inplace=True), "hardsigmoid", None),
    ("sigmoid_inplace", lambda: Lambda(lambda t: t.sigmoid_()), "sigmoid", None),
    ("clamp_min_fn", lambda: Lambda(lambda t: t.clamp_min(-0.5)), "clamp", (-0.5, float("inf"))),
    ("clamp_max_fn", lambda: Lambda(lambda t: torch.clamp_max(t, 1.5)), "clamp", (float("-inf"), 1.5)),
]


class Lambda(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


def test_batchnorm_folds_into_a_convolution_without_bias():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), bn(8))
    cm = check(m, 2 * torch.randn(2, 3, 16, 16))
    assert kinds(cm) == ["input", "conv"]
    assert cm.graph.folded["batchnorm"] == 1
    (c,) = convs(cm)
    assert c.attrs["b"] is not None and c.attrs["act"] == "none" and not c.attrs["residual"]


def test_batchnorm_folds_into_a_convolution_with_bias():
    m = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), bn(6))
    cm = check(m, torch.randn(1, 4, 17, 15))
    assert kinds(cm) == ["input", "conv"] and cm.graph.folded["batchnorm"] == 1


def test_bias_epilogue():
    m = nn.Conv2d(5, 7, 3, padding=1)
    with torch.no_grad():
        m.bias.normal_(0, 3)
    cm = check(m, torch.randn(2, 5, 12, 12))
    (c,) = convs(cm)
    assert c.attrs["b"] is not None and "batchnorm" not in cm.graph.folded
    assert cm.layers()[0].epilogue == "bias"


def test_batchnorm_that_follows_no_convolution_is_an_affine_node():
    m = nn.Sequential(bn(3), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), bn(4))
    cm = check(m, torch.randn(2, 3, 16, 16))
    assert kinds(cm) == ["input", "affine", "conv", "affine"]
    assert "batchnorm" not in cm.graph.folded  # the second BN follows the ReLU, not the conv
    assert convs(cm)[0].attrs["act"] == "relu"


@pytest.mark.parametrize("name,make,act,bounds", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_conv_bn_activation_fuses(name, make, act, bounds):
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), bn(8), make())
    cm = check(m, 3 * torch.randn(2, 3, 16, 16))
    assert kinds(cm) == ["input", "conv"], kinds(cm)
    assert cm.graph.folded["batchnorm"] == 1 and cm.graph.folded["activation"] == 1
    (c,) = convs(cm)
    assert c.attrs["act"] == act and not c.attrs["residual"]
    if bounds is not None:
        assert (c.attrs["lo"], c.attrs["hi"]) == bounds


@pytest.mark.parametrize("name,make,act,bounds", ACTIVATIONS[:: 2], ids=[a[0] for a in ACTIVATIONS[:: 2]])
def test_activation_that_follows_no_convolution(name, make, act, bounds):
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Flatten(), nn.Linear(6 * 64, 10), make())
    cm = check(m, 2 * torch.randn(2, 3, 8, 8))
    assert kinds(cm)[-1] == "act" and cm.graph.nodes[-1].attrs["act"] == act


class Residual(nn.Module):
    """``act(bn(conv(x)) + x)``, the shortcut first or second in the sum."""

    def __init__(self, c, act=None, shortcut_first=False):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = bn(c)
        self.act = act
        self.first = shortcut_first

    def forward(self, x):
        y = self.bn(self.conv(x))
        y = x + y if self.first else y + x
        return self.act(y) if self.act is not None else y


@pytest.mark.parametrize("first", [False, True], ids=["conv+x", "x+conv"])
def test_residual_add_fuses(first):
    cm = check(Residual(6, shortcut_first=first), torch.randn(2, 6, 12, 12))
    assert kinds(cm) == ["input", "conv"]
    (c,) = convs(cm)
    assert c.attrs["residual"] and c.attrs["act"] == "none" and c.inputs == [0, 0]
    assert cm.graph.folded["residual"] == 1


@pytest.mark.parametrize("name,make,act,bounds", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_residual_then_activation_fuses(name, make, act, bounds):
    cm = check(Residual(6, act=make()), 2 * torch.randn(2, 6, 12, 12))
    assert kinds(cm) == ["input", "conv"]
    (c,) = convs(cm)
    assert c.attrs["residual"] and c.attrs["act"] == act
    assert cm.layers()[0].epilogue == f"bias+residual+{act}"


class EpilogueChain(nn.Module):
    """One convolution per activation of `ACTIVATIONS`, every other one with a residual add:
    every epilogue the runtime fuses, in one network."""

    def __init__(self, c: int, groups: int = 1):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=i % 3 == 0)
                                   for i in range(len(ACTIVATIONS)))
        self.bns = nn.ModuleList(bn(c) for _ in ACTIVATIONS)
        self.acts = nn.ModuleList(make() for _, make, _, _ in ACTIVATIONS)

    def forward(self, x):
        for i, (conv, norm, act) in enumerate(zip(self.convs, self.bns, self.acts, strict=True)):
            y = norm(conv(x))
            x = act(y + x if i % 2 else y)
        return x


@pytest.mark.parametrize("groups", [1, 32], ids=["dense", "depthwise"])
@pytest.mark.parametrize("algorithm", ["direct", "im2win", "im2col", "winograd_f4x3", "sfc6_6x3", "fft",
                                       "deterministic", "auto"])
def test_every_epilogue_on_every_algorithm(algorithm, groups):
    m = EpilogueChain(32, groups).eval()
    cm = check(m, 2 * torch.randn(1, 32, 12, 12), tol=2e-5, algorithm=algorithm)
    assert kinds(cm) == ["input"] + ["conv"] * len(ACTIVATIONS)
    assert [c.attrs["act"] for c in convs(cm)] == [a[2] for a in ACTIVATIONS]
    assert [c.attrs["residual"] for c in convs(cm)] == [bool(i % 2) for i in range(len(ACTIVATIONS))]
    ran = {L.algorithm for L in cm.layers()}
    if algorithm == "deterministic":
        assert all(convolab.registry.get(a).deterministic for a in ran)
    elif algorithm != "auto" and convolab.registry.get(algorithm).supports(cm.layers()[0].spec) is None:
        assert ran == {algorithm}


class Bottleneck(nn.Module):
    """ResNet's downsampling block: the shortcut is computed AFTER the main branch."""

    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = bn(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = bn(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = bn(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), bn(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.down(x)
        return self.relu(out)


def test_resnet_block_with_shortcut_computed_after_the_main_branch():
    cm = check(Bottleneck(8, 4, 16, 2), torch.randn(2, 8, 16, 16))
    assert kinds(cm) == ["input"] + ["conv"] * 4
    assert cm.graph.folded["batchnorm"] == 4
    assert cm.graph.folded["residual"] == 1 and cm.graph.folded["activation"] == 3
    fused = [c for c in convs(cm) if c.attrs["residual"]]
    assert len(fused) == 1 and fused[0].attrs["act"] == "relu"
    # the shortcut's convolution runs before the fused node that reads it
    assert fused[0].inputs[1] < cm.graph.nodes.index(fused[0])


def test_two_residual_blocks_in_a_row():
    m = nn.Sequential(Residual(8, nn.ReLU()), Residual(8, nn.ReLU6()), Residual(8))
    cm = check(m, torch.randn(1, 8, 10, 10))
    assert kinds(cm) == ["input", "conv", "conv", "conv"]
    assert [c.attrs["act"] for c in convs(cm)] == ["relu", "clamp", "none"]
    assert all(c.attrs["residual"] for c in convs(cm))


def _residual_slots(cm, x) -> list[bool]:
    """Per fused residual convolution: whether its output took its residual's arena slot."""
    st = cm._states[tuple(x.shape)]
    return [np.shares_memory(st.buffers[i], st.buffers[n.inputs[1]])
            for i, n in enumerate(cm.graph.nodes) if n.kind == "conv" and n.attrs["residual"]]


class IdentityBottleneck(nn.Module):
    """ResNet's block with the identity shortcut: ``relu(bn3(conv3(...)) + x)``."""

    def __init__(self, c, mid, act=None):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, mid, 1, bias=False), bn(mid), nn.ReLU(),
                                  nn.Conv2d(mid, mid, 3, padding=1, bias=False), bn(mid), nn.ReLU(),
                                  nn.Conv2d(mid, c, 1, bias=False), bn(c))
        self.act = act if act is not None else nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + x)


@pytest.mark.parametrize("threads", [1, 2])
def test_residual_output_takes_the_residuals_slot_where_nothing_reads_it_later(threads,
                                                                             monkeypatch):
    """The fused add reads each residual element in the tile that then writes the output
    element at the same place: where the residual is dead after the add, the output overwrites
    it (one memory stream instead of two), with the same values. (Layer by layer: in an
    image-major run a value the run alone reads has one image's space, and a batch's value
    cannot take its slot.)"""
    from convolab.runtime import program

    monkeypatch.setattr(program, "IMAGE_MAJOR_BYTES", 1 << 60)
    for model, xin, n in [
        (nn.Sequential(IdentityBottleneck(32, 16), IdentityBottleneck(32, 16)),
         torch.randn(2, 32, 28, 28), 2),
        (Bottleneck(16, 8, 32, 1), torch.randn(2, 16, 28, 28), 1),
        (Bottleneck(16, 8, 32, 2), torch.randn(1, 16, 28, 28), 1),
    ]:
        cm = check(model, xin, algorithm="deterministic", threads=threads)
        first = cm(xin)  # the operator-by-operator call ran in check; these run the executor
        assert torch.equal(cm(xin), first) and torch.equal(cm(xin), first)
        assert cm._states[tuple(xin.shape)].segments and _residual_slots(cm, xin) == [True] * n


class ReadAgain(nn.Module):
    """``block(x) + x``: the block's residual, x, is read once more after the block."""

    def __init__(self):
        super().__init__()
        self.block = IdentityBottleneck(8, 8)

    def forward(self, x):
        return self.block(x) + x


@pytest.mark.parametrize("case", ["input_is_residual", "silu", "residual_read_later"])
def test_residual_keeps_its_slot_when_the_output_may_not_overwrite_it(case):
    x = torch.randn(1, 8, 12, 12)
    if case == "input_is_residual":  # y = conv(x) + x: other tiles still read x
        model = Residual(8, nn.ReLU())
    elif case == "silu":  # SiLU runs as a pass after the tiles: it would read the output as residual
        model = IdentityBottleneck(8, 8, nn.SiLU())
    else:  # the block's input is read again after the block's add
        model = ReadAgain()
    cm = check(model, x, algorithm="deterministic")
    first = cm(x)
    assert torch.equal(cm(x), first)
    assert not any(_residual_slots(cm, x))


def test_a_convolution_read_twice_is_not_fused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return torch.relu(y) + y

    cm = check(Twice(), torch.randn(2, 3, 8, 8))
    assert convs(cm)[0].attrs["act"] == "none" and not convs(cm)[0].attrs["residual"]
    assert "act" in kinds(cm) and "binary" in kinds(cm)


def test_broadcast_add_is_not_taken_as_a_residual():
    class Bias(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x) + x.mean((1, 2, 3), keepdim=True))

    cm = check(Bias(), torch.randn(2, 3, 8, 8), fallback=True)
    assert not convs(cm)[0].attrs["residual"]


# ============================================================================ other operators
@pytest.mark.parametrize("kw,hw", [
    (dict(kernel_size=3, stride=2, padding=1), 16),
    (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), 15),
    (dict(kernel_size=2, stride=2, ceil_mode=True), 15),
    (dict(kernel_size=3, stride=2, padding=1, dilation=2), 17),
    (dict(kernel_size=3, stride=1, padding=1, dilation=2, ceil_mode=True), 12),
    (dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)), 13),
], ids=["k3s2p1", "ceil", "k2ceil", "dilation2", "dil2ceil", "rect"])
def test_max_pool(kw, hw):
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.MaxPool2d(**kw))
    cm = check(m, torch.randn(2, 3, hw, hw - 1))
    assert kinds(cm)[-1] == "maxpool"


@pytest.mark.parametrize("include", [True, False], ids=["count_pad", "no_count_pad"])
@pytest.mark.parametrize("kw,hw", [
    (dict(kernel_size=3, stride=2, padding=1), 16),
    (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), 15),
    (dict(kernel_size=2, stride=2, ceil_mode=True), 15),
    (dict(kernel_size=(3, 5), stride=(1, 2), padding=(1, 2)), 11),
    (dict(kernel_size=3, stride=2, padding=1, divisor_override=5), 14),
], ids=["k3s2p1", "ceil", "k2ceil", "rect", "divisor"])
def test_avg_pool(kw, hw, include):
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AvgPool2d(count_include_pad=include, **kw))
    cm = check(m, torch.randn(2, 3, hw, hw + 2))
    assert kinds(cm)[-1] == "avgpool"


@pytest.mark.parametrize("size,hw", [(1, (16, 16)), ((3, 5), (16, 16)), ((4, 4), (16, 16)),
                                     ((5, 7), (17, 15)), ((None, 3), (9, 10)), ((6, 6), (4, 5))],
                         ids=["1x1", "3x5", "4x4", "5x7", "Nonex3", "upsample"])
def test_adaptive_avg_pool(size, hw):
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(size))
    cm = check(m, torch.randn(2, 3, *hw))
    assert kinds(cm)[-1] == "adaptive_avg"


@pytest.mark.parametrize("keepdim", [True, False])
@pytest.mark.parametrize("dims", [(2, 3), (-1, -2)])
def test_spatial_mean(dims, keepdim):
    m = nn.Sequential(nn.Conv2d(3, 4, 3), Lambda(lambda t: t.mean(dims, keepdim=keepdim)))
    cm = check(m, torch.randn(2, 3, 11, 9))
    assert kinds(cm)[-1] == "adaptive_avg"


@pytest.mark.parametrize("flatten", ["flatten", "view", "reshape", "nn.Flatten"])
def test_linear_head(flatten):
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 10)
            self.fc2 = nn.Linear(10, 3, bias=False)
            self.flat = nn.Flatten()

        def forward(self, x):
            x = self.conv(x)
            if flatten == "flatten":
                x = x.flatten(1)
            elif flatten == "view":
                x = x.view(x.size(0), -1)
            elif flatten == "reshape":
                x = x.reshape(x.shape[0], 4 * 8 * 8)
            else:
                x = self.flat(x)
            return self.fc2(torch.relu(self.fc(x)))

    m = Head().eval()
    cm = check(m, torch.randn(2, 3, 16, 16))
    assert kinds(cm).count("linear") == 2 and "reshape" in kinds(cm)
    x3 = torch.randn(3, 3, 16, 16)  # another batch size: the reshape keeps its batch axis
    assert rel_err(cm(x3), reference(m, x3)) <= TOL


def test_concat_on_channels():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 5, 3, padding=1)
            self.c = nn.Conv2d(12, 6, 3, padding=1)

        def forward(self, x):
            y = torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1)
            return self.c(torch.cat((y, x), -3))

    cm = check(Cat(), torch.randn(2, 3, 10, 10))
    assert kinds(cm).count("cat") == 2


class SamePad(nn.Module):
    """TensorFlow 'SAME' padding for a stride-2 3x3: one extra row and column at the end."""

    def __init__(self, cin, cout, stride=2, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, groups=groups)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def test_zero_pad_folds_into_the_convolution():
    cm = check(nn.Sequential(SamePad(3, 6), nn.ReLU6(), SamePad(6, 6, groups=6)), torch.randn(2, 3, 16, 16))
    assert kinds(cm) == ["input", "conv", "conv"]
    assert cm.graph.folded["pad"] == 2
    assert [c.attrs["padding"] for c in convs(cm)] == [(0, 1, 0, 1)] * 2


def test_zero_pad_adds_to_the_convolutions_own_padding():
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=(1, 2))

        def forward(self, x):
            return self.conv(nn.functional.pad(x, (2, 0, 1, 3)))

    cm = check(Both(), torch.randn(1, 3, 9, 11))
    assert convs(cm)[0].attrs["padding"] == (4, 2, 2, 4)


@pytest.mark.parametrize("pads,value", [((1, 1, 1, 1), 0.5), ((0, 2, 1, 0), -1.0), ((-1, 1, 2, -2), 0.0),
                                        ((1, 2), 3.0)],
                         ids=["value", "asym-value", "negative", "two-sided"])
def test_pad_that_does_not_fold(pads, value):
    class Pad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(F.pad(x, pads, value=value))

    cm = check(Pad(), torch.randn(2, 3, 9, 10))
    assert "pad" in kinds(cm)


def test_zero_pad_read_by_something_else_is_kept():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)

        def forward(self, x):
            p = F.pad(x, (1, 1, 1, 1))
            return self.conv(p) + F.max_pool2d(p, 3, 1)

    cm = check(Shared(), torch.randn(1, 3, 8, 8))
    assert "pad" in kinds(cm)


class SqueezeExcite(nn.Module):
    """``x * sigmoid(fc2(relu(fc1(pool(x)))))`` with 1x1 convolutions or linear layers."""

    def __init__(self, c, r=4, linear=False):
        super().__init__()
        self.linear = linear
        if linear:
            self.fc1, self.fc2 = nn.Linear(c, c // r), nn.Linear(c // r, c)
        else:
            self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        if self.linear:
            s = F.adaptive_avg_pool2d(x, 1).flatten(1)
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
            return x * s.view(x.shape[0], -1, 1, 1)
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


@pytest.mark.parametrize("linear", [False, True], ids=["conv", "linear"])
def test_squeeze_excitation(linear):
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), SqueezeExcite(8, linear=linear),
                      nn.Conv2d(8, 4, 1))
    cm = check(m, torch.randn(2, 3, 12, 12))
    assert "binary" in kinds(cm)
    mul = [n for n in cm.graph.nodes if n.kind == "binary"]
    assert [n.attrs["op"] for n in mul] == ["mul"]


def test_elementwise_with_scalars_and_broadcasting():
    class Ew(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(3, 1, 1)

        def forward(self, x):
            y = self.conv(x) * 0.5 + 1.0
            z = y / 2.0 - 0.25
            g = self.conv2(x)  # (N, 1, H, W) broadcast over channels
            return (y - z) * g + z / (g.abs() + 1.0)

    cm = check(Ew(), torch.randn(2, 3, 8, 8), fallback=True)
    assert sum(n.kind == "binary" for n in cm.graph.nodes) >= 6


def test_functional_conv2d_with_its_own_weight():
    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(6, 3, 3, 3))
            self.bias = nn.Parameter(torch.randn(6))
            self.w2 = nn.Parameter(torch.randn(6, 1, 5, 5))

        def forward(self, x):
            y = F.relu(F.conv2d(x, self.weight, self.bias, stride=2, padding=1))
            return torch.conv2d(y, self.w2, None, 1, 2, 1, 6)

    cm = check(Fn(), torch.randn(2, 3, 16, 16))
    assert kinds(cm) == ["input", "conv", "conv"]
    assert convs(cm)[0].attrs["act"] == "relu" and convs(cm)[1].attrs["groups"] == 6


def test_conv2d_subclass_with_its_own_forward():
    class StaticSame(nn.Conv2d):  # EfficientNet's Conv2dStaticSamePadding, in short
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.zp = nn.ZeroPad2d((1, 2, 1, 2))

        def forward(self, x):
            return F.conv2d(self.zp(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    m = nn.Sequential(StaticSame(3, 8, 4, stride=2), bn(8), nn.ReLU6(), StaticSame(8, 8, 4, groups=8))
    cm = check(m, torch.randn(2, 3, 16, 16))
    assert kinds(cm) == ["input", "conv", "conv"]
    assert cm.graph.folded["pad"] == 2 and cm.graph.folded["batchnorm"] == 1


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, groups=2, padding=1),
    dict(kernel_size=3, groups=8, padding=1),  # depthwise
    dict(kernel_size=5, groups=8, stride=2, padding=2),  # depthwise, strided
    dict(kernel_size=3, dilation=2, padding=2),
    dict(kernel_size=3, dilation=(1, 3), padding=(1, 3)),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(1, 7), stride=(1, 2), padding=(0, 3)),
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=4, padding="same", dilation=2),
    dict(kernel_size=1),
    dict(kernel_size=7, stride=3),
], ids=["groups2", "depthwise", "dw5x5s2", "dilation2", "dilation1x3", "stride2", "1x7", "same",
        "same-even", "1x1", "7x7s3"])
def test_convolution_shapes(kw):
    m = nn.Sequential(nn.Conv2d(8, 8, **kw), bn(8), nn.ReLU())
    cm = check(m, torch.randn(2, 8, 17, 16))
    assert kinds(cm) == ["input", "conv"]


def test_squeeze_and_unsqueeze_are_reshapes():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            y = self.conv(x)
            s = torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True).squeeze(-1).squeeze(-1)))
            return y * s.unsqueeze(-1).unsqueeze(3)

    m = SE().eval()
    cm = check(m, torch.randn(2, 3, 8, 8))
    assert kinds(cm).count("reshape") == 4
    x = torch.randn(3, 3, 8, 8)
    assert rel_err(cm(x), reference(m, x)) <= TOL


def test_max_pool_with_its_indices_used_runs_through_pytorch():
    class Idx(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y, i = F.max_pool2d(self.conv(x), 2, return_indices=True)
            return y + (i % 3).float()

    cm = check(Idx(), torch.randn(2, 3, 8, 8), fallback=True)
    assert "aten.max_pool2d_with_indices.default" in cm.fallback_ops
    cm = check(nn.Sequential(nn.Conv2d(3, 4, 1), Lambda(lambda t: F.max_pool2d(t, 2, return_indices=True)[0])),
               torch.randn(2, 3, 8, 8))
    assert kinds(cm)[-1] == "maxpool"


def test_in_place_change_read_through_a_view_is_refused():
    class Through(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            z = y.view(y.shape[0], -1)
            y.relu_()  # changes z too
            return z

    with pytest.raises(convolab.ConvError, match="relu_.*in place"):
        compile(Through().eval(), torch.randn(2, 3, 8, 8))

    class Later(nn.Module):  # in-place operators the runtime may compute out of place
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            a = y * 2  # reads y before the change
            y.relu_()
            y.add_(a)
            return y.view(y.shape[0], -1) - a.flatten(1)

    check(Later(), torch.randn(2, 3, 8, 8))


# ============================================================================ fallback
@pytest.mark.parametrize("op,fn", [
    ("cumsum", lambda t: torch.cumsum(t, 1)),
    ("upsample_nearest2d", lambda t: F.interpolate(t, scale_factor=2)),
    ("flip", lambda t: t.flip(3)),
], ids=["cumsum", "interpolate", "flip"])
def test_unsupported_operator_runs_through_pytorch(op, fn):
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Lambda(fn), Lambda(fn),
                      nn.Conv2d(4, 2, 3, padding=1)).eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        cm = check(m, x, fallback=True)
    mine = [str(w.message) for w in rec if "PyTorch" in str(w.message)]
    assert len(mine) == 1 and op in mine[0], mine
    assert list(cm.fallback_ops) == [f"aten.{op}.{'vec' if op.startswith('upsample') else 'default'}"]
    assert list(cm.fallback_ops.values()) == [2]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y = cm(torch.randn(3, 3, 8, 8))  # calls (even at a new batch size) warn no more
    assert not [w for w in rec if "PyTorch" in str(w.message)]
    assert y.shape[0] == 3
    assert op in cm.summary()


def test_fallback_result_that_views_its_input_keeps_its_values():
    class Slice(nn.Module):  # GhostNet's `out[:, :self.oup]`
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.c2(x) + self.c1(x)[:, :4]

    check(Slice(), torch.randn(1, 3, 8, 8), fallback=True)


def test_fallback_outputs_that_are_not_contiguous():
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            a, b = self.conv(x).chunk(2, 1)
            return torch.relu(a) * b

    check(Split(), torch.randn(2, 3, 8, 8), fallback=True)


# ============================================================================ bad input
@pytest.fixture(scope="module")
def small():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), bn(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(4, 5)).eval()
    x = torch.randn(2, 3, 16, 16)
    return m, x, compile(m, x)


@pytest.mark.parametrize("bad", [
    torch.randn(2, 4, 16, 16),  # channels
    torch.randn(3, 16, 16),  # rank
    torch.randn(1, 2, 3, 16, 16),  # rank
    torch.randn(2, 3, 16, 16, dtype=torch.float64),
    torch.randint(0, 5, (2, 3, 16, 16)),
    torch.randn(2, 3, 16, 16).half(),
    np.zeros((2, 3, 16, 16), dtype=np.int32),
], ids=["channels", "rank3", "rank5", "float64", "int64", "float16", "numpy-int32"])
def test_bad_input_is_refused_naming_the_input(small, bad):
    _, _, cm = small
    with pytest.raises(convolab.ConvError, match="input"):
        cm(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_is_refused(small, value):
    m, x, cm = small
    bad = x.clone()
    bad[1, 2, 3, 4] = value
    with pytest.raises(convolab.ConvError, match=r"input.*non-finite.*\(1, 2, 3, 4\)"):
        cm(bad)
    lax = compile(m, x, check_finite=False)
    y = lax(bad)
    assert torch.isnan(y[1]).all() or not torch.isfinite(y[1]).all()
    assert torch.isfinite(y[0]).all()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("batch", [2, 3], ids=["planned-shape", "first-call-at-a-shape"])
def test_non_finite_input_is_found_wherever_it_is(small, value, batch):
    """The check runs in the copy into the arena on later calls (`copy_finite`, blocks of 4096
    elements) and on the input itself at a shape's first call: the first bad element is named,
    and a refused call leaves the model working."""
    m, x, _ = small
    cm = compile(m, x)  # its own: the shared one's planned shapes are other tests' business
    good = torch.randn(batch, *x.shape[1:])
    bad = good.clone()
    bad.view(-1)[-1] = value  # the last element, past the first block
    bad[batch - 1, 2, 15, 14] = value
    with pytest.raises(convolab.ConvError, match=rf"non-finite.*\({batch - 1}, 2, 15, 14\)"):
        cm(bad)
    np.testing.assert_allclose(cm(good).numpy(), m(good).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_compile_refusals(small):
    m, x, _ = small
    with pytest.raises(convolab.ConvError, match="training"):
        compile(copy.deepcopy(m).train(), x)
    with pytest.raises(convolab.ConvError, match="Module"):
        compile(lambda t: t, x)
    with pytest.raises(convolab.ConvError, match="no_such_algorithm"):
        compile(m, x, algorithm="no_such_algorithm")
    with pytest.raises(convolab.ConvError, match="float32"):
        compile(m, x.double())
    with pytest.raises(convolab.ConvError, match="float32|parameter"):
        compile(copy.deepcopy(m).double(), x)
    with pytest.raises(convolab.ConvError, match="threads"):
        compile(m, x, threads=0)


def test_a_layer_error_names_the_layer():
    class MixesBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x).reshape(-1)  # the batch folded into the one axis

    m = MixesBatch().eval()
    cm = compile(m, torch.randn(2, 3, 6, 6))
    with pytest.raises(convolab.ConvError, match="reshape"):
        cm(torch.randn(3, 3, 6, 6))


# ============================================================================ calling
def test_array_type_in_is_the_array_type_out(small):
    m, x, cm = small
    y = cm(x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    yn = cm(x.numpy())
    assert isinstance(yn, np.ndarray) and yn.dtype == np.float32
    assert np.array_equal(yn, y.numpy())
    assert rel_err(y, reference(m, x)) <= TOL


def test_strided_inputs(small):
    m, x, cm = small
    ref = reference(m, x)
    for xi in (x.contiguous(memory_format=torch.channels_last), x.clone().requires_grad_(),
               x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), x.numpy()[:, :, ::-1, ::-1][:, :, ::-1, ::-1]):
        assert rel_err(cm(xi), ref) <= TOL


def test_other_batch_sizes_are_planned_on_first_call_and_reused(small, monkeypatch):
    m, x, cm = small
    for n in (1, 3, 5):
        shape = (n, 3, 16, 16)
        xb = torch.randn(shape)
        before = cm.layers(shape)
        assert all(L.algorithm == "-" for L in before)  # not planned yet
        y = cm(xb)
        assert rel_err(y, reference(m, xb)) <= TOL
        after = cm.layers(shape)
        assert all(L.algorithm != "-" and L.spec.N == n for L in after)
        # a second call at that shape plans nothing: the chooser is not consulted again
        import convolab.select as sel

        def no_planning(*a, **k):
            raise AssertionError("planned again")

        with monkeypatch.context() as mp:
            mp.setattr(sel, "rank", no_planning)
            mp.setattr(sel, "choose", no_planning)
            y2 = cm(xb)
        assert torch.equal(y, y2)


def test_repeated_calls_are_identical_and_not_aliased():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), bn(8), nn.ReLU6(), Residual(8, nn.ReLU()),
                      nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.MaxPool2d(2), SqueezeExcite(8),
                      nn.Conv2d(8, 4, 1)).eval()
    x1, x2 = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    cm = compile(m, x1)
    y1 = cm(x1)
    keep = y1.clone()
    y2 = cm(x2)
    assert torch.equal(y1, keep)  # the result of call 1 is not the buffer of call 2
    assert not torch.equal(y1, y2)
    for _ in range(3):
        assert torch.equal(cm(x1), keep)
    assert torch.equal(cm(x2), y2)
    assert rel_err(keep, reference(m, x1)) <= TOL
    n1 = cm(x1.numpy())
    n2 = cm(x2.numpy())
    assert np.array_equal(n1, keep.numpy()) and not np.shares_memory(n1, n2)


def test_several_outputs_are_independent_copies():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y, torch.relu(y), y.mean((2, 3))

    m = Two().eval()
    x = torch.randn(2, 3, 8, 8)
    cm = compile(m, x)
    outs = cm(x)
    refs = reference(m, x)
    assert len(outs) == 3
    for o, r in zip(outs, refs, strict=True):
        assert rel_err(o, r) <= TOL
    a, b, _ = outs
    keep = a.clone()
    b.fill_(7.0)
    cm(torch.randn(2, 3, 8, 8))
    assert torch.equal(a, keep)


# ============================================================================ threads
def _net():
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), bn(16), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), bn(16), nn.ReLU6(),
        nn.Conv2d(16, 32, 1, bias=False), bn(32), Residual(32, nn.ReLU()),
        nn.Conv2d(32, 32, 5, padding=2), nn.Hardswish(), SqueezeExcite(32), nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(32, 32, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


@pytest.mark.parametrize("algorithm", ["auto", "im2col"])
def test_one_thread_means_one_thread(algorithm):
    import numba

    m = _net()
    x = torch.randn(4, 3, 32, 32)
    cm = compile(m, x, threads=1, algorithm=algorithm)
    y = cm(x)
    time.sleep(0.3)  # PyTorch's OpenMP workers (earlier tests) stop spinning
    cpu0, wall0 = time.process_time(), time.perf_counter()
    n = 0
    while time.perf_counter() - wall0 < 0.5 or n < 5:
        cm(x)
        n += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    # on a loaded machine CPU time can only fall behind the wall time, never exceed it
    assert cpu <= 1.3 * wall + 0.02, f"{cpu:.3f} s CPU in {wall:.3f} s wall ({n} calls, threads=1)"
    assert numba.get_num_threads() >= 1
    assert rel_err(y, reference(m, x)) <= TOL


def test_thread_settings_are_restored_after_a_call():
    import numba
    from threadpoolctl import threadpool_info

    m = _net()
    x = torch.randn(1, 3, 32, 32)
    cm = compile(m, x, threads=1)
    cm2 = compile(m, x, threads=2)
    def blas():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    t0, n0 = torch.get_num_threads(), numba.get_num_threads()
    nmax = numba.config.NUMBA_NUM_THREADS
    try:
        torch.set_num_threads(3)
        numba.set_num_threads(nmax)
        blas0 = blas()
        for c in (cm, cm2):
            c(x)
            assert torch.get_num_threads() == 3 and numba.get_num_threads() == nmax
            assert blas() == blas0
        with pytest.raises(convolab.ConvError):  # restored after a failing call too
            cm(torch.randn(1, 5, 32, 32))
        assert torch.get_num_threads() == 3 and numba.get_num_threads() == nmax
    finally:
        torch.set_num_threads(t0)
        numba.set_num_threads(n0)


def test_two_threads_run():
    m = _net()
    x = torch.randn(3, 3, 32, 32)
    cm = compile(m, x, threads=2)
    assert cm.threads == 2
    assert rel_err(cm(x), reference(m, x)) <= TOL
    assert rel_err(cm(x[:1]), reference(m, x[:1])) <= TOL


# ============================================================================ determinism
def test_deterministic_algorithm_is_bitwise_over_threads():
    import numba

    m = _net()
    x = torch.randn(3, 3, 32, 32)
    outs = {}
    for t in (1, 2):
        cm = compile(m, x, algorithm="deterministic", threads=t)
        assert all(convolab.registry.get(L.algorithm).deterministic for L in cm.layers())
        outs[t] = cm(x)
    assert rel_err(outs[1], reference(m, x)) <= TOL
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba runs on one thread here (NUMBA_NUM_THREADS=1)")
    assert torch.equal(outs[1], outs[2])


_CHILD = textwrap.dedent("""
    import sys, numpy as np, torch
    sys.path.insert(0, {tests!r})
    from test_runtime import _net
    from convolab.runtime import compile
    m = _net()
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((3, 3, 32, 32), dtype=np.float32))
    cm = compile(m, x, algorithm="deterministic", threads={threads})
    np.save({out!r}, cm(x).numpy())
""")


def test_deterministic_algorithm_is_bitwise_across_processes(tmp_path):
    """A fresh process with NUMBA_NUM_THREADS=1 (as tests/test_determinism runs its children)
    against this one at two threads."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba runs on one thread here (NUMBA_NUM_THREADS=1)")
    out = str(tmp_path / "y.npy")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", CONVOLAB_AUTO_TRIAL="0")
    code = _CHILD.format(tests=os.path.dirname(__file__), threads=1, out=out)
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    m = _net()
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((3, 3, 32, 32), dtype=np.float32))
    y2 = compile(m, x, algorithm="deterministic", threads=2)(x).numpy()
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]
    assert np.array_equal(np.load(out), y2)


def test_adaptive_pool_on_one_and_two_threads_agree():
    # small inputs are pooled on the calling thread (SERIAL_POOL_ELEMENTS), large ones on the
    # team: the same sums, bit for bit, and PyTorch's windows
    from convolab.runtime import _kernels as K

    x = torch.randn(2, 5, 13, 11)
    for size in ((1, 1), (3, 4), (13, 11)):
        ref = torch.nn.functional.adaptive_avg_pool2d(x, size).numpy()
        a = np.empty((2, 5, *size), np.float32)
        b = np.empty_like(a)
        K.launch(K.adaptive_avg, (x.numpy(), a), 2)
        K.launch(K.adaptive_avg, (x.numpy(), b), 1)
        assert np.array_equal(a, b)
        np.testing.assert_allclose(a, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1000, 1280), (3, 37, 19), (5, 130, 2048)])
def test_linear_kernel_on_one_and_two_threads_agree(shape):
    """The runtime's linear kernel: tiles of 64 features (a partial last one), with and
    without bias, on the calling thread alone and on two team threads: the same bits, within
    float32 rounding of float64."""
    from convolab.runtime import _kernels as RK

    N, Kf, C = shape
    rng = np.random.default_rng(Kf)
    w = rng.standard_normal((Kf, C)).astype(np.float32)
    b = rng.standard_normal(Kf).astype(np.float32)
    x = rng.standard_normal((N, C)).astype(np.float32)
    wp = RK.pack_linear(w)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    for bias in (b, None):
        outs = []
        for threads in (2, 1):
            out = np.full((N, Kf), np.nan, np.float32)
            RK.launch(RK.linear, (x, wp, b if bias is not None else np.zeros(0, np.float32),
                               bias is not None, out), threads)
            outs.append(out)
        assert np.array_equal(outs[0], outs[1])
        want = ref + b if bias is not None else ref
        assert np.abs(outs[0] - want).max() <= 1e-5 * np.abs(want).max() * np.sqrt(C)


def test_auto_decides_once_per_layer_shape(monkeypatch):
    """Identical layers get one executor-or-not decision: a later one must not compare the
    first one's measured (cached) trial times against the model's prediction and decide
    otherwise."""
    from convolab.runtime import model as rm

    calls = []

    def alternating(spec, budgets, threads=1):
        calls.append(spec)
        return "direct" if len(calls) % 2 else "im2col"

    monkeypatch.setattr(rm, "_prefer_executor", alternating)
    m = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()) for _ in range(4)])
    cm = check(m, torch.randn(1, 8, 10, 10))
    st = cm._states[(1, 8, 10, 10)]
    assert len(calls) == 1
    assert {p.algorithm for p in st.plans.values()} == {"direct"}


def test_a_layer_leaves_the_executor_only_for_more_than_its_leaving_costs(monkeypatch):
    """`auto` keeps a convolution in the executor unless another algorithm is predicted more
    than `EXECUTOR_FACTOR` times faster *and* by more than the cost of leaving it (a few
    per-call overheads): ResNet-50's 256@14 3x3 layers at batch 1 (predicted 1.42 ms direct,
    0.90 ms F(2x2,3x3)) ran slower outside; at batch 8 (10.85 against 6.49 ms) faster."""
    import dataclasses

    from convolab import select
    from convolab.runtime import program as P
    from convolab.spec import ConvSpec

    spec = ConvSpec.from_shapes((1, 256, 14, 14), (256, 256, 3, 3), padding=1, dtype=np.float32)
    machine = dataclasses.replace(select.machine(), call_seconds=0.106e-3)
    monkeypatch.setattr(select, "machine", lambda: machine)
    for direct_s, best_s, want in ((1.42e-3, 0.903e-3, "direct"), (10.85e-3, 6.49e-3, "auto"),
                                   (1.42e-3, 0.5e-3, "auto")):
        # (an algorithm the executor does not run: Winograd / SFC may run inside it, below)
        _predict(monkeypatch, "im2win", best_s, direct_s)
        assert P._prefer_executor(spec, {}, 2) == want, (direct_s, best_s)


def _predict(monkeypatch, best: str, best_s: float, direct_s: float) -> None:
    """`select.rank` ranks ``best`` (``best_s`` seconds) before direct (``direct_s``), and
    `select.predict_seconds` gives the executor's direct kernel ``direct_s`` plus one call."""
    from convolab import select

    ranking = [select.Choice(best, True, "", best_s), select.Choice("direct", True, "", direct_s)]
    monkeypatch.setattr(select, "rank", lambda spec, r=ranking, **kw: r)
    monkeypatch.setattr(select, "predict_seconds",
                        lambda algo, spec, m, t=direct_s: t + m.call_seconds)


def test_auto_runs_a_bilinear_layer_in_the_executor_where_predicted_faster(monkeypatch):
    """`auto` names a Winograd / SFC algorithm the executor runs (`program._bilinear_inside`)
    where it is predicted `BILINEAR_FACTOR` times faster than the executor's direct kernel (no
    cost of leaving counted); narrower layers (point GEMMs not on the microkernel) still weigh
    the cost of leaving."""
    import dataclasses

    from convolab import select
    from convolab.runtime import program as P
    from convolab.spec import ConvSpec

    machine = dataclasses.replace(select.machine(), call_seconds=0.1e-3)
    monkeypatch.setattr(select, "machine", lambda: machine)
    wide = ConvSpec.from_shapes((1, 256, 14, 14), (256, 256, 3, 3), padding=1, dtype=np.float32)
    narrow = ConvSpec.from_shapes((1, 32, 14, 14), (32, 32, 3, 3), padding=1, dtype=np.float32)
    assert P._bilinear_inside("winograd_f2x3", wide) and not P._bilinear_inside("winograd_f2x3", narrow)
    for spec, direct_s, best_s, want in (
            (wide, 1.42e-3, 0.90e-3, "winograd_f2x3"),  # 1.15 x 0.80 < 1.42
            (wide, 1.42e-3, 1.35e-3, "direct"),  # 1.15 x 1.25 > 1.42
            (narrow, 1.42e-3, 0.90e-3, "direct"),  # leaving costs more than it saves
            (narrow, 1.42e-3, 0.40e-3, "auto")):
        _predict(monkeypatch, "winograd_f2x3", best_s, direct_s)
        assert P._prefer_executor(spec, {}, 2) == want, (spec, best_s)
