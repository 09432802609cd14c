"""Compile the GPU kernels for a Hopper target (sm_90) on a machine without a GPU.

Triton's interpreter runs the kernels' arithmetic but never compiles them, so it cannot tell
whether a configuration fits the device's shared memory, or whether a kernel lowers at all. Here
every launch a GPU plan makes is intercepted (`JITFunction.run` replaced), its arguments bound
and specialised as Triton would for that launch, and the kernel compiled to a cubin for
``cuda:90`` with Triton's own compiler and ptxas. Used by tests/test_gpu.py and runnable as a
script over all candidate configurations of a few layers:

    python tests/gpu_compile.py
"""

from __future__ import annotations

import contextlib
import sys
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime import jit

TARGET = GPUTarget("cuda", 90, 32)


@contextlib.contextmanager
def compiling(records: list):
    """Within the block, kernel launches compile for sm_90 instead of running; each appends
    (kernel name, options, compiled kernel) to ``records``."""
    backend = make_backend(TARGET)
    original = jit.JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        binder = jit.create_function_from_signature(self.signature, self.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, specialization, options)
        k = triton.compile(ASTSource(self, signature, constexprs, attrs), target=TARGET, options=options.__dict__)
        records.append((self.fn.__name__, options, k))
        return k

    jit.JITFunction.run = run
    try:
        yield records
    finally:
        jit.JITFunction.run = original


def compile_plan(plan, config, x) -> list:
    """Compile every kernel ``plan`` launches for ``x`` under ``config``."""
    records: list = []
    with compiling(records):
        plan.run_config(x, plan._empty_out(x), config)
    return records


def make_plan(x_shape, w, stride, padding, groups, name, dtype, precision="ieee"):
    """A GPU plan over CPU tensors (no device checks): its launches can be compiled, not run."""
    import numpy as np

    from convolab.gpu import api
    from convolab.spec import ConvSpec

    spec = ConvSpec.from_shapes(x_shape, tuple(w.shape), stride, padding, 1, groups, np.float32)
    cfg = api.MODULES[name].default(spec, dtype, api.device_info())
    return api.GPUPlan(spec, name, w, None, dtype, precision, cfg, "compile check")


def main(argv=None) -> int:  # pragma: no cover - run as a script (tests/test_gpu.py runs --quick)
    import argparse

    from convolab.gpu import api
    from convolab.gpu._common import DTYPES, device_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only each algorithm's default configuration")
    args = ap.parse_args(argv)
    layers = [((32, 64, 56, 56), (64, 64, 3, 3), 1, 1), ((1, 256, 14, 14), (256, 256, 3, 3), 1, 1),
              ((8, 3, 227, 227), (96, 3, 11, 11), 4, 0), ((1, 32, 14, 14), (32, 1, 3, 3), 1, 1),
              ((1, 832, 7, 7), (256, 832, 1, 1), 1, 0)]
    modes = [("float16", "ieee"), ("float32", "ieee"), ("float32", "tf32"), ("bfloat16", "ieee")]
    worst = 0
    for dtype, precision in modes:
        for xs, ws, stride, pad in layers:
            groups = xs[1] // ws[1]
            w = torch.zeros(ws, dtype=DTYPES[dtype])
            for name, mod in api.MODULES.items():
                p = make_plan(xs, w, stride, pad, groups, name, dtype, precision)
                layout = torch.channels_last if name == "implicit_gemm_gpu" else torch.contiguous_format
                x = torch.zeros(xs, dtype=DTYPES[dtype]).to(memory_format=layout)
                cfgs = [p.config] if args.quick else mod.candidates(p.spec, dtype, device_info())
                for cfg in cfgs:
                    t = time.perf_counter()
                    recs = compile_plan(p, cfg, x)
                    smem = max(k.metadata.shared for *_, k in recs)
                    worst = max(worst, smem)
                    ptx = "".join(k.asm["ptx"] for *_, k in recs)
                    mma = "wgmma" if "wgmma" in ptx else ("mma" if "mma.sync" in ptx else "fma")
                    print(f"{dtype}/{precision:4s} {name:18s} {str(p.spec):40s} {str(cfg):40s} "
                          f"smem {smem / 1024:6.1f} KiB {mma:5s} {time.perf_counter() - t:5.1f} s", flush=True)
    print(f"largest shared memory: {worst / 1024:.1f} KiB (limit {device_info().smem / 1024:.0f} KiB)")
    return 0 if worst <= device_info().smem else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
