"""DeePMD-kit's PyTorch checkpoints (``dp --pt train``) read as dpa1 models: predictions
equal DeePMD-kit's frozen models', multi-task branches, refusals, and every verb that reads
a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dpa1.cli.main import main
from dpa1.infer.deep_pot import DeepPot
from dpa1.io.model_file import load_checkpoint, load_energy_model, load_model

from data_paths import (
    DEEPMD_CKPT,
    DEEPMD_CKPT_REFERENCE,
    DEEPMD_MULTITASK,
    DEEPMD_MULTITASK_REFERENCE,
    WATER,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable"),
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning"),
    # the multi-task fixture's sel (30) is below the water data's 38 neighbours: DeePMD-kit
    # truncates alike, and the reference predictions include that
    pytest.mark.filterwarnings("ignore:.*more than the model's sel 30"),
]


def assert_matches(dp: DeepPot, reference: Path, tol: float = 1e-10) -> None:
    ref = np.load(reference)
    e, f, v, ae, _ = dp.eval(ref["coord"], ref["box"], ref["atype"], atomic=True)
    nf = ref["coord"].shape[0]
    np.testing.assert_allclose(e.reshape(-1), ref["energy"], rtol=0, atol=tol)
    np.testing.assert_allclose(f.reshape(nf, -1), ref["force"], rtol=0, atol=tol)
    np.testing.assert_allclose(v.reshape(nf, 9), ref["virial"], rtol=0, atol=tol)
    np.testing.assert_allclose(ae.reshape(nf, -1), ref["atom_energy"], rtol=0, atol=tol)


def test_single_task_checkpoint_equals_deepmd_frozen_model():
    dp = DeepPot(DEEPMD_CKPT, device="cpu")
    assert dp.get_type_map() == ["O", "H"] and dp.get_sel() == [40]
    assert dp.get_min_nbor_dist() == pytest.approx(0.8854385688525499, abs=1e-12)
    assert_matches(dp, DEEPMD_CKPT_REFERENCE)


@pytest.mark.parametrize(
    "given, branch", [("water_a", "water_a"), ("A", "water_a"), ("WATER_B", "water_b")]
)
def test_multitask_branch_equals_deepmd_frozen_branch(given, branch):
    """Branch names and aliases resolve as DeePMD-kit's --head does (case-insensitively)."""
    assert_matches(DeepPot(DEEPMD_MULTITASK, device="cpu", head=given),
                   DEEPMD_MULTITASK_REFERENCE[branch])


@pytest.mark.parametrize(
    "path, branch, message",
    [
        (DEEPMD_MULTITASK, None, "choose a branch with --model-branch (one of: water_a, "
                                 "water_b, water_se)"),
        (DEEPMD_MULTITASK, "water_se", "branch 'water_se' has a 'se_e2_a' descriptor"),
        (DEEPMD_MULTITASK, "nope", "no model branch or alias 'nope'"),
        (DEEPMD_CKPT, "water_a", "a single-task model has no branches"),
    ],
)
def test_branch_refusals(path, branch, message):
    with pytest.raises(ValueError, match="^" + str(path).replace(".", r"\.") + ": ") as err:
        load_model(path, model_branch=branch)
    assert message in str(err.value)


def test_model_branch_refused_for_single_model_files(tmp_path):
    with pytest.raises(ValueError, match="applies to multi-task DeePMD-kit checkpoints only"):
        DeepPot(Path(__file__).parent / "data" / "tiny.dp", model_branch="water_a")


def test_restart_from_deepmd_checkpoint_refused(tmp_path):
    from helpers import water_input

    rc = main(["train", str(water_input(tmp_path)), "--restart", str(DEEPMD_CKPT),
               "-o", str(tmp_path / "out")])
    assert rc == 2


def test_convert_and_freeze_a_branch(tmp_path):
    """convert (.dp) and freeze (.pth) of a branch keep DeePMD-kit's predictions."""
    dp_file, pth = tmp_path / "b.dp", tmp_path / "b.pth"
    assert main(["convert", str(DEEPMD_MULTITASK), str(dp_file), "--model-branch",
                 "water_b"]) == 0
    assert main(["freeze", "-c", str(DEEPMD_MULTITASK), "-o", str(pth), "--head",
                 "water_b"]) == 0
    for path in (dp_file, pth):
        dp = DeepPot(path, device="cpu")
        assert dp.get_min_nbor_dist() == pytest.approx(0.8854385688525499, abs=1e-12)
        assert_matches(dp, DEEPMD_MULTITASK_REFERENCE["water_b"])


def test_change_bias_writes_a_deepmd_checkpoint(tmp_path):
    """Only the branch's out_bias changes, by what change-bias gives the same model as .dp."""
    out, dp_file, dp_out = tmp_path / "mt.pt", tmp_path / "a.dp", tmp_path / "a_new.dp"
    system = str(WATER / "data_2")
    args = ["-s", system, "-n", "2", "--batch-size", "1"]
    assert main(["change-bias", str(DEEPMD_MULTITASK), "--model-branch", "A", "-o", str(out),
                 *args]) == 0
    assert main(["convert", str(DEEPMD_MULTITASK), str(dp_file), "--model-branch", "A"]) == 0
    assert main(["change-bias", str(dp_file), "-o", str(dp_out), *args]) == 0
    old = torch.load(DEEPMD_MULTITASK, weights_only=True)
    new = torch.load(out, weights_only=True)
    assert new.keys() == old.keys()
    key = "model.water_a.atomic_model.out_bias"
    changed = [k for k, v in new["model"].items()
               if k != "_extra_state" and not torch.equal(v, old["model"][k])]
    assert changed == [key]
    expected, _ = load_energy_model(dp_out)
    np.testing.assert_allclose(new["model"][key].numpy(), expected.out_bias.numpy(),
                               rtol=0, atol=1e-10)


def test_init_model_from_a_branch(tmp_path):
    """--init-model with --model-branch starts from that branch's weights (0 steps: the
    written checkpoint predicts what DeePMD-kit's frozen branch does)."""
    model = {
        "type_map": ["O", "H"],
        "descriptor": {"type": "se_atten_v2", "sel": 30, "rcut_smth": 0.5, "rcut": 4.0,
                       "neuron": [4, 8, 16], "tebd_dim": 4, "axis_neuron": 4, "attn": 8,
                       "attn_layer": 1, "precision": "float64"},
        "fitting_net": {"neuron": [8, 8], "precision": "float64"},
    }
    cfg = {"model": model,
           "learning_rate": {"start_lr": 1e-3, "stop_lr": 1e-4, "decay_steps": 10},
           "training": {"training_data": {"systems": [str(WATER / "data_1")], "batch_size": 1},
                        "numb_steps": 0, "seed": 1, "disp_freq": 1, "save_freq": 1}}
    path = tmp_path / "input.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert main(["train", str(path), "--init-model", str(DEEPMD_MULTITASK), "--model-branch",
                 "water_b", "-o", str(out)]) == 0
    assert_matches(DeepPot(out / "model.ckpt.pt", device="cpu"),
                   DEEPMD_MULTITASK_REFERENCE["water_b"])
    assert main(["train", str(path), "--model-branch", "water_b", "-o", str(out)]) == 2


def test_checkpoint_payload_of_a_deepmd_checkpoint():
    model, payload = load_checkpoint(DEEPMD_MULTITASK, "water_b")
    assert payload["format"] == "deepmd-kit" and payload["model_branch"] == "water_b"
    assert payload["config"]["model"]["fitting_net"]["neuron"] == [8, 8]
    assert payload["step"] == 5
