"""Thread helpers shared by the algorithms that split work over Python threads.

Algorithms whose inner loops are BLAS calls (the bilinear engine's per-point GEMMs, the FFT's
per-frequency products) run their GIL-free Numba / BLAS pieces on a small pool of Python
threads, with the BLAS held to one thread meanwhile, instead of nesting a Numba parallel
region around multi-threaded BLAS calls (two thread pools fighting for two cores).
"""

from __future__ import annotations

import os
import threading

from ._machine import worker_count  # noqa: F401 - the algorithms take it from here

_pool = None
_pool_lock = threading.Lock()
_controller = None


def blas_one_thread():
    """A context manager holding the BLAS libraries to one thread."""
    global _controller
    if _controller is None:
        # Numba's np.dot calls SciPy's BLAS: load it before threadpoolctl takes its inventory
        from threadpoolctl import ThreadpoolController

        from ._machine import load_scipy_blas

        load_scipy_blas()

        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def _forget_pool() -> None:
    # a forked child inherits the pool object but not its threads: start a new one there
    global _pool, _workers
    _pool = None
    _workers = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)

#: [native thread id, CPUs it may run on] of each pool thread
_workers: list = []
_sched_getcpu = None


def _register_worker() -> None:
    with _pool_lock:
        _workers.append([threading.get_native_id(), None])


def _current_cpu() -> int | None:
    """The CPU the calling thread runs on (glibc ``sched_getcpu``), or None."""
    global _sched_getcpu
    if _sched_getcpu is None:
        try:
            import ctypes

            f = ctypes.CDLL(None, use_errno=True).sched_getcpu
            f.restype = ctypes.c_int
            _sched_getcpu = f
        except (OSError, AttributeError):
            _sched_getcpu = False
    if not _sched_getcpu:
        return None
    c = _sched_getcpu()
    return c if c >= 0 else None


def _keep_off(cpu: int | None) -> None:
    """Let the pool threads run anywhere the process may, except on ``cpu``.

    Linux's scheduler wakes a thread on its waker's CPU when the two look like a producer and
    its consumer -- exactly what handing a job to the pool and waiting for it looks like -- and
    then keeps them there: the caller's share and the worker's then ran one after the other on
    one CPU (measured on the 2-core development machine: two 0.2 ms jobs took 0.70 ms instead of
    0.45 ms, call after call, after the process had idled for 0.1 s). Taking the caller's CPU out
    of the workers' affinity before waking them keeps the shares in parallel; the caller itself
    stays free to move.
    """
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    try:
        allowed = os.sched_getaffinity(0)
    except OSError:
        return
    others = allowed - {cpu}
    if not others:
        return
    for w in list(_workers):
        if w[1] != others:
            try:
                os.sched_setaffinity(w[0], others)
                w[1] = others
            except OSError:
                w[1] = None


def run_threads(fn, items) -> list:
    """``[fn(item) for item in items]``: the first in the calling thread, the others on the
    worker pool (the work must release the GIL to overlap); waits for all, returns results.
    The pool threads are kept off the calling thread's CPU (see `_keep_off`)."""
    global _pool
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="convolab",
                                       initializer=_register_worker)
        pool = _pool
    _keep_off(_current_cpu())
    futures = [pool.submit(fn, item) for item in items[1:]]
    try:
        first = fn(items[0])
    finally:
        rest = [f.result() for f in futures]
    return [first, *rest]
