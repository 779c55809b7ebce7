"""A block of centres in evaluation as one C++ op (``csrc/energy_block.cpp``).

``EnergyModel`` evaluates ``fitting(descriptor(r))`` for a block of centres and differentiates
it once. In evaluation on a CPU, where the model is of the shape the op covers
(:func:`applies`), :class:`EnergyKernel` computes the same network output as one op,
``dpa1::energy_block``, whose autograd node (registered in C++) is the op's backward: the
descriptor's front (environment matrix, directions), the embedding and attention ops, the
contraction and the fitting net, and their derivatives to the pair vectors, without the ~200
PyTorch ops and autograd nodes in between, and without the GIL. Because the backward is
registered in C++, a TorchScript module that takes forces with ``torch.autograd.grad`` runs it
too: ``dpa1 freeze`` stores an :class:`EnergyKernel` in the model's ``accel`` slot.

What stays in the model is what both paths share: the padding trimming, the exclusion table,
the type-embedding rows, the fitting's extra inputs and its biases
(``EnergyModel._kernel_inputs``).
"""

import torch
from torch import Tensor, nn

from dpa1.accel.attention_op import layer_params
from dpa1.accel.embedding_op import activation_spec
from dpa1.accel.settings import TUNING, evaluates_natively


def applies(model, rij: Tensor) -> bool:
    """Whether :class:`EnergyKernel` evaluates ``model``'s blocks: in evaluation on a CPU with the
    C++ ops (``model.native`` and the attention's and embedding's switches on): any type-embedding
    mode, activation and precisions of descriptor and fitting."""
    return evaluates_natively(model, rij) and covers(model)


def covers(model) -> bool:
    """Whether the op covers ``model``'s shape (the C++ ops loaded or not)."""
    d, f = model.descriptor, model.fitting
    return (
        d.embedding.native
        and d.attention.native
        and len(d.embedding.layers) > 0
        and len(f.net.layers) > 0
    )


def _net_params(net) -> tuple[list[Tensor], list[int]]:
    """``[w, b, idt]`` per layer (empty tensors where absent) and the layers' skips."""
    params: list[Tensor] = []
    for layer in net.layers:
        empty = layer.w.new_empty(0)
        params += [
            layer.w,
            empty if layer.b is None else layer.b,
            empty if layer.idt is None else layer.idt,
        ]
    return params, [layer.skip for layer in net.layers]


class EnergyKernel(nn.Module):
    """The fitting net's output of a block, ``(nb,)``, by ``dpa1::energy_block``.

    Holds the model's parameters (the same tensors, not copies) and settings in the order the op
    takes them; it registers no parameters of its own, so it adds nothing to a state dict.
    Built per call in eager evaluation (it then always sees the current parameters) and once
    for a frozen model.
    """

    # (TorchScript reads these annotations: no ``from __future__ import annotations`` here)
    emb: list[Tensor]
    emb_skips: list[int]
    attn: list[Tensor]
    fit: list[Tensor]
    fit_skips: list[int]
    geometry: list[float]
    sizes: list[int]
    emb_activation: str
    fit_activation: str

    def __init__(self, model) -> None:
        super().__init__()
        d = model.descriptor
        self.emb, self.emb_skips = _net_params(d.embedding)
        self.attn = [t for layer in d.attention.layers for t in layer_params(layer)]
        self.fit, self.fit_skips = _net_params(model.fitting.net)
        self.emb_activation = activation_spec(d.embedding.layers[0])
        self.fit_activation = activation_spec(model.fitting.net.layers[0])
        layer0 = d.attention.layers[0] if d.attention.layer_num > 0 else None
        self.scaling = float(layer0.scaling) if layer0 is not None else 1.0
        self.normalize = bool(layer0.normalize) if layer0 is not None else False
        # the descriptor's: the attention layers share it, and strip mode's type factor uses it
        self.smooth = bool(d.smooth)
        self.do_mask = bool(layer0.do_mask) if layer0 is not None else False
        self.dotr = bool(layer0.dotr) if layer0 is not None else False
        self.ln_eps = float(layer0.layer_norm.eps) if layer0 is not None else 1e-5
        self.geometry = [float(d.rcut), float(d.rcut_smth), float(d.env_protection)]
        self.sizes = [int(d.nnei), int(d.axis_neuron), TUNING.embedding_tile,
                      TUNING.attention_group]

    def forward(
        self,
        rij: Tensor,
        nei_mask: Tensor,
        keep: Tensor,
        atype: Tensor,
        slot_weight: Tensor,
        type_rows: Tensor,
        strip_rows: Tensor,
        extra: Tensor,
        davg: Tensor,
        dstd: Tensor,
    ) -> Tensor:
        """Args (``nb`` centres, ``n`` slots, trimmed): rij ``(nb, n, 3)`` in the descriptor's
        precision; nei_mask, keep ``(nb, n)`` bool; atype ``(nb,)``; slot_weight ``(n,)`` or
        empty; type_rows ``(nb, n, tebd)`` (concat; width 0 in strip mode); strip_rows
        ``(nb, n, ng)`` strip mode's type factor ``N_t`` (empty in concat mode); extra
        ``(nb, n_extra)`` or empty; davg, dstd ``(ntypes, n, 4)``. Differentiable once along
        ``rij``."""
        return torch.ops.dpa1.energy_block(
            rij,
            nei_mask,
            keep,
            davg,
            dstd,
            atype,
            type_rows,
            strip_rows,
            slot_weight,
            extra,
            self.emb,
            self.emb_skips,
            self.attn,
            self.fit,
            self.fit_skips,
            self.geometry,
            self.sizes,
            self.scaling,
            self.normalize,
            self.smooth,
            self.do_mask,
            self.dotr,
            self.ln_eps,
            self.emb_activation,
            self.fit_activation,
        )
