"""``convolab calibrate``: measure the cost model's machine constants and store them."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure GEMM rate, memory bandwidth, call overhead and each algorithm's rate for algorithm='auto'",
    )
    p.add_argument("--threads", type=int, default=None, help="thread count to calibrate for (default: all)")
    p.set_defaults(func=run)


def run(args) -> int:
    import numba
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from .. import select
    from ..errors import ConvError

    if args.threads is not None:
        if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
            raise ConvError(f"--threads must be in 1..{numba.config.NUMBA_NUM_THREADS}, got {args.threads}")
        numba.set_num_threads(args.threads)
    console = Console()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("calibrating", total=len(select.CALIBRATION_LAYERS) * select.CALIBRATION_PASSES)
        m = select.calibrate(progress=lambda what: progress.update(task, advance=1, description=what))
    console.print(
        f"GEMM {m.gemm_gflops:.0f} GFLOP/s, copy bandwidth {m.bandwidth_gbs:.1f} GB/s, "
        f"call overhead {m.call_seconds * 1e6:.1f} us, threads {numba.get_num_threads()}"
    )
    table = Table(title="rate of each algorithm's multiplications on the calibration layers (2 flops each)")
    table.add_column("algorithm")
    table.add_column("median GFLOP/s", justify="right")
    table.add_column("best GFLOP/s", justify="right")
    table.add_column("layers", justify="right")
    for name, med, best, n in select.calibration_report(m):
        table.add_row(name, f"{med:.0f}", f"{best:.0f}", str(n))
    console.print(table)
    console.print(f"stored in {select.CALIBRATION.path}")
    return 0
