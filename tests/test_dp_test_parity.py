"""``dpa1 test -d`` files and ``dpa1 change-bias`` flags against DeePMD-kit 3.2.0's own
outputs on the same model (``tiny.dp``) and data (fixtures: ``tests/data/README.md``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dpa1.cli.main import main
from dpa1.io.serialize import load_dp_model

from data_paths import DEEPMD_CHANGE_BIAS, DETAIL_SYSTEMS, DP_TEST_DETAIL, ROOT, TINY_DP

# the systems as DeePMD-kit saw them: paths relative to the repository root
WATER_V = "tests/data/detail/water_v"
WATER_NOV = "tests/data/detail/water_nov"
SUFFIXES = ("e", "e_peratom", "f", "v", "v_peratom", "s")


def _split(path: Path) -> tuple[list[str], np.ndarray]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if ln.startswith("#")], np.loadtxt(path, ndmin=2)


def _assert_same_detail(got: Path, ref: Path) -> None:
    """The files of prefix ``got`` are those of ``ref``: same set, headers, numbers."""
    written = sorted(p.name.removeprefix(got.name) for p in got.parent.glob(f"{got.name}.*.out"))
    expected = sorted(p.name.removeprefix(ref.name) for p in ref.parent.glob(f"{ref.name}.*.out"))
    assert written == expected
    for suffix in SUFFIXES:
        ref_head, ref_rows = _split(Path(f"{ref}.{suffix}.out"))
        got_head, got_rows = _split(Path(f"{got}.{suffix}.out"))
        assert got_head == ref_head, suffix
        assert got_rows.shape == ref_rows.shape, suffix
        np.testing.assert_allclose(got_rows, ref_rows, rtol=1e-10, atol=1e-12, err_msg=suffix)


def _fail(argv: list[str], capsys, *words: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2, argv
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


@pytest.fixture
def at_root(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the headers name the systems as given, relative to the root


# === dp test ===============================================================================
def test_detail_files_one_system(at_root, tmp_path) -> None:
    """-n 3 of a 4-frame system spread over two sets, atoms not sorted by type, virials:
    all six files as dp test writes them; -a compares atomic energies per system."""
    prefix = tmp_path / "out" / "single"
    res = tmp_path / "errors.json"
    assert main(["test", "-m", str(TINY_DP), "-s", WATER_V, "-n", "3", "-d", str(prefix),
                 "-a", "--json", str(res)]) == 0
    _assert_same_detail(prefix, DP_TEST_DETAIL / "single")
    errors = json.loads(res.read_text())
    ref = json.loads((DP_TEST_DETAIL / "single_atomic.json").read_text())  # dp's 7 digits
    for key, value in ref.items():
        assert errors["systems"][WATER_V][key] == pytest.approx(value, rel=1e-6)
        assert key not in errors["total"]  # per system only, as dp test


def test_detail_files_datafile(at_root, tmp_path) -> None:
    """-f: two systems appended to the same files, one header (the first system's);
    the system without virials gets zero labels in .v.out and no .s.out rows."""
    listing = tmp_path / "systems.txt"
    listing.write_text(f"{WATER_V}\n\n{WATER_NOV}\n")
    prefix = tmp_path / "multi"
    assert main(["test", "-m", str(TINY_DP), "-f", str(listing), "--numb-test", "3",
                 "--detail-file", str(prefix)]) == 0
    _assert_same_detail(prefix, DP_TEST_DETAIL / "multi")


def test_shuffle_test_picks_deepmd_frames(at_root, tmp_path) -> None:
    """--shuffle-test -r: the frames DeePMD-kit picks with the same seed. The seed is above
    2**32 (dp test takes it mod 2**32), water_v's 4 frames span two sets, and water_nov's
    order (1, 0) comes from the generator the first system left, not a fresh one."""
    listing = tmp_path / "systems.txt"
    listing.write_text(f"{WATER_V}\n{WATER_NOV}\n")
    prefix = tmp_path / "shuffled"
    assert main(["test", "-m", str(TINY_DP), "-f", str(listing), "-n", "3", "--shuffle-test",
                 "-r", "4294967315", "-d", str(prefix)]) == 0
    _assert_same_detail(prefix, DP_TEST_DETAIL / "shuffled")


def test_train_and_valid_data_of_an_input(at_root, tmp_path, monkeypatch, capsys) -> None:
    """--train-data / --valid-data: the systems of an input file, relative to its directory
    when not found from the working directory (as dpa1 train), rglob_patterns applied."""
    import shutil

    ref = tmp_path / "ref.json"
    assert main(["test", "-m", str(TINY_DP), "-s", WATER_V, WATER_NOV, "--json", str(ref)]) == 0
    expected = json.loads(ref.read_text())["systems"]
    run = tmp_path / "run"
    for name in ("water_v", "water_nov"):
        shutil.copytree(ROOT / "tests" / "data" / "detail" / name, run / "data" / name)
    inp = run / "input.json"
    inp.write_text(json.dumps({"training": {
        "training_data": {"systems": ["data/water_v"]},
        "validation_data": {"systems": "data", "rglob_patterns": ["water_n*"]}}}))
    monkeypatch.chdir(tmp_path)  # not the input's directory
    for flag, system, ref_system in (("--train-data", "water_v", WATER_V),
                                     ("--valid-data", "water_nov", WATER_NOV)):
        out = tmp_path / f"{flag[2:]}.json"
        assert main(["test", "-m", str(TINY_DP), flag, "run/input.json", "--json", str(out)]) == 0
        got = json.loads(out.read_text())["systems"]
        assert list(got) == [f"run/data/{system}"]
        assert got[f"run/data/{system}"] == pytest.approx(expected[ref_system], rel=1e-12)
    inp.write_text(json.dumps({"training": {"training_data": {"systems": ["data/water_v"]}}}))
    _fail(["test", "-m", str(TINY_DP), "--valid-data", "run/input.json"], capsys,
          "run/input.json", "training.validation_data.systems")
    _fail(["test", "-m", str(TINY_DP), "--train-data", "run/none.json"], capsys, "none.json")
    _fail(["test", "-m", str(TINY_DP), "-s", "run/data", "--train-data", "run/input.json"],
          capsys, "-s", "--train-data")


def test_test_flags_refused(at_root, tmp_path, capsys) -> None:
    model = str(TINY_DP)
    listing = tmp_path / "systems.txt"
    listing.write_text(f"{WATER_NOV}\n")
    _fail(["test", "-m", model, "-s", WATER_V, "-f", str(listing)], capsys, "-s", "-f")
    _fail(["test", "-m", model, "-s", WATER_V, "-n", "-1"], capsys, "-n -1")
    _fail(["test", "-m", model, "-s", WATER_V, "-r", "3"], capsys, "-r 3", "--shuffle-test")
    _fail(["test", "-m", model, "-s", WATER_V, "-d", "."], capsys, "--detail-file", "prefix")
    _fail(["test", "-m", model, "-f", str(tmp_path / "none.txt")], capsys, "none.txt")
    _fail(["test", "-m", model, "-f", str(listing), "-a"], capsys, "water_nov", "atom_ener.npy")
    assert list(tmp_path.iterdir()) == [listing]


# === change-bias ===========================================================================
@pytest.mark.parametrize("mode", ["change", "set", "user"])
def test_change_bias_matches_deepmd(mode: str, at_root, tmp_path) -> None:
    """The bias (and std) dp change-bias wrote for the same flags; nothing else changes."""
    listing = tmp_path / "systems.txt"
    listing.write_text(f"{WATER_V}\n{WATER_NOV}\n")
    out = tmp_path / f"{mode}.dp"
    flags = {
        "change": ["-f", str(listing), "-n", "0", "-m", "change"],
        "set": ["-s", str(DETAIL_SYSTEMS), "-m", "set"],
        "user": ["-b", "-93.5", "-187.25"],
    }[mode]
    assert main(["change-bias", str(TINY_DP), *flags, "-o", str(out)]) == 0
    ref = json.loads(DEEPMD_CHANGE_BIAS.read_text())[mode]
    new, _ = load_dp_model(out)
    np.testing.assert_allclose(new.out_bias.reshape(-1).numpy(), ref["out_bias"], rtol=1e-10)
    np.testing.assert_allclose(new.out_std.reshape(-1).numpy(), ref["out_std"], rtol=1e-9)
    old, _ = load_dp_model(TINY_DP)
    for (name, a), b in zip(new.state_dict().items(), old.state_dict().values(), strict=True):
        if name not in ("out_bias", "out_std"):
            assert torch.equal(a, b), name


def test_change_bias_numb_batch_counts_frames(tmp_path) -> None:
    """-n N draws N frames per system: with N >= the frames, the fit uses them all."""
    outs = {}
    for n in ("0", "6"):
        outs[n] = tmp_path / f"n{n}.dp"
        assert main(["change-bias", str(TINY_DP), "-s", str(DETAIL_SYSTEMS), "-m", "set",
                     "-n", n, "-o", str(outs[n])]) == 0
    one = tmp_path / "n1.dp"
    assert main(["change-bias", str(TINY_DP), "-s", str(DETAIL_SYSTEMS), "-m", "set",
                 "-n", "1", "-o", str(one)]) == 0
    bias = {k: load_dp_model(p)[0].out_bias.reshape(-1).numpy() for k, p in
            {**outs, "1": one}.items()}
    np.testing.assert_allclose(bias["6"], bias["0"], rtol=1e-12)
    assert np.abs(bias["1"] - bias["0"]).max() > 1e-6  # 2 frames fit other numbers


def test_change_bias_flags_refused(tmp_path, capsys) -> None:
    model, out = str(TINY_DP), str(tmp_path / "x.dp")
    system = str(DETAIL_SYSTEMS / "water_v")
    listing = tmp_path / "systems.txt"
    listing.write_text(f"{system}\n")
    cases = {
        "-b with -s": (["-b", "1", "2", "-s", system], ["-b", "-s"]),
        "-b with -f": (["-b", "1", "2", "-f", str(listing)], ["-b", "-f"]),
        "-b with -m": (["-b", "1", "2", "-m", "set"], ["-b", "-m"]),
        "-b with -n": (["-b", "1", "2", "-n", "3"], ["-b", "-n"]),
        "-b count": (["-b", "1", "2", "3"], ["3 values", "['O', 'H']"]),
        "-s with -f": (["-s", system, "-f", str(listing)], ["-s", "-f"]),
        "-n < 0": (["-s", system, "-n", "-2"], ["-n -2"]),
        "set with --batch-size": (["-s", system, "-m", "set", "--batch-size", "2"],
                                  ["--batch-size", "-m set"]),
    }
    for name, (flags, words) in cases.items():
        _fail(["change-bias", model, *flags, "-o", out], capsys, *words)
        assert not Path(out).exists(), name
