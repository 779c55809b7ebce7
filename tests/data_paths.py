"""Where the test data live, all inside the repository (see ``tests/data/README.md``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"

WATER = ROOT / "examples" / "water" / "data"  # data_0, data_1, data_2: 192-atom periodic water
EXAMPLE_INPUT = ROOT / "examples" / "water" / "input.json"  # the bundled example's input
NOPBC = DATA / "nopbc"  # C1H4O2, C4H3O1: gas-phase molecules, type map C H O
TINY_DP = DATA / "tiny.dp"  # DeePMD-kit 3.2.0 DPA-1 model, type map O H, rcut 4, sel 40
TINY_INPUT = DATA / "tiny_input.json"  # the input it was trained with
TINY_REFERENCE = DATA / "tiny_reference.npz"  # DeePMD-kit's predictions with it
# small water systems (24 and 16 atoms, atoms not sorted by type): water_v has virials and
# atomic energies, water_nov neither
DETAIL_SYSTEMS = DATA / "detail"
DP_TEST_DETAIL = DATA / "dp_test_detail"  # dp test -d files of TINY_DP on DETAIL_SYSTEMS
DEEPMD_CHANGE_BIAS = DATA / "deepmd_change_bias.json"  # dp change-bias results on them

# DeePMD-kit 3.2.0 PyTorch checkpoints (dp --pt train) and DeePMD-kit's predictions with them
DEEPMD_CKPT = DATA / "deepmd_ckpt.pt"  # single task, se_atten (concat), type map O H, sel 40
DEEPMD_CKPT_REFERENCE = DATA / "deepmd_ckpt_reference.npz"
DEEPMD_MULTITASK = DATA / "deepmd_multitask.pt"  # branches water_a (alias A), water_b, water_se
DEEPMD_MULTITASK_REFERENCE = {
    "water_a": DATA / "deepmd_multitask_water_a_reference.npz",
    "water_b": DATA / "deepmd_multitask_water_b_reference.npz",
}
TINY_DESCRIPTOR = DATA / "tiny_descriptor.npz"  # DeePMD-kit's eval_descriptor with tiny.dp
