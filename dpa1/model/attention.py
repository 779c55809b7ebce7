"""Neighbour gated self-attention over the slots of one centre atom (spec §6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpa1.model.native import evaluates_natively
from dpa1.model.network import Layer, LayerNorm, refuse_second_derivative

# Smooth attention shifts logits by this before multiplying by the switches, so that
# padding keys sit at exactly −20 (and stay in the softmax denominator, as DeePMD does).
ATTNW_SHIFT = 20.0


#: ``F.normalize``'s floor on the norm (TorchScript needs the literal in the plain formula).
_NORM_EPS = 1e-12


class _ScaledUnitRows(torch.autograd.Function):
    """``scale · x / max(‖x‖, ε)`` with a hand-written backward, for evaluation only.

    Autograd's own backward of the formula takes about seven passes over ``x``-sized
    tensors (both factors' gradients, the norm's backward with its zero mask, their sum);
    ``r·(g − ŷ(ŷ·g))`` takes about four, and the three normalisations of each attention layer are
    the largest elementwise cost of a force evaluation. Once differentiable: training
    (which differentiates forces again) uses the plain formula, so does TorchScript.
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        r = scale / norm.clamp_min(_NORM_EPS)
        y = x * r
        ctx.save_for_backward(y, r, norm)
        ctx.inv_scale2 = 1.0 / (scale * scale)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        refuse_second_derivative("attention normalisation")
        y, r, norm = ctx.saved_tensors
        # dy/dx = r·(I − ŷŷᵀ) with ŷ = y/scale; a row below the floor is just r·x.
        dot = torch.linalg.vecdot(g, y, dim=-1).unsqueeze(-1) * ctx.inv_scale2
        dot = dot.masked_fill_(norm < _NORM_EPS, 0.0)
        return torch.addcmul(g, y, dot, value=-1.0).mul_(r), None


def _scaled_unit_rows(x: Tensor, scale: float, fast_backward: bool) -> Tensor:
    """``scale · x / max(‖x‖, 1e-12)`` along the last axis (``F.normalize`` with a factor).

    ``fast_backward`` (evaluation) uses :class:`_ScaledUnitRows`; same values, same
    first derivatives (a second one raises).
    """
    if not torch.jit.is_scripting():
        if fast_backward:
            return _ScaledUnitRows.apply(x, scale)
    return x * (scale / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12))


class _BmmNT(torch.autograd.Function):
    """``a·bᵀ`` for ``(nb, n, c)`` operands, with both gradients returned contiguous.

    Autograd's ``bmm(a, b.transpose(-1, -2))`` hands ``b`` the transpose of a ``(nb, c, n)``
    product; every elementwise pass after it (the normalisation's backward, the in-projection's
    reshape) then runs on a transposed layout, 2-2.7x slower, and ends in a copy. Here that
    gradient is the product ``gᵀ·a`` itself. The backward is made of differentiable products,
    so training differentiates it again.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        return torch.bmm(a, b.transpose(-1, -2))

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        a, b = ctx.saved_tensors
        ga = torch.bmm(g, b) if ctx.needs_input_grad[0] else None
        gb = torch.bmm(g.transpose(-1, -2), a) if ctx.needs_input_grad[1] else None
        return ga, gb


def _bmm_nt(a: Tensor, b: Tensor) -> Tensor:
    """``a·bᵀ`` over the last two axes (see :class:`_BmmNT`)."""
    if torch.jit.is_scripting():
        return torch.bmm(a, b.transpose(-1, -2))
    return _BmmNT.apply(a, b)


class _AttentionStack(torch.autograd.Function):
    """Every layer of a :class:`NeighborGatedAttention` in one C++ op
    (``csrc/attention_stack.cpp``).

    Evaluation only: the backward gives the gradients of ``g``, of the switches (smooth) and of
    the directions (``dotr``), what forces need, not of the parameters, and it is not
    differentiable again (training differentiates forces, so it keeps the PyTorch layers).
    The op runs without the GIL, a few centres at a time through all layers, and builds the
    logit and gate tables of :meth:`NeighborGatedAttention.forward` itself, per group, from
    ``w`` (smooth: the switches, else the mask), the directions and ``key_log_weight``.
    """

    @staticmethod
    def forward(
        ctx,
        g: Tensor,
        w: Tensor,
        direction: Tensor,
        key_log_weight: Tensor | None,
        stack: NeighborGatedAttention,
    ):
        layer0 = stack.layers[0]
        empty = g.new_empty(0)
        u = direction.detach().contiguous() if layer0.dotr else empty
        lw = (
            key_log_weight.detach().contiguous()
            if key_log_weight is not None and layer0.smooth
            else empty
        )
        w = w.detach().contiguous()
        params = [t for layer in stack.layers for t in layer.native_params()]
        config = (layer0.scaling, layer0.normalize, layer0.smooth, layer0.do_mask)
        out, *saved = torch.ops.dpa1.attention_stack(
            g.detach().contiguous(),
            w,
            u,
            lw,
            params,
            *config,
            layer0.layer_norm.eps,
            stack.native_group,
        )
        ctx.save_for_backward(w, u, lw, *params, *saved)
        ctx.nparams = len(params)
        ctx.config = (*config, stack.native_group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        refuse_second_derivative("attention")
        w, u, lw, *rest = ctx.saved_tensors
        params, saved = rest[: ctx.nparams], rest[ctx.nparams :]
        dg, dw, du = torch.ops.dpa1.attention_stack_backward(
            grad, w, u, lw, params, saved, *ctx.config
        )
        need = ctx.needs_input_grad
        smooth, dotr = ctx.config[2], u.numel() > 0
        return (
            dg if need[0] else None,
            dw if smooth and need[1] else None,
            du if dotr and need[2] else None,
            None,
            None,
        )


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

    @torch.jit.unused
    def native_params(self) -> list[Tensor]:
        """``[w_in, b_in, w_out, b_out, ln_w, ln_b]`` as ``csrc/attention_stack.cpp`` takes them
        (called under the op's autograd Function, where nothing records gradients)."""
        b_in, b_out = self.in_proj.b, self.out_proj.b
        assert b_in is not None and b_out is not None
        return [self.in_proj.w, b_in, self.out_proj.w, b_out, self.layer_norm.w, self.layer_norm.b]

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
        # Evaluation on a CPU runs the layers as one C++ op (_AttentionStack), taking
        # `native_group` centres at a time through all of them; False: the PyTorch layers.
        self.native = True
        self.native_group = 8

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
            if self._use_native(g):
                w = sw if layer0.smooth else mask.to(g.dtype)
                return _AttentionStack.apply(g, w, direction, key_log_weight, self)
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

    @torch.jit.unused
    def _use_native(self, g: Tensor) -> bool:
        return evaluates_natively(self, g)
