"""Run a PyTorch model's convolutions quantised (post-training), through convolab.

Builds on `convolab.interop.session`: a `QuantSession` is an interop `Session` whose per-layer
plan is a `convolab.quant.QuantizedConv` instead of a float `ConvPlan`, so every
``nn.Conv2d``, subclass and direct ``F.conv2d`` call on CPU is intercepted exactly as there
(see that module for what is and is not intercepted). Everything else in the model (batch norm
folded or not, activations, pooling, linear layers) stays float: this quantises the
convolutions only -- weights per output channel, activations per tensor (and per frequency in a
fast algorithm's transform domain).

Usage::

    from convolab.quant import QuantConfig
    from convolab.interop.torch import use

    cfg = QuantConfig(algorithm="sfc6_6x3", bits=8, transform_bits=8)
    with torch.no_grad(), use(quantize=cfg, model=net, calibration=sample_images) as s:
        logits = net(images)
    rich.print(s.table())

Calibration runs the model once on ``calibration`` (a tensor or a list of tensors) in float
while every layer's observer records its input; then the scales are frozen. ``config`` may also
be a callable ``(layer name, ConvSpec) -> QuantConfig`` to choose per layer (e.g. a fast
algorithm on 3x3 stride-1 layers only, int8 im2col elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import ConvError
from ..quant.core import QuantConfig
from ..quant.layer import QuantizedConv
from ..spec import ConvSpec
from .session import TORCH_CONV2D, Session, tensor_key

__all__ = ["QuantSession", "use"]


def torch_conv(spec: ConvSpec, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """PyTorch's own float convolution of NumPy arrays (``spec``'s padding, stride, groups)."""
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if any(spec.padding):
        xt = torch.nn.functional.pad(xt, spec.padding)  # (left, right, top, bottom)
    wt = torch.from_numpy(np.ascontiguousarray(w, dtype=x.dtype))
    bt = None if b is None else torch.from_numpy(np.ascontiguousarray(b, dtype=x.dtype))
    return TORCH_CONV2D(xt, wt, bt, spec.stride, 0, spec.dilation, spec.groups).numpy()


class _QuantPlan:
    """What the interop session calls for one layer and input shape: ``plan(x, out=y)``.

    ``layer`` None runs the layer in float on PyTorch (a layer the config left unquantised).
    """

    def __init__(self, session: QuantSession, layer: QuantizedConv | None, spec: ConvSpec, w, b):
        self.session = session
        self.layer = layer
        self.spec = spec
        self.algorithm = "fp32 (torch)" if layer is None else layer.label
        self._w = w.detach().numpy() if layer is None else layer.w
        self._b = (None if b is None else b.detach().numpy()) if layer is None else layer.bias

    def __call__(self, x: np.ndarray, *, out: np.ndarray) -> np.ndarray:
        if self.layer is None or self.session.calibrating:
            if self.layer is not None:
                self.layer.observe(x)
            out[...] = torch_conv(self.spec, x, self._w, self._b)
            return out
        return self.layer(x, out=out)


class QuantSession(Session):
    """An interop `Session` that runs every intercepted convolution as a `QuantizedConv`.

    Parameters
    ----------
    config : QuantConfig or callable(name, spec) -> QuantConfig or None
        How each layer is quantised (None: that layer stays float, on PyTorch).
    model : torch.nn.Module, optional
        Names the layers (and is what `calibrate` runs).
    hook : callable(stats, x, y), optional
        As the interop session's.

    Notes
    -----
    One `QuantizedConv` per layer (weight tensor), shared by all input shapes, so a layer
    calibrated at one batch size runs at any other. Changing a weight in place makes a new,
    uncalibrated layer (calibrate again).
    """

    def __init__(self, config: QuantConfig | Callable = None, *, model=None, hook=None):
        config = QuantConfig() if config is None else config
        if not isinstance(config, QuantConfig) and not callable(config):
            raise ConvError(f"config must be a QuantConfig or a callable (name, spec) -> QuantConfig, got {config!r}")
        super().__init__("auto", "auto", model=model, hook=hook)
        self.config = config
        self.calibrating = False
        self._layers: dict[tuple, QuantizedConv] = {}
        self._by_name: dict[str, QuantizedConv] = {}

    def config_for(self, name: str, spec: ConvSpec) -> QuantConfig | None:
        """The layer's `QuantConfig` (None: the layer stays float and runs on PyTorch)."""
        cfg = self.config(name, spec) if not isinstance(self.config, QuantConfig) else self.config
        if cfg is not None and not isinstance(cfg, QuantConfig):
            raise ConvError(f"the config callable returned {cfg!r} for layer {name!r}, not a QuantConfig or None")
        return cfg

    def make_plan(self, name, spec, w, b, algorithm):
        """A `QuantizedConv` plan for the layer (one per weight, shared across input shapes)."""
        key = (name, id(w), tensor_key(w), None if b is None else (id(b), tensor_key(b)))
        if key not in self._layers:
            cfg = self.config_for(name, spec)
            layer = None if cfg is None else QuantizedConv(
                w.detach().numpy(), None if b is None else b.detach().numpy(), spec.stride, spec.padding,
                spec.dilation, spec.groups, config=cfg,
            )
            self._layers[key] = layer
            if layer is not None:
                self._by_name[name] = layer
        return _QuantPlan(self, self._layers[key], spec, w, b)

    def layers(self) -> dict[str, QuantizedConv]:
        """The quantised layer of every intercepted convolution, by layer name."""
        return dict(self._by_name)

    def calibrate(self, model, inputs) -> QuantSession:
        """Run ``model`` on ``inputs`` (a tensor or a list of tensors) in float, recording every
        layer's activations, then freeze the scales. Returns self."""
        batches = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
        if not batches:
            raise ConvError("calibration needs at least one input batch")
        self.calibrating = True
        try:
            with torch.no_grad(), self:
                for xb in batches:
                    model(xb)
        finally:
            self.calibrating = False
        for layer in self._layers.values():
            if layer is not None and not layer.calibrated:
                layer.freeze()
        self.reset_stats()
        return self

def use(config: QuantConfig | Callable | None = None, *, model=None, calibration=None, hook=None) -> QuantSession:
    """Run PyTorch's CPU convolutions quantised inside a ``with`` block.

    Parameters
    ----------
    config : QuantConfig or callable(name, spec) -> QuantConfig, optional
        Default ``QuantConfig()`` (int8 im2col everywhere).
    model : torch.nn.Module, optional
        Names layers; needed with ``calibration``.
    calibration : torch.Tensor or list of torch.Tensor, optional
        Sample inputs; the model is run on them (float) to calibrate every layer before the
        session is returned. Without it, call ``session.calibrate(model, inputs)`` yourself: an
        uncalibrated layer raises `ConvError` when it runs.
    hook : callable(stats, x, y), optional

    Returns
    -------
    QuantSession
    """
    s = QuantSession(config, model=model, hook=hook)
    if calibration is not None:
        if model is None:
            raise ConvError("calibration needs the model to run: use(config, model=net, calibration=x)")
        s.calibrate(model, calibration)
    return s
