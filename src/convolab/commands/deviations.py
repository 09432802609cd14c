"""``convolab deviations``: measure and explain bitwise deviations of convolution outputs.

Sub-commands:

- ``sweep``: the isolated-layer sweep (`convolab.numerics.deviations`): bitwise classes across
  emulated accumulation orders, across convolab's algorithms and across PyTorch configurations.
- ``determinism``: common CNN layers under {1, 2 threads} x {AVX2, AVX-512} for PyTorch and
  {1, 2 threads} x {generic, host} Numba targets for convolab (one subprocess per configuration),
  with PyTorch's classes named by the emulated orders that reproduce them.
- ``network``: propagation through a real pretrained CNN on real photographs
  (`convolab.numerics.propagation`).

Size: the three sub-commands of one command, each parse -> compute -> render, sharing their
option parsers and the JSON output.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..errors import ConvError
from ._common import add_dask, add_json, progress_bar, write_json
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
    add_dask(s, "run the layers")
    s.set_defaults(func=run_sweep)

    d = dsub.add_parser("determinism", help="PyTorch's classes vs convolab's on common layers")
    d.add_argument("--small", action="store_true", help="the small test layers instead")
    d.add_argument("--layers", nargs="+", default=None, metavar="NAME",
                   help="only these layers of the set (names as in the table's first column)")
    d.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    d.add_argument("--markdown", action="store_true", help="print a Markdown table")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--all-algorithms", action="store_true",
                   help="also the algorithms not registered deterministic")
    g.add_argument("--algorithms", nargs="+", default=None, metavar="NAME",
                   help="only these convolab algorithms (default: the ones registered "
                   "deterministic; each CPU target compiles them afresh, so fewer run faster)")
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


# -- sweep -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepConfig:
    """The checked options of ``convolab deviations sweep``."""

    filters: tuple[int, ...] = (1, 2, 3, 4)
    kernels: tuple[int, ...] = (2, 3, 4, 5, 6, 7)
    channels: tuple[int, ...] = (1, 2, 3)
    sizes: tuple[int, ...] = (8, 16, 32)
    orders: tuple[str, ...] | None = None  # None: the standard orders (numerics.orders)
    algorithms: list[str] | None = None  # None: every registered one
    torch: bool = True
    isas: str = "SSE41,AVX,AVX2,AVX512_CORE"
    scheduler: str | None = None
    dask: bool = False

    def __post_init__(self):
        if self.orders is None:
            from ..numerics.orders import STANDARD_ORDERS

            object.__setattr__(self, "orders", STANDARD_ORDERS)

    def sweep_layers(self) -> dict[str, dict]:
        """The layer grid (`convolab.numerics.deviations.sweep_layers`)."""
        from ..numerics import deviations as dev

        return dev.sweep_layers(self.filters, self.kernels, self.channels, self.sizes)


def _parse_sweep(args) -> SweepConfig:
    """Checked options: every ``--orders`` name parses (the standard orders by default)."""
    from ..numerics.orders import STANDARD_ORDERS, parse_order

    orders = tuple(args.orders) if args.orders else STANDARD_ORDERS
    for o in orders:
        parse_order(o)
    return SweepConfig(args.filters, args.kernels, args.channels, args.sizes, orders, args.algorithms,
                       not args.no_torch, args.isas, args.scheduler, args.dask)


def compute_sweep(cfg: SweepConfig, layers: dict | None = None, console=None, say=None) -> dict:
    """The sweep over ``layers`` (default: ``cfg``'s grid), locally or as tasks on Dask:
    ``results`` (`convolab.numerics.deviations.LayerResult` per layer), ``summary`` (per
    source) and ``by_terms`` (per source: classes against products per output). Figures only;
    with ``console`` a progress bar there; with Dask ``say(text)`` is told the cluster's
    one-line description once it is up."""
    from ..numerics import deviations as dev

    layers = cfg.sweep_layers() if layers is None else layers
    with progress_bar(console, "layers", len(layers)) as update:
        kwargs = dict(orders=cfg.orders, algorithms=cfg.algorithms, torch=cfg.torch,
                      isas=tuple(cfg.isas.split(",")),
                      progress=lambda i, n: update(completed=i))
        if cfg.scheduler or cfg.dask:
            from ..dask import sweeps

            with sweeps.client(cfg.scheduler, cfg.dask) as c:
                if say is not None:
                    say(sweeps.describe(c))
                results = sweeps.deviations_sweep(c, layers, **kwargs)
        else:
            results = dev.sweep(layers, **kwargs)
    return {"results": results, "summary": dev.summarize(results),
            "by_terms": {s: dev.by_terms(results, s) for s in dev.SOURCES}}


def _render_sweep_header(console, cfg: SweepConfig, n_layers: int) -> None:
    """What is about to run: the layer grid and PyTorch's configurations."""
    console.print(
        f"{n_layers} layers: filters {list(cfg.filters)}, kernels {list(cfg.kernels)}, "
        f"channels {list(cfg.channels)}, inputs {list(cfg.sizes)}; float32 N(0,1) data, "
        f"no bias, stride 1, no padding"
    )
    if cfg.torch:
        console.print(f"PyTorch: {{1, 2}} threads x ONEDNN_MAX_CPU_ISA {{{cfg.isas}}}, one "
                      "subprocess each")


def _render_sweep(console, cfg: SweepConfig, result: dict, layers: bool = False) -> None:
    """The summary tables (``layers``: first one row per layer)."""
    from rich.table import Table

    from ..numerics import deviations as dev

    results, summary, orders = result["results"], result["summary"], cfg.orders
    if layers:
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
    rows = {s: {r[0]: r for r in result["by_terms"][s]} for s in dev.SOURCES}
    for label, n, _, _ in result["by_terms"]["orders"]:
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


def run_sweep(args) -> int:
    """Parse, say what runs, compute (`compute_sweep`), render (`_render_sweep`), write the JSON."""
    from ..numerics import deviations as dev

    console = make_console()
    cfg = _parse_sweep(args)
    layers = cfg.sweep_layers()
    _render_sweep_header(console, cfg, len(layers))
    result = compute_sweep(cfg, layers, console, say=make_console(stderr=True).print)
    _render_sweep(console, cfg, result, layers=args.layers)
    if args.json:
        write_json(args.json, {"summary": result["summary"], "layers": dev.to_json(result["results"])},
                   console)
    return 0


# -- determinism -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeterminismConfig:
    """The options of ``convolab deviations determinism``."""

    small: bool = False  # the small test layers instead of the common ones
    torch: bool = True
    all_algorithms: bool = False  # also the algorithms not registered deterministic
    algorithms: tuple[str, ...] | None = None  # only these (None: as all_algorithms says)
    layers: tuple[str, ...] | None = None  # only these layers of the set (None: all)

    def layer_set(self) -> dict[str, dict]:
        """The measured layers: name -> conv2d arguments (`convolab.numerics.determinism`)."""
        from ..numerics import determinism as det

        layers = det.SMALL_LAYERS if self.small else det.COMMON_LAYERS
        return layers if self.layers is None else {n: layers[n] for n in self.layers}


def _parse_determinism(args) -> DeterminismConfig:
    """Checked options: every ``--algorithms`` name is registered, every ``--layers`` name is
    one of the set's."""
    from ..numerics import determinism as det
    from ..registry import get

    algorithms = layers = None
    if args.algorithms:
        algorithms = tuple(dict.fromkeys(args.algorithms))
        for name in algorithms:
            get(name)
    if args.layers:
        known = det.SMALL_LAYERS if args.small else det.COMMON_LAYERS
        layers = tuple(dict.fromkeys(args.layers))
        for name in layers:
            if name not in known:
                which = "small" if args.small else "common"
                raise ConvError(f"unknown layer {name!r}; the {which} layers: "
                                f"{', '.join(map(repr, known))}")
    return DeterminismConfig(args.small, not args.no_torch, args.all_algorithms, algorithms, layers)


def determinism_table(layers, names: list[str], conv, torch_m=None) -> tuple[list[str], list[list[str]]]:
    """The table of ``convolab deviations determinism`` from the measurements (``conv``:
    convolab's, ``torch_m``: PyTorch's or None): ``(header, rows)``, cells as text."""
    from ..numerics import determinism as det

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
    return header, rows


def compute_determinism(cfg: DeterminismConfig, say=None) -> dict:
    """Measure convolab's algorithms (``cfg.algorithms``; by default the ones registered
    deterministic, with ``all_algorithms`` every one) and PyTorch on ``cfg.layer_set()`` under
    every configuration (one subprocess each): ``{"header", "rows"}`` (`determinism_table`).
    ``say(text)``: told what runs before each measurement."""
    import convolab

    from ..numerics import determinism as det

    say = say or (lambda text: None)
    layers = cfg.layer_set()
    if cfg.algorithms:
        names = list(cfg.algorithms)
    else:
        names = [a.name for a in convolab.list_algorithms()
                 if a.deterministic or cfg.all_algorithms]
    say(f"convolab: {', '.join(names)} under {len(det.convolab_configs())} "
        "configurations (NUMBA_NUM_THREADS 1, 2 x NUMBA_CPU_NAME generic, host)")
    conv = det.measure_convolab(layers, names)
    torch_m = None
    if cfg.torch:
        say("PyTorch: torch.set_num_threads 1, 2 x ONEDNN_MAX_CPU_ISA AVX2, AVX512_CORE")
        torch_m = det.measure_torch(layers)
    header, rows = determinism_table(layers, names, conv, torch_m)
    return {"header": header, "rows": rows}


def _render_determinism(console, result: dict, markdown: bool = False) -> None:
    """The table: a rich table on the console, or Markdown on stdout."""
    from rich.table import Table

    header, rows = result["header"], result["rows"]
    if markdown:
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


def run_determinism(args) -> int:
    """Parse, compute (`compute_determinism`), render (`_render_determinism`), write the JSON."""
    console = make_console()
    result = compute_determinism(_parse_determinism(args), say=console.print)
    _render_determinism(console, result, markdown=args.markdown)
    write_json(args.json, {"header": result["header"], "rows": result["rows"]}, console)
    return 0


# -- network ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkConfig:
    """The checked options of ``convolab deviations network``."""

    images: int | None = None  # None: every photograph
    algorithms: list[str] | None = None  # None: every registered one
    orders: tuple[str, ...] | None = None  # None: propagation.DEFAULT_ORDERS
    isas: tuple[str, ...] = ("AVX2", "AVX512_CORE")
    float64: bool = True


def _parse_network(args) -> NetworkConfig:
    isas = tuple(i for i in args.isas.split(",") if i) if args.isas else ()
    return NetworkConfig(args.images, args.algorithms,
                         tuple(args.orders) if args.orders is not None else None, isas,
                         not args.no_float64)


def compute_network(cfg: NetworkConfig, progress=None):
    """`convolab.numerics.propagation.propagate` with ``cfg``: the `NetworkResult`.
    ``progress(name)``: called before each variant runs."""
    from ..numerics.propagation import DEFAULT_ORDERS, propagate

    return propagate(
        cfg.images, algorithms=cfg.algorithms,
        orders=cfg.orders if cfg.orders is not None else DEFAULT_ORDERS, isas=cfg.isas,
        float64=cfg.float64, progress=progress,
    )


def run_network(args) -> int:
    try:
        return _network(args)
    except ImportError as e:
        print(f"convolab: error: {e}", file=sys.stderr)
        return 2


def _network(args) -> int:
    """``convolab deviations network``: parse, compute (`compute_network`), render
    (`_render_network`), the plot and the JSON."""
    from ..numerics.propagation import plot, result_json

    console = make_console()
    res = compute_network(_parse_network(args),
                          progress=lambda s: console.print(f"  running {s}", style="dim"))
    _render_network(console, res)
    if args.plot:
        plot(res, args.plot)
        console.print(f"wrote {args.plot}")
    write_json(args.json, result_json(res), console)
    return 0


def _render_network(console, res) -> None:
    """The variants' table, the photographs' labels, the per-layer table."""
    from rich.table import Table

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
