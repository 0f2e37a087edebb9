"""Run a generator job in a napari thread worker, or synchronously when NAPARI_PGSR_SYNC=1 (tests)."""

from __future__ import annotations

import os
import queue
import threading
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
          on_finish: Callable[[], None], context: str, computes: bool = False, owner=None,
          on_abort: Callable[[], None] | None = None) -> GeneratorWorker | SyncJob:
    """Start `job(*args)`; progress goes to on_yield, the result to on_return, errors to a notification.
    `computes`: a training or restoration, whose thread should share the arena that keeps freed memory
    during CPU jobs (heap.py). `owner` (the widget's Qt part): once it is deleted (the viewer closed) the
    callbacks are left out and `on_abort` (what stops the job cooperatively) is called, as when napari asks
    the worker to quit; a job that must finish its work (save a model) runs it `in_own_thread`."""
    alive = [True]

    def guarded(callback: Callable) -> Callable:
        return lambda *values: callback(*values) if alive[0] else None

    def on_error(err: Exception) -> None:
        show_error(f"{context}: {err}")

    if owner is not None:
        def gone(*_) -> None:
            alive[0] = False
            if on_abort is not None:
                on_abort()

        owner.destroyed.connect(gone)
        finish = guarded(on_finish)

        def on_finish() -> None:  # a finished run lets go of the widget (runs no longer pile up connections)
            finish()
            if alive[0]:
                owner.destroyed.disconnect(gone)

        on_yield, on_return = guarded(on_yield), guarded(on_return)

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
    if on_abort is not None:  # napari quits its workers as the viewer closes: tell the job at once (a queued
        quit = worker.quit     # 'aborted' signal would wait for a GUI thread that is busy closing)

        def quit_and_abort() -> None:
            on_abort()
            quit()

        worker.quit = quit_and_abort
    worker.start()
    return worker


def in_own_thread(job: Callable[..., Generator], *args: Any) -> Generator:
    """Run the generator `job(*args)` in a thread of its own and yield what it yields; returns its result.
    A worker that napari asks to quit (the viewer closing) stops reading it, but the job goes on until it
    ends by itself (told by `start`'s `on_abort`: a training then saves its model), and, not a daemon, it
    finishes before Python exits."""
    return (yield from _forwarded(lambda put: run_to_end(job(*args), put),
                                  f"napari-pgsr-{getattr(job, '__name__', 'job')}"))


def progress_job(function: Callable, *args: Any) -> Generator:
    """Run `function(*args, progress)` in a thread of its own (as `in_own_thread`) and yield its (done, total)
    progress: a generator for the worker."""
    return (yield from _forwarded(lambda put: function(*args, lambda done, total: put((done, total))),
                                  "napari-pgsr-restore-job"))


def _forwarded(run: Callable[[Callable[[Any], None]], Any], name: str) -> Generator:
    """Yield what `run(put)` puts, from a thread of its own; return its result or raise its error."""
    updates: queue.Queue = queue.Queue()
    finished = object()
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = run(updates.put)
        except BaseException as err:  # handed on to the worker's error handler
            outcome["error"] = err
        finally:
            updates.put(finished)

    # daemon=False said outright: a thread started from a worker's (foreign, daemon) thread is a daemon
    # otherwise, and Python would kill it at exit instead of letting it save
    thread = threading.Thread(target=target, name=name, daemon=False)
    thread.start()
    while (item := updates.get()) is not finished:
        yield item
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
