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

    /tmp/dpvenv/bin/python benchmarks/train_replay.py [STEPS]
"""
import copy, json, sys, tempfile
from pathlib import Path
import numpy as np
import common  # sets the threads before torch is imported
import torch
from dpa1.io.config import normalize_config
from dpa1.train.trainer import Trainer
from dpa1.io.serialize import model_to_dict, model_from_dict
from deepmd.pt.model.model import BaseModel
from deepmd.pt.loss import EnergyStdLoss
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
ex = common.EXAMPLE_INPUT.parent
raw = json.loads(common.EXAMPLE_INPUT.read_text())
raw["training"].update(numb_steps=steps, disp_freq=5, save_freq=steps, seed=3)
raw["learning_rate"]["decay_steps"] = 2
cfg = normalize_config(raw)
out = Path(tempfile.mkdtemp())
tr = Trainer(cfg, out, input_dir=ex)
dpm = BaseModel.deserialize(copy.deepcopy(model_to_dict(tr.model)))
batches = []
orig = tr.sampler.next_batch
def spy():
    b = orig(); batches.append(b); return b
tr.sampler.next_batch = spy
tr.run()
# replay in DeePMD
lc = cfg["loss"]
dp_loss = EnergyStdLoss(starter_learning_rate=tr.lr.start_lr, **{k: lc[k] for k in ("start_pref_e","limit_pref_e","start_pref_f","limit_pref_f","start_pref_v","limit_pref_v")})
dpm.train()
opt = torch.optim.Adam([p for p in dpm.parameters() if p.requires_grad], lr=tr.lr.start_lr)
for k, b in enumerate(batches):
    lr = tr.lr.value(k)
    for g in opt.param_groups: g["lr"] = lr
    inp = {"coord": b["coord"].reshape(1, -1, 3), "atype": b["atype"], "box": b["box"].reshape(1, 9), "do_atomic_virial": False}
    label = {"energy": b["energy"].reshape(1, 1), "force": b["force"].reshape(1, -1, 3), "find_energy": 1.0, "find_force": 1.0}
    opt.zero_grad(set_to_none=True)
    _, loss, _ = dp_loss(inp, dpm, label, natoms=b["atype"].shape[-1], learning_rate=lr)
    loss.backward(); opt.step()
final = model_from_dict(dpm.serialize()).state_dict()
ours = tr.model.state_dict()
worst = max(((ours[k] - final[k]).abs().max().item() / max(final[k].abs().max().item(), 1e-30), k) for k in final if final[k].dtype.is_floating_point and final[k].numel())
print(f"{steps} steps, {len(batches)} batches; max rel. parameter difference {worst[0]:.2e} ({worst[1]})")
from dpa1.infer.deep_pot import DeepPot
m2 = model_from_dict(dpm.serialize())
for f in range(3):
    w = common.water_frame(1, f, common.WATER.parent / "data_2")
    e1, f1 = DeepPot(tr.model, device="cpu").eval(w["coord"], w["box"], w["atype"])[:2]
    e2, f2 = DeepPot(m2, device="cpu").eval(w["coord"], w["box"], w["atype"])[:2]
    print(f"frame {f}: E ours {float(np.sum(e1)):.8f} replay {float(np.sum(e2)):.8f} label {float(np.asarray(w['energy']).reshape(-1)[0]):.6f}  max|dF| {np.abs(np.asarray(f1)-np.asarray(f2)).max():.2e}")
