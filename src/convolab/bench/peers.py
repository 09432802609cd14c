"""Peer implementations measured beside convolab in ``convolab bench``.

``torch``: PyTorch CPU ``conv2d`` with oneDNN (its default CPU path).
``torch-im2col``: the same call under ``torch.backends.mkldnn.flags(enabled=False)``, which
makes PyTorch use its own unfold + GEMM ("slow_conv2d") path.
``onnxruntime``: ONNX Runtime's CPU execution provider on a one-node ``Conv`` model built with
``onnx.helper`` (weights as an initializer, all graph optimisations on).
Each peer runs in this process with the same thread count as convolab.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ConvError
from ..spec import ConvSpec


@dataclass(frozen=True)
class Peer:
    name: str
    description: str
    #: returns None when usable, else why not
    available: Callable[[], str | None]
    #: (spec, x, w, threads) -> zero-argument callable returning the output as numpy
    make: Callable[[ConvSpec, np.ndarray, np.ndarray, int], Callable[[], np.ndarray]]



def ort_session(graph, threads: int):
    """An ONNX Runtime session of a one-graph model (opset 17), ``threads`` intra-op threads,
    one inter-op thread, every graph optimisation on."""
    import onnxruntime as ort
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

def _torch_missing():
    try:
        import torch  # noqa: F401
    except ImportError:
        return "PyTorch is not installed (pip install 'convolab[torch]')"
    return None


def _torch_maker(mkldnn: bool):
    def make(spec: ConvSpec, x, w, threads: int):
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)
        xt = torch.from_numpy(np.ascontiguousarray(x))
        wt = torch.from_numpy(np.ascontiguousarray(w))
        pl, pr, pt, pb = spec.padding
        if pl == pr and pt == pb:
            pad, pre = (pt, pl), None
        else:
            pad, pre = (0, 0), (pl, pr, pt, pb)

        def run():
            # the switch alone (``torch.backends.mkldnn.flags`` also sets TF32 options and warns
            # about Intel GPUs on every call)
            prev = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = mkldnn
            try:
                with torch.no_grad():
                    xi = F.pad(xt, pre) if pre else xt
                    y = F.conv2d(xi, wt, None, spec.stride, pad, spec.dilation, spec.groups)
            finally:
                torch.backends.mkldnn.enabled = prev
            return y.numpy()

        return run

    return make


def _ort_missing():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnx and onnxruntime are not installed (pip install 'convolab[peers]')"
    return None


def _ort_make(spec: ConvSpec, x, w, threads: int):
    from onnx import TensorProto, helper, numpy_helper

    pl, pr, pt, pb = spec.padding
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], strides=list(spec.stride), dilations=list(spec.dilation),
        group=spec.groups, pads=[pt, pl, pb, pr], kernel_shape=[spec.R, spec.S],
    )
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(spec.x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(spec.out_shape))],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(w, dtype=np.float32), "w")],
    )
    sess = ort_session(graph, threads)
    feed = {"x": np.ascontiguousarray(x, dtype=np.float32)}
    return lambda: sess.run(None, feed)[0]


PEERS = {
    "torch": Peer("torch", "PyTorch CPU conv2d (oneDNN)", _torch_missing, _torch_maker(True)),
    "torch-im2col": Peer(
        "torch-im2col", "PyTorch with mkldnn disabled (its im2col + GEMM path)",
        _torch_missing, _torch_maker(False),
    ),
    "onnxruntime": Peer("onnxruntime", "ONNX Runtime CPU, one-node Conv model", _ort_missing, _ort_make),
}

#: what ``--peers NAME`` expands to
PEER_GROUPS = {"torch": ["torch", "torch-im2col"], "ort": ["onnxruntime"]}


def resolve(names: str | None) -> list[Peer]:
    """Peers named in a comma-separated list (``torch`` means both PyTorch paths)."""
    if not names:
        return []
    out: list[Peer] = []
    for n in (s.strip() for s in names.split(",") if s.strip()):
        expanded = PEER_GROUPS.get(n, [n])
        for e in expanded:
            if e not in PEERS:
                raise ConvError(f"unknown peer {n!r}; available: {', '.join(PEERS)}")
            peer = PEERS[e]
            why = peer.available()
            if why:
                raise ConvError(f"peer {e!r} is unavailable: {why}")
            if peer not in out:
                out.append(peer)
    return out
