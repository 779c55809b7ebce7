"""Build an :class:`EnergyModel` from the ``model`` section of an input file.

Defaults live only in the validator (:mod:`dpa1.io.config_schema`); this module reads the
attributes of the typed section and forwards them. ``sel`` must be resolved to an int first
(``"auto"`` needs data: see :mod:`dpa1.data.stats`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpa1.io.config import Model, parse_model_section
from dpa1.model.descriptor import DescrptDPA1
from dpa1.model.fitting import EnergyFitting
from dpa1.model.model import EnergyModel


def build_model(model_cfg: Model | Mapping[str, Any], sel: int | None = None) -> EnergyModel:
    """Create a freshly initialised model.

    Args:
        model_cfg: the typed ``model`` section (:func:`dpa1.io.config.parse_model_section`),
            or its dict form (as ``normalize_config`` returns it), which is parsed here.
        sel: the resolved neighbour count when ``descriptor.sel`` is ``"auto[:f]"``.
    """
    cfg = model_cfg if isinstance(model_cfg, Model) else parse_model_section(model_cfg)
    d, f = cfg.descriptor, cfg.fitting_net
    type_map = list(cfg.type_map)
    ntypes = len(type_map)
    nsel = d.sel if sel is None else sel
    if not isinstance(nsel, int):
        raise ValueError(
            f"descriptor.sel is {nsel!r}: resolve it from data before building the model"
        )
    desc = DescrptDPA1(
        rcut=d.rcut,
        rcut_smth=d.rcut_smth,
        sel=nsel,
        ntypes=ntypes,
        neuron=d.neuron,
        axis_neuron=d.axis_neuron,
        tebd_dim=d.tebd_dim,
        tebd_input_mode=d.tebd_input_mode,
        set_davg_zero=d.set_davg_zero,
        attn=d.attn,
        attn_layer=d.attn_layer,
        attn_dotr=d.attn_dotr,
        attn_mask=d.attn_mask,
        activation_function=d.activation_function,
        resnet_dt=d.resnet_dt,
        scaling_factor=d.scaling_factor,
        normalize=d.normalize,
        temperature=d.temperature,
        trainable_ln=d.trainable_ln,
        ln_eps=d.ln_eps,
        smooth_type_embedding=d.smooth_type_embedding,
        type_one_side=d.type_one_side,
        concat_output_tebd=d.concat_output_tebd,
        use_econf_tebd=d.use_econf_tebd,
        use_tebd_bias=d.use_tebd_bias,
        type_map=type_map,
        precision=d.precision,
        exclude_types=d.exclude_types,
        env_protection=d.env_protection,
        descriptor_type=d.type,
        trainable=d.trainable,
        seed=d.seed,
    )
    fitting = EnergyFitting(
        ntypes=ntypes,
        dim_descrpt=desc.dim_out,
        neuron=f.neuron,
        resnet_dt=f.resnet_dt,
        numb_fparam=f.numb_fparam,
        numb_aparam=f.numb_aparam,
        activation_function=f.activation_function,
        precision=f.precision,
        exclude_types=cfg.atom_exclude_types,
        atom_ener=f.atom_ener,
        default_fparam=f.default_fparam,
        use_aparam_as_mask=f.use_aparam_as_mask,
        rcond=f.rcond,
        type_map=type_map,
        # a list is one repeated flag (the validator refuses per-layer flags)
        trainable=f.trainable if isinstance(f.trainable, bool) else all(f.trainable),
        seed=f.seed,
    )
    return EnergyModel(
        desc,
        fitting,
        type_map,
        atom_exclude_types=cfg.atom_exclude_types,
        pair_exclude_types=cfg.pair_exclude_types,
        preset_out_bias=cfg.preset_out_bias,
        rcond=f.rcond,
    )
