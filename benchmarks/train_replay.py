"""`dpa1 train` against DeePMD-kit on the very same run (not a test; needs DeePMD-kit).

Runs our :class:`~dpa1.train.trainer.Trainer` (the whole ``dpa1 train`` path: statistics,
sampler, learning rate, loss, Adam, validation and checkpoints) on the example input, records
every batch it draws, then replays those batches through DeePMD-kit's ``EnergyModel`` (built
from our initial weights and statistics through the serialized dict), its ``EnergyStdLoss``
and Adam with the same learning rates. Prints the largest parameter difference and the
held-out energies and forces of both final models.

With the same weights, statistics and batches the two runs are the same function: any
difference between ``dpa1 train`` and ``dp --pt train`` results can then only come from the
random draws (initial weights, statistics frames, batch order).

    /tmp/dpvenv/bin/python benchmarks/train_replay.py [STEPS]   # default 20
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
from pathlib import Path

import common  # sets the threads before torch is imported
import numpy as np
import torch

LOSS_KEYS = ("start_pref_e", "limit_pref_e", "start_pref_f", "limit_pref_f", "start_pref_v", "limit_pref_v")


def main(steps: int) -> None:
    from deepmd.pt.loss import EnergyStdLoss
    from deepmd.pt.model.model import BaseModel

    from dpa1.infer.deep_pot import DeepPot
    from dpa1.io.config import normalize_config
    from dpa1.io.serialize import model_from_dict, model_to_dict
    from dpa1.train.trainer import Trainer

    raw = json.loads(common.EXAMPLE_INPUT.read_text())
    raw["training"].update(numb_steps=steps, disp_freq=5, save_freq=steps, seed=3)
    raw["learning_rate"]["decay_steps"] = 2
    cfg = normalize_config(raw)
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()), input_dir=common.EXAMPLE_INPUT.parent)
    dpm = BaseModel.deserialize(copy.deepcopy(model_to_dict(trainer.model)))  # before any step

    batches = []
    draw = trainer.sampler.next_batch

    def recording_draw():
        batches.append(draw())
        return batches[-1]

    trainer.sampler.next_batch = recording_draw
    trainer.run()

    # the same batches through DeePMD-kit's model, loss and Adam
    loss_fn = EnergyStdLoss(starter_learning_rate=trainer.lr.start_lr, **{k: cfg["loss"][k] for k in LOSS_KEYS})
    dpm.train()
    opt = torch.optim.Adam([p for p in dpm.parameters() if p.requires_grad], lr=trainer.lr.start_lr)
    for k, b in enumerate(batches):
        lr = trainer.lr.value(k)
        for group in opt.param_groups:
            group["lr"] = lr
        inp = {"coord": b["coord"].reshape(1, -1, 3), "atype": b["atype"], "box": b["box"].reshape(1, 9),
               "do_atomic_virial": False}
        label = {"energy": b["energy"].reshape(1, 1), "force": b["force"].reshape(1, -1, 3),
                 "find_energy": 1.0, "find_force": 1.0}
        opt.zero_grad(set_to_none=True)
        _, loss, _ = loss_fn(inp, dpm, label, natoms=b["atype"].shape[-1], learning_rate=lr)
        loss.backward()
        opt.step()

    replayed = model_from_dict(dpm.serialize())
    ours, theirs = trainer.model.state_dict(), replayed.state_dict()
    worst = max(
        ((ours[k] - theirs[k]).abs().max().item() / max(theirs[k].abs().max().item(), 1e-30), k)
        for k in theirs if theirs[k].dtype.is_floating_point and theirs[k].numel()
    )
    print(f"{steps} steps, {len(batches)} batches; max rel. parameter difference {worst[0]:.2e} ({worst[1]})")
    for f in range(3):
        w = common.water_frame(1, f, common.WATER.parent / "data_2")
        e1, f1 = DeepPot(trainer.model, device="cpu").eval(w["coord"], w["box"], w["atype"])[:2]
        e2, f2 = DeepPot(replayed, device="cpu").eval(w["coord"], w["box"], w["atype"])[:2]
        label = float(np.asarray(w["energy"]).reshape(-1)[0])
        print(f"held-out frame {f}: E dpa1 {float(np.sum(e1)):.8f}  DeePMD-kit replay {float(np.sum(e2)):.8f}  "
              f"label {label:.6f}  max|dF| {np.abs(np.asarray(f1) - np.asarray(f2)).max():.2e}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
