"""Training quality: ``dpa1 train`` against ``dp --pt train`` over several seeds (not a test).

Trains both codes on the same input, once per seed, and evaluates every final model with the
same code (``dpa1 test`` on held-out frames; DeePMD-kit's model goes through ``dp --pt freeze``
and ``dp convert-backend`` to ``.dp``, which dpa1 evaluates exactly). Two inputs:

* ``small``: a small se_atten model (neuron 16/32/64, attn 32, one attention layer, fitting
  64×3, rcut 5 Å, start_lr 2e-3 decaying every 100 steps), 1,500 steps;
* ``example``: ``examples/water/input.json``, 1,000 steps (``decay_steps`` scaled to 100).

Both train on water ``data_0`` + ``data_1`` (240 frames of 192 atoms) and are evaluated on
``data_2`` (80 frames), batch 1, float64. Seed ``k`` sets ``training.seed = 9 + k`` and the
descriptor and fitting seeds to ``k`` (seed 1 is ``10/1``).

For each input the script prints every run's held-out force RMSE (eV/Å) and energy RMSE
(meV/atom), the means of both codes, their ratios and the worst runs, and checks

* mean force RMSE ratio dpa1/DeePMD-kit ≤ 1.05 and mean energy RMSE ratio ≤ 1.10;
* no dpa1 run worse than 1.15× the worst DeePMD-kit run (force and energy).

Every finished run is stored in ``--workdir`` (default ``benchmarks/results/train_quality``)
as one JSON file, and a later call reuses it: a long comparison can be run in pieces
(``--inputs``, ``--seeds``, ``--codes``) and the table printed from all stored runs with
``--report``. A run in progress lives in ``<workdir>/runs/<input>_<code>_seed<k>/`` and
checkpoints every 100 steps; a call that finds it (the machine was stopped, the process
killed) continues it with ``--restart`` from its latest readable checkpoint. dpa1's restart
continues the same run exactly (weights, optimiser, samplers); DeePMD-kit's restores weights,
optimiser and step but draws its batches afresh, which its users get too. The steps at which
a run was continued are stored with its result (``restarts``).

``--jobs 2`` trains two runs side by side with one thread each (on two cores
this has about twice the throughput of one run on two threads; the errors do not depend on
it, training is deterministic for a given thread count).

    python benchmarks/train_quality.py                          # both inputs, seeds 1-5, both codes
    python benchmarks/train_quality.py --inputs small --seeds 1-8 --jobs 2
    python benchmarks/train_quality.py --report                 # the table from the stored runs
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from train_water import run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "water" / "data"
DEFAULT_WORKDIR = ROOT / "benchmarks" / "results" / "train_quality"
CODES = ("dpa1", "DeePMD-kit")
TARGETS = {"force_ratio": 1.05, "energy_ratio": 1.10, "worst_ratio": 1.15}

SMALL = {
    "model": {
        "type_map": ["O", "H"],
        "descriptor": {"type": "se_atten", "sel": 80, "rcut_smth": 0.5, "rcut": 5.0,
                       "neuron": [16, 32, 64], "axis_neuron": 8, "resnet_dt": False, "attn": 32,
                       "attn_layer": 1, "attn_mask": False, "attn_dotr": True, "seed": 1},
        "fitting_net": {"neuron": [64, 64, 64], "resnet_dt": True, "seed": 1},
    },
    "learning_rate": {"type": "exp", "decay_steps": 100, "start_lr": 0.002, "stop_lr": 1e-05},
    "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000,
             "limit_pref_f": 1, "start_pref_v": 0, "limit_pref_v": 0},
    "training": {"numb_steps": 1500, "seed": 10, "disp_freq": 100},
}


def base_input(name: str) -> dict:
    if name == "small":
        return copy.deepcopy(SMALL)
    if name == "example":
        cfg = json.loads((ROOT / "examples" / "water" / "input.json").read_text())
        cfg["training"].update(numb_steps=1000, disp_freq=100)
        cfg["learning_rate"]["decay_steps"] = 100
        return cfg
    raise ValueError(f"unknown input {name!r}: use 'small' or 'example'")


def make_input(name: str, seed: int, workdir: Path) -> Path:
    cfg = base_input(name)
    cfg["training"]["seed"] = 9 + seed
    cfg["model"]["descriptor"]["seed"] = seed
    cfg["model"]["fitting_net"]["seed"] = seed
    cfg["training"]["training_data"] = {"systems": [str(DATA / "data_0"), str(DATA / "data_1")],
                                        "batch_size": 1}
    cfg["training"].pop("validation_data", None)
    # a checkpoint every 100 steps, for continuing a stopped run (saving changes no number)
    cfg["training"].update(save_freq=100, max_ckpt_keep=2)
    path = workdir / "input.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def held_out(model: Path, workdir: Path, env: dict) -> dict:
    """``dpa1 test`` on all 80 frames of data_2: force RMSE and energy RMSE per atom."""
    out = workdir / "heldout.json"
    run([sys.executable, "-m", "dpa1", "test", "-m", str(model), "-s", str(DATA / "data_2"),
         "--json", str(out)], workdir, env)
    total = json.loads(out.read_text())["total"]
    return {"rmse_f": total["rmse_force"], "rmse_e_mev": 1e3 * total["rmse_energy_per_atom"]}


def lcurve_force(path: Path) -> list[tuple[int, float]]:
    rows = np.loadtxt(path, ndmin=2)
    header = path.read_text().splitlines()[0].split()[1:]
    col = header.index("rmse_f_trn")
    by_step = {int(r[0]): float(r[col]) for r in rows}  # a restart may repeat steps: last wins
    return sorted(by_step.items())


def latest_checkpoint(work: Path) -> tuple[int, Path] | None:
    """The newest ``model.ckpt-<step>.pt`` in ``work`` that loads; unreadable ones (a write
    cut short when the process was killed) are removed."""
    import torch

    found = sorted(
        (int(p.stem.rpartition("-")[2]), p)
        for p in work.glob("model.ckpt-*.pt")
        if p.stem.rpartition("-")[2].isdigit()
    )
    for step, path in reversed(found):
        try:
            torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - any failure means the file cannot be restarted from
            path.unlink()
            continue
        return step, path
    return None


def train_one(name: str, code: str, seed: int, a: argparse.Namespace, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "DP_INTRA_OP_PARALLELISM_THREADS": str(threads), "DP_INTER_OP_PARALLELISM_THREADS": "1"}
    work = run_dir(Path(a.workdir), name, code, seed)
    work.mkdir(parents=True, exist_ok=True)
    progress_file = work / "restarts.json"
    restarts = json.loads(progress_file.read_text()) if progress_file.exists() else []
    inp = make_input(name, seed, work)
    steps = json.loads(inp.read_text())["training"]["numb_steps"]
    ckpt = latest_checkpoint(work)
    first_step = 0
    resume: list[str] = []
    if ckpt is not None and ckpt[0] < steps:
        first_step = ckpt[0]
        restarts.append(first_step)
        progress_file.write_text(json.dumps(restarts))
        resume = ["--restart", ckpt[1].name]
    if ckpt is None or ckpt[0] < steps:
        if code == "dpa1":
            cmd = [sys.executable, "-m", "dpa1", "train", str(inp), "-o", str(work),
                   "--log-level", "WARNING", *resume]
        else:
            cmd = [a.dp, "--pt", "train", str(inp), "--skip-neighbor-stat", *resume]
        t = run(cmd, work, env)
        (work / "seconds.json").write_text(json.dumps([t, steps - first_step]))
    timing = work / "seconds.json"  # absent if stopped between the last checkpoint and here
    t, trained = json.loads(timing.read_text()) if timing.exists() else (float("nan"), 1)
    if code == "dpa1":
        model = work / "model.ckpt.pt"
    else:
        run([a.dp, "--pt", "freeze", "-o", "frozen.pth"], work, env)
        run([a.dp, "convert-backend", "frozen.pth", "frozen.dp"], work, env)
        model = work / "frozen.dp"
    return {"input": name, "code": code, "seed": seed, "threads": threads,
            "s_per_step": t / trained, "restarts": restarts,
            "lcurve_f": lcurve_force(work / "lcurve.out"), **held_out(model, work, env)}


def run_dir(workdir: Path, name: str, code: str, seed: int) -> Path:
    return workdir / "runs" / result_path(workdir, name, code, seed).stem


def result_path(workdir: Path, name: str, code: str, seed: int) -> Path:
    return workdir / f"{name}_{'dpa1' if code == 'dpa1' else 'deepmd'}_seed{seed}.json"


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


def report(workdir: Path, inputs: list[str]) -> bool:
    """Print the per-seed and mean table of every stored run; return whether all targets hold."""
    ok = True
    for name in inputs:
        rows = [json.loads(p.read_text()) for p in sorted(workdir.glob(f"{name}_*_seed*.json"))]
        if not rows:
            continue
        by = {(r["code"], r["seed"]): r for r in rows}
        seeds = sorted({r["seed"] for r in rows})
        print(f"\n## {name} input: held-out data_2 (80 frames); "
              "force RMSE eV/Å, energy RMSE meV/atom")
        print(f"{'seed':>9s} | {'DeePMD-kit F':>12s} {'E':>7s} | {'dpa1 F':>8s} {'E':>7s}")
        for s in seeds:
            cells = []
            for code in ("DeePMD-kit", "dpa1"):
                r = by.get((code, s))
                cells.append(
                    f"{r['rmse_f']:.4f} {r['rmse_e_mev']:7.3f}" if r else f"{'–':>6s} {'–':>7s}"
                )
            print(f"{9 + s:>6d}/{s:<2d} | {cells[0]:>20s} | {cells[1]:>16s}")
        for (code, s), r in sorted(by.items()):
            if r.get("restarts"):
                steps = ", ".join(map(str, r["restarts"]))
                print(f"  {code} {9 + s}/{s} was stopped and continued from step {steps}")
        both = [s for s in seeds if ("dpa1", s) in by and ("DeePMD-kit", s) in by]
        if not both:
            ok = False
            print("  runs of one code only: no comparison")
            continue
        stat = {}
        for code in CODES:
            f = np.array([by[(code, s)]["rmse_f"] for s in seeds if (code, s) in by])
            e = np.array([by[(code, s)]["rmse_e_mev"] for s in seeds if (code, s) in by])
            stat[code] = (f, e)
            print(
                f"{code:>10s}: n={f.size}  mean F {f.mean():.4f} (range "
                f"{f.min():.4f}–{f.max():.4f})  "
                f"mean E {e.mean():.3f} (range {e.min():.3f}–{e.max():.3f})"
            )
        (fo, eo), (fd, ed) = stat["dpa1"], stat["DeePMD-kit"]
        checks = {
            "mean force ratio": (fo.mean() / fd.mean(), TARGETS["force_ratio"]),
            "mean energy ratio": (eo.mean() / ed.mean(), TARGETS["energy_ratio"]),
            "worst force / worst DeePMD-kit": (fo.max() / fd.max(), TARGETS["worst_ratio"]),
            "worst energy / worst DeePMD-kit": (eo.max() / ed.max(), TARGETS["worst_ratio"]),
        }
        for label, (value, limit) in checks.items():
            met = value <= limit
            ok &= bool(met)
            print(f"  {label:32s} {value:.3f}  (≤ {limit:.2f}: {'met' if met else 'NOT met'})")
        if min(fo.size, fd.size) < 5:
            ok = False
            print("  fewer than 5 seeds per code: not a verdict")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--inputs", default="small,example", help="comma list of 'small', 'example'")
    ap.add_argument("--seeds", default="1-5", help="e.g. 1-5 or 1,3,7")
    ap.add_argument("--codes", default="dpa1,deepmd", help="comma list of 'dpa1', 'deepmd'")
    ap.add_argument(
        "--jobs", type=int, default=1, help="runs side by side (threads = 2 // jobs, at least 1)"
    )
    ap.add_argument("--dp", default=shutil.which("dp") or "/tmp/dpvenv/bin/dp")
    ap.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    ap.add_argument(
        "--rerun", action="store_true", help="train again even if a stored result exists"
    )
    ap.add_argument("--report", action="store_true", help="only print the table of the stored runs")
    a = ap.parse_args()
    inputs = [x for x in a.inputs.split(",") if x]
    for name in inputs:
        base_input(name)
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not a.report:
        codes = [{"dpa1": "dpa1", "deepmd": "DeePMD-kit"}[c] for c in a.codes.split(",") if c]
        if "DeePMD-kit" in codes and not Path(a.dp).exists() and not shutil.which(a.dp):
            sys.exit(
                f"train_quality.py: no DeePMD-kit `dp` at {a.dp!r} (--dp PATH, or --codes dpa1)"
            )
        todo = [
            (n, c, s)
            for n in inputs
            for s in parse_seeds(a.seeds)
            for c in codes
            if a.rerun or not result_path(workdir, n, c, s).exists()
        ]
        threads = max(1, 2 // max(1, a.jobs))

        def job(item: tuple[str, str, int]) -> None:
            name, code, seed = item
            res = train_one(name, code, seed, a, threads)
            result_path(workdir, name, code, seed).write_text(json.dumps(res, indent=1))
            shutil.rmtree(run_dir(workdir, name, code, seed))
            print(
                f"{name:8s} {code:10s} seed {seed}: rmse_f {res['rmse_f']:.4f} eV/Å  "
                f"rmse_e {res['rmse_e_mev']:.3f} meV/atom  ({res['s_per_step']:.2f} s/step)",
                flush=True,
            )

        with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
            for _ in pool.map(job, todo):
                pass
    ok = report(workdir, inputs)
    print("\nall targets met" if ok else "\ntargets not (yet) met")


if __name__ == "__main__":
    main()
