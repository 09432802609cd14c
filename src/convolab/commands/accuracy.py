"""``convolab accuracy``: Winograd and SFC error in fp32, fp16 and low-bit integers (see
`convolab.accuracy`)."""

from __future__ import annotations

from ._common import add_json, write_json
from ._common import console as make_console


def add_parser(sub) -> None:
    p = sub.add_parser(
        "accuracy",
        help="relative RMSE of direct, Winograd and SFC vs float64 in fp32, fp16, int8/6/4",
        description="Reproducible accuracy study (fixed seeds): relative RMSE against the "
        "float64 reference on ReLU-like activations, (a) fp32, (b) every stage rounded to "
        "fp16, (c) transform-domain integer quantisation with per-frequency scales.",
    )
    p.add_argument("--batch", type=int, default=2, help="images (default 2)")
    p.add_argument("--channels", type=int, default=32, help="input channels (default 32)")
    p.add_argument("--out-channels", type=int, default=32, help="output channels (default 32)")
    p.add_argument("--size", type=int, default=28, help="image height and width (default 28)")
    p.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4], help="integer widths")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    add_json(p, "the results")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scheduler", metavar="ADDRESS", help="run the cases as tasks on this Dask scheduler")
    g.add_argument("--dask", action="store_true", help="run the cases as tasks on a local Dask cluster")
    p.set_defaults(func=run)


def run(args) -> int:

    from rich.table import Table

    from ..accuracy import study, targets
    from ..errors import ConvError

    for name in ("batch", "channels", "out_channels", "size"):
        if getattr(args, name) < 1:
            raise ConvError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(b < 2 or b > 16 for b in args.bits):
        raise ConvError(f"--bits must be between 2 and 16, got {args.bits}")
    if args.scheduler or args.dask:
        from ..dask import sweeps

        with sweeps.client(args.scheduler, args.dask) as c:
            make_console(stderr=True).print(sweeps.describe(c))
            rows = sweeps.accuracy_study(c, args.batch, args.channels, args.out_channels, args.size,
                                         tuple(args.bits), args.seed)
    else:
        rows = study(args.batch, args.channels, args.out_channels, args.size, tuple(args.bits),
                     args.seed)
    settings = ["fp32", "fp16"] + [f"int{b}" for b in args.bits]
    table = Table(
        title=f"relative RMSE vs float64: N{args.batch} C{args.channels} K{args.out_channels} "
        f"{args.size}x{args.size}, ReLU-like inputs, seed {args.seed}"
    )
    table.add_column("algorithm")
    table.add_column("kernel")
    table.add_column("products/output", justify="right")
    for s in settings:
        table.add_column(s, justify="right")
    for row in rows:
        table.add_row(row.name, f"{row.kernel}x{row.kernel}", f"{row.products_per_output:.2f}",
                      *(f"{row.errors[s]:.2e}" for s in settings))
    console = make_console()
    console.print(table)
    goal = targets(rows, [s for s in ("fp16", "int8") if s in settings])
    for s, v in goal.items():
        ok = v["vs_f2x3"] <= 1.3 and v["vs_f4x3"] <= 0.35
        console.print(
            f"{s}: SFC-6(6x6,3x3) / F(2x2,3x3) = {v['vs_f2x3']:.2f} (goal <= 1.3), "
            f"/ F(4x4,3x3) = {v['vs_f4x3']:.2f} (goal <= 0.35): {'met' if ok else 'NOT met'}"
        )
    if args.json:
        write_json(args.json, {"config": {k: getattr(args, k) for k in
                                  ("batch", "channels", "out_channels", "size", "bits", "seed")},
                       "rows": [row.__dict__ for row in rows], "targets": goal}, console)
    return 0
