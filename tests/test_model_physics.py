"""Physical consistency of the DPA-1 energy model over a grid of descriptor settings.

For every configuration of :data:`CONFIGS` (small networks, 3 atom types, random
statistics and biases) we check on small random systems:

- forces = central finite differences of the energy (periodic, cluster, a cell thinner
  than 2·rcut, frames with virtual atoms);
- virial = −∂E/∂ε for a homogeneous strain of coordinates and cell (all 9 entries);
- atomic energies / virials sum to the totals;
- invariance under rotation, translation, permutation and choice of periodic image,
  with forces and virials transforming covariantly;
- virtual atoms (type −1) change nothing;
- continuity of energy and forces as a neighbour crosses rcut (where the spec implies
  it, see :func:`continuous_at_rcut`);
- a batch of frames equals frame-by-frame evaluation;
- float32 models agree with their float64 twin.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

from dpa1.model.neighbor import build_extended_system, format_nlist

from helpers import (
    RCUT,
    evaluate,
    fd_forces,
    fd_virial,
    make_model,
    make_system,
    params_for,
    random_positions,
    random_rotation,
    single_thread,  # noqa: F401  (autouse fixture)
    small_model_config,
)

# name -> (descriptor overrides, fitting overrides, model-level overrides)
CONFIGS: dict[str, tuple[dict, dict, dict]] = {
    "concat": ({}, {}, {}),
    "concat_smooth": ({"smooth_type_embedding": True}, {}, {}),
    "concat_one_side": ({"type_one_side": True}, {}, {}),
    "concat_smooth_one_side": (
        {"smooth_type_embedding": True, "type_one_side": True, "neuron": [6, 12]}, {}, {}),
    "strip": ({"tebd_input_mode": "strip"}, {}, {}),
    "strip_smooth": ({"tebd_input_mode": "strip", "smooth_type_embedding": True}, {}, {}),
    "strip_smooth_one_side": (
        {"tebd_input_mode": "strip", "smooth_type_embedding": True, "type_one_side": True}, {}, {}),
    "attn0": ({"attn_layer": 0}, {}, {}),
    "attn0_strip": ({"attn_layer": 0, "tebd_input_mode": "strip"}, {}, {}),
    "no_dotr": ({"attn_dotr": False, "smooth_type_embedding": True}, {}, {}),
    "no_dotr_nonsmooth": ({"attn_dotr": False}, {}, {}),
    "attn_mask": ({"attn_mask": True, "smooth_type_embedding": True}, {}, {}),
    "attn_variants": (
        {"smooth_type_embedding": True, "normalize": False, "temperature": 0.7,
         "scaling_factor": 2.0, "trainable_ln": False, "ln_eps": 1e-3, "resnet_dt": True,
         "activation_function": "gelu", "concat_output_tebd": False, "tebd_dim": 3,
         "use_tebd_bias": True}, {"activation_function": "silu"}, {}),
    "davg_concat_smooth": ({"set_davg_zero": False, "smooth_type_embedding": True}, {}, {}),
    "davg_concat": ({"set_davg_zero": False}, {}, {}),
    "davg_strip_attn0": (
        {"set_davg_zero": False, "tebd_input_mode": "strip", "attn_layer": 0}, {}, {}),
    "v2": ({"type": "se_atten_v2", "tebd_dim": 6, "resnet_dt": True}, {}, {}),
    "v2_one_side": ({"type": "se_atten_v2", "type_one_side": True}, {}, {}),
    "v2_float32": ({"type": "se_atten_v2", "precision": "float32"}, {"precision": "float32"}, {}),
    # Smooth, so that the large float32 finite-difference steps cannot cross a jump at rcut.
    "concat_float32": (
        {"precision": "float32", "smooth_type_embedding": True}, {"precision": "float32"}, {}),
    "exclude": ({"smooth_type_embedding": True, "exclude_types": [[1, 2], [0, 0]]}, {}, {}),
    "exclude_nonsmooth": ({"exclude_types": [[1, 2]]}, {}, {}),
    "v2_exclude": ({"type": "se_atten_v2", "exclude_types": [[1, 2]]}, {}, {}),
    "pair_exclude": ({"smooth_type_embedding": True}, {}, {"pair_exclude_types": [[1, 2], [0, 0]]}),
    "pair_exclude_davg_concat": (
        {"set_davg_zero": False}, {}, {"pair_exclude_types": [[1, 2]]}),
    "v2_pair_exclude": ({"type": "se_atten_v2"}, {}, {"pair_exclude_types": [[1, 2]]}),
    "atom_exclude": ({"smooth_type_embedding": True}, {}, {"atom_exclude_types": [1]}),
    "env_protection": ({"type": "se_atten_v2", "env_protection": 0.3}, {}, {}),
    "fparam_aparam": ({"type": "se_atten_v2"}, {"numb_fparam": 2, "numb_aparam": 1}, {}),
    "atom_ener": ({"smooth_type_embedding": True}, {"atom_ener": [1.0, None, -2.0]}, {}),
}
NAMES = list(CONFIGS)
FLOAT32 = {n for n, (d, _, _) in CONFIGS.items() if d.get("precision") == "float32"}


def config(name: str) -> dict:
    desc, fit, model = CONFIGS[name]
    return small_model_config(desc, fit, **model)


@functools.cache
def model_for(name: str):
    """One model per configuration (tests must not modify it)."""
    torch.manual_seed(0)
    return make_model(config(name))


def tol(name: str, f64: float, f32: float) -> float:
    return f32 if name in FLOAT32 else f64


def system(name: str, kind: str, seed: int = 0, n_virtual: int = 0):
    """A random system plus fparam/aparam for the model (one frame)."""
    coord, atype, box = make_system(kind, seed, n_virtual=n_virtual)
    fp, ap = params_for(model_for(name), 1, coord.shape[0])
    return coord, atype, box, (None if fp is None else fp[0]), (None if ap is None else ap[0])


def assert_close(actual, expected, rtol: float, what: str, atol: float = 1e-12) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    err = np.abs(actual - expected).max()
    scale = np.abs(expected).max()
    assert err <= rtol * scale + atol, f"{what}: error {err:.3e}, scale {scale:.3e}, rtol {rtol}"


# === derivatives =============================================================================
@pytest.mark.parametrize("kind", ["pbc", "nopbc", "thin", "virtual"])
@pytest.mark.parametrize("name", NAMES)
def test_forces_are_minus_energy_gradient(name: str, kind: str) -> None:
    model = model_for(name)
    coord, atype, box, fp, ap = system(
        name, "pbc" if kind == "virtual" else kind, seed=1, n_virtual=3 if kind == "virtual" else 0)
    res = evaluate(model, coord, atype, box, fp, ap)
    h = tol(name, 1e-5, 1e-3)
    fd = fd_forces(model, coord, atype, box, fp, ap, h=h)
    assert np.abs(res["force"][0]).max() > 1e-3, "degenerate test: forces vanish"
    assert_close(res["force"][0], fd, tol(name, 1e-7, 2e-2), f"{name}/{kind} force vs FD")
    assert np.all(res["force"][0][atype < 0] == 0.0)


@pytest.mark.parametrize("kind", ["pbc", "nopbc", "thin"])
@pytest.mark.parametrize("name", NAMES)
def test_virial_is_minus_strain_derivative(name: str, kind: str) -> None:
    model = model_for(name)
    coord, atype, box, fp, ap = system(name, kind, seed=2, n_virtual=1)
    res = evaluate(model, coord, atype, box, fp, ap)
    fd = fd_virial(model, coord, atype, box, fp, ap, h=tol(name, 1e-5, 1e-3))
    assert np.abs(res["virial"][0]).max() > 1e-3, "degenerate test: virial vanishes"
    assert_close(res["virial"][0], fd, tol(name, 1e-7, 2e-2), f"{name}/{kind} virial vs FD")
    if kind != "nopbc":
        # Σ_local F ⊗ x is not the periodic virial: the test above is not trivial.
        naive = np.einsum("ik,ij->kj", res["force"][0], coord)
        assert np.abs(naive - res["virial"][0]).max() > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_atomic_quantities_sum_to_totals(name: str) -> None:
    model = model_for(name)
    for kind in ("pbc", "thin", "nopbc"):
        coord, atype, box, fp, ap = system(name, kind, seed=3, n_virtual=2)
        res = evaluate(model, coord, atype, box, fp, ap)
        assert_close(res["atom_energy"].sum(1), res["energy"], 1e-13, f"{kind} atom_energy sum")
        assert_close(res["atom_virial"].sum(1), res["virial"], 1e-12, f"{kind} atom_virial sum")
        assert np.all(res["atom_energy"][0][atype < 0] == 0.0)
        assert np.all(res["atom_virial"][0][atype < 0] == 0.0)
        # Total force vanishes (translation invariance of E).
        assert np.abs(res["force"][0].sum(0)).max() < tol(name, 1e-12, 1e-5)
        assert np.isfinite(res["atom_virial"]).all()


# === symmetries ==============================================================================
def _compare(a: dict, b: dict, rtol: float, what: str) -> None:
    for key in ("energy", "atom_energy", "force", "virial", "atom_virial"):
        assert_close(a[key], b[key], rtol, f"{what}: {key}")


@pytest.mark.parametrize("kind", ["pbc", "nopbc", "thin"])
@pytest.mark.parametrize("name", NAMES)
def test_invariances(name: str, kind: str) -> None:
    model = model_for(name)
    rtol = tol(name, 1e-11, 2e-5)
    coord, atype, box, fp, ap = system(name, kind, seed=4, n_virtual=1)
    ref = evaluate(model, coord, atype, box, fp, ap)
    rng = np.random.default_rng(11)
    n = coord.shape[0]

    # Rotation of coordinates and cell: E invariant, F → F R, V → Rᵀ V R.
    rot = random_rotation(rng)
    res = evaluate(model, coord @ rot, atype, None if box is None else box @ rot, fp, ap)
    expect = {
        "energy": ref["energy"], "atom_energy": ref["atom_energy"], "force": ref["force"] @ rot,
        "virial": rot.T @ ref["virial"] @ rot, "atom_virial": rot.T @ ref["atom_virial"] @ rot,
    }
    _compare(res, expect, rtol, "rotation")

    # Translation.
    res = evaluate(model, coord + rng.normal(scale=3.0, size=3), atype, box, fp, ap)
    _compare(res, ref, rtol, "translation")

    # Permutation (atom 0 stays: padding slots take its type, docs/design.md, "Type embedding").
    perm = np.concatenate([[0], 1 + rng.permutation(n - 1)])
    res = evaluate(model, coord[perm], atype[perm], box, fp, None if ap is None else ap[perm])
    inv = np.argsort(perm)
    for key in ("atom_energy", "force", "atom_virial"):
        res[key] = res[key][:, inv]
    _compare(res, ref, rtol, "permutation")

    # Another periodic image of every atom.
    if box is not None:
        shifts = rng.integers(-2, 3, size=(n, 3))
        res = evaluate(model, coord + shifts @ box, atype, box, fp, ap)
        _compare(res, ref, rtol, "periodic images")


@pytest.mark.parametrize("name", NAMES)
def test_virtual_atoms_change_nothing(name: str) -> None:
    model = model_for(name)
    for kind in ("pbc", "nopbc", "thin"):
        coord, atype, box = make_system(kind, 5)
        n = coord.shape[0]
        rng = np.random.default_rng(6)
        # Virtual atoms anywhere: on top of a real atom, close to one, far away.
        extra = np.stack([coord[1], coord[2] + 0.2, rng.uniform(-2, 8, size=3), coord[0] + 0.05])
        # insertion points (never before atom 0, docs/design.md, "Type embedding")
        where = np.array([1, 3, n, n])
        coord_v = np.insert(coord, where, extra, axis=0)
        atype_v = np.insert(atype, where, -1)
        real = atype_v >= 0
        fp, ap_v = params_for(model, 1, coord_v.shape[0])
        fp = None if fp is None else fp[0]
        ap_v = None if ap_v is None else ap_v[0]
        ref = evaluate(model, coord, atype, box, fp, None if ap_v is None else ap_v[real])
        res = evaluate(model, coord_v, atype_v, box, fp, ap_v)
        rtol = tol(name, 1e-12, 1e-5)
        assert_close(res["energy"], ref["energy"], rtol, f"{kind}: energy")
        assert_close(res["virial"], ref["virial"], rtol, f"{kind}: virial")
        for key in ("atom_energy", "force", "atom_virial"):
            assert_close(res[key][:, real], ref[key], rtol, f"{kind}: {key}")
            assert np.all(res[key][:, ~real] == 0.0), key


# === smoothness at the cutoff ================================================================
def continuous_at_rcut(name: str, tc: int, tb: int, t0: int) -> bool:
    """Whether the spec makes E continuous when a (tc, tb) pair crosses rcut.

    ``t0`` is the type of atom 0, whose type (embedding) padding slots take (docs/design.md,
    "Type embedding"). A
    neighbour at r → rcut⁻ has s → 0 and R̃ → 0, so it matches a padding slot except:

    - non-smooth attention (docs/design.md, "Gated attention") gives it a finite softmax weight:
    every other row of the
      centre changes by O(1) when it enters;
    - with davg ≠ 0 the padding row R = −davg/dstd is non-zero, so the G row of the slot
      enters T1 = GᵀR (docs/design.md, "Descriptor output"); G depends on the neighbour type
      (concat, or strip without
      smoothing) while padding uses the type of atom 0;
    - a descriptor-excluded pair has R = 0 (κ), padding has −davg/dstd (docs/design.md,
    "Padding and exclusion").
    A model-level excluded pair (docs/design.md, "Pair exclusion") is padding on both sides of rcut.
    """
    cfg = config(name)
    d = cfg["descriptor"]
    pair = {(tc, tb), (tb, tc)}
    if pair & {tuple(p) for p in cfg["pair_exclude_types"]}:
        return True
    davg = not d["set_davg_zero"]
    smooth = d["smooth_type_embedding"]
    if pair & {tuple(p) for p in d["exclude_types"]}:
        return not davg
    if d["attn_layer"] > 0 and not smooth:
        return False
    if davg and not (d["tebd_input_mode"] == "strip" and smooth):
        return tb == t0 and tc == t0
    return True


def _crossing_frames(types: tuple[int, int, int], d_values):
    """A cluster; atom C has the largest x; B sits at C + d·x̂, so only C can see B."""
    rng = np.random.default_rng(7)
    cluster = random_positions(rng, 6, None, cluster_size=3.0)
    cluster = cluster[np.argsort(cluster[:, 0])]
    t0, tc, tb = types
    atype = np.array([t0, 2, 0, 1, 2, tc, tb])
    frames = [np.vstack([cluster, cluster[-1] + [d, 0.0, 0.0]]) for d in d_values]
    return np.stack(frames), atype


@pytest.mark.parametrize("types", [(0, 1, 2), (1, 1, 1)], ids=["mixed", "same"])
@pytest.mark.parametrize("name", NAMES)
def test_continuity_across_rcut(name: str, types) -> None:
    model = model_for(name)
    frames, atype = _crossing_frames(types, [RCUT - 1e-8, RCUT, RCUT + 1e-8, RCUT - 0.5])
    fp, ap = params_for(model, 1, atype.size)
    res = evaluate(model, frames, atype, None, None if fp is None else fp[0],
                   None if ap is None else ap[0])
    e, f = res["energy"], res["force"]
    # Sanity: B interacts with C at rcut − 0.5.
    assert abs(e[3] - e[2]) > 1e-8
    jump_e = max(abs(e[0] - e[2]), abs(e[1] - e[2]))
    jump_f = max(np.abs(f[0] - f[2]).max(), np.abs(f[1] - f[2]).max())
    t0, tc, tb = types
    if continuous_at_rcut(name, tc, tb, t0):
        assert jump_e < tol(name, 1e-10, 1e-5), f"energy jumps by {jump_e:.3e} at rcut"
        assert jump_f < tol(name, 1e-10, 1e-5), f"force jumps by {jump_f:.3e} at rcut"
    else:
        # Documented DeePMD behaviour (see continuous_at_rcut): the energy does jump.
        assert jump_e > 1e-7, f"expected a discontinuity at rcut, got {jump_e:.3e}"


# === batching, precision, lower interface ====================================================
@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_single_frames(name: str) -> None:
    model = model_for(name)
    for kind in ("pbc", "thin", "nopbc"):
        c1, a1, box1 = make_system(kind, 8, n_virtual=1)
        c2, _, box2 = make_system(kind, 9, n_virtual=1)
        c2 = c2[: c1.shape[0]]  # same nloc; frames share the types
        if box2 is not None:
            c2 = c2 * 1.1
            box2 = box2 * 1.1
        coords = np.stack([c1, c2])
        boxes = None if box1 is None else np.stack([box1, box2])
        fp, ap = params_for(model, 2, c1.shape[0])
        both = evaluate(model, coords, a1, boxes, fp, ap)
        for f in range(2):
            one = evaluate(model, coords[f], a1, None if boxes is None else boxes[f],
                           None if fp is None else fp[f], None if ap is None else ap[f])
            for key in one:
                assert_close(both[key][f], one[key][0], tol(name, 1e-13, 1e-6),
                             f"{kind} frame {f}: {key}", atol=1e-13)


@pytest.mark.parametrize("name", NAMES)
def test_padding_trimming_is_exact(name: str) -> None:
    """The descriptor's padding trimming reproduces the dense N_c-slot evaluation (docs/design.md,
    "Gated attention" and "Descriptor output")."""
    model = model_for(name)
    assert model.descriptor.trim_padding
    dense = copy.deepcopy(model)
    dense.descriptor.trim_padding = False
    for kind in ("pbc", "nopbc"):
        coord, atype, box, fp, ap = system(name, kind, seed=18, n_virtual=1)
        _compare(evaluate(model, coord, atype, box, fp, ap),
                 evaluate(dense, coord, atype, box, fp, ap), tol(name, 1e-12, 1e-5), kind)


@pytest.mark.parametrize("name", sorted(FLOAT32))
def test_float32_agrees_with_float64_twin(name: str) -> None:
    model32 = model_for(name)
    desc, fit, mdl = copy.deepcopy(CONFIGS[name])
    desc["precision"] = fit["precision"] = "float64"
    model64 = make_model(small_model_config(desc, fit, **mdl))
    model64.load_state_dict(model32.state_dict())  # the same weights, cast to float64
    assert model32.descriptor.davg.dtype == torch.float32
    assert model64.descriptor.davg.dtype == torch.float64
    for kind in ("pbc", "nopbc", "thin"):
        coord, atype, box = make_system(kind, 10, n_virtual=1)
        r32 = evaluate(model32, coord, atype, box)
        r64 = evaluate(model64, coord, atype, box)
        assert r32["energy"].dtype == np.float64  # outputs in the global precision
        for key in r64:
            assert_close(r32[key], r64[key], 1e-4, f"{kind}: {key}")
            assert np.abs(r32[key] - r64[key]).max() > 0  # really computed in float32


@pytest.mark.parametrize("name", ["concat", "v2", "pair_exclude"])
def test_lower_interface_neighbour_order_and_width(name: str) -> None:
    """Valid neighbours in any order, and extra −1 columns, leave every output unchanged."""
    model = model_for(name)
    coord, atype, box = make_system("pbc", 12, n_virtual=1)
    c = torch.tensor(coord)[None]
    a = torch.tensor(atype)[None]
    b = torch.tensor(box)[None]
    ext_coord, ext_atype, mapping, nlist = build_extended_system(c, a, b, RCUT, model.nnei)
    ref = model.forward_lower(ext_coord, ext_atype, nlist, mapping, do_atomic_virial=True)
    rng = np.random.default_rng(0)
    shuffled = nlist.clone()
    for i in range(nlist.shape[1]):
        nv = int((nlist[0, i] >= 0).sum())
        shuffled[0, i, :nv] = nlist[0, i, torch.as_tensor(rng.permutation(nv))]
    wide = torch.cat([shuffled, torch.full((1, nlist.shape[1], 7), -1)], dim=-1)
    for variant in (shuffled, format_nlist(ext_coord, wide, model.nnei, RCUT)):
        out = model.forward_lower(ext_coord, ext_atype, variant, mapping, do_atomic_virial=True)
        for key in ("energy", "atom_energy", "force", "virial", "atom_virial", "extended_force"):
            assert_close(out[key].detach().numpy(), ref[key].detach().numpy(), 1e-12, key)


# === specific semantics ======================================================================
def test_padding_takes_type_of_atom_zero() -> None:
    """docs/design.md, "Type embedding": padding slots gather the type embedding of extended atom 0.

    With davg ≠ 0 (concat) the padding rows enter T1, so the energy depends on which
    type sits at index 0: a permutation moving another type there changes E. Without
    davg (or with se_atten_v2's smooth strip) it does not.
    """
    coord, atype, box = make_system("pbc", 13)
    j = int(np.flatnonzero(atype != atype[0])[0])
    perm = np.arange(coord.shape[0])
    perm[[0, j]] = perm[[j, 0]]
    for name, changes in (("davg_concat", True), ("concat", False), ("v2", False)):
        model = model_for(name)
        e = evaluate(model, coord, atype, box)["energy"][0]
        ep = evaluate(model, coord[perm], atype[perm], box)["energy"][0]
        if changes:
            assert abs(e - ep) > 1e-8, name
        else:
            assert abs(e - ep) < 1e-11, name


@pytest.mark.parametrize("name", ["pair_exclude_davg_concat", "v2_pair_exclude", "pair_exclude"])
def test_pair_exclusion_equals_padding(name: str) -> None:
    """docs/design.md, "Pair exclusion": a model-excluded slot is indistinguishable from padding
    (−1) in the list."""
    model = model_for(name)
    coord, atype, box = make_system("pbc", 14)
    c, a, b = (torch.tensor(x)[None] for x in (coord, atype, box))
    ext_coord, ext_atype, mapping, nlist = build_extended_system(c, a, b, RCUT, model.nnei)
    idx = nlist.clamp(min=0)
    nei_type = torch.gather(ext_atype, 1, idx.reshape(1, -1)).reshape(nlist.shape)
    excluded = torch.zeros_like(nlist, dtype=torch.bool)
    for ti, tj in model.pair_exclude_types:
        for x, y in ((ti, tj), (tj, ti)):
            excluded |= (a[:, :, None] == x) & (nei_type == y) & (nlist >= 0)
    assert excluded.any()
    # holes, not compacted (docs/design.md, "Pair exclusion")
    holes = torch.where(excluded, -1, nlist)
    ref = model.forward_lower(ext_coord, ext_atype, nlist, mapping, do_atomic_virial=True)
    # Without model-level exclusion, the holed list must give the same numbers.
    plain = copy.deepcopy(model)
    plain.has_pair_exclusion = False
    out = plain.forward_lower(ext_coord, ext_atype, holes, mapping, do_atomic_virial=True)
    for key in ("energy", "atom_energy", "force", "virial", "atom_virial"):
        assert_close(out[key].detach().numpy(), ref[key].detach().numpy(), 1e-13, key)


@pytest.mark.parametrize("name", ["exclude", "pair_exclude"])
def test_excluded_dimer_is_two_isolated_atoms(name: str) -> None:
    """An excluded (1, 2) pair does not interact (davg = 0): E(dimer) = E(1) + E(2), F = 0."""
    model = model_for(name)
    dimer = np.array([[0.0, 0.0, 0.0], [1.7, 0.4, -0.3]])
    types = np.array([1, 2])
    res = evaluate(model, dimer, types)
    e1 = evaluate(model, dimer[:1], types[:1])["energy"][0]
    e2 = evaluate(model, dimer[1:], types[1:])["energy"][0]
    assert abs(res["energy"][0] - e1 - e2) < 1e-12
    assert np.abs(res["force"]).max() < 1e-14
    # ... whereas an included pair interacts.
    inter = evaluate(model, dimer, np.array([1, 1]))
    assert np.abs(inter["force"]).max() > 1e-4


def test_isolated_atoms_are_finite() -> None:
    """Centres without neighbours (NaN risk in non-smooth attention, docs/design.md,
    "Gated attention") give finite zeros."""
    for name in NAMES:
        model = model_for(name)
        coord = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
        fp, ap = params_for(model, 1, 3)
        res = evaluate(model, coord, np.array([0, 1, 2]), None,
                       None if fp is None else fp[0], None if ap is None else ap[0])
        for key, val in res.items():
            assert np.isfinite(val).all(), (name, key)
        assert np.all(res["force"] == 0.0), name


def test_atom_exclude_types_zero_atomic_energy() -> None:
    model = model_for("atom_exclude")
    coord, atype, box = make_system("pbc", 15)
    res = evaluate(model, coord, atype, box)
    assert np.all(res["atom_energy"][0][atype == 1] == 0.0)
    assert np.all(res["atom_energy"][0][atype != 1] != 0.0)
    # Excluded atoms still act as neighbours: they feel forces.
    assert np.abs(res["force"][0][atype == 1]).min() > 0.0


def test_fparam_aparam_enter_the_energy() -> None:
    model = model_for("fparam_aparam")
    coord, atype, box = make_system("pbc", 16)
    fp, ap = params_for(model, 1, coord.shape[0])
    ref = evaluate(model, coord, atype, box, fp[0], ap[0])
    res = evaluate(model, coord, atype, box, fp[0] + [0.1, 0.0], ap[0])
    assert np.abs(res["atom_energy"] - ref["atom_energy"]).min() > 0  # fparam: every atom
    ap2 = ap[0].copy()
    ap2[3] += 0.1
    res = evaluate(model, coord, atype, box, fp[0], ap2)
    diff = np.abs(res["atom_energy"] - ref["atom_energy"])[0]
    assert diff[3] > 0 and np.all(np.delete(diff, 3) == 0)  # aparam: that atom only
    with pytest.raises(ValueError, match="fparam"):
        evaluate(model, coord, atype, box, None, ap[0])


def test_vacuum_removal_atom_ener() -> None:
    """docs/design.md, "Fitting net and output bias": with atom_ener, FN evaluated on x⁰ (descriptor
    zeroed) is subtracted."""
    name = "atom_ener"
    model = model_for(name)
    desc, fit, mdl = copy.deepcopy(CONFIGS[name])
    fit["atom_ener"] = []
    plain = make_model(small_model_config(desc, fit, **mdl))
    plain.load_state_dict(model.state_dict())
    assert model.fitting.remove_vacuum and not plain.fitting.remove_vacuum
    coord, atype, box = make_system("pbc", 17)
    res = evaluate(model, coord, atype, box)["atom_energy"][0]
    ref = evaluate(plain, coord, atype, box)["atom_energy"][0]
    x0 = torch.zeros(1, model.fitting.dim_descrpt, dtype=torch.float64)
    vacuum = model.fitting.net(x0).item()
    assert np.abs(res - (ref - vacuum)).max() < 1e-12
    assert abs(vacuum) > 1e-3
