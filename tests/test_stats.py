"""Statistics (docs/design.md, "Automatic sel" and "Statistics") against independent brute-force
numpy computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dpa1.data.loader import SystemSampler
from dpa1.data.stats import (
    apply_statistics,
    change_energy_bias,
    compute_descriptor_stats,
    compute_energy_bias,
    compute_param_stats,
    neighbor_stat,
    resolve_sel,
)
from dpa1.data.system import DeepmdSystem, Label
from dpa1.model.build import build_model

from data_paths import NOPBC, WATER


# === brute force ==========================================================================
def image_displacements(coord: np.ndarray, box: np.ndarray | None, rcut: float) -> np.ndarray:
    """``(n, n·S, 3)``: ``x_j + s·H − x_i`` for every atom j and every lattice shift s able
    to reach ``rcut``; the zero-shift self pair is set to +inf."""
    n = coord.shape[0]
    if box is None:
        shifts = np.zeros((1, 3))
    else:
        frac = coord @ np.linalg.inv(box)
        coord = (frac - np.floor(frac)) @ box  # wrapped: then ceil(rcut/face) shells suffice
        vol = abs(np.linalg.det(box))
        a, b, c = box
        faces = vol / np.linalg.norm([np.cross(b, c), np.cross(c, a), np.cross(a, b)], axis=1)
        reach = np.ceil(rcut / faces).astype(int)
        grid = np.meshgrid(*[np.arange(-k, k + 1) for k in reach], indexing="ij")
        shifts = np.stack([g.reshape(-1) for g in grid], axis=1) @ box
    disp = coord[None, :, None, :] - coord[:, None, None, :] + shifts[None, None]  # (n, n, S, 3)
    zero = np.flatnonzero(np.all(shifts == 0, axis=1))[0]
    disp[np.arange(n), np.arange(n), zero] = np.inf
    return disp.reshape(n, -1, 3)


def brute_neighbor_stat(systems: list[DeepmdSystem], rcut: float) -> tuple[int, float]:
    nmax, dmin = 0, math.inf
    for s in systems:
        fr = s.get_frames(np.arange(s.nframes), labels=())
        for k in range(s.nframes):
            real = fr["atype"][k] >= 0
            box = None if s.nopbc else fr["box"][k]
            d = np.linalg.norm(image_displacements(fr["coord"][k][real], box, rcut), axis=-1)
            nmax = max(nmax, int((d * d < rcut * rcut).sum(axis=1).max()))
            dmin = min(dmin, float(d.min()))
    return nmax, dmin


def brute_env(coord, box, atype, rcut, rcut_smth, nnei, pair_excluded=()) -> np.ndarray:
    """Raw env matrix ``(n, nnei, 4)`` of one frame: nearest ``nnei`` within rcut, padding 0;
    virtual atoms are no one's neighbour; excluded (t_i, t_j) slots zeroed after truncation."""
    n = coord.shape[0]
    env = np.zeros((n, nnei, 4))
    real = np.flatnonzero(atype >= 0)
    disp = image_displacements(coord[real], box, rcut)
    d = np.linalg.norm(disp, axis=-1)
    nei_type = np.repeat(atype[real], d.shape[1] // real.size)  # column = j·S + s
    for row, i in enumerate(real):
        order = np.argsort(d[row], kind="stable")
        order = order[d[row][order] <= rcut][:nnei]
        r, vec = d[row][order], disp[row][order]
        u = np.clip((r - rcut_smth) / (rcut - rcut_smth), 0, 1)
        sw = u**3 * (-6 * u**2 + 15 * u - 10) + 1
        vals = np.concatenate([(sw / r)[:, None], vec * (sw / r**2)[:, None]], axis=1)
        for a, b in pair_excluded:
            hit = ((atype[i] == a) & (nei_type[order] == b)) | (
                (atype[i] == b) & (nei_type[order] == a)
            )
            vals[hit] = 0.0
        env[i, : r.size] = vals
    return env


def brute_descriptor_stats(batches, ntypes, rcut, rcut_smth, nnei, pair_excluded=()):
    pools = [[] for _ in range(ntypes)]
    for b in batches:
        for k in range(b["coord"].shape[0]):
            atype = b["atype"][k].numpy()
            box = b["box"][k].numpy() if "box" in b else None
            env = brute_env(b["coord"][k].numpy(), box, atype, rcut, rcut_smth, nnei, pair_excluded)
            for t in range(ntypes):
                pools[t].append(env[atype == t])
    davg, dstd = np.zeros((ntypes, nnei, 4)), np.zeros((ntypes, nnei, 4))
    for t in range(ntypes):
        e = np.concatenate(pools[t])
        if e.shape[0] == 0:
            dstd[t] = 0.1
            continue
        davg[t, :, 0] = e[..., 0].mean()
        dstd[t, :, 0] = max(e[..., 0].std(), 0.01)
        dstd[t, :, 1:] = max(e[..., 1:].std(), 0.01)  # population std around the pooled mean
    return davg, dstd


# === neighbour statistics ==================================================================
def test_neighbor_stat_water_and_nopbc() -> None:
    water = [DeepmdSystem(WATER / "data_0", ["O", "H"])]
    got = neighbor_stat(water, 4.5)
    want = brute_neighbor_stat(water, 4.5)
    assert got[0] == want[0]
    assert got[1] == pytest.approx(want[1], rel=1e-12)
    nopbc = [DeepmdSystem(NOPBC / n) for n in ("C1H4O2", "C4H3O1")]
    assert neighbor_stat(nopbc, 2.0) == pytest.approx(brute_neighbor_stat(nopbc, 2.0), rel=1e-12)


def test_neighbor_stat_alloy_layouts(alloy) -> None:
    """Thin cells and virtual atoms: every layout gives the brute-force answer."""
    standard = [DeepmdSystem(p, alloy.type_map) for p in alloy.standard]
    want = brute_neighbor_stat(standard, 4.0)
    assert want[0] == 18  # fcc: 12 + 6 within 4 Å, also in the 8-atom cell made of images
    for paths in (alloy.standard, [alloy.mixed], alloy.dpdata_mixed or alloy.standard):
        got = neighbor_stat(paths, 4.0, alloy.type_map)
        assert got[0] == want[0] and got[1] == pytest.approx(want[1], rel=1e-12)


def test_neighbor_stat_far_apart_and_overlap(tmp_path: Path) -> None:
    from dpa1.data.convert import write_system

    coord = np.array([[[0.0, 0, 0], [7.0, 0, 0]]])
    path = write_system(
        tmp_path / "far", type_map=["H"], atom_types=np.zeros(2, int), coord=coord, box=None
    )
    assert neighbor_stat([path], 3.0) == (0, pytest.approx(7.0))  # looked beyond rcut (up to 10 Å)
    path = write_system(
        tmp_path / "same",
        type_map=["H"],
        atom_types=np.zeros(2, int),
        coord=np.zeros((1, 2, 3)),
        box=None,
    )
    with pytest.raises(ValueError, match="atoms overlap in frame 0"):
        neighbor_stat([path], 3.0)


def test_resolve_sel() -> None:
    assert resolve_sel("auto", 108) == 120  # int(118.8) = 118 → 120
    assert resolve_sel("auto:1.2", 30) == 36
    assert resolve_sel("auto:1", 33) == 36
    assert resolve_sel(46, 108) == 46
    assert resolve_sel(["auto"], 8) == 8  # int(8.8) = 8
    for bad in ("auto:x", "automatic", "auto:1:2", 1.5, True):
        with pytest.raises(ValueError, match="sel must be"):
            resolve_sel(bad, 10)


# === descriptor statistics ==================================================================
def test_descriptor_stats_water_brute_force(tiny_model_config) -> None:
    systems = [WATER / f"data_{k}" for k in range(3)]
    # sel 24 < the largest count within 4 Å, so truncation is exercised; C is absent from the data
    model = build_model(tiny_model_config(["O", "H", "C"], sel=24, set_davg_zero=False))
    batches = SystemSampler(systems, 1, type_map=["O", "H", "C"], seed=2).stat_batches(nbatch=4)
    assert neighbor_stat(systems, 4.0)[0] > 24
    davg, dstd = compute_descriptor_stats(model, batches)
    want_avg, want_std = brute_descriptor_stats(batches, 3, 4.0, 0.5, 24)
    np.testing.assert_allclose(davg.numpy(), want_avg, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dstd.numpy(), want_std, rtol=1e-12)
    assert (davg[2] == 0).all() and (dstd[2] == 0.1).all()  # absent type
    model_zero = build_model(tiny_model_config(["O", "H", "C"], sel=24, set_davg_zero=True))
    davg0, dstd0 = compute_descriptor_stats(model_zero, batches)
    assert (davg0 == 0).all() and torch.equal(dstd0, dstd)


def test_descriptor_stats_pair_exclusion_and_protection(alloy, tiny_model_config, tmp_path) -> None:
    cfg = tiny_model_config(
        alloy.type_map,
        set_davg_zero=False,
        exclude_types=[[2, 3]],
        model={"pair_exclude_types": [[0, 1]]},
    )
    model = build_model(cfg)
    batches = SystemSampler(alloy.standard, 2, type_map=alloy.type_map, seed=0).stat_batches(
        nbatch=1
    )
    davg, dstd = compute_descriptor_stats(model, batches)
    want_avg, want_std = brute_descriptor_stats(
        batches, 4, 4.0, 0.5, 40, pair_excluded=[(0, 1), (2, 3)]
    )
    np.testing.assert_allclose(davg.numpy(), want_avg, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dstd.numpy(), want_std, rtol=1e-12)
    # two atoms out of each other's reach: every slot is padding, std 0 → protected to 0.01
    from dpa1.data.convert import write_system

    path = write_system(
        tmp_path / "far",
        type_map=["Cu"],
        atom_types=np.zeros(2, int),
        coord=np.array([[[0.0, 0, 0], [9.0, 0, 0]]]),
        box=None,
    )
    far = SystemSampler([path], 1, type_map=alloy.type_map, seed=0).stat_batches()
    davg, dstd = compute_descriptor_stats(model, far)
    assert (davg == 0).all() and (dstd[0] == 0.01).all() and (dstd[1:] == 0.1).all()


# === energy bias ==============================================================================
def test_energy_bias_water_brute_force(tiny_model_config) -> None:
    systems = [WATER / f"data_{k}" for k in range(3)]
    model = build_model(tiny_model_config(["O", "H"]))
    batches = SystemSampler(systems, 1, seed=0).stat_batches(nbatch=10)
    bias, std = compute_energy_bias(model, batches)
    a = np.concatenate([b["natoms_vec"][:, 2:].numpy() for b in batches]).astype(float)
    e = np.concatenate([b["energy"][:, 0].numpy() for b in batches])
    want = np.linalg.pinv(a) @ e  # every frame is O64H128: the minimum-norm solution
    np.testing.assert_allclose(bias, want, rtol=1e-10)
    assert std == pytest.approx(np.std(e - a @ want), rel=1e-8, abs=1e-10)


def test_energy_bias_alloy_preset_and_exclusion(alloy, tiny_model_config) -> None:
    sampler = SystemSampler(alloy.standard, 4, type_map=alloy.type_map, seed=0)
    batches = sampler.stat_batches()
    a = np.concatenate([b["natoms_vec"][:, 2:].numpy() for b in batches]).astype(float)
    e = np.concatenate([b["energy"][:, 0].numpy() for b in batches])
    assert a.shape == (15, 4) and np.linalg.matrix_rank(a) == 4
    model = build_model(tiny_model_config(alloy.type_map))
    bias, std = compute_energy_bias(model, batches)
    want = np.linalg.solve(a.T @ a, a.T @ e)  # normal equations: independent of lstsq
    np.testing.assert_allclose(bias, want, rtol=1e-9)
    assert std == pytest.approx(np.std(e - a @ want), rel=1e-6)

    # preset: Ag fixed to -1.5, the others fitted to what is left
    bias, std = compute_energy_bias(model, batches, {"energy": [None, [-1.5], None, None]})
    rest = [0, 2, 3]
    sub = np.linalg.solve(a[:, rest].T @ a[:, rest], a[:, rest].T @ (e + 1.5 * a[:, 1]))
    np.testing.assert_allclose(bias, [sub[0], -1.5, sub[1], sub[2]], rtol=1e-9)
    assert std == pytest.approx(np.std(e + 1.5 * a[:, 1] - a[:, rest] @ sub), rel=1e-6)

    # atom_exclude_types: Ni atoms do not count, their bias stays 0
    excl = build_model(tiny_model_config(alloy.type_map, model={"atom_exclude_types": [3]}))
    bias, _ = compute_energy_bias(excl, batches)
    sub = np.linalg.lstsq(a[:, :3], e, rcond=None)[0]
    np.testing.assert_allclose(bias, [*sub, 0.0], rtol=1e-9, atol=1e-12)


def test_statistics_identical_between_layouts(alloy, tiny_model_config) -> None:
    model = build_model(tiny_model_config(alloy.type_map, set_davg_zero=False))
    results = {}
    layouts = {"standard": alloy.standard, "mixed": [alloy.mixed]}
    if alloy.dpdata_mixed:
        layouts["dpdata_mixed"] = alloy.dpdata_mixed
    for name, paths in layouts.items():
        batches = SystemSampler(paths, 3, type_map=alloy.type_map, seed=1).stat_batches(nbatch=10)
        assert sum(b["coord"].shape[0] for b in batches) == 15  # every frame in the sample
        davg, dstd = compute_descriptor_stats(model, batches)
        bias, std = compute_energy_bias(model, batches)
        results[name] = (davg.numpy(), dstd.numpy(), bias, std)
    ref = results.pop("standard")
    assert (ref[1] != 0.1).all()  # every type present
    for name, got in results.items():
        for x, y in zip(got, ref, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14, err_msg=name)


def test_apply_and_change_energy_bias(alloy, tiny_model_config) -> None:
    model = build_model(tiny_model_config(alloy.type_map, set_davg_zero=False))
    batches = SystemSampler(alloy.standard, 4, type_map=alloy.type_map, seed=0).stat_batches()
    result = apply_statistics(model, batches)
    assert torch.equal(model.descriptor.davg, result["davg"]) and torch.equal(
        model.descriptor.dstd, result["dstd"]
    )
    np.testing.assert_array_equal(model.out_bias[0, :, 0].numpy(), result["bias"])
    assert (model.out_std == result["std"]).all()

    before = model.out_bias.clone()
    delta, _ = change_energy_bias(model, batches)
    np.testing.assert_allclose(
        model.out_bias[0, :, 0].numpy(), before[0, :, 0].numpy() + delta, rtol=1e-14
    )
    # the energy is linear in out_bias: after the change the residual has no per-type trend left
    again, _ = change_energy_bias(model, batches)
    np.testing.assert_allclose(again, 0.0, atol=1e-9)


def test_fparam_aparam_stats(tmp_path: Path, tiny_model_config) -> None:
    from dpa1.data.convert import write_system

    rng = np.random.default_rng(3)
    path = write_system(
        tmp_path / "s",
        type_map=["Cu"],
        atom_types=np.zeros(4, int),
        coord=rng.uniform(0, 6, size=(6, 4, 3)),
        box=np.tile(np.eye(3) * 6, (6, 1, 1)),
        energy=rng.normal(size=6),
    )
    fparam = np.stack([rng.normal(2.0, 3.0, size=6), np.full(6, 0.5)], axis=1)  # 2nd: constant
    aparam = rng.normal(-1.0, 0.2, size=(6, 4))
    np.save(path / "set.000" / "fparam.npy", fparam)
    np.save(path / "set.000" / "aparam.npy", aparam)
    cfg = tiny_model_config(
        ["Cu"],
        model={"fitting_net": {"neuron": [8, 8], "seed": 1, "numb_fparam": 2, "numb_aparam": 1}},
    )
    model = build_model(cfg)
    labels = ["energy", Label("fparam", 2), Label("aparam", 1, atomic=True)]
    batches = SystemSampler([path], 6, type_map=["Cu"], labels=labels, seed=0).stat_batches()
    apply_statistics(model, batches, protect=1e-2)
    np.testing.assert_allclose(model.fitting.fparam_avg.numpy(), fparam.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        model.fitting.fparam_inv_std.numpy(), [1 / fparam[:, 0].std(), 100.0], rtol=1e-10
    )
    np.testing.assert_allclose(model.fitting.aparam_avg.numpy(), [aparam.mean()], rtol=1e-12)
    np.testing.assert_allclose(model.fitting.aparam_inv_std.numpy(), [1 / aparam.std()], rtol=1e-10)
    avg, inv = compute_param_stats(np.array([[1.0], [1.0]]), protect=0.05)
    assert avg[0] == 1.0 and inv[0] == 20.0
