"""The algorithm registry: one `Algorithm` record per named convolution algorithm.

Each module in ``convolab.algorithms`` registers its records at import time. A record is
pure data plus functions; nothing here allocates or computes. Names are unique.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConvError
from .spec import ConvSpec

#: unit roundoff of the dtypes convolab computes in
UNIT_ROUNDOFF = {
    np.dtype(np.float16): 2.0**-11,
    np.dtype(np.float32): 2.0**-24,
    np.dtype(np.float64): 2.0**-53,
}


def gamma(n: int, u: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): the worst-case relative error of an n-term sum."""
    nu = n * u
    return nu / (1.0 - nu) if nu < 1 else float("inf")


def summation_bound(spec: ConvSpec, dtype) -> float:
    """Worst-case normwise error of any summation order of the (C/groups) R S products and bias.

    The bound is on ``max|y_hat - y| / max(|x| (*) |w| + |b|)`` (see `convolab.reference.errors`)
    for any order of the n = Cg R S + 1 additions computed in the compute dtype, plus the final
    rounding to float16 when the input is float16.
    """
    dtype = np.dtype(dtype)
    compute = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    bound = gamma(spec.reduction_length + 1, UNIT_ROUNDOFF[compute])
    if dtype == np.float16:
        bound = (1 + bound) * (1 + UNIT_ROUNDOFF[dtype]) - 1
    return bound


@dataclass(frozen=True)
class Algorithm:
    """A registered convolution algorithm.

    Attributes
    ----------
    name : str
        Unique name, used as ``conv2d(..., algorithm=name)``.
    supports : callable(spec) -> str or None
        None when the algorithm can run ``spec``, else the reason it cannot.
    prepare : callable(spec, w) -> object
        Weight-side work done once per plan (packing, transforms). ``w`` is already in the
        compute dtype and C-contiguous.
    run : callable(prepared, x, out) -> None
        Computes the convolution of ``x`` (compute dtype, C-contiguous) into ``out``
        (compute dtype, C-contiguous, shape ``spec.out_shape``), bias excluded.
    workspace_bytes : callable(spec) -> int
        Bytes allocated per call beyond input, output and prepared weights.
    multiplies : callable(spec) -> int
        Multiplications performed (transform-domain products for fast algorithms).
    deterministic : bool
        Bit-identical output for any thread count and SIMD width.
    cpu_invariant : bool
        Bit-identical output on every x86-64 CPU, whatever its vendor and vector ISA: the same
        operations in the same order, fused multiply-adds through ``llvm.fma`` (exact where the
        CPU has no FMA unit), no library kernel chosen by CPU (BLAS, FFT). CI checks the part one
        machine can: Numba's generic x86-64 target against the host's.
    batch_invariant : bool
        An image's output does not depend on its position in the batch or on the other images
        (bit for bit, on one machine). False where images share a BLAS call whose kernel
        treats columns differently by position (``fft``).
    error_bound : callable(spec, dtype) -> float
        Bound on the normwise error ``max|y_hat - y| / max(|x| (*) |w| + |b|)``.
    summary : str
        One line for tables.
    kernel : callable(spec) -> str
        Which of the algorithm's kernels runs ``spec`` (the cost model fits each kernel on its
        own); the default, one kernel for every spec, returns "".
    device : str
        Where it runs: "cpu" (NumPy arrays in and out, `convolab.conv2d`) or "cuda" (CUDA torch
        tensors, `convolab.gpu`; its ``prepare`` / ``run`` take torch tensors). The CPU
        chooser, benchmarks and listings see the "cpu" records only.
    """

    name: str
    supports: Callable[[ConvSpec], str | None]
    prepare: Callable[[ConvSpec, np.ndarray], Any]
    run: Callable[[Any, np.ndarray, np.ndarray], None]
    workspace_bytes: Callable[[ConvSpec], int]
    multiplies: Callable[[ConvSpec], int]
    deterministic: bool
    error_bound: Callable[[ConvSpec, Any], float] = field(default=summation_bound)
    summary: str = ""
    features: dict = field(default_factory=dict)
    kernel: Callable[[ConvSpec], str] = field(default=lambda spec: "")
    #: what each `kernel` key runs, in words (`ConvPlan.kernel`); "" is the main kernel
    kernel_names: dict = field(default_factory=dict)
    device: str = "cpu"
    batch_invariant: bool = True
    cpu_invariant: bool = False

    def cost_key(self, spec: ConvSpec) -> str:
        """The cost model's name for the kernel that runs ``spec``: the algorithm's name, with
        ``/kernel`` appended when it has several."""
        k = self.kernel(spec)
        return f"{self.name}/{k}" if k else self.name

    def __repr__(self) -> str:
        return f"Algorithm({self.name!r}, deterministic={self.deterministic})"


_REGISTRY: dict[str, Algorithm] = {}


def register(algo: Algorithm) -> Algorithm:
    """Add ``algo`` to the registry; a duplicate name raises `ConvError`."""
    if algo.name in _REGISTRY:
        raise ConvError(f"an algorithm named {algo.name!r} is already registered")
    if not algo.name or algo.name == "auto":
        raise ConvError(f"invalid algorithm name {algo.name!r}")
    _REGISTRY[algo.name] = algo
    return algo


def unregister(name: str) -> None:
    """Remove a registered algorithm (for tests and plug-ins)."""
    _REGISTRY.pop(name, None)


def _load() -> None:
    # importing the subpackage registers the built-in algorithms (a no-op once imported)
    importlib.import_module("convolab.algorithms")


def get(name: str) -> Algorithm:
    """The record named ``name``; `ConvError` listing the registered names if unknown."""
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConvError(
            f"unknown algorithm {name!r}; registered: {', '.join(_REGISTRY)} (or 'auto')"
        ) from None


def list_algorithms(device: str | None = "cpu") -> list[Algorithm]:
    """The registered algorithm records of ``device`` ("cpu", "cuda"; None: all), in registration
    order. GPU records exist once `convolab.gpu` is imported."""
    _load()
    return [a for a in _REGISTRY.values() if device is None or a.device == device]


def capable(spec: ConvSpec, device: str = "cpu") -> list[str]:
    """Names of the registered algorithms of ``device`` that support ``spec``."""
    return [a.name for a in list_algorithms(device) if a.supports(spec) is None]


#: device name -> the conv2d that takes that device's tensors (registered by its subpackage)
_DEVICE_CONV: dict[str, Callable] = {}


def register_device(device: str, conv2d: Callable) -> None:
    """Route `convolab.conv2d` calls whose input lives on ``device`` to ``conv2d`` (the GPU
    subpackage registers "cuda" when imported)."""
    _DEVICE_CONV[device] = conv2d


def device_conv(device: str) -> Callable | None:
    return _DEVICE_CONV.get(device)
