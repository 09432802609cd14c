"""convolab: convolution algorithms for CNN inference, behind one PyTorch-compatible call."""

# the subpackage registers the built-in algorithms; the name `algorithms` is then rebound
# to the registry function below, so `convolab.algorithms()` lists them
from . import algorithms as _builtin_algorithms  # noqa: F401
from . import reference
from ._version import __version__
from .api import ConvPlan, conv2d, plan
from .errors import ConvError, UnsupportedError
from .registry import Algorithm, algorithms, register
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
    "compile",
    "reference",
    "conv2d",
    "plan",
    "register",
]
