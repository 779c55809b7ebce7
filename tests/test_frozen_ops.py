"""Frozen models keep the C++ block op: ``dpa1 freeze`` stores it in the TorchScript module,
whose forces then come from the op's C++ backward; where the op library cannot load, the
plain model is rebuilt from the weights in the file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dpa1.infer.deep_pot import DeepPot
from dpa1.io.model_file import freeze, load_frozen
from dpa1.io.serialize import load_dp_model

from data_paths import TINY_DP, TINY_REFERENCE
from helpers import make_model, make_system, require_native, small_model_config


def _reference():
    ref = np.load(TINY_REFERENCE)
    return ref["coord"][:2], ref["box"][:2], ref["atype"]


@pytest.fixture(scope="module")
def frozen_with_ops(tmp_path_factory) -> Path:
    require_native()
    path = tmp_path_factory.mktemp("frozen") / "tiny.pth"
    model, _ = load_dp_model(TINY_DP)
    freeze(model, path)
    return path


def test_frozen_model_runs_the_block_op_and_equals_eager(frozen_with_ops: Path) -> None:
    """The scripted forward calls ``dpa1::energy_block``; energies, forces, virials and atomic
    virials equal the eager model's (and so DeePMD-kit's reference) to round-off."""
    module, meta = load_frozen(frozen_with_ops)
    assert isinstance(module, torch.jit.ScriptModule) and meta["native_ops"]
    assert "dpa1.energy_block" in module.accel.code
    coord, box, atype = _reference()
    got = DeepPot(frozen_with_ops).eval(coord, box, atype, atomic=True)
    model, _ = load_dp_model(TINY_DP)
    want = DeepPot(model).eval(coord, box, atype, atomic=True)
    for name, a, b in zip(("energy", "force", "virial", "atom_energy", "atom_virial"), got, want,
                          strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)
    ref = np.load(TINY_REFERENCE)
    np.testing.assert_allclose(got[0].reshape(-1), ref["energy"][:2], rtol=1e-12)
    np.testing.assert_allclose(got[1].reshape(2, -1), ref["force"][:2], atol=1e-10)


def test_frozen_block_op_is_differentiable_once(frozen_with_ops: Path) -> None:
    """Its C++ backward gives the pair vectors' gradient once; a second derivative (what
    training would take) is refused instead of being silently zero."""
    module, _ = load_frozen(frozen_with_ops)
    nb, n = 4, 40
    rij = (torch.randn(nb, n, 3, dtype=torch.float64) * 1.5).requires_grad_()
    mask = torch.ones(nb, n, dtype=torch.bool)
    atype = torch.tensor([0, 1, 1, 0])
    empty = torch.empty(0, dtype=torch.float64)
    dstd = module.descriptor.dstd[:, :n].contiguous()
    davg = module.descriptor.davg[:, :n].contiguous()
    # the kernel's parameter lists give the widths: [w, b, idt] per layer
    kernel = module.accel
    rows = torch.randn(nb, n, kernel.emb[0].shape[0] - 1, dtype=torch.float64)  # type rows
    ng, na = kernel.emb[-3].shape[-1], kernel.sizes[1]
    extra = torch.randn(nb, kernel.fit[0].shape[0] - ng * na, dtype=torch.float64)
    e = kernel(rij, mask, mask, atype, empty, rows, empty, extra, davg, dstd)
    (g,) = torch.autograd.grad(e.sum(), rij, retain_graph=True)
    assert g.shape == rij.shape and g.abs().sum() > 0
    # against a central difference along one pair vector
    h = 1e-6
    shift = torch.zeros_like(rij)
    shift[1, 3, 2] = h
    with torch.no_grad():
        ep = kernel(rij + shift, mask, mask, atype, empty, rows, empty, extra, davg, dstd).sum()
        em = kernel(rij - shift, mask, mask, atype, empty, rows, empty, extra, davg, dstd).sum()
    assert abs((ep - em).item() / (2 * h) - g[1, 3, 2].item()) < 1e-6 * max(1.0, abs(g[1, 3, 2]))
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(e.sum(), rij, create_graph=True)


def test_frozen_model_falls_back_without_the_ops(frozen_with_ops: Path) -> None:
    """Where the op library cannot load (here: DPA1_NATIVE=0), loading warns once and
    evaluates the plain model rebuilt from the weights in the file: the same numbers."""
    coord, box, atype = _reference()
    model, _ = load_dp_model(TINY_DP)
    want = DeepPot(model).eval(coord, box, atype)
    script = (
        "import sys, warnings, numpy as np\n"
        "from dpa1.infer.deep_pot import DeepPot\n"
        "ref = np.load(sys.argv[2])\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    dp = DeepPot(sys.argv[1])\n"
        "    e, f, v = dp.eval(ref['coord'][:2], ref['box'][:2], ref['atype'])\n"
        "msgs = [str(x.message) for x in w]\n"
        "assert len(msgs) == 1 and 'rebuilt from its weights' in msgs[0], msgs\n"
        "np.save(sys.argv[3], np.concatenate([e.ravel(), f.ravel(), v.ravel()]))\n"
    )
    out = frozen_with_ops.parent / "fallback.npy"
    env = {**os.environ, "DPA1_NATIVE": "0"}
    run = subprocess.run(
        [sys.executable, "-c", script, str(frozen_with_ops), str(TINY_REFERENCE), str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = np.load(out)
    np.testing.assert_allclose(got, np.concatenate([x.ravel() for x in want]), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("smooth", [True, False])
def test_frozen_strip_model_runs_the_block_op(tmp_path: Path, smooth: bool) -> None:
    """A strip-mode model (``se_atten_v2``, and its non-smooth variant) frozen with the ops
    runs the block op too, and its energies, forces and virials are the plain modules'."""
    require_native()
    desc = {"type": "se_atten_v2"} if smooth else {"tebd_input_mode": "strip"}
    model = make_model(small_model_config(desc))
    freeze(model, tmp_path / "strip.pth")
    module, meta = load_frozen(tmp_path / "strip.pth")
    assert meta["native_ops"] and "dpa1.energy_block" in module.accel.code
    coord, atype, box = make_system("pbc", 3, natoms=14)
    got = DeepPot(tmp_path / "strip.pth").eval(coord[None], box[None], atype, atomic=True)
    model.native = False
    want = DeepPot(model).eval(coord[None], box[None], atype, atomic=True)
    for name, a, b in zip(("energy", "force", "virial", "atom_energy", "atom_virial"), got, want,
                          strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12, err_msg=name)


def test_model_frozen_without_the_ops_is_plain(tmp_path: Path) -> None:
    """A model frozen with the ops switched off calls none of them, and says so."""
    model, _ = load_dp_model(TINY_DP)
    model.native = False
    freeze(model, tmp_path / "plain.pth")
    module, meta = load_frozen(tmp_path / "plain.pth")
    assert meta["native_ops"] is False and module.accel is None
