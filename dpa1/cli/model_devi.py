"""``dpa1 model-devi``: model deviation of an ensemble on a system or trajectory, written
in DeePMD-kit's ``model_devi.out`` format (see :mod:`dpa1.infer.model_devi`)."""

from __future__ import annotations

import argparse

import numpy as np


def add_parser(sub) -> None:
    p = sub.add_parser(
        "model-devi", aliases=["model_devi"],
        help="model deviation of an ensemble (DeePMD-kit's model_devi.out format)",
        description=__doc__)
    p.add_argument("-m", "--models", nargs="+", required=True,
                   help="two or more model files (.pth, .pt, .dp, .yaml) sharing one type_map")
    p.add_argument("-s", "--system", required=True,
                   help="a deepmd/npy system, a directory of systems, an HDF5 file of "
                        "systems (file.h5, file.h5#/group), or an ASE-readable trajectory "
                        "(extxyz, LAMMPS dump, .traj…)")
    p.add_argument("-o", "--output", default="model_devi.out",
                   help="output file (default model_devi.out)")
    p.add_argument("-f", "--frequency", type=int, default=1,
                   help="MD steps between the frames, used to number the step column (default 1)")
    p.add_argument("-a", "--atomic", action="store_true",
                   help="also write each atom's force deviation")
    p.add_argument("--relative", type=float, default=None,
                   help="relative force deviation: divide by |F| + RELATIVE (eV/Å)")
    p.add_argument("--relative-v", type=float, default=None,
                   help="relative virial deviation: divide by |V|/natoms + RELATIVE_V (eV)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dpa1.infer.model_devi import make_model_devi
    from dpa1.io.atomic import check_output_path

    if args.frequency < 1:
        raise ValueError("--frequency must be ≥ 1")
    if len(args.models) < 2:
        raise ValueError("model deviation needs at least two models (-m M1 M2 ...)")
    check_output_path(args.output, "-o")
    tables = make_model_devi(args.models, args.system, args.output, frequency=args.frequency,
                             atomic=args.atomic, relative=args.relative,
                             relative_v=args.relative_v, device=args.device)
    nframes = sum(t.shape[0] for t in tables)
    worst = max(float(np.max(t[:, 4])) for t in tables)
    print(f"dpa1 model-devi: {nframes} frames in {len(tables)} system(s), "
          f"max force deviation {worst:.4g} eV/Å -> {args.output}")
    return 0
