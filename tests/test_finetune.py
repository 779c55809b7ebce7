"""Fine-tuning: a model pretrained on a 4-element EMT alloy, fine-tuned on ~10 frames of a
2-element subset, beats training from scratch for the same number of steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dpa1.cli.main import main
from dpa1.data.convert import write_system

ase = pytest.importorskip("ase")
from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402


def write_frames(root: Path, frames: list, type_map: list[str]) -> None:
    """Write ASE frames of one composition as a standard deepmd/npy system."""
    symbols = frames[0].get_chemical_symbols()
    write_system(
        root,
        type_map=type_map,
        atom_types=np.array([type_map.index(s) for s in symbols]),
        coord=np.array([a.get_positions() for a in frames]),
        box=np.array([a.get_cell().array for a in frames]),
        energy=np.array([a.info["energy"] for a in frames]),
        force=np.array([a.arrays["force"] for a in frames]),
    )


def alloy_frames(symbols: list[str], n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 1))  # 16 atoms
        atoms.set_chemical_symbols(list(rng.choice(symbols, size=len(atoms))))
        atoms.set_cell(
            atoms.cell.array @ (np.eye(3) + rng.normal(0, 0.02, (3, 3))), scale_atoms=True
        )
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.arrays["force"] = atoms.get_forces()
        atoms.calc = None
        out.append(atoms)
    return out


def _input(tmp: Path, type_map, train, valid, steps, lr=2e-3) -> Path:
    cfg = {
        "model": {
            "type_map": type_map,
            "descriptor": {
                "type": "se_atten",
                "sel": 60,
                "rcut": 4.5,
                "rcut_smth": 1.0,
                "neuron": [8, 16],
                "axis_neuron": 4,
                "attn": 16,
                "attn_layer": 1,
                "tebd_dim": 5,
                "seed": 3,
            },
            "fitting_net": {"neuron": [24, 24], "seed": 3},
        },
        "learning_rate": {"start_lr": lr, "stop_lr": 2e-4, "decay_steps": 20},
        "loss": {"start_pref_e": 0.2, "limit_pref_e": 1, "start_pref_f": 100, "limit_pref_f": 1},
        "training": {
            "training_data": {"systems": train, "batch_size": 2},
            "validation_data": {"systems": valid, "batch_size": 5, "numb_btch": 1},
            "numb_steps": steps,
            "disp_freq": steps,
            "save_freq": steps,
            "seed": 5,
        },
    }
    path = tmp / "input.json"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


def _test_rmse(model: Path, system: Path, out: Path) -> dict:
    assert main(["test", "-m", str(model), "-s", str(system), "--json", str(out)]) == 0
    return json.loads(out.read_text())["total"]


@pytest.mark.slow
def test_finetune_beats_scratch(tmp_path):
    big = ["Cu", "Ag", "Au", "Ni"]
    pre = [tmp_path / f"pre{k}" for k in range(3)]
    for k, p in enumerate(pre):
        write_frames(p, alloy_frames(big, 20, seed=k), big)
    write_frames(tmp_path / "pre_valid", alloy_frames(big, 5, seed=9), big)
    small = ["Au", "Cu"]  # a subset, reordered
    write_frames(tmp_path / "ft_train", alloy_frames(small, 10, seed=21), small)
    write_frames(tmp_path / "ft_test", alloy_frames(small, 10, seed=22), small)

    pre_in = _input(
        tmp_path / "pretrain", big, [str(p) for p in pre], [str(tmp_path / "pre_valid")], 300
    )
    assert main(["train", str(pre_in), "-o", str(tmp_path / "pretrain")]) == 0
    pretrained = tmp_path / "pretrain" / "model.ckpt.pt"

    steps = 40
    ft_in = _input(
        tmp_path / "ft",
        small,
        [str(tmp_path / "ft_train")],
        [str(tmp_path / "ft_train")],
        steps,
        lr=5e-4,
    )
    assert (
        main(["train", str(ft_in), "-o", str(tmp_path / "ft"), "--finetune", str(pretrained)]) == 0
    )
    sc_in = _input(
        tmp_path / "sc", small, [str(tmp_path / "ft_train")], [str(tmp_path / "ft_train")], steps
    )
    assert main(["train", str(sc_in), "-o", str(tmp_path / "sc")]) == 0

    ft = _test_rmse(tmp_path / "ft" / "model.ckpt.pt", tmp_path / "ft_test", tmp_path / "ft.json")
    sc = _test_rmse(tmp_path / "sc" / "model.ckpt.pt", tmp_path / "ft_test", tmp_path / "sc.json")
    assert ft["rmse_force"] < sc["rmse_force"], (ft, sc)
    assert ft["rmse_energy_per_atom"] < sc["rmse_energy_per_atom"], (ft, sc)


def test_change_type_map_keeps_known_types_exactly(tmp_path):
    """Fine-tuning to a reordered subset: kept types predict exactly as before."""
    import torch

    from dpa1.io.config import normalize_config
    from dpa1.io.serialize import model_from_dict, model_to_dict
    from dpa1.model.build import build_model
    from dpa1.train.finetune import change_type_map

    cfg = normalize_config(
        json.loads(_input(tmp_path, ["Cu", "Ag", "Au", "Ni"], ["x"], ["x"], 1).read_text())
    )
    model = build_model(cfg["model"])
    with torch.no_grad():
        model.out_bias.copy_(torch.tensor([[[1.0], [2.0], [3.0], [4.0]]]))
        model.descriptor.set_stat(
            torch.zeros(4, 60, 4, dtype=torch.float64),
            1.0 + torch.arange(4, dtype=torch.float64).reshape(4, 1, 1).expand(4, 60, 4) / 10,
        )
    new, new_types = change_type_map(model_to_dict(model), ["Au", "Cu", "Zn"])
    assert new_types == [2]
    adapted = model_from_dict(new)
    frames = alloy_frames(["Au", "Cu"], 1, seed=1)
    a = frames[0]
    coord = torch.tensor(a.get_positions())[None]
    box = torch.tensor(a.get_cell().array)[None]
    old_t = torch.tensor([["Cu", "Ag", "Au", "Ni"].index(s) for s in a.get_chemical_symbols()])[
        None
    ]
    new_t = torch.tensor([["Au", "Cu", "Zn"].index(s) for s in a.get_chemical_symbols()])[None]
    e_old = model(coord, old_t, box)
    e_new = adapted(coord, new_t, box)
    torch.testing.assert_close(e_new["energy"], e_old["energy"], rtol=0, atol=1e-10)
    torch.testing.assert_close(e_new["force"], e_old["force"], rtol=0, atol=1e-10)
