"""The statistics cache of ``training.stat_file``, in DeePMD-kit 3.2.0's layout.

A fresh training run saves the data statistics it computed (:func:`dpa1.data.stats.
apply_statistics`) to the file; a later run with the same file reads them instead of
sampling the data again, and so gets the same statistics. The cache is an HDF5 file
(``.h5``/``.hdf5``, or any existing HDF5 file) or else a directory, laid out as DeePMD-kit
writes it (``deepmd/utils/stat_file.py``, ``deepmd/utils/env_mat_stat.py``,
``deepmd/pt/utils/stat.py``, ``deepmd/pt/model/task/fitting.py``)::

    <stat_file>
      O H/                    one group per type_map, the names joined by spaces
        <sha1>/               descriptor statistics, named by DeePMD-kit's hash of the
                              descriptor settings (type, ntypes, rcut, rcut_smth, sel)
          r_0, a_0, r_1, ...  per centre type, the radial (r) and angular (a) columns of the
                              environment matrix: [count, sum, sum of squares]
        fparam, aparam        (numb_fparam, 3) / (numb_aparam, 3): [count, sum, sum of
                              squares] per component (only when the model has them)
        bias_atom_energy      (ntypes, 1): out_bias
        std_atom_energy       (ntypes, 1): out_std
        observed_type         the types present in the sample, by atomic number (bytes)
        dpa1_descriptor       JSON (bytes): the settings behind each <sha1> that dpa1 wrote,
                              so a mismatch can be named (DeePMD-kit ignores it)

In a directory the groups are sub-directories and each array a ``.npy`` file without the
suffix. DeePMD-kit adds a group for every new type_map or descriptor setting; dpa1 refuses
a file written for another type_map or other descriptor settings instead, so a stale cache
never trains a model silently. Like DeePMD-kit it does not check that the data or
``data_stat_nbatch`` are the same: remove the file when they change.

Writes are atomic: an HDF5 file is rewritten to a temporary copy that replaces it, a
directory gets one file at a time, each written to a temporary name and renamed (an
interrupted write leaves a part missing, which the next run computes again).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dpa1.io.atomic import atomic_path

__all__ = ["StatFile", "descriptor_settings", "is_hdf5", "open_stat_file"]

HDF5_SUFFIXES = (".h5", ".hdf5")
SETTINGS = "dpa1_descriptor"
_ENERGY = ("bias_atom_energy", "std_atom_energy")


def descriptor_settings(descriptor: Any, ntypes: int) -> dict[str, Any]:
    """What DeePMD-kit hashes to name a group of descriptor statistics
    (``EnvMatStatSe.get_hash``): se_atten is an "se_a" environment matrix of mixed types."""
    return {"type": "se_a", "ntypes": int(ntypes), "rcut": round(float(descriptor.rcut), 2),
            "rcut_smth": round(float(descriptor.rcut_smth), 2), "nsel": int(descriptor.nnei),
            "sel": [int(descriptor.nnei)], "mixed_types": True}


def settings_hash(settings: Mapping[str, Any]) -> str:
    """DeePMD-kit's ``get_hash``: the SHA-1 of the settings' JSON."""
    return hashlib.sha1(json.dumps(settings).encode("utf-8")).hexdigest()


def is_hdf5(path: Path) -> bool:
    """Whether the cache at ``path`` is (or will be) an HDF5 file rather than a directory."""
    return path.is_file() or (not path.exists() and path.suffix.lower() in HDF5_SUFFIXES)


class StatFile:
    """One statistics cache opened for one model: the arrays of its type_map group
    (names relative to the group, e.g. ``"<sha1>/r_0"``, ``"bias_atom_energy"``)."""

    def __init__(self, path: Path, mode: str, type_map: Sequence[str],
                 settings: Mapping[str, Any], descriptor_type: str) -> None:
        self.path = Path(path)
        self.mode = mode
        self.type_map = list(type_map)
        self.group = " ".join(self.type_map)
        self.settings = {**settings, "descriptor": descriptor_type}
        self.hash = settings_hash(settings)
        self.hdf5 = is_hdf5(self.path)
        self.items: dict[str, np.ndarray] = {}
        self._where = f"training.stat_file {self.path}"
        if self.path.exists():
            self._read()
        elif mode == "read":
            raise ValueError(f"{self._where}: does not exist (stat_file_mode 'read' only reads "
                             "an existing file)")

    # === reading =============================================================================
    def _read(self) -> None:
        group: dict[str, Any] | None = None
        if self.hdf5:
            import h5py

            try:
                with h5py.File(self.path, "r") as f:
                    groups = sorted(k for k, v in f.items() if isinstance(v, h5py.Group))
                    if self.group in groups:
                        group = _h5_tree(f[self.group])
            except OSError as err:
                raise ValueError(f"{self._where}: not an HDF5 file ({err}); give a .h5/.hdf5 "
                                 "file or a directory") from None
        else:
            groups = sorted(c.name for c in self.path.iterdir()
                            if c.is_dir() and not c.name.startswith("."))
            if self.group in groups:
                group = _dir_tree(self.path / self.group, self._where)
        if group is None:
            if groups:
                written = ", ".join(json.dumps(g.split(" ")) for g in groups)
                raise ValueError(f"{self._where}: written for type_map {written}, not the "
                                 f"input's {json.dumps(self.type_map)}; give another stat_file "
                                 "or remove it")
            return
        descriptors = sorted(k for k, v in group.items() if isinstance(v, dict))
        if descriptors and self.hash not in descriptors:
            raise ValueError(f"{self._where}: its descriptor statistics are for "
                             f"{self._mismatch(group, descriptors)}; give another stat_file or "
                             "remove it")
        self.items = {name: v for name, v in group.items() if not isinstance(v, dict)}
        self.items.update({f"{self.hash}/{name}": v
                           for name, v in group.get(self.hash, {}).items()
                           if not isinstance(v, dict)})

    def _mismatch(self, group: Mapping[str, Any], descriptors: list[str]) -> str:
        """What the file's descriptor statistics were computed for, against the input."""
        known = _settings(group.get(SETTINGS))
        mine = self.settings
        for other in descriptors:
            theirs = known.get(other)
            if isinstance(theirs, dict):
                diffs = [f"{key} {json.dumps(theirs.get(key))} (the input has "
                         f"{json.dumps(mine[key])})" for key in ("descriptor", "rcut",
                                                                 "rcut_smth", "sel")
                         if theirs.get(key) != mine[key]]
                if diffs:
                    return ", ".join(diffs)
        return ("other descriptor settings (rcut, rcut_smth, sel or descriptor type; the input "
                f"has rcut {mine['rcut']}, rcut_smth {mine['rcut_smth']}, sel {mine['nsel']}, "
                f"{mine['descriptor']})")

    def _item(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if name not in self.items:
            return None
        value = np.asarray(self.items[name])
        if value.shape != shape:
            raise ValueError(f"{self._where}: '{self.group}/{name}' has shape "
                             f"{tuple(value.shape)}, the model needs {shape}; give another "
                             "stat_file or remove it")
        return value.astype(np.float64)

    def stored(self, ntypes: int, numb_fparam: int, numb_aparam: int) -> dict[str, Any]:
        """The parts the file holds, in the form of ``apply_statistics(stored=...)``.
        In ``read`` mode every part the model needs must be there."""
        parts: dict[str, Any] = {}
        rows = [self._item(f"{self.hash}/{c}_{t}", (3,)) for t in range(ntypes) for c in "ra"]
        if all(r is not None for r in rows):
            parts["descriptor"] = np.stack(rows).reshape(ntypes, 2, 3)
        for key, width in (("fparam", numb_fparam), ("aparam", numb_aparam)):
            value = self._item(key, (width, 3)) if width else None
            if value is not None:
                parts[key] = value
        bias, std = (self._item(name, (ntypes, 1)) for name in _ENERGY)
        if bias is not None and std is not None:
            parts["energy"] = (bias[:, 0], std[:, 0])
        if self.mode == "read":
            needed = ["descriptor", "energy"] + [k for k, w in (("fparam", numb_fparam),
                                                                ("aparam", numb_aparam)) if w]
            missing = [k for k in needed if k not in parts]
            if missing:
                raise ValueError(f"{self._where}: has no {', '.join(missing)} statistics for "
                                 f"type_map {json.dumps(self.type_map)} (stat_file_mode 'read' "
                                 "does not compute them)")
        return parts

    # === writing =============================================================================
    def write(self, computed: Mapping[str, Any], observed_types: Sequence[int]) -> list[str]:
        """Add the ``computed`` parts (from ``apply_statistics``) to the file; returns the
        names written. Nothing is written in ``read`` mode."""
        if self.mode == "read" or not computed:
            return []
        items: dict[str, np.ndarray] = {}
        if "descriptor" in computed:
            sums = np.asarray(computed["descriptor"], dtype=np.float64)
            for t in range(sums.shape[0]):
                items[f"{self.hash}/r_{t}"] = sums[t, 0].copy()
                items[f"{self.hash}/a_{t}"] = sums[t, 1].copy()
            known = _settings(self.items.get(SETTINGS))
            items[SETTINGS] = np.array(json.dumps({**known, self.hash: self.settings}).encode(),
                                       dtype="S")
        for key in ("fparam", "aparam"):
            if key in computed:
                items[key] = np.asarray(computed[key], dtype=np.float64)
        if observed_types:
            items["observed_type"] = np.array(_by_atomic_number(
                [self.type_map[t] for t in observed_types]), dtype="S")
        if "energy" in computed:  # last: a pair DeePMD-kit reads only when complete
            bias, std = computed["energy"]
            items[_ENERGY[0]] = np.asarray(bias, dtype=np.float64).reshape(-1, 1)
            items[_ENERGY[1]] = np.asarray(std, dtype=np.float64).reshape(-1, 1)
        if self.hdf5:
            self._write_hdf5(items)
        else:
            for name, value in items.items():
                with atomic_path(self.path / self.group / name) as tmp, open(tmp, "wb") as f:
                    np.save(f, value)
        self.items.update(items)
        return list(items)

    def _write_hdf5(self, items: Mapping[str, np.ndarray]) -> None:
        import h5py

        with atomic_path(self.path) as tmp:
            if self.path.exists():
                shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "r+" if self.path.exists() else "w") as f:
                for name, value in items.items():
                    key = f"{self.group}/{name}"
                    if key in f:
                        del f[key]
                    f.create_dataset(key, data=value)


def open_stat_file(path: str | Path, mode: str, type_map: Sequence[str], descriptor: Any,
                   descriptor_type: str) -> StatFile:
    """The cache at ``path`` for a model with this ``type_map`` and ``descriptor`` (the
    built module: its rcut, rcut_smth and sel); refuses one written for other settings."""
    settings = descriptor_settings(descriptor, len(type_map))
    return StatFile(Path(path), mode, type_map, settings, descriptor_type)


# === helpers ================================================================================
def _h5_tree(obj: Any) -> Any:
    """An h5py group as nested dicts of arrays (stat files are small)."""
    if hasattr(obj, "items"):
        return {name: _h5_tree(child) for name, child in obj.items()}
    return np.asarray(obj[()])


def _dir_tree(path: Path, where: str) -> dict[str, Any]:
    """A statistics directory as nested dicts of arrays."""
    tree: dict[str, Any] = {}
    for child in sorted(path.iterdir()):
        if child.name.startswith("."):
            continue  # e.g. the temporary file of an interrupted write
        if child.is_dir():
            tree[child.name] = _dir_tree(child, where)
        else:
            try:
                tree[child.name] = np.load(child, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise ValueError(f"{where}: {child} is not a .npy array ({err}); give a "
                                 "directory written by dpa1 or DeePMD-kit") from None
    return tree


def _settings(value: Any) -> dict[str, Any]:
    """The ``dpa1_descriptor`` record (JSON bytes): {hash: settings}; {} if absent or unreadable."""
    if value is None:
        return {}
    raw = np.asarray(value).item()
    try:
        known = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return {}
    return known if isinstance(known, dict) else {}


def _by_atomic_number(symbols: list[str]) -> list[str]:
    """``symbols`` sorted by atomic number, unknown names last (DeePMD's sort_element_type)."""
    from dpa1.model.econf import CONFIGURATIONS

    order = {s: z for z, s in enumerate(CONFIGURATIONS)}
    return sorted(symbols, key=lambda s: order.get(s, len(order)))
