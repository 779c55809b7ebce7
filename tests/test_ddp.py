"""Two-process data-parallel training on CPU (gloo) through torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from dpa1.io.model_file import load_checkpoint
from dpa1.train.lcurve import read_lcurve

from helpers import water_input


@pytest.mark.slow
def test_two_process_cpu_ddp(tmp_path):
    inp = water_input(tmp_path, numb_steps=6, disp_freq=2, save_freq=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port: a fixed one may be taken on a shared machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "-m",
        "dpa1",
        "train",
        str(inp),
        "-o",
        str(tmp_path / "run"),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names, data = read_lcurve(tmp_path / "run" / "lcurve.out")
    assert data[:, 0].tolist() == [1, 2, 4, 6]  # one writer (rank 0), no duplicated rows
    assert np.all(np.isfinite(data[:, 1:]))
    _, payload = load_checkpoint(tmp_path / "run" / "model.ckpt.pt")
    assert payload["step"] == 6
    assert (tmp_path / "run" / "model.ckpt-3.pt").exists()
