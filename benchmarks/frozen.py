"""A frozen model (``dpa1 freeze``) against the eager model, both through ``DeepPot`` (not a test).

The example model (random seeded weights, statistics from the data) is frozen with the C++ ops
(the TorchScript module calls the block op ``dpa1::energy_block`` and its C++ backward) and,
for comparison, with the ops switched off (``model.native = False``: the plain PyTorch layers in
TorchScript). Each is timed against the eager model on the same frame, interleaved, best of
``--repeat``; energies and forces are checked equal first. Target: the frozen model within
1.2x of the eager one.

    python benchmarks/frozen.py [--atoms 192,1536] [--repeat 7] [--variant float64|float32|v2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common  # sets the threads before torch is imported

# isort: split
import numpy as np

from dpa1.infer.deep_pot import DeepPot
from dpa1.io.model_file import freeze


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--atoms", default="192,1536", help="192·n³ atoms, comma-separated")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--variant", default="float64", choices=sorted(common.VARIANTS),
                    help="the example model (float64, float32), without attention (attn0) or "
                    "as se_atten_v2 (v2)")
    a = ap.parse_args()
    common.print_machine()
    variant = common.VARIANTS[a.variant]
    model = common.build_ours(**variant).eval()
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        fast, plain = Path(tmp) / "ops.pth", Path(tmp) / "plain.pth"
        freeze(model, fast)
        model.native = False
        freeze(model, plain)
        model.native = True
        pots = {"eager": DeepPot(model), "frozen": DeepPot(fast), "frozen, no ops": DeepPot(plain)}
        for natoms in (int(x) for x in a.atoms.split(",")):
            fr = common.water_frame(common.rep_for(natoms))
            args = (fr["coord"], fr["box"], fr["atype"])
            ref = pots["eager"].eval(*args)
            for name in ("frozen", "frozen, no ops"):
                got = pots[name].eval(*args)
                tol = 1e-10 if variant["precision"] == "float64" else 1e-4
                for x, y in zip(got, ref, strict=True):
                    np.testing.assert_allclose(x, y, rtol=tol, atol=tol)
            t = common.interleaved(
                {k: (lambda p=p, args=args: p.eval(*args)) for k, p in pots.items()}, a.repeat
            )
            ratio = t["frozen"]["best"] / t["eager"]["best"]
            ok &= ratio <= 1.2
            ms = {k: f"{v['best'] * 1e3:.0f}" for k, v in t.items()}
            rows.append([natoms, ms["eager"], ms["frozen"], ms["frozen, no ops"], f"{ratio:.2f}"])
    print(common.table(["atoms", "eager ms", "frozen ms", "frozen, no ops ms",
                        "frozen / eager (target <= 1.2)"], rows))
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
