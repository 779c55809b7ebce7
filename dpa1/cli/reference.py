"""Markdown reference of every verb and flag, generated from the argparse definitions
(appended to ``docs/input_reference.md`` by :mod:`dpa1.io.config_doc`)."""

from __future__ import annotations

import argparse


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _flag_row(action: argparse.Action) -> str:
    names = ", ".join(f"`{o}`" for o in action.option_strings) \
        or f"`{action.metavar or action.dest}`"
    if action.nargs in ("+", "*"):
        names += " …"
    default = action.default
    hidden = default is None or default is False or default == argparse.SUPPRESS
    shown = "" if hidden or action.required or not action.option_strings else f"`{default}`"
    what = action.help or ""
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        what += f" (one of: {', '.join(map(str, action.choices))})"
    if action.required and action.option_strings:
        what += " (required)"
    return "| " + " | ".join(_cell(c) for c in (names, shown, what)) + " |"


def cli_reference_doc() -> str:
    """One section per verb: its one-line help and a table of its arguments."""
    from dpa1.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    lines = ["", "# Command line", "",
             "Generated from the argparse definitions in `dpa1/cli/`; `dpa1 VERB --help` shows "
             "them too."]
    for name, verb in sub.choices.items():
        lines += ["", f"## dpa1 {name}", "", _cell(helps.get(name, "")), "",
                  "| argument | default | description |", "|---|---|---|"]
        lines += [_flag_row(a) for a in verb._actions if not isinstance(a, argparse._HelpAction)]
    return "\n".join(lines) + "\n"
