"""A block of centres in evaluation as one C++ op pair (``csrc/energy_block.cpp``).

:meth:`EnergyModel._energy_and_grad` evaluates ``fitting(descriptor(r))`` for a block of
centres and differentiates it once. In evaluation on a CPU, where the model is of the shape the
op covers (:func:`applies`), :func:`fitted_energy` computes the same network output as one
:class:`_EnergyBlock`, whose backward is the op's backward: the descriptor's front (environment
matrix, directions), the embedding and attention ops, the contraction and the fitting net, and
their derivatives to the pair vectors, without the ~200 PyTorch ops and autograd nodes in
between, and without the GIL.

What stays in Python is what both paths share: the padding trimming, the exclusion table and
the type-embedding rows (:class:`~dpa1.model.descriptor.DescrptDPA1`), the fitting's extra inputs
and its biases (:class:`~dpa1.model.fitting.EnergyFitting`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dpa1.model.native import evaluates_natively
from dpa1.model.network import EmbeddingNet, refuse_second_derivative


def _net_params(net: EmbeddingNet) -> tuple[list[Tensor], list[int]]:
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


def applies(model, rij: Tensor) -> bool:
    """Whether :func:`fitted_energy` evaluates ``model``'s blocks: in evaluation on a CPU with the
    C++ ops (``model.native`` and the attention's and embedding's switches on), for a concat type
    embedding, tanh nets and one precision in descriptor and fitting. Other models keep the
    modules, whose attention and embedding still run their own C++ ops."""
    d, f = model.descriptor, model.fitting
    return (
        evaluates_natively(model, rij)
        and d.embedding.native
        and d.attention.native
        and d.embedding_strip is None
        and d.activation_function == "tanh"
        and f.activation_function == "tanh"
        and d.dtype == f.dtype
    )


def fitted_energy(
    model,
    rij: Tensor,
    nei_mask: Tensor,
    nei_type: Tensor,
    atype: Tensor,
    fparam: Tensor | None,
    aparam: Tensor | None,
) -> Tensor:
    """``model.fitting(model.descriptor(rij, …), …)``: atomic energies ``(nf, nloc)`` in float64,
    differentiable once along ``rij (nf, nloc, nnei, 3)``."""
    d, f = model.descriptor, model.fitting
    nf, nloc, _ = nei_mask.shape
    rij, nei_mask, nei_type, slot_weight, _ = d.trim(rij, nei_mask, nei_type)
    nnei = nei_mask.shape[-1]
    keep = d.pair_kept(nei_mask, nei_type, atype)
    t_in, t_center = d.type_inputs(nei_type, atype)
    extra = f.extra_inputs(nf, nloc, fparam, aparam)
    fit_extra = ([t_center.to(d.dtype)] if d.concat_output_tebd else []) + extra
    nb = nf * nloc
    empty = rij.new_empty(0, dtype=d.dtype)
    e_net = _EnergyBlock.apply(
        rij.to(d.dtype).reshape(nb, nnei, 3),
        nei_mask.reshape(nb, nnei).contiguous(),
        keep.reshape(nb, nnei).contiguous(),
        atype.reshape(nb).contiguous(),
        slot_weight if slot_weight is not None else empty,
        t_in.detach().reshape(nb, nnei, -1).contiguous(),
        torch.cat(fit_extra, dim=-1).detach().reshape(nb, -1).contiguous() if fit_extra else empty,
        model,
    )
    return f.finish(e_net.view(nf, nloc), extra, atype)


class _EnergyBlock(torch.autograd.Function):
    """The fitting net's output ``(nb,)`` of a block, by ``dpa1::energy_block``; its backward
    (``dpa1::energy_block_backward``) gives the pair vectors' gradient only, once."""

    @staticmethod
    def forward(
        ctx,
        rij: Tensor,
        nei_mask: Tensor,
        keep: Tensor,
        atype: Tensor,
        slot_weight: Tensor,
        type_rows: Tensor,
        extra: Tensor,
        model,
    ) -> Tensor:
        d = model.descriptor
        nnei = rij.shape[1]
        rij = rij.detach().contiguous()
        davg, dstd = d.davg[:, :nnei].contiguous(), d.dstd[:, :nnei].contiguous()
        config = _config(model)
        out = torch.ops.dpa1.energy_block(
            rij,
            nei_mask,
            keep,
            davg,
            dstd,
            atype,
            type_rows,
            slot_weight,
            extra,
            *config,
        )
        ctx.save_for_backward(rij, nei_mask, keep, dstd, atype, slot_weight, *out[1:])
        ctx.config = config
        return out[0]

    @staticmethod
    def backward(ctx, de: Tensor):
        refuse_second_derivative("energy block")
        rij, nei_mask, keep, dstd, atype, slot_weight, *saved = ctx.saved_tensors
        g = torch.ops.dpa1.energy_block_backward(
            de.contiguous(),
            rij,
            nei_mask,
            keep,
            dstd,
            atype,
            slot_weight,
            saved,
            *ctx.config,
        )
        return g, None, None, None, None, None, None, None


def _config(model) -> tuple:
    """The op's arguments after ``extra``: the nets' parameters and the descriptor's settings."""
    d = model.descriptor
    emb, emb_skips = _net_params(d.embedding)
    attn = [t for layer in d.attention.layers for t in layer.native_params()]
    fit, fit_skips = _net_params(model.fitting.net)
    layer0 = d.attention.layers[0] if d.attention.layer_num > 0 else None
    scaling = layer0.scaling if layer0 is not None else 1.0
    flags = (
        (layer0.normalize, layer0.smooth, layer0.do_mask, layer0.dotr)
        if layer0 is not None
        else (False, False, False, False)
    )
    ln_eps = layer0.layer_norm.eps if layer0 is not None else 1e-5
    return (
        emb,
        emb_skips,
        attn,
        fit,
        fit_skips,
        [d.rcut, d.rcut_smth, d.env_protection],
        [d.nnei, d.axis_neuron, d.embedding.native_tile, d.attention.native_group],
        scaling,
        *flags,
        ln_eps,
    )
