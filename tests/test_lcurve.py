"""``lcurve.out`` format (docs/design.md, "Training loop"), byte-identical to DeePMD-kit 3.2.0's
PyTorch trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpa1.train.lcurve import LCurveWriter, read_lcurve

NOTE = "# If there is no available reference data, rmse_*_{val,trn} will print nan\n"


def test_header_and_row_with_validation(tmp_path: Path) -> None:
    path = tmp_path / "lcurve.out"
    # Keys given unsorted: columns must come out sorted.
    with LCurveWriter(path, ["rmse_f", "rmse", "rmse_e"], has_validation=True) as w:
        w.write(
            1,
            {"rmse": 28.6, "rmse_e": 0.844, "rmse_f": 0.905},
            {"rmse": 29.5, "rmse_e": 0.86, "rmse_f": 0.933},
            1e-3,
        )
        w.write(10000, {"rmse": 0.0312, "rmse_e": float("nan"), "rmse_f": 0.0311}, None, 3.51e-8)
    expected = (
        "# step       rmse_val    rmse_trn    rmse_e_val  rmse_e_trn    rmse_f_val  rmse_f_trn"
        "   lr      \n"
        + NOTE
        + "      1      2.95e+01    2.86e+01      8.60e-01    8.44e-01      9.33e-01    9.05e-01"
        "    1.0e-03\n"
        # valid=None with validation columns: nan there, the file stays rectangular.
        "  10000           nan    3.12e-02           nan         nan           nan    3.11e-02"
        "    3.5e-08\n"
    )
    assert path.read_text() == expected


def test_header_and_row_without_validation(tmp_path: Path) -> None:
    path = tmp_path / "lcurve.out"
    w = LCurveWriter(path, ["rmse", "rmse_e", "rmse_f", "rmse_v"], has_validation=False)
    train = {"rmse": 1.5, "rmse_e": 2.5e-3, "rmse_f": 0.12, "rmse_v": float("nan")}
    w.write(1000, train, None, 9.5e-4)
    # Flushed after each row: readable before close.
    expected = (
        "# step       rmse_trn    rmse_e_trn    rmse_f_trn    rmse_v_trn   lr      \n"
        + NOTE
        + "   1000      1.50e+00      2.50e-03      1.20e-01           nan    9.5e-04\n"
    )
    assert path.read_text() == expected
    w.close()


def test_append_for_restart(tmp_path: Path) -> None:
    path = tmp_path / "lcurve.out"
    keys = ["rmse", "rmse_e"]
    with LCurveWriter(path, keys, has_validation=False) as w:
        w.write(1, {"rmse": 1.0, "rmse_e": 0.1}, None, 1e-3)
    with LCurveWriter(path, keys, has_validation=False, append=True) as w:
        w.write(2, {"rmse": 0.5, "rmse_e": 0.05}, None, 9e-4)
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and lines[3].startswith("      2")
    # DeePMD itself repeats the header after a restart; header=True reproduces that.
    with LCurveWriter(path, keys, has_validation=False, append=True, header=True) as w:
        w.write(3, {"rmse": 0.25, "rmse_e": 0.025}, None, 8e-4)
    names, data = read_lcurve(path)
    assert names == ["step", "rmse_trn", "rmse_e_trn", "lr"]
    np.testing.assert_array_equal(data[:, 0], [1, 2, 3])


def test_read_lcurve_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "lcurve.out"
    keys = ["rmse", "rmse_e", "rmse_f"]
    rng = np.random.default_rng(0)
    rows = []
    with LCurveWriter(path, keys, has_validation=True) as w:
        for step in (1, 100, 200):
            trn = dict(zip(keys, rng.uniform(0.01, 10, 3), strict=True))
            val = dict(zip(keys, rng.uniform(0.01, 10, 3), strict=True))
            val["rmse_e"] = float("nan")
            lr = 1e-3 * 0.9 ** (step // 100)
            w.write(step, trn, val, lr)
            rows.append([step] + [x for k in keys for x in (val[k], trn[k])] + [lr])
    names, data = read_lcurve(path)
    assert names == [
        "step", "rmse_val", "rmse_trn", "rmse_e_val", "rmse_e_trn", "rmse_f_val", "rmse_f_trn", "lr"
    ]  # fmt: skip
    assert data.shape == (3, 8) and data.dtype == np.float64
    expected = np.array(rows)
    # Values are printed with 3 significant digits (lr with 2).
    np.testing.assert_allclose(data[:, :-1], expected[:, :-1], rtol=5e-3)
    np.testing.assert_allclose(data[:, -1], expected[:, -1], rtol=5e-2)
    assert np.isnan(data[:, 3]).all() and not np.isnan(data[:, 4]).any()


def test_read_lcurve_header_only(tmp_path: Path) -> None:
    path = tmp_path / "lcurve.out"
    LCurveWriter(path, ["rmse"], has_validation=False).close()
    names, data = read_lcurve(path)
    assert names == ["step", "rmse_trn", "lr"] and data.shape == (0, 3)
