"""Torch autograd functions over the Numba kernels of `convolab.graph.propagate`.

Tensors are CPU, row-major ``(n, c)``, float32 or float64 (float64 for ``gradcheck``).

- ``propagate(a, at, x)``: y = A @ x; the gradient is A^T @ dy (``at``: the CSR of A^T, which
  for the symmetric normalised adjacency is A itself).
- ``segment_mean(seg, x)``: (P, c) -> (S, c); the gradient is the broadcast of dy / count.
- ``broadcast(seg, h)``: (S, c) -> (P, c); the gradient is the segment sum of dy.

Forward and backward both run the deterministic kernels, so a training step gives the same
bits for any thread count.
"""

from __future__ import annotations

import numpy as np
import torch

from . import propagate as _p


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


class PropagateFn(torch.autograd.Function):
    """y = A @ x with dx = A^T @ dy."""

    @staticmethod
    def forward(ctx, x, a, at):
        ctx.at = at
        return torch.from_numpy(_p.csr_matmul(a, _np(x)))

    @staticmethod
    def backward(ctx, g):
        return torch.from_numpy(_p.csr_matmul(ctx.at, _np(g))), None, None


class SegmentMeanFn(torch.autograd.Function):
    """Pixel rows -> segment means, with dx = broadcast(dy / count)."""

    @staticmethod
    def forward(ctx, x, seg):
        ctx.seg = seg
        return torch.from_numpy(_p.segment_mean(seg, _np(x)))

    @staticmethod
    def backward(ctx, g):
        seg = ctx.seg
        return torch.from_numpy(_p.broadcast(seg, _np(g), 1.0 / seg.counts)), None


class BroadcastFn(torch.autograd.Function):
    """Segment rows -> pixel rows, with dh = segment_sum(dy)."""

    @staticmethod
    def forward(ctx, h, seg):
        ctx.seg = seg
        return torch.from_numpy(_p.broadcast(seg, _np(h)))

    @staticmethod
    def backward(ctx, g):
        return torch.from_numpy(_p.segment_sum(ctx.seg, _np(g))), None


def propagate(a: _p.CSR, at: _p.CSR, x: torch.Tensor) -> torch.Tensor:
    """Differentiable ``a @ x`` (``at``: the CSR of ``a``'s transpose)."""
    return PropagateFn.apply(x, a, at)


def segment_mean(seg: _p.Segments, x: torch.Tensor) -> torch.Tensor:
    """Differentiable `convolab.graph.propagate.segment_mean`."""
    return SegmentMeanFn.apply(x, seg)


def broadcast(seg: _p.Segments, h: torch.Tensor) -> torch.Tensor:
    """Differentiable `convolab.graph.propagate.broadcast`."""
    return BroadcastFn.apply(h, seg)
