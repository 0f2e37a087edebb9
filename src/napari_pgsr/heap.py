"""Keep freed memory for reuse while a CPU job runs (glibc only).

A forward pass on the CPU allocates and frees tens of large activation tensors. glibc serves every block
over its mmap threshold (32 MiB at most) with a fresh mmap and unmaps it on free, so each pass page-faults
its whole working set again: 670 MiB per pass for a 632² tile of the default U-Net, which then took 507 ms
against 350 ms with the memory kept. While at least one job is inside `reusing_freed_memory()`, blocks come
from the heap and stay there when freed. When the last job ends, glibc gets the thresholds it settles on by
itself after large blocks (mmap above 32 MiB, trim above 64 MiB) and the freed memory goes back to the
system (`malloc_trim`), so a long napari session does not keep a job's peak. Nothing changes where a user
tuned malloc (MALLOC_*_ or GLIBC_TUNABLES), nor off glibc (macOS, Windows, musl).

Fully effective in glibc's main arena only: the other threads' arenas still map blocks over 64 MiB afresh.
`share_one_arena()` (called before trainings and restorations start their threads) makes threads started
afterwards share the main arena, best-effort: a thread that has an arena keeps it, and a new thread may take
over one that an ended thread left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -3, -4, -8
SETTLED = {M_MMAP_MAX: 65536, M_MMAP_THRESHOLD: 32 * 2**20, M_TRIM_THRESHOLD: 64 * 2**20, M_TOP_PAD: 128 * 1024}
KEEP = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1,  # an int: only larger freed tops are still returned
        M_TOP_PAD: 64 * 2**20}  # other arenas keep their emptied 64 MiB heaps instead of unmapping them

_lock = threading.Lock()
_jobs = 0
_one_arena = False


def _load_glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc_name = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (OSError, ValueError):  # musl (Alpine) has no such name
        return None
    if not libc_name.startswith("glibc"):
        return None
    if "GLIBC_TUNABLES" in os.environ or any(name.startswith("MALLOC_") for name in os.environ):
        return None  # the user's own malloc settings win
    try:
        libc = ctypes.CDLL("libc.so.6")
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
    """Threads started from now on allocate from the main arena where they can (see the module's note);
    fewer arenas also fragment less, which is why servers often set MALLOC_ARENA_MAX."""
    global _one_arena
    if _glibc is not None and not _one_arena:
        _one_arena = bool(_glibc.mallopt(M_ARENA_MAX, 1))


def _set(values: dict) -> None:
    for parameter, value in values.items():
        _glibc.mallopt(parameter, value)


@contextlib.contextmanager
def reusing_freed_memory(enabled: bool = True):
    """Within this block (any thread, nestable) large blocks come from the heap and freed memory is kept;
    `enabled=False` (GPU jobs, whose tensors live on the device) changes nothing."""
    global _jobs
    if not enabled or _glibc is None:
        yield
        return
    with _lock:
        _jobs += 1
        if _jobs == 1:
            _set(KEEP)
    try:
        yield
    finally:
        with _lock:
            _jobs -= 1
            last = _jobs == 0
            if last:
                _set(SETTLED)
        if last:
            _glibc.malloc_trim(0)
