"""``dpa1 freeze --lammps``: the file is called exactly as DeePMD-kit 3.2.0's C++ ``DeepPotPT``
calls it from LAMMPS (docs/lammps.md), on a LAMMPS-style extended system: ghost atoms within
rcut + skin of the box, a full neighbour list within rcut + skin in no particular order, −1
padded. Forces and per-atom virials on ghosts are added to their owners, as LAMMPS does."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from dpa1.cli.main import main
from dpa1.infer.deep_pot import DeepPot

from data_paths import TINY_DP, TINY_REFERENCE, WATER
from helpers import single_thread  # noqa: F401  (autouse fixture)

TOL = 1e-10
SKIN = 2.0  # LAMMPS's default neighbour skin in metal units


@pytest.fixture(scope="module")
def frozen_path(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("lammps") / "tiny_lammps.pth")
    assert main(["freeze", "-c", str(TINY_DP), "-o", out, "--lammps"]) == 0
    return out


@pytest.fixture(scope="module")
def frozen(frozen_path) -> torch.jit.ScriptModule:
    return torch.jit.load(frozen_path)


def lammps_system(
    coord: np.ndarray, box: np.ndarray, cutoff: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What LAMMPS hands DeePMD-kit for one periodic frame.

    Returns:
        ``ext_coord (nall, 3)`` (atoms wrapped into the box, then every image within
        ``cutoff`` of it), ``owner (nall,)`` (the local atom of each extended atom) and the full
        neighbour list ``(nloc, n)`` within ``cutoff``, shuffled per atom, −1 padded.
    """
    rng = np.random.default_rng(seed)
    coord, box = coord.astype(np.float64), box.astype(np.float64)
    frac = coord @ np.linalg.inv(box)
    frac -= np.floor(frac)
    nloc = coord.shape[0]
    faces = abs(np.linalg.det(box)) / np.linalg.norm(np.cross(box[[1, 2, 0]], box[[2, 0, 1]]),
                                                     axis=1)
    reach = cutoff / faces  # fractional thickness of the ghost shell on each axis
    images, owner = [frac], [np.arange(nloc)]
    for shift in itertools.product((-1, 0, 1), repeat=3):
        if shift == (0, 0, 0):
            continue
        f = frac + np.array(shift)
        keep = np.all((f >= -reach) & (f < 1 + reach), axis=1)
        images.append(f[keep])
        owner.append(np.flatnonzero(keep))
    ext = np.concatenate(images) @ box
    owner = np.concatenate(owner)
    d = np.linalg.norm(ext[None, :, :] - ext[:nloc, None, :], axis=-1)
    d[np.arange(nloc), np.arange(nloc)] = np.inf
    rows = [rng.permutation(np.flatnonzero(d[i] <= cutoff)) for i in range(nloc)]
    nlist = np.full((nloc, max(len(r) for r in rows)), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        nlist[i, : len(r)] = r
    return ext, owner, nlist


def call_like_deepmd(module, coord, box, atype, cutoff, with_mapping=True):
    """``forward_lower`` with DeePMD-kit's argument types and order, outputs folded as LAMMPS
    folds them: energy, force (nloc, 3), virial (9,), atom_energy (nloc,), atom_virial
    (nloc, 9), and the raw output dict."""
    ext, owner, nlist = lammps_system(coord, box, cutoff)
    nloc, nall = coord.shape[0], ext.shape[0]
    out = module.forward_lower(
        torch.from_numpy(ext).reshape(1, nall, 3),
        torch.from_numpy(atype[owner].astype(np.int64)).reshape(1, nall),
        torch.from_numpy(nlist).reshape(1, nloc, -1),
        torch.from_numpy(owner).reshape(1, nall) if with_mapping else None,
        None,
        None,
        True,
    )
    for key in ("energy", "extended_force", "virial", "atom_energy", "extended_virial"):
        assert out[key].dtype == torch.float64, key
    force = np.zeros((nloc, 3))
    np.add.at(force, owner, out["extended_force"].numpy().reshape(nall, 3))
    atom_virial = np.zeros((nloc, 9))
    np.add.at(atom_virial, owner, out["extended_virial"].numpy().reshape(nall, 9))
    res = {
        "energy": out["energy"].numpy().reshape(()),
        "force": force,
        "virial": out["virial"].numpy().reshape(9),
        "atom_energy": out["atom_energy"].numpy().reshape(nloc),
        "atom_virial": atom_virial,
    }
    return res, out, nlist


def _compare(res: dict, ref: dict, what: str) -> None:
    for key in ("energy", "force", "virial", "atom_energy", "atom_virial"):
        err = np.abs(res[key] - ref[key].reshape(res[key].shape)).max()
        assert err <= TOL, f"{what}: {key} differs by {err:.3e}"


def test_metadata_deepmd_reads(frozen) -> None:
    assert frozen.has_message_passing() is False
    assert frozen.get_rcut() == 4.0
    assert frozen.get_ntypes() == 2
    assert frozen.get_type_map() == ["O", "H"]
    assert frozen.get_dim_fparam() == 0 and frozen.get_dim_aparam() == 0
    assert frozen.is_aparam_nall() is False
    assert frozen.has_default_fparam() is False
    assert frozen.get_sel() == [40]


def test_water_frame_equals_deep_pot(frozen) -> None:
    """Called as DeePMD-kit's C++ calls it, the module (which runs dpa1's C++ block op where the
    ops are built) gives DeepPot's numbers."""
    from dpa1.accel.build import native_ops

    if native_ops():
        assert "dpa1.energy_block" in frozen.model.accel.code
    # the files hold float32: evaluate exactly those numbers in float64 on both sides
    coord = np.load(WATER / "data_0" / "set.000" / "coord.npy")[0].reshape(-1, 3)
    coord = coord.astype(np.float64)
    box = np.load(WATER / "data_0" / "set.000" / "box.npy")[0].reshape(3, 3).astype(np.float64)
    atype = np.loadtxt(WATER / "data_0" / "type.raw", dtype=np.int64)
    e, f, v, ae, av = DeepPot(str(TINY_DP), device="cpu").eval(
        coord[None], box[None], atype, atomic=True)
    ref = {"energy": e, "force": f, "virial": v, "atom_energy": ae, "atom_virial": av}
    # rcut + skin: more neighbours than sel (40) reach the model, which keeps the 40 nearest
    res, out, nlist = call_like_deepmd(frozen, coord, box, atype, 4.0 + SKIN)
    assert nlist.shape[1] > 40 and (nlist >= 0).sum(axis=1).min() > 40
    _compare(res, ref, "rcut + skin list")
    # the fold LAMMPS does is what dpa1 returns with a mapping
    assert np.abs(out["force"].numpy().reshape(-1, 3) - res["force"]).max() <= TOL
    # rcut only: fewer neighbours than sel, padded by the model
    res, _, nlist = call_like_deepmd(frozen, coord, box, atype, 4.0)
    assert nlist.shape[1] < 40
    _compare(res, ref, "rcut list")
    # several MPI ranks: LAMMPS passes no mapping
    res, out, _ = call_like_deepmd(frozen, coord, box, atype, 4.0 + SKIN, with_mapping=False)
    _compare(res, ref, "no mapping")
    # the keys of DeePMD-kit's own forward_lower (dp convert-backend tiny.dp tiny_dp.pth)
    assert sorted(out) == ["atom_energy", "energy", "extended_force", "extended_virial", "mask",
                           "virial"]
    # the numbers are real ones
    assert np.abs(ref["force"]).max() > 0.1 and np.abs(ref["atom_virial"]).max() > 1e-3


def test_equals_deepmd_kit_reference(frozen) -> None:
    """DeePMD-kit 3.2.0's own predictions (tiny_reference.npz, frame 0)."""
    ref = dict(np.load(TINY_REFERENCE))
    coord, box = ref["coord"][0].reshape(-1, 3), ref["box"][0].reshape(3, 3)
    res, _, _ = call_like_deepmd(frozen, coord, box, ref["atype"], 4.0 + SKIN)
    _compare(res, {k: ref[k][0] for k in ("energy", "force", "virial", "atom_energy",
                                           "atom_virial")}, "DeePMD-kit reference")


def test_refusals(frozen) -> None:
    with pytest.raises(torch.jit.Error, match="neighbour lists only"):
        frozen(torch.zeros(1, 3, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.long))
    coord = torch.zeros(1, 2, 3, dtype=torch.float64)
    coord[0, 1, 0] = 1.0
    with pytest.raises(torch.jit.Error, match="comm_dict"):
        frozen.forward_lower(coord, torch.zeros(1, 2, dtype=torch.long),
                             torch.tensor([[[1], [0]]]), None, None, None, False,
                             {"send_list": torch.zeros(1)})


def test_frozen_file_reads_in_dpa1(frozen_path) -> None:
    """dpa1's own DeepPot evaluates the --lammps file (it passes a mapping)."""
    ref = dict(np.load(TINY_REFERENCE))
    dp = DeepPot(frozen_path, device="cpu")
    e, f, v = dp.eval(ref["coord"][:1], ref["box"][:1], ref["atype"])
    assert abs(e.item() - ref["energy"][0]) <= TOL
    assert np.abs(f.reshape(-1) - ref["force"][0]).max() <= TOL
