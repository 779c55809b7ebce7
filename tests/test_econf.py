"""Tests of the electronic-configuration type-embedding inputs `dpa1.model.econf` (docs/design.md,
"Type embedding")."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from dpa1.model.econf import CONFIGURATIONS, econf_inputs

from data_paths import TINY_INPUT

# sha256 of DeePMD-kit 3.2.0's `normalized_electronic_configuration_embedding`, rows H..Og
# stacked in atomic-number order, as little-endian float64 bytes (so CI checks it without DeePMD).
DEEPMD_TABLE_SHA256 = "58457eb766495ef7099156d52446246e300722be20a180cd3d5df4902d72555c"
S = 1.0 / np.sqrt(118.0)


def _expected(orbitals: list[int]) -> np.ndarray:
    """Vector from explicit per-orbital occupancies (59 orbitals in spec order, 0-padded)."""
    occ = orbitals + [0] * (59 - len(orbitals))
    spins = {0: (-1, -1), 1: (-1, 1), 2: (1, 1)}
    return S * np.array([s for o in occ for s in spins[o]], dtype=np.float64)


def _deepmd_module() -> types.ModuleType:
    """DeePMD-kit's own econf_embd.py, read from the installed package without importing
    it (its import needs mendeleev, used only by the generator)."""
    spec = importlib.util.find_spec("deepmd")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("deepmd-kit is not installed")
    path = Path(spec.submodule_search_locations[0]) / "utils" / "econf_embd.py"
    source = path.read_text()
    mod = types.ModuleType("deepmd_econf_embd")
    saved = sys.modules.get("mendeleev")
    sys.modules["mendeleev"] = types.SimpleNamespace(element=None)  # only used by its generator
    try:
        exec(compile(source, "econf_embd.py", "exec"), mod.__dict__)
    finally:
        if saved is None:
            del sys.modules["mendeleev"]
        else:
            sys.modules["mendeleev"] = saved
    return mod


def test_shape_and_values() -> None:
    table = econf_inputs(list(CONFIGURATIONS))
    assert table.shape == (118, 118) and table.dtype == np.float64
    assert list(CONFIGURATIONS)[:3] == ["H", "He", "Li"] and list(CONFIGURATIONS)[-1] == "Og"
    assert np.all(np.abs(table) == S)
    assert econf_inputs(["O", "H", "O"]).shape == (3, 118)
    np.testing.assert_array_equal(econf_inputs(["H", "O"]), econf_inputs(["O", "H"])[::-1])
    # electron count = atomic number (each (+1,+1) pair 2 electrons, (-1,+1) 1)
    spins = np.rint(table / S).reshape(118, 59, 2)
    electrons = (spins[..., 0] > 0).sum(1) + (spins[..., 1] > 0).sum(1)
    np.testing.assert_array_equal(electrons, np.arange(1, 119))


@pytest.mark.parametrize(
    "symbol, orbitals",
    [
        ("H", [1]),
        ("O", [2, 2, 2, 1, 1]),  # 1s2 2s2 2p4: doubly occupied p orbital first
        ("Cu", [2] * 14 + [1]),  # [Ar] 3d10 4s1
        ("Cr", [2] * 9 + [1] * 5 + [1]),  # [Ar] 3d5 4s1
        # [Xe] 4f7 5d1 6s2: 1s..4d doubly, 4f half, 5s 5p doubly, 5d 1 of 5, 5f empty, 6s2
        ("Gd", [2] * 23 + [1] * 7 + [2] * 4 + [1, 0, 0, 0, 0] + [0] * 7 + [2]),
    ],
)
def test_hand_checked(symbol: str, orbitals: list[int]) -> None:
    np.testing.assert_array_equal(econf_inputs([symbol])[0], _expected(orbitals))


def test_unknown_symbol() -> None:
    with pytest.raises(ValueError, match="Xx"):
        econf_inputs(["O", "Xx"])
    with pytest.raises(ValueError, match="'h'"):
        econf_inputs(["h"])


def test_checksum_of_deepmd_table() -> None:
    table = np.ascontiguousarray(econf_inputs(list(CONFIGURATIONS)), dtype="<f8")
    assert hashlib.sha256(table.tobytes()).hexdigest() == DEEPMD_TABLE_SHA256


def test_equals_deepmd_table() -> None:
    ref = _deepmd_module()
    assert ref.type_map == list(CONFIGURATIONS)
    want = np.stack([ref.normalized_electronic_configuration_embedding[k] for k in ref.type_map])
    got = econf_inputs(ref.type_map)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    assert hashlib.sha256(np.ascontiguousarray(want, "<f8").tobytes()).hexdigest() == (
        DEEPMD_TABLE_SHA256
    )


def test_model_with_econf_builds_and_evaluates() -> None:
    from dpa1.io.config import normalize_config
    from dpa1.model.build import build_model

    data = copy.deepcopy(json.loads(TINY_INPUT.read_text()))
    data["model"]["descriptor"]["use_econf_tebd"] = True
    cfg = normalize_config(data)
    model = build_model(cfg["model"])
    tebd = model.descriptor.type_embedding
    np.testing.assert_array_equal(tebd.inputs.numpy(), econf_inputs(cfg["model"]["type_map"]))
    assert tebd().shape == (3, cfg["model"]["descriptor"]["tebd_dim"])

    gen = torch.Generator().manual_seed(0)
    n = 6
    box = (6.0 * torch.eye(3, dtype=torch.float64)).unsqueeze(0)
    coord = torch.rand(1, n, 3, generator=gen, dtype=torch.float64) * 6.0
    atype = torch.tensor([[0, 1, 1, 0, 1, 1]], dtype=torch.long)
    out = model(coord, atype, box)
    assert out["energy"].shape == (1, 1) and out["force"].shape == (1, n, 3)
    assert torch.isfinite(out["energy"]).all() and torch.isfinite(out["force"]).all()
