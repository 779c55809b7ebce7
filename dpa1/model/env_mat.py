"""Switching function and environment matrix (spec §3)."""

from __future__ import annotations

import torch
from torch import Tensor


def smooth_switch(r: Tensor, rcut_smth: float, rcut: float) -> Tensor:
    """``s(r) = 1 − 10u³ + 15u⁴ − 6u⁵`` with ``u = clip((r − r_s)/(r_c − r_s), 0, 1)``: C² at both ends."""
    u = torch.clamp((r - rcut_smth) / (rcut - rcut_smth), 0.0, 1.0)
    return u * u * u * (-6.0 * u * u + 15.0 * u - 10.0) + 1.0


def env_matrix(
    rij: Tensor, mask: Tensor, rcut: float, rcut_smth: float, protection: float
) -> tuple[Tensor, Tensor]:
    """Raw environment-matrix rows ``R̃`` (§3.2).

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
