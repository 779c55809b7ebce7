"""The training loop of ``dpa1 train`` (spec §12), DeePMD-kit PyTorch semantics.

Start modes: fresh (statistics computed), ``restart`` (weights, optimizer, step and
data-sampler state restored: the continuation equals an uninterrupted run, so the input
must describe the checkpoint's network), ``init_model`` (the input's network, initialised
with a checkpoint's weights) and ``finetune`` (likewise, with the weights of a pretrained
model adapted to the new ``type_map``, energy bias re-fitted on the new data).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from dpa1.data import stats as dstats
from dpa1.data.loader import SystemSampler
from dpa1.data.system import DeepmdSystem, expand_systems, labels_for_model
from dpa1.io.atomic import atomic_path
from dpa1.io.config import ConfigError, normalize_model_section
from dpa1.io.model_file import CKPT_FORMAT, load_checkpoint, load_energy_model
from dpa1.io.serialize import model_from_dict, model_to_dict
from dpa1.io.stat_file import StatFile, open_stat_file
from dpa1.model.build import build_model
from dpa1.model.model import EnergyModel
from dpa1.train.checkpoints import CheckpointManager
from dpa1.train.distributed import DistInfo, barrier
from dpa1.train.finetune import change_type_map
from dpa1.train.lcurve import LCurveWriter
from dpa1.train.loss import EnerLoss
from dpa1.train.lr import ExpDecayLR
from dpa1.train.progress import TrainProgress

log = logging.getLogger("dpa1.train")

# the defaults of Trainer(device=..., dist_info=...): one process on the CPU
_CPU = torch.device("cpu")
_SINGLE_PROCESS = DistInfo()


def _resolve_paths(systems: Any, base: Path) -> list[str]:
    """Systems relative to the working directory (as DeePMD-kit), else to the input file's
    directory, so ``dpa1 train path/to/input.json`` works from anywhere."""
    items = [systems] if isinstance(systems, str) else list(systems)
    out = []
    for s in items:
        p = Path(s)
        is_glob = any(ch in s for ch in "*?[")
        found_here = bool(list(Path().glob(s))) if is_glob else p.exists()
        if not p.is_absolute() and not found_here and (is_glob or (base / p).exists()):
            p = base / p
        out.append(str(p))
    return out


def open_systems(data_cfg: dict, type_map: list[str], base: Path) -> list[DeepmdSystem]:
    paths = expand_systems(
        _resolve_paths(data_cfg["systems"], base), data_cfg.get("rglob_patterns")
    )
    return [DeepmdSystem(p, type_map) for p in paths]


def _batch_to_model_args(batch: dict, device: torch.device) -> dict:
    return {
        "coord": batch["coord"].to(device),
        "atype": batch["atype"].to(device),
        "box": batch["box"].to(device) if "box" in batch else None,
        "fparam": batch["fparam"].to(device) if "fparam" in batch else None,
        "aparam": batch["aparam"].to(device) if "aparam" in batch else None,
    }


def _labels(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


class Trainer:
    """One training run, configured by a normalised input (see :mod:`dpa1.io.config`)."""

    def __init__(
        self,
        config: dict,
        out_dir: Path,
        *,
        input_dir: Path = Path("."),
        restart: Path | None = None,
        init_model: Path | None = None,
        finetune: Path | None = None,
        model_branch: str | None = None,
        device: torch.device = _CPU,
        dist_info: DistInfo = _SINGLE_PROCESS,
        skip_neighbor_stat: bool = False,
    ) -> None:
        if model_branch is not None and init_model is None and finetune is None:
            raise ValueError("model_branch picks the branch of the init_model or finetune "
                             "checkpoint; give one of them")
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = device
        self.dist = dist_info
        tcfg = config["training"]
        mcfg = config["model"]
        self.type_map = list(mcfg["type_map"])
        seed = tcfg.get("seed")
        self.seed = seed
        if seed is not None:
            torch.manual_seed(seed + self.dist.rank)

        # === data ===
        self.train_systems = open_systems(tcfg["training_data"], self.type_map, input_dir)
        self.valid_systems = (
            open_systems(tcfg["validation_data"], self.type_map, input_dir)
            if tcfg.get("validation_data")
            else []
        )
        self.loss_fn = EnerLoss.from_config(
            config.get("loss") or {}, config["learning_rate"]["start_lr"]
        )
        fcfg = mcfg["fitting_net"]
        self.labels = labels_for_model(fcfg["numb_fparam"], fcfg["numb_aparam"])
        td = tcfg["training_data"]
        self.sampler = SystemSampler(
            self.train_systems,
            td["batch_size"],
            auto_prob=td["auto_prob"],
            sys_probs=td["sys_probs"],
            seed=seed,
            labels=self.labels,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.valid_sampler = None
        if self.valid_systems:
            vd = tcfg["validation_data"]
            self.valid_sampler = SystemSampler(
                self.valid_systems,
                vd["batch_size"],
                auto_prob=vd["auto_prob"],
                sys_probs=vd["sys_probs"],
                seed=seed,
                labels=self.labels,
            )
            self.numb_btch = int(vd.get("numb_btch", 1))

        # === steps and learning rate ===
        numb_steps = tcfg.get("numb_steps")
        if numb_steps is None:
            numb_steps = int(math.ceil(tcfg["numb_epoch"] * self.sampler.steps_per_epoch))
        self.numb_steps = int(numb_steps)
        self.lr = ExpDecayLR.from_config(config["learning_rate"], self.numb_steps)

        # === model ===
        self.start_step = 0
        self.sampler_state: dict | None = None
        self.valid_sampler_state: dict | None = None
        optimizer_state = None
        if restart is not None:
            model, payload = load_checkpoint(restart)
            if payload.get("format") != CKPT_FORMAT:
                raise ValueError(
                    f"--restart {restart}: a DeePMD-kit checkpoint cannot continue as a dpa1 "
                    "run; start from its weights with --init-model or --finetune"
                )
            model = self._restart_model(Path(restart), model, payload)
            self.start_step = int(payload["step"])
            optimizer_state = payload.get("optimizer")
            self.sampler_state = payload.get("sampler")
            self.valid_sampler_state = payload.get("valid_sampler")
            if payload.get("torch_rng") is not None:
                torch.set_rng_state(payload["torch_rng"])
        elif init_model is not None:
            weights, saved = load_energy_model(init_model, model_branch)
            if list(weights.type_map) != self.type_map:
                raise ValueError(
                    f"--init-model {init_model}: its type_map {weights.type_map} is "
                    f"not the input's {self.type_map}; use --finetune to change it"
                )
            model = self._input_network(weights, Path(init_model), "--init-model", saved)
        elif finetune is not None:
            model = self._finetune_model(Path(finetune), model_branch)
        else:
            model = self._fresh_model(skip_neighbor_stat)
        if tcfg.get("stat_file") and any(x is not None for x in (restart, init_model, finetune)):
            log.info(
                "training.stat_file %s: not used (only a fresh start computes the "
                "statistics it keeps)",
                tcfg["stat_file"],
            )
        self.model: EnergyModel = model.to(device)
        self.model.train()
        opt_cfg = config.get("optimizer") or {"type": "Adam"}
        opt_cls = torch.optim.AdamW if opt_cfg.get("type") == "AdamW" else torch.optim.Adam
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = opt_cls(
            params,
            lr=self.lr.start_lr,
            betas=(opt_cfg.get("adam_beta1", 0.9), opt_cfg.get("adam_beta2", 0.999)),
            weight_decay=opt_cfg.get("weight_decay", 0.0),
        )
        if optimizer_state is not None:
            # load_state_dict also restores the saved hyperparameters (betas, weight decay,
            # AdamW's decoupling): the input's, which a restart may change, must win
            settings = [
                {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
            ]
            self.optimizer.load_state_dict(optimizer_state)
            for group, setting in zip(self.optimizer.param_groups, settings, strict=True):
                group.update(setting)
        if self.sampler_state is not None:
            self.sampler.load_state_dict(self.sampler_state)
        if self.valid_sampler_state is not None and self.valid_sampler is not None:
            self.valid_sampler.load_state_dict(self.valid_sampler_state)
        self.wrapped = self.model
        if self.dist.enabled:
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.ckpt = CheckpointManager(
            self.out_dir / (tcfg.get("save_dir") or "."), tcfg["save_ckpt"], tcfg["max_ckpt_keep"]
        )
        self.restarted = restart is not None

    # === start modes ==========================================================================
    def _stat_batches(self) -> list[dict]:
        # Same sample on every rank (the statistics must agree): rank 0's view, fixed seed.
        sampler = SystemSampler(
            self.train_systems,
            self.config["training"]["training_data"]["batch_size"],
            seed=self.seed if self.seed is not None else 0,
            labels=self.labels,
        )
        return sampler.stat_batches(int(self.config["model"]["data_stat_nbatch"]))

    def _fresh_model(self, skip_neighbor_stat: bool) -> EnergyModel:
        mcfg = self.config["model"]
        sel = mcfg["descriptor"]["sel"]
        rcut = mcfg["descriptor"]["rcut"]
        min_dist = None
        if isinstance(sel, str) and skip_neighbor_stat:
            raise ValueError(
                "model.descriptor.sel is 'auto': the neighbour statistics cannot be skipped"
            )
        if not skip_neighbor_stat:  # as dp train: sel = "auto" and min_nbor_dist need them
            max_nnei, min_dist = dstats.neighbor_stat(self.train_systems, rcut)
            if isinstance(sel, str):
                sel = dstats.resolve_sel(sel, max_nnei)
            elif max_nnei > int(sel):
                log.warning(
                    "sel %d is less than the largest neighbour count in the training data, "
                    "%d within rcut %g Å: the farthest neighbours are ignored; run `dpa1 "
                    "neighbor-stat -s SYSTEMS -r %g` to choose sel, or use sel 'auto'",
                    int(sel),
                    max_nnei,
                    rcut,
                    rcut,
                )
            log.info(
                "neighbour statistics: max %d neighbours, min distance %.4f Å -> sel %d",
                max_nnei,
                min_dist,
                int(sel),
            )
        mcfg["descriptor"]["sel"] = int(sel)  # out.json and checkpoints record the value used
        model = build_model(mcfg, sel=sel)
        model.min_nbor_dist = min_dist
        cache = self._stat_file(model)
        fit = model.fitting
        stored = cache.stored(model.ntypes, fit.numb_fparam, fit.numb_aparam) if cache else None
        result = dstats.apply_statistics(
            model,
            self._stat_batches,
            stored=stored,
            protect=float(mcfg.get("data_stat_protect", 1e-2)),
        )
        if cache is not None:
            computed = sorted(result["computed"])
            if self.dist.is_main:
                cache.write(result["computed"], result["observed_types"])
            if not computed:
                log.info("statistics read from %s (no data sampled)", cache.path)
            elif stored:
                log.info(
                    "statistics read from %s (%s), the rest (%s) computed and saved there",
                    cache.path,
                    ", ".join(sorted(stored)),
                    ", ".join(computed),
                )
            else:
                log.info("statistics computed and saved to %s", cache.path)
        return model

    def _stat_file(self, model: EnergyModel) -> StatFile | None:
        """The ``training.stat_file`` cache for ``model`` (relative to the output directory),
        or None."""
        tcfg = self.config["training"]
        if not tcfg.get("stat_file"):
            return None
        return open_stat_file(
            self.out_dir / tcfg["stat_file"],
            tcfg["stat_file_mode"],
            self.type_map,
            model.descriptor,
            self.config["model"]["descriptor"]["type"],
        )

    def _finetune_model(self, path: Path, model_branch: str | None = None) -> EnergyModel:
        pretrained, saved = load_energy_model(path, model_branch)
        mdict, new_types = change_type_map(model_to_dict(pretrained), self.type_map, seed=self.seed)
        if saved and isinstance(saved.get("model"), dict):
            saved = {**saved, "model": {**saved["model"], "type_map": self.type_map}}
        model = self._input_network(model_from_dict(mdict), path, "--finetune", saved)
        batches = self._stat_batches()
        if new_types:
            # new types: descriptor statistics from the new data, kept types untouched
            davg, dstd = dstats.compute_descriptor_stats(model, batches)
            d = model.descriptor
            new_davg, new_dstd = d.davg.clone(), d.dstd.clone()
            for t in new_types:
                new_davg[t], new_dstd[t] = torch.as_tensor(davg[t]), torch.as_tensor(dstd[t])
            d.set_stat(new_davg, new_dstd)
        bias_sampler = SystemSampler(
            self.train_systems,
            self.config["training"]["training_data"]["batch_size"],
            seed=self.seed if self.seed is not None else 0,
            labels=self.labels,
        )
        dstats.change_energy_bias(
            model, bias_sampler.stat_batches(int(self.config["model"]["data_bias_nsample"]))
        )
        return model

    # === the network of a restart, --init-model or --finetune ================================
    def _restart_model(self, path: Path, model: EnergyModel, payload: dict) -> EnergyModel:
        """A restart continues the same run: the input must describe the checkpoint's network
        (and its seed). A checkpoint without a readable record of its input gets the input's
        network with its weights, as ``--init-model`` does."""
        saved = payload.get("config") or {}
        section = _recorded_model_section(saved)
        if section is None:
            return self._input_network(model, path, "--restart", None)
        keys = _model_differences(section, self.config["model"])
        seeds = (saved.get("training") or {}).get("seed"), self.config["training"].get("seed")
        if "training" in saved and seeds[0] != seeds[1]:
            keys.append(f"training.seed ({seeds[0]} in the checkpoint, {seeds[1]} in the input)")
        if keys:
            raise ValueError(
                f"--restart {path}: a restart continues the same run, but the input differs "
                f"from the checkpoint in {', '.join(keys)}; restore those values, or train the "
                "changed network from these weights with --init-model (or --finetune for "
                "another type_map)"
            )
        self.config["model"] = section  # out.json and new checkpoints record the resolved sel
        return model

    def _input_network(
        self, weights: EnergyModel, path: Path, mode: str, saved: dict | None
    ) -> EnergyModel:
        """The input's network (it defines what is trained and what out.json records) with
        the parameters and statistics of ``weights``; they must have the same shapes."""
        desc = self.config["model"]["descriptor"]
        if isinstance(desc["sel"], str):
            desc["sel"] = int(weights.nnei)  # "auto" keeps the neighbour slots of the weights
        model = build_model(self.config["model"], sel=desc["sel"])
        mine, theirs = model.state_dict(), weights.state_dict()
        bad = [f"{k} only in the weights" for k in theirs if k not in mine]
        bad += [f"{k} only in the input's network" for k in mine if k not in theirs]
        bad += [
            f"{k} {tuple(theirs[k].shape)} in the weights, {tuple(v.shape)} in the input's network"
            for k, v in mine.items()
            if k in theirs and v.shape != theirs[k].shape
        ]
        if bad:
            section = _recorded_model_section(saved or {})
            keys = _model_differences(section, self.config["model"]) if section else []
            why = f"; the input differs from it in {', '.join(keys)}" if keys else ""
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise ValueError(
                f"{mode} {path}: its weights do not fit the input's network "
                f"({'; '.join(bad[:3])}{more}){why}; {mode} can only change "
                "settings that keep the shapes of the weights"
            )
        model.load_state_dict(theirs)
        model.min_nbor_dist = weights.min_nbor_dist  # a training statistic, not a parameter
        return model

    # === the loop =============================================================================
    def _validate(self, lr: float) -> dict[str, float] | None:
        if self.valid_sampler is None:
            return None
        self.model.eval()
        sums: dict[str, float] = {}
        weight = 0.0
        for _ in range(self.numb_btch):
            batch = self.valid_sampler.next_batch()
            pred = self.model(**_batch_to_model_args(batch, self.device))
            _, metrics = self.loss_fn(pred, _labels(batch, self.device), lr)
            natoms = float(batch["atype"].shape[1])
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * natoms
            weight += natoms
        self.model.train()
        return {k: v / weight for k, v in sums.items()}

    def _save(self, step: int) -> None:
        if not self.dist.is_main:
            return
        self.ckpt.save(
            step,
            self.model,
            config=self.config,
            optimizer_state=self.optimizer.state_dict(),
            extra={
                "sampler": self.sampler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "valid_sampler": self.valid_sampler.state_dict() if self.valid_sampler else None,
                "lr": self.lr.value(max(step - 1, 0)),
            },
        )

    def run(self) -> Path:
        tcfg = self.config["training"]
        disp_freq, save_freq = int(tcfg["disp_freq"]), int(tcfg["save_freq"])
        disp_avg = bool(tcfg.get("disp_avg", False))
        main = self.dist.is_main
        shown = main and bool(tcfg["disp_training"])
        lcurve = None
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.restarted:
                truncate_lcurve(self.out_dir / tcfg["disp_file"], self.start_step)
            lcurve = LCurveWriter(
                self.out_dir / tcfg["disp_file"],
                self.loss_fn.metric_keys(),
                has_validation=self.valid_sampler is not None,
                append=self.restarted,
            )
        progress = TrainProgress(self.numb_steps, self.start_step, enabled=shown)
        board = (
            _tensorboard(self.out_dir / tcfg.get("tensorboard_log_dir", "log"))
            if main and tcfg.get("tensorboard")
            else None
        )
        board_freq = int(tcfg.get("tensorboard_freq", 1))
        accum: dict[str, float] = {}
        naccum = 0
        t0 = time.perf_counter()
        last_step = self.start_step
        try:
            for step in range(self.start_step, self.numb_steps):
                lr = self.lr.value(step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batch = self.sampler.next_batch()
                pred = self.wrapped(**_batch_to_model_args(batch, self.device))
                loss, metrics = self.loss_fn(pred, _labels(batch, self.device), lr)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                gmax = tcfg.get("gradient_max_norm")
                if gmax:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(gmax))
                self.optimizer.step()
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise FloatingPointError(
                        f"step {step + 1}: loss is {loss_value}; check the data and lower start_lr"
                    )
                if board is not None and ((step + 1) % board_freq == 0 or step == 0):
                    _log_scalars(board, step + 1, {"lr": lr, "loss": loss_value, **metrics})
                for k, v in metrics.items():
                    accum[k] = accum.get(k, 0.0) + v
                naccum += 1
                display = (step + 1) % disp_freq == 0 or step == 0
                if display:
                    train_m = {k: v / naccum for k, v in accum.items()} if disp_avg else metrics
                    valid_m = self._validate(lr) if main else None
                    if main and lcurve is not None:
                        lcurve.write(step + 1, train_m, valid_m, lr)
                    if board is not None and valid_m:
                        _log_scalars(board, step + 1, {f"{k}_val": v for k, v in valid_m.items()})
                    if shown:
                        log.info(
                            "step %d lr %.2e %s",
                            step + 1,
                            lr,
                            " ".join(
                                f"{k}={v:.3e}" for k, v in sorted((valid_m or train_m).items())
                            ),
                        )
                    accum, naccum = {}, 0
                progress.update(step + 1, metrics, lr)
                last_step = step + 1
                if (step + 1) % save_freq == 0 or step + 1 == self.numb_steps:
                    self._save(step + 1)
        finally:
            progress.close()
            if lcurve is not None:
                lcurve.close()
            if board is not None:
                board.close()
        if self.numb_steps == 0 and not self.restarted:
            self._save(0)  # as `dp train` with numb_steps 0: the model with its statistics only
        if main and tcfg.get("change_bias_after_training"):
            dstats.change_energy_bias(self.model, self._stat_batches())
            self._save(last_step)
        barrier(self.dist)
        elapsed = time.perf_counter() - t0
        if main and tcfg["time_training"] and last_step > self.start_step:
            log.info(
                "trained %d steps in %.1f s (%.3f s/step)",
                last_step - self.start_step,
                elapsed,
                elapsed / (last_step - self.start_step),
            )
        return self.ckpt.pointer


def _tensorboard(log_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``log_dir`` (the input check made sure that
    ``torch.utils.tensorboard`` imports)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


def _log_scalars(board: Any, step: int, values: dict[str, float]) -> None:
    """DeePMD-kit's tags: ``Default/lr``, ``Default/loss`` and ``Default/<metric>`` (the
    training metrics of the step); dpa1 adds ``Default/<metric>_val`` at display steps."""
    for key, value in values.items():
        board.add_scalar(f"Default/{key}", value, step)


def _recorded_model_section(saved: dict) -> dict | None:
    """The normalised ``model`` section a checkpoint recorded, or None if it has none (or one
    this version cannot read)."""
    section = saved.get("model") if isinstance(saved, dict) else None
    if not isinstance(section, dict):
        return None
    try:
        return normalize_model_section(section)
    except ConfigError:
        return None


def _model_differences(saved: Any, given: Any, where: str = "model") -> list[str]:
    """``where.key (X in the checkpoint, Y in the input)`` for every differing leaf; an
    input ``sel`` of ``"auto..."`` matches the number it was resolved to."""
    if isinstance(saved, dict) and isinstance(given, dict):
        return [
            d
            for key in sorted(set(saved) | set(given), key=str)
            for d in _model_differences(saved.get(key), given.get(key), f"{where}.{key}")
        ]
    if where.endswith(".descriptor.sel") and isinstance(given, str) and isinstance(saved, int):
        return []
    if saved == given and type(saved) is type(given):
        return []
    return [f"{where} ({json.dumps(saved)} in the checkpoint, {json.dumps(given)} in the input)"]


def write_out_json(config: dict, out_dir: Path) -> None:
    with atomic_path(Path(out_dir) / "out.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2))


def truncate_lcurve(path: Path, last_step: int) -> None:
    """Drop rows written after the checkpoint a restart resumes from (no duplicates)."""
    path = Path(path)
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines(keepends=True)
        if line.startswith("#") or not line.strip() or int(line.split()[0]) <= last_step
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(kept))
