"""Our model files, and one loader for every model file a user may hand us.

- ``*.pt`` — a training checkpoint: ``{"format": "dpa1-checkpoint", "version": 1,
  "model": <DeePMD-style model dict with tensors>, "config": <normalised input>,
  "step": int, "optimizer": state_dict | None, "min_nbor_dist": float (when known), ...}``.
  The model is stored in the same dictionary layout as ``.dp`` files (docs/design.md,
  "Model file (.dp)"), so the two
  formats cannot drift apart; tensors instead of numpy arrays let it load with
  ``torch.load(weights_only=True)``.
- ``*.pth`` — a frozen model: TorchScript (``forward_lower`` + metadata methods) with
  ``dpa1.json`` (type_map, rcut, sel, min_nbor_dist, the model config, whether it calls the C++
  ops) and ``dpa1_model.pt`` (the model dict, as in checkpoints) in its extra files. A model
  frozen with the C++ ops needs them to load; where they cannot load, the plain model is
  rebuilt from ``dpa1_model.pt`` (same numbers, slower).
- ``*.dp`` / ``*.yaml`` — DeePMD-kit's serialized format.
- ``*.pt`` written by ``dp --pt train`` — DeePMD-kit's checkpoints, told from ours by
  content (:mod:`dpa1.io.deepmd_checkpoint`); ``model_branch`` picks a multi-task branch.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpa1.accel.build import native_ops
from dpa1.io.atomic import atomic_path
from dpa1.io.deepmd_checkpoint import is_deepmd_checkpoint, read_branch
from dpa1.io.serialize import load_dp_model, model_from_dict, model_to_dict, save_dp_model
from dpa1.model import accel_hook
from dpa1.model.model import EnergyModel

CKPT_FORMAT = "dpa1-checkpoint"
CKPT_VERSION = 1
DEEPMD_FORMAT = "deepmd-kit"  # the payload format of a DeePMD-kit checkpoint read as ours
FROZEN_META = "dpa1.json"
FROZEN_MODEL = "dpa1_model.pt"
_PICKLE_PROTOCOL_2_PLUS = b"\x80"  # first byte of torch's pre-1.6 (non-zip) format


def file_kind(path: str | os.PathLike) -> str:
    """What a model file holds, from its first bytes (before any loader sees it):
    ``"torchscript"`` (a zip with ``code/``), ``"torch"`` (another zip, or torch's legacy
    pickle), ``"hdf5"``, ``"text"`` or ``"unknown"``."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        return "torchscript" if any("/code/" in n or n.startswith("code/") for n in names) \
            else "torch"
    if head.startswith(_PICKLE_PROTOCOL_2_PLUS):
        return "torch"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    try:
        head.decode("utf-8")
        return "text" if b"\0" not in head else "unknown"
    except UnicodeDecodeError:
        return "unknown"


_WHAT_IT_IS = {"torchscript": "a frozen TorchScript model", "hdf5": "an HDF5 file",
               "text": "a text file", "unknown": "of an unknown format",
               "torch": "a torch.save file, such as a checkpoint"}


def _first_line(err: BaseException) -> str:
    """torch's load errors run to many lines of advice (some about unsafe loading)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _tree_map(obj: Any, fn) -> Any:
    if isinstance(obj, dict):
        return {k: _tree_map(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_tree_map(v, fn) for v in obj]
    return fn(obj)


def _to_tensors(obj: Any) -> Any:
    return _tree_map(
        obj, lambda v: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
    )


def _to_numpy(obj: Any) -> Any:
    return _tree_map(obj, lambda v: v.numpy() if isinstance(v, torch.Tensor) else v)


def save_checkpoint(
    path: str | os.PathLike,
    model: EnergyModel,
    *,
    config: dict | None = None,
    step: int = 0,
    optimizer_state: dict | None = None,
    extra: dict | None = None,
) -> None:
    """Write a checkpoint atomically (temp file + rename): a crash never leaves a torn file."""
    model = _unwrap(model)
    payload = {
        "format": CKPT_FORMAT,
        "version": CKPT_VERSION,
        "model": _to_tensors(model_to_dict(model)),
        "config": config,
        "step": int(step),
        "optimizer": optimizer_state,
    }
    if model.min_nbor_dist is not None:
        payload["min_nbor_dist"] = float(model.min_nbor_dist)
    payload.update(extra or {})
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_torch_file(path: str | os.PathLike) -> dict:
    """``torch.load`` (``weights_only=True``) of a ``.pt`` file: a dpa1 or a DeePMD-kit
    checkpoint, told apart by content; one-line errors for anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    kind = file_kind(path)
    if kind != "torch":
        hint = {
            "torchscript": "; use the checkpoint (.pt) it was frozen from",
            "hdf5": "; a DeePMD-kit model must be named *.dp",
        }.get(kind, "")
        raise ValueError(f"{path}: not a dpa1 checkpoint ({_WHAT_IT_IS[kind]}){hint}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors of many kinds
        raise ValueError(f"{path}: not a readable dpa1 checkpoint ({_first_line(err)})") from None
    if is_deepmd_checkpoint(payload):
        return payload
    if not isinstance(payload, dict) or payload.get("format") != CKPT_FORMAT:
        raise ValueError(
            f"{path}: not a checkpoint (neither the format tag {CKPT_FORMAT!r} of dpa1 nor "
            "the model_params of a DeePMD-kit checkpoint)"
        )
    if payload.get("version", 0) > CKPT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload['version']} is newer than this dpa1")
    return payload


def load_checkpoint(
    path: str | os.PathLike, model_branch: str | None = None
) -> tuple[EnergyModel, dict]:
    """Load a checkpoint (``weights_only=True``): the model and the payload.

    A DeePMD-kit checkpoint (``dp --pt train``; see :mod:`dpa1.io.deepmd_checkpoint`) comes
    back with a payload in dpa1's layout: ``format`` ``"deepmd-kit"``, ``config``
    ``{"model": <the branch's model section>}``, ``step``, ``min_nbor_dist``,
    ``model_branch`` (the branch read; None for a single task) and ``deepmd`` (the loaded
    file, for writers that update it in place). ``model_branch`` picks the branch of a
    multi-task DeePMD-kit checkpoint and is refused for every other file.
    """
    payload = read_torch_file(path)
    if is_deepmd_checkpoint(payload):
        got = read_branch(path, payload, model_branch)
        return got.model, {
            "format": DEEPMD_FORMAT,
            "config": {"model": got.section},
            "step": got.step,
            "optimizer": None,
            "min_nbor_dist": got.model.min_nbor_dist,
            "model_branch": got.branch if got.multi_task else None,
            "deepmd_branch": got.branch,
            "deepmd": payload,
        }
    refuse_model_branch(path, model_branch)
    model = model_from_dict(_to_numpy(payload["model"]))
    if payload.get("min_nbor_dist") is not None:
        model.min_nbor_dist = float(payload["min_nbor_dist"])
    return model, payload


def refuse_model_branch(path: str | os.PathLike, model_branch: str | None) -> None:
    """``--model-branch`` names a branch of a multi-task DeePMD-kit checkpoint; any other
    model file has one model only."""
    if model_branch is not None:
        raise ValueError(
            f"{path}: --model-branch {model_branch!r} applies to multi-task DeePMD-kit "
            "checkpoints only; this file holds a single model"
        )


def _unwrap(model: torch.nn.Module) -> EnergyModel:
    return getattr(model, "module", model)  # DDP wrapper


def freeze(
    model: EnergyModel, path: str | os.PathLike, config: dict | None = None, *, lammps: bool = False
) -> bool:
    """Write a self-contained TorchScript model that needs no training code to run; returns
    whether the file calls dpa1's C++ ops (and so needs their library to load).

    Where the C++ ops are available and cover the model, the module calls the block op
    (``dpa1::energy_block``, with its backward in C++), as eager evaluation does; loading it
    then needs the op library (:func:`load_frozen` loads it; DeePMD-kit's C++ takes it from
    ``DP_PLUGIN_PATH``, see ``dpa1 ops-path``). With ``lammps``, the model is wrapped in
    :class:`dpa1.export.lammps.LammpsModel`: the interface DeePMD-kit's C++ library
    (``pair_style deepmd``) calls; dpa1 reads it too.
    """
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    kernel = accel_hook.script_kernel(model)
    model.accel = kernel
    try:
        if lammps:
            from dpa1.export.lammps import LammpsModel

            scripted = torch.jit.script(LammpsModel(model))
        else:
            scripted = torch.jit.script(model)
    finally:
        model.accel = None
        model.train(was_training)
    meta = {
        "lammps": lammps,
        "type_map": model.type_map,
        "rcut": model.rcut,
        "sel": model.nnei,
        "dim_fparam": model.fitting.numb_fparam,
        "dim_aparam": model.fitting.numb_aparam,
        "min_nbor_dist": model.min_nbor_dist,
        "model": config,
        "native_ops": kernel is not None,
    }
    weights = io.BytesIO()
    torch.save(_to_tensors(model_to_dict(model)), weights)
    with atomic_path(path) as tmp:
        torch.jit.save(
            scripted,
            str(tmp),
            _extra_files={FROZEN_META: json.dumps(meta), FROZEN_MODEL: weights.getvalue()},
        )
    return kernel is not None


def load_frozen(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a frozen ``.pth`` model: the module and its metadata.

    The module is TorchScript; for a model frozen with the C++ ops where they cannot be
    loaded, it is the plain model rebuilt from the weights in the file (one warning)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such model file")
    kind = file_kind(path)
    if kind != "torchscript":
        raise ValueError(
            f"{path}: not a frozen dpa1 model ({_WHAT_IT_IS[kind]}); expected the "
            "TorchScript file written by dpa1 freeze"
        )
    meta = _frozen_meta(path)
    if meta.get("native_ops") and not native_ops():
        return _rebuilt_plain(path, meta, device)
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as err:
        if "dpa1::" in str(err) and meta:
            return _rebuilt_plain(path, meta, device)
        raise ValueError(f"{path}: not a frozen dpa1 model ({_first_line(err)})") from None
    return module, meta


def _extra_file(path: str | os.PathLike, name: str) -> bytes | None:
    """One of a frozen model's extra files, read from the archive without loading the module
    (None when the file has none)."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith(f"extra/{name}")), None)
            return archive.read(member) if member else None
    except (zipfile.BadZipFile, OSError):
        return None


def _frozen_meta(path: str | os.PathLike) -> dict:
    """``dpa1.json`` of a frozen model ({} when absent or unreadable)."""
    raw = _extra_file(path, FROZEN_META)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def _rebuilt_plain(path: str | os.PathLike, meta: dict, device: str | torch.device):
    """The plain model of a frozen file whose C++ ops cannot be loaded here."""
    raw = _extra_file(path, FROZEN_MODEL)
    try:
        if raw is None:
            raise ValueError(f"no {FROZEN_MODEL} in the file")
        payload = torch.load(io.BytesIO(raw), weights_only=True)
    except (ValueError, RuntimeError) as err:
        raise ValueError(
            f"{path}: frozen with dpa1's C++ ops, which cannot be loaded here, and holds no "
            f"weights to rebuild the plain model from ({_first_line(err)})"
        ) from None
    warnings.warn(
        f"{path}: frozen with dpa1's C++ ops, which cannot be loaded here; evaluating the plain "
        "PyTorch model rebuilt from its weights (same numbers, slower)",
        RuntimeWarning,
        stacklevel=3,
    )
    model = model_from_dict(_to_numpy(payload))
    model.min_nbor_dist = meta.get("min_nbor_dist")
    return model.to(device).eval(), meta


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    model_branch: str | None = None,
):
    """Load any supported model file for evaluation.

    Args:
        model_branch: the branch of a multi-task DeePMD-kit checkpoint (refused otherwise).

    Returns:
        ``(module, meta)``: ``module`` has ``forward_lower``; ``meta`` has ``type_map``,
        ``rcut``, ``sel`` and ``kind`` (``checkpoint``, ``deepmd-checkpoint``, ``frozen``
        or ``dp``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix in (".dp", ".yaml", ".yml", ".hlo"):
        refuse_model_branch(path, model_branch)
        model, data = load_dp_model(path)
        kind = "dp"
    elif suffix == ".pth":
        refuse_model_branch(path, model_branch)
        module, meta = load_frozen(path, device)
        meta["kind"] = "frozen"
        return module, meta
    else:
        model, data = load_checkpoint(path, model_branch)
        kind = "deepmd-checkpoint" if data.get("format") == DEEPMD_FORMAT else "checkpoint"
    model = model.to(device).eval()
    meta = {
        "type_map": model.type_map,
        "rcut": model.rcut,
        "sel": model.nnei,
        "kind": kind,
        "dim_fparam": model.fitting.numb_fparam,
        "dim_aparam": model.fitting.numb_aparam,
        "min_nbor_dist": model.min_nbor_dist,
    }
    return model, meta


def load_energy_model(
    path: str | os.PathLike, model_branch: str | None = None
) -> tuple[EnergyModel, dict | None]:
    """Load an editable (non-TorchScript) model from a checkpoint (dpa1's or DeePMD-kit's;
    ``model_branch`` picks a multi-task branch) or a ``.dp`` file.

    Returns the model and the training config stored with it (None for ``.dp``; for a
    DeePMD-kit checkpoint ``{"model": <the branch's model section>}``).
    """
    path = Path(path)
    if path.suffix.lower() in (".dp", ".yaml", ".yml", ".hlo"):
        refuse_model_branch(path, model_branch)
        model, data = load_dp_model(path)
        return model, None
    if path.suffix.lower() == ".pth":
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such model file")
        kind = file_kind(path)
        if kind == "torchscript":
            raise ValueError(
                f"{path}: a frozen TorchScript model cannot be trained further; "
                "use its checkpoint (.pt) or a .dp file"
            )
        if kind != "torch":
            raise ValueError(
                f"{path}: not a model file ({_WHAT_IT_IS[kind]}); expected a dpa1 "
                "checkpoint (.pt) or a DeePMD-kit model (.dp)"
            )
    model, payload = load_checkpoint(path, model_branch)
    return model, payload.get("config")


__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "read_torch_file",
    "refuse_model_branch",
    "freeze",
    "load_frozen",
    "load_model",
    "load_energy_model",
    "save_dp_model",
    "file_kind",
]
