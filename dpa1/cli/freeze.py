"""``dpa1 freeze``: checkpoint → self-contained TorchScript model (``.pth``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpa1.io.atomic import check_output_path
from dpa1.io.model_file import freeze, load_energy_model


def add_parser(sub) -> None:
    p = sub.add_parser("freeze", help="write a self-contained TorchScript model (.pth)")
    p.add_argument("-c", "--checkpoint", default="model.ckpt.pt",
                   help="checkpoint file, dpa1's or DeePMD-kit's (or a directory holding "
                   "model.ckpt.pt), or a .dp file")
    p.add_argument("-o", "--output", default="frozen_model.pth", help="output .pth file")
    p.add_argument("--model-branch", "--head", dest="model_branch", default=None,
                   help="the branch of a multi-task DeePMD-kit checkpoint to freeze")
    p.add_argument("--lammps", action="store_true",
                   help="write the interface DeePMD-kit's C++ library calls, for LAMMPS "
                        "pair_style deepmd (dpa1 reads the file too)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_path(args.output, "-o")
    src = Path(args.checkpoint)
    if src.is_dir():
        src = src / "model.ckpt.pt"
    model, config = load_energy_model(src, args.model_branch)
    ops = freeze(model, args.output, config=(config or {}).get("model") if config else None,
                 lammps=args.lammps)
    print(f"froze {src} -> {args.output}")
    if args.lammps:
        plugin = ("it calls dpa1's C++ ops: run lmp with DP_PLUGIN_PATH=$(dpa1 ops-path)" if ops
                  else "plain PyTorch layers (no C++ ops): no DP_PLUGIN_PATH needed")
        print(f"LAMMPS: pair_style deepmd {args.output}; pair_coeff * * "
              f"{' '.join(model.type_map)} (LAMMPS atom types 1..{model.ntypes} in this order); "
              f"{plugin}")
    return 0
