"""The interception machinery behind `convolab.interop.torch`: the `Session` that routes
PyTorch's CPU 2D convolutions to convolab plans, its per-layer report, and `patch` /
`unpatch`. Public names other modules build on: `Session`, `TORCH_CONV2D` (PyTorch's own
``conv2d``, for calls that stay on PyTorch) and `tensor_key` (a tensor's identity and
version). See `convolab.interop.torch` for the data path and what is intercepted.

Size: the `Session` (interception, planning, the per-layer report) is one class; the rest are
its small helpers.
"""

from __future__ import annotations

import fnmatch
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .. import registry
from ..api import plan as _plan
from ..errors import ConvError, UnsupportedError
from ..kernels.team import quiet as team_quiet
from ..spec import ConvSpec

__all__ = ["TORCH_CONV2D", "LayerStats", "Session", "patch", "patched", "tensor_key", "unpatch"]

#: PyTorch's own conv2d, captured at import (``F.conv2d is torch.conv2d``); public for
#: `convolab.interop.quantized`
TORCH_CONV2D = torch.nn.functional.conv2d
_TORCH_CONV2D_TOP = torch.conv2d

#: algorithm names with a meaning here besides the registered ones
_SPECIAL = ("auto", "torch")
_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}

_install_lock = threading.Lock()
_install_count = 0
_local = threading.local()


# ---------------------------------------------------------------------------- interception
def _stack() -> list:
    s = getattr(_local, "stack", None)
    if s is None:
        s = _local.stack = []
    return s


def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """Stand-in for ``torch.nn.functional.conv2d``: the innermost active session runs it."""
    s = getattr(_local, "stack", None)
    if not s:
        return TORCH_CONV2D(input, weight, bias, stride, padding, dilation, groups)
    return s[-1]._conv2d(input, weight, bias, stride, padding, dilation, groups)


_conv2d.__doc__ = (_conv2d.__doc__ or "") + "\n\n" + (TORCH_CONV2D.__doc__ or "")


def _install() -> None:
    global _install_count
    with _install_lock:
        if _install_count == 0:
            torch.nn.functional.conv2d = _conv2d
            torch.conv2d = _conv2d
        _install_count += 1


def _uninstall() -> None:
    global _install_count
    with _install_lock:
        _install_count -= 1
        if _install_count == 0:
            torch.nn.functional.conv2d = TORCH_CONV2D
            torch.conv2d = _TORCH_CONV2D_TOP


def _push(session: Session) -> None:
    _stack().append(session)


def _pop(session: Session) -> None:
    s = _stack()
    for i in range(len(s) - 1, -1, -1):
        if s[i] is session:
            del s[i]
            return


# ---------------------------------------------------------------------------- records
@dataclass
class LayerStats:
    """What ran for one layer at one input shape, and how long it took.

    Attributes
    ----------
    name : str
        The layer: the module path of the weight in the model (``"blocks.3._depthwise_conv"``),
        the parameter path for weights that are not called ``weight``, or ``"conv<i>"`` (order of
        first call) when the session was given no model.
    spec : ConvSpec
        The convolution (input shape, weight shape, stride, padding, dilation, groups, dtype).
    requested : str
        The algorithm the session's ``algorithm`` asked for on this layer.
    algorithm : str
        The algorithm that ran: a registered name, ``"torch"`` or ``"torch (autograd)"``.
    note : str
        Why ``algorithm`` differs from ``requested`` (the fallback reason), else empty.
    calls : int
    seconds : float
        Total time of the calls (conversion, convolution, bias), planning excluded.
    plan_seconds : float
        Time spent planning (weight transforms; the first call also compiles Numba kernels).
    replans : int
        Plans made for this layer and shape after the first (its weight or bias changed).
    """

    name: str
    spec: ConvSpec
    requested: str
    algorithm: str
    note: str = ""
    calls: int = 0
    seconds: float = 0.0
    plan_seconds: float = 0.0
    replans: int = 0

    @property
    def shape(self) -> str:
        """The spec as text (``N1 C32 112x112 -> K32 3x3 s1 p1 dw``)."""
        return str(self.spec)


@dataclass
class _Entry:
    w_ref: weakref.ref
    w_key: tuple
    b_ref: weakref.ref | None
    b_key: tuple | None
    run: Callable
    stats: LayerStats = field(repr=False)


def tensor_key(t: torch.Tensor) -> tuple:
    if t.is_inference():  # inference tensors have no version counter
        return (None, t.data_ptr())
    return (t._version, t.data_ptr())


def _hashable(v):
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        return tuple(int(e) for e in v)
    return int(v)


def _check_choice(value, what: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str):
        raise ConvError(f"{what} must be an algorithm name, 'auto' or 'torch'; got {value!r}")
    if value not in _SPECIAL:
        registry.get(value)  # ConvError listing the registered names


# ---------------------------------------------------------------------------- session
class Session:
    """Routes PyTorch's 2D convolutions through convolab while active.

    Use it as a context manager (`use` builds one) or attach it to a model (`patch`).

    Parameters
    ----------
    algorithm : str or Mapping
        ``"auto"`` (convolab chooses per layer), ``"torch"`` (PyTorch's own kernel; useful as a
        per-layer timed baseline), a registered algorithm name, or a mapping from layer to any
        of those. Mapping keys are tried in this order: the layer name exactly, a `ConvSpec`
        equal to the layer's (batch size and dtype ignored), the weight shape
        ``(K, C/groups, R, S)``, then glob patterns on the layer name (``"blocks.*"``, ``"*"``)
        in insertion order. A layer no key matches gets ``"auto"``.
    fallback : str or None
        What a layer the requested algorithm cannot run gets: ``"auto"``, ``"torch"``, another
        registered name, or None to raise `UnsupportedError` naming the layer.
    model : torch.nn.Module, optional
        Names layers by their module path in this model; without it they are ``conv<i>``.
    hook : callable(stats, x, y), optional
        Called after every intercepted convolution with its `LayerStats` and the input and
        output tensors (e.g. to capture per-layer outputs).
    """

    def __init__(self, algorithm="auto", fallback="auto", *, model=None, hook=None):
        if isinstance(algorithm, Mapping):
            for k, v in algorithm.items():
                if not isinstance(k, (str, ConvSpec)) and not (
                    isinstance(k, tuple) and len(k) == 4 and all(isinstance(d, int) for d in k)
                ):
                    raise ConvError(
                        f"algorithm mapping keys must be layer names or glob patterns, ConvSpecs "
                        f"or weight shapes (K, C/groups, R, S); got {k!r}"
                    )
                _check_choice(v, f"algorithm for {k!r}")
            algorithm = dict(algorithm)
        else:
            _check_choice(algorithm, "algorithm")
        _check_choice(fallback, "fallback", allow_none=True)
        if model is not None and not isinstance(model, torch.nn.Module):
            raise ConvError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.algorithm = algorithm
        self.fallback = fallback
        self.hook = hook
        self._model = None if model is None else weakref.ref(model)
        self._lock = threading.Lock()
        self._entries: dict[tuple, _Entry] = {}
        self._stats: dict[tuple[str, ConvSpec], LayerStats] = {}
        self._names: dict[int, tuple[weakref.ref, str]] = {}
        self._anon = 0
        if model is not None:
            self._index_model()

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Session:
        _install()
        _push(self)
        return self

    def __exit__(self, *exc) -> None:
        _pop(self)
        _uninstall()

    # ------------------------------------------------------------------ report
    def report(self) -> list[LayerStats]:
        """Per layer and input shape, in order of first call: what ran, calls, time."""
        with self._lock:
            return list(self._stats.values())

    def reset_stats(self) -> None:
        """Zero the call counts and times (plans are kept), e.g. after a warm-up run."""
        with self._lock:
            for s in self._stats.values():
                s.calls, s.seconds = 0, 0.0

    def clear(self) -> None:
        """Forget every plan and record."""
        with self._lock:
            self._entries.clear()
            self._stats.clear()

    def table(self, title: str = "convolab: per-layer report"):
        """The report as a `rich.table.Table`: layer, shape, algorithm that ran, calls, time."""
        from rich.table import Table

        t = Table(title=title)
        for col, just in (("layer", "left"), ("shape", "left"), ("algorithm", "left"),
                          ("calls", "right"), ("total ms", "right"), ("ms/call", "right"),
                          ("plan ms", "right")):
            t.add_column(col, justify=just)
        total = 0.0
        for s in self.report():
            total += s.seconds
            algo = s.algorithm if not s.note else f"{s.algorithm} ({s.note})"
            t.add_row(s.name, s.shape, algo, str(s.calls), f"{s.seconds * 1e3:.2f}",
                      f"{s.seconds * 1e3 / max(s.calls, 1):.3f}", f"{s.plan_seconds * 1e3:.1f}")
        t.add_row("total", "", "", "", f"{total * 1e3:.2f}", "", "", style="bold")
        return t

    # ------------------------------------------------------------------ layer names
    def _index_model(self) -> None:
        model = self._model() if self._model is not None else None
        if model is None:
            return
        named = list(model.named_parameters(remove_duplicate=False))
        named += list(model.named_buffers(remove_duplicate=False))
        for pname, t in named:
            if id(t) in self._names and self._names[id(t)][0]() is t:
                continue
            if pname == "weight":  # the model is itself a convolution
                name = type(model).__name__
            else:
                name = pname[: -len(".weight")] if pname.endswith(".weight") else pname
            self._names[id(t)] = (weakref.ref(t), name)

    def _name(self, w: torch.Tensor) -> str:
        hit = self._names.get(id(w))
        if hit is not None and hit[0]() is w:
            return hit[1]
        if self._model is not None:
            self._index_model()  # the model may have been given new parameters
            hit = self._names.get(id(w))
            if hit is not None and hit[0]() is w:
                return hit[1]
        name = f"conv{self._anon}"
        self._anon += 1
        self._names[id(w)] = (weakref.ref(w), name)
        return name

    def _requested(self, name: str, spec: ConvSpec) -> str:
        a = self.algorithm
        if isinstance(a, str):
            return a
        if name in a:
            return a[name]
        for k, v in a.items():
            if isinstance(k, ConvSpec) and replace(k, N=spec.N, dtype=spec.dtype) == spec:
                return v
        if spec.w_shape in a:
            return a[spec.w_shape]
        for k, v in a.items():
            if isinstance(k, str) and fnmatch.fnmatchcase(name, k):
                return v
        return "auto"

    # ------------------------------------------------------------------ the call
    def _conv2d(self, x, w, b, stride, padding, dilation, groups):
        if not (
            isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)
            and x.device.type == "cpu" and w.device.type == "cpu"
            and x.layout == torch.strided and w.layout == torch.strided
            and x.dtype in _DTYPES and w.dtype == x.dtype and x.dim() in (3, 4) and w.dim() == 4
            and (b is None or (isinstance(b, torch.Tensor) and b.dtype == x.dtype
                               and b.device.type == "cpu"))
        ):
            return TORCH_CONV2D(x, w, b, stride, padding, dilation, groups)
        grad = torch.is_grad_enabled() and (
            x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)
        )
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        key = (id(w), None if b is None else id(b), tuple(x.shape), x.dtype, grad,
               _hashable(stride), _hashable(padding), _hashable(dilation), int(groups))
        e = self._entries.get(key)
        if e is None or e.w_ref() is not w or e.w_key != tensor_key(w) or (
            b is not None and (e.b_ref() is not b or e.b_key != tensor_key(b))
        ):
            e = self._make_entry(key, x, w, b, stride, padding, dilation, groups, grad)
            if e is None:  # not a valid convolution for convolab: PyTorch raises its own error
                y = TORCH_CONV2D(x, w, b, stride, padding, dilation, groups)
                return y.squeeze(0) if unbatched else y
        t0 = time.perf_counter()
        # PyTorch's OpenMP threads spin between its operators: convolab's team sleeps right
        # after each convolution instead of spinning beside them
        with team_quiet():
            y = e.run(x, w, b)
        dt = time.perf_counter() - t0
        st = e.stats
        with self._lock:
            st.calls += 1
            st.seconds += dt
        if self.hook is not None:
            self.hook(st, x, y)
        return y.squeeze(0) if unbatched else y

    def _make_entry(self, key, x, w, b, stride, padding, dilation, groups, grad):
        try:
            spec = ConvSpec.from_shapes(
                tuple(x.shape), tuple(w.shape), _hashable(stride), _hashable(padding),
                _hashable(dilation), groups, _DTYPES[x.dtype],
                None if b is None else tuple(b.shape),
            )
        except (ConvError, TypeError, ValueError):
            return None
        name = self._name(w)
        requested = self._requested(name, spec)
        t0 = time.perf_counter()
        ran, note, run = self._choose(name, spec, requested, w, b, grad,
                                      (stride, padding, dilation, groups))
        plan_s = time.perf_counter() - t0
        with self._lock:
            sk = (name, spec)
            st = self._stats.get(sk)
            if st is None:
                st = self._stats[sk] = LayerStats(name, spec, requested, ran, note)
            else:
                st.replans += 1
                st.requested, st.algorithm, st.note = requested, ran, note
            st.plan_seconds += plan_s
            e = _Entry(weakref.ref(w), tensor_key(w), None if b is None else weakref.ref(b),
                       None if b is None else tensor_key(b), run, st)
            if len(self._entries) > 4096:  # weights made per call: drop entries of dead tensors
                self._entries = {k: v for k, v in self._entries.items() if v.w_ref() is not None}
            self._entries[key] = e
        return e

    def _choose(self, name, spec, requested, w, b, grad, args):
        """(algorithm that runs, note, runner(x, w, b) -> y) for one layer."""

        def torch_run(x, w, b):
            return TORCH_CONV2D(x, w, b, *args)

        if grad:
            return "torch (autograd)", "gradients needed", torch_run
        if requested == "torch":
            return "torch", "", torch_run
        note = ""
        choice = requested
        if requested != "auto":
            reason = registry.get(requested).supports(spec)
            if reason is not None:
                fb = self.fallback
                alternatives = registry.capable(spec)
                if fb is None:
                    raise UnsupportedError(requested, f"layer {name!r} ({spec}): {reason}",
                                           alternatives)
                if fb == "torch":
                    return "torch", f"fallback: {reason}", torch_run
                if fb != "auto" and registry.get(fb).supports(spec) is not None:
                    raise UnsupportedError(
                        requested, f"layer {name!r} ({spec}): {reason}; and the fallback "
                        f"{fb!r}: {registry.get(fb).supports(spec)}", alternatives)
                choice, note = fb, f"fallback: {reason}"
        p = self.make_plan(name, spec, w, b, choice)
        return p.algorithm, note, _plan_runner(p, spec)

    def make_plan(self, name: str, spec: ConvSpec, w, b, algorithm: str):
        """The plan that runs layer ``name``: override to run layers differently.

        Parameters
        ----------
        name : str
            The layer name.
        spec : ConvSpec
            The layer's convolution (``spec.dtype`` is the input dtype).
        w, b : torch.Tensor
            Weight (K, C/groups, R, S) and bias (K,) or None.
        algorithm : str
            A registered name or ``"auto"`` (fallback already applied).

        Returns
        -------
        ConvPlan or compatible
            Called as ``plan(x, out=y)`` with NumPy views of the input and of a fresh output
            tensor of ``spec.out_shape``; must write the full result, bias included, into ``y``
            and have an ``algorithm`` attribute (the name the report shows). The default is
            `convolab.plan`; a quantised or instrumented session overrides this method.
        """
        return _plan(
            spec.x_shape, w.detach().numpy(), None if b is None else b.detach().numpy(),
            spec.stride, spec.padding, spec.dilation, spec.groups, algorithm=algorithm,
            dtype=spec.dtype,
        )


def _plan_runner(p, spec: ConvSpec):
    out_shape = spec.out_shape
    tdtype = {np.dtype(v): k for k, v in _DTYPES.items()}[np.dtype(spec.dtype)]

    def run(x, w, b):
        y = torch.empty(out_shape, dtype=tdtype)
        p(x.detach().numpy(), out=y.numpy())
        return y

    return run


# ---------------------------------------------------------------------------- patching
def patch(model, algorithm="auto", fallback="auto", *, hook=None) -> Session:
    """Make ``model`` run its convolutions through convolab until `unpatch`.

    Whenever ``model`` -- or one of its ``nn.Conv2d`` submodules called on its own -- runs
    ``forward``, a `Session` for it is active (forward pre-hook in, forward hook out, also on
    exceptions). Patching an already patched model replaces its session.

    Parameters
    ----------
    model : torch.nn.Module
    algorithm, fallback, hook
        As `use`.

    Returns
    -------
    Session
        The model's session (its ``report()`` accumulates over calls); also `patched(model)`.
    """
    if not isinstance(model, torch.nn.Module):
        raise ConvError(f"patch needs a torch.nn.Module, got {type(model).__name__}")
    if patched(model) is not None:
        unpatch(model)
    session = Session(algorithm, fallback, model=model, hook=hook)
    handles = []
    mods = [model] + [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m is not model]
    for m in mods:
        handles.append(m.register_forward_pre_hook(lambda mod, args: _push(session)))
        handles.append(m.register_forward_hook(lambda mod, args, out: _pop(session), always_call=True))
    _install()
    model.__dict__["_convolab_patch"] = (session, handles)
    return session


def patched(model) -> Session | None:
    """The session `patch` attached to ``model``, or None."""
    entry = model.__dict__.get("_convolab_patch")
    return None if entry is None else entry[0]


def unpatch(model) -> Session | None:
    """Undo `patch`: the model runs on PyTorch again. Returns the session it had (or None)."""
    entry = model.__dict__.pop("_convolab_patch", None)
    if entry is None:
        return None
    session, handles = entry
    for h in handles:
        h.remove()
    _uninstall()
    return session
