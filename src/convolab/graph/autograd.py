"""Torch autograd functions over the Numba kernels of `convolab.graph.propagate`.

Tensors are CPU, row-major ``(n, c)``, float32 or float64 (float64 for ``gradcheck``). Each
function is a linear map on rows with a known adjoint, run through one `LinearFn`:

- ``propagate(a, at, x)``: y = A @ x; the gradient is A^T @ dy (``at``: the CSR of A^T, which
  for the symmetric normalised adjacency is A itself).
- ``segment_mean(seg, x)``: (P, c) -> (S, c); the gradient is the broadcast of dy / count.
- ``broadcast(seg, h)``: (S, c) -> (P, c); the gradient is the segment sum of dy.

Forward and backward both run the deterministic kernels, so a training step gives the same
bits for any thread count.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from . import propagate as _p


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


class LinearFn(torch.autograd.Function):
    """y = op(x) for a linear ``op`` on rows, with dx = adjoint(dy)."""

    @staticmethod
    def forward(ctx, x, op, adjoint):
        ctx.adjoint = adjoint
        return torch.from_numpy(op(_np(x)))

    @staticmethod
    def backward(ctx, g):
        return torch.from_numpy(ctx.adjoint(_np(g))), None, None


def propagate(a: _p.CSR, at: _p.CSR, x: torch.Tensor) -> torch.Tensor:
    """Differentiable ``a @ x`` (``at``: the CSR of ``a``'s transpose)."""
    return LinearFn.apply(x, partial(_p.csr_matmul, a), partial(_p.csr_matmul, at))


def segment_mean(seg: _p.Segments, x: torch.Tensor) -> torch.Tensor:
    """Differentiable `convolab.graph.propagate.segment_mean`: dx = broadcast(dy / count)."""
    return LinearFn.apply(x, partial(_p.segment_mean, seg),
                          lambda g: _p.broadcast(seg, g, 1.0 / seg.counts))


def broadcast(seg: _p.Segments, h: torch.Tensor) -> torch.Tensor:
    """Differentiable `convolab.graph.propagate.broadcast`: dh = segment_sum(dy)."""
    return LinearFn.apply(h, partial(_p.broadcast, seg), partial(_p.segment_sum, seg))
