"""Model ⇄ DeePMD-kit's serialized dictionary (docs/design.md, "Model file (.dp)").

The same dictionary is the payload of ``.dp``/``.yaml`` files (see :mod:`dp_file`).
Loading rebuilds our modules from the stored hyper-parameters and copies every array;
unknown keys are ignored for forward compatibility.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import numpy as np
import torch

import dpa1
from dpa1.io.dp_file import load_dp, save_dp
from dpa1.model.attention import GatedAttentionLayer
from dpa1.model.descriptor import DescrptDPA1
from dpa1.model.fitting import EnergyFitting
from dpa1.model.model import EnergyModel
from dpa1.model.network import EmbeddingNet, Layer, LayerNorm, dtype_name

DESCRIPTOR_TYPES = ("dpa1", "se_atten", "se_atten_v2")


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy().copy()


def _set(param: torch.Tensor, value: Any, what: str) -> None:
    arr = torch.as_tensor(np.asarray(value), dtype=param.dtype).reshape(-1)
    if arr.numel() != param.numel():
        raise ValueError(f"{what}: expected {tuple(param.shape)} values, file has {arr.numel()}")
    with torch.no_grad():
        param.copy_(arr.reshape(param.shape))


# === layers and networks ====================================================================
def layer_to_dict(layer: Layer) -> dict:
    # DeePMD-kit records use_timestep only where an idt exists (skip connections, docs/design.md,
    # "Dense layers").
    return {
        "@class": "Layer", "@version": 2, "bias": layer.b is not None,
        "use_timestep": layer.idt is not None, "activation_function": layer.activation_function,
        "resnet": layer.resnet, "precision": dtype_name(layer.w.dtype),
        "trainable": layer.w.requires_grad,
        "@variables": {"w": _np(layer.w), "b": _np(layer.b), "idt": _np(layer.idt)},
    }


def layer_from_dict(layer: Layer, data: dict, what: str) -> None:
    v = data["@variables"]
    w = np.asarray(v["w"])
    if w.shape != tuple(layer.w.shape):
        raise ValueError(f"{what}.w: expected shape {tuple(layer.w.shape)}, file has {w.shape}")
    _set(layer.w, w, f"{what}.w")
    for key in ("b", "idt"):
        ours, theirs = getattr(layer, key), v.get(key)
        if (ours is None) != (theirs is None):
            raise ValueError(f"{what}.{key}: presence differs between file and model structure")
        if ours is not None:
            _set(ours, theirs, f"{what}.{key}")


def net_to_dict(net: EmbeddingNet, fitting: bool = False) -> dict:
    d = {
        "@class": "FittingNetwork" if fitting else "EmbeddingNetwork",
        "@version": 1 if fitting else 2,
        "in_dim": net.in_dim, "neuron": list(net.neuron),
        "activation_function": net.activation_function, "resnet_dt": net.resnet_dt,
        "precision": dtype_name(net.layers[0].w.dtype),
        "layers": [layer_to_dict(layer) for layer in net.layers],
    }
    if fitting:
        d.update(out_dim=1, bias_out=True)
    else:
        d["bias"] = net.bias
    return d


def net_from_dict(net: EmbeddingNet, data: dict, what: str) -> None:
    layers = data["layers"]
    if len(layers) != len(net.layers):
        raise ValueError(f"{what}: expected {len(net.layers)} layers, file has {len(layers)}")
    for k, (layer, ld) in enumerate(zip(net.layers, layers, strict=True)):
        layer_from_dict(layer, ld, f"{what}.layers[{k}]")


def _collection(net_dict: dict, ntypes: int, kind: str) -> dict:
    return {"@class": "NetworkCollection", "@version": 1, "ndim": 0, "ntypes": ntypes,
            "network_type": kind, "networks": [net_dict]}


def _layer_norm_to_dict(ln: LayerNorm) -> dict:
    return {"@class": "LayerNorm", "@version": 1, "eps": ln.eps, "trainable": ln.trainable,
            "precision": dtype_name(ln.w.dtype), "@variables": {"w": _np(ln.w), "b": _np(ln.b)}}


# === descriptor =============================================================================
def _attention_to_dict(desc: DescrptDPA1) -> dict:
    common = dict(
        nnei=desc.nnei,
        embed_dim=desc.neuron[-1],
        hidden_dim=desc.attn,
        dotr=desc.attn_dotr,
        do_mask=desc.attn_mask,
        scaling_factor=desc.scaling_factor,
        normalize=desc.normalize,
        temperature=desc.temperature,
    )
    prec = desc.precision
    layers = []
    for layer in desc.attention.layers:
        assert isinstance(layer, GatedAttentionLayer)
        layers.append(
            {
                **common,
                "trainable_ln": desc.trainable_ln,
                "ln_eps": desc.ln_eps,
                "precision": prec,
                "attention_layer": {
                    **common,
                    "num_heads": 1,
                    "bias": True,
                    "smooth": desc.smooth,
                    "precision": prec,
                    "in_proj": layer_to_dict(layer.in_proj),
                    "out_proj": layer_to_dict(layer.out_proj),
                },
                "attn_layer_norm": _layer_norm_to_dict(layer.layer_norm),
            }
        )
    return {
        "@class": "NeighborGatedAttention",
        "@version": 1,
        "layer_num": desc.attn_layer,
        **common,
        "trainable_ln": desc.trainable_ln,
        "ln_eps": desc.ln_eps,
        "precision": prec,
        "attention_layers": layers,
    }


def descriptor_to_dict(desc: DescrptDPA1) -> dict:
    v2 = desc.descriptor_type == "se_atten_v2"
    d: dict[str, Any] = {
        "@class": "Descriptor",
        "type": "se_atten_v2" if v2 else "dpa1",
        "@version": 2,
        "rcut": desc.rcut,
        "rcut_smth": desc.rcut_smth,
        "sel": [desc.nnei],
        "ntypes": desc.ntypes,
        "neuron": list(desc.neuron),
        "axis_neuron": desc.axis_neuron,
        "tebd_dim": desc.tebd_dim,
    }
    if not v2:
        d["tebd_input_mode"] = desc.tebd_input_mode
    d.update(
        set_davg_zero=desc.set_davg_zero,
        attn=desc.attn,
        attn_layer=desc.attn_layer,
        attn_dotr=desc.attn_dotr,
        attn_mask=desc.attn_mask,
        activation_function=desc.activation_function,
        resnet_dt=desc.resnet_dt,
        scaling_factor=desc.scaling_factor,
        normalize=desc.normalize,
        temperature=desc.temperature,
        trainable_ln=desc.trainable_ln,
        ln_eps=desc.ln_eps,
    )
    if not v2:
        d["smooth_type_embedding"] = desc.smooth
    d.update(
        type_one_side=desc.type_one_side,
        concat_output_tebd=desc.concat_output_tebd,
        use_econf_tebd=desc.use_econf_tebd,
        use_tebd_bias=desc.use_tebd_bias,
        type_map=desc.type_map,
        precision=desc.precision,
        embeddings=_collection(net_to_dict(desc.embedding), desc.ntypes, "embedding_network"),
    )
    if desc.embedding_strip is not None:
        d["embeddings_strip"] = _collection(
            net_to_dict(desc.embedding_strip), desc.ntypes, "embedding_network"
        )
    tebd = desc.type_embedding
    tebd_net = {
        "@class": "EmbeddingNetwork",
        "@version": 2,
        "in_dim": tebd.inputs.shape[1],
        "neuron": [desc.tebd_dim],
        "activation_function": "Linear",
        "resnet_dt": False,
        "bias": desc.use_tebd_bias,
        "precision": desc.precision,
        "layers": [layer_to_dict(tebd.layer)],
    }
    tebd_net["layers"][0]["activation_function"] = "Linear"
    d.update(
        attention_layers=_attention_to_dict(desc),
        env_mat={
            "rcut": desc.rcut,
            "rcut_smth": desc.rcut_smth,
            "protection": desc.env_protection,
            "use_exp_switch": False,
        },
        type_embedding={
            "@class": "TypeEmbedNet",
            "@version": 2,
            "ntypes": desc.ntypes,
            "neuron": [desc.tebd_dim],
            "resnet_dt": False,
            "precision": desc.precision,
            "activation_function": "Linear",
            "trainable": desc.trainable,
            "padding": True,
            "use_econf_tebd": desc.use_econf_tebd,
            "use_tebd_bias": desc.use_tebd_bias,
            "type_map": desc.type_map,
            "embedding": tebd_net,
        },
        exclude_types=desc.exclude_types,
        env_protection=desc.env_protection,
        trainable=desc.trainable,
        spin=None,
        **{"@variables": {"davg": _np(desc.davg), "dstd": _np(desc.dstd)}},
    )
    return d


def descriptor_from_dict(data: dict) -> DescrptDPA1:
    dtype = data.get("type", "dpa1")
    if dtype not in DESCRIPTOR_TYPES:
        raise ValueError(
            f"descriptor type {dtype!r} is not DPA-1; expected one of {DESCRIPTOR_TYPES}"
        )
    version = int(data.get("@version", 1))
    if not 1 <= version <= 4:
        raise ValueError(f"descriptor @version {version} is not supported (1..4)")
    if int(data.get("lmax", 1)) != 1:
        raise NotImplementedError("descriptors with lmax != 1 are not supported yet")
    if data.get("compress", {}) and data["compress"].get("geo_compress"):
        raise NotImplementedError(
            "geometry-compressed models are not supported; use the uncompressed model"
        )
    v2 = dtype == "se_atten_v2"
    desc = DescrptDPA1(
        rcut=data["rcut"],
        rcut_smth=data["rcut_smth"],
        sel=int(sum(data["sel"])),
        ntypes=data["ntypes"],
        neuron=data["neuron"],
        axis_neuron=data["axis_neuron"],
        tebd_dim=data["tebd_dim"],
        tebd_input_mode="strip" if v2 else data.get("tebd_input_mode", "concat"),
        set_davg_zero=data.get("set_davg_zero", False),
        attn=data["attn"],
        attn_layer=data["attn_layer"],
        attn_dotr=data["attn_dotr"],
        attn_mask=data.get("attn_mask", False),
        activation_function=data["activation_function"],
        resnet_dt=data["resnet_dt"],
        scaling_factor=data.get("scaling_factor", 1.0),
        normalize=data.get("normalize", True),
        temperature=data.get("temperature"),
        trainable_ln=data.get("trainable_ln", True),
        ln_eps=data.get("ln_eps") or 1e-5,
        smooth_type_embedding=True if v2 else data.get("smooth_type_embedding", False),
        type_one_side=data.get("type_one_side", False),
        concat_output_tebd=data.get("concat_output_tebd", True),
        use_econf_tebd=data.get("use_econf_tebd", False),
        use_tebd_bias=data.get("use_tebd_bias", True),  # absent in version 1 = bias present
        type_map=data.get("type_map"),
        precision=data.get("precision", "float64"),
        exclude_types=data.get("exclude_types", []),
        env_protection=data.get("env_protection", 0.0),
        descriptor_type="se_atten_v2" if v2 else "dpa1",
        trainable=data.get("trainable", True),
    )
    net_from_dict(desc.embedding, data["embeddings"]["networks"][0], "descriptor.embeddings")
    if desc.embedding_strip is not None:
        net_from_dict(
            desc.embedding_strip,
            data["embeddings_strip"]["networks"][0],
            "descriptor.embeddings_strip",
        )
    layer_from_dict(
        desc.type_embedding.layer,
        data["type_embedding"]["embedding"]["layers"][0],
        "descriptor.type_embedding",
    )
    att = data["attention_layers"]["attention_layers"]
    if len(att) != desc.attn_layer:
        raise ValueError(
            f"descriptor.attention_layers: expected {desc.attn_layer} layers, file has {len(att)}"
        )
    for k, (layer, ld) in enumerate(zip(desc.attention.layers, att, strict=True)):
        what = f"descriptor.attention_layers[{k}]"
        layer_from_dict(layer.in_proj, ld["attention_layer"]["in_proj"], what + ".in_proj")
        layer_from_dict(layer.out_proj, ld["attention_layer"]["out_proj"], what + ".out_proj")
        ln = ld["attn_layer_norm"]
        layer.layer_norm.eps = float(ln.get("eps", desc.ln_eps))
        _set(layer.layer_norm.w, ln["@variables"]["w"], what + ".ln.w")
        _set(layer.layer_norm.b, ln["@variables"]["b"], what + ".ln.b")
        layer.smooth = bool(ld["attention_layer"].get("smooth", desc.smooth))
    desc.set_stat(
        torch.as_tensor(data["@variables"]["davg"]), torch.as_tensor(data["@variables"]["dstd"])
    )
    return desc


# === fitting ================================================================================
def fitting_to_dict(fit: EnergyFitting) -> dict:
    nvar = {
        "bias_atom_e": _np(fit.bias_atom_e),
        "case_embd": None,
        "fparam_avg": _np(fit.fparam_avg) if fit.numb_fparam else None,
        "fparam_inv_std": _np(fit.fparam_inv_std) if fit.numb_fparam else None,
        "aparam_avg": _np(fit.aparam_avg) if fit.numb_aparam else None,
        "aparam_inv_std": _np(fit.aparam_inv_std) if fit.numb_aparam else None,
    }
    return {
        "@class": "Fitting",
        "@version": 4,
        "type": "ener",
        "var_name": "energy",
        "dim_out": 1,
        "ntypes": fit.ntypes,
        "dim_descrpt": fit.dim_descrpt,
        "neuron": list(fit.neuron),
        "resnet_dt": fit.resnet_dt,
        "numb_fparam": fit.numb_fparam,
        "numb_aparam": fit.numb_aparam,
        "dim_case_embd": 0,
        "default_fparam": fit.default_fparam,
        "rcond": fit.rcond,
        "activation_function": fit.activation_function,
        "precision": fit.precision,
        "mixed_types": True,
        "exclude_types": fit.exclude_types,
        "atom_ener": fit.atom_ener,
        "type_map": fit.type_map,
        "tot_ener_zero": False,
        "trainable": [fit.trainable] * (len(fit.neuron) + 1),
        "layer_name": None,
        "use_aparam_as_mask": fit.use_aparam_as_mask,
        "spin": None,
        "nets": _collection(net_to_dict(fit.net, fitting=True), fit.ntypes, "fitting_network"),
        "@variables": nvar,
    }


def fitting_from_dict(data: dict) -> EnergyFitting:
    if data.get("type", "ener") != "ener":
        raise NotImplementedError(
            f"fitting type {data.get('type')!r} is not supported (only 'ener')"
        )
    if not data.get("mixed_types", True) or data["nets"].get("ndim", 0) != 0:
        raise ValueError("DPA-1 fittings are mixed-types (one shared network, ndim 0)")
    if data.get("dim_case_embd", 0):
        raise NotImplementedError(
            "multi-task case embeddings (dim_case_embd > 0) are not supported"
        )
    trainable = data.get("trainable", True)
    fit = EnergyFitting(
        ntypes=data["ntypes"],
        dim_descrpt=data["dim_descrpt"],
        neuron=data["neuron"],
        resnet_dt=data["resnet_dt"],
        numb_fparam=data.get("numb_fparam", 0),
        numb_aparam=data.get("numb_aparam", 0),
        activation_function=data["activation_function"],
        precision=data.get("precision", "float64"),
        exclude_types=data.get("exclude_types", []),
        atom_ener=data.get("atom_ener") or [],
        default_fparam=data.get("default_fparam"),
        use_aparam_as_mask=data.get("use_aparam_as_mask", False),
        rcond=data.get("rcond"),
        type_map=data.get("type_map"),
        trainable=all(trainable) if isinstance(trainable, list) else bool(trainable),
    )
    net_from_dict(fit.net, data["nets"]["networks"][0], "fitting.nets")
    v = data["@variables"]
    _set(fit.bias_atom_e, v["bias_atom_e"], "fitting.bias_atom_e")
    for key in ("fparam_avg", "fparam_inv_std", "aparam_avg", "aparam_inv_std"):
        if v.get(key) is not None:
            _set(getattr(fit, key), v[key], f"fitting.{key}")
    return fit


# === model ==================================================================================
def model_to_dict(model: EnergyModel) -> dict:
    """The ``model`` section of a ``.dp`` file."""
    return {
        "@class": "Model",
        "type": "standard",
        "@version": 2,
        "type_map": model.type_map,
        "atom_exclude_types": model.atom_exclude_types,
        "pair_exclude_types": model.pair_exclude_types,
        "rcond": model.rcond,
        "preset_out_bias": model.preset_out_bias,
        "@variables": {"out_bias": _np(model.out_bias), "out_std": _np(model.out_std)},
        "descriptor": descriptor_to_dict(model.descriptor),
        "fitting": fitting_to_dict(model.fitting),
    }


def model_from_dict(data: dict) -> EnergyModel:
    """Build an :class:`EnergyModel` from the ``model`` section of a ``.dp`` file."""
    mtype = data.get("type", "standard")
    if mtype not in ("standard", "ener"):
        raise NotImplementedError(f"model type {mtype!r} is not supported (energy models only)")
    if data.get("spin") or data.get("descriptor", {}).get("spin"):
        raise NotImplementedError("spin models are not supported")
    desc = descriptor_from_dict(data["descriptor"])
    fit = fitting_from_dict(data["fitting"])
    model = EnergyModel(
        desc,
        fit,
        data["type_map"],
        atom_exclude_types=data.get("atom_exclude_types", []),
        pair_exclude_types=data.get("pair_exclude_types", []),
        preset_out_bias=data.get("preset_out_bias"),
        rcond=data.get("rcond"),
    )
    v = data.get("@variables", {})
    if v.get("out_bias") is not None:
        _set(model.out_bias, v["out_bias"], "model.out_bias")
    if v.get("out_std") is not None:
        _set(model.out_std, v["out_std"], "model.out_std")
    return model


def load_dp_model(path: str | os.PathLike) -> tuple[EnergyModel, dict]:
    """Load a DeePMD-kit ``.dp``/``.yaml`` file: the model and the whole file dictionary."""
    data = load_dp(path)
    if "model" not in data:
        raise ValueError(f"{path}: no 'model' entry; is this a DeePMD-kit serialized model?")
    try:
        model = model_from_dict(data["model"])
        model.min_nbor_dist = min_nbor_dist_of(data)
    except KeyError as err:
        raise ValueError(f"{path}: missing key {err} in the serialized model") from None
    except ValueError as err:  # e.g. an array of the wrong shape: say which file
        raise ValueError(f"{path}: {err}") from None
    return model, data


def min_nbor_dist_of(data: dict) -> float | None:
    """A ``.dp`` file's ``min_nbor_dist``: in the top-level ``@variables`` (DeePMD-kit's
    writers), else a key of the model section; None when absent."""
    value = (data.get("@variables") or {}).get("min_nbor_dist")
    if value is None:
        value = data["model"].get("min_nbor_dist")
    if value is None:
        return None
    try:
        value = float(np.asarray(value).reshape(()))
    except (TypeError, ValueError):
        raise ValueError(f"min_nbor_dist: expected one number, found {value!r}") from None
    return value


def save_dp_model(
    path: str | os.PathLike,
    model: EnergyModel,
    model_def_script: dict | None = None,
    min_nbor_dist: float | None = None,
) -> None:
    """Write ``model`` as a DeePMD-kit ``.dp`` (or ``.yaml``) file; ``min_nbor_dist``
    defaults to the model's."""
    if min_nbor_dist is None:
        min_nbor_dist = model.min_nbor_dist
    data = {
        "software": "deepmd-kit",
        "version": f"3.2.0 (written by dpa1 {dpa1.__version__})",
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "backend": "PyTorch",
        "pt_version": str(torch.__version__),
        "model": model_to_dict(model),
        "model_def_script": model_def_script or {"type_map": model.type_map},
        "@variables": {} if min_nbor_dist is None else {"min_nbor_dist": np.asarray(min_nbor_dist)},
    }
    save_dp(path, data)
