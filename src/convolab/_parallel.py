"""Thread helpers shared by the algorithms that split work over Python threads.

Algorithms whose inner loops are BLAS calls (the bilinear engine's per-point GEMMs, the FFT's
per-frequency products) run their GIL-free Numba / BLAS pieces on a small pool of Python
threads, with the BLAS held to one thread meanwhile, instead of nesting a Numba parallel
region around multi-threaded BLAS calls (two thread pools fighting for two cores).
"""

from __future__ import annotations

import os
import threading

_pool = None
_pool_lock = threading.Lock()
_controller = None


def worker_count() -> int:
    """Threads to use: Numba's thread count (``numba.set_num_threads`` once its pool runs,
    else ``NUMBA_NUM_THREADS``), at most the CPUs this process may run on."""
    import numba
    from numba.np.ufunc import parallel

    # do not start Numba's pool just to ask: use its setting only once it is running
    n = numba.get_num_threads() if parallel._is_initialized else numba.config.NUMBA_NUM_THREADS
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(n, cpus))


def blas_one_thread():
    """A context manager holding the BLAS libraries to one thread."""
    global _controller
    if _controller is None:
        # Numba's np.dot calls SciPy's BLAS: load it before threadpoolctl takes its inventory
        import scipy.linalg.cython_blas  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def _forget_pool() -> None:
    # a forked child inherits the pool object but not its threads: start a new one there
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run_threads(fn, items) -> list:
    """``[fn(item) for item in items]``: the first in the calling thread, the others on the
    worker pool (the work must release the GIL to overlap); waits for all, returns results."""
    global _pool
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="convolab")
        pool = _pool
    futures = [pool.submit(fn, item) for item in items[1:]]
    try:
        first = fn(items[0])
    finally:
        rest = [f.result() for f in futures]
    return [first, *rest]
