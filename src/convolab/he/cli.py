"""``convolab he-plan`` and ``convolab he-bench``: encrypted convolution costs and latency.

``he-plan --model resnet20`` executes ResNet-20 on the simulated CKKS backend with the RA/CA
alternation and each layer's multiplexed baseline, and prints per-layer rotations, PMults and
depth with the rotations saved. ``he-bench`` times one layer of each ResNet-20 type on real
CKKS (TenSEAL/SEAL) for each scheme and checks the decrypted result against the reference.
"""

from __future__ import annotations

import json
import time

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
        "he-plan", help="rotations / PMults / depth of encrypted ResNet-20: CA-RA vs multiplexed"
    )
    p.add_argument("--model", default="resnet20", choices=["resnet20"])
    p.add_argument("--slots", type=int, default=2**15, help="slots per ciphertext (2^15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the plan as JSON")
    p.set_defaults(func=run_plan)

    b = sub.add_parser(
        "he-bench", help="latency of one encrypted layer of each ResNet-20 type on TenSEAL"
    )
    b.add_argument("--slots", type=int, default=2**14,
                   help="slots per ciphertext; ring dimension N = 2*slots (default 2^14: N=2^15)")
    b.add_argument("--schemes", default="ca,ra,multiplexed")
    b.add_argument("--layers", default="1,2,3,4,5,6",
                   help="comma-separated layer types (1-6, see the table)")
    b.add_argument("--backend", default="tenseal", choices=["tenseal", "simulated"])
    b.add_argument("--repeat", type=int, default=1,
                   help="runs per layer and scheme, interleaved; the fastest is reported")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    b.set_defaults(func=run_bench)


def _console():
    import sys

    from rich.console import Console

    # piped output: do not squeeze the tables into 80 columns
    return Console() if sys.stdout.isatty() else Console(width=140)


def run_plan(args) -> int:
    from rich.table import Table

    from .planner import plan_resnet20

    t0 = time.perf_counter()
    plan = plan_resnet20(slots=args.slots, seed=args.seed)
    elapsed = time.perf_counter() - t0
    table = Table(title=f"ResNet-20 (CIFAR-10) convolutions on CKKS, {plan.slots} slots "
                        "(executed on the simulated backend)")
    for col in ("layer", "type", "CA/RA", "rot", "PMult", "depth",
                "MP rot", "MP PMult", "MP depth", "rot saved"):
        table.add_column(col, justify="left" if col in ("layer", "type", "CA/RA") else "right",
                         no_wrap=True)
    for r in plan.rows:
        table.add_row(r.layer.name, r.layer.kind, r.scheme + "Conv", str(r.rotations),
                      str(r.pmults), str(r.depth), str(r.base_rotations), str(r.base_pmults),
                      str(r.base_depth), str(r.saved))
    t = plan.totals()
    table.add_row("total", "", "", str(t["rotations"]), str(t["pmults"]),
                  "", str(t["base_rotations"]), str(t["base_pmults"]), "",
                  str(t["saved"]), end_section=True)
    con = _console()
    con.print(table)
    pct = 100.0 * t["saved"] / t["base_rotations"]
    con.print(f"rotations saved by the CA-RA alternation: {t['saved']} of "
              f"{t['base_rotations']} ({pct:+.1f}%); RAConv layers save "
              f"{sum(r.saved for r in plan.rows if r.scheme == 'RA')}, CAConv layers "
              f"{sum(r.saved for r in plan.rows if r.scheme == 'CA')}")
    c0, c1, c2 = plan.activation
    con.print(f"activation p(x) = {c0:g} + {c1:g} x + {c2:g} x^2 (19x): "
              f"{plan.activation_cmults} CMults, {plan.activation_pmults} PMults, depth 2 each; "
              f"option-A shortcuts: {plan.shortcut_pmults} PMults")
    con.print(f"depth of the whole CA-RA network without bootstrapping: {plan.depth}; "
              f"encrypted vs plaintext network (simulated): max rel error "
              f"{plan.max_rel_error:.2e}; ran in {elapsed:.1f} s")
    if args.json:
        rows = [dict(layer=r.layer.name, type=r.layer.kind, scheme=r.scheme,
                     rotations=r.rotations, pmults=r.pmults, depth=r.depth,
                     base_rotations=r.base_rotations, base_pmults=r.base_pmults,
                     base_depth=r.base_depth, saved=r.saved) for r in plan.rows]
        with open(args.json, "w") as f:
            json.dump(dict(slots=plan.slots, rows=rows, totals=t, depth=plan.depth,
                           activation_cmults=plan.activation_cmults,
                           activation_pmults=plan.activation_pmults,
                           shortcut_pmults=plan.shortcut_pmults,
                           max_rel_error=plan.max_rel_error), f, indent=2)
    return 0


def run_bench(args) -> int:
    import numpy as np
    from rich.table import Table

    from .. import reference
    from ..errors import ConvError
    from .backend import get_backend
    from .conv import SCHEMES, conv2d

    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    for s in schemes:
        if s not in SCHEMES:
            raise ConvError(f"unknown scheme {s!r} in --schemes; choose from {sorted(SCHEMES)}")
    try:
        picks = [int(v) for v in args.layers.split(",") if v.strip()]
    except ValueError:
        raise ConvError(f"--layers must be comma-separated numbers 1-6, got {args.layers!r}") from None
    for v in picks:
        if not 1 <= v <= len(LAYER_TYPES):
            raise ConvError(f"layer type {v} out of range 1-{len(LAYER_TYPES)}")
    con = _console()
    rng = np.random.default_rng(args.seed)
    results = []
    desc = None
    for v in picks:
        label, cin, cout, size, stride, gap = LAYER_TYPES[v - 1]
        x = rng.uniform(-1, 1, (1, cin, size, size))
        w = rng.normal(0, 1 / np.sqrt(9 * cin), (cout, cin, 3, 3))
        ref = reference.conv2d(x, w, stride=stride, padding=1)
        be = get_backend(args.backend, args.slots)  # fresh keys per layer type
        desc = be.describe()
        rows = {}
        for _ in range(max(1, args.repeat)):
            for s in schemes:
                con.print(f"[dim]layer {v} {label} {s} ...[/dim]")
                r = conv2d(x, w, scheme=s, backend=be, stride=stride, gap=gap)
                err = float(np.abs(r.output - ref).max() / np.abs(ref).max())
                row = rows.setdefault(s, dict(layer=v, type=label, scheme=s, runs=[],
                                              max_rel_error=0.0))
                row["runs"].append(r.seconds)
                if r.seconds <= min(row["runs"]):
                    row.update(seconds=r.seconds, encode_seconds=r.encode_seconds)
                row.update(rotations=r.rotations, pmults=r.pmults, depth=r.depth,
                           max_rel_error=max(row["max_rel_error"], err))
        results += rows.values()
        results[-1]["keygen_seconds_layer"] = be.keygen_seconds
    table = Table(title=f"one encrypted layer per ResNet-20 type: {desc}")
    for col in ("#", "type", "scheme", "seconds", "of which encode", "rot", "PMult",
                "depth", "max rel err"):
        table.add_column(col, justify="left" if col in ("type", "scheme") else "right",
                         no_wrap=True)
    for r in results:
        table.add_row(str(r["layer"]), r["type"], r["scheme"], f"{r['seconds']:.2f}",
                      f"{r['encode_seconds']:.2f}", str(r["rotations"]), str(r["pmults"]),
                      str(r["depth"]), f"{r['max_rel_error']:.1e}")
    con.print(table)
    con.print("seconds: homomorphic evaluation incl. plaintext encoding, excl. key generation, "
              f"encryption, decryption; fastest of {max(1, args.repeat)} interleaved run(s), "
              "one thread (SEAL)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(backend=desc, slots=args.slots, results=results), f, indent=2)
    return 0
