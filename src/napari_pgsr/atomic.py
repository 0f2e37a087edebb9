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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a hidden name beside the target, created with the user's normal permissions (mkstemp would give 0600)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        _sync(tmp)  # on disk before it takes the name: a power cut then leaves the old file, not an empty one
        os.replace(tmp, path)
        _sync(path.parent)
    except BaseException:
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
