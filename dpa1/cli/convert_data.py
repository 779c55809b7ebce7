"""``dpa1 convert-data``: ASE-readable files → ``deepmd/npy`` training data."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert-data", help="convert extxyz/OUTCAR/ASE db/... to deepmd/npy systems",
        usage="%(prog)s [-h] [--mixed] [--format FMT] [--type-map TYPE ...] [--set-size N] "
              "IN [IN ...] OUT",
        description="Read every structure of IN... with ASE and write deepmd/npy data to OUT: one "
                    "system per composition, or with --mixed one mixed-type system (frames padded "
                    "with virtual atoms). Energies, forces and virials (-stress*volume) come from "
                    "the file's calculator results.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="input files (IN), then the output directory (OUT)")
    p.add_argument("--mixed", action="store_true", help="write one mixed-type system")
    p.add_argument("--format", default=None, metavar="FMT", help="ASE format name (default: guess)")
    p.add_argument("--type-map", nargs="+", default=None, metavar="TYPE",
                   help="element order of type_map.raw (default: sorted element names)")
    p.add_argument("--set-size", type=int, default=5000, metavar="N",
                   help="frames per set.* directory (default 5000)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dpa1.data.convert import convert
    from dpa1.data.system import DeepmdSystem
    from dpa1.io.atomic import check_output_path

    if len(args.paths) < 2:
        raise ValueError("give at least one input file and the output directory")
    if args.set_size < 1:
        raise ValueError(f"--set-size must be >= 1, got {args.set_size}")
    *inputs, output = args.paths
    check_output_path(output, "OUT", directory=True)
    written = convert(inputs, output, mixed=args.mixed, fmt=args.format, type_map=args.type_map,
                      set_size=args.set_size)
    for path in written:
        system = DeepmdSystem(path)  # read back: what we wrote must open cleanly
        labels = ", ".join(system.labels) or "no labels"
        print(f"{path}: {system.nframes} frames, {system.natoms} atoms, {labels}")
    return 0
