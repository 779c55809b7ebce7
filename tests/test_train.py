"""End-to-end training: lcurve, checkpoints, restart, reproducibility, crash safety, errors."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dpa1.cli.main import main
from dpa1.io.model_file import load_checkpoint
from dpa1.train.lcurve import read_lcurve

from data_paths import WATER
from helpers import water_input


def _lcurve(path: Path) -> tuple[list[str], np.ndarray]:
    return read_lcurve(path)


def test_train_writes_lcurve_checkpoints_and_out_json(tmp_path):
    inp = water_input(tmp_path, numb_steps=12, disp_freq=4, save_freq=4, max_ckpt_keep=2)
    assert main(["train", str(inp), "-o", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    lines = (run / "lcurve.out").read_text().splitlines()
    assert lines[0].startswith("# step")
    assert "rmse_f_val" in lines[0] and "rmse_e_trn" in lines[0]
    names, data = _lcurve(run / "lcurve.out")
    assert data[:, 0].tolist() == [1, 4, 8, 12]
    assert np.all(np.isfinite(data[:, 1:]))
    # rotation keeps the newest max_ckpt_keep files; the pointer names the last one
    ckpts = sorted(p.name for p in run.glob("model.ckpt-*.pt"))
    assert ckpts == ["model.ckpt-12.pt", "model.ckpt-8.pt"]
    model, payload = load_checkpoint(run / "model.ckpt.pt")
    assert payload["step"] == 12
    out = json.loads((run / "out.json").read_text())
    assert out["model"]["descriptor"]["neuron"] == [4, 8]
    assert out["model"]["descriptor"]["smooth_type_embedding"] is False  # defaults filled
    assert "model.ckpt-12.pt" in (run / "checkpoint").read_text()
    # train.log is complete and closed when the command returns (in-process runs leaked it)
    assert "latest checkpoint" in (run / "train.log").read_text()
    assert not logging.getLogger("dpa1").handlers


def test_same_seed_same_numbers(tmp_path):
    curves = []
    for k in range(2):
        (tmp_path / f"r{k}").mkdir()
        inp = water_input(tmp_path / f"r{k}", numb_steps=6, disp_freq=2)
        assert main(["train", str(inp), "-o", str(tmp_path / f"r{k}" / "run")]) == 0
        curves.append(_lcurve(tmp_path / f"r{k}" / "run" / "lcurve.out")[1])
    np.testing.assert_array_equal(curves[0], curves[1])


def test_zero_steps_writes_the_initial_model_with_statistics(tmp_path):
    """``numb_steps: 0`` (as `dp train`): model.ckpt-0.pt = the initial weights and the
    statistics, i.e. where a 1-step run with the same seed starts."""
    for name, steps in (("r0", 0), ("r1", 1)):
        (tmp_path / name).mkdir()
        inp = water_input(tmp_path / name, numb_steps=steps, disp_freq=1)
        assert main(["train", str(inp), "-o", str(tmp_path / name / "run")]) == 0
    m0, payload = load_checkpoint(tmp_path / "r0" / "run" / "model.ckpt.pt")
    m1, _ = load_checkpoint(tmp_path / "r1" / "run" / "model.ckpt.pt")
    assert payload["step"] == 0
    lines = (tmp_path / "r0" / "run" / "lcurve.out").read_text().splitlines()
    assert lines and all(line.startswith("#") for line in lines)  # the header, no steps
    sd0, sd1 = m0.state_dict(), m1.state_dict()
    trained = {n for n, p in m1.named_parameters() if p.requires_grad}
    for k in sd0:
        if k in trained:
            continue
        torch.testing.assert_close(sd0[k], sd1[k], rtol=0, atol=0)  # statistics: same frames
    assert sd0["out_bias"].abs().max() > 1.0
    moved = [k for k in trained if not torch.equal(sd0[k], sd1[k])]
    assert moved, "one Adam step must change the weights"


class _Killed(Exception):
    pass


def test_restart_continues_like_an_uninterrupted_run(tmp_path, monkeypatch):
    for name in ("full", "cut"):
        (tmp_path / name).mkdir()
    full = water_input(tmp_path / "full", numb_steps=12, disp_freq=1, save_freq=5)
    assert main(["train", str(full), "-o", str(tmp_path / "full" / "run")]) == 0

    # The same run, killed inside step 8 (after the step-5 checkpoint). Each step draws one
    # training batch and numb_btch = 2 validation batches from SystemSampler.next_batch.
    cut = water_input(tmp_path / "cut", numb_steps=12, disp_freq=1, save_freq=5)
    from dpa1.data.loader import SystemSampler

    real_next = SystemSampler.next_batch
    calls = {"n": 0}

    def killed_next(self):
        calls["n"] += 1
        if calls["n"] == 3 * 7 + 1:
            raise _Killed()
        return real_next(self)

    monkeypatch.setattr(SystemSampler, "next_batch", killed_next)
    run = tmp_path / "cut" / "run"
    with pytest.raises(_Killed):
        main(["train", str(cut), "-o", str(run)])
    monkeypatch.setattr(SystemSampler, "next_batch", real_next)
    assert len(_lcurve(run / "lcurve.out")[1]) == 7  # rows 1..7 were written before the kill
    assert main(["train", str(cut), "-o", str(run), "-r", str(run / "model.ckpt.pt")]) == 0
    a = _lcurve(tmp_path / "full" / "run" / "lcurve.out")[1]
    b = _lcurve(run / "lcurve.out")[1]
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=1e-10, atol=0)
    ma, _ = load_checkpoint(tmp_path / "full" / "run" / "model.ckpt.pt")
    mb, _ = load_checkpoint(run / "model.ckpt.pt")
    for (ka, va), (_, vb) in zip(ma.state_dict().items(), mb.state_dict().items(), strict=True):
        torch.testing.assert_close(va, vb, rtol=1e-10, atol=1e-12, msg=ka)


def test_kill_during_save_keeps_last_checkpoint(tmp_path, monkeypatch):
    inp = water_input(tmp_path, numb_steps=4, disp_freq=2, save_freq=2)
    run = tmp_path / "run"
    import dpa1.io.model_file as mf

    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: write half a file, then die
            Path(f).write_bytes(b"PK\x03\x04 torn")
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(mf.torch, "save", dying_save)
    assert main(["train", str(inp), "-o", str(run)]) == 130
    monkeypatch.setattr(mf.torch, "save", real_save)
    # the torn temp file is gone and the pointer still loads the step-2 checkpoint
    assert not list(run.glob(".*.tmp"))
    assert not (run / "model.ckpt-4.pt").exists()
    _, payload = load_checkpoint(run / "model.ckpt.pt")
    assert payload["step"] == 2
    # and training resumes from it
    assert main(["train", str(inp), "-o", str(run), "--restart", str(run / "model.ckpt.pt")]) == 0
    _, payload = load_checkpoint(run / "model.ckpt.pt")
    assert payload["step"] == 4


def test_checkpoint_loads_with_weights_only(tmp_path):
    inp = water_input(tmp_path, numb_steps=2, disp_freq=1, save_freq=2)
    assert main(["train", str(inp), "-o", str(tmp_path / "run")]) == 0
    payload = torch.load(tmp_path / "run" / "model.ckpt-2.pt", weights_only=True)
    assert payload["format"] == "dpa1-checkpoint" and payload["step"] == 2


def test_misspelled_key_is_reported_with_path_and_suggestion(tmp_path, capsys):
    inp = water_input(tmp_path)
    cfg = json.loads(inp.read_text())
    cfg["model"]["descriptor"]["nueron"] = cfg["model"]["descriptor"].pop("neuron")
    inp.write_text(json.dumps(cfg))
    assert main(["train", str(inp), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "model.descriptor.nueron" in err and "did you mean 'neuron'" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_water_training_reduces_validation_force_error(tmp_path):
    inp = water_input(tmp_path, numb_steps=150, disp_freq=150, save_freq=150,
                      train=[str(WATER / "data_0"), str(WATER / "data_1")])
    cfg = json.loads(inp.read_text())
    # A 3-layer embedding learns forces quickly; 2-layer toy nets barely move them.
    cfg["model"]["descriptor"]["neuron"] = [8, 16, 32]
    cfg["model"]["fitting_net"]["neuron"] = [32, 32, 32]
    cfg["learning_rate"].update(start_lr=5e-3, stop_lr=2e-3, decay_steps=15)
    cfg["training"]["validation_data"]["numb_btch"] = 4
    inp.write_text(json.dumps(cfg))
    assert main(["train", str(inp), "-o", str(tmp_path / "run")]) == 0
    names, data = _lcurve(tmp_path / "run" / "lcurve.out")
    f_val = data[:, names.index("rmse_f_val")]
    assert data[0, 0] == 1 and data[-1, 0] == 150
    assert f_val[-1] <= 0.7 * f_val[0], f_val


def test_restart_refuses_another_network(tmp_path, capsys):
    """A restart continues the same run: a changed network is refused with the keys named
    (the checkpoint and out.json keep describing the weights); changes a restart can honour
    (steps, display, checkpoints, optimizer settings, sel "auto") work."""
    from dpa1.io.config import load_config
    from dpa1.train.trainer import Trainer

    inp = water_input(tmp_path, numb_steps=2, disp_freq=1, save_freq=2)
    run = tmp_path / "run"
    assert main(["train", str(inp), "-o", str(run)]) == 0
    ckpt = run / "model.ckpt-2.pt"
    before = ckpt.read_bytes(), (run / "out.json").read_text()

    cfg = json.loads(inp.read_text())
    cfg["model"]["descriptor"].update(neuron=[4, 16], attn_layer=2)
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["train", str(changed), "-o", str(run), "--restart", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "model.descriptor.neuron ([4, 8] in the checkpoint, [4, 16] in the input)" in err
    assert "model.descriptor.attn_layer (1 in the checkpoint, 2 in the input)" in err
    assert "--init-model" in err and "--finetune" in err
    assert (ckpt.read_bytes(), (run / "out.json").read_text()) == before
    assert sorted(p.name for p in run.glob("model.ckpt-*.pt")) == ["model.ckpt-2.pt"]

    # the same network, sel "auto" (resolved to the checkpoint's), longer and displayed more
    cfg = json.loads(inp.read_text())
    cfg["model"]["descriptor"]["sel"] = "auto"
    cfg["training"].update(numb_steps=4, disp_freq=1, save_freq=1)
    cfg["optimizer"] = {"adam_beta1": 0.5}
    more = tmp_path / "more.json"
    more.write_text(json.dumps(cfg))
    trainer = Trainer(load_config(more), run, restart=ckpt)
    assert trainer.optimizer.param_groups[0]["betas"] == (0.5, 0.999)  # not the saved 0.9
    assert main(["train", str(more), "-o", str(run), "--restart", str(ckpt)]) == 0
    _, payload = load_checkpoint(run / "model.ckpt.pt")
    assert payload["step"] == 4 and payload["config"]["model"]["descriptor"]["sel"] == 40
    assert _lcurve(run / "lcurve.out")[1][:, 0].tolist() == [1, 2, 3, 4]
    out = json.loads((run / "out.json").read_text())
    assert out["training"]["numb_steps"] == 4 and out["model"]["descriptor"]["sel"] == 40

    # --init-model trains the input's network from the weights, as long as the shapes fit
    cfg = json.loads(inp.read_text())
    cfg["model"]["descriptor"]["activation_function"] = "gelu"
    init = tmp_path / "init.json"
    init.write_text(json.dumps(cfg))
    assert main(["train", str(init), "-o", str(tmp_path / "init"), "--init-model", str(ckpt)]) == 0
    out = json.loads((tmp_path / "init" / "out.json").read_text())
    assert out["model"]["descriptor"]["activation_function"] == "gelu"
    capsys.readouterr()
    assert main(["train", str(changed), "-o", str(tmp_path / "x"), "--init-model", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "do not fit the input's network" in err
    assert "model.descriptor.neuron ([4, 8] in the checkpoint, [4, 16] in the input)" in err


def _has_tensorboard() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def test_tensorboard_needs_its_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    inp = water_input(tmp_path, numb_steps=1, tensorboard=True)
    assert main(["train", str(inp), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("dpa1 train: error: training.tensorboard: ")
    assert "pip install tensorboard" in err
    assert not (tmp_path / "run").exists()


def test_tensorboard_logs(tmp_path):
    """DeePMD-kit's tags (lr, loss, the training metrics) every tensorboard_freq steps and
    at step 1, the validation metrics at display steps, under tensorboard_log_dir."""
    if not _has_tensorboard():
        pytest.skip("the optional tensorboard package is not installed")
    inp = water_input(tmp_path, numb_steps=4, disp_freq=2, tensorboard=True,
                      tensorboard_log_dir="tb", tensorboard_freq=3)
    assert main(["train", str(inp), "-o", str(tmp_path / "run")]) == 0
    events = list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return
    board = EventAccumulator(str(events[0]))
    board.Reload()
    steps = {tag: [s.step for s in board.Scalars(tag)] for tag in board.Tags()["scalars"]}
    logged = [1, 3]
    assert steps == {"Default/lr": logged, "Default/loss": logged, "Default/rmse": logged,
                     "Default/rmse_e": logged, "Default/rmse_f": logged,
                     "Default/rmse_val": [1, 2, 4], "Default/rmse_e_val": [1, 2, 4],
                     "Default/rmse_f_val": [1, 2, 4]}
    assert board.Scalars("Default/lr")[0].value == pytest.approx(1e-3)
