"""DeePMD-kit's serialized model container (docs/design.md, "Model file (.dp)"): ``.dp`` (HDF5) and
``.yaml``.

Arrays inside ``@variables`` dicts are stored as root datasets ``variable_NNNN`` in
depth-first, insertion order; the JSON in the root attribute ``json`` holds their paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dpa1.io.atomic import atomic_path


def _walk_variables(obj: Any, in_vars: bool, visit) -> Any:
    """Copy ``obj``, replacing each value under an ``@variables`` subtree by ``visit(value)``."""
    if in_vars and isinstance(obj, dict) and obj.get("@class") == "np.ndarray":
        return visit(obj)  # an inline YAML array
    if isinstance(obj, dict):
        return {k: _walk_variables(v, in_vars or k == "@variables", visit) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk_variables(v, in_vars, visit) for v in obj]
    if in_vars and obj is not None:
        return visit(obj)
    return obj


def load_dp(path: str | os.PathLike) -> dict:
    """Read a ``.dp`` (HDF5) or ``.yaml`` model file into a dict with numpy arrays."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a DeePMD-kit .yaml model file ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a DeePMD-kit .yaml model file (no mapping at the top)")

        def _from_yaml(v: Any) -> Any:
            if isinstance(v, dict) and v.get("@class") == "np.ndarray":
                return np.asarray(v["value"], dtype=v.get("dtype", "float64"))
            return v

        return _walk_variables(data, False, _from_yaml)
    import h5py

    try:
        with h5py.File(path, "r") as f:
            data = json.loads(f.attrs["json"])
            if not isinstance(data, dict):
                raise ValueError("the 'json' attribute is not a JSON object")

            def _read(v: Any) -> Any:
                return np.asarray(f[v][()]) if isinstance(v, str) else v

            return _walk_variables(data, False, _read)
    except (OSError, KeyError, ValueError) as err:  # ValueError includes bad JSON
        raise ValueError(f"{path}: not a DeePMD-kit .dp model file ({err})") from None


def save_dp(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` (numpy arrays under ``@variables``) as ``.dp`` or ``.yaml``, atomically."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        def _to_yaml(v: Any) -> Any:
            arr = np.asarray(v)
            return {"@class": "np.ndarray", "@is_variable": True, "@version": 1,
                    "dtype": str(arr.dtype), "value": arr.tolist()}

        out = _walk_variables(data, False, _to_yaml)
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                yaml.safe_dump(out, f)
        return
    import h5py

    arrays: list[np.ndarray] = []

    def _name(v: Any) -> str:
        arrays.append(np.asarray(v))
        return f"/variable_{len(arrays) - 1:04d}"

    meta = _walk_variables(data, False, _name)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for k, arr in enumerate(arrays):
                f.create_dataset(f"variable_{k:04d}", data=arr)
            f.attrs["json"] = json.dumps(meta, separators=(",", ":"))
