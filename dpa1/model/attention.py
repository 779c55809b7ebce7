"""Neighbour gated self-attention over the slots of one centre atom (docs/design.md,
"Gated attention")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpa1.model import accel_hook
from dpa1.model.network import Layer, LayerNorm

# Smooth attention shifts logits by this before multiplying by the switches, so that
# padding keys sit at exactly −20 (and stay in the softmax denominator, as DeePMD does).
ATTNW_SHIFT = 20.0


def _scaled_unit_rows(x: Tensor, scale: float, fast_backward: bool) -> Tensor:
    """``scale · x / max(‖x‖, 1e-12)`` along the last axis (``F.normalize`` with a factor).

    ``fast_backward`` (evaluation) takes the hand-written backward of the accelerated path;
    same values, same first derivatives (a second one raises).
    """
    if not torch.jit.is_scripting():
        if fast_backward:
            fast = accel_hook.scaled_unit_rows(x, scale)
            if fast is not None:
                return fast
    return x * (scale / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12))


def _bmm_nt(a: Tensor, b: Tensor) -> Tensor:
    """``a·bᵀ`` over the last two axes."""
    if not torch.jit.is_scripting():
        return accel_hook.bmm_nt(a, b)
    return torch.bmm(a, b.transpose(-1, -2))


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
        temperature: float | None,
        smooth: bool,
        trainable_ln: bool,
        ln_eps: float,
        dtype: torch.dtype,
        generator: torch.Generator | None = None,
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

    def forward(self, g: Tensor, logit_scale: Tensor, logit_shift: Tensor, gate: Tensor) -> Tensor:
        """One layer.

        Args:
            g: ``(nb, nnei, ng)`` embedded neighbour rows (``nb = nf·nloc``).
            logit_scale, logit_shift: the logits are ``L·scale + shift`` before the softmax
                (smooth: ``ŝ_jŝ_k`` and ``20ŝ_jŝ_k − 20``; else 1 and 0/−1e30 on masked keys).
            gate: multiplies the softmax weights (query mask, switches, ``u_j·u_k``, diagonal).
            All three are shared by every layer (see :meth:`NeighborGatedAttention.forward`).
        """
        q = self._project(g, 0)
        k = self._project(g, 1)
        v = self._project(g, 2)
        if self.normalize:
            # F.normalize semantics (x / max(|x|, 1e-12)); the scale is folded into q.
            fast = not self.training
            q = _scaled_unit_rows(q, self.scaling, fast)
            k = _scaled_unit_rows(k, 1.0, fast)
            v = _scaled_unit_rows(v, 1.0, fast)
        else:
            q = q * self.scaling
        if self.smooth:
            logits = torch.addcmul(logit_shift, _bmm_nt(q, k), logit_scale)
        else:
            logits = _bmm_nt(q, k) + logit_shift
        weights = torch.softmax(logits, dim=-1) * gate
        b_out = self.out_proj.b
        if self.embed_dim < self.hidden_dim and b_out is not None:
            # (A·V)·W_out = A·(V·W_out): the nnei×nnei product then runs on embed_dim columns
            out = torch.baddbmm(b_out, weights, torch.matmul(v, self.out_proj.w))
        else:
            out = self.out_proj(torch.bmm(weights, v))
        return self.layer_norm(g + out)

    def _project(self, g: Tensor, block: int) -> Tensor:
        """Block ``block`` (0: Q, 1: K, 2: V) of ``in_proj``, ``(nb, nnei, hidden_dim)``.

        Three products instead of one split ``(…, 3·hidden)`` output: each block comes out
        contiguous (the elementwise work that follows runs at full speed on it) and the
        backward pass adds three small products instead of concatenating three big blocks.
        """
        lo, hi = block * self.hidden_dim, (block + 1) * self.hidden_dim
        b = self.in_proj.b
        assert b is not None
        return F.linear(g, self.in_proj.w[:, lo:hi].t(), b[lo:hi])


class NeighborGatedAttention(nn.Module):
    """``attn_layer`` stacked :class:`GatedAttentionLayer` (zero layers = identity)."""

    def __init__(self, layer_num: int, embed_dim: int, hidden_dim: int, **kwargs) -> None:
        super().__init__()
        self.layer_num = layer_num
        self.layers = nn.ModuleList(
            GatedAttentionLayer(embed_dim, hidden_dim, **kwargs) for _ in range(layer_num)
        )
        # Evaluation on a CPU runs the layers as one C++ op (dpa1.accel.attention_op);
        # False: the PyTorch layers.
        self.native = True

    def forward(
        self,
        g: Tensor,
        mask: Tensor,
        sw: Tensor,
        direction: Tensor,
        key_log_weight: Tensor | None = None,
    ) -> Tensor:
        """Apply all layers.

        Args:
            g: ``(nb, nnei, ng)``; mask: ``(nb, nnei)`` valid slots; sw: ``(nb, nnei)`` masked
            switch ``ŝ``; direction: ``(nb, nnei, 3)`` unit vectors (zero on padding).
            key_log_weight: ``(nnei,)`` log-multiplicity of each key slot: a slot standing
                for several identical padding slots keeps their share of the smooth softmax
                denominator (exact padding trimming, see the descriptor).
        """
        if self.layer_num == 0:
            return g
        layer0 = self.layers[0]
        if not torch.jit.is_scripting():
            w = sw if layer0.smooth else mask.to(g.dtype)
            fast = accel_hook.attention_stack(self, g, w, direction, key_log_weight)
            if fast is not None:
                return fast
        # Everything below is the same in every layer: build it once.
        if layer0.smooth:
            scale = sw.unsqueeze(-1) * sw.unsqueeze(-2)  # (nb, nnei, nnei)
            # (L + 20)·ŝŝ − 20: padding/excluded keys sit at exactly −20 (they stay in the
            # softmax denominator, as in DeePMD-kit); then weights are gated by ŝŝ again.
            shift = scale * layer0.attnw_shift - layer0.attnw_shift
            if key_log_weight is not None:
                shift = shift + key_log_weight
            gate = scale
        else:
            scale = torch.ones(1, dtype=g.dtype, device=g.device)
            # A finite −1e30 instead of −inf: exp underflows to exactly 0 all the same, but
            # a centre without neighbours yields zeros instead of NaN (and NaN gradients).
            shift = torch.where(mask, 0.0, -1e30).to(g.dtype).unsqueeze(-2)  # (nb, 1, nnei)
            gate = mask.to(g.dtype).unsqueeze(-1)  # query rows of padding get no output
        if layer0.dotr:
            gate = gate * torch.bmm(direction, direction.transpose(-1, -2))
        if layer0.do_mask:
            # TensorFlow's attn_mask: the final weights lose their diagonal.
            eye = torch.eye(g.shape[1], dtype=torch.bool, device=g.device)
            gate = gate.masked_fill(eye, 0.0)
        for layer in self.layers:
            g = layer(g, scale, shift, gate)
        return g
