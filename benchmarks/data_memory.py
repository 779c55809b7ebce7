"""Memory of opening and sampling a large ``deepmd/npy`` system (not a test).

Writes a 10⁵-frame and a 10³-frame system of 8 atoms (in chunks, so writing is flat
too), then, in a fresh process per system: opens it (including the chunked NaN/inf
scan), draws training batches and the statistics sample. It prints the peak resident
memory of each run above the memory right after the imports, and the ratio between the
two systems, which should be close to 1.

Memory is reported three ways (Linux ``/proc/self/status``):

- ``peak``: ``VmHWM − VmRSS`` after the imports: everything, including file pages of the
  memory-mapped arrays that the draws happened to touch;
- ``anon``: anonymous memory (``RssAnon``) at the end: what the process allocated;
- ``tracemalloc``: peak of Python/NumPy allocations during the run.

Usage: ``python benchmarks/data_memory.py [--frames 100000] [--small 1000] [--batches 2000]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NATOMS = 8


def write_system(path: Path, nframes: int, chunk: int = 20000) -> Path:
    """An fcc-like 8-atom periodic system with random labels, written chunk by chunk."""
    from numpy.lib.format import open_memmap

    path.mkdir(parents=True, exist_ok=True)
    (path / "type.raw").write_text("0 0 0 0 1 1 1 1\n")
    (path / "type_map.raw").write_text("Cu\nNi\n")
    sd = path / "set.000"
    sd.mkdir(exist_ok=True)
    widths = {"coord": NATOMS * 3, "box": 9, "energy": None, "force": NATOMS * 3, "virial": 9}
    files = {
        k: open_memmap(
            sd / f"{k}.npy",
            mode="w+",
            dtype=np.float64,
            shape=(nframes,) if w is None else (nframes, w),
        )
        for k, w in widths.items()
    }
    base = (
        np.array(
            [
                [0, 0, 0],
                [0, 0.5, 0.5],
                [0.5, 0, 0.5],
                [0.5, 0.5, 0],
                [0, 0, 0.5],
                [0, 0.5, 0],
                [0.5, 0, 0],
                [0.5, 0.5, 0.5],
            ]
        )
        * 3.6
    )
    rng = np.random.default_rng(0)
    for a in range(0, nframes, chunk):
        n = min(chunk, nframes - a)
        files["coord"][a : a + n] = (base + rng.normal(scale=0.05, size=(n, NATOMS, 3))).reshape(
            n, -1
        )
        files["box"][a : a + n] = np.eye(3).reshape(9) * 3.6
        files["energy"][a : a + n] = rng.normal(-30, 1, size=n)
        files["force"][a : a + n] = rng.normal(size=(n, NATOMS * 3))
        files["virial"][a : a + n] = rng.normal(size=(n, 9))
    for f in files.values():
        f.flush()
    del files
    return path


def _status() -> dict[str, int]:
    """Memory lines of /proc/self/status in bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def measure(path: str, batches: int, batch_size: int) -> dict[str, float]:
    """Run in a fresh process: open + scan, draw batches, take the statistics sample."""
    import tracemalloc

    import torch  # noqa: F401  (imported before the baseline, like in training)

    from dpa1.data.loader import SystemSampler
    from dpa1.data.system import DeepmdSystem

    base = _status()
    tracemalloc.start()
    t0 = time.perf_counter()
    system = DeepmdSystem(path, ["Cu", "Ni"])  # includes the chunked NaN/inf scan
    t_open = time.perf_counter() - t0
    sampler = SystemSampler([system], batch_size, seed=0)
    t0 = time.perf_counter()
    for _ in range(batches):
        sampler.next_batch()
    t_draw = time.perf_counter() - t0
    sampler.stat_batches(nbatch=10)
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    end = _status()
    return {
        "nframes": system.nframes,
        "open_s": t_open,
        "draw_ms_per_batch": 1e3 * t_draw / max(1, batches),
        "peak": end["VmHWM"] - base["VmRSS"],
        "anon": end["RssAnon"] - base["RssAnon"],
        "file": end["RssFile"] - base["RssFile"],
        "tracemalloc": traced,
        "baseline": base["VmRSS"],
    }


def _run_child(path: Path, batches: int, batch_size: int) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        str(path),
        "--batches",
        str(batches),
        "--batch-size",
        str(batch_size),
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--dir", default=None, help="where to write the systems (default: a temp dir)"
    )
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.batches, args.batch_size)))
        return

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = []
        for n in (args.small, args.frames):
            t0 = time.perf_counter()
            path = write_system(Path(tmp) / f"sys_{n}", n)
            size = sum(f.stat().st_size for f in path.rglob("*.npy"))
            print(f"wrote {n} frames ({size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
            rows.append(_run_child(path, args.batches, args.batch_size))
    mib = 2**20
    print(
        f"\n{args.batches} batches of {args.batch_size} frames + the statistics sample, per system"
    )
    print(
        f"{'frames':>8} {'open+scan s':>11} {'ms/batch':>9} {'peak MiB':>9} {'anon MiB':>9} "
        f"{'file MiB':>9} {'tracemalloc MiB':>16}"
    )
    for r in rows:
        print(
            f"{r['nframes']:>8} {r['open_s']:>11.3f} {r['draw_ms_per_batch']:>9.3f} "
            f"{r['peak'] / mib:>9.2f} {r['anon'] / mib:>9.2f} {r['file'] / mib:>9.2f} "
            f"{r['tracemalloc'] / mib:>16.3f}"
        )
    small, large = rows
    print(f"(baseline after imports: {large['baseline'] / mib:.0f} MiB; what grows with the "
          "frame count is index bookkeeping, 8 bytes per frame per shuffled order, and the "
          "scan's fixed 2 MiB chunk once the files exceed it)")
    for key in ("peak", "anon", "tracemalloc"):
        ratio = (large[key] + mib) / (
            small[key] + mib
        )  # +1 MiB: a ratio of near-zero numbers is noise
        print(f"ratio {args.frames} / {args.small} frames, {key:<11}: {ratio:.2f}")


if __name__ == "__main__":
    main()
