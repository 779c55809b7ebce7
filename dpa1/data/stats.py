"""Data statistics: neighbour counts for ``sel = "auto"`` (docs/design.md, "Automatic sel") and the
statistics installed into a fresh model (docs/design.md, "Statistics"): descriptor
``davg``/``dstd``, the
energy bias ``out_bias``/``out_std`` and the fparam/aparam normalisation.

The statistics functions take *batches*: dicts as returned by
:meth:`dpa1.data.loader.SystemSampler.stat_batches` (tensors or numpy arrays) with
``coord (nf, nloc, 3)``, ``atype (nf, nloc)``, optional ``box (nf, 3, 3)``,
``natoms_vec (nf, 2 + ntypes)``, ``energy (nf, 1)``, ``find_energy`` and, when the
model needs them, ``fparam``/``aparam`` with their ``find_`` flags.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from dpa1.data.errors import DataError
from dpa1.data.system import DeepmdSystem
from dpa1.model.env_mat import env_matrix
from dpa1.model.neighbor import _frame_pairs, build_extended_system, overlap_distance

__all__ = [
    "apply_statistics",
    "change_energy_bias",
    "compute_descriptor_stats",
    "compute_energy_bias",
    "set_energy_bias",
    "compute_param_stats",
    "descriptor_stats_from_sums",
    "descriptor_sums",
    "neighbor_stat",
    "param_stats_from_sums",
    "param_sums",
    "resolve_sel",
]

Batch = Mapping[str, Any]
# DeePMD's starting value of the squared minimum distance: results are capped at 10 Å.
MIN_DIST_CAP = 10.0
# dstd protection and the value for a type absent from the sample (docs/design.md,
# "Descriptor statistics").
DSTD_PROTECTION = 1e-2
DSTD_ABSENT = 0.1


# === neighbour statistics (docs/design.md, "Automatic sel") =======================================
def neighbor_stat(
    systems: Sequence[str | DeepmdSystem],
    rcut: float,
    type_map: Sequence[str] | None = None,
    *,
    chunk: int = 256,
) -> tuple[int, float]:
    """Largest neighbour count and smallest pair distance over all frames.

    A neighbour is an atom (periodic images included) with ``r² < rcut²``; virtual
    atoms neither count nor are counted. The minimum distance covers every pair within
    ``rcut`` (DeePMD-kit caps it at 10 Å when there is none).

    Returns:
        ``(max_nnei, min_nbor_dist)``.

    Raises:
        DataError: two atoms sit on top of each other.
    """
    max_nnei, min_dist = 0, math.inf
    opened = [s if isinstance(s, DeepmdSystem) else DeepmdSystem(s, type_map) for s in systems]
    for sys_ in opened:
        for frame, coord, atype, box in _iter_geometry(sys_, chunk):
            real = atype >= 0
            try:
                i, _, _, d = _frame_pairs(coord[real], box, rcut)
            except ValueError as err:  # a cell the neighbour search cannot take
                raise DataError(f"{sys_.path}: frame {frame}: {err}") from None
            if d.size == 0:
                continue
            if d.min() <= overlap_distance(rcut):
                raise DataError(f"{sys_.path}: atoms overlap in frame {frame} (distance "
                                f"{d.min():.3g} Å); remove duplicated atoms")
            min_dist = min(min_dist, float(d.min()))
            inside = d * d < rcut * rcut
            if inside.any():
                max_nnei = max(max_nnei, int(np.bincount(i[inside]).max()))
    if math.isinf(min_dist) and rcut < MIN_DIST_CAP:  # no pair within rcut anywhere: look further
        return max_nnei, neighbor_stat(opened, MIN_DIST_CAP, chunk=chunk)[1]
    return max_nnei, min(min_dist, MIN_DIST_CAP)


def _iter_geometry(
    sys_: DeepmdSystem, chunk: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
    """``(frame, coord (natoms, 3), atype (natoms,), box (3, 3) | None)``, read in chunks."""
    for a in range(0, sys_.nframes, chunk):
        fr = sys_.get_frames(np.arange(a, min(a + chunk, sys_.nframes)), labels=())
        for k in range(fr["coord"].shape[0]):
            box = None if sys_.nopbc else fr["box"][k]
            yield a + k, fr["coord"][k], fr["atype"][k], box


def resolve_sel(sel: int | str, max_nnei: int) -> int:
    """``sel`` as an int: ``"auto[:f]"`` (f = 1.1) gives ``int(max_nnei*f)`` rounded up
    to a multiple of 4; an int is returned as is."""
    if isinstance(sel, (int, np.integer)) and not isinstance(sel, bool):
        return int(sel)
    if isinstance(sel, (list, tuple)) and len(sel) == 1:
        return resolve_sel(sel[0], max_nnei)
    if isinstance(sel, str) and sel.split(":")[0] == "auto":
        words = sel.split(":")
        try:
            factor = 1.1 if len(words) == 1 else float(words[1])
        except ValueError:
            factor = -1.0
        if len(words) <= 2 and factor > 0:
            return 4 * ((int(max_nnei * factor) + 3) // 4)
    raise ValueError(f"sel must be an int, 'auto' or 'auto:factor', got {sel!r}")


# === descriptor statistics (docs/design.md, "Descriptor statistics") ==============================
def compute_descriptor_stats(
    model: torch.nn.Module, batches: Iterable[Batch]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``davg``, ``dstd`` of shape ``(ntypes, nnei, 4)`` from the raw environment matrix.

    Per centre type all ``nnei`` slots are pooled, padding (value 0) included; the
    same neighbour list as the model (truncation, model-level pair exclusion) is used
    and descriptor-level excluded pairs count as 0. ``davg`` is zero when the
    descriptor has ``set_davg_zero``.
    """
    return descriptor_stats_from_sums(model, descriptor_sums(model, batches))


def descriptor_sums(model: torch.nn.Module, batches: Iterable[Batch]) -> np.ndarray:
    """The sums behind :func:`compute_descriptor_stats`: ``(ntypes, 2, 3)``, per centre type
    the radial (0) and angular (1) columns of ``R̃`` as (count, sum, sum of squares)."""
    desc = model.descriptor
    ntypes = desc.ntypes
    acc = np.zeros((ntypes, 2, 3), dtype=np.float64)
    for batch in batches:
        env, atype = _raw_env(model, batch)
        for t in range(ntypes):
            e = env[atype == t]  # (n_t, nnei, 4)
            if e.shape[0] == 0:
                continue
            r, a = e[..., 0], e[..., 1:]
            acc[t, 0] += [r.numel(), r.sum().item(), (r * r).sum().item()]
            acc[t, 1] += [a.numel(), a.sum().item(), (a * a).sum().item()]
    return acc


def descriptor_stats_from_sums(
    model: torch.nn.Module, sums: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """``davg``, ``dstd`` from the sums of :func:`descriptor_sums`."""
    desc = model.descriptor
    ntypes, nnei = desc.ntypes, desc.nnei
    davg = torch.zeros(ntypes, nnei, 4, dtype=torch.float64)
    dstd = torch.empty(ntypes, nnei, 4, dtype=torch.float64)
    for t in range(ntypes):
        (nr, sr, qr), (na, sa, qa) = sums[t]
        if not desc.set_davg_zero:
            davg[t, :, 0] = sr / nr if nr > 0 else 0.0
        dstd[t, :, 0] = _std(nr, sr, qr)
        dstd[t, :, 1:] = _std(na, sa, qa)
    return davg, dstd


def _std(n: float, s: float, q: float) -> float:
    if n == 0:
        return DSTD_ABSENT
    mean = s / n
    val = math.sqrt(max(q / n - mean * mean, 0.0))
    return max(val, DSTD_PROTECTION)


@torch.no_grad()
def _raw_env(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``R̃ (nf, nloc, nnei, 4)`` (κ applied) and centre types ``(nf, nloc)`` (−1 virtual)."""
    desc = model.descriptor
    dev = _device(model)
    coord = _tensor(batch["coord"], torch.float64, dev)
    nf = coord.shape[0]
    coord = coord.reshape(nf, -1, 3)
    atype = _tensor(batch["atype"], torch.int64, dev).reshape(nf, -1)
    box = batch.get("box")
    box = None if box is None else _tensor(box, torch.float64, dev).reshape(nf, 3, 3)
    ext_coord, ext_atype, _, nlist = build_extended_system(coord, atype, box, desc.rcut, desc.nnei)
    nloc = atype.shape[1]
    centre = atype.clamp(min=0)
    mask = nlist >= 0
    idx = nlist.clamp(min=0)
    nei_type = torch.gather(ext_atype.clamp(min=0), 1, idx.reshape(nf, -1)).reshape(idx.shape)
    # model-level exclusion leaves holes (docs/design.md, "Pair exclusion")
    if model.has_pair_exclusion:
        mask = mask & model.pair_keep[centre.unsqueeze(-1), nei_type]
    xn = torch.gather(ext_coord, 1, idx.reshape(nf, -1, 1).expand(-1, -1, 3)).reshape(*idx.shape, 3)
    rij = xn - ext_coord[:, :nloc].unsqueeze(2)
    env, _ = env_matrix(rij, mask, desc.rcut, desc.rcut_smth, desc.env_protection)
    # Descriptor-level exclusion: κ = 0 on excluded real pairs, 1 on padding (docs/design.md,
    # "Padding and exclusion").
    kappa = desc.keep[centre.unsqueeze(-1), torch.where(mask, nei_type, desc.ntypes)]
    return env * kappa.unsqueeze(-1).to(env.dtype), atype


# === energy bias (docs/design.md, "Energy bias") ==================================================
def compute_energy_bias(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    preset_out_bias: Mapping[str, Sequence[Any]] | None = None,
    rcond: float | None = None,
) -> tuple[np.ndarray, float]:
    """Per-type energy bias by least squares on real-atom counts.

    Solves ``A·bias ≈ E`` over the frames with ``find_energy = 1`` (``A`` = real atoms
    per type, zero for ``model.atom_exclude_types``). Types given a value in
    ``preset_out_bias["energy"]`` are fixed to it and taken out of the fit.

    ``rcond`` is the least-squares cut-off; None means the model's own (``fitting_net.rcond``,
    itself None by default: NumPy's machine-precision cut-off).

    Returns:
        ``bias (ntypes,)`` and the population std of the residual (one value for all types).
    """
    counts, energy = _energy_rows(model, batches)
    return _fit_bias(counts, energy, model.ntypes, preset_out_bias, _rcond(model, rcond))


def change_energy_bias(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    rcond: float | None = None,
    max_frames: int | None = None,
) -> tuple[np.ndarray, float]:
    """"change-by-statistic": fit the bias to ``E_label − E_model`` and *add* it to
    ``model.out_bias``; ``out_std`` becomes the residual std (as DeePMD-kit does,
    including its handling of ``preset_out_bias``). ``rcond`` as in
    :func:`compute_energy_bias`. ``max_frames`` bounds the frames evaluated at once
    (None: a whole batch). Returns ``(delta, std)``."""
    batches = list(batches)
    counts, energy = _energy_rows(model, batches)
    predicted = np.concatenate(
        [_predict_energy(model, b, max_frames) for b in batches if _has_energy(b)])
    delta, std = _fit_bias(counts, energy - predicted, model.ntypes, model.preset_out_bias,
                           _rcond(model, rcond))
    with torch.no_grad():
        ob = model.out_bias
        ob[0, :, 0] += torch.as_tensor(delta, dtype=ob.dtype, device=ob.device)
        model.out_std[0, :, 0] = std
    return delta, std


def _rcond(model: torch.nn.Module, rcond: float | None) -> float | None:
    return rcond if rcond is not None else getattr(model, "rcond", None)


def _has_energy(batch: Batch) -> bool:
    return "energy" in batch and float(batch.get("find_energy", 1.0)) > 0.0


def _energy_rows(model: torch.nn.Module, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray]:
    counts, energy = [], []
    for b in batches:
        if not _has_energy(b):
            continue
        counts.append(_numpy(b["natoms_vec"])[:, 2:].astype(np.float64))
        energy.append(_numpy(b["energy"]).reshape(-1).astype(np.float64))
    if not counts:
        raise DataError("no energy labels in the statistics sample (every system lacks energy.npy)")
    a = np.concatenate(counts)
    if a.shape[1] != model.ntypes:
        raise ValueError(f"natoms_vec counts {a.shape[1]} types, the model has {model.ntypes}")
    a[:, list(model.atom_exclude_types)] = 0.0
    return a, np.concatenate(energy)


def _fit_bias(
    counts: np.ndarray,
    energy: np.ndarray,
    ntypes: int,
    preset: Mapping[str, Sequence[Any]] | None,
    rcond: float | None,
) -> tuple[np.ndarray, float]:
    counts, energy = counts.copy(), energy.copy()
    fixed = np.zeros(ntypes, dtype=bool)
    values = np.zeros(ntypes)
    if preset and preset.get("energy") is not None:
        given = list(preset["energy"])
        if len(given) != ntypes:
            raise ValueError(f"preset_out_bias.energy has {len(given)} entries for {ntypes} types")
        for t, v in enumerate(given):
            if v is not None:
                fixed[t], values[t] = True, float(np.asarray(v).reshape(-1)[0])
        energy -= counts[:, fixed] @ values[fixed]
        counts[:, fixed] = 0.0
    bias = np.linalg.lstsq(counts, energy, rcond=rcond)[0]
    bias[fixed] = values[fixed]
    std = float(np.std(energy - counts @ bias))
    return bias, std


def _predict_energy(
    model: torch.nn.Module, batch: Batch, max_frames: int | None = None
) -> np.ndarray:
    """``(nf,)`` model energies of a batch, ``max_frames`` frames at a time."""
    dev = _device(model)
    coord = _tensor(batch["coord"], torch.float64, dev)
    atype = _tensor(batch["atype"], torch.int64, dev)
    box = batch.get("box")
    box = None if box is None else _tensor(box, torch.float64, dev)
    fparam, aparam = _optional(batch, "fparam", dev), _optional(batch, "aparam", dev)
    nf = coord.shape[0]
    step = max_frames or nf
    energies = []
    for a in range(0, nf, step):
        sl = slice(a, a + step)
        out = model(
            coord[sl],
            atype[sl],
            None if box is None else box[sl],
            fparam=None if fparam is None else fparam[sl],
            aparam=None if aparam is None else aparam[sl],
        )
        energies.append(out["energy"].detach().reshape(-1).cpu().numpy().astype(np.float64))
    return np.concatenate(energies) if energies else np.zeros(0)


def _optional(batch: Batch, key: str, device: torch.device | None = None) -> torch.Tensor | None:
    if key in batch and float(batch.get("find_" + key, 1.0)) > 0.0:
        return _tensor(batch[key], torch.float64, device)
    return None


# === fparam / aparam (docs/design.md, "Parameter statistics") =====================================
def compute_param_stats(values: np.ndarray, protect: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Per-component mean and ``1/std`` of ``values (n, d)``; population std, at least
    ``protect``."""
    return param_stats_from_sums(param_sums(values), protect)


def param_sums(values: np.ndarray) -> np.ndarray:
    """``(d, 3)``: per component of ``values (n, d)`` the count, sum and sum of squares."""
    values = np.asarray(values, dtype=np.float64)
    count = np.full(values.shape[1], float(values.shape[0]))
    return np.stack([count, values.sum(axis=0), (values * values).sum(axis=0)], axis=1)


def param_stats_from_sums(sums: np.ndarray, protect: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Mean and ``1/std`` from the sums of :func:`param_sums`."""
    n, s, q = sums[:, 0], sums[:, 1], sums[:, 2]
    mean = s / n
    var = np.clip(q / n - mean * mean, 0.0, None)
    std = np.sqrt(var)
    std = np.where(std < protect, protect, std)
    return mean, 1.0 / std


def _param_values(batches: Sequence[Batch], key: str, width: int) -> np.ndarray | None:
    rows = [_numpy(b[key]).reshape(-1, width) for b in batches
            if key in b and float(b.get("find_" + key, 1.0)) > 0.0]
    return np.concatenate(rows) if rows else None


def _install_param_stats(
    model: torch.nn.Module,
    batches: Callable[[], list[Batch]],
    stored: Mapping[str, Any],
    computed: dict[str, Any],
    protect: float,
) -> dict[str, np.ndarray]:
    """Set ``fitting.fparam_avg/_inv_std`` (and aparam) from ``stored`` sums or the
    batches (their sums are added to ``computed``); returns the installed values."""
    result = {}
    fitting = model.fitting
    for key, width in (("fparam", fitting.numb_fparam), ("aparam", fitting.numb_aparam)):
        if width == 0:
            continue
        if key not in stored:
            values = _param_values(batches(), key, width)
            if values is None:
                if key == "fparam" and fitting.default_fparam is not None:
                    continue  # the model falls back to default_fparam: nothing to normalise
                raise DataError(f"the model needs {key} (width {width}) but no sampled system "
                                f"has {key}.npy")
            computed[key] = param_sums(values)
        avg, inv_std = param_stats_from_sums(stored.get(key, computed.get(key)), protect)
        with torch.no_grad():  # copy_ also moves to the buffer's device
            getattr(fitting, key + "_avg").copy_(torch.as_tensor(avg))
            getattr(fitting, key + "_inv_std").copy_(torch.as_tensor(inv_std))
        result[key + "_avg"], result[key + "_inv_std"] = avg, inv_std
    return result


def set_energy_bias(
    model: torch.nn.Module, batches: Iterable[Batch], protect: float = 1e-2
) -> tuple[np.ndarray, float]:
    """"set-by-statistic" (``change-bias -m set``): ``out_bias`` becomes the fit of the
    energy labels alone (:func:`compute_energy_bias`, ``preset_out_bias`` honoured),
    ``out_std`` its residual std, and fparam/aparam statistics are recomputed from the
    same frames, as DeePMD-kit does. Returns ``(bias, std)``."""
    batches = list(batches)
    bias, std = compute_energy_bias(model, batches, model.preset_out_bias)
    _install_param_stats(model, lambda: batches, {}, {}, protect)
    with torch.no_grad():
        ob = model.out_bias
        ob[0, :, 0] = torch.as_tensor(bias, dtype=ob.dtype, device=ob.device)
        model.out_std[0, :, 0] = std
    return bias, std


# === everything at once ==================================================================
# The parts of the statistics of a fresh model, as kept by a statistics cache
# (dpa1.io.stat_file): the sums they are derived from, and the energy bias.
STAT_PARTS = ("descriptor", "fparam", "aparam", "energy")


def apply_statistics(
    model: torch.nn.Module,
    stat_batches: Iterable[Batch] | Callable[[], Iterable[Batch]],
    *,
    protect: float = 1e-2,
    stored: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compute the statistics of a fresh model (docs/design.md, "Statistics") and install them.

    Sets ``descriptor.davg/dstd``, ``fitting.fparam_avg/fparam_inv_std`` (and aparam),
    ``out_bias`` and ``out_std``. ``protect`` is ``data_stat_protect``.

    ``stored`` holds parts computed before (keys of ``STAT_PARTS``: ``"descriptor"`` the
    sums of :func:`descriptor_sums`, ``"fparam"``/``"aparam"`` those of :func:`param_sums`,
    ``"energy"`` a pair ``(bias (ntypes,), std (ntypes,))``); they are used instead of the
    data. ``stat_batches`` may be a function returning the batches: it is then called only
    if some part is not stored.

    Returns:
        The installed values (``davg``, ``dstd``, ``bias``, ``std`` and the param stats),
        ``"computed"``: the parts computed from the data (same form as ``stored``) and
        ``"observed_types"``: the types present in the batches (empty without a data pass).
    """
    stored = dict(stored or {})
    sample: list[list[Batch]] = []

    def batches() -> list[Batch]:
        if not sample:
            sample.append(list(stat_batches() if callable(stat_batches) else stat_batches))
        return sample[0]

    computed: dict[str, Any] = {}
    if "descriptor" not in stored:
        computed["descriptor"] = descriptor_sums(model, batches())
    davg, dstd = descriptor_stats_from_sums(model, stored.get("descriptor",
                                                              computed.get("descriptor")))
    model.descriptor.set_stat(davg, dstd)
    result: dict[str, Any] = {"davg": davg, "dstd": dstd}
    result.update(_install_param_stats(model, batches, stored, computed, protect))
    if "energy" in stored:
        bias, std = (np.asarray(x, dtype=np.float64).reshape(-1) for x in stored["energy"])
    else:
        bias, std = compute_energy_bias(model, batches(), model.preset_out_bias)
        computed["energy"] = (bias, np.full(model.ntypes, std))
    with torch.no_grad():
        ob = model.out_bias
        ob[0, :, 0] = torch.as_tensor(bias, dtype=ob.dtype, device=ob.device)
        model.out_std[0, :, 0] = torch.as_tensor(std, dtype=ob.dtype, device=ob.device)
    result["bias"], result["std"] = bias, std
    result["computed"] = computed
    observed = set()
    for b in sample[0] if sample else []:
        observed.update(int(t) for t in np.unique(_numpy(b["atype"])) if t >= 0)
    result["observed_types"] = sorted(observed)
    return result


# === small helpers ======================================================================
def _tensor(x: Any, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.to(device=device, dtype=dtype)


def _device(model: torch.nn.Module) -> torch.device:
    """Where the model lives: batches (CPU tensors or numpy from the data loader) go there."""
    return model.descriptor.davg.device


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
