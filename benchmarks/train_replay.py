"""`dpa1 train` against `dp --pt train` on the very same run, both ways (not a test; needs
DeePMD-kit).

**ours → DeePMD-kit** (default): runs our :class:`~dpa1.train.trainer.Trainer` (the whole
``dpa1 train`` path: statistics, sampler, learning rate, loss, Adam, validation and
checkpoints) on the example input, records every batch it draws, then replays those batches
through DeePMD-kit's ``EnergyModel`` (built from our initial weights and statistics through
the serialized dict), its ``EnergyStdLoss`` and Adam with the same learning rates.

**DeePMD-kit → ours** (``--from-deepmd SEED``): runs ``dp --pt train`` itself on
train_water.py's input for that seed with ``SAMPLER_RECORD=1`` (DeePMD-kit then logs the
system and frame of every step), and replays that run through our ``Trainer``: DeePMD-kit's
initial weights (its seeded initialisation, rebuilt with ``get_model``), its statistics
(davg/dstd and ``out_bias`` from its checkpoint: they are buffers, not trained) and its batches.

Both print the largest parameter difference of the two final models and their held-out
errors. With the same weights, statistics and batches the two programs are the same
function, so any difference between ``dpa1 train`` and ``dp --pt train`` results can only
come from the random draws (initial weights, statistics frames, batch order).

    /tmp/dpvenv/bin/python benchmarks/train_replay.py [STEPS]                       # default 20
    /tmp/dpvenv/bin/python benchmarks/train_replay.py --from-deepmd 1 --steps 200 [--dp PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import common  # sets the threads before torch is imported

# isort: split
import numpy as np
import torch

LOSS_KEYS = (
    "start_pref_e",
    "limit_pref_e",
    "start_pref_f",
    "limit_pref_f",
    "start_pref_v",
    "limit_pref_v",
)


def max_rel_difference(a: torch.nn.Module, b: torch.nn.Module) -> tuple[float, str]:
    sa, sb = a.state_dict(), b.state_dict()
    return max(
        ((sa[k] - sb[k]).abs().max().item() / max(sb[k].abs().max().item(), 1e-30), k)
        for k in sb
        if sb[k].dtype.is_floating_point and sb[k].numel()
    )


def report(
    steps: int, ours: torch.nn.Module, theirs: torch.nn.Module, names: tuple[str, str]
) -> None:
    worst = max_rel_difference(ours, theirs)
    print(f"{steps} steps; max rel. parameter difference {worst[0]:.2e} ({worst[1]})")
    for name, err in common.heldout_errors(
        dict(zip(names, (ours, theirs), strict=True)), 40
    ).items():
        print(
            f"{name:28s} held-out (data_2, 40 frames): rmse E/atom {err['rmse_e_atom']:.6e}  "
            f"mean ΔE/atom {err['mean_e_atom']:+.3e}  rmse F {err['rmse_f']:.6e}"
        )


def ours_to_deepmd(steps: int) -> None:
    from deepmd.pt.model.model import BaseModel

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
    step = common.deepmd_train_step(
        dpm, {k: cfg["loss"][k] for k in LOSS_KEYS}, trainer.lr.start_lr
    )
    for k, b in enumerate(batches):
        step(
            b["coord"].reshape(1, -1, 3),
            b["atype"],
            b["box"].reshape(1, 9),
            b["energy"].reshape(1, 1),
            b["force"].reshape(1, -1, 3),
            trainer.lr.value(k),
        )
    report(
        steps, trainer.model, model_from_dict(dpm.serialize()), ("dpa1 train", "DeePMD-kit replay")
    )


def deepmd_to_ours(seed: int, steps: int, dp: str, workdir: Path) -> None:
    from deepmd.pt.model.model import get_model
    from deepmd.utils.argcheck import normalize
    from deepmd.utils.compat import update_deepmd_input

    from dpa1.io.config import normalize_config
    from dpa1.io.serialize import model_from_dict
    from dpa1.train.trainer import Trainer

    import train_water

    workdir.mkdir(parents=True, exist_ok=True)
    inp = train_water.make_input(workdir, steps, seed)
    env = {**os.environ, "SAMPLER_RECORD": "1"}
    subprocess.run(
        [dp, "--pt", "train", str(inp), "--skip-neighbor-stat"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
    )
    raw = json.loads(inp.read_text())

    def deepmd_model():
        return get_model(normalize(update_deepmd_input(copy.deepcopy(raw), warning=False))["model"])

    final = deepmd_model()
    prefix = "model.Default."
    state = torch.load(workdir / "model.ckpt.pt", weights_only=False)["model"]  # our own dp run
    final.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    final = model_from_dict(final.serialize())
    init = model_from_dict(deepmd_model().serialize())  # the seeded initial weights dp train uses
    trained = {n for n, p in init.named_parameters() if p.requires_grad}
    start = {k: v if k in trained else final.state_dict()[k] for k, v in init.state_dict().items()}

    draws = []
    for line in (workdir / "Sample_rank_0.txt").read_text().splitlines():
        m = re.match(r"Step (\d+): sample system(\d+)\s+frame\[(.*)\]", line)
        draws.append((int(m.group(2)), np.array([int(x) for x in m.group(3).split(",")])))
    if len(draws) != steps:
        raise RuntimeError(
            f"{workdir / 'Sample_rank_0.txt'}: {len(draws)} steps recorded, expected {steps}"
        )
    repeats = {
        s: sum(1 for d in draws if d[0] == s) - len({int(d[1][0]) for d in draws if d[0] == s})
        for s in sorted({d[0] for d in draws})
    }
    print(
        f"dp train draws: frames drawn again within a pass, per system: {repeats} "
        "(DeePMD-kit's NUM_WORKERS data-loader workers each keep their own shuffles)"
    )

    trainer = Trainer(normalize_config(copy.deepcopy(raw)), workdir / "dpa1", input_dir=workdir)
    trainer.model.load_state_dict(start)  # in place: the optimizer keeps its parameters
    replay = iter(draws)
    trainer.sampler.next_batch = lambda: trainer.sampler._load(*next(replay))
    trainer.run()
    report(steps, trainer.model, final, ("dpa1 train replaying dp's", "dp --pt train"))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("steps_pos", nargs="?", type=int, default=None, metavar="STEPS")
    ap.add_argument("--steps", type=int, default=None, help="default 20")
    ap.add_argument(
        "--from-deepmd",
        type=int,
        default=None,
        metavar="SEED",
        help="run dp --pt train with this seed (train_water.py's input) and replay it in dpa1",
    )
    ap.add_argument("--dp", default=shutil.which("dp") or "/tmp/dpvenv/bin/dp")
    ap.add_argument(
        "--workdir", default=None, help="keep the runs here (default: a temporary directory)"
    )
    a = ap.parse_args()
    steps = a.steps or a.steps_pos or 20
    if a.from_deepmd is None:
        ours_to_deepmd(steps)
        return
    if a.workdir:
        deepmd_to_ours(a.from_deepmd, steps, a.dp, Path(a.workdir))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            deepmd_to_ours(a.from_deepmd, steps, a.dp, Path(tmp))


if __name__ == "__main__":
    main()
