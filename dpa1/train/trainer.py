"""The training loop of ``dpa1 train`` (docs/design.md, "Training loop"), DeePMD-kit PyTorch
semantics.

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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dpa1.data import stats as dstats
from dpa1.data.loader import SystemSampler
from dpa1.data.system import (
    DeepmdSystem,
    expand_systems,
    labels_for_model,
    resolve_system_paths,
)
from dpa1.io.atomic import atomic_path
from dpa1.io.config import (
    Config,
    ConfigError,
    normalize_model_section,
    parse_config,
    parse_model_section,
)
from dpa1.io.config_schema import TrainingData
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


def open_systems(data: TrainingData, type_map: list[str], base: Path) -> list[DeepmdSystem]:
    """The systems of ``training_data`` / ``validation_data``, read with ``type_map``."""
    paths = expand_systems(resolve_system_paths(data.systems, base), data.rglob_patterns)
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


@dataclass
class _Resume:
    """What a ``--restart`` checkpoint restores besides the weights."""

    optimizer: dict | None = None
    sampler: dict | None = None
    valid_sampler: dict | None = None


class Trainer:
    """One training run, configured by an input (see :mod:`dpa1.io.config`).

    ``config`` is the typed :class:`~dpa1.io.config_schema.Config` or its normalised dict;
    the trainer keeps its own copy as :attr:`settings` (the resolved ``sel`` and the model
    section of a restart are written into it) and :attr:`config` is its JSON form, the one
    ``out.json`` and the checkpoints record.
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any],
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
        self.settings = parse_config(config)
        self.out_dir = Path(out_dir)
        self.device = device
        self.dist = dist_info
        self.type_map = list(self.settings.model.type_map)
        self.seed = self.settings.training.seed
        if self.seed is not None:
            torch.manual_seed(self.seed + self.dist.rank)
        # the order of these steps is the order of the random draws: keep it
        self._open_data(input_dir)
        self._set_schedule()
        self.start_step = 0
        resume = _Resume()
        if restart is not None:
            model = self._restart_model(Path(restart), resume)
        elif init_model is not None:
            model = self._init_model(Path(init_model), model_branch)
        elif finetune is not None:
            model = self._finetune_model(Path(finetune), model_branch)
        else:
            model = self._fresh_model(skip_neighbor_stat)
        if self.settings.training.stat_file and any(
            x is not None for x in (restart, init_model, finetune)
        ):
            log.info(
                "training.stat_file %s: not used (only a fresh start computes the "
                "statistics it keeps)",
                self.settings.training.stat_file,
            )
        self.model: EnergyModel = model.to(device)
        self.model.train()
        self._make_optimizer(resume.optimizer)
        self._restore_samplers(resume)
        self.wrapped = self.model
        if self.dist.enabled:
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        training = self.settings.training
        self.ckpt = CheckpointManager(
            self.out_dir / (training.save_dir or "."), training.save_ckpt, training.max_ckpt_keep
        )
        self.restarted = restart is not None

    @property
    def config(self) -> dict[str, Any]:
        """The settings as the normalised JSON dict (``out.json``, checkpoints)."""
        return self.settings.model_dump(mode="json")

    # === the steps of __init__ ================================================================
    def _open_data(self, input_dir: Path) -> None:
        """Training and validation systems, their samplers and the labels the model needs."""
        training, fitting = self.settings.training, self.settings.model.fitting_net
        self.train_systems = open_systems(training.training_data, self.type_map, input_dir)
        valid = training.validation_data
        self.valid_systems = open_systems(valid, self.type_map, input_dir) if valid else []
        self.labels = labels_for_model(fitting.numb_fparam, fitting.numb_aparam)
        self.sampler = self._sampler(self.train_systems, training.training_data, distributed=True)
        self.valid_sampler = None
        if valid is not None and self.valid_systems:
            self.valid_sampler = self._sampler(self.valid_systems, valid, distributed=False)
            self.numb_btch = valid.numb_btch

    def _sampler(
        self, systems: list[DeepmdSystem], data: TrainingData, *, distributed: bool
    ) -> SystemSampler:
        """The sampler of ``data``; a distributed one gives each rank its own batches."""
        ranks = {"rank": self.dist.rank, "world_size": self.dist.world_size} if distributed else {}
        return SystemSampler(
            systems,
            data.batch_size,
            auto_prob=data.auto_prob,
            sys_probs=data.sys_probs,
            seed=self.seed,
            labels=self.labels,
            **ranks,
        )

    def _set_schedule(self) -> None:
        """Loss, number of steps (``numb_epoch`` counts sampler epochs) and learning rate."""
        settings = self.settings
        lr_section = settings.learning_rate.model_dump(mode="json")
        self.loss_fn = EnerLoss.from_config(
            settings.loss.model_dump(mode="json"), settings.learning_rate.start_lr
        )
        numb_steps = settings.training.numb_steps
        if numb_steps is None:
            epochs = settings.training.numb_epoch
            numb_steps = int(math.ceil(epochs * self.sampler.steps_per_epoch))
        self.numb_steps = int(numb_steps)
        self.lr = ExpDecayLR.from_config(lr_section, self.numb_steps)

    def _make_optimizer(self, state: dict | None) -> None:
        """Adam or AdamW over the trainable parameters; a restart's state restored."""
        opt = self.settings.optimizer
        opt_cls = torch.optim.AdamW if opt.type == "AdamW" else torch.optim.Adam
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = opt_cls(
            params,
            lr=self.lr.start_lr,
            betas=(opt.adam_beta1, opt.adam_beta2),
            weight_decay=opt.weight_decay,
        )
        if state is not None:
            # load_state_dict also restores the saved hyperparameters (betas, weight decay,
            # AdamW's decoupling): the input's, which a restart may change, must win
            settings = [
                {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
            ]
            self.optimizer.load_state_dict(state)
            for group, setting in zip(self.optimizer.param_groups, settings, strict=True):
                group.update(setting)

    def _restore_samplers(self, resume: _Resume) -> None:
        """A restart continues the samplers' draws where the checkpoint left them."""
        if resume.sampler is not None:
            self.sampler.load_state_dict(resume.sampler)
        if resume.valid_sampler is not None and self.valid_sampler is not None:
            self.valid_sampler.load_state_dict(resume.valid_sampler)

    # === start modes ==========================================================================
    def _stat_batches(self, nbatch: int | None = None) -> list[dict]:
        """``nbatch`` (default ``model.data_stat_nbatch``) batches per training system for
        the statistics. Same sample on every rank (the statistics must agree): rank 0's
        view, fixed seed."""
        sampler = SystemSampler(
            self.train_systems,
            self.settings.training.training_data.batch_size,
            seed=self.seed if self.seed is not None else 0,
            labels=self.labels,
        )
        return sampler.stat_batches(nbatch or self.settings.model.data_stat_nbatch)

    def _fresh_model(self, skip_neighbor_stat: bool) -> EnergyModel:
        section = self.settings.model
        desc = section.descriptor
        sel, min_dist = self._neighbor_stat(desc.sel, desc.rcut, skip_neighbor_stat)
        desc.sel = sel  # out.json and checkpoints record the value used
        model = build_model(section, sel=sel)
        model.min_nbor_dist = min_dist
        cache = self._stat_file(model)
        fit = model.fitting
        stored = cache.stored(model.ntypes, fit.numb_fparam, fit.numb_aparam) if cache else None
        result = dstats.apply_statistics(
            model, self._stat_batches, stored=stored, protect=section.data_stat_protect
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

    def _neighbor_stat(
        self, sel: int | str, rcut: float, skip: bool
    ) -> tuple[int, float | None]:
        """``sel`` resolved ("auto" from the data) and the smallest pair distance of the
        training data (None when skipped), as ``dp train`` does."""
        if isinstance(sel, str) and skip:
            raise ValueError(
                "model.descriptor.sel is 'auto': the neighbour statistics cannot be skipped"
            )
        if skip:
            return int(sel), None
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
        return int(sel), min_dist

    def _stat_file(self, model: EnergyModel) -> StatFile | None:
        """The ``training.stat_file`` cache for ``model`` (relative to the output directory),
        or None."""
        training = self.settings.training
        if not training.stat_file:
            return None
        return open_stat_file(
            self.out_dir / training.stat_file,
            training.stat_file_mode,
            self.type_map,
            model.descriptor,
            self.settings.model.descriptor.type,
        )

    def _init_model(self, path: Path, model_branch: str | None = None) -> EnergyModel:
        """``--init-model``: the input's network with a checkpoint's weights."""
        weights, saved = load_energy_model(path, model_branch)
        if list(weights.type_map) != self.type_map:
            raise ValueError(
                f"--init-model {path}: its type_map {weights.type_map} is "
                f"not the input's {self.type_map}; use --finetune to change it"
            )
        return self._input_network(weights, path, "--init-model", saved)

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
        dstats.change_energy_bias(
            model, self._stat_batches(self.settings.model.data_bias_nsample)
        )
        return model

    # === the network of a restart, --init-model or --finetune ================================
    def _restart_model(self, path: Path, resume: _Resume) -> EnergyModel:
        """A restart continues the same run: the input must describe the checkpoint's network
        (and its seed). A checkpoint without a readable record of its input gets the input's
        network with its weights, as ``--init-model`` does. Fills ``resume`` and the start
        step, and restores the torch RNG."""
        model, payload = load_checkpoint(path)
        if payload.get("format") != CKPT_FORMAT:
            raise ValueError(
                f"--restart {path}: a DeePMD-kit checkpoint cannot continue as a dpa1 run; "
                "start from its weights with --init-model or --finetune"
            )
        model = self._checked_restart_network(path, model, payload)
        self.start_step = int(payload["step"])
        resume.optimizer = payload.get("optimizer")
        resume.sampler = payload.get("sampler")
        resume.valid_sampler = payload.get("valid_sampler")
        if payload.get("torch_rng") is not None:
            torch.set_rng_state(payload["torch_rng"])
        return model

    def _checked_restart_network(
        self, path: Path, model: EnergyModel, payload: dict
    ) -> EnergyModel:
        saved = payload.get("config") or {}
        section = _recorded_model_section(saved)
        if section is None:
            return self._input_network(model, path, "--restart", None)
        keys = _model_differences(section, self._model_dict())
        seeds = (saved.get("training") or {}).get("seed"), self.settings.training.seed
        if "training" in saved and seeds[0] != seeds[1]:
            keys.append(f"training.seed ({seeds[0]} in the checkpoint, {seeds[1]} in the input)")
        if keys:
            raise ValueError(
                f"--restart {path}: a restart continues the same run, but the input differs "
                f"from the checkpoint in {', '.join(keys)}; restore those values, or train the "
                "changed network from these weights with --init-model (or --finetune for "
                "another type_map)"
            )
        # out.json and new checkpoints record the resolved sel
        self.settings.model = parse_model_section(section)
        return model

    def _model_dict(self) -> dict[str, Any]:
        """The input's ``model`` section as its normalised JSON dict."""
        return self.settings.model.model_dump(mode="json")

    def _input_network(
        self, weights: EnergyModel, path: Path, mode: str, saved: dict | None
    ) -> EnergyModel:
        """The input's network (it defines what is trained and what out.json records) with
        the parameters and statistics of ``weights``; they must have the same shapes."""
        desc = self.settings.model.descriptor
        if isinstance(desc.sel, str):
            desc.sel = int(weights.nnei)  # "auto" keeps the neighbour slots of the weights
        model = build_model(self.settings.model, sel=desc.sel)
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
            keys = _model_differences(section, self._model_dict()) if section else []
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
        training = self.settings.training
        main = self.dist.is_main
        shown = main and training.disp_training
        lcurve = None
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.restarted:
                truncate_lcurve(self.out_dir / training.disp_file, self.start_step)
            lcurve = LCurveWriter(
                self.out_dir / training.disp_file,
                self.loss_fn.metric_keys(),
                has_validation=self.valid_sampler is not None,
                append=self.restarted,
            )
        progress = TrainProgress(self.numb_steps, self.start_step, enabled=shown)
        board = (
            _tensorboard(self.out_dir / training.tensorboard_log_dir)
            if main and training.tensorboard
            else None
        )
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
                gmax = training.gradient_max_norm
                if gmax:  # 0 and null: off
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), gmax)
                self.optimizer.step()
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise FloatingPointError(
                        f"step {step + 1}: loss is {loss_value}; check the data and lower start_lr"
                    )
                if board is not None and (
                    (step + 1) % training.tensorboard_freq == 0 or step == 0
                ):
                    _log_scalars(board, step + 1, {"lr": lr, "loss": loss_value, **metrics})
                for k, v in metrics.items():
                    accum[k] = accum.get(k, 0.0) + v
                naccum += 1
                display = (step + 1) % training.disp_freq == 0 or step == 0
                if display:
                    train_m = metrics
                    if training.disp_avg:
                        train_m = {k: v / naccum for k, v in accum.items()}
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
                if (step + 1) % training.save_freq == 0 or step + 1 == self.numb_steps:
                    self._save(step + 1)
        finally:
            progress.close()
            if lcurve is not None:
                lcurve.close()
            if board is not None:
                board.close()
        if self.numb_steps == 0 and not self.restarted:
            self._save(0)  # as `dp train` with numb_steps 0: the model with its statistics only
        if main and training.change_bias_after_training:
            dstats.change_energy_bias(self.model, self._stat_batches())
            self._save(last_step)
        barrier(self.dist)
        elapsed = time.perf_counter() - t0
        if main and training.time_training and last_step > self.start_step:
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
