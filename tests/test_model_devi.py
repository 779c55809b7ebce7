"""Model deviation: the numbers (against a direct numpy computation from each model's
predictions) and DeePMD-kit's ``model_devi.out`` layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import write

from dpa1.cli.main import main
from dpa1.data.convert import write_system
from dpa1.infer.deep_pot import DeepPot
from dpa1.infer.model_devi import (
    calc_model_devi,
    format_model_devi,
    make_model_devi,
    write_model_devi_out,
)
from dpa1.io.serialize import load_dp_model, save_dp_model

from data_paths import TINY_DP

NFRAMES = 3

pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")

# DeePMD-kit 3.2.0's header line (deepmd/infer/model_devi.py: "{'step':10s}" then 19-wide names)
HEADER = ("# step      max_devi_v         min_devi_v         avg_devi_v         max_devi_f"
          "         min_devi_f         avg_devi_f         devi_e             ")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The reference model and two copies with perturbed weights (an ensemble)."""
    root = tmp_path_factory.mktemp("ensemble")
    paths = [TINY_DP]
    for seed in (1, 2):
        model, _ = load_dp_model(TINY_DP)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        path = root / f"m{seed}.dp"
        save_dp_model(path, model)
        paths.append(path)
    return paths


from helpers import water_box as _water_box  # noqa: E402


def water_box(seed: int):
    """8 water molecules in a cell scaled by 1 + 0.01·seed, rattled by 0.1 Å."""
    return _water_box(seed=seed, rattle=0.1, scale=1 + 0.01 * seed)


@pytest.fixture(scope="module")
def frames() -> dict[str, np.ndarray]:
    """NFRAMES small water frames (kept small so that the test suite stays fast)."""
    boxes = [water_box(seed) for seed in range(NFRAMES)]
    return {"coord": np.stack([a.positions for a in boxes]),
            "box": np.stack([a.cell.array.reshape(9) for a in boxes]),
            "atype": np.where(boxes[0].numbers == 8, 0, 1)}


def direct_devi(model_files: list[Path], frames: dict[str, np.ndarray]) -> np.ndarray:
    """Columns 1..7 of model_devi.out, computed here from scratch."""
    preds = [DeepPot(p, device="cpu").eval(frames["coord"], frames["box"], frames["atype"])
             for p in model_files]
    natoms = frames["atype"].size
    e = np.stack([p[0][:, 0] for p in preds]) / natoms   # (nm, nf)
    f = np.stack([p[1] for p in preds])                  # (nm, nf, natoms, 3)
    v = np.stack([p[2] for p in preds]) / natoms         # (nm, nf, 9)
    # force: per atom, root mean square over models of |f - <f>|
    df = np.sqrt(np.mean(np.sum((f - f.mean(0)) ** 2, axis=-1), axis=0))  # (nf, natoms)
    # virial: population std per component, then max / min / (2-norm)/3
    dv = np.sqrt(np.mean((v - v.mean(0)) ** 2, axis=0))                    # (nf, 9)
    de = np.sqrt(np.mean((e - e.mean(0)) ** 2, axis=0))
    return np.column_stack([dv.max(1), dv.min(1), np.sqrt((dv**2).sum(1)) / 3,
                            df.max(1), df.min(1), df.mean(1), de])


def test_calc_model_devi_matches_direct(model_files, frames) -> None:
    table = calc_model_devi(frames["coord"], frames["box"], frames["atype"],
                            [DeepPot(p, device="cpu") for p in model_files], frequency=10)
    expected = direct_devi(model_files, frames)
    assert table.shape == (NFRAMES, 8)
    np.testing.assert_array_equal(table[:, 0], [0, 10, 20])
    assert expected[:, 3].min() > 1e-3  # the ensemble really disagrees
    np.testing.assert_allclose(table[:, 1:], expected, rtol=1e-10, atol=1e-14)


def test_output_file_format(tmp_path: Path) -> None:
    devi = np.array([[0, 1.5e-3, 2e-4, 7.25e-4, 0.123456789, 1e-5, 0.05, 3.3e-4],
                     [50, 1, 2, 3, 4, 5, 6, 7]], dtype=float)
    out = tmp_path / "model_devi.out"
    write_model_devi_out(devi, out, header="my/system")
    lines = out.read_text().splitlines()
    assert lines[0] == "# my/system"
    assert lines[1] == HEADER
    assert lines[2] == ("           0       1.500000e-03       2.000000e-04       7.250000e-04"
                        "       1.234568e-01       1.000000e-05       5.000000e-02"
                        "       3.300000e-04")
    assert lines[3].startswith("          50       1.000000e+00")
    assert all(len(line) == 12 + 7 * 19 for line in lines[2:])
    np.testing.assert_allclose(np.loadtxt(out), devi, rtol=1e-6)
    atomic = np.concatenate([devi, np.ones((2, 3))], axis=1)
    text = format_model_devi(atomic, atomic=True).splitlines()
    assert text[1] == HEADER + "atm_devi_f(N)      "
    assert len(text[2]) == 12 + 10 * 19


def test_format_identical_to_deepmd(tmp_path: Path) -> None:
    pytest.importorskip("deepmd")
    from deepmd.infer.model_devi import write_model_devi_out as theirs

    devi = np.random.default_rng(0).uniform(0, 1, size=(4, 8))
    devi[:, 0] = np.arange(4) * 7
    theirs(devi, str(tmp_path / "theirs.out"), header="sys")
    write_model_devi_out(devi, tmp_path / "ours.out", header="sys")
    assert (tmp_path / "ours.out").read_text() == (tmp_path / "theirs.out").read_text()


def _write_system(root: Path, frames: dict[str, np.ndarray], swap_types: bool) -> Path:
    """``frames`` as a deepmd/npy system; with ``swap_types`` the file's own type_map is
    ``H O`` (so types must be remapped to the model's ``O H``)."""
    atype, names = frames["atype"], ["O", "H"]
    if swap_types:
        atype, names = 1 - atype, ["H", "O"]
    return write_system(
        root / ("swapped" if swap_types else "plain"),
        type_map=names,
        atom_types=atype,
        coord=frames["coord"].reshape(NFRAMES, -1, 3),
        box=frames["box"].reshape(NFRAMES, 3, 3),
    )


def test_cli_on_npy_systems(tmp_path: Path, model_files, frames) -> None:
    _write_system(tmp_path / "data", frames, swap_types=False)
    _write_system(tmp_path / "data", frames, swap_types=True)
    out = tmp_path / "model_devi.out"
    rc = main(["model-devi", "-m", *map(str, model_files), "-s", str(tmp_path / "data"),
               "-o", str(out), "-f", "5", "--device", "cpu"])
    assert rc == 0
    lines = out.read_text().splitlines()
    assert lines[0] == f"# {tmp_path / 'data' / 'plain'}"
    assert lines[1] == HEADER
    assert lines[2 + NFRAMES] == f"# {tmp_path / 'data' / 'swapped'}"
    table = np.loadtxt(out)  # both blocks: comment lines are skipped
    assert table.shape == (2 * NFRAMES, 8)
    np.testing.assert_array_equal(table[:, 0], [0, 5, 10, 0, 5, 10])
    expected = direct_devi(model_files, frames)
    np.testing.assert_allclose(table[:NFRAMES, 1:], expected, rtol=2e-6)  # 7 significant digits
    np.testing.assert_allclose(table[NFRAMES:, 1:], table[:NFRAMES, 1:], rtol=1e-12)


def test_trajectory_input_equals_system_input(tmp_path: Path, model_files, frames) -> None:
    traj = tmp_path / "traj.traj"  # ASE's binary format keeps float64 coordinates exactly
    symbols = np.array(["O", "H"])[frames["atype"]]
    write(traj, [Atoms(symbols, positions=c, cell=b.reshape(3, 3), pbc=True)
                 for c, b in zip(frames["coord"], frames["box"], strict=True)])
    sysdir = _write_system(tmp_path, frames, swap_types=False)
    from_traj = make_model_devi(model_files, traj, tmp_path / "a.out", atomic=True)[0]
    from_sys = make_model_devi(model_files, sysdir, tmp_path / "b.out", atomic=True)[0]
    assert from_traj.shape == (NFRAMES, 8 + frames["atype"].size)
    np.testing.assert_allclose(from_traj, from_sys, rtol=1e-12, atol=1e-15)


def test_errors(tmp_path: Path, model_files, frames, capsys: pytest.CaptureFixture) -> None:
    sysdir = _write_system(tmp_path, frames, swap_types=False)
    rc = main(["model-devi", "-m", str(model_files[0]), "-s", str(sysdir)])
    assert rc == 2 and "at least two models" in capsys.readouterr().err
    rc = main(["model-devi", "-m", *map(str, model_files[:2]), "-s", str(tmp_path / "nothing")])
    assert rc == 2
    # a model with another type_map cannot join the ensemble
    model, _ = load_dp_model(TINY_DP)
    model.type_map = ["H", "O"]
    other = tmp_path / "other.dp"
    save_dp_model(other, model)
    with pytest.raises(ValueError, match="type_map"):
        make_model_devi([model_files[0], other], sysdir, tmp_path / "x.out")
    # an element the models do not know
    (sysdir / "type_map.raw").write_text("O\nNa\n")
    with pytest.raises(ValueError, match="Na"):
        make_model_devi(model_files[:2], sysdir, tmp_path / "y.out")


def test_lammps_dump_types_follow_type_map(tmp_path: Path, model_files) -> None:
    """A LAMMPS text dump stores type numbers: type k is type_map[k-1] (pair_style deepmd)."""
    atoms = water_box(0)
    atoms.set_cell(np.diag([6.3, 6.3, 6.5]), scale_atoms=True)  # an orthogonal box
    lines = []
    for step in (0, 100):
        lines += ["ITEM: TIMESTEP", str(step), "ITEM: NUMBER OF ATOMS", str(len(atoms)),
                  "ITEM: BOX BOUNDS pp pp pp", "0 6.3", "0 6.3", "0 6.5",
                  "ITEM: ATOMS id type x y z"]
        lines += [f"{i + 1} {1 if z == 8 else 2} {x:.10f} {y:.10f} {w:.10f}"
                  for i, (z, (x, y, w))
                  in enumerate(zip(atoms.numbers, atoms.positions, strict=True))]
    dump = tmp_path / "traj.dump"
    dump.write_text("\n".join(lines) + "\n")
    traj = tmp_path / "traj.traj"
    write(traj, [atoms, atoms])
    from_dump = make_model_devi(model_files[:2], dump, tmp_path / "a.out")[0]
    from_traj = make_model_devi(model_files[:2], traj, tmp_path / "b.out")[0]
    assert from_dump[0, 4] > 1e-4
    np.testing.assert_allclose(from_dump, from_traj, rtol=1e-7)
