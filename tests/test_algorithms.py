"""Every registered algorithm against the float64 reference, on named layers and generated specs."""

import numpy as np
import pytest
from conftest import NAMED_LAYERS, check_against_reference, conv_cases, conv_kwargs, make_data
from hypothesis import HealthCheck, given, settings

import convolab
from convolab.spec import ConvSpec

ALGOS = [a.name for a in convolab.list_algorithms()]


def run_case(name, case, dtype=np.float32, seed=0):
    algo = convolab.registry.get(name)
    x, w, b = make_data(case["x"], case["w"], dtype, seed=seed)
    kw = conv_kwargs(case)
    spec = ConvSpec.from_arrays(x, w, b, **kw)
    if algo.supports(spec) is not None:
        with pytest.raises(convolab.UnsupportedError):
            convolab.conv2d(x, w, b, algorithm=name, **kw)
        return None
    out = np.full(spec.out_shape, np.nan, dtype=dtype)
    y = convolab.conv2d(x, w, b, algorithm=name, out=out, **kw)
    assert y is out and y.dtype == dtype
    return check_against_reference(y, x, w, b, kw, algo.error_bound(spec, dtype))


@pytest.mark.parametrize("layer", sorted(NAMED_LAYERS))
@pytest.mark.parametrize("name", ALGOS)
def test_named_layers(name, layer):
    run_case(name, NAMED_LAYERS[layer])


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@pytest.mark.parametrize("name", ALGOS)
def test_other_dtypes(name, dtype):
    for layer in ("resnet 3x3 p1", "grouped 3x3", "5x5 same"):
        run_case(name, NAMED_LAYERS[layer], dtype)


@pytest.mark.parametrize("name", ALGOS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=conv_cases())
def test_generated_specs(name, case):
    run_case(name, case)


@pytest.mark.parametrize("name", ALGOS)
def test_one_by_one_image(name):
    run_case(name, dict(x=(2, 3, 1, 1), w=(4, 3, 1, 1)))
    run_case(name, dict(x=(1, 3, 1, 1), w=(4, 3, 3, 3), padding=1))


def native_kernel(name, x_shape, K):
    """The first of 3x3, 5x5, 1x1, 7x7 that algorithm ``name`` runs (padding k // 2)."""
    algo = convolab.registry.get(name)
    for k in (3, 5, 1, 7):
        if algo.supports(ConvSpec.from_shapes(x_shape, (K, x_shape[1], k, k), padding=k // 2)) is None:
            return k
    raise AssertionError(f"{name} runs none of the probe kernels")


@pytest.mark.parametrize("name", ALGOS)
def test_plan_reuse_and_batch(name):
    k = native_kernel(name, (4, 6, 9, 9), 5)
    x, w, b = make_data((4, 6, 9, 9), (5, 6, k, k))
    p = convolab.plan(x.shape, w, b, padding=k // 2, algorithm=name)
    assert p.algorithm == name
    y1 = p(x)
    y2 = p(x[::-1].copy())
    if convolab.registry.get(name).batch_invariant:
        np.testing.assert_array_equal(y1[::-1], y2)  # images are independent, bit for bit
    else:  # stated otherwise (e.g. fft): each ordering is still within the bound
        check_against_reference(y2[::-1], x, w, b, {"padding": k // 2}, p.error_bound)
    check_against_reference(y1, x, w, b, {"padding": k // 2}, p.error_bound)


@pytest.mark.parametrize("name", ALGOS)
def test_nan_and_inf_propagate_like_reference(name):
    k = native_kernel(name, (1, 4, 8, 8), 4)
    x, w, b = make_data((1, 4, 8, 8), (4, 4, k, k))
    x[0, 1, 3, 4] = np.nan
    x[0, 2, 6, 1] = np.inf
    ref = convolab.reference.conv2d(x, w, b, padding=k // 2)
    y = convolab.conv2d(x, w, b, padding=k // 2, algorithm=name)
    if name in ("direct", "im2col", "im2win"):
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
    else:  # fast algorithms mix a tile's inputs: every non-finite reference output stays non-finite
        assert not np.isfinite(y[~np.isfinite(ref)]).any()


@pytest.mark.parametrize("name", ALGOS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=conv_cases(max_hw=20, max_c=12))
def test_writes_stay_inside_out_and_inputs_are_not_modified(name, case):
    """``out`` is a view into a larger buffer whose margins hold a sentinel: no kernel may
    write outside ``out``, and neither the input nor the weights may change."""
    algo = convolab.registry.get(name)
    x, w, b = make_data(case["x"], case["w"])
    kw = conv_kwargs(case)
    spec = ConvSpec.from_arrays(x, w, b, **kw)
    if algo.supports(spec) is not None:
        return
    size = int(np.prod(spec.out_shape))
    margin = 4096
    buf = np.full(size + 2 * margin, 1234.5, np.float32)
    out = buf[margin: margin + size].reshape(spec.out_shape)
    x0, w0 = x.copy(), w.copy()
    convolab.conv2d(x, w, b, algorithm=name, out=out, **kw)
    assert (buf[:margin] == 1234.5).all() and (buf[margin + size:] == 1234.5).all()
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)
