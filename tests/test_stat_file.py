"""``training.stat_file``: the statistics saved by a first run are read back by a later one
(no data pass, the same statistics); files of other settings are refused; DeePMD-kit's own
stat files are read."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dpa1.cli.main import main
from dpa1.io.model_file import load_checkpoint
from dpa1.train.trainer import Trainer

from helpers import WATER, water_input

pytestmark = pytest.mark.skipif(not WATER.exists(), reason="shared water data not available")

# Written by `dp --pt train` (DeePMD-kit 3.2.0, numb_steps 1) for helpers.TINY_MODEL with
# data_stat_nbatch 2 on water data_0; the values DeePMD-kit installed from it follow.
DEEPMD_STAT_FILE = Path(__file__).parent / "data" / "deepmd_stat_water.hdf5"
DEEPMD_DSTD = [[0.22551683677644666, 0.1383397864862105],  # [type][radial, angular]
               [0.1852611983112763, 0.11495979186890938]]
DEEPMD_OUT_BIAS = [-93.57228088378905, -187.1445617675781]
DEEPMD_OUT_STD = [0.2900390625, 0.2900390625]


def _statistics(ckpt: Path) -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint(ckpt)
    names = ("descriptor.davg", "descriptor.dstd", "out_bias", "out_std",
             "fitting.fparam_avg", "fitting.fparam_inv_std")
    return {k: v for k, v in model.state_dict().items() if k in names}


def _no_data_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Trainer) -> list:
        raise AssertionError("the statistics sampled the data")

    monkeypatch.setattr(Trainer, "_stat_batches", refuse)


def _with_fparam(tmp_path: Path) -> Path:
    system = shutil.copytree(WATER / "data_0", tmp_path / "with_fparam")
    rng = np.random.default_rng(0)
    for sd in system.glob("set.*"):
        n = np.load(sd / "energy.npy").shape[0]
        np.save(sd / "fparam.npy", rng.normal(300.0, 20.0, size=(n, 1)))
    return system


@pytest.mark.parametrize("name", ["stat.hdf5", "stat_dir"])
def test_second_run_reads_the_statistics(tmp_path, monkeypatch, caplog, name):
    """The first run saves davg/dstd, out_bias/out_std and the fparam normalisation; a second
    run (another output directory, the same file) reads them without sampling the data."""
    system = str(_with_fparam(tmp_path))
    stat_file = tmp_path / name
    inp = water_input(tmp_path, numb_steps=0, train=[system], valid=[system],
                      stat_file=str(stat_file))
    cfg = json.loads(inp.read_text())
    cfg["model"]["fitting_net"]["numb_fparam"] = 1
    cfg["model"]["data_stat_nbatch"] = 2
    inp.write_text(json.dumps(cfg))
    assert main(["train", str(inp), "-o", str(tmp_path / "first")]) == 0
    assert stat_file.is_file() == name.endswith(".hdf5") and stat_file.exists()
    first = _statistics(tmp_path / "first" / "model.ckpt-0.pt")

    _no_data_pass(monkeypatch)
    caplog.set_level("INFO", logger="dpa1")
    assert main(["train", str(inp), "-o", str(tmp_path / "second")]) == 0
    assert f"statistics read from {stat_file} (no data sampled)" in caplog.text
    second = _statistics(tmp_path / "second" / "model.ckpt-0.pt")
    assert sorted(second) == sorted(first) and len(first) == 6
    for key, value in first.items():
        assert torch.equal(second[key], value), key
    assert first["fitting.fparam_avg"].item() == pytest.approx(300.0, abs=10.0)


def test_missing_parts_are_computed_and_added(tmp_path, monkeypatch, caplog):
    """A file without a part the model needs (here fparam: written by a model without it)
    gives the parts it has; the rest is computed and added (DeePMD-kit's "update")."""
    system = str(_with_fparam(tmp_path))
    stat_dir = tmp_path / "stat_dir"
    inp = water_input(tmp_path, numb_steps=0, train=[system], valid=[system],
                      stat_file=str(stat_dir))
    assert main(["train", str(inp), "-o", str(tmp_path / "first")]) == 0
    assert not (stat_dir / "O H" / "fparam").exists()
    first = _statistics(tmp_path / "first" / "model.ckpt-0.pt")

    cfg = json.loads(inp.read_text())
    cfg["model"]["fitting_net"]["numb_fparam"] = 1
    inp.write_text(json.dumps(cfg))
    caplog.set_level("INFO", logger="dpa1")
    assert main(["train", str(inp), "-o", str(tmp_path / "second")]) == 0
    assert (f"statistics read from {stat_dir} (descriptor, energy), the rest (fparam) computed "
            "and saved there") in caplog.text
    assert np.load(stat_dir / "O H" / "fparam").shape == (1, 3)
    second = _statistics(tmp_path / "second" / "model.ckpt-0.pt")
    for key in ("descriptor.davg", "descriptor.dstd", "out_bias", "out_std"):
        assert torch.equal(second[key], first[key]), key

    _no_data_pass(monkeypatch)
    assert main(["train", str(inp), "-o", str(tmp_path / "third")]) == 0
    third = _statistics(tmp_path / "third" / "model.ckpt-0.pt")
    for key, value in second.items():
        assert torch.equal(third[key], value), key


def test_stat_file_of_other_settings_is_refused(tmp_path, capsys):
    stat_file = tmp_path / "stat.hdf5"
    inp = water_input(tmp_path, numb_steps=0, stat_file=str(stat_file))
    assert main(["train", str(inp), "-o", str(tmp_path / "first")]) == 0
    written = stat_file.read_bytes()

    def refused(change: Callable[[dict], object], expected: str) -> None:
        cfg = json.loads(inp.read_text())
        change(cfg["model"])
        other = tmp_path / "other.json"
        other.write_text(json.dumps(cfg))
        capsys.readouterr()
        assert main(["train", str(other), "-o", str(tmp_path / "other")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        errors = [line for line in err.splitlines() if line.startswith("dpa1 train: error:")]
        assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
        assert f"training.stat_file {stat_file}: " in errors[0] and expected in errors[0], err
        assert stat_file.read_bytes() == written

    refused(lambda m: m.update(type_map=["H", "O"]),
            'written for type_map ["O", "H"], not the input\'s ["H", "O"]')
    refused(lambda m: m["descriptor"].update(rcut=3.5), "rcut 4.0 (the input has 3.5)")
    refused(lambda m: m["descriptor"].update(rcut_smth=1.0, sel=36),
            "rcut_smth 0.5 (the input has 1.0), sel [40] (the input has [36])")


def test_read_mode_needs_the_file(tmp_path, capsys):
    inp = water_input(tmp_path, numb_steps=0, stat_file="missing.hdf5", stat_file_mode="read")
    assert main(["train", str(inp), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "stat_file_mode 'read' only reads an existing file" in err
    assert not (tmp_path / "run" / "missing.hdf5").exists()


def test_deepmd_kit_stat_file_is_read(tmp_path, monkeypatch):
    """A stat file written by DeePMD-kit for the same settings gives the statistics
    DeePMD-kit installed from it, and is not rewritten."""
    stat_file = shutil.copy(DEEPMD_STAT_FILE, tmp_path / "deepmd.hdf5")
    inp = water_input(tmp_path, numb_steps=0, stat_file=str(stat_file),
                      stat_file_mode="read")
    _no_data_pass(monkeypatch)
    assert main(["train", str(inp), "-o", str(tmp_path / "run")]) == 0
    stats = _statistics(tmp_path / "run" / "model.ckpt-0.pt")
    dstd, theirs = stats["descriptor.dstd"], torch.tensor(DEEPMD_DSTD, dtype=torch.float64)
    assert torch.equal(dstd[:, :, 0], theirs[:, :1].expand(2, 40))
    assert torch.equal(dstd[:, :, 1:], theirs[:, 1:, None].expand(2, 40, 3))
    assert not stats["descriptor.davg"].any()  # set_davg_zero, as DeePMD-kit
    assert stats["out_bias"].flatten().tolist() == DEEPMD_OUT_BIAS
    assert stats["out_std"].flatten().tolist() == DEEPMD_OUT_STD
    assert Path(stat_file).read_bytes() == DEEPMD_STAT_FILE.read_bytes()
