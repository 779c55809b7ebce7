"""Pydantic schema of the DeePMD-kit input file, restricted to what dpa1 supports.

This is the *only* place where input defaults live (docs/design.md, "Input file"). Each key is
declared with
:func:`_key`, which records its description and its DeePMD aliases; `config.py` turns
validation errors into readable messages and `config_doc.py` renders these models as Markdown.

Conventions:
- Every section derives from :class:`Section`: strict types (no "6" → 6.0), unknown keys
  rejected, aliases renamed to the canonical key before validation.
- Validators also *normalise* (e.g. ``sel`` list → its sum, ``"se_atten"`` → ``"dpa1"``), so
  ``model_dump()`` is the canonical input, and validating that dump again is a no-op.
- Cross-key checks raise :class:`KeyProblems` so the error can point at the offending key.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    model_validator,
)
from pydantic.fields import FieldInfo


# === error plumbing shared with config.py ===
@dataclass(frozen=True)
class UnexpectedKey:
    """Stands in for the value of a key the section does not accept.

    Pydantic's ``extra_forbidden`` error knows *where* the key is but not our suggestion, so the
    message travels inside the rejected value (pydantic reports it as the error's ``input``).
    """

    message: str


class KeyProblems(ValueError):
    """Cross-key errors of one section; ``where`` is a dotted path relative to that section."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{w}: {m}" for w, m in self.problems))


def _raise_if(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise KeyProblems(problems)


def _key(default: Any = ..., doc: str = "", *, aliases: tuple[str, ...] = (), **kw: Any) -> Any:
    """Declare one input key: default (``...`` = required), description and DeePMD aliases."""
    extra = {"aliases": list(aliases)} if aliases else None
    if "default_factory" in kw:
        return Field(description=doc, json_schema_extra=extra, **kw)
    return Field(default, description=doc, json_schema_extra=extra, **kw)


def aliases_of(info: FieldInfo) -> list[str]:
    """The DeePMD aliases recorded by :func:`_key`."""
    extra = info.json_schema_extra
    if not isinstance(extra, dict):
        return []
    return list(extra.get("aliases", []))  # type: ignore[arg-type]


class Section(BaseModel):
    """Base of every input section: strict, closed, alias-aware."""

    model_config = ConfigDict(extra="forbid", strict=True)
    # key -> why it is refused (keys DeePMD knows but dpa1 does not support)
    rejected_keys: ClassVar[dict[str, str]] = {}

    @classmethod
    def spellings(cls) -> dict[str, str]:
        """Every accepted spelling (canonical name or alias) -> canonical name."""
        names = {name: name for name in cls.model_fields}
        for name, info in cls.model_fields.items():
            names.update({alias: name for alias in aliases_of(info)})
        return names

    @model_validator(mode="before")
    @classmethod
    def _resolve_keys(cls, data: Any) -> Any:
        """Rename aliases; replace the values of unexpected keys by an :class:`UnexpectedKey`."""
        if not isinstance(data, Mapping):
            return data  # pydantic reports "expected an object"
        spellings = cls.spellings()
        out: dict[str, Any] = {}
        given_as: dict[str, str] = {}  # canonical -> the spelling the user used
        for key, value in data.items():
            name = spellings.get(key)
            if key in cls.rejected_keys:
                out[key] = UnexpectedKey(cls.rejected_keys[key])
            elif name is None:
                close = difflib.get_close_matches(str(key), list(spellings), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                out[key] = UnexpectedKey(f"unknown key{hint}")
            elif name in given_as:
                out[key] = UnexpectedKey(f"'{given_as[name]}' is also given (same key "
                                         f"'{name}'); keep only one")
            else:
                given_as[name] = key
                out[name] = value
        return out


# === reusable value types ===
PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]
TypePair = Annotated[list[NonNegInt], Field(min_length=2, max_length=2)]


def _supported(what: str, choices: tuple[Any, ...],
               notes: Mapping[str, str] | None = None) -> Any:
    """Before-validator for a fixed choice that explains unsupported DeePMD values."""
    def check(value: Any) -> Any:
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        options = " or ".join(repr(c) for c in choices)
        note = (notes or {}).get(value, "") if isinstance(value, str) else ""
        raise ValueError(note or f"{what} {value!r} is not supported; expected {options}")
    return BeforeValidator(check)


def _default_only(default: Any, feature: str) -> Any:
    """Before-validator for a DeePMD key of a feature dpa1 lacks: only the DeePMD default is
    accepted (it appears in normalised dumps and in DeePMD inputs), anything else is refused."""
    def check(value: Any) -> Any:
        if value == default and isinstance(value, bool) == isinstance(default, bool):
            return value
        raise ValueError(f"not supported by dpa1 ({feature}); remove the key or set it to "
                         f"{json.dumps(default)}")
    return BeforeValidator(check)


def _needs_tensorboard(value: bool) -> bool:
    """``tensorboard: true`` needs ``torch.utils.tensorboard`` (the tensorboard package)."""
    if value:
        try:
            if importlib.util.find_spec("tensorboard") is None:
                raise ImportError("tensorboard")
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise ValueError("TensorBoard logging needs the tensorboard package, which is not "
                             "installed: pip install tensorboard (or set it to false)") from None
    return value


def _only(expected: Any, message: str) -> Any:
    """Before-validator for a key whose value is forced (kept so normalised dumps validate)."""
    def check(value: Any) -> Any:
        if value == expected and type(value) is type(expected):
            return value
        raise ValueError(f"{message} (got {value!r})")
    return BeforeValidator(check)


_ACTIVATIONS = ("tanh", "relu", "relu6", "softplus", "sigmoid", "silu", "gelu", "gelu_tf",
                "none", "linear", "silut", "custom_silu")


def _activation(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # the str type check reports it
    name, _, threshold = value.lower().partition(":")
    ok = name in _ACTIVATIONS and (not threshold or name in ("silut", "custom_silu"))
    try:
        float(threshold or 0)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"unknown activation function {value!r}; expected one of "
                         f"{', '.join(_ACTIVATIONS)} (silut/custom_silu may take ':T')")
    return value.lower()  # names are case-insensitive (docs/design.md, "Dense layers")


def _precision(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("default", "float64", "float32"):
        return "float64" if value.lower() == "default" else value.lower()
    if isinstance(value, str):
        raise ValueError(f"precision {value!r} is not supported; expected 'default' "
                         "(= float64), 'float64' or 'float32'")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sel(value: Any) -> int | str:
    # se_atten uses one type-agnostic neighbour count, so a per-type list only counts by its sum
    if _is_int(value) and value > 0:
        return value
    if isinstance(value, list) and value and all(_is_int(v) and v >= 0 for v in value) \
            and sum(value) > 0:
        return sum(value)
    if isinstance(value, str) and re.fullmatch(r"auto(:\d*\.?\d+)?", value):
        return value  # resolved later by the neighbour statistics (docs/design.md, "Automatic sel")
    raise ValueError("expected a positive int, a list of non-negative ints, or 'auto' / "
                     f"'auto:<factor>', got {value!r}")


def _batch_size(value: Any) -> int | list[int] | str:
    if _is_int(value) and value > 0:
        return value
    if isinstance(value, list) and value and all(_is_int(v) and v > 0 for v in value):
        return value
    if isinstance(value, str) and re.fullmatch(r"auto|(auto|max|filter):[1-9]\d*", value):
        return value
    if isinstance(value, str) and value.startswith("mixed:"):
        raise ValueError("batch_size 'mixed:N' is TensorFlow only")
    raise ValueError("expected a positive int, a list of positive ints, 'auto', 'auto:N', "
                     f"'max:N' or 'filter:N', got {value!r}")


def _auto_prob(value: Any) -> Any:
    number = r"\d*\.?\d+([eE][-+]?\d+)?"
    pattern = rf"prob_uniform|prob_sys_size(;\d+:\d+:{number})*"
    if isinstance(value, str) and not re.fullmatch(pattern, value):
        raise ValueError(f"expected 'prob_sys_size', 'prob_uniform' or "
                         f"'prob_sys_size;a:b:w;...', got {value!r}")
    return value


def _one_or_list(is_ok: Callable[[Any], bool], what: str, length: int | None = None) -> Any:
    """Plain validator for "X or list of X" keys: one clear message instead of a union's two."""
    def check(value: Any) -> Any:
        if is_ok(value):
            return value
        if isinstance(value, list) and value and (length is None or len(value) == length) \
                and all(is_ok(v) for v in value):
            return value
        raise ValueError(f"expected {what}, got {value!r}")
    return PlainValidator(check)


def _is_pos_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


Activation = Annotated[str, BeforeValidator(_activation)]
Precision = Annotated[Literal["float64", "float32"], BeforeValidator(_precision)]
Seed = int | None

_TF_ONLY = "TensorFlow only; not supported by dpa1"
_NOT_DPA1 = "not supported by dpa1 (not part of a plain DPA-1 energy model)"
_MULTITASK = "multi-task training is not supported by dpa1"


# === model.descriptor (docs/design.md, "Input file") ===
class _DescriptorCommon(Section):
    """Keys shared by se_atten/dpa1 and se_atten_v2."""

    type: str = _key(..., "Descriptor type (declared here so it comes first in dumps)")
    sel: Annotated[int | list[int] | str, PlainValidator(_sel)] = _key(
        "auto", "Neighbour slots N_c; a list counts by its sum; 'auto[:f]' = data statistics "
        "x f (default 1.1), rounded up to a multiple of 4")
    rcut: PosFloat = _key(6.0, "Cutoff radius (Å)")
    rcut_smth: NonNegFloat = _key(0.5, "Where the smoothing of the switching function starts (Å)")
    neuron: list[PosInt] = _key([10, 20, 40], "Embedding-net widths; the last one is M",
                                min_length=1)
    axis_neuron: PosInt = _key(4, "M<, the number of axis columns (<= neuron[-1])",
                               aliases=("n_axis_neuron",))
    lmax: Annotated[int, _default_only(1, "angular moments beyond lmax = 1")] = _key(
        1, "Angular degree of the moment basis; only 1 (standard DPA-1)")
    activation_function: Activation = _key("tanh", "Embedding-net activation")
    resnet_dt: bool = _key(False, "Timestep `idt` in the skip connections")
    type_one_side: bool = _key(False, "Use only the neighbour type embedding")
    precision: Precision = _key("float64", "Parameter precision ('default' = float64)")
    trainable: bool = _key(True, "Whether the descriptor parameters are trained")
    seed: Seed = _key(None, "Initialisation seed")
    exclude_types: list[TypePair] = _key([], "Descriptor-level excluded type pairs")
    env_protection: NonNegFloat = _key(0.0, "Protection p added to r in the environment matrix")
    attn: PosInt = _key(128, "Attention hidden width d_a")
    attn_layer: NonNegInt = _key(2, "Number of attention layers")
    attn_dotr: bool = _key(True, "Angular gate u_j·u_k on the attention weights")
    attn_mask: bool = _key(False, "Mask the diagonal of the attention weights")
    trainable_ln: bool = _key(True, "Trainable LayerNorm gamma and beta")
    ln_eps: Annotated[PosFloat, BeforeValidator(lambda v: 1e-5 if v is None else v)] = _key(
        1e-5, "LayerNorm epsilon (null = 1e-5)")
    tebd_dim: PosInt = _key(8, "Type-embedding width d_t")
    use_econf_tebd: bool = _key(False, "Electronic-configuration type embedding")
    use_tebd_bias: bool = _key(False, "Bias in the type-embedding layer")
    scaling_factor: PosFloat = _key(1.0, "Attention scale alpha = (d_a*scaling_factor)^-1/2")
    normalize: bool = _key(True, "L2-normalise the Q, K, V rows")
    temperature: PosFloat | None = _key(None, "If set, the attention scale alpha")
    concat_output_tebd: bool = _key(True, "Append the centre type embedding to the descriptor")

    @model_validator(mode="after")
    def _check_ranges(self) -> _DescriptorCommon:
        problems = []
        if self.rcut_smth >= self.rcut:
            problems.append(("rcut_smth", f"must be smaller than rcut ({self.rcut}), "
                                          f"got {self.rcut_smth}"))
        if self.axis_neuron > self.neuron[-1]:
            problems.append(("axis_neuron", f"must be <= neuron[-1] ({self.neuron[-1]}), "
                                            f"got {self.axis_neuron}"))
        _raise_if(problems)
        return self


class DescrptSeAtten(_DescriptorCommon):
    """Descriptor type "se_atten" (alias "dpa1"); normalised to "dpa1"."""

    # "se_atten_v2" never gets here (the discriminator picks DescrptSeAttenV2); it is listed so
    # the message for an unsupported type names all three.
    type: Annotated[Literal["dpa1", "se_atten"], _supported(
        "descriptor type", ("se_atten", "dpa1", "se_atten_v2"))] = _key(
        ..., "'se_atten' or 'dpa1' (the same descriptor; normalised to 'dpa1')")
    set_davg_zero: bool = _key(True, "Keep davg = 0 (only dstd is computed)")
    tebd_input_mode: Literal["concat", "strip"] = _key(
        "concat", "How the type embedding enters the embedding net: 'concat' or 'strip'")
    smooth_type_embedding: bool = _key(
        False, "Smooth attention and smooth strip gating", aliases=("smooth_type_embdding",))
    stripped_type_embedding: bool | None = _key(
        None, "Deprecated: true = tebd_input_mode 'strip', false = 'concat' (resolved to null)")

    @model_validator(mode="after")
    def _canonicalise(self) -> DescrptSeAtten:
        self.type = "dpa1"
        # the deprecated key wins (docs/design.md, "Embedding input")
        if self.stripped_type_embedding is not None:
            self.tebd_input_mode = "strip" if self.stripped_type_embedding else "concat"
            self.stripped_type_embedding = None
        return self


class DescrptSeAttenV2(_DescriptorCommon):
    """Descriptor type "se_atten_v2": se_atten with strip mode and smoothing forced."""

    rejected_keys = {"stripped_type_embedding": "not accepted by se_atten_v2 (always 'strip')"}
    type: Literal["se_atten_v2"] = _key(..., "'se_atten_v2'")
    set_davg_zero: bool = _key(False, "Keep davg = 0 (only dstd is computed)")
    # Only the forced values are accepted: they appear in the normalised input, which must
    # validate again; any other value is an error as in DeePMD.
    tebd_input_mode: Annotated[Literal["strip"], _only(
        "strip", "se_atten_v2 always uses 'strip'; use type 'dpa1' to choose")] = _key(
        "strip", "Always 'strip' (written to the normalised input; do not set)")
    smooth_type_embedding: Annotated[Literal[True], _only(
        True, "se_atten_v2 always uses true; use type 'dpa1' to choose")] = _key(
        True, "Always true (written to the normalised input; do not set)",
        aliases=("smooth_type_embdding",))


def _descriptor_tag(data: Any) -> str:
    # Called with the input dict when validating and with the model when serialising.
    # Tags are wrapped in <> so the error formatter can drop them from paths.
    kind = data.get("type") if isinstance(data, Mapping) else getattr(data, "type", None)
    return "<se_atten_v2>" if kind == "se_atten_v2" else "<dpa1>"


Descriptor = Annotated[
    Annotated[DescrptSeAtten, Tag("<dpa1>")] | Annotated[DescrptSeAttenV2, Tag("<se_atten_v2>")],
    Discriminator(_descriptor_tag),
]


# === model.fitting_net (docs/design.md, "Input file") ===
class FittingNet(Section):
    """Energy fitting network (type "ener")."""

    rejected_keys = {"layer_name": "parameter sharing is TensorFlow only; not supported by dpa1"}
    type: Annotated[Literal["ener"], _supported("fitting type", ("ener",))] = _key(
        "ener", "Fitting type; only 'ener'"
    )
    numb_fparam: NonNegInt = _key(0, "Frame-parameter dimension")
    numb_aparam: NonNegInt = _key(0, "Atomic-parameter dimension")
    default_fparam: list[float] | None = _key(None, "fparam used when the data has none")
    dim_case_embd: Annotated[int, _default_only(0, "multi-task case embeddings")] = _key(
        0, "Case-embedding dimension (multi-task); only 0"
    )
    neuron: list[PosInt] = _key([120, 120, 120], "Hidden-layer widths", aliases=("n_neuron",))
    activation_function: Activation = _key("tanh", "Hidden-layer activation")
    precision: Precision = _key("float64", "Parameter precision ('default' = float64)")
    resnet_dt: bool = _key(True, "Timestep `idt` in the skip connections")
    trainable: Annotated[
        bool | list[bool], _one_or_list(lambda v: isinstance(v, bool), "a bool or a list of bools")
    ] = _key(
        True,
        "Whether the parameters are trained (a list must repeat one value: per-layer "
        "flags are not supported)",
    )
    rcond: NonNegFloat | None = _key(
        None,
        "Cut-off ratio of the small singular values in the "
        "energy-bias least squares (numpy.linalg.lstsq)",
    )
    seed: Seed = _key(None, "Initialisation seed")
    atom_ener: list[float | None] = _key(
        [], "Per-type vacuum energies (switches on vacuum removal)"
    )
    use_aparam_as_mask: bool = _key(False, "aparam is a mask and not fed to the net")

    @model_validator(mode="after")
    def _check_fparam(self) -> FittingNet:
        problems = []
        if self.default_fparam is not None and len(self.default_fparam) != self.numb_fparam:
            problems.append(
                (
                    "default_fparam",
                    f"needs numb_fparam = {self.numb_fparam} values, "
                    f"got {len(self.default_fparam)}",
                )
            )
        if isinstance(self.trainable, list) and len(set(self.trainable)) > 1:
            problems.append(
                (
                    "trainable",
                    "per-layer flags are not supported by dpa1; give one "
                    "bool for the whole fitting net",
                )
            )
        _raise_if(problems)
        return self


# === model (docs/design.md, "Input file") ===
class Model(Section):
    """The standard (descriptor + fitting) energy model."""

    rejected_keys = {
        "type_embedding": "TensorFlow only; put tebd_dim, use_econf_tebd and use_tebd_bias "
        "in model.descriptor instead",
        **{
            k: _NOT_DPA1
            for k in (
                "spin",
                "use_srtab",
                "smin_alpha",
                "sw_rmin",
                "sw_rmax",
                "srtab_add_bias",
                "modifier",
                "compress",
                "finetune_head",
                "info",
                "model_branch_alias",
            )
        },
        "model_dict": _MULTITASK,
        "shared_dict": _MULTITASK,
    }
    type: Annotated[Literal["standard"], _supported("model type", ("standard",))] = _key(
        "standard", "Model type; only 'standard'"
    )
    type_map: list[Annotated[str, Field(min_length=1)]] = _key(
        ..., "Element names; ntypes = its length", min_length=1
    )
    descriptor: Descriptor = _key(..., "The DPA-1 descriptor")
    fitting_net: FittingNet = _key(..., "The energy fitting network")
    data_stat_nbatch: PosInt = _key(10, "Batches per system used for the statistics")
    data_stat_protect: PosFloat = _key(1e-2, "Std protection of the fparam/aparam statistics")
    data_bias_nsample: PosInt = _key(
        10, "Batches per system for the energy-bias change when fine-tuning"
    )
    pair_exclude_types: list[TypePair] = _key([], "Model-level excluded type pairs")
    atom_exclude_types: list[NonNegInt] = _key([], "Types whose energy contribution is zero")
    preset_out_bias: dict[Literal["energy"], list[float | None]] | None = _key(
        None, 'Fixed per-type energy bias, e.g. {"energy": [null, -1.2]}'
    )

    @model_validator(mode="after")
    def _check_types(self) -> Model:
        ntypes, problems = len(self.type_map), []
        if len(set(self.type_map)) != ntypes:
            problems.append(("type_map", "element names must be unique"))
        lists = {
            "pair_exclude_types": [t for p in self.pair_exclude_types for t in p],
            "atom_exclude_types": self.atom_exclude_types,
            "descriptor.exclude_types": [t for p in self.descriptor.exclude_types for t in p],
        }
        problems += [
            (where, f"type index {max(idx)} is out of range for {ntypes} types")
            for where, idx in lists.items()
            if idx and max(idx) >= ntypes
        ]
        bias = (self.preset_out_bias or {}).get("energy")
        if bias is not None and len(bias) != ntypes:
            problems.append(("preset_out_bias.energy", f"needs {ntypes} entries (one per type)"))
        _raise_if(problems)
        return self


# === loss (docs/design.md, "Input file") ===
def _pref(default: float, term: str) -> Any:
    return _key(default, f"Prefactor of the {term} term (docs/design.md, 'Loss')", ge=0)


class Loss(Section):
    """Energy loss; prefactors go from start_pref to limit_pref as lr decays."""

    type: Annotated[
        Literal["ener"],
        _supported(
            "loss type",
            ("ener",),
            {"ener_hess": "loss type 'ener_hess' (Hessian training) is not supported; use 'ener'"},
        ),
    ] = _key("ener", "Loss type; only 'ener'")
    start_pref_e: float = _pref(0.02, "energy")
    limit_pref_e: float = _pref(1.0, "energy")
    start_pref_f: float = _pref(1000.0, "force")
    limit_pref_f: float = _pref(1.0, "force")
    start_pref_v: float = _pref(0.0, "virial")
    limit_pref_v: float = _pref(0.0, "virial")
    start_pref_ae: float = _pref(0.0, "atomic-energy")
    limit_pref_ae: float = _pref(0.0, "atomic-energy")
    start_pref_pf: float = _pref(0.0, "atom-prefactor force")
    limit_pref_pf: float = _pref(0.0, "atom-prefactor force")
    start_pref_gf: float = _pref(0.0, "generalised-force")
    limit_pref_gf: float = _pref(0.0, "generalised-force")
    start_pref_h: float = _pref(0.0, "Hessian")
    limit_pref_h: float = _pref(0.0, "Hessian")
    numb_generalized_coord: NonNegInt = _key(0, "Number of generalised coordinates")
    use_default_pf: bool = _key(False, "atom_pref defaults to 1 when missing from the data")
    relative_f: NonNegFloat | None = _key(None, "Divide force errors by |F_label| + relative_f")
    enable_atom_ener_coeff: bool = _key(False, "Energy = sum_i c_i E_i with atom_ener_coeff")
    use_huber: bool = _key(False, "Huber loss instead of MSE")
    huber_delta: Annotated[
        float | list[float],
        _one_or_list(
            _is_pos_number, "a positive number or a list [delta_e, delta_f, delta_v]", length=3
        ),
    ] = _key(0.01, "Huber threshold: one value or [delta_e, delta_f, delta_v]")
    loss_func: Literal["mse", "mae"] = _key("mse", "'mse' or 'mae'")
    f_use_norm: bool = _key(False, "Use per-atom force-difference norms (mae/Huber only)")
    intensive_ener_virial: bool = _key(False, "true: 1/N^2 energy/virial scaling (not 1/N)")

    @model_validator(mode="after")
    def _check_norm(self) -> Loss:
        problems = []
        if self.f_use_norm and not (self.use_huber or self.loss_func == "mae"):
            problems.append(("f_use_norm", "requires use_huber = true or loss_func = 'mae'"))
        missing = {
            "generalized-force": ("start_pref_gf", "limit_pref_gf", "numb_generalized_coord"),
            "Hessian": ("start_pref_h", "limit_pref_h"),
        }
        problems += [
            (key, f"not supported by dpa1 (the {term} loss); remove the key or set it to 0")
            for term, keys in missing.items()
            for key in keys
            if getattr(self, key) != 0
        ]
        _raise_if(problems)
        return self


# === learning_rate (docs/design.md, "Learning rate" and "Input file") ===
class LearningRate(Section):
    """Exponentially decaying learning rate with optional linear warm-up."""

    default_stop_lr: ClassVar[float] = 5e-8
    type: Annotated[Literal["exp"], _supported("learning-rate type", ("exp",))] = _key(
        "exp", "Schedule; only 'exp' (cosine and wsd are not supported)"
    )
    start_lr: PosFloat = _key(..., "Learning rate at the end of warm-up")
    stop_lr: NonNegFloat | None = _key(
        None, "Final learning rate (5e-8 if neither stop_lr nor stop_lr_ratio is given)"
    )
    stop_lr_ratio: PosFloat | None = _key(None, "stop_lr = start_lr * stop_lr_ratio (resolved)")
    warmup_steps: NonNegInt = _key(0, "Linear warm-up steps")
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] | None = _key(
        None, "warmup_steps = int(warmup_ratio * numb_steps) (resolved when numb_steps is set)"
    )
    warmup_start_factor: NonNegFloat = _key(0.0, "Warm-up starts at this fraction of start_lr")
    scale_by_worker: Annotated[
        Literal["linear", "sqrt", "none"], _default_only("linear", "TensorFlow trainer only")
    ] = _key("linear", "Scaling with the number of workers (TensorFlow only); only 'linear'")
    decay_steps: PosInt = _key(5000, "Steps between decays")
    decay_rate: Fraction | None = _key(None, "Decay factor; derived from stop_lr if null")
    smooth: bool = _key(False, "Continuous instead of stepped decay")

    @model_validator(mode="after")
    def _resolve_stop_lr(self) -> LearningRate:
        problems = []
        if self.stop_lr is not None and self.stop_lr_ratio is not None:
            problems.append(("stop_lr_ratio", "give either stop_lr or stop_lr_ratio, not both"))
        if self.warmup_ratio is not None and self.warmup_steps != 0:
            problems.append(("warmup_ratio", "give either warmup_steps or warmup_ratio, not both"))
        _raise_if(problems)
        if self.stop_lr_ratio is not None:
            self.stop_lr, self.stop_lr_ratio = self.start_lr * self.stop_lr_ratio, None
        elif self.stop_lr is None:
            self.stop_lr = self.default_stop_lr
        return self


# === optimizer (docs/design.md, "Training loop" and "Input file") ===
class Optimizer(Section):
    """torch.optim.Adam or AdamW."""

    type: Annotated[Literal["Adam", "AdamW"], _supported("optimizer", ("Adam", "AdamW"))] = _key(
        "Adam", "'Adam' or 'AdamW'"
    )
    adam_beta1: float = _key(0.9, "Adam beta1", ge=0, lt=1)
    adam_beta2: float = _key(0.999, "Adam beta2", ge=0, lt=1)
    weight_decay: NonNegFloat = _key(0.0, "Weight decay")


# === training (docs/design.md, "Batches and sampling", "Training loop", "Input file") ===
class TrainingData(Section):
    """A set of systems and how batches are drawn from them."""

    systems: Annotated[
        str | list[str],
        _one_or_list(
            lambda v: isinstance(v, str) and v != "", "a path or a non-empty list of paths"
        ),
    ] = _key(
        ...,
        "A system dir, a parent dir (searched for type.raw), an HDF5 file or group "
        "(file.h5, file.h5#/path: it and its child groups holding type.raw), a glob, or a "
        "list of them",
    )
    rglob_patterns: list[str] | None = _key(None, "Custom glob patterns for the system search")
    batch_size: Annotated[int | list[int] | str, PlainValidator(_batch_size)] = _key(
        "auto", "int, one int per system, 'auto' (= 'auto:32'), 'auto:N', 'max:N' or 'filter:N'"
    )
    auto_prob: Annotated[str, BeforeValidator(_auto_prob)] = _key(
        "prob_sys_size",
        "System probabilities: 'prob_sys_size', 'prob_uniform' or 'prob_sys_size;a:b:w;...'",
        aliases=("auto_prob_style",),
    )
    sys_probs: list[float] | None = _key(
        None, "Explicit system probabilities (< 0: filled in)", aliases=("sys_weights",)
    )
    min_pair_dist: Annotated[float, _default_only(0.0, "dropping frames by pair distance")] = _key(
        0.0, "Drop frames with a closer atom pair (Å); only 0"
    )

    @model_validator(mode="after")
    def _check_lengths(self) -> TrainingData:
        problems = []
        if isinstance(self.systems, list):  # a single path may expand to many systems
            n = len(self.systems)
            for name in ("batch_size", "sys_probs"):
                value = getattr(self, name)
                if isinstance(value, list) and len(value) != n:
                    problems.append((name, f"needs one entry per system ({n}), got {len(value)}"))
        _raise_if(problems)
        return self


class ValidationData(TrainingData):
    """Validation systems: the training_data keys plus numb_btch."""

    numb_btch: PosInt = _key(1, "Validation batches per display", aliases=("numb_batch",))


class Training(Section):
    """The training loop (PyTorch-backend semantics)."""

    rejected_keys = {"mixed_precision": _TF_ONLY, "data_dict": _MULTITASK, "model_prob": _MULTITASK}
    training_data: TrainingData = _key(..., "Training systems")
    validation_data: ValidationData | None = _key(None, "Validation systems")
    stat_file: Annotated[str, Field(min_length=1)] | None = _key(
        None,
        "Statistics cache in DeePMD-kit's layout (.h5/.hdf5 file, else a directory; "
        "relative to the output directory): a fresh start saves the data statistics "
        "there and a later one reads them instead of sampling the data; one written for "
        "another type_map, rcut, rcut_smth or sel is refused",
    )
    stat_file_mode: Literal["update", "read"] = _key(
        "update",
        "'update': compute what the stat_file lacks and add it; 'read': the "
        "stat_file must hold every statistic and is not written",
    )
    numb_steps: NonNegInt | None = _key(
        None,
        "Total training steps (this or numb_epoch is required; "
        "0: statistics only, writes model.ckpt-0.pt)",
        aliases=("stop_batch", "num_step", "num_steps", "numb_step"),
    )
    numb_epoch: PosFloat | None = _key(
        None,
        "Epochs, alternative to numb_steps (ignored if numb_steps is given)",
        aliases=("num_epoch", "num_epochs", "numb_epochs"),
    )
    seed: Seed = _key(None, "Data-sampling and torch RNG seed")
    disp_file: str = _key("lcurve.out", "Learning-curve file")
    disp_freq: PosInt = _key(1000, "Display period (steps)")
    save_freq: PosInt = _key(1000, "Checkpoint period (steps)")
    save_ckpt: str = _key("model.ckpt", "Checkpoint prefix")
    save_dir: str | None = _key(None, "Checkpoint directory")
    max_ckpt_keep: PosInt = _key(5, "Newest checkpoints kept")
    ckpt_keep_ratio: Annotated[
        float | None, _default_only(None, "keeping checkpoints spaced by a ratio")
    ] = _key(None, "Also keep checkpoints spaced by this ratio; only null")
    enable_ema: Annotated[bool, _default_only(False, "parameter EMA")] = _key(
        False, "Keep an exponential moving average of the parameters; only false"
    )
    ema_decay: Annotated[float, _default_only(0.999, "parameter EMA")] = _key(
        0.999, "EMA decay; only 0.999 (EMA is not supported)"
    )
    ema_ckpt_keep: Annotated[int | None, _default_only(None, "parameter EMA")] = _key(
        None, "EMA checkpoints kept; only null (EMA is not supported)"
    )
    change_bias_after_training: bool = _key(False, "Refit out_bias at the end")
    disp_training: bool = _key(
        True, "Log the errors at each display step and show the progress bar"
    )
    time_training: bool = _key(True, "Log the training time")
    disp_avg: bool = _key(False, "Average training metrics over the display interval")
    gradient_max_norm: NonNegFloat | None = _key(
        None, "Global gradient-norm clipping (0/null: off)"
    )
    profiling: Annotated[bool, _default_only(False, "profiling")] = _key(
        False, "Diagnostics: profiling; only false"
    )
    profiling_file: Annotated[str, _default_only("timeline.json", "profiling")] = _key(
        "timeline.json", "Diagnostics: profiling output; only the default"
    )
    enable_profiler: Annotated[bool, _default_only(False, "profiling")] = _key(
        False, "Diagnostics: torch profiler; only false"
    )
    tensorboard: Annotated[bool, AfterValidator(_needs_tensorboard)] = _key(
        False,
        "Diagnostics: TensorBoard logging of lr, loss and the lcurve metrics (needs "
        "the tensorboard package)",
    )
    tensorboard_log_dir: str = _key(
        "log", "Diagnostics: TensorBoard directory (relative to the output directory)"
    )
    tensorboard_freq: PosInt = _key(
        1, "Diagnostics: TensorBoard period (steps; step 1 is always logged)"
    )
    zero_stage: Annotated[Literal[0], _supported("zero_stage", (0,))] = _key(
        0, "Distributed sharding stage; only 0"
    )

    @model_validator(mode="after")
    def _check_length(self) -> Training:
        problems = []
        if self.numb_steps is None and self.numb_epoch is None:
            problems.append(("", "one of numb_steps or numb_epoch is required"))
        if self.stat_file_mode == "read" and self.stat_file is None:
            problems.append(("stat_file_mode", "'read' needs a stat_file"))
        _raise_if(problems)
        if self.numb_steps is not None:
            self.numb_epoch = None  # numb_steps wins, as in DeePMD; keep one source of truth
        return self


# === the whole input ===
class Config(Section):
    """A complete input file."""

    rejected_keys = {"nvnmd": _TF_ONLY}
    model: Model = _key(..., "Model definition")
    learning_rate: LearningRate = _key(..., "Learning-rate schedule")
    loss: Loss = _key(doc="Loss", default_factory=Loss)
    optimizer: Optimizer = _key(doc="Optimizer", default_factory=Optimizer)
    training: Training = _key(..., "Training loop")

    @model_validator(mode="after")
    def _resolve_warmup(self) -> Config:
        lr, steps = self.learning_rate, self.training.numb_steps
        if steps is None:
            return self  # warmup_ratio stays; the trainer resolves it once steps are known
        if lr.warmup_ratio is not None:
            lr.warmup_steps, lr.warmup_ratio = int(lr.warmup_ratio * steps), None
        if lr.warmup_steps > steps:
            _raise_if(
                [("learning_rate.warmup_steps", f"must not exceed training.numb_steps ({steps})")]
            )
        return self
