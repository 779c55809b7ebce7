"""Neighbour lists (docs/design.md, "Neighbour list"): built without gradients, apart from
the model.

The model never searches for neighbours itself: it receives extended coordinates
(local atoms first, then periodic images), a ``mapping`` from extended to local
atoms and a fixed-width list ``nlist (nf, nloc, nnei)`` of extended indices sorted
by distance and padded with −1. :func:`build_extended_system` produces these with
vesin's O(N) cell lists, creating only the ghost images that are actually
neighbours, so ``nall`` stays close to ``nloc`` for large cells. An MD engine can
supply its own list instead (:func:`format_nlist`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import vesin
from torch import Tensor

from dpa1.model import accel_hook

# vesin bins atoms into a grid of cells about one cutoff wide, of at most 1e5 cells: a larger grid
# is shrunk keeping its proportions, and a very flat or elongated one (two molecules 1e6 Å apart,
# a 1,300 Å flake at rcut 4) then gets an axis of zero cells and the process dies of an integer
# division by zero (vesin 0.6). _vesin_grid_degenerate predicts that from the box alone.
_VESIN_MAX_CELLS = 1e5


def _vesin_grid_degenerate(faces: Sequence[float], cutoff: float) -> bool:
    """Whether vesin's cell grid for a box with these face distances loses an axis."""
    n = [max(math.trunc(float(f) / cutoff), 1) for f in faces]  # 3 numbers: no NumPy overhead
    if n[0] * n[1] * n[2] <= _VESIN_MAX_CELLS:
        return False
    rxy, ryz = n[0] / n[1], n[1] / n[2]
    n2 = math.trunc(math.cbrt(_VESIN_MAX_CELLS / (rxy * ryz * ryz)))
    n1 = math.trunc(ryz * n2)
    return min(n2, n1, math.trunc(rxy * n1)) < 1


def _cell_degenerate(box: np.ndarray, cutoff: float) -> bool:
    """:func:`_vesin_grid_degenerate` of a periodic cell; the face distances are computed only
    when the lattice vectors' lengths (their upper bounds) could make a grid that large."""
    bound = 1.0
    for row in box.tolist():
        bound *= max(math.hypot(*row) / cutoff, 1.0)
    if bound <= _VESIN_MAX_CELLS:
        return False
    areas = np.linalg.norm(np.cross(box[[1, 2, 0]], box[[2, 0, 1]]), axis=1)
    faces = abs(np.linalg.det(box)) / areas
    return _vesin_grid_degenerate(faces, cutoff)


def _vesin_safe_cluster(coord: np.ndarray, cutoff: float) -> np.ndarray:
    """Non-periodic coordinates with the same pairs within ``cutoff`` (rows added at the end
    have none) whose bounding box vesin can bin.

    Gaps wider than ``2·cutoff`` between groups of atoms along an axis are closed to
    ``2·cutoff`` (each group moves rigidly, so pairs and their distances are kept); a system
    still too flat or thin for the grid gets two atoms at far corners, ``2·cutoff`` outside
    every atom along every axis, that widen its thin axes.
    """
    lo = coord.min(axis=0)
    if not _vesin_grid_degenerate(coord.max(axis=0) - lo, cutoff):
        return coord
    x = coord - lo
    for ax in range(3):
        order = np.argsort(x[:, ax], kind="stable")
        excess = np.maximum(np.diff(x[order, ax]) - 2.0 * cutoff, 0.0)
        if excess.any():
            x[order[1:], ax] -= np.cumsum(excess)
    extent = x.max(axis=0)
    if not _vesin_grid_degenerate(extent, cutoff):
        return x
    for ratio in (100.0, 1.0):  # thin axes to 1/100 of the widest, else a cube
        far = np.maximum(extent, extent.max() / ratio) + 2.0 * cutoff
        if not _vesin_grid_degenerate(far + 2.0 * cutoff, cutoff):
            break
    return np.concatenate([x, np.full((1, 3), -2.0 * cutoff), far[None]])


def _frame_pairs(
    coord: np.ndarray, box: np.ndarray | None, rcut: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i → j`` within ``rcut`` (inclusive) of one frame: ``i, j, S (npair, 3), d``.

    ``r_ij = x_j − x_i + S·H`` with the rows of ``H`` the lattice vectors.

    Raises:
        ValueError: a periodic cell too flat or elongated for vesin's cell grid.
    """
    # vesin's cutoff is exclusive; DeePMD's is inclusive (docs/design.md, "Neighbour list"):
    # widen, then filter.
    cutoff = rcut * (1.0 + 1e-12) + 1e-12
    nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
    if box is None:
        if coord.shape[0] < 2:
            return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.int64),
                    np.zeros(0))
        i, j, s, d = nl.compute(_vesin_safe_cluster(coord, cutoff), np.zeros((3, 3)), False, "ijSd")
    else:
        if _cell_degenerate(box, cutoff):
            lengths = np.array2string(np.linalg.norm(box, axis=1), precision=4)
            raise ValueError(
                f"periodic cell with lattice vectors {lengths} Å long is too flat or elongated "
                f"for the neighbour search at rcut {rcut:g} Å; use a cell of less extreme "
                "proportions (e.g. less vacuum) or no periodicity")
        i, j, s, d = nl.compute(coord, box, True, "ijSd")
    keep = d <= rcut
    if not keep.all():
        i, j, s, d = i[keep], j[keep], s[keep], d[keep]
    return i.astype(np.int64), j.astype(np.int64), s.astype(np.int64), d


def _by_centre_then_distance(i: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``np.lexsort((d, i))``, 2-3x faster: one stable sort of the float key ``w·i + d``
    (``w`` = 1 + the largest distance, so centres never mix).

    Rounding the key is monotonic, so it can only merge distances of one centre that differ
    by less than its last bit; the stable sort then keeps their input order, which is
    lexsort's unless a larger distance came first. That (rare) case is detected, and the
    lexsort used instead, so the result is always lexsort's.
    """
    width = float(d.max(initial=0.0)) + 1.0
    order = np.argsort(i * width + d, kind="stable")
    i_s, d_s = i[order], d[order]
    if np.any((i_s[1:] == i_s[:-1]) & (d_s[1:] < d_s[:-1])):
        return np.lexsort((d, i))
    return order


def _distinct_images(j: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows ``(j, s0, s1, s2)`` in lexicographic order, and each row's index among them.

    ``np.unique(rows, axis=0, return_inverse=True)``, 5-10x faster: each row is packed into
    one int64 key (mixed radix on non-negative digits keeps the order).
    """
    lo = s.min(axis=0)
    radix = s.max(axis=0) - lo + 1
    if (int(j.max()) + 1) * int(np.prod(radix)) >= 2**62:  # would overflow: not seen in practice
        pairs = np.concatenate([j[:, None], s], axis=1)
        uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
        return uniq[:, 0], uniq[:, 1:], inverse.reshape(-1)
    key = j
    for ax in range(3):
        key = key * radix[ax] + (s[:, ax] - lo[ax])
    uniq, inverse = np.unique(key, return_inverse=True)
    uniq_s = np.empty((uniq.size, 3), dtype=np.int64)
    for ax in (2, 1, 0):
        uniq, uniq_s[:, ax] = np.divmod(uniq, radix[ax])
    return uniq, uniq_s + lo, inverse.reshape(-1)


class PairSummary(NamedTuple):
    """What the pair search of one frame found before truncation to ``nnei``, for the checks
    of inference front-ends: the closest pair ``i ≤ j`` (local indices; ``image``: one is a
    periodic image of the other's cell) at distance ``d`` (inf without pairs), and an atom
    ``busiest`` with the most neighbours, ``count``."""

    i: int
    j: int
    d: float
    image: bool
    busiest: int
    count: int


NO_PAIRS = PairSummary(-1, -1, float("inf"), False, -1, 0)


def overlap_distance(rcut: float) -> float:
    """Pairs at most this far apart are taken for one atom listed twice."""
    return 1e-6 * max(1.0, rcut)


def frame_neighbors(
    coord: np.ndarray,
    atype: np.ndarray,
    box: np.ndarray | None,
    rcut: float,
    nnei: int,
    summary: list[PairSummary] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Extended system of one frame.

    Args:
        coord: ``(nloc, 3)``; atype: ``(nloc,)`` (−1 = virtual); box: ``(3, 3)`` or None.
        summary: if given, the frame's :class:`PairSummary` is appended to it.

    Returns:
        ``mapping (nall,)``, integer ``shift (nall, 3)`` (image = ``x[mapping] + shift·H``)
        and ``nlist (nloc, nnei)`` of extended indices, nearest first, −1 padded.
    """
    nloc = coord.shape[0]
    real = np.flatnonzero(atype >= 0)
    nlist = np.full((nloc, nnei), -1, dtype=np.int64)
    mapping = np.arange(nloc, dtype=np.int64)
    shift = np.zeros((nloc, 3), dtype=np.int64)
    if real.size == 0:
        if summary is not None:
            summary.append(NO_PAIRS)
        return mapping, shift, nlist
    i, j, s, d = _frame_pairs(coord[real], box, rcut)
    i, j = real[i], real[j]  # virtual atoms were never offered: nobody's neighbour
    if summary is not None:
        summary.append(_summarize(i, j, s, d, nloc))
    # The same steps in C++ (dpa1/accel/csrc/neighbor_list.cpp), when its int64 image keys
    # cannot overflow
    span = s.max(axis=0, initial=0) - s.min(axis=0, initial=0) + 1
    fast = None
    if nloc * float(np.prod(span)) < 2**61:
        fast = accel_hook.sorted_nlist(i, j, s, d, nloc, nnei)
    if fast is not None:
        nl, ghost_j, ghost_s = fast
        return np.concatenate([mapping, ghost_j]), np.concatenate([shift, ghost_s]), nl
    order = _by_centre_then_distance(i, d)
    i, j, s = i[order], j[order], s[order]
    count = np.bincount(i, minlength=nloc)
    rank = np.arange(i.size) - (np.cumsum(count) - count)[i]
    keep = rank < nnei  # truncation keeps the nnei nearest
    i, j, s, rank = i[keep], j[keep], s[keep], rank[keep]

    ext = j.copy()
    ghost = np.any(s != 0, axis=1)
    if ghost.any():
        uniq_j, uniq_s, inverse = _distinct_images(j[ghost], s[ghost])
        ext[ghost] = nloc + inverse
        mapping = np.concatenate([mapping, uniq_j])
        shift = np.concatenate([shift, uniq_s])
    nlist[i, rank] = ext
    return mapping, shift, nlist


def _summarize(
    i: np.ndarray, j: np.ndarray, s: np.ndarray, d: np.ndarray, nloc: int
) -> PairSummary:
    """:class:`PairSummary` of a frame's pairs (all of them, before truncation)."""
    if d.size == 0:
        return NO_PAIRS
    k = int(np.argmin(d))
    count = np.bincount(i, minlength=nloc)
    busiest = int(np.argmax(count))
    a, b = sorted((int(i[k]), int(j[k])))  # the full list has both directions: name one
    return PairSummary(a, b, float(d[k]), bool(s[k].any()), busiest, int(count[busiest]))


def build_extended_system(
    coord: Tensor,
    atype: Tensor,
    box: Tensor | None,
    rcut: float,
    nnei: int,
    summary: list[PairSummary] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Extended coordinates, types, mapping and neighbour list of a batch.

    Args:
        coord: ``(nf, nloc, 3)``; atype: ``(nf, nloc)``; box: ``(nf, 3, 3)`` / ``(nf, 9)`` or None.
        summary: if given, each frame's :class:`PairSummary` is appended to it.

    Returns:
        ``ext_coord (nf, nall, 3)`` (differentiable in ``coord`` and ``box``),
        ``ext_atype (nf, nall)`` (−1 on padding), ``mapping (nf, nall)``,
        ``nlist (nf, nloc, nnei)``.
    """
    nf, nloc, _ = coord.shape
    device = coord.device
    c_np = coord.detach().cpu().to(torch.float64).numpy()
    t_np = atype.detach().cpu().numpy()
    b_np = None if box is None else box.detach().cpu().to(torch.float64).numpy().reshape(nf, 3, 3)
    frames = [
        frame_neighbors(c_np[f], t_np[f], None if b_np is None else b_np[f], rcut, nnei, summary)
        for f in range(nf)
    ]
    nall = max(m.shape[0] for m, _, _ in frames)
    mapping = np.zeros((nf, nall), dtype=np.int64)
    shift = np.zeros((nf, nall, 3), dtype=np.float64)
    valid = np.zeros((nf, nall), dtype=bool)
    nlist = np.stack([n for _, _, n in frames])
    for f, (m, s, _) in enumerate(frames):
        mapping[f, : m.size] = m
        shift[f, : m.size] = s
        valid[f, : m.size] = True
    mapping_t = torch.from_numpy(mapping).to(device)
    ext_coord = torch.gather(coord, 1, mapping_t.unsqueeze(-1).expand(-1, -1, 3))
    if box is not None:
        shift_t = torch.from_numpy(shift).to(device=device, dtype=coord.dtype)
        ext_coord = ext_coord + torch.bmm(shift_t, box.reshape(nf, 3, 3).to(coord.dtype))
    ext_atype = torch.gather(atype, 1, mapping_t)
    ext_atype = torch.where(torch.from_numpy(valid).to(device), ext_atype, -1)
    return ext_coord, ext_atype, mapping_t, torch.from_numpy(nlist).to(device)


def format_nlist(ext_coord: Tensor, nlist: Tensor, nnei: int, rcut: float) -> Tensor:
    """Bring an externally supplied list ``(nf, nloc, n)`` to width ``nnei``
    (docs/design.md, "External neighbour lists")."""
    nf, nloc, n = nlist.shape
    if n < nnei:
        pad = torch.full((nf, nloc, nnei - n), -1, dtype=nlist.dtype, device=nlist.device)
        return torch.cat([nlist, pad], dim=-1)
    mask = nlist >= 0
    idx = nlist.clamp(min=0)
    xn = torch.gather(ext_coord, 1, idx.reshape(nf, -1, 1).expand(-1, -1, 3)).reshape(
        nf, nloc, n, 3
    )
    r = torch.linalg.norm(xn - ext_coord[:, :nloc].unsqueeze(2), dim=-1)
    r = torch.where(mask, r, torch.full_like(r, float("inf")))
    if n > nnei:
        r, order = torch.sort(r, dim=-1)
        nlist = torch.gather(nlist, 2, order)[..., :nnei]
        r = r[..., :nnei]
    return torch.where(r <= rcut, nlist, -1)


def brute_force_neighbors(
    coord: np.ndarray, atype: np.ndarray, box: np.ndarray | None, rcut: float
) -> list[list[tuple[float, int, tuple[int, int, int]]]]:
    """All-images reference: for each atom, sorted ``(d, j, shift)`` within ``rcut``.

    Used by tests only; it enumerates every lattice shift that can reach ``rcut``.
    """
    nloc = coord.shape[0]
    if box is None:
        shifts = np.zeros((1, 3), dtype=np.int64)
    else:
        vol = abs(np.linalg.det(box))
        a, b, c = box
        faces = vol / np.linalg.norm([np.cross(b, c), np.cross(c, a), np.cross(a, b)], axis=1)
        # Unwrapped input: allow for atoms up to a few cells away from each other.
        span = np.abs(np.floor(coord @ np.linalg.inv(box))).max(initial=0) * 2 + 1
        n = (np.ceil(rcut / faces) + span).astype(int)
        grids = np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij")
        shifts = np.stack([g.reshape(-1) for g in grids], axis=1)
    out: list[list[tuple[float, int, tuple[int, int, int]]]] = []
    for i in range(nloc):
        rows: list[tuple[float, int, tuple[int, int, int]]] = []
        if atype[i] >= 0:
            for j in range(nloc):
                if atype[j] < 0:
                    continue
                disp = coord[j] - coord[i] + (shifts @ box if box is not None else shifts)
                d = np.linalg.norm(disp, axis=-1)
                for k in np.flatnonzero(d <= rcut):
                    if j == i and not shifts[k].any():
                        continue
                    rows.append((float(d[k]), j, tuple(int(x) for x in shifts[k])))
        out.append(sorted(rows))
    return out
