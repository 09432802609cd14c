"""Scaling estimate of a chunked convolution to N Dask workers, from its task graph.

    python tools/dask_scaling.py                         # 1x64x4096x4096, 64 -> 64 3x3, chunks 512
    python tools/dask_scaling.py --chunks 128,128 --bandwidth 1.25 --per-worker
    python tools/dask_scaling.py --rate 45 --workers 1,2,4,8

Builds the graph of ``convolab.dask.conv2d`` lazily (`convolab.dask.estimate.conv_graph`:
tasks, bytes each block reads with its halo, output bytes, FLOPs) and models N single-threaded
workers (`convolab.dask.estimate.scaling`: waves of blocks, each the longer of its arithmetic
and its traffic, plus a per-task scheduler cost). ``--rate`` is one thread's convolution rate in
GFLOP/s; by default it is measured here, on one thread, on a 64 x 64 block of the layer
(``convolab.conv2d``, ``direct``, best of 5: a fraction of a second).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def ints(text):
    return tuple(int(v) for v in text.split(","))


def measure_rate(C: int, K: int, R: int, S: int) -> float:
    """One thread's rate (GFLOP/s) of the direct convolution on a 1 x C x 64 x 64 block."""
    import numba

    import convolab

    numba.set_num_threads(1)
    x = np.random.default_rng(0).standard_normal((1, C, 66, 66)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((K, C, R, S)).astype(np.float32)
    p = convolab.plan(x.shape, w, algorithm="direct")
    p(x)
    best = np.inf
    for _ in range(5):
        t = time.perf_counter()
        p(x)
        best = min(best, time.perf_counter() - t)
    return p.spec.flops / best / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=ints, default=(1, 64, 4096, 4096), help="N,C,H,W (default 1,64,4096,4096)")
    ap.add_argument("--chunks", type=ints, default=(512, 512), help="chunk H,W (default 512,512)")
    ap.add_argument("--kernel", type=ints, default=(64, 3, 3), help="K,R,S (default 64,3,3)")
    ap.add_argument("--padding", type=int, default=1)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--workers", type=ints, default=(1, 2, 4, 8, 16, 32, 64, 128))
    ap.add_argument("--rate", type=float, default=None, help="GFLOP/s of one thread (default: measured)")
    ap.add_argument("--bandwidth", type=float, default=1.25,
                    help="I/O GB/s: of the shared store, or each worker's with --per-worker (default 1.25, 10 GbE)")
    ap.add_argument("--per-worker", action="store_true", help="each worker has --bandwidth of its own")
    ap.add_argument("--overhead", type=float, default=1e-3, help="seconds per task (default 1e-3)")
    args = ap.parse_args(argv)

    from convolab.dask import estimate

    N, C, H, W = args.shape
    K, R, S = args.kernel
    s = estimate.conv_graph(args.shape, (N, C, *args.chunks), (K, C, R, S), stride=args.stride,
                            padding=args.padding)
    rate = args.rate if args.rate is not None else measure_rate(C, K, R, S)
    mib = 2**20
    print(f"conv {args.shape} -> {K} channels {R}x{S}, stride {args.stride}, padding {args.padding}, "
          f"chunks {args.chunks}")
    print(f"graph: {s.tasks} block tasks ({s.graph_tasks} tasks with the input chunks and halo slices); "
          f"per block: {s.flops / s.tasks / 1e9:.2f} GFLOP, reads {s.read_bytes / s.tasks / mib:.1f} MiB "
          f"(halo from other chunks {s.halo_bytes / s.tasks / mib:.2f} MiB), writes "
          f"{s.output_bytes / s.tasks / mib:.1f} MiB; weights {s.weight_bytes / 1024:.0f} KiB once per worker")
    print(f"totals: {s.flops / 1e12:.2f} TFLOP, input {s.input_bytes / 2**30:.2f} GiB read as "
          f"{s.read_bytes / 2**30:.2f} GiB (halo {100 * s.halo_fraction:.2f}%), "
          f"output {s.output_bytes / 2**30:.2f} GiB")
    where = "each worker's own" if args.per_worker else "shared"
    print(f"model: one thread {rate:.1f} GFLOP/s{' (measured here)' if args.rate is None else ''}, "
          f"I/O {args.bandwidth} GB/s {where}, {args.overhead * 1e3:.1f} ms per task")
    print(f"{'workers':>8} {'waves':>6} {'seconds':>9} {'speedup':>8} {'efficiency':>10}  bound")
    for r in estimate.scaling(s, list(args.workers), rate, args.bandwidth, args.overhead,
                              shared=not args.per_worker):
        print(f"{r['workers']:>8} {r['waves']:>6} {r['seconds']:>9.2f} {r['speedup']:>8.2f} "
              f"{r['efficiency']:>10.2f}  {r['bound']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
