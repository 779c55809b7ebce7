"""Convert structures that ASE can read (extxyz, VASP OUTCAR, ASE db, ...) into
``deepmd/npy`` training data.

Two layouts:

- *standard*: one system directory per composition (and periodicity), named by its
  formula in type-map order, e.g. ``Cu28Ag4``; the atoms of every frame are sorted by
  type (stably) so frames of one composition share ``type.raw``.
- *mixed-type* (docs/design.md, "Mixed-type systems and virtual atoms"): one system holding every
frame, atoms sorted by type in
  every frame; frames with fewer atoms are padded at the end with virtual atoms
  (``real_atom_types = -1``, zero coordinates and forces).

Labels come from the calculator attached by ASE: the energy (the force-consistent
free energy where the file has one, as dpdata does), forces, and the virial from the
stress, ``W = −V·σ`` (the dpdata convention; ``σ = (1/V) ∂E/∂ε``, so ``W = −∂E/∂ε``).
An ``info["virial"]`` entry wins over the stress.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpa1.data.errors import DataError

__all__ = [
    "Frame", "convert", "frame_from_atoms", "read_frames", "resolve_type_map", "write_mixed",
    "write_standard", "write_system",
]

DEFAULT_SET_SIZE = 5000


@dataclass
class Frame:
    """One structure with its labels.

    Attributes:
        symbols: ``natoms`` element names; coord: ``(natoms, 3)`` Å;
        box: ``(3, 3)`` rows = lattice vectors, None without PBC;
        energy: eV; force: ``(natoms, 3)`` eV/Å; virial: ``(3, 3)`` eV (None = absent);
        source: where it came from (file and index), for messages.
    """

    symbols: list[str]
    coord: np.ndarray
    box: np.ndarray | None
    energy: float | None
    force: np.ndarray | None
    virial: np.ndarray | None
    source: str


# === reading =============================================================================
def read_frames(paths: Sequence[str | os.PathLike], fmt: str | None = None) -> list[Frame]:
    """All frames of every file, through ``ase.io.read(path, index=":")``."""
    import ase.io

    frames: list[Frame] = []
    for path in paths:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise DataError(f"input not found: {path}")
        try:
            images = ase.io.read(path, index=":", format=fmt)
        except Exception as err:  # ASE raises many types; all mean "cannot read this"
            as_fmt = f" as {fmt}" if fmt else ""
            raise DataError(f"{path}: ASE cannot read it{as_fmt} ({err})") from None
        if not isinstance(images, list):
            images = [images]
        if not images:
            raise DataError(f"{path}: no structures found")
        frames.extend(frame_from_atoms(at, f"{path}@{k}") for k, at in enumerate(images))
    return frames


def frame_from_atoms(atoms, source: str = "") -> Frame:
    """A :class:`Frame` from an ``ase.Atoms`` and its (single-point) calculator."""
    from ase.calculators.calculator import PropertyNotImplementedError

    missing = (PropertyNotImplementedError, RuntimeError, AttributeError)
    pbc = np.asarray(atoms.get_pbc())
    box = None
    if pbc.any():
        if not pbc.all():
            warnings.warn(f"{source}: partially periodic (pbc={pbc.tolist()}); written as "
                          "fully periodic", stacklevel=2)
        box = np.array(atoms.cell[:], dtype=np.float64)
        if abs(np.linalg.det(box)) < 1e-10:
            raise DataError(f"{source}: periodic but the cell has zero volume")
    energy = force = virial = None
    if atoms.calc is not None:
        try:
            energy = float(atoms.get_potential_energy(force_consistent=True))
        except missing:
            try:
                energy = float(atoms.get_potential_energy())
            except missing:
                energy = None
        try:
            force = np.array(atoms.get_forces(), dtype=np.float64)
        except missing:
            force = None
        if box is not None:
            try:
                stress = np.array(atoms.get_stress(voigt=False), dtype=np.float64)
                virial = -atoms.get_volume() * stress
            except missing:
                virial = None
    if "virial" in atoms.info:
        virial = np.array(atoms.info["virial"], dtype=np.float64).reshape(3, 3)
    return Frame(list(atoms.get_chemical_symbols()), np.array(atoms.positions, dtype=np.float64),
                 box, energy, force, virial, source)


def resolve_type_map(frames: Sequence[Frame], type_map: Sequence[str] | None = None) -> list[str]:
    """The given ``type_map`` (checked to cover every element) or the sorted elements."""
    elements = sorted({s for f in frames for s in f.symbols})
    if type_map is None:
        return elements
    missing = [e for e in elements if e not in type_map]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise DataError(f"element{plural} {', '.join(missing)} of the input not in --type-map "
                        f"[{' '.join(type_map)}]")
    return list(type_map)


# === writing =============================================================================
def write_system(
    path: str | os.PathLike,
    *,
    type_map: Sequence[str],
    atom_types: np.ndarray,
    coord: np.ndarray,
    box: np.ndarray | None,
    energy: np.ndarray | None = None,
    force: np.ndarray | None = None,
    virial: np.ndarray | None = None,
    real_atom_types: np.ndarray | None = None,
    set_size: int = DEFAULT_SET_SIZE,
) -> Path:
    """Write one ``deepmd/npy`` system (float64).

    Args:
        atom_types: ``(natoms,)`` for ``type.raw``; coord: ``(nf, natoms, 3)``;
        box: ``(nf, 3, 3)`` or None (writes ``nopbc``); energy: ``(nf,)``;
        force: ``(nf, natoms, 3)``; virial: ``(nf, 3, 3)``;
        real_atom_types: ``(nf, natoms)`` makes it mixed-type.
    """
    path = Path(path)
    if path.exists() and any(path.glob("set.*")):
        raise DataError(f"{path}: already holds set.* directories; remove them or choose another "
                        "output")
    path.mkdir(parents=True, exist_ok=True)
    nf = coord.shape[0]
    np.savetxt(path / "type.raw", np.asarray(atom_types, dtype=np.int64), fmt="%d")
    (path / "type_map.raw").write_text("".join(f"{name}\n" for name in type_map))
    if box is None:
        (path / "nopbc").touch()
    arrays = {"coord": coord, "box": box, "energy": energy, "force": force, "virial": virial}
    for k, a in enumerate(range(0, nf, set_size)):
        sd = path / f"set.{k:03d}"
        sd.mkdir()
        for key, value in arrays.items():
            if value is None:
                continue
            chunk = np.asarray(value[a : a + set_size], dtype=np.float64)
            if key != "energy":  # (nframes, width) rows; the energy stays (nframes,)
                chunk = chunk.reshape(chunk.shape[0], -1)
            np.save(sd / f"{key}.npy", chunk)
        if real_atom_types is not None:
            types = np.asarray(real_atom_types[a : a + set_size], dtype=np.int64)
            np.save(sd / "real_atom_types.npy", types)
    return path


def write_standard(
    frames: Sequence[Frame], out_dir: str | os.PathLike, type_map: Sequence[str],
    set_size: int = DEFAULT_SET_SIZE,
) -> list[Path]:
    """One system per (composition, periodicity), atoms sorted by type in every frame."""
    groups: dict[tuple, list[tuple[Frame, np.ndarray]]] = {}
    for f in frames:
        types = np.array([type_map.index(s) for s in f.symbols], dtype=np.int64)
        order = np.argsort(types, kind="stable")
        counts = tuple(np.bincount(types, minlength=len(type_map)))
        groups.setdefault((counts, f.box is None), []).append((f, order))
    names = {}
    for counts, nopbc in groups:
        parts = zip(type_map, counts, strict=True)
        names[(counts, nopbc)] = "".join(f"{e}{n}" for e, n in parts if n)
    out = []
    for (counts, nopbc), members in groups.items():
        name = names[(counts, nopbc)]
        if nopbc and (counts, False) in groups:
            name += "-nopbc"
        types = np.repeat(np.arange(len(type_map)), counts)
        fs = [f for f, _ in members]
        orders = [o for _, o in members]
        labels = _stack_labels(fs, orders, name)
        coord = np.stack([f.coord[o] for f, o in members])
        box = None if nopbc else np.stack([f.box for f in fs])
        out.append(
            write_system(
                Path(out_dir) / name,
                type_map=type_map,
                atom_types=types,
                coord=coord,
                box=box,
                set_size=set_size,
                **labels,
            )
        )
    return out


def write_mixed(
    frames: Sequence[Frame],
    out_dir: str | os.PathLike,
    type_map: Sequence[str],
    set_size: int = DEFAULT_SET_SIZE,
) -> Path:
    """One mixed-type system: atoms sorted by type in every frame, frames padded to the
    largest atom count with virtual atoms."""
    periodic = {f.box is not None for f in frames}
    if len(periodic) > 1:
        raise DataError(
            "a mixed-type system needs all frames periodic or all non-periodic; "
            "convert the two kinds separately"
        )
    nmax = max(len(f.symbols) for f in frames)
    nf = len(frames)
    real = np.full((nf, nmax), -1, dtype=np.int64)
    coord = np.zeros((nf, nmax, 3))
    orders = []
    for k, f in enumerate(frames):
        n = len(f.symbols)
        types = np.array([type_map.index(s) for s in f.symbols], dtype=np.int64)
        # Sorted by type like the standard layout (and dpdata): padding neighbour slots
        # take the type of atom 0 (docs/design.md, "DeePMD-kit parity notes"), so the same frame
        # then predicts the same.
        order = np.argsort(types, kind="stable")
        real[k, :n] = types[order]
        coord[k, :n] = f.coord[order]
        orders.append(order)
    labels = _stack_labels(frames, orders, str(out_dir), pad_to=nmax)
    box = np.stack([f.box for f in frames]) if periodic == {True} else None
    placeholder = np.zeros(nmax, dtype=np.int64)  # type.raw of a mixed-type system
    return write_system(
        out_dir,
        type_map=type_map,
        atom_types=placeholder,
        coord=coord,
        box=box,
        real_atom_types=real,
        set_size=set_size,
        **labels,
    )


def _stack_labels(
    frames: Sequence[Frame], orders: Sequence[np.ndarray], name: str, pad_to: int | None = None
) -> dict[str, np.ndarray | None]:
    """energy/force/virial arrays of a group; a label must be on all frames or none."""
    out: dict[str, np.ndarray | None] = {}
    for key in ("energy", "force", "virial"):
        have = [getattr(f, key) is not None for f in frames]
        if not any(have):
            out[key] = None
            continue
        if not all(have):
            lacking = [f.source for f, h in zip(frames, have, strict=True) if not h]
            raise DataError(
                f"{name}: {len(lacking)} frames have no {key} while others do "
                f"(first: {lacking[0]}); a label must be on every frame of a system"
            )
        if key == "energy":
            out[key] = np.array([f.energy for f in frames])
        elif key == "virial":
            out[key] = np.stack([f.virial for f in frames])
        else:
            rows = []
            for f, o in zip(frames, orders, strict=True):
                r = f.force[o]
                if pad_to is not None:
                    r = np.concatenate([r, np.zeros((pad_to - r.shape[0], 3))])
                rows.append(r)
            out[key] = np.stack(rows)
    return out


def convert(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    mixed: bool = False,
    fmt: str | None = None,
    type_map: Sequence[str] | None = None,
    set_size: int = DEFAULT_SET_SIZE,
) -> list[Path]:
    """Read ``inputs`` with ASE and write ``output`` (see the module docstring).

    Returns the system directories written.
    """
    frames = read_frames(inputs, fmt)
    tmap = resolve_type_map(frames, type_map)
    if mixed:
        return [write_mixed(frames, output, tmap, set_size)]
    return write_standard(frames, output, tmap, set_size)
