"""Electronic-configuration type-embedding inputs (docs/design.md, "Type embedding",
``use_econf_tebd``).

Each element gets a fixed 118-dim vector: for every spatial orbital of the subshells in
``SUBSHELLS`` order (59 orbitals; within a subshell doubly occupied first, then singly, then
empty -- Hund's rule) two entries, empty -> (-1,-1), single -> (-1,+1), double -> (+1,+1); the
vector is scaled by ``1/sqrt(118)``.  This is exactly the
``normalized_electronic_configuration_embedding`` that DeePMD-kit 3.2.0
(``deepmd/utils/econf_embd.py``, consumed unchanged by ``get_econf_tebd`` in
``deepmd/dpmodel/utils/type_embed.py``) feeds to its type-embedding net.
"""

from __future__ import annotations

import re

import numpy as np

SUBSHELLS = ("1s", "2s", "2p", "3s", "3p", "3d", "4s", "4p", "4d", "4f",
             "5s", "5p", "5d", "5f", "6s", "6p", "6d", "7s", "7p")
_NORB = {"s": 1, "p": 3, "d": 5, "f": 7}
ECONF_DIM = 2 * sum(_NORB[s[1]] for s in SUBSHELLS)  # 118

# Ground-state configurations (H..Og, atomic-number order) decoded from DeePMD-kit 3.2.0's
# hard-coded table in deepmd/utils/econf_embd.py (itself generated with mendeleev); every
# subshell there is filled by Hund's rule, so the electron count per subshell determines it.
# Checked bit-for-bit against that table in tests/test_econf.py.
CONFIGURATIONS: dict[str, str] = {
    "H": "1s1", "He": "1s2", "Li": "[He] 2s1", "Be": "[He] 2s2", "B": "[He] 2s2 2p1",
    "C": "[He] 2s2 2p2", "N": "[He] 2s2 2p3", "O": "[He] 2s2 2p4", "F": "[He] 2s2 2p5",
    "Ne": "[He] 2s2 2p6", "Na": "[Ne] 3s1", "Mg": "[Ne] 3s2", "Al": "[Ne] 3s2 3p1",
    "Si": "[Ne] 3s2 3p2", "P": "[Ne] 3s2 3p3", "S": "[Ne] 3s2 3p4", "Cl": "[Ne] 3s2 3p5",
    "Ar": "[Ne] 3s2 3p6", "K": "[Ar] 4s1", "Ca": "[Ar] 4s2", "Sc": "[Ar] 3d1 4s2",
    "Ti": "[Ar] 3d2 4s2", "V": "[Ar] 3d3 4s2", "Cr": "[Ar] 3d5 4s1", "Mn": "[Ar] 3d5 4s2",
    "Fe": "[Ar] 3d6 4s2", "Co": "[Ar] 3d7 4s2", "Ni": "[Ar] 3d8 4s2",
    "Cu": "[Ar] 3d10 4s1", "Zn": "[Ar] 3d10 4s2", "Ga": "[Ar] 3d10 4s2 4p1",
    "Ge": "[Ar] 3d10 4s2 4p2", "As": "[Ar] 3d10 4s2 4p3", "Se": "[Ar] 3d10 4s2 4p4",
    "Br": "[Ar] 3d10 4s2 4p5", "Kr": "[Ar] 3d10 4s2 4p6", "Rb": "[Kr] 5s1",
    "Sr": "[Kr] 5s2", "Y": "[Kr] 4d1 5s2", "Zr": "[Kr] 4d2 5s2", "Nb": "[Kr] 4d4 5s1",
    "Mo": "[Kr] 4d5 5s1", "Tc": "[Kr] 4d5 5s2", "Ru": "[Kr] 4d7 5s1", "Rh": "[Kr] 4d8 5s1",
    "Pd": "[Kr] 4d10", "Ag": "[Kr] 4d10 5s1", "Cd": "[Kr] 4d10 5s2",
    "In": "[Kr] 4d10 5s2 5p1", "Sn": "[Kr] 4d10 5s2 5p2", "Sb": "[Kr] 4d10 5s2 5p3",
    "Te": "[Kr] 4d10 5s2 5p4", "I": "[Kr] 4d10 5s2 5p5", "Xe": "[Kr] 4d10 5s2 5p6",
    "Cs": "[Xe] 6s1", "Ba": "[Xe] 6s2", "La": "[Xe] 5d1 6s2", "Ce": "[Xe] 4f1 5d1 6s2",
    "Pr": "[Xe] 4f3 6s2", "Nd": "[Xe] 4f4 6s2", "Pm": "[Xe] 4f5 6s2", "Sm": "[Xe] 4f6 6s2",
    "Eu": "[Xe] 4f7 6s2", "Gd": "[Xe] 4f7 5d1 6s2", "Tb": "[Xe] 4f9 6s2",
    "Dy": "[Xe] 4f10 6s2", "Ho": "[Xe] 4f11 6s2", "Er": "[Xe] 4f12 6s2",
    "Tm": "[Xe] 4f13 6s2", "Yb": "[Xe] 4f14 6s2", "Lu": "[Xe] 4f14 5d1 6s2",
    "Hf": "[Xe] 4f14 5d2 6s2", "Ta": "[Xe] 4f14 5d3 6s2", "W": "[Xe] 4f14 5d4 6s2",
    "Re": "[Xe] 4f14 5d5 6s2", "Os": "[Xe] 4f14 5d6 6s2", "Ir": "[Xe] 4f14 5d7 6s2",
    "Pt": "[Xe] 4f14 5d9 6s1", "Au": "[Xe] 4f14 5d10 6s1", "Hg": "[Xe] 4f14 5d10 6s2",
    "Tl": "[Xe] 4f14 5d10 6s2 6p1", "Pb": "[Xe] 4f14 5d10 6s2 6p2",
    "Bi": "[Xe] 4f14 5d10 6s2 6p3", "Po": "[Xe] 4f14 5d10 6s2 6p4",
    "At": "[Xe] 4f14 5d10 6s2 6p5", "Rn": "[Xe] 4f14 5d10 6s2 6p6", "Fr": "[Rn] 7s1",
    "Ra": "[Rn] 7s2", "Ac": "[Rn] 6d1 7s2", "Th": "[Rn] 6d2 7s2", "Pa": "[Rn] 5f2 6d1 7s2",
    "U": "[Rn] 5f3 6d1 7s2", "Np": "[Rn] 5f4 6d1 7s2", "Pu": "[Rn] 5f6 7s2",
    "Am": "[Rn] 5f7 7s2", "Cm": "[Rn] 5f7 6d1 7s2", "Bk": "[Rn] 5f9 7s2",
    "Cf": "[Rn] 5f10 7s2", "Es": "[Rn] 5f11 7s2", "Fm": "[Rn] 5f12 7s2",
    "Md": "[Rn] 5f13 7s2", "No": "[Rn] 5f14 7s2", "Lr": "[Rn] 5f14 6d1 7s2",
    "Rf": "[Rn] 5f14 6d2 7s2", "Db": "[Rn] 5f14 6d3 7s2", "Sg": "[Rn] 5f14 6d4 7s2",
    "Bh": "[Rn] 5f14 6d5 7s2", "Hs": "[Rn] 5f14 6d6 7s2", "Mt": "[Rn] 5f14 6d7 7s2",
    "Ds": "[Rn] 5f14 6d9 7s1", "Rg": "[Rn] 5f14 6d10 7s1", "Cn": "[Rn] 5f14 6d10 7s2",
    "Nh": "[Rn] 5f14 6d10 7s2 7p1", "Fl": "[Rn] 5f14 6d10 7s2 7p2",
    "Mc": "[Rn] 5f14 6d10 7s2 7p3", "Lv": "[Rn] 5f14 6d10 7s2 7p4",
    "Ts": "[Rn] 5f14 6d10 7s2 7p5", "Og": "[Rn] 5f14 6d10 7s2 7p6",
}


def _occupations(symbol: str) -> dict[str, int]:
    """Electrons per subshell, with ``[X]`` noble-gas cores expanded."""
    occ: dict[str, int] = {}
    for tok in CONFIGURATIONS[symbol].split():
        core = re.fullmatch(r"\[(\w+)\]", tok)
        if core:
            occ.update(_occupations(core.group(1)))
        else:
            occ[tok[:2]] = int(tok[2:])
    return occ


def _spin_vector(symbol: str) -> np.ndarray:
    """The un-normalised +-1 vector (int8, length 118) of one element."""
    occ = _occupations(symbol)
    out = []
    for sub in SUBSHELLS:
        norb, ne = _NORB[sub[1]], occ.get(sub, 0)
        pairs = max(ne - norb, 0)
        singles = ne - 2 * pairs
        orbs = [2] * pairs + [1] * singles + [0] * (norb - pairs - singles)
        out += [s for o in orbs for s in ((-1, -1), (-1, 1), (1, 1))[o]]
    return np.array(out, dtype=np.int8)


def econf_inputs(type_map: list[str]) -> np.ndarray:
    """``(ntypes, 118)`` float64 rows of ``+-1/sqrt(118)``, as DeePMD-kit's ``get_econf_tebd``.

    Raises ValueError for a ``type_map`` entry that is not an element symbol H..Og.
    """
    bad = [t for t in type_map if t not in CONFIGURATIONS]
    if bad:
        raise ValueError(
            f"use_econf_tebd needs element symbols in type_map; not an element (H..Og): {bad}"
        )
    scale = 1.0 / np.sqrt(ECONF_DIM)
    rows = np.stack([_spin_vector(t) for t in type_map]) if type_map else np.zeros((0, ECONF_DIM))
    return scale * rows.astype(np.float64)
