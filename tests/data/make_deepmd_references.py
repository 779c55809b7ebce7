"""Reference predictions with DeePMD-kit 3.2.0 for the DeePMD-kit checkpoint fixtures.

Run from the repository root after training and freezing (see tests/data/README.md):
    python tests/data/make_deepmd_references.py WORKDIR
"""

import sys
from pathlib import Path

import numpy as np
from deepmd.infer import DeepPot

work = Path(sys.argv[1])
out = Path("tests/data")
water = Path("examples/water/data/data_0/set.000")
# frames 0 and 2: no pair within 1e-4 Å inside rcut (4 Å). Closer to rcut, DeePMD-kit's
# expanded switch polynomial is round-off noise that the dotr gate's normalisation
# (clamped at 1e-12) magnifies, and dpa1's factored form differs from it by ~1e-7 eV in
# non-smooth models (frames 1, 10 and 11; see dpa1/model/env_mat.py)
frames = [0, 2]
coord = np.load(water / "coord.npy")[frames]
box = np.load(water / "box.npy")[frames]
atype = np.loadtxt("examples/water/data/data_0/type.raw", dtype=int)


def predictions(pth: Path, name: str) -> None:
    e, f, v, ae, av = DeepPot(str(pth)).eval(coord, box, atype, atomic=True)
    np.savez_compressed(out / name, coord=coord, box=box, atype=atype, energy=e.reshape(-1),
                        force=f.reshape(2, -1), virial=v.reshape(2, 9),
                        atom_energy=ae.reshape(2, -1))


predictions(work / "single" / "single.pth", "deepmd_ckpt_reference.npz")
predictions(work / "multi" / "water_a.pth", "deepmd_multitask_water_a_reference.npz")
predictions(work / "multi" / "water_b.pth", "deepmd_multitask_water_b_reference.npz")
# DeePMD-kit's descriptor of tiny.dp (through `dp convert-backend tiny.dp tiny.pth`); every
# sixth atom is kept to keep the file small
desc = DeepPot(str(work / "tiny.pth")).eval_descriptor(coord, box, atype)
np.savez_compressed(out / "tiny_descriptor.npz", coord=coord, box=box, atype=atype,
                    atoms=np.arange(0, 192, 6), descriptor=desc[:, ::6])
