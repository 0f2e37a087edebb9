"""The core's long jobs are generators that yield progress and return their result (so a GUI worker can show
progress and stop between steps); these run them without a GUI and pass their progress on."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

Result = TypeVar("Result")


def run_to_end(job: Generator[Any, None, Result], progress: Callable[[Any], object] | None = None) -> Result:
    """Run `job` to its end and return its result; each value it yields goes to `progress`, if given."""
    while True:
        try:
            step = next(job)
        except StopIteration as finished:
            return finished.value
        if progress is not None:
            progress(step)


def map_yields(job: Generator[Any, None, Result], change: Callable[[Any], Any]) -> Generator[Any, None, Result]:
    """`yield from job` with each yielded value passed through `change` first; returns `job`'s result."""
    while True:
        try:
            step = next(job)
        except StopIteration as finished:
            return finished.value
        yield change(step)
