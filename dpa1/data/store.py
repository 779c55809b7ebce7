"""Where the files of a system live: a ``deepmd/npy`` directory or a group of an HDF5 file.

DeePMD-kit opens both through one path type (``DPPath``): a directory is read from disk;
a regular file is an HDF5 file, read at its root, and ``file.h5#/group`` names a group in
it. Inside HDF5 the layout is that of a directory, groups for directories and datasets
for files, with the same names (``type.raw``, ``type_map.raw``, ``nopbc``,
``set.000/coord.npy``, ...), as dpdata's ``deepmd/hdf5`` and ``deepmd/hdf5/mixed``
writers produce it.

:class:`SystemStore` is what :class:`dpa1.data.system.DeepmdSystem` reads a system
through, whichever the backend: the atom types, the type map, the ``nopbc`` marker, the
``set.*`` names and their arrays (:class:`StoredArray`, read by rows on demand). It also
names every member for error messages: ``root/set.000/coord.npy`` or
``file.h5#/group/set.000/coord.npy``. :func:`open_store` picks the backend the way
DeePMD-kit does; :func:`find_systems` finds the systems below a directory or a group.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from dpa1.data.errors import DataError

__all__ = [
    "DirStore",
    "NpyArray",
    "StoredArray",
    "SystemStore",
    "find_systems",
    "is_hdf5_path",
    "open_store",
]


# === one array ==========================================================================
class StoredArray:
    """One ``set.*/<key>.npy`` (a file or a dataset): shape known at once, rows read on demand.

    ``nframes``/``width`` describe it as a ``(nframes, width)`` table once :meth:`layout`
    has been called; a file of one frame may drop the frame axis, a per-frame scalar may
    be ``(nframes,)``. Subclasses read a run of consecutive rows (:meth:`_read_run`) and
    the whole array (:meth:`_read_all`).

    Attributes:
        path: the member's name for messages (file path or ``file.h5#/group/...``).
        shape, dtype: as stored.
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = path
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        if not (np.issubdtype(self.dtype, np.number) or self.dtype == np.bool_):
            raise DataError(f"{path}: holds {self.dtype} values, expected numbers")
        self.nframes = 0
        self.width = 0

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def layout(self, width: int | None, set_nframes: int | None) -> None:
        """Decide ``(nframes, width)`` given the expected width (None = free) and, once
        known, the frame count of the set (a 1-D array is then one frame or one column)."""
        shape = self.shape
        if len(shape) == 0:
            self.nframes, self.width = 1, 1
        elif len(shape) == 1:
            n = shape[0]
            if width == 1 or (width is None and set_nframes not in (None, 1)):
                self.nframes, self.width = n, 1  # (nframes,): one value per frame
            else:
                self.nframes, self.width = 1, n  # one frame, frame axis dropped
        else:
            self.nframes, self.width = shape[0], int(np.prod(shape[1:]))

    def rows(self, local: np.ndarray) -> np.ndarray:
        """Rows ``local`` (any order, repeats allowed) as ``(n, width)``; only these are read."""
        if self.ndim == 0 or (self.ndim == 1 and self.nframes == 1):  # one tiny frame
            return self._read_all().reshape(1, -1)[local]
        uniq, inverse = np.unique(local, return_inverse=True)
        out = np.empty((uniq.size, self.width), dtype=self.dtype)
        # consecutive frames are read in one go (sequential scans read whole chunks)
        starts = np.flatnonzero(np.diff(uniq, prepend=-2) != 1)
        ends = np.append(starts[1:], uniq.size)
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            self._read_run(int(uniq[a]), out[a:b])
        return out[inverse.reshape(-1)]

    def chunks(self, nframes_per_chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_frame, rows)`` of consecutive frames, in order."""
        for a in range(0, self.nframes, nframes_per_chunk):
            yield a, self.rows(np.arange(a, min(self.nframes, a + nframes_per_chunk)))

    def _read_all(self) -> np.ndarray:
        raise NotImplementedError

    def _read_run(self, first: int, out: np.ndarray) -> None:
        """Fill ``out (n, width)`` with rows ``first .. first + n - 1``."""
        raise NotImplementedError


_NPY_MAGIC = b"\x93NUMPY"


class NpyArray(StoredArray):
    """A ``.npy`` file: header read at once, rows read on demand.

    The file is memory-mapped (``np.load(mmap_mode="r")``: the header is parsed, no data
    are read), but rows are fetched with positional reads of just their bytes. Reading
    through the mapping would leave every page a random batch touched resident in this
    process, so the resident set would grow towards the file size over a training run;
    positional reads keep it at the size of the batch.
    """

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
        if magic != _NPY_MAGIC:
            # np.load would try the file as a pickle and suggest loading it unsafely
            raise DataError(f"{path}: not a NumPy array file (.npy written by numpy.save)")
        try:
            self.mm = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as err:  # corrupt header, object arrays, truncated data
            first = str(err).strip().splitlines()[:1]
            raise DataError(f"{path}: cannot read as a NumPy array ({''.join(first)})") from None
        super().__init__(str(path), self.mm.shape, self.mm.dtype)
        self.file = path

    def rows(self, local: np.ndarray) -> np.ndarray:
        mm = self.mm
        if mm.ndim > 1 and not mm.flags.c_contiguous:
            # Fortran order: the rows are scattered over the file
            return np.asarray(mm[local]).reshape(len(local), self.width)
        return super().rows(local)

    def _read_all(self) -> np.ndarray:
        return np.asarray(self.mm)

    def _read_run(self, first: int, out: np.ndarray) -> None:
        row_bytes = self.width * self.dtype.itemsize
        with open(self.file, "rb", buffering=0) as fh:
            fh.seek(self.mm.offset + first * row_bytes)
            view = memoryview(out).cast("B")
            if fh.readinto(view) != view.nbytes:
                raise DataError(f"{self.path}: file is shorter than its header says")


# === one system =========================================================================
class SystemStore:
    """The members of one system, whatever holds them.

    Attributes:
        where: the system's name for messages (its directory, or ``file.h5#/group``).
    """

    where: str
    sets_are: str = "directories"  # what the sets are, for messages

    def member(self, *parts: str) -> str:
        """The name of ``parts`` (e.g. ``"set.000", "coord.npy"``) inside the system."""
        raise NotImplementedError

    def has_marker(self, name: str) -> bool:
        """Whether the (empty) marker file ``name`` (``nopbc``) exists."""
        raise NotImplementedError

    def read_types(self) -> np.ndarray:
        """``type.raw``: ``(natoms,)`` int64 type indices."""
        raise NotImplementedError

    def read_type_map(self) -> list[str] | None:
        """``type_map.raw``: element names, None if absent."""
        raise NotImplementedError

    def set_names(self) -> list[str]:
        """The ``set.*`` members that are directories (groups), sorted."""
        raise NotImplementedError

    def array_names(self, set_name: str) -> list[str]:
        """The stems of the ``*.npy`` members of a set, in name order."""
        raise NotImplementedError

    def open_array(self, set_name: str, stem: str) -> StoredArray:
        """``set_name/<stem>.npy`` opened (shape and type read, no values)."""
        raise NotImplementedError


class DirStore(SystemStore):
    """A ``deepmd/npy`` system directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def member(self, *parts: str) -> str:
        return str(self.root.joinpath(*parts))

    def has_marker(self, name: str) -> bool:
        return (self.root / name).exists()

    def read_types(self) -> np.ndarray:
        path = self.root / "type.raw"
        if not path.is_file():
            raise DataError(f"{path}: missing; a system directory needs type.raw (one type "
                            "index per atom)")
        return parse_types(path.read_text().split(), str(path))

    def read_type_map(self) -> list[str] | None:
        path = self.root / "type_map.raw"
        if not path.is_file():
            return None
        return check_type_map(path.read_text().split(), str(path))

    def set_names(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("set.*") if p.is_dir())

    def array_names(self, set_name: str) -> list[str]:
        return [f.stem for f in sorted((self.root / set_name).glob("*.npy"))]

    def open_array(self, set_name: str, stem: str) -> StoredArray:
        return NpyArray(self.root / set_name / f"{stem}.npy")


# --- shared checks of type.raw / type_map.raw --------------------------------------------
def parse_types(words: Sequence[str], where: str) -> np.ndarray:
    """``type.raw`` words → ``(natoms,)`` int64, with one-line errors naming ``where``."""
    if not words:
        raise DataError(f"{where}: empty; expected one type index per atom")
    try:
        return np.array([int(w) for w in words], dtype=np.int64)
    except ValueError:
        bad = next(w for w in words if not _is_int(w))
        raise DataError(f"{where}: {bad!r} is not an integer type index") from None


def _is_int(word: str) -> bool:
    try:
        int(word)
        return True
    except ValueError:
        return False


def check_type_map(names: list[str], where: str) -> list[str]:
    if not names:
        raise DataError(f"{where}: empty; expected one element name per data type")
    if len(set(names)) != len(names):
        raise DataError(f"{where}: repeated element names {names}")
    return names


# === choosing the backend and finding systems ============================================
def split_hdf5_path(path: str | os.PathLike) -> tuple[str, str]:
    """``"file.h5#/a/b"`` → ``("file.h5", "/a/b")``; no ``#`` → the root group ``"/"``."""
    file, _, group = os.fspath(path).partition("#")
    return file, "/" + group.strip("/")


def is_hdf5_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an HDF5 system (or systems), as DeePMD-kit decides: not a
    directory, and the part before ``#`` is a regular file."""
    s = os.fspath(path)
    return not os.path.isdir(s) and os.path.isfile(split_hdf5_path(s)[0])


def open_store(path: str | os.PathLike) -> SystemStore:
    """The store of the system at ``path`` (a directory, ``file.h5`` or ``file.h5#/group``).

    Raises:
        DataError: nothing there, not an HDF5 file, or no such group.
    """
    s = os.fspath(path)
    if os.path.isdir(s):
        return DirStore(Path(s))
    if is_hdf5_path(s):
        from dpa1.data.hdf5 import H5Store

        return H5Store(*split_hdf5_path(s))
    if "#" in s:
        raise DataError(f"system not found: HDF5 file {split_hdf5_path(s)[0]} does not exist "
                        f"(system path {s})")
    raise DataError(f"system not found: {s} is not a directory")


def find_systems(entry: str, patterns: Sequence[str] | None = None) -> list[str]:
    """The systems at or below an existing directory, HDF5 file or HDF5 group, sorted.

    A system is a directory (group) holding ``type.raw``; with ``patterns`` only those
    below ``entry`` whose relative path matches a pattern (as ``Path.rglob``) are kept.
    Directories are searched recursively, HDF5 groups one level down (as DeePMD-kit).
    """
    if is_hdf5_path(entry):
        from dpa1.data.hdf5 import find_hdf5_systems

        return find_hdf5_systems(*split_hdf5_path(entry), patterns)
    root = Path(entry)
    if patterns is None:
        hits = [p.parent for p in root.rglob("type.raw")]
        if (root / "type.raw").is_file():
            hits.append(root)
    else:
        hits = [d for pat in patterns for d in root.rglob(pat) if (d / "type.raw").is_file()]
    return sorted({str(h) for h in hits})
