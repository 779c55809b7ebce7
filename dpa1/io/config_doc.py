"""Print the Markdown reference: every input key, then every command-line flag.

Usage: ``python -m dpa1.io.config_doc > docs/input_reference.md``
"""

from __future__ import annotations

import argparse
import sys

from dpa1.io.config import model_defaults_doc


def cli_reference_doc() -> str:
    """Markdown tables of every verb's flags, generated from the argparse parsers."""
    from dpa1.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = ["# Command line", "", "Generated from the parsers in `dpa1/cli/`. "
             "`dpa1 VERB --help` prints the same.", ""]
    for name, verb in sub.choices.items():
        lines += [f"## dpa1 {name}", "", "| flag | default | description |", "|---|---|---|"]
        for action in verb._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(f"`{f}`" for f in action.option_strings) or f"`{action.dest}`"
            if action.nargs in ("+", "*"):
                flags += " (several)"
            unset = action.default is None or action.default is False
            default = "" if unset else f"`{action.default}`"
            text = (action.help or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {flags} | {default} | {text} |")
        lines.append("")
    return "\n".join(lines)


def reference_doc() -> str:
    """The whole of ``docs/input_reference.md``."""
    return model_defaults_doc() + "\n" + cli_reference_doc()


def main() -> None:
    """Print the reference to stdout."""
    sys.stdout.write(reference_doc())


if __name__ == "__main__":
    main()
