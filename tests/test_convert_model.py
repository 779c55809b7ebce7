"""``dpa1 convert``: .pt ⇄ .dp ⇄ .yaml and → .pth keep every number; DeePMD-kit reads
our .dp (when it is installed)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dpa1.cli.main import main
from dpa1.infer.deep_pot import DeepPot
from dpa1.io.config import normalize_config
from dpa1.io.model_file import load_checkpoint, save_checkpoint
from dpa1.io.serialize import load_dp_model
from dpa1.model.build import build_model

from data_paths import TINY_DP, TINY_INPUT
from helpers import assert_same_arrays

pytestmark = [
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable"),
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def config() -> dict:
    return normalize_config(json.loads(TINY_INPUT.read_text()))


@pytest.fixture(scope="module")
def model(config: dict):
    """A randomly initialised O/H model with non-trivial statistics and biases, so a
    converter that dropped ``out_bias``, ``bias_atom_e`` or ``dstd`` would be caught."""
    m = build_model(copy.deepcopy(config["model"]))
    rng = np.random.default_rng(3)
    desc = m.descriptor
    nt, nnei = desc.ntypes, desc.nnei
    dstd = np.empty((nt, nnei, 4))
    dstd[:, :, 0] = rng.uniform(0.1, 0.3, size=(nt, 1))
    dstd[:, :, 1:] = rng.uniform(0.1, 0.3, size=(nt, 1, 1))
    desc.set_stat(torch.zeros(nt, nnei, 4, dtype=torch.float64), torch.tensor(dstd))
    with torch.no_grad():
        m.out_bias.copy_(torch.tensor([[[-93.5], [-187.2]]], dtype=m.out_bias.dtype))
        m.fitting.bias_atom_e.copy_(torch.tensor(rng.normal(0, 0.5, size=(nt, 1))))
    return m.eval()


@pytest.fixture(scope="module")
def system() -> dict[str, np.ndarray]:
    """Two frames of 12 random O/H atoms in a triclinic cell, one of them without a cell."""
    rng = np.random.default_rng(0)
    box = np.array([[6.0, 0.0, 0.0], [0.7, 6.2, 0.0], [-0.4, 0.5, 6.5]])
    # a jittered grid keeps atoms ≥ ~1.2 Å apart
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:12] / 3
    coord = (grid + rng.uniform(-0.04, 0.04, size=grid.shape)) @ box
    atype = np.array([0, 1, 1] * 4)
    return {"coord": coord[None], "box": box.reshape(1, 9), "atype": atype}


def predict(path_or_model, system: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    dp = DeepPot(path_or_model, device="cpu")
    out = {}
    for tag, box in (("pbc", system["box"]), ("nopbc", None)):
        e, f, v, ae, av = dp.eval(system["coord"], box, system["atype"], atomic=True)
        out.update({f"{tag}/e": e, f"{tag}/f": f, f"{tag}/v": v, f"{tag}/ae": ae, f"{tag}/av": av})
    return out


def convert(src: Path, dst: Path) -> None:
    assert main(["convert", str(src), str(dst)]) == 0
    assert dst.is_file()


@pytest.fixture
def checkpoint(tmp_path: Path, model, config: dict) -> Path:
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, config=config, step=123)
    return path


def test_checkpoint_to_dp_is_exact(tmp_path: Path, checkpoint: Path, model, config, system) -> None:
    dp_path = tmp_path / "model.dp"
    convert(checkpoint, dp_path)
    loaded, data = load_dp_model(dp_path)
    ours = model.state_dict()
    theirs = loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert float(loaded.out_bias.abs().max()) > 100  # the bias survived
    assert data["model_def_script"]["descriptor"]["sel"] == model.nnei
    assert data["model_def_script"]["type_map"] == ["O", "H"]
    assert_same_arrays(predict(model, system), predict(dp_path, system))


def test_dp_to_pth_and_pt(tmp_path: Path, checkpoint: Path, model, system) -> None:
    dp_path = tmp_path / "model.dp"
    convert(checkpoint, dp_path)
    reference = predict(dp_path, system)
    convert(dp_path, tmp_path / "frozen.pth")
    assert_same_arrays(reference, predict(tmp_path / "frozen.pth", system), atol=1e-12)
    convert(dp_path, tmp_path / "again.pt")
    assert_same_arrays(reference, predict(tmp_path / "again.pt", system))
    _, payload = load_checkpoint(tmp_path / "again.pt")
    assert payload["config"]["model"]["type_map"] == ["O", "H"]  # enough for `dpa1 freeze`


def test_yaml_round_trip(tmp_path: Path, checkpoint: Path, system) -> None:
    reference = predict(checkpoint, system)
    convert(checkpoint, tmp_path / "model.yaml")  # the YAML file itself is slow to parse:
    convert(tmp_path / "model.yaml", tmp_path / "model.dp")  # read it once
    assert_same_arrays(reference, predict(tmp_path / "model.dp", system))
    assert (tmp_path / "model.yaml").read_text().startswith("'@variables'")  # plain YAML


def test_reference_dp_keeps_min_nbor_dist(tmp_path: Path) -> None:
    convert(TINY_DP, tmp_path / "tiny.pt")
    convert(tmp_path / "tiny.pt", tmp_path / "tiny.dp")
    _, original = load_dp_model(TINY_DP)
    _, copied = load_dp_model(tmp_path / "tiny.dp")
    assert (float(copied["@variables"]["min_nbor_dist"])
            == float(original["@variables"]["min_nbor_dist"]))
    assert copied["model_def_script"] == original["model_def_script"]


def test_errors(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    convert(checkpoint, tmp_path / "frozen.pth")
    assert main(["convert", str(tmp_path / "frozen.pth"), str(tmp_path / "x.dp")]) == 2
    assert "TorchScript" in capsys.readouterr().err
    assert main(["convert", str(checkpoint), str(tmp_path / "x.pb")]) == 2
    assert "dp convert-backend" in capsys.readouterr().err
    assert main(["convert", str(checkpoint), str(tmp_path / "x.txt")]) == 2
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "x.dp")]) == 2
    assert not (tmp_path / "x.dp").exists()


def test_deepmd_kit_reads_our_dp(tmp_path: Path, checkpoint: Path, system) -> None:
    """The LAMMPS route: our .dp → ``dp convert-backend`` → DeePMD-kit's own PyTorch model,
    whose predictions must be ours (DeePMD-kit's numpy backend, used for .dp files
    directly, gives the energy only: its forces are NaN)."""
    pytest.importorskip("deepmd")
    try:
        from deepmd.entrypoints.convert_backend import convert_backend
        from deepmd.infer import DeepPot as TheirDeepPot
    except ImportError as err:  # deepmd without its PyTorch backend's dependencies
        pytest.skip(f"deepmd-kit is incomplete: {err}")

    dp_path, pth_path = tmp_path / "model.dp", tmp_path / "deepmd.pth"
    convert(checkpoint, dp_path)
    ours = predict(dp_path, system)
    assert TheirDeepPot(str(dp_path)).eval(
        system["coord"].reshape(1, -1), system["box"], system["atype"])[0].item() == \
        pytest.approx(ours["pbc/e"].item(), abs=1e-8)
    convert_backend(INPUT=str(dp_path), OUTPUT=str(pth_path))
    theirs = TheirDeepPot(str(pth_path))
    assert theirs.get_type_map() == ["O", "H"]
    for tag, box in (("pbc", system["box"]), ("nopbc", None)):
        e, f, v, ae, av = theirs.eval(system["coord"].reshape(1, -1), box, system["atype"],
                                      atomic=True)
        for key, val in (("e", e), ("f", f), ("v", v), ("ae", ae), ("av", av)):
            np.testing.assert_allclose(val.reshape(-1), ours[f"{tag}/{key}"].reshape(-1),
                                       rtol=0, atol=1e-10, err_msg=f"{tag}/{key}")
