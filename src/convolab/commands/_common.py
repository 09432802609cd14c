"""What every ``convolab`` subcommand shares: one console set-up, one ``--json FILE``
convention, the options several commands take (``--threads``, ``--scheduler`` / ``--dask``),
argument types.

A subcommand module has ``add_parser(sub)`` (its options, ``set_defaults(func=run)``) and
``run(args)`` in three steps: parse (the arguments into a small config, every check made up
front with an error naming the bad value), compute (a plain dictionary or dataclass of what was
measured or derived, nothing printed but progress through `progress_bar`) and render (tables
for people on the console; with ``--json FILE`` the same data as JSON, `write_json`: atomically,
then says so).
"""

from __future__ import annotations

import argparse
import json
import os
from contextlib import contextmanager

import numpy as np

from ..errors import ConvError

#: console width when the output is not a terminal (files, pipes, CI logs): wide tables stay whole
PIPE_WIDTH = 160


def console(stderr: bool = False, width: int | None = None, soft_wrap: bool = False):
    """The console a command prints to: the terminal's width there, `PIPE_WIDTH` (or
    ``width``) when redirected. ``soft_wrap``: long lines of text are printed whole (tables
    still fit the width), for reports whose sentences are read or searched as lines."""
    from rich.console import Console

    c = Console(stderr=stderr, soft_wrap=soft_wrap)
    if not c.is_terminal:
        c = Console(stderr=stderr, width=width or PIPE_WIDTH, soft_wrap=soft_wrap)
    return c


def add_json(parser: argparse.ArgumentParser, what: str = "the results") -> None:
    """``--json FILE`` (``args.json``): also write ``what`` as JSON."""
    parser.add_argument("--json", metavar="FILE", default=None, help=f"also write {what} as JSON")


def add_threads(parser: argparse.ArgumentParser, what: str, default: int | None = None) -> None:
    """``--threads N`` (``args.threads``), described as ``what``; a ``default`` of None is shown
    as "all". The command checks the value (it knows its range)."""
    shown = "all" if default is None else default
    parser.add_argument("--threads", type=int, default=default, help=f"{what} (default: {shown})")


def add_dask(parser: argparse.ArgumentParser, tasks: str, scheduler_note: str = "",
             local_note: str = "") -> None:
    """``--scheduler ADDRESS`` or ``--dask`` (``args.scheduler``, ``args.dask``; at most one):
    ``tasks`` (e.g. "run the cases") as tasks on that Dask scheduler or on a local Dask cluster
    (the dask extra, `convolab.dask.sweeps.client`); the notes follow each option's help."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help=f"{tasks} as tasks on this Dask scheduler{scheduler_note}")
    g.add_argument("--dask", action="store_true",
                   help=f"{tasks} as tasks on a local Dask cluster{local_note}")


def _plain(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "to_json"):
        return o.to_json()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def write_json(path: str | None, data, out=None) -> None:
    """Write ``data`` to ``path`` as JSON (NumPy values converted), through a temporary file
    replaced at the end (a failed write leaves no half file), and print ``wrote PATH``; nothing
    when ``path`` is None."""
    if not path:
        return
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, default=_plain)
        os.replace(tmp, path)
    except OSError as e:
        raise ConvError(f"cannot write {path}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    (out or console()).print(f"wrote {path}")


def positive_int(text: str) -> int:
    """An argument type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


def comma_list(text: str) -> list[str]:
    """An argument type: comma-separated names (blanks dropped)."""
    return [t.strip() for t in text.split(",") if t.strip()]


@contextmanager
def progress_bar(console, description: str, total: int):
    """A transient progress bar on ``console`` (None: none); yields its ``update(**kw)``."""
    if console is None:
        yield lambda **kw: None
        return
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda **kw: progress.update(task, **kw)
