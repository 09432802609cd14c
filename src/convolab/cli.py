"""The ``convolab`` command.

Every subcommand lives in ``convolab.commands`` (one module each; what they share, the console,
``--json FILE`` and argument types, is `convolab.commands._common`); each exposes
``add_parser(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
arguments, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ._version import __version__

#: modules that each add one or more sub-commands
COMMAND_MODULES = [
    "convolab.commands.algorithms",
    "convolab.commands.bench",
    "convolab.commands.model",
    "convolab.commands.deviations",
    "convolab.commands.calibrate",
    "convolab.commands.highdim",
    "convolab.commands.he",
    "convolab.commands.accuracy",
    "convolab.commands.quantize_eval",
    "convolab.commands.hsi",
]

#: the dask extra's modules (`convolab.dask`: the sweep commands' --scheduler / --dask)
DASK_MODULES = ("dask", "distributed", "zarr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convolab",
        description="Convolution algorithms for CNN inference, measured side by side.",
    )
    parser.add_argument("--version", action="version", version=f"convolab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .errors import ConvError

    try:
        return int(args.func(args) or 0)
    except ConvError as e:
        print(f"convolab: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if e.name not in DASK_MODULES:
            raise
        print(f"convolab: error: --scheduler / --dask need the dask extra (pip install "
              f"'convolab[dask]'): no module {e.name!r}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convolab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
