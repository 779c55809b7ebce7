"""The DPA-1 energy model: descriptor + fitting + output bias, with forces and virials from
one autograd pass (docs/design.md, "Fitting net and output bias", "Forces and virials").

Derivatives are taken with respect to the pair vectors ``r_ij = x_n − x_i`` of the
neighbour list (``g = ∂E/∂r_ij``). Every DeePMD output follows from ``g`` exactly:

- extended force ``F_e = Σ_j g_ej (e local) − Σ_{(l,j): n_lj = e} g_lj``;
- virial ``V = −Σ g ⊗ r`` (= ``Σ_e F_e ⊗ x_e``);
- atomic virial ``AV_e = −Σ_{(l,j): n_lj = e} g_lj ⊗ r_lj``, which is DeePMD's
  ``F_e ⊗ x_e + C_e`` (docs/design.md, "Forces and virials") because ``E_l`` depends on
  ``x_e`` only through ``r_le``.

This needs a single backward pass and no strain trick.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dpa1.model import accel_hook
from dpa1.model.descriptor import DescrptDPA1, pair_keep_table
from dpa1.model.fitting import EnergyFitting
from dpa1.model.neighbor import build_extended_system


def _centre_index(order: Tensor, x: Tensor) -> Tensor:
    """``order (nf, nloc)`` broadcast to the shape of ``x (nf, nloc, ...)``."""
    idx = order
    for _ in range(x.dim() - 2):
        idx = idx.unsqueeze(-1)
    return idx.expand_as(x)


def _take_centres(x: Tensor, order: Tensor) -> Tensor:
    """``x[f, order[f, i], ...]`` for every frame ``f``."""
    return torch.gather(x, 1, _centre_index(order, x))


def _put_centres(x: Tensor, order: Tensor) -> Tensor:
    """Inverse of :func:`_take_centres`."""
    return torch.zeros_like(x).scatter(1, _centre_index(order, x), x)


class EnergyModel(nn.Module):
    """Energy model: ``E_i = fitting(descriptor)_i + out_bias[t_i]``, masked
    (docs/design.md, "Fitting net and output bias")."""

    # The smallest pair distance in the training data (neighbour statistics; docs/design.md,
    # "Automatic sel"), kept as
    # DeePMD-kit keeps it; None when unknown. Inference warns about closer pairs. Not part of
    # the TorchScript model: frozen files carry it in their metadata.
    min_nbor_dist: float | None
    __jit_ignored_attributes__ = ["min_nbor_dist"]

    def __init__(
        self,
        descriptor: DescrptDPA1,
        fitting: EnergyFitting,
        type_map: list[str],
        *,
        atom_exclude_types: list[int] | None = None,
        pair_exclude_types: list[list[int]] | None = None,
        preset_out_bias: dict | None = None,
        rcond: float | None = None,
    ) -> None:
        super().__init__()
        ntypes = len(type_map)
        if descriptor.ntypes != ntypes or fitting.ntypes != ntypes:
            raise ValueError("descriptor, fitting and type_map disagree on the number of types")
        self.descriptor = descriptor
        self.fitting = fitting
        self.type_map = list(type_map)
        self.ntypes = ntypes
        self.rcut = descriptor.rcut
        self.nnei = descriptor.nnei
        self.atom_exclude_types = list(atom_exclude_types or [])
        self.pair_exclude_types = [list(p) for p in (pair_exclude_types or [])]
        self.preset_out_bias = preset_out_bias
        self.rcond = rcond
        self.has_pair_exclusion = len(self.pair_exclude_types) > 0
        self.register_buffer("out_bias", torch.zeros(1, ntypes, 1, dtype=torch.float64))
        self.register_buffer("out_std", torch.ones(1, ntypes, 1, dtype=torch.float64))
        keep = torch.ones(ntypes, dtype=torch.float64)
        for t in self.atom_exclude_types:
            keep[t] = 0.0
        self.register_buffer("atom_keep", keep, persistent=False)
        self.register_buffer(
            "pair_keep", pair_keep_table(ntypes, self.pair_exclude_types), persistent=False
        )
        # Centres evaluated together (see forward_lower): bounds inference memory for big
        # systems and lets each block trim its padding to its own width. 64 measured best on
        # 1,536-atom water (192 atoms: flat from 16 to 96) and saves ~8 % of a training step
        # against one block (2-core CPU; docs/benchmarks.md).
        self.block_atoms = 64
        # Evaluation on a CPU runs each block's descriptor and fitting as one C++ op
        # (dpa1.accel.energy_block) where the model has the shape it covers; False: the modules.
        self.native = True
        # The accelerated block kernel of a frozen model (see _fitted_energy); None otherwise.
        self.accel: nn.Module | None = None
        # Model inputs are cast to the global precision (docs/design.md, "Neighbour list").
        self.global_dtype = torch.float64
        self.min_nbor_dist = None

    # === the upper interface: coordinates in, everything out ===============================
    @torch.jit.unused
    def forward(
        self,
        coord: Tensor,
        atype: Tensor,
        box: Tensor | None = None,
        fparam: Tensor | None = None,
        aparam: Tensor | None = None,
        do_atomic_virial: bool = False,
    ) -> dict[str, Tensor]:
        """Evaluate frames.

        Args:
            coord: ``(nf, nloc, 3)`` Å; atype: ``(nf, nloc)`` (−1 = virtual atom);
            box: ``(nf, 3, 3)`` or ``(nf, 9)`` with rows = lattice vectors, None = no PBC;
            fparam: ``(nf, numb_fparam)``; aparam: ``(nf, nloc, numb_aparam)``.

        Returns:
            ``energy (nf, 1)``, ``atom_energy (nf, nloc, 1)``, ``force (nf, nloc, 3)``,
            ``virial (nf, 9)``, ``mask (nf, nloc)`` and with ``do_atomic_virial``
            ``atom_virial (nf, nloc, 9)``.
        """
        coord = coord.to(self.global_dtype)
        nf = coord.shape[0]
        coord = coord.reshape(nf, -1, 3)
        atype = atype.reshape(nf, -1).to(torch.long)
        if box is not None:
            box = box.to(self.global_dtype).reshape(nf, 3, 3)
        with torch.no_grad():
            ext_coord, ext_atype, mapping, nlist = build_extended_system(
                coord, atype, box, self.rcut, self.nnei
            )
        return self.forward_lower(
            ext_coord, ext_atype, nlist, mapping, fparam, aparam, do_atomic_virial
        )

    # === the lower interface: an extended system and its neighbour list =====================
    @torch.jit.export
    def forward_lower(
        self,
        ext_coord: Tensor,
        ext_atype: Tensor,
        nlist: Tensor,
        mapping: Tensor,
        fparam: Tensor | None = None,
        aparam: Tensor | None = None,
        do_atomic_virial: bool = False,
    ) -> dict[str, Tensor]:
        """Evaluate an extended system.

        Args:
            ext_coord: ``(nf, nall, 3)``; ext_atype: ``(nf, nall)`` (−1 = virtual/padding);
            nlist: ``(nf, nloc, nnei)`` extended indices, −1 padded (see ``neighbor.py``);
            mapping: ``(nf, nall)`` extended → local index.

        Returns:
            ``energy``, ``atom_energy``, ``force`` (folded to local atoms), ``virial``,
            ``mask``, ``extended_force (nf, nall, 3)`` and with ``do_atomic_virial``
            ``atom_virial (nf, nloc, 9)`` and ``extended_virial (nf, nall, 9)``.
        """
        nf, nloc, nnei = nlist.shape
        ext_coord = ext_coord.to(self.global_dtype).detach()
        real = ext_atype[:, :nloc] >= 0
        ext_type = ext_atype.clamp(min=0)
        atype = ext_type[:, :nloc]
        rij, mask, nei_type = self.neighbor_pairs(ext_coord, ext_type, nlist)
        if aparam is not None:
            aparam = aparam.reshape(nf, nloc, -1)
        atom_energy, g = self._centre_blocks(rij, mask, nei_type, atype, real, fparam, aparam)
        out = self._outputs(atom_energy, g, rij, nlist, mapping, nall=ext_coord.shape[1],
                            do_atomic_virial=do_atomic_virial)
        out["mask"] = real.to(torch.int32)
        return out

    @torch.jit.export
    def neighbor_pairs(
        self, ext_coord: Tensor, ext_type: Tensor, nlist: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Pair vectors ``r_ij (nf, nloc, nnei, 3)`` (no gradient), the valid-slot mask and the
        neighbour types, after the model-level pair exclusion; ``ext_type`` has no −1 (virtual
        atoms clamped to type 0)."""
        nf, nloc, nnei = nlist.shape
        atype = ext_type[:, :nloc]
        # model-level exclusion leaves holes after truncation (docs/design.md, "Pair exclusion")
        mask = nlist >= 0
        idx = nlist.clamp(min=0)
        nei_type = torch.gather(ext_type, 1, idx.reshape(nf, -1)).reshape(nf, nloc, nnei)
        if self.has_pair_exclusion:
            mask = mask & self.pair_keep[atype.unsqueeze(-1), nei_type]
            # Excluded slots are padding from here on, so they take the padding type, that of
            # extended atom 0, not the true neighbour's type (docs/design.md, "Pair exclusion",
            # "Type embedding").
            nei_type = torch.where(mask, nei_type, ext_type[:, :1].unsqueeze(-1))
        flat_idx = idx.reshape(nf, -1, 1).expand(-1, -1, 3)
        xn = torch.gather(ext_coord, 1, flat_idx).reshape(nf, nloc, nnei, 3)
        rij = (xn - ext_coord[:, :nloc].unsqueeze(2)).detach()
        return rij, mask, nei_type

    def _centre_blocks(
        self,
        rij: Tensor,
        mask: Tensor,
        nei_type: Tensor,
        atype: Tensor,
        real: Tensor,
        fparam: Tensor | None,
        aparam: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Atomic energies ``(nf, nloc)`` and ``g = ∂E/∂r_ij (nf, nloc, nnei, 3)``, block by
        block of centres.

        Energies are sums over centres and E_i depends only on its own pairs, so the gradient
        rows of a block of centres are exact: evaluation works block by block, keeping
        inference memory linear in the number of atoms (training keeps every block's graph for
        the loss's backward pass, as one graph would).
        """
        nf, nloc, nnei = mask.shape
        chunk = max(1, self.block_atoms // max(nf, 1))
        workers = 1
        if not torch.jit.is_scripting():
            # in evaluation on a CPU: one block per thread, side by side
            chunk, workers = accel_hook.plan_blocks(nloc, chunk, rij, self.training)
        # Blocks of centres with similar neighbour counts: the descriptor trims each block's
        # padding slots down to its own fullest centre (attention cost ~ slots²), so the
        # centres are visited by increasing count and the results put back in place.
        order: Tensor | None = None
        if chunk < nloc and self.descriptor.trim_padding:
            slot = torch.arange(1, nnei + 1, device=mask.device)
            order = torch.argsort(torch.where(mask, slot, 0).amax(dim=-1), dim=1)
            rij, mask, nei_type = (
                _take_centres(rij, order),
                _take_centres(mask, order),
                _take_centres(nei_type, order),
            )
            atype, real = _take_centres(atype, order), _take_centres(real, order)
            if aparam is not None:
                aparam = _take_centres(aparam, order)
        energies: list[Tensor] = []
        grads: list[Tensor] = []
        starts = list(range(0, nloc, chunk))
        if workers > 1:
            if not torch.jit.is_scripting():  # (workers is 1 in TorchScript)
                blocks = self._blocks_threaded(
                    starts, chunk, workers, rij, mask, nei_type, atype, real, fparam, aparam
                )
                energies, grads = [b[0] for b in blocks], [b[1] for b in blocks]
        else:
            for start in starts:
                e_c, g_c = self._block(
                    start, chunk, rij, mask, nei_type, atype, real, fparam, aparam
                )
                energies.append(e_c)
                grads.append(g_c)
        atom_energy = torch.cat(energies, dim=1) if len(energies) > 1 else energies[0]
        g = torch.cat(grads, dim=1) if len(grads) > 1 else grads[0]
        if order is not None:
            atom_energy = _put_centres(atom_energy, order)
            g = _put_centres(g, order)
        return atom_energy, g

    def _outputs(
        self,
        atom_energy: Tensor,
        g: Tensor,
        rij: Tensor,
        nlist: Tensor,
        mapping: Tensor,
        nall: int,
        do_atomic_virial: bool,
    ) -> dict[str, Tensor]:
        """Every DeePMD output from ``g = ∂E/∂r_ij`` (see the module docstring)."""
        nf, nloc, _ = nlist.shape
        energy = atom_energy.sum(dim=1, keepdim=True)
        # forces on extended atoms, folded back to local atoms
        idx = nlist.clamp(min=0)
        flat_idx = idx.reshape(nf, -1, 1).expand(-1, -1, 3)
        ext_force = torch.zeros(nf, nall, 3, dtype=g.dtype, device=g.device)
        ext_force = ext_force.scatter_add(1, flat_idx, -g.reshape(nf, -1, 3))
        local_force = g.sum(dim=2)
        ext_force = torch.cat([ext_force[:, :nloc] + local_force, ext_force[:, nloc:]], dim=1)
        map3 = mapping.unsqueeze(-1).expand(-1, -1, 3)
        force = torch.zeros(nf, nloc, 3, dtype=g.dtype, device=g.device).scatter_add(
            1, map3, ext_force
        )
        # V[3k+j] = −Σ g_k r_j, one (3 × nloc·nnei)·(nloc·nnei × 3) product per frame
        g_flat, r_flat = g.reshape(nf, -1, 3), rij.reshape(nf, -1, 3)
        virial = -torch.bmm(g_flat.transpose(1, 2), r_flat).reshape(nf, 9)
        out: dict[str, Tensor] = {
            "energy": energy,
            "atom_energy": atom_energy.unsqueeze(-1),
            "force": force,
            "virial": virial,
            "extended_force": ext_force,
        }
        if do_atomic_virial:
            pair_virial = -g_flat.unsqueeze(-1) * r_flat.unsqueeze(-2)  # (nf, nloc·nnei, 3, 3)
            map9 = mapping.unsqueeze(-1).expand(-1, -1, 9)
            ext_virial = torch.zeros(nf, nall, 9, dtype=g.dtype, device=g.device).scatter_add(
                1, idx.reshape(nf, -1, 1).expand(-1, -1, 9), pair_virial.reshape(nf, -1, 9)
            )
            out["extended_virial"] = ext_virial
            out["atom_virial"] = torch.zeros(
                nf, nloc, 9, dtype=g.dtype, device=g.device
            ).scatter_add(1, map9, ext_virial)
        return out

    def _block(
        self,
        start: int,
        chunk: int,
        rij: Tensor,
        mask: Tensor,
        nei_type: Tensor,
        atype: Tensor,
        real: Tensor,
        fparam: Tensor | None,
        aparam: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`_energy_and_grad` of centres ``start : start + chunk`` (of every frame)."""
        end = start + chunk
        ap: Tensor | None = None
        if aparam is not None:
            ap = aparam[:, start:end]
        return self._energy_and_grad(
            rij[:, start:end],
            mask[:, start:end],
            nei_type[:, start:end],
            atype[:, start:end],
            real[:, start:end],
            fparam,
            ap,
        )

    @torch.jit.unused
    def _blocks_threaded(
        self,
        starts: list[int],
        chunk: int,
        workers: int,
        rij: Tensor,
        mask: Tensor,
        nei_type: Tensor,
        atype: Tensor,
        real: Tensor,
        fparam: Tensor | None,
        aparam: Tensor | None,
    ) -> list[tuple[Tensor, Tensor]]:
        """:meth:`_block` of every start in ``starts``, on ``workers`` threads."""
        # The blocks are in order of increasing width (cost ~ width²): handing out the widest
        # first lets the threads finish together (longest-processing-time-first scheduling).
        blocks = accel_hook.map_blocks(
            lambda start: self._block(
                start, chunk, rij, mask, nei_type, atype, real, fparam, aparam
            ),
            starts[::-1],
            workers,
        )
        return blocks[::-1]

    def _energy_and_grad(
        self,
        rij: Tensor,
        mask: Tensor,
        nei_type: Tensor,
        atype: Tensor,
        real: Tensor,
        fparam: Tensor | None,
        aparam: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Atomic energies ``(nf, n)`` of a block of centres and
        ``g = ∂E/∂r_ij (nf, n, nnei, 3)``."""
        # Forces come from autograd: callers must not wrap the model in torch.no_grad()
        # (TorchScript cannot re-enable gradients here).
        rij = rij.detach().requires_grad_(True)
        e_fit = self._fitted_energy(rij, mask, nei_type, atype, fparam, aparam)
        atom_energy = (e_fit + self.out_bias[0, atype, 0]) * self.atom_keep[atype]
        atom_energy = torch.where(real, atom_energy, torch.zeros_like(atom_energy))
        esum = atom_energy.sum(dim=1, keepdim=True)
        if not esum.requires_grad:
            raise RuntimeError(
                "dpa1 computes forces by autograd: do not call it under torch.no_grad()"
            )
        grad_out: list[Tensor | None] = [torch.ones_like(esum)]
        g = torch.autograd.grad(
            [esum], [rij], grad_outputs=grad_out, create_graph=self.training, allow_unused=True
        )[0]
        if g is None:
            g = torch.zeros_like(rij)
        g = torch.where(mask.unsqueeze(-1), g, torch.zeros_like(g))
        if not self.training:
            # Let the block's graph die here. Kept alive by the returned energies, it would
            # hold what a custom Function saved of its own output (the normalisation in
            # attention.py does), which autograd frees only with the graph: ~40 MB per block
            # of 64 centres, 4.4 GB at 12,288 atoms.
            atom_energy = atom_energy.detach()
        return atom_energy, g

    def _fitted_energy(
        self,
        rij: Tensor,
        mask: Tensor,
        nei_type: Tensor,
        atype: Tensor,
        fparam: Tensor | None,
        aparam: Tensor | None,
    ) -> Tensor:
        """``fitting(descriptor(rij))``: atomic energies ``(nf, n)`` before the output bias."""
        if torch.jit.is_scripting():
            # a frozen model carries its C++ block kernel here (dpa1 freeze with the ops)
            if self.accel is not None and rij.device.type == "cpu":
                x = self._kernel_inputs(rij, mask, nei_type, atype, fparam, aparam)
                e_net = self.accel(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9])
                return self.fitting.finish(e_net.view(atype.shape), x[10], atype)
        if not torch.jit.is_scripting():
            kernel = accel_hook.energy_kernel(self, rij)
            if kernel is not None:
                x = self._kernel_inputs(rij, mask, nei_type, atype, fparam, aparam)
                e_net = kernel(*x[:10])
                return self.fitting.finish(e_net.view(atype.shape), x[10], atype)
        desc = self.descriptor(rij, mask, nei_type, atype)
        return self.fitting(desc, atype, fparam, aparam)

    def _kernel_inputs(
        self,
        rij: Tensor,
        mask: Tensor,
        nei_type: Tensor,
        atype: Tensor,
        fparam: Tensor | None,
        aparam: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
               list[Tensor]]:
        """What the block kernel (``dpa1.accel.energy_block``) takes, flattened over the
        ``nb = nf·n`` centres: what the modules' forward does before and around the networks
        (padding trimming, exclusions, type-embedding rows or strip mode's type factor, the
        fitting's extra inputs). The last item is the fitting's extra inputs for
        ``fitting.finish``."""
        d, f = self.descriptor, self.fitting
        nf, nloc, _ = mask.shape
        rij, mask, nei_type, slot_weight, _ = d.trim(rij, mask, nei_type)
        nnei = mask.shape[-1]
        nb = nf * nloc
        keep = d.pair_kept(mask, nei_type, atype)
        t_in, t_center = d.type_inputs(nei_type, atype)
        empty = torch.empty(0, dtype=d.dtype, device=rij.device)
        if d.strip:
            type_rows = t_in.new_empty(nb, nnei, 0)
            strip_rows = d.strip_type_rows(nei_type, atype).detach().reshape(nb, nnei, -1)
        else:
            type_rows = t_in.detach().reshape(nb, nnei, -1)
            strip_rows = empty
        extra = f.extra_inputs(nf, nloc, fparam, aparam)
        fit_extra: list[Tensor] = []
        if d.concat_output_tebd:
            fit_extra.append(t_center.to(f.dtype))
        fit_extra.extend(extra)
        return (
            rij.to(d.dtype).reshape(nb, nnei, 3).contiguous(),
            mask.reshape(nb, nnei).contiguous(),
            keep.reshape(nb, nnei).contiguous(),
            atype.reshape(nb).contiguous(),
            slot_weight if slot_weight is not None else empty,
            type_rows.contiguous(),
            strip_rows.contiguous(),
            torch.cat(fit_extra, dim=-1).detach().reshape(nb, -1).contiguous()
            if len(fit_extra) > 0 else empty,
            d.davg[:, :nnei].contiguous(),
            d.dstd[:, :nnei].contiguous(),
            extra,
        )

    # --- metadata used by inference front-ends ---------------------------------------------
    @torch.jit.export
    def get_rcut(self) -> float:
        return self.rcut

    @torch.jit.export
    def get_type_map(self) -> list[str]:
        return self.type_map

    @torch.jit.export
    def get_nnei(self) -> int:
        return self.nnei

    @torch.jit.export
    def get_dim_fparam(self) -> int:
        return self.fitting.numb_fparam

    @torch.jit.export
    def get_dim_aparam(self) -> int:
        return self.fitting.numb_aparam
