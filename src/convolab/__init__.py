"""convolab: convolution algorithms for CNN inference, behind one PyTorch-compatible call."""

__version__ = "0.1.0"

# the subpackage registers the built-in algorithms; the name `algorithms` is then rebound
# to the registry function below, so `convolab.algorithms()` lists them
from . import algorithms as _builtin_algorithms  # noqa: F401
from . import reference
from .api import ConvPlan, conv2d, plan
from .errors import ConvError, UnsupportedError
from .registry import Algorithm, algorithms, register
from .select import choose
from .spec import ConvSpec

__all__ = [
    "Algorithm",
    "ConvError",
    "ConvPlan",
    "ConvSpec",
    "UnsupportedError",
    "algorithms",
    "choose",
    "reference",
    "conv2d",
    "plan",
    "register",
]
