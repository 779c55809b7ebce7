"""``dpa1 neighbor-stat``: largest neighbour count and smallest distance in the data."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "neighbor-stat", help="neighbour statistics of training data (for sel = 'auto')",
        description="Scan every frame: the largest number of neighbours within RCUT (periodic "
                    "images included, virtual atoms excluded), the smallest pair distance, and the "
                    "sel that 'auto' would give.")
    p.add_argument("-s", "--systems", nargs="+", required=True,
                   help="system directories, parent directories searched for type.raw, or "
                        "HDF5 files of systems (file.h5, file.h5#/group)")
    p.add_argument("-r", "--rcut", type=float, required=True, help="cutoff radius (Å)")
    p.add_argument("-t", "--type-map", nargs="+", default=None, metavar="TYPE",
                   help="element names of the model (checks that the data use only these)")
    p.add_argument("--auto-factor", type=float, default=1.1,
                   help="factor of 'auto:f' used for the suggested sel (default 1.1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dpa1.data.stats import neighbor_stat, resolve_sel
    from dpa1.data.system import expand_systems

    if args.rcut <= 0:
        raise ValueError(f"--rcut must be positive, got {args.rcut}")
    systems = expand_systems(args.systems)
    max_nnei, min_dist = neighbor_stat(systems, args.rcut, args.type_map)
    sel = resolve_sel(f"auto:{args.auto_factor}", max_nnei)
    print(f"systems:        {len(systems)}")
    print(f"rcut:           {args.rcut:g}")
    print(f"min_nbor_dist:  {min_dist:.6f}")
    print(f"max_nbor_size:  {max_nnei}")
    print(f"sel (auto:{args.auto_factor:g}): {sel}")
    return 0
