"""Errors of a model on labelled systems, as ``dp test`` reports them.

Energies and virials are compared per frame (and per real atom: ``/N``), forces per
component of every real atom. Totals over systems weight each system by the number of
compared values (frames for energies/virials, force components for forces).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dpa1.infer.deep_pot import DeepPot

METRICS = ("energy", "energy_per_atom", "force", "virial", "virial_per_atom")


@dataclass
class SystemResult:
    """Labels and predictions of one system (only frames with the label)."""

    path: str
    nframes: int
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict
    )  # name → (label, pred)

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
    dp: DeepPot, system, nframes: int | None = None, batch: int = 8
) -> SystemResult:
    """Evaluate ``system`` (a :class:`dpa1.data.system.DeepmdSystem`) frame by frame."""
    n = system.nframes if not nframes else min(int(nframes), system.nframes)
    res = SystemResult(path=str(system.path), nframes=n)
    acc: dict[str, list[list[np.ndarray]]] = {}

    def add(name: str, lab: np.ndarray, pred: np.ndarray) -> None:
        acc.setdefault(name, [[], []])
        acc[name][0].append(lab)
        acc[name][1].append(pred)

    for start in range(0, n, batch):
        idx = np.arange(start, min(n, start + batch))
        fr = system.get_frames(idx)
        atype = fr["atype"]
        with dp.naming(str(system.path), start, system.idx_map):  # atoms as in the files
            e, f, v = dp.eval(
                fr["coord"], fr.get("box"), atype, fparam=fr.get("fparam"), aparam=fr.get("aparam")
            )
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
    for name, (labs, preds) in acc.items():
        res.pairs[name] = (np.concatenate(labs), np.concatenate(preds))
    return res


def weighted_total(results: list[SystemResult]) -> dict[str, float]:
    """Combine systems: mean squared / absolute errors weighted by the number of values."""
    total: dict[str, float] = {"nframes": sum(r.nframes for r in results)}
    for name in METRICS:
        diffs = [r.pairs[name][1] - r.pairs[name][0] for r in results if name in r.pairs]
        if diffs:
            d = np.concatenate(diffs)
            total[f"rmse_{name}"] = float(np.sqrt(np.mean(d**2))) if d.size else float("nan")
            total[f"mae_{name}"] = float(np.mean(np.abs(d))) if d.size else float("nan")
    return total
