"""Hand-written backward formulas for three PyTorch expressions of the model.

Same values and same first derivatives as autograd's own backward of the plain expression
(:mod:`dpa1.model` keeps the plain one; ``tests/test_tuned_paths.py`` checks both agree), with
fewer passes over memory or a contiguous layout. :class:`BmmNT` and :class:`DoubledSkip` have
backwards made of differentiable operations, so training differentiates them again;
:class:`ScaledUnitRows` is for evaluation only (a second derivative raises).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dpa1.accel.settings import refuse_second_derivative

#: ``F.normalize``'s floor on the norm.
NORM_EPS = 1e-12


class ScaledUnitRows(torch.autograd.Function):
    """``scale · x / max(‖x‖, ε)`` along the last axis, for evaluation.

    Autograd's own backward of the formula takes about seven passes over ``x``-sized
    tensors (both factors' gradients, the norm's backward with its zero mask, their sum);
    ``r·(g − ŷ(ŷ·g))`` takes about four, and the three normalisations of each attention layer are
    the largest elementwise cost of a force evaluation.
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        r = scale / norm.clamp_min(NORM_EPS)
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
        dot = dot.masked_fill_(norm < NORM_EPS, 0.0)
        return torch.addcmul(g, y, dot, value=-1.0).mul_(r), None


class BmmNT(torch.autograd.Function):
    """``a·bᵀ`` for ``(nb, n, c)`` operands, with both gradients returned contiguous.

    Autograd's ``bmm(a, b.transpose(-1, -2))`` hands ``b`` the transpose of a ``(nb, c, n)``
    product; every elementwise pass after it (the normalisation's backward, the in-projection's
    reshape) then runs on a transposed layout, 2-2.7x slower, and ends in a copy. Here that
    gradient is the product ``gᵀ·a`` itself.
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


class DoubledSkip(torch.autograd.Function):
    """``y + [x, x]`` (the skip of a layer that doubles its width), with a backward that adds
    the two halves of the gradient (autograd's own, a sum over a broadcast axis of size 2,
    takes 2.5x as long)."""

    @staticmethod
    def forward(ctx, y: Tensor, x: Tensor) -> Tensor:
        ctx.n = x.shape[-1]
        return (y.unflatten(-1, (2, x.shape[-1])) + x.unsqueeze(-2)).flatten(-2)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, Tensor]:
        n = ctx.n
        return g, g[..., :n] + g[..., n:]
