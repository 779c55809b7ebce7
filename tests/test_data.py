"""Reading deepmd/npy systems, system lists, batching/sampling, and the equivalence of the
standard and mixed-type layouts (docs/design.md, "Data layout")."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dpa1.data.loader import SystemSampler, resolve_batch_sizes, system_probabilities
from dpa1.data.system import DeepmdSystem, Label, expand_systems, labels_for_model
from dpa1.model.build import build_model

from data_paths import NOPBC, WATER
from helpers import set_random_statistics


def write_system(
    root: Path, types, sets: list[dict[str, np.ndarray]], type_map=None, nopbc=False
) -> Path:
    """A hand-made system: ``sets`` = one dict of arrays (saved as given) per set."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "type.raw").write_text("\n".join(str(t) for t in types) + "\n")
    if type_map is not None:
        (root / "type_map.raw").write_text("\n".join(type_map) + "\n")
    if nopbc:
        (root / "nopbc").touch()
    for k, arrays in enumerate(sets):
        sd = root / f"set.{k:03d}"
        sd.mkdir()
        for key, value in arrays.items():
            np.save(sd / f"{key}.npy", value)
    return root


# === the reader ==========================================================================
def test_water_frames_match_the_files() -> None:
    path = WATER / "data_1"  # two sets, float32 files
    system = DeepmdSystem(path, ["O", "H"])
    assert (system.nframes, system.natoms, system.nopbc, system.mixed_type) == (
        160,
        192,
        False,
        False,
    )
    raw = {
        k: np.concatenate([np.load(path / s / f"{k}.npy") for s in ("set.000", "set.001")])
        for k in ("coord", "box", "energy", "force")
    }
    types = np.loadtxt(path / "type.raw", dtype=int)
    idx = np.array([0, 79, 80, 159, 3])  # across the set boundary
    fr = system.get_frames(idx)
    perm = np.lexsort((np.arange(192), types))
    np.testing.assert_array_equal(system.idx_map, perm)
    np.testing.assert_array_equal(
        fr["coord"], raw["coord"][idx].reshape(-1, 192, 3)[:, perm].astype(np.float64)
    )
    np.testing.assert_array_equal(
        fr["force"], raw["force"][idx].reshape(-1, 192, 3)[:, perm].astype(np.float64)
    )
    np.testing.assert_array_equal(fr["box"], raw["box"][idx].reshape(-1, 3, 3).astype(np.float64))
    np.testing.assert_array_equal(fr["energy"][:, 0], raw["energy"][idx].astype(np.float64))
    assert fr["coord"].dtype == fr["energy"].dtype == np.float64
    np.testing.assert_array_equal(fr["atype"], np.tile(types[perm], (5, 1)))
    np.testing.assert_array_equal(fr["natoms_vec"], np.tile([192, 192, 64, 128], (5, 1)))
    np.testing.assert_array_equal(fr["fid"], idx)
    assert fr["find_energy"] == 1.0 and fr["find_force"] == 1.0
    assert system.labels == ["energy", "force"]


def test_absent_labels_get_defaults_and_flags() -> None:
    system = DeepmdSystem(NOPBC / "C1H4O2", ["C", "H", "O"])
    fr = system.get_frames([2, 7], labels=list(labels_for_model(numb_fparam=2, numb_aparam=3)))
    assert "box" not in fr and system.nopbc
    assert fr["find_energy"] == 1.0 and fr["find_virial"] == 0.0 and fr["find_atom_pref"] == 0.0
    np.testing.assert_array_equal(fr["virial"], np.zeros((2, 9)))
    np.testing.assert_array_equal(fr["atom_ener"], np.zeros((2, 7)))
    np.testing.assert_array_equal(fr["atom_pref"], np.ones((2, 7)))  # default 1.0
    assert (
        fr["fparam"].shape == (2, 2)
        and fr["aparam"].shape == (2, 7, 3)
        and fr["find_fparam"] == 0.0
    )
    # type.raw is 1 1 1 1 0 2 2 (C H O): the stable sort puts the carbon first
    np.testing.assert_array_equal(system.idx_map, [4, 0, 1, 2, 3, 5, 6])
    np.testing.assert_array_equal(fr["atype"][0], [0, 1, 1, 1, 1, 2, 2])


def test_type_map_remap_by_name_and_sort_order() -> None:
    path = NOPBC / "C1H4O2"  # data types C H O
    plain = DeepmdSystem(path, ["C", "H", "O"])
    remapped = DeepmdSystem(path, ["O", "Fe", "H", "C"])  # extra model types are fine
    # C H O → 3 2 0: the atoms are sorted by the *model* index, so O comes first now
    np.testing.assert_array_equal(remapped.atom_types, [0, 0, 2, 2, 2, 2, 3])
    a, b = plain.get_frames([5]), remapped.get_frames([5])
    np.testing.assert_array_equal(b["natoms_vec"][0], [7, 7, 2, 0, 4, 1])
    names_a = np.array(["C", "H", "O"])[a["atype"][0]]
    names_b = np.array(["O", "Fe", "H", "C"])[b["atype"][0]]
    back_a = plain.to_file_order(a["coord"])
    back_b = remapped.to_file_order(b["coord"])
    np.testing.assert_array_equal(back_a, back_b)  # the same atoms, only reordered
    np.testing.assert_array_equal(
        plain.to_file_order(names_a[None])[0], remapped.to_file_order(names_b[None])[0]
    )
    # without type maps the file indices are used as they are
    assert DeepmdSystem(path).type_map == ["C", "H", "O"]


def test_one_frame_files_float32_and_all_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    natoms = 5
    types = [1, 0, 1, 0, 2]
    full = {
        "coord": rng.normal(size=(3, natoms * 3)),
        "box": np.tile(np.eye(3).reshape(9) * 9, (3, 1)),
        "energy": rng.normal(size=3),
        "force": rng.normal(size=(3, natoms * 3)),
        "virial": rng.normal(size=(3, 9)),
        "atom_ener": rng.normal(size=(3, natoms)),
        "atom_pref": rng.uniform(size=(3, natoms)),
        "fparam": rng.normal(size=(3, 2)),
        "aparam": rng.normal(size=(3, natoms * 4)),
    }
    one = {k: v[0] for k, v in full.items()}  # frame axis dropped: energy is a 0-d array
    one["energy"] = np.float64(full["energy"][0])
    rest = {k: v[1:].astype(np.float32) for k, v in full.items()}
    rest["energy"] = full["energy"][1:, None]  # (nframes, 1) is accepted too
    path = write_system(tmp_path / "s", types, [one, rest], type_map=["A", "B", "C"])
    system = DeepmdSystem(path)
    assert system.nframes == 3 and system.fparam_dim == 2 and system.aparam_dim == 4
    fr = system.get_frames([2, 0, 1], labels=None)  # every label present
    perm = np.array([1, 3, 0, 2, 4])
    order = [2, 0, 1]
    expect = {k: np.asarray(full[k])[order] for k in full}
    f32 = {
        k: np.where(np.array(order)[:, None] > 0, expect[k].astype(np.float32), expect[k]).reshape(
            expect[k].shape
        )
        for k in ("coord", "force", "virial", "atom_ener", "atom_pref", "fparam", "aparam")
    }
    np.testing.assert_array_equal(fr["coord"], f32["coord"].reshape(3, natoms, 3)[:, perm])
    np.testing.assert_array_equal(fr["force"], f32["force"].reshape(3, natoms, 3)[:, perm])
    np.testing.assert_array_equal(fr["virial"], f32["virial"])
    np.testing.assert_array_equal(fr["atom_ener"], f32["atom_ener"][:, perm])
    np.testing.assert_array_equal(fr["atom_pref"], f32["atom_pref"][:, perm])
    np.testing.assert_array_equal(fr["fparam"], f32["fparam"])
    np.testing.assert_array_equal(fr["aparam"], f32["aparam"].reshape(3, natoms, 4)[:, perm])
    np.testing.assert_array_equal(fr["energy"][:, 0], expect["energy"])  # float64 throughout
    assert all(
        fr[f"find_{k}"] == 1.0 for k in ("energy", "virial", "atom_ener", "atom_pref", "fparam")
    )
    # a Label with the wrong width is refused
    with pytest.raises(ValueError, match="2 values per frame, but 3 were requested"):
        system.get_frames([0], labels=[Label("fparam", 3)])


def test_mixed_type_names_are_mapped_in_both_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    real = np.array([[1, 0, 0, -1], [0, 1, 1, 1]])  # data types H O (type_map.raw), −1 virtual
    arrays = {
        "coord": rng.normal(size=(2, 12)),
        "box": np.tile(np.eye(3).reshape(9) * 8, (2, 1)),
        "energy": np.array([1.0, 2.0]),
        "real_atom_types": real,
    }
    path = write_system(tmp_path / "m", [0, 0, 0, 0], [arrays], type_map=["H", "O"])
    system = DeepmdSystem(path, ["O", "H", "C"])
    assert system.mixed_type and system.atom_types is None
    fr = system.get_frames([0, 1])
    np.testing.assert_array_equal(fr["atype"], [[0, 1, 1, -1], [1, 0, 0, 0]])
    np.testing.assert_array_equal(fr["natoms_vec"], [[4, 4, 1, 2, 0], [4, 4, 3, 1, 0]])
    np.testing.assert_array_equal(fr["coord"], arrays["coord"].reshape(2, 4, 3))  # order unchanged
    np.testing.assert_array_equal(DeepmdSystem(path).get_frames([0])["atype"], [[1, 0, 0, -1]])


def test_rows_read_on_demand_any_order_and_layout(tmp_path: Path) -> None:
    """Repeated/unsorted indices, Fortran-ordered and big-endian files read correctly."""
    rng = np.random.default_rng(2)
    coord = rng.normal(size=(9, 6))
    force = rng.normal(size=(9, 6))
    path = write_system(
        tmp_path / "s",
        [0, 1],
        [
            {
                "coord": np.asfortranarray(coord),
                "force": force.astype(">f8"),
                "energy": np.arange(9.0),
            }
        ],
        nopbc=True,
    )
    system = DeepmdSystem(path)
    assert all(
        isinstance(f.mm, np.memmap) for f in system.sets[0].files.values()
    )  # headers mapped only
    idx = np.array([8, 2, 2, 3, 4, 0, 8])
    fr = system.get_frames(idx)
    np.testing.assert_array_equal(fr["coord"], coord[idx].reshape(-1, 2, 3))
    np.testing.assert_array_equal(fr["force"], force[idx].reshape(-1, 2, 3))
    np.testing.assert_array_equal(fr["energy"][:, 0], idx.astype(float))


def test_expand_systems(tmp_path: Path) -> None:
    data = tmp_path / "data"  # water/data_{0,1,2} and nopbc/{C1H4O2,C4H3O1}, type.raw only
    for name, src in (("water", WATER), ("nopbc", NOPBC)):
        shutil.copytree(src, data / name, ignore=shutil.ignore_patterns("set.*"))
    water = [str(data / "water" / f"data_{k}") for k in range(3)]
    nopbc = [str(data / "nopbc" / n) for n in ("C1H4O2", "C4H3O1")]
    assert expand_systems(str(data)) == nopbc + water
    assert (
        expand_systems([str(data / "water"), str(data / "nopbc" / "C4H3O1")]) == water + nopbc[1:]
    )
    assert expand_systems(str(data / "water" / "data_*")) == water
    assert expand_systems(str(data), rglob_patterns=["data_[02]", "C4*"]) == [
        nopbc[1],
        water[0],
        water[2],
    ]
    assert expand_systems(water[1]) == [water[1]]


# === batch sizes and probabilities (docs/design.md, "Batches and sampling") =======================
def test_batch_size_rules() -> None:
    natoms = [192, 7, 33]
    assert resolve_batch_sizes(3, natoms) == [3, 3, 3]
    assert resolve_batch_sizes([1, 2, 3], natoms) == [1, 2, 3]
    assert resolve_batch_sizes("auto", natoms) == [1, 5, 1]  # 5·7 = 35 ≥ 32
    assert resolve_batch_sizes("auto:100", natoms) == [1, 15, 4]
    assert resolve_batch_sizes("auto:66", [33]) == [2]  # exact multiple: no extra frame
    assert resolve_batch_sizes("max:100", natoms) == [1, 14, 3]
    assert resolve_batch_sizes("filter:100", natoms) == [None, 14, 3]
    for bad, msg in (
        ("mixed:32", "unsupported batch_size"),
        ("auto:x", "unsupported"),
        ([1, 2], "2 values for 3 systems"),
        (0, ">= 1"),
    ):
        with pytest.raises(ValueError, match=msg):
            resolve_batch_sizes(bad, natoms)
    with pytest.raises(ValueError, match="every system has more than 5 atoms"):
        resolve_batch_sizes("filter:5", natoms)


def test_system_probabilities() -> None:
    nb = [2, 6, 4]
    np.testing.assert_allclose(system_probabilities(nb), [2 / 12, 6 / 12, 4 / 12], rtol=1e-15)
    np.testing.assert_allclose(system_probabilities(nb, "prob_uniform"), [1 / 3] * 3, rtol=1e-15)
    np.testing.assert_allclose(
        system_probabilities(nb, "prob_sys_size;0:1:0.5;1:3:0.5"), [0.5, 0.3, 0.2], rtol=1e-15
    )
    # block weights are normalised: 1:3 gets 3/4, shared 6:4 inside the block
    np.testing.assert_allclose(
        system_probabilities(nb, "prob_sys_size;0:1:1;1:3:3"), [0.25, 0.45, 0.3], rtol=1e-15
    )
    np.testing.assert_allclose(
        system_probabilities(nb, sys_probs=[0.4, -1, -1]), [0.4, 0.36, 0.24], rtol=1e-15
    )
    np.testing.assert_allclose(
        system_probabilities(nb, "prob_uniform", [0.2, 0.5, 0.3]), [0.2, 0.5, 0.3]
    )
    for kwargs, msg in (
        ({"sys_probs": [0.7, 0.6, -1]}, "sum to 1.3 > 1"),
        ({"sys_probs": [0.2, 0.2, 0.2]}, "must sum to 1"),
        ({"sys_probs": [0.5, 0.5]}, "2 entries for 3 systems"),
        ({"auto_prob": "prob_sys_size;0:4:1"}, "start < end <= 3"),
        ({"auto_prob": "prob_sys_size;0:1"}, "start:end:weight"),
        ({"auto_prob": "prob_size"}, "unknown auto_prob"),
    ):
        with pytest.raises(ValueError, match=msg):
            system_probabilities(nb, **kwargs)


# === the sampler ==========================================================================
@pytest.fixture(scope="module")
def alloy_systems(alloy) -> list[DeepmdSystem]:
    return [DeepmdSystem(p, alloy.type_map) for p in alloy.standard]


def _trace(sampler: SystemSampler, steps: int) -> list[tuple[int, tuple[int, ...]]]:
    out = []
    for _ in range(steps):
        b = sampler.next_batch()
        out.append((b["sid"], tuple(b["fid"].tolist())))
    return out


def test_sampler_passes_cover_every_frame(alloy_systems) -> None:
    s = SystemSampler(alloy_systems, 3, seed=5)
    for sid, system in enumerate(s.systems):
        n = system.nframes
        assert s.nbatches[sid] == math.ceil(n / 3)
        for _ in range(2):  # two passes, each a permutation; the last batch may be short
            seen = [s.system_batch(sid)["fid"].numpy() for _ in range(s.nbatches[sid])]
            assert [len(x) for x in seen] == [3] * (n // 3) + ([n % 3] if n % 3 else [])
            assert sorted(np.concatenate(seen).tolist()) == list(range(n))


def test_sampler_frequencies_follow_probabilities(alloy_systems) -> None:
    s = SystemSampler(alloy_systems, 1, auto_prob="prob_sys_size;0:2:0.7;2:5:0.3", seed=1)
    counts = np.bincount([s.next_batch()["sid"] for _ in range(3000)], minlength=5) / 3000
    np.testing.assert_allclose(counts, s.probs, atol=0.03)
    # nframes 4 3 | 3 3 2 with one frame per batch
    np.testing.assert_allclose(
        s.probs, [0.4, 0.3, 0.3 * 3 / 8, 0.3 * 3 / 8, 0.3 * 2 / 8], rtol=1e-14
    )
    ratios = [nb / p for nb, p in zip(s.nbatches, s.probs, strict=True)]
    assert s.steps_per_epoch == math.ceil(max(ratios))


def test_sampler_seed_and_rank(alloy_systems) -> None:
    a = _trace(SystemSampler(alloy_systems, 2, seed=3), 40)
    assert a == _trace(SystemSampler(alloy_systems, 2, seed=3), 40)
    assert a != _trace(SystemSampler(alloy_systems, 2, seed=4), 40)
    r0 = SystemSampler(alloy_systems, 2, seed=3, rank=0, world_size=2)
    r1 = SystemSampler(alloy_systems, 2, seed=3, rank=1, world_size=2)
    assert _trace(r0, 40) != _trace(r1, 40)
    # within a pass the ranks share the shuffle and take disjoint halves of it
    r0 = SystemSampler(alloy_systems, 1, seed=3, rank=0, world_size=2)
    r1 = SystemSampler(alloy_systems, 1, seed=3, rank=1, world_size=2)
    n = alloy_systems[0].nframes  # 4 frames: 2 per rank
    f0 = [int(r0.system_batch(0)["fid"]) for _ in range(n // 2)]
    f1 = [int(r1.system_batch(0)["fid"]) for _ in range(n // 2)]
    assert sorted(f0 + f1) == list(range(n))
    with pytest.raises(ValueError, match="rank 2 is outside"):
        SystemSampler(alloy_systems, 1, rank=2, world_size=2)


def test_sampler_state_round_trip(alloy_systems, tmp_path: Path) -> None:
    """A restarted sampler continues the same sequence (state saved like a checkpoint)."""
    a = SystemSampler(alloy_systems, 2, seed=9)
    _trace(a, 7)
    torch.save({"sampler": a.state_dict()}, tmp_path / "ckpt.pt")
    b = SystemSampler(alloy_systems, 2, seed=123)  # the seed no longer matters
    b.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["sampler"])
    assert _trace(b, 30) == _trace(a, 30)
    with pytest.raises(ValueError, match="sampler state has 5 systems, this run has 4"):
        SystemSampler(alloy_systems[:4], 2).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match=r"batch sizes \[2, 2, 2, 2, 2\], but the data now give"):
        SystemSampler(alloy_systems, 3).load_state_dict(a.state_dict())
    c = SystemSampler(alloy_systems, 2, seed=9, rank=1, world_size=2)
    with pytest.warns(UserWarning, match="sampling starts afresh"):
        c.load_state_dict(a.state_dict())


def test_sampler_batches_are_tensors(alloy_systems) -> None:
    s = SystemSampler(alloy_systems, "auto:40", seed=0, dtype=torch.float32)
    assert s.batch_sizes == [2, 2, 3, 5, 2]
    b = s.system_batch(3)  # Ni8: 5 frames of 8 atoms
    assert b["coord"].shape == (3, 8, 3) and b["coord"].dtype == torch.float32  # 3 frames: one pass
    assert b["energy"].dtype == torch.float64 and b["atype"].dtype == torch.int64
    assert b["box"].shape == (3, 3, 3) and isinstance(b["find_energy"], float) and b["sid"] == 3
    ref = s.systems[3].get_frames(b["fid"].numpy())
    np.testing.assert_array_equal(b["force"].numpy(), ref["force"].astype(np.float32))


def test_stat_and_validation_batches(alloy_systems) -> None:
    s = SystemSampler(alloy_systems, 2, seed=0)
    stat = s.stat_batches(nbatch=1)
    assert [b["coord"].shape[0] for b in stat] == [2, 2, 2, 2, 2]
    assert all(len(set(b["fid"].tolist())) == 2 for b in stat)
    stat = s.stat_batches(nbatch=10)  # fewer batches than asked: every frame once
    assert [sorted(b["fid"].tolist()) for b in stat] == [list(range(x.nframes)) for x in s.systems]
    val = list(s.iter_batches())
    assert [(b["sid"], b["fid"].tolist()) for b in val][:3] == [
        (0, [0, 1]),
        (0, [2, 3]),
        (1, [0, 1]),
    ]
    assert sum(b["coord"].shape[0] for b in val) == sum(x.nframes for x in s.systems)


def test_sampler_filter_drops_large_systems(alloy_systems) -> None:
    with pytest.warns(UserWarning, match="drops 3 systems"):
        s = SystemSampler(alloy_systems, "filter:16", seed=0)
    assert [x.natoms for x in s.systems] == [16, 8] and s.batch_sizes == [1, 2]


# === standard vs mixed-type layouts =========================================================
def _frames_by_energy(paths: list[str], type_map: list[str]) -> dict[float, dict[str, np.ndarray]]:
    """Each frame keyed by its energy label; real atoms only, stably sorted by type."""
    out = {}
    for p in paths:
        system = DeepmdSystem(p, type_map)
        fr = system.get_frames(np.arange(system.nframes))
        for k in range(system.nframes):
            real = np.flatnonzero(fr["atype"][k] >= 0)
            order = real[np.argsort(fr["atype"][k][real], kind="stable")]
            out[float(fr["energy"][k, 0])] = {
                "coord": fr["coord"][k][order],
                "force": fr["force"][k][order],
                "atype": fr["atype"][k][order],
                "box": fr["box"][k],
                "virial": fr["virial"][k],
                "counts": fr["natoms_vec"][k, 2:],  # [0:2] = natoms, virtual atoms included
            }
    return out


def _layouts(alloy) -> dict[str, list[str]]:
    layouts = {"standard": alloy.standard, "mixed": [alloy.mixed]}
    if alloy.dpdata_mixed:
        layouts["dpdata_mixed"] = alloy.dpdata_mixed
    return layouts


def test_layouts_give_the_same_frames(alloy) -> None:
    layouts = {
        name: _frames_by_energy(paths, alloy.type_map) for name, paths in _layouts(alloy).items()
    }
    ref = layouts.pop("standard")
    assert len(ref) == 15
    assert {DeepmdSystem(alloy.mixed).natoms} == {32}
    for name, frames in layouts.items():
        assert frames.keys() == ref.keys(), name
        for e, fr in frames.items():
            for key, value in fr.items():
                np.testing.assert_allclose(
                    value, ref[e][key], rtol=0, atol=1e-12, err_msg=f"{name} {key}"
                )


@pytest.mark.parametrize("set_davg_zero", [True, False])
def test_layouts_give_the_same_predictions(alloy, tiny_model_config, set_davg_zero: bool) -> None:
    """Energies, forces (mapped back) and virials agree between layouts.

    With ``davg != 0`` padding slots carry the type of atom 0 (docs/design.md,
    "DeePMD-kit parity notes"), so DeePMD-kit's
    predictions depend on which atom comes first: only layouts that sort atoms by type
    (standard, and our mixed writer) agree then; dpdata's mixed writer keeps the input
    order and agrees only with ``set_davg_zero``.
    """
    model = build_model(tiny_model_config(alloy.type_map, set_davg_zero=set_davg_zero))
    set_random_statistics(model, [-3.0, -2.0, -4.0, -5.0])

    def predict(paths: list[str]) -> dict[float, tuple[float, np.ndarray, np.ndarray]]:
        out = {}
        for p in paths:
            system = DeepmdSystem(p, alloy.type_map)
            fr = system.get_frames(np.arange(system.nframes))
            res = model(
                torch.from_numpy(fr["coord"]),
                torch.from_numpy(fr["atype"]),
                torch.from_numpy(fr["box"]),
            )
            for k in range(system.nframes):
                real = np.flatnonzero(fr["atype"][k] >= 0)
                order = real[np.argsort(fr["atype"][k][real], kind="stable")]
                out[float(fr["energy"][k, 0])] = (
                    float(res["energy"][k, 0].detach()),
                    res["force"][k].detach().numpy()[order],
                    res["virial"][k].detach().numpy(),
                )
        return out

    layouts = _layouts(alloy)
    if not set_davg_zero:
        layouts.pop("dpdata_mixed", None)
    preds = {name: predict(paths) for name, paths in layouts.items()}
    ref = preds.pop("standard")
    assert len({round(v[0], 6) for v in ref.values()}) == 15
    for name, pred in preds.items():
        assert pred.keys() == ref.keys()
        for key, (e, f, v) in pred.items():
            assert e == pytest.approx(ref[key][0], rel=0, abs=1e-12), name
            np.testing.assert_allclose(f, ref[key][1], rtol=0, atol=1e-12)
            np.testing.assert_allclose(v, ref[key][2], rtol=0, atol=1e-12)
