"""A captured CNN as convolab's runtime sees it: a list of `Node` records, and the passes that
fold and fuse it.

Capture. ``torch.export.export(model, (example,))`` (under ``torch.no_grad``) traces the model
at the ATen level with concrete shapes: ``nn.Conv2d`` and its subclasses that override
``forward``, models calling ``F.conv2d`` directly, ``F.pad`` / ``nn.ZeroPad2d`` before a
convolution, BatchNorm in eval mode -- all become the same few ATen operators. Parameters and
buffers are lifted to graph inputs; their values are read once into NumPy (float32). In-place
operators are computed out of place; one whose change another alias of the tensor (a view)
would read afterwards is refused (`_check_inplace`).

IR. One `Node` per ATen call; ``inputs`` are indices of earlier nodes (activations), weights
are NumPy arrays in ``attrs``. Every node produces one value (``getitem`` of multi-output
operators is resolved at capture). Kinds: ``input``, ``conv``, ``affine`` (a per-channel
scale and shift: a BatchNorm that follows no convolution), ``act``, ``binary`` (add, sub,
mul, div with broadcasting), ``pad``, ``maxpool``, ``avgpool``, ``adaptive_avg``, ``mean``,
``linear``, ``reshape``, ``cat``, ``identity`` and ``torch`` (any other operator: run by
PyTorch, listed once in a warning).

Passes, in order (`optimise`):

1. identities (eval dropout, clone, contiguous, alias, detach) are removed;
2. a BatchNorm (running statistics) whose input is a convolution used only by it is folded
   into the convolution: ``w' = w * g / sqrt(v + eps)`` per output channel, ``b' = (b - m) *
   g / sqrt(v + eps) + beta`` (computed in float64, rounded once to float32);
3. a zero ``pad`` (constant mode, value 0, no negative amounts) whose every user is a
   convolution is folded into their padding (convolab takes four-sided padding);
4. epilogues: a convolution whose only user adds another tensor of its shape (the residual)
   and/or whose (sum's) only user is an activation takes them into its output stage:
   ``y = act(conv(x) + b + residual)``, evaluated in that order as PyTorch does.

Size: the capture (ATen operator by operator) and the passes over the same `Graph`; the
operator table is most of it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConvError

#: activation codes of the compiled epilogue (`convolab.runtime._kernels`)
ACTS = {"none": 0, "relu": 1, "clamp": 2, "silu": 3, "hardswish": 4, "sigmoid": 5, "gelu": 6,
        "gelu_tanh": 7, "hardsigmoid": 8}


@dataclass
class Node:
    """One operator of the captured graph; its value is referred to by its index."""

    kind: str
    inputs: list[int]
    attrs: dict = field(default_factory=dict)
    name: str = ""
    where: str = ""
    #: the value's shape at the example input
    shape: tuple = ()

    def describe(self) -> str:
        return f"{self.name} ({self.where})" if self.where and self.where != self.name else self.name


@dataclass
class Graph:
    nodes: list[Node]
    outputs: list[int]
    inputs: list[int]
    #: ATen operators run by PyTorch (name -> count)
    fallback: dict = field(default_factory=dict)
    #: what the passes did (counts)
    folded: dict = field(default_factory=dict)

    def users(self) -> list[list[int]]:
        u: list[list[int]] = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            for j in n.inputs:
                u[j].append(i)
        for j in self.outputs:
            u[j].append(-1)  # the graph's output counts as a user
        return u


# ----------------------------------------------------------------------------- capture
def _where(node) -> str:
    """The module path of the layer an fx node came from (for messages)."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        cls = getattr(cls, "__name__", None) or str(cls).rsplit(".", 1)[-1].strip("'>")
        return f"{path}: {cls}" if path else cls
    return ""


def _pair(v, n=2) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(a) for a in v)
    return v * n if len(v) == 1 else v


def _act(name: str, **kw) -> dict:
    return {"act": name, **kw}


def _aten_table():
    import torch

    aten = torch.ops.aten
    acts = {
        aten.relu.default: lambda a: _act("relu"),
        aten.relu_.default: lambda a: _act("relu"),
        aten.silu.default: lambda a: _act("silu"),
        aten.silu_.default: lambda a: _act("silu"),
        aten.hardswish.default: lambda a: _act("hardswish"),
        aten.hardswish_.default: lambda a: _act("hardswish"),
        aten.hardsigmoid.default: lambda a: _act("hardsigmoid"),
        aten.hardsigmoid_.default: lambda a: _act("hardsigmoid"),
        aten.sigmoid.default: lambda a: _act("sigmoid"),
        aten.sigmoid_.default: lambda a: _act("sigmoid"),
        aten.relu6.default: lambda a: _act("clamp", lo=0.0, hi=6.0),
        aten.hardtanh.default: lambda a: _act("clamp", lo=float(a[1] if len(a) > 1 else -1.0),
                                              hi=float(a[2] if len(a) > 2 else 1.0)),
        aten.hardtanh_.default: lambda a: _act("clamp", lo=float(a[1] if len(a) > 1 else -1.0),
                                               hi=float(a[2] if len(a) > 2 else 1.0)),
    }
    identities = {aten.clone.default, aten.contiguous.default, aten.alias.default,
                  aten.detach.default, aten.dropout.default, aten.feature_dropout.default,
                  aten.alpha_dropout.default}
    binaries = {aten.add.Tensor: "add", aten.sub.Tensor: "sub", aten.mul.Tensor: "mul",
                aten.div.Tensor: "div", aten.add_.Tensor: "add", aten.mul_.Tensor: "mul"}
    reshapes = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
                aten.flatten.using_ints, aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims,
                aten.unsqueeze.default}
    return aten, acts, identities, binaries, reshapes


def capture(model, example) -> Graph:
    """Export ``model`` at ``example`` and translate it into the runtime's IR."""
    import torch

    aten, acts, identities, binaries, reshapes = _aten_table()
    with torch.no_grad():
        try:
            ep = torch.export.export(model, (example,))
        except Exception as e:  # noqa: BLE001 - export's own errors are long and varied
            raise ConvError(f"torch.export could not capture the model: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from e
    sig = ep.graph_signature
    consts: dict[str, np.ndarray] = {}
    for spec in sig.input_specs:
        if spec.kind.name == "USER_INPUT":
            continue
        t = ep.state_dict.get(spec.target)
        if t is None:
            t = ep.constants.get(spec.target)
        if isinstance(t, torch.Tensor):
            consts[spec.arg.name] = t.detach().to("cpu").numpy()
    _check_inplace(ep.graph, consts)
    nodes: list[Node] = []
    index: dict[str, int] = {}  # fx node name -> value index
    tuples: dict[str, list] = {}  # fx node name of a multi-output op -> its per-output indices
    fallback: dict[str, int] = {}
    inputs: list[int] = []

    def value(a):
        if a.name not in index:
            raise ConvError(f"{a.name} is not an activation the runtime can use here")
        return index[a.name]

    def const(a):
        if hasattr(a, "name") and a.name in consts:
            return consts[a.name]
        return None

    def add(node, kind, ins, **attrs):
        val = node.meta.get("val")
        shape = tuple(int(d) for d in val.shape) if hasattr(val, "shape") else ()
        nodes.append(Node(kind, ins, attrs, node.name, _where(node), shape))
        index[node.name] = len(nodes) - 1

    def torch_node(node):
        target = node.target
        fallback[str(target)] = fallback.get(str(target), 0) + 1
        args_nodes: list[int] = []

        def pack(a):
            if isinstance(a, torch.fx.Node):
                c = const(a)
                if c is not None:
                    return ("const", c)
                args_nodes.append(value(a))
                return ("value", len(args_nodes) - 1)
            if isinstance(a, (list, tuple)):
                return type(a)(pack(b) for b in a)
            return ("lit", a)

        packed = pack(tuple(node.args))
        kw = {k: pack(v) for k, v in node.kwargs.items()}
        add(node, "torch", args_nodes, target=target, args=packed, kwargs=kw)

    for node in ep.graph.nodes:
        if node.op == "placeholder":
            if node.name in consts:
                continue
            add(node, "input", [])
            inputs.append(index[node.name])
            continue
        if node.op == "output":
            outs = node.args[0]
            outputs = []
            for o in outs if isinstance(outs, (list, tuple)) else [outs]:
                if not isinstance(o, torch.fx.Node) or o.name not in index:
                    raise ConvError(f"the model's output {o!r} is not a tensor computed by the graph")
                outputs.append(index[o.name])
            break
        if node.op != "call_function":
            raise ConvError(f"unexpected {node.op} node {node.name} in the exported graph")
        t, a = node.target, node.args
        if t is operator.getitem:
            src, i = a
            if src.name in tuples and tuples[src.name][i] is not None:
                index[node.name] = tuples[src.name][i]
                continue
            if src.name in index and nodes[index[src.name]].kind == "torch":
                add(node, "getitem", [index[src.name]], item=i)
                continue
            if not node.users:  # an output nobody reads (the indices of a max pool)
                continue
            raise ConvError(f"cannot take output {i} of {src.name}")
        if str(t) == "aten._assert_tensor_metadata.default":  # a check of export's, no value
            continue
        if t in identities:
            add(node, "identity", [value(a[0])])
        elif t in (aten.conv2d.default, aten.conv2d.padding, aten.convolution.default):
            w = const(a[1]) if len(a) > 1 else None
            b = const(a[2]) if len(a) > 2 and a[2] is not None else None
            if t is aten.convolution.default:
                transposed = a[6] if len(a) > 6 else False
                if transposed or w is None or w.ndim != 4 or (len(a) > 2 and a[2] is not None and b is None):
                    torch_node(node)
                    continue
                stride, padding, dilation, groups = a[3], a[4], a[5], a[8]
            else:
                if w is None or w.ndim != 4 or (len(a) > 2 and a[2] is not None and b is None):
                    torch_node(node)
                    continue
                stride = a[3] if len(a) > 3 else 1
                padding = a[4] if len(a) > 4 else 0
                dilation = a[5] if len(a) > 5 else 1
                groups = a[6] if len(a) > 6 else 1
                stride = node.kwargs.get("stride", stride)
                padding = node.kwargs.get("padding", padding)
                dilation = node.kwargs.get("dilation", dilation)
                groups = node.kwargs.get("groups", groups)
            if isinstance(padding, str):
                pad = padding
            else:
                ph, pw = _pair(padding)
                pad = (pw, pw, ph, ph)
            add(node, "conv", [value(a[0])], w=w.astype(np.float32), b=None if b is None else b.astype(np.float32),
                stride=_pair(stride), padding=pad, dilation=_pair(dilation), groups=int(groups),
                act="none", lo=0.0, hi=0.0, residual=False)
        elif t in (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default):
            if t is aten.batch_norm.default:
                x, g, beta, mean, var = a[:5]
                training, eps = a[5], a[7]
            else:
                x, g, beta, mean, var = a[:5]
                training, eps = False, a[6]
            mean, var = const(mean), const(var)
            g = None if g is None else const(g)
            beta = None if beta is None else const(beta)
            if training or mean is None or var is None:
                torch_node(node)
                continue
            scale = 1.0 / np.sqrt(var.astype(np.float64) + float(eps))
            if g is not None:
                scale = scale * g.astype(np.float64)
            shift = -mean.astype(np.float64) * scale
            if beta is not None:
                shift = shift + beta.astype(np.float64)
            add(node, "affine", [value(x)], scale=scale, shift=shift)
            if t is not aten.batch_norm.default:
                tuples[node.name] = [index[node.name], None, None]
        elif t in acts:
            add(node, "act", [value(a[0])], **{"lo": 0.0, "hi": 0.0, **acts[t](a)})
        elif t is aten.gelu.default:
            approx = node.kwargs.get("approximate", a[1] if len(a) > 1 else "none")
            add(node, "act", [value(a[0])], act="gelu_tanh" if approx == "tanh" else "gelu", lo=0.0, hi=0.0)
        elif t in (aten.clamp_min.default, aten.clamp_max.default) and not isinstance(a[1], torch.fx.Node):
            lo, hi = (float(a[1]), math.inf) if t is aten.clamp_min.default else (-math.inf, float(a[1]))
            add(node, "act", [value(a[0])], act="clamp", lo=lo, hi=hi)
        elif t in (aten.clamp.default, aten.clamp_.default) and isinstance(a[0], torch.fx.Node) and all(
                not isinstance(v, torch.fx.Node) for v in a[1:]):
            lo = a[1] if len(a) > 1 and a[1] is not None else -math.inf
            hi = a[2] if len(a) > 2 and a[2] is not None else math.inf
            add(node, "act", [value(a[0])], act="clamp", lo=float(lo), hi=float(hi))
        elif t in binaries and isinstance(a[0], torch.fx.Node) and const(a[0]) is None:
            other = a[1]
            alpha = node.kwargs.get("alpha", a[2] if len(a) > 2 else 1)
            if isinstance(other, torch.fx.Node) and const(other) is None and alpha == 1:
                add(node, "binary", [value(a[0]), value(other)], op=binaries[t])
            elif isinstance(other, (int, float)) and alpha == 1:
                add(node, "binary", [value(a[0])], op=binaries[t], scalar=float(other))
            else:
                torch_node(node)
        elif t in (aten.pad.default, aten.constant_pad_nd.default):
            pads = list(a[1])
            mode = "constant"
            if t is aten.pad.default:
                mode = a[2] if len(a) > 2 else node.kwargs.get("mode", "constant")
                val = a[3] if len(a) > 3 else node.kwargs.get("value", None)
            else:
                val = a[2] if len(a) > 2 else 0.0
            val = 0.0 if val is None else float(val)
            if mode != "constant" or len(pads) not in (2, 4):
                torch_node(node)
                continue
            pads = pads + [0, 0] * ((4 - len(pads)) // 2)
            add(node, "pad", [value(a[0])], pads=tuple(int(p) for p in pads), value=val)
        elif t is aten.max_pool2d.default or (t is aten.max_pool2d_with_indices.default and not any(
                u.target is operator.getitem and u.args[1] != 0 and u.users for u in node.users)):
            k = _pair(a[1])
            stride = _pair(a[2]) if len(a) > 2 and a[2] else k
            padding = _pair(a[3]) if len(a) > 3 else (0, 0)
            dilation = _pair(a[4]) if len(a) > 4 else (1, 1)
            ceil = bool(a[5]) if len(a) > 5 else False
            add(node, "maxpool", [value(a[0])], k=k, stride=stride, padding=padding, dilation=dilation,
                ceil=ceil)
            if t is aten.max_pool2d_with_indices.default:
                tuples[node.name] = [index[node.name], None]
        elif t is aten.avg_pool2d.default:
            k = _pair(a[1])
            stride = _pair(a[2]) if len(a) > 2 and a[2] else k
            padding = _pair(a[3]) if len(a) > 3 else (0, 0)
            ceil = bool(a[4]) if len(a) > 4 else False
            include = bool(a[5]) if len(a) > 5 else True
            div = a[6] if len(a) > 6 else None
            add(node, "avgpool", [value(a[0])], k=k, stride=stride, padding=padding, ceil=ceil,
                include_pad=include, divisor=div)
        elif t in (aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default):
            add(node, "adaptive_avg", [value(a[0])], size=_pair(a[1]))
        elif t is aten.mean.dim and sorted(int(d) % 4 for d in a[1]) == [2, 3] and len(
                node.meta["val"].shape) in (2, 4):
            add(node, "adaptive_avg", [value(a[0])], size=(1, 1),
                keepdim=bool(a[2] if len(a) > 2 else node.kwargs.get("keepdim", False)))
        elif t is aten.linear.default and const(a[1]) is not None:
            b = const(a[2]) if len(a) > 2 and a[2] is not None else None
            if len(a) > 2 and a[2] is not None and b is None:
                torch_node(node)
                continue
            add(node, "linear", [value(a[0])], w=const(a[1]).astype(np.float32),
                b=None if b is None else b.astype(np.float32))
        elif t in reshapes:
            shape = tuple(node.meta["val"].shape)
            add(node, "reshape", [value(a[0])], shape=tuple(int(s) for s in shape))
        elif t is aten.cat.default and all(isinstance(v, torch.fx.Node) and const(v) is None for v in a[0]):
            dim = a[1] if len(a) > 1 else node.kwargs.get("dim", 0)
            add(node, "cat", [value(v) for v in a[0]], dim=int(dim))
        else:
            torch_node(node)
    g = Graph(nodes, outputs, inputs, fallback)
    _check_example_batch(g, ep, example)
    return g


def _returns_view(node) -> bool:
    """Whether an fx node's value is a view of (shares memory with) its first argument."""
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:  # an element of split / chunk / unbind
        return hasattr(node.args[0], "op") and _returns_view(node.args[0])
    schema = getattr(node.target, "_schema", None)
    return schema is not None and any(r.alias_info is not None and not r.alias_info.is_write
                                      for r in schema.returns)


def _writes_first(node) -> bool:
    schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
    return bool(schema and schema.arguments and schema.arguments[0].alias_info is not None
                and schema.arguments[0].alias_info.is_write)


def _check_inplace(graph, consts: dict) -> None:
    """Refuse an in-place operator whose change the runtime would lose. The runtime computes
    every operator out of place; ``torch.export`` points the uses that follow an in-place
    operator at its result, except those through another alias of the changed tensor (a view
    taken before it, or the base of the view it changes), which would read the old values."""
    order = {n: k for k, n in enumerate(graph.nodes)}
    for n in graph.nodes:
        if not _writes_first(n) or not hasattr(n.args[0], "op") or n.args[0].name in consts:
            continue
        group, todo = set(), [n.args[0]]  # every alias of the changed tensor
        while todo:
            v = todo.pop()
            if v in group:
                continue
            group.add(v)
            if _returns_view(v) and hasattr(v.args[0], "op"):
                todo.append(v.args[0])
            todo += [u for u in v.users if u is not n and _returns_view(u)]
        late = sorted({"the output" if u.op == "output" else u.name for v in group for u in v.users
                       if u is not n and u not in group and order[u] > order[n]}
                      | {v.name for v in group if order[v] > order[n]})
        if late:
            raise ConvError(
                f"{n.name} ({n.target}{', ' + _where(n) if _where(n) else ''}) changes a tensor in "
                f"place that {', '.join(late)} read(s) afterwards through another name or view; the "
                "runtime computes operators out of place: use the out-of-place form in the model")


def _check_example_batch(g: Graph, ep, example) -> None:
    """Record the example's batch size: reshape targets that carry it are rewritten for other
    batch sizes (a reshape that mixes the batch into another axis cannot be, and is refused
    then; see `reshape_shape`)."""
    g.folded["example_batch"] = int(example.shape[0])


def reshape_shape(node: Node, x_shape: tuple, example_batch: int) -> tuple:
    """The target shape of a captured reshape for an input of ``x_shape``: the captured shape,
    its leading axis replaced by the input's batch size when that is what it carried."""
    shape = node.attrs["shape"]
    n = x_shape[0]
    if n == example_batch or not shape:
        return shape
    if shape[0] == example_batch:
        return (n, *shape[1:])
    raise ConvError(f"{node.describe()}: a reshape to {shape} does not keep the batch axis; "
                    f"compile the model with an example of batch {n}")


# ----------------------------------------------------------------------------- passes
def optimise(g: Graph) -> Graph:
    """Remove identities, fold BatchNorm and zero padding into convolutions, fuse epilogues."""
    _drop_identities(g)
    _fold_bn(g)
    _fold_pad(g)
    _fuse_epilogues(g)
    return _compact(g)


def _redirect(g: Graph, old: int, new: int) -> None:
    for n in g.nodes:
        n.inputs = [new if j == old else j for j in n.inputs]
    g.outputs = [new if j == old else j for j in g.outputs]


def _drop_identities(g: Graph) -> None:
    for i, n in enumerate(g.nodes):
        if n.kind == "identity":
            _redirect(g, i, n.inputs[0])
            n.kind, n.inputs = "dead", []
            g.folded["identity"] = g.folded.get("identity", 0) + 1


def _fold_bn(g: Graph) -> None:
    users = g.users()
    for i, n in enumerate(g.nodes):
        if n.kind != "affine":
            continue
        src = n.inputs[0]
        c = g.nodes[src]
        if c.kind != "conv" or users[src] != [i] or c.attrs["act"] != "none" or c.attrs["residual"]:
            continue
        scale, shift = n.attrs["scale"], n.attrs["shift"]
        if scale.shape[0] != c.attrs["w"].shape[0]:
            continue
        w = c.attrs["w"].astype(np.float64) * scale[:, None, None, None]
        b = c.attrs["b"].astype(np.float64) if c.attrs["b"] is not None else np.zeros_like(scale)
        c.attrs["w"] = w.astype(np.float32)
        c.attrs["b"] = (b * scale + shift).astype(np.float32)
        _redirect(g, i, src)
        n.kind, n.inputs = "dead", []
        users = g.users()
        g.folded["batchnorm"] = g.folded.get("batchnorm", 0) + 1


def _fold_pad(g: Graph) -> None:
    users = g.users()
    for i, n in enumerate(g.nodes):
        if n.kind != "pad" or n.attrs["value"] != 0.0 or min(n.attrs["pads"]) < 0:
            continue
        us = users[i]
        if not us or any(u < 0 or g.nodes[u].kind != "conv" or g.nodes[u].inputs[0] != i
                         or isinstance(g.nodes[u].attrs["padding"], str) for u in us):
            continue
        pl, pr, pt, pb = n.attrs["pads"]
        for u in us:
            l0, r0, t0, b0 = g.nodes[u].attrs["padding"]
            g.nodes[u].attrs["padding"] = (l0 + pl, r0 + pr, t0 + pt, b0 + pb)
        _redirect(g, i, n.inputs[0])
        n.kind, n.inputs = "dead", []
        users = g.users()
        g.folded["pad"] = g.folded.get("pad", 0) + 1


def _fuse_epilogues(g: Graph) -> None:
    """Give a convolution its residual add and activation. The fused node takes the place of
    the last operator it absorbs (the residual may be computed after the convolution, as in
    ResNet's downsampling shortcut), so the order stays topological."""
    users = g.users()
    nodes = g.nodes
    for i in range(len(nodes)):
        c = nodes[i]
        if c.kind != "conv" or c.attrs["act"] != "none":
            continue
        u = users[i]
        if len(u) != 1 or u[0] < 0:
            continue
        a = nodes[u[0]]
        if (a.kind == "binary" and a.attrs["op"] == "add" and "scalar" not in a.attrs
                and not c.attrs["residual"]):
            other = a.inputs[1] if a.inputs[0] == i else a.inputs[0]
            if other == i or a.shape != c.shape or nodes[other].shape != c.shape:
                continue
            c.inputs = [c.inputs[0], other]
            c.attrs["residual"] = True
            key = "residual"
        elif a.kind == "act":
            c.attrs.update(act=a.attrs["act"], lo=a.attrs["lo"], hi=a.attrs["hi"])
            key = "activation"
        else:
            continue
        c.name = f"{c.name}+{a.name}"
        nodes[u[0]] = c
        nodes[i] = Node("dead", [])
        g.folded[key] = g.folded.get(key, 0) + 1
        users = g.users()


def _compact(g: Graph) -> Graph:
    """Drop dead nodes and renumber."""
    keep = [i for i, n in enumerate(g.nodes) if n.kind != "dead"]
    new = {old: k for k, old in enumerate(keep)}
    nodes = []
    for old in keep:
        n = g.nodes[old]
        n.inputs = [new[j] for j in n.inputs]
        nodes.append(n)
    return Graph(nodes, [new[j] for j in g.outputs], [new[j] for j in g.inputs], g.fallback, g.folded)
