"""``DeepPot``: DeePMD-kit's Python inference API for any dpa1-readable model file."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from dpa1.infer.descriptor import descriptor_lower
from dpa1.io.model_file import load_model
from dpa1.model.neighbor import PairSummary, build_extended_system, overlap_distance


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class DeepPot:
    """Evaluate energies, forces and virials like ``deepmd.infer.DeepPot``.

    Args:
        model: a ``.pth`` (frozen), ``.pt`` (checkpoint) or ``.dp``/``.yaml`` file, or a
            loaded :class:`~dpa1.model.model.EnergyModel`.
        device: ``"cpu"``, ``"cuda"``…; default: cuda when available.
        batch_frames: frames evaluated together (bounds memory for long trajectories).
        model_branch: the branch of a multi-task DeePMD-kit checkpoint (alias ``head``, as
            in DeePMD-kit); refused for other models.
    """

    def __init__(
        self,
        model: str | os.PathLike | torch.nn.Module,
        device: str | torch.device | None = None,
        batch_frames: int = 16,
        model_branch: str | None = None,
        head: str | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        if head is not None and model_branch is not None and head != model_branch:
            raise ValueError(f"model_branch {model_branch!r} and head {head!r} disagree; "
                             "give one of them")
        model_branch = model_branch if model_branch is not None else head
        if isinstance(model, torch.nn.Module):
            if model_branch is not None:
                raise ValueError("model_branch applies to a model file, not a loaded model")
            self.module = model.to(self.device).eval()
            self.meta = {"type_map": list(model.type_map), "rcut": model.rcut, "sel": model.nnei,
                         "dim_fparam": model.fitting.numb_fparam,
                         "dim_aparam": model.fitting.numb_aparam,
                         "min_nbor_dist": getattr(model, "min_nbor_dist", None)}
        else:
            self.module, self.meta = load_model(model, self.device, model_branch)
        self.batch_frames = max(1, int(batch_frames))
        self._dtype = torch.float64
        # geometry warnings already given (each once per model, not at every MD step)
        self._warned: set[str] = set()
        self._naming: tuple[str, int | np.ndarray, np.ndarray | None] | None = None

    # --- metadata (DeePMD names) ---------------------------------------------------------
    def get_type_map(self) -> list[str]:
        return list(self.meta["type_map"])

    def get_rcut(self) -> float:
        return float(self.meta["rcut"])

    def get_ntypes(self) -> int:
        return len(self.meta["type_map"])

    def get_sel(self) -> list[int]:
        return [int(self.meta["sel"])]

    def get_dim_fparam(self) -> int:
        return int(self.meta.get("dim_fparam", 0))

    def get_dim_aparam(self) -> int:
        return int(self.meta.get("dim_aparam", 0))

    def get_min_nbor_dist(self) -> float | None:
        """The smallest pair distance of the training data (Å), None when unknown."""
        value = self.meta.get("min_nbor_dist")
        return None if value is None else float(value)

    # --- evaluation ------------------------------------------------------------------------
    def types_from(self, atom_types: Sequence[int] | Sequence[str] | np.ndarray) -> np.ndarray:
        """Model type indices from integers or element symbols; clear error if unknown."""
        arr = np.asarray(atom_types)
        tmap = self.get_type_map()
        if arr.dtype.kind in "US":
            unknown = sorted(set(arr.reshape(-1).tolist()) - set(tmap))
            if unknown:
                raise ValueError(f"element(s) {unknown} not in the model's type_map {tmap}")
            lookup = {name: k for k, name in enumerate(tmap)}
            return np.vectorize(lookup.__getitem__, otypes=[np.int64])(arr)
        arr = arr.astype(np.int64)
        bad = arr[(arr < -1) | (arr >= len(tmap))]
        if bad.size:
            raise ValueError(f"atom type {int(bad[0])} is not in the model's type_map {tmap} "
                             f"(valid: 0..{len(tmap) - 1}, or -1 for a virtual atom)")
        return arr

    def eval(
        self,
        coords: np.ndarray,
        cells: np.ndarray | None,
        atom_types: Sequence[int] | Sequence[str] | np.ndarray,
        atomic: bool = False,
        fparam: np.ndarray | None = None,
        aparam: np.ndarray | None = None,
    ) -> tuple[np.ndarray, ...]:
        """Evaluate frames.

        Args:
            coords: ``(nf, natoms*3)`` or ``(nf, natoms, 3)`` Å.
            cells: ``(nf, 9)`` / ``(nf, 3, 3)`` rows = lattice vectors, or None (non-periodic).
            atom_types: ``(natoms,)`` or ``(nf, natoms)`` indices into ``type_map`` or
                element symbols; atoms may come in any order.
            atomic: also return atomic energies and virials.

        Returns:
            ``e (nf, 1)``, ``f (nf, natoms, 3)``, ``v (nf, 9)`` and with ``atomic``
            ``ae (nf, natoms, 1)``, ``av (nf, natoms, 9)``, in the caller's atom order.

        Raises:
            OverlapError: (a ``ValueError``) two atoms on one position.

        Warns (once per model and kind): a pair closer than any in the training data
        (``min_nbor_dist``), an atom with more neighbours than ``sel``.
        """
        atype = self.types_from(atom_types)
        coords = np.asarray(coords, dtype=np.float64)
        natoms = atype.shape[-1]
        if natoms == 0:  # every sum over atoms is empty
            nf = coords.shape[0] if coords.ndim > 1 else 1
            zeros = (np.zeros((nf, 1)), np.zeros((nf, 0, 3)), np.zeros((nf, 9)))
            return zeros + ((np.zeros((nf, 0, 1)), np.zeros((nf, 0, 9))) if atomic else ())
        coords = coords.reshape(-1, natoms, 3)
        nf = coords.shape[0]
        atype = np.broadcast_to(atype.reshape(-1, natoms), (nf, natoms))
        box = None if cells is None else np.asarray(cells, dtype=np.float64).reshape(nf, 3, 3)
        fp = None if fparam is None else np.asarray(fparam, dtype=np.float64).reshape(nf, -1)
        ap = (None if aparam is None
              else np.asarray(aparam, dtype=np.float64).reshape(nf, natoms, -1))
        outs: dict[str, list[np.ndarray]] = {}
        for start in range(0, nf, self.batch_frames):
            sl = slice(start, start + self.batch_frames)
            res = self._eval_batch(
                coords[sl],
                atype[sl],
                None if box is None else box[sl],
                None if fp is None else fp[sl],
                None if ap is None else ap[sl],
                atomic,
                start,
                nf,
            )
            for k, v in res.items():
                outs.setdefault(k, []).append(v)
        out = {k: np.concatenate(v) for k, v in outs.items()}
        result = (out["energy"], out["force"], out["virial"])
        if atomic:
            result += (out["atom_energy"], out["atom_virial"])
        return result

    def _extended(self, coord, atype, box, first: int, nf: int) -> tuple[torch.Tensor, ...]:
        """Extended system of a batch of frames (after the overlap/``sel`` checks)."""
        dev, dt = self.device, self._dtype
        coord_t = torch.as_tensor(coord, dtype=dt, device=dev)
        atype_t = torch.as_tensor(np.array(atype, dtype=np.int64), device=dev)
        box_t = None if box is None else torch.as_tensor(box, dtype=dt, device=dev)
        summary: list[PairSummary] = []
        extended = build_extended_system(
            coord_t, atype_t, box_t, self.get_rcut(), int(self.meta["sel"]), summary
        )
        self._check_pairs(summary, first, nf)
        return extended

    def _eval_batch(
        self, coord, atype, box, fparam, aparam, atomic, first: int, nf: int
    ) -> dict[str, np.ndarray]:
        dev, dt = self.device, self._dtype
        ext_coord, ext_atype, mapping, nlist = self._extended(coord, atype, box, first, nf)
        fp_t = None if fparam is None else torch.as_tensor(fparam, dtype=dt, device=dev)
        ap_t = None if aparam is None else torch.as_tensor(aparam, dtype=dt, device=dev)
        out = self.module.forward_lower(ext_coord, ext_atype, nlist, mapping, fp_t, ap_t, atomic)
        keys = ["energy", "force", "virial"] + (["atom_energy", "atom_virial"] if atomic else [])
        return {k: out[k].detach().cpu().numpy() for k in keys}

    def eval_descriptor(
        self,
        coords: np.ndarray,
        cells: np.ndarray | None,
        atom_types: Sequence[int] | Sequence[str] | np.ndarray,
        fparam: np.ndarray | None = None,
        aparam: np.ndarray | None = None,
        mixed_type: bool = False,
    ) -> np.ndarray:
        """The per-atom descriptor, as ``deepmd.infer.DeepPot.eval_descriptor``.

        Args:
            coords, cells, atom_types: as in :meth:`eval`; with ``mixed_type``
                ``atom_types`` must be ``(nf, natoms)``.
            fparam, aparam: accepted for DeePMD-kit's signature; the DPA-1 descriptor does
                not depend on them (the fitting network does).

        Returns:
            ``(nf, natoms, dim_out)`` float64, in the caller's atom order.
        """
        atype = self.types_from(atom_types)
        if mixed_type and atype.ndim != 2:
            raise ValueError(f"mixed_type: atom_types must be (nframes, natoms), got shape "
                             f"{atype.shape}")
        coords = np.asarray(coords, dtype=np.float64)
        natoms = atype.shape[-1]
        coords = coords.reshape(-1, natoms, 3)
        nf = coords.shape[0]
        atype = np.broadcast_to(atype.reshape(-1, natoms), (nf, natoms))
        box = None if cells is None else np.asarray(cells, dtype=np.float64).reshape(nf, 3, 3)
        out = []
        for start in range(0, nf, self.batch_frames):
            sl = slice(start, start + self.batch_frames)
            ext_coord, ext_atype, _, nlist = self._extended(
                coords[sl], atype[sl], None if box is None else box[sl], start, nf
            )
            out.append(descriptor_lower(self.module, ext_coord, ext_atype, nlist).cpu().numpy())
        return np.concatenate(out)

    @contextlib.contextmanager
    def naming(
        self,
        where: str,
        first_frame: int | np.ndarray = 0,
        atom_index: np.ndarray | None = None,
    ) -> Iterator[None]:
        """Within the block, overlap errors and geometry warnings name the source ``where``,
        number frames from ``first_frame`` (or by it: evaluated frame ``f`` is the caller's
        ``first_frame[f]`` when it is an array) and atoms by ``atom_index`` (evaluated atom
        ``k`` is the caller's ``atom_index[k]``): for callers that evaluate a system in
        pieces or in another frame or atom order."""
        saved = self._naming
        self._naming = (where, first_frame, atom_index)
        try:
            yield
        finally:
            self._naming = saved

    def _check_pairs(self, summary: list[PairSummary], first: int, nf: int) -> None:
        """Refuse overlapping atoms; warn (once per model) about a pair closer than the
        training data's closest and about neighbours beyond ``sel``."""
        rcut, sel, mnd = self.get_rcut(), int(self.meta["sel"]), self.get_min_nbor_dist()
        where, first_frame, index = self._naming or ("", 0, None)
        for f, s in enumerate(summary, start=first):
            overlap = s.d <= overlap_distance(rcut)
            close = mnd is not None and s.d < mnd and "close" not in self._warned
            crowded = s.count > sel and "sel" not in self._warned
            if not (overlap or close or crowded):
                continue
            number = first_frame + f if np.isscalar(first_frame) else int(first_frame[f])
            frame = f"frame {number}" if nf > 1 or where else ""
            place = ", ".join(x for x in (where, frame) if x)
            place = f"{place}: " if place else ""
            i, j, busiest = (
                (s.i, s.j, s.busiest)
                if index is None
                else (int(index[s.i]), int(index[s.j]), int(index[s.busiest]))
            )
            pair = f"atoms {min(i, j)} and {max(i, j)}" + (" (a periodic image)" if s.image else "")
            if overlap:
                raise OverlapError(
                    f"{place}{pair} are {s.d:.3g} Å apart, on one position: "
                    "energy and forces are undefined; remove the duplicated atom"
                )
            if close:
                self._warned.add("close")
                warnings.warn(
                    f"{place}{pair} are {s.d:.4g} Å apart, closer than any pair in "
                    f"the model's training data (min_nbor_dist {mnd:.4g} Å): the "
                    "prediction is an extrapolation",
                    stacklevel=4,
                )
            if crowded:
                self._warned.add("sel")
                warnings.warn(
                    f"{place}atom {busiest} has {s.count} neighbours within "
                    f"rcut {rcut:g} Å, more than the model's sel {sel}: the farthest "
                    f"{s.count - sel} are ignored, so energy and forces are approximate",
                    stacklevel=4,
                )


class OverlapError(ValueError):
    """Two atoms on one position: energy and forces are undefined there."""
