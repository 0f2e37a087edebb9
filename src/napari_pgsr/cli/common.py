"""What the console scripts share: how a user's mistake is reported, and what Ctrl-C does."""

import signal
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
def first_ctrl_c_stops(tell: Callable[[str], None]) -> Iterator[Callable[[], bool]]:
    """Within the block, the first Ctrl-C asks the training to stop after its step and save (the block gets
    the `should_stop` to pass on); a second one stops at once, as Ctrl-C did before the block."""
    interrupted: list[int] = []

    def on_interrupt(signum, frame) -> None:
        interrupted.append(signum)
        signal.signal(signal.SIGINT, previous)
        tell("stopping after this step; the model will be saved (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield lambda: bool(interrupted)
    finally:
        signal.signal(signal.SIGINT, previous)
