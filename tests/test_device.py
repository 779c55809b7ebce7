"""Device placement: the model, inference, statistics and training on a GPU give the CPU's
numbers (skipped without CUDA), and the input dtypes a caller may pass are accepted.

The CUDA tests are what ``benchmarks/gpu_table.sh`` runs first on a GPU machine; the two
CPU tests always run. ``DPA1_TEST_DEVICE`` names the device compared with the CPU (default
``cuda``; ``DPA1_TEST_DEVICE=cpu`` runs the device tests' code on the CPU, a check of the
tests themselves). Inputs follow DeePMD-kit's convention: the caller puts them on the
model's device (``DeepPot``, the trainer and the statistics do it for their callers).
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

from dpa1.data.stats import apply_statistics, change_energy_bias, compute_descriptor_stats
from dpa1.infer.deep_pot import DeepPot
from dpa1.io.model_file import freeze
from dpa1.train.loss import EnerLoss

from helpers import (
    make_system,
    params_for,
    single_thread,  # noqa: F401  (autouse fixture)
)
from test_model_physics import NAMES, assert_close, model_for, tol

CUDA = os.environ.get("DPA1_TEST_DEVICE", "cuda")
needs_cuda = pytest.mark.skipif(CUDA.startswith("cuda") and not torch.cuda.is_available(),
                                reason="needs a CUDA device")


def frame(name: str, kind: str = "pbc", seed: int = 0, n_virtual: int = 1):
    """One frame, every array with its frame axis: ``coord (1, n, 3)``, ``atype (1, n)``,
    ``box (1, 3, 3)`` or None, ``fparam (1, nfp)`` / ``aparam (1, n, nap)`` or None."""
    coord, atype, box = make_system(kind, seed, n_virtual=n_virtual)
    fp, ap = params_for(model_for(name), 1, coord.shape[0])
    return coord[None], atype[None], None if box is None else box[None], fp, ap


def run(
    model,
    device,
    coord,
    atype,
    box,
    fp,
    ap,
    atomic: bool = True,
    dtype: torch.dtype = torch.float64,
    itype: torch.dtype = torch.long,
) -> dict[str, np.ndarray]:
    """``model.forward`` with every input on ``device``; numpy out."""

    def t(x, dt):
        return None if x is None else torch.as_tensor(x, dtype=dt, device=device)

    out = model(
        t(coord, dtype),
        t(atype, itype),
        t(box, dtype),
        fparam=t(fp, dtype),
        aparam=t(ap, dtype),
        do_atomic_virial=atomic,
    )
    keys = ["energy", "atom_energy", "force", "virial"] + (["atom_virial"] if atomic else [])
    return {k: out[k].detach().cpu().numpy() for k in keys}


# === CPU: input dtypes =========================================================================
@pytest.mark.parametrize("name", ["concat", "fparam_aparam", "v2_float32"])
def test_forward_accepts_float32_and_int32_inputs(name: str) -> None:
    """float32 coordinates/cell/fparam/aparam and int32 types give exactly what their float64 /
    int64 values give: the model casts inputs to its global precision first."""
    model = model_for(name)
    coord, atype, box, fp, ap = frame(name)
    coord32, box32 = coord.astype(np.float32), box.astype(np.float32)
    fp32 = None if fp is None else fp.astype(np.float32)
    ap32 = None if ap is None else ap.astype(np.float32)
    ref = run(
        model,
        "cpu",
        coord32.astype(np.float64),
        atype,
        box32.astype(np.float64),
        None if fp32 is None else fp32.astype(np.float64),
        None if ap32 is None else ap32.astype(np.float64),
    )
    got = run(
        model, "cpu", coord32, atype, box32, fp32, ap32, dtype=torch.float32, itype=torch.int32
    )
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_deep_pot_accepts_float32_and_int32_arrays() -> None:
    model = model_for("concat")
    coord, atype, box, _, _ = frame("concat")
    dp = DeepPot(copy.deepcopy(model), device="cpu")
    ref = dp.eval(
        coord.astype(np.float32).astype(np.float64),
        box.astype(np.float32).astype(np.float64),
        atype,
    )
    got = dp.eval(coord.astype(np.float32), box.astype(np.float32), atype.astype(np.int32))
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


# === CUDA: the same numbers as on the CPU =====================================================
@needs_cuda
@pytest.mark.parametrize("name", NAMES)
def test_cuda_forward_matches_cpu(name: str) -> None:
    model = model_for(name)
    gpu = copy.deepcopy(model).to(CUDA)
    rtol = tol(name, 1e-10, 1e-4)
    for kind in ("pbc", "nopbc", "thin"):
        coord, atype, box, fp, ap = frame(name, kind, seed=3)
        ref = run(model, "cpu", coord, atype, box, fp, ap)
        got = run(gpu, CUDA, coord, atype, box, fp, ap)
        for k in ref:
            assert_close(got[k], ref[k], rtol, f"{name}/{kind} {k}")


@needs_cuda
@pytest.mark.parametrize(
    "name",
    [
        "concat",
        "strip_smooth",
        "attn0",
        "pair_exclude",
        "atom_exclude",
        "fparam_aparam",
        "v2_float32",
    ],
)
def test_cuda_training_gradients_match_cpu(name: str) -> None:
    """Train mode (forces differentiable), the energy/force loss and its parameter gradients."""
    coord, atype, box, fp, ap = frame(name, seed=5)
    label = {
        "atype": torch.as_tensor(atype),
        "energy": torch.tensor([[1.5]], dtype=torch.float64),
        "force": torch.as_tensor(np.random.default_rng(1).normal(size=coord.shape)),
        "find_energy": 1.0,
        "find_force": 1.0,
    }
    grads = {}
    for dev in ("cpu", CUDA):
        net = copy.deepcopy(model_for(name)).to(dev).train()

        def t(x, dev=dev):
            return None if x is None else torch.as_tensor(x, device=dev)

        out = net(t(coord), t(atype), t(box), fparam=t(fp), aparam=t(ap))
        loss_fn = EnerLoss.from_config(
            {
                "type": "ener",
                "start_pref_e": 0.02,
                "limit_pref_e": 1,
                "start_pref_f": 1000,
                "limit_pref_f": 1,
            },
            1e-3,
        )
        lab = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in label.items()}
        loss, _ = loss_fn(out, lab, 1e-3)
        loss.backward()
        grads[dev] = {
            n: p.grad.detach().cpu().numpy()
            for n, p in net.named_parameters()
            if p.grad is not None
        }
    assert grads["cpu"].keys() == grads[CUDA].keys() and grads["cpu"]
    for n in grads["cpu"]:
        assert_close(
            grads[CUDA][n], grads["cpu"][n], tol(name, 1e-8, 2e-3), f"{name} grad {n}", atol=1e-10
        )


@needs_cuda
def test_cuda_frozen_and_deep_pot_match_cpu(tmp_path) -> None:
    name = "fparam_aparam"
    model = model_for(name)
    path = tmp_path / "frozen.pth"
    freeze(copy.deepcopy(model), path)
    coord, atype, box, fp, ap = frame(name, seed=7, n_virtual=0)
    args = (coord, box, atype)
    kw = {"fparam": fp, "aparam": ap, "atomic": True}
    ref = DeepPot(copy.deepcopy(model), device="cpu").eval(*args, **kw)
    for dp in (DeepPot(str(path), device=CUDA), DeepPot(copy.deepcopy(model), device=CUDA)):
        got = dp.eval(*args, **kw)
        for a, b in zip(got, ref, strict=True):
            assert_close(a, b, 1e-10, "DeepPot on cuda")


def _stat_batch(nframes: int = 3):
    frames = [make_system("pbc", 20 + k, natoms=12) for k in range(nframes)]
    atype = np.stack([f[1] for f in frames])
    counts = np.stack([[(a == t).sum() for t in range(3)] for a in atype])
    return {
        "coord": torch.as_tensor(np.stack([f[0] for f in frames])),
        "atype": torch.as_tensor(atype),
        "box": torch.as_tensor(np.stack([f[2] for f in frames])),
        "natoms_vec": torch.as_tensor(np.concatenate([np.full((nframes, 2), 12), counts], axis=1)),
        "energy": torch.as_tensor(np.linspace(-3.0, 2.0, nframes)[:, None]),
        "find_energy": 1.0,
    }


@needs_cuda
@pytest.mark.parametrize("name", ["pair_exclude", "exclude", "atom_exclude"])
def test_cuda_statistics_and_change_bias_take_cpu_batches(name: str) -> None:
    """Statistics of a model already on the GPU, from the data loader's CPU batches (what
    ``change_bias_after_training`` does at the end of ``dpa1 train --device cuda``)."""
    batches = [_stat_batch()]
    cpu, gpu = copy.deepcopy(model_for(name)), copy.deepcopy(model_for(name)).to(CUDA)
    for a, b in zip(
        compute_descriptor_stats(gpu, batches), compute_descriptor_stats(cpu, batches), strict=True
    ):
        assert_close(a.cpu().numpy(), b.numpy(), 1e-10, "davg/dstd")
    apply_statistics(cpu, batches)
    apply_statistics(gpu, batches)
    assert_close(gpu.out_bias.cpu().numpy(), cpu.out_bias.numpy(), 1e-12, "out_bias")
    d_cpu, _ = change_energy_bias(cpu, batches)
    d_gpu, _ = change_energy_bias(gpu, batches)
    assert_close(d_gpu, d_cpu, 1e-8, "change_energy_bias delta", atol=1e-9)
    assert gpu.out_bias.device.type == torch.device(CUDA).type


@needs_cuda
def test_cuda_training_run(tmp_path) -> None:
    """``dpa1 train --device cuda`` end to end on a tiny generated system: validation,
    checkpoints, ``change_bias_after_training``; then ``dpa1 test`` on the GPU."""
    from dpa1.cli.main import main
    from dpa1.data.convert import write_system

    rng = np.random.default_rng(0)
    coord0, atype, box0 = make_system("pbc", 40, natoms=12)
    coord = coord0 + rng.normal(scale=0.05, size=(4, 12, 3))
    box = np.stack([box0] * 4)
    sysdir = write_system(
        tmp_path / "sys",
        type_map=["A", "B", "C"],
        atom_types=atype,
        coord=coord,
        box=box,
        energy=rng.normal(size=4),
        force=rng.normal(size=(4, 12, 3)),
    )
    cfg = {
        "model": {
            "type_map": ["A", "B", "C"],
            "descriptor": {
                "type": "se_atten",
                "sel": 40,
                "rcut": 3.5,
                "rcut_smth": 0.5,
                "neuron": [4, 8],
                "axis_neuron": 3,
                "attn": 8,
                "attn_layer": 1,
                "tebd_dim": 4,
                "seed": 1,
            },
            "fitting_net": {"neuron": [8, 8], "seed": 1},
        },
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-4, "decay_steps": 2},
        "loss": {
            "type": "ener",
            "start_pref_e": 0.02,
            "limit_pref_e": 1,
            "start_pref_f": 1000,
            "limit_pref_f": 1,
        },
        "training": {
            "training_data": {"systems": [str(sysdir)], "batch_size": 1},
            "validation_data": {"systems": [str(sysdir)], "batch_size": 1, "numb_btch": 1},
            "numb_steps": 4,
            "seed": 3,
            "disp_freq": 2,
            "save_freq": 2,
            "change_bias_after_training": True,
        },
    }
    inp = tmp_path / "input.json"
    inp.write_text(json.dumps(cfg))
    assert main(["train", str(inp), "-o", str(tmp_path / "run"), "--device", CUDA]) == 0
    assert (tmp_path / "run" / "model.ckpt-4.pt").exists()
    assert (
        main(
            [
                "test",
                "-m",
                str(tmp_path / "run" / "model.ckpt.pt"),
                "-s",
                str(sysdir),
                "--device",
                CUDA,
            ]
        )
        == 0
    )
