"""dpa1: the DPA-1 (``se_atten``) attention-based Deep Potential in PyTorch.

Compatible with DeePMD-kit inputs (``input.json``), data (``deepmd/npy`` and
``mixed_type`` systems) and model files (``.dp``). The contract is DeePMD-kit 3.2.0's
behaviour; docs/design.md explains where dpa1's choices need it.

Shape vocabulary used in every docstring:

- ``nf``: frames in a batch; ``nloc``: local atoms per frame (real or virtual);
- ``nall``: extended atoms (local + periodic ghost images);
- ``nnei``: neighbour slots per atom, ``sum(sel)``;
- ``ng``: embedding width ``neuron[-1]``; ``na``: ``axis_neuron``;
- ``nt``: type-embedding width ``tebd_dim``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["DeepPot", "__version__"]


def __getattr__(name: str):  # lazy: importing dpa1 must not import torch-heavy modules eagerly
    if name == "DeepPot":
        from dpa1.infer.deep_pot import DeepPot

        return DeepPot
    raise AttributeError(name)
