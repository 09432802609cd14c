"""Run every 2D convolution of a PyTorch model through convolab.

Under ``with convolab.interop.torch.use(...)`` (or after `patch`), every call of
``torch.nn.functional.conv2d`` / ``torch.conv2d`` on CPU tensors -- which is what
``nn.Conv2d.forward`` calls, what its subclasses that override ``forward`` call (e.g. the
TensorFlow-"same" convolutions of EfficientNet that pad with ``F.pad`` or ``nn.ZeroPad2d``
first), and what models that call ``F.conv2d`` directly call -- is computed by a
`convolab.ConvPlan` instead of PyTorch's own kernels (oneDNN). ``padding_mode`` other than
``"zeros"`` works unchanged: ``nn.Conv2d`` pads with ``F.pad(mode=...)`` itself and then calls
``F.conv2d`` with zero padding, which is intercepted like any other call.

Data path. Tensors are NCHW, row-major. The input is handed to convolab as ``x.numpy()`` (a
view: no copy when it is contiguous; a channels-last or sliced input is copied once by the
plan), the output is allocated by ``torch.empty`` and the plan writes into its ``numpy()``
view, so the result is an ordinary tensor that owns its memory. Semantics are PyTorch's
(cross-correlation, ``y = b + sum x * w`` over the receptive field, groups, dilation,
``padding`` as int, pair, ``"same"`` or ``"valid"``).

Plans. One `convolab.ConvPlan` per (layer weight, bias, input shape, dtype, stride, padding,
dilation, groups), cached in the session. A weight is identified by the tensor object, its
version counter (``w._version``, bumped by every in-place change such as ``load_state_dict``
or ``w.copy_()`` under ``no_grad``) and its ``data_ptr()``; when any of them changes, the
layer is planned again (``LayerStats.replans`` counts it). Writing through ``w.data`` bypasses
the version counter and is not seen, nor are in-place changes of inference tensors (made under
``torch.inference_mode``), which have no version counter.

Autograd. convolab computes no gradients. When autograd would record the call
(``torch.is_grad_enabled()`` and the input, weight or bias requires grad), the call runs on
PyTorch's own kernel so gradients stay correct, and the report shows the algorithm as
``torch (autograd)``. Run inference under ``torch.no_grad()`` or ``torch.inference_mode()``
to put the convolutions on convolab.

Not intercepted: CUDA/MPS tensors, dtypes other than float16/32/64, mixed dtypes, non-strided
layouts (these run on PyTorch and are reported as such); TorchScript and ``torch.compile``
graphs and code that bound ``conv2d`` to a local name before the session began (those never
look the function up again).
"""

from __future__ import annotations

from .quantized import QuantSession
from .quantized import use as quantized_use
from .session import LayerStats, Session, patch, patched, unpatch

__all__ = ["LayerStats", "QuantSession", "Session", "patch", "patched", "unpatch", "use"]


def use(algorithm="auto", fallback="auto", *, model=None, hook=None, quantize=None, calibration=None) -> Session:
    """Run PyTorch's CPU 2D convolutions through convolab inside a ``with`` block.

    Parameters
    ----------
    algorithm : str or Mapping
        ``"auto"``, ``"torch"``, a registered name, or a mapping from layer name, glob, `ConvSpec`
        or weight shape to one of those (see `Session`).
    fallback : str or None
        For layers the requested algorithm cannot run: ``"auto"``, ``"torch"``, a registered
        name, or None to raise `UnsupportedError` naming the layer.
    model : torch.nn.Module, optional
        Gives layers their module names in the report.
    hook : callable(stats, x, y), optional
        Called after every intercepted convolution.
    quantize : convolab.quant.QuantConfig or callable(name, spec), optional
        Run the convolutions quantised instead (see `convolab.interop.quantized.use`); ``algorithm``
        and ``fallback`` are then taken from the config.
    calibration : torch.Tensor, optional
        With ``quantize``: sample inputs the activation scales are calibrated on.

    Returns
    -------
    Session
        A context manager; ``session.report()`` / ``session.table()`` after the block.

    Examples
    --------
    >>> with torch.no_grad(), use("im2col", model=net) as s:  # doctest: +SKIP
    ...     logits = net(images)
    >>> rich.print(s.table())  # doctest: +SKIP

    Notes
    -----
    Sessions nest (the innermost wins) and are per thread: convolutions that other threads run
    meanwhile stay on PyTorch. Calls that need gradients run on PyTorch (see module notes).
    """
    if quantize is not None:
        return quantized_use(quantize, model=model, calibration=calibration, hook=hook)
    return Session(algorithm, fallback, model=model, hook=hook)
