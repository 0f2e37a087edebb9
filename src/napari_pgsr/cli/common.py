"""What the console scripts share: how a user's mistake is reported."""

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
