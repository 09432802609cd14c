"""``convolab calibrate``: measure the cost model's machine constants and store them."""

from __future__ import annotations

from ._common import add_json, write_json
from ._common import console as make_console


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure GEMM rate, memory bandwidth, call overhead and each algorithm's rate for algorithm='auto'",
    )
    p.add_argument("--threads", type=int, default=None, help="thread count to calibrate for (default: all)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="time the layers as tasks on this Dask scheduler's workers (one per machine)")
    g.add_argument("--dask", action="store_true",
                   help="time the layers as tasks on a local Dask cluster (workers of --threads threads)")
    add_json(p, "the measured constants and each algorithm's rates")
    p.set_defaults(func=run)


def run(args) -> int:
    import numba
    from rich.progress import Progress
    from rich.table import Table

    from .. import costmodel, select
    from ..errors import ConvError

    console = make_console()
    if args.scheduler or args.dask:
        from ..dask import sweeps

        with sweeps.client(args.scheduler, args.dask, threads_per_worker=args.threads or 1) as c:
            make_console(stderr=True).print(sweeps.describe(c))
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("calibrating", total=len(costmodel.CALIBRATION_LAYERS))
                m, threads = sweeps.calibrate(c, threads=args.threads if args.scheduler else None,
                                              progress=lambda i, n: progress.update(task, completed=i))
        where = " and on every worker"
    else:
        if args.threads is not None:
            if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
                raise ConvError(f"--threads must be in 1..{numba.config.NUMBA_NUM_THREADS}, got {args.threads}")
            numba.set_num_threads(args.threads)
        with Progress(console=console, transient=True) as progress:
            steps = len(costmodel.CALIBRATION_LAYERS) * costmodel.CALIBRATION_PASSES
            task = progress.add_task("calibrating", total=steps)
            m = select.calibrate(progress=lambda what: progress.update(task, advance=1, description=what))
        threads, where = numba.get_num_threads(), ""
    console.print(
        f"GEMM {m.gemm_gflops:.0f} GFLOP/s, copy bandwidth {m.bandwidth_gbs:.1f} GB/s, "
        f"call overhead {m.call_seconds * 1e6:.1f} us, threads {threads}"
    )
    table = Table(title="rate of each algorithm's multiplications on the calibration layers (2 flops each)")
    table.add_column("algorithm")
    table.add_column("median GFLOP/s", justify="right")
    table.add_column("best GFLOP/s", justify="right")
    table.add_column("layers", justify="right")
    for name, med, best, n in select.calibration_report(m):
        table.add_row(name, f"{med:.0f}", f"{best:.0f}", str(n))
    console.print(table)
    console.print(f"stored in {select.CALIBRATION.path}{where}")
    write_json(args.json, {"threads": threads, "machine": m.to_json(),
                           "rates": [dict(algorithm=n, median_gflops=med, best_gflops=b, layers=k)
                                     for n, med, b, k in select.calibration_report(m)]}, console)
    return 0
