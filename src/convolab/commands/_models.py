"""What both paths of ``convolab model`` share: the inputs, batches, the machine record, the
console and thread set-up, a configuration's forward pass."""

from __future__ import annotations

import os

from ._common import console as make_console


def _batch(x, n: int):
    import torch

    reps = -(-n // x.shape[0])
    return torch.cat([x] * reps)[:n].contiguous()


def _forward(model, x, session=None):
    if session is None:
        return model(x)
    with session:
        return model(x)


def _inputs(info, n: int, size: int | None = None):
    """The accuracy pass's inputs: the photographs for a pretrained network, seeded N(0, 1)
    images for one with random weights, ``size`` x ``size`` (default the network's). Returns
    (labels, tensor, description)."""
    import dataclasses

    import numpy as np
    import torch

    from ..errors import ConvError
    from ..interop.models import PHOTOS, load_photos

    if n < 1:
        raise ConvError(f"--images must be >= 1, got {n}")
    if size is not None:
        if size < 32:
            raise ConvError(f"--size must be >= 32 (five stride-2 stages), got {size}")
        info = dataclasses.replace(info, input_size=size)
    if info.random_weights:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, 3, info.input_size, info.input_size), dtype=np.float32)
        return ([f"random{i}" for i in range(n)], torch.from_numpy(x),
                f"{n} random {info.input_size}x{info.input_size} images (N(0, 1), seed 0)")
    if n > len(PHOTOS):
        raise ConvError(f"--images: {info.name} runs on the {len(PHOTOS)} photographs, got {n}")
    names, x = load_photos(list(PHOTOS)[:n], info=info)
    return names, x, f"{n} scikit-image photographs: {', '.join(names)}"


def _machine(threads: int) -> dict:
    import torch
    from threadpoolctl import threadpool_info

    from .._machine import blas_info, cpu_model

    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    blas_cores = sorted({i.get("architecture") or "" for i in threadpool_info()
                         if i.get("user_api") == "blas"} - {""})
    return {
        "cpu": cpu_model(), "threads": threads, "torch": torch.__version__,
        "onednn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
        "blas": blas_info(), "blas_core": blas_cores, "env": env,
        "cpus": os.cpu_count(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _console_and_threads(threads: int):
    """The command's console (150 columns when not a terminal) and its thread settings:
    PyTorch, Numba and the BLAS held to ``threads`` (the BLAS limit is returned to undo)."""
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    console = make_console()
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return console, threadpool_limits(threads, user_api="blas")
