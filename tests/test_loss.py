"""The ``ener`` loss (docs/design.md, "Loss"), checked against the formulas written out in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpa1.train.loss import EnerLoss

NF, NLOC = 3, 5
START_LR = 1e-3
ALL_TERMS = dict(
    start_pref_e=0.02, limit_pref_e=1.0, start_pref_f=1000.0, limit_pref_f=1.0,
    start_pref_v=0.5, limit_pref_v=2.0, start_pref_ae=3.0, limit_pref_ae=0.25,
    start_pref_pf=7.0, limit_pref_pf=0.5,
)  # fmt: skip


def make_batch(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Random numpy pred/label for nf = 3 frames; frame 1 has 2 virtual atoms (atype -1)."""
    rng = np.random.default_rng(seed)
    atype = np.array([[0, 1, 1, 0, 1], [1, 0, 0, -1, -1], [0, 0, 1, 1, 1]])
    pred = {
        "energy": rng.normal(size=(NF, 1)) * 3,
        "force": rng.normal(size=(NF, NLOC, 3)),
        "virial": rng.normal(size=(NF, 9)) * 2,
        "atom_energy": rng.normal(size=(NF, NLOC, 1)),
    }
    label = {
        "atype": atype,
        "energy": rng.normal(size=(NF, 1)) * 3,
        "force": rng.normal(size=(NF, NLOC, 3)),
        "virial": rng.normal(size=(NF, 9)) * 2,
        "atom_ener": rng.normal(size=(NF, NLOC)),
        "atom_pref": rng.uniform(0.5, 2.0, size=(NF, NLOC)),
    }
    return pred, label


def to_torch(
    pred: dict[str, np.ndarray], label: dict[str, np.ndarray], dtype: torch.dtype = torch.float64
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    tp = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in pred.items()}
    tl: dict[str, object] = {}
    for k, v in label.items():
        tl[k] = torch.tensor(v) if k == "atype" else torch.tensor(v, dtype=torch.float64)
        if k != "atype":
            tl["find_" + k] = 1.0
    return tp, tl


def ref_terms(
    pred: dict[str, np.ndarray],
    label: dict[str, np.ndarray],
    q: int = 1,
    relative_f: float | None = None,
) -> dict[str, float]:
    """docs/design.md, "Loss", frame by frame, real atoms only (independent of the
    implementation)."""
    out = {k: [] for k in ("e", "f", "v", "ae", "pf", "rmse_e", "rmse_v")}
    for f in range(NF):
        real = np.nonzero(label["atype"][f] >= 0)[0]
        n = len(real)
        de = label["energy"][f, 0] - pred["energy"][f, 0]
        out["e"].append(de**2 / n**q)
        out["rmse_e"].append((de / n) ** 2)
        df = label["force"][f, real] - pred["force"][f, real]  # (n, 3)
        if relative_f is not None:
            df = df / (np.linalg.norm(label["force"][f, real], axis=1, keepdims=True) + relative_f)
        out["f"].append(np.sum(df**2) / (3 * n))
        w = label["atom_pref"][f, real][:, None]
        out["pf"].append(np.sum(w * df**2) / (3 * n))
        dv = label["virial"][f] - pred["virial"][f]
        out["v"].append(np.sum(dv**2) / 9 / n**q)
        out["rmse_v"].append(np.sum(dv**2) / 9 / n**2)
        dae = label["atom_ener"][f, real] - pred["atom_energy"][f, real, 0]
        out["ae"].append(np.sum(dae**2) / n)
    return {k: float(np.mean(v)) for k, v in out.items()}


def ref_loss(terms: dict[str, float], prefs: dict[str, float]) -> float:
    return sum(prefs[k] * terms[k] for k in prefs)


def interp(start: float, limit: float, lr: float) -> float:
    return limit + (start - limit) * lr / START_LR


@pytest.mark.parametrize("lr", [START_LR, START_LR / 10])
def test_all_terms_match_formulas(lr: float) -> None:
    pred, label = make_batch()
    loss_fn = EnerLoss(START_LR, **ALL_TERMS)
    assert loss_fn.metric_keys() == ["rmse", "rmse_e", "rmse_f", "rmse_v", "rmse_ae", "rmse_pf"]
    tp, tl = to_torch(pred, label)
    loss, metrics = loss_fn(tp, tl, lr)

    terms = ref_terms(pred, label)
    prefs = {k: interp(ALL_TERMS[f"start_pref_{k}"], ALL_TERMS[f"limit_pref_{k}"], lr)
             for k in ("e", "f", "v", "ae", "pf")}  # fmt: skip
    if lr == START_LR:
        assert prefs == pytest.approx({k: ALL_TERMS[f"start_pref_{k}"] for k in prefs})
    else:  # lr = start_lr / 10: limit + 0.1 (start - limit)
        assert prefs["f"] == pytest.approx(1.0 + 0.1 * 999.0)
    expected = ref_loss(terms, prefs)
    assert loss.dtype == torch.float64 and loss.ndim == 0
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["rmse"] == pytest.approx(math.sqrt(expected), rel=1e-12)
    assert metrics["rmse_e"] == pytest.approx(math.sqrt(terms["rmse_e"]), rel=1e-12)
    assert metrics["rmse_f"] == pytest.approx(math.sqrt(terms["f"]), rel=1e-12)
    assert metrics["rmse_v"] == pytest.approx(math.sqrt(terms["rmse_v"]), rel=1e-12)
    assert metrics["rmse_ae"] == pytest.approx(math.sqrt(terms["ae"]), rel=1e-12)
    assert metrics["rmse_pf"] == pytest.approx(math.sqrt(terms["pf"]), rel=1e-12)
    assert all(isinstance(v, float) for v in metrics.values())

    # Gradient w.r.t. the energy prediction: d/dE_f [pref_e mean_f (L-E)^2/N_f] by hand.
    loss.backward()
    n = np.array([5, 3, 5])
    de = (label["energy"] - pred["energy"])[:, 0]
    grad_e = -2 * prefs["e"] * de / n / NF
    np.testing.assert_allclose(tp["energy"].grad.numpy()[:, 0], grad_e, rtol=1e-12)
    assert np.all(tp["force"].grad.numpy()[1, 3:] == 0.0)  # virtual atoms get no gradient


def test_default_loss_is_energy_and_force_with_1_over_N() -> None:
    pred, label = make_batch(1)
    loss_fn = EnerLoss(START_LR)
    assert loss_fn.metric_keys() == ["rmse", "rmse_e", "rmse_f"]
    assert (loss_fn.needs_energy, loss_fn.needs_force, loss_fn.needs_virial) == (True, True, False)
    assert not loss_fn.needs_atomic and loss_fn.label_keys == ["energy", "force"]
    tp, tl = to_torch(pred, label)
    lr = 3e-4
    loss, metrics = loss_fn(tp, tl, lr)
    terms = ref_terms(pred, label)
    expected = interp(0.02, 1.0, lr) * terms["e"] + interp(1000.0, 1.0, lr) * terms["f"]
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert set(metrics) == {"rmse", "rmse_e", "rmse_f"}


def test_intensive_ener_virial_uses_1_over_N_squared() -> None:
    pred, label = make_batch(2)
    loss_fn = EnerLoss(START_LR, **ALL_TERMS, intensive_ener_virial=True)
    loss, metrics = loss_fn(*to_torch(pred, label), START_LR)
    terms = ref_terms(pred, label, q=2)
    prefs = {k: ALL_TERMS[f"start_pref_{k}"] for k in ("e", "f", "v", "ae", "pf")}
    assert loss.item() == pytest.approx(ref_loss(terms, prefs), rel=1e-12)
    # Metrics are per-atom RMSEs either way.
    assert metrics["rmse_e"] == pytest.approx(math.sqrt(terms["rmse_e"]), rel=1e-12)
    assert metrics["rmse_v"] == pytest.approx(math.sqrt(terms["rmse_v"]), rel=1e-12)


def test_inactive_term_when_one_prefactor_is_zero() -> None:
    pred, label = make_batch(3)
    # PyTorch semantics: start != 0 but limit == 0 -> inactive (TF would use "or").
    base = EnerLoss(START_LR)
    off = EnerLoss(
        START_LR, start_pref_v=1.0, limit_pref_v=0.0, start_pref_ae=0.0, limit_pref_ae=1.0
    )
    assert off.metric_keys() == ["rmse", "rmse_e", "rmse_f"] and not off.needs_virial
    l0, m0 = base(*to_torch(pred, label), START_LR / 10)
    l1, m1 = off(*to_torch(pred, label), START_LR / 10)
    assert l1.item() == l0.item() and m1 == m0


def test_missing_virial_label_gives_no_term_and_nan_metric() -> None:
    pred, label = make_batch(4)
    with_v = EnerLoss(START_LR, start_pref_v=1.0, limit_pref_v=1.0)
    without_v = EnerLoss(START_LR)
    tp, tl = to_torch(pred, label)
    l_ref, m_ref = without_v(tp, tl, START_LR)

    tl["find_virial"] = torch.tensor(0.0)  # label present but flagged missing
    tl["virial"] = torch.full((NF, 9), float("nan"), dtype=torch.float64)
    loss, metrics = with_v(tp, tl, START_LR)
    assert loss.item() == pytest.approx(l_ref.item(), rel=1e-15)
    assert math.isnan(metrics["rmse_v"])
    assert metrics["rmse_e"] == m_ref["rmse_e"] and metrics["rmse_f"] == m_ref["rmse_f"]
    loss.backward()
    assert tp["virial"].grad is None  # the term is not even built

    del tl["virial"], tl["find_virial"]  # key absent: find = 0
    loss, metrics = with_v(tp, tl, START_LR)
    assert loss.item() == pytest.approx(l_ref.item(), rel=1e-15) and math.isnan(metrics["rmse_v"])

    # find flags may be python floats or 0-d tensors; 1.0 as a tensor is "found".
    tp, tl = to_torch(pred, label)
    tl["find_virial"] = torch.tensor(1.0)
    _, metrics = with_v(tp, tl, START_LR)
    expected_rmse_v = math.sqrt(ref_terms(pred, label)["rmse_v"])
    assert metrics["rmse_v"] == pytest.approx(expected_rmse_v, rel=1e-12)


def test_virtual_atoms_with_garbage_labels_change_nothing() -> None:
    pred, label = make_batch(5)
    loss_fn = EnerLoss(START_LR, **ALL_TERMS, relative_f=0.1)
    tp, tl = to_torch(pred, label)
    loss0, m0 = loss_fn(tp, tl, START_LR / 3)
    loss0.backward()
    grads0 = {k: v.grad.clone() for k, v in tp.items()}

    garbage_pred, garbage_label = {k: v.copy() for k, v in pred.items()}, dict(label)
    for key in ("force", "atom_ener", "atom_pref"):
        garbage_label[key] = label[key].copy()
        garbage_label[key][1, 3:] = np.nan if key == "force" else 1e6
    garbage_pred["force"][1, 3:] = 1e6
    garbage_pred["atom_energy"][1, 3:] = -1e6
    tp, tl = to_torch(garbage_pred, garbage_label)
    loss1, m1 = loss_fn(tp, tl, START_LR / 3)
    loss1.backward()
    assert loss1.item() == loss0.item()
    assert m1 == m0
    for k, v in tp.items():
        assert torch.all(torch.isfinite(v.grad)), k
        torch.testing.assert_close(v.grad, grads0[k], rtol=0, atol=0)


def test_relative_f() -> None:
    pred, label = make_batch(6)
    loss_fn = EnerLoss(START_LR, **ALL_TERMS, relative_f=0.5)
    loss, metrics = loss_fn(*to_torch(pred, label), START_LR)
    terms = ref_terms(pred, label, relative_f=0.5)
    prefs = {k: ALL_TERMS[f"start_pref_{k}"] for k in ("e", "f", "v", "ae", "pf")}
    assert loss.item() == pytest.approx(ref_loss(terms, prefs), rel=1e-12)
    assert metrics["rmse_f"] == pytest.approx(math.sqrt(terms["f"]), rel=1e-12)
    assert metrics["rmse_pf"] == pytest.approx(math.sqrt(terms["pf"]), rel=1e-12)


def np_huber(e: np.ndarray, d: float) -> np.ndarray:
    return np.where(np.abs(e) <= d, 0.5 * e**2, d * (np.abs(e) - d / 2))


@pytest.mark.parametrize("f_use_norm", [False, True])
def test_huber(f_use_norm: bool) -> None:
    pred, label = make_batch(7)
    deltas = [0.4, 0.8, 0.3]
    prefs = dict(start_pref_e=2.0, limit_pref_e=1.0, start_pref_f=3.0, limit_pref_f=1.0,
                 start_pref_v=4.0, limit_pref_v=1.0,
                 start_pref_ae=5.0, limit_pref_ae=1.0)  # fmt: skip
    loss_fn = EnerLoss(START_LR, **prefs, use_huber=True, huber_delta=deltas, f_use_norm=f_use_norm)
    loss, metrics = loss_fn(*to_torch(pred, label), START_LR)

    he, hf, hv, hae, both_branches = [], [], [], [], []
    for f in range(NF):
        real = label["atype"][f] >= 0
        n = real.sum()
        e = (label["energy"][f, 0] - pred["energy"][f, 0]) / n
        he.append(np_huber(e, deltas[0]))
        df = label["force"][f, real] - pred["force"][f, real]
        if f_use_norm:
            hf.append(np.sum(np_huber(np.linalg.norm(df, axis=1), deltas[1])) / n)
        else:
            hf.append(np.sum(np_huber(df, deltas[1])) / (3 * n))
        v = (label["virial"][f] - pred["virial"][f]) / n
        hv.append(np.mean(np_huber(v, deltas[2])))
        dae = label["atom_ener"][f, real] - pred["atom_energy"][f, real, 0]
        hae.append(np.sum(np_huber(dae, deltas[0])) / n)
        both_branches += [np.abs(df) > deltas[1], np.abs(v) > deltas[2]]
    flags = np.concatenate([b.ravel() for b in both_branches])
    assert flags.any() and not flags.all()  # both Huber branches are exercised
    expected = 2.0 * np.mean(he) + 3.0 * np.mean(hf) + 4.0 * np.mean(hv) + 5.0 * np.mean(hae)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # Metrics stay the plain RMSEs.
    terms = ref_terms(pred, label)
    assert metrics["rmse_f"] == pytest.approx(math.sqrt(terms["f"]), rel=1e-12)
    assert metrics["rmse_e"] == pytest.approx(math.sqrt(terms["rmse_e"]), rel=1e-12)

    scalar = EnerLoss(START_LR, use_huber=True, huber_delta=0.5)
    assert scalar.huber_delta == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("f_use_norm", [False, True])
def test_mae(f_use_norm: bool) -> None:
    pred, label = make_batch(8)
    loss_fn = EnerLoss(START_LR, **ALL_TERMS, loss_func="mae", f_use_norm=f_use_norm)
    assert loss_fn.metric_keys() == ["rmse", "mae_e", "mae_f", "mae_v", "mae_ae", "mae_pf"]
    loss, metrics = loss_fn(*to_torch(pred, label), START_LR / 10)
    t = {k: [] for k in ("e", "f", "v", "ae", "pf")}
    for f in range(NF):
        real = label["atype"][f] >= 0
        n = real.sum()
        t["e"].append(abs(label["energy"][f, 0] - pred["energy"][f, 0]) / n)
        df = label["force"][f, real] - pred["force"][f, real]
        if f_use_norm:
            t["f"].append(np.sum(np.linalg.norm(df, axis=1)) / n)
        else:
            t["f"].append(np.sum(np.abs(df)) / (3 * n))
        t["pf"].append(np.sum(label["atom_pref"][f, real][:, None] * np.abs(df)) / (3 * n))
        t["v"].append(np.mean(np.abs(label["virial"][f] - pred["virial"][f])) / n)
        dae = label["atom_ener"][f, real] - pred["atom_energy"][f, real, 0]
        t["ae"].append(np.sum(np.abs(dae)) / n)
    terms = {k: float(np.mean(v)) for k, v in t.items()}
    prefs = {k: interp(ALL_TERMS[f"start_pref_{k}"], ALL_TERMS[f"limit_pref_{k}"], START_LR / 10)
             for k in terms}  # fmt: skip
    expected = ref_loss(terms, prefs)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["rmse"] == pytest.approx(math.sqrt(expected), rel=1e-12)
    for k in terms:
        assert metrics[f"mae_{k}"] == pytest.approx(terms[k], rel=1e-12), k


def test_atom_ener_coeff() -> None:
    pred, label = make_batch(9)
    coeff = np.random.default_rng(0).normal(size=(NF, NLOC))
    loss_fn = EnerLoss(START_LR, start_pref_f=0.0, enable_atom_ener_coeff=True)
    assert loss_fn.needs_atomic and "atom_ener_coeff" in loss_fn.label_keys
    tp, tl = to_torch(pred, label)
    tl["atom_ener_coeff"] = torch.tensor(coeff)
    loss, metrics = loss_fn(tp, tl, START_LR)
    real = label["atype"] >= 0
    e_pred = np.sum(np.where(real, coeff * pred["atom_energy"][..., 0], 0.0), axis=1)
    de = label["energy"][:, 0] - e_pred
    n = real.sum(1)
    assert loss.item() == pytest.approx(0.02 * np.mean(de**2 / n), rel=1e-12)
    assert metrics["rmse_e"] == pytest.approx(np.sqrt(np.mean((de / n) ** 2)), rel=1e-12)
    # Without the coefficient array it defaults to 1: E = sum of real atomic energies.
    del tl["atom_ener_coeff"]
    loss, _ = loss_fn(tp, tl, START_LR)
    de = label["energy"][:, 0] - np.sum(np.where(real, pred["atom_energy"][..., 0], 0.0), axis=1)
    assert loss.item() == pytest.approx(0.02 * np.mean(de**2 / n), rel=1e-12)


def test_prefactor_force_flags_and_default_pf() -> None:
    pred, label = make_batch(10)
    kw = dict(start_pref_e=0.0, start_pref_f=0.0, start_pref_pf=2.0, limit_pref_pf=2.0)
    tp, tl = to_torch(pred, label)
    tl["find_atom_pref"] = 0.0
    loss, metrics = EnerLoss(START_LR, **kw)(tp, tl, START_LR)
    assert loss.item() == 0.0 and math.isnan(metrics["rmse_pf"])
    # use_default_pf: atom_pref = 1 where the data have none, and it counts as found.
    del tl["atom_pref"], tl["find_atom_pref"]
    loss, metrics = EnerLoss(START_LR, **kw, use_default_pf=True)(tp, tl, START_LR)
    terms = ref_terms(pred, label)
    assert loss.item() == pytest.approx(2.0 * terms["f"], rel=1e-12)
    assert metrics["rmse_pf"] == pytest.approx(math.sqrt(terms["f"]), rel=1e-12)


def test_float32_predictions_give_float32_loss() -> None:
    pred, label = make_batch(11)
    loss_fn = EnerLoss(START_LR, **ALL_TERMS)
    loss32, m32 = loss_fn(*to_torch(pred, label, torch.float32), START_LR)
    loss64, _ = loss_fn(*to_torch(pred, label, torch.float64), START_LR)
    assert loss32.dtype == torch.float32
    assert loss32.item() == pytest.approx(loss64.item(), rel=1e-5)


def test_from_config() -> None:
    cfg = {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000,
           "limit_pref_f": 1, "start_pref_v": 0, "limit_pref_v": 0, "_comment": "x",
           "start_pref_gf": 0.0, "limit_pref_gf": 0.0, "numb_generalized_coord": 0,
           "relative_f": None}  # fmt: skip
    loss_fn = EnerLoss.from_config(cfg, start_lr=1e-3)
    assert loss_fn.metric_keys() == ["rmse", "rmse_e", "rmse_f"]
    assert loss_fn.pref("f", 1e-4) == pytest.approx(1.0 + 999.0 * 0.1)
    assert loss_fn.relative_f is None
    # gf active only with both prefactors non-zero (DeePMD rule), Hessian with either.
    EnerLoss.from_config({"start_pref_gf": 1.0, "limit_pref_gf": 0.0}, 1e-3)
    with pytest.raises(NotImplementedError):
        EnerLoss.from_config({"start_pref_gf": 1.0, "limit_pref_gf": 1.0}, 1e-3)
    with pytest.raises(NotImplementedError):
        EnerLoss.from_config({"limit_pref_h": 1.0}, 1e-3)
    with pytest.raises(ValueError, match="did you mean 'start_pref_e'"):
        EnerLoss.from_config({"start_pref_ee": 1.0}, 1e-3)
    with pytest.raises(NotImplementedError):
        EnerLoss.from_config({"type": "dos"}, 1e-3)
    with pytest.raises(ValueError):
        EnerLoss.from_config({"loss_func": "huber"}, 1e-3)
    with pytest.raises(ValueError):  # f_use_norm needs mae or Huber
        EnerLoss.from_config({"f_use_norm": True}, 1e-3)
    with pytest.raises(ValueError):  # Huber + relative_f is not implemented (as in DeePMD)
        EnerLoss.from_config({"use_huber": True, "relative_f": 0.1}, 1e-3)
    with pytest.raises(ValueError):
        EnerLoss.from_config({"huber_delta": [0.1, 0.2]}, 1e-3)
