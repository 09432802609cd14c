"""int8 compiled models: ``convolab.compile(model, example, quantize=QuantConfig(...))``.

Post-training static quantisation of a captured graph (`convolab.runtime.graph`, after its
passes: BatchNorm folded, bias / residual / activation fused into the convolutions):

- **Calibration.** The float graph runs operator by operator on the calibration inputs; every
  value a convolution reads gets one symmetric per-tensor scale from its observed range
  (`convolab.quant.core.Observer`: ``minmax``, ``percentile`` or ``mse``, the config's
  ``calibration``), every filter one scale per output channel. A layer run by a fast algorithm
  also calibrates one scale per frequency of its transform domain (`QuantizedConv.observe`).
- **Convolutions in int8.** Every convolution reads int8 codes of its input and runs on the
  int8 kernels (`convolab.quant.plan_int8`: the VNNI microkernel, its pointwise tiles, the
  int8 depthwise kernel) or, for a fast ``config.algorithm`` (Winograd F(2x2,3x3), SFC-4,
  SFC-6) on the 3x3 stride-1 layers of one group it runs, on the compiled int8 fast path
  (`convolab.quant.fastint8`). Spatial layers always take the microkernel: ``"im2col"`` would
  give the same integers, slower.
- **Where values stay int8.** A convolution whose output only other convolutions read as
  their input, with no residual add, writes that output as int8 codes at the consumers' scale
  straight from its output stage: ``rint(fma(float32(y), s_x s_w[k] / s_y, b[k] / s_y))``
  (the factors rounded to float32) clamped to the fused activation's bounds over ``s_y``
  (ReLU, ReLU6 / clamp) and to [-127, 127]. Other outputs are float32
  (``act(y * s_x s_w[k] + b[k])``, the residual added in float before the activation), and a
  float value that a convolution reads is quantised once, in the same pass as that residual
  add and activation (`_kernels.stage_codes`, the arithmetic of `convolab.quant.quantize`).
  Everything else -- pooling, the classifier's linear layer, elementwise operators, PyTorch
  fallbacks -- runs in float32 as in the float compiled model.

Rounding happens where the codes are made (input and requantised outputs: half to even) and
in the fast algorithms' transform domain (per frequency); the integer sums are exact.
"""

from __future__ import annotations

import threading

import numpy as np

from ..errors import ConvError
from ..kernels import team
from ..quant.core import Observer, QuantConfig, quantize, weight_scales
from ..spec import ConvSpec
from . import _kernels as K
from .graph import ACTS, Graph, Node
from .ops import _EXEC

_E32 = np.zeros(0, dtype=np.float32)
_E8 = np.zeros(0, dtype=np.int8)
#: graph activations the int8 output stage applies itself (others run in float afterwards)
_STAGE_ACTS = ("none", "relu", "clamp")


class _Host:
    """What the float operators of `convolab.runtime.ops` need from a model: the thread count,
    the example's batch and `_out`, here one buffer per (operator, shape), kept."""

    def __init__(self, threads: int, example_batch: int):
        self.threads = threads
        self._example_batch = example_batch
        self._bufs: dict = {}

    def _out(self, i: int, st, shape: tuple) -> np.ndarray:
        b = self._bufs.get((i, shape))
        if b is None:
            b = self._bufs[(i, shape)] = np.empty(shape, dtype=np.float32)
        return b


class _Shapes:
    """The `_State` stand-in the float operators record shapes in."""

    def __init__(self):
        self.shapes: dict = {}
        self.segments = None


class _QConv:
    """A convolution's int8 parameters, independent of the input shape."""

    def __init__(self, i: int, n: Node, config: QuantConfig):
        from ..quant.layer import QuantizedConv

        a = n.attrs
        self.i, self.node = i, n
        self.args = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                         groups=a["groups"])
        w = np.asarray(a["w"], dtype=np.float64)
        self.s_w = weight_scales(w, config.bits)
        self.wq = quantize(w, self.s_w, config.bits, axis=0)
        self.bias = None if a["b"] is None else np.asarray(a["b"], np.float64)
        self.residual = bool(a["residual"])
        self.act = a["act"]
        self.lo, self.hi = float(a.get("lo", 0.0)), float(a.get("hi", 0.0))
        self.config = config
        #: a fast algorithm's layer (`QuantizedConv` calibrates its transform domain), or None
        self.fast = None
        if config.fast and config.transform_bits is not None and a["groups"] == 1:
            from ..kernels._int8_fast import ALGORITHMS

            qc = QuantizedConv(a["w"], None, config=config, **self.args)
            if qc.t is not None and qc.t.name in ALGORITHMS:
                self.fast = qc

    def fresh_fast(self):
        """A new, unobserved `QuantizedConv` of this fast layer (None for a spatial one)."""
        from ..quant.layer import QuantizedConv

        if self.fast is None:
            return None
        return QuantizedConv(self.node.attrs["w"], None, config=self.config, **self.args)
        #: the scale of the input codes (set by calibration)
        self.s_x: float | None = None
        #: the output's scale when it is written as int8 codes, else None
        self.s_y: float | None = None

    @property
    def stage_act(self) -> bool:
        """Whether the output stage applies the activation (no residual before it)."""
        return not self.residual and self.act in _STAGE_ACTS

    def activation(self):
        if self.act == "relu":
            return "relu"
        if self.act == "clamp":
            return ("clamp", self.lo, self.hi)
        return None

    def plan(self, x_shape: tuple, threads: int):
        """The layer's int8 plan for input ``x_shape``: codes in, int8 codes (``s_y`` set) or
        float32 out."""
        from ..quant.fastint8 import FastInt8Plan
        from ..quant.intconv import plan_int8

        act = self.activation() if self.stage_act else None
        if self.fast is not None:
            qc = self.fast
            spec = ConvSpec.from_shapes(x_shape, self.wq.shape, dtype=np.float32, **self.args)
            fa = None if act is None else act if isinstance(act, str) else "clamp"
            lo, hi = (self.lo, self.hi) if fa == "clamp" else (0.0, 0.0)
            return FastInt8Plan(spec, qc.t.name, qc.Uq.astype(np.int8), qc.s_u, qc.s_v,
                                self.s_x, qc.tbits, bias=self.bias, act=fa, lo=lo, hi=hi,
                                threads=threads)
        scale = self.s_x * self.s_w
        if self.s_y is not None:
            return plan_int8(x_shape, self.wq, **self.args, output="int8", scale=scale,
                             bias=self.bias, activation=act, out_scale=self.s_y)
        return plan_int8(x_shape, self.wq, **self.args, output="float32", scale=scale,
                         bias=self.bias, activation=act)


class QuantizedModel:
    """A captured model whose convolutions run in int8 (see the module notes); call it like
    the module: float32 torch tensors or NumPy arrays in, the same type out.

    Attributes
    ----------
    graph : Graph
    config : QuantConfig
    threads : int
    scales : dict
        Value index -> the per-tensor scale of its int8 codes (after `calibrate`).
    """

    def __init__(self, graph: Graph, config: QuantConfig, *, threads=None, check_finite=True):
        from .model import CompiledModel

        if not isinstance(config, QuantConfig):
            raise ConvError(f"quantize must be a convolab.quant.QuantConfig, got {type(config).__name__}")
        #: the float model: calibration runs on it, and the input checks are its
        self._float = CompiledModel(graph, algorithm="direct", threads=threads,
                                    check_finite=check_finite)
        self.graph = graph
        self.config = config
        self.threads = self._float.threads
        self.check_finite = check_finite
        self._host = _Host(self.threads, self._float._example_batch)
        self._convs = {i: _QConv(i, n, config) for i, n in enumerate(graph.nodes) if n.kind == "conv"}
        users = graph.users()
        #: values read as a convolution's input: each gets codes and a scale
        self._coded = {c.node.inputs[0] for c in self._convs.values()}
        for c in self._convs.values():
            u = users[c.i]
            c.int8_out = (not c.residual and c.act in _STAGE_ACTS and c.fast is None and u
                          and all(j >= 0 and j in self._convs and graph.nodes[j].inputs[0] == c.i
                                  and c.i not in graph.nodes[j].inputs[1:] for j in u))
        self.scales: dict[int, float] = {}
        self._plans: dict[tuple, dict] = {}
        self._codes: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"QuantizedModel({len(self._convs)} int8 convolutions, {self.config.label()}, "
                f"threads={self.threads})")

    # ------------------------------------------------------------------ calibration
    @property
    def calibrated(self) -> bool:
        return len(self.scales) == len(self._coded)

    def calibrate(self, samples) -> QuantizedModel:
        """Observe the float graph on ``samples`` (an array / tensor, or a list of them), then
        set every scale from them alone; plans made before are dropped. Returns self. On an
        error (a bad sample) nothing changes."""
        if not isinstance(samples, (list, tuple)):
            samples = [samples]
        if not samples:
            raise ConvError("calibration needs at least one sample input")
        from .model import _Threads

        fm = self._float
        g = self.graph
        states: dict = {}
        cfg = self.config
        observers = {v: Observer(1, cfg.calibration, cfg.percentile) for v in self._coded}
        fast = {i: c.fresh_fast() for i, c in self._convs.items() if c.fast is not None}
        with self._lock, _Threads(self.threads, True, True):
            for x in samples:
                a = self._checked(x, True)
                st = states.get(a.shape)
                if st is None:
                    from .model import _State

                    st = states[a.shape] = _State()
                vals: list = [None] * len(g.nodes)
                vals[g.inputs[0]] = a
                for i, n in enumerate(g.nodes):
                    if n.kind != "input":
                        fm._op(i, n, vals, st)
                    if i in observers:
                        observers[i].update(vals[i].reshape(-1, 1))
                    if i in fast:
                        fast[i].observe(vals[n.inputs[0]])
            scales = {v: float(o.scales(cfg.bits)[0]) for v, o in observers.items()}
            for qc in fast.values():
                qc.freeze()
            # all observed: commit
            self.scales = scales
            for i, c in self._convs.items():
                c.s_x = scales[c.node.inputs[0]]
                c.s_y = scales[c.i] if c.int8_out else None
                if i in fast:
                    c.fast = fast[i]
                    c.fast.s_x = c.s_x
            self._plans.clear()
            self._codes.clear()
        return self

    # ------------------------------------------------------------------ calling
    def __call__(self, *inputs):
        g = self.graph
        if len(inputs) != 1 or len(g.inputs) != 1:
            raise ConvError(f"the quantised model takes one input, got {len(inputs)}")
        if not self.calibrated:
            raise ConvError("the quantised model is not calibrated: call calibrate(samples)")
        x = inputs[0]
        is_torch = type(x).__module__.startswith("torch")
        a = self._checked(x, self.check_finite)
        from .model import _Threads

        with self._lock, _Threads(self.threads, False, bool(g.fallback)):
            outs = self._run(a)
        if is_torch:
            import torch

            outs = [torch.from_numpy(o) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _checked(self, x, finite: bool) -> np.ndarray:
        """``x`` as the float model checks an input (float32, shape), and, if ``finite``,
        refused with a ConvError naming the first NaN / Inf."""
        node = self.graph.nodes[self.graph.inputs[0]]
        a = self._float._input(x, node)
        if finite and not np.isfinite(a).all():
            raise self._float._not_finite(a, node, int(np.argmax(~np.isfinite(a))))
        return a

    def _tail(self, v: int, y: np.ndarray, r: np.ndarray | None = None, code: int = 0,
              lo: float = 0.0, hi: float = 0.0) -> np.ndarray | None:
        """One pass over float value ``v`` (``y``): the residual add and activation not applied
        before (in place), and its int8 codes if a convolution reads it (returned; kept in a
        buffer per shape)."""
        q = None
        if v in self._coded:
            key = (v, y.shape)
            q = self._codes.get(key)
            if q is None:
                q = self._codes[key] = np.empty(y.shape, dtype=np.int8)
        if q is None and r is None and code == 0:
            return None
        flat = y.reshape(-1) if y.flags.c_contiguous else np.ascontiguousarray(y).reshape(-1)
        team.run(K.stage_codes, (flat, _E32 if r is None else r.reshape(-1), code, lo, hi,
                                 _E8 if q is None else q.reshape(-1), self.scales.get(v, 1.0),
                                 127, np.zeros(2, dtype=np.int64)), self.threads, complete=True)
        return q

    def _run(self, a: np.ndarray) -> list[np.ndarray]:
        g = self.graph
        plans = self._plans.setdefault(a.shape, {})
        vals: list = [None] * len(g.nodes)  # float32 values
        codes: dict[int, np.ndarray] = {}  # int8 codes of the values convolutions read
        i0 = g.inputs[0]
        vals[i0] = a
        q = self._tail(i0, a)
        if q is not None:
            codes[i0] = q
        st = _Shapes()
        for i, n in enumerate(g.nodes):
            if n.kind == "conv":
                c = self._convs[i]
                xq = codes[n.inputs[0]]
                p = plans.get(i)
                if p is None:
                    try:
                        plan = c.plan(xq.shape, self.threads)
                    except ConvError as e:
                        raise ConvError(f"layer {n.describe()}: {e}") from None
                    dt = np.int8 if c.s_y is not None else np.float32
                    y = np.empty(plan.spec.out_shape, dtype=dt)
                    # the codes' buffer is this shape's own: the call is bound to it once
                    run = ((lambda plan=plan, xq=xq, y=y: plan(xq, y)) if c.fast is not None
                           else plan.bind(xq, y, self.threads))
                    p = plans[i] = (plan, y, run, xq)
                plan, y, run, xq0 = p
                if xq0 is not xq:
                    raise AssertionError(f"layer {n.describe()}: its input codes moved")
                run()
                if c.s_y is not None:
                    codes[i] = y
                    continue
                vals[i] = y
                if c.stage_act:
                    q = self._tail(i, y)
                else:
                    r = None
                    if c.residual:
                        r = vals[n.inputs[1]]
                        if r.shape != y.shape:
                            raise ConvError(f"layer {n.describe()}: residual of shape {r.shape} "
                                            f"does not match the convolution's output {y.shape}")
                    q = self._tail(i, y, r, ACTS[c.act], c.lo, c.hi)
            elif n.kind != "input":
                try:
                    vals[i] = _EXEC[n.kind](self._host, i, n, vals, st)
                except ConvError as e:
                    raise ConvError(f"layer {n.describe()}: {e}") from None
                q = self._tail(i, vals[i])
            else:
                continue
            if q is not None:
                codes[i] = q
        return [np.array(vals[j], copy=True) for j in g.outputs]

    # ------------------------------------------------------------------ reports
    @property
    def fallback_ops(self) -> dict:
        """ATen operators that run through PyTorch (name -> count)."""
        return dict(self.graph.fallback)

    def layers(self, shape=None) -> list:
        """The convolutions as `convolab.runtime.model.Layer` records: ``algorithm`` what runs
        it (``direct int8`` or a fast algorithm with its transform bits), ``epilogue`` the fused
        stage and the output's type (``-> int8`` codes for the next layer, or ``-> float32``),
        ``spec`` at input ``shape`` (default: the example's) once planned there."""
        from .model import Layer, epilogue_label

        plans = self._plans.get(tuple(shape or self._float._in_shape), {})
        out = []
        for i, c in self._convs.items():
            n = c.node
            algo = (f"{c.fast.t.name} int{self.config.bits}/t{c.fast.tbits}" if c.fast is not None
                    else f"direct int{self.config.bits}")
            epi = f"{epilogue_label(n.attrs) or '-'} -> {'int8' if c.s_y is not None else 'float32'}"
            p = plans.get(i)
            out.append(Layer(n.name, n.where, p[0].spec if p else None, algo, epi,
                             "int8" if p else "-"))
        return out
