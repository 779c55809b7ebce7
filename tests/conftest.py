"""Fixtures used across the test modules.

- ``alloy``: a small Cu/Ag/Au/Ni data set labelled with ASE's EMT calculator, written as
  an extxyz file, as standard systems (one per composition), as one mixed-type system
  (our writer) and as dpdata ``deepmd/npy/mixed`` systems (one per atom count).
- ``tiny_model_config(type_map, **descriptor)``: a small normalised input for ``build_model``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ALLOY_TYPE_MAP = ["Cu", "Ag", "Au", "Ni"]


# === the alloy data set ====================================================================
@dataclass
class AlloyData:
    """Paths of one data set in every layout, plus the labelled ``ase.Atoms`` frames."""

    type_map: list[str]
    extxyz: Path
    standard: list[str]  # one system per composition
    mixed: str  # one mixed-type system, padded with virtual atoms (our writer)
    dpdata_mixed: list[str]  # dpdata's deepmd/npy/mixed: one system per atom count
    frames: list  # ase.Atoms with SinglePointCalculator results, as read back from extxyz


def _labelled(atoms):
    """A copy of ``atoms`` carrying EMT's energy, forces and stress as stored results."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    work = atoms.copy()
    work.calc = EMT()
    results = {
        "energy": work.get_potential_energy(),
        "forces": work.get_forces(),
        "stress": work.get_stress(voigt=False),
    }
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, **results)
    return out


def make_alloy_frames() -> list:
    """15 frames, 8–32 atoms: substitutions, a vacancy, strained and sheared cells, a
    short MD run, a cell thinner than the 4 Å cutoff, and a frame with shuffled atom order."""
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.verlet import VelocityVerlet

    rng = np.random.default_rng(7)
    frames = []

    def substitute(atoms, counts: dict[str, int]):
        symbols = np.array(atoms.get_chemical_symbols())
        order = rng.permutation(len(atoms))
        start = 0
        for element, n in counts.items():
            symbols[order[start : start + n]] = element
            start += n
        atoms.set_chemical_symbols(symbols)
        return atoms

    # Cu28Ag4 (32 atoms), rattled
    base = substitute(bulk("Cu", "fcc", a=3.70, cubic=True) * (2, 2, 2), {"Ag": 4})
    for k in range(4):
        at = base.copy()
        at.rattle(0.05, seed=k)
        frames.append(_labelled(at))
    # Ni20Au6Cu5: a vacancy (31 atoms) in strained cells
    base = bulk("Ni", "fcc", a=3.65, cubic=True) * (2, 2, 2)
    del base[5]
    base = substitute(base, {"Au": 6, "Cu": 5})
    for eps in (
        np.diag([0.02, 0.02, 0.02]),
        [[0, 0.03, 0], [0.03, 0, 0], [0, 0, -0.01]],
        np.diag([-0.02, 0.01, 0.0]),
    ):
        at = base.copy()
        at.set_cell(base.cell[:] @ (np.eye(3) + np.asarray(eps)), scale_atoms=True)
        at.rattle(0.03, seed=11)
        frames.append(_labelled(at))
    # Ag8Au8 (16 atoms) in a sheared cell: three snapshots of a short MD run
    at = substitute(bulk("Ag", "fcc", a=4.09, cubic=True) * (2, 2, 1), {"Au": 8})
    cell = at.cell[:].copy()
    cell[2, 0] += 0.6
    at.set_cell(cell, scale_atoms=True)
    at.calc = EMT()
    at.set_momenta(rng.normal(scale=0.3, size=(len(at), 3)))
    md = VelocityVerlet(at, 2 * units.fs)
    for _ in range(3):
        md.run(3)
        frames.append(_labelled(at))
    # Ni8: the cell (3.52 Å thick) is thinner than the cutoff, so images of images count
    base = bulk("Ni", "fcc", a=3.52, cubic=True) * (1, 1, 2)
    for k in range(3):
        at = base.copy()
        at.rattle(0.04, seed=20 + k)
        frames.append(_labelled(at))
    # Cu16Ni16: same atom count as Cu28Ag4; the second frame lists its atoms in another order
    base = substitute(bulk("Cu", "fcc", a=3.60, cubic=True) * (2, 2, 2), {"Ni": 16})
    for k in range(2):
        at = base.copy()
        at.rattle(0.05, seed=30 + k)
        if k:
            at = at[rng.permutation(len(at))]
        frames.append(_labelled(at))
    return frames


@pytest.fixture(scope="session")
def alloy(tmp_path_factory: pytest.TempPathFactory) -> AlloyData:
    import ase.io

    from dpa1.data.convert import convert

    root = tmp_path_factory.mktemp("alloy")
    extxyz = root / "alloy.extxyz"
    ase.io.write(extxyz, make_alloy_frames())
    frames = ase.io.read(extxyz, index=":")  # what every layout is made from
    standard = convert([extxyz], root / "standard", type_map=ALLOY_TYPE_MAP)
    (mixed,) = convert([extxyz], root / "mixed", mixed=True, type_map=ALLOY_TYPE_MAP)
    return AlloyData(
        ALLOY_TYPE_MAP,
        extxyz,
        [str(p) for p in standard],
        str(mixed),
        _dpdata_mixed(frames, root / "dpdata_mixed"),
        frames,
    )


def _dpdata_mixed(frames: list, out: Path) -> list[str]:
    """dpdata's own mixed-type writer (skipped when dpdata is not installed)."""
    try:
        import dpdata
    except ImportError:
        return []
    systems = dpdata.MultiSystems(type_map=ALLOY_TYPE_MAP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for atoms in frames:
            systems.append(dpdata.LabeledSystem(atoms, fmt="ase/structure"))
        systems.to_deepmd_npy_mixed(str(out))
    return sorted(str(p.parent) for p in out.rglob("type.raw"))


# === a tiny model ==========================================================================
_TINY: dict[str, Any] = {
    "model": {
        "type_map": [],
        "descriptor": {
            "type": "dpa1",
            "sel": 40,
            "rcut": 4.0,
            "rcut_smth": 0.5,
            "neuron": [4, 8],
            "axis_neuron": 2,
            "attn": 8,
            "attn_layer": 1,
            "tebd_dim": 4,
            "seed": 1,
        },
        "fitting_net": {"neuron": [8, 8], "seed": 1},
    },
    "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-8, "decay_steps": 100},
    "loss": {"type": "ener"},
    "training": {"training_data": {"systems": ["unused"]}, "numb_steps": 1},
}


@pytest.fixture(scope="session")
def tiny_model_config() -> Callable[..., dict[str, Any]]:
    """``make(type_map, model=None, **descriptor)`` → normalised ``model`` section."""
    from dpa1.io.config import normalize_config

    def make(
        type_map: list[str], model: dict[str, Any] | None = None, **descriptor: Any
    ) -> dict[str, Any]:
        cfg = copy.deepcopy(_TINY)
        cfg["model"]["type_map"] = list(type_map)
        cfg["model"]["descriptor"].update(descriptor)
        cfg["model"].update(model or {})
        return normalize_config(cfg)["model"]

    return make
