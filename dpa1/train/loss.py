"""Energy/force/virial loss ``"ener"`` with DeePMD-kit PyTorch-backend semantics (docs/design.md,
"Loss").

Shapes: ``nf`` frames, ``nloc`` local atoms per frame (virtual atoms, ``atype == -1``, included).

Reductions (docs/design.md, "Loss"), with ``N_f`` the number of real atoms of frame ``f``
and ``mean_f`` the mean over frames:

* frame terms (energy, virial): ``mean_f[err_f / N_f^q]``; ``q = 1`` (legacy default) or
  ``q = 2`` (``intensive_ener_virial``) for MSE, always ``q = 1`` for MAE, and Huber is applied
  to the already per-atom residual ``dX / N_f``;
* per-atom terms (force, prefactor force, atomic energy):
  ``mean_f[sum_{real i, c} err_{f,i,c} / (ncomp N_f)]`` -- virtual atoms never contribute.
  (DeePMD-kit 3.2.0 instead pools these over the batch, ``sum_{f,i,c} err / (ncomp sum_f N_f)``;
  the two agree whenever all frames of a batch have the same number of real atoms, i.e. always
  except for mixed-type data padded unequally. This follows the spec; see ``_Batch.atom_mean``.)

A term is active only if both its start and limit prefactors are non-zero (PyTorch rule, not the
TF/dpmodel "or"); the prefactor ``limit + (start - limit) * lr / start_lr`` is multiplied by the
batch's ``find_*`` flag, and a term whose label is absent contributes nothing and reports ``nan``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["EnerLoss"]

# Keys of the input.json "loss" section for type "ener" (docs/design.md, "Input file").
_LOSS_KEYS = (
    "start_pref_e", "limit_pref_e", "start_pref_f", "limit_pref_f", "start_pref_v",
    "limit_pref_v", "start_pref_ae", "limit_pref_ae", "start_pref_pf", "limit_pref_pf",
    "start_pref_gf", "limit_pref_gf", "numb_generalized_coord", "start_pref_h", "limit_pref_h",
    "relative_f", "enable_atom_ener_coeff", "use_huber", "huber_delta", "loss_func",
    "f_use_norm", "intensive_ener_virial", "use_default_pf",
)  # fmt: skip


def _huber(res: Tensor, delta: float) -> Tensor:
    """Element-wise Huber: ``0.5 e^2`` if ``|e| <= delta`` else ``delta (|e| - delta / 2)``."""
    abs_res = res.abs()
    return torch.where(abs_res <= delta, 0.5 * res.square(), delta * (abs_res - 0.5 * delta))


class EnerLoss(torch.nn.Module):
    """DeePMD ``ener`` loss: prefactor-weighted energy, force, virial, atomic-energy and
    prefactor-force terms.

    Parameters
    ----------
    starter_learning_rate
        The schedule's ``start_lr``; prefactors interpolate with ``lr / starter_learning_rate``.
    start_pref_X, limit_pref_X
        Prefactors at ``lr = start_lr`` and ``lr -> 0`` for X in e, f, v, ae, pf.
    relative_f
        If set, force differences are divided per atom by ``|F_label| + relative_f``.
    enable_atom_ener_coeff
        Predicted energy is ``sum_i c_i E_i`` with ``c = label["atom_ener_coeff"]`` (default 1).
    use_huber, huber_delta
        Huber loss for the e/f/v (and ae) terms; delta is one float or ``[d_e, d_f, d_v]``.
    loss_func
        ``"mse"`` (default) or ``"mae"``; with ``"mae"`` the metrics are ``mae_*``, not ``rmse_*``.
    f_use_norm
        With mae/Huber, use the per-atom norm ``|dF_i|`` instead of the three components.
    intensive_ener_virial
        MSE energy/virial terms scale as ``1/N^2`` instead of the legacy ``1/N``.
    use_default_pf
        ``atom_pref`` defaults to 1 (and counts as found) when the data have none.
    start_pref_gf, limit_pref_gf, numb_generalized_coord, start_pref_h, limit_pref_h
        Generalized-force and Hessian terms are not implemented: accepted only while inactive.
    **ignored
        Extra keyword arguments are ignored (e.g. ``inference``).
    """

    def __init__(
        self,
        starter_learning_rate: float,
        start_pref_e: float = 0.02,
        limit_pref_e: float = 1.0,
        start_pref_f: float = 1000.0,
        limit_pref_f: float = 1.0,
        start_pref_v: float = 0.0,
        limit_pref_v: float = 0.0,
        start_pref_ae: float = 0.0,
        limit_pref_ae: float = 0.0,
        start_pref_pf: float = 0.0,
        limit_pref_pf: float = 0.0,
        relative_f: float | None = None,
        enable_atom_ener_coeff: bool = False,
        use_huber: bool = False,
        huber_delta: float | Sequence[float] = 0.01,
        loss_func: str = "mse",
        f_use_norm: bool = False,
        intensive_ener_virial: bool = False,
        use_default_pf: bool = False,
        start_pref_gf: float = 0.0,
        limit_pref_gf: float = 0.0,
        numb_generalized_coord: int = 0,
        start_pref_h: float = 0.0,
        limit_pref_h: float = 0.0,
        **ignored: Any,
    ) -> None:
        super().__init__()
        if not starter_learning_rate > 0:
            raise ValueError(f"starter_learning_rate ({starter_learning_rate}) must be positive")
        if loss_func not in ("mse", "mae"):
            raise ValueError(f"loss_func must be 'mse' or 'mae', got {loss_func!r}")
        # Same activity rules as DeePMD: gf needs both prefactors, the Hessian either one.
        if start_pref_gf != 0.0 and limit_pref_gf != 0.0:
            raise NotImplementedError("the generalized-force loss (pref_gf) is not implemented")
        if start_pref_h != 0.0 or limit_pref_h != 0.0:
            raise NotImplementedError("the Hessian loss (pref_h) is not implemented")

        self.starter_learning_rate = float(starter_learning_rate)
        self.prefs: dict[str, tuple[float, float]] = {
            "e": (float(start_pref_e), float(limit_pref_e)),
            "f": (float(start_pref_f), float(limit_pref_f)),
            "v": (float(start_pref_v), float(limit_pref_v)),
            "ae": (float(start_pref_ae), float(limit_pref_ae)),
            "pf": (float(start_pref_pf), float(limit_pref_pf)),
        }
        # PyTorch backend: active only if BOTH prefactors are non-zero (docs/design.md, "Loss").
        self.active = {k: s != 0.0 and lim != 0.0 for k, (s, lim) in self.prefs.items()}
        self.relative_f = None if relative_f is None else float(relative_f)
        self.enable_atom_ener_coeff = bool(enable_atom_ener_coeff)
        self.use_huber = bool(use_huber)
        self.loss_func = loss_func
        self.f_use_norm = bool(f_use_norm)
        self.intensive_ener_virial = bool(intensive_ener_virial)
        self.use_default_pf = bool(use_default_pf)
        if isinstance(huber_delta, (list, tuple)):
            if len(huber_delta) != 3:
                raise ValueError("huber_delta must be a float or a list [d_e, d_f, d_v]")
            self.huber_delta = tuple(float(d) for d in huber_delta)
        else:
            self.huber_delta = (float(huber_delta),) * 3
        if self.f_use_norm and not (self.use_huber or loss_func == "mae"):
            raise ValueError("f_use_norm requires use_huber = true or loss_func = 'mae'")
        if self.use_huber and (self.active["pf"] or self.relative_f is not None):
            raise ValueError("Huber loss is not implemented with pref_pf or relative_f")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, loss_cfg: Mapping[str, Any], start_lr: float) -> EnerLoss:
        """Build from the ``"loss"`` section of input.json (docs/design.md, "Input file") and the
        LR's ``start_lr``.

        ``type`` must be ``"ener"``/``"ener_hess"`` (or absent); ``_comment*`` keys are ignored;
        unknown keys raise ``ValueError``. ``null`` values fall back to the defaults.
        """
        loss_type = loss_cfg.get("type", "ener")
        if loss_type not in (None, "ener", "ener_hess"):
            raise NotImplementedError(f"loss.type = {loss_type!r} is not supported (only 'ener')")
        kwargs: dict[str, Any] = {}
        for key, val in loss_cfg.items():
            if key == "type" or key.startswith("_comment"):
                continue
            if key not in _LOSS_KEYS:
                hint = difflib.get_close_matches(key, _LOSS_KEYS, n=1)
                msg = f"unknown key loss.{key}"
                raise ValueError(msg + (f"; did you mean {hint[0]!r}?" if hint else ""))
            if val is not None:
                kwargs[key] = val
        return cls(starter_learning_rate=start_lr, **kwargs)

    # ------------------------------------------------------------------ introspection
    @property
    def needs_energy(self) -> bool:
        """Whether the model must output ``energy``."""
        return self.active["e"]

    @property
    def needs_force(self) -> bool:
        """Whether the model must output ``force``."""
        return self.active["f"] or self.active["pf"]

    @property
    def needs_virial(self) -> bool:
        """Whether the model must output ``virial``."""
        return self.active["v"]

    @property
    def needs_atomic(self) -> bool:
        """Whether the model must output ``atom_energy``."""
        return self.active["ae"] or (self.active["e"] and self.enable_atom_ener_coeff)

    @property
    def label_keys(self) -> list[str]:
        """Label arrays the data loader should provide (each with a ``find_<key>`` flag)."""
        keys = []
        if self.active["e"]:
            keys.append("energy")
        if self.needs_force:
            keys.append("force")
        if self.active["v"]:
            keys.append("virial")
        if self.active["ae"]:
            keys.append("atom_ener")
        if self.active["pf"]:
            keys.append("atom_pref")
        if self.enable_atom_ener_coeff and self.active["e"]:
            keys.append("atom_ener_coeff")
        return keys

    def metric_keys(self) -> list[str]:
        """Metric names reported by :meth:`forward`: ``rmse`` plus one per active term."""
        prefix = "mae" if self.loss_func == "mae" else "rmse"
        return ["rmse"] + [f"{prefix}_{k}" for k in ("e", "f", "v", "ae", "pf") if self.active[k]]

    def pref(self, key: str, lr: float) -> float:
        """Prefactor of term ``key`` at learning rate ``lr`` (before the find flag)."""
        start, limit = self.prefs[key]
        return limit + (start - limit) * lr / self.starter_learning_rate

    # ------------------------------------------------------------------ loss
    def forward(
        self, pred: Mapping[str, Tensor], label: Mapping[str, Any], lr: float
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss and metrics of one batch.

        Parameters
        ----------
        pred
            Model outputs: ``energy (nf, 1)``, ``force (nf, nloc, 3)``, ``virial (nf, 9)``,
            ``atom_energy (nf, nloc, 1)``; only those the active terms need.
        label
            ``atype (nf, nloc)`` (-1 = virtual atom), ``energy (nf, 1)``, ``force (nf, nloc, 3)``,
            ``virial (nf, 9)``, ``atom_ener (nf, nloc)``, ``atom_pref (nf, nloc)``,
            ``atom_ener_coeff (nf, nloc)`` and the flags ``find_<key>`` (float or 0-d tensor).
        lr
            Learning rate of this step (sets the prefactors).

        Returns
        -------
        loss
            0-d tensor in the dtype of ``pred``, differentiable w.r.t. the predictions.
        metrics
            Python floats for :meth:`metric_keys`; ``nan`` where the label is missing.
        """
        ref = next(v for v in pred.values() if torch.is_tensor(v) and v.is_floating_point())
        b = _Batch(label, ref.dtype, ref.device)
        # Every metric starts as nan and is overwritten only when its label is present.
        metrics = dict.fromkeys(self.metric_keys(), float("nan"))
        loss = torch.zeros((), dtype=b.dtype, device=b.device)
        if self.active["e"]:
            loss = loss + self._energy_term(pred, b, lr, metrics)
        if self.needs_force:
            loss = loss + self._force_terms(pred, b, lr, metrics)
        if self.active["v"]:
            loss = loss + self._virial_term(pred, b, lr, metrics)
        if self.active["ae"]:
            loss = loss + self._atom_ener_term(pred, b, lr, metrics)
        # sqrt of the prefactor-weighted total, as DeePMD (nan if a negative pref made it < 0).
        metrics["rmse"] = float(loss.detach().sqrt())
        return loss, metrics

    def _energy_term(
        self, pred: Mapping[str, Tensor], b: _Batch, lr: float, metrics: dict[str, float]
    ) -> Tensor | float:
        """``pref_e * mean_f[dE^2 / N^q]`` (mse), Huber of ``dE/N``, or ``mean_f[|dE| / N]``."""
        find = b.flag("energy")
        if not find:
            return 0.0
        if self.enable_atom_ener_coeff:
            # E = sum_i c_i E_i over real atoms (c defaults to 1), e.g. for reaction energies.
            coeff = b.atomic("atom_ener_coeff")[..., 0] if "atom_ener_coeff" in b.label else 1.0
            e_pred = b.mask_atoms(coeff * pred["atom_energy"].reshape(b.nf, -1)).sum(-1)
        else:
            e_pred = pred["energy"].reshape(b.nf)
        diff = b.frame("energy").reshape(b.nf) - e_pred  # (nf,)
        if self.loss_func == "mae":
            term = (diff.abs() / b.natoms).mean()
            metrics["mae_e"] = term.item()
        else:
            if self.use_huber:
                term = _huber(diff / b.natoms, self.huber_delta[0]).mean()
            else:
                term = (diff.square() / b.natoms**self._q).mean()
            metrics["rmse_e"] = (diff / b.natoms).square().mean().sqrt().item()
        return self.pref("e", lr) * find * term

    def _force_terms(
        self, pred: Mapping[str, Tensor], b: _Batch, lr: float, metrics: dict[str, float]
    ) -> Tensor | float:
        """Force term ``mean_f[sum dF^2 / 3N]`` (or mae/Huber) plus the atom_pref-weighted one."""
        find_f = b.flag("force")
        if not find_f:
            return 0.0
        mae = self.loss_func == "mae"
        f_label = b.atomic("force")  # (nf, nloc, 3), zero at virtual atoms
        diff = f_label - pred["force"].reshape(b.nf, -1, 3)  # (nf, nloc, 3)
        if self.relative_f is not None:
            diff = diff / (f_label.norm(dim=-1, keepdim=True) + self.relative_f)
        diff = b.mask_atoms(diff)
        total: Tensor | float = 0.0
        if self.active["f"]:
            res = diff.norm(dim=-1, keepdim=True) if self.f_use_norm else diff  # (nf,nloc,1|3)
            if mae:
                term = b.atom_mean(res.abs())
                metrics["mae_f"] = term.item()
            else:
                l2 = b.atom_mean(diff.square())
                term = b.atom_mean(_huber(res, self.huber_delta[1])) if self.use_huber else l2
                metrics["rmse_f"] = l2.sqrt().item()
            total = total + self.pref("f", lr) * find_f * term
        if self.active["pf"]:
            find_pf = 1.0 if self.use_default_pf else b.flag("atom_pref")
            if find_pf:
                # (nf, nloc, 1) weights broadcast over xyz ("repeat 3" in DeePMD).
                w = b.atomic("atom_pref") if "atom_pref" in b.label else 1.0
                term = b.atom_mean(w * (diff.abs() if mae else diff.square()))
                metrics["mae_pf" if mae else "rmse_pf"] = term.item() if mae else term.sqrt().item()
                total = total + self.pref("pf", lr) * find_f * find_pf * term
        return total

    def _virial_term(
        self, pred: Mapping[str, Tensor], b: _Batch, lr: float, metrics: dict[str, float]
    ) -> Tensor | float:
        """``pref_v * mean_f[(1/9) sum_c dV_c^2 / N^q]`` (mse), Huber of ``dV/N``, or mae."""
        find = b.flag("virial")
        if not find:
            return 0.0
        diff = b.frame("virial").reshape(b.nf, 9) - pred["virial"].reshape(b.nf, 9)
        if self.loss_func == "mae":
            term = (diff.abs().mean(-1) / b.natoms).mean()
            metrics["mae_v"] = term.item()
        else:
            sq = diff.square().mean(-1)  # (nf,)
            if self.use_huber:
                term = _huber(diff / b.natoms[:, None], self.huber_delta[2]).mean()
            else:
                term = (sq / b.natoms**self._q).mean()
            metrics["rmse_v"] = (sq / b.natoms**2).mean().sqrt().item()
        return self.pref("v", lr) * find * term

    def _atom_ener_term(
        self, pred: Mapping[str, Tensor], b: _Batch, lr: float, metrics: dict[str, float]
    ) -> Tensor | float:
        """``pref_ae * mean_f[sum_i dE_i^2 / N]`` (or mae/Huber) over real atoms."""
        find = b.flag("atom_ener")
        if not find:
            return 0.0
        diff = b.atomic("atom_ener") - pred["atom_energy"].reshape(b.nf, -1, 1)  # (nf, nloc, 1)
        if self.loss_func == "mae":
            term = b.atom_mean(diff.abs())
            metrics["mae_ae"] = term.item()
        else:
            l2 = b.atom_mean(diff.square())
            # DeePMD 3.2 also applies Huber (with the energy delta) to atomic energies.
            term = b.atom_mean(_huber(diff, self.huber_delta[0])) if self.use_huber else l2
            metrics["rmse_ae"] = l2.sqrt().item()
        return self.pref("ae", lr) * find * term

    @property
    def _q(self) -> int:
        """Power of N in the MSE energy/virial normalisation (docs/design.md, "Loss")."""
        return 2 if self.intensive_ener_virial else 1

    def extra_repr(self) -> str:
        active = ",".join(k for k, on in self.active.items() if on)
        return f"active={active}, loss_func={self.loss_func}, huber={self.use_huber}"


class _Batch:
    """Label access and masked reductions for one batch, in the dtype of the predictions.

    Attributes: ``real (nf, nloc)`` bool mask of real atoms, ``natoms (nf,)`` real-atom counts.
    """

    def __init__(self, label: Mapping[str, Any], dtype: torch.dtype, device: torch.device) -> None:
        self.label, self.dtype, self.device = label, dtype, device
        atype = torch.as_tensor(label["atype"], device=device)
        self.nf = atype.shape[0]
        self.real = atype.reshape(self.nf, -1) >= 0  # (nf, nloc)
        # A frame without real atoms cannot occur in practice; clamp to avoid 0/0.
        self.natoms = self.real.sum(-1).to(dtype).clamp(min=1.0)  # (nf,)
        self._zero = torch.zeros((), dtype=dtype, device=device)

    def flag(self, key: str) -> float:
        """``find_<key>`` as a float; 0 if the label is absent.

        A label present without its flag counts as found (convenient for hand-made batches;
        the data loader always sets the flags).
        """
        if key not in self.label:
            return 0.0
        return float(self.label.get("find_" + key, 1.0))

    def frame(self, key: str) -> Tensor:
        """A per-frame label in the working dtype."""
        return torch.as_tensor(self.label[key], device=self.device).to(self.dtype)

    def mask_atoms(self, x: Tensor) -> Tensor:
        """Zero ``x (nf, nloc[, k])`` at virtual atoms.

        ``where`` rather than a product: garbage (even nan/inf) must not leak into the loss or,
        through 0 * nan, into the gradient.
        """
        real = self.real if x.ndim == 2 else self.real[:, :, None]
        return torch.where(real, x, self._zero)

    def atomic(self, key: str) -> Tensor:
        """A per-atom label as ``(nf, nloc, k)``, zeroed at virtual atoms."""
        return self.mask_atoms(self.frame(key).reshape(self.nf, self.real.shape[1], -1))

    def atom_mean(self, elem: Tensor) -> Tensor:
        """``mean_f[sum_{real i, c} elem / (ncomp N_f)]`` of ``elem (nf, nloc, ncomp)``."""
        elem = self.mask_atoms(elem)
        return (elem.sum(dim=(1, 2)) / (self.natoms * elem.shape[-1])).mean()
