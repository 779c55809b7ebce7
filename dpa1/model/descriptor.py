"""The DPA-1 descriptor (``se_atten`` / ``dpa1`` / ``se_atten_v2``), docs/design.md,
"Environment matrix" to "Descriptor output".

For centre ``i`` with neighbour slots ``j = 1..N_c``:

1. ``R_ij = κ_ij · (R̃_ij − davg[t_i, j]) / dstd[t_i, j]`` (padding rows become −davg/dstd);
2. ``G_ij = N_g([σ_ij, T_nei, T_i])`` (concat) or ``N_s(σ)⊙(1 + N_t(T_nei, T_i)·ŝ)`` (strip);
3. ``attn_layer`` gated self-attention layers over the slots;
4. ``T1 = Gᵀ R / N_c`` and ``D = T1 · T1[:na]ᵀ`` (flattened row-major), plus ``T_i``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpa1.model.attention import NeighborGatedAttention
from dpa1.model.env_mat import env_matrix
from dpa1.model.network import EmbeddingNet, to_dtype
from dpa1.model.type_embedding import TypeEmbedding


def pair_keep_table(ntypes: int, exclude_types: list[list[int]]) -> Tensor:
    """``(ntypes, ntypes + 1)`` bool table: pair (t_i, t_j) kept; column ``ntypes`` (padding)
    kept."""
    keep = torch.ones(ntypes, ntypes + 1, dtype=torch.bool)
    for a, b in exclude_types:
        keep[a, b] = False
        keep[b, a] = False
    return keep


def _check_arguments(
    rcut: float, rcut_smth: float, neuron: list[int], axis_neuron: int, tebd_input_mode: str
) -> None:
    """The checks the input validator also makes, for direct constructions."""
    if rcut_smth >= rcut:
        raise ValueError(f"rcut_smth ({rcut_smth}) must be smaller than rcut ({rcut})")
    if axis_neuron > neuron[-1]:
        raise ValueError(f"axis_neuron ({axis_neuron}) must not exceed neuron[-1] ({neuron[-1]})")
    if tebd_input_mode not in ("concat", "strip"):
        raise ValueError(f"tebd_input_mode must be 'concat' or 'strip', got {tebd_input_mode!r}")


class DescrptDPA1(nn.Module):
    """se_atten descriptor. Arguments are those of the serialized descriptor (docs/design.md,
    "Model file (.dp)").

    ``forward`` takes the per-slot geometry (see :meth:`forward`) and returns the
    descriptor ``(nf, nloc, ng·na [+ nt])`` in the model's global precision (float64).
    """

    def __init__(
        self,
        *,
        rcut: float,
        rcut_smth: float,
        sel: int,
        ntypes: int,
        neuron: list[int],
        axis_neuron: int,
        tebd_dim: int,
        tebd_input_mode: str,
        set_davg_zero: bool,
        attn: int,
        attn_layer: int,
        attn_dotr: bool,
        attn_mask: bool,
        activation_function: str,
        resnet_dt: bool,
        scaling_factor: float,
        normalize: bool,
        temperature: float | None,
        trainable_ln: bool,
        ln_eps: float,
        smooth_type_embedding: bool,
        type_one_side: bool,
        concat_output_tebd: bool,
        use_econf_tebd: bool,
        use_tebd_bias: bool,
        type_map: list[str] | None,
        precision: str,
        exclude_types: list[list[int]],
        env_protection: float,
        descriptor_type: str = "dpa1",
        trainable: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if descriptor_type == "se_atten_v2":
            tebd_input_mode, smooth_type_embedding = "strip", True
        _check_arguments(rcut, rcut_smth, neuron, axis_neuron, tebd_input_mode)
        self.descriptor_type = descriptor_type
        self.rcut, self.rcut_smth, self.env_protection = (
            float(rcut),
            float(rcut_smth),
            float(env_protection),
        )
        self.nnei = int(sel)
        self.ntypes = ntypes
        self.neuron = list(neuron)
        self.axis_neuron = axis_neuron
        self.tebd_dim = tebd_dim
        self.tebd_input_mode = tebd_input_mode
        self.set_davg_zero = set_davg_zero
        self.attn, self.attn_layer, self.attn_dotr, self.attn_mask = (
            attn,
            attn_layer,
            attn_dotr,
            attn_mask,
        )
        self.activation_function, self.resnet_dt = activation_function, resnet_dt
        self.scaling_factor, self.normalize, self.temperature = (
            scaling_factor,
            normalize,
            temperature,
        )
        self.trainable_ln, self.ln_eps = trainable_ln, ln_eps
        self.smooth = smooth_type_embedding
        self.type_one_side = type_one_side
        self.concat_output_tebd = concat_output_tebd
        self.use_econf_tebd, self.use_tebd_bias = use_econf_tebd, use_tebd_bias
        self.type_map = list(type_map) if type_map is not None else None
        self.precision = "float64" if precision == "default" else precision
        self.exclude_types = [list(p) for p in exclude_types]
        self.trainable = trainable
        self.dtype = to_dtype(precision)
        self.strip = tebd_input_mode == "strip"
        # one generator for every layer, drawn in a fixed order (type embedding, embedding
        # net(s), attention), so a seed gives the same weights every time
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self._build_networks(gen)
        self._register_statistics()

    def _build_networks(self, gen: torch.Generator | None) -> None:
        """Type embedding, embedding net (plus the strip-mode type net) and attention layers,
        from the hyperparameters stored by ``__init__``."""
        self.type_embedding = TypeEmbedding(
            self.ntypes,
            self.tebd_dim,
            use_econf_tebd=self.use_econf_tebd,
            use_tebd_bias=self.use_tebd_bias,
            type_map=self.type_map,
            dtype=self.dtype,
            generator=gen,
            trainable=self.trainable,
        )
        type_width = self.tebd_dim if self.type_one_side else 2 * self.tebd_dim
        net = dict(
            activation_function=self.activation_function,
            resnet_dt=self.resnet_dt,
            dtype=self.dtype,
            generator=gen,
            trainable=self.trainable,
        )
        self.embedding = EmbeddingNet(1 if self.strip else 1 + type_width, self.neuron, **net)
        self.embedding_strip: EmbeddingNet | None = (
            EmbeddingNet(type_width, self.neuron, **net) if self.strip else None
        )
        self.attention = NeighborGatedAttention(
            self.attn_layer,
            self.neuron[-1],
            self.attn,
            dotr=self.attn_dotr,
            do_mask=self.attn_mask,
            scaling_factor=self.scaling_factor,
            normalize=self.normalize,
            temperature=self.temperature,
            smooth=self.smooth,
            trainable_ln=self.trainable_ln,
            ln_eps=self.ln_eps,
            dtype=self.dtype,
            generator=gen,
        )

    def _register_statistics(self) -> None:
        """``davg``/``dstd`` buffers (identity until statistics are set) and the pair table."""
        shape = (self.ntypes, self.nnei, 4)
        self.register_buffer("davg", torch.zeros(*shape, dtype=self.dtype))
        self.register_buffer("dstd", torch.ones(*shape, dtype=self.dtype))
        keep = pair_keep_table(self.ntypes, self.exclude_types)
        self.register_buffer("keep", keep, persistent=False)
        # Trimming needs davg/dstd constant along the slot axis (always true for statistics
        # computed as in docs/design.md, "Descriptor statistics"); set_stat re-checks it for loaded
        # values.
        self.trim_padding = True

    @property
    def dim_out(self) -> int:
        return self.neuron[-1] * self.axis_neuron + (
            self.tebd_dim if self.concat_output_tebd else 0
        )

    def forward(self, rij: Tensor, nei_mask: Tensor, nei_type: Tensor, atype: Tensor) -> Tensor:
        """Descriptor of every local atom.

        Args:
            rij: ``(nf, nloc, nnei, 3)`` neighbour minus centre, any value on padding.
            nei_mask: ``(nf, nloc, nnei)`` true for neighbour slots (after pair exclusion).
            nei_type: ``(nf, nloc, nnei)`` neighbour types ≥ 0; padding slots carry the
                type of extended atom 0 (docs/design.md, "Type embedding").
            atype: ``(nf, nloc)`` centre types, already clamped ≥ 0.

        Returns:
            ``(nf, nloc, dim_out)`` in float64.
        """
        nf, nloc, _ = nei_mask.shape
        dtype = self.dtype
        rij, nei_mask, nei_type, slot_weight, key_log_weight = self.trim(rij, nei_mask, nei_type)
        nnei = nei_mask.shape[-1]
        davg = self.davg[:, :nnei][atype]
        dstd = self.dstd[:, :nnei][atype]
        env, sw = env_matrix(
            rij.to(dtype), nei_mask, self.rcut, self.rcut_smth, self.env_protection
        )
        rr = (env - davg) / dstd  # (nf, nloc, nnei, 4)
        # Descriptor-level exclusion: κ is 1 on padding, so padding keeps −davg/dstd
        # (docs/design.md, "Padding and exclusion").
        keep = self.pair_kept(nei_mask, nei_type, atype)
        rr = rr * keep.unsqueeze(-1).to(dtype)
        mask = nei_mask & keep
        sw = sw * mask.to(dtype)
        t_in, t_center = self.type_inputs(nei_type, atype)
        sigma = rr[..., :1]
        if not self.strip:
            g = self.embedding.along_first(sigma, t_in)
        else:
            g_s = self.embedding.along_first(sigma)
            g_t = self.strip_type_rows(nei_type, atype)
            if self.smooth:
                g_t = g_t * sw.unsqueeze(-1)
            g = g_s * g_t + g_s  # (nf, nloc, nnei, ng)

        nb = nf * nloc
        g = g.reshape(nb, nnei, -1)
        direction = F.normalize(rr[..., 1:4], dim=-1).reshape(nb, nnei, 3)
        g = self.attention(
            g, mask.reshape(nb, nnei), sw.reshape(nb, nnei), direction, key_log_weight
        )

        rr = rr.reshape(nb, nnei, 4)
        if slot_weight is not None:
            rr = rr * slot_weight.unsqueeze(-1)
        # T1ᵀ = Rᵀ G / N_c (N_c is the full sel), (nb, 4, ng): in this order G's gradient
        # comes out of the product contiguous, not transposed (the last LayerNorm's backward
        # would copy it).
        t1t = torch.matmul(rr.transpose(-1, -2), g) / self.nnei
        d = torch.matmul(t1t.transpose(-1, -2), t1t[..., : self.axis_neuron])  # (nb, ng, na)
        d = d.reshape(nf, nloc, -1)
        if self.concat_output_tebd:
            d = torch.cat([d, t_center], dim=-1)
        return d.to(torch.float64)

    def trim(
        self, rij: Tensor, nei_mask: Tensor, nei_type: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """Exact padding trimming: ``(rij, nei_mask, nei_type)`` cut to the slots in use plus one
        padding slot standing for the rest, and the slots' weights and their logs (None when
        nothing is cut).

        Slots beyond the last neighbour of every atom are identical padding rows: one
        representative slot, weighted by their number, reproduces them exactly (its moment
        contribution and its share of the smooth softmax denominator); see docs/design.md,
        "Padding and exclusion" and "Gated attention".
        """
        nnei = nei_mask.shape[-1]
        if not self.trim_padding:
            return rij, nei_mask, nei_type, None, None
        used = nei_mask.reshape(-1, nnei).any(dim=0)
        last = int(torch.nonzero(used).max()) + 1 if bool(used.any()) else 0
        if last + 1 >= nnei:
            return rij, nei_mask, nei_type, None, None
        keep_n = last + 1
        slot_weight = torch.ones(keep_n, dtype=self.dtype, device=rij.device)
        slot_weight[last] = float(nnei - last)
        return (
            rij[:, :, :keep_n],
            nei_mask[:, :, :keep_n],
            nei_type[:, :, :keep_n],
            slot_weight,
            torch.log(slot_weight),
        )

    def pair_kept(self, nei_mask: Tensor, nei_type: Tensor, atype: Tensor) -> Tensor:
        """``(nf, nloc, nnei)`` κ: false on pairs of ``exclude_types``, true on padding."""
        return self.keep[atype.unsqueeze(-1), torch.where(nei_mask, nei_type, self.ntypes)]

    def type_inputs(self, nei_type: Tensor, atype: Tensor) -> tuple[Tensor, Tensor]:
        """The embedding net's type columns ``(nf, nloc, nnei, nt or 2·nt)`` (after σ) and the
        centres' type embedding ``(nf, nloc, nt)``."""
        table = self.type_embedding()  # (ntypes + 1, nt)
        t_nei = table[nei_type]  # (nf, nloc, nnei, nt)
        t_center = table[atype]  # (nf, nloc, nt)
        if self.type_one_side:
            return t_nei, t_center
        nnei = nei_type.shape[-1]
        return torch.cat([t_nei, t_center.unsqueeze(2).expand(-1, -1, nnei, -1)], dim=-1), t_center

    def strip_type_rows(self, nei_type: Tensor, atype: Tensor) -> Tensor:
        """Strip mode's type factor ``N_t(T_nei, T_i)``, ``(nf, nloc, nnei, ng)``.

        It depends on the two types only, so the type net runs once per (neighbour type, centre
        type) pair, ``(ntypes + 1)²`` rows, and each slot gathers its row, as DeePMD-kit does,
        instead of once per slot.
        """
        net = self.embedding_strip
        if net is None:  # concat mode has no type factor
            raise RuntimeError("strip_type_rows: the descriptor is in concat mode")
        table = self.type_embedding()  # (ntypes + 1, nt)
        if self.type_one_side:
            return net(table)[nei_type]
        n = table.shape[0]
        # pairs[j, i] = [T_j, T_i]: the neighbour's row first, as in type_inputs
        pairs = torch.cat(
            [table.unsqueeze(1).expand(n, n, -1), table.unsqueeze(0).expand(n, n, -1)], dim=-1
        )
        return net(pairs)[nei_type, atype.unsqueeze(-1)]

    # --- statistics -------------------------------------------------------------------
    @torch.jit.unused
    def set_stat(self, davg: Tensor, dstd: Tensor) -> None:
        """Install ``davg``/``dstd`` of shape ``(ntypes, nnei, 4)`` (docs/design.md,
        "Descriptor statistics")."""
        with torch.no_grad():
            self.davg.copy_(torch.as_tensor(davg).reshape(self.davg.shape))
            self.dstd.copy_(torch.as_tensor(dstd).reshape(self.dstd.shape))
        self.trim_padding = bool(
            torch.all(self.davg == self.davg[:, :1]) and torch.all(self.dstd == self.dstd[:, :1])
        )
