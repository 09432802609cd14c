"""Shared test helpers: the spec corpus (named real layers + Hypothesis strategies)."""

from __future__ import annotations

import os
import tempfile

import numpy as np
from hypothesis import strategies as st

from convolab import reference
from convolab.registry import summation_bound
from convolab.spec import ConvSpec


def pytest_configure(config):
    # autotune / calibration caches of the test run live in a fresh directory, never the user's
    os.environ["CONVOLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="convolab-test-cache-")
    # `auto` ranks by the model alone (the first-plan trial times candidates: tested on its own
    # in test_select, where it is switched back on)
    os.environ["CONVOLAB_AUTO_TRIAL"] = "0"


#: named real layers, small enough for tests (batch 1; channels cut where the layer is huge)
NAMED_LAYERS = {
    "resnet 3x3 p1": dict(x=(1, 16, 14, 14), w=(16, 16, 3, 3), padding=1),
    "resnet 1x1": dict(x=(1, 32, 7, 7), w=(24, 32, 1, 1)),
    "resnet 3x3/2": dict(x=(1, 8, 15, 15), w=(8, 8, 3, 3), stride=2, padding=1),
    "stem 7x7/2": dict(x=(1, 3, 32, 32), w=(8, 3, 7, 7), stride=2, padding=3),
    "alexnet 11x11/4": dict(x=(1, 3, 35, 35), w=(4, 3, 11, 11), stride=4),
    "depthwise 3x3": dict(x=(2, 8, 9, 9), w=(8, 1, 3, 3), padding=1, groups=8),
    "grouped 3x3": dict(x=(1, 8, 9, 11), w=(12, 2, 3, 3), padding=(1, 2, 0, 1), groups=4),
    "dilated 3x3": dict(x=(1, 4, 12, 10), w=(5, 4, 3, 3), padding=2, dilation=2),
    "5x5 same": dict(x=(2, 6, 10, 10), w=(7, 6, 5, 5), padding="same"),
    "batch 3x3": dict(x=(3, 5, 8, 8), w=(6, 5, 3, 3), padding=1),
}


def make_data(x_shape, w_shape, dtype=np.float32, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    return x, w, b


def conv_kwargs(case: dict) -> dict:
    return {k: v for k, v in case.items() if k not in ("x", "w")}


def check_against_reference(y, x, w, b, kw, bound):
    """Assert y matches the float64 reference within ``bound`` (normwise) plus the reference's own."""
    ref = reference.conv2d(x, w, b, **kw)
    assert y.shape == ref.shape
    assert not np.isnan(y).any(), "unwritten (NaN) outputs"
    spec = ConvSpec.from_arrays(x, w, b, **kw)
    err = reference.errors(y, ref, reference.magnitude(x, w, b, **kw))["normwise"]
    tol = bound + summation_bound(spec, np.float64)
    assert err <= tol, f"normwise error {err:.3e} > bound {tol:.3e}"
    return err


@st.composite
def conv_cases(draw, max_hw=12, max_c=8, stride_one=False, allow_dilation=True):
    """Valid convolution cases: groups, depthwise, dilation, asymmetric padding, big strides."""
    groups = draw(st.sampled_from([1, 1, 2, 3, "dw"]))
    if groups == "dw":
        C = draw(st.integers(1, max_c))
        groups, K = C, C * draw(st.sampled_from([1, 2]))
    else:
        C = groups * draw(st.integers(1, max(1, max_c // groups)))
        K = groups * draw(st.integers(1, 3))
    R = draw(st.integers(1, 5))
    S = draw(st.integers(1, 5))
    stride = (1, 1) if stride_one else (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if allow_dilation else (1, 1)
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    dR = dilation[0] * (R - 1) + 1
    dS = dilation[1] * (S - 1) + 1
    H = draw(st.integers(max(1, dR - pads[2] - pads[3]), max(max_hw, dR)))
    W = draw(st.integers(max(1, dS - pads[0] - pads[1]), max(max_hw, dS)))
    N = draw(st.integers(1, 3))
    return dict(x=(N, C, H, W), w=(K, C // groups, R, S), stride=stride, padding=pads,
                dilation=dilation, groups=groups)
