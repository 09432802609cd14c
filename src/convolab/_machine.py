"""The machine (bottom layer): CPU model, BLAS, available memory, the thread count, the GEMM
rate.

Everything here is cheap to ask except `gemm_gflops` (a measurement) and `blas_info` (it
loads threadpoolctl): the chooser keys its caches by `cpu_model` and `threads` on every
first plan of a process, so neither imports more than the standard library and Numba's
configuration.
"""

from __future__ import annotations

import functools
import os
import platform

from ._imports import after_import
from ._timing import time_min


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere `platform`'s processor or machine)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> str:
    """BLAS library, version and the core kernel it selected (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    for info in threadpool_info():
        if info.get("user_api") == "blas":
            return (
                f"{info.get('internal_api')} {info.get('version')} core={info.get('architecture')} "
                f"threads={info.get('num_threads')}"
            )
    return "unknown"


_SCIPY_BLAS = "scipy.linalg.cython_blas"


def load_scipy_blas() -> None:
    """Load SciPy's BLAS (``scipy.linalg.cython_blas``), whose functions Numba's ``np.dot``
    calls, without running ``scipy.linalg``'s package initialisation.

    ``import scipy.linalg.cython_blas`` first imports all of ``scipy.linalg`` (about 0.1 s,
    a third of a cold process's first convolution) although the extension module needs
    nothing from it. This loads the extension file alone under its full name; should
    ``scipy.linalg`` be imported later, a one-shot finder makes the module its attribute, as
    a normal import would have. Falls back to the normal import wherever the file is not
    where SciPy installs it.
    """
    import sys

    if _SCIPY_BLAS in sys.modules:
        return
    import importlib.machinery
    import importlib.util

    spec = None
    try:
        if "scipy.linalg" not in sys.modules:
            root = importlib.util.find_spec("scipy")
            folder = os.path.join(os.path.dirname(root.origin), "linalg")
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(folder, "cython_blas" + suffix)
                if os.path.isfile(path):
                    loader = importlib.machinery.ExtensionFileLoader(_SCIPY_BLAS, path)
                    spec = importlib.util.spec_from_file_location(_SCIPY_BLAS, path,
                                                                  loader=loader)
                    break
    except (ImportError, AttributeError, TypeError, ValueError):
        spec = None
    if spec is None:
        import scipy.linalg.cython_blas  # noqa: F401
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[_SCIPY_BLAS] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_SCIPY_BLAS]
        raise
    after_import("scipy.linalg", _attach_scipy_blas)


def _attach_scipy_blas(linalg) -> None:
    # what a normal import of scipy.linalg.cython_blas would have left on its package
    import sys

    blas = sys.modules.get(_SCIPY_BLAS)
    if blas is not None and not hasattr(linalg, "cython_blas"):
        linalg.cython_blas = blas


def available_memory() -> int:
    """Bytes of memory the OS reports as available (MemAvailable), or a large number if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def threads() -> int:
    """The thread count convolab runs with: Numba's (``numba.set_num_threads`` once its pool
    runs, else ``NUMBA_NUM_THREADS``). Asking does not start Numba's thread pool."""
    import numba
    from numba.np.ufunc import parallel

    return int(numba.get_num_threads() if parallel._is_initialized else numba.config.NUMBA_NUM_THREADS)


def worker_count() -> int:
    """Threads to split work over: `threads`, at most the CPUs this process may run on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(threads(), cpus))


def gemm_gflops(n: int = 2048, repeat: int = 3) -> float:
    """Measured NumPy float32 GEMM rate (n^3, best of at least ``repeat`` calls and 0.3 s):
    the machine's practical peak. (Five 1024^3 calls take 25 ms, short enough for all of them
    to fall in one of the host's slow spells: calibrate once read half the rate.)"""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    best = time_min(lambda: np.matmul(a, b, out=c), repeat, min_total=0.3)
    return 2 * n**3 / best / 1e9


def mib(n: int) -> str:
    """Bytes for messages: MiB with one decimal, exact bytes below 1 KiB."""
    if n < 1024:
        return f"{n} B"
    if n < 2**20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 2**20:.1f} MiB"
