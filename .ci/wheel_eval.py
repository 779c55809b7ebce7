"""Run by .ci/wheel_check.sh inside a venv where dpa1 is installed from its wheel.

Checks that the installed package (not the checkout) is imported, that its C++ ops load, and
that a 192-atom water evaluation runs on them; prints the time of one evaluation, so that the
caller can compare it with ``DPA1_NATIVE=0`` (a report, not a test: timings are noisy).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import dpa1
from dpa1.accel.build import native_ops
from dpa1.data.system import DeepmdSystem
from dpa1.io.config import normalize_config
from dpa1.model.build import build_model

repo, expect_native = Path(sys.argv[1]), sys.argv[2] == "1"
installed = Path(dpa1.__file__).resolve()
assert repo.resolve() not in installed.parents, f"dpa1 imported from the checkout: {installed}"
assert native_ops() == expect_native, f"C++ ops loaded: {native_ops()}, expected {expect_native}"
if expect_native:
    assert hasattr(torch.ops.dpa1, "energy_block")
raw = json.loads((repo / "examples" / "water" / "input.json").read_text())
raw["training"]["training_data"]["systems"] = ["unused"]
raw["training"].pop("validation_data", None)
model = build_model(normalize_config(raw)["model"]).eval()
water = repo / "examples" / "water" / "data" / "data_0"
frames = DeepmdSystem(water, ["O", "H"]).get_frames(np.arange(1))
coord = torch.tensor(frames["coord"]).reshape(1, -1, 3)
atype = torch.tensor(frames["atype"]).reshape(1, -1)
box = torch.tensor(frames["box"]).reshape(1, 3, 3)
times = []
for _ in range(4):
    t0 = time.perf_counter()
    out = model(coord=coord, atype=atype, box=box)
    times.append(time.perf_counter() - t0)
assert torch.isfinite(out["force"]).all() and out["force"].shape == (1, 192, 3)
print(f"{min(times[1:]):.4f}")
