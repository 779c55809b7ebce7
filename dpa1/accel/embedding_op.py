"""``EmbeddingNet.along_first`` by one C++ op (``csrc/embedding_net.cpp``), for evaluation."""

from __future__ import annotations

import torch
from torch import Tensor

from dpa1.accel.settings import TUNING, refuse_second_derivative


def activation_spec(layer) -> str:
    """A ``Layer``'s activation as the ops take it (``csrc/activation.h``): the canonical name,
    ``gelu`` for both gelus (the same tanh approximation) and ``silut:T`` with its threshold."""
    act = layer.act
    if act.name == "silut":
        return f"silut:{act.threshold!r}"
    return "gelu" if act.name == "gelu_tf" else act.name


def along_first(net, first: Tensor, rest: Tensor | None) -> Tensor:
    """``net(cat([first, rest], -1))`` for an ``EmbeddingNet``; differentiable once, along
    ``first (..., 1)`` only (``rest``, the type embedding, and the parameters get no gradient)."""
    return _EmbeddingTangent.apply(first, rest, net)


class _EmbeddingTangent(torch.autograd.Function):
    """The op returns ``y`` and ``dy = ∂y/∂x₀`` (forward-mode, one tangent per row), so the
    backward is ``⟨∂E/∂y, dy⟩`` per row instead of a backward pass through every layer."""

    @staticmethod
    def forward(ctx, first: Tensor, rest: Tensor | None, net) -> Tensor:
        # (no graph is recorded in here: parameters go in as they are)
        x = first if rest is None else torch.cat([first, rest], dim=-1)
        lead = x.shape[:-1]
        empty = first.new_empty(0)
        layers = net.layers
        y, dy = torch.ops.dpa1.embedding_tangent(
            x.reshape(-1, x.shape[-1]).contiguous(),
            [layer.w for layer in layers],
            [empty if layer.b is None else layer.b for layer in layers],
            [empty if layer.idt is None else layer.idt for layer in layers],
            [layer.skip for layer in layers],
            TUNING.embedding_tile,
            activation_spec(layers[0]),
        )
        ctx.save_for_backward(dy)
        return y.view(*lead, y.shape[-1])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        refuse_second_derivative("embedding net")
        (dy,) = ctx.saved_tensors
        d_first = (
            torch.linalg.vecdot(grad.reshape(dy.shape), dy, dim=-1)
            if ctx.needs_input_grad[0]
            else None
        )
        return (None if d_first is None else d_first.view(*grad.shape[:-1], 1)), None, None
