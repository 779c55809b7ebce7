"""Writer and reader of DeePMD-kit's learning-curve file ``lcurve.out`` (docs/design.md,
"Training loop").

The format is byte-identical to DeePMD-kit 3.2.0 (``deepmd/pt/train/training.py``,
``print_header`` / ``print_on_training``), e.g. with validation data::

    # step       rmse_val    rmse_trn    rmse_e_val  rmse_e_trn    rmse_f_val  rmse_f_trn   lr
    # If there is no available reference data, rmse_*_{val,trn} will print nan
          1      2.95e+01    2.86e+01      8.60e-01    8.44e-01      9.33e-01    9.05e-01    1.0e-03

Metric keys are written in sorted order. Note DeePMD's header uses ``"# {:5s}".format("step")``
and ``"   {:8s}".format("lr")``: both are *left*-aligned (``"# step "``, ``"   lr      "``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TextIO

import numpy as np

__all__ = ["LCurveWriter", "read_lcurve", "format_header", "format_row"]

NAN_NOTE = "# If there is no available reference data, rmse_*_{val,trn} will print nan\n"


def format_header(metric_keys: Sequence[str], has_validation: bool) -> str:
    """The two header lines (newline-terminated) for ``metric_keys`` (sorted here)."""
    line = "# {:5s}".format("step")
    for key in sorted(metric_keys):
        if has_validation:
            line += f"   {key + '_val':>11s} {key + '_trn':>11s}"
        else:
            line += f"   {key + '_trn':>11s}"
    line += "   {:8s}\n".format("lr")
    return line + NAN_NOTE


def format_row(
    step: int,
    metric_keys: Sequence[str],
    train: Mapping[str, float],
    valid: Mapping[str, float] | None,
    lr: float,
) -> str:
    """One data line: step ``%7d``, per sorted key ``%11.2e`` (valid then train), lr ``%8.1e``."""
    line = f"{step:7d}"
    for key in sorted(metric_keys):
        if valid is not None:
            line += f"   {valid[key]:11.2e} {train[key]:11.2e}"
        else:
            line += f"   {train[key]:11.2e}"
    return line + f"   {lr:8.1e}\n"


class LCurveWriter:
    """Appends rows to ``lcurve.out`` in DeePMD's exact format, flushing after each row.

    Parameters
    ----------
    path
        Output file.
    metric_keys
        Metric names (e.g. ``EnerLoss.metric_keys()``); columns follow their sorted order.
    has_validation
        Whether the file has ``<key>_val`` columns.
    append
        Open in append mode (restart) instead of truncating.
    header
        Write the two header lines; default ``not append``. DeePMD itself writes the header
        again after a restart; pass ``header=True`` to mimic that.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        metric_keys: Sequence[str],
        has_validation: bool,
        append: bool = False,
        header: bool | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.metric_keys = sorted(metric_keys)
        self.has_validation = bool(has_validation)
        self._fout: TextIO = open(self.path, "a" if append else "w")  # noqa: SIM115
        if header if header is not None else not append:
            self._fout.write(format_header(self.metric_keys, self.has_validation))
            self._fout.flush()

    def write(
        self,
        step: int,
        train: Mapping[str, float],
        valid: Mapping[str, float] | None,
        lr: float,
    ) -> None:
        """Write one row for display step ``step`` (DeePMD displays ``t + 1``).

        ``valid`` is ignored without validation columns; with them, ``valid=None`` writes
        ``nan`` in the validation columns so the file stays rectangular.
        """
        if not self.has_validation:
            valid = None
        elif valid is None:
            valid = dict.fromkeys(self.metric_keys, float("nan"))
        self._fout.write(format_row(step, self.metric_keys, train, valid, lr))
        self._fout.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if not self._fout.closed:
            self._fout.close()

    def __enter__(self) -> LCurveWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_lcurve(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """Read an ``lcurve.out``: column names and data ``(nrows, ncols)`` float64.

    Names come from the first header line (``["step", "rmse_val", "rmse_trn", ..., "lr"]``);
    every ``#`` line (including headers repeated after a restart) is skipped; ``nan`` parses.
    """
    names: list[str] | None = None
    rows: list[list[float]] = []
    with open(path) as fin:
        for line in fin:
            if line.startswith("#"):
                fields = line[1:].split()
                if names is None and fields and fields[0] == "step":
                    names = fields
                continue
            if line.strip():
                rows.append([float(x) for x in line.split()])
    if names is None:
        raise ValueError(f"{os.fspath(path)}: no '# step ...' header line")
    data = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
    return names, data
