"""convolab.gpu: the Triton kernels against the float64 reference.

Without a GPU the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set here before
convolab.gpu is imported) on tiny shapes; on a machine with a CUDA GPU the same tests run the
compiled kernels, bfloat16 included (the interpreter has no bfloat16 dot). Skipped where torch or
triton is not installed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # read when kernels are decorated: before triton is imported
pytest.importorskip("triton")

import convolab  # noqa: E402
import convolab.gpu as cg  # noqa: E402
from convolab import reference  # noqa: E402
from convolab.errors import ConvError, UnsupportedError  # noqa: E402
from convolab.gpu import api, bench, cuconv, im2win, implicit_gemm  # noqa: E402
from convolab.gpu._common import Config  # noqa: E402
from convolab.registry import summation_bound  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
ALGOS = list(api.MODULES)
DTYPES = ["float32", "float16"] + (["bfloat16"] if ON_GPU else [])

#: tiny layers: stride, asymmetric padding, dilation, groups, depthwise, batch > 1, odd sizes, 1x1,
#: a stem-like 7x7/2 on 3 channels, and >= 16 channels per group (cuConv's tensor-core path)
CASES = {
    "3x3 p1 batch 2": dict(x=(2, 5, 9, 8), w=(6, 5, 3, 3), padding=1),
    "strided asym dilated groups": dict(x=(1, 6, 11, 10), w=(4, 3, 3, 2), stride=(2, 1), padding=(1, 0, 2, 1),
                                        dilation=(1, 2), groups=2),
    "depthwise 3x3": dict(x=(2, 4, 7, 7), w=(4, 1, 3, 3), padding=1, groups=4),
    "depthwise x2": dict(x=(1, 3, 6, 5), w=(6, 1, 3, 3), padding=(0, 1, 1, 0), groups=3),
    "1x1 odd": dict(x=(3, 7, 5, 3), w=(5, 7, 1, 1)),
    "stem 7x7/2": dict(x=(1, 3, 13, 11), w=(8, 3, 7, 7), stride=2, padding=3),
    "5x5 s3 d2": dict(x=(1, 2, 15, 14), w=(3, 2, 5, 5), stride=3, padding=2, dilation=2),
    "16 ch 3x3": dict(x=(2, 16, 6, 7), w=(16, 16, 3, 3), padding=1),
    "32 ch grouped": dict(x=(1, 64, 5, 5), w=(32, 32, 3, 3), padding=1, groups=2),
}


def kwargs(case):
    return {k: v for k, v in case.items() if k not in ("x", "w")}


def data(case, dtype, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    x = torch.randn(case["x"], generator=g).to(dt)
    w = torch.randn(case["w"], generator=g).to(dt)
    b = torch.randn(case["w"][0], generator=g).to(dt) if bias else None
    return x.to(DEVICE), w.to(DEVICE), None if b is None else b.to(DEVICE)


def check(y, x, w, b, kw, bound):
    """Normwise error against the float64 reference of the same (rounded) inputs."""
    xd, wd = x.double().cpu().numpy(), w.double().cpu().numpy()
    bd = None if b is None else b.double().cpu().numpy()
    ref = reference.conv2d(xd, wd, bd, **kw)
    yd = y.double().cpu().numpy()
    assert yd.shape == ref.shape
    assert not np.isnan(yd).any(), "unwritten (NaN) outputs"
    err = reference.errors(yd, ref, reference.magnitude(xd, wd, bd, **kw))["normwise"]
    spec = convolab.ConvSpec.from_shapes(x.shape, w.shape, dtype=np.float32, **kw)
    tol = bound + summation_bound(spec, np.float64)
    assert err <= tol, f"normwise error {err:.3e} > bound {tol:.3e}"
    return err


def run_nan_filled(p, x, config=None):
    """Launch ``p``'s kernels into an output pre-filled with NaN (every element must be written)."""
    out = p._empty_out(x).fill_(float("nan"))
    p.run_config(x, out, config or p.config)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", ALGOS)
def test_against_reference(name, case, dtype):
    c = CASES[case]
    x, w, b = data(c, dtype)
    p = cg.plan(x.shape, w, b, algorithm=name, **kwargs(c))
    assert p.algorithm == name and p.deterministic
    y = run_nan_filled(p, x)
    assert y.dtype == x.dtype and tuple(y.shape) == p.spec.out_shape
    check(y, x, w, b, kwargs(c), p.error_bound)


@pytest.mark.parametrize("name", ALGOS)
def test_tf32_within_its_bound(name):
    c = CASES["16 ch 3x3"]
    x, w, b = data(c, "float32")
    p = cg.plan(x.shape, w, b, algorithm=name, precision="tf32", **kwargs(c))
    assert p.error_bound > cg.plan(x.shape, w, b, algorithm=name, **kwargs(c)).error_bound
    check(run_nan_filled(p, x), x, w, b, kwargs(c), p.error_bound)


SPLIT_CONFIGS = {
    "implicit_gemm_gpu": Config.make(4, 2, 3, BM=32, BN=16, BK=16, GROUP_M=2),
    "im2win_gpu": Config.make(4, 2, 4, BM=32, BN=16, BK=16, GROUP_M=2),
    "cuconv_gpu": Config.make(4, 2, 4, BK=16, BP=16, BC=16),
}


@pytest.mark.parametrize("name", ALGOS)
def test_split_reductions_and_small_tiles(name):
    """Split-K / tap groups added by the fixed-order second pass; tiles smaller than the problem."""
    c = dict(x=(2, 32, 7, 6), w=(24, 32, 3, 3), padding=1, stride=(1, 2))
    x, w, b = data(c, "float32", seed=3)
    p = cg.plan(x.shape, w, b, algorithm=name, config=SPLIT_CONFIGS[name], **kwargs(c))
    assert p.config.split > 1 and p.workspace_bytes >= 2 * np.prod(p.spec.out_shape) * 4
    y = run_nan_filled(p, x)
    check(y, x, w, b, kwargs(c), p.error_bound)
    assert torch.equal(y, p(x))  # a pinned plan: the same bits on every call


def test_cuconv_scalar_path_split():
    c = CASES["depthwise 3x3"]
    x, w, b = data(c, "float32", seed=1)
    cfg = Config.make(4, 1, 5, BK=8, BP=16)
    p = cg.plan(x.shape, w, b, algorithm="cuconv_gpu", config=cfg, **kwargs(c))
    check(run_nan_filled(p, x), x, w, b, kwargs(c), p.error_bound)


@pytest.mark.parametrize("name", ALGOS)
def test_channels_last_input_same_bits(name):
    c = CASES["16 ch 3x3"]
    x, w, b = data(c, "float32", seed=2)
    p = cg.plan(x.shape, w, b, algorithm=name, **kwargs(c))
    y1 = p(x)
    xl = x.contiguous(memory_format=torch.channels_last)
    y2 = p(xl)
    assert y2.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y1, y2)


def test_dense_one_by_one_path_same_bits():
    """On the tensor-core paths a 1x1 stride-1 layer on a channels-last input takes the dense A
    path: same bits as the general path on NCHW."""
    x, w, b = data(dict(x=(2, 32, 5, 3), w=(24, 32, 1, 1)), "float32")
    p = cg.plan(x.shape, w, b, algorithm="implicit_gemm_gpu", precision="tf32")
    assert implicit_gemm.kmajor("float32", "tf32") and not implicit_gemm.kmajor("float32", "ieee")
    xl = x.contiguous(memory_format=torch.channels_last)
    assert implicit_gemm.dense(p.spec, xl) and not implicit_gemm.dense(p.spec, x)
    y = run_nan_filled(p, xl)
    check(y, x, w, b, {}, p.error_bound)
    assert torch.equal(y, p(x))


def test_images_are_independent():
    c = dict(x=(3, 16, 6, 6), w=(16, 16, 3, 3), padding=1)
    x, w, _ = data(c, "float32", bias=False)
    for name in ALGOS:
        p = cg.plan(x.shape, w, algorithm=name, padding=1)
        assert torch.equal(p(x).flip(0), p(x.flip(0).contiguous())), name


def test_conv2d_and_out():
    c = CASES["3x3 p1 batch 2"]
    x, w, b = data(c, "float32")
    y = cg.conv2d(x, w, b, padding=1)
    check(y, x, w, b, {"padding": 1}, cg.plan(x.shape, w, b, padding=1).error_bound)
    y = cg.conv2d(x, w, b, padding=1, algorithm="implicit_gemm_gpu")
    out = torch.zeros_like(y)
    r = cg.conv2d(x, w, b, padding=1, algorithm="implicit_gemm_gpu", out=out)
    assert r is out and torch.equal(out, y)


def test_auto_rule():
    small = cg.plan((1, 64, 7, 7), torch.zeros(64, 64, 3, 3, device=DEVICE), padding=1)
    big = cg.plan((32, 64, 28, 28), torch.zeros(64, 64, 3, 3, device=DEVICE), padding=1)
    dw = cg.plan((8, 32, 28, 28), torch.zeros(32, 1, 3, 3, device=DEVICE), padding=1, groups=32)
    assert (small.algorithm, big.algorithm, dw.algorithm) == ("cuconv_gpu", "implicit_gemm_gpu", "cuconv_gpu")
    assert "algorithm: cuconv_gpu" in small.explain()


def test_measure_pins_and_caches():
    c = dict(x=(1, 16, 5, 5), w=(16, 16, 3, 3), padding=1)
    x, w, _ = data(c, "float32", bias=False)
    p = cg.plan(x.shape, w, padding=1, algorithm="implicit_gemm_gpu", measure=True, reps=1)
    assert p.measured_ms is not None and "measured" in p.explain()
    assert p.config in implicit_gemm.candidates(p.spec, "float32", api.device_info())
    again = cg.plan(x.shape, w, padding=1, algorithm="implicit_gemm_gpu")
    assert again.config == p.config and "measured earlier" in again.explain()
    entries = json.loads(api.CONFIGS.path.read_text())["entries"]
    assert any(json.loads(k)["algorithm"] == "implicit_gemm_gpu" for k in entries)


def test_config_roundtrip_and_validation():
    cfg = Config.make(8, 3, 2, BM=128, BN=64, BK=32, GROUP_M=8)
    assert Config.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    w = torch.zeros(8, 8, 3, 3, device=DEVICE)
    with pytest.raises(ConvError, match="needs tiles"):
        cg.plan((1, 8, 6, 6), w, algorithm="implicit_gemm_gpu", config=Config.make(4, 2, 1, BK=16, BP=16, BC=16))
    with pytest.raises(ConvError, match="shared memory"):
        cg.plan((1, 8, 6, 6), w, algorithm="implicit_gemm_gpu",
                config=Config.make(8, 8, 1, BM=256, BN=256, BK=128, GROUP_M=8))


def test_bad_inputs_name_the_value():
    w = torch.zeros(8, 4, 3, 3, device=DEVICE)
    p = cg.plan((1, 4, 6, 6), w, padding=1, algorithm="implicit_gemm_gpu")
    with pytest.raises(ConvError, match=r"shape \(1, 4, 6, 6\), got \(1, 4, 6, 7\)"):
        p(torch.zeros(1, 4, 6, 7, device=DEVICE))
    with pytest.raises(ConvError, match="float16"):
        p(torch.zeros(1, 4, 6, 6, device=DEVICE, dtype=torch.float16))
    with pytest.raises(ConvError, match="precision"):
        cg.plan((1, 4, 6, 6), w.half(), precision="tf32")
    with pytest.raises(ConvError, match="precision must be one of"):
        cg.plan((1, 4, 6, 6), w, precision="fp64")
    with pytest.raises(ConvError, match="float64"):
        cg.plan((1, 4, 6, 6), w.double())
    with pytest.raises(ConvError, match="torch tensor"):
        cg.plan((1, 4, 6, 6), np.zeros((8, 4, 3, 3), np.float32))
    with pytest.raises(ConvError, match="groups=3"):
        cg.plan((1, 4, 6, 6), w, groups=3)
    with pytest.raises(UnsupportedError, match="CPU algorithm"):
        cg.plan((1, 4, 6, 6), w, algorithm="im2col")
    with pytest.raises(ConvError, match="unknown algorithm 'nope'"):
        cg.plan((1, 4, 6, 6), w, algorithm="nope")
    out = torch.full((1, 8, 6, 6), 7.0, device=DEVICE)
    with pytest.raises(ConvError, match="out must be"):
        p(torch.zeros(1, 4, 6, 6, device=DEVICE), out=out[:, :4])
    assert bool((out == 7.0).all())  # nothing written on failure
    if ON_GPU:
        with pytest.raises(ConvError, match="cuda tensor"):
            p(torch.zeros(1, 4, 6, 6))


def test_registry_keeps_cpu_and_gpu_apart():
    cpu = [a.name for a in convolab.list_algorithms()]
    gpu = [a.name for a in convolab.registry.list_algorithms("cuda")]
    assert gpu == ALGOS and not set(cpu) & set(gpu)
    spec = convolab.ConvSpec.from_shapes((1, 4, 6, 6), (8, 4, 3, 3), padding=1)
    assert convolab.registry.get("cuconv_gpu").error_bound(spec, np.float32) > 0
    x = np.zeros((1, 4, 6, 6), np.float32)
    with pytest.raises(UnsupportedError, match="cuda tensors"):
        convolab.conv2d(x, np.zeros((8, 4, 3, 3), np.float32), algorithm="implicit_gemm_gpu")


@pytest.mark.parametrize("name", ALGOS)
def test_registry_record_prepares_and_runs(name):
    c = CASES["3x3 p1 batch 2"]
    x, w, _ = data(c, "float32", bias=False)
    algo = convolab.registry.get(name)
    spec = convolab.ConvSpec.from_shapes(x.shape, w.shape, padding=1)
    out = torch.full(spec.out_shape, float("nan"), device=DEVICE)
    algo.run(algo.prepare(spec, w), x, out)
    check(out, x, w, None, {"padding": 1}, algo.error_bound(spec, np.float32))


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
def test_core_conv2d_routes_cuda_tensors():
    x, w, b = data(CASES["16 ch 3x3"], "float32")
    y = convolab.conv2d(x, w, b, padding=1)
    assert y.is_cuda
    assert torch.equal(y, cg.plan(x.shape, w, b, padding=1)(x))


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ALGOS)
def test_bitwise_over_runs_on_gpu(name):
    x, w, b = data(dict(x=(4, 64, 14, 14), w=(64, 64, 3, 3)), "float32")
    p = cg.plan(x.shape, w, b, algorithm=name, padding=1)
    y = p(x)
    assert all(torch.equal(y, p(x)) for _ in range(10))


def test_im2win_workspace_vs_im2col():
    """The window tensor over the papers' 12 layers: 0.24-0.47 of im2col's matrix."""
    from convolab.bench.suites import suite

    ratios = [im2win.window_elements(s) / im2win.im2col_elements(s) for _, s in suite("im2win12", 128)]
    assert 0.2 < min(ratios) and max(ratios) < 0.5
    total = sum(im2win.window_elements(s) for _, s in suite("im2win12", 128)) / sum(
        im2win.im2col_elements(s) for _, s in suite("im2win12", 128))
    assert total < 0.4


def test_candidates_fit_shared_memory():
    dev = api.device_info()
    for xs, ws in (((32, 64, 56, 56), (64, 64, 3, 3)), ((1, 512, 7, 7), (512, 512, 3, 3)),
                   ((1, 32, 14, 14), (32, 1, 3, 3))):
        spec = convolab.ConvSpec.from_shapes(xs, ws, padding=1, groups=xs[1] // ws[1])
        for mod in (implicit_gemm, im2win, cuconv):
            for dtype in ("float32", "float16"):
                cands = mod.candidates(spec, dtype, dev)
                assert cands and mod.default(spec, dtype, dev).tiles.keys() == cands[0].tiles.keys()
                assert all(mod.shared_memory(c, 4 if dtype == "float32" else 2) <= dev.smem for c in cands)


def test_bench_layer_dry_run(capsys):
    """The benchmark's code path on one tiny layer (on the interpreter its times mean nothing)."""
    spec = convolab.ConvSpec.from_shapes((1, 16, 5, 5), (16, 16, 3, 3), padding=1)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    es = bench.bench_layer("tiny", "t", spec, ["float32"], ["cuconv_gpu"], gen, print)
    for e in es:
        e.extra["out_pixels"] = 25
    impls = [e.impl for e in es]
    assert impls == ["cudnn-nchw", "cudnn-nhwc", "cuconv_gpu"]
    ours = es[-1]
    assert ours.ms > 0 and ours.distinct_outputs == 1 and ours.normwise_err <= ours.error_bound
    s = bench.summarize(es)
    assert s["batch1_small_layers_wins"]["float32"]["layers"] == 1
    md = bench.markdown(bench.machine_info(), es, s, [])
    assert "| tiny@1 | t | float32 | cuconv_gpu |" in md
    assert bench.parse_suites("im2win12@128,cuconv")[0][1] == 128


@pytest.mark.skipif(ON_GPU, reason="compile check is for machines without a GPU")
def test_kernels_compile_for_hopper():
    """Every kernel compiles for sm_90 with Triton's compiler (which the interpreter never runs),
    within the shared memory of an H100/H200."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("gpu_compile.py")
    r = subprocess.run([sys.executable, str(script), "--quick"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "largest shared memory" in r.stdout
