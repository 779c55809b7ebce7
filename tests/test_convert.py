"""ASE-readable files → deepmd/npy (``dpa1 convert-data``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from dpa1.cli.main import main
from dpa1.data.convert import convert, read_frames
from dpa1.data.errors import DataError
from dpa1.data.system import DeepmdSystem


def _frame_arrays(atoms, type_map):
    """What a converted frame must hold: atoms stably sorted by type, virial = −V·σ."""
    types = np.array([type_map.index(s) for s in atoms.get_chemical_symbols()])
    order = np.argsort(types, kind="stable")
    virial = -atoms.get_volume() * atoms.get_stress(voigt=False)
    return types[order], atoms.positions[order], atoms.get_forces()[order], virial


def test_standard_layout_one_system_per_composition(alloy) -> None:
    names = sorted(Path(p).name for p in alloy.standard)
    assert names == ["Ag8Au8", "Cu16Ni16", "Cu28Ag4", "Cu5Au6Ni20", "Ni8"]
    by_energy = {}
    for p in alloy.standard:
        s = DeepmdSystem(p)
        assert s.type_map == alloy.type_map and s.labels == ["energy", "force", "virial"]
        fr = s.get_frames(np.arange(s.nframes))
        for k in range(s.nframes):
            by_energy[float(fr["energy"][k, 0])] = {
                key: fr[key][k] for key in ("atype", "coord", "force", "virial", "box")
            }
    assert len(by_energy) == 15
    for atoms in alloy.frames:
        got = by_energy[atoms.get_potential_energy()]
        types, coord, force, virial = _frame_arrays(atoms, alloy.type_map)
        np.testing.assert_array_equal(got["atype"], types)
        np.testing.assert_array_equal(got["coord"], coord)
        np.testing.assert_array_equal(got["force"], force)
        np.testing.assert_allclose(got["virial"].reshape(3, 3), virial, rtol=1e-14, atol=1e-14)
        np.testing.assert_array_equal(got["box"], atoms.cell[:])


def test_mixed_layout_pads_with_virtual_atoms(alloy) -> None:
    s = DeepmdSystem(alloy.mixed, alloy.type_map)
    assert s.mixed_type and (s.nframes, s.natoms) == (15, 32)
    fr = s.get_frames(np.arange(15))
    for k, atoms in enumerate(alloy.frames):  # one system: the input order is kept
        n = len(atoms)
        types, coord, force, virial = _frame_arrays(atoms, alloy.type_map)
        np.testing.assert_array_equal(
            fr["atype"][k], np.concatenate([types, -np.ones(32 - n, int)])
        )
        np.testing.assert_array_equal(fr["coord"][k, :n], coord)
        np.testing.assert_array_equal(fr["force"][k, n:], 0.0)
        np.testing.assert_array_equal(fr["force"][k, :n], force)
        assert fr["energy"][k, 0] == atoms.get_potential_energy()
        np.testing.assert_allclose(fr["virial"][k].reshape(3, 3), virial, rtol=1e-14, atol=1e-14)


def test_virial_is_minus_strain_derivative(alloy) -> None:
    """W = −∂E/∂ε, checked by finite differences with EMT (the sign convention of dpdata)."""
    from ase.calculators.emt import EMT

    atoms = alloy.frames[4].copy()  # strained Ni20Au6Cu5 cell
    atoms.calc = EMT()
    h = 1e-5
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                eps = np.eye(3)
                eps[a, b] += sign * h
                strained = atoms.copy()
                strained.calc = EMT()
                strained.set_cell(atoms.cell[:] @ eps, scale_atoms=True)
                energies.append(strained.get_potential_energy())
            numeric[a, b] = -(energies[0] - energies[1]) / (2 * h)
    s = DeepmdSystem(alloy.mixed)
    virial = s.get_frames([4])["virial"][0].reshape(3, 3)
    np.testing.assert_allclose(virial, 0.5 * (numeric + numeric.T), atol=1e-6)


def test_ase_db_and_default_type_map(alloy, tmp_path: Path) -> None:
    import ase.io

    db = tmp_path / "frames.db"
    ase.io.write(db, alloy.frames[7:10])  # Ag8Au8
    (path,) = convert([db], tmp_path / "out")
    s = DeepmdSystem(path)
    assert path.name == "Ag8Au8" and s.type_map == ["Ag", "Au"]  # sorted element names
    # type_map.raw of the fixture lists all four elements: a model map must cover them
    # (docs/design.md, "Atom order and type mapping")
    ref = DeepmdSystem(
        next(p for p in alloy.standard if p.endswith("Ag8Au8")), ["Ag", "Au", "Cu", "Ni"]
    )
    a, b = s.get_frames([0, 1, 2]), ref.get_frames([0, 1, 2])
    for key in ("coord", "force", "virial", "energy", "box"):
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(
        np.array(["Ag", "Au"])[a["atype"]], np.array(["Ag", "Au", "Cu", "Ni"])[b["atype"]]
    )


def test_non_periodic_and_partially_periodic(tmp_path: Path) -> None:
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    mol = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    mol.calc = SinglePointCalculator(mol, energy=-14.2, forces=np.arange(9.0).reshape(3, 3))
    ase.io.write(tmp_path / "mol.extxyz", mol)
    (path,) = convert([tmp_path / "mol.extxyz"], tmp_path / "out")
    s = DeepmdSystem(path)
    assert s.nopbc and path.name == "H2O1" and s.labels == ["energy", "force"]
    np.testing.assert_array_equal(s.get_frames([0])["coord"][0], mol.positions[[1, 2, 0]])
    slab = mol.copy()
    slab.set_cell([10, 10, 10])
    slab.set_pbc([True, True, False])
    with pytest.warns(UserWarning, match=r"partially periodic \(pbc=\[True, True, False\]\)"):
        frames = read_frames([_write(tmp_path / "slab.extxyz", slab)])
    assert frames[0].box is not None


def _write(path: Path, atoms) -> Path:
    import ase.io

    ase.io.write(path, atoms)
    return path


def test_convert_errors(alloy, tmp_path: Path) -> None:
    import ase.io
    from ase import Atoms

    with pytest.raises(
        DataError, match=re.escape("element Ni of the input not in --type-map [Cu Ag Au]")
    ):
        convert([alloy.extxyz], tmp_path / "a", type_map=["Cu", "Ag", "Au"])
    with pytest.raises(DataError, match="already holds set.* directories"):
        convert([alloy.extxyz], Path(alloy.standard[0]).parent)
    with pytest.raises(DataError, match=re.escape(f"input not found: {tmp_path / 'none.xyz'}")):
        convert([tmp_path / "none.xyz"], tmp_path / "b")
    (tmp_path / "junk.xyz").write_text("this is not\nan xyz file\n")
    with pytest.raises(DataError, match="junk.xyz: ASE cannot read it"):
        convert([tmp_path / "junk.xyz"], tmp_path / "c")
    unlabelled = alloy.frames[7].copy()
    unlabelled.calc = None
    ase.io.write(tmp_path / "mixed_labels.extxyz", [alloy.frames[8], unlabelled])
    with pytest.raises(
        DataError, match=r"Ag8Au8: 1 frames have no energy while others do \(first: .*@1\)"
    ):
        convert([tmp_path / "mixed_labels.extxyz"], tmp_path / "d")
    gas = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])
    ase.io.write(tmp_path / "gas.extxyz", [gas, alloy.frames[10]])
    with pytest.raises(DataError, match="needs all frames periodic or all non-periodic"):
        convert([tmp_path / "gas.extxyz"], tmp_path / "e", mixed=True)


def test_cli_convert_data(alloy, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    assert (
        main(
            [
                "convert-data",
                str(alloy.extxyz),
                str(out),
                "--mixed",
                "--type-map",
                "Ni",
                "Au",
                "Ag",
                "Cu",
                "--set-size",
                "4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"{out}: 15 frames, 32 atoms, energy, force, virial" in printed
    s = DeepmdSystem(out)
    assert s.type_map == ["Ni", "Au", "Ag", "Cu"] and len(s.sets) == 4  # 4 + 4 + 4 + 3 frames
    ref = DeepmdSystem(alloy.mixed, ["Ni", "Au", "Ag", "Cu"])
    a, b = s.get_frames(np.arange(15)), ref.get_frames(np.arange(15))

    # another type order sorts the atoms differently: compare per frame as sets of rows
    def rows(fr: dict, k: int) -> list[tuple]:
        return sorted(map(tuple, np.column_stack([fr["atype"][k], fr["coord"][k], fr["force"][k]])))

    assert all(rows(a, k) == rows(b, k) for k in range(15))
    assert main(["convert-data", str(alloy.extxyz)]) == 2
    assert "give at least one input file and the output directory" in capsys.readouterr().err
