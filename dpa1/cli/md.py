"""``dpa1 md``: molecular dynamics with a trained model through ASE.

Ensembles:

- ``nve``: velocity Verlet;
- ``nvt``: Langevin (default; ``--friction``), Bussi stochastic velocity rescaling, or a
  Nosé–Hoover chain (``--thermostat``);
- ``npt``: isotropic MTK (Martyna–Tobias–Klein Nosé–Hoover chains, samples the true NPT
  ensemble; default), fully flexible cell MTK (``--barostat mtk-aniso``), or Berendsen
  (``--barostat berendsen``: fast, robust equilibration, but it does *not* sample the NPT
  ensemble: volume fluctuations are wrong).

Outputs go to temporary files next to their targets, one whole frame / line at a time,
and are renamed into place when the run ends, also on Ctrl-C or an error: a run never
leaves a half-written frame nor mixes with an older file of the same name.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

LOG_HEADER = (f"# {'step':>10s} {'time_fs':>12s} {'T_K':>10s} {'Epot_eV':>16s} {'Etot_eV':>16s}"
              f" {'P_bar':>12s} {'Vol_A3':>12s}\n")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "md", help="run molecular dynamics (NVE/NVT/NPT) with a model through ASE",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True, help="model file (.pth, .pt, .dp, .yaml)")
    p.add_argument("-c", "--conf", required=True,
                   help="starting structure, any ASE-readable file (extxyz, POSCAR, lammps-data…)")
    p.add_argument("--index", default="-1",
                   help="frame of --conf to start from (ASE index; default: the last)")
    p.add_argument("--ensemble", choices=("nve", "nvt", "npt"), default="nve")
    p.add_argument("-T", "--temperature", type=float, default=300.0,
                   help="temperature in K: initial velocities and thermostat target (default 300)")
    p.add_argument("-P", "--pressure", type=float, default=1.01325,
                   help="pressure in bar for npt (default 1.01325 = 1 atm)")
    p.add_argument("--dt", type=float, default=0.5, help="time step in fs (default 0.5)")
    p.add_argument("--steps", type=int, default=1000, help="number of MD steps (default 1000)")
    p.add_argument("-o", "--output", default="traj.extxyz",
                   help="trajectory: .extxyz / .xyz (text) or .traj (ASE binary); "
                        "default traj.extxyz")
    p.add_argument("--log", default="thermo.log", help="thermodynamics log (default thermo.log)")
    p.add_argument("--traj-freq", type=int, default=10,
                   help="write a frame every K steps (default 10)")
    p.add_argument("--log-freq", type=int, default=None,
                   help="write a log line every K steps (default: --traj-freq)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed for velocities and stochastic thermostats "
                        "(default: random, printed)")
    p.add_argument("--keep-velocities", action="store_true",
                   help="keep the velocities stored in --conf instead of drawing new ones")
    p.add_argument("--thermostat", choices=("langevin", "bussi", "nose-hoover"), default="langevin",
                   help="nvt thermostat (default langevin)")
    p.add_argument("--friction", type=float, default=0.01,
                   help="Langevin friction in 1/fs (default 0.01)")
    p.add_argument("--tdamp", type=float, default=None,
                   help="thermostat time constant in fs (Bussi, Nosé–Hoover, MTK, Berendsen; "
                        "default 100·dt)")
    p.add_argument("--barostat", choices=("mtk", "mtk-aniso", "berendsen"), default="mtk",
                   help="npt barostat: isotropic MTK (default), fully flexible MTK, or Berendsen")
    p.add_argument("--pdamp", type=float, default=None,
                   help="barostat time constant in fs (default 1000·dt)")
    p.add_argument("--compressibility", type=float, default=4.57e-5,
                   help="Berendsen compressibility in 1/bar (default 4.57e-5, water)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# === setup ==================================================================================
def read_start(path: str, index: str):
    """The starting ``Atoms`` from any ASE-readable file."""
    from ase.io import read

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such structure file")
    try:
        idx: Any = int(index)
    except ValueError:
        idx = index
    try:
        atoms = read(path, index=idx)
    except Exception as err:  # ASE raises many types for unreadable files
        raise ValueError(f"{path}: ASE cannot read it ({type(err).__name__}: {err})") from None
    if isinstance(atoms, list):
        raise ValueError(f"--index {index!r} selects {len(atoms)} frames; give a single frame")
    return atoms


def set_velocities(atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell–Boltzmann velocities at exactly ``temperature_K`` with no centre-of-mass
    motion (and, for a free cluster, no rotation)."""
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):  # ASE ≥ 3.29
        vd.thermalize_momenta(atoms, temperature_K, rng=rng, exact_temperature=True)
    else:
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng,
                                        force_temp=True)
    vd.Stationary(atoms)
    if not np.asarray(atoms.pbc).any():
        vd.ZeroRotation(atoms)  # a free cluster must not spin
    current = atoms.get_temperature()  # counts the degrees of freedom that constraints leave
    if current > 0:
        atoms.set_momenta(atoms.get_momenta() * np.sqrt(temperature_K / current))


def add_constraints(atoms, args: argparse.Namespace) -> None:
    """Langevin: fix the centre of mass with a :class:`~ase.constraints.FixCom` constraint,
    since ``Langevin(fixcm=True)`` biases the sampled distribution (deprecated in ASE 3.28)."""
    from ase.constraints import FixCom

    if (args.ensemble == "nvt" and args.thermostat == "langevin"
            and not any(isinstance(c, FixCom) for c in atoms.constraints)):
        atoms.set_constraint(list(atoms.constraints) + [FixCom()])


def make_dynamics(atoms, args: argparse.Namespace, rng: np.random.Generator):
    """The ASE integrator for ``args.ensemble`` and a one-line description of it."""
    from ase import units

    dt = args.dt * units.fs
    tdamp = (args.tdamp if args.tdamp is not None else 100 * args.dt) * units.fs
    pdamp = (args.pdamp if args.pdamp is not None else 1000 * args.dt) * units.fs
    T = args.temperature
    if args.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt), "NVE, velocity Verlet"
    if args.ensemble == "nvt":
        if args.thermostat == "langevin":
            from ase.constraints import FixCom
            from ase.md.langevin import Langevin

            # with a FixCom constraint (see add_constraints) Langevin must not fix it again
            kw = {"fixcm": False} if any(isinstance(c, FixCom) for c in atoms.constraints) else {}
            dyn = Langevin(atoms, timestep=dt, temperature_K=T, friction=args.friction / units.fs,
                           rng=rng, **kw)
            return dyn, f"NVT, Langevin (friction {args.friction} 1/fs)"
        if args.thermostat == "bussi":
            from ase.md.bussi import Bussi

            dyn = Bussi(atoms, timestep=dt, temperature_K=T, taut=tdamp, rng=rng)
            return dyn, f"NVT, Bussi velocity rescaling (tau {tdamp / units.fs:g} fs)"
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        dyn = NoseHooverChainNVT(atoms, timestep=dt, temperature_K=T, tdamp=tdamp)
        return dyn, f"NVT, Nosé–Hoover chain (tdamp {tdamp / units.fs:g} fs)"
    # npt
    if not np.asarray(atoms.pbc).all():
        raise ValueError("--ensemble npt needs a periodic cell (pbc=True)")
    p_au = args.pressure * units.bar
    if args.barostat == "berendsen":
        from ase.md.nptberendsen import NPTBerendsen

        dyn = NPTBerendsen(atoms, timestep=dt, temperature_K=T, pressure_au=p_au, taut=tdamp,
                           taup=pdamp, compressibility_au=args.compressibility / units.bar)
        note = ("NPT, Berendsen thermostat + barostat. Note: Berendsen relaxes T and P quickly "
                "but does not sample the NPT ensemble (fluctuations are wrong); use it to "
                "equilibrate, then --barostat mtk for production")
        return dyn, note
    from ase.md.nose_hoover_chain import MTKNPT, IsotropicMTKNPT

    cls = IsotropicMTKNPT if args.barostat == "mtk" else MTKNPT
    dyn = cls(atoms, timestep=dt, temperature_K=T, pressure_au=p_au, tdamp=tdamp, pdamp=pdamp)
    shape = "isotropic" if args.barostat == "mtk" else "fully flexible cell"
    return dyn, (f"NPT, MTK Nosé–Hoover chains, {shape} (tdamp {tdamp / units.fs:g} fs, "
                 f"pdamp {pdamp / units.fs:g} fs)")


# === outputs ================================================================================
def _publish(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path`` with the permissions a plain ``open()`` would give
    (``mkstemp`` creates files readable by their owner only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


class StagedFile:
    """A text file written in a hidden temporary next to ``path`` and renamed into place by
    :meth:`close` (called on success and on failure alike: partial runs keep their output)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                   dir=self.path.parent)
        self.tmp = Path(tmp)
        self.handle: TextIO = os.fdopen(fd, "w")

    def write(self, text: str) -> None:
        self.handle.write(text)
        self.handle.flush()  # whole frames / lines reach the disk as the run goes

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()
            _publish(self.tmp, self.path)


class TrajectoryWriter:
    """Frames to ``.extxyz``/``.xyz`` (text, streamed) or ``.traj`` (ASE's binary format),
    staged like :class:`StagedFile`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".extxyz", ".xyz", ".traj"):
            raise ValueError(f"{path}: trajectory must be .extxyz, .xyz or .traj")
        self.text = StagedFile(path) if suffix != ".traj" else None
        self.binary = None
        if self.text is None:
            from ase.io.trajectory import Trajectory

            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                       dir=self.path.parent)
            os.close(fd)
            self.tmp = Path(tmp)
            self.binary = Trajectory(str(self.tmp), "w")

    def write(self, atoms) -> None:
        if self.text is not None:
            from ase.io import write

            buf = io.StringIO()  # format first, write in one piece: a frame is never torn
            write(buf, atoms, format="extxyz")
            self.text.write(buf.getvalue())
        else:
            self.binary.write(atoms)

    def close(self) -> None:
        if self.text is not None:
            self.text.close()
        elif self.binary is not None:
            self.binary.close()
            self.binary = None
            _publish(self.tmp, self.path)


def thermo(atoms, step: int, dt_fs: float) -> tuple[str, dict[str, float]]:
    """A log line and its values: step, time, T, Epot, Etot, P (incl. kinetic), volume."""
    from ase import units

    epot = atoms.get_potential_energy()
    ekin = atoms.get_kinetic_energy()
    temp = atoms.get_temperature()
    if np.asarray(atoms.pbc).all():
        stress = atoms.get_stress(include_ideal_gas=True)
        press = -float(np.mean(stress[:3])) / units.bar
        vol = atoms.get_volume()
    else:
        press = vol = float("nan")
    vals = {"T": temp, "Epot": epot, "Etot": epot + ekin, "P": press, "V": vol}
    line = (f"  {step:10d} {step * dt_fs:12.3f} {temp:10.3f} {epot:16.6f} {epot + ekin:16.6f}"
            f" {press:12.3f} {vol:12.3f}\n")
    return line, vals


# === the run ================================================================================
def run(args: argparse.Namespace) -> int:
    from dpa1.infer.calculator import DP
    from dpa1.io.atomic import check_output_path
    from dpa1.train.progress import progress_bar

    if args.steps < 0 or args.dt <= 0 or args.traj_freq < 1:
        raise ValueError("--steps must be ≥ 0, --dt > 0 and --traj-freq ≥ 1")
    check_output_path(args.output, "--output")
    if args.log:
        check_output_path(args.log, "--log")
    log_freq = args.log_freq or args.traj_freq
    atoms = read_start(args.conf, args.index)
    atoms.calc = DP(args.model, device=args.device)
    if args.seed is None:  # draw one, and print it so the run can be repeated
        args.seed = int(np.random.SeedSequence().entropy % (2**31))
    rng = np.random.default_rng(args.seed)
    atoms.get_potential_energy()  # fail early on unknown elements / mixed pbc
    add_constraints(atoms, args)
    if not (args.keep_velocities and np.any(atoms.get_momenta())):
        set_velocities(atoms, args.temperature, rng)
    dyn, desc = make_dynamics(atoms, args, rng)
    print(f"dpa1 md: {len(atoms)} atoms, {desc}; T={args.temperature:g} K"
          + (f", P={args.pressure:g} bar" if args.ensemble == "npt" else "")
          + f", dt={args.dt:g} fs, {args.steps} steps, seed {args.seed}")

    traj = TrajectoryWriter(args.output)
    log = StagedFile(args.log) if args.log else None
    state = {"last_traj": -1, "last_vals": {}}

    def observe() -> None:
        step = dyn.nsteps
        if step % log_freq == 0 or step == args.steps:
            line, vals = thermo(atoms, step, args.dt)
            state["last_vals"] = vals
            if log is not None:
                log.write(line)
        if (step % args.traj_freq == 0 or step == args.steps) and step != state["last_traj"]:
            traj.write(atoms)
            state["last_traj"] = step
        progress.update(task, completed=step, info=_info(state["last_vals"]))

    t0 = time.perf_counter()
    try:
        if log is not None:
            log.write(LOG_HEADER)
        with progress_bar("MD", disable=args.no_progress) as progress:
            task = progress.add_task("md", total=args.steps, info="")
            dyn.attach(observe, interval=1)
            dyn.run(args.steps)
    finally:
        traj.close()
        if log is not None:
            log.close()
    wall = time.perf_counter() - t0
    ms = 1000 * wall / max(args.steps, 1)
    print(f"dpa1 md: done, {ms:.2f} ms/step; trajectory -> {args.output}"
          + (f", log -> {args.log}" if args.log else ""))
    return 0


def _info(vals: dict[str, float]) -> str:
    if not vals:
        return ""
    s = f"T {vals['T']:7.1f} K  Epot {vals['Epot']:.4f} eV"
    if np.isfinite(vals["P"]):
        s += f"  P {vals['P']:9.1f} bar"
    return s
