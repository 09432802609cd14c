"""``convolab bench``: run a layer suite through the algorithms and the peers, side by side."""

from __future__ import annotations

from ._common import add_json, add_threads, write_json
from ._common import console as make_console


def add_parser(sub) -> None:
    from ..bench.suites import SUITES

    p = sub.add_parser(
        "bench",
        help="benchmark algorithms and peers on a layer suite",
        description="Time every algorithm (and peer) on each layer of a suite: ms, GFLOP/s "
        "(direct-convolution FLOPs), workspace, measured peak allocation, max relative error "
        "against float64. Published figures: run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset.",
    )
    p.add_argument("--suite", default="default", metavar="NAME",
                   help=f"layer suite: {', '.join(sorted(SUITES))} (default: default)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the suite's: 1, im2win12: 8)")
    p.add_argument("--algorithms", default=None, help="comma-separated algorithm names (default: all registered)")
    p.add_argument("--peers", default=None, help="comma-separated peers: torch (= torch,torch-im2col)")
    p.add_argument("--no-auto", dest="auto", action="store_false",
                   help="do not time algorithm='auto' (on by default when --algorithms is not given)")
    p.add_argument("--repeat", type=int, default=5, help="timed calls per measurement; the minimum is kept")
    add_threads(p, "threads for convolab, BLAS, peers")
    p.add_argument("--layers", default=None, help="only layers whose name contains one of these (comma-separated)")
    add_json(p, "all records")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="a chart of the run: GFLOP/s per layer, auto, the fastest algorithm, the peers "
                        "and the GEMM rate (needs the plot extra, matplotlib)")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="with --plot: chart an earlier run's --json file instead of running")
    p.add_argument("--dtype", default="float32", metavar="DTYPE",
                   help="float32 (default): the float algorithms and peers; int8: every method of "
                        "convolab.quant.conv2d_int8 (exact int32) against ONNX Runtime's QLinearConv and "
                        "PyTorch's quantized conv on the same int8 codes (CPU; --algorithms names methods)")
    g = p.add_argument_group("GPU (--device cuda: the Triton kernels of convolab.gpu against cuDNN)")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cpu (default) or cuda; with cuda, --suite takes a comma-separated list of name@batch "
                        "(default: im2win12@128,im2win12@1,resnet50@32,resnet50@1,cuconv@1)")
    g.add_argument("--dtypes", default=None,
                   help="cuda: comma-separated modes among float32 (IEEE), tf32, float16, bfloat16 (default: all)")
    g.add_argument("--markdown", default=None, metavar="FILE", help="cuda: write the table and summary as markdown")
    g.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="cuda: stop starting new layers after S seconds (results so far are kept)")
    g.add_argument("--max-pixels", type=int, default=None, metavar="P",
                   help="cuda: only layers with at most P output pixels per image (OH*OW)")
    g.add_argument("--deviation-layers", default=None, metavar="KEYS",
                   help="cuda: ';'-separated substrings of 'suite@batch layer' for the deviation row "
                        "(distinct outputs of convolab plans and of cuDNN's configurations)")
    p.set_defaults(func=run)


def _mib(b):
    return "" if b is None else f"{b / 2**20:.1f}"


#: values of ``--dtype``
DTYPES = ("float32", "int8")


def _threads_and_layers(args):
    """Checked ``--repeat`` and ``--threads`` (set for Numba), and the suite's layers that
    ``--layers`` selects."""
    import numba

    from ..bench.suites import suite
    from ..errors import ConvError

    if args.repeat < 1:
        raise ConvError(f"--repeat must be >= 1, got {args.repeat}")
    threads = args.threads or numba.config.NUMBA_NUM_THREADS
    if threads < 1 or threads > numba.config.NUMBA_NUM_THREADS:
        raise ConvError(f"--threads must be in 1..{numba.config.NUMBA_NUM_THREADS}, got {threads}")
    numba.set_num_threads(threads)
    layers = suite(args.suite, args.batch)
    if args.layers:
        keys = [k.strip() for k in args.layers.split(",") if k.strip()]
        layers = [(n, s) for n, s in layers if any(k in n for k in keys)]
        if not layers:
            raise ConvError(f"no layer of suite {args.suite!r} matches --layers {args.layers!r}")
    return threads, layers


def run(args) -> int:
    from ..errors import ConvError

    dtype = getattr(args, "dtype", "float32")
    if dtype not in DTYPES:
        raise ConvError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if getattr(args, "device", "cpu") == "cuda":
        if dtype != "float32":
            raise ConvError(f"--dtype {dtype} runs on the CPU only (convolab.quant); drop --device cuda "
                            "(the GPU benchmark's precisions are chosen with --dtypes)")
        from ..gpu import bench as gpu_bench

        return gpu_bench.run(args)
    if getattr(args, "from_json", None):
        if not args.plot:
            raise ConvError("--from-json charts an earlier run: give --plot FILE.png too")
        from ..bench.plot import from_json

        make_console().print(f"wrote {from_json(args.from_json, args.plot)}")
        return 0
    if getattr(args, "plot", None) and dtype != "float32":
        raise ConvError(f"--plot charts float32 runs; --dtype {dtype} has no chart yet")
    if dtype == "int8":
        return run_int8(args)
    from threadpoolctl import threadpool_limits

    from ..bench import peers as peers_mod
    from ..bench.runner import auto_quality, bench_layer, geomean_ratios, machine_info, to_json
    from ..registry import get, list_algorithms
    from ..select import prewarm

    threads, layers = _threads_and_layers(args)
    algos = (
        [get(n.strip()) for n in args.algorithms.split(",") if n.strip()]
        if args.algorithms
        else list_algorithms()
    )
    peer_list = peers_mod.resolve(args.peers)
    use_auto = args.auto and not args.algorithms
    console = make_console()
    batch = layers[0][1].N
    with threadpool_limits(limits=threads, user_api="blas"):
        info = machine_info(threads)
        console.print(f"[bold]convolab bench[/bold] suite={args.suite} batch={batch} repeat={args.repeat}")
        console.print(f"CPU: {info.cpu}; threads: {threads}; BLAS: {info.blas}")
        env = ", ".join(f"{k}={v}" for k, v in info.env.items()) or "none set"
        console.print(
            f"NumPy float32 GEMM 2048^3: {info.gemm_gflops:.0f} GFLOP/s (peak); "
            f"OpenBLAS env: {env}; numpy {info.numpy}, python {info.python}"
        )
        with console.status("compiling kernels (in a subprocess, so this process loads the cache)"):
            prewarm(algos, [s for _, s in layers])
        records = _run_layers(
            console, layers, len(algos) + len(peer_list) + use_auto,
            lambda name, spec, step: bench_layer(name, spec, algos, peer_list, args.repeat,
                                                 threads, auto=use_auto, step=step))
    _render_table(
        console, f"suite {args.suite}, batch {batch}, {threads} threads", records,
        ("ms", "GFLOP/s", "% peak", "workspace MiB", "peak MiB", "max rel err"),
        lambda r: (r.impl + (" (peer)" if r.kind == "peer" else "") + (f" -> {r.chosen}" if r.chosen else ""),
                   f"{r.ms:.3f}", f"{r.gflops:.1f}", f"{100 * r.gflops / info.gemm_gflops:.0f}",
                   _mib(r.workspace_bytes), _mib(r.peak_bytes), f"{r.max_rel_err:.1e}"))
    skipped = [r for r in records if r.skipped]
    if skipped:
        console.print(f"[dim]{len(skipped)} algorithm/layer pairs not supported (e.g. {skipped[0].impl} on "
                      f"{skipped[0].layer}: {skipped[0].skipped})[/dim]")
    ratios = geomean_ratios(records)
    if ratios:
        by_ref: dict[str, list[str]] = {}
        for (a, p), (v, n) in ratios.items():
            by_ref.setdefault(p, []).append(f"{a} {v:.2f}x ({n})")
        for p, items in by_ref.items():
            console.print(f"geomean speed-up vs {p} (layers): " + ", ".join(items))
    quality = auto_quality(records)
    if quality:
        n = len(quality)
        within10 = sum(q <= 1.10 for *_, q in quality)
        within25 = sum(q <= 1.25 for *_, q in quality)
        worst = max(quality, key=lambda t: t[3])
        console.print(
            f"auto picked an algorithm within 10% of the fastest on {within10}/{n} layers, within 25% on "
            f"{within25}/{n}; worst: {worst[0]} chose {worst[1]}, {worst[3]:.2f}x {worst[2]}"
        )
    write_json(args.json, to_json(info, args.suite, batch, records), console)
    if args.plot:
        from ..bench.plot import plot

        console.print(f"wrote {plot(to_json(info, args.suite, batch, records), args.plot)}")
    return 0


def _run_layers(console, layers, per_layer: int, bench_one) -> list:
    """Compute: ``bench_one(name, spec, step)`` for each layer of the suite under a progress bar
    (``per_layer`` steps each); the records of all layers."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    records = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:
        task = progress.add_task("bench", total=len(layers) * per_layer)
        for name, spec in layers:
            progress.update(task, description=f"{name}")
            records += bench_one(name, spec, lambda impl, name=name: progress.update(
                task, advance=1, description=f"{name}: {impl}"))
    return records


def _render_table(console, title: str, records: list, columns: tuple, cells) -> None:
    """Render: one row per timed record (``cells(record)`` after the layer name, which is
    shown once per layer)."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("layer", "impl", *columns):
        table.add_column(col, justify="left" if col in ("layer", "impl", "out") else "right")
    last = None
    for r in records:
        if r.skipped:
            continue
        table.add_row(r.layer if r.layer != last else "", *cells(r))
        last = r.layer
    console.print(table)


def _num(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def run_int8(args) -> int:
    """``convolab bench --dtype int8``: the int8 methods of `convolab.quant` and the quantized
    peers per layer (`convolab.bench.int8`)."""
    from threadpoolctl import threadpool_limits

    from ..bench.int8 import bench_layer_int8, resolve_methods, resolve_peers
    from ..bench.runner import geomean_ratios, machine_info, to_json

    threads, layers = _threads_and_layers(args)
    methods = resolve_methods(args.algorithms)
    peer_list, missing = resolve_peers(args.peers)
    console = make_console()
    batch = layers[0][1].N
    with threadpool_limits(limits=threads, user_api="blas"):
        info = machine_info(threads)
        console.print(f"[bold]convolab bench[/bold] dtype=int8 suite={args.suite} batch={batch} "
                      f"repeat={args.repeat}")
        console.print(f"CPU: {info.cpu}; threads: {threads}; BLAS: {info.blas}; "
                      f"numpy {info.numpy}, python {info.python}")
        for name, why in missing.items():
            console.print(f"[dim]peer {name} left out: {why}[/dim]")
        records = _run_layers(
            console, layers, len(methods) + len(peer_list),
            lambda name, spec, step: bench_layer_int8(name, spec, methods, peer_list, args.repeat,
                                                      threads, step=step))
    _render_table(
        console, f"suite {args.suite}, batch {batch}, {threads} threads, int8 x int8", records,
        ("out", "ms", "GMAC/s", "exact err (int32)", "err / y_scale (uint8 out)"),
        lambda r: (r.impl + (" (peer)" if r.kind == "peer" else ""), r.output, f"{r.ms:.3f}",
                   f"{r.gmacs:.1f}", _num(r.max_abs_err, ".0f"), _num(r.max_err_y_scale, ".3f")))
    console.print(
        "[dim]exact err: max |y - reference.conv2d(xq, wq)| of the int32 result (0 = exact)\n"
        "err / y_scale: max |dequantised uint8 output - exact result * x_scale * w_scale\\[k]| / y_scale "
        "(0.5 = correctly rounded requantisation)[/dim]"
    )
    for r in (r for r in records if r.skipped):
        console.print(f"[dim]{r.impl} skipped on {r.layer}: {r.skipped}[/dim]")
    by_ref: dict[str, list[str]] = {}
    for (a, p), (v, n) in geomean_ratios(records).items():
        by_ref.setdefault(p, []).append(f"{a} {v:.3g}x ({n})")
    for p, items in by_ref.items():
        console.print(f"geomean speed-up vs {p} (its time / the method's; layers): " + ", ".join(items))
    if args.json:
        data = to_json(info, args.suite, batch, records)
        data["dtype"] = "int8"
        write_json(args.json, data, console)
    return 0
