"""Where our inference time goes (not a test): ``torch.profiler`` top ops.

Profiles ``DeepPot.eval`` (neighbour list included) of ours on water, after one warm-up
evaluation, and prints the operators with the largest self CPU time, plus the time of
the neighbour-list build alone.

Usage::

    python benchmarks/profile_inference.py [--natoms 192] [--variant float64] [--top 15]
"""

from __future__ import annotations

import argparse
import time

import common  # sets the threads before torch is imported

# isort: split
import torch
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--natoms", type=int, default=192)
    ap.add_argument("--variant", default="float64", choices=sorted(common.VARIANTS))
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument(
        "--no-warmup", action="store_true", help="profile the first call (large systems)"
    )
    a = ap.parse_args()
    from dpa1.infer.deep_pot import DeepPot
    from dpa1.model.neighbor import build_extended_system

    w = common.water_frame(common.rep_for(a.natoms))
    model = common.build_ours(**common.VARIANTS[a.variant])
    dp = DeepPot(model, device="cpu")
    common.print_machine()
    if not a.no_warmup:
        dp.eval(w["coord"], w["box"], w["atype"])
    t0 = time.perf_counter()
    build_extended_system(
        torch.from_numpy(w["coord"]),
        torch.from_numpy(w["atype"])[None],
        torch.from_numpy(w["box"]),
        model.rcut,
        model.nnei,
    )
    t_nl = time.perf_counter() - t0
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        dp.eval(w["coord"], w["box"], w["atype"])
    total = time.perf_counter() - t0
    print(
        f"\n## {a.variant}, {a.natoms} atoms: eval {total:.3f} s under the profiler "
        f"(neighbour list alone: {t_nl:.3f} s); peak RSS {common.peak_rss_gb():.2f} GB\n"
    )
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=a.top, max_name_column_width=40
        )
    )


if __name__ == "__main__":
    main()
