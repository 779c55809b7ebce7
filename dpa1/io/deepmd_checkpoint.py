"""DeePMD-kit's PyTorch training checkpoints (``model.ckpt*.pt`` of ``dp --pt train``).

Such a file is ``torch.save({"model": state_dict, "optimizer": ...})`` of DeePMD-kit's
``ModelWrapper``. The state dict names every tensor by its module path,
``model.<branch>.atomic_model.descriptor.se_atten.filter_layers.networks.0.layers.0.matrix``
…, and its ``_extra_state`` holds ``model_params`` (the input's ``model`` section, as
DeePMD-kit normalised it) and ``train_infos`` (``lr``, ``step``). A single-task model has
the one branch ``Default``; a multi-task model's ``model_params`` has a ``model_dict`` whose
keys (and their ``model_branch_alias`` lists) name the branches.

A branch is read by rebuilding the DeePMD-kit serialized dictionary (the ``model`` section
of a ``.dp`` file; docs/design.md, "Model file (.dp)") from ``model_params`` and the state
dict, then building the model with :func:`dpa1.io.serialize.model_from_dict`: ``.dp`` files
and checkpoints share one mapping to dpa1's modules. DeePMD-kit itself is not needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dpa1.io.serialize import DESCRIPTOR_TYPES, model_from_dict
from dpa1.model.model import EnergyModel

SINGLE_TASK_BRANCH = "Default"  # the ModelWrapper's key of a single-task model


def is_deepmd_checkpoint(payload: Any) -> bool:
    """Whether a ``torch.load`` result is a DeePMD-kit checkpoint (or its bare state dict)."""
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    extra = state.get("_extra_state") if isinstance(state, dict) else None
    return isinstance(extra, dict) and isinstance(extra.get("model_params"), dict)


def state_dict_of(payload: dict) -> dict[str, Any]:
    """The ModelWrapper state dict of a checkpoint (a bare state dict is one already)."""
    return payload.get("model", payload)


def model_params_of(payload: dict) -> dict:
    """``model_params``: the input's model section recorded in the checkpoint."""
    return state_dict_of(payload)["_extra_state"]["model_params"]


def branch_names(params: dict) -> list[str]:
    """The branches of a multi-task model, in the input's order; ``[]`` for a single task."""
    return list(params["model_dict"]) if "model_dict" in params else []


def branch_aliases(params: dict) -> dict[str, list[str]]:
    """Each branch's ``model_branch_alias`` list."""
    return {b: list(params["model_dict"][b].get("model_branch_alias") or [])
            for b in branch_names(params)}


def resolve_branch(params: dict, model_branch: str | None, where: str | os.PathLike) -> str:
    """The state-dict key of the branch to read, as DeePMD-kit resolves ``--head``: a branch
    name or alias, matched case-insensitively if not exactly; a multi-task model with a
    branch named or aliased ``Default`` uses it when none is given.

    Raises:
        ValueError: no branch given for a multi-task model (the message lists them), an
            unknown branch, or a branch given for a single-task model.
    """
    names = branch_names(params)
    if not names:
        if model_branch is not None:
            raise ValueError(
                f"{where}: a single-task model has no branches; --model-branch "
                f"{model_branch!r} applies to multi-task checkpoints only"
            )
        return SINGLE_TASK_BRANCH
    alias = {n: n for n in names}
    for name, extra in branch_aliases(params).items():
        alias.update({a: name for a in extra})
    if model_branch is None and "Default" in alias:
        model_branch = "Default"
    listing = ", ".join(names)
    if model_branch is None:
        raise ValueError(
            f"{where}: a multi-task model; choose a branch with --model-branch (one of: "
            f"{listing})"
        )
    if model_branch not in alias:
        lower = {a.lower(): a for a in reversed(list(alias))}  # the first match wins
        if model_branch.lower() not in lower:
            raise ValueError(
                f"{where}: no model branch or alias {model_branch!r}; the branches are: {listing}"
            )
        model_branch = lower[model_branch.lower()]
    return alias[model_branch]


def branch_params(params: dict, branch: str) -> dict:
    """The model section of one branch (``params`` itself for a single task)."""
    return params if branch == SINGLE_TASK_BRANCH and "model_dict" not in params \
        else params["model_dict"][branch]


def descriptor_type(section: dict) -> str:
    """The descriptor type of a model section (DeePMD-kit's default is ``se_e2_a``)."""
    desc = section.get("descriptor")
    return str(desc.get("type", "se_e2_a")) if isinstance(desc, dict) else "?"


def check_dpa1_branch(section: dict, branch: str, where: str | os.PathLike) -> None:
    """Refuse a branch that is not a plain DPA-1 energy model."""
    name = "the model" if branch == SINGLE_TASK_BRANCH else f"branch {branch!r}"
    dtype = descriptor_type(section)
    if dtype not in DESCRIPTOR_TYPES:
        raise ValueError(
            f"{where}: {name} has a {dtype!r} descriptor; dpa1 reads DPA-1 models only "
            f"(descriptor type one of {', '.join(DESCRIPTOR_TYPES)})"
        )
    mtype = section.get("type", "standard")
    if section.get("use_srtab"):
        mtype = f"{mtype} (with a pair table)"
    if mtype not in ("standard", "ener"):
        raise ValueError(
            f"{where}: {name} is a {mtype!r} model; dpa1 reads standard DPA-1 energy "
            "models only"
        )
    ftype = (section.get("fitting_net") or {}).get("type", "ener")
    if ftype != "ener":
        raise ValueError(f"{where}: {name} has a {ftype!r} fitting; dpa1 fits energies only")


# === state dict → serialized dictionary ======================================================
class _Tensors:
    """The state-dict tensors below one prefix, as numpy arrays."""

    def __init__(self, state: dict[str, Any], prefix: str) -> None:
        self.state, self.prefix = state, prefix

    def get(self, name: str) -> np.ndarray | None:
        value = self.state.get(self.prefix + name)
        if value is None:
            return None
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
        return np.asarray(value)

    def need(self, name: str) -> np.ndarray:
        value = self.get(name)
        if value is None:
            raise ValueError(f"missing tensor {self.prefix + name}")
        return value

    def layers(self, net: str, count: int) -> list[dict]:
        """The ``Layer`` dicts (``@variables`` w, b, idt) of a network's first ``count`` layers."""
        return [
            {"@variables": {"w": self.need(f"{net}.layers.{k}.matrix"),
                            "b": self.get(f"{net}.layers.{k}.bias"),
                            "idt": self.get(f"{net}.layers.{k}.idt")}}
            for k in range(count)
        ]


def _descriptor_dict(section: dict, t: _Tensors) -> dict:
    d = dict(section["descriptor"])
    v2 = d.get("type") == "se_atten_v2"
    if d.get("stripped_type_embedding") is not None:  # DeePMD-kit's deprecated spelling
        d["tebd_input_mode"] = "strip" if d["stripped_type_embedding"] else "concat"
    davg = t.need("se_atten.mean")
    nlayer = len(d["neuron"])
    d.update(
        type="se_atten_v2" if v2 else "dpa1",
        sel=[int(davg.shape[1])],  # the neighbour slots actually built ("auto" resolved)
        ntypes=len(section["type_map"]),
        type_map=list(section["type_map"]),
        embeddings={"networks": [{"layers": t.layers("se_atten.filter_layers.networks.0",
                                                     nlayer)}]},
        type_embedding={"embedding": {"layers": t.layers(
            "type_embedding.embedding.embedding_net", 1)}},
        attention_layers={"attention_layers": [
            {
                "attention_layer": {
                    "in_proj": _single(t, f"{a}.attention_layer.in_proj"),
                    "out_proj": _single(t, f"{a}.attention_layer.out_proj"),
                },
                "attn_layer_norm": {"eps": d.get("ln_eps") or 1e-5, "@variables": {
                    "w": t.need(f"{a}.attn_layer_norm.matrix"),
                    "b": t.need(f"{a}.attn_layer_norm.bias")}},
            }
            for a in (f"se_atten.dpa1_attention.attention_layers.{k}"
                      for k in range(int(d["attn_layer"])))
        ]},
    )
    d["@variables"] = {"davg": davg, "dstd": t.need("se_atten.stddev")}
    if v2 or d.get("tebd_input_mode") == "strip":
        d["embeddings_strip"] = {"networks": [{"layers": t.layers(
            "se_atten.filter_layers_strip.networks.0", nlayer)}]}
    return d


def _single(t: _Tensors, name: str) -> dict:
    """A ``Layer`` dict of a lone layer (attention projections)."""
    return {"@variables": {"w": t.need(f"{name}.matrix"), "b": t.get(f"{name}.bias"),
                           "idt": t.get(f"{name}.idt")}}


def _fitting_dict(section: dict, desc: dict, t: _Tensors) -> dict:
    f = dict(section["fitting_net"])
    concat = desc.get("concat_output_tebd", True)
    dim_descrpt = int(desc["neuron"][-1]) * int(desc["axis_neuron"]) + (
        int(desc["tebd_dim"]) if concat else 0
    )
    f.update(
        type="ener",
        ntypes=len(section["type_map"]),
        type_map=list(section["type_map"]),
        dim_descrpt=dim_descrpt,
        mixed_types=True,
        exclude_types=list(section.get("atom_exclude_types") or []),
        nets={"ndim": 0, "networks": [{"layers": t.layers(
            "fitting_net.filter_layers.networks.0", len(f["neuron"]) + 1)}]},
    )
    f["@variables"] = {
        "bias_atom_e": t.need("fitting_net.bias_atom_e"),
        **{k: t.get(f"fitting_net.{k}")
           for k in ("fparam_avg", "fparam_inv_std", "aparam_avg", "aparam_inv_std")},
    }
    return f


def serialized_model(section: dict, state: dict[str, Any], branch: str) -> dict:
    """The ``.dp`` ``model`` dictionary of ``branch``
    (see :func:`dpa1.io.serialize.model_from_dict`)."""
    t = _Tensors(state, f"model.{branch}.atomic_model.")
    desc = _descriptor_dict(section, _Tensors(state, t.prefix + "descriptor."))
    return {
        "type": "standard",
        "type_map": list(section["type_map"]),
        "atom_exclude_types": list(section.get("atom_exclude_types") or []),
        "pair_exclude_types": [list(p) for p in section.get("pair_exclude_types") or []],
        "preset_out_bias": section.get("preset_out_bias"),
        "rcond": (section.get("fitting_net") or {}).get("rcond"),
        "@variables": {"out_bias": t.need("out_bias"), "out_std": t.get("out_std")},
        "descriptor": desc,
        "fitting": _fitting_dict(section, desc, _Tensors(state, t.prefix)),
    }


def min_nbor_dist_of(state: dict[str, Any], branch: str) -> float | None:
    """The branch's ``min_nbor_dist`` buffer (training's neighbour statistics), if recorded."""
    value = state.get(f"model.{branch}.min_nbor_dist")
    if value is None or torch.as_tensor(value).numel() != 1:
        return None
    return float(torch.as_tensor(value).reshape(()))


def out_bias_key(branch: str) -> str:
    """The state-dict name of a branch's energy bias ``(1, ntypes, 1)``."""
    return f"model.{branch}.atomic_model.out_bias"


@dataclass
class DeepmdBranch:
    """One branch of a DeePMD-kit checkpoint, read as a dpa1 model."""

    model: EnergyModel
    branch: str  # state-dict key: "Default" for a single task
    section: dict  # the branch's model section (model_params of a single task)
    step: int
    multi_task: bool


def read_branch(
    path: str | os.PathLike, payload: dict, model_branch: str | None = None
) -> DeepmdBranch:
    """Build the dpa1 model of one branch of a loaded DeePMD-kit checkpoint.

    Raises:
        ValueError: see :func:`resolve_branch` and :func:`check_dpa1_branch`; a tensor of
            the wrong shape or missing.
    """
    params = model_params_of(payload)
    state = state_dict_of(payload)
    branch = resolve_branch(params, model_branch, path)
    section = branch_params(params, branch)
    check_dpa1_branch(section, branch, path)
    try:
        model = model_from_dict(serialized_model(section, state, branch))
    except KeyError as err:
        raise ValueError(f"{path}: missing key {err} in the checkpoint's model_params") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    model.min_nbor_dist = min_nbor_dist_of(state, branch)
    infos = state["_extra_state"].get("train_infos") or {}
    return DeepmdBranch(model, branch, section, int(infos.get("step", 0)),
                        bool(branch_names(params)))
