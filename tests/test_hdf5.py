"""HDF5 systems (DeePMD-kit's ``deepmd/hdf5`` layout): the same frames, errors, test
results, neighbour statistics, bias and training losses as the ``deepmd/npy`` layout.

The HDF5 files are written here by dpdata (``deepmd/hdf5`` and ``deepmd/hdf5/mixed``)
from the npy systems they are compared with.
"""

from __future__ import annotations

import gc
import json
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import dpa1.data.hdf5 as hdf5_module
from dpa1.cli.main import main
from dpa1.data.errors import DataError
from dpa1.data.system import DeepmdSystem, expand_systems, labels_for_model
from dpa1.io.model_file import save_checkpoint
from dpa1.model.build import build_model
from dpa1.train.lcurve import read_lcurve

from data_paths import NOPBC, TINY_DP, WATER
from helpers import water_input

CHO = ["C", "H", "O"]


@dataclass
class H5Data:
    """HDF5 files next to the npy systems they were written from."""

    root: Path
    water: Path  # groups data_0, data_2 (whole, sets of 30 frames), head (data_2[:4])
    head_npy: Path  # data_2[:4] as deepmd/npy (dpdata)
    nopbc: Path  # dpdata MultiSystems of nopbc/C1H4O2 and nopbc/C4H3O1: groups by formula
    mixed: Path  # dpdata deepmd/hdf5/mixed of the alloy frames: one group per atom count
    mixed_npy: list[str]  # the same as deepmd/npy/mixed


def _dpdata():
    import dpdata

    warnings.filterwarnings("ignore", module="dpdata")
    return dpdata


@pytest.fixture(scope="module")
def h5(tmp_path_factory, alloy) -> H5Data:
    dpdata = _dpdata()
    root = tmp_path_factory.mktemp("hdf5")
    water = root / "water.h5"
    with h5py.File(water, "w") as f:
        for name in ("data_0", "data_2"):
            system = dpdata.LabeledSystem(str(WATER / name), fmt="deepmd/npy")
            system.to("deepmd/hdf5", f.create_group(name), set_size=30)  # 3 sets
        system[:4].to("deepmd/hdf5", f.create_group("head"))
    system[:4].to("deepmd/npy", str(root / "head_npy"))
    multi = dpdata.MultiSystems(*(dpdata.LabeledSystem(str(NOPBC / n), fmt="deepmd/npy")
                                  for n in ("C1H4O2", "C4H3O1")))
    multi.to("deepmd/hdf5", str(root / "nopbc.h5"))
    mixed = dpdata.MultiSystems(type_map=alloy.type_map)
    for atoms in alloy.frames:
        mixed.append(dpdata.LabeledSystem(atoms, fmt="ase/structure"))
    mixed.to("deepmd/hdf5/mixed", str(root / "mixed.h5"))
    mixed.to("deepmd/npy/mixed", str(root / "mixed_npy"))
    mixed_npy = sorted(str(p.parent) for p in (root / "mixed_npy").rglob("type.raw"))
    return H5Data(root, water, root / "head_npy", root / "nopbc.h5", root / "mixed.h5",
                  mixed_npy)


def _assert_same_frames(a: DeepmdSystem, b: DeepmdSystem, idx) -> None:
    labels = labels_for_model()
    fa, fb = a.get_frames(idx, labels), b.get_frames(idx, labels)
    assert fa.keys() == fb.keys()
    for key in fa:
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)
    np.testing.assert_array_equal(a.idx_map, b.idx_map)


# === reading ==============================================================================
def test_frames_equal_the_npy_layout(h5: H5Data) -> None:
    idx = [79, 0, 31, 30, 29, 5, 5, 60]  # unsorted, repeated, across set boundaries
    npy = DeepmdSystem(WATER / "data_2", ["O", "H"])  # one set of 80 frames
    got = DeepmdSystem(f"{h5.water}#/data_2", ["O", "H"])  # sets of 30, 30, 20
    assert len(got.sets) == 3 and (got.nframes, got.natoms, got.nopbc) == (80, 192, False)
    assert got.labels == npy.labels == ["energy", "force"]
    _assert_same_frames(got, npy, idx)

    got = DeepmdSystem(f"{h5.nopbc}#/C1H4O2", ["O", "C", "H"])  # the nopbc dataset
    npy = DeepmdSystem(NOPBC / "C1H4O2", ["O", "C", "H"])
    assert got.nopbc and got.nframes == npy.nframes == 1562
    _assert_same_frames(got, npy, [1561, 3, 700])


def test_mixed_type_groups_equal_the_npy_mixed_layout(h5: H5Data, alloy) -> None:
    paths = expand_systems(str(h5.mixed))
    assert [p.split("#")[1] for p in paths] == ["/16", "/31", "/32", "/8"]
    for path, ref in zip(paths, h5.mixed_npy, strict=True):
        got, npy = DeepmdSystem(path, alloy.type_map[::-1]), DeepmdSystem(ref, alloy.type_map[::-1])
        assert got.mixed_type and got.data_type_map == npy.data_type_map
        _assert_same_frames(got, npy, np.arange(got.nframes)[::-1])


def test_rows_are_read_on_demand(h5: H5Data, monkeypatch) -> None:
    system = DeepmdSystem(f"{h5.water}#/data_2")
    runs = []
    read_run = hdf5_module.H5Array._read_run

    def spy(self, first, out):
        runs.append((self.path.rsplit("/", 2)[-2:], first, out.shape[0]))
        read_run(self, first, out)

    monkeypatch.setattr(hdf5_module.H5Array, "_read_run", spy)
    system.get_frames([31, 32, 3], labels=["energy"])
    # frame 3 is row 3 of set.000, frames 31-32 are rows 1-2 of set.001: one slice each
    assert sorted(runs) == sorted(
        (["set.000", f"{key}.npy"], 3, 1) for key in ("coord", "box", "energy")
    ) + sorted((["set.001", f"{key}.npy"], 1, 2) for key in ("coord", "box", "energy"))


def test_file_reopened_after_fork_and_closed_with_the_last_system(h5: H5Data, monkeypatch):
    path = h5.root / "copy.h5"
    with h5py.File(h5.water, "r") as src, h5py.File(path, "w") as dst:
        src.copy("head", dst)
    system = DeepmdSystem(f"{path}#/head")
    before = system.get_frames([2])["coord"]
    handle = system.sets[0].files["coord"]._handle
    first = handle.get()
    monkeypatch.setattr(hdf5_module.os, "getpid", lambda: -1)  # as in a forked child
    np.testing.assert_array_equal(system.get_frames([2])["coord"], before)
    assert handle.get() is not first
    monkeypatch.undo()
    copy = pickle.loads(pickle.dumps(system))  # e.g. sent to a worker: opens its own handle
    np.testing.assert_array_equal(copy.get_frames([2])["coord"], before)
    del system, handle, first, copy
    gc.collect()
    with h5py.File(path, "w"):  # no handle left open: the file can be rewritten
        pass


# === system lists ==========================================================================
def test_expand_systems_finds_groups_like_deepmd_kit(h5: H5Data, tmp_path: Path) -> None:
    from deepmd.utils.data_system import process_systems

    nested = tmp_path / "nested.h5"
    with h5py.File(h5.water, "r") as src, h5py.File(nested, "w") as dst:
        src.copy("head", dst, name="/a/b/head")
        src.copy("head", dst, name="/a/other")
        src.copy("head", dst, name="/top")
    n = str(nested)
    # DeePMD-kit searches a group and its children, no deeper: /a/b/head is not found
    with pytest.warns(UserWarning, match=re.escape(f"list them as {n}#/a/b/head")):
        got = expand_systems(n)
    assert got == [f"{n}#/top"] == process_systems(n)
    with pytest.warns(UserWarning, match="1 system group"):
        assert expand_systems(f"{n}#/a") == [f"{n}#/a/other"] == process_systems(f"{n}#/a")
    assert expand_systems(f"{n}#a/b") == expand_systems(f"{n}#/a/b/") == [f"{n}#/a/b/head"]
    assert expand_systems(f"{n}#/a/b/head") == [f"{n}#/a/b/head"]
    with pytest.warns(UserWarning):
        assert expand_systems(f"{n}#/a", ["oth*", "head"]) == [f"{n}#/a/other"]
    with pytest.warns(UserWarning):
        assert expand_systems(str(tmp_path / "n*.h5")) == got  # globs on the file name
    single = tmp_path / "single.h5"  # a system at the root of the file
    with h5py.File(h5.water, "r") as src, h5py.File(single, "w") as dst:
        for key in src["head"]:
            src.copy(f"head/{key}", dst)
    assert expand_systems(str(single)) == [f"{single}#/"]
    assert DeepmdSystem(single).nframes == DeepmdSystem(f"{single}#/").nframes == 4


def _raises(match: str):
    return pytest.raises(DataError, match=re.escape(match))


def test_errors_name_the_file_and_the_hdf5_path(h5: H5Data, tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.h5"
    with h5py.File(h5.water, "r") as src, h5py.File(path, "w") as dst:
        src.copy("head", dst, name="nocoord")
        del dst["nocoord/set.000/coord.npy"]
        src.copy("head", dst, name="nobox")
        del dst["nobox/set.000/box.npy"]
        src.copy("head", dst, name="short")
        del dst["short/set.000/force.npy"]
        dst.create_dataset("short/set.000/force.npy", data=np.zeros((3, 576)))
        dst.create_group("empty/set.000")
    with _raises(f"system path not found: {tmp_path / 'nope.h5'}"):
        expand_systems(str(tmp_path / "nope.h5"))
    with _raises(f"system not found: HDF5 file {tmp_path / 'nope.h5'} does not exist"):
        DeepmdSystem(f"{tmp_path / 'nope.h5'}#/x")
    with _raises(f"{path}: no group /missing in the HDF5 file (system path {path}#/missing)"):
        expand_systems(f"{path}#/missing")
    with _raises(f"{path}: no group /missing in the HDF5 file"):
        DeepmdSystem(f"{path}#missing")
    with _raises(f"no system found under {path}#/empty"):
        expand_systems(f"{path}#/empty")
    with _raises(f"{path}#/empty/type.raw: missing; a system group needs the dataset type.raw"):
        DeepmdSystem(f"{path}#/empty")
    with _raises(f"{path}#/nocoord/set.000/coord.npy: missing; every set needs coordinates"):
        DeepmdSystem(f"{path}#/nocoord")
    with _raises(f"{path}#/nobox/set.000/box.npy: missing and the system has no 'nopbc' file"):
        DeepmdSystem(f"{path}#/nobox")
    with _raises(f"{path}#/short/set.000/force.npy: 3 frames, but coord.npy of the same set "
                 "has 4"):
        DeepmdSystem(f"{path}#/short")
    with _raises(f"{path}#/nobox/set.000/coord.npy: a dataset, not a group"):
        DeepmdSystem(f"{path}#/nobox/set.000/coord.npy")
    text = tmp_path / "notes.txt"
    text.write_text("not data")
    with _raises(f"{text}: neither a directory nor an HDF5 file"):
        expand_systems(str(text))
    assert main(["neighbor-stat", "-s", f"{path}#/nocoord", "-r", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"dpa1 neighbor-stat: error: {path}#/nocoord/set.000/coord.npy: missing; "
                   "every set needs coordinates")


# === the verbs give the same numbers ======================================================
def _test_json(model: Path, systems: list[str], out: Path, *extra: str) -> dict:
    assert main(["test", "-m", str(model), "-s", *systems, "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def _same_errors(got: dict, ref: dict) -> None:
    """Equal numbers, system by system in order (the names differ)."""
    assert list(got["systems"].values()) == list(ref["systems"].values())
    assert got["total"] == ref["total"]


def _cho_model(tiny_model_config, path: Path) -> Path:
    model = build_model(tiny_model_config(CHO))
    rng = np.random.default_rng(0)
    model.descriptor.set_stat(torch.from_numpy(rng.normal(scale=0.1, size=(3, 40, 4))),
                              torch.from_numpy(rng.uniform(0.5, 1.5, size=(3, 40, 4))))
    model.out_bias[0, :, 0] = torch.tensor([-3.0, -2.0, -4.0], dtype=torch.float64)
    save_checkpoint(path, model, config={"model": {"type_map": CHO}})
    return path


def test_dp_test_json_is_identical(h5: H5Data, tiny_model_config, alloy, tmp_path) -> None:
    ref = _test_json(TINY_DP, [str(WATER / "data_2")], tmp_path / "a.json", "-n", "2")
    got = _test_json(TINY_DP, [f"{h5.water}#/data_2"], tmp_path / "b.json", "-n", "2")
    _same_errors(got, ref)
    assert list(got["systems"]) == [f"{h5.water}#/data_2"]
    assert got["total"]["nframes"] == 2

    cho = _cho_model(tiny_model_config, tmp_path / "cho.pt")
    ref = _test_json(cho, [str(NOPBC / "C1H4O2"), str(NOPBC / "C4H3O1")], tmp_path / "c.json",
                     "-n", "5")
    got = _test_json(cho, [str(h5.nopbc)], tmp_path / "d.json", "-n", "5")
    _same_errors(got, ref)
    assert list(got["systems"]) == [f"{h5.nopbc}#/C1H4O2", f"{h5.nopbc}#/C4H3O1"]

    metal = build_model(tiny_model_config(alloy.type_map))
    save_checkpoint(tmp_path / "alloy.pt", metal, config={"model": {"type_map": alloy.type_map}})
    ref = _test_json(tmp_path / "alloy.pt", h5.mixed_npy, tmp_path / "e.json")
    got = _test_json(tmp_path / "alloy.pt", [str(h5.mixed)], tmp_path / "f.json")
    _same_errors(got, ref)


def test_neighbor_stat_is_identical(h5: H5Data, capsys) -> None:
    outputs = []
    for systems in ([str(NOPBC)], [str(h5.nopbc)], [str(h5.head_npy)], [f"{h5.water}#/head"]):
        assert main(["neighbor-stat", "-s", *systems, "-r", "4.5"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[2] == outputs[3]
    assert "systems:        2" in outputs[1] and "max_nbor_size:  " in outputs[3]


def test_change_bias_and_model_devi_are_identical(h5: H5Data, tmp_path, capsys) -> None:
    printed = []
    for name, system in (("a", h5.head_npy), ("b", f"{h5.water}#/head")):
        assert main(["change-bias", str(TINY_DP), "-s", str(system), "-n", "2",
                     "-o", str(tmp_path / f"{name}.dp")]) == 0
        printed.append(capsys.readouterr().out.splitlines()[:-1])  # all but "wrote ..."
        assert main(["model-devi", "-m", str(TINY_DP), str(tmp_path / f"{name}.dp"), "-s",
                     str(system), "-o", str(tmp_path / f"{name}.out")]) == 0
        capsys.readouterr()
    assert printed[0] == printed[1]
    rows = [[line for line in (tmp_path / f"{n}.out").read_text().splitlines()
             if not line.startswith("#")] for n in "ab"]
    assert len(rows[0]) == 4 and rows[0] == rows[1]


def test_training_on_hdf5_gives_the_npy_losses(h5: H5Data, tmp_path: Path) -> None:
    curves = []
    runs = {
        "npy": ([str(WATER / "data_0")], [str(WATER / "data_2")]),
        # relative to the input file's directory, as the npy paths may be
        "h5": (["water.h5#/data_0"], "water.h5#data_2"),
    }
    for name, (train, valid) in runs.items():
        work = tmp_path / name
        work.mkdir()
        (work / "water.h5").symlink_to(h5.water)
        inp = water_input(work, numb_steps=3, disp_freq=1, save_freq=3, train=train)
        cfg = json.loads(inp.read_text())
        cfg["training"]["validation_data"]["systems"] = valid  # a single string
        inp.write_text(json.dumps(cfg))
        assert main(["train", str(inp), "-o", str(work / "run")]) == 0
        curves.append(read_lcurve(work / "run" / "lcurve.out"))
    assert curves[0][0] == curves[1][0]
    np.testing.assert_array_equal(curves[1][1], curves[0][1])
    assert curves[0][1].shape[0] == 3
