"""``dpa1 show``: every model format, DeePMD-kit's parameter counts (``dp show ... size``
printed 800 / 1,409 for deepmd_ckpt.pt and 1,004 / 1,409 for the first branch of
deepmd_multitask.pt)."""

from __future__ import annotations

import json

import pytest

from dpa1.cli.main import main
from dpa1.io.model_file import freeze, load_checkpoint, save_checkpoint
from dpa1.io.serialize import load_dp_model

from data_paths import DEEPMD_CKPT, DEEPMD_MULTITASK, TINY_DP, TINY_INPUT

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
ALL = ["type-map", "descriptor", "fitting-net", "size", "rcut", "sel", "min_nbor_dist"]
# tiny.dp: DeePMD-kit's own counts of the same network (descriptor incl. type embedding)
TINY_LINES = [
    "This is a singletask model",
    "The type_map is ['O', 'H']",
    "Parameter counts:",
    "Parameters in descriptor: 5,168",
    "Parameters in fitting-net: 6,593",
    "Parameters in total: 11,761",
    "The rcut is 4.0",
    "The sel is 40",
    "The min_nbor_dist is 0.8854385688525499",
]


def show(capsys, *args: str) -> list[str]:
    assert main(["show", *map(str, args)]) == 0
    return capsys.readouterr().out.splitlines()


def test_show_dp(capsys):
    lines = show(capsys, TINY_DP, *ALL)
    assert [x for x in lines if not x.startswith(("The descriptor", "The fitting"))] == TINY_LINES
    section = load_dp_model(TINY_DP)[1]["model_def_script"]
    assert f"The descriptor parameter is {section['descriptor']}" in lines
    assert f"The fitting_net parameter is {section['fitting_net']}" in lines


def test_show_our_checkpoint_and_frozen_model(capsys, tmp_path):
    model, _ = load_dp_model(TINY_DP)
    config = {"model": json.loads(TINY_INPUT.read_text())["model"]}
    save_checkpoint(tmp_path / "m.pt", model, config=config)
    assert load_checkpoint(tmp_path / "m.pt")[1]["format"] == "dpa1-checkpoint"
    freeze(model, tmp_path / "m.pth", config=config["model"])
    for path in (tmp_path / "m.pt", tmp_path / "m.pth"):
        lines = show(capsys, path, *ALL)
        assert [x for x in lines if not x.startswith(("The descriptor", "The fitting"))] \
            == TINY_LINES
        assert f"The descriptor parameter is {config['model']['descriptor']}" in lines


def test_show_deepmd_checkpoint(capsys):
    lines = show(capsys, DEEPMD_CKPT, "type-map", "size", "rcut", "sel", "min_nbor_dist")
    assert lines == [
        "This is a singletask model",
        "The type_map is ['O', 'H']",
        "Parameter counts:",
        "Parameters in descriptor: 800",
        "Parameters in fitting-net: 1,409",
        "Parameters in total: 2,209",
        "The rcut is 4.0",
        "The sel is 40",
        "The min_nbor_dist is 0.8854385688525499",
    ]
    assert main(["show", str(DEEPMD_CKPT), "model-branch"]) == 2
    assert "requires a multitask model" in capsys.readouterr().err


def test_show_multitask_checkpoint(capsys):
    lines = show(capsys, DEEPMD_MULTITASK, "model-branch", "type-map", "size", "sel")
    assert lines[:2] == ["This is a multitask model",
                         "Available model branches are ['water_a', 'water_b', 'water_se']"]
    assert lines[2].startswith("  water_a: alias ['A'], info {'description': 'first water")
    assert "not readable by dpa1" in lines[4] and "'se_e2_a'" in lines[4]
    assert "The type_map of branch water_se is ['O', 'H']" in lines
    i = lines.index("Parameter counts of branch water_a:")
    assert lines[i + 1:i + 4] == ["Parameters in descriptor: 1,004",
                                  "Parameters in fitting-net: 1,409",
                                  "Parameters in total: 2,413"]
    assert lines[-3:] == ["The sel of branch water_a is 30", "The sel of branch water_b is 30",
                          "The sel of branch water_se is [20, 40]"]
