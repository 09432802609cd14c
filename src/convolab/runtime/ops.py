"""The compiled model's operators run one by one (outside the executor's job, and every
operator on a shape's first call, which records the shapes): `_EXEC` maps a graph node's kind
to its function ``f(model, i, node, vals, state) -> value``. Convolutions run their plan and
then the output stage (`convolab.runtime._kernels.epilogue`); pooling, linear layers and the
elementwise operators run the runtime's compiled kernels on the thread team; operators
convolab does not implement run through PyTorch (`_torch`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConvError
from . import _kernels as K
from .graph import ACTS, Node, reshape_shape

if TYPE_CHECKING:
    from .model import CompiledModel, _State

_EMPTY1 = np.zeros(1, dtype=np.float32)
_EMPTY3 = np.zeros((1, 1, 1), dtype=np.float32)


def _conv(m: CompiledModel, i: int, n: Node, vals, st: _State):
    x = vals[n.inputs[0]]
    p = m._conv_plan(i, n, x.shape, st)
    y = m._out(i, st, p.spec.out_shape)
    p.execute(x, y)
    a = n.attrs
    mode = (2 if a["b"] is not None else 0) | (4 if a["residual"] else 0)
    act = ACTS[a["act"]]
    if mode or act:
        N, Kc = y.shape[0], y.shape[1]
        y3 = y.reshape(N, Kc, -1)
        if a["residual"]:
            r = vals[n.inputs[1]]
            if r.shape != y.shape:
                raise ConvError(f"residual of shape {r.shape} does not match the convolution's output {y.shape}")
            r3 = r.reshape(N, Kc, -1)
        else:
            r3 = _EMPTY3
        K.launch(K.epilogue, (y3, y3, _EMPTY1, a["b"] if a["b"] is not None else _EMPTY1, r3, mode,
                           act, a["lo"], a["hi"]), m.threads)
    return y


def _nchw(n: Node, x) -> None:
    if x.ndim != 4:
        raise ConvError(f"expected an NCHW input, got shape {x.shape}")


def _act(m, i, n, vals, st):
    x = vals[n.inputs[0]]
    y = m._out(i, st, x.shape)
    xs = x.reshape(x.shape[0], x.shape[1] if x.ndim > 1 else 1, -1)
    ys = y.reshape(xs.shape)
    K.launch(K.epilogue, (xs, ys, _EMPTY1, _EMPTY1, _EMPTY3, 0, ACTS[n.attrs["act"]], n.attrs["lo"],
                       n.attrs["hi"]), m.threads)
    return y


def _affine(m, i, n, vals, st):
    x = vals[n.inputs[0]]
    if x.ndim < 2 or x.shape[1] != n.attrs["scale"].shape[0]:
        raise ConvError(f"expected {n.attrs['scale'].shape[0]} channels, got shape {x.shape}")
    y = m._out(i, st, x.shape)
    xs = x.reshape(x.shape[0], x.shape[1], -1)
    if "scale32" not in n.attrs:  # rounded once, on the first call
        n.attrs["scale32"] = n.attrs["scale"].astype(np.float32)
        n.attrs["shift32"] = n.attrs["shift"].astype(np.float32)
    sc, sh = n.attrs["scale32"], n.attrs["shift32"]
    K.launch(K.epilogue, (xs, y.reshape(xs.shape), sc, sh, _EMPTY3, 3, 0, 0.0, 0.0), m.threads)
    return y


_UFUNC = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}


def _binary(m, i, n, vals, st):
    a = vals[n.inputs[0]]
    b = vals[n.inputs[1]] if len(n.inputs) > 1 else np.float32(n.attrs["scalar"])
    shape = np.broadcast_shapes(a.shape, np.shape(b))
    y = m._out(i, st, shape)
    _UFUNC[n.attrs["op"]](a, b, out=y)
    return y


def _pad(m, i, n, vals, st):
    x = vals[n.inputs[0]]
    pl, pr, pt, pb = n.attrs["pads"]
    H, W = x.shape[-2], x.shape[-1]
    shape = (*x.shape[:-2], H + pt + pb, W + pl + pr)
    if min(shape) <= 0:
        raise ConvError(f"padding {n.attrs['pads']} leaves no output for input {x.shape}")
    y = m._out(i, st, shape)
    y[...] = n.attrs["value"]
    src = x[..., max(0, -pt): H - max(0, -pb), max(0, -pl): W - max(0, -pr)]
    y[..., max(0, pt): max(0, pt) + src.shape[-2], max(0, pl): max(0, pl) + src.shape[-1]] = src
    return y


def pool_out(size, k, s, p, d, ceil):
    """Output size of a pooling window along one axis (PyTorch's rule, ceil mode included)."""
    eff = d * (k - 1) + 1
    num = size + 2 * p - eff
    o = (-(-num // s) if ceil else num // s) + 1
    if ceil and (o - 1) * s >= size + p:
        o -= 1
    return o


def _maxpool(m, i, n, vals, st):
    x = vals[n.inputs[0]]
    _nchw(n, x)
    a = n.attrs
    OH = pool_out(x.shape[2], a["k"][0], a["stride"][0], a["padding"][0], a["dilation"][0], a["ceil"])
    OW = pool_out(x.shape[3], a["k"][1], a["stride"][1], a["padding"][1], a["dilation"][1], a["ceil"])
    y = m._out(i, st, (x.shape[0], x.shape[1], OH, OW))
    K.launch(K.maxpool, (x, y, *a["k"], *a["stride"], *a["padding"], *a["dilation"]), m.threads)
    return y


def _avgpool(m, i, n, vals, st):
    x = vals[n.inputs[0]]
    _nchw(n, x)
    a = n.attrs
    OH = pool_out(x.shape[2], a["k"][0], a["stride"][0], a["padding"][0], 1, a["ceil"])
    OW = pool_out(x.shape[3], a["k"][1], a["stride"][1], a["padding"][1], 1, a["ceil"])
    y = m._out(i, st, (x.shape[0], x.shape[1], OH, OW))
    K.launch(K.avgpool, (x, y, *a["k"], *a["stride"], *a["padding"], bool(a["include_pad"]),
                      int(a["divisor"] or 0)), m.threads)
    return y


def _adaptive(m, i, n, vals, st):
    x = vals[n.inputs[0]]
    _nchw(n, x)
    OH, OW = n.attrs["size"]
    y = m._out(i, st, (x.shape[0], x.shape[1], OH, OW))
    K.launch(K.adaptive_avg, (x, y), 1 if x.size <= K.SERIAL_POOL_ELEMENTS else m.threads)
    if "keepdim" in n.attrs and not n.attrs["keepdim"]:
        return y.reshape(x.shape[0], x.shape[1])
    return y


def _linear(m, i, n, vals, st):
    x = vals[n.inputs[0]]
    w = n.attrs["w"]
    if x.shape[-1] != w.shape[1]:
        raise ConvError(f"expected {w.shape[1]} input features, got shape {x.shape}")
    if "wp" not in n.attrs:
        n.attrs["wp"] = K.pack_linear(w)
    wt = n.attrs["wp"]
    b = n.attrs["b"]
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    y = m._out(i, st, (*x.shape[:-1], w.shape[0]))
    K.launch(K.linear, (x2, wt, b if b is not None else _EMPTY1, b is not None,
                     y.reshape(x2.shape[0], -1)),
          1 if x2.size * w.shape[0] <= K.SERIAL_LINEAR_MACS else m.threads)
    return y


def _reshape(m, i, n, vals, st):
    x = vals[n.inputs[0]]
    shape = reshape_shape(n, x.shape, m._example_batch)
    if int(np.prod(shape)) != x.size:
        raise ConvError(f"cannot reshape {x.shape} to {shape}")
    y = np.ascontiguousarray(x).reshape(shape)
    st.shapes[i] = y.shape  # a view of its input's arena slot (`_build`)
    return y


def _cat(m, i, n, vals, st):
    xs = [vals[j] for j in n.inputs]
    d = n.attrs["dim"] % xs[0].ndim
    shape = list(xs[0].shape)
    shape[d] = sum(x.shape[d] for x in xs)
    y = m._out(i, st, tuple(shape))
    np.concatenate(xs, axis=d, out=y)
    return y


def _torch(m, i, n, vals, st):
    import torch

    ins = [torch.from_numpy(vals[j]) for j in n.inputs]

    def unpack(a):
        if isinstance(a, list):
            return [unpack(b) for b in a]
        if isinstance(a, tuple) and len(a) == 2 and a[0] in ("value", "const", "lit"):
            tag, v = a
            return ins[v] if tag == "value" else torch.from_numpy(v) if tag == "const" else v
        if isinstance(a, tuple):
            return tuple(unpack(b) for b in a)
        return a

    with torch.no_grad():
        r = n.attrs["target"](*unpack(n.attrs["args"]), **{k: unpack(v) for k, v in n.attrs["kwargs"].items()})
    # results are copied into memory of their own, C-contiguous: a view of an input would share
    # that input's arena buffer, which the liveness pass hands to a later layer
    if isinstance(r, (tuple, list)):
        return [t.detach().contiguous().clone().numpy() if isinstance(t, torch.Tensor) else t for t in r]
    if not isinstance(r, torch.Tensor):
        return r
    return r.detach().contiguous().clone().numpy()


def _getitem(m, i, n, vals, st):
    return vals[n.inputs[0]][n.attrs["item"]]


_EXEC = {
    "conv": _conv, "act": _act, "affine": _affine, "binary": _binary, "pad": _pad,
    "maxpool": _maxpool, "avgpool": _avgpool, "adaptive_avg": _adaptive, "linear": _linear,
    "reshape": _reshape, "cat": _cat, "torch": _torch, "getitem": _getitem,
}
