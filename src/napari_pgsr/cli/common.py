"""What the console scripts share: how a user's mistake is reported."""

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """Raised for user errors: reported as one line, exit code 2."""
