"""``convolab deviations``: measure and explain bitwise deviations of convolution outputs.

Sub-commands:

- ``sweep``: the isolated-layer sweep (`convolab.numerics.deviations`): bitwise classes across
  emulated accumulation orders, across convolab's algorithms and across PyTorch configurations.
- ``determinism``: common CNN layers under {1, 2 threads} x {AVX2, AVX-512} for PyTorch and
  {1, 2 threads} x {generic, host} Numba targets for convolab (one subprocess per configuration),
  with PyTorch's classes named by the emulated orders that reproduce them.
- ``network``: propagation through a real pretrained CNN on real photographs
  (`convolab.numerics.propagation`).
"""

from __future__ import annotations

import sys

from ..errors import ConvError
from ._common import add_json, write_json
from ._common import console as make_console


def _int_list(text: str) -> tuple[int, ...]:
    """``"2-7"`` or ``"1,2,4"`` (or a mix, ``"1-3,8"``) as a tuple of ints."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise ConvError(f"expected integers like '2-7' or '1,2,4', got {text!r}") from None
    if not out or min(out) < 1:
        raise ConvError(f"expected positive integers, got {text!r}")
    return tuple(out)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "deviations", help="bitwise deviations: orders, algorithms, PyTorch, a real CNN",
        description=__doc__.split("\n\n")[0],
    )
    dsub = p.add_subparsers(dest="deviations_command", metavar="WHAT")

    s = dsub.add_parser("sweep", help="isolated-layer sweep: classes per source of deviation")
    s.add_argument("--filters", type=_int_list, default=(1, 2, 3, 4), help="default 1-4")
    s.add_argument("--kernels", type=_int_list, default=(2, 3, 4, 5, 6, 7), help="default 2-7")
    s.add_argument("--channels", type=_int_list, default=(1, 2, 3), help="default 1-3")
    s.add_argument("--sizes", type=_int_list, default=(8, 16, 32), help="default 8,16,32")
    s.add_argument("--orders", nargs="+", default=None, help="emulated orders (default: standard)")
    s.add_argument("--algorithms", nargs="+", default=None,
                   help="convolab algorithms (default: every registered one)")
    s.add_argument("--no-torch", action="store_true", help="skip the PyTorch configurations")
    s.add_argument("--isas", default="SSE41,AVX,AVX2,AVX512_CORE",
                   help="oneDNN ISA limits for PyTorch, each at 1 and 2 threads")
    add_json(s, "per-layer results")
    s.add_argument("--layers", action="store_true", help="print every layer, not just the summary")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--scheduler", metavar="ADDRESS", help="run the layers as tasks on this Dask scheduler")
    g.add_argument("--dask", action="store_true", help="run the layers as tasks on a local Dask cluster")
    s.set_defaults(func=run_sweep)

    d = dsub.add_parser("determinism", help="PyTorch's classes vs convolab's on common layers")
    d.add_argument("--small", action="store_true", help="the small test layers instead")
    d.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    d.add_argument("--markdown", action="store_true", help="print a Markdown table")
    d.add_argument("--all-algorithms", action="store_true",
                   help="also the algorithms not registered deterministic")
    add_json(d, "the classes per layer")
    d.set_defaults(func=run_determinism)

    n = dsub.add_parser("network", help="propagation through a pretrained CNN on real photos")
    n.add_argument("--images", type=int, default=None, help="number of photographs (default all)")
    n.add_argument("--orders", nargs="*", default=None,
                   help="emulated orders to propagate (default: seq+fma lanes8 cb8+fma cb16+fma+cc16; "
                   "none: --orders with no names)")
    n.add_argument("--algorithms", nargs="*", default=None,
                   help="convolab algorithms (default: every registered one)")
    n.add_argument("--no-float64", action="store_true", help="skip the float64 network")
    n.add_argument("--isas", default="AVX2,AVX512_CORE",
                   help="oneDNN ISA limits for the PyTorch runs, each at 1 and 2 threads ('' for none)")
    n.add_argument("--plot", metavar="PNG", help="plot remaining bits per layer (plot extra)")
    add_json(n, "per-layer results")
    n.set_defaults(func=run_network)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_sweep(args) -> int:
    from rich.progress import Progress
    from rich.table import Table

    from ..numerics import deviations as dev
    from ..numerics.orders import STANDARD_ORDERS, parse_order

    console = make_console()
    orders = tuple(args.orders) if args.orders else STANDARD_ORDERS
    for o in orders:
        parse_order(o)
    layers = dev.sweep_layers(args.filters, args.kernels, args.channels, args.sizes)
    console.print(
        f"{len(layers)} layers: filters {list(args.filters)}, kernels {list(args.kernels)}, "
        f"channels {list(args.channels)}, inputs {list(args.sizes)}; float32 N(0,1) data, "
        f"no bias, stride 1, no padding"
    )
    if not args.no_torch:
        console.print(f"PyTorch: {{1, 2}} threads x ONEDNN_MAX_CPU_ISA {{{args.isas}}}, one "
                      "subprocess each")
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("layers", total=len(layers))
        kwargs = dict(orders=orders, algorithms=args.algorithms, torch=not args.no_torch,
                      isas=tuple(args.isas.split(",")),
                      progress=lambda i, n: prog.update(task, completed=i))
        if args.scheduler or args.dask:
            from ..dask import sweeps

            with sweeps.client(args.scheduler, args.dask) as c:
                make_console(stderr=True).print(sweeps.describe(c))
                results = sweeps.deviations_sweep(c, layers, **kwargs)
        else:
            results = dev.sweep(layers, **kwargs)
    summary = dev.summarize(results)
    if args.layers:
        t = Table(title="classes per layer")
        for col in ("layer", "terms", "orders", "algorithms", "torch", "all", "torch = order"):
            t.add_column(col)
        for r in results:
            t.add_row(
                r.layer, str(r.terms),
                *(str(len(r.classes.get(s, []))) or "-" for s in dev.SOURCES),
                str(r.all_classes),
                " | ".join(n[0] if n else "?" for n in r.torch_names),
            )
        console.print(t)
    t = Table(title="bitwise classes per source of deviation")
    for col in ("source", "layers", "1 class", "mean", "max", "least bits", "least mean bits",
                "worst error"):
        t.add_column(col)
    for src, e in summary.items():
        if src.startswith("torch_"):
            continue
        t.add_row(
            src, str(e["layers"]), f"{100 * e['one_class']:.0f}%", f"{e['mean']:.2f}",
            str(e["max"]), str(e.get("worst_bits", "-")),
            f"{e['worst_mean_bits']:.1f}" if "worst_mean_bits" in e else "-",
            f"{e['worst_error']:.1e}" if "worst_error" in e else "-",
        )
    console.print(t)
    console.print(
        f"sources: orders = {len(orders)} emulated orders ({', '.join(orders)}); algorithms = "
        "every registered convolab algorithm that supports the layer; torch = PyTorch's "
        "configurations; all = every output of every source together. least bits: fewest "
        "leading float32 mantissa bits two classes share in any element; least mean bits: the "
        "lowest mean over elements for any pair of classes; worst error: normwise vs float64."
    )
    for src, e in summary.items():
        if not src.startswith("torch_"):
            hist = ", ".join(f"{k}: {v}" for k, v in e["histogram"].items())
            console.print(f"  {src}: layers per class count {{{hist}}}")
    t = Table(title="classes vs products per output (C R S)")
    for col in ("terms", "layers", *(f"{s} mean/max" for s in dev.SOURCES)):
        t.add_column(col)
    rows = {s: {r[0]: r for r in dev.by_terms(results, s)} for s in dev.SOURCES}
    for label, n, _, _ in dev.by_terms(results, "orders"):
        t.add_row(
            label, str(n),
            *(f"{rows[s][label][2]:.2f} / {rows[s][label][3]}" if label in rows[s] else "-"
              for s in dev.SOURCES),
        )
    console.print(t)
    if "torch_orders" in summary:
        to = summary["torch_orders"]
        named = ", ".join(f"{k}: {v}" for k, v in to["named"].items())
        console.print(f"PyTorch classes reproduced by an emulated order: {named}; "
                      f"not reproduced: {to['unnamed']}")
        t = Table(title="PyTorch's classes: which configurations share one, and its order")
        for col in ("configurations in the class", "emulated order", "layers"):
            t.add_column(col)
        for labels, order, n in summary["torch_classes"][:12]:
            t.add_row(labels, order, str(n))
        console.print(t)
    if args.json:
        write_json(args.json, {"summary": summary, "layers": dev.to_json(results)}, console)
    return 0


def run_determinism(args) -> int:
    from rich.table import Table

    import convolab

    from ..numerics import determinism as det

    console = make_console()
    layers = det.SMALL_LAYERS if args.small else det.COMMON_LAYERS
    names = [a.name for a in convolab.list_algorithms() if a.deterministic or args.all_algorithms]
    console.print(f"convolab: {', '.join(names)} under {len(det.convolab_configs())} "
                  "configurations (NUMBA_NUM_THREADS 1, 2 x NUMBA_CPU_NAME generic, host)")
    conv = det.measure_convolab(layers, names)
    torch_m = None
    if not args.no_torch:
        console.print("PyTorch: torch.set_num_threads 1, 2 x ONEDNN_MAX_CPU_ISA AVX2, AVX512_CORE")
        torch_m = det.measure_torch(layers)
    header = ["layer", "PyTorch classes", "PyTorch classes: configs = emulated order",
              "PyTorch worst bits"]
    header += [f"convolab {n} classes" for n in names]
    rows = []
    for lname in layers:
        row = [lname]
        if torch_m is not None:
            c = torch_m.case("torch", lname)
            names_ = det.name_classes(c, layers)
            parts = [
                f"{det.short_labels(cls)}: {nm.split(', ')[0] or '?'}"
                for cls, nm in zip(c.classes, names_, strict=True)
            ]
            row += [str(c.n_classes), "; ".join(parts), str(c.min_bits)]
        else:
            row += ["-", "-", "-"]
        for n in names:
            try:
                row.append(str(conv.case(n, lname).n_classes))
            except KeyError:
                row.append("n/a")
        rows.append(row)
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        t = Table(title="bitwise classes over threads x SIMD target")
        for col in header:
            t.add_column(col)
        for row in rows:
            t.add_row(*row)
        console.print(t)
    write_json(args.json, {"header": header, "rows": rows}, console)
    return 0


def run_network(args) -> int:
    try:
        return _network(args)
    except ImportError as e:
        print(f"convolab: error: {e}", file=sys.stderr)
        return 2


def _network(args) -> int:
    """``convolab deviations network``: run `propagation.propagate`, print the tables."""
    from rich.table import Table

    from ..numerics.propagation import DEFAULT_ORDERS, plot, propagate, result_json

    console = make_console()
    isas = tuple(i for i in args.isas.split(",") if i) if args.isas else ()
    res = propagate(
        args.images, algorithms=args.algorithms,
        orders=tuple(args.orders) if args.orders is not None else DEFAULT_ORDERS, isas=isas,
        float64=not args.no_float64,
        progress=lambda s: console.print(f"  running {s}", style="dim"),
    )
    base = res.variants[0]
    t = Table(title=f"EfficientNet-Lite0 on {len(res.images)} photographs: each variant vs "
              "convolab direct")
    for col in ("variant", "layers run", "last conv mean bits", "logits least/mean bits",
                "top-1 flips"):
        t.add_column(col)
    last = res.layers[-1][0]
    for v in res.variants:
        t.add_row(
            v.name.replace("algorithm:", ""), v.ran.replace(" layers", ""),
            f"{v.layers[last].mean_bits:.1f}", f"{v.logits_min_bits} / {v.logits_mean_bits:.1f}",
            str(res.flips(v)) if v is not base else "-",
        )
    console.print(t)
    console.print(f"photographs: {', '.join(res.images)}; top-1 ImageNet classes with direct: "
                  f"{' '.join(map(str, base.labels))}")
    for v in res.variants[1:]:
        if res.flips(v):
            console.print(f"  {v.name}: {' '.join(map(str, v.labels))}")
    console.print("layers run: convolutions the variant computed itself (the others: direct).")
    console.print(
        "bitwise classes of the logits: "
        + ", ".join(f"{k} {res.logits_classes(p)}" for k, p in (
            ("algorithms", "algorithm:"), ("orders", "order:"), ("torch", "torch:"), ("all", "")))
    )
    t = Table(title="per layer: bitwise classes (algorithms/orders/torch/all) and remaining bits "
              "vs direct (least/mean over the variants of each kind)")
    for col in ("#", "layer", "terms", "classes", "algorithms", "orders", "torch", "float64"):
        t.add_column(col)

    def bits(prefix, ln):
        vs = [v.layers[ln] for v in res.variants[1:] if v.name.startswith(prefix)]
        if not vs:
            return "-"
        return f"{min(s.min_bits for s in vs)}/{min(s.mean_bits for s in vs):.1f}"

    for i, (ln, _shape, terms) in enumerate(res.layers):
        cls = "/".join(str(res.classes(ln, p) or "-") for p in ("algorithm:", "order:", "torch:", ""))
        t.add_row(
            str(i), ln.replace("_blocks.", "b").replace("_conv", ""), str(terms), cls,
            bits("algorithm:", ln), bits("order:", ln), bits("torch:", ln), bits("float64", ln),
        )
    console.print(t)
    if args.plot:
        plot(res, args.plot)
        console.print(f"wrote {args.plot}")
    write_json(args.json, result_json(res), console)
    return 0
