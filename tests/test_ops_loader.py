"""The library ``dpa1 ops-path`` prints for ``DP_PLUGIN_PATH`` (``csrc/plugin/ops_loader.cpp``).

Loaded the way DeePMD-kit's C++ loads plugins, into a process that has torch but has not
imported dpa1, it registers ``torch.ops.dpa1`` so that a model frozen with the ops loads. Built
for another torch release, or naming an op library that is not there, it loads nothing and says
so in one ``dpa1:`` line on stderr (instead of an undefined symbol from the dynamic linker, or
op registration through a mismatched ABI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpa1.accel.build import build_loader, library_path, plugin_path
from dpa1.cli.main import main

from data_paths import TINY_DP
from helpers import require_native

# as DeePMD-kit's C++ does: dlopen the plugin, then torch::jit::load the model
_LOAD = """
import ctypes, sys, torch
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_LOCAL)
ok = hasattr(torch.ops.dpa1, "energy_block")
print("registered" if ok else "not registered")
if ok:
    torch.jit.load(sys.argv[2])
"""


@pytest.fixture(scope="module")
def frozen_with_ops(tmp_path_factory) -> Path:
    require_native()
    out = tmp_path_factory.mktemp("loader") / "tiny_lammps.pth"
    assert main(["freeze", "-c", str(TINY_DP), "-o", str(out), "--lammps"]) == 0
    return out


def load_in_fresh_process(loader: Path, model: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _LOAD, str(loader), str(model)],
        capture_output=True, text=True, timeout=300,
    )


def test_ops_path_loader_registers_the_ops(frozen_with_ops: Path, capsys) -> None:
    """``dpa1 ops-path`` prints the loader; loaded alone, it registers the ops and the frozen
    model loads, silently."""
    assert main(["ops-path"]) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert path == plugin_path() and path.is_file() and path.parent == library_path().parent
    run = load_in_fresh_process(path, frozen_with_ops)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "registered" and "dpa1:" not in run.stderr


def test_loader_takes_another_build_of_the_same_release(frozen_with_ops: Path, tmp_path) -> None:
    """Only the release counts: ``2.13.0+cpu`` and ``2.13.0+cu126`` are one ABI for the ops."""
    release = torch.__version__.split("+")[0]
    loader = tmp_path / "other_build.so"
    build_loader(library_path(), release + "+somewhere", loader)
    run = load_in_fresh_process(loader, frozen_with_ops)
    assert run.returncode == 0 and run.stdout.strip() == "registered", run.stderr[-2000:]


def test_loader_refuses_another_torch_release(frozen_with_ops: Path, tmp_path) -> None:
    """Built for another torch, the op library is not loaded: one line names both versions."""
    loader = tmp_path / "old_torch.so"
    build_loader(library_path(), "1.0.0", loader)
    run = load_in_fresh_process(loader, frozen_with_ops)
    assert run.returncode == 0 and run.stdout.strip() == "not registered"
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpa1: not loading the op library "), lines
    assert f"built for torch 1.0.0, but this process runs torch {torch.__version__}" in lines[0]
    assert "dpa1 ops-path" in lines[0]


def test_loader_reports_a_missing_op_library(frozen_with_ops: Path, tmp_path) -> None:
    loader = tmp_path / "missing.so"
    build_loader(tmp_path / "no_such_ops.so", torch.__version__, loader)
    run = load_in_fresh_process(loader, frozen_with_ops)
    assert run.returncode == 0 and run.stdout.strip() == "not registered"
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"dpa1: cannot load the op library {tmp_path / 'no_such_ops.so'} (")


def test_ops_path_refuses_when_switched_off(capsys, monkeypatch) -> None:
    monkeypatch.setenv("DPA1_NATIVE", "0")
    assert main(["ops-path"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dpa1 ops-path: error: DPA1_NATIVE=0 switches the C++ ops off: unset it to "
                   "build or find them"]


def test_file_frozen_without_the_ops_needs_no_loader(tmp_path) -> None:
    """``DPA1_NATIVE=0 dpa1 freeze --lammps`` writes plain layers: the file loads where no op
    library is, and freeze says that no DP_PLUGIN_PATH is needed."""
    out = tmp_path / "plain_lammps.pth"
    env = {**os.environ, "DPA1_NATIVE": "0"}
    run = subprocess.run(
        [sys.executable, "-m", "dpa1", "freeze", "-c", str(TINY_DP), "-o", str(out), "--lammps"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "no DP_PLUGIN_PATH needed" in run.stdout
    script = "import sys, torch; print(torch.jit.load(sys.argv[1]).get_rcut())"
    load = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True,
                          text=True, timeout=300)
    assert load.returncode == 0 and float(load.stdout) == 4.0, load.stderr[-2000:]
