"""``convolab algorithms``: the registry as a table, capabilities probed from ``supports``.

The strides / dilation / groups / kernel columns are not declared by hand: each algorithm's
``supports`` is asked about a set of probe convolutions, so the table (and the README's copy
of it, made with ``--markdown``) says what the code actually accepts.
"""

from __future__ import annotations

from ..spec import ConvSpec
from ._common import add_json, write_json
from ._common import console as make_console

_KERNELS = (1, 3, 5, 7, 11)
#: probe convolutions, for a k x k kernel the algorithm supports
_PROBES = {
    "stride 2": lambda k: dict(padding=k // 2, stride=2),
    "dilation 2": lambda k: dict(padding=k - 1, dilation=2),
    "groups": lambda k: dict(padding=k // 2, groups=2),
    "depthwise": lambda k: dict(padding=k // 2, groups=8),
    "asym. pad": lambda k: dict(padding=(0, k // 2 + 1, k // 2, 0)),
}


def _spec(k: int, groups: int = 1, **kw) -> ConvSpec:
    return ConvSpec.from_shapes((1, 8, 24, 24), (8, 8 // groups, k, k), groups=groups, **kw)


def capabilities(algo) -> dict[str, str]:
    """What ``algo`` supports, probed through its ``supports`` function."""
    ks = [k for k in _KERNELS if algo.supports(_spec(k, padding=k // 2)) is None]
    k0 = 3 if 3 in ks else (ks[0] if ks else 3)
    row = {label: "yes" if algo.supports(_spec(k0, **make(k0))) is None else "no" for label, make in _PROBES.items()}
    row["kernels"] = ", ".join(f"{k}x{k}" for k in ks) if ks else "none"
    row["dtypes"] = "fp16 (in fp32), fp32, fp64"
    row["deterministic"] = "yes" if algo.deterministic else "no"
    row["batch-invariant"] = "yes" if algo.batch_invariant else "no"
    row["workspace"] = algo.features.get("workspace", "")
    row["multiplications"] = algo.features.get("multiplies", "")
    return row


COLUMNS = ["kernels", *_PROBES, "dtypes", "deterministic", "batch-invariant", "workspace", "multiplications"]


def add_parser(sub) -> None:
    p = sub.add_parser("algorithms", help="list the registered convolution algorithms and what they support")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (the README's feature table)")
    add_json(p, "every algorithm's capabilities")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..registry import list_algorithms

    rows = [(a.name, capabilities(a)) for a in list_algorithms()]
    if args.json:
        write_json(args.json, {name: row for name, row in rows}, make_console(stderr=True))
    if args.markdown:
        print("| algorithm | " + " | ".join(COLUMNS) + " |")
        print("|" + "---|" * (len(COLUMNS) + 1))
        for name, row in rows:
            print(f"| `{name}` | " + " | ".join(row[c] for c in COLUMNS) + " |")
        return 0
    from rich.table import Table

    console = make_console(width=200)  # fourteen columns
    table = Table(title="convolab algorithms (capabilities probed from each algorithm's supports())")
    table.add_column("algorithm")
    for c in COLUMNS:
        table.add_column(c)
    for name, row in rows:
        table.add_row(name, *(row[c] for c in COLUMNS))
    console.print(table)
    return 0
