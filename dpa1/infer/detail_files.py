"""The per-frame files of ``dp test -d PREFIX``, byte-compatible with DeePMD-kit 3.2.0.

``PREFIX.e.out``, ``.e_peratom.out`` (per frame), ``.f.out`` (per atom, in the order of
the files), ``.v.out``, ``.v_peratom.out`` (per frame; label zeros without virial.npy)
and ``.s.out`` (stress ``−virial / volume``, periodic systems with virials only): label
columns then prediction columns, ``np.savetxt``'s ``%.18e``. As in ``dp test``, several
systems go one after another into the same files and only the first system written to
a file names itself in its ``# header``; the names come from ``Path.with_suffix``, so a
suffix of PREFIX is replaced (``-d out/run.1`` writes ``out/run.e.out``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dpa1.infer.evaluate import DetailBlock
from dpa1.io.atomic import atomic_path, check_output_path

_V = "data_vxx data_vxy data_vxz data_vyx data_vyy data_vyz data_vzx data_vzy data_vzz"
_S = "data_sxx data_sxy data_sxz data_syx data_syy data_syz data_szx data_szy data_szz"
_HEADS = {
    "e": ": data_e pred_e",
    "e_peratom": ": data_e pred_e",
    "f": ": data_fx data_fy data_fz pred_fx pred_fy pred_fz",
    "v": f": {_V} {_V.replace('data_', 'pred_')}",
    "v_peratom": f": {_V} {_V.replace('data_', 'pred_')}",
    "s": f" (eV/Å³): {_S} {_S.replace('data_', 'pred_')}",
}
# rows of each file from one system's block (None: the system writes nothing there)
_ROWS: dict[str, Callable[[DetailBlock], np.ndarray | None]] = {
    "e": lambda b: b.energy,
    "e_peratom": lambda b: b.energy / b.natoms,
    "f": lambda b: b.force,
    "v": lambda b: b.virial,
    "v_peratom": lambda b: b.virial / b.natoms,
    "s": lambda b: b.stress,
}


def detail_paths(prefix: str | os.PathLike) -> dict[str, Path]:
    """``{"e": PREFIX.e.out, ...}``: every file ``-d PREFIX`` may write."""
    base = Path(prefix)
    try:
        return {key: base.with_suffix(f".{key}.out") for key in _HEADS}
    except ValueError:  # "." or "/": no file name to put a suffix on
        raise ValueError(f"--detail-file {prefix}: not a file prefix (give e.g. "
                         "results/detail)") from None


def check_detail_prefix(prefix: str | os.PathLike) -> None:
    """Refuse a prefix whose files cannot be written, before the evaluation starts."""
    for path in detail_paths(prefix).values():
        check_output_path(path, "--detail-file")


def write_detail_files(prefix: str | os.PathLike, blocks: Sequence[DetailBlock]) -> list[Path]:
    """Write the files of ``blocks`` (one per system, in test order), each atomically.

    A file no block has rows for (``.s.out`` without virials) is not written. Returns the
    written paths.
    """
    written = []
    for key, path in detail_paths(prefix).items():
        parts = [(b.system, rows) for b in blocks if (rows := _ROWS[key](b)) is not None]
        if not parts:
            continue
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for i, (system, rows) in enumerate(parts):
                np.savetxt(f, rows, header=f"{system}{_HEADS[key]}" if i == 0 else "")
        written.append(path)
    return written
