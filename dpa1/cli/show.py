"""``dpa1 show MODEL ATTRIBUTES...``: what a model file holds, as ``dp show`` prints it.

Every model format is read: dpa1 checkpoints (``.pt``), frozen models (``.pth``), DeePMD-kit
``.dp``/``.yaml`` files and DeePMD-kit checkpoints (single- and multi-task ``.pt``). A
multi-task checkpoint is shown branch by branch.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ATTRIBUTES = ("model-branch", "type-map", "descriptor", "fitting-net", "size", "rcut", "sel",
              "min_nbor_dist")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "show", help="show a model's type map, parameters, size, rcut, sel, min_nbor_dist",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL",
                   help="a .pt checkpoint (dpa1's or DeePMD-kit's), .pth or .dp/.yaml model")
    p.add_argument("attributes", metavar="ATTRIBUTES", nargs="+", choices=ATTRIBUTES,
                   help="what to show")
    p.set_defaults(func=run)


@dataclass
class ModelView:
    """One model (or one branch of a multi-task checkpoint) as ``show`` reports it.

    ``section`` is the input's model section recorded with it (None when the file has
    none); ``sizes`` the parameter counts (None where dpa1 cannot build the branch, with
    ``why`` saying so).
    """

    type_map: list[str]
    section: dict | None
    rcut: float | None
    sel: Any
    min_nbor_dist: float | None
    sizes: dict[str, int] | None
    why: str = ""
    alias: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def parameter_counts(module) -> dict[str, int]:
    """``descriptor``, ``fitting-net`` and ``total`` parameter counts, as ``dp show size``."""
    desc = sum(p.numel() for p in module.descriptor.parameters())
    fit = sum(p.numel() for p in module.fitting.parameters())
    return {"descriptor": desc, "fitting-net": fit, "total": desc + fit}


def _view_of(model, section: dict | None) -> ModelView:
    return ModelView(list(model.type_map), section, float(model.rcut), int(model.nnei),
                     model.min_nbor_dist, parameter_counts(model))


def read_views(path: Path) -> tuple[dict[str, ModelView], bool]:
    """The models in ``path`` by branch name (``""`` for a single model) and whether the
    file is a multi-task checkpoint."""
    from dpa1.io import deepmd_checkpoint as dc
    from dpa1.io.model_file import load_checkpoint, load_frozen, read_torch_file
    from dpa1.io.serialize import load_dp_model

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix in (".dp", ".yaml", ".yml"):
        model, data = load_dp_model(path)
        return {"": _view_of(model, data.get("model_def_script"))}, False
    if suffix == ".pth":
        module, meta = load_frozen(path)
        return {"": ModelView(list(meta["type_map"]), meta.get("model"), float(meta["rcut"]),
                              int(meta["sel"]), meta.get("min_nbor_dist"),
                              parameter_counts(module))}, False
    payload = read_torch_file(path)
    if not dc.is_deepmd_checkpoint(payload):
        model, payload = load_checkpoint(path)
        return {"": _view_of(model, (payload.get("config") or {}).get("model"))}, False
    params = dc.model_params_of(payload)
    branches = dc.branch_names(params)
    if not branches:
        got = dc.read_branch(path, payload)
        return {"": _view_of(got.model, got.section)}, False
    views = {}
    state = dc.state_dict_of(payload)
    for name in branches:
        section = params["model_dict"][name]
        try:
            view = _view_of(dc.read_branch(path, payload, name).model, section)
        except ValueError as err:  # e.g. not a DPA-1 descriptor: show what the input says
            desc = section.get("descriptor") or {}
            view = ModelView(list(section.get("type_map") or []), section, desc.get("rcut"),
                             desc.get("sel"), dc.min_nbor_dist_of(state, name), None,
                             why=str(err).split(": ", 1)[-1])
        view.alias = dc.branch_aliases(params)[name]
        view.info = dict(section.get("info") or {})
        views[name] = view
    return views, True


def _lines(views: dict[str, ModelView], multi: bool, attributes: list[str]) -> list[str]:
    out = ["This is a multitask model" if multi else "This is a singletask model"]
    if "model-branch" in attributes:
        if not multi:
            raise ValueError("The 'model-branch' option requires a multitask model. "
                             "The provided model does not meet this criterion.")
        out.append(f"Available model branches are {list(views)}")
        for name, v in views.items():
            note = f", not readable by dpa1: {v.why}" if v.why else ""
            out.append(f"  {name}: alias {v.alias}, info {v.info}{note}")

    def of(name: str) -> str:
        return f" of branch {name}" if multi else ""

    for name, v in views.items():
        if "type-map" in attributes:
            out.append(f"The type_map{of(name)} is {v.type_map}")
    for attr, key, label in (("descriptor", "descriptor", "descriptor"),
                             ("fitting-net", "fitting_net", "fitting_net")):
        if attr not in attributes:
            continue
        for name, v in views.items():
            if v.section and key in v.section:
                out.append(f"The {label} parameter{of(name)} is {v.section[key]}")
            else:
                out.append(f"The {label} parameters{of(name)} are not available "
                           "(the model file does not record its input)")
    if "size" in attributes:
        for name, v in views.items():
            if v.sizes is None:
                out.append(f"Parameter counts{of(name)}: unknown ({v.why})")
                continue
            out.append(f"Parameter counts{of(name)}:")
            out.extend(f"Parameters in {k}: {n:,}" for k, n in v.sizes.items())
    for attr, key in (("rcut", "rcut"), ("sel", "sel"), ("min_nbor_dist", "min_nbor_dist")):
        if attr not in attributes:
            continue
        for name, v in views.items():
            value = getattr(v, key)
            shown = "unknown (not recorded)" if value is None else value
            out.append(f"The {key}{of(name)} is {shown}")
    return out


def run(args: argparse.Namespace) -> int:
    views, multi = read_views(Path(args.model))
    for line in _lines(views, multi, list(args.attributes)):
        print(line)
    return 0
