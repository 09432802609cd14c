"""ConvSpec: padding forms, output shapes and FLOPs, checked against PyTorch where possible."""

import numpy as np
import pytest

from convolab import ConvError, ConvSpec
from convolab.spec import normalize_padding

torch = pytest.importorskip("torch")


def spec(x=(1, 3, 10, 12), w=(4, 3, 3, 3), **kw):
    return ConvSpec.from_shapes(x, w, **kw)


def test_padding_forms_order_left_right_top_bottom():
    assert spec(padding=2).padding == (2, 2, 2, 2)
    assert spec(padding=(1, 2)).padding == (2, 2, 1, 1)  # (pad_h, pad_w)
    assert spec(padding=(1, 2, 3, 4)).padding == (1, 2, 3, 4)
    assert spec(padding="valid").padding == (0, 0, 0, 0)
    s = spec(w=(4, 3, 4, 5), padding="same")
    assert (s.OH, s.OW) == (10, 12)
    # PyTorch puts the odd pixel of an even total on the right/bottom
    assert normalize_padding("same", 4, 4, (1, 1), (1, 1)) == (1, 2, 1, 2)
    assert normalize_padding("same", 3, 3, (2, 3), (1, 1)) == (3, 3, 2, 2)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(stride=2, padding=1),
        dict(stride=(3, 1), padding=(0, 2), dilation=(1, 2)),
        dict(padding="same", dilation=2),
        dict(padding="valid", stride=4),
    ],
)
def test_output_shape_matches_torch(kw):
    x = torch.zeros(2, 6, 13, 17)
    w = torch.zeros(4, 3, 3, 4)
    y = torch.nn.functional.conv2d(x, w, groups=2, **kw)
    s = ConvSpec.from_shapes(x.shape, w.shape, groups=2, **kw)
    assert s.out_shape == tuple(y.shape)


def test_flops_and_derived():
    s = spec(x=(2, 8, 10, 10), w=(6, 4, 3, 3), padding=1, groups=2)
    assert s.out_shape == (2, 6, 10, 10)
    assert s.flops == 2 * 2 * 6 * 10 * 10 * 4 * 3 * 3
    assert (s.Cg, s.Kg, s.reduction_length) == (4, 3, 36)
    assert spec(x=(1, 5, 4, 4), w=(5, 1, 3, 3), groups=5).depthwise
    assert s.compute_dtype == np.float32
    assert spec(dtype=np.float16).compute_dtype == np.float32
    assert spec(dtype=np.float64).compute_dtype == np.float64


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(x=(3, 10, 10)), "4-D"),
        (dict(w=(4, 3, 3)), "4-D"),
        (dict(w=(4, 2, 3, 3)), "C=3"),
        (dict(x=(1, 4, 10, 10), w=(4, 2, 3, 3), groups=3), "groups=3"),
        (dict(x=(1, 4, 10, 10), w=(3, 2, 3, 3), groups=2), "K=3"),
        (dict(x=(1, 3, 0, 10)), ">= 1"),
        (dict(stride=0), "stride"),
        (dict(stride=(1, -2)), "stride"),
        (dict(dilation=0), "dilation"),
        (dict(padding=-1), "padding must be >= 0"),
        (dict(padding=(1, 2, 3)), "padding"),
        (dict(padding="full"), "full"),
        (dict(x=(1, 3, 2, 2)), "empty output"),
        (dict(padding="same", stride=2), "same"),
        (dict(groups=0), "groups"),
        (dict(bias_shape=(5,)), r"bias must have shape \(4,\)"),
        (dict(dtype=np.complex64), "complex64"),
        (dict(dtype=np.bool_), "bool"),
        (dict(dtype=object), "object"),
    ],
)
def test_bad_specs_raise_conv_error(kw, match):
    base = dict(x=(1, 3, 10, 12), w=(4, 3, 3, 3))
    base.update(kw)
    x, w = base.pop("x"), base.pop("w")
    with pytest.raises(ConvError, match=match):
        ConvSpec.from_shapes(x, w, **base)


def test_conv_error_is_value_error():
    assert issubclass(ConvError, ValueError)
