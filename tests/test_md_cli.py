"""``dpa1 md``, run in-process on a small water box with the reference model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

from dpa1.cli.main import main

from data_paths import TINY_DP

pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")

LOG_COLUMNS = ["step", "time_fs", "T_K", "Epot_eV", "Etot_eV", "P_bar", "Vol_A3"]


from helpers import water_box as _water_box  # noqa: E402


def water_box():
    """8 water molecules in a ~6.2 Å triclinic cell, rattled by 0.05 Å."""
    return _water_box(seed=1, rattle=0.05)


@pytest.fixture
def start(tmp_path: Path) -> Path:
    path = tmp_path / "start.extxyz"
    write(path, water_box())
    return path


def run_md(tmp_path: Path, start: Path, *extra: str, tag: str = "run") -> tuple[int, Path, Path]:
    traj, log = tmp_path / f"{tag}.extxyz", tmp_path / f"{tag}.log"
    rc = main(["md", "-m", str(TINY_DP), "-c", str(start), "--steps", "10", "--dt", "0.5",
               "-T", "300", "--traj-freq", "5", "--log-freq", "2", "-o", str(traj),
               "--log", str(log), "--seed", "7", "--no-progress", "--device", "cpu", *extra])
    return rc, traj, log


def read_log(path: Path) -> np.ndarray:
    header = path.read_text().splitlines()[0]
    assert header.lstrip("# ").split() == LOG_COLUMNS
    return np.loadtxt(path, ndmin=2)


@pytest.mark.parametrize("extra", [
    ["--ensemble", "nve"],
    ["--ensemble", "nvt"],
    ["--ensemble", "nvt", "--thermostat", "bussi"],
    ["--ensemble", "npt", "-P", "1000"],
    ["--ensemble", "npt", "--barostat", "berendsen"],
])
def test_md_runs_and_writes(tmp_path: Path, start: Path, extra: list[str]) -> None:
    rc, traj, log = run_md(tmp_path, start, *extra)
    assert rc == 0
    frames = read(traj, ":")
    assert len(frames) == 3  # steps 0, 5, 10
    assert all(len(a) == 24 for a in frames)
    assert frames[-1].get_potential_energy() < 0  # calculator results are stored
    assert np.any(frames[-1].get_momenta())  # velocities too: a restart point
    data = read_log(log)
    np.testing.assert_array_equal(data[:, 0], np.arange(0, 11, 2))
    np.testing.assert_allclose(data[:, 1], data[:, 0] * 0.5)
    assert data[0, 2] == pytest.approx(300.0, rel=1e-6)  # velocities drawn at exactly T
    assert np.all(np.isfinite(data))
    assert not list(tmp_path.glob(".*.tmp"))  # staged files were renamed into place
    if "npt" in extra:
        assert data[-1, 6] != data[0, 6]  # the volume moves
    else:
        assert np.all(data[:, 6] == data[0, 6])


def test_nve_conserves_total_energy(tmp_path: Path, start: Path) -> None:
    rc, _, log = run_md(tmp_path, start, "--ensemble", "nve")
    assert rc == 0
    data = read_log(log)
    assert np.ptp(data[:, 3]) > 10 * np.ptp(data[:, 4])  # Epot moves, Etot does not


def test_seed_makes_runs_reproducible(tmp_path: Path, start: Path) -> None:
    _, t1, _ = run_md(tmp_path, start, "--ensemble", "nvt", tag="a")
    _, t2, _ = run_md(tmp_path, start, "--ensemble", "nvt", tag="b")
    np.testing.assert_array_equal(read(t1).positions, read(t2).positions)


def test_binary_trajectory(tmp_path: Path, start: Path) -> None:
    traj = tmp_path / "run.traj"
    rc = main(["md", "-m", str(TINY_DP), "-c", str(start), "--steps", "4", "--traj-freq", "2",
               "-o", str(traj), "--log", str(tmp_path / "t.log"), "--no-progress"])
    assert rc == 0
    assert len(read(traj, ":")) == 3


def test_npt_needs_a_cell(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    atoms = water_box()
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    path = tmp_path / "mol.xyz"
    write(path, atoms)
    rc, _, _ = run_md(tmp_path, path, "--ensemble", "npt")
    assert rc == 2
    assert "periodic" in capsys.readouterr().err


def test_nonperiodic_nvt(tmp_path: Path) -> None:
    atoms = water_box()
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    path = tmp_path / "cluster.xyz"
    write(path, atoms)
    rc, traj, log = run_md(tmp_path, path, "--ensemble", "nvt")
    assert rc == 0
    data = np.loadtxt(log)
    assert np.all(np.isnan(data[:, 5]))  # no pressure without a cell


def test_unknown_element_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    atoms = water_box()
    atoms[0].symbol = "Cl"
    path = tmp_path / "bad.extxyz"
    write(path, atoms)
    rc, _, _ = run_md(tmp_path, path)
    assert rc == 2
    err = capsys.readouterr().err
    assert "Cl" in err and "Traceback" not in err
