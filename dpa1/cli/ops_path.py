"""``dpa1 ops-path``: print the library to put in DP_PLUGIN_PATH (dpa1's op loader)."""

from __future__ import annotations

import argparse

import torch


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ops-path",
        help="print the library that loads dpa1's C++ ops, building them if needed "
             "(LAMMPS: DP_PLUGIN_PATH=$(dpa1 ops-path))",
        description="Print the path of the library that loads dpa1's C++ ops built for the "
                    f"installed torch (here {torch.__version__}), building both first if "
                    "needed. DeePMD-kit's C++ library (LAMMPS pair_style deepmd) loads it from "
                    "DP_PLUGIN_PATH. It loads the ops only into a process running the same "
                    "torch release, and otherwise prints one line naming both versions: run "
                    "this command with the Python of the torch that DeePMD-kit's C++ library "
                    "uses.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dpa1.accel.build import plugin_path

    print(plugin_path())
    return 0
