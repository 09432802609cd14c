"""``convolab calibrate``: measure the cost model's machine constants and store them."""

from __future__ import annotations

from dataclasses import dataclass

from ._common import add_dask, add_json, add_threads, progress_bar, write_json
from ._common import console as make_console


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure GEMM rate, memory bandwidth, call overhead and each algorithm's rate for algorithm='auto'",
    )
    add_threads(p, "thread count to calibrate for")
    add_dask(p, "time the layers", "'s workers (one per machine)", " (workers of --threads threads)")
    add_json(p, "the measured constants and each algorithm's rates")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class CalibrateConfig:
    """The checked options of ``convolab calibrate``."""

    threads: int | None = None
    scheduler: str | None = None
    dask: bool = False


def _parse(args) -> CalibrateConfig:
    """Checked options: a local ``--threads`` within Numba's thread count (a Dask run's workers
    check their own)."""
    import numba

    from ..errors import ConvError

    if not (args.scheduler or args.dask) and args.threads is not None:
        if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
            raise ConvError(f"--threads must be in 1..{numba.config.NUMBA_NUM_THREADS}, got {args.threads}")
    return CalibrateConfig(args.threads, args.scheduler, args.dask)


def compute(cfg: CalibrateConfig, console=None, say=None) -> dict:
    """Calibrate (locally, or the layers timed as tasks on Dask's workers) and store the
    constants: the `convolab.costmodel.Machine` (``machine``), the thread count, each
    algorithm's rates (``rates``: name, median and best GFLOP/s, layers), where they were stored
    (``stored``) and whether on the workers too (``workers``). Figures only; with ``console`` a
    progress bar there; with Dask ``say(text)`` is told the cluster's one-line description once
    it is up."""
    import numba

    from .. import costmodel, select

    if cfg.scheduler or cfg.dask:
        from ..dask import sweeps

        with sweeps.client(cfg.scheduler, cfg.dask, threads_per_worker=cfg.threads or 1) as c:
            if say is not None:
                say(sweeps.describe(c))
            with progress_bar(console, "calibrating", len(costmodel.CALIBRATION_LAYERS)) as update:
                m, threads = sweeps.calibrate(c, threads=cfg.threads if cfg.scheduler else None,
                                              progress=lambda i, n: update(completed=i))
        workers = True
    else:
        if cfg.threads is not None:
            numba.set_num_threads(cfg.threads)
        steps = len(costmodel.CALIBRATION_LAYERS) * costmodel.CALIBRATION_PASSES
        with progress_bar(console, "calibrating", steps) as update:
            m = select.calibrate(progress=lambda what: update(advance=1, description=what))
        threads, workers = numba.get_num_threads(), False
    return {"machine": m, "threads": threads, "rates": select.calibration_report(m),
            "stored": str(select.CALIBRATION.path), "workers": workers}


def _render(console, result: dict) -> None:
    """The machine constants, the table of each algorithm's rates, where they were stored."""
    from rich.table import Table

    m = result["machine"]
    console.print(
        f"GEMM {m.gemm_gflops:.0f} GFLOP/s, copy bandwidth {m.bandwidth_gbs:.1f} GB/s, "
        f"call overhead {m.call_seconds * 1e6:.1f} us, threads {result['threads']}"
    )
    table = Table(title="rate of each algorithm's multiplications on the calibration layers (2 flops each)")
    table.add_column("algorithm")
    table.add_column("median GFLOP/s", justify="right")
    table.add_column("best GFLOP/s", justify="right")
    table.add_column("layers", justify="right")
    for name, med, best, n in result["rates"]:
        table.add_row(name, f"{med:.0f}", f"{best:.0f}", str(n))
    console.print(table)
    console.print(f"stored in {result['stored']}{' and on every worker' if result['workers'] else ''}")


def run(args) -> int:
    """Parse, compute (`compute`: calibrate and store), render (`_render`), write the JSON."""
    cfg = _parse(args)
    console = make_console()
    result = compute(cfg, console, say=make_console(stderr=True).print)
    _render(console, result)
    write_json(args.json, {"threads": result["threads"], "machine": result["machine"].to_json(),
                           "rates": [dict(algorithm=n, median_gflops=med, best_gflops=b, layers=k)
                                     for n, med, b, k in result["rates"]]}, console)
    return 0
