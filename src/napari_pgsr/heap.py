"""Keep freed memory for reuse while a CPU job runs (glibc only).

A forward pass on the CPU allocates and frees tens of large activation tensors. glibc serves every block
over 32 MiB (its largest mmap threshold) with a fresh mmap and unmaps it on free, so each pass page-faults
its whole working set again: 670 MiB per pass for a 632² tile of the default U-Net, which made it run ~30%
slower than with the memory kept. While at least one job is inside `reusing_freed_memory()`, blocks come
from the heap and stay there when freed; when the last job ends the defaults return and the freed memory is
handed back to the system (`malloc_trim`), so a long napari session does not keep a job's peak.
Elsewhere (macOS, Windows, musl) it does nothing.

Only the main arena keeps its memory: glibc gives other threads arenas made of 64 MiB heaps, unmapped
whenever they empty. So from the first job on, threads started later share the main arena
(`share_one_arena`; napari's workers call it before starting); threads that existed before keep theirs.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # mallopt parameters (malloc.h)
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
KEEP_TRIM_THRESHOLD = 2**31 - 1  # an int; larger freed tops than this are still returned

_lock = threading.Lock()
_jobs = 0
_one_arena = False


def _load_glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc, not musl: the parameters above are glibc's
        libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_glibc = _load_glibc()


def active() -> bool:
    """Whether freed memory is being kept for reuse now."""
    return _jobs > 0 and _glibc is not None


def share_one_arena() -> None:
    """Threads started from now on allocate from the main arena (the one that keeps freed memory); fewer
    arenas also fragment less, which is why servers often set MALLOC_ARENA_MAX."""
    global _one_arena
    if _glibc is not None and not _one_arena:
        _one_arena = bool(_glibc.mallopt(M_ARENA_MAX, 1))


@contextlib.contextmanager
def reusing_freed_memory(enabled: bool = True):
    """Within this block (any thread, nestable) large blocks come from the heap and freed memory is kept;
    `enabled=False` (GPU jobs, whose tensors live on the device) changes nothing."""
    global _jobs
    if not enabled or _glibc is None:
        yield
        return
    share_one_arena()  # the threads this job starts (prefetch, writers) too
    with _lock:
        _jobs += 1
        if _jobs == 1:
            _glibc.mallopt(M_MMAP_MAX, 0)
            _glibc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _jobs -= 1
            if _jobs == 0:
                _glibc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                _glibc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                _glibc.malloc_trim(0)
