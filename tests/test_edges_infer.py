"""Inference at the edges, through DeepPot, the ASE calculator and the CLI verbs: clusters
far apart, atoms on one position or closer than any training pair (the model's
``min_nbor_dist``, kept through every model file), no atoms, and more neighbours than
``sel`` (at inference and in training data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from dpa1.calculator import DP
from dpa1.cli.main import main
from dpa1.data.stats import neighbor_stat
from dpa1.infer.deep_pot import DeepPot
from dpa1.io.model_file import freeze, load_checkpoint, save_checkpoint
from dpa1.io.serialize import load_dp_model, save_dp_model

from model_utils import single_thread  # noqa: F401  (autouse fixture)
from train_utils import WATER, water_input

ROOT = Path(__file__).resolve().parents[1]
TINY_DP = ROOT.parent / "shared" / "reference" / "tiny.dp"  # O/H, rcut 4, sel 40
TINY_MIN_DIST = 0.8854385688525499  # its min_nbor_dist

pytestmark = [
    pytest.mark.skipif(not TINY_DP.exists(), reason="shared/reference/tiny.dp not available"),
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable"),
]


@pytest.fixture(scope="module")
def dp() -> DeepPot:
    return DeepPot(TINY_DP, device="cpu")


def fresh(dp: DeepPot) -> DeepPot:
    """A DeepPot on the same module: its own once-per-model warnings."""
    return DeepPot(dp.module, device="cpu")


def test_min_nbor_dist_survives_every_model_file(tmp_path: Path) -> None:
    model, data = load_dp_model(TINY_DP)
    assert model.min_nbor_dist == pytest.approx(TINY_MIN_DIST, rel=1e-12)
    model.min_nbor_dist = 0.75
    save_dp_model(tmp_path / "m.dp", model)
    save_dp_model(tmp_path / "m.yaml", model)
    save_checkpoint(tmp_path / "m.pt", model)
    freeze(model, tmp_path / "m.pth")
    for name in ("m.dp", "m.yaml", "m.pt", "m.pth"):
        assert DeepPot(tmp_path / name, device="cpu").get_min_nbor_dist() == 0.75, name
    assert load_checkpoint(tmp_path / "m.pt")[0].min_nbor_dist == 0.75
    # files without it load, and stay without it
    model.min_nbor_dist = None
    save_dp_model(tmp_path / "none.dp", model)
    save_checkpoint(tmp_path / "none.pt", model)
    _, saved = load_dp_model(tmp_path / "none.dp")
    assert "min_nbor_dist" not in saved["@variables"]
    for name in ("none.dp", "none.pt"):
        assert DeepPot(tmp_path / name, device="cpu").get_min_nbor_dist() is None, name
    # a model section carrying it (instead of the file's @variables) is read too
    data["model"]["min_nbor_dist"] = 0.5
    del data["@variables"]["min_nbor_dist"]
    from dpa1.io.dp_file import save_dp

    save_dp(tmp_path / "in_model.dp", data)
    assert load_dp_model(tmp_path / "in_model.dp")[0].min_nbor_dist == 0.5


# === 4. no atoms ============================================================================
def test_no_atoms(dp: DeepPot) -> None:
    e, f, v, ae, av = dp.eval(np.zeros((2, 0)), None, [], atomic=True)
    assert e.shape == (2, 1) and f.shape == (2, 0, 3) and v.shape == (2, 9)
    assert ae.shape == (2, 0, 1) and av.shape == (2, 0, 9)
    assert not e.any() and not v.any()
    for atoms in (Atoms(), Atoms(cell=np.eye(3) * 5.0, pbc=True)):
        for calc in (DP(dp), DP([dp, fresh(dp)])):
            atoms.calc = calc
            assert atoms.get_potential_energy() == 0.0
            assert atoms.get_forces().shape == (0, 3)
            assert not calc.results["virial"].any()
            if atoms.pbc.all():
                assert not atoms.get_stress().any()
        assert calc.results["max_devi_f"] == 0.0 and calc.results["devi_f"].shape == (0,)


@pytest.mark.skipif(not WATER.exists(), reason="shared water data not available")
def test_training_warns_when_sel_is_below_the_data_and_stores_min_nbor_dist(tmp_path: Path) -> None:
    """sel 20 against water's 38 neighbours within 4 Å: a warning at statistics time; the
    checkpoint keeps the training data's closest pair distance."""
    inp = water_input(tmp_path, numb_steps=0)
    cfg = json.loads(inp.read_text())
    cfg["model"]["descriptor"]["sel"] = 20
    cfg["training"].pop("validation_data")
    inp.write_text(json.dumps(cfg))
    assert main(["train", str(inp), "-o", str(tmp_path / "run")]) == 0
    max_nnei, min_dist = neighbor_stat([WATER / "data_0"], 4.0)
    assert max_nnei == 38
    log = (tmp_path / "run" / "train.log").read_text()
    warning = next(line for line in log.splitlines() if "WARNING" in line)
    assert "sel 20" in warning and "38" in warning and "dpa1 neighbor-stat" in warning
    model, payload = load_checkpoint(tmp_path / "run" / "model.ckpt.pt")
    assert payload["min_nbor_dist"] == model.min_nbor_dist == pytest.approx(min_dist, rel=1e-12)
