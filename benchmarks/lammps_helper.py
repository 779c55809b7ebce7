"""Helpers of ``benchmarks/lammps.sh``: LAMMPS inputs from DeePMD data, a model of the
example's shape, and the comparisons of LAMMPS's numbers with dpa1's ``DeepPot``.

Run with the Python of the environment that holds LAMMPS and DeePMD-kit, dpa1 installed in it::

    python benchmarks/lammps_helper.py data --system examples/water/data/data_0 --rcut 4 \
        --out water.lmp --ref water.npz
    python benchmarks/lammps_helper.py model --input examples/water/input.json --out bench.pt
    python benchmarks/lammps_helper.py compare --model m.pth --ref water.npz --log log.lammps \
        --dump forces.dump
    python benchmarks/lammps_helper.py same --log a.log --dump a.dump --log2 b.log --dump2 b.dump
    python benchmarks/lammps_helper.py drift --log nve.log --natoms 192
    python benchmarks/lammps_helper.py rerun --log nve.log --log2 rerun.log --dump nve.dump \
        --ref water.npz --rcut 4
    python benchmarks/lammps_helper.py looptime --log run.log
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

NKTV2P = 1.6021765e6  # LAMMPS metal units: bar per eV/Å^3


def _near_rcut(coord: np.ndarray, box: np.ndarray, rcut: float, margin: float) -> bool:
    """Whether a pair of the periodic frame is within ``margin`` of ``rcut``: there, with
    non-smooth attention, round-off decides the energy (docs/design.md, "Directions near
    rcut"), so two codes cannot be compared to 1e-9."""
    import torch

    from dpa1.model.neighbor import build_extended_system

    ext, _, _, nlist = build_extended_system(
        torch.from_numpy(coord[None]), torch.zeros(1, len(coord), dtype=torch.long),
        torch.from_numpy(box[None]), rcut + margin, 10_000,
    )
    idx = nlist[0].clamp(min=0)
    r = torch.linalg.norm(ext[0][idx] - ext[0, : len(coord)].unsqueeze(1), dim=-1)
    return bool(torch.any((r[nlist[0] >= 0] - rcut).abs() < margin))


def cmd_data(args: argparse.Namespace) -> int:
    """A LAMMPS data file (atom_style atomic, types in type-map order with their masses,
    coordinates wrapped into the box) of one frame, and the same frame as .npz."""
    import ase.io
    from ase import Atoms

    system = Path(args.system)
    type_map = (system / "type_map.raw").read_text().split()
    atype = np.loadtxt(system / "type.raw", dtype=np.int64).reshape(-1)
    coords = np.load(system / "set.000" / "coord.npy").astype(np.float64)
    boxes = np.load(system / "set.000" / "box.npy").astype(np.float64)
    frames = range(coords.shape[0]) if args.frame < 0 else [args.frame]
    for f in frames:
        coord, box = coords[f].reshape(-1, 3), boxes[f].reshape(3, 3)
        atoms = Atoms(np.array(type_map)[atype], positions=coord, cell=box, pbc=True)
        atoms = atoms.repeat(args.replicate)
        atoms.wrap()
        if _near_rcut(atoms.positions, np.asarray(atoms.cell), args.rcut, args.margin):
            if args.frame >= 0:
                raise SystemExit(f"frame {f}: a pair within {args.margin} Å of rcut")
            continue
        specorder = type_map
        ase.io.write(args.out, atoms, format="lammps-data", specorder=specorder, masses=True,
                     atom_style="atomic")
        lmp_type = np.array([type_map.index(s) for s in atoms.get_chemical_symbols()])
        np.savez(args.ref, coord=atoms.positions, box=np.asarray(atoms.cell), atype=lmp_type,
                 type_map=np.array(type_map))
        print(f"{args.out}: frame {f} of {system}, {len(atoms)} atoms, types {' '.join(type_map)}")
        return 0
    raise SystemExit(f"{system}: every frame has a pair within {args.margin} Å of rcut")


def cmd_model(args: argparse.Namespace) -> int:
    """A randomly initialised model of the input's shape, saved as a checkpoint."""
    import torch

    from dpa1.io.config import load_config, normalize_config
    from dpa1.io.model_file import save_checkpoint
    from dpa1.model.build import build_model

    torch.manual_seed(args.seed)
    config = normalize_config(load_config(args.input))
    model = build_model(config["model"])
    save_checkpoint(args.out, model, config=config)
    print(f"{args.out}: untrained model of {args.input}'s shape")
    return 0


def _thermo_value(log: str, key: str) -> float:
    """The number of a ``print "KEY value"`` line of a LAMMPS log."""
    found = re.findall(rf"^{key} (\S+)$", Path(log).read_text(), flags=re.M)
    if not found:
        raise SystemExit(f"{log}: no '{key}' line")
    return float(found[-1])


def _dump_forces(dump: str) -> np.ndarray:
    """Forces of a ``dump custom ... id fx fy fz`` file sorted by id (its last frame)."""
    lines = Path(dump).read_text().splitlines()
    start = max(i for i, ln in enumerate(lines) if ln.startswith("ITEM: ATOMS"))
    cols = lines[start].split()[2:]
    rows = np.array([ln.split() for ln in lines[start + 1:]], dtype=np.float64)
    rows = rows[np.argsort(rows[:, cols.index("id")])]
    return rows[:, [cols.index(c) for c in ("fx", "fy", "fz")]]


def _virial(log: str, volume: float) -> np.ndarray:
    """The virial (eV) from the printed pressure-virial components (bar)."""
    return np.array([_thermo_value(log, f"PV{k}") for k in range(1, 7)]) * volume / NKTV2P


def cmd_compare(args: argparse.Namespace) -> int:
    """LAMMPS ``run 0`` against dpa1's DeepPot on the same frame."""
    from dpa1.infer.deep_pot import DeepPot

    ref = np.load(args.ref)
    dp = DeepPot(args.model, device="cpu")
    e, f, v = dp.eval(ref["coord"][None], ref["box"][None], ref["atype"])
    e, f, v = float(e.reshape(())), f.reshape(-1, 3), v.reshape(3, 3)
    e_lmp = _thermo_value(args.log, "PE")
    f_lmp = _dump_forces(args.dump)
    vol = abs(np.linalg.det(ref["box"]))
    v_lmp = _virial(args.log, vol)  # xx yy zz xy xz yz
    v_ref = v[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
    de = abs(e_lmp - e) / abs(e)
    df = np.abs(f_lmp - f).max()
    dv = np.abs(v_lmp - v_ref).max() / max(np.abs(v_ref).max(), 1e-300)
    ok = de <= args.etol and df <= args.ftol and dv <= args.vtol
    print(f"{'PASS' if ok else 'FAIL'} LAMMPS vs dpa1 DeepPot: energy {e_lmp:.10f} vs {e:.10f} "
          f"(rel {de:.1e}, tol {args.etol:g}); forces max |dF| {df:.1e} eV/Å (tol "
          f"{args.ftol:g}); virial rel {dv:.1e} (tol {args.vtol:g})")
    return 0 if ok else 1


def cmd_same(args: argparse.Namespace) -> int:
    """Two LAMMPS runs of the same frame (one rank against two)."""
    e1, e2 = _thermo_value(args.log, "PE"), _thermo_value(args.log2, "PE")
    df = np.abs(_dump_forces(args.dump) - _dump_forces(args.dump2)).max()
    de = abs(e1 - e2) / abs(e1)
    ok = de <= args.etol and df <= args.ftol
    print(f"{'PASS' if ok else 'FAIL'} {args.log} vs {args.log2}: energy rel {de:.1e}, "
          f"forces max |dF| {df:.1e} eV/Å")
    return 0 if ok else 1


def _thermo_table(log: str) -> dict[str, np.ndarray]:
    """The last thermo table of a LAMMPS log."""
    lines = Path(log).read_text().splitlines()
    head = max(i for i, ln in enumerate(lines) if ln.split()[:1] == ["Step"])
    cols = lines[head].split()
    rows = []
    for ln in lines[head + 1:]:
        parts = ln.split()
        if len(parts) != len(cols):
            break
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            break
    data = np.array(rows)
    return {c: data[:, k] for k, c in enumerate(cols)}


def cmd_drift(args: argparse.Namespace) -> int:
    """Total energy drift of an NVE run (linear fit), per atom and picosecond."""
    t = _thermo_table(args.log)
    steps, etot = t["Step"], t["TotEng"]
    slope = np.polyfit(steps * args.dt, etot, 1)[0]
    natoms = args.natoms
    print(f"NVE: {int(steps[-1])} steps of {args.dt * 1000:g} fs, {natoms} atoms: drift "
          f"{slope / natoms:.2e} eV/atom/ps, max |E - E0| {np.abs(etot - etot[0]).max():.2e} eV, "
          f"T {t['Temp'].mean():.0f} K")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    """The energies of a trajectory from the run that made it against a ``rerun``."""
    run, rerun = _thermo_table(args.log), _thermo_table(args.log2)
    steps = {int(s): e for s, e in zip(run["Step"], run["PotEng"], strict=True)}
    box = np.load(args.ref)["box"]
    frames = _dump_frames(args.dump)
    pairs, near = [], 0
    for s, e in zip(rerun["Step"], rerun["PotEng"], strict=True):
        if int(s) not in steps:
            continue
        if _near_rcut(frames[int(s)], box, args.rcut, args.margin):
            near += 1
            continue
        pairs.append((steps[int(s)], e))
    if not pairs:
        raise SystemExit(f"{args.log}, {args.log2}: no common steps without pairs near rcut")
    a, b = np.array(pairs).T
    de = np.abs(a - b).max() / np.abs(a).max()
    ok = de <= args.etol
    print(f"{'PASS' if ok else 'FAIL'} {args.log2} on {args.log}'s trajectory: {len(a)} frames "
          f"({near} more with a pair within {args.margin:g} Å of rcut left out), energy max rel "
          f"{de:.1e} (tol {args.etol:g}; the run's energies are printed with 10 decimals)")
    return 0 if ok else 1


def _dump_frames(dump: str) -> dict[int, np.ndarray]:
    """Positions ``(natoms, 3)`` by step of a ``dump custom ... id type x y z`` file."""
    lines = Path(dump).read_text().splitlines()
    frames = {}
    for i, ln in enumerate(lines):
        if ln.startswith("ITEM: TIMESTEP"):
            step, n = int(lines[i + 1]), int(lines[i + 3])
            cols = lines[i + 8].split()[2:]
            rows = np.array([r.split() for r in lines[i + 9:i + 9 + n]], dtype=np.float64)
            rows = rows[np.argsort(rows[:, cols.index("id")])]
            frames[step] = rows[:, [cols.index(c) for c in ("x", "y", "z")]]
    return frames


def cmd_looptime(args: argparse.Namespace) -> int:
    """ms/step of the last ``run`` of a LAMMPS log."""
    text = Path(args.log).read_text()
    found = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps with (\d+) atoms", text)
    tasks = re.findall(r"with (\d+) MPI tasks x (\d+) OpenMP threads", text)
    if not found or not tasks:
        raise SystemExit(f"{args.log}: no 'Loop time' line")
    sec, steps, atoms = found[-1]
    ranks, threads = tasks[-1]
    ms = 1e3 * float(sec) / int(steps)
    print(f"{args.label}\t{atoms} atoms\t{ranks} rank(s) x {threads} thread(s)\t{ms:.1f} ms/step")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--system", required=True)
    d.add_argument("--frame", type=int, default=-1, help="-1: the first frame that qualifies")
    d.add_argument("--rcut", type=float, required=True)
    d.add_argument("--margin", type=float, default=1e-3)
    d.add_argument("--replicate", type=int, nargs=3, default=[1, 1, 1])
    d.add_argument("--out", required=True)
    d.add_argument("--ref", required=True)
    d.set_defaults(func=cmd_data)
    m = sub.add_parser("model")
    m.add_argument("--input", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=1)
    m.set_defaults(func=cmd_model)
    c = sub.add_parser("compare")
    for name in ("--model", "--ref", "--log", "--dump"):
        c.add_argument(name, required=True)
    c.add_argument("--etol", type=float, default=1e-9)
    c.add_argument("--ftol", type=float, default=1e-8)
    c.add_argument("--vtol", type=float, default=1e-8)
    c.set_defaults(func=cmd_compare)
    s = sub.add_parser("same")
    for name in ("--log", "--dump", "--log2", "--dump2"):
        s.add_argument(name, required=True)
    s.add_argument("--etol", type=float, default=1e-12)
    s.add_argument("--ftol", type=float, default=1e-10)
    s.set_defaults(func=cmd_same)
    r = sub.add_parser("drift")
    r.add_argument("--log", required=True)
    r.add_argument("--dt", type=float, default=0.0005, help="timestep, ps")
    r.add_argument("--natoms", type=int, required=True)
    r.set_defaults(func=cmd_drift)
    u = sub.add_parser("rerun")
    u.add_argument("--log", required=True)
    u.add_argument("--log2", required=True)
    u.add_argument("--dump", required=True, help="the trajectory (dump custom id type x y z)")
    u.add_argument("--ref", required=True, help="the .npz of `data` (for the box)")
    u.add_argument("--rcut", type=float, required=True)
    u.add_argument("--margin", type=float, default=1e-3)
    u.add_argument("--etol", type=float, default=1e-12)
    u.set_defaults(func=cmd_rerun)
    t = sub.add_parser("looptime")
    t.add_argument("--log", required=True)
    t.add_argument("--label", default="")
    t.set_defaults(func=cmd_looptime)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
