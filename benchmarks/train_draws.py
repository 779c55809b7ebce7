"""`dpa1 train` with DeePMD-kit's frame draws: one shuffle per data-loader worker (not a test).

``dp --pt train`` loads batches in ``NUM_WORKERS = min(4, ncpus)`` DataLoader worker
processes. Each worker holds its own copy of every system's shuffled iterator, and step k is
served by worker ``k % NUM_WORKERS``: the frames of a system come from K interleaved,
independent shuffles, so a frame can recur within a pass (seed 1, 200 steps, 2 workers:
data_0 60 draws, 51 distinct). Our sampler makes one shuffle per system and pass, like
DeePMD-kit with ``NUM_WORKERS=0``.

This runs our :class:`~dpa1.train.trainer.Trainer` on train_water.py's input for each seed
with the frames drawn from ``--workers K`` interleaved shuffles per system (system choices,
statistics and initial weights are ours, unchanged) and prints the held-out errors;
``--workers 1`` re-draws with our own structure from another seed (the control). Measured:
both gave ~3.2e-3 eV/atom on seed 1, against 3.84e-3 from ``dpa1 train``'s own
draws: a short run's energy error is set by a random energy offset that any re-draw changes,
not by the structure (docs/benchmarks.md).

    python benchmarks/train_draws.py --workers 2 --seeds 1,2,3,4 [--steps 200]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import common  # sets the threads before torch is imported

# isort: split
import numpy as np

import train_water


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()

    from dpa1.data.loader import _FrameStream
    from dpa1.io.config import normalize_config
    from dpa1.train.trainer import Trainer

    for seed in (int(s) for s in a.seeds.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            wd = Path(tmp)
            raw = json.loads(train_water.make_input(wd, a.steps, seed).read_text())
            trainer = Trainer(normalize_config(copy.deepcopy(raw)), wd, input_dir=wd)
            s = trainer.sampler
            seqs = np.random.SeedSequence([seed, 12345]).spawn(a.workers * s.nsystems)
            streams = [
                [
                    _FrameStream(
                        sys_.nframes, np.random.default_rng(seqs[w * s.nsystems + i]), 0, 1
                    )
                    for i, sys_ in enumerate(s.systems)
                ]
                for w in range(a.workers)
            ]
            step = [0]

            def draw(s=s, streams=streams, step=step):
                sid = int(s._choice_rng.choice(s.nsystems, p=s.probs))
                worker = streams[step[0] % a.workers]
                step[0] += 1
                return s._load(sid, worker[sid].take(s.batch_sizes[sid]))

            s.next_batch = draw
            trainer.run()
            err = common.heldout_errors({"dpa1": trainer.model}, 40)["dpa1"]
        print(
            f"workers {a.workers} seed {seed}: held-out rmse E/atom {err['rmse_e_atom']:.4e}  "
            f"mean ΔE/atom {err['mean_e_atom']:+.3e}  rmse F {err['rmse_f']:.4e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
