"""The one exception family the CLI turns into a one-line message (see ``b2s_cli/errors.py``)."""


class B2SError(Exception):
    """A problem the user can fix (bad input file, bad option); the message names file and problem."""
