"""The public entry points: `conv2d` and `plan` -> `ConvPlan`.

``conv2d(x, w, ...)`` validates once (`ConvSpec.from_arrays`), makes a plan (choose the
algorithm, prepare the weights) and runs it. A `ConvPlan` is reusable for every input of the
planned shape, like an FFTW plan or a oneDNN primitive, and safe to call from several Python
threads at once: it holds only read-only data and allocates its workspace per call.

dtypes: float32 is the main dtype; float64 computes in float64; float16 computes in float32
and returns float16. Integer convolution lives in `convolab.reference` (exact) and
`convolab.quant`.
"""

from __future__ import annotations

import functools

import numpy as np

from . import registry, select
from ._machine import available_memory, worker_count
from ._machine import mib as _mib
from .errors import ConvError, UnsupportedError
from .spec import ConvSpec


def check_memory(spec: ConvSpec, algo: registry.Algorithm, extra: int = 0) -> None:
    """Refuse, before allocating, a workspace larger than the memory available."""
    need = algo.workspace_bytes(spec) + extra
    have = available_memory()
    if need <= have:
        return
    smaller = sorted(
        (a.workspace_bytes(spec), a.name)
        for a in registry.list_algorithms()
        if a.name != algo.name and a.supports(spec) is None
    )
    hint = (
        f"; algorithm {smaller[0][1]!r} needs {_mib(smaller[0][0])}"
        if smaller and smaller[0][0] < algo.workspace_bytes(spec)
        else ""
    )
    raise ConvError(
        f"algorithm {algo.name!r} needs {_mib(need)} of workspace for {spec} but only "
        f"{_mib(have)} is available{hint}"
    )


@functools.lru_cache(maxsize=256)
def _ranking(spec: ConvSpec, memory_limit, max_error, stamps):
    return tuple(select.rank(spec, memory_limit=memory_limit, max_error=max_error))


def _resolve(
    spec: ConvSpec, algorithm: str, *, measure=False, memory_limit=None, max_error=None, w=None
) -> tuple[registry.Algorithm, list]:
    """The algorithm to run and the ranking that chose it ([] when named explicitly)."""
    if not isinstance(algorithm, str):
        raise ConvError(f"algorithm must be a name or 'auto', got {algorithm!r}")
    if algorithm != "auto":
        algo = registry.get(algorithm)
        if algo.device != "cpu":
            raise UnsupportedError(
                algo.name, f"it runs on {algo.device} tensors (convolab.gpu.conv2d / convolab.gpu.plan), "
                "not on NumPy arrays", registry.capable(spec))
        reason = algo.supports(spec)
        if reason is not None:
            raise UnsupportedError(algo.name, reason, registry.capable(spec))
        return algo, []
    if measure:
        ranking = select.rank(spec, measure=True, memory_limit=memory_limit, max_error=max_error, w=w)
    else:
        stamps = (select.AUTOTUNE.stamp(), select.CALIBRATION.stamp(), len(registry.list_algorithms()))
        ranking = list(_ranking(spec, memory_limit, max_error, stamps))
        if select.trial_wanted(ranking):
            ranking = select.rank(spec, trial=True, memory_limit=memory_limit, max_error=max_error,
                                  w=w)
    if not ranking or not ranking[0].admissible:
        reasons = "; ".join(f"{c.name}: {c.reason}" for c in ranking)
        raise ConvError(f"no algorithm is admissible for {spec}: {reasons}")
    # the fastest admissible algorithm whose workspace fits in the memory available
    for c in ranking:
        if c.admissible and (c.workspace_bytes < (1 << 24) or c.workspace_bytes <= available_memory()):
            return registry.get(c.name), ranking
    return registry.get(ranking[0].name), ranking  # check_memory will refuse it with sizes


class ConvPlan:
    """A convolution planned for one input shape: algorithm chosen, weights prepared.

    Call it as ``plan(x)`` or ``plan(x, out=y)``. Attributes: ``spec``, ``algorithm`` (name),
    ``workspace_bytes``, ``multiplies``; ``explain()`` says what was chosen and why.
    """

    def __init__(self, spec: ConvSpec, algo: registry.Algorithm, w, bias, ranking=()):
        self.spec = spec
        self._algo = algo
        self._ranking = list(ranking)
        cd = spec.compute_dtype
        self._prepared = algo.prepare(spec, np.ascontiguousarray(w, dtype=cd))
        self._workspace: dict[int, int] = {}
        self._bias = None if bias is None else np.asarray(bias, dtype=cd).reshape(1, -1, 1, 1)

    @property
    def algorithm(self) -> str:
        return self._algo.name

    @property
    def workspace_bytes(self) -> int:
        # depends on the thread count (how many blocks are in flight): kept per count
        from ._parallel import worker_count

        t = worker_count()
        ws = self._workspace.get(t)
        if ws is None:
            ws = self._workspace[t] = self._algo.workspace_bytes(self.spec)
        return ws

    @property
    def multiplies(self) -> int:
        return self._algo.multiplies(self.spec)

    @property
    def deterministic(self) -> bool:
        return self._algo.deterministic

    @property
    def error_bound(self) -> float:
        return self._algo.error_bound(self.spec, self.spec.dtype)

    def explain(self) -> str:
        """What was chosen and why: the plan, then the ranking of every algorithm."""
        s = self.spec
        how = "chosen by name" if not self._ranking else "chosen by algorithm='auto'"
        lines = [
            f"convolution {s} ({s.dtype}), output {s.out_shape}",
            f"algorithm: {self.algorithm} ({how}); kernel: {self.kernel}",
            f"workspace: {_mib(self.workspace_bytes)}; multiplications: {self.multiplies:,} "
            f"(direct: {s.direct_multiplies:,})",
            f"deterministic: {self.deterministic}; error bound (normwise): {self.error_bound:.2e}",
        ]
        ranking = self._ranking or select.rank(s, max_error=float("inf"))
        title = "ranking (admissible first, fastest first):" if self._ranking else "all algorithms (no budgets):"
        return "\n".join(lines + [title, select.explain(ranking)])

    def __repr__(self) -> str:
        return f"ConvPlan({self.spec}, algorithm={self.algorithm!r})"

    @property
    def kernel(self) -> str:
        """The kernel that runs this plan, in words: the algorithm's prepared state says it
        where it depends on the thread count (a bilinear plan's GEMMs and threading mode),
        else the algorithm's name for the kernel its `kernel` key selects (its summary where
        it has one kernel)."""
        describe = getattr(self._prepared, "kernel", None)
        if callable(describe):
            return describe(worker_count())
        key = self._algo.kernel(self.spec)
        a = self._algo
        return a.kernel_names.get(key) or key or a.summary or f"{self.algorithm}'s kernel"

    def execute(self, x: np.ndarray, out: np.ndarray) -> None:
        """Run the plan without checks or bias: for runtimes that already guarantee ``x`` is
        C-contiguous of the planned shape and compute dtype, and ``out`` C-contiguous of the
        output shape and compute dtype, not overlapping ``x`` (`convolab.runtime` adds the bias
        in its fused epilogue)."""
        self._algo.run(self._prepared, x, out)

    def __call__(self, x, *, out=None) -> np.ndarray:
        """Convolve ``x`` (the planned shape and dtype). Arrays in, the same arrays out: NumPy
        -> NumPy; a CPU torch tensor -> a torch tensor sharing the result's memory (``out``,
        NumPy array or torch tensor, is filled and returned)."""
        if _is_torch(x) or _is_torch(out):
            y = self._call(_from_torch(x, "x"), _from_torch(out, "out"))
            return _to_torch(y, x, out)
        return self._call(x, out)

    def _call(self, x, out) -> np.ndarray:
        s = self.spec
        x = np.asarray(x)
        if x.shape != s.x_shape:
            raise ConvError(f"this plan is for inputs of shape {s.x_shape}, got {x.shape}")
        if x.dtype != s.dtype:
            raise ConvError(
                f"this plan is for {s.dtype} inputs, got {x.dtype} (plan with dtype={x.dtype})"
            )
        out_dtype = s.out_dtype
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise ConvError(f"out must be a numpy.ndarray, got {type(out).__name__}")
            if out.shape != s.out_shape:
                raise ConvError(f"out has shape {out.shape}, expected {s.out_shape}")
            if out.dtype != out_dtype:
                raise ConvError(f"out has dtype {out.dtype}, expected {out_dtype}")
            if not out.flags.writeable:
                raise ConvError("out is read-only")
        cd = s.compute_dtype
        direct_out = (
            out is not None and out.dtype == cd and out.flags.c_contiguous
            and not np.shares_memory(out, x)
        )
        result_bytes = 0 if direct_out else int(np.prod(s.out_shape)) * cd.itemsize
        if self.workspace_bytes + result_bytes > (1 << 24):
            check_memory(s, self._algo, result_bytes)
        xc = np.ascontiguousarray(x, dtype=cd)
        y = out if direct_out else np.empty(s.out_shape, dtype=cd)
        self._algo.run(self._prepared, xc, y)
        if self._bias is not None:
            y += self._bias
        if out is None:
            return y if y.dtype == out_dtype else y.astype(out_dtype)
        if y is not out:
            out[...] = y
        return out


def plan(
    x_shape, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm="auto",
    dtype=None, measure=False, memory_limit=None, max_error=None,
) -> ConvPlan:
    """Plan the convolution of inputs of shape ``x_shape`` with weights ``w``.

    Parameters
    ----------
    x_shape : tuple of 4 ints
        (N, C, H, W) of the inputs the plan will be called on.
    w : array_like, shape (K, C/groups, R, S)
    bias : array_like, shape (K,), optional
    stride, padding, dilation, groups
        As `conv2d`.
    algorithm : str
        A registered name (see `convolab.algorithms`) or ``"auto"``.
    dtype : dtype, optional
        Input dtype the plan is for; default the weight's dtype.
    measure : bool
        With ``algorithm="auto"``: time the admissible algorithms on this convolution and keep
        the fastest (stored in the autotune cache, see `convolab.select`).
    memory_limit : int, optional
        With ``"auto"``: the largest workspace (bytes) the chosen algorithm may need.
    max_error : float, optional
        With ``"auto"``: the largest normwise ``error_bound`` the chosen algorithm may state;
        default `convolab.select.default_max_error`.

    Returns
    -------
    ConvPlan

    Raises
    ------
    ConvError
        Invalid shapes or hyper-parameters, or a workspace larger than the memory available.
    UnsupportedError
        The named algorithm cannot run this convolution (message lists those that can).
    """
    w = np.asarray(w)
    b = None if bias is None else np.asarray(bias)
    dt = np.result_type(w.dtype, dtype) if dtype is not None else w.dtype
    for a, what in ((w, "weight"), (b, "bias")):
        if a is not None and (a.dtype.kind != "f" or a.dtype not in (np.float16, np.float32, np.float64)):
            raise ConvError(f"unsupported {what} dtype {a.dtype}; use float16, float32 or float64")
    spec = ConvSpec.from_shapes(
        x_shape, w.shape, stride, padding, dilation, groups, dt, None if b is None else b.shape
    )
    algo, ranking = _resolve(
        spec, algorithm, measure=measure, memory_limit=memory_limit, max_error=max_error, w=w
    )
    check_memory(spec, algo)
    return ConvPlan(spec, algo, w, b, ranking)


def _is_torch(a) -> bool:
    return type(a).__module__.startswith("torch") and hasattr(a, "detach")


def _from_torch(a, what: str):
    """A CPU torch tensor's data as a NumPy array sharing its memory (strides kept, autograd
    detached: convolab computes values, not gradients); anything else unchanged."""
    if not _is_torch(a):
        return a
    if a.device.type != "cpu":
        raise ConvError(f"{what} is a {a.device} tensor; the CPU algorithms take CPU tensors")
    try:
        return a.detach().numpy()
    except (TypeError, RuntimeError) as e:  # bfloat16, complex...: no NumPy dtype
        raise ConvError(f"{what} has dtype {a.dtype}, which NumPy cannot hold ({e})") from None


def _to_torch(y, like_x, out):
    """The result as the caller gave the input: a torch tensor for a torch input (the ``out``
    tensor itself if one was given, else ``torch.from_numpy`` of the result: no copy)."""
    if not _is_torch(like_x):
        return y
    if _is_torch(out):
        return out
    import torch

    return torch.from_numpy(y)


def _device_of(x) -> str | None:
    """'cuda' for a CUDA torch tensor, 'cpu' for a CPU one, None for anything else."""
    dev = getattr(x, "device", None)
    kind = getattr(dev, "type", None)
    return kind if isinstance(kind, str) else None


def conv2d(
    x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm="auto", out=None
):
    """2D convolution (cross-correlation) with PyTorch's ``conv2d`` semantics.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        float16, float32 or float64; any strides (copied only when needed).
    w : array_like, shape (K, C/groups, R, S)
    bias : array_like, shape (K,), optional
    stride, dilation : int or (int, int)
    padding : int, (pad_h, pad_w), (left, right, top, bottom), "same" or "valid"
    groups : int
    algorithm : str
        ``"auto"`` or a registered name (``convolab.list_algorithms()``).
    out : numpy.ndarray, optional
        Output of shape (N, K, OH, OW) and the result dtype; untouched if the call fails.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        (N, K, OH, OW) in the promoted dtype of ``x`` and ``w``. Arrays in, the same arrays out:
        NumPy in, NumPy out; a CPU torch tensor ``x`` gives a torch tensor that shares the
        result's memory (``torch.from_numpy``, no copy; tensors are read through their NumPy
        views, also without a copy where their strides allow, and detached: no autograd). A
        CUDA torch tensor ``x`` is handed to `convolab.gpu.conv2d` (once `convolab.gpu` is
        imported), which returns a CUDA tensor.

    Notes
    -----
    float16 inputs are computed in float32 and rounded once at the end. NaN and Inf
    propagate as in the float64 reference (`convolab.reference.conv2d`).
    """
    device = _device_of(x)
    if device not in ("cpu", None):
        run = registry.device_conv(device)
        if run is None:
            raise ConvError(
                f"the input is a {device} tensor; its algorithms live in convolab.gpu "
                f"(pip install 'convolab[gpu]', then import convolab.gpu)"
            )
        return run(x, w, bias, stride, padding, dilation, groups, algorithm=algorithm, out=out)
    if _is_torch(x) or _is_torch(w) or _is_torch(bias) or _is_torch(out):
        y = conv2d(_from_torch(x, "x"), _from_torch(w, "w"), _from_torch(bias, "bias"), stride,
                   padding, dilation, groups, algorithm=algorithm, out=_from_torch(out, "out"))
        return _to_torch(y, x, out)
    x = np.asarray(x)
    w = np.asarray(w)
    b = None if bias is None else np.asarray(bias)
    spec = ConvSpec.from_arrays(x, w, b, stride, padding, dilation, groups)
    if spec.dtype.kind != "f":
        raise ConvError(
            f"unsupported dtype {spec.dtype} for conv2d: use float16, float32 or float64 "
            f"(exact integer convolution: convolab.reference.conv2d; int8: convolab.quant)"
        )
    if out is not None and isinstance(out, np.ndarray) and out.dtype != spec.dtype:
        raise ConvError(f"out has dtype {out.dtype}, expected {spec.dtype}")
    algo, ranking = _resolve(spec, algorithm, w=w.astype(spec.dtype, copy=False))
    check_memory(spec, algo)
    return ConvPlan(spec, algo, w, b, ranking)(x.astype(spec.dtype, copy=False), out=out)
