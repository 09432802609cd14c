"""`compile`: a PyTorch CPU model captured once and run by convolab's own runtime.

A `CompiledModel` holds the optimised graph (`convolab.runtime.graph`: BatchNorm folded into
the convolutions, zero padding folded into their padding, bias + residual add + activation
fused into their output stage) and, per input shape, the convolution plans (algorithm chosen,
filters transformed and packed once) and the activation buffers (assigned once by liveness
and reused on every call, so a call allocates only its result).

Layout. Activations stay NCHW float32 from input to output: the layout convolab's direct,
im2win and depthwise kernels read in place, so no operator converts layouts between layers.

Threads. A call uses exactly ``threads`` threads: Numba's kernels run with
``numba.set_num_threads(threads)``; the BLAS is held to one thread for the whole call (the
algorithms that call it -- im2col, the Winograd/SFC engine below 128 channels, fft -- split
their work over convolab's own threads, never a BLAS pool beside Numba's); operators run
through PyTorch (the fallback) run with ``torch.set_num_threads(1)``, so PyTorch's OpenMP pool
is never awake beside convolab's. The previous settings are restored after the call.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import numpy as np

from .. import registry, select
from ..api import plan as _plan
from ..errors import ConvError
from ..spec import ConvSpec
from . import _executor as _X
from . import _kernels as K
from .graph import Graph, Node, capture, optimise
from .ops import _EXEC
from .program import _build, _in_executor, _prefer_executor, _Segment


@dataclass
class Layer:
    """A convolution of the compiled model at one input shape (for reports)."""

    name: str
    where: str
    spec: ConvSpec
    algorithm: str
    epilogue: str
    #: "executor" (one job with its neighbours), "alone" (its own call), "-" (not planned yet)
    runs: str = "-"


def epilogue_label(attrs: dict) -> str:
    """A convolution node's fused output stage as text: ``bias+residual+relu``, or ""."""
    return "+".join(x for x in ("bias" if attrs["b"] is not None else "",
                                "residual" if attrs["residual"] else "",
                                attrs["act"] if attrs["act"] != "none" else "") if x)


class _State:
    """What a compiled model keeps per input shape: plans, the recorded shapes, then the arena
    (every activation's buffer, assigned by liveness) and the run's segments."""

    def __init__(self):
        self.plans: dict[int, object] = {}
        self.shapes: dict[int, tuple] = {}
        self.buffers: dict[int, np.ndarray] | None = None
        self.segments: list | None = None
        self.arena: np.ndarray | None = None
        self.calls = 0
        #: whether a call can reach the BLAS (a convolution run outside the executor) and
        #: PyTorch (an operator run through it): unknown (True) until the segments are built
        self.uses_blas = True
        self.uses_torch = True
        #: whether any operator runs outside the executor's segments (unknown: True); if none
        #: does, a call touches no thread pool but the executor's team
        self.outside = True
        #: nodes the executor runs image by image (`_image_major_run`)
        self.image_major: set[int] = set()
        #: its values that only its own layers read: one image's space (`_run_internal`)
        self.run_internal: set[int] = set()
        #: threads that each run whole images of it, on their own copies of its one-image
        #: spaces (`lane_span` elements apart, after the arena)
        self.lanes = 1
        self.lane_span = 0


class CompiledModel:
    """A captured model run by convolab; call it like the module.

    Attributes
    ----------
    graph : Graph
        The optimised graph.
    algorithm : str
        ``"auto"``, ``"deterministic"`` or a registered algorithm name.
    threads : int
        Threads every call uses.
    """

    def __init__(self, graph: Graph, *, algorithm="auto", memory_limit=None, max_error=None,
                 threads=None, check_finite=True):
        from .._parallel import worker_count

        self.graph = graph
        self.algorithm = algorithm
        self.memory_limit = memory_limit
        self.max_error = max_error
        self.threads = int(threads) if threads is not None else worker_count()
        if self.threads < 1:
            raise ConvError(f"threads must be >= 1, got {threads}")
        self.check_finite = check_finite
        self._states: dict[tuple, _State] = {}
        #: ``auto``'s executor-or-not decision per layer shape: identical layers share it
        self._auto_choice: dict[ConvSpec, str] = {}
        self._lock = threading.Lock()
        self._example_batch = graph.folded.get("example_batch", 1)
        self._in_shape = graph.nodes[graph.inputs[0]].shape if graph.inputs else ()

    # ------------------------------------------------------------------ reports
    @property
    def fallback_ops(self) -> dict:
        """ATen operators that run through PyTorch (name -> count)."""
        return dict(self.graph.fallback)

    def layers(self, shape=None) -> list[Layer]:
        """The convolutions planned for input ``shape`` (default: the example's)."""
        st = self._states.get(tuple(shape or self._in_shape))
        out = []
        for i, n in enumerate(self.graph.nodes):
            if n.kind != "conv":
                continue
            p = st.plans.get(i) if st else None
            epi = epilogue_label(n.attrs)
            runs = "-"
            if st is not None and st.segments is not None:
                runs = "executor" if any(isinstance(s, _Segment) and i in s.nodes for s in st.segments) else "alone"
            out.append(Layer(n.name, n.where, p.spec if p else None, p.algorithm if p else "-",
                             epi or "-", runs))
        return out

    def summary(self, shape=None) -> str:
        """The graph after the passes: what was folded and fused, per-layer algorithms."""
        f = self.graph.folded
        kinds: dict[str, int] = {}
        for n in self.graph.nodes:
            kinds[n.kind] = kinds.get(n.kind, 0) + 1
        lines = [
            f"compiled model: {len(self.graph.nodes)} operators "
            + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
            "folded: " + ", ".join(f"{k} {v}" for k, v in sorted(f.items()) if k != "example_batch"),
            f"threads {self.threads}; algorithm {self.algorithm!r}",
        ]
        if self.graph.fallback:
            lines.append("run by PyTorch: " + ", ".join(f"{k} x{v}" for k, v in self.graph.fallback.items()))
        layers = self.layers(shape)
        if layers:
            lines.append(f"  {'layer':<34} {'algorithm':<16} {'runs':<9} {'output stage':<22} convolution")
        for L in layers:
            name = L.where.split(":")[0] if L.where else L.name
            lines.append(f"  {name[:34]:<34} {L.algorithm:<16} {L.runs:<9} {L.epilogue:<22} {L.spec}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"CompiledModel({len(self.graph.nodes)} operators, algorithm={self.algorithm!r}, threads={self.threads})"

    # ------------------------------------------------------------------ calling
    def __call__(self, *inputs):
        if len(inputs) != len(self.graph.inputs):
            raise ConvError(f"the compiled model takes {len(self.graph.inputs)} input(s), got {len(inputs)}")
        is_torch = [type(x).__module__.startswith("torch") for x in inputs]
        arrays = [self._input(x, self.graph.nodes[i]) for x, i in zip(inputs, self.graph.inputs, strict=True)]
        # NaN / Inf are looked for here on a shape's first call, later while the input is
        # copied into the arena (`_run`)
        key = tuple(a.shape for a in arrays)
        with self._lock:
            st = self._states.get(key[0] if len(key) == 1 else key)
            if st is None:
                st = self._states[key[0] if len(key) == 1 else key] = _State()
            if st.outside:
                with _Threads(self.threads, st.uses_blas, st.uses_torch):
                    outs = self._run(arrays, st)
            else:  # all in the executor's job, on the team: no pool to hold or restore
                outs = self._run(arrays, st)
        if any(is_torch):
            import torch

            outs = [torch.from_numpy(o) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _input(self, x, node: Node) -> np.ndarray:
        if type(x).__module__.startswith("torch"):
            if x.device.type != "cpu":
                raise ConvError(f"input {node.name}: the compiled model runs on the CPU, got a {x.device} tensor")
            x = x.detach().numpy()
        a = np.asarray(x)
        if a.dtype != np.float32:
            raise ConvError(f"input {node.name}: expected float32, got {a.dtype}")
        if a.ndim != len(node.shape) or a.shape[1:] != tuple(node.shape[1:]):
            raise ConvError(f"input {node.name}: expected shape (N, {', '.join(map(str, node.shape[1:]))}), "
                            f"got {tuple(a.shape)}")
        return np.ascontiguousarray(a)

    def _not_finite(self, a: np.ndarray, node: Node, flat: int) -> ConvError:
        at = tuple(int(i) for i in np.unravel_index(flat, a.shape))
        return ConvError(f"input {node.name}: non-finite value {a[at]} at index {at} "
                         "(compile with check_finite=False to let NaN/Inf propagate)")

    def _run(self, arrays, st: _State) -> list[np.ndarray]:
        """The first call at a shape runs operator by operator on fresh arrays and records
        every output's shape; then the arena and the executor's program are built, and later
        calls run the program's segments on the arena."""
        g = self.graph
        vals: list = [None] * len(g.nodes)
        if st.segments is None:
            if self.check_finite:
                for i, a in zip(g.inputs, arrays, strict=True):
                    if not np.isfinite(a).all():
                        raise self._not_finite(a, g.nodes[i], int(np.argmax(~np.isfinite(a))))
            for i, a in zip(g.inputs, arrays, strict=True):
                vals[i] = a
                st.shapes[i] = a.shape
            for i, n in enumerate(g.nodes):
                if n.kind != "input":
                    self._op(i, n, vals, st)
            outs = [np.array(vals[i], copy=True) for i in g.outputs]
            _build(self, st)
            return outs
        for i, a in zip(g.inputs, arrays, strict=True):
            vals[i] = st.buffers[i]
            if self.check_finite:
                bad = K.copy_finite(a.reshape(-1), vals[i].reshape(-1))
                if bad >= 0:
                    raise self._not_finite(a, g.nodes[i], bad)
            else:
                vals[i][...] = a
        for seg in st.segments:
            if isinstance(seg, _Segment):
                seg.ctr[:] = 0
                self._team().run((seg.P, seg.prog, seg.fprm, st.arena, seg.wb, seg.ib, seg.ctr,
                                  seg.cs, 32, _X.NO_STAMPS), seg.scratch)
                for i in seg.nodes:
                    vals[i] = st.buffers[i]
                for i in seg.views:
                    vals[i] = st.buffers[i]
            else:
                self._op(seg, g.nodes[seg], vals, st)
        st.calls += 1
        return [np.array(vals[i], copy=True) for i in g.outputs]

    def _op(self, i: int, n: Node, vals, st: _State) -> None:
        try:
            vals[i] = _EXEC[n.kind](self, i, n, vals, st)
        except ConvError as e:
            raise ConvError(f"layer {n.describe()}: {e}") from None

    def _team(self):
        if self.__dict__.get("_team_obj") is None:
            self._team_obj = _X.Team(self.threads)
        return self._team_obj

    def _out(self, i: int, st: _State, shape: tuple) -> np.ndarray:
        if st.segments is not None:
            b = st.buffers.get(i)
            if b is not None and b.shape == shape:
                return b
        st.shapes[i] = shape
        return np.empty(shape, dtype=np.float32)

    # ------------------------------------------------------------------ planning
    def _conv_plan(self, i: int, n: Node, x_shape, st: _State):
        p = st.plans.get(i)
        if p is not None:
            return p
        a = n.attrs
        args = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"])
        try:
            spec = ConvSpec.from_shapes(x_shape, a["w"].shape, dtype=np.float32, **args)
        except ConvError as e:
            raise ConvError(f"input of shape {tuple(x_shape)}: {e}") from None
        algo = self.algorithm
        budgets = dict(memory_limit=self.memory_limit, max_error=self.max_error)
        if algo == "auto":
            # once per shape: a later identical layer would compare the first one's measured
            # times (the planner's trial, now cached) with the cost model's prediction for the
            # executor, and could decide otherwise (ResNet-50 batch 8: one of its three
            # 128@28 3x3 layers left the executor, the other two stayed)
            if spec not in self._auto_choice:
                self._auto_choice[spec] = _prefer_executor(spec, budgets, self.threads)
            algo = self._auto_choice[spec]
        if algo == "deterministic":
            if _in_executor(spec):
                algo = "direct"
            else:
                ranking = select.rank(spec, **budgets)
                names = [c.name for c in ranking if c.admissible and registry.get(c.name).deterministic]
                algo = names[0] if names else "direct"
            p = _plan(x_shape, a["w"], algorithm=algo, **args)
        elif algo != "auto" and registry.get(algo).supports(spec) is None:
            p = _plan(x_shape, a["w"], algorithm=algo, **args)
        else:  # auto, or a named algorithm that cannot run this layer
            p = _plan(x_shape, a["w"], algorithm="auto", **args, **budgets)
        st.plans[i] = p
        return p


class _Threads:
    """Hold Numba to ``n`` threads, the BLAS to one (if the call can reach it) and PyTorch (if
    loaded and the call runs an operator through it) to one, restoring the previous settings
    on exit. Skipping what a call cannot use saves 0.1-0.2 ms per call (threadpoolctl's limit
    and PyTorch's thread pool resized twice; EfficientNet-Lite0 batch 1 takes about 7 ms)."""

    def __init__(self, n: int, blas: bool = True, torch: bool = True):
        self.n = n
        self.blas = blas
        self.torch = torch

    def __enter__(self):
        import sys

        import numba

        self._numba = numba.get_num_threads()
        want = min(self.n, numba.config.NUMBA_NUM_THREADS)
        if want != self._numba:
            numba.set_num_threads(want)
        self._blas = None
        if self.blas:
            from .._parallel import blas_one_thread

            self._blas = blas_one_thread()
            self._blas.__enter__()
        torch = sys.modules.get("torch") if self.torch else None
        self._torch = None
        if torch is not None:
            self._torch = torch.get_num_threads()
            if self._torch != 1:
                torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        import sys

        import numba

        if numba.get_num_threads() != self._numba:
            numba.set_num_threads(self._numba)
        if self._blas is not None:
            self._blas.__exit__(*exc)
        torch = sys.modules.get("torch")
        if torch is not None and self._torch not in (None, 1):
            torch.set_num_threads(self._torch)
        return False


def compile(model, example_input, *, algorithm="auto", memory_limit=None, max_error=None,  # noqa: A001
            threads=None, check_finite=True, quantize=None, calibration=None):
    """Capture a PyTorch CPU model and run it in convolab's runtime.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode (BatchNorm with running statistics, dropout off); float32 parameters.
    example_input : torch.Tensor or numpy.ndarray
        An input of the shape the model will mostly see (N, C, H, W): the graph is captured
        with ``torch.export`` at this shape and its convolutions planned for it. Other batch
        sizes are planned on their first call and kept.
    algorithm : str
        ``"auto"`` (per layer, under ``memory_limit`` and ``max_error``), ``"deterministic"``
        (the fastest of the algorithms whose results do not depend on threads or SIMD width,
        per layer), or a registered name (layers it cannot run use ``"auto"``).
    memory_limit, max_error
        Budgets of ``"auto"`` per convolution (see `convolab.plan`).
    threads : int, optional
        Threads every call uses (default: Numba's thread count).
    check_finite : bool
        Refuse inputs holding NaN or Inf with a `ConvError` (default True).
    quantize : convolab.quant.QuantConfig, optional
        Run the convolutions in int8 (post-training static quantisation, calibrated on
        ``calibration``): a `convolab.runtime.quantized.QuantizedModel`. ``algorithm``,
        ``memory_limit`` and ``max_error`` are for float models and must stay at their defaults.
    calibration : tensor, array or list of them, optional
        Sample inputs for ``quantize`` (default: ``example_input``).

    Returns
    -------
    CompiledModel (QuantizedModel with ``quantize``)
        Callable like the module: torch tensors in -> torch tensors out, NumPy in -> NumPy out.

    Notes
    -----
    The passes (`convolab.runtime.graph`): BatchNorm folded into convolutions, zero ``F.pad``
    folded into their padding, bias + residual add + activation (ReLU, ReLU6 / hardtanh /
    clamp, SiLU, Hardswish, Hardsigmoid, Sigmoid, GELU) applied in the convolution's output
    stage while its output is in cache. Pooling (max, average, adaptive / global), linear,
    flatten / view, concat, padding and elementwise operators run as compiled kernels or
    single-threaded NumPy; any other operator runs through PyTorch, listed once in a warning.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ConvError(f"compile takes a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ConvError("the model is in training mode: call model.eval() before convolab.compile "
                        "(BatchNorm folding needs its running statistics)")
    if algorithm not in ("auto", "deterministic"):
        registry.get(algorithm)  # unknown names raise ConvError listing the registered ones
    ex = example_input
    if isinstance(ex, np.ndarray):
        ex = torch.from_numpy(ex)
    if not isinstance(ex, torch.Tensor):
        raise ConvError(f"example_input must be a torch.Tensor or numpy.ndarray, got {type(ex).__name__}")
    if ex.dtype != torch.float32:
        raise ConvError(f"example_input must be float32, got {ex.dtype}")
    if ex.device.type != "cpu":
        raise ConvError(f"example_input must be a CPU tensor, got {ex.device}")
    for name, p in model.named_parameters():
        if p.dtype != torch.float32:
            raise ConvError(f"parameter {name} is {p.dtype}; the runtime computes in float32")
    if quantize is not None and (algorithm != "auto" or memory_limit is not None
                                 or max_error is not None):
        raise ConvError("quantize= chooses the int8 algorithms: leave algorithm, memory_limit and "
                        f"max_error at their defaults (got algorithm={algorithm!r})")
    if quantize is None and calibration is not None:
        raise ConvError("calibration= is for quantize=: pass a convolab.quant.QuantConfig too")
    g = optimise(capture(model, ex))
    if g.fallback:
        warnings.warn("convolab.compile: these operators run through PyTorch: "
                      + ", ".join(f"{k} (x{v})" for k, v in g.fallback.items()), stacklevel=2)
    if quantize is not None:
        from .quantized import QuantizedModel

        qm = QuantizedModel(g, quantize, threads=threads, check_finite=check_finite)
        qm.calibrate(ex if calibration is None else calibration)
        qm(ex)  # plans for the example's shape
        return qm
    cm = CompiledModel(g, algorithm=algorithm, memory_limit=memory_limit, max_error=max_error,
                       threads=threads, check_finite=check_finite)
    cm(ex)  # plans and buffers for the example's shape
    return cm
