"""``convolab accuracy``: Winograd and SFC error in fp32, fp16 and low-bit integers (see
`convolab.accuracy`)."""

from __future__ import annotations

from dataclasses import dataclass

from ._common import add_dask, add_json, write_json
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
    add_dask(p, "run the cases")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class AccuracyConfig:
    """The checked options of ``convolab accuracy``."""

    batch: int = 2
    channels: int = 32
    out_channels: int = 32
    size: int = 28
    bits: tuple[int, ...] = (8, 6, 4)
    seed: int = 0
    scheduler: str | None = None
    dask: bool = False

    @property
    def settings(self) -> list[str]:
        """The table's error columns: fp32, fp16, then one per integer width."""
        return ["fp32", "fp16"] + [f"int{b}" for b in self.bits]


def _parse(args) -> AccuracyConfig:
    """Checked options (sizes >= 1, integer widths 2-16)."""
    from ..errors import ConvError

    for name in ("batch", "channels", "out_channels", "size"):
        if getattr(args, name) < 1:
            raise ConvError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(b < 2 or b > 16 for b in args.bits):
        raise ConvError(f"--bits must be between 2 and 16, got {args.bits}")
    return AccuracyConfig(args.batch, args.channels, args.out_channels, args.size, tuple(args.bits),
                          args.seed, args.scheduler, args.dask)


def compute(cfg: AccuracyConfig, say=None) -> dict:
    """The study's rows (`convolab.accuracy.Row`: one per algorithm and kernel size, locally or
    as tasks on Dask) and the SFC-6 vs Winograd ratios (``targets``) for fp16 and int8 where
    measured. Figures only, nothing printed: with Dask ``say(text)`` is told the cluster's
    one-line description once it is up."""
    from ..accuracy import study, targets

    if cfg.scheduler or cfg.dask:
        from ..dask import sweeps

        with sweeps.client(cfg.scheduler, cfg.dask) as c:
            if say is not None:
                say(sweeps.describe(c))
            rows = sweeps.accuracy_study(c, cfg.batch, cfg.channels, cfg.out_channels, cfg.size,
                                         cfg.bits, cfg.seed)
    else:
        rows = study(cfg.batch, cfg.channels, cfg.out_channels, cfg.size, cfg.bits, cfg.seed)
    goal = targets(rows, [s for s in ("fp16", "int8") if s in cfg.settings])
    return {"rows": rows, "targets": goal}


def _render(console, cfg: AccuracyConfig, result: dict) -> None:
    """The table of relative RMSEs and one line per target (met or not)."""
    from rich.table import Table

    settings = cfg.settings
    table = Table(
        title=f"relative RMSE vs float64: N{cfg.batch} C{cfg.channels} K{cfg.out_channels} "
        f"{cfg.size}x{cfg.size}, ReLU-like inputs, seed {cfg.seed}"
    )
    table.add_column("algorithm")
    table.add_column("kernel")
    table.add_column("products/output", justify="right")
    for s in settings:
        table.add_column(s, justify="right")
    for row in result["rows"]:
        table.add_row(row.name, f"{row.kernel}x{row.kernel}", f"{row.products_per_output:.2f}",
                      *(f"{row.errors[s]:.2e}" for s in settings))
    console.print(table)
    for s, v in result["targets"].items():
        ok = v["vs_f2x3"] <= 1.3 and v["vs_f4x3"] <= 0.35
        console.print(
            f"{s}: SFC-6(6x6,3x3) / F(2x2,3x3) = {v['vs_f2x3']:.2f} (goal <= 1.3), "
            f"/ F(4x4,3x3) = {v['vs_f4x3']:.2f} (goal <= 0.35): {'met' if ok else 'NOT met'}"
        )


def run(args) -> int:
    """Parse, compute (`compute`: rows and targets), render (`_render`), write the JSON."""
    cfg = _parse(args)
    result = compute(cfg, say=make_console(stderr=True).print)
    console = make_console()
    _render(console, cfg, result)
    if args.json:
        write_json(args.json, {"config": {k: getattr(args, k) for k in
                                          ("batch", "channels", "out_channels", "size", "bits", "seed")},
                               "rows": [row.__dict__ for row in result["rows"]],
                               "targets": result["targets"]}, console)
    return 0
