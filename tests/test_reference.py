"""Exact agreement with DeePMD-kit: ``tiny.dp`` evaluated on the frames of
``tiny_reference.npz`` (DeePMD-kit 3.2.0's own predictions, float64) to 1e-10."""

from __future__ import annotations

import functools

import numpy as np

from dpa1.io.serialize import load_dp_model

from data_paths import TINY_DP, TINY_REFERENCE
from helpers import (
    evaluate,
    single_thread,  # noqa: F401  (autouse fixture)
)

TOL = 1e-10


@functools.cache
def _model():
    model, _ = load_dp_model(TINY_DP)
    return model.eval()


@functools.cache
def _reference() -> dict[str, np.ndarray]:
    ref = dict(np.load(TINY_REFERENCE))
    nf, natoms = ref["coord"].shape[0], ref["atype"].shape[0]
    return {
        "coord": ref["coord"].reshape(nf, natoms, 3),
        "box": ref["box"].reshape(nf, 3, 3),
        "atype": ref["atype"].astype(np.int64),
        "energy": ref["energy"].reshape(nf),
        "force": ref["force"].reshape(nf, natoms, 3),
        "virial": ref["virial"].reshape(nf, 3, 3),
        "atom_energy": ref["atom_energy"].reshape(nf, natoms),
        "atom_virial": ref["atom_virial"].reshape(nf, natoms, 3, 3),
    }


KEYS = ("energy", "force", "virial", "atom_energy", "atom_virial")


def _check(res: dict, ref: dict, what: str) -> None:
    for key in KEYS:
        err = np.abs(res[key] - ref[key]).max()
        assert err <= TOL, f"{what}: {key} differs from DeePMD-kit by {err:.3e}"


def test_reference_frames() -> None:
    ref = _reference()
    assert ref["coord"].shape == (3, 192, 3)
    res = evaluate(_model(), ref["coord"], ref["atype"], ref["box"])
    _check(res, ref, "batch of 3 frames")
    # The reference is not trivially reproduced (the checks above compare real numbers).
    assert np.abs(ref["force"]).max() > 0.1 and np.abs(ref["atom_virial"]).max() > 1e-3


def test_reference_frames_one_by_one() -> None:
    ref = _reference()
    for f in range(3):
        res = evaluate(_model(), ref["coord"][f], ref["atype"], ref["box"][f])
        _check(res, {k: ref[k][f : f + 1] for k in KEYS}, f"frame {f}")


def test_reference_with_permuted_atoms() -> None:
    ref = _reference()
    rng = np.random.default_rng(1)
    for f in range(3):
        perm = rng.permutation(ref["atype"].size)
        inv = np.argsort(perm)
        res = evaluate(_model(), ref["coord"][f][perm], ref["atype"][perm], ref["box"][f])
        for key in ("force", "atom_energy", "atom_virial"):
            res[key] = res[key][:, inv]
        _check(res, {k: ref[k][f : f + 1] for k in KEYS}, f"frame {f}, permuted")


def test_reference_with_wrapped_and_unwrapped_coordinates() -> None:
    ref = _reference()
    rng = np.random.default_rng(2)
    coord, box = ref["coord"], ref["box"]
    frac = np.einsum("fij,fjk->fik", coord, np.linalg.inv(box))
    # Everything wrapped into the cell ...
    wrapped = np.einsum("fij,fjk->fik", frac - np.floor(frac), box)
    # ... and every atom moved by a random lattice vector (many far outside the cell).
    shifts = rng.integers(-3, 4, size=coord.shape)
    unwrapped = coord + np.einsum("fij,fjk->fik", shifts.astype(float), box)
    assert np.abs(wrapped - coord).max() > 1.0 or np.abs(unwrapped - coord).max() > 1.0
    for what, c in (("wrapped", wrapped), ("unwrapped", unwrapped)):
        res = evaluate(_model(), c, ref["atype"], box)
        _check(res, ref, what)
