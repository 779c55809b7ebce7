"""``dpa1`` command line: one module per verb under :mod:`dpa1.cli`.

Each verb module exposes ``add_parser(subparsers)`` (registering its options and
``func``) so this file stays a thin dispatcher. User errors (bad input files, configs,
data, outputs that cannot be written) are printed as one line without a traceback and
exit with status 2; set ``DPA1_DEBUG=1`` to see the traceback. Warnings are printed as one
line too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable
from typing import TextIO

# verb modules, in the order shown by --help
VERBS = (
    "train", "freeze", "test", "change_bias", "neighbor_stat", "convert_data", "convert",
    "show", "eval_desc", "md", "model_devi", "plot", "ops_path",
)


def build_parser() -> argparse.ArgumentParser:
    from dpa1 import __version__

    parser = argparse.ArgumentParser(
        prog="dpa1", description="DPA-1 (se_atten) deep potential: train, test, freeze and run MD.")
    parser.add_argument("--version", action="version", version=f"dpa1 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb in VERBS:
        try:
            module = importlib.import_module(f"dpa1.cli.{verb}")
        except ModuleNotFoundError as err:
            if err.name == f"dpa1.cli.{verb}":
                continue  # verb not shipped in this build
            raise
        module.add_parser(sub)
    return parser


def _one_line_warning(command: str) -> Callable[..., None]:
    """Warnings as ``dpa1 VERB: warning: ...`` lines, like the errors (no source line)."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        print(f"dpa1 {command}: warning: {message}", file=sys.stderr if file is None else file)

    return show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        with warnings.catch_warnings():  # restores the default display afterwards
            warnings.showwarning = _one_line_warning(args.command)
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dpa1: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, NotImplementedError, KeyError) as err:
        if os.environ.get("DPA1_DEBUG"):
            raise
        msg = str(err).strip() or type(err).__name__
        print(f"dpa1 {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
