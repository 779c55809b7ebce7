"""Fixed-budget water training: dpa1 vs DeePMD-kit 3.2.0 (``dp --pt train``) on the same input.

Prints s/step and the held-out (data_2) energy/force RMSE of both models, evaluated by the
same code (``dpa1 test``; DeePMD's model goes through ``dp --pt freeze`` and
``dp convert-backend`` to ``.dp``, which dpa1 evaluates exactly). DeePMD is run when a ``dp``
executable is found (``--dp PATH``, default: ``dp`` next to ``--dp-python`` or on PATH).

    python benchmarks/train_water.py --steps 200 [--seeds 1,2,3] [--dp /tmp/dpvenv/bin/dp]

With several seeds (``training.seed`` and the descriptor/fitting seeds all set to it), each
code is trained once per seed and the mean and spread of the held-out errors are printed:
one short run's energy RMSE is dominated by its random energy offset (the ``mean`` printed
next to it; ``std`` is the error without it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "water"


def make_input(workdir: Path, steps: int, seed: int | None = None) -> Path:
    cfg = json.loads((EXAMPLE / "input.json").read_text())
    if seed is not None:
        cfg["training"]["seed"] = seed
        cfg["model"]["descriptor"]["seed"] = seed
        cfg["model"]["fitting_net"]["seed"] = seed
    data = EXAMPLE / "data"
    cfg["training"]["training_data"]["systems"] = [str(data / "data_0"), str(data / "data_1")]
    cfg["training"]["validation_data"]["systems"] = [str(data / "data_2")]
    cfg["training"].update(numb_steps=steps, disp_freq=max(1, steps // 10), save_freq=steps)
    cfg["learning_rate"]["decay_steps"] = max(1, steps // 10)
    path = workdir / "input.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def run(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def held_out(model: Path, workdir: Path, env: dict) -> dict:
    """``dpa1 test`` totals on data_2 (40 frames), plus the split of the energy/atom error
    ``rmse² = mean² + std²``: after 200 steps the spread (what was learnt about energy
    differences) is ~3.1e-3 eV/atom for both codes and a run's random energy offset ``mean``
    (±2e-3) decides most of its RMSE."""
    out = workdir / f"{model.stem}_test.json"
    detail = workdir / f"{model.stem}_detail"
    run(
        [
            sys.executable,
            "-m",
            "dpa1",
            "test",
            "-m",
            str(model),
            "-s",
            str(EXAMPLE / "data" / "data_2"),
            "-n",
            "40",
            "--json",
            str(out),
            "--detail-file",
            str(detail),
        ],
        workdir,
        env,
    )
    data_e, pred_e = np.loadtxt(f"{detail}.e_peratom.out", ndmin=2).T
    err = pred_e - data_e
    return {
        **json.loads(out.read_text())["total"],
        "mean_energy_per_atom": float(err.mean()),
        "std_energy_per_atom": float(err.std()),
    }


def train_both(a, env: dict, tmp: Path, seed: int | None) -> list[tuple[str, float, dict]]:
    """Train dpa1 and (when available) DeePMD-kit on the same input; held-out errors of each."""
    rows = []
    ours = tmp / f"ours_{seed}"
    ours.mkdir()
    inp = make_input(ours, a.steps, seed)
    t = run(
        [
            sys.executable,
            "-m",
            "dpa1",
            "train",
            str(inp),
            "-o",
            str(ours),
            "--log-level",
            "WARNING",
        ],
        ours,
        env,
    )
    rows.append(("dpa1", t / a.steps, held_out(ours / "model.ckpt.pt", ours, env)))
    if not a.no_deepmd and a.dp and Path(a.dp).exists():
        dpdir = tmp / f"deepmd_{seed}"
        dpdir.mkdir()
        inp = make_input(dpdir, a.steps, seed)
        t = run([a.dp, "--pt", "train", str(inp), "--skip-neighbor-stat"], dpdir, env)
        run([a.dp, "--pt", "freeze", "-o", "frozen.pth"], dpdir, env)
        run([a.dp, "convert-backend", "frozen.pth", "frozen.dp"], dpdir, env)
        rows.append(("DeePMD-kit", t / a.steps, held_out(dpdir / "frozen.dp", dpdir, env)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", default="", help="comma list; default: the example's own seeds")
    ap.add_argument("--dp", default=shutil.which("dp") or "/tmp/dpvenv/bin/dp")
    ap.add_argument("--no-deepmd", action="store_true")
    ap.add_argument("--json", default=None, help="also write every row to this file")
    ap.add_argument(
        "--merge",
        nargs="*",
        default=[],
        help="earlier --json files: their runs join the comparison over seeds",
    )
    a = ap.parse_args()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "2",
        "DP_INTRA_OP_PARALLELISM_THREADS": "2",
        "DP_INTER_OP_PARALLELISM_THREADS": "1",
    }
    seeds: list[int | None] = [int(x) for x in a.seeds.split(",") if x] or [None]
    table: list[tuple[int | None, str, float, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for name, sps, err in train_both(a, env, Path(tmp), seed):
                table.append((seed, name, sps, err))
                print(
                    f"seed {seed}: {name:12s} {sps:8.3f} s/step  rmse_e/atom "
                    f"{err['rmse_energy_per_atom']:.4e}"
                    f" (mean {err['mean_energy_per_atom']:+.2e}, std "
                    f"{err['std_energy_per_atom']:.3e})"
                    f"  rmse_f {err['rmse_force']:.4e}",
                    flush=True,
                )
    print(
        f"\nwater, example model, {a.steps} steps, batch 1, float64, 2 threads; held-out: "
        "data_2 (40 frames)"
    )
    print(f"{'seed':>5s} {'code':12s} {'s/step':>8s} {'rmse_e/atom':>12s} {'rmse_f':>10s}")
    for seed, name, sps, err in table:
        print(
            f"{str(seed):>5s} {name:12s} {sps:8.3f} {err['rmse_energy_per_atom']:12.4e} "
            f"{err['rmse_force']:10.4e}"
        )
    codes = sorted({name for _, name, _, _ in table})
    for name in codes:
        errs = [
            (e["rmse_energy_per_atom"], e["rmse_force"], s) for _, n, s, e in table if n == name
        ]
        me, mf, ms = (sum(x[i] for x in errs) / len(errs) for i in range(3))
        print(
            f"{'mean':>5s} {name:12s} {ms:8.3f} {me:12.4e} {mf:10.4e}   "
            f"(range e {min(x[0] for x in errs):.3e}–{max(x[0] for x in errs):.3e}, "
            f"f {min(x[1] for x in errs):.4f}–{max(x[1] for x in errs):.4f})"
        )
    rows = [{"seed": sd, "code": n, "s_per_step": s, **e} for sd, n, s, e in table]
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    for extra in a.merge:
        rows += json.loads(Path(extra).read_text())
    if {"dpa1", "DeePMD-kit"} <= {r["code"] for r in rows}:
        compare(rows)


def _mean_se(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else float("nan")
    return m, (var / len(xs)) ** 0.5


def compare(rows: list[dict]) -> None:
    """Mean ± standard error of each code's held-out RMSE over seeds, and the difference.

    One seed's 200-step energy RMSE is dominated by the run's random energy offset (set by
    its draws, initial weights and statistics frames; docs/benchmarks.md), and the two codes
    draw differently for the same seed: only the distributions over seeds compare (Welch's t
    for the difference of the means). ``std_energy_per_atom`` (the RMSE without the offset) is
    compared over the runs that recorded it.
    """
    seeds = sorted({r["seed"] for r in rows if r["seed"] is not None})
    print(f"\nover {len(rows)} runs, seeds {seeds}:")
    for key in ("rmse_energy_per_atom", "rmse_force", "std_energy_per_atom"):
        if not all(any(key in r for r in rows if r["code"] == c) for c in ("dpa1", "DeePMD-kit")):
            continue
        stats = {
            c: _mean_se([r[key] for r in rows if r["code"] == c and key in r])
            for c in ("dpa1", "DeePMD-kit")
        }
        n = {c: sum(r["code"] == c and key in r for r in rows) for c in stats}
        (m0, se0), (m1, se1) = stats["dpa1"], stats["DeePMD-kit"]
        se = (se0**2 + se1**2) ** 0.5
        t = (m0 - m1) / se if se > 0 else float("nan")
        print(
            f"  {key:22s} dpa1 {m0:.4e} ± {se0:.1e} (n={n['dpa1']})   DeePMD-kit {m1:.4e} ± "
            f"{se1:.1e} "
            f"(n={n['DeePMD-kit']})   ratio {m0 / m1:.3f}   difference {m0 - m1:+.2e} ± "
            f"{se:.1e} (t = {t:+.2f})"
        )


if __name__ == "__main__":
    main()
