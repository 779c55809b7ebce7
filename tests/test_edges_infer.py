"""Inference at the edges, through DeepPot, the ASE calculator and the CLI verbs: clusters
far apart, atoms on one position or closer than any training pair (the model's
``min_nbor_dist``, kept through every model file), no atoms, and more neighbours than
``sel`` (at inference and in training data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from dpa1.calculator import DP
from dpa1.cli.main import main
from dpa1.data.convert import write_system
from dpa1.data.stats import neighbor_stat
from dpa1.infer.deep_pot import DeepPot, OverlapError
from dpa1.io.model_file import freeze, load_checkpoint, save_checkpoint
from dpa1.io.serialize import load_dp_model, save_dp_model

from data_paths import ROOT, TINY_DP, WATER  # tiny.dp: O/H, rcut 4, sel 40
from helpers import (
    single_thread,  # noqa: F401  (autouse fixture)
    water_box,
    water_input,
)

TINY_MIN_DIST = 0.8854385688525499  # its min_nbor_dist

pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


@pytest.fixture(scope="module")
def dp() -> DeepPot:
    return DeepPot(TINY_DP, device="cpu")


def fresh(dp: DeepPot) -> DeepPot:
    """A DeepPot on the same module: its own once-per-model warnings."""
    return DeepPot(dp.module, device="cpu")


def symbols(atoms: Atoms) -> list[str]:
    return atoms.get_chemical_symbols()


def geometry_warnings(fn, *args, **kwargs) -> list[str]:
    """Messages of the warnings ``fn`` gives, none hidden by Python's once-per-place filter."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        fn(*args, **kwargs)
    return [str(w.message) for w in caught]


def one_line_error(capsys: pytest.CaptureFixture, rc: int, verb: str) -> list[str]:
    """stderr of a failed command: one error line, after one-line warnings only."""
    lines = capsys.readouterr().err.splitlines()
    assert rc == 2, lines
    assert lines and lines[-1].startswith(f"dpa1 {verb}: error:"), lines
    assert all(line.startswith(f"dpa1 {verb}: warning:") for line in lines[:-1]), lines
    return lines


# === 1. clusters 1e6 and 1e9 Å apart (non-periodic) =========================================
# vesin's cell grid used to die of SIGFPE on such boxes: run in a child process, so that a
# regression fails the test instead of killing pytest.
_FAR_SCRIPT = r"""
import json, sys, warnings
import numpy as np
from ase import Atoms
from ase.build import molecule
from dpa1.calculator import DP
from dpa1.infer.deep_pot import DeepPot

warnings.simplefilter("ignore")
dp = DeepPot(sys.argv[1], device="cpu")
a = molecule("H2O")
b = molecule("H2O")
b.rotate(70, "x")
b.translate([2.9, 0.3, 0.2])
b += molecule("H2O")  # a dimer
out = {}
for sep in (1e6, 1e9):
    far = b.positions + [sep, 0.3 * sep, 1.0]
    both = np.r_[a.positions, far]
    names = a.get_chemical_symbols() + b.get_chemical_symbols()
    e, f, _ = dp.eval(both[None], None, names)
    ea, fa, _ = dp.eval(a.positions[None], None, a.get_chemical_symbols())
    eb, fb, _ = dp.eval(far[None], None, b.get_chemical_symbols())
    atoms = Atoms(names, positions=both)
    atoms.calc = DP(dp)
    out[str(sep)] = {"e": float(e[0, 0]), "ea": float(ea[0, 0]), "eb": float(eb[0, 0]),
                     "df": float(np.abs(f[0] - np.r_[fa[0], fb[0]]).max()),
                     "f": float(np.abs(f).max()), "calc": atoms.get_potential_energy()}
print(json.dumps(out))
"""


def test_far_apart_molecules_give_the_sum_of_their_energies() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", _FAR_SCRIPT, str(TINY_DP)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    out = json.loads(run.stdout)
    assert set(out) == {"1000000.0", "1000000000.0"}
    for sep, r in out.items():
        assert r["e"] == pytest.approx(r["ea"] + r["eb"], abs=1e-9), sep
        assert r["calc"] == pytest.approx(r["e"], abs=1e-9), sep
        assert r["f"] > 0.1 and r["df"] < 1e-9, sep  # real forces, each molecule's own


# === 2. two atoms on one position ===========================================================
def test_overlapping_atoms_are_named_by_deep_pot_and_calculator(dp: DeepPot) -> None:
    atoms = water_box()
    atoms.positions[17] = atoms.positions[5]
    with pytest.raises(ValueError, match=r"^atoms 5 and 17 are 0 Å apart, on one position"):
        dp.eval(atoms.positions[None], atoms.cell.array[None], symbols(atoms))
    # several frames: the frame is named too
    frames = np.stack([water_box(seed=s).positions for s in (1, 2, 3)])
    frames[2, 4] = frames[2, 9]
    with pytest.raises(OverlapError, match=r"^frame 2: atoms 4 and 9 are 0 Å"):
        dp.eval(frames, np.stack([atoms.cell.array] * 3), symbols(atoms))
    atoms.calc = DP(dp)
    with pytest.raises(ValueError, match=r"atoms 5 and 17 are 0 Å apart"):
        atoms.get_potential_energy()


def _water_system(root: Path) -> tuple[Path, list[str]]:
    """Three water frames as a deepmd/npy system in O H H order (the loader sorts O first,
    so its atom order is not the file's): in frame 0 atom 13 is 0.005 Å from atom 6, in
    frame 1 atom 4 sits on atom 10."""
    boxes = [water_box(seed=s) for s in (1, 2, 3)]
    coord = np.stack([b.positions for b in boxes])
    coord[0, 13] = coord[0, 6] + [0.005, 0.0, 0.0]
    coord[1, 4] = coord[1, 10]
    names = symbols(boxes[0])
    path = write_system(root, type_map=["O", "H"], coord=coord,
                        atom_types=np.array([int(n == "H") for n in names]),
                        box=np.stack([b.cell.array for b in boxes]))
    return path, names


def test_overlapping_atoms_cli_test_and_model_devi(tmp_path: Path, capsys) -> None:
    """The error (and the warning about the too-close pair before it) names the system, the
    frame and the atoms as numbered in the files."""
    system, names = _water_system(tmp_path / "sys")
    assert names[3] == "O" and names[4] == "H"  # H before O in the files: reordered on loading
    rc = main(["test", "-m", str(TINY_DP), "-s", str(system), "--device", "cpu"])
    err = one_line_error(capsys, rc, "test")
    assert f"{system}, frame 1: atoms 4 and 10 are 0 Å apart" in err[-1]
    assert f"{system}, frame 0: atoms 6 and 13 are 0.005 Å apart" in err[0]
    rc = main(["model-devi", "-m", str(TINY_DP), str(TINY_DP), "-s", str(system),
               "-o", str(tmp_path / "devi.out"), "--device", "cpu"])
    err = one_line_error(capsys, rc, "model-devi")
    assert f"{system}, frame 1: atoms 4 and 10 are 0 Å apart" in err[-1]
    assert f"{system}, frame 0: atoms 6 and 13 are 0.005 Å apart" in err[0]
    assert not (tmp_path / "devi.out").exists()


def test_overlapping_atoms_cli_md(tmp_path: Path, capsys) -> None:
    atoms = water_box()
    atoms.positions[7] = atoms.positions[2]
    write(tmp_path / "start.extxyz", atoms)
    rc = main(["md", "-m", str(TINY_DP), "-c", str(tmp_path / "start.extxyz"), "--steps", "2",
               "-o", str(tmp_path / "traj.extxyz"), "--no-progress", "--device", "cpu"])
    err = one_line_error(capsys, rc, "md")
    assert "atoms 2 and 7 are 0 Å apart" in err[-1]


# === 3. atoms closer than any training pair =================================================
def _too_close(seed: int = 1) -> Atoms:
    atoms = water_box(seed=seed)
    atoms.positions[3] = atoms.positions[11] + [0.005, 0.0, 0.0]
    return atoms


def test_too_close_pair_warns_once_per_model(dp: DeepPot) -> None:
    pot = fresh(dp)
    assert pot.get_min_nbor_dist() == pytest.approx(TINY_MIN_DIST, rel=1e-12)
    atoms = _too_close()
    args = (atoms.positions[None], atoms.cell.array[None], symbols(atoms))
    out: list = []
    msgs = geometry_warnings(lambda: out.extend(pot.eval(*args)))
    assert len(msgs) == 1, msgs
    assert "atoms 3 and 11 are 0.005 Å apart" in msgs[0]
    assert "min_nbor_dist 0.8854 Å" in msgs[0]
    assert np.isfinite(out[0]).all() and np.isfinite(out[1]).all()
    assert geometry_warnings(pot.eval, *args) == []  # once per model
    # a model that does not know its training data's closest pair stays silent
    model, _ = load_dp_model(TINY_DP)
    model.min_nbor_dist = None
    assert geometry_warnings(DeepPot(model, device="cpu").eval, *args) == []
    # nor does a model whose training data had such a pair
    model.min_nbor_dist = 0.004
    assert geometry_warnings(DeepPot(model, device="cpu").eval, *args) == []


def test_too_close_pair_warns_once_in_an_md_loop(dp: DeepPot) -> None:
    atoms = _too_close()
    atoms.calc = DP(fresh(dp))

    def steps() -> None:
        for _ in range(4):
            atoms.positions[:] += 0.001
            atoms.get_forces()

    msgs = geometry_warnings(steps)
    assert len(msgs) == 1 and "min_nbor_dist" in msgs[0] and "atoms 3 and 11" in msgs[0]


def test_min_nbor_dist_survives_every_model_file(tmp_path: Path) -> None:
    model, data = load_dp_model(TINY_DP)
    assert model.min_nbor_dist == pytest.approx(TINY_MIN_DIST, rel=1e-12)
    model.min_nbor_dist = 0.75
    save_dp_model(tmp_path / "m.dp", model)
    save_dp_model(tmp_path / "m.yaml", model)
    save_checkpoint(tmp_path / "m.pt", model)
    freeze(model, tmp_path / "m.pth")
    for name in ("m.dp", "m.yaml", "m.pt", "m.pth"):
        assert DeepPot(tmp_path / name, device="cpu").get_min_nbor_dist() == 0.75, name
    assert load_checkpoint(tmp_path / "m.pt")[0].min_nbor_dist == 0.75
    # files without it load, and stay without it
    model.min_nbor_dist = None
    save_dp_model(tmp_path / "none.dp", model)
    save_checkpoint(tmp_path / "none.pt", model)
    _, saved = load_dp_model(tmp_path / "none.dp")
    assert "min_nbor_dist" not in saved["@variables"]
    for name in ("none.dp", "none.pt"):
        assert DeepPot(tmp_path / name, device="cpu").get_min_nbor_dist() is None, name
    # a model section carrying it (instead of the file's @variables) is read too
    data["model"]["min_nbor_dist"] = 0.5
    del data["@variables"]["min_nbor_dist"]
    from dpa1.io.dp_file import save_dp

    save_dp(tmp_path / "in_model.dp", data)
    assert load_dp_model(tmp_path / "in_model.dp")[0].min_nbor_dist == 0.5


# === 4. no atoms ============================================================================
def test_no_atoms(dp: DeepPot) -> None:
    e, f, v, ae, av = dp.eval(np.zeros((2, 0)), None, [], atomic=True)
    assert e.shape == (2, 1) and f.shape == (2, 0, 3) and v.shape == (2, 9)
    assert ae.shape == (2, 0, 1) and av.shape == (2, 0, 9)
    assert not e.any() and not v.any()
    for atoms in (Atoms(), Atoms(cell=np.eye(3) * 5.0, pbc=True)):
        for calc in (DP(dp), DP([dp, fresh(dp)])):
            atoms.calc = calc
            assert atoms.get_potential_energy() == 0.0
            assert atoms.get_forces().shape == (0, 3)
            assert not calc.results["virial"].any()
            if atoms.pbc.all():
                assert not atoms.get_stress().any()
        assert calc.results["max_devi_f"] == 0.0 and calc.results["devi_f"].shape == (0,)


# === 5. more neighbours than sel ============================================================
def _dense_hydrogen() -> tuple[Atoms, int]:
    """A simple cubic lattice of H 1.25 Å apart (every pair farther than min_nbor_dist) and
    each atom's number of neighbours within the model's rcut 4 Å."""
    n, a = 5, 1.25
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    shifts = np.stack(np.meshgrid(*[np.arange(-4, 5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    count = int(((np.linalg.norm(shifts, axis=1) * a <= 4.0) & shifts.any(axis=1)).sum())
    return Atoms(["H"] * len(grid), positions=grid * a, cell=np.eye(3) * n * a, pbc=True), count


def test_more_neighbours_than_sel_warns_once_per_model(dp: DeepPot) -> None:
    atoms, count = _dense_hydrogen()
    assert count > 40
    pot = fresh(dp)
    args = (atoms.positions[None], atoms.cell.array[None], symbols(atoms))
    msgs = geometry_warnings(pot.eval, *args)
    assert msgs == [f"atom 0 has {count} neighbours within rcut 4 Å, more than the model's sel "
                    f"40: the farthest {count - 40} are ignored, so energy and forces are "
                    "approximate"]
    assert geometry_warnings(pot.eval, *args) == []
    atoms.calc = DP(fresh(dp))
    msgs = geometry_warnings(lambda: [atoms.get_forces() for _ in range(2)])
    assert len(msgs) == 1 and "sel 40" in msgs[0]


def test_training_warns_when_sel_is_below_the_data_and_stores_min_nbor_dist(tmp_path: Path) -> None:
    """sel 20 against water's 38 neighbours within 4 Å: a warning at statistics time; the
    checkpoint keeps the training data's closest pair distance."""
    inp = water_input(tmp_path, numb_steps=0)
    cfg = json.loads(inp.read_text())
    cfg["model"]["descriptor"]["sel"] = 20
    cfg["training"].pop("validation_data")
    inp.write_text(json.dumps(cfg))
    assert main(["train", str(inp), "-o", str(tmp_path / "run")]) == 0
    max_nnei, min_dist = neighbor_stat([WATER / "data_0"], 4.0)
    assert max_nnei == 38
    log = (tmp_path / "run" / "train.log").read_text()
    warning = next(line for line in log.splitlines() if "WARNING" in line)
    assert "sel 20" in warning and "38" in warning and "dpa1 neighbor-stat" in warning
    model, payload = load_checkpoint(tmp_path / "run" / "model.ckpt.pt")
    assert payload["min_nbor_dist"] == model.min_nbor_dist == pytest.approx(min_dist, rel=1e-12)
