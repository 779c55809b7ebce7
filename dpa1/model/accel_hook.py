"""The plain model's one door to the accelerated path (:mod:`dpa1.accel`).

:mod:`dpa1.model` is the differentiable reference of the model (docs/design.md); it imports
:mod:`dpa1.accel` only here. Each function below returns what the plain code would compute,
by a faster route where one applies; callers run it only outside TorchScript (the frozen
model's route is the ``EnergyModel.accel`` slot, filled by :func:`script_kernel`).

The switch is ``DPA1_NATIVE=0`` (the whole accelerated path off, for the process) and each
module's ``native`` attribute; the speed knobs are ``dpa1.accel.settings.TUNING``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from dpa1.accel import attention_op, block_pool, embedding_op, energy_block, formulas, settings
from dpa1.accel.build import native_ops

T = TypeVar("T")


def bmm_nt(a: Tensor, b: Tensor) -> Tensor:
    """``a·bᵀ`` over the last two axes (contiguous gradients, ``formulas.BmmNT``)."""
    if settings.enabled():
        return formulas.BmmNT.apply(a, b)
    return torch.bmm(a, b.transpose(-1, -2))


def doubled_skip(y: Tensor, x: Tensor) -> Tensor | None:
    """``y + [x, x]`` with a faster backward (``formulas.DoubledSkip``); None when off."""
    return formulas.DoubledSkip.apply(y, x) if settings.enabled() else None


def scaled_unit_rows(x: Tensor, scale: float) -> Tensor | None:
    """``scale · x / max(‖x‖, 1e-12)`` for evaluation (``formulas.ScaledUnitRows``); None
    when off."""
    return formulas.ScaledUnitRows.apply(x, scale) if settings.enabled() else None


def attention_stack(
    stack, g: Tensor, w: Tensor, direction: Tensor, key_log_weight: Tensor | None
) -> Tensor | None:
    """All layers of ``stack`` by the C++ op, where it applies (else None)."""
    if not settings.evaluates_natively(stack, g):
        return None
    return attention_op.attention_stack(stack, g, w, direction, key_log_weight)


def embedding_along_first(net, first: Tensor, rest: Tensor | None) -> Tensor | None:
    """``net.along_first(first, rest)`` by the C++ op, where it applies (else None)."""
    if len(net.layers) == 0:
        return None
    if not settings.evaluates_natively(net, first):
        return None
    return embedding_op.along_first(net, first, rest)


def energy_kernel(model, rij: Tensor) -> Callable[..., Tensor] | None:
    """The C++ block kernel for ``model`` on ``rij``, where it applies (else None)."""
    return energy_block.EnergyKernel(model) if energy_block.applies(model, rij) else None


def script_kernel(model) -> torch.nn.Module | None:
    """The kernel to store in ``model.accel`` before scripting it (``dpa1 freeze``): None when
    the C++ ops are unavailable, switched off or do not cover the model."""
    if not (getattr(model, "native", False) and native_ops() and energy_block.covers(model)):
        return None
    return energy_block.EnergyKernel(model)


def sorted_nlist(
    i: np.ndarray, j: np.ndarray, s: np.ndarray, d: np.ndarray, nloc: int, nnei: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The neighbour-list sort and truncation in C++ (``nlist, ghost_j, ghost_shift``), or None
    when the ops are unavailable."""
    if not native_ops():
        return None
    nl, ghost_j, ghost_s = torch.ops.dpa1.sorted_nlist(
        *(torch.from_numpy(a) for a in (i, j, s, d)), nloc, nnei
    )
    return nl.numpy(), ghost_j.numpy(), ghost_s.numpy()


def plan_blocks(ncentres: int, chunk: int, x: Tensor, training: bool) -> tuple[int, int]:
    """``(chunk, workers)``: blocks side by side on the CPU threads in evaluation
    (``block_pool``), else ``(chunk, 1)``."""
    if training or x.device.type != "cpu" or not settings.TUNING.thread_blocks:
        return chunk, 1
    if not settings.enabled():
        return chunk, 1
    return block_pool.plan_blocks(ncentres, chunk)


def map_blocks(fn: Callable[[int], T], starts: list[int], workers: int) -> list[T]:
    """``[fn(s) for s in starts]`` on ``workers`` threads (``block_pool.map_blocks``)."""
    return block_pool.map_blocks(fn, starts, workers)
