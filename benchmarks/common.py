"""Shared helpers for the benchmark scripts (not tests).

- threads: ``OMP_NUM_THREADS=2`` is set before torch is imported, then ``torch.set_num_threads(2)``;
- water frames from ``../shared/data/water/data_0`` (192 atoms), replicated n×n×n;
- the example model (``examples/water/input.json``) with overrides, ours and DeePMD-kit's
  (the same weights, converted through DeePMD's serialized dictionary);
- interleaved best-of-N timing, peak memory of child processes (``ru_maxrss``);
- the machine description and the issue's reference numbers.

DeePMD-kit is measured side by side when ``import deepmd.pt`` works in the interpreter
running the script (e.g. ``/tmp/dpvenv/bin/python benchmarks/inference.py``); otherwise
the issue's numbers are printed, labelled "reference (issue)".
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

NUM_THREADS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(NUM_THREADS))
os.environ.setdefault("DP_INTRA_OP_PARALLELISM_THREADS", str(NUM_THREADS))
os.environ.setdefault("DP_INTER_OP_PARALLELISM_THREADS", "1")
os.environ.setdefault("DP_INFER_BATCH_SIZE", str(1 << 30))  # never let DeePMD split a frame

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(NUM_THREADS)
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DPA1_SHARED", ROOT.parent / "shared"))
if not SHARED.exists():
    SHARED = Path("/work/shared")
WATER = SHARED / "data" / "water" / "data_0"
EXAMPLE_INPUT = ROOT / "examples" / "water" / "input.json"

# The reference numbers for DeePMD-kit 3.2.0 (PyTorch backend, 2 cores, batch 1).
REFERENCE = {
    "train_step_s": {"float64": 1.97, "float32": 1.05, "attn0": 0.165},
    "infer_192_s": {"float64": 0.57, "float32": 0.32},  # 0.55–0.59 s for float64
    # attn_layer 0 model: atoms -> (ms/atom, peak GB)
    "attn0_scaling": {192: (1.4, 0.8), 1536: (1.2, 2.7), 5184: (3.8, 23.6)},
}
TARGETS = {"infer_f64": 2.0, "infer_f32": 3.0, "train": 1.5, "linear": 1.3, "mem_12288_gb": 3.0}


# === DeePMD-kit ============================================================================
_DEEPMD: Optional[bool] = None


def have_deepmd() -> bool:
    """Whether DeePMD-kit's PyTorch backend imports in this interpreter."""
    global _DEEPMD
    if _DEEPMD is None:
        if os.environ.get("DPA1_BENCH_NO_DEEPMD"):
            _DEEPMD = False
        else:
            try:
                import logging

                logging.getLogger("deepmd").setLevel(logging.WARNING)
                import deepmd.pt.model.model  # noqa: F401

                _DEEPMD = True
            except Exception:  # noqa: BLE001 - any import failure means "not available"
                _DEEPMD = False
    return _DEEPMD


def deepmd_version() -> str:
    if not have_deepmd():
        return "not importable"
    import deepmd

    return getattr(deepmd, "__version__", "?")


def to_deepmd(model) -> torch.nn.Module:
    """DeePMD-kit's EnergyModel with the same weights (through the serialized dict, §13)."""
    from deepmd.pt.model.model import BaseModel

    from dpa1.io.serialize import model_to_dict

    return BaseModel.deserialize(copy.deepcopy(model_to_dict(model)))


def deepmd_train_step(dpm: torch.nn.Module, loss_cfg: dict[str, Any], start_lr: float) -> Callable[..., float]:
    """DeePMD-kit's training step as ``dp --pt train`` runs it: ``EnergyStdLoss`` and Adam
    (betas 0.9/0.999, ``zero_grad(set_to_none=True)``) at a given learning rate.

    Returns ``step(coord (1, N, 3), atype (1, N), box (1, 9), energy (1, 1), force (1, N, 3), lr)
    -> loss`` (torch tensors) that updates ``dpm`` in place.
    """
    from deepmd.pt.loss import EnergyStdLoss

    dpm.train()
    loss_fn = EnergyStdLoss(starter_learning_rate=start_lr, **loss_cfg)
    opt = torch.optim.Adam([q for q in dpm.parameters() if q.requires_grad], lr=start_lr, betas=(0.9, 0.999))

    def step(coord, atype, box, energy, force, lr: float) -> float:
        for g in opt.param_groups:
            g["lr"] = lr
        inp = {"coord": coord, "atype": atype, "box": box, "do_atomic_virial": False}
        label = {"energy": energy, "force": force, "find_energy": 1.0, "find_force": 1.0}
        opt.zero_grad(set_to_none=True)
        _, loss, _ = loss_fn(inp, dpm, label, natoms=atype.shape[-1], learning_rate=lr)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def heldout_errors(models: dict[str, torch.nn.Module], nframes: int) -> dict[str, dict[str, float]]:
    """Energy/atom RMSE and mean error and force RMSE of each model (ours or DeePMD-kit's)
    on the first ``nframes`` frames of ``data_2``."""
    system = WATER.parent / "data_2"
    out = {}
    for name, net in models.items():
        net.eval()
        de, df = [], []
        for k in range(nframes):
            d = water_frame(1, frame=k, system=system)
            pred = net(torch.from_numpy(d["coord"]), torch.from_numpy(d["atype"]).reshape(1, -1),
                       torch.from_numpy(d["box"]).reshape(1, 9))
            n = d["atype"].size
            de.append((float(pred["energy"].detach().reshape(-1)[0]) - float(d["energy"][0, 0])) / n)
            df.append((pred["force"].detach().numpy().reshape(-1, 3) - d["force"].reshape(-1, 3)).ravel())
        out[name] = {"rmse_e_atom": float(np.sqrt(np.mean(np.square(de)))),
                     "rmse_f": float(np.sqrt(np.mean(np.square(np.concatenate(df))))),
                     "mean_e_atom": float(np.mean(de))}
    return out


# === data ==================================================================================
def water_frame(rep: int = 1, frame: int = 0, system: Path = WATER) -> dict[str, np.ndarray]:
    """One water frame replicated ``rep³`` times: ``coord (1, N, 3)``, ``box (1, 9)``,
    ``atype (N,)``, ``energy (1, 1)``, ``force (1, N, 3)`` (labels replicated too)."""
    sd = sorted(system.glob("set.*"))[0]
    coord = np.load(sd / "coord.npy")[frame].reshape(-1, 3)
    box = np.load(sd / "box.npy")[frame].reshape(3, 3)
    atype = np.loadtxt(system / "type.raw", dtype=np.int64).reshape(-1)
    energy = float(np.load(sd / "energy.npy")[frame])
    force = np.load(sd / "force.npy")[frame].reshape(-1, 3)
    shifts = np.array([[i, j, k] for i in range(rep) for j in range(rep) for k in range(rep)], dtype=float)
    disp = shifts @ box
    return {
        "coord": (coord[None] + disp[:, None]).reshape(1, -1, 3),
        "box": (box * rep).reshape(1, 9),
        "atype": np.tile(atype, rep**3),
        "energy": np.array([[energy * rep**3]]),
        "force": np.tile(force, (rep**3, 1)).reshape(1, -1, 3),
    }


def rep_for(natoms: int) -> int:
    rep = round((natoms / 192) ** (1 / 3))
    if 192 * rep**3 != natoms:
        raise ValueError(f"{natoms} atoms is not 192·n³")
    return rep


# === models ================================================================================
def example_config(precision: str = "float64", attn_layer: Optional[int] = None) -> dict[str, Any]:
    """The normalised example input (``examples/water/input.json``) with overrides."""
    from dpa1.io.config import normalize_config

    raw = json.loads(EXAMPLE_INPUT.read_text())
    raw["model"]["descriptor"]["precision"] = precision
    raw["model"]["fitting_net"]["precision"] = precision
    if attn_layer is not None:
        raw["model"]["descriptor"]["attn_layer"] = attn_layer
    return normalize_config(raw)


def build_ours(precision: str = "float64", attn_layer: Optional[int] = None):
    """Our model: random (seeded) weights, statistics (davg/dstd, out_bias) from the data."""
    from dpa1.model.build import build_model

    from dpa1.data.stats import apply_statistics

    torch.manual_seed(0)
    model = build_model(example_config(precision, attn_layer)["model"])
    apply_statistics(model, stat_batches())  # davg/dstd and energy bias from the data
    return model


def stat_batches(nframes: int = 5) -> list[dict]:
    """A statistics batch of ``nframes`` water frames (as ``SystemSampler.stat_batches``)."""
    fr = [water_frame(1, frame=k * 16) for k in range(nframes)]
    n = fr[0]["atype"].size
    counts = [int((fr[0]["atype"] == t).sum()) for t in range(2)]
    return [{
        "coord": torch.from_numpy(np.concatenate([f["coord"] for f in fr])),
        "atype": torch.from_numpy(np.stack([f["atype"] for f in fr])),
        "box": torch.from_numpy(np.concatenate([f["box"] for f in fr])).reshape(-1, 3, 3),
        "natoms_vec": torch.tensor([[n, n, *counts]] * nframes),
        "energy": torch.from_numpy(np.concatenate([f["energy"] for f in fr])), "find_energy": 1.0,
    }]


VARIANTS = {
    "float64": dict(precision="float64"),
    "float32": dict(precision="float32"),
    "attn0": dict(precision="float64", attn_layer=0),
}


# === timing ================================================================================
def interleaved(fns: dict[str, Callable[[], Any]], repeat: int, warmup: int = 1,
                budget_s: Optional[float] = None) -> dict[str, dict[str, float]]:
    """Call every function in turn ``repeat`` times (after ``warmup`` rounds); best/median.

    With ``budget_s``, stops early (after at least 2 timed rounds) when the budget is spent.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for i in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
        if budget_s is not None and i >= 1 and time.perf_counter() - start > budget_s:
            break
    return {k: {"best": min(v), "median": statistics.median(v), "n": len(v)} for k, v in times.items()}


# === processes and memory ==================================================================
def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def limit_memory(gb: float) -> None:
    """Cap this process's address space, so an oversize run fails instead of the machine."""
    lim = int(gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))


def run_child(script: Path, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python script --worker ARGS`` and return the JSON of its last stdout line."""
    cmd = [sys.executable, str(script), "--worker", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"rc={proc.returncode}: {tail[0][:160]}"}
    return json.loads(lines[-1])


def emit(result: dict[str, Any]) -> None:
    """Worker side of :func:`run_child`."""
    print(json.dumps(result), flush=True)


# === reporting =============================================================================
def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        fl = next(ln for ln in text.splitlines() if ln.startswith("flags")).split()
        flags = " ".join(f for f in ("avx2", "fma", "avx512f") if f in fl)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": f"{cpu} ({os.cpu_count()} cores visible; {flags})",
        "threads": f"{torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})",
        "torch": torch.__version__, "python": platform.python_version(),
        "deepmd": deepmd_version(),
        "load": "loadavg %.1f %.1f %.1f" % os.getloadavg(),
        "date": datetime.date.today().isoformat(),
    }


def print_machine() -> None:
    for k, v in machine().items():
        print(f"# {k}: {v}")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-markdown table."""
    def cell(x: Any) -> str:
        if isinstance(x, float):
            if x != x:
                return "–"
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
        return "–" if x is None else str(x)

    cells = [[cell(x) for x in r] for r in rows]
    w = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(headers)) + " |",
           "|" + "|".join("-" * (x + 2) for x in w) + "|"]
    out += ["| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |" for r in cells]
    return "\n".join(out)


def ratio(a: Optional[float], b: Optional[float]) -> float:
    """``a / b`` or nan."""
    if a is None or b is None or not b or a != a or b != b:
        return float("nan")
    return a / b
