"""``from dpa1.calculator import DP``: the ASE calculator (same import path as DeePMD-kit)."""

from dpa1.infer.calculator import DP

__all__ = ["DP"]
