"""Private Numba kernels. Wrappers in ``convolab.algorithms`` validate, allocate and launch.

Every kernel is compiled with ``cache=True, nogil=True`` and without fast-math, so that no
floating-point reassociation or fused multiply-add contraction happens behind our back:
each output's products are summed in the order the source code states, whatever the SIMD
width the host CPU offers or the thread count.

Threading: the convolution kernels (direct, im2win, the Winograd / SFC / FFT / im2col
pieces) and the compiled runtime run as jobs of convolab's own thread team
(`convolab.kernels.team`: threads that spin a short while between jobs, so a call does not
pay a 50-60 us wake-up). The remaining Numba parallel kernels (integer loops, the
high-dimensional filters) run, unless the user chose a layer (``NUMBA_THREADING_LAYER``), on
the ``workqueue`` layer: the OpenMP layer's threads spin for long after a parallel region and
fight OpenBLAS's (and PyTorch's) threads for the cores: on two cores a parallel unfold
followed by a BLAS GEMM ran 2-60x slower with it (notes/performance.md). The workqueue layer
cannot run two parallel regions at once, so those kernels are launched under
`PARALLEL_LOCK`; parallel kernels launched from several Python threads take turns, each
using all the cores.

Caching: Numba keys a function's cache entry on its own source file only, but a compiled
function carries the code of every function it calls or inlines from other files (the
microkernel, the epilogue, the atomics): after such a file changed, a kernel elsewhere kept
running its stale copy. For convolab's own files the stamp therefore also covers every source
file of this package (`_stamp_locators`).
"""

import os
import sys
import threading

from .._imports import after_import

if "NUMBA_THREADING_LAYER" not in os.environ:
    os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
    if "numba" in sys.modules:  # numba already imported: its config was read from the environment
        sys.modules["numba"].config.THREADING_LAYER = "workqueue"
# Numba's thread count, fixed in the environment: each compilation re-reads Numba's
# configuration, and without the variable its default is the CALLING thread's CPU count. A team
# thread (`team`) is pinned off the caller's CPU, so a function first compiled on one (a job's
# first call racing the caller's) saw 1 instead of 2 and, once Numba's workers had started,
# raised "Cannot set NUMBA_NUM_THREADS to a different value"; the job's other threads then
# waited for it forever.
if "NUMBA_NUM_THREADS" not in os.environ:
    if "numba" in sys.modules:
        _n = sys.modules["numba"].config.NUMBA_NUM_THREADS
    else:
        _n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ["NUMBA_NUM_THREADS"] = str(max(1, _n or 1))

def _stamp_locators(caching) -> None:
    """Put cache locators in front of Numba's that, for convolab's source files, add the
    sizes and modification times of every file in this package (and of the runtime's compiled
    operators, `convolab.runtime._executor` / `_kernels`) to the source stamp.

    Runs as soon as ``numba.core.caching`` is imported (`convolab._imports.after_import`),
    before any kernel module's ``@njit(cache=True)`` picks its locator, and without importing
    Numba itself: ``import convolab`` stays free of it."""
    here = os.path.dirname(os.path.abspath(__file__))
    package = os.path.dirname(here)

    # the runtime's compiled operators are inlined into its executor with this package's code
    extra = [os.path.join(package, "runtime", n) for n in ("_executor.py", "_kernels.py")]

    def deps():
        out = []
        for path in sorted(os.path.join(here, n) for n in os.listdir(here)) + extra:
            if path.endswith(".py") and os.path.exists(path):
                st = os.stat(path)
                out.append((os.path.basename(path), st.st_mtime, st.st_size))
        return tuple(out)

    class _Mixin:
        @classmethod
        def from_function(cls, py_func, py_file):
            if not os.path.abspath(py_file).startswith(package + os.sep):
                return None
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return (super().get_source_stamp(), deps())

    bases = [getattr(caching, n, None) for n in
             ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")]
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    if impl is None or any(b is None for b in bases) or getattr(impl, "_convolab_stamps", False):
        return
    impl._locator_classes[:0] = [type(f"Convolab{b.__name__}", (_Mixin, b), {}) for b in bases]
    impl._convolab_stamps = True
    _light_cache_loads(caching, _Mixin)


def _light_cache_loads(caching, mixin) -> None:
    """Load convolab's cached kernels without filling Numba's lowering registries first.

    Numba's ``Cache.load_overload`` refreshes the target context before it reads a cached
    function: that imports and registers every lowering implementation Numba has (arrays,
    lists, dicts, random, linalg with SciPy's BLAS...), about 0.15-0.25 s once per process,
    although machine code read from the cache needs none of them, only the runtime's symbols
    (`rtsys.initialize`). For functions whose locator is convolab's, the load does just that;
    when the entry is missing, the full refresh runs before Numba compiles (its compiler
    refreshes again anyway). Other packages' functions load as before.
    """
    cache = getattr(caching, "Cache", None)
    original = getattr(cache, "load_overload", None)
    if original is None or getattr(original, "_convolab_light", False):
        return
    try:
        from numba.core.runtime import rtsys
    except ImportError:  # pragma: no cover - numba internals moved
        return

    def load_overload(self, sig, target_context):
        impl = getattr(self, "_impl", None)
        if not isinstance(getattr(impl, "locator", None), mixin):
            return original(self, sig, target_context)
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            data = self._load_overload(sig, target_context)
        if data is None:
            target_context.refresh()
        return data

    load_overload._convolab_light = True
    cache.load_overload = load_overload


after_import("numba.core.caching", _stamp_locators)


class _ParallelLock:
    """A lock held while a Numba parallel kernel runs; the first time it is taken in a process
    it also pins Numba's worker threads, one per CPU (see `pin_numba_workers`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pinned = False

    def __enter__(self):
        self._lock.acquire()
        if not self._pinned:
            self._pinned = True
            try:
                pin_numba_workers()
            except Exception:  # noqa: BLE001 - pinning is an optimisation only
                pass
        return self

    def __exit__(self, *exc):
        self._lock.release()
        return False


def pin_numba_workers() -> dict:
    """Pin each of Numba's worker threads to its own CPU of this process's affinity set.

    The workqueue layer's caller wakes the workers and then waits; Linux tends to wake them
    on the caller's CPU and to leave them there, so on the 2-core development machine two
    workers often took turns on one CPU: a kernel then ran at half speed for many calls in a
    row (direct on 64@56: 0.70 or 1.1-1.2 ms depending on where the scheduler had put the
    threads). Pinned, they always run side by side. ``CONVOLAB_PIN_THREADS=0`` turns this off.
    Returns {native thread id: CPU} of the threads pinned.
    """
    if os.environ.get("CONVOLAB_PIN_THREADS", "1") == "0" or not hasattr(os, "sched_setaffinity"):
        return {}
    import numba
    import numpy as np

    cpus = sorted(os.sched_getaffinity(0))
    n = numba.get_num_threads()
    if len(cpus) < 2 or n < 2:
        return {}
    from ._threads import worker_tids

    tids = np.full(numba.config.NUMBA_NUM_THREADS, -1, dtype=np.int64)
    worker_tids(tids, 64 * n)
    main = threading.get_native_id()
    workers = sorted({int(t) for t in tids if t > 0 and t != main})
    pinned = {}
    for i, tid in enumerate(workers):
        try:
            os.sched_setaffinity(tid, {cpus[i % len(cpus)]})
            pinned[tid] = cpus[i % len(cpus)]
        except OSError:
            pass
    return pinned


#: held while a Numba parallel kernel runs
PARALLEL_LOCK = _ParallelLock()

_WARM_LOCK = threading.Lock()
_warmed: set = set()


def load_from_cache(dispatcher, args, warm_code: str, variant) -> None:
    """Have ``dispatcher`` load its machine code for ``args`` from Numba's on-disk cache,
    compiling it in a subprocess (``python -c warm_code``) first when the cache lacks it.

    The register-blocked LLVM-IR microkernel (im2win, direct) runs about 2x slower when
    JIT-compiled in the process that uses it than when the same function is loaded from the
    cache (measured: direct on 256@14, 194 against 382 GFLOP/s), so the first call after an
    install or upgrade compiles it in a child process. ``variant`` (e.g. the dtype's name)
    stands for the argument types: only the first call per dispatcher and variant in a process
    looks further (typing the arguments costs about 40 us). Does nothing when the function is
    already compiled or cached for these argument types, when ``CONVOLAB_NO_PREWARM`` is set
    (the child sets it), or when Numba's cache internals are not as expected.
    """
    key = (id(dispatcher), variant)
    if key in _warmed:
        return
    import subprocess

    with _WARM_LOCK:
        if key in _warmed:
            return
        _warmed.add(key)
        if os.environ.get("CONVOLAB_NO_PREWARM"):
            return
        try:
            sig = tuple(dispatcher.typeof_pyval(a) for a in args)
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
