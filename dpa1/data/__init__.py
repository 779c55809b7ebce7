"""DeePMD-kit training data: reading systems, batching, statistics and conversion.

- :mod:`dpa1.data.system`: :class:`DeepmdSystem` (one ``deepmd/npy`` or ``deepmd/hdf5``
  system, standard or mixed-type), :func:`expand_systems` (the ``systems`` value of an
  input file);
- :mod:`dpa1.data.store`, :mod:`dpa1.data.hdf5`: where a system's arrays are read from
  (a directory of ``.npy`` files, or a group of an HDF5 file);
- :mod:`dpa1.data.loader`: :class:`SystemSampler` (batches and system sampling);
- :mod:`dpa1.data.stats`: neighbour statistics, ``sel = "auto"``, model statistics;
- :mod:`dpa1.data.convert`: ASE-readable files → ``deepmd/npy``;
- :class:`DataError`: every problem with the data, raised when they are opened.

Heavy modules (torch, ASE) are imported only when their names are used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from dpa1.data.errors import DataError
from dpa1.data.system import (
    DEFAULT_LABELS,
    LABELS,
    DeepmdSystem,
    Label,
    expand_systems,
    labels_for_model,
)

__all__ = [
    "DEFAULT_LABELS", "LABELS", "DataError", "DeepmdSystem", "Label", "SystemSampler",
    "apply_statistics", "change_energy_bias", "compute_descriptor_stats", "compute_energy_bias",
    "convert", "expand_systems", "labels_for_model", "neighbor_stat", "resolve_batch_sizes",
    "resolve_sel", "system_probabilities",
]

_LAZY = {
    "SystemSampler": "loader", "resolve_batch_sizes": "loader", "system_probabilities": "loader",
    "apply_statistics": "stats", "change_energy_bias": "stats", "compute_descriptor_stats": "stats",
    "compute_energy_bias": "stats", "neighbor_stat": "stats", "resolve_sel": "stats",
    "convert": "convert",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"dpa1.data.{_LAZY[name]}"), name)
    raise AttributeError(name)
