"""The descriptor of a model on an extended system (``DeepPot.eval_descriptor``).

Works on an :class:`~dpa1.model.model.EnergyModel` and on its frozen TorchScript module
alike: both have ``descriptor`` and ``neighbor_pairs``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def descriptor_lower(module, ext_coord: Tensor, ext_atype: Tensor, nlist: Tensor) -> Tensor:
    """The per-atom descriptor that the model's fitting network receives.

    The neighbour slots are those of ``EnergyModel.forward_lower`` (its ``neighbor_pairs``):
    model-level pair exclusion turns excluded slots into padding, and padding slots take
    the type of extended atom 0 (docs/design.md, "Pair exclusion").

    Args:
        ext_coord: ``(nf, nall, 3)``; ext_atype: ``(nf, nall)`` (−1 = virtual/padding);
        nlist: ``(nf, nloc, nnei)`` extended indices, −1 padded.

    Returns:
        ``(nf, nloc, dim_out)`` float64.
    """
    nloc = nlist.shape[1]
    ext_type = ext_atype.clamp(min=0)
    rij, mask, nei_type = module.neighbor_pairs(ext_coord.to(torch.float64), ext_type, nlist)
    with torch.no_grad():
        return module.descriptor(rij, mask, nei_type, ext_type[:, :nloc])
