"""``dpa1 convert IN OUT``: convert a model between dpa1's and DeePMD-kit's file formats.

=========================  =====================================================
``.pt``                    dpa1 training checkpoint (read / write); DeePMD-kit's
                           ``dp --pt train`` checkpoint (read; ``--model-branch``
                           picks a multi-task branch)
``.dp`` / ``.yaml``        DeePMD-kit's backend-independent serialized model (read / write)
``.pth``                   frozen TorchScript model (write only)
=========================  =====================================================

The format is chosen by the file suffix. To run a dpa1 model in LAMMPS, convert it to
``.dp`` and let DeePMD-kit make its own frozen model: ``dp convert-backend model.dp
model.pth`` (DeePMD-kit ≥ 3.0), then ``pair_style deepmd model.pth``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

DP_SUFFIXES = (".dp", ".yaml", ".yml")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert a model between .pt (checkpoint), .dp/.yaml (DeePMD-kit) and .pth",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="IN", help="model to read: .pt, .dp or .yaml")
    p.add_argument("output", metavar="OUT", help="model to write: .dp, .yaml, .pt or .pth")
    p.add_argument("--model-branch", default=None,
                   help="the branch of a multi-task DeePMD-kit checkpoint to convert")
    p.set_defaults(func=run)


def read_model(path: Path, model_branch: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The model in ``path`` and what else the output formats can carry:
    ``model_def_script`` (the model section of the input), ``config`` (a checkpoint's full
    training input), ``step`` and ``min_nbor_dist``."""
    from dpa1.io.model_file import load_checkpoint, refuse_model_branch
    from dpa1.io.serialize import load_dp_model

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix == ".pth":
        raise ValueError(f"{path}: a frozen TorchScript model (.pth) cannot be converted; "
                         "convert the checkpoint (.pt) or .dp file it was made from")
    if suffix in DP_SUFFIXES:
        refuse_model_branch(path, model_branch)
        model, data = load_dp_model(path)
        mnd = (data.get("@variables") or {}).get("min_nbor_dist")
        return model, {"model_def_script": data.get("model_def_script"), "config": None,
                       "step": 0, "min_nbor_dist": None if mnd is None else float(mnd)}
    if suffix != ".pt":
        raise ValueError(f"{path}: unknown model format {suffix!r} (expected .pt, .dp or .yaml)")
    model, payload = load_checkpoint(path, model_branch)
    config = payload.get("config")
    mds = _resolved_model_section(config.get("model") if config else None, model)
    return model, {"model_def_script": mds, "config": config, "step": int(payload.get("step", 0)),
                   "min_nbor_dist": payload.get("min_nbor_dist")}


def _resolved_model_section(section: dict | None, model) -> dict:
    """The input's ``model`` section with ``sel`` replaced by the model's actual neighbour
    count (``"auto"`` means nothing without the training data)."""
    if not section:
        return {"type_map": list(model.type_map)}
    section = copy.deepcopy(section)
    desc = section.get("descriptor")
    if isinstance(desc, dict) and not isinstance(desc.get("sel"), int):
        desc["sel"] = int(model.nnei)
    return section


def check_output_format(path: Path) -> None:
    """Refuse unsupported output formats before any model is loaded."""
    suffix = path.suffix.lower()
    if suffix in DP_SUFFIXES + (".pt", ".pth"):
        return
    if suffix in (".pb", ".savedmodel", ".pt2", ".pte", ".hlo"):
        raise ValueError(f"{path}: write a .dp file and use DeePMD-kit's "
                         f"`dp convert-backend model.dp {path.name}` for {suffix} models")
    raise ValueError(f"{path}: unknown model format {suffix!r} (expected .dp, .yaml, .pt or .pth)")


def write_model(path: Path, model, info: dict[str, Any]) -> None:
    """Write ``model`` in the format named by ``path``'s suffix."""
    from dpa1.io.model_file import freeze, save_checkpoint
    from dpa1.io.serialize import save_dp_model

    check_output_format(path)
    mds = info.get("model_def_script") or {"type_map": list(model.type_map)}
    suffix = path.suffix.lower()
    if suffix in DP_SUFFIXES:
        save_dp_model(path, model, model_def_script=mds, min_nbor_dist=info.get("min_nbor_dist"))
    elif suffix == ".pt":
        # a .dp carries no training input: keep its model section so `dpa1 freeze` has it
        config = info.get("config") or {"model": mds}
        mnd = info.get("min_nbor_dist")
        save_checkpoint(path, model, config=config, step=info.get("step", 0),
                        extra=None if mnd is None else {"min_nbor_dist": float(mnd)})
    else:
        freeze(model, path, config=mds)


def run(args: argparse.Namespace) -> int:
    from dpa1.io.atomic import check_output_path

    src, dst = Path(args.input), Path(args.output)
    check_output_format(dst)
    check_output_path(dst, "OUT")
    model, info = read_model(src, args.model_branch)
    write_model(dst, model.eval(), info)
    print(f"dpa1 convert: {src} -> {dst}")
    return 0
