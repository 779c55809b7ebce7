"""The switch and the tuning knobs of the accelerated path, in one place.

The switch: ``DPA1_NATIVE=0`` in the environment turns all of :mod:`dpa1.accel` off for the
process, and the model runs as the plain PyTorch reference (:mod:`dpa1.model`). Within a
process, each accelerated module has a ``native`` attribute (``EnergyModel``,
``EmbeddingNet``, ``NeighborGatedAttention``; default True) that keeps its own part on the
plain path: the equality tests between the two paths use it.

The knobs change speed only, never the numbers beyond round-off. Their defaults were measured
on 192- and 1,536-atom water on a 2-core CPU (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpa1.accel.build import native_ops, switched_off


@dataclass
class Tuning:
    """Speed knobs of the C++ ops and the block pool."""

    #: Evaluation on a CPU runs blocks of centres side by side, one per intra-op thread
    #: (block_pool.py); False: one block after another, each on all threads.
    thread_blocks: bool = True
    #: Rows of the embedding op's tile: each tile goes through every layer while it is in cache.
    embedding_tile: int = 256
    #: Centres taken at a time through all attention layers by the attention op.
    attention_group: int = 8


#: The process's knobs (tests and benchmarks change them; the model reads them per call).
TUNING = Tuning()


def enabled() -> bool:
    """Whether the accelerated path is on for this process (``DPA1_NATIVE``)."""
    return not switched_off()


def evaluates_natively(module: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` (with a ``native`` switch) runs its C++ op on ``x``: in evaluation,
    on a CPU, when the ops could be built. Training differentiates forces again, which the
    ops' backward cannot."""
    return bool(module.native) and not module.training and x.device.type == "cpu" and native_ops()


def refuse_second_derivative(what: str) -> None:
    """For the backward of an evaluation-only Function: raise if it is being differentiated
    again (``create_graph``), where its hand-written formula would act as a constant."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"the evaluation-mode {what} is differentiable once; put the model in "
                           "training mode (model.train()) to differentiate forces")
