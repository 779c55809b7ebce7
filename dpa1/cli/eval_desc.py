"""``dpa1 eval-desc -m MODEL (-s SYSTEM | -f DATAFILE) [-o DIR] [--dtype D]``: the per-atom
descriptor of every frame of each system, as ``dp eval-desc``: ``DIR/<system name>.npy`` of
shape ``(nframes, natoms, dim_out)``, atoms in the order of the system's files."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

DTYPES = {"fp32": np.float32, "fp64": np.float64, "native": np.float64}
FRAMES_PER_CHUNK = 64  # frames read and evaluated together (bounds memory)


def add_parser(sub) -> None:
    p = sub.add_parser("eval-desc", help="evaluate the per-atom descriptors of systems",
                       description=__doc__)
    p.add_argument("-m", "--model", default="frozen_model.pth",
                   help="a .pth, .pt (dpa1's or DeePMD-kit's) or .dp model")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-s", "--system", default=".",
                     help="a system directory, or a directory searched recursively for systems")
    src.add_argument("-f", "--datafile", default=None,
                     help="a file naming one system directory per line")
    p.add_argument("-o", "--output", default="desc",
                   help="output directory; each system is saved as OUTPUT/<system name>.npy")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="native",
                   help="float type of the saved descriptors (native: the model's, float64)")
    p.add_argument("--model-branch", "--head", dest="model_branch", default=None,
                   help="the branch of a multi-task DeePMD-kit checkpoint to use")
    p.add_argument("--device", default=None)
    p.set_defaults(func=run)


def system_list(system: str, datafile: str | None) -> list[str]:
    """The systems named by ``-f`` (one per line, blank lines skipped) or found under ``-s``."""
    from dpa1.data.system import expand_systems

    if datafile is None:
        return expand_systems(system)
    with open(datafile) as f:
        paths = [line.strip() for line in f if line.strip()]
    if not paths:
        raise ValueError(f"{datafile}: names no system")
    return paths


def output_names(paths: list[str], out_dir: Path) -> list[Path]:
    """``out_dir/<basename>.npy`` per system; two systems of one name are refused (one file
    would overwrite the other)."""
    names = [os.path.basename(str(p).rstrip("/")) for p in paths]
    seen: dict[str, str] = {}
    for name, path in zip(names, paths, strict=True):
        if name in seen:
            raise ValueError(f"systems {seen[name]} and {path} would both be saved as "
                             f"{out_dir / (name + '.npy')}; evaluate them separately")
        seen[name] = path
    return [out_dir / f"{name}.npy" for name in names]


def run(args: argparse.Namespace) -> int:
    from dpa1.data.system import DeepmdSystem
    from dpa1.infer.deep_pot import DeepPot
    from dpa1.io.atomic import atomic_path, check_output_path

    paths = system_list(args.system, args.datafile)
    out_dir = Path(args.output)
    check_output_path(out_dir, "-o", directory=True)
    outputs = output_names(paths, out_dir)
    dp = DeepPot(args.model, device=args.device, model_branch=args.model_branch)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, out in zip(paths, outputs, strict=True):
        system = DeepmdSystem(path, dp.get_type_map())
        print(f"# processing system : {path}")
        blocks = []
        for start in range(0, system.nframes, FRAMES_PER_CHUNK):
            idx = np.arange(start, min(start + FRAMES_PER_CHUNK, system.nframes))
            frames = system.get_frames(idx, labels=[])
            with dp.naming(path, start, system.idx_map):
                desc = dp.eval_descriptor(frames["coord"], frames.get("box"), frames["atype"])
            blocks.append(system.to_file_order(desc).astype(DTYPES[args.dtype]))
        desc = np.concatenate(blocks)
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, desc)
        print(f"# descriptors saved to {out}")
        print(f"# descriptor shape: {desc.shape}")
    return 0
