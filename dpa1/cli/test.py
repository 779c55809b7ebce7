"""``dpa1 test -m MODEL (-s SYSTEMS... | -f LIST | --train-data IN | --valid-data IN)
[-n N] [--shuffle-test [-r SEED]] [-d PREFIX] [-a] [--json F] [--plot F.png]
[--model-branch B]``: ``dp test`` (errors and detail files as DeePMD-kit writes them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dpa1.io.atomic import atomic_path, check_output_path

UNITS = {"energy": "eV", "energy_per_atom": "eV/atom", "force": "eV/Å", "virial": "eV",
         "virial_per_atom": "eV/atom", "atom_energy": "eV"}


def add_parser(sub) -> None:
    p = sub.add_parser("test", help="energy/force/virial errors of a model on labelled systems")
    p.add_argument(
        "-m", "--model", required=True,
        help="frozen .pth, checkpoint .pt (dpa1's or DeePMD-kit's) or DeePMD-kit .dp",
    )
    p.add_argument(
        "-s",
        "--system",
        "--systems",
        dest="systems",
        nargs="+",
        help="system directories, a root directory searched recursively, globs, or HDF5 "
        "files of systems (file.h5, file.h5#/group) (default: .)",
    )
    p.add_argument(
        "-f", "--datafile", help="text file naming one system directory per line (not with -s)"
    )
    p.add_argument("--train-data", metavar="INPUT",
                   help="the training systems of an input file (found as dpa1 train finds them)")
    p.add_argument("--valid-data", metavar="INPUT",
                   help="the validation systems of an input file")
    p.add_argument("-n", "--numb-test", type=int, default=0,
                   help="the first N frames of each system (0 = all)")
    p.add_argument("--shuffle-test", action="store_true",
                   help="shuffle each system's frames (all sets) before taking the first N")
    p.add_argument("-r", "--rand-seed", type=int, default=None,
                   help="seed of --shuffle-test's order (the frames dp test -r picks)")
    p.add_argument("-d", "--detail-file", help="prefix of the dp test detail files "
                   "(PREFIX.e.out, .e_peratom.out, .f.out, .v.out, .v_peratom.out, .s.out)")
    p.add_argument("-a", "--atomic", action="store_true",
                   help="also compare atomic energies with atom_ener.npy")
    p.add_argument("--json", help="write the errors as JSON")
    p.add_argument("--plot", help="parity plots (PNG)")
    p.add_argument("--device", default=None)
    p.add_argument("--model-branch", "--head", dest="model_branch", default=None,
                   help="the branch of a multi-task DeePMD-kit checkpoint to test")
    p.set_defaults(func=run)


def _plot(path: str, results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    names = [
        n
        for n in ("energy_per_atom", "force", "virial_per_atom")
        if any(n in r.pairs for r in results)
    ]
    if not names:
        raise ValueError("nothing to plot: the systems have no energy, force or virial labels")
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        lo, hi = np.inf, -np.inf
        for r in results:
            if name in r.pairs:
                lab, pred = r.pairs[name]
                ax.plot(lab, pred, ".", ms=2, alpha=0.6, label=Path(r.path).name)
                both = np.concatenate([np.ravel(lab), np.ravel(pred)])
                lo, hi = min(lo, both.min(initial=np.inf)), max(hi, both.max(initial=-np.inf))
        if np.isfinite(lo) and np.isfinite(hi):
            pad = 0.05 * (hi - lo) or 0.05 * max(abs(lo), 1.0)  # y = x over the whole data range
            lo, hi = lo - pad, hi + pad
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
        for axis in (ax.xaxis, ax.yaxis):  # a few plain ticks: no offset or "1e-3" above the axis
            axis.set_major_locator(MaxNLocator(5))
            fmt = ScalarFormatter(useOffset=False)
            fmt.set_scientific(False)
            axis.set_major_formatter(fmt)
        ax.set_xlabel(f"label ({UNITS[name]})")
        ax.set_ylabel(f"prediction ({UNITS[name]})")
        ax.set_title(name.replace("_", " "))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def input_systems(path: str, section: str) -> list[str]:
    """The systems of ``training.<section>`` of the input file ``path`` (``dp test
    --train-data`` / ``--valid-data``), resolved and searched as ``dpa1 train`` does."""
    from dpa1.data.system import expand_systems, resolve_system_paths
    from dpa1.io.config import read_input

    if not Path(path).is_file():
        raise ValueError(f"{path}: no such input file")
    raw = read_input(Path(path))
    data = raw.get("training", {}).get(section) if isinstance(raw, dict) else None
    systems = data.get("systems") if isinstance(data, dict) else None
    if not systems:
        raise ValueError(f"{path}: training.{section}.systems is not set: no systems to test")
    if not (isinstance(systems, str) or (
            isinstance(systems, list) and all(isinstance(x, str) for x in systems))):
        raise ValueError(f"{path}: training.{section}.systems: expected a path or a list of "
                         f"paths, got {systems!r}")
    patterns = data.get("rglob_patterns")
    if patterns is not None and not (
            isinstance(patterns, list) and all(isinstance(x, str) for x in patterns)):
        raise ValueError(f"{path}: training.{section}.rglob_patterns: expected a list of "
                         f"patterns, got {patterns!r}")
    return expand_systems(resolve_system_paths(systems, Path(path).parent), patterns)


def run(args: argparse.Namespace) -> int:
    from dpa1.data.system import DeepmdSystem, expand_systems, read_system_list
    from dpa1.infer.deep_pot import DeepPot
    from dpa1.infer.detail_files import check_detail_prefix, write_detail_files
    from dpa1.infer.evaluate import evaluate_system, weighted_total

    given = [flag for flag, value in (("-s", args.systems), ("-f", args.datafile),
             ("--train-data", args.train_data), ("--valid-data", args.valid_data)) if value]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} each name the systems to test; give one of them")
    if args.numb_test < 0:
        raise ValueError(f"-n {args.numb_test}: the number of frames must be >= 0 (0 = all)")
    if args.rand_seed is not None and not args.shuffle_test:
        raise ValueError(f"-r {args.rand_seed} seeds the order of --shuffle-test, which is "
                         "not set: add --shuffle-test or drop -r")
    # results must not be computed and then lost to an unwritable output
    if args.detail_file:
        check_detail_prefix(args.detail_file)
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            check_output_path(path, option)
    # -f: each line is one system, as written (dp test -f); -s: searched recursively
    if args.train_data or args.valid_data:
        paths = input_systems(args.train_data or args.valid_data,
                              "training_data" if args.train_data else "validation_data")
    else:
        paths = read_system_list(args.datafile) if args.datafile else expand_systems(
            args.systems or ["."])
    dp = DeepPot(args.model, device=args.device, model_branch=args.model_branch)
    # dp test's order: one generator seeded with -r mod 2**32, shuffling each system's frame
    # indices in turn (so the same -r picks the same frames in both codes)
    rng = np.random.RandomState(
        None if args.rand_seed is None else args.rand_seed % 2**32
    ) if args.shuffle_test else None
    results = []
    for path in paths:
        system = DeepmdSystem(path, dp.get_type_map())
        frames = None
        if rng is not None:
            frames = np.arange(system.nframes)
            rng.shuffle(frames)
        res = evaluate_system(dp, system, args.numb_test, detail=bool(args.detail_file),
                              atomic=args.atomic, frames=frames)
        results.append(res)
        err = res.errors()
        print(f"# system {path}: {res.nframes} frames")
        for key in sorted(err):
            if key.startswith("rmse_"):
                name = key[5:]
                print(f"  {key:28s} {err[key]:.6e} {UNITS[name]}   mae {err['mae_' + name]:.6e}")
    total = weighted_total(results)
    print(f"# weighted total over {len(results)} systems, {total['nframes']} frames")
    for key in sorted(total):
        if key.startswith("rmse_"):
            print(
                f"  {key:28s} {total[key]:.6e} {UNITS[key[5:]]}   mae {total['mae_' + key[5:]]:.6e}"
            )
    if args.detail_file:
        write_detail_files(args.detail_file, [r.detail for r in results])
    if args.json:
        out = {"systems": {r.path: r.errors() for r in results}, "total": total}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(out, indent=2))
    if args.plot:
        _plot(args.plot, results)
    return 0
