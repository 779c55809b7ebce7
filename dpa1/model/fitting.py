"""Energy fitting (docs/design.md, "Fitting net and output bias"): one shared network for all types
(mixed types)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dpa1.model.network import FittingNet, to_dtype


class EnergyFitting(nn.Module):
    """``e_i = FN([D_i, f̂, â_i]) + bias_atom_e[t_i]`` (− ``FN`` of the zero descriptor if
    ``atom_ener`` asks for vacuum removal); zero for ``exclude_types``."""

    def __init__(
        self,
        *,
        ntypes: int,
        dim_descrpt: int,
        neuron: list[int],
        resnet_dt: bool,
        numb_fparam: int,
        numb_aparam: int,
        activation_function: str,
        precision: str,
        exclude_types: list[int],
        atom_ener: list[float | None],
        default_fparam: list[float] | None = None,
        use_aparam_as_mask: bool = False,
        rcond: float | None = None,
        type_map: list[str] | None = None,
        trainable: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        dtype = to_dtype(precision)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.dtype = dtype
        self.ntypes, self.dim_descrpt = ntypes, dim_descrpt
        self.neuron, self.resnet_dt = list(neuron), resnet_dt
        self.numb_fparam, self.numb_aparam = numb_fparam, numb_aparam
        self.activation_function = activation_function
        self.precision = "float64" if precision == "default" else precision
        self.exclude_types = list(exclude_types)
        self.atom_ener = list(atom_ener)
        self.default_fparam = list(default_fparam) if default_fparam is not None else None
        self.use_aparam_as_mask = use_aparam_as_mask
        self.rcond = rcond
        self.type_map = list(type_map) if type_map is not None else None
        self.trainable = trainable
        self.remove_vacuum = any(e is not None for e in self.atom_ener)
        self.n_aparam_in = 0 if use_aparam_as_mask else numb_aparam
        in_dim = dim_descrpt + numb_fparam + self.n_aparam_in
        self.net = FittingNet(
            in_dim, 1, self.neuron, activation_function=activation_function, resnet_dt=resnet_dt,
            dtype=dtype, generator=gen, trainable=trainable,
        )
        self.register_buffer("bias_atom_e", torch.zeros(ntypes, 1, dtype=dtype))
        self.register_buffer("fparam_avg", torch.zeros(numb_fparam, dtype=dtype))
        self.register_buffer("fparam_inv_std", torch.ones(numb_fparam, dtype=dtype))
        self.register_buffer("aparam_avg", torch.zeros(numb_aparam, dtype=dtype))
        self.register_buffer("aparam_inv_std", torch.ones(numb_aparam, dtype=dtype))
        default = torch.tensor(self.default_fparam if self.default_fparam else [], dtype=dtype)
        self.register_buffer("default_fparam_tensor", default, persistent=False)
        keep = torch.ones(ntypes, dtype=dtype)
        for t in self.exclude_types:
            keep[t] = 0.0
        self.register_buffer("type_keep", keep, persistent=False)

    def forward(
        self, descriptor: Tensor, atype: Tensor, fparam: Tensor | None, aparam: Tensor | None
    ) -> Tensor:
        """Atomic energies ``(nf, nloc)`` in float64.

        Args:
            descriptor: ``(nf, nloc, dim_descrpt)``; atype: ``(nf, nloc)`` clamped ≥ 0;
            fparam: ``(nf, numb_fparam)``; aparam: ``(nf, nloc, numb_aparam)``.
        """
        nf, nloc, _ = descriptor.shape
        extra = self.extra_inputs(nf, nloc, fparam, aparam)
        x = descriptor.to(self.dtype)
        if len(extra) > 0:
            x = torch.cat([x] + extra, dim=-1)
        return self.finish(self.net(x).squeeze(-1), extra, atype)

    def extra_inputs(
        self, nf: int, nloc: int, fparam: Tensor | None, aparam: Tensor | None
    ) -> list[Tensor]:
        """The network's inputs after the descriptor: normalised ``fparam`` and ``aparam``,
        each ``(nf, nloc, width)`` (none of them depends on the coordinates)."""
        parts: list[Tensor] = []
        if self.numb_fparam > 0:
            if fparam is None:
                if self.default_fparam_tensor.numel() == 0:
                    raise ValueError(f"the model needs fparam of width {self.numb_fparam}")
                fparam = self.default_fparam_tensor.unsqueeze(0).expand(nf, -1)
            fp = (fparam.to(self.dtype).reshape(nf, -1) - self.fparam_avg) * self.fparam_inv_std
            parts.append(fp.unsqueeze(1).expand(-1, nloc, -1))
        if self.n_aparam_in > 0:
            if aparam is None:
                raise ValueError(f"the model needs aparam of width {self.numb_aparam}")
            ap = aparam.to(self.dtype).reshape(nf, nloc, -1)
            parts.append((ap - self.aparam_avg) * self.aparam_inv_std)
        return parts

    def finish(self, e_net: Tensor, extra: list[Tensor], atype: Tensor) -> Tensor:
        """Atomic energies ``(nf, nloc)`` in float64 from the network's output ``e_net``."""
        e = e_net + self.bias_atom_e[atype, 0]
        if self.remove_vacuum:
            nf, nloc = atype.shape
            x0 = torch.zeros(nf, nloc, self.dim_descrpt, dtype=self.dtype, device=e_net.device)
            x0 = torch.cat([x0] + extra, dim=-1) if len(extra) > 0 else x0
            e = e - self.net(x0).squeeze(-1)
        e = e * self.type_keep[atype]
        return e.to(torch.float64)
