"""Run a generator job in a napari thread worker, or synchronously when NAPARI_PGSR_SYNC=1 (tests)."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error

from ..generators import run_to_end
from ..heap import share_one_arena


class SyncJob:
    """What `start` returns in synchronous mode: already finished, nothing to quit."""

    def quit(self) -> None:
        """Nothing to stop: the job has run."""


def start(job: Callable[..., Generator], *args: Any, on_yield: Callable, on_return: Callable,
          on_finish: Callable[[], None], context: str, computes: bool = False) -> GeneratorWorker | SyncJob:
    """Start `job(*args)`; progress goes to on_yield, the result to on_return, errors to a notification.
    `computes`: a training or restoration, whose thread should share the arena that keeps freed memory
    during CPU jobs (heap.py)."""

    def on_error(err: Exception) -> None:
        show_error(f"{context}: {err}")

    if os.environ.get("NAPARI_PGSR_SYNC") == "1":
        try:
            on_return(run_to_end(job(*args), on_yield))
        except Exception as err:  # noqa: BLE001 - shown to the user like a worker error
            on_error(err)
        finally:
            on_finish()
        return SyncJob()
    if computes:
        share_one_arena()
    worker = create_worker(job, *args, _start_thread=False)
    worker.yielded.connect(on_yield)
    worker.returned.connect(on_return)
    worker.errored.connect(on_error)
    worker.finished.connect(on_finish)
    worker.start()
    return worker
