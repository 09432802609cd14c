"""``convolab he-plan`` and ``convolab he-bench``: encrypted convolution costs and latency.

``he-plan --model resnet20`` executes ResNet-20 on the simulated CKKS backend three ways -- the
multiplexed baseline counted as its authors' code runs, the CA/RA (HyPHEN-style) network at
a fixed ``m`` and the per-layer planner's choice -- and prints per-layer rotations, PMults and
levels, ciphertext-bootstraps, the modelled latency split (`convolab.he.latency`) and its
sensitivity to the bootstrap cost. ``he-bench`` measures the per-operation costs the latency
model uses (TenSEAL, N = 2^16, each remaining level, weights encoded beforehand), or with
``--mode layers`` times one layer of each ResNet-20 type for each scheme.

Size: the two HE commands (``he-plan``, ``he-bench``), each parse -> compute -> render,
sharing the level and layer-type helpers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ._common import add_json, write_json
from ._common import console as make_console

#: the six ResNet-20 layer types: (label, Cin, Cout, size, stride, gap/k of the input)
LAYER_TYPES = [
    ("32^2 3->16 (first conv)", 3, 16, 32, 1, 1),
    ("32^2 16->16", 16, 16, 32, 1, 1),
    ("32^2 16->32 s2", 16, 32, 32, 2, 1),
    ("16^2 32->32", 32, 32, 16, 1, 2),
    ("16^2 32->64 s2", 32, 64, 16, 2, 2),
    ("8^2 64->64", 64, 64, 8, 1, 4),
]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "he-plan",
        help="encrypted ResNet-20: per-layer rotations / PMults / levels, bootstraps and "
             "modelled latency of the multiplexed baseline and the CA/RA (HyPHEN-style) plans",
    )
    p.add_argument("--model", default="resnet20", choices=["resnet20"])
    p.add_argument("--slots", type=int, default=2**15, help="slots per ciphertext (2^15)")
    p.add_argument("--m", type=int, default=16,
                   help="distinct channels per CA ciphertext of the fixed CA/RA plan (16)")
    p.add_argument("--points", default="ca", choices=["ca", "block"],
                   help="where the CA/RA plans may bootstrap: any CA tensor (default) or block "
                        "inputs only")
    p.add_argument("--fresh", type=int, default=18, help="levels of a fresh ciphertext (18)")
    p.add_argument("--usable", type=int, default=16,
                   help="levels of a bootstrapped ciphertext (16)")
    p.add_argument("--costs", metavar="PATH",
                   help="cost table from `convolab he-bench --json` (default: the shipped one)")
    p.add_argument("--seed", type=int, default=0)
    add_json(p, "the plan")
    p.set_defaults(func=run_plan)

    b = sub.add_parser(
        "he-bench",
        help="per-operation CKKS costs by level (TenSEAL, N=2^16) for the latency model, or "
             "the latency of one encrypted layer per ResNet-20 type (--mode layers)",
    )
    b.add_argument("--mode", default="ops", choices=["ops", "layers"],
                   help="ops: time each CKKS operation at each level (default); layers: time "
                        "whole encrypted convolutions")
    b.add_argument("--slots", type=int, default=None,
                   help="slots per ciphertext, ring dimension N = 2*slots (default: 2^15 for "
                        "ops, 2^14 for layers)")
    b.add_argument("--levels", type=int, default=18,
                   help="ops: levels of the modulus chain, all timed (default 18: a fresh "
                        "ciphertext of the ResNet-20 plans)")
    b.add_argument("--schemes", default="ca,ra,multiplexed", help="layers: schemes to time")
    b.add_argument("--layers", default="1,2,3,4,5,6",
                   help="layers: comma-separated layer types (1-6, see the table)")
    b.add_argument("--backend", default="tenseal", choices=["tenseal", "simulated"],
                   help="layers: backend (ops needs tenseal)")
    b.add_argument("--repeat", type=int, default=3,
                   help="timed runs per operation or layer; the fastest is reported")
    b.add_argument("--seed", type=int, default=0)
    add_json(b, "the results (ops: a cost table for `convolab he-plan --costs`)")
    b.set_defaults(func=run_bench)


def _lv(r) -> str:
    return f"{r.level_in}->{r.level_out}"


@dataclass(frozen=True)
class PlanConfig:
    """The options of ``convolab he-plan``."""

    model: str = "resnet20"
    slots: int = 2**15
    m: int = 16
    points: str = "ca"
    fresh: int = 18
    usable: int = 16
    costs: str | None = None  # a cost table's path; None: the shipped one
    seed: int = 0


def _parse_plan(args) -> PlanConfig:
    return PlanConfig(args.model, args.slots, args.m, args.points, args.fresh, args.usable, args.costs,
                      args.seed)


def compute_plan(cfg: PlanConfig) -> dict:
    """Execute, model and price the ResNet-20 configurations (`convolab.he.planner.plan_resnet20`
    with the cost table of ``cfg.costs``): ``plan`` (the `ResNetPlan`) and ``seconds`` (how long
    that took, the cost table's loading included). Figures only."""
    from ..he import planner
    from ..he.latency import CostTable
    from ..he.network import LevelBudget

    t0 = time.perf_counter()
    costs = CostTable.load(cfg.costs)
    plan = planner.plan_resnet20(slots=cfg.slots, budget=LevelBudget(cfg.fresh, cfg.usable),
                                 points=cfg.points, m=cfg.m, costs=costs, seed=cfg.seed)
    return {"plan": plan, "seconds": time.perf_counter() - t0}


def _render_plan(con, cfg: PlanConfig, result: dict) -> None:
    """The per-layer table, the bootstraps, the modelled latency, its sensitivity, the errors."""
    from rich.table import Table

    from ..he.activation import composite_depth, sign_polys
    from ..he.latency import CATEGORIES
    from ..he.planner import BASELINE_AS_RUN

    plan, elapsed = result["plan"], result["seconds"]
    base, fixed, chosen, ng = plan.baseline, plan.fixed, plan.chosen, plan.chosen_no_gap
    table = Table(title=f"ResNet-20 (CIFAR-10) convolutions on CKKS, {plan.slots} slots, executed "
                        "on the simulated backend: rotations (hoisted included) / PMults / levels")
    cols = ["layer", "type", "MP rot", "MP PMult", "MP lvl", f"m={cfg.m}", "rot", "PMult",
            "lvl", "planner m", "rot ", "PMult ", "lvl "]
    for col in cols:
        table.add_column(col, justify="left" if col in ("layer", "type") else "right", no_wrap=True)
    for rb, rf, rc in zip(base.records, fixed.records, chosen.records, strict=True):
        table.add_row(rb.layer.name, rb.layer.kind, str(rb.rotations), str(rb.pmults), _lv(rb),
                      rf.scheme + "Conv", str(rf.rotations + rf.hoisted), str(rf.pmults), _lv(rf),
                      f"{rc.scheme}Conv {rc.distinct}", str(rc.rotations + rc.hoisted),
                      str(rc.pmults), _lv(rc))
    tb, tf, tc = base.totals(), fixed.totals(), chosen.totals()
    table.add_row("total", "", str(tb["rotations"]), str(tb["pmults"]), "", "",
                  str(tf["rotations"]), str(tf["pmults"]), "", "", str(tc["rotations"]),
                  str(tc["pmults"]), "", end_section=True)
    con.print(table)
    sc = {r.name: (r.count("rotation", "shortcut"), r.count("pmult", "shortcut"))
          for r in (base, fixed, chosen)}
    con.print(f"baseline (counted as its authors' code runs): downsampling shortcuts "
              f"{sc[base.name][0]} rotations, {sc[base.name][1]} PMults -> "
              f"{tb['rotations'] + sc[base.name][0]} rotations, {tb['pmults'] + sc[base.name][1]} "
              f"PMults in all; CA/RA m={cfg.m}: {tf['rotations']} rotations "
              f"({tf['rotations'] / (tb['rotations'] + sc[base.name][0]):.3f}x the baseline's), "
              f"{tf['hoisted']} of them hoisted, shortcuts {sc[fixed.name][0]} rotations / "
              f"{sc[fixed.name][1]} PMults; planner: m = {'/'.join(map(str, chosen.distinct))} "
              f"(stem, 9 blocks), shortcuts {sc[chosen.name][0]} rotations / {sc[chosen.name][1]} PMults")
    other = "block inputs only" if plan.points == "ca" else "any CA tensor"
    where = "any CA tensor" if plan.points == "ca" else "block inputs only"
    con.print(
        f"ciphertext-bootstraps ({plan.budget.usable} usable levels, fresh ciphertexts "
        f"{plan.budget.fresh}; CA/RA: conv 1 level, degree-2 activation 2; baseline: conv 2, "
        f"composite ReLU {composite_depth(sign_polys())}): baseline {base.ct_bootstraps}; CA/RA at {where}: "
        f"m={cfg.m} {fixed.ct_bootstraps}, planner without gap packing {ng.ct_bootstraps} "
        f"(modelled), with gap packing {chosen.ct_bootstraps}; at {other}: "
        + ", ".join(f"{k} {v}" for k, v in plan.other_points.items()))
    lt = Table(title="modelled latency (s): count x measured cost at its level, bootstraps "
                     f"{plan.table.boot(2**14):.1f} s (2^14 data slots) .. "
                     f"{plan.table.boot(2**15):.1f} s (2^15)")
    for col in ["configuration"] + list(CATEGORIES) + ["total", "speed-up"]:
        lt.add_column(col, justify="left" if col == "configuration" else "right", no_wrap=True)
    ref = plan.latencies[BASELINE_AS_RUN]["total"]
    for name, lat in plan.latencies.items():
        lt.add_row(name, *(f"{lat[c]:.1f}" for c in CATEGORIES), f"{lat['total']:.1f}",
                   f"{ref / lat['total']:.2f}x")
    con.print(lt)
    lb, lc = plan.latencies[BASELINE_AS_RUN], plan.latencies[chosen.name]
    cl = plan.common_level
    con.print(f"end to end: planner {ref / lc['total']:.2f}x faster than the baseline (HyPHEN "
              f"reports 3.4-4.4x, GPU, ICLR 2023 version); convolution only: planner / baseline = "
              f"{lc['conv'] / lb['conv']:.2f} (baseline convolutions run at levels 2->0, right "
              f"before each bootstrap); every operation priced at level {plan.budget.usable}: "
              f"conv {cl[chosen.name]:.1f} s vs baseline {cl[base.name]:.1f} s "
              f"({cl[chosen.name] / cl[base.name]:.2f}), m={cfg.m} {cl[fixed.name]:.1f} s")
    st = Table(title="sensitivity to the bootstrap cost (planner's choice fixed)")
    for col in ("factor", "bootstrap (2^14 slots) s", "baseline s", "planner s", "speed-up"):
        st.add_column(col, justify="right")
    for row in plan.sensitivity:
        st.add_row(f"{row['boot_scale']:g}", f"{row['bootstrap_seconds']:.1f}",
                   f"{row['baseline']:.1f}", f"{row['hyphen']:.1f}", f"{row['speedup']:.2f}x")
    con.print(st)
    err = max(r.max_rel_error for run in (base, fixed, chosen) for r in run.records)
    con.print(f"every convolution exact on the simulated backend: max rel error {err:.1e} (vs "
              f"convolab.reference.conv2d); whole networks vs plaintext: baseline "
              f"{base.max_rel_error:.1e}, m={cfg.m} {fixed.max_rel_error:.1e}, planner "
              f"{chosen.max_rel_error:.1e}")
    con.print(f"per-operation costs: {plan.table.source}; bootstraps: {plan.table.bootstrap_source}; "
              f"ran in {elapsed:.1f} s")


def plan_json(plan) -> dict:
    """What ``he-plan --json`` writes: the four runs (baseline, fixed m, planner with and
    without gap packing) per layer, bootstraps, latencies, sensitivity, the costs' sources."""
    def run_dict(r):
        return dict(name=r.name, distinct=r.distinct, totals=r.totals(),
                    ct_bootstraps=r.ct_bootstraps, bootstraps=r.bootstraps,
                    max_rel_error=r.max_rel_error,
                    shortcut=dict(rotations=r.count("rotation", "shortcut"),
                                  pmults=r.count("pmult", "shortcut")),
                    layers=[dict(layer=x.layer.name, type=x.layer.kind, scheme=x.scheme,
                                 distinct=x.distinct, rotations=x.rotations, hoisted=x.hoisted,
                                 pmults=x.pmults, level_in=x.level_in, level_out=x.level_out,
                                 max_rel_error=x.max_rel_error) for x in r.records])

    runs = (plan.baseline, plan.fixed, plan.chosen, plan.chosen_no_gap)
    return dict(slots=plan.slots, fresh=plan.budget.fresh, usable=plan.budget.usable,
                points=plan.points, runs=[run_dict(r) for r in runs],
                other_points=plan.other_points, latency=plan.latencies,
                sensitivity=plan.sensitivity, common_level_conv=plan.common_level,
                cost_source=plan.table.source, bootstrap_source=plan.table.bootstrap_source)


def run_plan(args) -> int:
    """Parse, compute (`compute_plan`), render (`_render_plan`), write the JSON (`plan_json`)."""
    cfg = _parse_plan(args)
    result = compute_plan(cfg)
    con = make_console(soft_wrap=True)
    _render_plan(con, cfg, result)
    if args.json:
        write_json(args.json, plan_json(result["plan"]), con)
    return 0


@dataclass(frozen=True)
class BenchConfig:
    """The checked options of ``convolab he-bench``."""

    mode: str = "ops"
    slots: int = 2**15  # ring dimension N = 2 * slots
    levels: int = 18  # ops: levels of the timed modulus chain
    schemes: tuple[str, ...] = ("ca", "ra", "multiplexed")  # layers
    layers: tuple[int, ...] = (1, 2, 3, 4, 5, 6)  # layers: 1-based indices into LAYER_TYPES
    backend: str = "tenseal"
    repeat: int = 3
    seed: int = 0


def _parse_bench(args) -> BenchConfig:
    """Checked options: ``--repeat``; ops: the TenSEAL backend and ``--levels``; layers: the
    schemes and layer types. ``--slots`` defaults to 2^15 for ops, 2^14 for layers."""
    from ..errors import ConvError

    if args.repeat < 1:
        raise ConvError(f"--repeat must be >= 1, got {args.repeat}")
    schemes, picks = (), ()
    if args.mode == "ops":
        if args.backend != "tenseal":
            raise ConvError("--mode ops times real CKKS operations: it needs --backend tenseal")
        slots = 2**15 if args.slots is None else args.slots
        if args.levels < 1:
            raise ConvError(f"--levels must be >= 1, got {args.levels}")
    else:
        from ..he.conv import SCHEMES

        schemes = tuple(s.strip() for s in args.schemes.split(",") if s.strip())
        for s in schemes:
            if s not in SCHEMES:
                raise ConvError(f"unknown scheme {s!r} in --schemes; choose from {sorted(SCHEMES)}")
        try:
            picks = tuple(int(v) for v in args.layers.split(",") if v.strip())
        except ValueError:
            raise ConvError(f"--layers must be comma-separated numbers 1-6, got {args.layers!r}") from None
        for v in picks:
            if not 1 <= v <= len(LAYER_TYPES):
                raise ConvError(f"layer type {v} out of range 1-{len(LAYER_TYPES)}")
        slots = 2**14 if args.slots is None else args.slots
    return BenchConfig(args.mode, slots, args.levels, schemes, picks, args.backend, args.repeat, args.seed)


def run_bench(args) -> int:
    """Parse, compute (`compute_bench_ops` / `compute_bench_layers`), render, write the JSON;
    progress lines on the console while it runs."""
    cfg = _parse_bench(args)
    con = make_console(soft_wrap=True)

    def say(text):
        con.print(f"[dim]{text}[/dim]")

    if cfg.mode == "ops":
        result = compute_bench_ops(cfg, say)
        _render_bench_ops(con, cfg, result)
        if args.json:
            write_json(args.json, result["table"], con)
    else:
        result = compute_bench_layers(cfg, say)
        _render_bench_layers(con, cfg, result)
        if args.json:
            write_json(args.json, dict(backend=result["backend"], slots=cfg.slots, results=result["results"]),
                       con)
    return 0


#: the rescaling primes of the timed chain: the bit sizes of the baseline authors' ResNet-20
#: parameters (first prime 51, rescaling primes 46, special prime 51 bits)
OPS_FIRST, OPS_PRIME, OPS_SPECIAL = 51, 46, 51


def compute_bench_ops(cfg: BenchConfig, say=None) -> dict:
    """Time each CKKS operation at each remaining level (TenSEAL, `measure_operations`):
    ``table`` (the cost table's dictionary, what ``--json`` writes), ``costs`` (it as a
    `convolab.he.latency.CostTable`) and ``backend`` (its description). ``say(text)``: told
    about the keys and each sweep."""
    import datetime
    import platform

    from .._machine import cpu_model
    from ..he.backends import get_backend
    from ..he.latency import CostTable
    from ..he.tenseal_backend import measure_operations

    say = say or (lambda text: None)
    bits = [OPS_FIRST] + [OPS_PRIME] * cfg.levels + [OPS_SPECIAL]
    t0 = time.perf_counter()
    be = get_backend("tenseal", cfg.slots, modulus_bits=bits, scale_bits=OPS_PRIME)
    say(f"{be.describe()}: keys in {time.perf_counter() - t0:.1f} s; timing levels "
        f"{cfg.levels}..0, {cfg.repeat} run(s) each ...")
    seconds = measure_operations(
        be, repeat=cfg.repeat, seed=cfg.seed,
        progress=lambda rep: say(f"sweep {rep + 1} of {cfg.repeat} done"))
    import tenseal

    when = datetime.date.today().isoformat()
    source = (f"measured by `convolab he-bench --levels {cfg.levels} --repeat {cfg.repeat}` "
              f"on {cpu_model()} ({platform.machine()}), TenSEAL {tenseal.__version__}, one "
              f"thread, {when}")
    table_data = dict(source=source, slots=cfg.slots, backend=be.describe(), modulus_bits=bits,
                      repeat=cfg.repeat, seconds=seconds)
    costs = CostTable.from_dict(json.loads(json.dumps(table_data)))
    return {"table": table_data, "costs": costs, "backend": be.describe()}


def _render_bench_ops(con, cfg: BenchConfig, result: dict) -> None:
    """The costs by level (ms) and what they mean."""
    from rich.table import Table

    from ..errors import ConvError

    costs, source = result["costs"], result["table"]["source"]
    table = Table(title=f"CKKS operation costs by remaining level, {result['backend']} "
                        f"(ms, fastest of {cfg.repeat})")
    ops = ["rotation", "hoisted", "pmult", "cmult", "rescale", "add", "encode"]
    for col in ["level"] + ops:
        table.add_column(col + (" (derived)" if col == "hoisted" else ""), justify="right")
    for r in range(cfg.levels, -1, -1):
        row = [str(r)]
        for op in ops:
            try:
                row.append(f"{costs.cost(op, r) * 1e3:.2f}")
            except ConvError:
                row.append("-")
        table.add_row(*row)
    con.print(table)
    con.print(f"{source}. hoisted = rotation - (r+1)(r+2) transforms (the key-switching "
              "decomposition a hoisted group shares; one transform = the median over the levels, "
              f"{costs.transform() * 1e3:.2f} ms); pmult / cmult / rescale are not defined at "
              "level 0.")


def compute_bench_layers(cfg: BenchConfig, say=None) -> dict:
    """Time one encrypted convolution of each picked ResNet-20 layer type with each scheme
    (fresh keys per type, plaintexts encoded by an untimed first run, ``cfg.repeat``
    interleaved runs): ``results`` (one dictionary per layer and scheme: fastest seconds, runs,
    encoding seconds, rotations, PMults, depth, max relative error vs the reference) and
    ``backend`` (its description). ``say(text)``: told what runs next."""
    import numpy as np

    from .. import reference
    from ..he.backends import get_backend
    from ..he.conv import conv2d

    say = say or (lambda text: None)
    rng = np.random.default_rng(cfg.seed)
    results = []
    desc = None
    for v in cfg.layers:
        label, cin, cout, size, stride, gap = LAYER_TYPES[v - 1]
        x = rng.uniform(-1, 1, (1, cin, size, size))
        w = rng.normal(0, 1 / np.sqrt(9 * cin), (cout, cin, 3, 3))
        ref = reference.conv2d(x, w, stride=stride, padding=1)
        be = get_backend(cfg.backend, cfg.slots)  # fresh keys per layer type
        be.cache_plaintexts = True
        desc = be.describe()
        rows = {}
        for s in cfg.schemes:  # untimed warm-up: encodes every plaintext and makes every key
            say(f"layer {v} {label} {s}: encoding ...")
            r = conv2d(x, w, scheme=s, backend=be, stride=stride, gap=gap)
            rows[s] = dict(layer=v, type=label, scheme=s, runs=[], encode_seconds=r.encode_seconds,
                           max_rel_error=0.0)
        for _ in range(cfg.repeat):
            for s in cfg.schemes:
                say(f"layer {v} {label} {s} ...")
                r = conv2d(x, w, scheme=s, backend=be, stride=stride, gap=gap)
                err = float(np.abs(r.output - ref).max() / np.abs(ref).max())
                row = rows[s]
                row["runs"].append(r.seconds)
                row.update(seconds=min(row["runs"]), rotations=r.rotations, pmults=r.pmults,
                           depth=r.depth, max_rel_error=max(row["max_rel_error"], err))
        results += rows.values()
    return {"results": results, "backend": desc}


def _render_bench_layers(con, cfg: BenchConfig, result: dict) -> None:
    """One row per layer type and scheme, and what the seconds include."""
    from rich.table import Table

    table = Table(title=f"one encrypted layer per ResNet-20 type: {result['backend']}")
    for col in ("#", "type", "scheme", "seconds", "encoding (untimed)", "rot", "PMult",
                "depth", "max rel err"):
        table.add_column(col, justify="left" if col in ("type", "scheme") else "right",
                         no_wrap=True)
    for r in result["results"]:
        table.add_row(str(r["layer"]), r["type"], r["scheme"], f"{r['seconds']:.2f}",
                      f"{r['encode_seconds']:.2f}", str(r["rotations"]), str(r["pmults"]),
                      str(r["depth"]), f"{r['max_rel_error']:.1e}")
    con.print(table)
    con.print("seconds: homomorphic evaluation with the weight and mask plaintexts encoded "
              "beforehand (an untimed first run encodes them); key generation, encryption and "
              f"decryption excluded; fastest of {cfg.repeat} interleaved run(s), one thread (SEAL)")
