"""A fresh model's weights are drawn from DeePMD-kit 3.2.0's distributions.

A run's start is part of how it trains (docs/benchmarks.md, ``train_quality.py``: runs of
both codes sit on an early plateau for a time that depends on their draws), so every
parameter of a new model follows DeePMD-kit's default ``MLPLayer`` initialisation
(``deepmd/pt/model/network/mlp.py``): weights ``N(0, 1/(n_in + n_out))``, biases ``N(0, 1)``,
``idt`` ``N(0.1, 0.001²)`` and only on layers with a skip connection, layer norms ones and
zeros, and a type embedding without bias (``use_tebd_bias`` false). Each parameter is checked
as a sample of its distribution (Kolmogorov-Smirnov), so a wrong scale or shape in any one
layer fails.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from dpa1.io.config import normalize_config
from dpa1.model.build import build_model
from dpa1.model.network import Layer, LayerNorm

from data_paths import EXAMPLE_INPUT

# A fixed seed makes every draw, and so every p-value, reproducible: this floor only has to
# be far below what a correct draw gives and far above what a wrong scale gives (~1e-30).
P_MIN = 1e-4


def _model(descriptor: dict) -> torch.nn.Module:
    raw = json.loads(EXAMPLE_INPUT.read_text())
    raw["model"]["descriptor"].update(descriptor)
    raw["training"]["training_data"] = {"systems": ["unused"]}
    return build_model(normalize_config(raw)["model"])


MODELS = {
    "example input": {},
    "se_atten_v2, resnet_dt, one-sided": {
        "type": "se_atten_v2", "resnet_dt": True, "type_one_side": True, "seed": 7,
    },
}


def _assert_normal(name: str, p: torch.Tensor, mean: float, std: float) -> None:
    z = (p.detach().double().flatten().numpy() - mean) / std
    if z.size < 8:  # too few draws to judge a distribution: only their range
        assert np.abs(z).max() < 5, f"{name}: {p.tolist()} is not a draw of N({mean}, {std}²)"
        return
    pvalue = stats.kstest(z, "norm").pvalue
    assert pvalue > P_MIN, (
        f"{name} ({z.size} values): sample mean {z.mean() * std + mean:.4g}, std "
        f"{z.std() * std:.4g}, is not a draw of N({mean}, {std:.4g}²) (KS p = {pvalue:.2g})"
    )


@pytest.mark.parametrize("variant", list(MODELS))
def test_initial_weights_follow_deepmd_distributions(variant: str) -> None:
    model = _model(MODELS[variant])
    checked: set[str] = set()
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(mod, Layer):
            _assert_normal(prefix + "w", mod.w, 0.0, 1.0 / math.sqrt(mod.num_in + mod.num_out))
            checked.add(prefix + "w")
            if mod.b is not None:
                _assert_normal(prefix + "b", mod.b, 0.0, 1.0)
                checked.add(prefix + "b")
            # DeePMD-kit creates idt only where the skip connection exists
            assert (mod.idt is not None) == (mod.use_timestep and mod.skip > 0), prefix + "idt"
            if mod.idt is not None:
                _assert_normal(prefix + "idt", mod.idt, 0.1, 0.001)
                checked.add(prefix + "idt")
        elif isinstance(mod, LayerNorm):
            assert torch.all(mod.w == 1) and torch.all(mod.b == 0), mod_name
            checked |= {prefix + "w", prefix + "b"}
    names = {n for n, _ in model.named_parameters()}
    assert checked == names, f"parameters with no known initialisation: {names - checked}"
    assert not any(n.startswith("descriptor.type_embedding") and n.endswith(".b") for n in names)
    assert any(n.endswith(".idt") for n in names)  # the resnet_dt layers are covered


def test_a_wrong_scale_is_caught() -> None:
    """The check itself: a layer drawn with 1/sqrt(n_in), as many codes do, fails it."""
    layer = _model({}).fitting.net.layers[1]
    wrong = layer.w * math.sqrt((layer.num_in + layer.num_out) / layer.num_in)
    with pytest.raises(AssertionError, match="is not a draw"):
        _assert_normal("w", wrong, 0.0, 1.0 / math.sqrt(layer.num_in + layer.num_out))
