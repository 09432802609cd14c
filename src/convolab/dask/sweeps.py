"""The project's sweeps as Dask tasks: the deviation sweep, the calibration, the accuracy study.

Each sweep is a list of independent cases; here each case (or group of cases) is one task on a
`distributed` cluster and the client puts the results back in the serial order, so the
commands print the same tables as the serial run:

* ``convolab deviations sweep``: one task per layer (`convolab.numerics.deviations.sweep` on
  that layer; with PyTorch, one task per group of layers, since each call starts one PyTorch
  subprocess per configuration). The outputs are computed from seeded data by fixed code:
  byte-identical to the serial tables and JSON for the deterministic algorithms and orders.
* ``convolab accuracy``: one task per (kernel size, algorithm) (`convolab.accuracy.study`
  with that one variant); seeded, so the same table.
* ``convolab calibrate``: the calibration layers in groups, each group timed by
  `convolab.costmodel.calibrate` on a worker; the client recovers every (algorithm, layer) time
  from the group's samples, fits the cost model over all layers as ``calibrate`` does, and
  stores the result under the workers' machine key (CPU, thread count) on the client and on
  every worker. Timings are not reproducible, serial or not: the table has the same rows, not
  the same numbers. Workers sharing a machine disturb each other's timings (memory bandwidth,
  turbo): calibrate with one worker per machine.

`client` opens the cluster the command-line flags name: ``--scheduler ADDRESS`` connects to a
running scheduler, ``--dask`` starts a local cluster (`convolab.dask.cluster.local_cluster`:
one single-threaded worker process per core).
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from ..errors import ConvError
from .cluster import local_cluster


@contextlib.contextmanager
def client(scheduler: str | None = None, local: bool = False, threads_per_worker: int = 1):
    """A `distributed.Client`: to the scheduler at ``scheduler``, or (``local``) to a new
    local cluster closed on exit."""
    from distributed import Client

    if scheduler:
        try:
            c = Client(scheduler, timeout="20s")
        except OSError as e:
            raise ConvError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        with c:
            yield c
    elif local:
        with local_cluster(threads_per_worker=threads_per_worker) as cluster, Client(cluster) as c:
            yield c
    else:
        raise ConvError("give a scheduler address or local=True")


def describe(c) -> str:
    """One line: the scheduler, its workers and their threads."""
    info = c.scheduler_info()
    workers = info["workers"].values()
    threads = sum(w["nthreads"] for w in workers)
    return f"Dask scheduler {info.get('address', '?')}: {len(workers)} workers, {threads} threads"


def total_threads(c) -> int:
    return max(1, sum(w["nthreads"] for w in c.scheduler_info()["workers"].values()))


def map_cases(c, fn, cases: list, progress=None, weights=None) -> list:
    """``[fn(case) for case in cases]`` as tasks on ``c``'s cluster, results in order.

    ``progress(done, total)`` is called as tasks finish, counting ``weights[i]`` for case i
    (default 1 each)."""
    from distributed import as_completed

    if not cases:
        return []
    futures = c.map(fn, cases, pure=False)
    where = {f.key: i for i, f in enumerate(futures)}
    weights = [1] * len(cases) if weights is None else list(weights)
    done, total = 0, sum(weights)
    for f in as_completed(futures):
        if f.status == "error":
            f.result()  # raises the task's exception here
        done += weights[where[f.key]]
        if progress is not None:
            progress(done, total)
    return c.gather(futures)


def _groups(n: int, k: int) -> list[list[int]]:
    """0..n-1 in k contiguous groups of nearly equal size."""
    k = max(1, min(n, k))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(k)]


# --------------------------------------------------------------------------- deviation sweep
def _sweep_group(layers: dict, **kwargs):
    from ..numerics import deviations

    return deviations.sweep(layers, **kwargs)


def deviations_sweep(c, layers: dict, *, orders, algorithms=None, torch: bool = True, isas=(),
                     progress=None) -> list:
    """`convolab.numerics.deviations.sweep` with its layers as tasks on ``c``'s cluster; the
    same list of `LayerResult`, in the same order."""
    items = list(layers.items())
    k = total_threads(c) if torch else len(items)
    groups = [dict(items[i] for i in g) for g in _groups(len(items), k)]
    fn = functools.partial(_sweep_group, orders=tuple(orders), algorithms=algorithms, torch=torch,
                           isas=tuple(isas))
    parts = map_cases(c, fn, groups, progress=progress, weights=[len(g) for g in groups])
    return [r for part in parts for r in part]


# --------------------------------------------------------------------------- accuracy study
def _study_case(case, **kwargs):
    from ..accuracy import study

    r, name = case
    rows = study(variants={r: [] if name is None else [name]}, **kwargs)
    return rows[0] if name is None else rows[1]


def accuracy_study(c, batch: int, channels: int, out_channels: int, size: int, bits, seed: int,
                   variants: dict | None = None, progress=None) -> list:
    """`convolab.accuracy.study` with one task per (kernel size, algorithm): the same rows."""
    from ..accuracy import VARIANTS

    cases = [(r, n) for r, names in (variants or VARIANTS).items() for n in [None, *names]]
    fn = functools.partial(_study_case, batch=batch, channels=channels, out_channels=out_channels,
                           size=size, bits=tuple(bits), seed=seed)
    return map_cases(c, fn, cases, progress=progress)


# --------------------------------------------------------------------------- calibration
def _calibrate_group(layers: list, threads: int | None):
    """Time ``layers`` on this worker (`convolab.costmodel.calibrate`); its machine key and
    thread count with the result."""
    import numba

    from .. import cache, costmodel

    if threads is not None:
        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise ConvError(f"threads must be in 1..{numba.config.NUMBA_NUM_THREADS} on worker, got {threads}")
        numba.set_num_threads(threads)
    return costmodel.calibrate(layers=layers), cache.machine_key(), numba.get_num_threads()


def _store_calibration(key: str, entry: dict) -> None:
    from .. import cache

    cache.CALIBRATION.put(key, entry)


def merge_calibrations(layers: list, groups: list[list[int]], machines: list):
    """One `convolab.costmodel.Machine` from calibrations of groups of ``layers``.

    Each of ``machines`` is what `convolab.costmodel.calibrate` returned for the layers
    ``groups[i]``; its samples give each (algorithm, layer) time back as ``2^(log2 measured /
    fitted) x fitted`` from the group's fit (or, where that fit is not positive, as
    ``2^(log2 seconds per multiply) multiplies + call overhead``, which loses the times below
    the call overhead). The machine constants are the parts' medians; the per-kernel fit is
    `convolab.costmodel.calibrate`'s, over all layers.
    """
    from .. import costmodel, registry
    from ..spec import ConvSpec

    specs = [ConvSpec.from_shapes(xs, ws, st, pad, 1, grp, np.float32) for xs, ws, st, pad, grp in layers]
    call = float(np.median([m.call_seconds for m in machines]))
    seconds: dict[tuple[str, int], float] = {}
    for idx, m in zip(groups, machines, strict=True):
        for key, rows in m.samples.items():
            a = registry.get(key.split("/")[0])
            mine = [i for i in idx if a.supports(specs[i]) is None and a.cost_key(specs[i]) == key]
            if len(mine) != len(rows):
                raise ConvError(f"calibration samples of {key} do not match its layers ({len(rows)} vs {len(mine)})")
            coef = np.asarray(m.linear.get(key, []), dtype=float)
            for i, row in zip(mine, rows, strict=True):
                fitted = float(np.asarray(costmodel.cost_terms(a, specs[i])) @ coef) if coef.size else 0.0
                if fitted > 0 and len(row) > m.n_features + 1:
                    seconds[key, i] = 2.0 ** row[m.n_features + 1] * fitted
                else:
                    seconds[key, i] = 2.0 ** row[m.n_features] * a.multiplies(specs[i]) + m.call_seconds
    samples, linear = costmodel.fit_kernels(specs, seconds, call)
    gemm = float(np.median([m.gemm_gflops for m in machines]))
    bw = float(np.median([m.bandwidth_gbs for m in machines]))
    return costmodel.Machine(gemm, bw, call, samples, linear)


def calibrate(c, layers: list | None = None, threads: int | None = None, progress=None):
    """`convolab.costmodel.calibrate` with its layers timed in groups on ``c``'s workers.

    Returns ``(machine, threads)``: the merged `convolab.costmodel.Machine` (stored under the
    workers' machine key on the client and on every worker) and the workers' thread count.
    Refuses workers of different CPUs or thread counts (calibrate each kind on its own).
    """
    from .. import cache, costmodel

    todo = list(costmodel.CALIBRATION_LAYERS if layers is None else layers)
    # round-robin groups: the layer list is ordered by kind, so each group gets a mix
    k = min(len(todo), 2 * total_threads(c))
    groups = [list(range(i, len(todo), k)) for i in range(k)]
    fn = functools.partial(_calibrate_group, threads=threads)
    out = map_cases(c, fn, [[todo[i] for i in g] for g in groups], progress=progress,
                    weights=[len(g) for g in groups])
    keys = {key for _, key, _ in out}
    if len(keys) != 1:
        raise ConvError(f"the workers differ in CPU or thread count ({sorted(keys)}): calibrate "
                        "each kind of worker with a cluster of its own")
    m = merge_calibrations(todo, groups, [part for part, _, _ in out])
    key = keys.pop()
    cache.CALIBRATION.put(key, m.to_json())
    c.run(_store_calibration, key, m.to_json())
    return m, out[0][2]
