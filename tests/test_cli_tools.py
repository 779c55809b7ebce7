"""``dpa1 test``, ``change-bias``, ``freeze`` and ``plot``, called in-process through
:func:`dpa1.cli.main.main` with tiny random models (no training)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from dpa1.cli.main import main
from dpa1.infer.deep_pot import DeepPot
from dpa1.io.model_file import freeze, load_checkpoint, save_checkpoint
from dpa1.io.serialize import load_dp_model, save_dp_model
from dpa1.model.build import build_model

from data_paths import TINY_DP, WATER
from helpers import set_random_statistics, water_frames, water_input

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ERROR_KEYS = ("energy", "energy_per_atom", "force", "virial", "virial_per_atom")


def _run_ok(argv: list[str]) -> None:
    assert main(argv) == 0, argv


def _run_test(model: Path, systems: list[str], out: Path, *extra: str) -> dict:
    _run_ok(["test", "-m", str(model), "-s", *systems, "--json", str(out), *extra])
    return json.loads(out.read_text())


def _assert_errors_equal(got: dict, ref: dict, what: str) -> None:
    assert got["nframes"] == ref["nframes"], what
    assert set(got) == set(ref), what
    for key in ref:
        assert got[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12), f"{what}: {key}"


def _small_water_system(dest: Path, nframes: int = 6) -> Path:
    """The first ``nframes`` frames of water data_0 as a deepmd/npy system in ``dest``."""
    src = WATER / "data_0"
    (dest / "set.000").mkdir(parents=True)
    for name in ("type.raw", "type_map.raw"):
        shutil.copy(src / name, dest / name)
    for f in (src / "set.000").glob("*.npy"):
        np.save(dest / "set.000" / f.name, np.load(f)[:nframes])
    return dest


def _random_water_model(tiny_model_config, seed: int = 3):
    torch.manual_seed(seed)
    return build_model(tiny_model_config(["O", "H"], rcut=3.0, sel=24))  # cheap on 192 atoms


# === 1. acceptance: standard and mixed-type layouts give the same errors =========
def _alloy_model_file(alloy, tiny_model_config, tmp: Path, set_davg_zero: bool) -> Path:
    model = build_model(tiny_model_config(alloy.type_map, set_davg_zero=set_davg_zero))
    set_random_statistics(model, [-3.0, -2.0, -4.0, -5.0])
    path = tmp / "alloy_model.pt"
    save_checkpoint(path, model, config={"model": {"type_map": alloy.type_map}})
    return path


def _detail_by_label(prefix: Path, suffix: str) -> dict[float, float]:
    rows = np.loadtxt(f"{prefix}.{suffix}.out").reshape(-1, 2)
    return {float(lab): float(pred) for lab, pred in rows}


def test_standard_and_mixed_layouts_give_identical_errors(alloy, tiny_model_config, tmp_path):
    """Our mixed writer sorts atoms by type, so it agrees with the standard layout even
    with ``davg != 0`` (padding neighbour slots take the type of atom 0, docs/design.md,
    "DeePMD-kit parity notes")."""
    from dpa1.data.convert import read_frames, write_mixed

    model = _alloy_model_file(alloy, tiny_model_config, tmp_path, set_davg_zero=False)
    std = _run_test(model, alloy.standard, tmp_path / "std.json",
                    "--detail-file", str(tmp_path / "std"))
    mixed = _run_test(model, [alloy.mixed], tmp_path / "mixed.json",
                      "--detail-file", str(tmp_path / "mixed"))

    assert std["total"]["nframes"] == 15 and len(std["systems"]) == 5
    metrics = {f"{m}_{k}" for m in ("rmse", "mae") for k in ERROR_KEYS}  # virials included
    assert set(std["total"]) == {"nframes"} | metrics
    assert std["total"]["rmse_energy"] > 1.0 and std["total"]["rmse_force"] > 0
    _assert_errors_equal(mixed["total"], std["total"], "total")
    (only,) = mixed["systems"].values()
    _assert_errors_equal(only, std["total"], "the one mixed system")

    # per frame (the mixed system has virtual atoms: frames of 8-31 atoms padded to 32)
    ref, got = (_detail_by_label(tmp_path / p, "e") for p in ("std", "mixed"))
    assert len(ref) == 15 and got.keys() == ref.keys()
    for lab, pred in ref.items():
        assert got[lab] == pytest.approx(pred, rel=0, abs=1e-12), lab
    # as dp test, .e_peratom.out divides by the atoms of the layout, virtual ones included
    e_rows, ea_rows = (np.loadtxt(tmp_path / f"mixed.{s}.out") for s in ("e", "e_peratom"))
    np.testing.assert_allclose(ea_rows, e_rows / 32, rtol=1e-15)

    # per system: each composition written as its own mixed-type system
    groups: dict[str, list] = {}
    for frame in read_frames([alloy.extxyz]):
        counts = Counter(frame.symbols)
        name = "".join(f"{e}{counts[e]}" for e in alloy.type_map if counts[e])
        groups.setdefault(name, []).append(frame)
    per_comp = [str(write_mixed(fs, tmp_path / "by_comp" / name, alloy.type_map))
                for name, fs in groups.items()]
    by_comp = _run_test(model, per_comp, tmp_path / "by_comp.json")
    ref = {Path(p).name: e for p, e in std["systems"].items()}
    got = {Path(p).name: e for p, e in by_comp["systems"].items()}
    assert got.keys() == ref.keys()
    for name in ref:
        _assert_errors_equal(got[name], ref[name], name)
    _assert_errors_equal(by_comp["total"], std["total"], "total by composition")


def _merge_errors(parts: list[dict]) -> dict:
    """Errors of several systems with the same atom count taken together: every metric
    compares a fixed number of values per frame, so frames are the weights."""
    n = sum(p["nframes"] for p in parts)
    out = {"nframes": n}
    for key in parts[0]:
        if key.startswith("rmse_"):
            out[key] = float(np.sqrt(sum(p["nframes"] * p[key] ** 2 for p in parts) / n))
        elif key.startswith("mae_"):
            out[key] = float(sum(p["nframes"] * p[key] for p in parts) / n)
    return out


def test_dpdata_mixed_layout_gives_identical_errors(alloy, tiny_model_config, tmp_path):
    """dpdata's mixed writer keeps the input atom order: comparable with set_davg_zero."""
    if not alloy.dpdata_mixed:
        pytest.skip("dpdata is not installed")
    from dpa1.data.system import DeepmdSystem

    model = _alloy_model_file(alloy, tiny_model_config, tmp_path, set_davg_zero=True)
    std = _run_test(model, alloy.standard, tmp_path / "std.json")
    dpd = _run_test(model, alloy.dpdata_mixed, tmp_path / "dpdata.json")
    _assert_errors_equal(dpd["total"], std["total"], "total")
    # one dpdata system per atom count = the standard systems with that atom count
    assert len(dpd["systems"]) == 4
    for path, errors in dpd["systems"].items():
        n = DeepmdSystem(path).natoms
        same = [e for p, e in std["systems"].items() if DeepmdSystem(p).natoms == n]
        _assert_errors_equal(errors, _merge_errors(same), f"{path} ({n} atoms)")


# === 2. dpa1 test against DeepPot.eval ===================================================
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """tiny.dp, and the same model as a checkpoint .pt and a frozen .pth."""
    tmp = tmp_path_factory.mktemp("tiny_models")
    model, data = load_dp_model(TINY_DP)
    config = {"model": data.get("model_def_script")}
    save_checkpoint(tmp / "tiny.pt", model, config=config, step=5)
    freeze(model, tmp / "tiny.pth", config=config["model"])
    return {"dp": TINY_DP, "pt": tmp / "tiny.pt", "pth": tmp / "tiny.pth"}


def _expected_errors(de: np.ndarray, df: np.ndarray, natoms: int) -> dict[str, float]:
    """dp-test errors from energy (nf,) and force (nf, natoms, 3) differences."""
    return {
        "rmse_energy": np.sqrt(np.mean(de**2)), "mae_energy": np.mean(np.abs(de)),
        "rmse_energy_per_atom": np.sqrt(np.mean((de / natoms) ** 2)),
        "mae_energy_per_atom": np.mean(np.abs(de / natoms)),
        "rmse_force": np.sqrt(np.mean(df**2)), "mae_force": np.mean(np.abs(df)),
    }


def test_dp_test_matches_deep_pot(tiny_models, tmp_path) -> None:
    system = str(WATER / "data_0")
    fr = water_frames(3)
    natoms = fr["symbols"].size
    e, f, _ = DeepPot(TINY_DP, device="cpu").eval(fr["coord"], fr["box"], fr["symbols"])
    e = e.reshape(-1)
    de, df = e - fr["energy"], f - fr["force"]

    # .dp on 3 frames; the same model as .pt and .pth on the first frame (evaluation is
    # the slow part) must give DeepPot(.dp)'s numbers too
    for kind, nframes in (("dp", 3), ("pt", 1), ("pth", 1)):
        prefix = tmp_path / f"detail_{kind}"
        extra = ["--plot", str(tmp_path / "parity.png")] if kind == "dp" else []
        out = _run_test(tiny_models[kind], [system], tmp_path / f"{kind}.json",
                        "-n", str(nframes), "--detail-file", str(prefix), *extra)
        assert set(out) == {"systems", "total"}
        assert list(out["systems"]) == [system]
        sys_err, total = out["systems"][system], out["total"]
        assert sys_err["nframes"] == total["nframes"] == nframes
        # water data have no virials: no virial keys
        assert set(total) == {"nframes"} | {f"{m}_{k}" for m in ("rmse", "mae")
                                            for k in ("energy", "energy_per_atom", "force")}
        sl = slice(0, nframes)
        expect = _expected_errors(de[sl], df[sl], natoms)
        for key, value in expect.items():
            assert total[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (kind, key)
            assert sys_err[key] == total[key]

        e_out = np.loadtxt(f"{prefix}.e.out", ndmin=2)
        np.testing.assert_allclose(e_out[:, 0], fr["energy"][sl], rtol=1e-12)
        np.testing.assert_allclose(e_out[:, 1], e[sl], rtol=1e-10)
        ea_out = np.loadtxt(f"{prefix}.e_peratom.out", ndmin=2)
        np.testing.assert_allclose(ea_out[:, 0], fr["energy"][sl] / natoms, rtol=1e-12)
        np.testing.assert_allclose(ea_out[:, 1], e[sl] / natoms, rtol=1e-10)
        f_out = np.loadtxt(f"{prefix}.f.out")
        assert f_out.shape == (nframes * natoms, 6)
        np.testing.assert_allclose(f_out[:, :3], fr["force"][sl].reshape(-1, 3), rtol=1e-12)
        np.testing.assert_allclose(f_out[:, 3:], f[sl].reshape(-1, 3), rtol=1e-9, atol=1e-12)
        # no virial.npy: dp test still writes .v.out, with zero labels, and no .s.out
        v_out = np.loadtxt(f"{prefix}.v.out", ndmin=2)
        assert v_out.shape == (nframes, 18) and not v_out[:, :9].any()
        assert not Path(f"{prefix}.s.out").exists()
    assert (tmp_path / "parity.png").read_bytes()[:8] == PNG_MAGIC


# === 3. change-bias ======================================================================
def _energy_residuals(model_file: Path, fr: dict) -> np.ndarray:
    e, _, _ = DeepPot(model_file, device="cpu").eval(fr["coord"], fr["box"], fr["symbols"])
    return fr["energy"] - e.reshape(-1)


def test_change_bias_refits_out_bias(tiny_model_config, tmp_path) -> None:
    system = _small_water_system(tmp_path / "water6", nframes=6)
    fr = water_frames(6)
    counts = np.array([[np.sum(fr["symbols"] == s) for s in ("O", "H")]] * 6, dtype=np.float64)

    model = _random_water_model(tiny_model_config)
    model.out_bias[0, :, 0] = torch.tensor([0.5, -0.25], dtype=torch.float64)
    src_pt, out_pt = tmp_path / "rand.pt", tmp_path / "rand_new.pt"
    save_checkpoint(src_pt, model, config={"model": {"type_map": ["O", "H"]}}, step=11)
    src_dp, out_dp = tmp_path / "rand.dp", tmp_path / "rand_new.dp"
    save_dp_model(src_dp, model)

    before = _energy_residuals(src_pt, fr)
    assert abs(before.mean()) > 100.0  # a random model is far off the water energies
    delta = np.linalg.lstsq(counts, before, rcond=None)[0]

    # -n 10 frames (at most): the statistics sample holds all 6 frames
    _run_ok(["change-bias", str(src_pt), "-s", str(system), "-n", "10", "--batch-size", "1",
             "-o", str(out_pt)])
    new, payload = load_checkpoint(out_pt)
    assert payload["step"] == 11 and payload["config"] == {"model": {"type_map": ["O", "H"]}}
    np.testing.assert_allclose(new.out_bias[0, :, 0].numpy(), [0.5 + delta[0], -0.25 + delta[1]],
                               rtol=1e-9, atol=1e-9)
    after = _energy_residuals(out_pt, fr)
    assert abs(after.mean()) < 1e-8 * abs(before.mean())
    # only the bias changed: the residuals shift by the same constant (one composition)
    np.testing.assert_allclose(after - after.mean(), before - before.mean(), atol=1e-8)

    # .dp in, .dp out: the same new bias
    _run_ok(["change-bias", str(src_dp), "-s", str(system), "-n", "10", "-o", str(out_dp)])
    new_dp, _ = load_dp_model(out_dp)
    np.testing.assert_allclose(new_dp.out_bias.numpy(), new.out_bias.numpy(), rtol=1e-12)
    for (k, a), b in zip(new_dp.state_dict().items(), new.state_dict().values(), strict=True):
        if k != "out_bias":  # out_std is the residual std in both
            assert torch.equal(a, b), k


# === 4. freeze ============================================================================
def test_freeze_checkpoint(tiny_model_config, tmp_path, capsys) -> None:
    model = _random_water_model(tiny_model_config, seed=5)
    model.out_bias[0, :, 0] = torch.tensor([-90.0, -180.0], dtype=torch.float64)
    ckpt, pth = tmp_path / "model.ckpt.pt", tmp_path / "model.pth"
    save_checkpoint(ckpt, model, config={"model": {"type_map": ["O", "H"]}})
    _run_ok(["freeze", "-c", str(ckpt), "-o", str(pth)])

    fr = water_frames(2)
    ref = DeepPot(ckpt, device="cpu").eval(fr["coord"], fr["box"], fr["symbols"])
    frozen = DeepPot(pth, device="cpu")
    assert frozen.get_type_map() == ["O", "H"]
    got = frozen.eval(fr["coord"], fr["box"], fr["symbols"])
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)

    # a directory holding model.ckpt.pt works too
    _run_ok(["freeze", "-c", str(tmp_path), "-o", str(tmp_path / "again.pth")])
    assert (tmp_path / "again.pth").is_file()

    capsys.readouterr()
    missing = tmp_path / "no_such_model.pt"
    assert main(["freeze", "-c", str(missing), "-o", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.pth").exists()


# === 5. plot ==============================================================================
def test_plot_lcurve(tmp_path) -> None:
    from dpa1.train.lcurve import LCurveWriter

    lcurve = tmp_path / "lcurve.out"
    keys = ["rmse", "rmse_e", "rmse_f"]
    with LCurveWriter(lcurve, keys, has_validation=True) as w:
        for step in range(1, 6):
            train = {k: 10.0 / step + i for i, k in enumerate(keys)}
            w.write(step * 10, train, {k: 1.1 * v for k, v in train.items()}, 1e-3 * 0.9**step)
    out = tmp_path / "lc.png"
    _run_ok(["plot", str(lcurve), "-o", str(out)])
    assert out.read_bytes()[:8] == PNG_MAGIC


# === 6. elements outside the model's type_map ============================================
def test_dp_test_unknown_element(alloy, tiny_model_config, tmp_path, capsys) -> None:
    model = build_model(tiny_model_config(["Cu", "Ag", "Au"]))
    path = tmp_path / "cu_ag_au.pt"
    save_checkpoint(path, model)
    system = next(p for p in alloy.standard if Path(p).name == "Cu5Au6Ni20")
    capsys.readouterr()
    rc = main(["test", "-m", str(path), "-s", system, "--json", str(tmp_path / "x.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "Ni" in err and err.startswith("dpa1 test: error:") and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


# === 7. output paths are checked before the work starts ==================================
def test_output_under_a_regular_file_is_refused_first(tiny_models, tmp_path, capsys) -> None:
    """Every verb with an output path stops with one line naming it, before computing."""
    from ase import Atoms
    from ase.io import write

    afile = tmp_path / "afile"
    afile.write_text("a regular file\n")
    system = str(_small_water_system(tmp_path / "water2", nframes=2))
    model = str(tiny_models["pt"])
    conf = tmp_path / "water.extxyz"
    fr = water_frames(1)
    write(conf, Atoms(fr["symbols"], positions=fr["coord"][0], cell=fr["box"][0], pbc=True))
    lcurve = tmp_path / "lcurve.out"
    lcurve.write_text("#  step  rmse_trn  lr\n   1  1.0e+00  1.0e-03\n")
    inp = water_input(tmp_path, numb_steps=1, train=[system], valid=[system])
    runs = {
        "train": ["train", str(inp), "-o", f"{afile}/run"],
        "test --json": ["test", "-m", model, "-s", system, "--json", f"{afile}/e.json"],
        "test --detail-file": ["test", "-m", model, "-s", system, "--detail-file", f"{afile}/d"],
        "test --plot": ["test", "-m", model, "-s", system, "--plot", f"{afile}/p.png"],
        "freeze": ["freeze", "-c", model, "-o", f"{afile}/x.pth"],
        "plot": ["plot", str(lcurve), "-o", f"{afile}/lc.png"],
        "convert": ["convert", model, f"{afile}/x.dp"],
        "change-bias": ["change-bias", model, "-s", system, "-o", f"{afile}/x.pt"],
        "md": ["md", "-m", model, "-c", str(conf), "--steps", "1", "-o", f"{afile}/t.extxyz"],
        "md --log": ["md", "-m", model, "-c", str(conf), "--steps", "1",
                     "-o", str(tmp_path / "t.extxyz"), "--log", f"{afile}/thermo.log"],
        "model-devi": ["model-devi", "-m", model, model, "-s", system, "-o", f"{afile}/md.out"],
        "convert-data": ["convert-data", str(conf), f"{afile}/npy"],
    }
    for name, argv in runs.items():
        capsys.readouterr()
        assert main(argv) == 2, name
        out, err = capsys.readouterr()
        assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert f"{afile} is a file, not a directory" in err, (name, err)
        assert out == "", (name, out)  # nothing was computed (and then lost)
    assert afile.read_text() == "a regular file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["afile", "water2", "water.extxyz", "lcurve.out", "input.json"])


# === 8. files that are not what their names say ==========================================
def test_text_files_with_model_and_array_names(tmp_path, capsys) -> None:
    """A text file named like a checkpoint, a frozen model or a .npy array gets one line
    saying what was expected (no torch/NumPy advice about unsafe loading)."""
    text_pt, text_pth = tmp_path / "model.pt", tmp_path / "x.pth"
    for path in (text_pt, text_pth):
        path.write_text("not a model\n")
    system = _small_water_system(tmp_path / "water2", nframes=2)
    bad = _small_water_system(tmp_path / "bad", nframes=2)
    coord = bad / "set.000" / "coord.npy"
    coord.write_text("1 2 3\n")
    inp = water_input(tmp_path, numb_steps=1, train=[str(system)], valid=[str(system)])
    cases = {
        "test -m model.pt": (["test", "-m", str(text_pt), "-s", str(system)],
                             f"{text_pt}: not a dpa1 checkpoint (a text file)"),
        "freeze -c model.pt": (["freeze", "-c", str(text_pt), "-o", str(tmp_path / "f.pth")],
                               f"{text_pt}: not a dpa1 checkpoint (a text file)"),
        "train --init-model x.pth": (
            ["train", str(inp), "-o", str(tmp_path / "run"), "--init-model", str(text_pth)],
            f"{text_pth}: not a model file (a text file); expected a dpa1 checkpoint (.pt) "
            "or a DeePMD-kit model (.dp)"),
        "test -m x.pth": (["test", "-m", str(text_pth), "-s", str(system)],
                          f"{text_pth}: not a frozen dpa1 model (a text file)"),
        "test with a text coord.npy": (["test", "-m", str(TINY_DP), "-s", str(bad)],
                                       f"{coord}: not a NumPy array file"),
    }
    for name, (argv, words) in cases.items():
        capsys.readouterr()
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert words in err, (name, err)
        assert "unsafe" not in err.lower() and "weights_only" not in err, (name, err)
