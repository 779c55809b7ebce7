"""Validate and normalise a DeePMD-kit style input file (``input.json``).

Public API::

    load_config(path) -> dict          # read JSON/YAML, then normalize_config
    load_settings(path) -> Config      # read JSON/YAML, then parse_config
    normalize_config(data) -> dict     # validate; fill defaults; resolve aliases
    parse_config(data) -> Config       # the same, as typed objects
    normalize_model_section(d) -> dict # the same for a ``model`` section on its own
    parse_model_section(d) -> Model    # ... as a typed object
    model_defaults_doc() -> str        # Markdown reference of every key
    ConfigError                        # one "dotted.path: problem" line per error

The schema (and every default) lives in :mod:`dpa1.io.config_schema`. Code that uses the
settings (the model builder, the trainer) reads the attributes of the typed objects
(:class:`~dpa1.io.config_schema.Config`, :class:`~dpa1.io.config_schema.Model`), never a dict
with a restated default. The normalised dict (``parse_config(data).model_dump(mode="json")``)
is plain JSON, uses canonical key names only, and validates again unchanged, so it can be
written to ``out.json`` and stored in checkpoints.
"""

from __future__ import annotations

import json
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticUndefined

from dpa1.io.config_schema import (
    Config,
    DescrptSeAtten,
    DescrptSeAttenV2,
    FittingNet,
    KeyProblems,
    LearningRate,
    Loss,
    Model,
    Optimizer,
    Section,
    Training,
    TrainingData,
    UnexpectedKey,
    ValidationData,
    aliases_of,
)

__all__ = ["Config", "ConfigError", "Model", "load_config", "load_settings", "model_defaults_doc",
           "normalize_config", "normalize_model_section", "parse_config", "parse_model_section"]


class ConfigError(ValueError):
    """Invalid input; the message has one ``dotted.path: problem`` line per error."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# === validation ===
def read_input(path: Path) -> Any:
    """The parsed content of a JSON (or, with PyYAML, a ``.yaml``/``.yml``) input file."""
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # optional: only YAML inputs need it
            return yaml.safe_load(text)
        return json.loads(text)
    except ImportError:
        raise ConfigError([f"{path}: reading YAML needs PyYAML (pip install pyyaml)"]) from None
    except Exception as err:  # JSONDecodeError, yaml.YAMLError (not a ValueError)
        raise ConfigError([f"{path}: cannot parse: {err}"]) from None


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON (or, with PyYAML, a ``.yaml``/``.yml``) input file and normalise it."""
    return normalize_config(read_input(Path(path)))


def load_settings(path: str | os.PathLike[str]) -> Config:
    """Read an input file (as :func:`load_config`) into typed settings."""
    return parse_config(read_input(Path(path)))


def parse_config(data: Mapping[str, Any] | Config) -> Config:
    """Validate an input dict into typed settings with all defaults filled in.

    Aliases become canonical names, ``_comment*`` keys are dropped anywhere, and derived
    values are resolved (descriptor type "se_atten" -> "dpa1", ``sel`` list -> sum,
    ``ln_eps`` null -> 1e-5, ``stop_lr`` from ``stop_lr_ratio``, "default" precision ->
    "float64", ``warmup_ratio`` -> ``warmup_steps`` when ``numb_steps`` is known).
    A :class:`Config` is returned as a deep copy (callers may change the copy).
    Raises :class:`ConfigError` listing every problem found.
    """
    if isinstance(data, Config):
        return data.model_copy(deep=True)
    if not isinstance(data, Mapping):
        raise ConfigError([f"<input>: expected a JSON object, got {type(data).__name__}"])
    try:
        return Config.model_validate(_strip_comments(data))
    except ValidationError as err:
        raise ConfigError([line for e in err.errors() for line in _describe(e)]) from None


def normalize_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`parse_config` as the plain JSON dict (the form of ``out.json``)."""
    return parse_config(data).model_dump(mode="json")


def parse_model_section(data: Mapping[str, Any] | Model) -> Model:
    """:func:`parse_config` for a ``model`` section alone (e.g. the one a checkpoint
    recorded), so sections written by older versions gain the defaults of newer keys."""
    if isinstance(data, Model):
        return data.model_copy(deep=True)
    if not isinstance(data, Mapping):
        raise ConfigError([f"model: expected a JSON object, got {type(data).__name__}"])
    try:
        return Model.model_validate(_strip_comments(data))
    except ValidationError as err:
        raise ConfigError([line for e in err.errors()
                           for line in _describe({**e, "loc": ("model", *e["loc"])})]) from None


def normalize_model_section(data: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`parse_model_section` as the plain JSON dict."""
    return parse_model_section(data).model_dump(mode="json")


def _strip_comments(value: Any) -> Any:
    """Drop ``_comment*`` keys at any depth (DeePMD inputs use them freely)."""
    if isinstance(value, Mapping):
        return {k: _strip_comments(v) for k, v in value.items()
                if not (isinstance(k, str) and k.startswith("_comment"))}
    if isinstance(value, list):
        return [_strip_comments(v) for v in value]
    return value


def _path(loc: tuple[int | str, ...], *more: str) -> str:
    """``('model', 'descriptor', '<dpa1>', 'neuron', 0)`` -> ``model.descriptor.neuron[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith("<"):  # "<...>" are union tags of config_schema, not keys
            out += f".{part}" if out else part
    for part in (m for m in more if m):
        out += f".{part}" if out else part
    return out or "<input>"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: ErrorDetails) -> list[str]:
    """Turn one pydantic error into one or more ``path: message`` lines."""
    loc, kind, value = error["loc"], error["type"], error.get("input")
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, KeyProblems):
        return [f"{_path(loc, where)}: {msg}" for where, msg in cause.problems]
    if kind == "extra_forbidden":
        message = value.message if isinstance(value, UnexpectedKey) else "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"expected an object (JSON dict), got {_short(value)}"
    elif isinstance(cause, Exception):  # our validators: the message is already complete
        message = str(cause)
    else:
        message = f"{error['msg']}, got {_short(value)}"
    return [f"{_path(loc)}: {message}"]


# === reference documentation ===
# (section, model, only the keys the class itself declares)
_DOC_SECTIONS: list[tuple[str, type[Section], bool]] = [
    ("(top level)", Config, False),
    ("model", Model, False),
    ('model.descriptor, type "se_atten" / "dpa1"', DescrptSeAtten, False),
    ('model.descriptor, type "se_atten_v2" (other keys as for "dpa1")', DescrptSeAttenV2, True),
    ("model.fitting_net", FittingNet, False),
    ("loss", Loss, False),
    ("learning_rate", LearningRate, False),
    ("optimizer", Optimizer, False),
    ("training", Training, False),
    ("training.training_data", TrainingData, False),
    ("training.validation_data (other keys as for training_data)", ValidationData, True),
]


def _type_name(tp: Any) -> str:
    """Readable form of a field annotation, e.g. ``list[int] | null``."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        names = dict.fromkeys(_type_name(a) for a in args)  # de-duplicated, ordered
        return " | ".join(names)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "object"
    return getattr(tp, "__name__", str(tp))


def _default_text(info: Any) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "{}"
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def model_defaults_doc() -> str:
    """Markdown reference of every input key: type, default, aliases and meaning."""
    lines = ["# Input reference", "",
             "Generated from `dpa1/io/config_schema.py` by "
             "`python -m dpa1.io.config_doc > docs/input_reference.md`; do not edit by hand.",
             "", "Keys starting with `_comment` are ignored anywhere. Unknown keys are errors.",
             "Aliases are accepted on input and written under the canonical name."]
    for title, cls, own_only in _DOC_SECTIONS:
        own = vars(cls).get("__annotations__", {})
        lines += ["", f"## {title}", "", (cls.__doc__ or "").strip().splitlines()[0], "",
                  "| key | type | default | aliases | description |", "|---|---|---|---|---|"]
        for name, info in cls.model_fields.items():
            if own_only and name not in own:
                continue
            aliases = ", ".join(f"`{a}`" for a in aliases_of(info))
            cells = [f"`{name}`", f"`{_type_name(info.annotation)}`", _default_text(info),
                     aliases, info.description or ""]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        if cls.rejected_keys and (not own_only or "rejected_keys" in vars(cls)):
            by_reason: dict[str, list[str]] = {}
            for key, why in cls.rejected_keys.items():
                by_reason.setdefault(why, []).append(f"`{key}`")
            lines += ["", "Rejected keys:", ""]
            lines += [f"- {', '.join(keys)}: {why}" for why, keys in by_reason.items()]
    return "\n".join(lines) + "\n"
