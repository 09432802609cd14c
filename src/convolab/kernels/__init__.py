"""Private Numba kernels. Wrappers in ``convolab.algorithms`` validate, allocate and launch.

Every kernel is compiled with ``cache=True, nogil=True`` and without fast-math, so that no
floating-point reassociation or fused multiply-add contraction happens behind our back:
each output's products are summed in the order the source code states, whatever the SIMD
width the host CPU offers or the thread count.

Threading: unless the user chose one (``NUMBA_THREADING_LAYER``), convolab runs Numba's
parallel kernels on the ``workqueue`` layer. The OpenMP layer's threads spin after a
parallel region and fight OpenBLAS's (and PyTorch's) threads for the cores: on two cores a
parallel unfold followed by a BLAS GEMM ran 2-60x slower with it (notes/performance.md).
The workqueue layer cannot run two parallel regions at once, so every parallel kernel is
launched under `PARALLEL_LOCK`; parallel kernels launched from several Python threads take
turns, each using all the cores.
"""

import os
import sys
import threading

if "NUMBA_THREADING_LAYER" not in os.environ:
    os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
    if "numba" in sys.modules:  # numba already imported: its config was read from the environment
        sys.modules["numba"].config.THREADING_LAYER = "workqueue"

#: held while a Numba parallel kernel runs
PARALLEL_LOCK = threading.Lock()

_WARM_LOCK = threading.Lock()
_warmed: set = set()


def load_from_cache(dispatcher, args, warm_code: str) -> None:
    """Have ``dispatcher`` load its machine code for ``args`` from Numba's on-disk cache,
    compiling it in a subprocess (``python -c warm_code``) first when the cache lacks it.

    The register-blocked LLVM-IR microkernel (im2win, direct) runs about 2x slower when
    JIT-compiled in the process that uses it than when the same function is loaded from the
    cache (measured: direct on 256@14, 194 against 382 GFLOP/s), so the first call after an
    install or upgrade compiles it in a child process. Does nothing when the function is
    already compiled or cached for these argument types, when ``CONVOLAB_NO_PREWARM`` is set
    (the child sets it), or when Numba's cache internals are not as expected.
    """
    import subprocess

    try:
        sig = tuple(dispatcher.typeof_pyval(a) for a in args)
        key = (id(dispatcher), sig)
        if key in _warmed or os.environ.get("CONVOLAB_NO_PREWARM"):
            return
        with _WARM_LOCK:
            if key in _warmed:
                return
            _warmed.add(key)
            if any(tuple(s) == sig for s in dispatcher.overloads):
                return
            magic = dispatcher.targetctx.codegen().magic_tuple()
            index = dispatcher._cache._cache_file._load_index()
            if any(k[0] == sig and k[1] == magic for k in index):
                return
            env = dict(os.environ, CONVOLAB_NO_PREWARM="1")
            subprocess.run([sys.executable, "-c", warm_code], env=env, capture_output=True,
                           timeout=900, check=False)
    except Exception:  # noqa: BLE001 - a missed warm-up only costs speed
        return
