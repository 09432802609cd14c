"""Inference of a trained `convolab.graph.model.MGRNet` with NumPy, Numba and `convolab.conv2d`.

``compile_model(model, graph, image_shape)`` takes the weights out of torch once and plans
every convolution of the network (stem 1x1 and depthwise 3x3 / 5x5, the head's 1x1 convs)
with `convolab.plan` for the image's shape; the graph branches run the deterministic kernels
of `convolab.graph.propagate` (segment mean, A @ x, broadcast) and NumPy matrix products for
the per-node linear layers. The result is the logits of the torch model up to float32
rounding (the tests compare them).

The head's first 1x1 convolution is linear and pointwise, so on the broadcast graph features
it commutes with the broadcast: ``W_s broadcast_s(h_s) = broadcast_s(h_s W_s^T)``. The graph
part of it is therefore computed on the nodes (hundreds of rows instead of H * W) and added
to the convolution of the CNN features, with no concatenation of pixel features.
"""

from __future__ import annotations

import numpy as np

from .. import api
from ..errors import ConvError
from . import _kernels
from . import propagate as gp
from .model import SLOPE, MGRNet
from .superpixels import SuperpixelScales


def _act(x: np.ndarray) -> np.ndarray:
    """LeakyReLU in place (slope < 1: max(x, slope * x))."""
    return np.maximum(x, SLOPE * x, out=x)


def _np(t) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)


class CompiledMGRNet:
    """A trained MGRNet planned for one image shape; call it on a (1, C, H, W) float32 array."""

    def __init__(self, model: MGRNet, graph: SuperpixelScales, image_shape):
        n, c, h, w = image_shape
        if n != 1:
            raise ConvError(f"the network classifies one scene: batch must be 1, got {n}")
        if model.scales and graph.segments[0].n_pixels != h * w:
            raise ConvError(f"shape mismatch: graph has {graph.segments[0].n_pixels} pixels, image {h}x{w}")
        self.shape = (n, c, h, w)
        self.model = model
        self.graph = graph
        self.width = model.width
        wd = model.width

        def conv_plan(conv, in_ch):
            k = conv.kernel_size[0]
            return api.plan((1, in_ch, h, w), _np(conv.weight), _np(conv.bias), padding=k // 2,
                            groups=conv.groups)

        self.stem_in = conv_plan(model.stem_in, c)
        self.stem_dw = [conv_plan(m, wd) for m in model.stem_dw]
        w_in = _np(model.head_in.weight)[:, :, 0, 0]
        self.head_in = api.plan((1, wd, h, w), w_in[:, :wd, None, None].copy(), _np(model.head_in.bias))
        self.head_nodes = [w_in[:, wd * (i + 1): wd * (i + 2)].T.copy() for i in range(len(model.scales))]
        self.res1 = conv_plan(model.res1, wd)
        self.res2 = conv_plan(model.res2, wd)
        self.head_out = conv_plan(model.head_out, wd)

        def lin(m):
            return _np(m.weight).T.copy(), _np(m.bias)

        self.gc1 = [lin(m) for m in model.gc1]
        self.gc2 = [lin(m) for m in model.gc2]
        self.cross = [lin(m) for m in model.cross] if model.cross is not None else None

    def graph_features(self, f: np.ndarray) -> list[np.ndarray]:
        """Node features (S_s, c) of each used scale after the last graph convolution."""
        g, sc = self.graph, self.model.scales
        pc = np.ascontiguousarray(f[0].reshape(self.width, -1).T)
        h = []
        for i, s in enumerate(sc):
            w1, b1 = self.gc1[i]
            h0 = gp.segment_mean(g.segments[s], pc)
            h.append(_act(gp.csr_matmul(g.a_hat[s], h0 @ w1 + b1)))
        if self.cross is not None and len(sc) > 1:
            fused = []
            for i, s in enumerate(sc):
                acc = sum(gp.csr_matmul(g.cross[(s, t)][0], h[j]) for j, t in enumerate(sc) if t != s)
                wx, bx = self.cross[i]
                fused.append(h[i] + _act(acc / (len(sc) - 1) @ wx + bx))
            h = fused
        out = []
        for i, s in enumerate(sc):
            w2, b2 = self.gc2[i]
            out.append(_act(gp.csr_matmul(g.a_hat[s], h[i] @ w2 + b2)))
        return out

    def logits(self, x) -> np.ndarray:
        """Class scores (1, n_classes, H, W) of the image ``x`` (1, C, H, W)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != self.shape:
            raise ConvError(f"shape mismatch: compiled for {self.shape}, got {x.shape}")
        if not np.isfinite(x).all():
            raise ConvError("input image contains NaN or Inf")
        u = _act(self.stem_in(x))
        f = u.copy()
        for p in self.stem_dw:
            f += _act(p(u))
        z = np.ascontiguousarray(self.head_in(f))
        zr = z[0].reshape(self.width, -1)  # a view: the graph parts are added in place
        for s, h, wn in zip(self.model.scales, self.graph_features(f), self.head_nodes, strict=True):
            _kernels.broadcast_add_t(self.graph.segments[s].labels, h @ wn, zr)
        z = _act(z)
        z += self.res2(_act(self.res1(z)))
        return self.head_out(_act(z))

    def __call__(self, x) -> np.ndarray:
        """Class map (H, W), classes 1..n."""
        return self.logits(x)[0].argmax(0).astype(np.int32) + 1


def compile_model(model: MGRNet, graph: SuperpixelScales, image_shape) -> CompiledMGRNet:
    """Plan a trained model's inference for images of ``image_shape`` (1, C, H, W)."""
    return CompiledMGRNet(model, graph, tuple(int(v) for v in image_shape))
