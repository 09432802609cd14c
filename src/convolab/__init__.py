"""convolab: convolution algorithms for CNN inference, behind one PyTorch-compatible call."""

# the subpackage (`convolab.algorithms`, one module per algorithm) registers the built-in
# algorithms; `convolab.list_algorithms()` lists the registered ones
from . import algorithms, reference
from ._version import __version__
from .api import ConvPlan, conv2d, plan
from .errors import ConvError, UnsupportedError
from .registry import Algorithm, list_algorithms, register
from .select import choose
from .spec import ConvSpec


def compile(model, example_input, **options):  # noqa: A001 - torch.compile's name, on purpose
    """Capture a PyTorch CPU model and run it in convolab's runtime (`convolab.runtime.compile`:
    BatchNorm and padding folded into the convolutions, bias + residual + activation fused into
    their output stage, every convolution planned once, runs of direct convolutions executed as
    one parallel job). Imports PyTorch and the runtime's kernels on first use."""
    from .runtime import compile as _compile

    return _compile(model, example_input, **options)


__all__ = [
    "__version__",
    "Algorithm",
    "ConvError",
    "ConvPlan",
    "ConvSpec",
    "UnsupportedError",
    "algorithms",
    "choose",
    "list_algorithms",
    "compile",
    "reference",
    "conv2d",
    "plan",
    "register",
]
