"""Model deviation of an ensemble of models, as ``dp model-devi`` computes and writes it.

The formulas and the ``model_devi.out`` layout copy DeePMD-kit 3.2.0
(``deepmd/infer/model_devi.py``) so that files from either code are interchangeable
(DP-GEN and similar tools parse them by column):

- force: ``σ_F,i = ‖std_models(F_i)‖`` = sqrt(mean over models of ``|F_i − F̄_i|²``), then
  max / min / mean over atoms;
- virial: the virial divided by ``natoms``, its standard deviation over models per
  component, then max / min over the 9 components and ``‖σ_V‖ / 3`` as "avg";
- energy: the standard deviation over models of the energy per atom (``devi_e``).

Standard deviations are population ones (``ddof=0``), like ``numpy.std``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np

from dpa1.io.atomic import atomic_path

ModelLike = Union[str, os.PathLike, "DeepPot"]  # noqa: F821 (resolved lazily)

#: column names of ``model_devi.out`` after ``step``, in DeePMD-kit's order
COLUMNS = ("max_devi_v", "min_devi_v", "avg_devi_v", "max_devi_f", "min_devi_f", "avg_devi_f",
           "devi_e")


# === the statistics =========================================================================
def calc_model_devi_f(
    fs: np.ndarray, relative: float | None = None, atomic: bool = False
) -> tuple[np.ndarray, ...]:
    """Force deviation.

    Args:
        fs: ``(nmodels, nf, natoms, 3)`` forces.
        relative: if given, divide each atom's deviation by ``|F̄_i| + relative``
            (DeePMD-kit's relative model deviation, eq. 71 of the DeePMD-kit v2 paper).
        atomic: also return the per-atom deviations.

    Returns:
        ``max (nf,)``, ``min (nf,)``, ``avg (nf,)`` [, ``per_atom (nf, natoms)``].
    """
    fs = np.asarray(fs, dtype=np.float64)
    fs_devi = np.linalg.norm(np.std(fs, axis=0), axis=-1)
    if relative is not None:
        fs_devi = fs_devi / (np.linalg.norm(np.mean(fs, axis=0), axis=-1) + relative)
    out = (fs_devi.max(axis=-1), fs_devi.min(axis=-1), fs_devi.mean(axis=-1))
    return out + (fs_devi,) if atomic else out


def calc_model_devi_v(
    vs: np.ndarray, relative: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Virial deviation of ``vs (nmodels, nf, 9)`` (already divided by natoms, as in DeePMD-kit).

    Returns ``max``, ``min`` over the 9 components and ``avg = ‖σ‖ / 3``, each ``(nf,)``.
    """
    vs = np.asarray(vs, dtype=np.float64)
    vs_devi = np.std(vs, axis=0)
    if relative is not None:
        vs_devi = vs_devi / (np.linalg.norm(np.mean(vs, axis=0), axis=-1, keepdims=True) + relative)
    return vs_devi.max(axis=-1), vs_devi.min(axis=-1), np.linalg.norm(vs_devi, axis=-1) / 3


def calc_model_devi_e(es: np.ndarray) -> np.ndarray:
    """Energy deviation of ``es (nmodels, nf, 1)`` (energy per atom): ``(nf,)``."""
    return np.std(np.asarray(es, dtype=np.float64), axis=0).reshape(-1)


def devi_from_predictions(
    energies: np.ndarray, forces: np.ndarray, virials: np.ndarray, natoms: int,
    steps: np.ndarray | None = None, relative: float | None = None,
    relative_v: float | None = None, atomic: bool = False,
) -> np.ndarray:
    """The ``model_devi.out`` table from the ensemble's raw predictions.

    Args:
        energies: ``(nmodels, nf, 1)`` total energies; forces ``(nmodels, nf, natoms, 3)``;
            virials ``(nmodels, nf, 9)``.
        steps: the first column (default ``0..nf-1``).

    Returns:
        ``(nf, 8)`` (``(nf, 8 + natoms)`` with ``atomic``): step, then :data:`COLUMNS`.
    """
    energies = np.asarray(energies, dtype=np.float64)
    nf = energies.shape[1]
    steps = np.arange(nf) if steps is None else np.asarray(steps)
    cols = [steps.astype(np.float64)]
    cols += list(calc_model_devi_v(np.asarray(virials) / natoms, relative=relative_v))
    devi_f = calc_model_devi_f(forces, relative=relative, atomic=atomic)
    cols += list(devi_f[:3])
    cols.append(calc_model_devi_e(energies / natoms))
    table = np.vstack(cols).T
    if atomic:
        table = np.concatenate([table, devi_f[3]], axis=1)
    return table


# === evaluation =============================================================================
def _as_deep_pots(models: Sequence[ModelLike], device=None) -> list:
    from dpa1.infer.deep_pot import DeepPot

    dps = [m if isinstance(m, DeepPot) else DeepPot(m, device=device) for m in models]
    if len(dps) < 2:
        raise ValueError("model deviation needs at least two models")
    tmaps = [dp.get_type_map() for dp in dps]
    if any(t != tmaps[0] for t in tmaps[1:]):
        raise ValueError(f"the models do not share one type_map: {tmaps}")
    return dps


def calc_model_devi(
    coord: np.ndarray, box: np.ndarray | None, atype: np.ndarray, models: Sequence[ModelLike],
    fname: str | os.PathLike | None = None, frequency: int = 1,
    fparam: np.ndarray | None = None, aparam: np.ndarray | None = None,
    atomic: bool = False, relative: float | None = None, relative_v: float | None = None,
) -> np.ndarray:
    """Evaluate every model on the frames and return the deviation table.

    Mirrors ``deepmd.infer.model_devi.calc_model_devi``: ``coord (nf, natoms*3 | natoms, 3)``,
    ``box (nf, 9)`` or None, ``atype (natoms,)`` type indices or element symbols. Row ``k``
    is labelled step ``k * frequency``. With ``fname`` the table is also written.
    """
    dps = _as_deep_pots(models)
    atype = np.asarray(atype)
    natoms = atype.shape[-1]
    preds = [dp.eval(coord, box, atype, fparam=fparam, aparam=aparam) for dp in dps]
    es, fs, vs = (np.stack([p[k] for p in preds]) for k in range(3))
    nf = es.shape[1]
    table = devi_from_predictions(es, fs, vs, natoms, steps=np.arange(nf) * frequency,
                                  relative=relative, relative_v=relative_v, atomic=atomic)
    if fname:
        write_model_devi_out(table, fname, atomic=atomic)
    return table


# === the output file ========================================================================
def format_model_devi(devi: np.ndarray, header: str = "", atomic: bool = False) -> str:
    """Text of one ``model_devi.out`` block, byte for byte as DeePMD-kit writes it.

    DeePMD-kit calls ``np.savetxt(fmt=["%12d"] + ["%19.6e"] * 7, delimiter="")`` with
    the header ``"{header}\\n{'step':10s}{'max_devi_v':19s}…{'devi_e':19s}"``, so every
    block starts with ``# {header}`` then ``# step      max_devi_v …``.
    """
    import io

    devi = np.asarray(devi, dtype=np.float64)
    if devi.ndim != 2 or devi.shape[1] < 8 or (devi.shape[1] > 8) != atomic:
        raise ValueError(f"model deviation table has shape {devi.shape}; expected (nf, 8)"
                         + (" plus one column per atom" if atomic else ""))
    head = f"{header}\n{'step':10s}"
    for item in "vf":
        head += f"{'max_devi_' + item:19s}{'min_devi_' + item:19s}{'avg_devi_' + item:19s}"
    head += f"{'devi_e':19s}"
    if atomic:
        head += f"{'atm_devi_f(N)':19s}"
    buf = io.StringIO()
    np.savetxt(buf, devi, fmt=["%12d"] + ["%19.6e"] * (devi.shape[1] - 1), delimiter="",
               header=head)
    return buf.getvalue()


def write_model_devi_out(
    devi: np.ndarray, fname: str | os.PathLike, header: str = "", atomic: bool = False,
    append: bool = False,
) -> np.ndarray:
    """Write a ``model_devi.out`` block.

    DeePMD-kit always appends (so re-running ``dp model-devi`` grows the file); we
    replace the file atomically unless ``append`` is set, and the ``dpa1 model-devi``
    command writes all systems' blocks in one go.
    """
    text = format_model_devi(devi, header=header, atomic=atomic)
    if append:
        with open(fname, "a") as f:
            f.write(text)
    else:
        with atomic_path(fname) as tmp:
            Path(tmp).write_text(text)
    return devi


# === systems ================================================================================
class Frames(NamedTuple):
    """A batch of frames with one atom count: ``coord (nf, natoms, 3)``, ``box (nf, 3, 3)``
    or None, ``atype (natoms,)`` or ``(nf, natoms)`` model type indices (−1 = virtual atom),
    optional ``fparam (nf, nfp)`` / ``aparam (nf, natoms, nap)``."""

    coord: np.ndarray
    box: np.ndarray | None
    atype: np.ndarray
    fparam: np.ndarray | None = None
    aparam: np.ndarray | None = None


def read_npy_system(
    path: str | os.PathLike, type_map: Sequence[str], dim_fparam: int = 0,
    dim_aparam: int = 0, chunk: int = 64,
) -> Iterator[Frames]:
    """Frames of a ``deepmd/npy`` or ``deepmd/hdf5`` system (standard or mixed-type),
    ``chunk`` at a time, in the atom order of the files (as ``dp model-devi``, which reads
    with ``sort_atoms=False``).

    Types are translated by name through ``type_map.raw`` to the model's ``type_map``
    (see :class:`dpa1.data.system.DeepmdSystem`); a ``nopbc`` marker means no cell.
    """
    from dpa1.data.system import DeepmdSystem, Label

    system = DeepmdSystem(path, type_map)
    labels = []
    if dim_fparam:
        labels.append(Label("fparam", dim_fparam))
    if dim_aparam:
        labels.append(Label("aparam", dim_aparam, atomic=True))
    for start in range(0, system.nframes, chunk):
        data = system.get_frames(np.arange(start, min(start + chunk, system.nframes)), labels)
        for label in labels:
            if not data[f"find_{label.key}"]:
                raise ValueError(f"{path}: the models need {label.key}, but "
                                 f"set.*/{label.key}.npy is missing")
        ap = data.get("aparam")
        yield Frames(system.to_file_order(data["coord"]), data.get("box"),
                     system.to_file_order(data["atype"]), data.get("fparam"),
                     None if ap is None else system.to_file_order(ap))


def read_ase_frames(path: str | os.PathLike, type_map: Sequence[str]) -> Iterator[Frames]:
    """Frames of any ASE-readable trajectory, grouped into runs of identical atom lists.

    LAMMPS text dumps store type numbers, not elements: type ``k`` is read as
    ``type_map[k-1]``, the convention of ``pair_style deepmd``.
    """
    from ase.io import iread
    from ase.io.formats import filetype

    lookup = {name: k for k, name in enumerate(type_map)}
    run: list = []

    def flush() -> Frames:
        first = run[0]
        unknown = sorted(set(first.get_chemical_symbols()) - set(lookup))
        if unknown:
            raise ValueError(f"{path}: element(s) {unknown} not in the model's type_map "
                             f"{list(type_map)}")
        pbc = first.pbc
        if pbc.any() and not pbc.all():
            raise ValueError(f"{path}: mixed periodicity {pbc.tolist()} is not supported")
        atype = np.array([lookup[s] for s in first.get_chemical_symbols()], dtype=np.int64)
        box = np.stack([a.cell.array for a in run]) if pbc.all() else None
        return Frames(np.stack([a.positions for a in run]), box, atype)

    def frames() -> Iterator:
        try:  # ASE raises many exception types for unreadable files: make them one line
            fmt = filetype(str(path))
            kwargs = {"specorder": list(type_map)} if fmt == "lammps-dump-text" else {}
            yield from iread(str(path), index=":", format=fmt, **kwargs)
        except Exception as err:
            raise ValueError(f"{path}: ASE cannot read it ({type(err).__name__}: {err})") from None

    for atoms in frames():
        if run and (len(atoms) != len(run[0]) or (atoms.numbers != run[0].numbers).any()
                    or (atoms.pbc != run[0].pbc).any()):
            yield flush()
            run = []
        run.append(atoms)
    if not run:
        raise ValueError(f"{path}: no frames")
    yield flush()


def _is_deepmd_data(path: str) -> bool:
    """A directory of deepmd/npy systems, or an HDF5 file or group of deepmd/hdf5 ones
    (``file.h5``, ``file.h5#/group``); anything else is read as a trajectory."""
    if os.path.isdir(path):
        return True
    from dpa1.data.store import is_hdf5_path, split_hdf5_path

    if not is_hdf5_path(path):
        return False
    import h5py

    return "#" in path or h5py.is_hdf5(split_hdf5_path(path)[0])


def make_model_devi(
    models: Sequence[ModelLike], system: str | os.PathLike, output: str | os.PathLike,
    frequency: int = 1, atomic: bool = False, relative: float | None = None,
    relative_v: float | None = None, device=None,
) -> list[np.ndarray]:
    """``dp model-devi``: deviation tables of every system under ``system`` (a deepmd/npy
    system or a directory of them, an HDF5 file of deepmd/hdf5 systems or a group in one)
    or of an ASE-readable trajectory file, written to
    ``output`` as one block per system headed by its path.

    Steps are numbered ``0, frequency, 2·frequency, …`` over all frames of a system.
    """
    dps = _as_deep_pots(models, device=device)
    first = dps[0]
    tmap = first.get_type_map()
    system = os.fspath(system)
    if not _is_deepmd_data(system) and not Path(system).exists():
        raise FileNotFoundError(f"{system}: no such system or trajectory")
    if _is_deepmd_data(system):
        from dpa1.data.system import expand_systems

        paths = expand_systems(system)  # the directory/group itself and/or systems below it
        sources = [(str(p), read_npy_system(p, tmap, first.get_dim_fparam(),
                                            first.get_dim_aparam())) for p in paths]
    else:
        if first.get_dim_fparam() or first.get_dim_aparam():
            raise ValueError("models with fparam/aparam need a deepmd/npy system, not a trajectory")
        sources = [(str(system), read_ase_frames(system, tmap))]

    tables, text = [], []
    for name, frames in sources:
        blocks = []
        done = 0
        for fr in frames:
            natoms = fr.atype.shape[-1]
            with contextlib.ExitStack() as stack:
                for dp in dps:
                    stack.enter_context(dp.naming(name, done))
                preds = [dp.eval(fr.coord, fr.box, fr.atype, fparam=fr.fparam, aparam=fr.aparam)
                         for dp in dps]
            done += fr.coord.shape[0]
            es, fs, vs = (np.stack([p[k] for p in preds]) for k in range(3))
            blocks.append(devi_from_predictions(es, fs, vs, natoms, relative=relative,
                                                relative_v=relative_v, atomic=atomic))
        if atomic and len({b.shape[1] for b in blocks}) > 1:
            raise ValueError(f"{name}: --atomic needs the same number of atoms in every frame")
        table = np.vstack(blocks)
        table[:, 0] = np.arange(table.shape[0]) * frequency
        tables.append(table)
        text.append(format_model_devi(table, header=name, atomic=atomic))
    with atomic_path(output) as tmp:
        Path(tmp).write_text("".join(text))
    return tables


__all__ = ["COLUMNS", "calc_model_devi", "calc_model_devi_e", "calc_model_devi_f",
           "calc_model_devi_v", "devi_from_predictions", "format_model_devi", "make_model_devi",
           "write_model_devi_out", "read_npy_system", "read_ase_frames"]
