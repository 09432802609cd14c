"""conv2d / plan: semantics against PyTorch, bad inputs, out=, dtypes, threads, memory refusal."""

import threading

import numpy as np
import pytest
from conftest import make_data

import convolab
from convolab import ConvError, UnsupportedError, reference
from convolab.registry import Algorithm, register, unregister

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    "kw",
    [
        dict(stride=1, padding=1),
        dict(stride=2, padding=(2, 1), dilation=(1, 2)),
        dict(padding="same", dilation=2),
        dict(padding="valid", stride=(3, 2)),
        dict(groups=3, padding=1),
        dict(groups=6, padding=1),  # depthwise
    ],
)
def test_reference_and_conv2d_match_torch(kw):
    x, w, b = make_data((2, 6, 11, 9), (6, 6 // kw.get("groups", 1), 3, 3), np.float64)
    yt = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **kw)
    np.testing.assert_allclose(reference.conv2d(x, w, b, **kw), yt.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(convolab.conv2d(x, w, b, **kw), yt.numpy(), rtol=1e-10, atol=1e-10)


def test_asymmetric_padding_matches_torch_pad_then_conv():
    x, w, b = make_data((1, 3, 8, 7), (2, 3, 3, 3), np.float64)
    xt = torch.nn.functional.pad(torch.from_numpy(x), (1, 2, 0, 3))  # left, right, top, bottom
    yt = torch.nn.functional.conv2d(xt, torch.from_numpy(w), torch.from_numpy(b))
    y = convolab.conv2d(x, w, b, padding=(1, 2, 0, 3))
    np.testing.assert_allclose(y, yt.numpy(), rtol=1e-10, atol=1e-10)


def test_integer_reference_is_exact():
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (1, 4, 6, 6), dtype=np.int8)
    w = rng.integers(-128, 128, (3, 4, 3, 3), dtype=np.int8)
    y = reference.conv2d(x, w, padding=1)
    assert y.dtype == np.int64
    xt, wt = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64))
    yt = torch.nn.functional.conv2d(xt, wt, padding=1)
    np.testing.assert_array_equal(y, yt.numpy().astype(np.int64))


def test_dtypes():
    x, w, b = make_data((1, 3, 6, 6), (2, 3, 3, 3), np.float16)
    y = convolab.conv2d(x, w, b)
    assert y.dtype == np.float16
    ref = reference.conv2d(x, w, b)
    np.testing.assert_allclose(y.astype(np.float64), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    assert convolab.conv2d(x.astype(np.float64), w.astype(np.float64)).dtype == np.float64
    assert convolab.conv2d(x.astype(np.float32), w.astype(np.float64)).dtype == np.float64
    with pytest.raises(ConvError, match="int32"):
        convolab.conv2d(x.astype(np.int32), w.astype(np.int32))
    with pytest.raises(ConvError, match="complex"):
        convolab.conv2d(x.astype(np.complex64), w)


def test_strided_inputs_are_accepted():
    x, w, b = make_data((2, 8, 10, 12), (4, 4, 3, 3))
    xs = x[:, ::2, :, ::-1]  # non-contiguous view
    y = convolab.conv2d(xs, w, b, padding=1)
    np.testing.assert_allclose(y, reference.conv2d(xs, w, b, padding=1), rtol=1e-4, atol=1e-4)
    yf = convolab.conv2d(np.asfortranarray(x[:, :4]), w, b)
    np.testing.assert_allclose(yf, reference.conv2d(x[:, :4], w, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, w, b: convolab.conv2d(x[0], w, b), "4-D"),
        (lambda x, w, b: convolab.conv2d(x, w[:, :2], b), "C=4"),
        (lambda x, w, b: convolab.conv2d(x, w, b, groups=3), "groups=3"),
        (lambda x, w, b: convolab.conv2d(x, w, b[:2]), "bias"),
        (lambda x, w, b: convolab.conv2d(x, w, b, stride=0), "stride"),
        (lambda x, w, b: convolab.conv2d(x, w, b, padding=-1), "padding"),
        (lambda x, w, b: convolab.conv2d(x, w, b, padding="same", stride=2), "same"),
        (lambda x, w, b: convolab.conv2d(x[:, :, :1], w, b), "empty output"),
        (lambda x, w, b: convolab.conv2d(x.astype(bool), w, b), "bool"),
        (lambda x, w, b: convolab.conv2d(x, w, b, algorithm="nope"), "unknown algorithm 'nope'"),
        (lambda x, w, b: convolab.conv2d(x, w, b, out=np.empty((1, 4, 6, 6), np.float32)), "out has shape"),
        (lambda x, w, b: convolab.conv2d(x, w, b, out=np.empty((1, 4, 4, 4), np.float64)), "out has dtype"),
    ],
)
def test_bad_inputs_raise_and_leave_out_untouched(call, match):
    x, w, b = make_data((1, 4, 6, 6), (4, 4, 3, 3))
    with pytest.raises(ConvError, match=match):
        call(x, w, b)
    out = np.full((1, 4, 4, 4), 7.0, np.float32)
    with pytest.raises(ConvError):
        convolab.conv2d(x, w, b[:3], out=out)
    assert (out == 7.0).all()


def test_out_readonly_and_plan_shape_checks():
    x, w, b = make_data((1, 4, 6, 6), (4, 4, 3, 3))
    out = np.zeros((1, 4, 4, 4), np.float32)
    out.flags.writeable = False
    with pytest.raises(ConvError, match="read-only"):
        convolab.conv2d(x, w, b, out=out)
    p = convolab.plan(x.shape, w, b)
    with pytest.raises(ConvError, match="shape"):
        p(x[:, :, :5])
    with pytest.raises(ConvError, match="float64"):
        p(x.astype(np.float64))


@pytest.fixture
def picky_algorithm():
    def supports(spec):
        return None if spec.R == 3 else f"kernel {spec.R}x{spec.S} is not 3x3"

    algo = Algorithm(
        name="test_picky",
        supports=supports,
        prepare=lambda spec, w: (spec, w),
        run=lambda p, x, out: out.__setitem__(Ellipsis, reference.conv2d(x, p[1], padding=p[0].padding,
                                                                          stride=p[0].stride)),
        workspace_bytes=lambda spec: 0,
        multiplies=lambda spec: spec.direct_multiplies,
        deterministic=True,
    )
    register(algo)
    yield algo
    unregister(algo.name)


def test_unsupported_error_names_reason_and_alternatives(picky_algorithm):
    x, w, b = make_data((1, 2, 6, 6), (2, 2, 5, 5))
    with pytest.raises(UnsupportedError, match=r"kernel 5x5 is not 3x3; algorithms that can: .*direct.*im2col") as e:
        convolab.conv2d(x, w, b, algorithm="test_picky")
    assert e.value.algorithm == "test_picky" and "direct" in e.value.alternatives
    assert isinstance(e.value, ConvError)


def test_duplicate_registration_refused(picky_algorithm):
    with pytest.raises(ConvError, match="already registered"):
        register(picky_algorithm)
    names = [a.name for a in convolab.list_algorithms()]
    assert names.count("test_picky") == 1 and {"direct", "im2col"} <= set(names)
    assert all(isinstance(a.deterministic, bool) for a in convolab.list_algorithms())


def test_workspace_larger_than_memory_is_refused(monkeypatch):
    import convolab.api as api

    x, w, b = make_data((1, 8, 16, 16), (8, 8, 3, 3))
    monkeypatch.setattr(api, "available_memory", lambda: 1000)
    out = np.full((1, 8, 14, 14), 3.0, np.float32)
    msg = r"'im2col' needs 55.1 KiB .* only 1000 B is available; algorithm 'direct' needs 0 B"
    with pytest.raises(ConvError, match=msg):
        convolab.conv2d(x, w, b, algorithm="im2col", out=out)
    assert (out == 3.0).all()
    with pytest.raises(ConvError, match="im2col"):
        convolab.plan(x.shape, w, algorithm="im2col")


def test_plan_attributes_and_explain():
    x, w, b = make_data((1, 8, 10, 10), (16, 8, 3, 3))
    p = convolab.plan(x.shape, w, b, padding=1, algorithm="im2col")
    assert p.algorithm == "im2col"
    assert p.workspace_bytes == 8 * 9 * 10 * 10 * 4
    assert p.multiplies == 16 * 10 * 10 * 8 * 9
    text = p.explain()
    assert "im2col" in text and "workspace" in text and "direct" in text
    auto = convolab.plan(x.shape, w, padding=1)
    assert auto.algorithm in {a.name for a in convolab.list_algorithms()}
    assert "algorithm='auto'" in auto.explain()


def test_threads_give_identical_results_to_serial_calls():
    x, w, b = make_data((2, 8, 12, 12), (8, 8, 3, 3))
    inputs = [np.random.default_rng(i).standard_normal(x.shape).astype(np.float32) for i in range(8)]
    for algo in ("direct", "im2col"):
        p = convolab.plan(x.shape, w, b, padding=1, algorithm=algo)
        serial = [p(xi) for xi in inputs]
        results = [None] * len(inputs)

        def work(i, p=p, results=results):
            for _ in range(3):
                results[i] = p(inputs[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s, r in zip(serial, results, strict=True):
            np.testing.assert_array_equal(s, r)
        # conv2d itself from threads
        res2 = [None] * 4
        ths = [threading.Thread(target=lambda i=i, algo=algo, res2=res2: res2.__setitem__(
            i, convolab.conv2d(inputs[i], w, b, padding=1, algorithm=algo))) for i in range(4)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        for i in range(4):
            np.testing.assert_array_equal(res2[i], serial[i])


def test_torch_in_torch_out_without_copies():
    """Arrays in, the same arrays out: a CPU tensor gives a tensor holding the result's memory;
    tensors are read through their NumPy views; ``out`` tensors are filled and returned."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((2, 4, 9, 8)).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal((6, 4, 3, 3)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal(6).astype(np.float32))
    ref = torch.nn.functional.conv2d(x, w, b, padding=1)
    y = convolab.conv2d(x, w, b, padding=1, algorithm="direct")
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    yn = convolab.conv2d(x.numpy(), w.numpy(), b.numpy(), padding=1, algorithm="direct")
    assert isinstance(yn, np.ndarray)
    np.testing.assert_array_equal(y.numpy(), yn)
    # a plan: the same rule; its out= may be a tensor, filled in place and returned
    p = convolab.plan(x.shape, w, b, padding=1, algorithm="direct")
    out = torch.empty(2, 6, 9, 8)
    r = p(x, out=out)
    assert r is out
    np.testing.assert_array_equal(out.numpy(), yn)
    assert isinstance(p(x.numpy()), np.ndarray)
    # autograd is detached; a strided (channels-last) tensor is read as it is
    xg = x.clone().requires_grad_()
    assert not convolab.conv2d(xg, w, b, padding=1).requires_grad
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(convolab.conv2d(xc, w, b, padding=1, algorithm="direct"), y, rtol=0, atol=0)


def test_torch_dtype_numpy_cannot_hold_is_refused():
    x = torch.zeros(1, 2, 5, 5, dtype=torch.bfloat16)
    with pytest.raises(convolab.ConvError, match="x has dtype torch.bfloat16"):
        convolab.conv2d(x, np.ones((2, 2, 3, 3), np.float32))


def test_plan_names_the_kernel_that_runs():
    w = np.ones((64, 64, 3, 3), np.float32)
    d = convolab.plan((1, 64, 20, 20), w, padding=1, algorithm="direct")
    assert "microkernel" in d.kernel and f"kernel: {d.kernel}" in d.explain()
    dw = convolab.plan((1, 64, 20, 20), np.ones((64, 1, 3, 3), np.float32), padding=1, groups=64,
                       algorithm="direct")
    assert dw.kernel.startswith("depthwise kernel")
    s = convolab.plan((1, 64, 20, 20), w, padding=1, algorithm="sfc6_6x3")
    assert "GEMMs" in s.kernel and any(f", {m}: " in s.kernel for m in ("blocks", "dealt", "phases",
                                                                        "channels", "serial"))
    assert "GEMM" in convolab.plan((1, 64, 20, 20), w, padding=1, algorithm="im2col").kernel


def test_algorithms_is_the_subpackage_and_list_algorithms_lists():
    import subprocess
    import sys
    import types

    assert isinstance(convolab.algorithms, types.ModuleType)
    names = [a.name for a in convolab.list_algorithms()]
    assert {"direct", "im2col", "im2win", "fft", "winograd_f2x3", "sfc6_6x3"} <= set(names)
    r = subprocess.run([sys.executable, "-c", "import convolab.algorithms.fft as f; print(f.__name__)"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "convolab.algorithms.fft"
