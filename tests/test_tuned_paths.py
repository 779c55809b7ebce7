"""The fast paths are the same function as the plain one, and float32 is usable.

- Blocked evaluation (centres grouped by neighbour count, each block trimmed to its own
  width) and padding trimming reproduce the dense, unblocked evaluation (docs/design.md,
  "Gated attention").
- ``smooth_switch`` is accurate to its last bits right up to rcut (exact rational
  arithmetic as the reference), in float64 and float32.
- Evaluation on a CPU runs the attention layers as one C++ op: the PyTorch layers' numbers,
  and the PyTorch layers again (with a warning) when the op cannot be built.
- The water example model in float32 gives the forces of its float64 twin. Before the
  switch was factored, float32 forces of this model were round-off noise (rms 183 eV/Å
  against 0.012), in DeePMD-kit as well.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpa1.data.stats import apply_statistics
from dpa1.io.config import normalize_config
from dpa1.model.build import build_model
from dpa1.model.env_mat import smooth_switch

from helpers import (
    make_model,
    make_system,
    params_for,
    require_native,
    single_thread,  # noqa: F401  (autouse fixture)
    small_model_config,
    water_frames,
)
from test_model_physics import NAMES, _compare, evaluate, model_for, tol

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "water"


def plain_twin(model):
    """The same model evaluated the plain way: all N_c slots, one block."""
    plain = copy.deepcopy(model)
    plain.descriptor.trim_padding = False
    plain.block_atoms = 10**9
    return plain


def pbc_frames(model, seeds: tuple[int, int]):
    """Two periodic 14-atom frames (same types, 2 virtual atoms, different geometry and cell) and
    fparam/aparam for ``model``: ``coords (2, 14, 3), atype, boxes (2, 3, 3), fp, ap``."""
    coords, boxes = [], []
    for seed in seeds:
        c, atype, b = make_system("pbc", seed, n_virtual=2, natoms=14)
        coords.append(c)
        boxes.append(b)
    fp, ap = params_for(model, 2, atype.shape[0])
    return np.stack(coords), atype, np.stack(boxes), fp, ap


@pytest.mark.parametrize("name", NAMES)
def test_blocked_trimmed_evaluation_equals_plain(name: str) -> None:
    model = copy.deepcopy(model_for(name))
    assert model.descriptor.trim_padding
    model.block_atoms = 6  # several blocks of 3 centres per frame
    plain = plain_twin(model)
    coords, atype, boxes, fp, ap = pbc_frames(model, (3, 4))
    got = evaluate(model, coords, atype, boxes, fp, ap)
    want = evaluate(plain, coords, atype, boxes, fp, ap)
    _compare(got, want, tol(name, 1e-12, 1e-5), "blocked vs plain")


def exact_switch(r: float, rcut_smth: float, rcut: float) -> Fraction:
    u = (Fraction(r) - Fraction(rcut_smth)) / (Fraction(rcut) - Fraction(rcut_smth))
    u = min(max(u, Fraction(0)), Fraction(1))
    return 1 - 10 * u**3 + 15 * u**4 - 6 * u**5


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-4)])
def test_smooth_switch_is_accurate_up_to_rcut(dtype: torch.dtype, rtol: float) -> None:
    rcut_smth, rcut = 0.5, 6.0
    gaps = np.geomspace(1e-6, 2.0, 60)  # rcut − r, Å
    r = torch.tensor(rcut - gaps, dtype=dtype)
    got = smooth_switch(r, rcut_smth, rcut).double().numpy()
    # the reference at the very same (rounded) r, in exact arithmetic
    want = np.array([float(exact_switch(float(x), rcut_smth, rcut)) for x in r.double().numpy()])
    assert np.all(want > 0)
    rel = np.abs(got - want) / want
    # the expanded polynomial has relative errors of 1e-3 (float64) and 1 (float32) here
    assert rel.max() <= rtol, (
        f"worst relative error {rel.max():.2e} at rcut − r = {gaps[rel.argmax()]:.1e}"
    )
    assert float(smooth_switch(torch.tensor(rcut, dtype=dtype), rcut_smth, rcut)) == 0.0
    assert float(smooth_switch(torch.tensor(rcut_smth, dtype=dtype), rcut_smth, rcut)) == 1.0


def water_example_model(precision: str):
    raw = json.loads((EXAMPLE / "input.json").read_text())
    for section in ("descriptor", "fitting_net"):
        raw["model"][section]["precision"] = precision
    torch.manual_seed(0)
    return build_model(normalize_config(raw)["model"])


def test_float32_water_example_forces_match_float64() -> None:
    """The example model (attention with dotr, non-smooth, sel 120) is usable in float32."""
    fr = water_frames(3)
    coord, box, atype, energy = fr["coord"], fr["box"], fr["atype"], fr["energy"][:, None]
    counts = [int((atype == t).sum()) for t in range(2)]
    stat = [
        {
            "coord": torch.tensor(coord),
            "atype": torch.tensor(np.tile(atype, (3, 1))),
            "box": torch.tensor(box),
            "energy": torch.tensor(energy),
            "find_energy": 1.0,
            "natoms_vec": torch.tensor([[atype.size, atype.size, *counts]] * 3),
        }
    ]
    m64 = water_example_model("float64")
    apply_statistics(m64, stat)
    m32 = water_example_model("float32")
    m32.load_state_dict({k: v.to(m32.state_dict()[k].dtype) for k, v in m64.state_dict().items()})
    r64 = evaluate(m64.eval(), coord[0], atype, box[0], atomic=False)
    r32 = evaluate(m32.eval(), coord[0], atype, box[0], atomic=False)
    f64, f32 = r64["force"], r32["force"]
    rms = np.sqrt(np.mean(f64**2))
    err = np.sqrt(np.mean((f32 - f64) ** 2))
    assert err <= 1e-2 * rms, f"float32 force error {err:.3e} eV/Å against rms force {rms:.3e}"
    assert abs(r32["energy"][0] - r64["energy"][0]) <= 1e-6 * abs(r64["energy"][0])
    dv = np.abs(r32["virial"] - r64["virial"]).max()
    assert dv <= 1e-2 * np.abs(r64["virial"]).max()


@pytest.mark.parametrize("name", ["concat", "strip_smooth", "v2", "pair_exclude", "fparam_aparam"])
def test_blocked_training_gradients_equal_plain(name: str) -> None:
    """In training, every block keeps its graph: parameter gradients of a force+energy loss
    are those of the plain single-block evaluation."""
    model = copy.deepcopy(model_for(name)).train()
    model.block_atoms = 8  # several blocks of 4 centres per frame
    plain = plain_twin(model).train()
    c1, atype, b1 = make_system("pbc", 7, n_virtual=1, natoms=14)
    c2, _, b2 = make_system("pbc", 8, n_virtual=1, natoms=14)
    coord, box = torch.tensor(np.stack([c1, c2])), torch.tensor(np.stack([b1, b2]))
    atype_t = torch.tensor(np.stack([atype, atype]), dtype=torch.long)
    fp, ap = params_for(model, 2, atype.shape[0])
    fp = None if fp is None else torch.tensor(fp)
    ap = None if ap is None else torch.tensor(ap)
    grads = []
    for net in (model, plain):
        out = net(coord, atype_t, box, fparam=fp, aparam=ap)
        loss = (
            out["energy"].square().sum()
            + 10.0 * out["force"].square().sum()
            + out["virial"].square().sum()
        )
        params = [p for p in net.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(loss, params, allow_unused=True))
    for (pname, _), g_blocked, g_plain in zip(model.named_parameters(), *grads, strict=False):
        if g_plain is None:
            assert g_blocked is None, pname
            continue
        err = (g_blocked - g_plain).abs().max().item()
        assert err <= 1e-10 * max(g_plain.abs().max().item(), 1e-3), f"{pname}: {err:.2e}"


def test_scaled_unit_rows_fast_backward_is_the_formulas_gradient() -> None:
    """The hand-written backward of the attention's row normalisation (evaluation only) is
    the derivative of ``scale·x/max(‖x‖, 1e-12)``: rows of every size, a zero row and a row
    below the floor; a second derivative is refused instead of being silently wrong."""
    from dpa1.model.attention import _scaled_unit_rows

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 7, 16, generator=gen, dtype=torch.float64)
    x[0, 1] = 0.0
    x[1, 2] *= 1e-14  # below the 1e-12 floor: a constant multiple of x
    x[2, 3] *= 1e6
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    results = []
    for fast in (False, True):
        xi = x.clone().requires_grad_()
        y = _scaled_unit_rows(xi, 0.3, fast)
        (gx,) = torch.autograd.grad(y, xi, g)
        results.append((y.detach(), gx))
    (y0, g0), (y1, g1) = results
    assert torch.equal(y0, y1)
    assert torch.allclose(g1, g0, rtol=1e-12, atol=0.0)
    assert torch.autograd.gradcheck(
        lambda t: _scaled_unit_rows(t, 0.3, True), (x[2:, :2].clone().requires_grad_(),)
    )
    xi = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(_scaled_unit_rows(xi, 0.3, True), xi, g, create_graph=True)


@pytest.mark.parametrize("name", NAMES)
def test_threaded_blocks_equal_sequential(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a multi-threaded CPU, evaluation runs its blocks side by side (block_pool.py):
    the same numbers as one block after another (several frames, virtual atoms and
    fparam/aparam included). The caller's thread count is left alone (also as the default
    of threads started later), and its grad mode holds in the blocks (under no_grad they
    refuse, as the sequential loop does)."""
    from dpa1.accel.settings import TUNING
    from dpa1.model import accel_hook

    model = copy.deepcopy(model_for(name)).eval()
    model.block_atoms = 12  # 2 frames: 6 centres per frame and block, 3 when threaded
    coords, a, boxes, fp, ap = pbc_frames(model, (5, 6))
    calls = []
    real_map = accel_hook.map_blocks
    monkeypatch.setattr(
        accel_hook,
        "map_blocks",
        lambda fn, starts, workers: (
            calls.append((len(starts), workers)) or real_map(fn, starts, workers)
        ),
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = evaluate(model, coords, a, boxes, fp, ap)
        assert torch.get_num_threads() == 2  # the workers' one-thread setting is their own
        seen: list = []  # ... and threads started later default to the caller's count
        later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        later.start()
        later.join()
        assert seen == [2]
        monkeypatch.setattr(TUNING, "thread_blocks", False)
        want = evaluate(model, coords, a, boxes, fp, ap)
        monkeypatch.setattr(TUNING, "thread_blocks", True)
        with torch.no_grad(), pytest.raises(RuntimeError, match="torch.no_grad"):
            evaluate(model, coords, a, boxes, fp, ap)
    finally:
        torch.set_num_threads(before)
    assert calls[0] == (6, 2)  # 16 centres (2 of them virtual): 6 blocks on 2 threads
    _compare(got, want, tol(name, 1e-12, 1e-5), "threaded vs sequential blocks")


def test_contiguous_gradient_products_are_exact_and_twice_differentiable() -> None:
    """``a·bᵀ`` (attention logits) and ``y + [x, x]`` (doubling skip) with their own
    backward: first and second derivatives are those of the formulas (training
    differentiates forces), and the logits' gradients come out contiguous."""
    from dpa1.accel.formulas import BmmNT as _BmmNT
    from dpa1.accel.formulas import DoubledSkip as _DoubledSkip

    gen = torch.Generator().manual_seed(8)
    a = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_BmmNT.apply, (a, b))
    assert torch.autograd.gradgradcheck(_BmmNT.apply, (a, b))
    ga, gb = torch.autograd.grad(
        _BmmNT.apply(a, b), (a, b), torch.randn(2, 5, 4, dtype=torch.float64)
    )
    assert ga.is_contiguous() and gb.is_contiguous()
    y = torch.randn(3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_DoubledSkip.apply, (y, x))
    assert torch.autograd.gradgradcheck(_DoubledSkip.apply, (y, x))


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_mode_equals_training_mode(name: str) -> None:
    """Evaluation takes the fast backward of the attention normalisation, training the
    plain autograd one (it differentiates forces again): same energies, forces, virials."""
    model = copy.deepcopy(model_for(name))
    c, atype, b = make_system("pbc", 9, n_virtual=1, natoms=14)
    fp, ap = params_for(model, 1, atype.shape[0])
    got = evaluate(model.eval(), c, atype, b, fp, ap)
    want = evaluate(model.train(), c, atype, b, fp, ap)
    _compare(got, want, tol(name, 1e-12, 1e-5), "eval vs train mode")


class _Saved:
    """What autograd saves for backward, wrapped so that the test can see when it is freed."""

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


def test_evaluation_frees_each_block_graph() -> None:
    """Inference memory stays bounded by one block: nothing saved for a block's backward
    outlives it, even while the outputs are alive (an evaluation-mode Function once kept
    ~40 MB per 64-centre block: 4.4 GB at 12,288 atoms)."""
    import gc
    import weakref

    model = copy.deepcopy(model_for(NAMES[0])).eval()
    model.block_atoms = 4
    coord, atype, box = make_system("pbc", 3, natoms=14)
    fp, ap = params_for(model, 1, atype.shape[0])

    def run():
        return model(
            torch.tensor(coord)[None],
            torch.tensor(atype)[None],
            torch.tensor(box)[None],
            fparam=None if fp is None else torch.tensor(fp),
            aparam=None if ap is None else torch.tensor(ap)[None],
        )

    alive: list = []

    def pack(t: torch.Tensor) -> _Saved:
        s = _Saved(t)
        alive.append(weakref.ref(s))
        return s

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s.t):
        out = run()
    gc.collect()
    assert len(alive) > 20  # the hooks saw the blocks' graphs (the C++ block saves 6 each)
    held = sum(r() is not None for r in alive)
    assert held == 0, f"{held} of {len(alive)} saved tensors outlive their block"
    assert not out["energy"].requires_grad and not out["atom_energy"].requires_grad
    # training keeps the graph: the loss differentiates energies and forces
    model.train()
    out = run()
    assert out["energy"].requires_grad and out["force"].requires_grad


# === the C++ attention stack (dpa1/accel/csrc/attention_stack.cpp) ===========================
def _attention_inputs(nb: int, n: int, embed: int, dtype: torch.dtype, seed: int):
    """Random attention inputs with padding, a centre without neighbours and one slot standing
    for several padding slots (``key_log_weight``, as padding trimming makes)."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(nb, n, embed, generator=gen, dtype=dtype)
    mask = torch.rand(nb, n, generator=gen) < 0.75
    mask[1] = False
    sw = torch.rand(nb, n, generator=gen, dtype=dtype) * mask
    direction = F.normalize(
        torch.randn(nb, n, 3, generator=gen, dtype=dtype), dim=-1
    ) * mask.unsqueeze(-1)
    klw = torch.zeros(n, dtype=dtype)
    klw[-1] = math.log(4.0)
    return g, mask, sw, direction, klw


ATTENTION_CASES = {
    # name: (NeighborGatedAttention kwargs, embed_dim, hidden_dim)
    "smooth": (dict(smooth=True, dotr=True, do_mask=False, normalize=True, temperature=None), 6, 8),
    "smooth_wide": (
        dict(smooth=True, dotr=False, do_mask=True, normalize=True, temperature=None),
        8,
        12,
    ),
    "masked": (
        dict(smooth=False, dotr=True, do_mask=False, normalize=True, temperature=None),
        12,
        8,
    ),
    "masked_wide": (
        dict(smooth=False, dotr=True, do_mask=True, normalize=True, temperature=None),
        8,
        16,
    ),
    "unnormalized": (
        dict(smooth=True, dotr=True, do_mask=False, normalize=False, temperature=0.7),
        8,
        8,
    ),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_native_attention_stack_equals_pytorch_layers(
    case: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In evaluation on a CPU the attention layers run as one C++ op: the output and its
    gradients with respect to ``g``, the switches and the directions are the PyTorch layers',
    for smooth and masked softmax, with and without normalisation, both orders of the output
    projection (embed < hidden or not), and groups of centres that do not divide the block.
    A second derivative is refused, as in the other evaluation-only backward."""
    from dpa1.accel.settings import TUNING
    from dpa1.model.attention import NeighborGatedAttention

    require_native()
    kwargs, embed, hidden = ATTENTION_CASES[case]
    gen = torch.Generator().manual_seed(3)
    stack = NeighborGatedAttention(
        3,
        embed,
        hidden,
        scaling_factor=1.0,
        trainable_ln=True,
        ln_eps=1e-5,
        dtype=dtype,
        generator=gen,
        **kwargs,
    ).eval()
    with torch.no_grad():  # LayerNorm away from its initial identity
        for layer in stack.layers:
            layer.layer_norm.w.normal_(1.0, 0.3, generator=gen)
            layer.layer_norm.b.normal_(0.0, 0.3, generator=gen)
    g, mask, sw, direction, klw = _attention_inputs(7, 9, embed, dtype, seed=4)
    weights = torch.randn(7, 9, embed, generator=gen, dtype=dtype)
    results = []
    for native, group in ((False, 1), (True, 3), (True, 1), (True, 64)):
        stack.native = native
        monkeypatch.setattr(TUNING, "attention_group", group)
        gi, swi, di = (t.clone().requires_grad_() for t in (g, sw, direction))
        out = stack(gi, mask, swi, di, klw if kwargs["smooth"] else None)
        grads = torch.autograd.grad((out * weights).sum(), (gi, swi, di), allow_unused=True)
        results.append((out.detach(), *grads))
    rtol = 1e-12 if dtype == torch.float64 else 2e-5
    want = results[0]
    for got in results[1:]:
        for label, a, b in zip(("out", "d/dg", "d/dsw", "d/ddirection"), got, want, strict=True):
            if b is None:
                assert a is None, label
                continue
            scale = b.abs().max().item()
            err = (a - b).abs().max().item()
            assert err <= rtol * max(scale, 1.0), f"{case} {label}: {err:.2e} (scale {scale:.2e})"
    stack.native = True
    gi = g.clone().requires_grad_()
    out = stack(gi, mask, sw, direction)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(out.sum(), gi, create_graph=True)


def test_native_ops_run_in_evaluation_not_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """The water example model's evaluation goes through the C++ block op (energy_block.py);
    without it, through the C++ attention and embedding ops; all three give the PyTorch
    layers' forces. Training, which differentiates forces again, uses none of them."""
    from dpa1.accel import attention_op, embedding_op, energy_block

    require_native()
    calls = []
    for fn in (attention_op._AttentionStack, embedding_op._EmbeddingTangent):
        real = fn.apply
        monkeypatch.setattr(fn, "apply", lambda *a, real=real, fn=fn: calls.append(fn) or real(*a))
    real_block = energy_block.EnergyKernel.forward
    monkeypatch.setattr(
        energy_block.EnergyKernel,
        "forward",
        lambda *a: calls.append(energy_block.EnergyKernel) or real_block(*a),
    )
    fr = water_frames(1)
    coord, box, atype = fr["coord"], fr["box"], fr["atype"]
    model = water_example_model("float64").eval()
    block = evaluate(model, coord[0], atype, box[0], atomic=True)
    assert set(calls) == {energy_block.EnergyKernel}, calls
    calls.clear()
    model.native = False
    ops = evaluate(model, coord[0], atype, box[0], atomic=True)
    assert set(calls) == {attention_op._AttentionStack, embedding_op._EmbeddingTangent}, calls
    calls.clear()
    model.descriptor.attention.native = False
    model.descriptor.embedding.native = False
    want = evaluate(model, coord[0], atype, box[0], atomic=True)
    assert not calls
    _compare(block, want, 1e-12, "C++ block vs PyTorch layers, water example model")
    _compare(ops, want, 1e-12, "C++ attention and embedding vs PyTorch layers, water example model")
    model.native = model.descriptor.attention.native = model.descriptor.embedding.native = True
    model.train()
    out = model(torch.tensor(coord[:1]), torch.tensor(atype).reshape(1, -1), torch.tensor(box[:1]))
    torch.autograd.grad(
        out["force"].square().sum(),
        [p for p in model.parameters() if p.requires_grad],
        allow_unused=True,
    )
    assert not calls


def block_and_modules(model, monkeypatch: pytest.MonkeyPatch, seeds: tuple[int, int]):
    """Two periodic frames evaluated through the block op (checked to run) and through the
    modules (``model.native = False``, left so): ``(got, want, fparam, aparam)``."""
    from dpa1.accel import energy_block

    used = []
    real = energy_block.EnergyKernel.forward
    monkeypatch.setattr(
        energy_block.EnergyKernel, "forward", lambda *a: used.append(1) or real(*a)
    )
    coords, atype, boxes, fp, ap = pbc_frames(model, seeds)
    got = evaluate(model, coords, atype, boxes, fp, ap)
    assert used, "the block op did not run"
    model.native = False
    want = evaluate(model, coords, atype, boxes, fp, ap)
    return got, want, fp, ap


@pytest.mark.parametrize("name", NAMES)
def test_native_block_equals_modules(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block op covers every configuration (type-embedding modes, activations, precisions)
    and gives the modules' energies, forces and virials, per atom too, with trimming, several
    blocks, virtual atoms, exclusions, fparam/aparam and vacuum energies. Its backward is not
    differentiable again."""
    require_native()
    model = copy.deepcopy(model_for(name))
    model.block_atoms = 6  # several blocks of 3 centres per frame, each trimmed to its width
    got, want, fp, ap = block_and_modules(model, monkeypatch, (3, 4))
    _compare(got, want, tol(name, 1e-12, 1e-5), "C++ block vs modules")
    model.native = True
    nei = 8
    rij = torch.randn(1, 3, nei, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 3, nei, dtype=torch.bool)
    e = model._fitted_energy(
        rij,
        mask,
        torch.full((1, 3, nei), 2),  # type 2: in no exclusion
        torch.full((1, 3), 2),
        *params_or_none(fp, ap, 3),
    )
    assert torch.autograd.grad(e.sum(), rij, retain_graph=True)[0].abs().sum() > 0
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(e.sum(), rij, create_graph=True)


@pytest.mark.parametrize("descriptor, fitting", [("float32", "float64"), ("float64", "float32")])
def test_native_block_takes_mixed_precisions(
    descriptor: str, fitting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A descriptor and a fitting net of different precisions (with fparam and aparam, whose
    inputs are in the fitting's precision) through the block op: the modules' numbers, to
    float32 round-off."""
    require_native()
    model = make_model(small_model_config(
        {"precision": descriptor, "smooth_type_embedding": True},
        {"precision": fitting, "numb_fparam": 2, "numb_aparam": 1},
    ))
    got, want, _, _ = block_and_modules(model, monkeypatch, (3, 4))
    _compare(got, want, 1e-5, f"C++ block vs modules, {descriptor} descriptor, {fitting} fitting")


def params_or_none(fp, ap, nloc: int):
    """One frame's fparam/aparam tensors for ``nloc`` centres, or None."""
    f = None if fp is None else torch.tensor(fp[:1])
    a = None if ap is None else torch.tensor(ap[:1, :nloc])
    return f, a


EMBEDDING_CASES = {
    # name: (in_dim, neuron, resnet_dt): concat input (σ and two type embeddings), doubled skips;
    # strip (σ alone); equal widths (y + x) with a timestep
    "concat": (17, [25, 50, 100], False),
    "strip_dt": (1, [4, 8, 16], True),
    "equal_dt": (5, [10, 10, 20, 7], True),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(EMBEDDING_CASES))
def test_native_embedding_equals_pytorch_layers(
    case: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In evaluation on a CPU the embedding net runs as one C++ op carrying ∂y/∂σ forward:
    its values and σ's gradient are the PyTorch layers', for tiles of rows that do not divide
    the rows; a second derivative is refused."""
    from dpa1.accel.settings import TUNING
    from dpa1.model.network import EmbeddingNet

    require_native()
    in_dim, neuron, resnet_dt = EMBEDDING_CASES[case]
    gen = torch.Generator().manual_seed(5)
    net = EmbeddingNet(
        in_dim, neuron, activation_function="tanh", resnet_dt=resnet_dt, dtype=dtype, generator=gen
    ).eval()
    sigma = torch.rand(3, 17, 1, generator=gen, dtype=dtype) * 4 - 2
    rest = torch.randn(3, 17, in_dim - 1, generator=gen, dtype=dtype) if in_dim > 1 else None
    weights = torch.randn(3, 17, neuron[-1], generator=gen, dtype=dtype)
    results = []
    for native, tile in ((False, 1), (True, 7), (True, 1), (True, 256)):
        net.native = native
        monkeypatch.setattr(TUNING, "embedding_tile", tile)
        s = sigma.clone().requires_grad_()
        y = net.along_first(s, rest)
        results.append((y.detach(), torch.autograd.grad((y * weights).sum(), s)[0]))
    rtol = 1e-12 if dtype == torch.float64 else 2e-5
    for got in results[1:]:
        for label, a, b in zip(("y", "d/dsigma"), got, results[0], strict=True):
            err = (a - b).abs().max().item()
            assert err <= rtol * max(b.abs().max().item(), 1.0), f"{case} {label}: {err:.2e}"
    net.native = True
    s = sigma.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(net.along_first(s, rest).sum(), s, create_graph=True)


ACTIVATIONS = ["tanh", "relu", "relu6", "softplus", "sigmoid", "silu", "gelu", "gelu_tf",
               "silut:1.5", "custom_silu", "none"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_native_embedding_and_block_take_every_activation(
    activation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of DeePMD-kit's activations, in the embedding op (values and the σ derivative it
    carries forward, pre-activations on both sides of every kink and of the silut threshold)
    and in a whole model through the block op (embedding and fitting nets): the PyTorch
    layers' numbers."""
    from dpa1.model.network import EmbeddingNet

    require_native()
    gen = torch.Generator().manual_seed(7)
    net = EmbeddingNet(3, [6, 12, 12], activation_function=activation, resnet_dt=True,
                       dtype=torch.float64, generator=gen).eval()
    sigma = torch.rand(4, 9, 1, generator=gen, dtype=torch.float64) * 16 - 8
    rest = torch.randn(4, 9, 2, generator=gen, dtype=torch.float64)
    weights = torch.randn(4, 9, 12, generator=gen, dtype=torch.float64)
    results = []
    for native in (False, True):
        net.native = native
        s = sigma.clone().requires_grad_()
        y = net.along_first(s, rest)
        results.append((y.detach(), torch.autograd.grad((y * weights).sum(), s)[0]))
    for label, a, b in zip(("y", "d/dsigma"), results[1], results[0], strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), (activation, label)

    model = make_model(small_model_config({"activation_function": activation},
                                          {"activation_function": activation}))
    got, want, _, _ = block_and_modules(model, monkeypatch, (5, 6))
    _compare(got, want, 1e-12, f"C++ block vs modules, {activation}")


def test_failed_native_build_falls_back_to_pytorch(tmp_path: Path) -> None:
    """Without a working compiler the op is not built: one warning names the failure and
    evaluation runs on the PyTorch layers; the failure is recorded, so a second process does
    not try again."""
    script = (
        "import warnings, torch\n"
        "from dpa1.accel.build import native_ops\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    assert not native_ops() and not native_ops()\n"
        "    from dpa1.model.attention import NeighborGatedAttention\n"
        "    st = NeighborGatedAttention(2, 4, 4, dotr=True, do_mask=False, "
        "scaling_factor=1.0, normalize=True,\n"
        "        temperature=None, smooth=True, trainable_ln=True, ln_eps=1e-5, "
        "dtype=torch.float64).eval()\n"
        "    g = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)\n"
        "    d = torch.nn.functional.normalize(torch.randn(2, 3, 3, dtype=torch.float64), dim=-1)\n"
        "    out = st(g, torch.ones(2, 3, dtype=torch.bool), torch.rand(2, 3, "
        "dtype=torch.float64), d)\n"
        "    assert torch.autograd.grad(out.sum(), g)[0].shape == g.shape\n"
        "assert len(w) == 1 and 'not available' in str(w[0].message), [str(x.message) for x in w]\n"
        "print('fallback ok:', w[0].message)\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "CXX": "false"}
    env.pop("DPA1_NATIVE", None)
    first = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0 and "fallback ok" in first.stdout, first.stderr[-2000:]
    assert "recorded in" not in first.stdout
    # The failure is recorded: a second process warns the same way without building again.
    assert list(tmp_path.rglob("dpa1_build_failed_*.txt"))
    second = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0 and "recorded in" in second.stdout, (
        second.stdout + second.stderr[-2000:]
    )
    assert "building the C++ ops" not in second.stderr
