"""``dpa1 plot lcurve.out -o lcurve.png``: learning curves (matplotlib)."""

from __future__ import annotations

import argparse

from dpa1.io.atomic import atomic_path, check_output_path
from dpa1.train.lcurve import read_lcurve


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="plot learning curves from lcurve.out")
    p.add_argument("lcurve", help="lcurve.out written by dpa1 train (or dp train)")
    p.add_argument("-o", "--output", default="lcurve.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_path(args.output, "-o")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, data = read_lcurve(args.lcurve)
    if data.size == 0:
        raise ValueError(f"{args.lcurve}: no data rows")
    step = data[:, 0]
    metrics = sorted({n.rsplit("_", 1)[0] for n in names[1:] if n.endswith(("_trn", "_val"))})
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4 * (len(metrics) + 1), 3.2))
    for ax, m in zip(axes, metrics, strict=False):  # the last axes is the learning rate's
        for suffix, style in (("_trn", "-"), ("_val", "--")):
            if m + suffix in names:
                ax.plot(step, data[:, names.index(m + suffix)], style, label=suffix[1:])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(m)
        ax.legend()
    axes[-1].plot(step, data[:, names.index("lr")])
    axes[-1].set_yscale("log")
    axes[-1].set_title("learning rate")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    with atomic_path(args.output) as tmp:
        fig.savefig(
            tmp, format=args.output.rsplit(".", 1)[-1] if "." in args.output else "png", dpi=120
        )
    plt.close(fig)
    print(f"wrote {args.output}")
    return 0
