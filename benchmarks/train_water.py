"""Fixed-budget water training: dpa1 vs DeePMD-kit 3.2.0 (``dp --pt train``) on the same input.

Prints s/step and the held-out (data_2) energy/force RMSE of both models, evaluated by the
same code (``dpa1 test``; DeePMD's model goes through ``dp --pt freeze`` and
``dp convert-backend`` to ``.dp``, which dpa1 evaluates exactly). DeePMD is run when a ``dp``
executable is found (``--dp PATH``, default: ``dp`` next to ``--dp-python`` or on PATH).

    python benchmarks/train_water.py --steps 200 [--dp /tmp/dpvenv/bin/dp]
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

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "water"


def make_input(workdir: Path, steps: int) -> Path:
    cfg = json.loads((EXAMPLE / "input.json").read_text())
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
    out = workdir / f"{model.stem}_test.json"
    run([sys.executable, "-m", "dpa1", "test", "-m", str(model), "-s", str(EXAMPLE / "data" / "data_2"),
         "-n", "40", "--json", str(out)], workdir, env)
    return json.loads(out.read_text())["total"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--dp", default=shutil.which("dp") or "/tmp/dpvenv/bin/dp")
    ap.add_argument("--no-deepmd", action="store_true")
    a = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DP_INTRA_OP_PARALLELISM_THREADS": "2",
           "DP_INTER_OP_PARALLELISM_THREADS": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours = tmp / "ours"
        ours.mkdir()
        inp = make_input(ours, a.steps)
        t = run([sys.executable, "-m", "dpa1", "train", str(inp), "-o", str(ours), "--log-level", "WARNING"], ours, env)
        rows.append(("dpa1", t / a.steps, held_out(ours / "model.ckpt.pt", ours, env)))
        if not a.no_deepmd and a.dp and Path(a.dp).exists():
            dpdir = tmp / "deepmd"
            dpdir.mkdir()
            inp = make_input(dpdir, a.steps)
            t = run([a.dp, "--pt", "train", str(inp), "--skip-neighbor-stat"], dpdir, env)
            run([a.dp, "--pt", "freeze", "-o", "frozen.pth"], dpdir, env)
            run([a.dp, "convert-backend", "frozen.pth", "frozen.dp"], dpdir, env)
            rows.append(("DeePMD-kit", t / a.steps, held_out(dpdir / "frozen.dp", dpdir, env)))
    print(f"water, example model, {a.steps} steps, batch 1, float64, 2 threads; held-out: data_2 (40 frames)")
    print(f"{'code':12s} {'s/step':>8s} {'rmse_e/atom':>12s} {'rmse_f':>10s}")
    for name, sps, err in rows:
        print(f"{name:12s} {sps:8.3f} {err['rmse_energy_per_atom']:12.4e} {err['rmse_force']:10.4e}")
    if len(rows) == 2:
        (_, s0, e0), (_, s1, e1) = rows
        print(f"speed ratio (DeePMD s/step / dpa1 s/step): {s1 / s0:.2f}; "
              f"force RMSE ratio (dpa1 / DeePMD): {e0['rmse_force'] / e1['rmse_force']:.3f}")


if __name__ == "__main__":
    main()
