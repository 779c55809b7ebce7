"""Evaluation blocks of centres run side by side on a pool of CPU threads.

The energy model evaluates its centres in independent blocks (``EnergyModel.forward_lower``).
On a CPU, one block per thread with one intra-op thread each beats one block at a time on
all threads. A block's ops are small, and two threads splitting each of them gain only 1.5×
over one thread, while two single-thread evaluations side by side run at full speed each
(192-atom water, 2 cores: float32 13-14 % faster, same numbers up to the GEMMs' round-off;
see docs/benchmarks.md).

PyTorch ops and the autograd engine release the GIL, so one block's Python glue overlaps
the other's kernels. PyTorch's thread counts (OpenMP, MKL) are per thread: a worker's
setting leaves the caller's alone (only the default of threads started later follows the
last ``torch.set_num_threads``, and :func:`map_blocks` puts the caller's count back there).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")

_pools: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_lock = threading.Lock()
# A forked child inherits the dict but not the threads behind it.
os.register_at_fork(after_in_child=_pools.clear)


def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    with _lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="dpa1-block")
            _pools[workers] = pool
        return pool


def plan_blocks(ncentres: int, chunk: int) -> tuple[int, int]:
    """``(chunk, workers)`` for ``ncentres`` centres that one thread would take ``chunk`` at a time.

    Threaded blocks are half as large: on two threads, the two blocks in flight hold what one
    block of ``chunk`` does (each further thread adds one block, ~0.1 GB in float64). The
    workers are the caller's intra-op threads, at most one per block; with one worker the
    caller's ``chunk`` is kept.
    """
    half = max(1, chunk // 2)
    workers = min(torch.get_num_threads(), (ncentres + half - 1) // half)
    return (half, workers) if workers > 1 else (chunk, 1)


def map_blocks(fn: Callable[[int], T], starts: list[int], workers: int) -> list[T]:
    """``[fn(s) for s in starts]``, ``workers`` blocks at a time, in order.

    Each call runs with the caller's grad mode and ``threads // workers`` intra-op threads.
    An exception in any block is re-raised here.
    """
    grad_on = torch.is_grad_enabled()
    threads = torch.get_num_threads()
    intra = max(1, threads // workers)

    def run(start: int) -> T:
        torch.set_num_threads(intra)  # this worker thread's own setting
        with torch.set_grad_enabled(grad_on):
            return fn(start)

    try:
        return list(_pool(workers).map(run, starts))
    finally:
        # set_num_threads also sets the default of threads started later: give it back.
        torch.set_num_threads(threads)
