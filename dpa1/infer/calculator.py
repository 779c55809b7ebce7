"""ASE calculator: run ASE molecular dynamics and optimisers with a dpa1 / DeePMD model.

Same name and constructor as ``deepmd.calculator.DP`` so scripts port by changing one
import::

    from dpa1.calculator import DP
    atoms.calc = DP(model="model.pth")            # or .pt / .dp / .yaml, or a DeepPot
    atoms.calc = DP(model=["m0.pth", "m1.pth"])   # ensemble: adds model deviations

Units are ASE's (eV, Å). ``stress`` follows ASE's sign convention (positive = tensile):
``σ = −V / volume`` with DeePMD's virial ``V = Σ F ⊗ x``, Voigt order xx yy zz yz xz xy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from dpa1.infer.deep_pot import DeepPot
from dpa1.infer.model_devi import devi_from_predictions

ModelArg = str | os.PathLike | DeepPot | Any

#: extra ``results`` keys of an ensemble calculator (DeePMD-kit's model_devi.out columns)
DEVI_KEYS = ("max_devi_v", "min_devi_v", "avg_devi_v", "max_devi_f", "min_devi_f", "avg_devi_f",
             "devi_e")


class DP(Calculator):
    """ASE calculator backed by :class:`~dpa1.infer.deep_pot.DeepPot`.

    Args:
        model: a model file (``.pth``, ``.pt``, ``.dp``, ``.yaml``), a ``DeepPot``, an
            ``EnergyModel``, or a list of these (an ensemble: energies, forces and stress
            come from the first model; ``results`` also holds ``max_devi_f`` etc. and the
            per-atom force deviation ``devi_f`` (natoms,)).
        device: torch device (default: CUDA when available).
        type_map: element symbol of each model type, overriding the model's own
            ``type_map`` (e.g. for models trained with type names that are not elements);
            a list, or a dict ``{symbol: type index}``.
        label, kwargs: passed to :class:`ase.calculators.calculator.Calculator`.

    ``atoms.info["fparam"]`` and ``atoms.arrays["aparam"]`` (or ``atoms.info["aparam"]``)
    are passed to models that need frame / atomic parameters.
    """

    name = "DP"
    implemented_properties: ClassVar[list[str]] = [
        "energy", "free_energy", "forces", "stress", "energies", "virial",
    ]

    def __init__(
        self,
        model: ModelArg | Sequence[ModelArg],
        device: str | None = None,
        type_map: Sequence[str] | dict[str, int] | None = None,
        label: str = "DP",
        **kwargs: Any,
    ) -> None:
        super().__init__(label=label, **kwargs)
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        if not models:
            raise ValueError("DP: no model given")
        # load each model once; repeated calls only evaluate
        self.dps = [m if isinstance(m, DeepPot) else DeepPot(m, device=device) for m in models]
        self.dp = self.dps[0]
        tmaps = [dp.get_type_map() for dp in self.dps]
        if any(t != tmaps[0] for t in tmaps[1:]):
            raise ValueError(f"DP: the ensemble's models do not share one type_map: {tmaps}")
        ntypes = self.dp.get_ntypes()
        if type_map is None:
            self.type_dict = {name: k for k, name in enumerate(tmaps[0])}
        elif isinstance(type_map, dict):
            self.type_dict = {str(k): int(v) for k, v in type_map.items()}
        else:
            self.type_dict = {str(name): k for k, name in enumerate(type_map)}
        bad = {k: v for k, v in self.type_dict.items() if not 0 <= v < ntypes}
        if bad:
            raise ValueError(f"DP: type indices {bad} outside the model's {ntypes} types")
        if len(self.dps) > 1:
            # instance attribute: only ensembles can report deviations through get_property
            self.implemented_properties = list(self.implemented_properties) + list(DEVI_KEYS)
        self._type_cache: dict[bytes, np.ndarray] = {}

    # --- helpers -----------------------------------------------------------------------
    def atom_types(self, numbers: np.ndarray) -> np.ndarray:
        """Model type indices of atomic numbers, cached per composition/order signature."""
        key = np.asarray(numbers, dtype=np.int64).tobytes()
        types = self._type_cache.get(key)
        if types is None:
            from ase.data import chemical_symbols

            symbols = [chemical_symbols[z] for z in numbers]
            unknown = sorted(set(symbols) - set(self.type_dict))
            if unknown:
                raise ValueError(f"DP: element(s) {', '.join(unknown)} not in the model's type_map "
                                 f"{list(self.type_dict)}")
            types = np.array([self.type_dict[s] for s in symbols], dtype=np.int64)
            if len(self._type_cache) > 64:  # e.g. grand-canonical runs: bound the memory
                self._type_cache.clear()
            self._type_cache[key] = types
        return types

    @staticmethod
    def cell_of(atoms) -> np.ndarray | None:
        """The ``(1, 9)`` cell for a fully periodic system, None for a non-periodic one."""
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if not pbc.any():
            return None
        if not pbc.all():
            raise ValueError(f"DP: mixed periodicity pbc={pbc.tolist()} is not supported; "
                             "use pbc=True (with a large enough vacuum) or pbc=False")
        cell = atoms.cell.array
        if abs(np.linalg.det(cell)) < 1e-10:
            raise ValueError("DP: periodic system with a zero-volume cell; set atoms.cell")
        return cell.reshape(1, 9)

    # --- ASE interface -------------------------------------------------------------------
    def calculate(
        self,
        atoms=None,
        properties: Sequence[str] = ("energy", "forces"),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        """Evaluate the model; fills every cheap result at once (energy, forces, virial and,
        for periodic cells, stress) so that later property requests need no new call."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        cell = self.cell_of(atoms)
        if cell is None and "stress" in properties:
            raise PropertyNotImplementedError("DP: stress needs a periodic cell (pbc=True)")
        atype = self.atom_types(atoms.numbers)
        coord = atoms.positions.reshape(1, -1, 3)
        fparam = atoms.info.get("fparam")
        aparam = atoms.arrays.get("aparam", atoms.info.get("aparam"))
        atomic = "energies" in properties
        out = self.dp.eval(coord, cell, atype, atomic=atomic, fparam=fparam, aparam=aparam)
        e, f, v = out[:3]
        energy = float(e[0, 0])
        self.results["energy"] = energy
        self.results["free_energy"] = energy  # no electronic entropy in a DP model
        self.results["forces"] = f[0]
        virial = v[0].reshape(3, 3)
        self.results["virial"] = virial
        if atomic:
            self.results["energies"] = out[3][0, :, 0]
        if cell is not None:
            # ASE: tensile positive, stress = −virial/volume; symmetrised as DeePMD-kit does
            stress = -0.5 * (virial + virial.T) / atoms.get_volume()
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]]
        if len(self.dps) > 1:
            self._ensemble(coord, cell, atype, fparam, aparam, e, f, v)

    def _ensemble(self, coord, cell, atype, fparam, aparam, e, f, v) -> None:
        preds = [(e, f, v)] + [dp.eval(coord, cell, atype, fparam=fparam, aparam=aparam)[:3]
                               for dp in self.dps[1:]]
        if len(atype) == 0:  # nothing to deviate
            self.results.update(dict.fromkeys(DEVI_KEYS, 0.0), devi_f=np.zeros(0))
            return
        es, fs, vs = (np.stack([p[k] for p in preds]) for k in range(3))
        row = devi_from_predictions(es, fs, vs, len(atype), atomic=True)[0]
        for k, key in enumerate(DEVI_KEYS):
            self.results[key] = float(row[1 + k])
        self.results["devi_f"] = row[8:]


__all__ = ["DP", "DEVI_KEYS"]
