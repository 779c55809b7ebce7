"""NVE energy conservation and speed of MD with a dpa1 model through ASE.

192-atom liquid water (the first frame of ``examples/water/data/data_0``), velocity Verlet,
float64, velocities drawn at ``--temperature``. Reports the total-energy drift in
meV/atom over the run, as the slope of a linear fit × run length and as
max |Etot − Etot(0)|, and the cost in ms/step (force evaluation + integration, the first
call excluded).

    python benchmarks/md_nve.py                     # tiny reference model, 1000 steps
    python benchmarks/md_nve.py --model model.pth --steps 20000 --device cuda
    python benchmarks/md_nve.py --train             # train a small smooth model first, then MD

The drift measures the model as much as the integrator: with ``smooth_type_embedding:
false`` (as in ``tiny.dp``) DPA-1's attention is not smooth at ``rcut``, so a pair
entering the cut-off makes a force spike that velocity Verlet cannot resolve and the
total energy jumps (by tens of meV for the whole box with ``tiny.dp``, whatever the time
step). Models with ``smooth_type_embedding: true`` (or ``se_atten_v2``) avoid this.

``--train`` trains ``benchmarks/train_small_smooth.json`` (a small DPA-1 water model with
``smooth_type_embedding: true``; override with ``--input``) with ``dpa1 train`` into
``--train-dir`` (default: a temporary directory), freezes the checkpoint and runs the MD
with the frozen model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def water_frame(system: Path):
    """The first frame of a deepmd/npy water system as ``ase.Atoms``."""
    from ase import Atoms

    names = (system / "type_map.raw").read_text().split()
    types = np.loadtxt(system / "type.raw", dtype=int)
    coord = np.load(system / "set.000" / "coord.npy")[0].reshape(-1, 3).astype(np.float64)
    box = np.load(system / "set.000" / "box.npy")[0].reshape(3, 3).astype(np.float64)
    return Atoms([names[t] for t in types], positions=coord, cell=box, pbc=True)


def train_model(input_json: str, out_dir: str | None, device: str) -> str:
    """Train ``input_json`` with ``dpa1 train``, freeze it; returns the frozen model path."""
    import tempfile

    from dpa1.cli.main import main as dpa1_main

    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="md_nve_train_"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rc = dpa1_main(["train", input_json, "-o", str(out), "--device", device])
    if rc:
        raise SystemExit(f"dpa1 train failed (exit status {rc})")
    frozen = out / "frozen_model.pth"
    rc = dpa1_main(["freeze", "-c", str(out / "model.ckpt.pt"), "-o", str(frozen)])
    if rc:
        raise SystemExit(f"dpa1 freeze failed (exit status {rc})")
    print(f"trained        {input_json} in {time.perf_counter() - t0:.0f} s -> {frozen}")
    lcurve = out / "lcurve.out"
    if lcurve.exists():
        lines = lcurve.read_text().splitlines()
        header = next((ln for ln in lines if ln.startswith("#")), None)
        last = next((ln for ln in reversed(lines) if ln.strip() and not ln.startswith("#")), None)
        if header and last:
            print(f"lcurve header  {header.lstrip('#').strip()}")
            print(f"lcurve last    {last.strip()}")
    return str(frozen)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "tests" / "data" / "tiny.dp"),
                   help="model file (default: tests/data/tiny.dp)")
    p.add_argument("--train", action="store_true",
                   help="train --input first and run the MD with the resulting (frozen) model")
    p.add_argument("--input", default=str(ROOT / "benchmarks" / "train_small_smooth.json"),
                   help="training input for --train (default: benchmarks/train_small_smooth.json)")
    p.add_argument("--train-dir", default=None,
                   help="output directory for --train (default: a temporary directory)")
    p.add_argument("--system", default=str(ROOT / "examples" / "water" / "data" / "data_0"))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--dt", type=float, default=0.5, help="time step in fs (default 0.5)")
    p.add_argument("--temperature", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)",
    )
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from dpa1.calculator import DP
    from dpa1.cli.md import set_velocities

    if args.train:
        args.model = train_model(args.input, args.train_dir, args.device)

    atoms = water_frame(Path(args.system))
    calc = DP(args.model, device=args.device)
    atoms.calc = calc
    set_velocities(atoms, args.temperature, np.random.default_rng(args.seed))
    dyn = VelocityVerlet(atoms, timestep=args.dt * units.fs)
    n = len(atoms)
    etot = np.empty(args.steps + 1)
    epot = np.empty(args.steps + 1)
    temp = np.empty(args.steps + 1)

    def record() -> None:
        k = dyn.nsteps
        epot[k] = atoms.get_potential_energy()
        etot[k] = epot[k] + atoms.get_kinetic_energy()
        temp[k] = atoms.get_temperature()

    atoms.get_forces()  # warm-up: the first call pays for lazy initialisation
    dyn.attach(record, interval=1)
    t0 = time.perf_counter()
    dyn.run(args.steps)
    wall = time.perf_counter() - t0

    time_fs = np.arange(args.steps + 1) * args.dt
    de = (etot - etot[0]) / n * 1000.0  # meV/atom
    slope = np.polyfit(time_fs, de, 1)[0]  # meV/atom/fs
    run_fs = args.steps * args.dt
    print(f"model          {args.model}")
    print(
        f"system         {n} atoms, {args.steps} steps × {args.dt} fs = {run_fs / 1000:.3f} ps, "
        f"T0 {args.temperature:g} K, device {args.device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"temperature    mean {temp.mean():.1f} K (min {temp.min():.1f}, max {temp.max():.1f})")
    print(f"Epot range     {np.ptp(epot) / n * 1000:.3f} meV/atom")
    print(
        f"drift (fit)    {slope * run_fs:+.4f} meV/atom over the run "
        f"({slope * 1000:+.4f} meV/atom/ps)"
    )
    print(f"max |ΔEtot|    {np.abs(de).max():.4f} meV/atom")
    print(f"speed          {1000 * wall / max(args.steps, 1):.2f} ms/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
