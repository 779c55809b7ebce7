"""Where dpa1's compiled C++ op library (``torch.ops.dpa1``) lies, for programs that load it
themselves: DeePMD-kit's C++ library takes it from ``DP_PLUGIN_PATH``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dpa1.model.native import native_ops


def ops_library_path() -> Path:
    """The ``.so`` of dpa1's C++ ops for this torch, built first if needed.

    Raises:
        OSError: the ops are switched off (``DPA1_NATIVE=0``) or could not be built.
    """
    if os.environ.get("DPA1_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        raise OSError("DPA1_NATIVE=0 switches the C++ ops off: unset it to build or find them")
    if not native_ops():
        raise OSError(
            "dpa1's C++ ops could not be built (see the warning above); a C++ compiler "
            f"and the headers of torch {torch.__version__} are needed"
        )
    # torch.utils.cpp_extension loads the library with torch.ops.load_library, which records
    # its path; the library's file name carries dpa1's build digest.
    found = sorted(
        p for p in torch.ops.loaded_libraries if Path(p).name.startswith("dpa1_native")
    )
    if not found:
        raise OSError("dpa1's C++ ops are loaded but torch did not record their library file")
    return Path(found[-1])
