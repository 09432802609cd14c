"""Thread helpers shared by the algorithms that split work over Python threads.

Algorithms whose inner loops are BLAS calls (the bilinear engine's per-point GEMMs, the FFT's
per-frequency products) run their GIL-free Numba / BLAS pieces on convolab's thread team
(`convolab.kernels.team`), with the BLAS held to one thread meanwhile, instead of nesting a
Numba parallel region around multi-threaded BLAS calls (two thread pools fighting for two
cores).
"""

from __future__ import annotations

from ._machine import worker_count  # noqa: F401 - the algorithms take it from here

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


_sched_getcpu = None


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


def run_threads(fn, items) -> list:
    """``[fn(item) for item in items]`` on convolab's thread team (`convolab.kernels.team`):
    thread t (the calling thread is 0) runs items t, t + T, t + 2T... of T threads, so with
    at most T items each runs on a thread of its own (the work must release the GIL to
    overlap); waits for all, returns the results in order, raises the first error."""
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    from .kernels import team

    results = [None] * len(items)

    def share(t, T):
        for i in range(t, len(items), T):
            results[i] = fn(items[i])

    team.run(share, (), min(len(items), worker_count()), own=lambda t, n: (t, n))
    return results
