"""A dpa1 model as DeePMD-kit's C++ ``DeepPotPT`` expects it (``pair_style deepmd`` in LAMMPS).

DeePMD-kit 3.2.0 loads a ``.pth`` file with ``torch::jit::load`` and talks to it through a
fixed set of TorchScript methods (docs/lammps.md has the whole calling convention):

- at start-up ``has_message_passing``, ``get_rcut``, ``get_ntypes``, ``get_dim_fparam``,
  ``get_dim_aparam``, ``is_aparam_nall`` and, when present, ``has_default_fparam`` and
  ``get_dim_chg_spin``; ``get_type_map`` for ``pair_coeff``;
- at every step ``forward_lower(coord (1, nall, 3), atype (1, nall) int64,
  nlist (1, nloc, n) int64, mapping (1, nall) int64 or None, fparam, aparam,
  do_atomic_virial)``, reading ``energy``, ``extended_force``, ``virial`` and, for per-atom
  output, ``atom_energy`` and ``extended_virial`` from the returned dict.

The neighbour list comes straight from LAMMPS: every neighbour within rcut + skin, in no
order, padded with −1 to the busiest atom's count. :class:`LammpsModel` keeps the pairs
within rcut, nearest first, truncated or padded to the model's ``sel`` (what
:func:`dpa1.model.neighbor.build_extended_system` gives the model in Python), then calls
:meth:`dpa1.model.model.EnergyModel.forward_lower` unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dpa1.model.model import EnergyModel


def lammps_nlist(ext_coord: Tensor, nlist: Tensor, nnei: int, rcut: float) -> Tensor:
    """An MD engine's neighbour list in the model's format.

    Args:
        ext_coord: ``(nf, nall, 3)``; nlist: ``(nf, nloc, n)`` extended indices, any order,
            −1 padded, possibly holding pairs beyond ``rcut`` (the engine's skin).

    Returns:
        ``(nf, nloc, nnei)`` int64: the pairs within ``rcut`` (inclusive, as DeePMD-kit),
        nearest first, the ``nnei`` nearest kept, −1 padded.
    """
    nf, nloc, n = nlist.shape
    nlist = nlist.to(torch.long)
    real = nlist >= 0
    idx = torch.where(real, nlist, torch.zeros_like(nlist))
    xn = torch.gather(ext_coord, 1, idx.reshape(nf, -1, 1).expand(-1, -1, 3)).reshape(
        nf, nloc, n, 3
    )
    r = torch.linalg.norm(xn - ext_coord[:, :nloc].unsqueeze(2), dim=-1)
    r = torch.where(real & (r <= rcut), r, torch.full_like(r, float("inf")))
    # stable: equidistant neighbours keep the engine's order, so a run is reproducible
    r, order = torch.sort(r, dim=-1, stable=True)
    nlist = torch.where(torch.isinf(r), -1, torch.gather(nlist, 2, order))
    if n >= nnei:
        return nlist[..., :nnei]
    pad = torch.full((nf, nloc, nnei - n), -1, dtype=nlist.dtype, device=nlist.device)
    return torch.cat([nlist, pad], dim=-1)


class LammpsModel(nn.Module):
    """TorchScript front of an :class:`EnergyModel` with DeePMD-kit's C++ interface."""

    def __init__(self, model: EnergyModel) -> None:
        super().__init__()
        self.model = model
        self.rcut = float(model.rcut)
        self.nnei = int(model.nnei)
        self.ntypes = int(model.ntypes)
        self.type_map = list(model.type_map)
        self.dim_fparam = int(model.fitting.numb_fparam)
        self.dim_aparam = int(model.fitting.numb_aparam)

    def forward(
        self,
        coord: Tensor,
        atype: Tensor,
        box: Tensor | None = None,
        fparam: Tensor | None = None,
        aparam: Tensor | None = None,
        do_atomic_virial: bool = False,
    ) -> dict[str, Tensor]:
        """DeePMD-kit's neighbour-list-free entry (``DeepPot::compute`` without a list):
        refused with a message, as the neighbour search of dpa1 is not TorchScript."""
        raise RuntimeError(
            "this dpa1 model file evaluates neighbour lists only (forward_lower, as LAMMPS "
            "calls it); evaluate frames without a list with dpa1's own DeepPot or the "
            "file written by dpa1 freeze without --lammps"
        )

    @torch.jit.export
    def forward_lower(
        self,
        extended_coord: Tensor,
        extended_atype: Tensor,
        nlist: Tensor,
        mapping: Tensor | None = None,
        fparam: Tensor | None = None,
        aparam: Tensor | None = None,
        do_atomic_virial: bool = False,
        comm_dict: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Evaluate an extended system (DeePMD-kit's ``forward_lower``).

        Args:
            extended_coord: ``(nf, nall, 3)`` or ``(nf, nall·3)``, local atoms first;
            extended_atype: ``(nf, nall)``; nlist: ``(nf, nloc, n)`` (see :func:`lammps_nlist`);
            mapping: ``(nf, nall)`` extended → local index, or None (LAMMPS on several ranks);
            fparam: ``(nf, dim_fparam)``; aparam: ``(nf, nloc, dim_aparam)``;
            comm_dict: must be None (dpa1 models pass no messages between ranks).

        Returns:
            ``energy (nf, 1)``, ``atom_energy (nf, nloc, 1)``, ``extended_force (nf, nall, 3)``,
            ``virial (nf, 9)``, ``mask (nf, nloc)`` and with ``do_atomic_virial``
            ``extended_virial (nf, nall, 9)``, all float64. The forces and per-atom virials
            are on extended atoms; LAMMPS adds the ghosts' to their owners. With a
            ``mapping`` also the folded ``force (nf, nloc, 3)`` and ``atom_virial
            (nf, nloc, 9)``, so dpa1's own ``DeepPot`` reads the file too.
        """
        if comm_dict is not None:
            raise RuntimeError("dpa1 models pass no messages between ranks: comm_dict must be None")
        nf = nlist.shape[0]
        coord = extended_coord.to(torch.float64).reshape(nf, -1, 3)
        atype = extended_atype.to(torch.long).reshape(nf, -1)
        nlist = lammps_nlist(coord, nlist, self.nnei, self.rcut)
        folded = mapping is not None
        if mapping is None:
            # Only the model's fold onto local atoms ("force", "atom_virial") reads the
            # mapping, and without one those outputs are left out: any in-range index will do.
            mapping = torch.zeros_like(atype)
        if fparam is not None:
            fparam = fparam.to(torch.float64)
        if aparam is not None:
            aparam = aparam.to(torch.float64)
        out = self.model.forward_lower(
            coord, atype, nlist, mapping.to(torch.long).reshape(nf, -1), fparam, aparam,
            do_atomic_virial,
        )
        ret: dict[str, Tensor] = {
            "energy": out["energy"],
            "atom_energy": out["atom_energy"],
            "extended_force": out["extended_force"],
            "virial": out["virial"],
            "mask": out["mask"],
        }
        if folded:
            ret["force"] = out["force"]
        if do_atomic_virial:
            ret["extended_virial"] = out["extended_virial"]
            if folded:
                ret["atom_virial"] = out["atom_virial"]
        return ret

    # --- what DeePMD-kit's C++ asks at start-up --------------------------------------------
    @torch.jit.export
    def has_message_passing(self) -> bool:
        return False

    @torch.jit.export
    def get_rcut(self) -> float:
        return self.rcut

    @torch.jit.export
    def get_ntypes(self) -> int:
        return self.ntypes

    @torch.jit.export
    def get_type_map(self) -> list[str]:
        return self.type_map

    @torch.jit.export
    def get_sel(self) -> list[int]:
        return [self.nnei]

    @torch.jit.export
    def get_nnei(self) -> int:
        return self.nnei

    @torch.jit.export
    def get_dim_fparam(self) -> int:
        return self.dim_fparam

    @torch.jit.export
    def get_dim_aparam(self) -> int:
        return self.dim_aparam

    @torch.jit.export
    def is_aparam_nall(self) -> bool:
        return False

    @torch.jit.export
    def has_default_fparam(self) -> bool:
        return False

    @torch.jit.export
    def mixed_types(self) -> bool:
        return True
