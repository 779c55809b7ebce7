"""``dpa1 ops-path``: print the path of dpa1's compiled C++ op library (for DP_PLUGIN_PATH)."""

from __future__ import annotations

import argparse

import torch


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ops-path",
        help="print the path of dpa1's C++ op library, building it if needed "
             "(LAMMPS: DP_PLUGIN_PATH=$(dpa1 ops-path))",
        description="Print the path of dpa1's compiled C++ op library for the installed torch "
                    f"(here {torch.__version__}), building it first if needed. DeePMD-kit's "
                    "C++ library (LAMMPS pair_style deepmd) loads it from DP_PLUGIN_PATH; it "
                    "must be the torch that DeePMD-kit's C++ library was built with.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dpa1.accel.build import library_path

    print(library_path())
    return 0
