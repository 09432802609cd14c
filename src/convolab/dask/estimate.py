"""What a chunked convolution's graph costs, and a scaling estimate to N workers from it.

`conv_graph` builds the graph of `convolab.dask.conv2d` for an input of a given shape and
chunking (lazily, on zeros: nothing is computed) and counts, per block task, the input bytes it
reads (its chunk's share plus the halo), the halo bytes that come from other chunks, the output
bytes and the direct-convolution FLOPs.

`scaling` turns that into a simple model of N workers of one thread each: the blocks run in
``ceil(T / N)`` waves; a task takes the longer of its arithmetic (FLOPs over the measured
one-thread rate) and its traffic (input with halo + output bytes over the worker's I/O
bandwidth: its share of one store, or a link of its own), plus the scheduler's per-task cost;
the scheduler handles tasks one after another, so no run is shorter than ``T x overhead``.
Blocks are independent (the graph's critical path is one task), so the model's limits are the
wave quantisation and the I/O bandwidth, not dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from ..spec import ConvSpec
from .halo import window_blocks


@dataclass(frozen=True)
class GraphStats:
    """Per-graph totals and per-task figures of a chunked convolution."""

    tasks: int  # block tasks (convolutions)
    graph_tasks: int  # every task of the graph: input chunks, halo slices, blocks
    flops: int  # direct-convolution FLOPs of all blocks
    task_flops_max: int
    input_bytes: int  # the input array
    read_bytes: int  # what the block tasks read (chunks + halos)
    halo_bytes: int  # of which from other chunks than the block's own
    output_bytes: int
    task_bytes_max: int  # largest block: input with halo + output
    weight_bytes: int

    @property
    def halo_fraction(self) -> float:
        return self.halo_bytes / self.input_bytes


def conv_graph(x_shape, chunks, w_shape, stride=1, padding=0, dilation=1, groups=1,
               dtype=np.float32) -> GraphStats:
    """`GraphStats` of ``convolab.dask.conv2d`` for an input of ``x_shape`` chunked as ``chunks``."""
    from .conv import conv2d

    spec = ConvSpec.from_shapes(x_shape, w_shape, stride, padding, dilation, groups, dtype)
    x = da.zeros(x_shape, chunks=chunks, dtype=dtype)
    y = conv2d(x, np.zeros(w_shape, dtype=dtype), None, stride, padding, dilation, groups,
               algorithm="direct")
    graph_tasks = len(y.__dask_graph__())
    item = np.dtype(dtype).itemsize
    pl, pr, pt, pb = spec.padding
    bhs = window_blocks(x.chunks[2], (pt, pb), spec.stride[0], spec.dilated_R)
    bws = window_blocks(x.chunks[3], (pl, pr), spec.stride[1], spec.dilated_S)
    tasks = flops = fmax = read = halo = out = tmax = 0
    for n in x.chunks[0]:
        for bh in bhs:
            for bw in bws:
                rows, cols = bh.rows[1] - bh.rows[0], bw.rows[1] - bw.rows[0]
                # the rows and columns of the block's largest piece count as its own
                own = max(p[2] - p[1] for p in bh.pieces) * max(p[2] - p[1] for p in bw.pieces)
                b_in = n * spec.C * rows * cols * item
                b_out = n * spec.K * bh.size * bw.size * item
                f = 2 * n * spec.K * bh.size * bw.size * spec.reduction_length
                tasks += 1
                flops += f
                fmax = max(fmax, f)
                read += b_in
                halo += b_in - n * spec.C * own * item
                out += b_out
                tmax = max(tmax, b_in + b_out)
    return GraphStats(tasks, graph_tasks, flops, fmax, int(np.prod(x_shape)) * item, read, halo, out,
                      tmax, int(np.prod(w_shape)) * item)


def scaling(stats: GraphStats, workers, rate_gflops: float, bandwidth_gbs: float,
            overhead_s: float = 1e-3, shared: bool = True) -> list[dict]:
    """Modelled run time per worker count (module notes).

    Parameters
    ----------
    stats : GraphStats
    workers : iterable of int
    rate_gflops : float
        One thread's convolution rate (direct-convolution GFLOP/s), e.g. measured on one block.
    bandwidth_gbs : float
        I/O bandwidth (store or network), GB/s: shared by all workers, or (``shared=False``)
        each worker's own.
    overhead_s : float
        Scheduler and worker cost per task, seconds.
    shared : bool
        Whether the workers share ``bandwidth_gbs`` (one store) or each has it.

    Returns
    -------
    list of dict
        ``workers``, ``waves``, ``seconds``, ``speedup`` (over one worker), ``efficiency``,
        ``bytes_per_task`` (mean input + output), ``bound`` ("compute", "io" or "scheduler").
    """
    per_task_flops = stats.flops / stats.tasks
    per_task_bytes = (stats.read_bytes + stats.output_bytes) / stats.tasks
    rows = []
    base = None
    for n in workers:
        waves = -(-stats.tasks // n)
        active = min(n, stats.tasks)
        compute = per_task_flops / (rate_gflops * 1e9)
        io = per_task_bytes / (bandwidth_gbs * 1e9 / (active if shared else 1))
        t = waves * (max(compute, io) + overhead_s)
        sched = stats.tasks * overhead_s
        bound = "io" if io > compute else "compute"
        if sched > t:
            t, bound = sched, "scheduler"
        base = t if base is None else base
        rows.append(dict(workers=n, waves=waves, seconds=t, speedup=base / t,
                         efficiency=base / t / n * workers[0], bytes_per_task=per_task_bytes,
                         bound=bound))
    return rows
