"""Helpers shared by the tests (paths of the data: :mod:`data_paths`).

- model tests: small configurations, randomised statistics, random systems, evaluation and
  finite-difference derivatives;
- data: the first frames of the water example as arrays;
- end-to-end training: a tiny water ``input.json``.

Conventions (docs/design.md, "Conventions" and "Forces and virials"): coordinates are row
vectors, the rows of the cell ``H`` are the lattice vectors, and
``virial[3k + j] = Σ F_k x_j``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dpa1.io.config import normalize_config
from dpa1.model.build import build_model
from dpa1.model.model import EnergyModel

from data_paths import WATER

NTYPES = 3
TYPE_MAP = ["A", "B", "C"]
RCUT = 3.5
RCUT_SMTH = 0.5
SEL = 40


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Run a test module on one intra-op thread (restored afterwards).

    The model tests evaluate many tiny tensors; on a busy 2-core machine torch's
    thread pool spins and slows them down by an order of magnitude. Import this
    fixture into a test module to activate it there.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def require_native() -> None:
    """The C++ ops must build wherever a C++ compiler is installed (CI has gcc): a broken build
    fails here instead of passing silently on the PyTorch fallback."""
    from dpa1.accel.build import native_ops

    if os.environ.get("DPA1_NATIVE", "1") == "0" or not (
        shutil.which("c++") or shutil.which("g++")
    ):
        pytest.skip("the C++ op is switched off (DPA1_NATIVE=0) or there is no C++ compiler")
    assert native_ops(), "the C++ ops did not build (see the RuntimeWarning)"


# === configurations ========================================================================
def small_model_config(
    descriptor: dict | None = None, fitting: dict | None = None, **model: Any
) -> dict:
    """The normalised ``model`` section of a small 3-type DPA-1 model.

    ``descriptor`` / ``fitting`` override keys of the descriptor / ``fitting_net``;
    remaining keyword arguments override model-level keys (``pair_exclude_types`` …).
    """
    desc = {
        "type": "se_atten", "sel": SEL, "rcut": RCUT, "rcut_smth": RCUT_SMTH,
        "neuron": [4, 8], "axis_neuron": 3, "attn": 8, "attn_layer": 2, "tebd_dim": 4,
        "seed": 1,
    }
    desc.update(descriptor or {})
    fit = {"neuron": [10, 10], "seed": 2}
    fit.update(fitting or {})
    raw = {
        "model": {"type_map": list(TYPE_MAP), "descriptor": desc, "fitting_net": fit, **model},
        "learning_rate": {"start_lr": 1e-3},
        "training": {"training_data": {"systems": ["unused"]}, "numb_steps": 1},
    }
    return normalize_config(raw)["model"]


def randomize_statistics(model: EnergyModel, seed: int = 0) -> EnergyModel:
    """Install realistic but non-trivial statistics and biases, in place.

    Like DeePMD's statistics (docs/design.md, "Descriptor statistics"), ``davg``/``dstd`` are
    constant over the neighbour
    slots, the xyz part of ``davg`` is 0 and the three xyz ``dstd`` entries are equal;
    ``davg``'s radial part is non-zero only when ``set_davg_zero`` is false.
    """
    rng = np.random.default_rng(seed)
    desc = model.descriptor
    nt, nnei = desc.ntypes, desc.nnei
    davg = np.zeros((nt, nnei, 4))
    if not desc.set_davg_zero:
        davg[:, :, 0] = rng.uniform(0.2, 0.6, size=(nt, 1))
    dstd = np.empty((nt, nnei, 4))
    dstd[:, :, 0] = rng.uniform(0.1, 0.3, size=(nt, 1))
    dstd[:, :, 1:] = rng.uniform(0.1, 0.3, size=(nt, 1, 1))
    desc.set_stat(torch.tensor(davg), torch.tensor(dstd))
    fit = model.fitting
    with torch.no_grad():
        model.out_bias.copy_(torch.tensor(rng.normal(0.0, 2.0, size=(1, nt, 1))))
        fit.bias_atom_e.copy_(torch.tensor(rng.normal(0.0, 0.5, size=(nt, 1))))
        if fit.numb_fparam:
            fit.fparam_avg.copy_(torch.tensor(rng.normal(size=fit.numb_fparam)))
            fit.fparam_inv_std.copy_(torch.tensor(rng.uniform(0.5, 2.0, size=fit.numb_fparam)))
        if fit.numb_aparam:
            fit.aparam_avg.copy_(torch.tensor(rng.normal(size=fit.numb_aparam)))
            fit.aparam_inv_std.copy_(torch.tensor(rng.uniform(0.5, 2.0, size=fit.numb_aparam)))
    return model


def make_model(model_cfg: dict, stat_seed: int = 0) -> EnergyModel:
    """A fresh seeded model with randomised statistics, in evaluation mode."""
    model = build_model(copy.deepcopy(model_cfg))
    randomize_statistics(model, stat_seed)
    return model.eval()


def set_random_statistics(model: EnergyModel, out_bias: list[float], seed: int = 0) -> EnergyModel:
    """Random ``davg`` (zero with ``set_davg_zero``) and ``dstd`` of any slot pattern, and
    the given per-type ``out_bias``, in place (the model of the data-layout tests)."""
    desc = model.descriptor
    shape = (desc.ntypes, desc.nnei, 4)
    rng = np.random.default_rng(seed)
    davg = rng.normal(scale=0.1, size=shape) * (not desc.set_davg_zero)
    desc.set_stat(torch.from_numpy(davg), torch.from_numpy(rng.uniform(0.5, 1.5, size=shape)))
    model.out_bias[0, :, 0] = torch.tensor(out_bias, dtype=torch.float64)
    return model


# === random systems ========================================================================
def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A random proper rotation (det = +1) acting on row vectors: ``x ← x @ R``."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_cell(rng: np.random.Generator, lengths=(6.0, 6.5, 7.0), tilt: float = 1.5) -> np.ndarray:
    """A right-handed triclinic cell (rows = lattice vectors) of roughly the given lengths."""
    a, b, c = lengths
    h = np.array([
        [a, 0.0, 0.0],
        [rng.uniform(-tilt, tilt), b, 0.0],
        [rng.uniform(-tilt, tilt), rng.uniform(-tilt, tilt), c],
    ])
    h = h @ random_rotation(rng)
    assert np.linalg.det(h) > 0
    return h


def min_image_distances(coord: np.ndarray, box: np.ndarray | None, reach: int = 2) -> np.ndarray:
    """Distances between all pairs over lattice shifts in ``[-reach, reach]³`` (self excluded)."""
    n = coord.shape[0]
    if box is None:
        shifts = np.zeros((1, 3))
    else:
        g = np.arange(-reach, reach + 1)
        shifts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) @ box
    disp = coord[None, :, None] - coord[:, None, None] + shifts[None, None]
    d = np.linalg.norm(disp, axis=-1)
    zero = np.all(np.abs(shifts) < 1e-12, axis=-1)
    d[np.arange(n), np.arange(n), :] = np.where(zero, np.inf, d[np.arange(n), np.arange(n), :])
    return d.min(axis=-1)


def random_positions(
    rng: np.random.Generator, n: int, box: np.ndarray | None, min_dist: float = 0.9,
    cluster_size: float = 4.5,
) -> np.ndarray:
    """``n`` positions at least ``min_dist`` apart (over periodic images), by rejection.

    With a cell, fractional coordinates are drawn from ``[-0.5, 1.5)`` so that some atoms
    lie outside the cell; without one, atoms fill a cube of side ``cluster_size``.
    """
    pos: list[np.ndarray] = []
    for _ in range(100000):
        if box is None:
            x = rng.uniform(0.0, cluster_size, size=3)
        else:
            x = rng.uniform(-0.5, 1.5, size=3) @ box
        if pos:
            trial = np.vstack(pos + [x])
            if min_image_distances(trial, box)[-1, :-1].min() < min_dist:
                continue
            if box is not None and min_image_distances(x[None], box)[0, 0] < min_dist:
                continue
        pos.append(x)
        if len(pos) == n:
            return np.vstack(pos)
    raise RuntimeError("could not place the atoms")


def make_system(kind: str, seed: int, n_virtual: int = 0, natoms: int | None = None):
    """A small random system: ``coord (nloc, 3)``, ``atype (nloc,)``, ``box (3, 3)`` or None.

    Kinds: ``pbc`` (triclinic, ~12 atoms), ``nopbc`` (a cluster), ``thin`` (a cell whose
    third face distance is below rcut, so several images of one atom are neighbours).
    ``n_virtual`` atoms of type −1 are inserted at random positions (never at index 0).
    Every type occurs, and atom 0 has type 0.
    """
    rng = np.random.default_rng(seed)
    if kind == "pbc":
        box = random_cell(rng)
        n = natoms or 12
    elif kind == "nopbc":
        box = None
        n = natoms or 10
    elif kind == "thin":
        box = random_cell(rng, lengths=(6.0, 6.5, 2.6), tilt=0.8)
        n = natoms or 6
    else:
        raise ValueError(kind)
    coord = random_positions(rng, n, box)
    atype = np.concatenate([[0, 1, 2], rng.integers(0, NTYPES, size=n - 3)])
    atype[1:] = rng.permutation(atype[1:])
    for _ in range(n_virtual):
        k = int(rng.integers(1, coord.shape[0] + 1))
        x = rng.uniform(0.0, 4.0, size=3) if rng.uniform() < 0.5 else coord[k - 1] + 0.3
        coord = np.insert(coord, k, x, axis=0)
        atype = np.insert(atype, k, -1)
    return coord, atype, box


def params_for(model: EnergyModel, nf: int, nloc: int, seed: int = 5):
    """Random ``fparam (nf, nfp)`` / ``aparam (nf, nloc, nap)`` if the model needs them."""
    rng = np.random.default_rng(seed)
    fp = rng.normal(size=(nf, model.fitting.numb_fparam)) if model.fitting.numb_fparam else None
    nap = model.fitting.numb_aparam
    ap = rng.normal(size=(nf, nloc, nap)) if nap else None
    return fp, ap


# === evaluation ============================================================================
def evaluate(
    model: EnergyModel, coord, atype, box=None, fparam=None, aparam=None, atomic: bool = True
) -> dict[str, np.ndarray]:
    """Evaluate one frame (``coord (nloc, 3)``) or a batch (``coord (nf, nloc, 3)``).

    Returns numpy arrays with the frame axis kept: ``energy (nf,)``, ``force (nf, nloc, 3)``,
    ``virial (nf, 3, 3)``, ``atom_energy (nf, nloc)``, ``atom_virial (nf, nloc, 3, 3)``.
    """
    coord = np.asarray(coord, dtype=np.float64)
    if coord.ndim == 2:
        coord = coord[None]
    nf, nloc, _ = coord.shape
    atype = np.broadcast_to(np.asarray(atype), (nf, nloc))
    box_t = None
    if box is not None:
        box_t = torch.tensor(np.broadcast_to(np.asarray(box, dtype=np.float64), (nf, 3, 3)).copy())
    fp = None
    if fparam is not None:
        fp = torch.tensor(np.broadcast_to(fparam, (nf, np.shape(fparam)[-1])).copy())
    ap = None
    if aparam is not None:
        ap = torch.tensor(np.broadcast_to(aparam, (nf, nloc, np.shape(aparam)[-1])).copy())
    out = model(
        torch.tensor(coord), torch.tensor(atype.copy(), dtype=torch.long), box_t,
        fparam=fp, aparam=ap, do_atomic_virial=atomic,
    )
    res = {
        "energy": out["energy"].detach().numpy().reshape(nf),
        "force": out["force"].detach().numpy().reshape(nf, nloc, 3),
        "virial": out["virial"].detach().numpy().reshape(nf, 3, 3),
        "atom_energy": out["atom_energy"].detach().numpy().reshape(nf, nloc),
    }
    if atomic:
        res["atom_virial"] = out["atom_virial"].detach().numpy().reshape(nf, nloc, 3, 3)
    return res


def fd_forces(
    model, coord, atype, box=None, fparam=None, aparam=None, h: float = 1e-5
) -> np.ndarray:
    """Central finite-difference forces ``−∂E/∂x`` (all displaced frames in one batch)."""
    nloc = coord.shape[0]
    disp = np.zeros((nloc, 3, 2, nloc, 3))
    for i in range(nloc):
        for k in range(3):
            disp[i, k, 0, i, k] = h
            disp[i, k, 1, i, k] = -h
    frames = (coord[None] + disp.reshape(-1, nloc, 3))
    e = evaluate(model, frames, atype, box, fparam, aparam, atomic=False)["energy"]
    e = e.reshape(nloc, 3, 2)
    return -(e[..., 0] - e[..., 1]) / (2 * h)


def fd_virial(
    model, coord, atype, box=None, fparam=None, aparam=None, h: float = 1e-5
) -> np.ndarray:
    """``V = −∂E/∂ε`` by central differences of the homogeneous strain of coords AND cell.

    With row vectors the deformation is ``x ← x (I + ε)``, ``H ← H (I + ε)``. Then
    ``−∂E/∂ε_jk = Σ F_k x_j``, so ``V[k, j] = Σ F_k x_j = −∂E/∂ε_jk``: the transpose.
    """
    frames, boxes = [], []
    for j in range(3):
        for k in range(3):
            for sign in (1.0, -1.0):
                eps = np.eye(3)
                eps[j, k] += sign * h
                frames.append(coord @ eps)
                boxes.append(None if box is None else box @ eps)
    e = evaluate(
        model, np.stack(frames), atype, None if box is None else np.stack(boxes), fparam, aparam,
        atomic=False,
    )["energy"].reshape(3, 3, 2)
    de = (e[..., 0] - e[..., 1]) / (2 * h)  # ∂E/∂ε_jk
    return -de.T


def max_rel_err(a: np.ndarray, b: np.ndarray, floor: float = 1e-6) -> float:
    """``max |a − b| / max(floor, max |b|)``: the error relative to the largest entry."""
    return float(np.abs(a - b).max() / max(floor, np.abs(b).max()))


def assert_same_arrays(a: dict, b: dict, atol: float = 0.0, what: str = "") -> None:
    """Two dicts of arrays have the same keys and agree to ``atol`` (absolute) everywhere."""
    assert a.keys() == b.keys(), what
    for key in a:
        err = float(np.abs(np.asarray(a[key]) - np.asarray(b[key])).max())
        assert err <= atol, f"{what}{': ' if what else ''}{key} differs by {err:.3e}"


def water_box(seed: int = 1, rattle: float = 0.1, scale: float = 1.0):
    """8 water molecules (24 atoms) in a ~6.2 Å triclinic cell (~1 g/cm³), rattled."""
    from ase import Atoms
    from ase.build import molecule

    cell = np.array([[6.2, 0.0, 0.0], [0.8, 6.0, 0.0], [-0.5, 0.6, 6.4]]) * scale
    w = molecule("H2O")
    symbols, positions = [], []
    for i in range(2):
        for j in range(2):
            for k in range(2):
                centre = ((np.array([i, j, k]) + 0.25) / 2) @ cell
                symbols += w.get_chemical_symbols()
                positions += list(w.positions + centre)
    atoms = Atoms(symbols, positions=positions, cell=cell, pbc=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


# === water data ============================================================================
def water_frames(n: int, system: Path = WATER / "data_0") -> dict[str, np.ndarray]:
    """The first ``n`` frames of a water system as float64 arrays: ``symbols (natoms,)``,
    ``atype (natoms,)``, ``coord (n, natoms, 3)``, ``box (n, 3, 3)``, ``energy (n,)``,
    ``force (n, natoms, 3)``."""
    names = (system / "type_map.raw").read_text().split()
    types = np.loadtxt(system / "type.raw", dtype=np.int64).reshape(-1)
    sd = system / "set.000"
    natoms = types.size

    def load(key: str, *shape: int) -> np.ndarray:  # the files are float32
        return np.load(sd / f"{key}.npy")[:n].astype(np.float64).reshape(n, *shape)

    return {
        "symbols": np.array([names[t] for t in types]),
        "atype": types,
        "coord": load("coord", natoms, 3),
        "box": load("box", 3, 3),
        "energy": load("energy"),
        "force": load("force", natoms, 3),
    }


# === training inputs (water from ``examples/water/data``) ==================================
TINY_MODEL: dict[str, Any] = {
    "type_map": ["O", "H"],
    "descriptor": {
        "type": "se_atten", "sel": 40, "rcut": 4.0, "rcut_smth": 0.5, "neuron": [4, 8],
        "axis_neuron": 4, "attn": 8, "attn_layer": 1, "tebd_dim": 4, "seed": 1,
    },
    "fitting_net": {"neuron": [16, 16], "seed": 1},
}


def water_input(
    tmp: Path, *, numb_steps: int = 20, disp_freq: int = 5, save_freq: int = 10,
    train: list[str] | None = None, valid: list[str] | None = None, **training: Any,
) -> Path:
    """Write a tiny water input.json in ``tmp`` and return its path."""
    cfg = {
        "model": copy.deepcopy(TINY_MODEL),
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-4, "decay_steps": 10},
        "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000,
                 "limit_pref_f": 1},
        "training": {
            "training_data": {"systems": train or [str(WATER / "data_0")], "batch_size": 1},
            "validation_data": {"systems": valid or [str(WATER / "data_2")], "batch_size": 1,
                                "numb_btch": 2},
            "numb_steps": numb_steps, "seed": 7, "disp_freq": disp_freq, "save_freq": save_freq,
            **training,
        },
    }
    path = tmp / "input.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path
