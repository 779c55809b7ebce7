"""``dpa1 test -m MODEL -s SYSTEMS... [-n N] [--detail-file P] [--json F] [--plot F.png]
[--model-branch B]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dpa1.io.atomic import atomic_path, check_output_path

UNITS = {"energy": "eV", "energy_per_atom": "eV/atom", "force": "eV/Å", "virial": "eV",
         "virial_per_atom": "eV/atom"}


def add_parser(sub) -> None:
    p = sub.add_parser("test", help="energy/force/virial errors of a model on labelled systems")
    p.add_argument(
        "-m", "--model", required=True,
        help="frozen .pth, checkpoint .pt (dpa1's or DeePMD-kit's) or DeePMD-kit .dp",
    )
    p.add_argument(
        "-s",
        "--systems",
        nargs="+",
        required=True,
        help="system directories, a root directory searched recursively, or globs",
    )
    p.add_argument("-n", "--numb-test", type=int, default=0, help="frames per system (0 = all)")
    p.add_argument("--detail-file", help="prefix for per-frame/per-atom label vs prediction files")
    p.add_argument("--json", help="write the errors as JSON")
    p.add_argument("--plot", help="parity plots (PNG)")
    p.add_argument("--device", default=None)
    p.add_argument("--model-branch", "--head", dest="model_branch", default=None,
                   help="the branch of a multi-task DeePMD-kit checkpoint to test")
    p.set_defaults(func=run)


def _write_detail(prefix: str, results) -> None:
    """``PREFIX.{e,e_peratom,f,v}.out``: label and prediction columns, one block per system."""
    spec = {
        "energy": ("e", 1, "data_e pred_e"),
        "energy_per_atom": ("e_peratom", 1, "data_e pred_e"),
        "force": ("f", 3, "data_fx data_fy data_fz pred_fx pred_fy pred_fz"),
        "virial": ("v", 9, "data_v[9] pred_v[9]"),
    }
    for name, (suffix, k, cols) in spec.items():
        blocks = [(r.path, r.pairs[name]) for r in results if name in r.pairs]
        if not blocks:
            continue
        with atomic_path(f"{prefix}.{suffix}.out") as tmp, open(tmp, "w") as f:
            for path, (lab, pred) in blocks:
                np.savetxt(
                    f,
                    np.concatenate([lab.reshape(-1, k), pred.reshape(-1, k)], axis=1),
                    header=f"{path}: {cols}",
                )


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


def run(args: argparse.Namespace) -> int:
    from dpa1.data.system import DeepmdSystem, expand_systems
    from dpa1.infer.deep_pot import DeepPot
    from dpa1.infer.evaluate import evaluate_system, weighted_total

    # results must not be computed and then lost to an unwritable output
    if args.detail_file:
        check_output_path(f"{args.detail_file}.e.out", "--detail-file")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            check_output_path(path, option)
    dp = DeepPot(args.model, device=args.device, model_branch=args.model_branch)
    paths = expand_systems(args.systems)
    results = []
    for path in paths:
        system = DeepmdSystem(path, dp.get_type_map())
        res = evaluate_system(dp, system, args.numb_test)
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
        _write_detail(args.detail_file, results)
    if args.json:
        out = {"systems": {r.path: r.errors() for r in results}, "total": total}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(out, indent=2))
    if args.plot:
        _plot(args.plot, results)
    return 0
