"""``dpa1 change-bias MODEL [-s SYSTEMS... | -f LIST | -b VALUES...] [-m change|set]
[-n N] [-o OUT]``: DeePMD-kit's ``dp change-bias`` for the energy bias ``out_bias``.

``-m change`` (default, "change-by-statistic"; docs/design.md, "Energy bias"): the
least-squares fit of label − prediction on the per-type atom counts is *added* to
``out_bias``.
``-m set`` ("set-by-statistic"): ``out_bias`` becomes the fit of the labels alone (and
fparam/aparam statistics are recomputed). ``-b``: the user's values, one per type in
type_map order, replace ``out_bias``. ``-n N``: N frames drawn from each system (0 = all),
as ``dp change-bias -n`` (one frame per batch).

The output has the input's format: a dpa1 checkpoint, a ``.dp`` file, or a DeePMD-kit
checkpoint (every tensor kept, the ``--model-branch`` branch's ``out_bias`` replaced, as
``dp --pt change-bias`` writes it).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("change-bias", help="change a model's energy bias (out_bias)")
    p.add_argument("model", help="checkpoint .pt (dpa1's or DeePMD-kit's) or DeePMD-kit .dp")
    p.add_argument(
        "-s", "--system", "--systems", dest="systems", nargs="+",
        help="systems to fit from: directories, roots searched recursively, globs, or HDF5 "
        "files of systems (file.h5, file.h5#/group) (default: .)",
    )
    p.add_argument("-f", "--datafile",
                   help="text file naming one system (or root) per line (not with -s)")
    p.add_argument(
        "-b", "--bias-value", type=float, nargs="+",
        help="the new out_bias, one value per type in type_map order (no data needed)",
    )
    p.add_argument(
        "-n", "--numb-batch", type=int, default=None,
        help="frames drawn from each system (0 = all; default 0)",
    )
    p.add_argument(
        "-m", "--mode", choices=["change", "set"], default=None,
        help="change (default): add the fit of label - prediction to the bias; "
        "set: the bias becomes the fit of the labels",
    )
    p.add_argument(
        "--batch-size", default=None,
        help="frames evaluated at once in -m change: an integer or auto[:N] (default auto)",
    )
    p.add_argument("-o", "--output", help="output file (default: MODEL with suffix _updated)")
    p.add_argument("--model-branch", default=None,
                   help="the branch of a multi-task DeePMD-kit checkpoint to change")
    p.set_defaults(func=run)


def _check_flags(args: argparse.Namespace, type_map: list[str]) -> None:
    """Refuse flags that contradict each other or cannot take effect."""
    if args.bias_value is not None:
        given = [flag for flag, value in (("-s", args.systems), ("-f", args.datafile),
                                          ("-n", args.numb_batch), ("-m", args.mode),
                                          ("--batch-size", args.batch_size)) if value is not None]
        if given:
            raise ValueError(f"-b sets the bias to the given values; {', '.join(given)} "
                             "(fitting it from data) cannot be used with it")
        if len(args.bias_value) != len(type_map):
            raise ValueError(f"-b: {len(args.bias_value)} values for the {len(type_map)} types "
                             f"of the model's type_map {type_map} (one per type, in that order)")
        return
    if args.systems is not None and args.datafile is not None:
        raise ValueError("-s and -f both name the systems to fit from; give one of them")
    if args.numb_batch is not None and args.numb_batch < 0:
        raise ValueError(f"-n {args.numb_batch}: the number of frames must be >= 0 (0 = all)")
    if args.mode == "set" and args.batch_size is not None:
        raise ValueError("--batch-size sets how many frames the model evaluates at once; "
                         "-m set does not evaluate the model")


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
    import torch

    from dpa1.data import stats
    from dpa1.data.loader import SystemSampler, resolve_batch_sizes
    from dpa1.data.system import DeepmdSystem, expand_systems, labels_for_model, read_system_list
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
    _check_flags(args, list(model.type_map))
    before = model.out_bias.detach().reshape(-1).clone()
    if args.bias_value is not None:
        with torch.no_grad():
            model.out_bias[0, :, 0] = model.out_bias.new_tensor(args.bias_value)
    else:
        # -f: each line searched like -s (dp change-bias expands them the same way)
        roots = read_system_list(args.datafile) if args.datafile else (args.systems or ["."])
        systems = [DeepmdSystem(p, model.type_map) for p in expand_systems(roots)]
        nframes = args.numb_batch or max(s.nframes for s in systems)
        fitting = model.fitting
        sampler = SystemSampler(systems, 1, seed=0,
                                labels=labels_for_model(fitting.numb_fparam, fitting.numb_aparam))
        batches = sampler.stat_batches(nframes)  # one frame per batch, as DeePMD-kit
        if args.mode == "set":
            stats.set_energy_bias(model, batches)
        else:
            rule = args.batch_size or "auto"
            chunk = resolve_batch_sizes(int(rule) if rule.isdigit() else rule,
                                        [max(s.natoms for s in systems)])[0]
            if chunk is None:  # filter:N below the atom count
                raise ValueError(f"--batch-size {rule}: leaves no frame to evaluate")
            stats.change_energy_bias(model, batches, max_frames=chunk)
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
