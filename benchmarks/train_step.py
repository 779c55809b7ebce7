r"""Training-step benchmark (not a test): seconds per step at batch 1 on 192-atom water.

One step = forward (energy and forces) + the example's energy/force loss + backward +
Adam step, for the example model in float64 and float32 and its ``attn_layer 0``
variant. With DeePMD-kit importable, its model gets the same initial weights, the same
frames and the same learning rates (the example's exponential decay), both steps run
interleaved, and the two loss curves are compared step by step.

- ours: ``EnergyModel.forward`` in ``.train()`` mode + ``dpa1.train.loss.EnerLoss``;
- DeePMD: ``deepmd.pt`` ``EnergyModel`` + ``EnergyStdLoss`` (what ``dp --pt train`` runs
  inside ``Trainer.step``, without its data loader and logging);
- both: ``torch.optim.Adam(lr, betas=(0.9, 0.999))``, ``zero_grad(set_to_none=True)``.

Our untuned path (all N_c slots, no padding trimming, one block) is trained side by side
from the same weights too: its loss curve must equal ours to round-off.

``--device cuda``: models on the GPU, each step's frame copied to it inside the step (as
``dpa1 train`` does), ``torch.cuda.synchronize()`` before and after every timed step, and
the peak GPU memory of a step (``torch.cuda.max_memory_allocated``, the largest over the
steps). DeePMD-kit, when importable, is asked for the same device (``$DEVICE``) and the
output says if it is not on it.

Usage::

    python benchmarks/train_step.py [--quick] [--steps 12] [--variants float64,float32,attn0]
    python benchmarks/train_step.py --variants float64 --steps 100 --budget 1e9 --heldout 20 \
        --no-plain
    python benchmarks/train_step.py --device cuda --steps 30
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import common  # sets the threads before torch is imported

# isort: split
import numpy as np
import torch

SCRIPT = Path(__file__).resolve()


def frames(n: int) -> list[dict]:
    return [common.water_frame(1, frame=k % 80) for k in range(n)]


def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("variant")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--budget", type=float, default=120.0)
    p.add_argument("--no-deepmd", action="store_true")
    p.add_argument("--no-plain", action="store_true")
    p.add_argument("--heldout", type=int, default=0)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    dev = common.resolve_device(a.device)
    cuda = common.is_cuda(dev)
    common.set_deepmd_device(dev)
    sync = common.make_sync(dev)
    from dpa1.train.loss import EnerLoss
    from dpa1.train.lr import ExpDecayLR

    cfg = common.example_config(**common.VARIANTS[a.variant])
    lr_sched = ExpDecayLR.from_config(cfg["learning_rate"], cfg["training"]["numb_steps"])
    loss_cfg = {k: v for k, v in cfg["loss"].items() if k != "type"}
    model = common.build_ours(**common.VARIANTS[a.variant]).to(dev)
    use_dp = common.have_deepmd() and not a.no_deepmd
    dpm = common.to_deepmd(model) if use_dp else None  # before any step: identical weights
    # The untuned path: every one of the N_c slots, all centres in one block.
    plain = copy.deepcopy(model)
    plain.descriptor.trim_padding = False
    plain.block_atoms = 1 << 30
    data = frames(a.steps)

    def make_step(net):
        net.train()
        loss_fn = EnerLoss.from_config(cfg["loss"], lr_sched.start_lr)
        opt = torch.optim.Adam(
            [q for q in net.parameters() if q.requires_grad],
            lr=lr_sched.start_lr,
            betas=(0.9, 0.999),
        )

        def step(k: int) -> float:
            lr = lr_sched.value(k)
            for g in opt.param_groups:
                g["lr"] = lr
            d = data[k]
            atype = torch.from_numpy(d["atype"]).reshape(1, -1).to(dev)
            pred = net(
                torch.from_numpy(d["coord"]).to(dev),
                atype,
                torch.from_numpy(d["box"]).reshape(1, 3, 3).to(dev),
            )
            label = {
                "atype": atype,
                "energy": torch.from_numpy(d["energy"]).to(dev),
                "force": torch.from_numpy(d["force"]).to(dev),
                "find_energy": 1.0,
                "find_force": 1.0,
            }
            loss, _ = loss_fn(pred, label, lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return float(loss.detach())

        return step

    fns = {"ours": make_step(model)}
    if not a.no_plain:
        fns["plain"] = make_step(plain)
    if use_dp:
        step_dp = common.deepmd_train_step(dpm, loss_cfg, lr_sched.start_lr)

        def dp_step(k: int) -> float:
            d = data[k]
            return step_dp(
                torch.from_numpy(d["coord"]),
                torch.from_numpy(d["atype"]).reshape(1, -1),
                torch.from_numpy(d["box"]),
                torch.from_numpy(d["energy"]),
                torch.from_numpy(d["force"]),
                lr_sched.value(k),
            )

        fns["deepmd"] = dp_step

    times: dict[str, list[float]] = {k: [] for k in fns}
    losses: dict[str, list[float]] = {k: [] for k in fns}
    gpu_peak: dict[str, float] = {k: 0.0 for k in fns}
    start = time.perf_counter()
    for k in range(a.steps):
        for name, fn in fns.items():
            if cuda:
                common.gpu_reset_peak(dev)
            sync()
            t0 = time.perf_counter()
            losses[name].append(fn(k))
            sync()
            times[name].append(time.perf_counter() - t0)
            if cuda:
                gpu_peak[name] = max(gpu_peak[name], common.gpu_peak_gb(dev))
        if k >= 3 and time.perf_counter() - start > a.budget:
            break
    out = {
        "load": os.getloadavg()[0],
        "losses": losses,
        "times": {},
        "device": str(dev),
        "deepmd_device": str(common.deepmd_device()) if use_dp else None,
    }
    if cuda:
        out["gpu_peak_gb"] = gpu_peak
    if a.heldout:
        out["heldout"] = common.heldout_errors(
            {"ours": model, **({"deepmd": dpm} if use_dp else {})}, a.heldout
        )
    for name, ts in times.items():
        ts = ts[1:] or ts  # step 1 is the warm-up
        out["times"][name] = {"best": min(ts), "median": float(np.median(ts)), "n": len(ts)}
    common.emit(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--variants", default="float64,float32,attn0")
    ap.add_argument(
        "--no-deepmd", action="store_true", help="ours only (use DeePMD-kit's reference numbers)"
    )
    ap.add_argument("--no-plain", action="store_true", help="skip our untuned path")
    ap.add_argument(
        "--heldout",
        type=int,
        default=0,
        help="after the steps, RMSE of each trained model on this many data_2 frames",
    )
    ap.add_argument(
        "--budget", type=float, default=None, help="seconds per variant (default 40/240)"
    )
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    ap.add_argument(
        "--child-timeout", type=float, default=1200.0, help="seconds per variant's child process"
    )
    a = ap.parse_args()
    dev = common.resolve_device(a.device)
    cuda = common.is_cuda(dev)
    if a.no_deepmd:
        os.environ["DPA1_BENCH_NO_DEEPMD"] = "1"
    common.set_deepmd_device(dev)  # before DeePMD-kit is first imported (children inherit it)
    steps = a.steps or (5 if a.quick else 12)
    budget = a.budget or (40.0 if a.quick else 240.0)
    common.print_machine(dev)
    dp_ok = common.have_deepmd() and not a.no_deepmd
    print(
        f"# DeePMD side by side: {'yes' if dp_ok else 'no (DeePMD-kit reference numbers)'}; "
        f"{steps} steps per variant (first one is warm-up)"
    )
    rows, lrows, trows, hrows = [], [], [], []
    t_start = time.perf_counter()
    for variant in a.variants.split(","):
        args = [variant, "--steps", str(steps), "--budget", str(budget)] + (
            ["--no-deepmd"] if a.no_deepmd else []
        )
        args += (["--no-plain"] if a.no_plain else []) + [
            "--heldout",
            str(a.heldout),
            "--device",
            str(dev),
        ]
        r = common.run_child(SCRIPT, args, timeout=a.child_timeout)
        if "error" in r:
            rows.append([variant, "error", r["error"]] + [None] * (5 if cuda else 4))
            print(f"# error {variant}: {r['error']}", file=sys.stderr, flush=True)
            continue
        t = r["times"]
        ours = t["ours"]["best"]
        nrow = len(rows)
        if "deepmd" in t:
            dp, src = t["deepmd"]["best"], "measured"
        else:
            dp, src = common.REFERENCE["train_step_s"][variant], "reference"
        rows.append(
            [variant, "ours", ours, t["ours"]["median"], t["ours"]["n"], common.ratio(dp, ours), ""]
        )
        if "deepmd" in t:
            rows.append([variant, "DeePMD", dp, t["deepmd"]["median"], t["deepmd"]["n"], None, ""])
        rows.append(
            [
                variant,
                "DeePMD reference",
                common.REFERENCE["train_step_s"][variant],
                None,
                None,
                common.ratio(common.REFERENCE["train_step_s"][variant], ours),
                "",
            ]
        )
        got = common.ratio(dp, ours)
        if variant == "attn0":  # not the example model, which the speed target is about
            trows.append(
                [f"{variant} step speed-up vs DeePMD ({src})", "–", f"{got:.2f}×", "reported"]
            )
        else:
            trows.append(
                [
                    f"{variant} step speed-up vs DeePMD ({src})",
                    f"≥ {common.TARGETS['train']}×",
                    f"{got:.2f}×",
                    "yes" if got >= common.TARGETS["train"] else "NO",
                ]
            )
        for other in ("plain", "deepmd"):
            if other in r["losses"]:
                lo, ld = np.array(r["losses"]["ours"]), np.array(r["losses"][other])
                rel = np.abs(lo - ld) / np.abs(ld)
                lrows.append(
                    [variant, other, len(lo), lo[0], ld[0], rel[0], rel.max(), lo[-1], ld[-1]]
                )
        if "plain" in t:
            rows.append(
                [
                    variant,
                    "ours, untuned path",
                    t["plain"]["best"],
                    t["plain"]["median"],
                    t["plain"]["n"],
                    None,
                    "",
                ]
            )
        if cuda:  # peak GPU GB column: ours, DeePMD, the reference (none), untuned
            peaks = r.get("gpu_peak_gb", {})
            for row in rows[nrow:]:
                key = {"ours": "ours", "DeePMD": "deepmd", "ours, untuned path": "plain"}.get(
                    row[1]
                )
                row.insert(6, peaks.get(key) if key else None)
        for name, err in r.get("heldout", {}).items():
            hrows.append(
                [
                    variant,
                    name,
                    len(r["losses"][name]),
                    err["rmse_e_atom"],
                    err["mean_e_atom"],
                    err["rmse_f"],
                ]
            )
        print(
            f"# done {variant} ({time.perf_counter() - t_start:.0f} s, load {r['load']:.1f})",
            file=sys.stderr,
            flush=True,
        )
    where = f" on {torch.cuda.get_device_name(dev)}" if cuda else ""
    print(f"\n## Training step{where}, batch 1, 192-atom water (seconds per step)\n")
    print(
        common.table(
            ["variant", "implementation", "best s", "median s", "n", "DeePMD/ours"]
            + (["peak GPU GB"] if cuda else [])
            + [""],
            rows,
        )
    )
    if cuda:
        print(
            "\n(peak GPU GB: torch.cuda.max_memory_allocated during one step, the largest over "
            "the steps; "
            "each timed step is bracketed by torch.cuda.synchronize())"
        )
    if lrows:
        print("\n## Loss curves, same initial weights / frames / learning rates\n")
        print(
            "(plain: our untuned path, all N_c slots in one block; the speed-ups "
            "must not change the numbers beyond round-off)\n"
        )
        print(
            common.table(
                [
                    "variant",
                    "against",
                    "steps",
                    "loss₁ ours",
                    "loss₁ other",
                    "rel. diff step 1",
                    "max rel. diff",
                    "loss_last ours",
                    "loss_last other",
                ],
                lrows,
            )
        )
    if hrows:
        print(
            "\n## Held-out errors after these steps (data_2; same initial weights, frames and lr)\n"
        )
        print(
            common.table(
                [
                    "variant",
                    "model",
                    "steps",
                    "rmse E/atom (eV)",
                    "mean ΔE/atom (eV)",
                    "rmse F (eV/Å)",
                ],
                hrows,
            )
        )
    print("\n## Targets\n")
    print(common.table(["target", "goal", "measured", "met"], trows))
    note = common.deepmd_device_note(dev)
    if note:
        print(note)
    print(f"# total {time.perf_counter() - t_start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
