"""Neighbour lists (docs/design.md, "Neighbour list"): ``build_extended_system`` against the
all-images reference
``brute_force_neighbors``, and ``format_nlist`` (docs/design.md, "External neighbour lists")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dpa1.model.neighbor import (
    _by_centre_then_distance,
    _distinct_images,
    brute_force_neighbors,
    build_extended_system,
    format_nlist,
    frame_neighbors,
)

from helpers import (
    random_cell,
    single_thread,  # noqa: F401  (autouse fixture)
)

RCUT = 3.0


def _random_frame(rng, kind: str, n: int, n_virtual: int = 0):
    if kind == "nopbc":
        box = None
        coord = rng.uniform(-1.0, 6.0, size=(n, 3))
    elif kind == "thin":  # one face distance < rcut: the same atom is seen through several images
        box = random_cell(rng, lengths=(5.5, 6.0, 1.9), tilt=1.0)
        coord = rng.uniform(-1.0, 2.0, size=(n, 3)) @ box
    elif kind == "very_thin":  # every face distance < rcut
        box = random_cell(rng, lengths=(2.4, 2.8, 2.2), tilt=0.7)
        coord = rng.uniform(-2.0, 3.0, size=(n, 3)) @ box
    else:  # triclinic, atoms up to a cell outside
        box = random_cell(rng, lengths=(6.0, 7.0, 6.5), tilt=2.0)
        coord = rng.uniform(-1.0, 2.0, size=(n, 3)) @ box
    atype = rng.integers(0, 3, size=n)
    atype[rng.choice(n, size=n_virtual, replace=False)] = -1
    return coord, atype, box


def _extended(coord, atype, box, nnei: int, rcut: float = RCUT):
    c = torch.tensor(coord)[None]
    a = torch.tensor(atype)[None]
    b = None if box is None else torch.tensor(box)[None]
    out = build_extended_system(c, a, b, rcut, nnei)
    return [t[0].numpy() for t in out]


def _slots(coord, box, ext_coord, mapping, i: int, row) -> list[tuple[float, int, tuple]]:
    """(distance, local index, lattice shift) of the valid slots of centre ``i``'s row."""
    out = []
    for e in row[row >= 0]:
        j = int(mapping[e])
        if box is None:
            shift = (0, 0, 0)
        else:
            s = (ext_coord[e] - coord[j]) @ np.linalg.inv(box)
            assert np.abs(s - np.round(s)).max() < 1e-9, "ghost is not a lattice image"
            shift = tuple(int(x) for x in np.round(s))
        out.append((float(np.linalg.norm(ext_coord[e] - ext_coord[i])), j, shift))
    return out


def _check_against_brute_force(coord, atype, box, nnei: int, rcut: float = RCUT) -> int:
    """Compare every row; return the largest neighbour count seen (to check coverage)."""
    ext_coord, ext_atype, mapping, nlist = _extended(coord, atype, box, nnei, rcut)
    nloc = coord.shape[0]
    assert nlist.shape == (nloc, nnei)
    # Local atoms first, unchanged (identity mapping); ghosts are lattice images.
    np.testing.assert_array_equal(mapping[:nloc], np.arange(nloc))
    np.testing.assert_allclose(ext_coord[:nloc], coord, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ext_atype, atype[mapping])
    if box is None:
        assert ext_coord.shape[0] == nloc
    ref = brute_force_neighbors(coord, atype, box, rcut)
    most = 0
    for i in range(nloc):
        row = nlist[i]
        nvalid = int((row >= 0).sum())
        # Padding is −1, at the end.
        assert np.all(row[:nvalid] >= 0) and np.all(row[nvalid:] == -1), f"row {i}: {row}"
        if atype[i] < 0:
            assert nvalid == 0, "virtual atoms have no neighbours"
            continue
        assert np.all(atype[mapping[row[:nvalid]]] >= 0), "virtual atom used as a neighbour"
        assert i not in row[:nvalid], "an atom is not its own neighbour"
        got = _slots(coord, box, ext_coord, mapping, i, row)
        want = ref[i]
        most = max(most, len(want))
        assert nvalid == min(len(want), nnei), f"row {i}: {nvalid} slots, {len(want)} in range"
        d_got = np.array([g[0] for g in got])
        d_want = np.array([w[0] for w in want[:nnei]])
        # Sorted by distance, nearest kept: the distance lists agree.
        assert np.all(np.diff(d_got) >= -1e-12), f"row {i} not sorted"
        np.testing.assert_allclose(d_got, d_want, rtol=0, atol=1e-10)
        assert np.all(d_got <= rcut)
        # The same (atom, image) pairs; with truncation, only below the boundary distance
        # (equidistant images, e.g. x ± c of the same atom, may be kept either way).
        if len(want) <= nnei:
            assert sorted((j, s) for _, j, s in got) == sorted((j, s) for _, j, s in want)
        else:
            cut = want[nnei][0]
            keep_got = sorted((j, s) for d, j, s in got if d < cut - 1e-9)
            keep_want = sorted((j, s) for d, j, s in want if d < cut - 1e-9)
            assert keep_got == keep_want
        # No (atom, image) pair twice.
        assert len({(j, s) for _, j, s in got}) == len(got)
    return most


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["triclinic", "thin", "very_thin", "nopbc"])
def test_matches_brute_force(kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = {"triclinic": 25, "thin": 10, "very_thin": 6, "nopbc": 30}[kind]
    coord, atype, box = _random_frame(rng, kind, n, n_virtual=2)
    most = _check_against_brute_force(coord, atype, box, nnei=200)
    assert most > 3
    if kind in ("thin", "very_thin"):
        # Several images of one atom (and of the centre itself) are neighbours.
        ext_coord, _, mapping, nlist = _extended(coord, atype, box, 200)
        row = nlist[int(np.flatnonzero(atype >= 0)[0])]
        js = mapping[row[row >= 0]]
        assert np.bincount(js).max() >= 2


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["triclinic", "thin", "nopbc"])
def test_truncation_keeps_the_nearest(kind: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    coord, atype, box = _random_frame(rng, kind, 25 if kind != "thin" else 12, n_virtual=1)
    ref = brute_force_neighbors(coord, atype, box, RCUT)
    counts = [len(r) for r in ref]
    nnei = max(2, int(np.median(counts)) - 2)
    assert max(counts) > nnei  # truncation happens
    _check_against_brute_force(coord, atype, box, nnei=nnei)


def test_cutoff_is_inclusive() -> None:
    coord = np.array([[0.0, 0.0, 0.0], [RCUT, 0.0, 0.0], [0.0, np.nextafter(RCUT, 4.0), 0.0]])
    atype = np.array([0, 1, 2])
    _, _, _, nlist = _extended(coord, atype, None, 4)
    assert list(nlist[0]) == [1, -1, -1, -1]


def test_batch_of_frames_with_different_ghost_counts() -> None:
    rng = np.random.default_rng(7)
    frames = [_random_frame(rng, "triclinic", 12, 1), _random_frame(rng, "thin", 12, 1)]
    coord = torch.tensor(np.stack([f[0] for f in frames]))
    atype = torch.tensor(np.stack([f[1] for f in frames]))
    box = torch.tensor(np.stack([f[2] for f in frames]))
    ext_coord, ext_atype, mapping, nlist = build_extended_system(coord, atype, box, RCUT, 60)
    for f, (c, a, b) in enumerate(frames):
        e1, t1, m1, n1 = _extended(c, a, b, 60)
        nall = e1.shape[0]
        np.testing.assert_array_equal(nlist[f].numpy(), n1)
        np.testing.assert_array_equal(mapping[f, :nall].numpy(), m1)
        np.testing.assert_allclose(ext_coord[f, :nall].numpy(), e1, atol=1e-12)
        # Padding atoms of the shorter frame: type −1 and never referenced.
        assert np.all(ext_atype[f, nall:].numpy() == -1)
        assert nlist[f].max() < nall
    assert ext_coord.shape[1] > min(_extended(*fr, 60)[0].shape[0] for fr in frames)


def test_ghost_coordinates_are_differentiable_in_coord_and_box() -> None:
    rng = np.random.default_rng(3)
    c, a, b = _random_frame(rng, "thin", 6)
    coord = torch.tensor(c)[None].requires_grad_(True)
    box = torch.tensor(b)[None].requires_grad_(True)
    ext_coord, _, mapping, _ = build_extended_system(coord, torch.tensor(a)[None], box, RCUT, 50)
    ext_coord.sum().backward()
    counts = np.bincount(mapping[0].numpy(), minlength=6)
    np.testing.assert_allclose(coord.grad[0].numpy(), np.repeat(counts[:, None], 3, 1))
    assert box.grad.abs().sum() > 0


# === format_nlist (docs/design.md, "External neighbour lists") ====================================
def _raw_list(seed: int, width: int | None = None):
    """An extended system and a shuffled, over-long list that includes atoms beyond rcut."""
    rng = np.random.default_rng(seed)
    coord, atype, box = _random_frame(rng, "triclinic", 15)
    ext_coord, ext_atype, mapping, nlist = build_extended_system(
        torch.tensor(coord)[None], torch.tensor(atype)[None], torch.tensor(box)[None],
        RCUT + 1.5, 80)
    nlist = nlist.clone()
    for i in range(nlist.shape[1]):
        nv = int((nlist[0, i] >= 0).sum())
        nlist[0, i, :nv] = nlist[0, i, torch.as_tensor(rng.permutation(nv))]
    if width is not None:
        nlist = nlist[..., :width]
    return ext_coord, nlist


def _dist(ext_coord, nlist):
    idx = nlist.clamp(min=0)
    xn = ext_coord[0][idx[0]]
    d = torch.linalg.norm(xn - ext_coord[0, : nlist.shape[1]].unsqueeze(1), dim=-1)
    return torch.where(nlist[0] >= 0, d, torch.inf)


def test_format_nlist_pads_short_lists() -> None:
    ext_coord, nlist = _raw_list(0, width=5)
    out = format_nlist(ext_coord, nlist, 9, RCUT)
    assert out.shape == (1, nlist.shape[1], 9)
    # Untouched, even entries beyond rcut.
    np.testing.assert_array_equal(out[..., :5].numpy(), nlist.numpy())
    assert np.all(out[..., 5:].numpy() == -1)


def test_format_nlist_sorts_and_truncates_long_lists() -> None:
    ext_coord, nlist = _raw_list(1)
    nnei = 6
    out = format_nlist(ext_coord, nlist, nnei, RCUT)
    assert out.shape == (1, nlist.shape[1], nnei)
    d_in = _dist(ext_coord, nlist).numpy()
    d_out = _dist(ext_coord, out).numpy()
    for i in range(nlist.shape[1]):
        want = np.sort(d_in[i][d_in[i] <= RCUT])[:nnei]
        got = d_out[i][np.isfinite(d_out[i])]
        np.testing.assert_allclose(got, want, atol=0)  # the nearest, sorted, within rcut
        row = out[0, i].numpy()
        nv = want.size
        assert np.all(row[:nv] >= 0) and np.all(row[nv:] == -1)
    assert (d_in <= RCUT).sum(1).max() > nnei  # truncation happened
    assert np.isfinite(d_in).sum() > (d_in <= RCUT).sum()  # and entries beyond rcut existed


def test_format_nlist_keeps_order_at_equal_width() -> None:
    ext_coord, nlist = _raw_list(2)
    n = nlist.shape[-1]
    out = format_nlist(ext_coord, nlist, n, RCUT)
    d = _dist(ext_coord, nlist)
    expect = torch.where(d <= RCUT, nlist[0], -1)
    np.testing.assert_array_equal(out[0].numpy(), expect.numpy())
    assert (expect != nlist[0]).any()  # some entries beyond rcut were removed in place


def test_centre_then_distance_order_is_lexsort() -> None:
    """The fast sort gives ``np.lexsort((d, i))`` exactly: ties, near-ties and the fallback."""
    rng = np.random.default_rng(3)
    for big in (0, 10**6):  # large centre indices: distances 1e-12 apart share a key
        i = rng.integers(0, 50, size=5000) + big
        d = rng.choice(np.linspace(0.5, 6.0, 40), size=5000)  # many exact ties
        d = d + rng.choice([0.0, 1e-12, 3e-12], size=5000)  # and near-ties
        assert np.array_equal(_by_centre_then_distance(i, d), np.lexsort((d, i)))
    # A larger distance listed first with keys that round together: needs the fallback.
    i = np.array([2**40, 2**40, 0])
    d = np.array([1.0 + 1e-5, 1.0, 2.0])
    assert (i * (d.max() + 1.0) + d)[0] == (i * (d.max() + 1.0) + d)[1]
    assert np.array_equal(_by_centre_then_distance(i, d), np.lexsort((d, i)))


@pytest.mark.parametrize("kind", ["thin", "very_thin", "triclinic"])
def test_ghost_images_in_lexicographic_order(kind: str) -> None:
    """One ghost per distinct (local atom, shift), ordered as ``np.unique(rows, axis=0)``."""
    rng = np.random.default_rng(11)
    coord, atype, box = _random_frame(rng, kind, 30)
    mapping, shift, nlist = frame_neighbors(coord, atype, box, RCUT, 200)
    nloc = coord.shape[0]
    rows = np.concatenate([mapping[nloc:, None], shift[nloc:]], axis=1)
    assert rows.shape[0] > 0 and (shift[nloc:] != 0).any(axis=1).all()
    assert np.array_equal(rows, np.unique(rows, axis=0))
    used = np.unique(nlist[nlist >= nloc])
    # every ghost is somebody's neighbour
    assert np.array_equal(used, np.arange(nloc, mapping.size))


@pytest.mark.parametrize("huge_shift", [False, True])
def test_distinct_images_is_unique_on_rows(huge_shift: bool) -> None:
    """The packed-key ``unique`` equals ``np.unique(rows, axis=0)``, also past int64's reach."""
    rng = np.random.default_rng(5)
    j = rng.integers(0, 50, size=3000)
    s = rng.integers(-3, 4, size=(3000, 3))
    if huge_shift:  # an atom ~2 million cells away: the packed key would overflow
        j[0], s[0] = 2**21, [2**21, 0, -(2**21)]
    rows, inverse = np.unique(np.concatenate([j[:, None], s], axis=1), axis=0, return_inverse=True)
    uj, us, inv = _distinct_images(j, s)
    assert np.array_equal(uj, rows[:, 0]) and np.array_equal(us, rows[:, 1:])
    assert np.array_equal(inv, inverse.reshape(-1))


@pytest.mark.parametrize("kind", ["triclinic", "thin", "very_thin", "nopbc"])
def test_native_bookkeeping_equals_numpy(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C++ sort/truncate/images step (``dpa1/accel/csrc/neighbor_list.cpp``) gives the NumPy
    code's lists exactly: with truncation, virtual atoms, exact distance ties (a lattice of
    atoms) and images seen through several shifts, and when the image keys' table is sparse
    (a sort)."""
    from dpa1.accel.build import native_ops
    from dpa1.model import accel_hook, neighbor

    if not native_ops():
        pytest.skip(
            "the C++ ops are not built here (test_tuned_paths requires them where a compiler is)"
        )
    rng = np.random.default_rng(21)
    cases = [_random_frame(rng, kind, n, n_virtual=v) for n, v in ((40, 0), (25, 5))]
    if kind != "nopbc":  # equal distances everywhere: ties are kept in pair order
        grid = np.stack(np.meshgrid(*[np.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3) * 1.3
        cases.append((grid, np.zeros(len(grid), dtype=np.int64), np.eye(3) * 3.9))
        # atoms many cells away: the image keys span a wide range (sort instead of a table)
        coord, atype, box = cases[0]
        far = coord.copy()
        far[:3] += np.array([[40, -35, 20], [-60, 10, 5], [7, 80, -90]]) @ box
        cases.append((far, atype, box))
    for coord, atype, box in cases:
        for nnei in (3, 17, 400):
            got = neighbor.frame_neighbors(coord, atype, box, RCUT, nnei)
            with monkeypatch.context() as m:
                m.setattr(accel_hook, "native_ops", lambda: False)
                want = neighbor.frame_neighbors(coord, atype, box, RCUT, nnei)
            for name, a, b in zip(("mapping", "shift", "nlist"), got, want, strict=True):
                assert a.dtype == b.dtype and np.array_equal(a, b), f"{kind}, nnei {nnei}: {name}"


# === geometries the pair search's cell grid cannot take as they are ========================
# vesin dies of SIGFPE on them (tests/test_edges_infer.py has the model-level checks), so they
# run in a child process: a regression fails this test instead of killing pytest.
_GRID_SCRIPT = r"""
import json
import numpy as np
from dpa1.model.neighbor import _frame_pairs, _vesin_grid_degenerate

def pairs(coord, box, rcut):
    i, j, _, d = _frame_pairs(coord, box, rcut)
    return sorted(zip(i.tolist(), j.tolist())), d.tolist()

rng = np.random.default_rng(3)
out = {}
# two clusters 1e6 and 1e9 Å apart, and a 380 Å flat sheet / 1.1e5 Å chain of atoms 1.9 Å
# apart (no gap to close at rcut 1) with partners 0.6 Å above every 7th atom
a = rng.uniform(0.0, 3.0, size=(12, 3))
g = np.stack(np.meshgrid(np.arange(200.0), np.arange(200.0), indexing="ij"), -1).reshape(-1, 2)
sheet = np.c_[g * 1.9, np.zeros(len(g))]
chain = np.c_[np.arange(60000.0) * 1.9, np.zeros((60000, 2))]
for name, coord, rcut in (
    ("far_1e6", np.r_[a, a + [1e6, 0.0, 0.0]], 2.0),
    ("far_1e9", np.r_[a, a + [3.0, 1e9, -2.0]], 2.0),
    ("sheet", sheet, 1.0),
    ("chain", chain, 1.0),
):
    if name in ("sheet", "chain"):
        top = coord[::7] + [0.0, 0.0, 0.6]
        coord = np.r_[coord, top]
    got, dist = pairs(coord, None, rcut)
    out[name] = {"degenerate": bool(_vesin_grid_degenerate(np.ptp(coord, axis=0), rcut)),
                 "n": len(coord), "pairs": got, "d": dist}
    if name.startswith("far"):
        alone = pairs(a, None, rcut)[0]
        out[name]["alone"] = alone + [(i + 12, j + 12) for i, j in alone]
try:
    _frame_pairs(np.zeros((2, 3)) + [0.0, 0.0, 1.0], np.diag([1e4, 1e4, 20.0]), 4.0)
    out["slab"] = "no error"
except ValueError as err:
    out["slab"] = str(err)
print(json.dumps(out))
"""


def test_pair_search_survives_grids_vesin_cannot_bin() -> None:
    """Clusters 1e6 and 1e9 Å apart, a wide flat sheet and a long chain (non-periodic): the
    same pairs as each part alone / as built, never a dead process; a periodic slab too
    elongated for the grid is a one-line error."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    run = subprocess.run(
        [sys.executable, "-c", _GRID_SCRIPT],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    for name in ("far_1e6", "far_1e9", "sheet", "chain"):
        res = out[name]
        assert res["degenerate"], f"{name}: not a case vesin's grid fails on"
        got = [tuple(p) for p in res["pairs"]]
        if name.startswith("far"):
            assert got == sorted(map(tuple, res["alone"])) and len(got) > 12, name
            continue
        base = {"sheet": 200 * 200, "chain": 60000}[name]  # atoms before the partners
        tops = range(res["n"] - base)
        want = sorted([(7 * k, base + k) for k in tops] + [(base + k, 7 * k) for k in tops])
        assert got == want, name
        np.testing.assert_allclose(res["d"], 0.6, atol=1e-9)
    assert "too flat or elongated" in out["slab"] and "rcut 4" in out["slab"]
