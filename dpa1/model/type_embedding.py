"""Type embedding table (docs/design.md, "Type embedding"): a one-layer linear residual net on
one-hot
(or electronic-configuration) inputs, with an all-zero padding row appended."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dpa1.model.network import Layer


class TypeEmbedding(nn.Module):
    """``T (ntypes + 1, tebd_dim)``; row ``ntypes`` is the zero padding row.

    With ``use_econf_tebd`` the one-hot input rows are replaced by each element's
    118-dimensional electronic-configuration vector (not serialized; rebuilt from
    ``type_map``).
    """

    def __init__(
        self,
        ntypes: int,
        tebd_dim: int,
        *,
        use_econf_tebd: bool,
        use_tebd_bias: bool,
        type_map: list[str] | None,
        dtype: torch.dtype,
        generator: torch.Generator | None = None,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.ntypes = ntypes
        self.tebd_dim = tebd_dim
        self.use_econf_tebd = use_econf_tebd
        self.use_tebd_bias = use_tebd_bias
        if use_econf_tebd:
            from dpa1.model.econf import econf_inputs

            if type_map is None:
                raise ValueError("use_econf_tebd requires a type_map of element symbols")
            inputs = torch.as_tensor(econf_inputs(type_map), dtype=dtype)
        else:
            inputs = torch.eye(ntypes, dtype=dtype)
        self.register_buffer("inputs", inputs, persistent=False)
        self.layer = Layer(
            inputs.shape[1], tebd_dim, activation_function="linear", bias=use_tebd_bias,
            use_timestep=False, resnet=True, dtype=dtype, generator=generator,
            trainable=trainable,
        )

    def forward(self) -> Tensor:
        """The full table ``(ntypes + 1, tebd_dim)``."""
        table = self.layer(self.inputs)
        pad = torch.zeros(1, self.tebd_dim, dtype=table.dtype, device=table.device)
        return torch.cat([table, pad], dim=0)
