"""The networks of convolab.interop.models built in the project (ResNet-50, MobileNetV2, random
weights): published shapes and parameter counts, fixed-seed weights, and the compiled runtime
against PyTorch on them."""

import copy

import pytest

torch = pytest.importorskip("torch")

from convolab.interop.models import MODELS, load_model  # noqa: E402
from convolab.runtime import compile  # noqa: E402, A004

nn = torch.nn


@pytest.fixture(scope="module")
def resnet50():
    return load_model("resnet50")


@pytest.fixture(scope="module")
def mobilenet_v2():
    return load_model("mobilenet_v2")


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def conv_layers(m):
    return [c for c in m.modules() if isinstance(c, nn.Conv2d)]


def test_registered_with_random_weights():
    assert list(MODELS)[0] == "efficientnet-lite0"  # still the default
    assert MODELS["resnet50"].random_weights and MODELS["mobilenet_v2"].random_weights
    assert not MODELS["efficientnet-lite0"].random_weights


def test_resnet50_is_the_published_network(resnet50):
    assert n_params(resnet50) == 25_557_032  # torchvision resnet50
    convs = conv_layers(resnet50)
    assert len(convs) == 53 and all(c.groups == 1 and c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in resnet50.modules()) == 53
    assert [len(getattr(resnet50, f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 6, 3]
    first = resnet50.layer2[0]  # v1.5: the stride is on the 3x3, not the first 1x1
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
    assert first.downsample[0].stride == (2, 2) and resnet50.layer1[0].downsample is not None
    assert (resnet50.conv1.kernel_size, resnet50.conv1.stride) == ((7, 7), (2, 2))
    assert not resnet50.training
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = resnet50.layer4(resnet50.layer3(resnet50.layer2(resnet50.layer1(
            resnet50.maxpool(resnet50.relu(resnet50.bn1(resnet50.conv1(x))))))))
        y = resnet50(x)
    assert feats.shape == (1, 2048, 7, 7)
    assert y.shape == (1, 1000) and torch.isfinite(y).all() and float(y.std()) > 0


def test_mobilenet_v2_is_the_published_network(mobilenet_v2):
    assert n_params(mobilenet_v2) == 3_504_872  # torchvision mobilenet_v2, width 1.0
    convs = conv_layers(mobilenet_v2)
    assert len(convs) == 52 and sum(c.groups == c.in_channels > 1 for c in convs) == 17
    assert sum(isinstance(m, nn.ReLU6) for m in mobilenet_v2.modules()) == 35
    assert sum(getattr(m, "use_res_connect", False) for m in mobilenet_v2.modules()) == 10
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = mobilenet_v2.features(x)
        y = mobilenet_v2(x)
    assert feats.shape == (2, 1280, 7, 7)
    assert y.shape == (2, 1000) and torch.isfinite(y).all()


def test_weights_come_from_the_seed(mobilenet_v2):
    state = torch.get_rng_state()
    again = load_model("mobilenet_v2")
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    for (k, a), b in zip(mobilenet_v2.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    other = load_model("mobilenet_v2", seed=1)
    assert not torch.equal(other.features[0][0].weight, mobilenet_v2.features[0][0].weight)
    bns = [m for m in mobilenet_v2.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:  # BatchNorm folds into non-trivial scales and shifts
        bn = copy.deepcopy(bn).requires_grad_(False)
        assert float(bn.running_mean.abs().max()) > 0 and float((bn.running_var - 1).abs().max()) > 1e-3
        assert float((bn.weight - 1).abs().max()) > 1e-3 and float(bn.bias.abs().max()) > 0


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_compiled_network_matches_pytorch(name, request):
    model = request.getfixturevalue(name)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    cm = compile(model, x, algorithm="deterministic")  # direct / im2win: no transform set-up
    assert cm.fallback_ops == {}
    f = cm.graph.folded
    if name == "resnet50":
        assert (f["batchnorm"], f["residual"], f["activation"]) == (53, 16, 49)
    else:
        assert (f["batchnorm"], f["residual"], f["activation"]) == (52, 10, 35)
    assert [n.kind for n in cm.graph.nodes].count("conv") == len(conv_layers(model))
    y = cm(x)
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(x.double())
        y32 = model(x)
    err = float((y.double() - ref).abs().max() / ref.abs().max())
    err_torch = float((y32.double() - ref).abs().max() / ref.abs().max())
    assert err <= max(1e-4, 4 * err_torch), (err, err_torch)
