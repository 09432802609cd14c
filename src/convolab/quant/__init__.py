"""int8 post-training quantisation and integer-exact convolution.

- `core`: symmetric quantisation (`quantize`, `dequantize`, per-output-channel `weight_scales`),
  activation calibration (`Observer`: min/max, percentile, MSE) and `QuantConfig`;
- `intconv`: `conv2d_int8` / `plan_int8`, int8 x int8 -> int32 convolution, direct (the int8
  VNNI microkernel, `convolab.kernels.int8`) and im2col (float GEMM, exact), bit-exact against
  `convolab.reference.conv2d`, overflow impossible by a check on the weights;
- `fast`: integer Winograd F(2x2,3x3), F(4x4,3x3) and SFC-4(4x4,3x3), SFC-6(6x6,3x3),
  SFC-6(7x7,3x3) (and more) with the transform domain quantised per frequency (8, 6, 4 bits);
- `layer`: `QuantizedConv`, a calibrated float-in / float-out convolution on any of these;
Running a PyTorch model quantised is interop's job: `convolab.interop.torch.use(quantize=...)`
(`convolab.interop.quantized`; interop builds on quant, never the other way).

The data path and where rounding happens are in each module's notes; ``convolab quantize-eval``
measures the accuracy of every algorithm and bit width on a real pretrained network.
"""

from .core import Observer, QuantConfig, dequantize, qmax, quantize, weight_scales
from .fast import FAST
from .intconv import Int8Plan, accumulation_bound, conv2d_int8, plan_int8
from .layer import QuantizedConv

__all__ = [
    "FAST",
    "Int8Plan",
    "Observer",
    "QuantConfig",
    "QuantizedConv",
    "accumulation_bound",
    "conv2d_int8",
    "dequantize",
    "plan_int8",
    "qmax",
    "quantize",
    "weight_scales",
]
