"""Shared helpers for the benchmark scripts (not tests).

- threads: ``OMP_NUM_THREADS=2`` is set before torch is imported, then ``torch.set_num_threads(2)``
  (``$DPA1_BENCH_THREADS`` overrides the 2);
- water frames from ``examples/water/data/data_0`` (192 atoms), replicated n×n×n;
- the example model (``examples/water/input.json``) with overrides, ours and DeePMD-kit's
  (the same weights, converted through DeePMD's serialized dictionary);
- interleaved best-of-N timing, peak memory of child processes (``ru_maxrss``);
- devices (``--device cpu|cuda``): synchronisation around timed calls, GPU peak memory,
  DeePMD-kit's own device choice (``deepmd.pt.utils.env.DEVICE``) checked against ours;
- the machine description and DeePMD-kit's reference numbers measured on the 2-core machine.

DeePMD-kit is measured side by side when ``import deepmd.pt`` works in the interpreter
running the script (e.g. ``/tmp/dpvenv/bin/python benchmarks/inference.py``); otherwise
DeePMD-kit's reference numbers measured on the 2-core machine are printed, labelled "reference".
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

NUM_THREADS = int(os.environ.get("DPA1_BENCH_THREADS", "2"))  # 2: the reference machine's cores
os.environ.setdefault("OMP_NUM_THREADS", str(NUM_THREADS))
os.environ.setdefault("DP_INTRA_OP_PARALLELISM_THREADS", str(NUM_THREADS))
os.environ.setdefault("DP_INTER_OP_PARALLELISM_THREADS", "1")
os.environ.setdefault("DP_INFER_BATCH_SIZE", str(1 << 30))  # never let DeePMD split a frame

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(NUM_THREADS)
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

ROOT = Path(__file__).resolve().parents[1]
# The water data travel with the repository; DPA1_SHARED (a folder holding data/water, as
# gpu_table.sh sets up) overrides them.
if "DPA1_SHARED" in os.environ:
    WATER = Path(os.environ["DPA1_SHARED"]) / "data" / "water" / "data_0"
else:
    WATER = ROOT / "examples" / "water" / "data" / "data_0"
EXAMPLE_INPUT = ROOT / "examples" / "water" / "input.json"

# DeePMD-kit 3.2.0's reference numbers measured on the 2-core machine (PyTorch backend, batch 1).
REFERENCE = {
    "train_step_s": {"float64": 1.97, "float32": 1.05, "attn0": 0.165},
    "infer_192_s": {"float64": 0.57, "float32": 0.32},  # 0.55–0.59 s for float64
    # attn_layer 0 model: atoms -> (ms/atom, peak GB)
    "attn0_scaling": {192: (1.4, 0.8), 1536: (1.2, 2.7), 5184: (3.8, 23.6)},
}
TARGETS = {"infer_f64": 2.0, "infer_f32": 3.0, "train": 1.5, "linear": 1.3, "mem_12288_gb": 3.0}


# === devices ===============================================================================
def resolve_device(name: str) -> torch.device:
    """``--device`` → a concrete device (``cuda`` → ``cuda:<current>``); exits with a clear
    message when CUDA is asked for but torch sees none."""
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {name}: torch {torch.__version__} sees no CUDA device "
                             f"(torch.version.cuda = {torch.version.cuda})")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def set_deepmd_device(dev: torch.device) -> None:
    """Ask DeePMD-kit for our device before it is first imported.

    ``deepmd.pt.utils.env`` picks ``DEVICE`` at import: cpu if ``$DEVICE == "cpu"`` or no
    CUDA, else ``cuda:$LOCAL_RANK``. Call this before :func:`have_deepmd`; the result is
    checked by :func:`deepmd_device_note`. The environment is inherited by child processes.
    """
    if dev.type == "cpu":
        os.environ["DEVICE"] = "cpu"
    elif dev.type == "cuda":
        if os.environ.get("DEVICE") == "cpu":
            del os.environ["DEVICE"]
        if dev.index and "LOCAL_RANK" not in os.environ:
            os.environ["LOCAL_RANK"] = str(dev.index)


def same_device(a: torch.device, b: torch.device) -> bool:
    def norm(d: torch.device) -> tuple[str, int]:
        return d.type, (d.index or 0) if d.type == "cuda" else 0

    return norm(torch.device(a)) == norm(torch.device(b))


def deepmd_device() -> torch.device | None:
    """The device DeePMD-kit put itself on, or None without DeePMD-kit."""
    if not have_deepmd():
        return None
    from deepmd.pt.utils import env

    return torch.device(env.DEVICE)


def deepmd_device_note(dev: torch.device) -> str:
    """'' when DeePMD-kit (if any) runs on ``dev``, else a warning for the output."""
    dd = deepmd_device()
    if dd is None or same_device(dd, dev):
        return ""
    return (f"WARNING: DeePMD-kit runs on {dd} (deepmd.pt.utils.env.DEVICE), ours on {dev}: "
            "the side-by-side ratios compare different devices")


def make_sync(dev: torch.device) -> Callable[[], None]:
    """A no-op on cpu; ``torch.cuda.synchronize(dev)`` on cuda (kernels run asynchronously:
    a timed call must end with the device idle)."""
    if torch.device(dev).type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def is_cuda(dev: Any) -> bool:
    return torch.device(dev).type == "cuda"


def gpu_reset_peak(dev: torch.device) -> None:
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)


def gpu_peak_gb(dev: torch.device) -> float:
    """Peak bytes allocated by torch's caching allocator on ``dev`` since the last reset (GB)."""
    torch.cuda.synchronize(dev)
    return torch.cuda.max_memory_allocated(dev) / 2**30


def model_device(net: torch.nn.Module) -> torch.device:
    for t in net.parameters():
        return t.device
    for t in net.buffers():
        return t.device
    return torch.device("cpu")


# === DeePMD-kit ============================================================================
_DEEPMD: bool | None = None


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
    """DeePMD-kit's EnergyModel with the same weights (through the serialized dict, docs/design.md,
    "Model file (.dp)"),
    on DeePMD-kit's own device (:func:`deepmd_device`)."""
    from deepmd.pt.model.model import BaseModel

    from dpa1.io.serialize import model_to_dict

    dpm = BaseModel.deserialize(copy.deepcopy(model_to_dict(model)))
    return dpm.to(deepmd_device())


def deepmd_train_step(
    dpm: torch.nn.Module, loss_cfg: dict[str, Any], start_lr: float
) -> Callable[..., float]:
    """DeePMD-kit's training step as ``dp --pt train`` runs it: ``EnergyStdLoss`` and Adam
    (betas 0.9/0.999, ``zero_grad(set_to_none=True)``) at a given learning rate.

    Returns ``step(coord (1, N, 3), atype (1, N), box (1, 9), energy (1, 1), force (1, N, 3), lr)
    -> loss`` (torch tensors, moved to DeePMD-kit's device) that updates ``dpm`` in place.
    """
    from deepmd.pt.loss import EnergyStdLoss

    dpm.train()
    loss_fn = EnergyStdLoss(starter_learning_rate=start_lr, **loss_cfg)
    opt = torch.optim.Adam(
        [q for q in dpm.parameters() if q.requires_grad], lr=start_lr, betas=(0.9, 0.999)
    )

    dev = deepmd_device()

    def step(coord, atype, box, energy, force, lr: float) -> float:
        coord, atype, box, energy, force = (x.to(dev) for x in (coord, atype, box, energy, force))
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
    on the first ``nframes`` frames of ``data_2`` (inputs on each model's device)."""
    system = WATER.parent / "data_2"
    out = {}
    for name, net in models.items():
        net.eval()
        dev = model_device(net)
        de, df = [], []
        for k in range(nframes):
            d = water_frame(1, frame=k, system=system)
            pred = net(
                torch.from_numpy(d["coord"]).to(dev),
                torch.from_numpy(d["atype"]).reshape(1, -1).to(dev),
                torch.from_numpy(d["box"]).reshape(1, 9).to(dev),
            )
            n = d["atype"].size
            de.append(
                (float(pred["energy"].detach().reshape(-1)[0]) - float(d["energy"][0, 0])) / n
            )
            df.append(
                (
                    pred["force"].detach().cpu().numpy().reshape(-1, 3) - d["force"].reshape(-1, 3)
                ).ravel()
            )
        out[name] = {
            "rmse_e_atom": float(np.sqrt(np.mean(np.square(de)))),
            "rmse_f": float(np.sqrt(np.mean(np.square(np.concatenate(df))))),
            "mean_e_atom": float(np.mean(de)),
        }
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
    shifts = np.array(
        [[i, j, k] for i in range(rep) for j in range(rep) for k in range(rep)], dtype=float
    )
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
def example_config(
    precision: str = "float64", attn_layer: int | None = None, descriptor: str | None = None
) -> dict[str, Any]:
    """The normalised example input (``examples/water/input.json``) with overrides
    (``descriptor``: the descriptor ``type``, e.g. ``se_atten_v2``)."""
    from dpa1.io.config import normalize_config

    raw = json.loads(EXAMPLE_INPUT.read_text())
    raw["model"]["descriptor"]["precision"] = precision
    raw["model"]["fitting_net"]["precision"] = precision
    if attn_layer is not None:
        raw["model"]["descriptor"]["attn_layer"] = attn_layer
    if descriptor is not None:
        raw["model"]["descriptor"]["type"] = descriptor
    return normalize_config(raw)


def build_ours(
    precision: str = "float64", attn_layer: int | None = None, descriptor: str | None = None
):
    """Our model: random (seeded) weights, statistics (davg/dstd, out_bias) from the data."""
    from dpa1.data.stats import apply_statistics
    from dpa1.model.build import build_model

    torch.manual_seed(0)
    model = build_model(example_config(precision, attn_layer, descriptor)["model"])
    apply_statistics(model, stat_batches())  # davg/dstd and energy bias from the data
    return model


def stat_batches(nframes: int = 5) -> list[dict]:
    """A statistics batch of ``nframes`` water frames (as ``SystemSampler.stat_batches``)."""
    fr = [water_frame(1, frame=k * 16) for k in range(nframes)]
    n = fr[0]["atype"].size
    counts = [int((fr[0]["atype"] == t).sum()) for t in range(2)]
    return [
        {
            "coord": torch.from_numpy(np.concatenate([f["coord"] for f in fr])),
            "atype": torch.from_numpy(np.stack([f["atype"] for f in fr])),
            "box": torch.from_numpy(np.concatenate([f["box"] for f in fr])).reshape(-1, 3, 3),
            "natoms_vec": torch.tensor([[n, n, *counts]] * nframes),
            "energy": torch.from_numpy(np.concatenate([f["energy"] for f in fr])),
            "find_energy": 1.0,
        }
    ]


VARIANTS = {
    "float64": dict(precision="float64"),
    "float32": dict(precision="float32"),
    "attn0": dict(precision="float64", attn_layer=0),
    "v2": dict(precision="float64", descriptor="se_atten_v2"),  # strip type embedding, smooth
}


# === timing ================================================================================
def interleaved(
    fns: dict[str, Callable[[], Any]],
    repeat: int,
    warmup: int = 1,
    budget_s: float | None = None,
    sync: Callable[[], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Call every function in turn ``repeat`` times (after ``warmup`` rounds); best/median.

    With ``budget_s``, stops early (after at least 2 timed rounds) when the budget is spent.
    ``sync`` (e.g. :func:`make_sync`) runs before and after every timed call.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for i in range(repeat):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
        if budget_s is not None and i >= 1 and time.perf_counter() - start > budget_s:
            break
    return {
        k: {"best": min(v), "median": statistics.median(v), "n": len(v)} for k, v in times.items()
    }


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
    """Cap this process's address space, so an oversize run fails instead of the machine.

    Not with CUDA: the driver reserves far more address space than memory, and
    ``cuInit`` fails under such a cap.
    """
    lim = int(gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))


def run_child(script: Path, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python script --worker ARGS`` and return the JSON of its last stdout line."""
    cmd = [sys.executable, str(script), "--worker", *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        text = (proc.stderr or proc.stdout).strip().splitlines()
        tail = text[-1:] or ["?"]
        print(
            f"# child {' '.join(args)} failed (rc={proc.returncode}); its last lines:",
            *text[-15:],
            sep="\n#   ",
            file=sys.stderr,
            flush=True,
        )
        return {"error": f"rc={proc.returncode}: {tail[0][:160]}"}
    return json.loads(lines[-1])


def emit(result: dict[str, Any]) -> None:
    """Worker side of :func:`run_child`."""
    print(json.dumps(result), flush=True)


# === reporting =============================================================================
def gpu_description(dev: torch.device) -> str:
    p = torch.cuda.get_device_properties(dev)
    return (
        f"{torch.cuda.get_device_name(dev)} ({dev}; compute capability {p.major}.{p.minor}, "
        f"{p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs; CUDA "
        f"{torch.version.cuda}; "
        f"float32 matmul precision {torch.get_float32_matmul_precision()!r})"
    )


def machine(device: torch.device | None = None) -> dict[str, str]:
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
    out = {
        "cpu": f"{cpu} ({os.cpu_count()} cores visible; {flags})",
        "threads": f"{torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "deepmd": deepmd_version(),
        "load": "loadavg {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()),
        "date": datetime.date.today().isoformat(),
    }
    if device is not None and (is_cuda(device) or deepmd_device_note(device)):
        out["device"] = str(device)
        if is_cuda(device):
            out["gpu"] = gpu_description(device)
        if have_deepmd():
            dd = deepmd_device()
            out["deepmd device"] = f"{dd}" + (
                " (same as ours)" if same_device(dd, device) else f" (NOT ours: {device})"
            )
    return out


def print_machine(device: torch.device | None = None) -> None:
    for k, v in machine(device).items():
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
    w = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    out = [
        "| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(headers)) + " |",
        "|" + "|".join("-" * (x + 2) for x in w) + "|",
    ]
    out += ["| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |" for r in cells]
    return "\n".join(out)


def ratio(a: float | None, b: float | None) -> float:
    """``a / b`` or nan."""
    if a is None or b is None or not b or a != a or b != b:
        return float("nan")
    return a / b
