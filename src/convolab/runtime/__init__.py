"""convolab's runtime for whole networks: `compile` captures a PyTorch CPU model
(``torch.export``), folds BatchNorm and padding into its convolutions, fuses bias, residual
add and activation into their output stage, plans every convolution once and runs the graph
on convolab's kernels with exactly the threads it is given (see `convolab.runtime.model`).

PyTorch is needed only to capture a model (``pip install 'convolab[torch]'``); importing this
package does not import it.
"""

from .model import CompiledModel, Layer, compile  # noqa: A004

__all__ = ["CompiledModel", "Layer", "compile"]
