"""``convolab algorithms``: the registry as a table."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("algorithms", help="list the registered convolution algorithms")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..registry import algorithms

    table = Table(title="convolab algorithms")
    for col in ("name", "deterministic", "workspace", "multiplications", "summary"):
        table.add_column(col)
    for a in algorithms():
        table.add_row(
            a.name,
            "yes" if a.deterministic else "no",
            a.features.get("workspace", ""),
            a.features.get("multiplies", ""),
            a.summary,
        )
    Console().print(table)
    return 0
