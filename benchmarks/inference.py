"""Inference benchmark (not a test): energy + force + virial of liquid water.

Times one evaluation (neighbour list included) of the example model (float64, float32)
and of its ``attn_layer 0`` variant at 192 / 1,536 / 12,288 / 98,304 atoms (the 192-atom
cell replicated n×n×n), ours and DeePMD-kit's side by side (interleaved, best of N) with
the same weights, and the peak memory of each (``ru_maxrss`` of a fresh child process
that evaluates once). Before timing, ours and DeePMD's outputs are compared.

- ours: ``dpa1.infer.deep_pot.DeepPot(model).eval(coord, cell, atype)``;
- DeePMD: ``deepmd.infer.DeepPot`` on the same model frozen with ``torch.jit.script``
  (``.pth``), and DeePMD's eager ``EnergyModel.forward``; ratios use the faster one.

``--eval-chunk N`` sets dpa1's ``EnergyModel.block_atoms`` (centres per block inside
``forward_lower``); ``--also-chunked`` adds the benchmark's own ``chunked_eval`` (a small
extended system per block of ``--chunk`` centres: same results, memory bounded by the chunk).
Each child runs under an address-space cap, so an oversize run fails instead of the machine.

``--device cuda``: model and inputs on the GPU (the neighbour list is built on the host,
as in ``DeepPot``), ``torch.cuda.synchronize()`` before and after every timed call, and
the peak GPU memory of each implementation (``torch.cuda.max_memory_allocated`` over one
evaluation after the warm-up, in the timing child: the caching allocator's peak is exact
per call, unlike ``ru_maxrss``) instead of the memory children; no address-space cap
(CUDA cannot initialise under one). DeePMD-kit, when importable, is asked for the same
device (``$DEVICE``, read by ``deepmd.pt.utils.env``) and the output says if it is not on it.
``--total-budget S`` skips the sizes whose estimated time (from the previous size of the
same variant) would not fit in what is left of ``S`` seconds.

Usage::

    python benchmarks/inference.py [--quick] [--sizes 192,1536,12288,98304] [--no-mem]
    python benchmarks/inference.py --device cuda --total-budget 240
    /tmp/dpvenv/bin/python benchmarks/inference.py   # with DeePMD-kit importable
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import common  # sets the threads before torch is imported

# isort: split
import numpy as np
import torch

SCRIPT = Path(__file__).resolve()


# === the evaluators ========================================================================
def chunked_eval(model, coord: np.ndarray, box: np.ndarray, atype: np.ndarray, chunk: int):
    """Whole-system ``e, f, v`` from ``forward_lower`` on chunks of centre atoms.

    Each chunk gets its own small extended system (its centres first, then the neighbours
    they need), so memory is bounded by the chunk, not by the system.
    """
    from dpa1.model.neighbor import build_extended_system

    dev = common.model_device(model)
    c = torch.as_tensor(coord, dtype=torch.float64, device=dev)
    t = torch.as_tensor(atype, dtype=torch.long, device=dev).reshape(1, -1)
    b = torch.as_tensor(box, dtype=torch.float64, device=dev).reshape(1, 3, 3)
    ext_coord, ext_atype, mapping, nlist = build_extended_system(c, t, b, model.rcut, model.nnei)
    nloc, nall = nlist.shape[1], ext_coord.shape[1]
    energy = torch.zeros(1, 1, dtype=torch.float64, device=dev)
    virial = torch.zeros(1, 9, dtype=torch.float64, device=dev)
    force = torch.zeros(nloc, 3, dtype=torch.float64, device=dev)
    inv = torch.full((nall,), -1, dtype=torch.long, device=dev)
    for s in range(0, nloc, chunk):
        e = min(s + chunk, nloc)
        nl = nlist[0, s:e]
        nb = torch.unique(nl[nl >= 0])
        others = nb[(nb < s) | (nb >= e)]
        sel = torch.cat([torch.arange(s, e, device=dev), others])
        inv[sel] = torch.arange(sel.numel(), device=dev)
        nl2 = torch.where(nl >= 0, inv[nl.clamp(min=0)], -1)
        # forward_lower folds forces with ``mapping`` into its own centres only: give it a
        # dummy one and fold the extended forces here.
        out = model.forward_lower(ext_coord[:, sel], ext_atype[:, sel], nl2[None],
                                  torch.zeros(1, sel.numel(), dtype=torch.long, device=dev))
        energy += out["energy"].detach()
        virial += out["virial"].detach()
        force.index_add_(0, mapping[0, sel], out["extended_force"][0].detach())
        inv[sel] = -1
    return energy.cpu().numpy(), force[None].cpu().numpy(), virial.cpu().numpy()


def make_evaluators(variant: str, natoms: int, impls: list[str], chunk: int, tmpdir: str,
                    eval_chunk: int = 0, device: str = "cpu"):
    """``{name: () -> (e, f, v)}`` for the requested implementations (numpy results: each
    call ends with the device-to-host copy). Ours on ``device``; DeePMD-kit's on its own
    device (:func:`common.deepmd_device`, asked to be the same)."""
    w = common.water_frame(common.rep_for(natoms))
    coord, box, atype = w["coord"], w["box"], w["atype"]
    model = common.build_ours(**common.VARIANTS[variant])
    if eval_chunk > 0 and hasattr(model, "block_atoms"):
        model.block_atoms = eval_chunk  # centres per block inside forward_lower
    fns = {}
    if "ours" in impls:
        from dpa1.infer.deep_pot import DeepPot

        dp = DeepPot(model, device=device)  # moves the model to the device
        fns["ours"] = lambda: dp.eval(coord, box, atype)
    if "ours_chunked" in impls:
        model.to(device).eval()
        fns["ours_chunked"] = lambda: chunked_eval(model, coord, box, atype, chunk)
    if "dp_pth" in impls or "dp_eager" in impls:
        dpm = common.to_deepmd(model).eval()
        if "dp_pth" in impls:
            from deepmd.infer import DeepPot as DPDeepPot

            path = os.path.join(tmpdir, f"{variant}.pth")
            torch.jit.save(torch.jit.script(dpm), path)
            ddp = DPDeepPot(path)
            fns["dp_pth"] = lambda: ddp.eval(coord, box, atype)
        if "dp_eager" in impls:
            ddev = common.deepmd_device()
            ct = torch.from_numpy(coord).to(ddev)
            bt = torch.from_numpy(box).reshape(1, 3, 3).to(ddev)
            tt = torch.from_numpy(atype).reshape(1, -1).to(ddev)

            def dp_eager():
                out = dpm(ct, tt, box=bt)
                return (out["energy"].detach().cpu().numpy(), out["force"].detach().cpu().numpy(),
                        out["virial"].detach().cpu().numpy().reshape(1, 9))

            fns["dp_eager"] = dp_eager
    return fns


def parity(results: dict) -> dict:
    """Max abs differences of every evaluator's e/f/v from the first one."""
    names = list(results)
    ref = results[names[0]]
    out = {}
    for n in names[1:]:
        e, f, v = (np.asarray(x, dtype=np.float64) for x in results[n])
        out[n] = {"e": float(np.abs(e.reshape(-1) - np.asarray(ref[0]).reshape(-1)).max()),
                  "f": float(np.abs(f.reshape(-1) - np.asarray(ref[1]).reshape(-1)).max()),
                  "v": float(np.abs(v.reshape(-1) - np.asarray(ref[2]).reshape(-1)).max()),
                  "e_ref": float(np.asarray(ref[0]).reshape(-1)[0]),
                  "f_rms": float(np.sqrt(np.mean(np.asarray(ref[1], dtype=np.float64) ** 2)))}
    return out


# === workers ===============================================================================
def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["time", "mem"])
    p.add_argument("variant")
    p.add_argument("natoms", type=int)
    p.add_argument("impls")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--budget", type=float, default=60.0)
    p.add_argument("--chunk", type=int, default=192)
    p.add_argument("--mem-cap-gb", type=float, default=0.0)
    p.add_argument("--eval-chunk", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--gpu-mem", action="store_true",
                   help="cuda: peak GPU memory of each implementation")
    a = p.parse_args(argv)
    dev = common.resolve_device(a.device)
    cuda = common.is_cuda(dev)
    common.set_deepmd_device(dev)
    if a.mem_cap_gb > 0 and not cuda:  # CUDA cannot initialise under an address-space cap
        common.limit_memory(a.mem_cap_gb)
    sync = common.make_sync(dev)
    impls = a.impls.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        fns = make_evaluators(
            a.variant, a.natoms, impls, a.chunk, tmp, a.eval_chunk, device=str(dev)
        )
        if a.mode == "mem":
            (fn,) = fns.values()
            base = common.rss_gb()  # host memory only: on cuda the timing child measures the GPU's
            t0 = time.perf_counter()
            fn()
            common.emit(
                {
                    "peak_gb": common.peak_rss_gb(),
                    "base_gb": base,
                    "first_s": time.perf_counter() - t0,
                }
            )
            return
        t_calls = time.perf_counter()
        results = {k: fn() for k, fn in fns.items()}  # also the warm-up round (numpy out: synced)
        par = parity(results) if len(results) > 1 else {}
        gpu_mem = {}
        if cuda and a.gpu_mem:
            # One more (warm) call each: the caching allocator's peak over that call.
            for k, fn in fns.items():
                common.gpu_reset_peak(dev)
                fn()
                gpu_mem[k] = common.gpu_peak_gb(dev)
        times = common.interleaved(fns, repeat=a.repeat, warmup=0, budget_s=a.budget, sync=sync)
        common.emit(
            {
                "times": times,
                "parity": par,
                "load": os.getloadavg()[0],
                "gpu_mem": gpu_mem,
                "calls_s": time.perf_counter() - t_calls,
                "device": str(dev),
                "deepmd_device": str(common.deepmd_device())
                if any(k.startswith("dp_") for k in fns)
                else None,
            }
        )


# === driver ================================================================================
LABEL = {
    "ours": "ours (DeepPot)",
    "ours_chunked": "ours (chunked)",
    "dp_pth": "DeePMD DeepPot(.pth)",
    "dp_eager": "DeePMD eager",
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="3 repeats; float64/float32 at 192 atoms, attn0 up to 12,288; DeePMD eager only; "
        "memory for attn0 only",
    )
    ap.add_argument(
        "--sizes", default=None, help="comma list (192·n³); default 192,1536,12288,98304"
    )
    ap.add_argument("--variants", default="float64,float32,attn0")
    ap.add_argument(
        "--large-variants",
        default="attn0,float64",
        help="variants also run above --small-max atoms (scaling)",
    )
    ap.add_argument("--small-max", type=int, default=1536)
    ap.add_argument(
        "--deepmd-max-atoms",
        type=int,
        default=1536,
        help="largest size DeePMD runs at (its O(N²) neighbour search needs 23.6 GB at 5,184)",
    )
    ap.add_argument(
        "--chunk", type=int, default=192, help="centre atoms per chunk for 'ours (chunked)'"
    )
    ap.add_argument(
        "--also-chunked",
        action="store_true",
        help="also time the benchmark's own chunked_eval (above 192 atoms)",
    )
    ap.add_argument(
        "--eval-chunk",
        type=int,
        default=0,
        help="set EnergyModel.block_atoms (dpa1's own centre blocks); 0 = dpa1's default",
    )
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--no-mem", action="store_true", help="skip the peak-memory children")
    ap.add_argument(
        "--mem-cap-gb",
        type=float,
        default=None,
        help="address-space cap of each child (default: 80%% of MemAvailable, ≤ 20 GB; "
        "not applied on cuda)",
    )
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    ap.add_argument(
        "--no-deepmd", action="store_true", help="ours only, even if DeePMD-kit imports"
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed rounds per child (at least 2 rounds; default 30 quick / 120)",
    )
    ap.add_argument(
        "--total-budget",
        type=float,
        default=0.0,
        help="seconds for the whole run: skip sizes whose estimate does not fit (0: no limit)",
    )
    ap.add_argument(
        "--child-timeout",
        type=float,
        default=None,
        help="seconds per child process (default 600 up to 12,288 atoms, else 1800)",
    )
    a = ap.parse_args()
    dev = common.resolve_device(a.device)
    cuda = common.is_cuda(dev)
    if a.no_deepmd:
        os.environ["DPA1_BENCH_NO_DEEPMD"] = "1"  # children too
    common.set_deepmd_device(dev)  # before DeePMD-kit is first imported (children inherit it)
    sizes = [
        int(s)
        for s in (a.sizes or ("192,1536,12288" if a.quick else "192,1536,12288,98304")).split(",")
    ]
    repeat = a.repeat or (3 if a.quick else 7)
    variants = a.variants.split(",")
    large = set(a.large_variants.split(","))
    if a.quick:  # keep --quick under ~3 min: float64/float32 at 192, scaling with attn0
        large = {"attn0"} & large
    cap = a.mem_cap_gb or min(20.0, 0.8 * common.available_gb())
    dp_ok = common.have_deepmd()
    common.print_machine(dev)
    if cuda:
        mem_txt = "peak GPU memory per implementation: " + (
            "no" if a.no_mem else "max_memory_allocated, one warm call"
        )
    else:
        mem_txt = f"memory cap per child {cap:.1f} GB"
    print(
        f"# DeePMD side by side: {'yes' if dp_ok else 'no (DeePMD-kit reference numbers)'}; "
        f"repeat {repeat}, {mem_txt}"
        + (f"; total budget {a.total_budget:.0f} s" if a.total_budget else "")
    )
    t_start = time.perf_counter()
    budget = a.budget or (30.0 if a.quick else 120.0)
    skipped: list[str] = []

    rows, par_rows = [], []
    summary: dict = {}
    for variant in variants:
        mem_ours: dict[int, float] = {}
        prev = None  # (natoms, child wall s, worker report) of the last size run
        failed = None  # a smaller size of this variant failed: larger ones would too
        for n in sizes:
            if n > a.small_max and variant not in large:
                continue
            if a.quick and variant != "attn0" and n > 192:
                continue
            impls = ["ours"]
            if a.also_chunked and n > 192:
                impls.append("ours_chunked")
            if dp_ok and n <= a.deepmd_max_atoms:
                impls += ["dp_eager"] if a.quick else ["dp_pth", "dp_eager"]
            timeout = a.child_timeout or (600.0 if n <= 12288 else 1800.0)
            if failed is not None and a.total_budget:
                rows.append([variant, n, "ours", f"skipped: {failed} atoms failed"] + [None] * 5)
                skipped.append(f"{variant} {n}: {failed} atoms failed")
                continue
            if a.total_budget:
                left = a.total_budget - (time.perf_counter() - t_start)
                est = estimate_child_s(prev, n, repeat, budget, cuda and not a.no_mem)
                if prev is None and left < 15 or est is not None and est > left:
                    why = (
                        f"estimated {est:.0f} s > {max(left, 0):.0f} s left of --total-budget"
                        if est is not None
                        else f"{max(left, 0):.0f} s left of --total-budget (< 15 s)"
                    )
                    skipped.append(f"{variant} {n}: {why}")
                    rows.append([variant, n, "ours", f"skipped: {why}"] + [None] * 5)
                    continue
                timeout = min(timeout, max(left, 30.0))
            args = [
                "time",
                variant,
                str(n),
                ",".join(impls),
                "--repeat",
                str(repeat),
                "--budget",
                str(budget),
                "--chunk",
                str(a.chunk),
                "--mem-cap-gb",
                f"{cap:.2f}",
                "--eval-chunk",
                str(a.eval_chunk),
                "--device",
                str(dev),
            ]
            if cuda and not a.no_mem:
                args.append("--gpu-mem")
            t_child = time.perf_counter()
            r = common.run_child(SCRIPT, args, timeout)
            prev = (n, time.perf_counter() - t_child, r) if "error" not in r else None
            if "error" in r:
                failed = n
            mem = {}
            if cuda:
                mem = {k: {"peak_gb": v} for k, v in r.get("gpu_mem", {}).items()}
                for k, m in mem.items():
                    if k == "ours":
                        mem_ours[n] = m["peak_gb"]
            elif not a.no_mem and (variant == "attn0" or not a.quick):
                for impl in impls:
                    if impl == "dp_eager":
                        continue
                    m = common.run_child(
                        SCRIPT,
                        [
                            "mem",
                            variant,
                            str(n),
                            impl,
                            "--chunk",
                            str(a.chunk),
                            "--mem-cap-gb",
                            f"{cap:.2f}",
                            "--eval-chunk",
                            str(a.eval_chunk),
                            "--device",
                            str(dev),
                        ],
                        timeout,
                    )
                    mem[impl] = m
                    if impl == "ours" and "peak_gb" in m:
                        mem_ours[n] = m["peak_gb"] - m["base_gb"]
            if "error" in r:
                rows.append([variant, n, "ours", f"error: {r['error']}"] + [None] * 5)
                print(f"# error {variant} {n}: {r['error']}", file=sys.stderr, flush=True)
                continue
            t = r["times"]
            ours_key = impls[0]
            ours_s = t[ours_key]["best"]
            dp_best = min((t[k]["best"] for k in ("dp_pth", "dp_eager") if k in t), default=None)
            ref = None
            if dp_best is None:
                if n == 192 and variant in common.REFERENCE["infer_192_s"]:
                    ref = common.REFERENCE["infer_192_s"][variant]
                elif variant == "attn0" and n in common.REFERENCE["attn0_scaling"]:
                    ref = common.REFERENCE["attn0_scaling"][n][0] * n / 1e3
            for impl in impls:
                ti = t[impl]
                mi = mem.get(impl, {})
                peak = mi.get("peak_gb")
                if impl == "dp_eager" and not cuda:
                    peak = None
                rows.append(
                    [
                        variant,
                        n,
                        LABEL[impl],
                        ti["best"],
                        ti["median"],
                        ti["n"],
                        1e3 * ti["best"] / n,
                        peak if peak is not None else mi.get("error"),
                        common.ratio(dp_best, ours_s) if impl == ours_key and dp_best else None,
                    ]
                )
            if ref is not None:
                rp = (
                    common.REFERENCE["attn0_scaling"].get(n, (None, None))[1]
                    if variant == "attn0"
                    else None
                )
                rows.append(
                    [variant, n, "DeePMD reference", ref, None, None, 1e3 * ref / n, rp, None]
                )
                rows[-1 - len(impls)][-1] = f"{ref / ours_s:.2f} (vs reference)"
            summary[(variant, n)] = {
                "ours_s": ours_s,
                "dp_s": dp_best,
                "ref_s": ref,
                "ours_peak": mem.get("ours", {}).get("peak_gb"),
                "chunk_peak": mem.get("ours_chunked", {}).get("peak_gb"),
                "load": r.get("load"),
            }
            for k, p in r.get("parity", {}).items():
                par_rows.append(
                    [
                        variant,
                        n,
                        f"{LABEL[k]} − ours",
                        p["e_ref"],
                        p["e"],
                        p["e"] / abs(p["e_ref"]),
                        p["f_rms"],
                        p["f"],
                        p["v"],
                    ]
                )
            print(
                f"# done {variant} {n} ({time.perf_counter() - t_start:.0f} s, load "
                f"{r.get('load', 0):.1f})",
                file=sys.stderr,
                flush=True,
            )

    where = f" on {torch.cuda.get_device_name(dev)}" if cuda else ""
    print(f"\n## Inference{where}: energy + force + virial, batch 1 (seconds per evaluation)\n")
    print(
        common.table(
            [
                "variant",
                "atoms",
                "implementation",
                "best s",
                "median s",
                "n",
                "ms/atom",
                "peak GPU GB" if cuda else "peak RSS GB",
                "DeePMD/ours",
            ],
            rows,
        )
    )
    if par_rows:
        print(
            "\n## Parity, same weights (max abs difference; energies in eV, forces eV/Å, "
            "virial eV)\n"
        )
        print(
            common.table(
                [
                    "variant",
                    "atoms",
                    "pair",
                    "E (ours)",
                    "|ΔE|",
                    "|ΔE|/|E|",
                    "rms F (ours)",
                    "max|ΔF|",
                    "max|ΔV|",
                ],
                par_rows,
            )
        )
    # === targets ===
    print("\n## Targets\n")
    trows = []
    for variant, need in (
        ("float64", common.TARGETS["infer_f64"]),
        ("float32", common.TARGETS["infer_f32"]),
    ):
        s = summary.get((variant, 192))
        if s:
            base = s["dp_s"] or s["ref_s"]
            got = common.ratio(base, s["ours_s"])
            src = "measured" if s["dp_s"] else "reference"
            trows.append(
                [
                    f"192-atom {variant} speed-up vs DeePMD ({src})",
                    f"≥ {need}×",
                    f"{got:.2f}×",
                    "yes" if got >= need else "NO",
                ]
            )
    for variant in ("attn0", "float64"):
        s0 = summary.get((variant, 192))
        for n in (12288, 98304):
            s = summary.get((variant, n))
            if s0 and s:
                q = (s["ours_s"] / n) / (s0["ours_s"] / 192)
                trows.append(
                    [
                        f"{variant}: ms/atom at {n} / at 192",
                        f"≤ {common.TARGETS['linear']}",
                        f"{q:.2f}",
                        "yes" if q <= common.TARGETS["linear"] else "NO",
                    ]
                )
        s = summary.get((variant, 12288))
        if s:
            pk = s["ours_peak"]
            txt = "–" if pk is None else f"{pk:.2f} GB"
            met = "–" if pk is None else ("yes" if pk <= common.TARGETS["mem_12288_gb"] else "NO")
            if s["chunk_peak"] is not None:
                txt += f" (benchmark chunks: {s['chunk_peak']:.2f} GB)"
            trows.append(
                [
                    f"{variant}: peak {'GPU ' if cuda else ''}memory at 12,288 atoms (DeepPot)",
                    f"≤ {common.TARGETS['mem_12288_gb']} GB",
                    txt,
                    met,
                ]
            )
    print(common.table(["target", "goal", "measured", "met"], trows))
    print(
        "\nNotes: 'ours (DeepPot)' is dpa1 as shipped (it blocks centres by "
        "EnergyModel.block_atoms "
        "where that exists; --eval-chunk overrides it); 'ours (chunked)' (--also-chunked) is the "
        "benchmark's chunked_eval: forward_lower on --chunk centres with a small extended "
        "system each. "
        "Ratios use the faster DeePMD path. "
        + (
            "Peak GPU GB: torch.cuda.max_memory_allocated over one warm evaluation (model, inputs "
            "and the call's tensors; not the allocator's cached reserve, nor the CUDA context). "
            "Timed calls are bracketed by torch.cuda.synchronize(); the neighbour list is built on "
            "the host (vesin) and included."
            if cuda
            else "Peak RSS includes the interpreter and torch (~0.25–0.5 GB)."
        )
    )
    note = common.deepmd_device_note(dev)
    if note:
        print(note)
    if skipped:
        print("\nSkipped (time budget): " + "; ".join(skipped))
    print(f"# total {time.perf_counter() - t_start:.0f} s", file=sys.stderr)


def estimate_child_s(prev, n: int, repeat: int, budget: float, gpu_mem: bool):
    """Seconds a timing child at ``n`` atoms should take, from the last size of the same
    variant: its fixed cost (start-up, model, statistics) plus the evaluation rounds scaled
    linearly in the atoms (conservative: the larger sizes run fewer implementations)."""
    if prev is None:
        return None
    n0, wall, r = prev
    t = r.get("times", {})
    round0 = sum(v["best"] for v in t.values())
    if not round0:
        return None
    fixed = max(0.0, wall - r.get("calls_s", 0.0))
    rnd = round0 * n / n0
    timed = min(repeat, max(2, math.ceil(budget / rnd) + 1))
    return fixed + rnd * (1 + (1 if gpu_mem else 0) + timed)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
