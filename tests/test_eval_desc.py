"""``DeepPot.eval_descriptor`` and ``dpa1 eval-desc`` against DeePMD-kit's
``DeepPot.eval_descriptor`` of the same model (tiny.dp through ``dp convert-backend``)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dpa1.cli.main import main
from dpa1.infer.deep_pot import DeepPot

from data_paths import TINY_DESCRIPTOR, TINY_DP, WATER

pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


def test_eval_descriptor_equals_deepmd():
    ref = np.load(TINY_DESCRIPTOR)
    desc = DeepPot(TINY_DP, device="cpu").eval_descriptor(ref["coord"], ref["box"], ref["atype"])
    assert desc.shape == (2, 192, 136) and desc.dtype == np.float64
    np.testing.assert_allclose(desc[:, ref["atoms"]], ref["descriptor"], rtol=0, atol=1e-10)


def test_eval_descriptor_in_callers_atom_order():
    """Shuffled atoms give the same rows, shuffled (per-frame types as mixed_type)."""
    ref = np.load(TINY_DESCRIPTOR)
    perm = np.random.default_rng(0).permutation(192)
    coord = ref["coord"].reshape(2, 192, 3)[:, perm]
    atype = np.broadcast_to(ref["atype"][perm], (2, 192))
    desc = DeepPot(TINY_DP, device="cpu").eval_descriptor(coord, ref["box"], atype,
                                                          mixed_type=True)
    where = np.argsort(perm)[ref["atoms"]]
    np.testing.assert_allclose(desc[:, where], ref["descriptor"], rtol=0, atol=1e-10)


def _two_frame_system(root, name: str):
    """Frames 0 and 2 of water data_0 (those of the reference) as a system named ``name``."""
    src, dst = WATER / "data_0", root / name
    (dst / "set.000").mkdir(parents=True)
    for f in ("type.raw", "type_map.raw"):
        shutil.copy(src / f, dst / f)
    for f in ("coord.npy", "box.npy"):
        np.save(dst / "set.000" / f, np.load(src / "set.000" / f)[[0, 2]])
    return dst


def test_eval_desc_cli(tmp_path, capsys):
    system = _two_frame_system(tmp_path / "sys", "water")
    out = tmp_path / "desc"
    assert main(["eval-desc", "-m", str(TINY_DP), "-s", str(system), "-o", str(out),
                 "--dtype", "fp32"]) == 0
    assert "# descriptor shape: (2, 192, 136)" in capsys.readouterr().out
    desc = np.load(out / "water.npy")
    ref = np.load(TINY_DESCRIPTOR)
    assert desc.dtype == np.float32
    np.testing.assert_allclose(desc[:, ref["atoms"]], ref["descriptor"], rtol=1e-6, atol=1e-7)


def test_eval_desc_refuses_two_systems_of_one_name(tmp_path, capsys):
    a = _two_frame_system(tmp_path / "a", "water")
    b = _two_frame_system(tmp_path / "b", "water")
    listing = tmp_path / "systems.txt"
    listing.write_text(f"{a}\n\n{b}\n")
    assert main(["eval-desc", "-m", str(TINY_DP), "-f", str(listing), "-o",
                 str(tmp_path / "desc")]) == 2
    assert "would both be saved as" in capsys.readouterr().err
    assert not (tmp_path / "desc").exists()
