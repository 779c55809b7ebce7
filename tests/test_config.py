"""Tests of the input validator `dpa1.io.config` (fast: no data, no torch)."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dpa1.io.config import ConfigError, load_config, model_defaults_doc, normalize_config
from dpa1.io.config_doc import reference_doc

from data_paths import ROOT, TINY_INPUT


@pytest.fixture
def tiny() -> dict[str, Any]:
    """The DeePMD-kit input of the reference model (a fresh copy per test)."""
    return json.loads(TINY_INPUT.read_text())


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        normalize_config(data)
    return str(info.value)


def _edit(data: dict[str, Any], change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    change(data)
    return data


# === valid inputs ===
def test_tiny_input_defaults(tiny: dict[str, Any]) -> None:
    cfg = load_config(TINY_INPUT)
    desc, fit = cfg["model"]["descriptor"], cfg["model"]["fitting_net"]
    assert desc["type"] == "dpa1" and desc["sel"] == 40 and desc["rcut"] == 4.0
    assert desc["tebd_input_mode"] == "concat"
    assert desc["smooth_type_embedding"] is False
    assert desc["set_davg_zero"] is True
    assert desc["ln_eps"] == 1e-5 and desc["concat_output_tebd"] is True
    assert fit["neuron"] == [32, 32, 32] and fit["activation_function"] == "tanh"
    assert cfg["loss"]["start_pref_e"] == 0.02 and cfg["loss"]["loss_func"] == "mse"
    assert cfg["learning_rate"]["stop_lr"] == 3.51e-8
    assert cfg["optimizer"] == {"type": "Adam", "adam_beta1": 0.9, "adam_beta2": 0.999,
                                "weight_decay": 0.0}
    train = cfg["training"]
    assert train["disp_freq"] == 10 and train["save_freq"] == 50 and train["numb_steps"] == 50
    assert train["max_ckpt_keep"] == 5 and train["save_ckpt"] == "model.ckpt"
    assert train["validation_data"]["numb_btch"] == 1
    assert train["training_data"]["auto_prob"] == "prob_sys_size"
    json.dumps(cfg)  # plain JSON


def test_normalisation_is_idempotent(tiny: dict[str, Any]) -> None:
    def v2(d: dict[str, Any]) -> None:
        d["model"]["descriptor"]["type"] = "se_atten_v2"

    def ratios(d: dict[str, Any]) -> None:
        d["learning_rate"] = {"start_lr": 1e-3, "stop_lr_ratio": 1e-3, "warmup_ratio": 0.1}

    def epochs(d: dict[str, Any]) -> None:
        del d["training"]["numb_steps"]
        d["training"]["numb_epoch"] = 2
        d["learning_rate"]["warmup_ratio"] = 0.1

    for change in (lambda d: None, v2, ratios, epochs):
        once = normalize_config(_edit(tiny, change))
        assert normalize_config(json.loads(json.dumps(once))) == once


def test_aliases_and_comments(tiny: dict[str, Any]) -> None:
    desc = tiny["model"]["descriptor"]
    desc["n_axis_neuron"] = desc.pop("axis_neuron")
    desc["smooth_type_embdding"] = True
    desc["_comment"] = "ignored"
    tiny["model"]["fitting_net"]["n_neuron"] = tiny["model"]["fitting_net"].pop("neuron")
    tiny["training"]["stop_batch"] = tiny["training"].pop("numb_steps")
    tiny["training"]["training_data"].update(auto_prob_style="prob_uniform", sys_weights=[1, 1, 1])
    tiny["training"]["validation_data"]["numb_batch"] = tiny["training"]["validation_data"].pop(
        "numb_btch")
    tiny["_comment_top"] = {"anything": 1}
    tiny["loss"]["_comment"] = "x"
    cfg = normalize_config(tiny)
    assert cfg["model"]["descriptor"]["axis_neuron"] == 4
    assert cfg["model"]["descriptor"]["smooth_type_embedding"] is True
    assert cfg["model"]["fitting_net"]["neuron"] == [32, 32, 32]
    assert cfg["training"]["numb_steps"] == 50
    assert cfg["training"]["training_data"]["auto_prob"] == "prob_uniform"
    assert cfg["training"]["training_data"]["sys_probs"] == [1, 1, 1]
    assert cfg["training"]["validation_data"]["numb_btch"] == 1
    text = json.dumps(cfg)
    assert "_comment" not in text and "n_axis_neuron" not in text and "stop_batch" not in text
    for alias in ("num_epoch", "num_epochs", "numb_epochs"):
        d = _edit(tiny, lambda d, alias=alias: d["training"].update({alias: 3}))
        del d["training"]["stop_batch"]
        assert normalize_config(d)["training"]["numb_epoch"] == 3


def test_derived_values(tiny: dict[str, Any]) -> None:
    desc = tiny["model"]["descriptor"]
    desc.update(type="se_atten", sel=[20, 26], ln_eps=None, precision="default",
                stripped_type_embedding=True, activation_function="SiLUT:3.0")
    tiny["learning_rate"] = {"start_lr": 1e-3, "stop_lr_ratio": 1e-2, "warmup_ratio": 0.1}
    tiny["training"]["numb_epoch"] = 4  # numb_steps wins
    cfg = normalize_config(tiny)
    d = cfg["model"]["descriptor"]
    assert (d["type"], d["sel"], d["ln_eps"], d["precision"]) == ("dpa1", 46, 1e-5, "float64")
    assert d["tebd_input_mode"] == "strip" and d["stripped_type_embedding"] is None
    assert d["activation_function"] == "silut:3.0"
    lr = cfg["learning_rate"]
    assert lr["stop_lr"] == pytest.approx(1e-5) and lr["stop_lr_ratio"] is None
    assert lr["warmup_steps"] == 5 and lr["warmup_ratio"] is None
    assert cfg["training"]["numb_epoch"] is None
    tiny["learning_rate"] = {"start_lr": 1e-3}
    tiny["model"]["descriptor"]["sel"] = "auto:1.2"
    cfg = normalize_config(tiny)
    assert cfg["learning_rate"]["stop_lr"] == 5e-8
    assert cfg["model"]["descriptor"]["sel"] == "auto:1.2"


def test_se_atten_v2(tiny: dict[str, Any]) -> None:
    tiny["model"]["descriptor"]["type"] = "se_atten_v2"
    d = normalize_config(tiny)["model"]["descriptor"]
    assert d["type"] == "se_atten_v2" and d["set_davg_zero"] is False
    assert d["tebd_input_mode"] == "strip" and d["smooth_type_embedding"] is True
    for key, value in (("tebd_input_mode", "concat"), ("smooth_type_embedding", False),
                       ("stripped_type_embedding", True)):
        msg = _error(_edit(tiny, lambda c, key=key, value=value:
                           c["model"]["descriptor"].update({key: value})))
        assert f"model.descriptor.{key}:" in msg and "se_atten_v2" in msg


# === errors ===
def test_unknown_key_suggests(tiny: dict[str, Any]) -> None:
    tiny["model"]["descriptor"]["nueron"] = tiny["model"]["descriptor"].pop("neuron")
    tiny["training"]["numb_stps"] = 3
    msg = _error(tiny)
    assert "model.descriptor.nueron: unknown key; did you mean 'neuron'?" in msg.splitlines()
    assert "training.numb_stps: unknown key; did you mean" in msg
    assert "unknown key" in _error(_edit(tiny, lambda d: d.update(xyzzy_qq=1)))


def test_type_and_range_errors(tiny: dict[str, Any]) -> None:
    msg = _error(_edit(tiny, lambda d: d["model"]["descriptor"].update(rcut="six")))
    assert msg.startswith("model.descriptor.rcut:") and "'six'" in msg
    msg = _error(_edit(tiny, lambda d: d["model"]["descriptor"].update(rcut_smth=4.0)))
    assert msg.startswith("model.descriptor.rcut_smth:") and "rcut" in msg
    msg = _error(_edit(tiny, lambda d: d["model"]["descriptor"].update(axis_neuron=33)))
    assert msg.startswith("model.descriptor.axis_neuron:") and "neuron[-1]" in msg
    bad = {
        "neuron": [8, 0],
        "attn": 0,
        "attn_layer": -1,
        "tebd_dim": 0,
        "sel": 0,
        "activation_function": "swish",
        "precision": "float16",
        "temperature": "hot",
    }
    lines = _error(_edit(tiny, lambda d: d["model"]["descriptor"].update(bad)))
    for key in (
        "neuron[1]",
        "attn",
        "attn_layer",
        "tebd_dim",
        "sel",
        "activation_function",
        "precision",
        "temperature",
    ):
        assert f"\nmodel.descriptor.{key}:" in "\n" + lines
    bad_training = {"numb_steps": -1, "disp_freq": 0, "save_freq": -1, "max_ckpt_keep": 0}
    lines = _error(_edit(tiny, lambda d: d["training"].update(bad_training)))
    assert len(lines.splitlines()) == 4


@pytest.mark.parametrize(
    "batch_size, ok",
    [
        (4, True),
        ([1, 2, 3], True),
        ("auto", True),
        ("auto:64", True),
        ("max:100", True),
        ("filter:50", True),
        ("mixed:4", False),
        ("auto:", False),
        (0, False),
        ([1, 2], False),
        (True, False),
    ],
)
def test_batch_size(tiny: dict[str, Any], batch_size: Any, ok: bool) -> None:
    tiny["training"]["training_data"]["batch_size"] = batch_size
    if ok:
        assert normalize_config(tiny)["training"]["training_data"]["batch_size"] == batch_size
    else:
        assert "training.training_data.batch_size:" in _error(tiny)


def test_learning_rate_errors(tiny: dict[str, Any]) -> None:
    lr = tiny["learning_rate"]
    assert "not both" in _error(
        _edit(tiny, lambda d: d["learning_rate"].update(stop_lr_ratio=0.01))
    )
    assert "not both" in _error(
        _edit(tiny, lambda d: d["learning_rate"].update(warmup_steps=5, warmup_ratio=0.1))
    )
    for kind in ("cosine", "wsd"):
        msg = _error(_edit(tiny, lambda d, kind=kind: d["learning_rate"].update(type=kind)))
        assert msg.startswith("learning_rate.type:") and "not supported" in msg
    assert "learning_rate.decay_rate:" in _error(
        _edit(tiny, lambda d: d["learning_rate"].update(decay_rate=1.5))
    )
    del lr["start_lr"]
    assert "learning_rate.start_lr: required key is missing" in _error(tiny)


def test_missing_length_of_training(tiny: dict[str, Any]) -> None:
    del tiny["training"]["numb_steps"]
    assert "numb_steps or numb_epoch" in _error(tiny)


def test_unsupported_features(tiny: dict[str, Any]) -> None:
    cases = {
        ("model", "type_embedding"): ({"neuron": [8]}, "TensorFlow only"),
        ("model", "spin"): ({}, "not supported"),
        ("model", "use_srtab"): ("table.txt", "not supported"),
        ("training", "mixed_precision"): ({}, "TensorFlow only"),
        ("training", "zero_stage"): (1, "not supported"),
        ("loss", "type"): ("ener_hess", "not supported"),
        ("optimizer", "type"): ("LKF", "not supported"),
    }
    tiny["optimizer"] = {}
    for (section, key), (value, words) in cases.items():
        msg = _error(
            _edit(
                tiny,
                lambda d, section=section, key=key, value=value: d[section].update({key: value}),
            )
        )
        assert msg.startswith(f"{section}.{key}:") and words in msg
    assert (
        normalize_config(_edit(tiny, lambda d: d["model"]["descriptor"].update(attn_mask=True)))[
            "model"
        ]["descriptor"]["attn_mask"]
        is True
    )
    msg = _error(_edit(tiny, lambda d: d["model"]["descriptor"].update(type="se_e2_a")))
    assert msg.startswith("model.descriptor.type:") and "se_atten_v2" in msg


def test_type_indices_checked(tiny: dict[str, Any]) -> None:
    tiny["model"].update(pair_exclude_types=[[0, 2]], preset_out_bias={"energy": [None]})
    lines = _error(tiny).splitlines()
    assert lines == [
        "model.pair_exclude_types: type index 2 is out of range for 2 types",
        "model.preset_out_bias.energy: needs 2 entries (one per type)",
    ]


def test_several_errors_one_per_line(tiny: dict[str, Any]) -> None:
    tiny["model"]["descriptor"].update(rcut="six", neuron="wide")
    tiny["loss"]["start_pref_f"] = -1
    lines = _error(tiny).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == [
        "loss.start_pref_f",
        "model.descriptor.neuron",
        "model.descriptor.rcut",
    ]


def test_load_config_formats(tmp_path: Path, tiny: dict[str, Any]) -> None:
    yaml = pytest.importorskip("yaml")
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(tiny))
    assert load_config(tmp_path / "in.yaml") == load_config(TINY_INPUT)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "bad.json")


def test_reference_doc_lists_every_key() -> None:
    doc = model_defaults_doc()
    for key in (
        "`axis_neuron`",
        "`n_axis_neuron`",
        "`numb_btch`",
        "`stop_batch`",
        "`smooth_type_embdding`",
        "`stop_lr_ratio`",
        "`start_pref_h`",
    ):
        assert key in doc

    committed = ROOT / "docs" / "input_reference.md"
    assert committed.read_text() == reference_doc(), (
        "regenerate: python -m dpa1.io.config_doc > docs/input_reference.md"
    )


def test_keys_of_unsupported_features_are_refused(tiny: dict[str, Any]) -> None:
    """DeePMD keys of features dpa1 lacks: the DeePMD default passes, anything else is a
    one-line error (never accepted and ignored)."""
    cases = {
        ("model", "descriptor", "lmax"): (1, 2),
        ("training", "enable_ema"): (False, True),
        ("training", "ema_decay"): (0.999, 0.99),
        ("training", "ema_ckpt_keep"): (None, 3),
        ("training", "profiling"): (False, True),
        ("training", "enable_profiler"): (False, True),
        ("training", "ckpt_keep_ratio"): (None, 0.5),
        ("training", "training_data", "min_pair_dist"): (0.0, 0.5),
        ("training", "validation_data", "min_pair_dist"): (0, 0.5),
        ("learning_rate", "scale_by_worker"): ("linear", "sqrt"),
        ("model", "fitting_net", "dim_case_embd"): (0, 2),
        ("loss", "start_pref_gf"): (0.0, 1.0),
        ("loss", "numb_generalized_coord"): (0, 3),
        ("loss", "limit_pref_h"): (0.0, 1.0),
    }
    for (*section, key), (default, other) in cases.items():

        def put(value: Any, section=section, key=key) -> dict[str, Any]:
            data = copy.deepcopy(tiny)
            target = data
            for name in section:
                target = target[name]
            target[key] = value
            return data

        normalize_config(put(default))
        lines = _error(put(other)).splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"{'.'.join(section)}.{key}: not supported by dpa1"), lines
        assert "remove the key or set it to" in lines[0]
    msg = _error(
        _edit(tiny, lambda d: d["model"]["fitting_net"].update(trainable=[True, False, True, True]))
    )
    assert msg.startswith("model.fitting_net.trainable: per-layer flags are not supported")
    assert (
        normalize_config(
            _edit(tiny, lambda d: d["model"]["fitting_net"].update(trainable=[False] * 4))
        )["model"]["fitting_net"]["trainable"]
        == [False] * 4
    )


def test_stat_file_and_tensorboard_keys(tiny: dict[str, Any], monkeypatch) -> None:
    # the reference input (DeePMD-kit's se_atten example) names a statistics cache
    training = load_config(TINY_INPUT)["training"]
    assert (training["stat_file"], training["stat_file_mode"]) == ("./dpa1.hdf5", "update")
    assert (
        training["tensorboard"],
        training["tensorboard_log_dir"],
        training["tensorboard_freq"],
    ) == (False, "log", 1)
    no_file = _edit(tiny, lambda d: d["training"].update(stat_file=None, stat_file_mode="read"))
    assert _error(no_file) == "training.stat_file_mode: 'read' needs a stat_file"
    assert _error(_edit(tiny, lambda d: d["training"].update(tensorboard_freq=0))).startswith(
        "training.tensorboard_freq: "
    )
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # not installed
    assert _error(_edit(tiny, lambda d: d["training"].update(tensorboard=True))) == (
        "training.tensorboard: TensorBoard logging needs the tensorboard package, which is not "
        "installed: pip install tensorboard (or set it to false)"
    )
