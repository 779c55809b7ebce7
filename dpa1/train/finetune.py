"""Adapt a pretrained model to a new ``type_map`` (subset, reordering or extension).

Works on the serialized model dictionary (docs/design.md, "Model file (.dp)"), so the same code
serves ``.pt`` and
``.dp`` pretrained models. Known types keep every learned per-type quantity; new types
get fresh type-embedding rows and neutral statistics, to be filled from the new data.
"""

from __future__ import annotations

import copy

import numpy as np


def _remap_pairs(pairs: list, index: dict[int, int]) -> list:
    return [[index[a], index[b]] for a, b in pairs if a in index and b in index]


def change_type_map(
    model_dict: dict, new_type_map: list[str], seed: int | None = None
) -> tuple[dict, list[int]]:
    """Return ``(new_model_dict, new_type_indices)``.

    Raises:
        NotImplementedError: when the type embedding has a skip connection that depends on
        ``ntypes`` (``tebd_dim`` equal to ``ntypes`` or ``2·ntypes``).
    """
    old_map = list(model_dict["type_map"])
    if len(set(new_type_map)) != len(new_type_map):
        raise ValueError(f"type_map {new_type_map} has duplicate names")
    old_index = {name: k for k, name in enumerate(old_map)}
    src = [old_index.get(name, -1) for name in new_type_map]  # old index per new type, -1 = new
    new_types = [k for k, s in enumerate(src) if s < 0]
    old_to_new = {s: k for k, s in enumerate(src) if s >= 0}
    nt_old, nt_new = len(old_map), len(new_type_map)
    rng = np.random.default_rng(seed)

    def take(arr: np.ndarray, axis: int, fill: float) -> np.ndarray:
        arr = np.asarray(arr)
        shape = list(arr.shape)
        shape[axis] = nt_new
        out = np.full(shape, fill, dtype=arr.dtype)
        for k, s in enumerate(src):
            if s >= 0:
                idx_new = [slice(None)] * arr.ndim
                idx_old = [slice(None)] * arr.ndim
                idx_new[axis], idx_old[axis] = k, s
                out[tuple(idx_new)] = arr[tuple(idx_old)]
        return out

    m = copy.deepcopy(model_dict)
    m["type_map"] = list(new_type_map)
    m["atom_exclude_types"] = [
        old_to_new[t] for t in m.get("atom_exclude_types", []) if t in old_to_new
    ]
    m["pair_exclude_types"] = _remap_pairs(m.get("pair_exclude_types", []), old_to_new)
    mv = m["@variables"]
    mv["out_bias"] = take(mv["out_bias"], 1, 0.0)
    mv["out_std"] = take(mv["out_std"], 1, 1.0)
    if m.get("preset_out_bias"):
        m["preset_out_bias"] = {
            k: [v[s] if s >= 0 else None for s in src] for k, v in m["preset_out_bias"].items()
        }

    d = m["descriptor"]
    d["ntypes"], d["type_map"] = nt_new, list(new_type_map)
    d["exclude_types"] = _remap_pairs(d.get("exclude_types", []), old_to_new)
    d["@variables"]["davg"] = take(d["@variables"]["davg"], 0, 0.0)
    d["@variables"]["dstd"] = take(d["@variables"]["dstd"], 0, 1.0)
    for key in ("embeddings", "embeddings_strip"):
        if key in d:
            d[key]["ntypes"] = nt_new
    te = d["type_embedding"]
    tebd_dim = int(d["tebd_dim"])
    te["ntypes"], te["type_map"] = nt_new, list(new_type_map)
    unchanged = list(new_type_map) == old_map  # nothing to remap: any tebd_dim will do
    if not d.get("use_econf_tebd", False) and not unchanged:
        if tebd_dim in (nt_old, 2 * nt_old, nt_new, 2 * nt_new):
            raise NotImplementedError(
                f"tebd_dim {tebd_dim} makes the type embedding's skip connection depend on "
                f"ntypes ({nt_old} → {nt_new}); fine-tuning across type maps needs another tebd_dim"
            )
        layer = te["embedding"]["layers"][0]
        w = np.asarray(layer["@variables"]["w"])
        fresh = rng.normal(0.0, 1.0 / np.sqrt(nt_new + tebd_dim), size=(nt_new, tebd_dim))
        w_new = np.where(np.asarray(src)[:, None] >= 0, take(w, 0, 0.0), fresh).astype(w.dtype)
        layer["@variables"]["w"] = w_new
        te["embedding"]["in_dim"] = nt_new

    f = m["fitting"]
    f["ntypes"], f["type_map"] = nt_new, list(new_type_map)
    f["nets"]["ntypes"] = nt_new
    f["exclude_types"] = [old_to_new[t] for t in f.get("exclude_types", []) if t in old_to_new]
    if f.get("atom_ener"):
        f["atom_ener"] = [f["atom_ener"][s] if 0 <= s < len(f["atom_ener"]) else None for s in src]
    f["@variables"]["bias_atom_e"] = take(f["@variables"]["bias_atom_e"], 0, 0.0)
    return m, new_types
