"""An MGRNet-like network (Zhao et al., arXiv 2106.14804) and its ablations, in torch.

Data layout: the image is ``(1, C, H, W)`` (PCA components, standardised); pixel features in
the graph branches are row-major ``(P, c)`` with ``P = H * W`` in raster order; node features
``(S_s, c)`` per scale s.

    F   = stem(x)                      multi-scale convolution: 1x1 conv, then 3x3 and 5x5
                                       depthwise convs, summed with it (shallow features)
    h_s = segment_mean_s(F)            pixels -> superpixels of scale s
    h_s = act(A_s h_s W1_s)            first graph convolution per scale (A_s normalised)
    h_s = h_s + act(mean_t M_st h_t V_s)   cross fusion: the other scales' features mapped to s's
                                       nodes by the pixel-overlap matrices M_st ("full" only)
    h_s = act(A_s h_s W2_s)            second graph convolution
    z   = [F, broadcast_1(h_1), ...]   back to pixels, concatenated with the CNN features
    y   = softmax(head(z))             1x1 conv, a residual block of two 1x1 convs, 1x1 conv
                                       (pointwise: training evaluates it at the labelled
                                       pixels only, inference at every pixel)

Variants (the ablations of the issue): ``"cnn"`` (stem and head only), ``"single"`` (one
scale's graph branch + CNN: CEGCN-like, Liu et al. 2021), ``"multi"`` (all scales, no cross
fusion), ``"full"``. Inference of a trained model through `convolab.conv2d` is
`convolab.graph.infer.compile_model`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConvError
from . import autograd as ag
from .superpixels import SuperpixelScales

VARIANTS = ("cnn", "single", "multi", "full")
SLOPE = 0.1  # LeakyReLU slope


def _act(x):
    return torch.nn.functional.leaky_relu(x, SLOPE)


class MGRNet(nn.Module):
    """MGRNet-like classifier over a `SuperpixelScales` (see the module docstring).

    Parameters
    ----------
    in_channels, n_classes : int
    n_scales : int
        Scales of the graph (ignored by ``"cnn"``).
    variant : one of `VARIANTS`
    width : int
        Channels of every layer.
    single_scale : int
        The scale used by ``"single"``.
    dropout : float
        Dropout on the concatenated pixel features before the head (training only).
    """

    def __init__(self, in_channels: int, n_classes: int, n_scales: int, variant: str = "full", width: int = 64,
                 single_scale: int = 0, dropout: float = 0.5):
        super().__init__()
        if variant not in VARIANTS:
            raise ConvError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if variant != "cnn" and not 0 <= single_scale < n_scales:
            raise ConvError(f"single_scale must be in 0..{n_scales - 1}, got {single_scale}")
        if not 0 <= dropout < 1:
            raise ConvError(f"dropout must be in [0, 1), got {dropout}")
        self.variant = variant
        self.dropout = dropout
        self.width = width
        self.scales = [] if variant == "cnn" else [single_scale] if variant == "single" else list(range(n_scales))
        self.stem_in = nn.Conv2d(in_channels, width, 1)
        self.stem_dw = nn.ModuleList([nn.Conv2d(width, width, k, padding=k // 2, groups=width) for k in (3, 5)])
        self.gc1 = nn.ModuleList([nn.Linear(width, width) for _ in self.scales])
        self.gc2 = nn.ModuleList([nn.Linear(width, width) for _ in self.scales])
        self.cross = nn.ModuleList([nn.Linear(width, width) for _ in self.scales]) if variant == "full" else None
        cat = width * (1 + len(self.scales))
        self.head_in = nn.Conv2d(cat, width, 1)
        self.res1 = nn.Conv2d(width, width, 1)
        self.res2 = nn.Conv2d(width, width, 1)
        self.head_out = nn.Conv2d(width, n_classes, 1)

    def stem(self, x):
        u = _act(self.stem_in(x))
        return u + sum(_act(c(u)) for c in self.stem_dw)

    def graph_features(self, f, g: SuperpixelScales):
        """The graph branches: node features (S_s, c) of each used scale after the last layer."""
        pc = f[0].reshape(self.width, -1).t().contiguous()
        h = []
        for i, s in enumerate(self.scales):
            a = g.a_hat[s]
            h0 = ag.segment_mean(g.segments[s], pc)
            h.append(_act(ag.propagate(a, a, self.gc1[i](h0))))
        if self.cross is not None and len(self.scales) > 1:
            fused = []
            for i, s in enumerate(self.scales):
                acc = 0
                for j, t in enumerate(self.scales):
                    if t != s:
                        m, mt = g.cross[(s, t)]
                        acc = acc + ag.propagate(m, mt, h[j])
                fused.append(h[i] + _act(self.cross[i](acc / (len(self.scales) - 1))))
            h = fused
        return [_act(ag.propagate(g.a_hat[s], g.a_hat[s], self.gc2[i](h[i]))) for i, s in enumerate(self.scales)]

    def head(self, z):
        """The pointwise head on pixel rows z (n, c): its 1x1 convolutions as matrix products."""
        def conv1x1(conv, v):
            return torch.nn.functional.linear(v, conv.weight[:, :, 0, 0], conv.bias)

        z = _act(conv1x1(self.head_in, z))
        z = z + conv1x1(self.res2, _act(conv1x1(self.res1, z)))
        return conv1x1(self.head_out, _act(z))

    def forward(self, x, g: SuperpixelScales | None = None, pixels=None):
        """Class logits (n, n_classes) of the pixels ``pixels`` (raster indices, a LongTensor;
        default all pixels, n = H * W) of the image ``x`` (1, C, H, W).

        The head is pointwise, so training evaluates it at the training pixels only; the stem
        and the graph branches always see the whole image.
        """
        f = self.stem(x)
        rows = f[0].reshape(self.width, -1)
        parts = [rows.t() if pixels is None else rows[:, pixels].t()]
        if self.scales:
            if g is None:
                raise ConvError(f"variant {self.variant!r} needs the superpixel graph")
            for s, h in zip(self.scales, self.graph_features(f, g), strict=True):
                if pixels is None:
                    parts.append(ag.broadcast(g.segments[s], h))
                else:
                    parts.append(h.index_select(0, torch.from_numpy(g.segments[s].labels)[pixels]))
        z = torch.cat(parts, dim=1)
        return self.head(torch.nn.functional.dropout(z, self.dropout, self.training))
