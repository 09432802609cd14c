"""convolab.gpu: convolution kernels in Triton for CUDA torch tensors (optional extra ``gpu``).

Three algorithms, registered with ``device="cuda"`` (`convolab.list_algorithms("cuda")`):

- ``implicit_gemm_gpu``: channels-last implicit GEMM (`convolab.gpu.implicit_gemm`);
- ``im2win_gpu``: the im2win window tensor built on the GPU, then a GEMM over its contiguous
  rows (`convolab.gpu.im2win`; Lu et al., Euro-Par 2023);
- ``cuconv_gpu``: direct convolution on the NCHW input with per-tap partial sums (cuConv,
  Jordà et al. 2022; `convolab.gpu.cuconv`).

All take NCHW-shaped CUDA tensors (any strides) in float32 (IEEE or TF32), float16 or bfloat16,
accumulate in float32, and are deterministic: a plan pins one kernel configuration and every
split reduction is added in a fixed order, never with atomics. Plans: `plan` / `conv2d`
(`convolab.gpu.api`); the benchmark against cuDNN: ``convolab bench --device cuda``
(`convolab.gpu.bench`).

Testing without a GPU: set ``TRITON_INTERPRET=1`` before importing this package and the same
kernels run in Triton's CPU interpreter on CPU tensors (slowly; bfloat16 dots are not supported
there).
"""

from ._common import Config
from .api import GPUPlan, conv2d, plan

__all__ = ["Config", "GPUPlan", "conv2d", "plan"]
