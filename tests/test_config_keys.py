"""Every key of the input schema either changes what is built or trained, or is refused.

The keys are walked from the pydantic schema (:mod:`dpa1.io.config_schema`), so a key added
later fails :func:`test_every_schema_key_has_a_case` until it gets a row in ``CASES``. Each
row sets one key to a non-default value and either expects a :class:`ConfigError` naming
the key, or compares a fingerprint of what the key feeds against the same input without
it: the built model (weights, dtypes, trainable flags, outputs) or a ``Trainer`` (its model
after the statistics, loss, learning rate, optimizer, samplers, the files and log lines of
its start and, for keys that act while training, of a 2-step run), or expects the Trainer
to stop with an error naming the key.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import re
import shutil
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import numpy as np
import pytest
import torch

from dpa1.io.config import ConfigError, normalize_config
from dpa1.io.config_schema import Config, DescrptSeAtten, DescrptSeAttenV2, Section

DROP = object()  # a context value: remove the key

# === the keys of the schema ================================================================
# The descriptor is a union: "dpa1" keys are walked as model.descriptor.*, and the keys that
# se_atten_v2 declares itself as model.descriptor.*@se_atten_v2 (run with that type).
_VARIANTS = {DescrptSeAttenV2: "se_atten_v2"}


def _sections(annotation: Any) -> list[type[Section]]:
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return [annotation]
    origin = get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return []
    return [s for arg in get_args(annotation) for s in _sections(arg)]


def schema_keys(cls: type[Section] = Config, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every leaf key (sections are walked, not listed)."""
    for name, info in cls.model_fields.items():
        path = f"{prefix}{name}"
        sections = _sections(info.annotation)
        if not sections:
            yield path
        for section in sections:
            if section in _VARIANTS:
                own = vars(section).get("__annotations__", {})
                yield from (f"{path}.{key}@{_VARIANTS[section]}" for key in section.model_fields
                            if key in own)
            else:
                yield from schema_keys(section, f"{path}.")


def test_walk_sees_nested_and_variant_keys() -> None:
    keys = set(schema_keys())
    assert {"model.descriptor.rcut", "model.fitting_net.neuron", "loss.huber_delta",
            "training.validation_data.numb_btch", "training.training_data.batch_size",
            "model.descriptor.tebd_input_mode@se_atten_v2"} <= keys
    assert len([k for k in keys if k.startswith("model.descriptor.")]) > len(
        DescrptSeAtten.model_fields)


# === one row per key ======================================================================
@dataclass(frozen=True)
class Case:
    """``value`` for the key; ``probe``: "model" (build_model), "train" (Trainer, no step),
    "run" (Trainer and 2 steps), "finetune" (Trainer fine-tuning a checkpoint of the base
    model), "fails" (the Trainer of the input without the key starts, the one with it stops
    with a one-line error naming the key) or "refused" (by the input check; ``refused_by``:
    the key the error names when it is another one); ``context``: dotted keys set in both
    inputs, for keys that act only together with another (``DROP`` removes a key)."""

    value: Any
    probe: str
    context: dict[str, Any] = field(default_factory=dict)
    refused_by: str | None = None


M, T, R, F, FAILS, NO = "model", "train", "run", "finetune", "fails", "refused"
_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
_TB_ON = {"training.tensorboard": True}
_TO_V2 = {f"model.descriptor.{k}": DROP for k in (
    "tebd_input_mode", "smooth_type_embedding", "stripped_type_embedding", "set_davg_zero")}
_FPARAM = {"model.fitting_net.numb_fparam": 1, "training.validation_data": None,
           "training.training_data.systems": "<fparam>"}

CASES: dict[str, Case] = {
    # --- model ---
    "model.type": Case("zbl", NO),
    "model.type_map": Case(["Cu", "Ag", "Au", "Ni", "Pt"], M),
    "model.data_stat_nbatch": Case(1, T),
    "model.data_stat_protect": Case(0.5, T, _FPARAM),
    "model.data_bias_nsample": Case(1, F),
    "model.pair_exclude_types": Case([[0, 1]], M),
    "model.atom_exclude_types": Case([1], M),
    "model.preset_out_bias": Case({"energy": [-1.0, None, None, None]}, T),
    # --- model.descriptor ---
    "model.descriptor.type": Case("se_atten_v2", M, _TO_V2),
    "model.descriptor.sel": Case(24, M),
    "model.descriptor.rcut": Case(3.5, M),
    "model.descriptor.rcut_smth": Case(1.0, M),
    "model.descriptor.neuron": Case([4, 6], M),
    "model.descriptor.axis_neuron": Case(3, M),
    "model.descriptor.lmax": Case(2, NO),
    "model.descriptor.activation_function": Case("gelu", M),
    "model.descriptor.resnet_dt": Case(True, M),
    "model.descriptor.type_one_side": Case(True, M),
    "model.descriptor.precision": Case("float32", M),
    "model.descriptor.trainable": Case(False, M),
    "model.descriptor.seed": Case(2, M),
    "model.descriptor.exclude_types": Case([[0, 1]], M),
    "model.descriptor.env_protection": Case(0.1, M),
    "model.descriptor.attn": Case(16, M),
    "model.descriptor.attn_layer": Case(0, M),
    "model.descriptor.attn_dotr": Case(False, M),
    "model.descriptor.attn_mask": Case(True, M),
    "model.descriptor.trainable_ln": Case(False, M),
    "model.descriptor.ln_eps": Case(1e-3, M),
    "model.descriptor.tebd_dim": Case(6, M),
    "model.descriptor.use_econf_tebd": Case(True, M),
    "model.descriptor.use_tebd_bias": Case(True, M),
    "model.descriptor.scaling_factor": Case(2.0, M),
    "model.descriptor.normalize": Case(False, M),
    "model.descriptor.temperature": Case(0.5, M),
    "model.descriptor.concat_output_tebd": Case(False, M),
    "model.descriptor.set_davg_zero": Case(False, T),
    "model.descriptor.tebd_input_mode": Case("strip", M),
    "model.descriptor.smooth_type_embedding": Case(True, M),
    "model.descriptor.stripped_type_embedding": Case(True, M),
    "model.descriptor.type@se_atten_v2": Case("dpa1", M),
    "model.descriptor.set_davg_zero@se_atten_v2": Case(True, T),
    "model.descriptor.tebd_input_mode@se_atten_v2": Case("concat", NO),
    "model.descriptor.smooth_type_embedding@se_atten_v2": Case(False, NO),
    # --- model.fitting_net ---
    "model.fitting_net.type": Case("dipole", NO),
    "model.fitting_net.numb_fparam": Case(1, M),
    "model.fitting_net.numb_aparam": Case(1, M),
    "model.fitting_net.default_fparam": Case([0.5], M, {"model.fitting_net.numb_fparam": 1}),
    "model.fitting_net.dim_case_embd": Case(2, NO),
    "model.fitting_net.neuron": Case([8], M),
    "model.fitting_net.activation_function": Case("relu", M),
    "model.fitting_net.precision": Case("float32", M),
    "model.fitting_net.resnet_dt": Case(False, M),
    "model.fitting_net.trainable": Case(False, M),
    "model.fitting_net.rcond": Case(0.5, T),
    "model.fitting_net.seed": Case(2, M),
    "model.fitting_net.atom_ener": Case([1.0, None, None, None], M),
    "model.fitting_net.use_aparam_as_mask": Case(True, M, {"model.fitting_net.numb_aparam": 1}),
    # --- loss ---
    "loss.type": Case("ener_hess", NO),
    **{f"loss.{k}": Case(0.5, T) for k in (
        "start_pref_e", "limit_pref_e", "start_pref_f", "limit_pref_f", "start_pref_v",
        "limit_pref_v", "start_pref_ae", "limit_pref_ae", "start_pref_pf", "limit_pref_pf")},
    **{f"loss.{k}": Case(0.5, NO) for k in (
        "start_pref_gf", "limit_pref_gf", "start_pref_h", "limit_pref_h")},
    "loss.numb_generalized_coord": Case(3, NO),
    "loss.use_default_pf": Case(True, T),
    "loss.relative_f": Case(0.5, T),
    "loss.enable_atom_ener_coeff": Case(True, T),
    "loss.use_huber": Case(True, T),
    "loss.huber_delta": Case(0.5, T, {"loss.use_huber": True}),
    "loss.loss_func": Case("mae", T),
    "loss.f_use_norm": Case(True, T, {"loss.loss_func": "mae"}),
    "loss.intensive_ener_virial": Case(True, T),
    # --- learning_rate ---
    "learning_rate.type": Case("cosine", NO),
    "learning_rate.start_lr": Case(2e-3, T),
    "learning_rate.stop_lr": Case(1e-6, T),
    "learning_rate.stop_lr_ratio": Case(0.01, T, {"learning_rate.stop_lr": DROP}),
    "learning_rate.warmup_steps": Case(1, T),
    "learning_rate.warmup_ratio": Case(0.5, T),
    "learning_rate.warmup_start_factor": Case(0.5, T, {"learning_rate.warmup_steps": 1}),
    "learning_rate.scale_by_worker": Case("sqrt", NO),
    # with 2 steps any decay_steps >= 2 is replaced by 1 (as DeePMD does): use more steps
    "learning_rate.decay_steps": Case(50, T, {"training.numb_steps": 1000}),
    "learning_rate.decay_rate": Case(0.5, T),
    "learning_rate.smooth": Case(True, T),
    # --- optimizer ---
    "optimizer.type": Case("AdamW", T),
    "optimizer.adam_beta1": Case(0.5, T),
    "optimizer.adam_beta2": Case(0.9, T),
    "optimizer.weight_decay": Case(0.1, T),
    # --- training ---
    "training.stat_file": Case("stat.hdf5", T),
    # with a stat_file that does not exist yet: "update" writes it, "read" stops
    "training.stat_file_mode": Case("read", FAILS, {"training.stat_file": "stat.hdf5"}),
    "training.numb_steps": Case(1, T),
    "training.numb_epoch": Case(2, T, {"training.numb_steps": DROP, "training.numb_epoch": 1}),
    "training.seed": Case(8, T),
    "training.disp_file": Case("curve.out", R),
    "training.disp_freq": Case(2, R),
    "training.save_freq": Case(1, R),
    "training.save_ckpt": Case("ck", R),
    "training.save_dir": Case("ckpts", R),
    "training.max_ckpt_keep": Case(1, R, {"training.save_freq": 1}),
    "training.ckpt_keep_ratio": Case(0.5, NO),
    "training.enable_ema": Case(True, NO),
    "training.ema_decay": Case(0.99, NO),
    "training.ema_ckpt_keep": Case(2, NO),
    "training.change_bias_after_training": Case(True, R),
    "training.disp_training": Case(False, R),
    "training.time_training": Case(False, R),
    "training.disp_avg": Case(True, R, {"training.disp_freq": 3, "training.numb_steps": 3}),
    "training.gradient_max_norm": Case(1e-6, R),
    "training.profiling": Case(True, NO),
    "training.profiling_file": Case("t.json", NO),
    "training.enable_profiler": Case(True, NO),
    # without the optional tensorboard package, tensorboard: true is refused
    "training.tensorboard": Case(True, R if _TENSORBOARD else NO),
    "training.tensorboard_log_dir": Case("tb", R, _TB_ON) if _TENSORBOARD else Case(
        "tb", NO, _TB_ON, refused_by="training.tensorboard"),
    "training.tensorboard_freq": Case(5, R, _TB_ON) if _TENSORBOARD else Case(
        5, NO, _TB_ON, refused_by="training.tensorboard"),
    "training.zero_stage": Case(1, NO),
    # --- training.training_data and training.validation_data ---
    "training.training_data.systems": Case("<first two>", T),
    "training.training_data.rglob_patterns": Case(["Cu*"], T, {
        "training.training_data.systems": "<root>"}),
    "training.training_data.batch_size": Case(2, T),
    "training.training_data.auto_prob": Case("prob_uniform", T),
    "training.training_data.sys_probs": Case([0.1, 0.2, 0.3, 0.2, 0.2], T),
    "training.training_data.min_pair_dist": Case(0.5, NO),
    "training.validation_data.systems": Case("<first two>", T),
    "training.validation_data.rglob_patterns": Case(["Ni*"], T, {
        "training.validation_data.systems": "<root>"}),
    "training.validation_data.batch_size": Case(2, T),
    "training.validation_data.auto_prob": Case("prob_uniform", T),
    "training.validation_data.sys_probs": Case([0.9, 0.1], T),
    "training.validation_data.min_pair_dist": Case(0.5, NO),
    "training.validation_data.numb_btch": Case(2, R),
}


def test_every_schema_key_has_a_case() -> None:
    keys = set(schema_keys())
    assert not keys - set(CASES), f"keys without a row in CASES: {sorted(keys - set(CASES))}"
    assert not set(CASES) - keys, f"rows for keys the schema lacks: {sorted(set(CASES) - keys)}"


# === inputs ===============================================================================
@dataclass
class Inputs:
    base: dict[str, Any]
    paths: dict[str, Any]  # "<root>", "<first two>", "<fparam>" placeholders
    pretrained: Path


@pytest.fixture(scope="module")
def inputs(alloy, tiny_model_config, tmp_path_factory) -> Inputs:
    """A 4-element input on the alloy systems (2-4 frames each, 8-32 atoms)."""
    from dpa1.io.model_file import save_checkpoint
    from dpa1.model.build import build_model

    tmp = tmp_path_factory.mktemp("keys")
    standard = sorted(alloy.standard)
    fparam = shutil.copytree(standard[0], tmp / "with_fparam")
    for sd in fparam.glob("set.*"):
        n = np.load(sd / "energy.npy").shape[0]
        np.save(sd / "fparam.npy", np.full((n, 1), 0.3))
    base = {
        "model": tiny_model_config(alloy.type_map),
        "learning_rate": {"start_lr": 1e-3, "stop_lr": 1e-8, "decay_steps": 100},
        "training": {
            "training_data": {"systems": standard, "batch_size": 1},
            # 2 and 4 frames: prob_sys_size is not uniform
            "validation_data": {"systems": standard[1:3], "batch_size": 1},
            "numb_steps": 2, "seed": 7,
        },
    }
    model = build_model(normalize_config(base)["model"])
    save_checkpoint(tmp / "pretrained.pt", model, config=normalize_config(base))
    paths = {"<root>": str(Path(standard[0]).parent), "<first two>": standard[:2],
             "<fparam>": [str(fparam)]}
    return Inputs(base, paths, tmp / "pretrained.pt")


def _put(data: dict[str, Any], path: str, value: Any, paths: dict[str, Any]) -> None:
    *parents, key = path.split(".")
    for name in parents:
        data = data.setdefault(name, {})
    if value is DROP:
        data.pop(key, None)
    else:
        data[key] = paths.get(value, value) if isinstance(value, str) else value


def _configs(key: str, case: Case, inputs: Inputs) -> tuple[dict, dict]:
    """(the input without the key, the input with it), both with the case's context."""
    path, _, variant = key.partition("@")
    context = dict(case.context)
    if variant:
        context.update(_TO_V2, **{"model.descriptor.type": variant})
    ref = copy.deepcopy(inputs.base)
    for where, value in context.items():
        _put(ref, where, value, inputs.paths)
    new = copy.deepcopy(ref)
    _put(new, path, case.value, inputs.paths)
    return ref, new


# === fingerprints =========================================================================
def _plain(obj: Any) -> Any:
    """Tensors, arrays and containers as comparable plain values."""
    if isinstance(obj, torch.Tensor):
        return (str(obj.dtype), tuple(obj.shape), obj.detach().cpu().double().flatten().tolist())
    if isinstance(obj, np.ndarray):
        return (str(obj.dtype), obj.shape, obj.astype(np.float64).flatten().tolist())
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _evaluate(model: torch.nn.Module, with_params: bool) -> Any:
    gen = torch.Generator().manual_seed(0)
    coord = torch.rand(1, 8, 3, generator=gen, dtype=torch.float64) * 6.0
    atype = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    box = (6.0 * torch.eye(3, dtype=torch.float64)).unsqueeze(0)
    nf, na = model.fitting.numb_fparam, model.fitting.numb_aparam
    fparam = torch.ones(1, nf, dtype=torch.float64) if with_params and nf else None
    aparam = torch.ones(1, 8, na, dtype=torch.float64) if with_params and na else None
    try:
        out = model(coord, atype, box, fparam=fparam, aparam=aparam)
    except (ValueError, RuntimeError) as err:  # e.g. fparam needed and not given
        return type(err).__name__
    return _plain([out["energy"], out["force"]])


def model_fingerprint(model: torch.nn.Module) -> Any:
    return (_plain(model.state_dict()),
            [(n, p.requires_grad) for n, p in model.named_parameters()],
            [_evaluate(model, with_params) for with_params in (False, True)])


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.templates: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.templates.append(str(record.msg))  # the template: timings must not count


def _file_fingerprint(path: Path, out: Path) -> tuple[str, Any]:
    """A written file: its name and text; a checkpoint: its name; a TensorBoard event file
    (named by time, host and process): its folder and scalars; other binary files: a hash."""
    name = str(path.relative_to(out))
    if path.suffix == ".pt":
        return name, None
    if path.name.startswith("events.out.tfevents."):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        board = EventAccumulator(str(path))
        board.Reload()
        return str(path.parent.relative_to(out) / "events"), {
            tag: [(s.step, s.value) for s in board.Scalars(tag)]
            for tag in board.Tags()["scalars"]}
    data = path.read_bytes()
    try:
        return name, data.decode()
    except UnicodeDecodeError:
        return name, hashlib.sha1(data).hexdigest()


def trainer_fingerprint(config: dict, out: Path, run: bool, finetune: Path | None = None) -> Any:
    from dpa1.train.trainer import Trainer

    logger, handler = logging.getLogger("dpa1"), _Messages()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        trainer = Trainer(copy.deepcopy(config), out, input_dir=out, finetune=finetune)
        if run:
            trainer.run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    samplers = [(s.systems and [x.path for x in s.systems], s.batch_sizes, list(s.probs),
                 s.state_dict()) for s in (trainer.sampler, trainer.valid_sampler) if s]
    files = sorted(_file_fingerprint(p, out) for p in out.rglob("*") if p.is_file())
    loss = {k: v for k, v in vars(trainer.loss_fn).items() if not k.startswith("_")}
    optimizer = [{k: v for k, v in g.items() if k != "params"}
                 for g in trainer.optimizer.param_groups]
    return _plain({
        "model": model_fingerprint(trainer.model), "loss": loss, "lr": vars(trainer.lr),
        "optimizer": (type(trainer.optimizer).__name__, optimizer), "samplers": samplers,
        "numb_btch": getattr(trainer, "numb_btch", None), "numb_steps": trainer.numb_steps,
        "files": files, "log": handler.templates})


def _fingerprint(case: Case, config: dict, inputs: Inputs, out: Path) -> Any:
    from dpa1.model.build import build_model

    if case.probe == M:
        torch.manual_seed(0)
        return model_fingerprint(build_model(copy.deepcopy(config["model"])))
    finetune = inputs.pretrained if case.probe == F else None
    return trainer_fingerprint(config, out, run=case.probe == R, finetune=finetune)


# === the test =============================================================================
def test_every_key_takes_effect_or_is_refused(inputs: Inputs, tmp_path: Path) -> None:
    references: dict[tuple, Any] = {}
    counter = iter(range(10**6))

    def fresh() -> Path:
        return tmp_path / f"out{next(counter)}"

    def fingerprint_of(case: Case, config: dict) -> Any:
        return _fingerprint(case, config, inputs, fresh())

    ignored = []
    for key, case in CASES.items():
        ref, new = _configs(key, case, inputs)
        path = key.partition("@")[0]
        if case.probe == NO:
            with pytest.raises(ConfigError) as info:
                normalize_config(new)
            assert f"{case.refused_by or path}:" in str(info.value), (key, str(info.value))
            continue
        ref_cfg, new_cfg = normalize_config(ref), normalize_config(new)
        if case.probe == FAILS:
            trainer_fingerprint(ref_cfg, fresh(), run=False)
            with pytest.raises(ValueError) as info:
                trainer_fingerprint(new_cfg, fresh(), run=False)
            message = str(info.value)
            assert path.rpartition(".")[2] in message and "\n" not in message, (key, message)
            continue
        assert new_cfg != ref_cfg, f"{key}: the normalised input does not change"
        slot = (case.probe, repr(sorted(case.context.items(), key=str)), key.partition("@")[2])
        if slot not in references:
            references[slot] = fingerprint_of(case, ref_cfg)
            # a fingerprint must be reproducible, or every comparison below would pass
            assert fingerprint_of(case, ref_cfg) == references[slot], slot
        if fingerprint_of(case, new_cfg) == references[slot]:
            ignored.append(key)
    assert not ignored, f"accepted but without effect: {ignored}"


def test_rejected_keys_are_refused(inputs: Inputs) -> None:
    """The DeePMD keys the sections list as rejected (TF-only, multi-task, ...)."""
    where: dict[type[Section], str] = {}

    def walk(cls: type[Section], prefix: str) -> None:
        where.setdefault(cls, prefix)
        for name, info in cls.model_fields.items():
            for section in _sections(info.annotation):
                walk(section, f"{prefix}{name}.")

    walk(Config, "")
    checked = 0
    for cls, prefix in where.items():
        for key in cls.rejected_keys:
            data = copy.deepcopy(inputs.base)
            if cls is DescrptSeAttenV2:
                for where, value in {**_TO_V2, "model.descriptor.type": "se_atten_v2"}.items():
                    _put(data, where, value, {})
            _put(data, f"{prefix}{key}", {}, {})
            with pytest.raises(ConfigError, match=f"^{re.escape(prefix + key)}: "):
                normalize_config(data)
            checked += 1
    assert checked >= 20

