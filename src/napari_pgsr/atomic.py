"""Files written under a temporary name and renamed into place, so no crash leaves half a file."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` when the block ends without error and
    is removed otherwise, so a crash or Ctrl-C never leaves a half-written file under the real name."""
    with atomic_paths([path]) as (tmp,):
        yield tmp


@contextmanager
def atomic_paths(paths: list[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary paths beside `paths`; all replace their targets when the block ends without error, none
    otherwise: files that belong together (two halves of a movie) are never left one new, one old."""
    paths = [Path(path) for path in paths]
    tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    # hidden names beside the targets, created with the user's normal permissions (mkstemp would give 0600),
    # ending in the target's name: writers that read the format from the suffix (.ome.tif) still can
    temps = [path.parent / f".tmp.{tag}.{path.name}" for path in paths]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temps
        for tmp in temps:  # on disk before it takes the name: a power cut then leaves the old file, not none
            _sync(tmp)
        folders = [str(path) for path in paths if path.is_dir()]
        if folders:  # found before any rename: the first target must not be replaced when the second fails
            raise IsADirectoryError(f"{', '.join(folders)} is a folder; give a file name")
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
        for folder in {path.parent for path in paths}:
            _sync(folder)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise


def _sync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk, where the system allows it."""
    if not path.exists() or (path.is_dir() and os.name == "nt"):
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems cannot sync a folder
        pass
    finally:
        os.close(descriptor)
