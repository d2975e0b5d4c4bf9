"""The exceptions users see: each message says what is wrong and how to fix it.

Library code raises a :class:`MinisdError` subclass for anything a person can act on; the command
line prints its message as one line, ``minisd: error: ...``, and exits with status 2 (never a traceback).
"""


class MinisdError(Exception):
    """A user-facing error. The command line prints its message (no traceback) and exits with status 2."""


class DataError(MinisdError):
    """A dataset file is missing, truncated, corrupt, or cannot be downloaded."""


class ConfigError(MinisdError, ValueError):
    """A setting or argument has a value minisd cannot use (wrong type, out of range, unknown name).

    It is also a ``ValueError``, so library callers that catch those keep working.
    """


class CheckpointError(MinisdError):
    """A checkpoint folder is missing, incomplete, corrupt, or does not fit the model it describes."""


class SamplingError(MinisdError):
    """Sampling produced values that are not finite (NaN or infinity) instead of an image."""
