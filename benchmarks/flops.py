"""Fraction of matmul peak (not a test): model FLOPs / time for 192-atom inference.

1. Machine matmul peak: best GFLOP/s of ``torch.matmul`` on large square matrices, float64
   and float32, with the benchmark's 2 threads; plus GEMMs of the model's own shapes.
2. Model FLOPs, analytically from the architecture (matrix products only; element-wise
   work is not counted), per atom with ``N`` neighbour slots:

   - embedding net ``[1 + 2·tebd] → 25 → 50 → 100`` on every slot;
   - per attention layer: in_proj ``100 → 3·128``, ``QKᵀ`` and ``A·V`` (``N×N×128``
     each), out_proj ``128 → 100``; the ``dotr`` gate ``N×N×3`` once;
   - moments ``T1 = Gᵀ R̃ / N`` and ``T1 T1[:16]ᵀ``; fitting ``1600 → 240 → 240 → 240 → 1``.

   Energy + forces = forward + one backward to the coordinates: a product with a weight
   costs 2× its forward FLOPs (weight gradients are not needed), a product of two
   coordinate-dependent tensors 3×. "Nominal" uses ``N = sel = 120`` (what DeePMD-kit
   computes); "effective" uses the slots ours keeps after exact padding trimming
   (the largest neighbour count + 1). ``torch.utils.flop_counter`` cross-checks the count
   on our actual evaluation.
3. Time of ours (and DeePMD-kit's, interleaved, when importable) at 192 atoms.

Usage: ``python benchmarks/flops.py [--quick] [--peak-float64 G --peak-float32 G]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import common  # sets the threads before torch is imported

# isort: split
import torch
from torch.utils._python_dispatch import TorchDispatchMode


def matmul_peak(dtype: torch.dtype, n: int, seconds: float) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def shaped_gflops(fn, flops: float, seconds: float) -> float:
    fn()
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


class MatmulFlops(TorchDispatchMode):
    """Sum of the FLOPs of the matrix products run under it (``flop_counter``'s formulas).

    (``FlopCounterMode`` itself cannot be used: its module tracker breaks
    ``autograd.grad`` on a leaf, which is how the model takes forces.)
    """

    def __init__(self) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry = flop_registry
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        f = self.registry.get(func._overloadpacket)
        if f is not None:
            self.total += f(*args, **kwargs, out_val=out)
        return out


def model_flops(
    d: dict, fit_neuron: list[int], n: int, attn_layer: int
) -> dict[str, tuple[float, float]]:
    """Per atom: ``{part: (forward FLOPs, energy+force FLOPs)}`` with ``n`` slots."""
    ng = d["neuron"][-1]
    h = d["attn"]
    na = d["axis_neuron"]
    tw = d["tebd_dim"] * (1 if d["type_one_side"] else 2)
    widths = [1 + tw] + list(d["neuron"])
    emb = 2 * n * sum(widths[i] * widths[i + 1] for i in range(len(widths) - 1))
    proj = attn_layer * 2 * n * (ng * 3 * h + h * ng)
    qk_av = attn_layer * 2 * (2 * n * n * h)
    gate = 2 * n * n * 3 if attn_layer and d["attn_dotr"] else 0
    moment = 2 * ng * 4 * n + 2 * ng * na * 4
    fw = [ng * na] + list(fit_neuron) + [1]
    fit = 2 * sum(fw[i] * fw[i + 1] for i in range(len(fw) - 1))
    return {
        "embedding net": (emb, 2 * emb),
        "attention in/out proj": (proj, 2 * proj),
        "attention QKᵀ, AV": (qk_av, 3 * qk_av),
        "dotr gate": (gate, 3 * gate),
        "moments (GᵀR, T1T1ᵀ)": (moment, 3 * moment),
        "fitting net": (fit, 2 * fit),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument(
        "--peak-float64",
        type=float,
        default=0.0,
        help="GFLOP/s: use this peak if it beats the measured one (a busy machine "
        "under-measures its peak)",
    )
    ap.add_argument("--peak-float32", type=float, default=0.0)
    a = ap.parse_args()
    repeat = a.repeat or (4 if a.quick else 8)
    secs = 3.0 if a.quick else 8.0
    common.print_machine()
    t_start = time.perf_counter()

    # === 1. peak ===
    peak = {}
    prow = []
    for name, dt in (("float64", torch.float64), ("float32", torch.float32)):
        for n in (512, 1024, 2048):
            g = matmul_peak(dt, n, secs / 3)
            peak[name] = max(peak.get(name, 0.0), g)
            prow.append([name, f"matmul {n}×{n}", g])
        nb, nn = 192, 102
        x = torch.randn(nb * nn, 100, dtype=dt)
        w = torch.randn(100, 384, dtype=dt)
        prow.append(
            [
                name,
                "in_proj shape (19584×100)·(100×384)",
                shaped_gflops(lambda x=x, w=w: x @ w, 2 * nb * nn * 100 * 384, secs / 2),
            ]
        )
        q = torch.randn(nb, nn, 128, dtype=dt)
        k = torch.randn(nb, 128, nn, dtype=dt)
        prow.append(
            [
                name,
                "QKᵀ shape bmm 192×(102×128)·(128×102)",
                shaped_gflops(lambda q=q, k=k: torch.bmm(q, k), 2 * nb * nn * nn * 128, secs / 2),
            ]
        )
        f = torch.randn(192, 1600, dtype=dt)
        fw = torch.randn(1600, 240, dtype=dt)
        prow.append(
            [
                name,
                "fitting shape (192×1600)·(1600×240)",
                shaped_gflops(lambda f=f, fw=fw: f @ fw, 2 * 192 * 1600 * 240, secs / 2),
            ]
        )
    for name in peak:  # a model-shaped GEMM may beat the squares when the machine is busy
        peak[name] = max(
            [peak[name], getattr(a, f"peak_{name}")] + [r[2] for r in prow if r[0] == name]
        )
    print("\n## Matmul throughput (GFLOP/s, best of a time window)\n")
    print(common.table(["dtype", "operation", "GFLOP/s"], prow))
    print(
        f"\npeak used below: float64 {peak['float64']:.1f}, float32 {peak['float32']:.1f} GFLOP/s "
        "(the best of the rows above and --peak-*)"
    )

    # === 2. FLOP count ===
    cfg = common.example_config()
    d, fit_neuron = cfg["model"]["descriptor"], cfg["model"]["fitting_net"]["neuron"]
    w = common.water_frame(1)
    model = common.build_ours()
    from dpa1.accel.settings import TUNING
    from dpa1.infer.deep_pot import DeepPot
    from dpa1.model.neighbor import build_extended_system

    _, _, _, nlist = build_extended_system(
        torch.from_numpy(w["coord"]),
        torch.from_numpy(w["atype"])[None],
        torch.from_numpy(w["box"]),
        d["rcut"],
        d["sel"],
    )
    cnt = (nlist >= 0).sum(-1)
    n_eff = int(cnt.max()) + 1
    natoms = w["atype"].size
    rows = []
    totals = {}
    for label, n in (("nominal", d["sel"]), ("effective", n_eff)):
        parts = model_flops(d, fit_neuron, n, d["attn_layer"])
        totals[label] = sum(v[1] for v in parts.values()) * natoms
        if label == "nominal":
            for part, (fwd, tot) in parts.items():
                rows.append([part, fwd / 1e6, tot / 1e6, None])
        rows.append(
            [
                f"total, {label} (N = {n})",
                sum(v[0] for v in parts.values()) / 1e6,
                sum(v[1] for v in parts.values()) / 1e6,
                totals[label] / 1e9,
            ]
        )
    print(
        "\n## Model FLOPs per atom (example model; neighbours per atom: mean "
        f"{cnt.float().mean():.1f}, "
        f"max {int(cnt.max())}, sel {d['sel']})\n"
    )
    print(
        common.table(
            ["part", "forward MFLOP/atom", "energy+force MFLOP/atom", "GFLOP per 192-atom frame"],
            rows,
        )
    )
    dp = DeepPot(model, device="cpu")
    # The count sees PyTorch ops of the calling thread only: one block after another, and the
    # modules as PyTorch layers (the C++ ops perform the same products, the embedding's as a
    # forward tangent instead of a backward pass).
    desc = model.descriptor
    switches = (TUNING.thread_blocks, model.native, desc.attention.native, desc.embedding.native)
    TUNING.thread_blocks = model.native = desc.attention.native = desc.embedding.native = False
    with MatmulFlops() as fc:
        dp.eval(w["coord"], w["box"], w["atype"])
    TUNING.thread_blocks, model.native, desc.attention.native, desc.embedding.native = switches
    print(
        f"\nmatmul FLOPs counted on our 192-atom evaluation (torch.utils.flop_counter formulas): "
        f"{fc.total / 1e9:.2f} GFLOP (analytic effective: {totals['effective'] / 1e9:.2f} GFLOP)"
    )

    # === 3. achieved ===
    fns = {}
    models = {}
    for prec in ("float64", "float32"):
        m = common.build_ours(precision=prec)
        models[prec] = m
        dpo = DeepPot(m, device="cpu")
        fns[f"ours {prec}"] = lambda dpo=dpo: dpo.eval(w["coord"], w["box"], w["atype"])
        if common.have_deepmd():
            dpm = common.to_deepmd(m).eval()
            ct, bt = torch.from_numpy(w["coord"]), torch.from_numpy(w["box"]).reshape(1, 3, 3)
            tt = torch.from_numpy(w["atype"]).reshape(1, -1)
            fns[f"DeePMD {prec}"] = lambda dpm=dpm, ct=ct, tt=tt, bt=bt: dpm(ct, tt, box=bt)
    times = common.interleaved(fns, repeat=repeat, warmup=1, budget_s=60 if a.quick else 240)
    rows = []
    for name, t in times.items():
        prec = name.split()[-1]
        s = t["best"]
        ours = name.startswith("ours")
        eff = totals["effective"] if ours else totals["nominal"]
        rows.append(
            [
                name,
                s,
                totals["nominal"] / s / 1e9,
                totals["nominal"] / s / 1e9 / peak[prec],
                eff / s / 1e9,
                eff / s / 1e9 / peak[prec],
            ]
        )
    if not common.have_deepmd():
        for prec in ("float64", "float32"):
            s = common.REFERENCE["infer_192_s"][prec]
            rows.append(
                [
                    f"DeePMD {prec} reference",
                    s,
                    totals["nominal"] / s / 1e9,
                    totals["nominal"] / s / 1e9 / peak[prec],
                    None,
                    None,
                ]
            )
    print("\n## Achieved, 192-atom energy + force + virial (neighbour list included)\n")
    print(
        common.table(
            [
                "implementation",
                "best s",
                "GFLOP/s (nominal FLOPs)",
                "fraction of peak",
                "GFLOP/s (FLOPs computed)",
                "fraction of peak (computed)",
            ],
            rows,
        )
    )
    print(
        "\n'nominal' = the architecture's FLOPs with N = sel slots (the same for both codes); "
        "'computed' = the FLOPs each code actually performs (ours trims padding slots)."
    )
    print(
        f"# total {time.perf_counter() - t_start:.0f} s; load {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
