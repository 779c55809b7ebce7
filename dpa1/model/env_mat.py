"""Switching function and environment matrix (docs/design.md, "Environment matrix")."""

from __future__ import annotations

import torch
from torch import Tensor


def smooth_switch(r: Tensor, rcut_smth: float, rcut: float) -> Tensor:
    """``s(r) = 1 − 10u³ + 15u⁴ − 6u⁵`` with ``u = clip((r − r_s)/(r_c − r_s), 0, 1)``:
    C² at both ends.

    Evaluated as ``(1−u)³(1 + 3u + 6u²)``, the same polynomial factored at its triple root
    u = 1. The expanded form cancels to ``1 − (1 − ε)`` near rcut, leaving s with an absolute
    error of an ulp of 1: in float32 s is then noise (±1e-7, often exactly 0 while its
    derivative is not) within ~0.01 Å of rcut. The attention's dotr gate normalises the
    environment-matrix rows, which vanish with s there (docs/design.md, "Gated attention": u =
    R/max(‖R‖, 1e-12)), and
    differentiating that noise made float32 forces of attention models meaningless (rms
    183 eV/Å against 0.012 for the water example, in DeePMD-kit too). The factored form is
    accurate to its last bits everywhere; in float64 it moves results by round-off only.
    """
    w = torch.clamp((rcut - r) / (rcut - rcut_smth), 0.0, 1.0)  # 1 − u, exact near rcut
    u = 1.0 - w
    return w * w * w * (6.0 * u * u + 3.0 * u + 1.0)


def env_matrix(
    rij: Tensor, mask: Tensor, rcut: float, rcut_smth: float, protection: float
) -> tuple[Tensor, Tensor]:
    """Raw environment-matrix rows ``R̃`` (docs/design.md, "Environment matrix").

    Args:
        rij: ``(nf, nloc, nnei, 3)`` neighbour minus centre; padding slots may hold anything.
        mask: ``(nf, nloc, nnei)`` true for real neighbour slots.

    Returns:
        ``R̃ (nf, nloc, nnei, 4)`` = ``s(r)·(1/(r+p), r⃗/(r+p)²)``, zero on padding, and
        the switch ``s (nf, nloc, nnei)``, zero on padding.
    """
    # Padding slots get a harmless finite vector so that neither r nor its derivatives
    # become NaN (a zero vector would poison second derivatives through |r|).
    fake = torch.zeros_like(rij)
    fake[..., 0] = rcut + 1.0
    rr = torch.where(mask.unsqueeze(-1), rij, fake)
    r = torch.linalg.norm(rr, dim=-1, keepdim=True)
    rp = r + protection
    sw = smooth_switch(r, rcut_smth, rcut) * mask.unsqueeze(-1).to(r.dtype)
    env = torch.cat([1.0 / rp, rr / (rp * rp)], dim=-1) * sw
    return env, sw.squeeze(-1)
