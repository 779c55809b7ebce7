"""Checkpoint files of a training run: ``<save_ckpt>-<step>.pt``, the ``<save_ckpt>.pt``
pointer (a symlink, or a copy where symlinks are unavailable), a ``checkpoint`` text
file naming the latest, and rotation to ``max_ckpt_keep`` files. Every write is
atomic, so killing the process at any moment leaves a loadable latest checkpoint."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from dpa1.io.atomic import atomic_path
from dpa1.io.model_file import save_checkpoint


class CheckpointManager:
    def __init__(self, save_dir: Path, prefix: str = "model.ckpt", max_keep: int = 5) -> None:
        self.save_dir = Path(save_dir)
        self.prefix = prefix
        self.max_keep = max(1, int(max_keep))

    def path_for(self, step: int) -> Path:
        return self.save_dir / f"{self.prefix}-{step}.pt"

    @property
    def pointer(self) -> Path:
        return self.save_dir / f"{self.prefix}.pt"

    def existing(self) -> list[tuple[int, Path]]:
        pat = re.compile(re.escape(self.prefix) + r"-(\d+)\.pt$")
        found = []
        for p in self.save_dir.glob(f"{self.prefix}-*.pt"):
            m = pat.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save(self, step: int, model, **payload) -> Path:
        path = self.path_for(step)
        save_checkpoint(path, model, step=step, **payload)
        self._point_to(path)
        for _, old in self.existing()[: -self.max_keep]:
            old.unlink(missing_ok=True)
        return path

    def _point_to(self, path: Path) -> None:
        tmp = self.pointer.with_name(f".{self.pointer.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(path.name, tmp)
        except OSError:  # no symlinks (some filesystems): copy instead
            shutil.copyfile(path, tmp)
        os.replace(tmp, self.pointer)
        with atomic_path(self.save_dir / "checkpoint") as t:
            t.write_text(f"model_checkpoint_path: {path.name}\n")

    def latest(self) -> Path | None:
        found = self.existing()
        return found[-1][1] if found else None
