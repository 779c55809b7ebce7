"""Reading DeePMD-kit systems (``deepmd/npy`` and ``deepmd/hdf5``), standard and mixed-type
(docs/design.md, "Data layout" to "Mixed-type systems and virtual atoms").

A *system* is a directory holding ``type.raw`` (one type index per atom), optionally
``type_map.raw`` and an empty ``nopbc`` file, and one or more ``set.*`` directories of
``.npy`` files whose first axis is the frame (``deepmd/npy``); or the same layout as
groups and datasets of an HDF5 file (``deepmd/hdf5``: ``file.h5``, ``file.h5#/group``),
see :mod:`dpa1.data.store`. :class:`DeepmdSystem` checks everything once when it is
opened (shapes, frame counts, types, non-finite values; the values in chunks) and then
reads only the frames it is asked for: ``.npy`` files are memory-mapped for their
headers, HDF5 datasets opened for their shapes, and rows are read on demand, so a
system of 10⁶ frames costs no more memory than one of 10³.

Atoms of a standard system are reordered by type with a stable sort, as DeePMD-kit
does (docs/design.md, "Atom order and type mapping"); ``idx_map`` keeps that permutation.
Types are translated by *name* from the data's ``type_map.raw`` to the model's ``type_map``
(docs/design.md, "Atom order and type mapping").
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpa1.data.errors import DataError
from dpa1.data.store import StoredArray, SystemStore, find_systems, open_store

__all__ = [
    "DEFAULT_LABELS",
    "LABELS",
    "DeepmdSystem",
    "Label",
    "expand_systems",
    "labels_for_model",
]

# Bytes read at a time (all files of a set together) by the open-time scan: memory stays
# flat whatever the system size.
SCAN_CHUNK_BYTES = 2 << 20


@dataclass(frozen=True)
class Label:
    """A per-frame or per-atom quantity stored as ``set.*/<key>.npy``.

    Attributes:
        key: file stem and key of the returned array.
        ndof: values per frame (``atomic=False``) or per atom (``atomic=True``);
            ``None`` = whatever the file holds (0 when the file is absent).
        atomic: one row of ``ndof`` values per atom.
        default: fill value when the file is absent (``find_<key> = 0``).
        per_atom_scalar: return ``(nf, natoms)`` instead of ``(nf, natoms, 1)``.
        high_prec: always read in float64 (the energy, docs/design.md, "Data layout").
    """

    key: str
    ndof: int | None
    atomic: bool = False
    default: float = 0.0
    per_atom_scalar: bool = False
    high_prec: bool = False


LABELS: dict[str, Label] = {
    "energy": Label("energy", 1, high_prec=True),
    "force": Label("force", 3, atomic=True),
    "virial": Label("virial", 9),
    "atom_ener": Label("atom_ener", 1, atomic=True, per_atom_scalar=True),
    "atom_pref": Label("atom_pref", 1, atomic=True, default=1.0, per_atom_scalar=True),
    "fparam": Label("fparam", None),
    "aparam": Label("aparam", None, atomic=True),
}
# What the ``ener`` loss asks for (docs/design.md, "Loss"); fparam/aparam come from the model.
DEFAULT_LABELS: tuple[str, ...] = ("energy", "force", "virial", "atom_ener", "atom_pref")
_KNOWN_FILES = frozenset(LABELS) | {"coord", "box", "real_atom_types"}

LabelRequest = str | Label


def labels_for_model(numb_fparam: int = 0, numb_aparam: int = 0) -> list[Label]:
    """The loss labels plus ``fparam``/``aparam`` with the widths the model needs."""
    out = [LABELS[k] for k in DEFAULT_LABELS]
    if numb_fparam > 0:
        out.append(Label("fparam", numb_fparam))
    if numb_aparam > 0:
        out.append(Label("aparam", numb_aparam, atomic=True))
    return out


@dataclass
class _Set:
    """The arrays of one ``set.*`` directory (group)."""

    name: str
    path: str  # for messages
    nframes: int
    files: dict[str, StoredArray]


# === the system =========================================================================
class DeepmdSystem:
    """A ``deepmd/npy`` or ``deepmd/hdf5`` system (standard or mixed-type) opened for
    random frame access.

    Args:
        path: the system directory, ``file.h5`` (a system at the root of the file) or
            ``file.h5#/group``.
        type_map: the model's element names; data types are translated to indices
            into it by name (docs/design.md, "Atom order and type mapping"). ``None`` keeps the
            data's own indices.
        check_finite: scan every array for NaN/inf when opening (chunked, flat memory).

    Attributes:
        path: the directory or HDF5 path, as given.
        natoms: atoms per frame (virtual atoms of mixed-type data included).
        nframes: frames over all sets.
        nopbc: no periodic box (``box`` absent from :meth:`get_frames`).
        mixed_type: per-frame types from ``real_atom_types.npy`` (docs/design.md,
        "Mixed-type systems and virtual atoms").
        type_map: element names the returned ``atype`` indexes (None if unknown).
        data_type_map: ``type_map.raw`` (None if absent).
        ntypes: number of types of the returned ``atype``.
        idx_map: ``(natoms,)`` atom order of the returned arrays: returned atom ``k`` is
            atom ``idx_map[k]`` of the files; undo with :meth:`to_file_order`.
        atom_types: ``(natoms,)`` returned types of a standard system (None if mixed).
        labels: label keys stored in every set.
        fparam_dim, aparam_dim: widths of fparam/aparam (0 if absent).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        type_map: Sequence[str] | None = None,
        *,
        check_finite: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        store = open_store(path)
        self._store = store
        self._root = store.where  # the system's name in messages
        self.nopbc = store.has_marker("nopbc")
        file_types = store.read_types()
        self.natoms = int(file_types.size)
        self.data_type_map = store.read_type_map()
        self.sets = self._open_sets(store)
        self.mixed_type = "real_atom_types" in self.sets[0].files
        self._check_labels_consistent()
        self.labels = sorted(k for k in self.sets[0].files if k in LABELS)
        self.fparam_dim = self._free_width("fparam")
        self.aparam_dim = self._free_width("aparam") // self.natoms
        self.nframes = int(sum(s.nframes for s in self.sets))
        if self.nframes == 0:
            raise DataError(f"{self._root}: the system has no frames (every coord.npy is "
                            "empty)")
        self._ends = np.cumsum([s.nframes for s in self.sets])

        # --- types (docs/design.md, "Atom order and type mapping") ---
        if self.mixed_type and self.data_type_map is None:
            raise DataError(
                f"{store.member('type_map.raw')}: missing; a mixed-type system "
                "(set.*/real_atom_types.npy) needs type_map.raw to name its types")
        self._lookup = self._type_lookup(type_map, file_types)
        if type_map is not None:
            self.type_map: list[str] | None = list(type_map)
        else:
            self.type_map = self.data_type_map
        self.ntypes = len(self.type_map) if self.type_map is not None else int(file_types.max()) + 1
        if self.mixed_type:
            self.atom_types: np.ndarray | None = None
            order_key = file_types  # a placeholder (all zeros): the order stays unchanged
        else:
            self._check_file_types(file_types)
            order_key = self._lookup[file_types]
        # Stable sort by type (lexsort by (type, index)), docs/design.md,
        # "Atom order and type mapping".
        self.idx_map = np.lexsort((np.arange(self.natoms), order_key))
        if not self.mixed_type:
            self.atom_types = order_key[self.idx_map].astype(np.int64)
        self._scan(check_finite)

    # --- opening -------------------------------------------------------------------
    def _open_sets(self, store: SystemStore) -> list[_Set]:
        set_names = store.set_names()
        if not set_names:
            raise DataError(f"{store.where}: no set.* {store.sets_are} (a system keeps its frames "
                            "in set.000, ...)")
        sets = []
        for name in set_names:
            files = {}
            for stem in store.array_names(name):
                key = stem
                if key.startswith("atomic_"):  # DeePMD also reads atomic_ener.npy as atom_ener
                    key = "atom_" + key[len("atomic_"):]
                if key in _KNOWN_FILES and key not in files:  # other files are not ours to judge
                    files[key] = store.open_array(name, stem)
            sets.append(self._check_set(name, store.member(name), files))
        modes = {("real_atom_types" in s.files) for s in sets}
        if len(modes) > 1:
            mixed = [s.name for s in sets if "real_atom_types" in s.files]
            raise DataError(
                f"{store.where}: only some sets ({', '.join(mixed)}) have real_atom_types.npy; a "
                "system is either mixed-type in every set or in none")
        return sets

    def _check_set(self, name: str, sd: str, files: dict[str, StoredArray]) -> _Set:
        natoms = self.natoms
        if "coord" not in files:
            raise DataError(f"{sd}/coord.npy: missing; every set needs coordinates")
        coord = files["coord"]
        coord.layout(natoms * 3, None)
        if coord.width != natoms * 3:
            raise DataError(
                f"{coord.path}: {coord.width} values per frame (shape {coord.shape}), expected "
                f"natoms*3 = {natoms * 3} (natoms = {natoms} from type.raw)")
        nframes = coord.nframes
        if not self.nopbc and "box" not in files:
            raise DataError(
                f"{sd}/box.npy: missing and the system has no 'nopbc' file; periodic data need "
                "a box per frame (add an empty file named nopbc for non-periodic data)")
        if self.nopbc:
            files.pop("box", None)  # ignored without PBC (docs/design.md, "Data layout")
        expected = {"box": 9, "real_atom_types": natoms}
        for key, spec in LABELS.items():
            if spec.ndof is not None:
                expected[key] = spec.ndof * (natoms if spec.atomic else 1)
        for key, f in files.items():
            if key == "coord":
                continue
            width = expected.get(key)
            f.layout(width, nframes)
            if width is not None and f.width != width:
                atomic = key in LABELS and LABELS[key].atomic
                what = f"natoms*{width // natoms} = " if atomic else ""
                raise DataError(
                    f"{f.path}: {f.width} values per frame (shape {f.shape}), expected "
                    f"{what}{width}")
            if key == "aparam" and f.width % natoms:
                raise DataError(
                    f"{f.path}: {f.width} values per frame, expected a multiple of "
                    f"natoms = {natoms}")
            if f.nframes != nframes:
                raise DataError(
                    f"{f.path}: {f.nframes} frames, but coord.npy of the same set has {nframes}; "
                    "every file of a set needs one row per frame")
        return _Set(name, sd, nframes, files)

    def _check_labels_consistent(self) -> None:
        """A label must be in every set: a per-set ``find`` flag would silently train
        some frames against default values."""
        for key in LABELS:
            have = [s.name for s in self.sets if key in s.files]
            if have and len(have) != len(self.sets):
                miss = [s.name for s in self.sets if key not in s.files]
                raise DataError(
                    f"{self._root}: {key}.npy is in {', '.join(have)} but not in "
                    f"{', '.join(miss)}; a label must be present in every set of a system (or "
                    "split the system)")
        for key in ("fparam", "aparam"):
            widths = {s.files[key].width for s in self.sets if key in s.files}
            if len(widths) > 1:
                raise DataError(f"{self._root}: {key}.npy has different widths "
                                f"{sorted(widths)} across sets")

    def _free_width(self, key: str) -> int:
        f = self.sets[0].files.get(key)
        return 0 if f is None else f.width

    def _type_lookup(self, type_map: Sequence[str] | None, file_types: np.ndarray) -> np.ndarray:
        """``lookup[data_type]`` = returned type (docs/design.md, "Atom order and type mapping");
        ``lookup[-1]`` = −1 (virtual)."""
        tm_data = self.data_type_map
        if type_map is not None and tm_data is not None:
            missing = [name for name in tm_data if name not in type_map]
            if missing:
                plural = "s" if len(missing) > 1 else ""
                raise DataError(
                    f"{self._store.member('type_map.raw')}: element{plural} "
                    f"{', '.join(missing)} not in the model type_map [{' '.join(type_map)}]")
            table = [list(type_map).index(name) for name in tm_data]
        else:  # no names on one side: indices pass through unchanged
            n = len(tm_data or type_map or []) or int(file_types.max()) + 1
            table = list(range(n))
        return np.array(table + [-1], dtype=np.int64)  # index −1 reads the last entry

    def _check_file_types(self, file_types: np.ndarray) -> None:
        tr = self._store.member("type.raw")
        bad = np.flatnonzero(file_types < 0)
        if bad.size:
            raise DataError(
                f"{tr}: atom {bad[0]} has type {file_types[bad[0]]}; a standard system needs types "
                ">= 0 (virtual atoms exist only in mixed-type data)")
        top = int(file_types.max())
        if self.data_type_map is not None:
            if top >= len(self.data_type_map):
                k = int(np.flatnonzero(file_types == top)[0])
                raise DataError(
                    f"{tr}: atom {k} has type {top}, outside type_map.raw "
                    f"({len(self.data_type_map)} elements: {' '.join(self.data_type_map)})")
        elif self.type_map is not None and top >= len(self.type_map):
            k = int(np.flatnonzero(file_types == top)[0])
            raise DataError(
                f"{tr}: atom {k} has type {top}, but the model type_map has only "
                f"{len(self.type_map)} types ({' '.join(self.type_map)}) and there is no "
                "type_map.raw to translate it")

    # --- the open-time scan -----------------------------------------------------------
    def _scan(self, check_finite: bool) -> None:
        """Check values chunk by chunk: NaN/inf, mixed-type indices, virtual-atom forces."""
        if not check_finite and not self.mixed_type:
            return
        ntypes_data = len(self.data_type_map) if self.data_type_map is not None else 0
        start = 0
        for s in self.sets:
            keys = [k for k in s.files if k == "real_atom_types" or check_finite]
            row_bytes = sum(s.files[k].width * s.files[k].dtype.itemsize for k in keys)
            chunk = max(1, SCAN_CHUNK_BYTES // max(1, row_bytes))
            warned = False
            readers = {k: s.files[k].chunks(chunk) for k in keys}
            for pieces in zip(*readers.values(), strict=False):
                part = dict(zip(readers.keys(), pieces, strict=True))
                for key, (a, rows) in part.items():
                    f = s.files[key]
                    if key == "real_atom_types":
                        self._check_real_types(f, a, rows, ntypes_data, start)
                    elif np.issubdtype(rows.dtype, np.floating) and not np.isfinite(rows).all():
                        bad = np.argwhere(~np.isfinite(rows))[0]
                        frame = a + int(bad[0])
                        what = "NaN" if np.isnan(rows[tuple(bad)]) else "inf"
                        raise DataError(
                            f"{f.path}: {what} in frame {frame} (frame {start + frame} of the "
                            f"system), column {int(bad[1])}; every value must be finite")
                if self.mixed_type and "force" in part and not warned:
                    a, types = part["real_atom_types"]
                    forces = part["force"][1].reshape(len(types), self.natoms, 3)
                    virt = np.asarray(types) < 0
                    if np.any(np.abs(forces[virt]) > 0):
                        frame = a + int(np.argwhere(virt & np.any(forces != 0, axis=-1))[0, 0])
                        warnings.warn(
                            f"{s.files['force'].path}: virtual atoms (real_atom_types -1) carry "
                            f"non-zero force labels (first in frame {frame}); they should be zero",
                            stacklevel=3)
                        warned = True
            start += s.nframes

    def _check_real_types(
        self, f: StoredArray, a: int, rows: np.ndarray, ntypes: int, start: int
    ) -> None:
        if np.issubdtype(rows.dtype, np.floating) and not np.array_equal(rows, np.round(rows)):
            bad = np.argwhere(rows != np.round(rows))[0]
            raise DataError(f"{f.path}: frame {a + int(bad[0])} atom {int(bad[1])} has a "
                            "non-integer type")
        bad = np.argwhere((rows < -1) | (rows >= ntypes))
        if bad.size:
            fr, at = int(bad[0, 0]), int(bad[0, 1])
            raise DataError(
                f"{f.path}: frame {a + fr} (frame {start + a + fr} of the system) atom {at} has "
                f"type {rows[fr, at]}, outside type_map.raw ({ntypes} elements: "
                f"{' '.join(self.data_type_map or [])}) and not -1 (virtual)")

    # --- frame access -------------------------------------------------------------------
    def __len__(self) -> int:
        return self.nframes

    def __repr__(self) -> str:
        kind = "mixed-type" if self.mixed_type else "standard"
        return (f"DeepmdSystem({self.path!r}, {kind}, nframes={self.nframes}, "
                f"natoms={self.natoms}, nopbc={self.nopbc}, labels={self.labels})")

    def has_label(self, key: str) -> bool:
        return key in self.labels

    def get_frames(
        self,
        idx: np.ndarray | Sequence[int],
        labels: Iterable[LabelRequest] | None = None,
        dtype: np.dtype = np.float64,
    ) -> dict[str, np.ndarray]:
        """Read frames ``idx`` (indices over all sets, in set order).

        Args:
            idx: ``(nf,)`` frame indices.
            labels: label keys (see :data:`LABELS`) or :class:`Label` specs to return;
                ``None`` = every label the system has. A requested label missing from
                the system comes back filled with its default and ``find_<key> = 0``.
            dtype: float type of coordinates and labels (the energy is always float64).

        Returns:
            ``coord (nf, natoms, 3)``, ``box (nf, 3, 3)`` (absent without PBC),
            ``atype (nf, natoms)`` int64 (−1 = virtual), ``natoms_vec (nf, 2 + ntypes)``
            int64 = ``[natoms, natoms, n_0, ...]`` counting real atoms, ``fid (nf,)``,
            and per label e.g. ``energy (nf, 1)``, ``force (nf, natoms, 3)``,
            ``virial (nf, 9)``, ``atom_ener (nf, natoms)``, ``atom_pref (nf, natoms)``,
            ``fparam (nf, nfp)``, ``aparam (nf, natoms, nap)`` with ``find_<key>``
            (1.0 present, 0.0 absent). Atoms are in the order of :attr:`idx_map`.
        """
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.nframes or idx.max() >= self.nframes):
            raise IndexError(f"{self.path}: frame index out of range [0, {self.nframes})")
        idx = np.where(idx < 0, idx + self.nframes, idx)
        nf, natoms = idx.size, self.natoms
        which = np.searchsorted(self._ends, idx, side="right")
        out: dict[str, np.ndarray] = {"fid": idx.copy()}
        coord = self._gather("coord", idx, which, dtype).reshape(nf, natoms, 3)
        out["coord"] = coord[:, self.idx_map]
        if not self.nopbc:
            out["box"] = self._gather("box", idx, which, dtype).reshape(nf, 3, 3)
        if self.mixed_type:
            raw = self._gather("real_atom_types", idx, which, np.float64)
            if raw.size and ((raw < -1).any() or (raw >= self._lookup.size - 1).any()):
                raise DataError(f"{self.path}: real_atom_types.npy holds a type outside "
                                "type_map.raw")
            atype = self._lookup[raw.astype(np.int64)][:, self.idx_map]
        else:
            atype = np.broadcast_to(self.atom_types, (nf, natoms)).copy()
        out["atype"] = atype
        counts = (atype[:, :, None] == np.arange(self.ntypes)).sum(axis=1)  # real atoms only
        out["natoms_vec"] = np.concatenate(
            [np.full((nf, 2), natoms, dtype=np.int64), counts.astype(np.int64)], axis=1)

        if labels is None:
            requests = [LABELS[k] for k in self.labels]
        else:
            requests = [_as_label(r) for r in labels]
        for spec in requests:
            out[spec.key], out["find_" + spec.key] = self._label(spec, idx, which, dtype)
        return out

    def to_file_order(self, arr: np.ndarray, axis: int = 1) -> np.ndarray:
        """Undo the type sort: per-atom outputs along ``axis`` back to the order of the files."""
        inverse = np.empty_like(self.idx_map)
        inverse[self.idx_map] = np.arange(self.natoms)
        return np.take(arr, inverse, axis=axis)

    # --- helpers ----------------------------------------------------------------------
    def _gather(self, key: str, idx: np.ndarray, which: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """``(nf, width)`` rows of ``key`` for global frames ``idx`` (``which`` = their sets)."""
        width = self.sets[0].files[key].width
        out = np.empty((idx.size, width), dtype=dtype)
        for si in np.unique(which):
            sel = np.flatnonzero(which == si)
            first = 0 if si == 0 else int(self._ends[si - 1])
            out[sel] = self.sets[si].files[key].rows(idx[sel] - first)
        return out

    def _label(self, spec: Label, idx: np.ndarray, which: np.ndarray, dtype: np.dtype):
        nf, natoms = idx.size, self.natoms
        dt = np.float64 if spec.high_prec else dtype
        present = spec.key in self.sets[0].files
        if present:
            data = self._gather(spec.key, idx, which, dt)
            ndof = data.shape[1] // natoms if spec.atomic else data.shape[1]
            if spec.ndof is not None and ndof != spec.ndof:
                raise DataError(
                    f"{self.sets[0].files[spec.key].path}: {ndof} values per "
                    f"{'atom' if spec.atomic else 'frame'}, but {spec.ndof} were requested")
        else:
            ndof = spec.ndof or 0
            data = np.full((nf, ndof * (natoms if spec.atomic else 1)), spec.default, dtype=dt)
        if spec.atomic:
            data = data.reshape(nf, natoms, ndof)[:, self.idx_map]
            if spec.per_atom_scalar:
                data = data[..., 0]
        return data, np.float64(1.0 if present else 0.0)


def _as_label(request: LabelRequest) -> Label:
    if isinstance(request, Label):
        return request
    try:
        return LABELS[request]
    except KeyError:
        raise ValueError(f"unknown label {request!r}; known: {', '.join(LABELS)} "
                         "(pass a Label for anything else)") from None


# === system lists =======================================================================
def expand_systems(
    systems: str | os.PathLike | Sequence[str | os.PathLike],
    rglob_patterns: Sequence[str] | None = None,
) -> list[str]:
    """The systems named by a ``training_data.systems`` value.

    Each entry (a single string counts as a one-entry list) is a directory, an HDF5
    file (``file.h5``) or a group in one (``file.h5#/path``). As in DeePMD-kit, a
    directory is searched recursively for directories containing ``type.raw``, itself
    included; an HDF5 group (the file's root group for ``file.h5``) is a system if it
    holds ``type.raw``, and so are its child groups that hold one (DeePMD-kit looks no
    deeper; see :func:`dpa1.data.hdf5.find_hdf5_systems`). With ``rglob_patterns`` only
    the systems below the entry whose path relative to it matches one of the patterns
    are kept. Glob characters (``*?[``) in an entry (in the file name of an HDF5 entry)
    are expanded first. The result keeps the order of the entries, sorted within each,
    without duplicates. HDF5 systems come back as ``file.h5#/group``.

    Raises:
        DataError: an entry matches nothing, an HDF5 group is missing, or no system is
            found at all.
    """
    if isinstance(systems, (str, os.PathLike)):
        systems = [systems]
    found: list[str] = []
    for entry in systems:
        entry = os.fspath(entry)
        # a directory whose name holds "#" stays a directory, as in DeePMD-kit
        file, sep, group = (entry, "", "") if os.path.isdir(entry) else entry.partition("#")
        roots = sorted(glob.glob(file)) if glob.has_magic(file) else [file]
        if not roots or not all(os.path.exists(r) for r in roots):
            raise DataError(f"system path not found: {file}"
                            + (f" (system path {entry})" if sep else ""))
        for root in roots:
            found.extend(find_systems(root + sep + group, rglob_patterns))
    result = list(dict.fromkeys(found))
    if not result:
        shown = ", ".join(os.fspath(s) for s in systems)
        raise DataError(f"no system found under {shown} (a system is a directory or an HDF5 "
                        "group containing type.raw)")
    return result


def resolve_system_paths(systems: str | Sequence[str], base: Path) -> list[str]:
    """The entries of a ``systems`` value relative to the working directory (as DeePMD-kit),
    else to ``base`` (the input file's directory), so ``dpa1 train path/to/input.json``
    works from anywhere."""
    items = [systems] if isinstance(systems, str) else list(systems)
    out = []
    for s in items:
        # an HDF5 entry "file.h5#/group" is resolved by its file name
        name, sep, group = (s, "", "") if Path(s).is_dir() else s.partition("#")
        p = Path(name)
        is_glob = any(ch in name for ch in "*?[")
        found_here = bool(list(Path().glob(name))) if is_glob else p.exists()
        if not p.is_absolute() and not found_here and (is_glob or (base / p).exists()):
            p = base / p
        out.append(str(p) + sep + group)
    return out


def read_system_list(path: str | os.PathLike) -> list[str]:
    """The systems named by a ``-f/--datafile`` file: one path per line (surrounding
    blanks and empty lines skipped), kept as written; a relative path is relative to
    the working directory, as in DeePMD-kit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a list of system directories, one "
                                "per line)")
    systems = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not systems:
        raise DataError(f"{path}: names no system (expected one directory per line)")
    return systems
