"""The one exception type for mistakes a user can fix (bad path, bad flag, bad file)."""


class AlexnetError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""
