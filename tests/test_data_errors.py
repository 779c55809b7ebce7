"""Bad data are refused when opened, with a message naming the file and what was expected."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import dpa1.data.system as system_module
from dpa1.cli.main import main
from dpa1.data.errors import DataError
from dpa1.data.system import DeepmdSystem, expand_systems

NATOMS = 3


def good_set(nframes: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "coord": rng.uniform(0, 5, size=(nframes, NATOMS * 3)),
        "box": np.tile(np.eye(3).reshape(9) * 5, (nframes, 1)),
        "energy": rng.normal(size=nframes),
        "force": rng.normal(size=(nframes, NATOMS * 3)),
    }


def make(
    root: Path,
    sets: list[dict[str, np.ndarray]],
    types=(0, 1, 1),
    type_map=("O", "H"),
    nopbc: bool = False,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "type.raw").write_text(" ".join(str(t) for t in types))
    if type_map is not None:
        (root / "type_map.raw").write_text("\n".join(type_map))
    if nopbc:
        (root / "nopbc").touch()
    for k, arrays in enumerate(sets):
        (root / f"set.{k:03d}").mkdir()
        for key, value in arrays.items():
            np.save(root / f"set.{k:03d}" / f"{key}.npy", value)
    return root


def raises(match: str):
    return pytest.raises(DataError, match=re.escape(match))


def test_good_system_opens(tmp_path: Path) -> None:
    assert DeepmdSystem(make(tmp_path / "s", [good_set()]), ["O", "H"]).nframes == 4


def test_coord_rows_not_natoms_times_3(tmp_path: Path) -> None:
    s = good_set()
    s["coord"] = s["coord"][:, :8]
    path = make(tmp_path / "s", [s])
    coord = path / "set.000" / "coord.npy"
    with raises(f"{coord}: 8 values per frame (shape (4, 8)), expected natoms*3 = 9"):
        DeepmdSystem(path)


def test_box_missing_without_nopbc(tmp_path: Path) -> None:
    s = good_set()
    del s["box"]
    path = make(tmp_path / "s", [s])
    with raises(f"{path / 'set.000' / 'box.npy'}: missing and the system has no 'nopbc' file"):
        DeepmdSystem(path)
    (path / "nopbc").touch()
    assert DeepmdSystem(path).nopbc


def test_frame_counts_differ_within_a_set(tmp_path: Path) -> None:
    s = good_set()
    s["force"] = s["force"][:3]
    path = make(tmp_path / "s", [good_set(), s])
    with raises(f"{path / 'set.001' / 'force.npy'}: 3 frames, but coord.npy of the same set has 4"):
        DeepmdSystem(path)


def test_label_width_wrong(tmp_path: Path) -> None:
    s = good_set()
    s["virial"] = np.zeros((4, 6))
    path = make(tmp_path / "s", [s])
    with raises(
        f"{path / 'set.000' / 'virial.npy'}: 6 values per frame (shape (4, 6)), expected 9"
    ):
        DeepmdSystem(path)
    s["virial"] = np.zeros((4, 9))
    s["force"] = np.zeros((4, 6))
    with raises("force.npy: 6 values per frame (shape (4, 6)), expected natoms*3 = 9"):
        DeepmdSystem(make(tmp_path / "t", [s]))


def test_type_outside_type_map_raw(tmp_path: Path) -> None:
    path = make(tmp_path / "s", [good_set()], types=(0, 2, 1))
    with raises(f"{path / 'type.raw'}: atom 1 has type 2, outside type_map.raw (2 elements: O H)"):
        DeepmdSystem(path)
    path = make(tmp_path / "t", [good_set()], types=(0, 2, 1), type_map=None)
    with raises("atom 1 has type 2, but the model type_map has only 2 types (O H) and there is no"):
        DeepmdSystem(path, ["O", "H"])
    path = make(tmp_path / "u", [good_set()], types=(0, -1, 1))
    with raises("type.raw: atom 1 has type -1; a standard system needs types >= 0"):
        DeepmdSystem(path)
    (tmp_path / "u" / "type.raw").write_text("0 H 1")
    with raises("type.raw: 'H' is not an integer type index"):
        DeepmdSystem(tmp_path / "u")


def test_element_absent_from_model_type_map(tmp_path: Path) -> None:
    path = make(tmp_path / "s", [good_set()], type_map=("O", "H", "Fe"))
    with raises(f"{path / 'type_map.raw'}: element Fe not in the model type_map [O H C]"):
        DeepmdSystem(path, ["O", "H", "C"])


@pytest.mark.parametrize(
    "key,bad", [("force", np.nan), ("coord", np.inf), ("energy", -np.inf), ("box", np.nan)]
)
def test_nan_and_inf_are_found_with_their_frame(
    tmp_path: Path, monkeypatch, key: str, bad: float
) -> None:
    monkeypatch.setattr(
        system_module, "SCAN_CHUNK_BYTES", 64
    )  # many chunks: the frame index must survive
    sets = [good_set(5, 0), good_set(7, 1)]
    sets[1][key] = sets[1][key].astype(np.float32)
    if sets[1][key].ndim == 1:
        sets[1][key][5] = bad
    else:
        sets[1][key][5, 2] = bad
    path = make(tmp_path / "s", sets)
    what = "NaN" if np.isnan(bad) else "inf"
    with raises(f"{path / 'set.001' / f'{key}.npy'}: {what} in frame 5 (frame 10 of the system)"):
        DeepmdSystem(path)
    assert DeepmdSystem(path, check_finite=False).nframes == 12  # the scan can be skipped


def test_empty_system_and_nothing_found(tmp_path: Path) -> None:
    s = {k: v[:0] for k, v in good_set().items()}
    path = make(tmp_path / "s", [s])
    with raises(f"{path}: the system has no frames"):
        DeepmdSystem(path)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "type.raw").write_text("")
    with raises("type.raw: empty; expected one type index per atom"):
        DeepmdSystem(tmp_path / "e")
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "type.raw").write_text("0 1")
    with raises(f"{tmp_path / 'n'}: no set.* directories"):
        DeepmdSystem(tmp_path / "n")
    with raises(f"system not found: {tmp_path / 'missing'} is not a directory"):
        DeepmdSystem(tmp_path / "missing")
    with raises(f"{tmp_path / 'x' / 'type.raw'}: missing; a system directory needs type.raw"):
        (tmp_path / "x").mkdir()
        DeepmdSystem(tmp_path / "x")
    with raises(
        f"no system found under {tmp_path / 'x'} (a system is a directory or an HDF5 group "
        "containing type.raw)"
    ):
        expand_systems(str(tmp_path / "x"))
    with raises(f"system path not found: {tmp_path / 'nope'}"):
        expand_systems([str(tmp_path / "x"), str(tmp_path / "nope")])


def mixed_set(nframes: int = 3) -> dict[str, np.ndarray]:
    s = good_set(nframes)
    s["real_atom_types"] = np.array([[0, 1, -1]] * nframes)
    s["force"][:, 6:] = 0.0  # the virtual atom carries no force
    return s


def test_mixed_type_needs_type_map_raw(tmp_path: Path) -> None:
    path = make(tmp_path / "s", [mixed_set()], types=(0, 0, 0), type_map=None)
    with raises(
        f"{path / 'type_map.raw'}: missing; a mixed-type system (set.*/real_atom_types.npy) needs"
    ):
        DeepmdSystem(path, ["O", "H"])


def test_mixed_type_bad_real_types_and_mixed_sets(tmp_path: Path) -> None:
    s = mixed_set()
    s["real_atom_types"][1, 1] = 2
    path = make(tmp_path / "s", [s], types=(0, 0, 0))
    with raises(
        f"{path / 'set.000' / 'real_atom_types.npy'}: frame 1 (frame 1 of the system) atom 1 has "
        "type 2, outside type_map.raw (2 elements: O H) and not -1 (virtual)"
    ):
        DeepmdSystem(path)
    path = make(tmp_path / "t", [mixed_set(), good_set()], types=(0, 0, 0))
    with raises("only some sets (set.000) have real_atom_types.npy"):
        DeepmdSystem(path)


def test_virtual_atom_with_force_warns(tmp_path: Path) -> None:
    s = mixed_set()
    s["force"][2, 7] = 0.5
    path = make(tmp_path / "s", [s], types=(0, 0, 0))
    with pytest.warns(
        UserWarning,
        match=re.escape(
            f"{path / 'set.000' / 'force.npy'}: virtual atoms "
            "(real_atom_types -1) carry non-zero force labels (first in frame 2)"
        ),
    ):
        DeepmdSystem(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DeepmdSystem(make(tmp_path / "t", [mixed_set()], types=(0, 0, 0)))


def test_label_in_some_sets_only(tmp_path: Path) -> None:
    s = good_set()
    del s["force"]
    path = make(tmp_path / "s", [good_set(), s])
    with raises(
        f"{path}: force.npy is in set.000 but not in set.001; a label must be present in every set"
    ):
        DeepmdSystem(path)


def test_unreadable_npy(tmp_path: Path) -> None:
    path = make(tmp_path / "s", [good_set()])
    (path / "set.000" / "energy.npy").write_bytes(b"not numpy")
    with raises(f"{path / 'set.000' / 'energy.npy'}: not a NumPy array file"):
        DeepmdSystem(path)
    np.save(path / "set.000" / "energy.npy", np.array([{}, 1], dtype=object), allow_pickle=True)
    with raises(f"{path / 'set.000' / 'energy.npy'}: cannot read as a NumPy array ("):
        DeepmdSystem(path)
    np.save(path / "set.000" / "energy.npy", np.array(["a", "b", "c", "d"]))
    with raises("energy.npy: holds <U1 values, expected numbers"):
        DeepmdSystem(path)


def test_cli_prints_one_line(tmp_path: Path, capsys) -> None:
    path = make(tmp_path / "s", [good_set()], type_map=("O", "H", "Fe"))
    assert main(["neighbor-stat", "-s", str(path), "-r", "3", "-t", "O", "H"]) == 2
    err = capsys.readouterr().err.strip()
    where = path / "type_map.raw"
    assert err == f"dpa1 neighbor-stat: error: {where}: element Fe not in the model type_map [O H]"
