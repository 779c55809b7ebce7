"""A live progress bar (rich) with ETA and the current errors; silent when disabled."""

from __future__ import annotations

import sys


def progress_bar(label: str, disable: bool):
    """A rich ``Progress``: label, bar, done/total, elapsed, time remaining and the task's
    ``info`` field (training and ``dpa1 md`` share it)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        transient=False, disable=disable,
    )


class TrainProgress:
    def __init__(self, total: int, start: int, enabled: bool = True) -> None:
        self.enabled = enabled and total > start
        self._progress = None
        self._task: int | None = None
        if not self.enabled:
            return
        self._progress = progress_bar("train", disable=not sys.stderr.isatty())
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=start, info="")

    def update(self, step: int, metrics: dict[str, float], lr: float) -> None:
        if self._progress is None or self._task is None:
            return
        shown = " ".join(f"{k}={v:.2e}" for k, v in sorted(metrics.items()) if k != "rmse")
        self._progress.update(self._task, completed=step, info=f"{shown} lr={lr:.1e}")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
