"""Neighbour gated self-attention over the slots of one centre atom (spec §6)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpa1.model.network import Layer, LayerNorm

# Smooth attention shifts logits by this before multiplying by the switches, so that
# padding keys sit at exactly −20 (and stay in the softmax denominator, as DeePMD does).
ATTNW_SHIFT = 20.0


class GatedAttentionLayer(nn.Module):
    """One post-norm layer: ``G ← LN(G + out_proj(A·V))`` with one head.

    ``A`` is the (smooth or masked) softmax of ``α·q̂k̂ᵀ``, gated by the switches and
    (``dotr``) by the cosine between neighbour directions.
    """

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int,
        *,
        dotr: bool,
        do_mask: bool,
        scaling_factor: float,
        normalize: bool,
        temperature: Optional[float],
        smooth: bool,
        trainable_ln: bool,
        ln_eps: float,
        dtype: torch.dtype,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.hidden_dim = hidden_dim
        self.dotr = dotr
        self.do_mask = do_mask
        self.scaling_factor = scaling_factor
        self.normalize = normalize
        self.temperature = temperature
        self.smooth = smooth
        self.attnw_shift = ATTNW_SHIFT
        self.scaling = (
            (hidden_dim * scaling_factor) ** -0.5 if temperature is None else float(temperature)
        )
        common = dict(bias=True, use_timestep=False, resnet=False, dtype=dtype, generator=generator)
        self.in_proj = Layer(embed_dim, 3 * hidden_dim, activation_function="none", **common)
        self.out_proj = Layer(hidden_dim, embed_dim, activation_function="none", **common)
        self.layer_norm = LayerNorm(embed_dim, ln_eps, trainable_ln, dtype)

    def forward(self, g: Tensor, mask: Tensor, sw: Tensor, direction: Tensor) -> Tensor:
        """One layer.

        Args:
            g: ``(nb, nnei, ng)`` embedded neighbour rows (``nb = nf·nloc``).
            mask: ``(nb, nnei)`` valid (non-padding, non-excluded) slots.
            sw: ``(nb, nnei)`` masked switch ``ŝ``.
            direction: ``(nb, nnei, 3)`` unit neighbour directions (zero on padding).
        """
        q, k, v = self.in_proj(g).split(self.hidden_dim, dim=-1)
        if self.normalize:
            q = F.normalize(q, dim=-1)
            k = F.normalize(k, dim=-1)
            v = F.normalize(v, dim=-1)
        logits = torch.matmul(q * self.scaling, k.transpose(-1, -2))  # (nb, nnei, nnei)
        if self.smooth:
            sw_pair = sw.unsqueeze(-1) * sw.unsqueeze(-2)
            logits = (logits + self.attnw_shift) * sw_pair - self.attnw_shift
        else:
            # A finite fill instead of −inf: exp underflows to exactly 0 all the same, but a
            # centre without any neighbour yields zeros rather than NaN (and NaN gradients).
            logits = logits.masked_fill(~mask.unsqueeze(-2), -1e30)
        weights = torch.softmax(logits, dim=-1)
        weights = weights.masked_fill(~mask.unsqueeze(-1), 0.0)
        if self.smooth:
            weights = weights * sw.unsqueeze(-1) * sw.unsqueeze(-2)
        if self.dotr:
            weights = weights * torch.matmul(direction, direction.transpose(-1, -2))
        if self.do_mask:
            # TensorFlow's attn_mask: the final weights lose their diagonal.
            eye = torch.eye(weights.shape[-1], dtype=torch.bool, device=weights.device)
            weights = weights.masked_fill(eye, 0.0)
        out = self.out_proj(torch.matmul(weights, v))
        return self.layer_norm(g + out)


class NeighborGatedAttention(nn.Module):
    """``attn_layer`` stacked :class:`GatedAttentionLayer` (zero layers = identity)."""

    def __init__(self, layer_num: int, embed_dim: int, hidden_dim: int, **kwargs) -> None:
        super().__init__()
        self.layer_num = layer_num
        self.layers = nn.ModuleList(
            GatedAttentionLayer(embed_dim, hidden_dim, **kwargs) for _ in range(layer_num)
        )

    def forward(self, g: Tensor, mask: Tensor, sw: Tensor, direction: Tensor) -> Tensor:
        for layer in self.layers:
            g = layer(g, mask, sw, direction)
        return g
