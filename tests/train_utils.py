"""Small training inputs for the end-to-end tests (water from ``examples/water/data``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from data_paths import WATER

TINY_MODEL: dict[str, Any] = {
    "type_map": ["O", "H"],
    "descriptor": {
        "type": "se_atten", "sel": 40, "rcut": 4.0, "rcut_smth": 0.5, "neuron": [4, 8],
        "axis_neuron": 4, "attn": 8, "attn_layer": 1, "tebd_dim": 4, "seed": 1,
    },
    "fitting_net": {"neuron": [16, 16], "seed": 1},
}


def water_input(
    tmp: Path, *, numb_steps: int = 20, disp_freq: int = 5, save_freq: int = 10,
    train: list[str] | None = None, valid: list[str] | None = None, **training: Any,
) -> Path:
    """Write a tiny water input.json in ``tmp`` and return its path."""
    cfg = {
        "model": copy.deepcopy(TINY_MODEL),
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-4, "decay_steps": 10},
        "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000,
                 "limit_pref_f": 1},
        "training": {
            "training_data": {"systems": train or [str(WATER / "data_0")], "batch_size": 1},
            "validation_data": {"systems": valid or [str(WATER / "data_2")], "batch_size": 1,
                                "numb_btch": 2},
            "numb_steps": numb_steps, "seed": 7, "disp_freq": disp_freq, "save_freq": save_freq,
            **training,
        },
    }
    path = tmp / "input.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path
