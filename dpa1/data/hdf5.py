"""Systems stored in HDF5 files (DeePMD-kit's ``deepmd/hdf5`` layout, as dpdata writes it).

A system is a group holding the dataset ``type.raw`` (integer types), optionally
``type_map.raw`` (byte strings) and ``nopbc`` (a marker: its presence counts, as in
DeePMD-kit), and ``set.*`` groups of ``<key>.npy`` datasets with the frame on the first
axis. ``file.h5`` means the systems at the root of the file and in its top-level groups;
``file.h5#/path`` the group ``/path`` and its child groups (DeePMD-kit searches no
deeper).

Nothing is loaded when a system is opened beyond ``type.raw``/``type_map.raw`` and the
dataset shapes; rows are read by slices of consecutive frames. Each process opens a file
once, read-only, shared by the systems in it, and reopens it after a fork (HDF5 handles
must not cross processes); the file is closed when the last system using it is gone.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from dpa1.data.errors import DataError
from dpa1.data.store import StoredArray, SystemStore, check_type_map, parse_types

__all__ = ["H5Array", "H5Store", "find_hdf5_systems"]


class _H5File:
    """One HDF5 file opened read-only, once per process, its datasets looked up once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pid: int | None = None
        self._file: Any = None
        self._datasets: dict[str, Any] = {}

    def get(self) -> Any:
        """The open ``h5py.File`` of this process."""
        if self._file is None or self._pid != os.getpid():
            self._file = _open_h5(self.path)
            self._pid = os.getpid()
            self._datasets = {}
        return self._file

    def dataset(self, name: str) -> Any:
        f = self.get()
        ds = self._datasets.get(name)
        if ds is None:
            ds = self._datasets[name] = f[name]
        return ds

    def __getstate__(self) -> dict[str, Any]:  # pickled without the handle
        return {"path": self.path, "_pid": None, "_file": None, "_datasets": {}}


# files shared by the systems open in this process, closed with the last of them
_FILES: weakref.WeakValueDictionary[str, _H5File] = weakref.WeakValueDictionary()


def _shared_file(path: str) -> _H5File:
    key = os.path.realpath(path)
    handle = _FILES.get(key)
    if handle is None:
        handle = _FILES[key] = _H5File(path)
    return handle


def _open_h5(path: str) -> Any:
    import h5py

    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: neither a directory nor an HDF5 file; a system is a "
                        "deepmd/npy directory, file.h5 or file.h5#/group")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: cannot open the HDF5 file ({err})") from None


def _group(f: Any, file: str, group: str) -> Any:
    """``f[group]``, which must be a group."""
    import h5py

    if group not in f:
        raise DataError(f"{file}: no group {group} in the HDF5 file (system path "
                        f"{file}#{group})")
    obj = f[group]
    if not isinstance(obj, h5py.Group):
        raise DataError(f"{file}#{group}: a dataset, not a group; a system is an HDF5 group "
                        "containing type.raw")
    return obj


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.ravel(values)]


class H5Array(StoredArray):
    """A dataset ``set.*/<key>.npy``: shape read at once, rows read by slices."""

    def __init__(self, handle: _H5File, name: str, where: str) -> None:
        ds = handle.dataset(name)
        super().__init__(where, ds.shape, ds.dtype)
        self._handle, self._name = handle, name

    def _read_all(self) -> np.ndarray:
        return np.asarray(self._handle.dataset(self._name)[()])

    def _read_run(self, first: int, out: np.ndarray) -> None:
        data = self._handle.dataset(self._name)[first : first + out.shape[0]]
        if data.shape[0] != out.shape[0]:
            raise DataError(f"{self.path}: frame {first + data.shape[0]} out of range")
        out[...] = data.reshape(out.shape)


class H5Store(SystemStore):
    """The system in group ``group`` of the HDF5 file ``file``."""

    sets_are = "groups"

    def __init__(self, file: str, group: str = "/") -> None:
        self.file, self.group = file, group
        self.where = f"{file}#{group}"
        self._handle = _shared_file(file)
        _group(self._handle.get(), file, group)  # it exists and is a group

    @property
    def _g(self) -> Any:
        """The group, in this process's handle of the file."""
        return self._handle.get()[self.group]

    def _name(self, *parts: str) -> str:
        return "/".join([self.group.rstrip("/"), *parts])

    def member(self, *parts: str) -> str:
        return f"{self.file}#{self._name(*parts)}"

    def _dataset(self, name: str) -> Any:
        import h5py

        obj = self._g.get(name)
        return obj if isinstance(obj, h5py.Dataset) else None

    def has_marker(self, name: str) -> bool:
        return self._dataset(name) is not None

    def read_types(self) -> np.ndarray:
        ds = self._dataset("type.raw")
        where = self.member("type.raw")
        if ds is None:
            raise DataError(f"{where}: missing; a system group needs the dataset type.raw "
                            "(one type index per atom)")
        values = np.ravel(ds[()])
        if values.dtype.kind in "SUO":  # text stored as strings: parse as type.raw is
            return parse_types(" ".join(_decode(values)).split(), where)
        if values.size == 0:
            raise DataError(f"{where}: empty; expected one type index per atom")
        if values.dtype.kind not in "iub" and not np.array_equal(values, np.round(values)):
            raise DataError(f"{where}: holds non-integer values, expected type indices")
        return values.astype(np.int64)

    def read_type_map(self) -> list[str] | None:
        ds = self._dataset("type_map.raw")
        if ds is None:
            return None
        return check_type_map(_decode(ds[()]), self.member("type_map.raw"))

    def set_names(self) -> list[str]:
        import h5py

        return sorted(k for k, v in self._g.items()
                      if k.startswith("set.") and isinstance(v, h5py.Group))

    def array_names(self, set_name: str) -> list[str]:
        import h5py

        group = self._g[set_name]
        return [k[: -len(".npy")] for k in sorted(group)
                if k.endswith(".npy") and isinstance(group[k], h5py.Dataset)]

    def open_array(self, set_name: str, stem: str) -> StoredArray:
        name = self._name(set_name, f"{stem}.npy")
        return H5Array(self._handle, name, f"{self.file}#{name}")


def find_hdf5_systems(
    file: str, group: str = "/", patterns: Sequence[str] | None = None
) -> list[str]:
    """``file#/path`` of the systems in ``group``, sorted: the group itself and its child
    groups, when they hold a ``type.raw`` dataset (with ``patterns``: the children whose
    name matches one of them).

    DeePMD-kit 3.2.0 looks no deeper than the children (its HDF5 ``rglob`` matches one
    level), so neither does this search, and an input names the same systems in both
    programs; systems further down are named in a warning, to be listed as
    ``file#/their/path``.
    """
    import h5py

    def is_system(obj: Any) -> bool:
        return isinstance(obj, h5py.Group) and isinstance(obj.get("type.raw"), h5py.Dataset)

    with _open_h5(file) as f:
        top = _group(f, file, group)
        hits: list[str] = []
        deeper: list[str] = []

        def visit(name: str, obj: Any) -> None:
            if not is_system(obj):
                return
            if "/" in name:
                deeper.append(obj.name)
            elif patterns is None or any(PurePosixPath(name).match(p) for p in patterns):
                hits.append(obj.name)

        top.visititems(visit)
        if patterns is None and is_system(top):
            hits.append(top.name)
    if deeper:
        warnings.warn(
            f"{file}#{group}: {len(deeper)} system group(s) more than one level down are not "
            f"searched, as in DeePMD-kit (first: {deeper[0]}); list them as "
            f"{file}#{deeper[0]} to use them", stacklevel=3)
    return sorted({f"{file}#{h}" for h in hits})
