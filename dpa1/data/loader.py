"""Batches and system sampling (docs/design.md, "Batches and sampling") and the statistics sample
(docs/design.md, "Statistics").

Every batch comes from one system. Each system walks through its frames in a
shuffled order, reshuffled every pass, ``batch_size`` frames at a time; the last
batch of a pass may be shorter (no ``drop_last``). Each step picks the system at
random with probabilities from ``auto_prob`` or ``sys_probs``.

Randomness: with a seed, everything is reproducible. The shuffles of a system do not
depend on the rank, and rank ``r`` of ``world_size`` takes every ``world_size``-th
frame of each shuffled pass (as ``DistributedSampler``), so ranks see disjoint frames;
the choice of system is seeded with ``(seed, rank)``, so ranks also differ there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from dpa1.data.system import DEFAULT_LABELS, DeepmdSystem, LabelRequest

__all__ = [
    "SystemSampler",
    "resolve_batch_sizes",
    "system_probabilities",
    "to_torch",
]

BatchSize = int | str | Sequence[int]


# === batch size (docs/design.md, "Batches and sampling") ==========================================
def resolve_batch_sizes(batch_size: BatchSize, natoms: Sequence[int]) -> list[int | None]:
    """Per-system batch size; ``None`` marks a system dropped by ``"filter:N"``.

    ``int`` = the same for all; list = one per system; ``"auto"`` = ``"auto:32"``;
    ``"auto:N"`` = smallest ``bs`` with ``bs*natoms >= N``; ``"max:N"`` =
    ``max(1, N // natoms)``; ``"filter:N"`` = like ``max:N`` after dropping systems
    with ``natoms > N``.
    """
    n = len(natoms)
    if isinstance(batch_size, bool):
        raise ValueError(f"batch_size must be an int, a list or a rule string, got {batch_size!r}")
    if isinstance(batch_size, (int, np.integer)):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return [int(batch_size)] * n
    if not isinstance(batch_size, str):
        sizes = [int(b) for b in batch_size]
        if len(sizes) != n:
            raise ValueError(f"batch_size lists {len(sizes)} values for {n} systems")
        if min(sizes, default=1) < 1:
            raise ValueError(f"batch_size entries must be >= 1, got {sizes}")
        return list(sizes)
    rule, _, value = batch_size.partition(":")
    if rule == "auto" and not value:
        value = "32"
    if rule not in ("auto", "max", "filter") or not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"unsupported batch_size {batch_size!r}; use an int, a list, 'auto', 'auto:N', "
            "'max:N' or 'filter:N'")
    limit = int(value)
    if rule == "auto":
        return [-(-limit // na) for na in natoms]  # ceil: the smallest bs with bs*natoms >= N
    sizes: list[int | None] = [max(1, limit // na) for na in natoms]
    if rule == "filter":
        sizes = [None if na > limit else bs for na, bs in zip(natoms, sizes, strict=True)]
        if all(s is None for s in sizes):
            raise ValueError(f"batch_size {batch_size!r}: every system has more than {limit} atoms")
    return sizes


# === system probabilities (docs/design.md, "Batches and sampling") ================================
def system_probabilities(
    nbatches: Sequence[int],
    auto_prob: str = "prob_sys_size",
    sys_probs: Sequence[float] | None = None,
) -> np.ndarray:
    """Probability of picking each system, ``(nsys,)``.

    Args:
        nbatches: batches per pass of each system, ``ceil(nframes / bs)``.
        auto_prob: ``"prob_sys_size"`` (∝ nbatch), ``"prob_uniform"``, or
            ``"prob_sys_size;a:b:w;..."``: systems ``[a, b)`` share weight ``w``
            (normalised over the blocks) in proportion to nbatch.
        sys_probs: explicit probabilities (wins over ``auto_prob``); negative entries
            share the probability left over, in proportion to nbatch.
    """
    nb = np.asarray(nbatches, dtype=np.float64)
    nsys = nb.size
    if sys_probs is not None:
        return _fill_sys_probs(np.asarray(sys_probs, dtype=np.float64), nb)
    if auto_prob == "prob_uniform":
        return np.full(nsys, 1.0 / nsys)
    if auto_prob == "prob_sys_size":
        return nb / nb.sum()
    if not auto_prob.startswith("prob_sys_size;"):
        raise ValueError(
            f"unknown auto_prob {auto_prob!r}; use 'prob_sys_size', 'prob_uniform' or "
            "'prob_sys_size;a:b:w;...'")
    probs = np.zeros(nsys)
    blocks = [b for b in auto_prob.split(";")[1:] if b]
    weights = []
    for block in blocks:
        try:
            a, b, w = block.split(":")
            a, b, w = int(a), int(b), float(w)
        except ValueError:
            raise ValueError(f"auto_prob block {block!r} is not 'start:end:weight'") from None
        if not 0 <= a < b <= nsys:
            raise ValueError(f"auto_prob block {block!r}: need 0 <= start < end <= {nsys} systems")
        if w < 0:
            raise ValueError(f"auto_prob block {block!r}: the weight must be >= 0")
        weights.append((a, b, w))
    total = sum(w for _, _, w in weights)
    if not weights or total <= 0:
        raise ValueError(f"auto_prob {auto_prob!r}: no block with a positive weight")
    for a, b, w in weights:
        probs[a:b] += w / total * nb[a:b] / nb[a:b].sum()
    return probs


def _fill_sys_probs(p: np.ndarray, nb: np.ndarray) -> np.ndarray:
    if p.size != nb.size:
        raise ValueError(f"sys_probs has {p.size} entries for {nb.size} systems")
    assigned = p >= 0
    rest = 1.0 - p[assigned].sum()
    if rest < -1e-8:
        raise ValueError(f"sys_probs: the given probabilities sum to {1 - rest:g} > 1")
    out = np.where(assigned, p, 0.0)
    if not assigned.all():
        out[~assigned] = max(rest, 0.0) * nb[~assigned] / nb[~assigned].sum()
    elif not np.isclose(rest, 0.0):
        raise ValueError(
            f"sys_probs sum to {1 - rest:g}; they must sum to 1 (or mark systems with -1 to "
            "share the rest)")
    return out


# === conversion to tensors ==============================================================
def to_torch(frames: dict[str, Any], dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """numpy frames → tensors: floats in ``dtype`` (energy in float64), ints in int64;
    ``find_*`` stay Python floats."""
    out: dict[str, Any] = {}
    for key, value in frames.items():
        if key.startswith("find_"):
            out[key] = float(value)
        elif isinstance(value, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(value))
            if t.is_floating_point():
                t = t.to(torch.float64 if key == "energy" else dtype)
            else:
                t = t.to(torch.int64)
            out[key] = t
        else:
            out[key] = value
    return out


# === the sampler =======================================================================
class SystemSampler:
    """Draws training batches from several systems (docs/design.md, "Batches and sampling").

    Args:
        systems: system directories or opened :class:`DeepmdSystem` objects.
        batch_size: see :func:`resolve_batch_sizes`.
        type_map: the model's element names (used when opening directories).
        auto_prob, sys_probs: see :func:`system_probabilities`; block indices and
            ``sys_probs`` refer to the systems left after ``"filter:N"``.
        seed: makes every draw reproducible (``None`` = fresh entropy).
        labels: labels to return (see :meth:`DeepmdSystem.get_frames`).
        dtype: float type of the returned tensors (energy stays float64).
        rank, world_size: this process among data-parallel workers.

    Attributes:
        systems, batch_sizes, nbatches (``ceil(nframes/bs)``), probs.
    """

    def __init__(
        self,
        systems: Sequence[str | DeepmdSystem],
        batch_size: BatchSize = "auto",
        *,
        type_map: Sequence[str] | None = None,
        auto_prob: str = "prob_sys_size",
        sys_probs: Sequence[float] | None = None,
        seed: int | None = None,
        labels: Iterable[LabelRequest] = DEFAULT_LABELS,
        dtype: torch.dtype = torch.float64,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        opened = [s if isinstance(s, DeepmdSystem) else DeepmdSystem(s, type_map) for s in systems]
        if not opened:
            raise ValueError("no systems to sample from")
        sizes = resolve_batch_sizes(batch_size, [s.natoms for s in opened])
        dropped = [s.path for s, b in zip(opened, sizes, strict=True) if b is None]
        if dropped:
            warnings.warn(f"batch_size {batch_size!r} drops {len(dropped)} systems with too many "
                          "atoms: " + ", ".join(dropped), stacklevel=2)
        self.systems = [s for s, b in zip(opened, sizes, strict=True) if b is not None]
        self.batch_sizes = [b for b in sizes if b is not None]
        self.rank, self.world_size = rank, world_size
        self.labels = list(labels)
        self.dtype = dtype
        self.nbatches = [math.ceil(self._shard_len(s.nframes) / b)
                         for s, b in zip(self.systems, self.batch_sizes, strict=True)]
        self.probs = system_probabilities(self.nbatches, auto_prob, sys_probs)

        # Shuffles are common to all ranks (disjoint shards); the choice of system is not.
        if seed is None and world_size > 1:
            seed = 0  # ranks must agree on the shuffles, like DistributedSampler's default
        root = np.random.SeedSequence(None if seed is None else _seed_words(seed))
        common = np.random.SeedSequence(root.entropy, spawn_key=(0,))
        self._choice_rng = np.random.default_rng(
            np.random.SeedSequence(root.entropy, spawn_key=(1, rank)))
        self._stat_seq = np.random.SeedSequence(root.entropy, spawn_key=(2,))
        self._streams = [
            _FrameStream(s.nframes, np.random.default_rng(seq), rank, world_size)
            for s, seq in zip(self.systems, common.spawn(len(self.systems)), strict=True)
        ]

    def _shard_len(self, nframes: int) -> int:
        return math.ceil(nframes / self.world_size)

    @property
    def nsystems(self) -> int:
        return len(self.systems)

    @property
    def steps_per_epoch(self) -> int:
        """``ceil(max_i nbatch_i / p_i)``: steps for one expected pass over the data
        (used to turn ``numb_epoch`` into steps, docs/design.md, "Training loop")."""
        ratios = [nb / p for nb, p in zip(self.nbatches, self.probs, strict=True) if p > 0]
        return math.ceil(max(ratios))

    def next_batch(self) -> dict[str, Any]:
        """The next batch of a randomly chosen system: tensors plus ``"sid"`` (its index)."""
        sid = int(self._choice_rng.choice(self.nsystems, p=self.probs))
        return self.system_batch(sid)

    def system_batch(self, sid: int) -> dict[str, Any]:
        """The next batch of system ``sid`` (starting a new shuffled pass when needed)."""
        idx = self._streams[sid].take(self.batch_sizes[sid])
        return self._load(sid, idx)

    def stat_batches(self, nbatch: int = 10) -> list[dict[str, Any]]:
        """Statistics sample (docs/design.md, "Statistics"): per system, the first ``nbatch``
        batches of a fresh
        shuffled pass (fewer if the system has fewer), merged into one dict per system."""
        out = []
        seqs = self._stat_seq.spawn(self.nsystems)
        for sid, (sys_, seq) in enumerate(zip(self.systems, seqs, strict=True)):
            perm = np.random.default_rng(seq).permutation(sys_.nframes)
            out.append(self._load(sid, perm[: nbatch * self.batch_sizes[sid]]))
        return out

    def iter_batches(self) -> Iterator[dict[str, Any]]:
        """Every frame once, deterministically: system by system, in file order, this
        rank's share only (every ``world_size``-th frame). For validation and tests."""
        for sid, sys_ in enumerate(self.systems):
            frames = np.arange(sys_.nframes)[self.rank :: self.world_size]
            bs = self.batch_sizes[sid]
            for a in range(0, frames.size, bs):
                yield self._load(sid, frames[a : a + bs])

    # --- restarts: the exact position of every random stream ---------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the sampling stands (RNG states, positions in the current passes).

        Only plain Python values and tensors, so a checkpoint holding it loads with
        ``torch.load(weights_only=True)``.
        """
        return {
            "nframes": [s.nframes for s in self.systems],
            "batch_sizes": list(self.batch_sizes),
            "rank": self.rank,
            "world_size": self.world_size,
            "choice_rng": _rng_state(self._choice_rng),
            "streams": [stream.state_dict() for stream in self._streams],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken (same systems and batch sizes).

        With another ``rank``/``world_size`` the saved positions do not apply: sampling
        then starts afresh (with a warning).
        """
        if len(state["streams"]) != len(self._streams):
            raise ValueError(
                f"sampler state has {len(state['streams'])} systems, this run has "
                f"{len(self._streams)}: restart with the same training systems"
            )
        now = ([s.nframes for s in self.systems], list(self.batch_sizes))
        saved = (list(state.get("nframes", now[0])), list(state.get("batch_sizes", now[1])))
        if now != saved:
            raise ValueError(
                f"the sampler state was saved for systems with nframes {saved[0]} and batch sizes "
                f"{saved[1]}, but the data now give {now[0]} and {now[1]}"
            )
        where = (state.get("rank", self.rank), state.get("world_size", self.world_size))
        if where != (self.rank, self.world_size):
            warnings.warn(
                f"sampler state saved on rank {where[0]} of {where[1]}, restored on rank "
                f"{self.rank} of {self.world_size}: sampling starts afresh",
                stacklevel=2,
            )
            return
        _set_rng_state(self._choice_rng, state["choice_rng"])
        for stream, st in zip(self._streams, state["streams"], strict=True):
            stream.load_state_dict(st)

    def _load(self, sid: int, idx: np.ndarray) -> dict[str, Any]:
        frames = self.systems[sid].get_frames(idx, self.labels)
        batch = to_torch(frames, self.dtype)
        batch["sid"] = sid
        return batch


class _FrameStream:
    """Frame indices of one system: shuffled passes, this rank's share, in batches."""

    def __init__(self, nframes: int, rng: np.random.Generator, rank: int, world_size: int) -> None:
        self.nframes, self.rng = nframes, rng
        self.rank, self.world_size = rank, world_size
        self.order = np.empty(0, dtype=np.int64)
        self.pos = 0

    def take(self, bs: int) -> np.ndarray:
        if self.pos >= self.order.size:
            self._new_pass()
        idx = self.order[self.pos : self.pos + bs]
        self.pos += idx.size
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": _rng_state(self.rng),
            "order": torch.from_numpy(self.order.copy()),
            "pos": self.pos,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _set_rng_state(self.rng, state["rng"])
        self.order = torch.as_tensor(state["order"]).numpy().astype(np.int64)
        self.pos = int(state["pos"])

    def _new_pass(self) -> None:
        perm = self.rng.permutation(self.nframes)
        # Pad by wrapping so every rank gets the same number of frames (DistributedSampler).
        total = math.ceil(self.nframes / self.world_size) * self.world_size
        perm = np.resize(perm, total)
        self.order = perm[self.rank :: self.world_size]
        self.pos = 0


def _seed_words(seed: int) -> list[int]:
    """SeedSequence wants non-negative words; keep negative seeds distinct."""
    seed = int(seed)
    return [abs(seed), 1 if seed < 0 else 0]


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    # PCG64 state words exceed 64 bits: keep them as decimal strings (weights_only-safe).
    st = rng.bit_generator.state
    return {
        "bit_generator": st["bit_generator"],
        "state": str(st["state"]["state"]),
        "inc": str(st["state"]["inc"]),
        "has_uint32": int(st["has_uint32"]),
        "uinteger": int(st["uinteger"]),
    }


def _set_rng_state(rng: np.random.Generator, saved: dict[str, Any]) -> None:
    rng.bit_generator.state = {
        "bit_generator": saved["bit_generator"],
        "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
        "has_uint32": saved["has_uint32"],
        "uinteger": saved["uinteger"],
    }
