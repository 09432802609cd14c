"""GPU plans: `plan` -> `GPUPlan`, `conv2d`; the pinned kernel configuration and its measured cache.

A `GPUPlan` is like the CPU `convolab.ConvPlan`: made once for an input shape, it holds the
algorithm, the filter packed on the device, the dtype and float32 precision, and one kernel
configuration (`Config`: tiles, warps, stages, split). The configuration is chosen by
convolab's own planner, not ``triton.autotune``: by a rule per algorithm, or with
``measure=True`` by timing the algorithm's candidate configurations on the device and keeping
the fastest, stored in the ``gpu_configs.json`` cache (keyed by GPU, Triton and convolab
versions, convolution, dtype, precision and algorithm) so later plans reuse it without timing.
Because a plan's configuration is pinned and no kernel uses atomics, calling the same plan on
the same input gives the same bits every time.

Tensors: NCHW-shaped CUDA torch tensors in and out, any strides (a ``torch.channels_last``
input gives a channels-last output, as in PyTorch). float32 (IEEE products by default;
``precision="tf32"`` for the tensor cores' TF32), float16 and bfloat16; accumulation is float32.
Under ``TRITON_INTERPRET=1`` (set before importing) the kernels run in Triton's CPU interpreter
on CPU tensors, which is how the test suite checks them without a GPU.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from .._version import __version__
from ..cache import _FileCache
from ..errors import ConvError, UnsupportedError
from ..registry import Algorithm, capable, get, register, register_device
from ..spec import ConvSpec
from . import cuconv, im2win, implicit_gemm
from ._common import (
    DTYPES,
    INTERPRET,
    Config,
    check_precision,
    device_info,
    dtype_name,
    error_bound,
    triton_version,
)

#: algorithm name -> its kernel module
MODULES = {m.NAME: m for m in (implicit_gemm, im2win, cuconv)}

#: measured configurations: key (see `cache_key`) -> {"config": ..., "ms": ...}
CONFIGS = _FileCache("gpu_configs.json", "convolab-gpu-configs")


def _bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def _multiplies(spec: ConvSpec) -> int:
    return spec.direct_multiplies


def _record(mod, summary: str) -> Algorithm:
    def workspace(spec: ConvSpec) -> int:
        return mod.workspace_bytes(spec, mod.default(spec, "float32", device_info()), 4)

    def prepare(spec: ConvSpec, w) -> GPUPlan:
        # the planner's rule for the weights' dtype; IEEE float32 (plan() takes the other options)
        dtype = dtype_name(w.dtype)
        return GPUPlan(spec, mod.NAME, w, None, dtype, "ieee", mod.default(spec, dtype, device_info()), "registry")

    return Algorithm(
        name=mod.NAME,
        supports=mod.supports,
        prepare=prepare,
        run=lambda prepared, x, out: prepared.run_config(x, out, prepared.config),
        workspace_bytes=workspace,
        multiplies=_multiplies,
        deterministic=True,
        error_bound=lambda spec, dtype: error_bound(spec, dtype_name(_torch_dtype(dtype))),
        summary=summary,
        device="cuda",
    )


def _torch_dtype(dtype):
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[np.dtype(dtype).name]
    except (TypeError, KeyError):
        raise ConvError(f"unsupported dtype {dtype} for the GPU kernels; use float32, float16 or bfloat16") from None


def cache_key(spec: ConvSpec, algorithm: str, dtype: str, precision: str) -> str:
    s = spec
    return json.dumps(
        {
            "conv": [s.N, s.C, s.H, s.W, s.K, s.R, s.S, list(s.stride), list(s.padding), list(s.dilation), s.groups],
            "algorithm": algorithm, "dtype": dtype, "precision": precision,
            "gpu": device_info().name, "triton": triton_version(), "version": __version__,
        },
        sort_keys=True,
    )


def _check_tensor(t, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ConvError(f"{what} must be a torch tensor, got {type(t).__name__}")
    want = "cpu" if INTERPRET else "cuda"
    if t.device.type != want:
        hint = (" (set TRITON_INTERPRET=1 before importing convolab.gpu to run the kernels in Triton's "
                "CPU interpreter, for testing)" if want == "cuda" else "")
        raise ConvError(f"{what} must be a {want} tensor, got one on {t.device}{hint}")


def _time_ms(fn, reps: int = 5, target_ms: float = 0.5) -> float:
    """GPU milliseconds of one call of ``fn``.

    ``fn`` is captured ``n`` times in a CUDA graph (n chosen so that one replay lasts about
    ``target_ms``) and the replays are timed with CUDA events; the median over ``reps`` replays,
    divided by n, is returned. Replaying a graph leaves out the host's launch overhead (Python,
    Triton's launcher: tens of microseconds a launch), which otherwise swamps small layers; both
    convolab and the cuDNN peer are timed this way. Falls back to timing eager calls where a graph
    cannot be captured; under the interpreter, wall-clock time of one call.
    """
    fn()
    if INTERPRET:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    a.record()
    fn()
    b.record()
    b.synchronize()
    n = max(1, min(200, int(target_ms / max(a.elapsed_time(b), 1e-3))))
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(n):
                fn()
        graph.replay()
    except RuntimeError:  # not capturable: eager calls, host overhead included
        graph, n = None, 1
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a.record()
        if graph is not None:
            graph.replay()
        else:
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / n)
    del graph
    return float(np.median(times))


class GPUPlan:
    """A GPU convolution planned for one input shape; call it as ``plan(x)`` or ``plan(x, out=y)``.

    Attributes: ``spec``, ``algorithm``, ``dtype`` (name), ``precision``, ``config``,
    ``workspace_bytes``, ``error_bound``, ``deterministic`` (always True: pinned configuration,
    fixed-order reductions), ``measured_ms`` (when the configuration was timed).
    """

    def __init__(self, spec, algorithm, w, bias, dtype, precision, config, how, measured_ms=None, tried=()):
        self.spec = spec
        self.algorithm = algorithm
        self.dtype = dtype
        self.precision = precision
        self.config = config
        self.measured_ms = measured_ms
        self._how = how
        self._tried = list(tried)
        self._mod = MODULES[algorithm]
        self._w = self._mod.pack(spec, w, implicit_gemm.kmajor(dtype, precision))
        self._bias = None if bias is None else bias.to(torch.float32).contiguous()

    @property
    def workspace_bytes(self) -> int:
        return self._mod.workspace_bytes(self.spec, self.config, _bytes(self.dtype))

    @property
    def shared_memory_bytes(self) -> int:
        return self._mod.shared_memory(self.config, _bytes(self.dtype))

    @property
    def error_bound(self) -> float:
        return error_bound(self.spec, self.dtype, self.precision)

    @property
    def deterministic(self) -> bool:
        return True

    def explain(self) -> str:
        s = self.spec
        lines = [
            f"convolution {s} ({self.dtype}, precision {self.precision}), output {s.out_shape}",
            f"algorithm: {self.algorithm}; configuration: {self.config} ({self._how})",
            f"workspace: {self.workspace_bytes / 2**20:.1f} MiB; shared memory per program: "
            f"{self.shared_memory_bytes / 1024:.0f} KiB; error bound (normwise): {self.error_bound:.2e}",
        ]
        if self._tried:
            lines.append("measured (ms): " + ", ".join(f"{c} {ms:.3f}" if ms is not None else f"{c} failed"
                                                       for c, ms in self._tried))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"GPUPlan({self.spec}, algorithm={self.algorithm!r}, dtype={self.dtype}, config=({self.config}))"

    def _check_input(self, x) -> None:
        _check_tensor(x, "input")
        if tuple(x.shape) != self.spec.x_shape:
            raise ConvError(f"this plan is for inputs of shape {self.spec.x_shape}, got {tuple(x.shape)}")
        if x.dtype != DTYPES[self.dtype]:
            raise ConvError(f"this plan is for {self.dtype} inputs, got {x.dtype}")
        if x.device != self._w.device:
            raise ConvError(f"the input is on {x.device} but the plan's weights are on {self._w.device}")

    def _empty_out(self, x):
        fmt = (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
               and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        return torch.empty(self.spec.out_shape, device=x.device, dtype=x.dtype, memory_format=fmt)

    def run_config(self, x, out, config: Config) -> None:
        """Launch with another configuration (used when measuring); no checks."""
        self._mod.launch(self.spec, self._w, x, self._bias, out, config, self.dtype, self.precision)

    def __call__(self, x, *, out=None):
        self._check_input(x)
        if out is not None:
            _check_tensor(out, "out")
            if tuple(out.shape) != self.spec.out_shape or out.dtype != x.dtype or out.device != x.device:
                raise ConvError(f"out must be a {x.dtype} tensor of shape {self.spec.out_shape} on {x.device}, "
                                f"got {out.dtype} {tuple(out.shape)} on {out.device}")
            y = self._empty_out(x)
            self.run_config(x, y, self.config)
            out.copy_(y)  # written only once the kernels have succeeded
            return out
        y = self._empty_out(x)
        self.run_config(x, y, self.config)
        return y


def _auto_algorithm(spec: ConvSpec) -> str:
    """The rule without measuring: cuConv where GEMM tiles are too few to fill the device (a
    batch of at most 4 images of at most 196 output pixels) or for depthwise / narrow groups,
    the implicit GEMM elsewhere."""
    if spec.Cg < 16 or spec.Kg < 16:
        return cuconv.NAME
    if spec.N <= 4 and spec.OH * spec.OW <= 196:
        return cuconv.NAME
    return implicit_gemm.NAME


def _measure(spec, name, w, bias, dtype, precision, reps) -> tuple[Config, float, list]:
    """Time every candidate configuration of ``name`` on random data; the fastest and the log."""
    mod = MODULES[name]
    dev = device_info()
    cands = mod.candidates(spec, dtype, dev)
    plan = GPUPlan(spec, name, w, bias, dtype, precision, cands[0], "measuring")
    gen = torch.Generator(device=w.device).manual_seed(0)
    x = torch.randn(spec.x_shape, device=w.device, dtype=torch.float32, generator=gen).to(DTYPES[dtype])
    tried = []
    for cfg in cands:
        out = plan._empty_out(x)
        try:
            ms = _time_ms(lambda cfg=cfg, out=out: plan.run_config(x, out, cfg), reps)
        except Exception as e:  # a configuration the compiler rejects (e.g. out of shared memory) is skipped
            if "OutOfResources" not in type(e).__name__ and "CompilationError" not in type(e).__name__:
                raise
            ms = None
        tried.append((cfg, ms))
    ok = [(ms, i) for i, (_, ms) in enumerate(tried) if ms is not None]
    if not ok:
        raise ConvError(f"no configuration of {name} compiled for {spec} ({dtype})")
    ms, i = min(ok)
    return tried[i][0], ms, tried


def plan(
    x_shape, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm="auto",
    precision="ieee", config: Config | None = None, measure=False, reps=20,
) -> GPUPlan:
    """Plan a GPU convolution of inputs of shape ``x_shape`` with the CUDA tensor ``w``.

    Parameters
    ----------
    x_shape : tuple of 4 ints
        (N, C, H, W).
    w : torch.Tensor, shape (K, C/groups, R, S), on the GPU
        float32, float16 or bfloat16: the dtype the plan computes in (float32 accumulation).
    bias : torch.Tensor, shape (K,), optional
    stride, padding, dilation, groups
        As `convolab.conv2d` (PyTorch semantics).
    algorithm : str
        "implicit_gemm_gpu", "im2win_gpu", "cuconv_gpu" or "auto".
    precision : {"ieee", "tf32"}
        float32 only: IEEE products (default) or TF32 tensor-core products.
    config : Config, optional
        Pin this kernel configuration (e.g. one reported by ``explain()``).
    measure : bool
        Time the candidate configurations (of every algorithm, with "auto") and keep the
        fastest; stored in the ``gpu_configs.json`` cache and reused by later plans.
    reps : int
        Timed calls per candidate when measuring (median kept).

    Returns
    -------
    GPUPlan
    """
    _check_tensor(w, "weight")
    dtype = dtype_name(w.dtype)
    precision = check_precision(precision, dtype)
    if bias is not None:
        _check_tensor(bias, "bias")
    spec = ConvSpec.from_shapes(x_shape, tuple(w.shape), stride, padding, dilation, groups, np.float32,
                                None if bias is None else tuple(bias.shape))
    if not isinstance(algorithm, str):
        raise ConvError(f"algorithm must be a name or 'auto', got {algorithm!r}")
    names = list(MODULES) if algorithm == "auto" and measure else [
        _auto_algorithm(spec) if algorithm == "auto" else algorithm]
    for name in names:
        if name not in MODULES:
            get(name)  # unknown names raise with the registered list
            raise UnsupportedError(name, "it is a CPU algorithm (convolab.conv2d on NumPy arrays)",
                                   capable(spec, "cuda"))
    if config is not None:
        if len(names) != 1:
            raise ConvError("config= needs a named algorithm (or algorithm='auto' without measure=True)")
        _check_config(spec, names[0], config, dtype)
        return GPUPlan(spec, names[0], w, bias, dtype, precision, config, "given")
    if not measure:
        cfg = MODULES[names[0]].default(spec, dtype, device_info())
        cached = CONFIGS.entries().get(cache_key(spec, names[0], dtype, precision))
        if cached is not None:
            return GPUPlan(spec, names[0], w, bias, dtype, precision, Config.from_json(cached["config"]),
                           "measured earlier", cached["ms"])
        return GPUPlan(spec, names[0], w, bias, dtype, precision, cfg, "planner's rule")
    best = None
    for name in names:
        cfg, ms, tried = _measure(spec, name, w, bias, dtype, precision, reps)
        CONFIGS.put(cache_key(spec, name, dtype, precision), {"config": cfg.to_json(), "ms": ms})
        if best is None or ms < best[1]:
            best = (name, ms, cfg, tried)
    name, ms, cfg, tried = best
    return GPUPlan(spec, name, w, bias, dtype, precision, cfg, "measured", ms, tried)


def _check_config(spec: ConvSpec, name: str, config: Config, dtype: str) -> None:
    if not isinstance(config, Config):
        raise ConvError(f"config must be a convolab.gpu.Config, got {type(config).__name__}")
    ref = MODULES[name].default(spec, dtype, device_info())
    if set(config.tiles) != set(ref.tiles):
        raise ConvError(f"config for {name} on {spec} needs tiles {sorted(ref.tiles)}, got {sorted(config.tiles)}")
    smem = MODULES[name].shared_memory(config, _bytes(dtype))
    if smem > device_info().smem:
        raise ConvError(f"config {config} needs {smem} bytes of shared memory; the device allows {device_info().smem}")


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm="auto",
           precision="ieee", out=None):
    """2D convolution of CUDA tensors with PyTorch's ``conv2d`` semantics (NCHW in and out).

    Plans (see `plan`) and runs once; keep a `GPUPlan` to reuse the packed filter. ``x`` and
    ``w`` must have the same dtype (float32, float16 or bfloat16).
    """
    _check_tensor(x, "input")
    _check_tensor(w, "weight")
    if x.dtype != w.dtype:
        raise ConvError(f"input dtype {x.dtype} differs from weight dtype {w.dtype}")
    p = plan(tuple(x.shape), w, bias, stride, padding, dilation, groups, algorithm=algorithm, precision=precision)
    return p(x, out=out)


for _mod, _summary in (
    (implicit_gemm, "Triton implicit GEMM over the (channels-last) input: BM x BN tiles, tl.dot, fixed-order split-K"),
    (im2win, "Triton: window tensor built on the GPU, then a GEMM over contiguous window rows"),
    (cuconv, "Triton direct conv on NCHW (cuConv): pixel-contiguous tiles, per-tap partials summed in order"),
):
    register(_record(_mod, _summary))
register_device("cuda", conv2d)
