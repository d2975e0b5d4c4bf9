"""The one exception users see: a message that says what is wrong and how to fix it."""


class MinisdError(Exception):
    """A user-facing error. The command line prints its message (no traceback) and exits with status 2."""


class DataError(MinisdError):
    """A dataset file is missing, truncated, corrupt, or cannot be downloaded."""
