"""The descriptor of a model on an extended system (``DeepPot.eval_descriptor``).

Works on an :class:`~dpa1.model.model.EnergyModel` and on its frozen TorchScript module
alike: both have ``descriptor``, ``has_pair_exclusion`` and ``pair_keep``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def descriptor_lower(module, ext_coord: Tensor, ext_atype: Tensor, nlist: Tensor) -> Tensor:
    """The per-atom descriptor that the model's fitting network receives.

    The neighbour slots are prepared as ``EnergyModel.forward_lower`` prepares them:
    model-level pair exclusion turns excluded slots into padding, and padding slots take
    the type of extended atom 0 (spec §2.5, §4.2).

    Args:
        ext_coord: ``(nf, nall, 3)``; ext_atype: ``(nf, nall)`` (−1 = virtual/padding);
        nlist: ``(nf, nloc, nnei)`` extended indices, −1 padded.

    Returns:
        ``(nf, nloc, dim_out)`` float64.
    """
    nf, nloc, nnei = nlist.shape
    ext_coord = ext_coord.to(torch.float64)
    ext_type = ext_atype.clamp(min=0)
    atype = ext_type[:, :nloc]
    mask = nlist >= 0
    idx = nlist.clamp(min=0)
    nei_type = torch.gather(ext_type, 1, idx.reshape(nf, -1)).reshape(nf, nloc, nnei)
    if module.has_pair_exclusion:
        mask = mask & module.pair_keep[atype.unsqueeze(-1), nei_type]
        nei_type = torch.where(mask, nei_type, ext_type[:, :1].unsqueeze(-1))
    xn = torch.gather(ext_coord, 1, idx.reshape(nf, -1, 1).expand(-1, -1, 3))
    rij = xn.reshape(nf, nloc, nnei, 3) - ext_coord[:, :nloc].unsqueeze(2)
    with torch.no_grad():
        return module.descriptor(rij, mask, nei_type, atype)
