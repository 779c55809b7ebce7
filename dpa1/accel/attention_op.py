"""Every layer of a ``NeighborGatedAttention`` in one C++ op (``csrc/attention_stack.cpp``)."""

from __future__ import annotations

import torch
from torch import Tensor

from dpa1.accel.settings import TUNING, refuse_second_derivative


def layer_params(layer) -> list[Tensor]:
    """``[w_in, b_in, w_out, b_out, ln_w, ln_b]`` of a ``GatedAttentionLayer``, as the op takes
    them."""
    b_in, b_out = layer.in_proj.b, layer.out_proj.b
    assert b_in is not None and b_out is not None
    return [layer.in_proj.w, b_in, layer.out_proj.w, b_out, layer.layer_norm.w, layer.layer_norm.b]


def attention_stack(
    stack, g: Tensor, w: Tensor, direction: Tensor, key_log_weight: Tensor | None
) -> Tensor:
    """``stack(g, …)`` (a ``NeighborGatedAttention`` with at least one layer) by the op.

    Args:
        g: ``(nb, nnei, ng)``; w: ``(nb, nnei)`` the switches (smooth) or the mask;
        direction: ``(nb, nnei, 3)``; key_log_weight: ``(nnei,)`` or None.
    """
    return _AttentionStack.apply(g, w, direction, key_log_weight, stack)


class _AttentionStack(torch.autograd.Function):
    """Evaluation only: the backward gives the gradients of ``g``, of the switches (smooth) and
    of the directions (``dotr``), what forces need, not of the parameters, and it is not
    differentiable again (training differentiates forces, so it keeps the PyTorch layers).
    The op runs without the GIL, a few centres at a time through all layers, and builds the
    logit and gate tables of ``NeighborGatedAttention.forward`` itself, per group, from
    ``w``, the directions and ``key_log_weight``.
    """

    @staticmethod
    def forward(ctx, g: Tensor, w: Tensor, direction: Tensor, key_log_weight: Tensor | None, stack):
        layer0 = stack.layers[0]
        empty = g.new_empty(0)
        u = direction.detach().contiguous() if layer0.dotr else empty
        lw = (
            key_log_weight.detach().contiguous()
            if key_log_weight is not None and layer0.smooth
            else empty
        )
        w = w.detach().contiguous()
        params = [t for layer in stack.layers for t in layer_params(layer)]
        config = (layer0.scaling, layer0.normalize, layer0.smooth, layer0.do_mask)
        group = TUNING.attention_group
        out, *saved = torch.ops.dpa1.attention_stack(
            g.detach().contiguous(), w, u, lw, params, *config, layer0.layer_norm.eps, group
        )
        ctx.save_for_backward(w, u, lw, *params, *saved)
        ctx.nparams = len(params)
        ctx.config = (*config, group)
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
