"""Workers for convolab's Dask graphs: a local cluster with the thread counts set, the memory a
task may use, and the peak memory each worker reached.

A Dask worker runs ``threads_per_worker`` tasks at once and each task's convolution runs on
convolab's threads (``NUMBA_NUM_THREADS``, read when the worker process imports Numba): a
worker with one task thread should run its convolutions on one thread, or two workers on two
cores start four. `local_cluster` sets ``NUMBA_NUM_THREADS`` of its worker processes to their
task threads.

Memory: a worker keeps, besides the tasks running, the input chunks that wait for their
neighbours' halo reads and the outputs on their way to a store; `task_budget` allows each
running task half of its share of the worker's ``memory_limit`` (``memory_limit / threads /
2``), and the graph builders refuse a chunking whose tasks need more (`check_task_bytes`).
"""

from __future__ import annotations

import os
import resource

from ..errors import ConvError


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def local_cluster(n_workers: int | None = None, threads_per_worker: int = 1, memory_limit="auto",
                  work_stealing: bool = False, **kwargs):
    """A `distributed.LocalCluster` of worker processes whose convolutions run on
    ``threads_per_worker`` threads each.

    Parameters
    ----------
    n_workers : int, optional
        Default: the CPUs this process may use divided by ``threads_per_worker``.
    threads_per_worker : int
        Tasks a worker runs at once, and the thread count of each task's convolution.
    memory_limit : str, int or float
        Per worker, as `distributed.LocalCluster` takes it (``"512MiB"``, bytes, ``"auto"``).
    work_stealing : bool
        Let the scheduler move queued tasks to idle workers (Dask's default is on). Off by
        default here: a block of `convolab.dask.conv2d` is placed with its input chunk, and a
        stolen one takes that chunk along (64 MiB for a 512 x 512 x 64 block: 2 s of transfers
        in one of three runs of the 4096 x 4096 overhead benchmark on two workers).
    **kwargs
        Passed to `distributed.LocalCluster` (``dashboard_address`` defaults to None: none).

    Returns
    -------
    distributed.LocalCluster
    """
    from distributed import LocalCluster

    if threads_per_worker < 1:
        raise ConvError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_workers is None:
        n_workers = max(1, cpus // threads_per_worker)
    env = dict(kwargs.pop("env", {}))
    env.setdefault("NUMBA_NUM_THREADS", str(threads_per_worker))
    kwargs.setdefault("dashboard_address", None)
    import dask

    with dask.config.set({"distributed.scheduler.work-stealing": bool(work_stealing)}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                            processes=True, memory_limit=memory_limit, env=env, **kwargs)


def current_client():
    """The default `distributed.Client` of this process, or None (no distributed scheduler)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is in the dask extra
        return None
    try:
        return default_client()
    except ValueError:
        return None


def task_budget(memory_limit: int | None = None) -> int | None:
    """Bytes one running task may use: ``memory_limit`` if given, else from the current
    distributed client's workers (the least ``memory_limit / threads / 2``), else None (no
    limit known: the local schedulers)."""
    if memory_limit is not None:
        return int(memory_limit)
    client = current_client()
    if client is None:
        return None
    budgets = [
        w["memory_limit"] / max(1, w["nthreads"]) / 2
        for w in client.scheduler_info()["workers"].values()
        if w.get("memory_limit")
    ]
    return int(min(budgets)) if budgets else None


def check_task_bytes(need: int, budget: int | None, what: str, advice: str) -> None:
    """Refuse a chunking whose tasks need more than ``budget`` bytes (see the module notes)."""
    if budget is not None and need > budget:
        raise ConvError(
            f"{what} needs about {_mib(need)} per task but a task may use {_mib(budget)} "
            f"(memory_limit, or half of a worker's memory limit per thread): {advice}"
        )


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_peak_memory(client) -> dict[str, int]:
    """Peak resident memory (bytes) of every worker process since it started."""
    return client.run(_peak_rss)


def worker_memory_limits(client) -> dict[str, int]:
    """Each worker's ``memory_limit`` in bytes (0: none)."""
    return {a: int(w.get("memory_limit") or 0)
            for a, w in client.scheduler_info()["workers"].items()}
