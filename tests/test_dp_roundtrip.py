"""``.dp`` / ``.yaml`` model files (docs/design.md, "Model file (.dp)"): save → load → save → load
is lossless, the
writer reproduces DeePMD-kit's own dictionary for ``tiny.dp``, and broken files give a
clear ``ValueError`` naming the path."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from dpa1.io.dp_file import load_dp
from dpa1.io.serialize import load_dp_model, save_dp_model

from data_paths import TINY_DP
from helpers import (
    assert_same_arrays,
    evaluate,
    make_model,
    make_system,
    params_for,
    single_thread,  # noqa: F401  (autouse fixture)
    small_model_config,
)

CONFIGS = {
    # The case that matters: se_atten_v2 with davg ≠ 0, random dstd, out_bias and bias_atom_e.
    "se_atten_v2": ({"type": "se_atten_v2", "resnet_dt": True, "neuron": [4, 8, 16]}, {}, {}),
    "dpa1_everything": (
        {"smooth_type_embedding": True, "type_one_side": True, "set_davg_zero": False,
         "exclude_types": [[0, 1]], "env_protection": 0.2, "temperature": 0.8,
         "concat_output_tebd": False, "use_tebd_bias": True, "tebd_dim": 3, "ln_eps": 1e-3,
         "activation_function": "gelu"},
        {"numb_fparam": 2, "numb_aparam": 1, "atom_ener": [0.5, None, None],
         "activation_function": "silu", "resnet_dt": False},
        {"pair_exclude_types": [[1, 2]], "atom_exclude_types": [2]}),
    "strip_nonsmooth_attn0": ({"tebd_input_mode": "strip", "attn_layer": 0}, {}, {}),
    "float32": ({"type": "se_atten_v2", "precision": "float32"}, {"precision": "float32"}, {}),
}


def _predict(model, seed: int = 0) -> dict[str, np.ndarray]:
    model.eval()  # loaded models come back in training mode (create_graph=True)
    out = {}
    for kind in ("pbc", "nopbc"):
        coord, atype, box = make_system(kind, seed, n_virtual=1)
        atype = np.where(atype >= 0, atype % model.ntypes, -1)
        fp, ap = params_for(model, 1, coord.shape[0])
        res = evaluate(model, coord, atype, box, None if fp is None else fp[0],
                       None if ap is None else ap[0])
        out.update({f"{kind}/{k}": v for k, v in res.items()})
    return out


def _flatten(obj, prefix: str = "") -> dict:
    """``{"/a/b[0]/c": leaf}`` of a nested dict/list."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


def _assert_same_dict(a: dict, b: dict, what: str) -> None:
    fa, fb = _flatten(a), _flatten(b)
    assert fa.keys() == fb.keys(), f"{what}: keys {sorted(fa.keys() ^ fb.keys())}"
    for key, x in fa.items():
        y = fb[key]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            x, y = np.asarray(x), np.asarray(y)
            assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: {key}"
            assert np.array_equal(x, y), f"{what}: {key} values differ"
        else:
            assert x == y, f"{what}: {key}: {x!r} != {y!r}"


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    desc, fit, mdl = CONFIGS[request.param]
    return make_model(small_model_config(desc, fit, **mdl), stat_seed=3)


def test_dp_round_trip_is_lossless(model, tmp_path: Path) -> None:
    ref = _predict(model)
    first, second = tmp_path / "a.dp", tmp_path / "b.dp"
    save_dp_model(first, model)
    loaded, data1 = load_dp_model(first)
    save_dp_model(second, loaded)
    again, data2 = load_dp_model(second)
    assert_same_arrays(_predict(loaded), ref, what="after one round trip")
    assert_same_arrays(_predict(again), ref, what="after two round trips")
    _assert_same_dict(data1["model"], data2["model"], "model dictionaries")
    # Nothing was lost on the way: statistics and biases survived (and are not trivial).
    if not model.descriptor.set_davg_zero:
        assert np.abs(loaded.descriptor.davg.numpy()).max() > 0
    for name, t in (("davg", "descriptor.davg"), ("dstd", "descriptor.dstd"),
                    ("out_bias", "out_bias"), ("bias", "fitting.bias_atom_e")):
        a = model.get_buffer(t).numpy()
        b = loaded.get_buffer(t).numpy()
        assert np.array_equal(a, b) and a.dtype == b.dtype, name
    assert np.abs(loaded.out_bias.numpy()).max() > 0
    assert np.abs(loaded.fitting.bias_atom_e.numpy()).max() > 0
    state = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert value.dtype == state[key].dtype and bool((value == state[key]).all()), key
    # The file layout of docs/design.md, "Model file (.dp)": root datasets named in order, JSON
    # paths in their place.
    with h5py.File(first, "r") as f:
        meta = json.loads(f.attrs["json"])
        names = sorted(f.keys())
    assert names == [f"variable_{k:04d}" for k in range(len(names))]
    assert meta["model"]["@variables"]["out_bias"].startswith("/variable_")


def test_yaml_round_trip(model, tmp_path: Path) -> None:
    ref = _predict(model)
    save_dp_model(tmp_path / "m.yaml", model)
    loaded, data = load_dp_model(tmp_path / "m.yaml")
    assert_same_arrays(_predict(loaded), ref, what=".yaml")
    text = (tmp_path / "m.yaml").read_text()
    # arrays are inline (docs/design.md, "Model file (.dp)")
    assert "np.ndarray" in text and "variable_" not in text
    # .yaml → .dp → .yaml: the same dictionary.
    save_dp_model(tmp_path / "m.dp", loaded)
    from_dp, data_dp = load_dp_model(tmp_path / "m.dp")
    save_dp_model(tmp_path / "n.yaml", from_dp)
    _, data_y = load_dp_model(tmp_path / "n.yaml")
    _assert_same_dict(data["model"], data_dp["model"], ".yaml vs .dp")
    _assert_same_dict(data["model"], data_y["model"], ".yaml vs .yaml")


def test_tiny_dp_round_trip(tmp_path: Path) -> None:
    model, data = load_dp_model(TINY_DP)
    ref = _predict(model, seed=4)
    out = tmp_path / "tiny_again.dp"
    save_dp_model(out, model, model_def_script=data["model_def_script"],
                  min_nbor_dist=float(data["@variables"]["min_nbor_dist"]))
    again, data2 = load_dp_model(out)
    assert_same_arrays(_predict(again, seed=4), ref, what="tiny.dp re-saved")
    # Our writer reproduces DeePMD-kit's dictionary exactly: every key, value and array,
    # and even the dataset numbering of the JSON (so DeePMD-kit can read our files).
    _assert_same_dict(data["model"], data2["model"], "tiny.dp model section")
    with h5py.File(TINY_DP, "r") as f:
        theirs = json.loads(f.attrs["json"])
    with h5py.File(out, "r") as f:
        ours = json.loads(f.attrs["json"])
    assert ours["model"] == theirs["model"]
    assert ours["model_def_script"] == theirs["model_def_script"]
    assert ours["@variables"] == theirs["@variables"]
    # and through .yaml as well
    save_dp_model(tmp_path / "tiny.yaml", again)
    via_yaml, _ = load_dp_model(tmp_path / "tiny.yaml")
    assert_same_arrays(_predict(via_yaml, seed=4), ref, what="tiny.dp via .yaml")


# === broken files ===========================================================================
def _write_h5(path: Path, json_text=None) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("variable_0000", data=np.zeros(3))
        if json_text is not None:
            f.attrs["json"] = json_text
    return path


def _broken_files(tmp: Path) -> dict[str, Path]:
    files = {}
    (tmp / "garbage.dp").write_bytes(b"\x89 this is not an HDF5 file \x00" * 20)
    files["garbage"] = tmp / "garbage.dp"
    (tmp / "empty.dp").write_bytes(b"")
    files["empty"] = tmp / "empty.dp"
    files["no json"] = _write_h5(tmp / "nojson.dp")
    files["bad json"] = _write_h5(tmp / "badjson.dp", "{not json")
    files["json list"] = _write_h5(tmp / "list.dp", "[1, 2]")
    files["no model"] = _write_h5(tmp / "nomodel.dp", json.dumps({"software": "x"}))
    files["missing dataset"] = _write_h5(
        tmp / "missing.dp", json.dumps({"model": {"@variables": {"out_bias": "/variable_0007"}}}))
    files["incomplete model"] = _write_h5(
        tmp / "incomplete.dp", json.dumps({"model": {"type": "standard"}}))
    (tmp / "bad.yaml").write_text("model: [unclosed\n")
    files["bad yaml"] = tmp / "bad.yaml"
    (tmp / "scalar.yaml").write_text("just a string about a model\n")
    files["yaml scalar"] = tmp / "scalar.yaml"
    raw = TINY_DP.read_bytes()
    (tmp / "truncated.dp").write_bytes(raw[: len(raw) // 2])
    files["truncated"] = tmp / "truncated.dp"
    # A valid file whose array has the wrong shape.
    data = load_dp(TINY_DP)
    model = data["model"]
    w = model["fitting"]["nets"]["networks"][0]["layers"][0]["@variables"]["w"]
    model["fitting"]["nets"]["networks"][0]["layers"][0]["@variables"]["w"] = w[:-1]
    from dpa1.io.dp_file import save_dp

    save_dp(tmp / "wrong_shape.dp", data)
    files["wrong shape"] = tmp / "wrong_shape.dp"
    return files


def test_broken_files_raise_value_error_naming_the_path(tmp_path: Path) -> None:
    for what, path in _broken_files(tmp_path).items():
        with pytest.raises(ValueError) as info:
            load_dp_model(path)
        assert str(path) in str(info.value), f"{what}: message does not name the file: {info.value}"
    with pytest.raises(FileNotFoundError, match="nowhere.dp"):
        load_dp_model(tmp_path / "nowhere.dp")
