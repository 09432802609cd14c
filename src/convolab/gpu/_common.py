"""What the GPU kernels share: dtypes and precisions, kernel configurations, shared-memory
estimates, the device's properties, error bounds.

A kernel configuration (`Config`) is a pinned choice of tile sizes, warps, pipeline stages and
split count: a plan keeps one, so its results are the same bits on every call. Shared memory
is estimated per configuration from the tiles a pipelined ``tl.dot`` loop keeps in flight
(``stages x (A tile + B tile)``), because Triton's interpreter never allocates it and a
configuration over the device's limit would only fail when compiled on the GPU.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass

import torch
import triton

from ..errors import ConvError
from ..registry import gamma
from ..spec import ConvSpec

#: True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` set before import)
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

#: the dtypes the kernels take, by name
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: unit roundoff of the storage dtypes
UNIT = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8, "tf32": 2.0**-11}
#: float32 precisions of ``tl.dot``: IEEE fp32 products (FMA units) or TF32 (tensor cores)
PRECISIONS = ("ieee", "tf32")

#: shared memory a block may use on sm_90 (227 KiB); older GPUs are read off the device
_SMEM_DEFAULT = 227 * 1024


def dtype_name(dtype) -> str:
    """'float32', 'float16' or 'bfloat16' for a torch dtype or one of those names."""
    for name, dt in DTYPES.items():
        if dtype == dt or dtype == name:
            return name
    raise ConvError(f"unsupported dtype {dtype} for the GPU kernels; use float32, float16 or bfloat16")


def check_precision(precision: str, dtype: str) -> str:
    """Validate ``precision``; float16 / bfloat16 always run on the tensor cores ('tf32' mode name aside)."""
    if precision not in PRECISIONS:
        raise ConvError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if dtype != "float32" and precision != "ieee":
        raise ConvError(f"precision={precision!r} applies to float32 inputs only, got {dtype}")
    return precision


def dot_precision(dtype: str, precision: str) -> str:
    """The ``input_precision`` given to ``tl.dot`` (ignored by Triton for 16-bit operands)."""
    return precision if dtype == "float32" else "tf32"


def error_bound(spec: ConvSpec, dtype: str, precision: str = "ieee") -> float:
    """Normwise bound ``max|y_hat - y| / max(|x| (*) |w| + |b|)`` against the exact convolution
    of the (already rounded) inputs.

    float32 IEEE: any summation order of the n = Cg R S + 1 terms, gamma_n with u = 2^-24.
    TF32: both operands rounded to 10-bit mantissas (2 u_tf32) before exact products, then
    fp32 accumulation on the tensor cores, whose additions may truncate (u = 2^-23).
    float16 / bfloat16: exact products accumulated in fp32 on the tensor cores (u = 2^-23), then
    one rounding of the result to the storage dtype.
    """
    n = spec.reduction_length + 1
    if dtype == "float32" and precision == "ieee":
        return gamma(n, UNIT["float32"])
    acc = gamma(n, 2.0**-23)
    if dtype == "float32":
        tf = UNIT["tf32"]
        return (1 + acc) * (1 + tf) ** 2 - 1
    return (1 + acc) * (1 + UNIT[dtype]) - 1


@dataclass(frozen=True)
class Config:
    """One kernel configuration. ``block`` holds the kernel's tile sizes by name (e.g. BM, BN,
    BK); ``split`` > 1 splits the reduction into that many ranges whose partial sums a second
    pass adds in a fixed order (never atomics)."""

    block: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 2
    split: int = 1

    @classmethod
    def make(cls, num_warps=4, num_stages=2, split=1, **block) -> Config:
        return cls(tuple(sorted(block.items())), int(num_warps), int(num_stages), int(split))

    @property
    def tiles(self) -> dict[str, int]:
        return dict(self.block)

    def to_json(self) -> dict:
        d = asdict(self)
        d["block"] = dict(self.block)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Config:
        return cls.make(d["num_warps"], d["num_stages"], d["split"], **d["block"])

    def __str__(self) -> str:
        t = " ".join(f"{k}{v}" for k, v in self.block)
        s = f" split{self.split}" if self.split > 1 else ""
        return f"{t} w{self.num_warps} st{self.num_stages}{s}"


def smem_bytes(a_tile: int, b_tile: int, itemsize: int, stages: int) -> int:
    """Shared memory of a software-pipelined dot loop: ``stages`` buffers of both operand tiles
    (Triton keeps ``stages - 1`` loads in flight plus the tile being multiplied; at least one)."""
    return max(1, stages) * (a_tile + b_tile) * itemsize


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    sms: int
    smem: int


@functools.cache
def device_info(device=None) -> DeviceInfo:
    """Name, multiprocessor count and per-block shared-memory limit of the CUDA device (a
    nominal H100-class description where no device exists: under the interpreter, or when
    compiling ahead on a machine without a GPU). Read once per device and process."""
    if INTERPRET or not torch.cuda.is_available():
        return DeviceInfo("no GPU (nominal sm_90: 132 SMs)", 132, _SMEM_DEFAULT)
    idx = torch.device(device or "cuda").index or 0
    p = torch.cuda.get_device_properties(idx)
    smem = getattr(p, "shared_memory_per_block_optin", 0) or _SMEM_DEFAULT
    return DeviceInfo(p.name, p.multi_processor_count, int(smem))


def triton_version() -> str:
    return triton.__version__


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def fill_split(programs: int, iters: int, sms: int, min_steps: int = 4) -> int:
    """Split count that turns ``programs`` into about two waves on ``sms`` multiprocessors,
    keeping at least ``min_steps`` reduction steps per split (1 when the grid is full already)."""
    if programs >= sms or iters < 2 * min_steps:
        return 1
    return max(1, min(cdiv(2 * sms, programs), iters // min_steps))


def split_ranges(iters: int, split: int) -> tuple[int, int]:
    """(steps per split, split count) for dividing ``iters`` reduction steps into at most ``split``
    equal ranges: the count is the largest divisor of ``iters`` not above ``split``, so every
    program runs the same number of steps (no bounds check inside the loop)."""
    split = max(1, min(split, iters))
    while iters % split:
        split -= 1
    return iters // split, split
