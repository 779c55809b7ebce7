"""The ASE calculator ``dpa1.calculator.DP``: derivatives, conventions, errors, MD, relaxation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError

from dpa1.calculator import DP
from dpa1.cli.md import set_velocities
from dpa1.infer.deep_pot import DeepPot

from data_paths import TINY_DP, TINY_REFERENCE, WATER

try:  # ASE ≥ 3.23; the Calculator methods of the same names are deprecated
    from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
except ImportError:  # pragma: no cover
    def calculate_numerical_forces(atoms, eps):
        return atoms.calc.calculate_numerical_forces(atoms, d=eps)

    def calculate_numerical_stress(atoms, eps):
        return atoms.calc.calculate_numerical_stress(atoms, d=eps)

pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


# === systems ================================================================================
from helpers import water_box  # noqa: E402  (8 H2O, seed 1, rattle 0.1)


def water_192() -> Atoms:
    """The first frame of the water data (``data_0``): 64 H2O in a 12.44 Å cube."""
    system = WATER / "data_0"
    coord = np.load(system / "set.000" / "coord.npy")[0].reshape(-1, 3)
    box = np.load(system / "set.000" / "box.npy")[0].reshape(3, 3)
    types = np.loadtxt(system / "type.raw", dtype=int)
    names = (system / "type_map.raw").read_text().split()
    return Atoms([names[t] for t in types], positions=coord, cell=box, pbc=True)


@pytest.fixture(scope="module")
def dp() -> DeepPot:
    return DeepPot(TINY_DP, device="cpu")


@pytest.fixture
def calc(dp: DeepPot) -> DP:
    return DP(dp)


# === derivatives ============================================================================
def test_forces_are_minus_energy_gradient(calc: DP) -> None:
    atoms = water_box()
    atoms.calc = calc
    forces = atoms.get_forces()
    numerical = calculate_numerical_forces(atoms, eps=1e-4)
    assert np.abs(forces).max() > 0.1  # a real test, not zeros against zeros
    np.testing.assert_allclose(forces, numerical, atol=1e-6)


def test_stress_is_strain_derivative_of_energy(calc: DP) -> None:
    atoms = water_box(seed=2)
    atoms.calc = calc
    stress = atoms.get_stress()
    numerical = calculate_numerical_stress(atoms, eps=1e-5)
    assert stress.shape == (6,)
    assert np.abs(stress).max() > 1e-3
    np.testing.assert_allclose(stress, numerical, atol=1e-7)
    full = atoms.get_stress(voigt=False)
    np.testing.assert_allclose(full, full.T)


def test_matches_deepmd_reference_values(calc: DP) -> None:
    """Energy, forces and stress = −virial/volume against DeePMD-kit's own predictions."""
    ref = np.load(TINY_REFERENCE)
    box = ref["box"][0].reshape(3, 3)
    atoms = Atoms(numbers=np.array([8, 1])[ref["atype"]], positions=ref["coord"][0].reshape(-1, 3),
                  cell=box, pbc=True)
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(ref["energy"][0], abs=1e-8)
    np.testing.assert_allclose(atoms.get_forces(), ref["force"][0].reshape(-1, 3), atol=1e-9)
    vir = ref["virial"][0].reshape(3, 3)
    expected = -0.5 * (vir + vir.T) / abs(np.linalg.det(box))
    np.testing.assert_allclose(atoms.get_stress(voigt=False), expected, atol=1e-11)
    np.testing.assert_allclose(calc.results["virial"], vir, atol=1e-8)


def test_energies_sum_to_energy(calc: DP) -> None:
    atoms = water_box()
    atoms.calc = calc
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()


# === conventions and errors =================================================================
def test_non_periodic_molecule(calc: DP) -> None:
    atoms = water_box()  # as a free cluster of 8 molecules
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    atoms.calc = calc
    forces = atoms.get_forces()
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-4), atol=1e-6)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-10)  # no periodic images
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()
    # a large vacuum box gives the same energy as no box at all
    boxed = atoms.copy()
    boxed.cell = np.eye(3) * 40.0
    boxed.pbc = True
    boxed.calc = calc
    assert boxed.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-9)


def test_unknown_element_is_named(calc: DP) -> None:
    atoms = water_box()
    atoms[0].symbol = "Na"
    atoms.calc = calc
    with pytest.raises(ValueError, match=r"Na.*type_map"):
        atoms.get_potential_energy()


def test_mixed_pbc_is_refused(calc: DP) -> None:
    atoms = water_box()
    atoms.pbc = [True, True, False]
    atoms.calc = calc
    with pytest.raises(ValueError, match="mixed periodicity"):
        atoms.get_potential_energy()


def test_types_cached_and_atom_order_respected(calc: DP) -> None:
    atoms = water_box()
    atoms.calc = calc
    forces = atoms.get_forces()
    atoms.positions += 0.01
    atoms.get_forces()
    assert len(calc._type_cache) == 1  # same composition: no new lookup
    perm = np.random.default_rng(0).permutation(len(atoms))
    shuffled = atoms[perm]
    shuffled.positions -= 0.01
    shuffled.calc = calc
    np.testing.assert_allclose(shuffled.get_forces(), forces[perm], atol=1e-10)


def test_type_map_override(dp: DeepPot) -> None:
    """Models with non-element type names: map symbols explicitly."""
    atoms = water_box()
    atoms.calc = DP(dp)
    e = atoms.get_potential_energy()
    atoms.calc = DP(dp, type_map={"O": 0, "H": 1})
    assert atoms.get_potential_energy() == e
    atoms.calc = DP(dp, type_map=["H", "O"])  # swapped: a different (wrong) answer
    assert atoms.get_potential_energy() != pytest.approx(e)
    with pytest.raises(ValueError, match="outside"):
        DP(dp, type_map={"O": 5})


def test_ensemble_reports_model_deviation(dp: DeepPot) -> None:
    import torch

    from dpa1.io.serialize import load_dp_model

    model, _ = load_dp_model(TINY_DP)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0),
                                      dtype=p.dtype))
    other = DeepPot(model, device="cpu")
    atoms = water_box()
    atoms.calc = DP([dp, other])
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    f2 = other.eval(atoms.positions[None], atoms.cell.array.reshape(1, 9), [0, 1, 1] * 8)[1][0]
    devi = np.sqrt(((np.stack([f, f2]) - (f + f2) / 2) ** 2).sum(-1).mean(0))
    assert atoms.calc.results["max_devi_f"] == pytest.approx(devi.max(), rel=1e-10)
    assert atoms.calc.get_property("avg_devi_f", atoms) == pytest.approx(devi.mean(), rel=1e-10)
    np.testing.assert_allclose(atoms.calc.results["devi_f"], devi, rtol=1e-10)
    atoms.calc = DP(dp)
    assert atoms.get_potential_energy() == e  # energies come from the first model


# === dynamics and optimisation ==============================================================
def test_nve_conserves_energy(calc: DP) -> None:
    from ase.md.verlet import VelocityVerlet

    atoms = water_192()
    atoms.calc = calc
    set_velocities(atoms, 300.0, np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    etot, epot = [], []

    def record() -> None:
        epot.append(atoms.get_potential_energy())
        etot.append(epot[-1] + atoms.get_kinetic_energy())

    dyn.attach(record, interval=1)
    dyn.run(20)
    etot, epot = np.array(etot), np.array(epot)
    assert len(etot) == 21
    drift = np.abs(etot - etot[0]).max()
    # the potential energy moves by eV; the total energy stays within ~0.1 meV/atom
    assert np.ptp(epot) > 0.5
    assert drift / len(atoms) < 3e-4, drift
    assert drift < 0.05 * np.ptp(epot)


def test_bfgs_with_cell_filter_lowers_energy(calc: DP) -> None:
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    atoms = water_box(rattle=0.05)
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    v0 = atoms.get_volume()
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    opt.run(fmax=1e-3, steps=8)
    assert atoms.get_potential_energy() < e0 - 1e-3
    assert atoms.get_volume() != pytest.approx(v0, rel=1e-8)  # the cell moved too


def test_fire_with_exp_cell_filter_runs(calc: DP) -> None:
    from ase.filters import ExpCellFilter
    from ase.optimize import FIRE

    atoms = water_box(seed=3, rattle=0.05)
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ASE prefers FrechetCellFilter
        FIRE(ExpCellFilter(atoms), logfile=None).run(fmax=1e-3, steps=8)
    assert atoms.get_potential_energy() < e0
