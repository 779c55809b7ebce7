"""Errors of a model on labelled systems, as ``dp test`` reports them.

Energies and virials are compared per frame (and per real atom: ``/N``), forces per
component of every real atom. Totals over systems weight each system by the number of
compared values (frames for energies/virials, force components for forces). Atomic
energies (``--atomic``) are reported per system only, as ``dp test`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dpa1.infer.deep_pot import DeepPot

METRICS = ("energy", "energy_per_atom", "force", "virial", "virial_per_atom", "atom_energy")
PER_SYSTEM_ONLY = ("atom_energy",)  # left out of the weighted total (dp test's mae_ae/rmse_ae)


@dataclass
class DetailBlock:
    """One system's rows of the ``dp test -d`` files (label columns, then prediction).

    Attributes:
        system: the system path as the header names it.
        natoms: atoms per frame (virtual atoms of mixed-type data included, as dp test).
        energy: ``(nf, 2)``.
        force: ``(nf * natoms, 6)``, atoms in the order of the files.
        virial: ``(nf, 18)`` (label zeros when the system has no virial.npy).
        stress: ``(nf, 18)`` ``−virial / volume``, only for periodic systems with virials.
    """

    system: str
    natoms: int
    energy: np.ndarray
    force: np.ndarray
    virial: np.ndarray
    stress: np.ndarray | None


@dataclass
class SystemResult:
    """Labels and predictions of one system (only frames with the label)."""

    path: str
    nframes: int
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict
    )  # name → (label, pred)
    detail: DetailBlock | None = None

    def errors(self) -> dict[str, float]:
        out: dict[str, float] = {"nframes": self.nframes}
        for name in METRICS:
            if name in self.pairs:
                lab, pred = self.pairs[name]
                diff = pred - lab
                out[f"rmse_{name}"] = (
                    float(np.sqrt(np.mean(diff**2))) if diff.size else float("nan")
                )
                out[f"mae_{name}"] = float(np.mean(np.abs(diff))) if diff.size else float("nan")
        return out


def evaluate_system(
    dp: DeepPot,
    system,
    nframes: int | None = None,
    batch: int = 8,
    *,
    detail: bool = False,
    atomic: bool = False,
    frames: np.ndarray | None = None,
) -> SystemResult:
    """Evaluate ``system`` (a :class:`dpa1.data.system.DeepmdSystem`) frame by frame.

    Args:
        nframes: the first ``nframes`` frames over all sets (None or 0 = all), as
            ``dp test -n``.
        frames: the order of the frames (indices over all sets), of which the first
            ``nframes`` are evaluated; default: the files' order.
        detail: also keep the rows of the ``-d`` files (:attr:`SystemResult.detail`).
        atomic: compare atomic energies with ``atom_ener.npy`` (required then).
    """
    if atomic and not system.has_label("atom_ener"):
        raise ValueError(f"{system.path}: --atomic compares atomic energies, but the system "
                         "has no atom_ener.npy")
    n = system.nframes if not nframes else min(int(nframes), system.nframes)
    res = SystemResult(path=str(system.path), nframes=n)
    acc: dict[str, list[list[np.ndarray]]] = {}
    rows: dict[str, list[np.ndarray]] = {}

    def add(name: str, lab: np.ndarray, pred: np.ndarray) -> None:
        acc.setdefault(name, [[], []])
        acc[name][0].append(lab)
        acc[name][1].append(pred)

    order = np.arange(system.nframes) if frames is None else np.asarray(frames)
    for start in range(0, n, batch):
        idx = order[start:min(n, start + batch)]
        fr = system.get_frames(idx)
        atype = fr["atype"]
        with dp.naming(str(system.path), idx, system.idx_map):  # frames, atoms as in the files
            out = dp.eval(
                fr["coord"], fr.get("box"), atype, atomic=atomic,
                fparam=fr.get("fparam"), aparam=fr.get("aparam"),
            )
        e, f, v = out[:3]
        real = atype >= 0
        nreal = real.sum(axis=1).astype(np.float64)
        if fr.get("find_energy", 0.0):
            lab = fr["energy"].reshape(-1)
            add("energy", lab, e.reshape(-1))
            add("energy_per_atom", lab / nreal, e.reshape(-1) / nreal)
        if fr.get("find_force", 0.0):
            add("force", fr["force"][real].reshape(-1), f[real].reshape(-1))
        if fr.get("find_virial", 0.0):
            lab = fr["virial"].reshape(-1, 9)
            add("virial", lab.reshape(-1), v.reshape(-1))
            add(
                "virial_per_atom",
                (lab / nreal[:, None]).reshape(-1),
                (v / nreal[:, None]).reshape(-1),
            )
        if atomic:
            add("atom_energy", fr["atom_ener"][real].reshape(-1), out[3][..., 0][real].reshape(-1))
        if detail:
            for key, value in _detail_rows(system, fr, e, f, v).items():
                rows.setdefault(key, []).append(value)
    for name, (labs, preds) in acc.items():
        res.pairs[name] = (np.concatenate(labs), np.concatenate(preds))
    if detail:
        joined = {k: np.concatenate(v) for k, v in rows.items()}
        res.detail = DetailBlock(system=res.path, natoms=system.natoms,
                                 stress=joined.pop("stress", None), **joined)
    return res


def _detail_rows(system, fr: dict, e: np.ndarray, f: np.ndarray, v: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """The ``dp test -d`` rows of one batch: an absent label is written as zeros, atoms
    go back to the order of the files, the stress needs a box and a virial label."""
    nf = e.shape[0]
    lab_e = fr.get("energy", np.zeros((nf, 1))).reshape(nf, 1)
    lab_f = system.to_file_order(fr.get("force", np.zeros_like(f)), axis=1).reshape(-1, 3)
    lab_v = fr.get("virial", np.zeros((nf, 9))).reshape(nf, 9)
    pred_v = v.reshape(nf, 9)
    out = {
        "energy": np.concatenate([lab_e, e.reshape(nf, 1)], axis=1),
        "force": np.concatenate([lab_f, system.to_file_order(f, axis=1).reshape(-1, 3)], axis=1),
        "virial": np.concatenate([lab_v, pred_v], axis=1),
    }
    if fr.get("find_virial", 0.0) and "box" in fr:
        volume = np.abs(np.linalg.det(fr["box"].reshape(nf, 3, 3))).reshape(nf, 1)
        out["stress"] = np.concatenate([-lab_v / volume, -pred_v / volume], axis=1)
    return out


def weighted_total(results: list[SystemResult]) -> dict[str, float]:
    """Combine systems: mean squared / absolute errors weighted by the number of values."""
    total: dict[str, float] = {"nframes": sum(r.nframes for r in results)}
    for name in METRICS:
        if name in PER_SYSTEM_ONLY:
            continue
        diffs = [r.pairs[name][1] - r.pairs[name][0] for r in results if name in r.pairs]
        if diffs:
            d = np.concatenate(diffs)
            total[f"rmse_{name}"] = float(np.sqrt(np.mean(d**2))) if d.size else float("nan")
            total[f"mae_{name}"] = float(np.mean(np.abs(d))) if d.size else float("nan")
    return total
