"""What the console scripts share: how a user's mistake is reported, and what Ctrl-C does."""

import functools
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

EXIT_BAD_INPUT = 2


def add_phase_flags(parser) -> None:
    """--low-first / --high-first: which neighbour each low frame pairs with. Which frames are low is always
    read from their brightness; a flag only fixes the pairing, so a wrong one leaves frames out."""
    phase = parser.add_mutually_exclusive_group()
    phase.add_argument("--low-first", dest="low_first", action="store_const", const=True, default=None,
                       help="pair each low-exposure frame with the high one after it (the movie starts low) "
                       "[default: detect from the frames' brightness]")
    phase.add_argument("--high-first", dest="low_first", action="store_const", const=False,
                       help="pair each low-exposure frame with the high one before it (the movie starts high)")


class BadInput(Exception):
    """Raised for user errors: reported as one line, exit code 2."""


@contextmanager
def first_ctrl_c_stops(tell: Callable[[str], None], terminate_too: bool = False) -> Iterator[Callable[[], bool]]:
    """Within the block, the first Ctrl-C asks the training to stop after its step and save (the block gets
    the `should_stop` to pass on); a second one stops at once, as Ctrl-C did before the block. With
    `terminate_too`, so does SIGTERM (a batch system's time limit, `kill`), which ended a training at once and
    lost the steps since its last checkpoint."""
    interrupted: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM) if terminate_too else (signal.SIGINT,)
    if threading.current_thread() is not threading.main_thread():  # (signals are the main thread's)
        yield lambda: False
        return

    def on_interrupt(signum, frame) -> None:
        interrupted.append(signum)
        signal.signal(signum, previous[signum])
        again = "Ctrl-C" if signum == signal.SIGINT else "a second SIGTERM"
        tell(f"{'terminated: ' if signum == signal.SIGTERM else ''}stopping after this step; the model will be "
             f"saved ({again} to abort)")

    previous = {signum: signal.signal(signum, on_interrupt) for signum in signals}
    try:
        yield lambda: bool(interrupted)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class ProgressBar:
    """A tqdm bar drawn from the first report on, when its total is known: made at once, tqdm drew an empty
    '0frame' line, left above the error of an input refused before any work."""

    def __init__(self, unit: str, disable: bool = False):
        self.unit, self.disable, self._bar = unit, disable, None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()

    def show(self, done: int, total: int, description: str | None = None) -> None:
        """`done` of `total`, under `description` when given."""
        if self.disable:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar, self._description = tqdm(total=total, unit=self.unit, desc=description), description
        else:
            self._bar.total = total
            if description is not None and description != self._description:  # a new stage: shown at once
                self._bar.set_description(description)
                self._description = description
        self._bar.update(done - self._bar.n)

    def reset(self) -> None:
        """Start again from 0 (the next stage)."""
        if self._bar is not None:
            self._bar.reset()


@contextmanager
def terminate_cleans_up(program: str) -> Iterator[None]:
    """Within the block SIGTERM (a batch system's time limit, `kill`) ends the program through an exception,
    so the outputs' temporary files are removed: by default Python dies at once and leaves them, hidden and
    as large as the movie. The exit status stays 143."""
    if threading.current_thread() is not threading.main_thread():  # (signals are the main thread's)
        yield
        return

    def on_terminate(signum, frame) -> None:
        print(f"{program}: terminated; nothing was written", file=sys.stderr)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def warnings_said_plainly(program: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """A command's warnings printed as 'napari-pgsr-predict: warning: ...', as its errors are, without the
    file name, line number and source line of where in napari-pgsr they were raised."""
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            previous = warnings.formatwarning

            def plainly(message, category, filename, lineno, line=None) -> str:
                if issubclass(category, (UserWarning, RuntimeWarning)) and "napari_pgsr" in str(filename):
                    return f"{program}: warning: {message}\n"
                return previous(message, category, filename, lineno, line)  # another library's: as Python says

            warnings.formatwarning = plainly
            try:
                return main(argv)
            finally:
                warnings.formatwarning = previous
        return run
    return wrap

