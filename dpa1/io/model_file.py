"""Our model files, and one loader for every model file a user may hand us.

- ``*.pt`` — a training checkpoint: ``{"format": "dpa1-checkpoint", "version": 1,
  "model": <DeePMD-style model dict with tensors>, "config": <normalised input>,
  "step": int, "optimizer": state_dict | None, "min_nbor_dist": float (when known), ...}``.
  The model is stored in the same dictionary layout as ``.dp`` files (§13), so the two
  formats cannot drift apart; tensors instead of numpy arrays let it load with
  ``torch.load(weights_only=True)``.
- ``*.pth`` — a frozen model: TorchScript (``forward_lower`` + metadata methods) with
  ``dpa1.json`` (type_map, rcut, sel, min_nbor_dist, the model config) in its extra files.
- ``*.dp`` / ``*.yaml`` — DeePMD-kit's serialized format.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpa1.io.atomic import atomic_path
from dpa1.io.serialize import load_dp_model, model_from_dict, model_to_dict, save_dp_model
from dpa1.model.model import EnergyModel

CKPT_FORMAT = "dpa1-checkpoint"
CKPT_VERSION = 1
FROZEN_META = "dpa1.json"
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


def load_checkpoint(path: str | os.PathLike) -> tuple[EnergyModel, dict]:
    """Load a checkpoint (``weights_only=True``): the model and the raw payload."""
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
    if not isinstance(payload, dict) or payload.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path}: not a dpa1 checkpoint (no format tag {CKPT_FORMAT!r})")
    if payload.get("version", 0) > CKPT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload['version']} is newer than this dpa1")
    model = model_from_dict(_to_numpy(payload["model"]))
    if payload.get("min_nbor_dist") is not None:
        model.min_nbor_dist = float(payload["min_nbor_dist"])
    return model, payload


def _unwrap(model: torch.nn.Module) -> EnergyModel:
    return getattr(model, "module", model)  # DDP wrapper


def freeze(
    model: EnergyModel, path: str | os.PathLike, config: dict | None = None, *, lammps: bool = False
) -> None:
    """Write a self-contained TorchScript model that needs no training code to run.

    With ``lammps``, the model is wrapped in :class:`dpa1.export.lammps.LammpsModel`: the
    interface DeePMD-kit's C++ library (``pair_style deepmd``) calls; dpa1 reads it too.
    """
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    try:
        if lammps:
            from dpa1.export.lammps import LammpsModel

            scripted = torch.jit.script(LammpsModel(model))
        else:
            scripted = torch.jit.script(model)
    finally:
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
    }
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={FROZEN_META: json.dumps(meta)})


def load_frozen(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a frozen ``.pth`` model: the TorchScript module and its metadata."""
    extra = {FROZEN_META: ""}
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such model file")
    kind = file_kind(path)
    if kind != "torchscript":
        raise ValueError(
            f"{path}: not a frozen dpa1 model ({_WHAT_IT_IS[kind]}); expected the "
            "TorchScript file written by dpa1 freeze"
        )
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as err:
        raise ValueError(f"{path}: not a frozen dpa1 model ({_first_line(err)})") from None
    meta = json.loads(extra[FROZEN_META]) if extra[FROZEN_META] else {}
    return module, meta


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load any supported model file for evaluation.

    Returns:
        ``(module, meta)``: ``module`` has ``forward_lower``; ``meta`` has ``type_map``,
        ``rcut``, ``sel`` and ``kind`` (``checkpoint``, ``frozen`` or ``dp``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix in (".dp", ".yaml", ".yml", ".hlo"):
        model, data = load_dp_model(path)
        kind = "dp"
    elif suffix == ".pth":
        module, meta = load_frozen(path, device)
        meta["kind"] = "frozen"
        return module, meta
    else:
        model, data = load_checkpoint(path)
        kind = "checkpoint"
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


def load_energy_model(path: str | os.PathLike) -> tuple[EnergyModel, dict | None]:
    """Load an editable (non-TorchScript) model from a checkpoint or ``.dp`` file.

    Returns the model and the training config stored with it (None for ``.dp``).
    """
    path = Path(path)
    if path.suffix.lower() in (".dp", ".yaml", ".yml", ".hlo"):
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
    model, payload = load_checkpoint(path)
    return model, payload.get("config")


__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "freeze",
    "load_frozen",
    "load_model",
    "load_energy_model",
    "save_dp_model",
    "file_kind",
]
