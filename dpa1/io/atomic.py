"""Output files: checked before the work that produces them starts, and written
atomically (a temporary file in the same directory, then a rename), so a crash never
leaves a half-written checkpoint or output behind and a bad path never loses results."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_output_path(path: str | os.PathLike, what: str, *, directory: bool = False) -> Path:
    """Refuse an output ``path`` that cannot be created, before any work is done.

    ``what`` names the output for the message (an option such as ``--json``, or a key).
    The path may not exist yet: its nearest existing ancestor must then be a writable
    directory (the writers create the missing directories). An existing path must be a
    directory when ``directory`` is set, and must not be one otherwise.
    """
    path = Path(path)
    where = f"{what} {path}"
    if path.is_dir() and not directory:
        raise ValueError(f"{where}: is a directory; give a file name")
    if path.exists() and not path.is_dir() and directory:
        raise ValueError(f"{where}: is a file; give a directory")
    # exists() is False both for a missing path and for one under a regular file (ENOTDIR)
    for ancestor in [path, *path.parents][0 if directory else 1:]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ValueError(f"{where}: cannot be created: {ancestor} is a file, "
                                 "not a directory")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise ValueError(f"{where}: cannot be created: {ancestor} is not writable")
            break
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; outputs should get the usual permissions (umask applied).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
