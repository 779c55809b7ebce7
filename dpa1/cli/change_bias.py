"""``dpa1 change-bias MODEL -s SYSTEMS [-o OUT] [--model-branch B]``: re-fit the energy bias
on new data ("change-by-statistic", §9.3): the least-squares fit of label − prediction on
the per-type atom counts is added to ``out_bias``.

The output has the input's format: a dpa1 checkpoint, a ``.dp`` file, or a DeePMD-kit
checkpoint (every tensor kept, the branch's ``out_bias`` replaced, as ``dp --pt
change-bias`` writes it).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("change-bias", help="re-fit a model's energy bias on labelled systems")
    p.add_argument("model", help="checkpoint .pt (dpa1's or DeePMD-kit's) or DeePMD-kit .dp")
    p.add_argument("-s", "--systems", nargs="+", required=True)
    p.add_argument(
        "-n", "--numb-batch", type=int, default=10, help="batches per system (data_stat_nbatch)"
    )
    p.add_argument("-b", "--batch-size", default="auto")
    p.add_argument("-o", "--output", help="output file (default: MODEL with suffix _updated)")
    p.add_argument("--model-branch", default=None,
                   help="the branch of a multi-task DeePMD-kit checkpoint to change")
    p.set_defaults(func=run)


def save_deepmd_checkpoint(path: Path, payload: dict, model) -> None:
    """The loaded DeePMD-kit checkpoint with the read branch's ``out_bias`` replaced."""
    import torch

    from dpa1.io.atomic import atomic_path
    from dpa1.io.deepmd_checkpoint import out_bias_key, state_dict_of

    raw = payload["deepmd"]
    state = state_dict_of(raw)
    key = out_bias_key(payload["deepmd_branch"])
    old = state[key]
    state[key] = model.out_bias.detach().to(dtype=old.dtype).reshape(old.shape).clone()
    with atomic_path(path) as tmp:
        torch.save(raw, tmp)


def run(args: argparse.Namespace) -> int:
    from dpa1.data import stats
    from dpa1.data.loader import SystemSampler
    from dpa1.data.system import DeepmdSystem, expand_systems
    from dpa1.io.atomic import check_output_path
    from dpa1.io.model_file import (
        DEEPMD_FORMAT,
        load_checkpoint,
        refuse_model_branch,
        save_checkpoint,
    )
    from dpa1.io.serialize import load_dp_model, save_dp_model

    src = Path(args.model)
    out = Path(args.output) if args.output else src.with_name(src.stem + "_updated" + src.suffix)
    check_output_path(out, "-o")
    is_dp = src.suffix.lower() in (".dp", ".yaml", ".yml")
    if is_dp:
        refuse_model_branch(src, args.model_branch)
        model, data = load_dp_model(src)
        payload = None
    else:
        model, payload = load_checkpoint(src, args.model_branch)
    systems = [DeepmdSystem(p, model.type_map) for p in expand_systems(args.systems)]
    bs = int(args.batch_size) if str(args.batch_size).isdigit() else args.batch_size
    before = model.out_bias.detach().reshape(-1).clone()
    stats.change_energy_bias(
        model, SystemSampler(systems, bs, seed=0).stat_batches(args.numb_batch)
    )
    after = model.out_bias.detach().reshape(-1)
    if is_dp:
        save_dp_model(out, model, model_def_script=data.get("model_def_script"))
    elif payload.get("format") == DEEPMD_FORMAT:
        save_deepmd_checkpoint(out, payload, model)
    else:
        save_checkpoint(out, model, config=payload.get("config"), step=payload.get("step", 0))
    for name, b0, b1 in zip(model.type_map, before.tolist(), after.tolist(), strict=True):
        print(f"  {name:4s} out_bias {b0: .6f} -> {b1: .6f}")
    print(f"wrote {out}")
    return 0
