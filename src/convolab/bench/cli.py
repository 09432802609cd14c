"""``convolab bench``: run a layer suite through the algorithms and the peers, side by side."""

from __future__ import annotations

import json
import os


def add_parser(sub) -> None:
    from .suites import SUITES

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
    p.add_argument("--threads", type=int, default=None, help="threads for convolab, BLAS, peers (default: all)")
    p.add_argument("--layers", default=None, help="only layers whose name contains one of these (comma-separated)")
    p.add_argument("--json", dest="json_path", default=None, metavar="FILE", help="write all records as JSON")
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


def run(args) -> int:
    if getattr(args, "device", "cpu") == "cuda":
        from ..gpu import bench as gpu_bench

        return gpu_bench.run(args)
    import numba
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
    from threadpoolctl import threadpool_limits

    from ..errors import ConvError
    from ..registry import algorithms, get
    from ..select import prewarm
    from . import peers as peers_mod
    from .runner import auto_quality, bench_layer, geomean_ratios, machine_info, to_json
    from .suites import suite

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
    algos = (
        [get(n.strip()) for n in args.algorithms.split(",") if n.strip()]
        if args.algorithms
        else algorithms()
    )
    peer_list = peers_mod.resolve(args.peers)
    use_auto = args.auto and not args.algorithms
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
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
        records = []
        total = len(layers) * (len(algos) + len(peer_list) + use_auto)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        ) as progress:
            task = progress.add_task("bench", total=total)
            for name, spec in layers:
                progress.update(task, description=f"{name}")
                records += bench_layer(
                    name, spec, algos, peer_list, args.repeat, threads, auto=use_auto,
                    step=lambda impl, name=name: progress.update(
                        task, advance=1, description=f"{name}: {impl}"
                    ),
                )

    table = Table(title=f"suite {args.suite}, batch {batch}, {threads} threads")
    for col in ("layer", "impl", "ms", "GFLOP/s", "% peak", "workspace MiB", "peak MiB", "max rel err"):
        table.add_column(col, justify="left" if col in ("layer", "impl") else "right")
    last = None
    for r in records:
        if r.skipped:
            continue
        table.add_row(
            r.layer if r.layer != last else "",
            r.impl + (" (peer)" if r.kind == "peer" else "") + (f" -> {r.chosen}" if r.chosen else ""),
            f"{r.ms:.3f}",
            f"{r.gflops:.1f}",
            f"{100 * r.gflops / info.gemm_gflops:.0f}",
            _mib(r.workspace_bytes),
            _mib(r.peak_bytes),
            f"{r.max_rel_err:.1e}",
            end_section=False,
        )
        last = r.layer
    console.print(table)
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
    if args.json_path:
        with open(args.json_path + ".tmp", "w") as f:
            json.dump(to_json(info, args.suite, batch, records), f, indent=1)
        os.replace(args.json_path + ".tmp", args.json_path)
        console.print(f"wrote {args.json_path}")
    return 0
