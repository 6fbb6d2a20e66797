"""User-facing errors.

Anything raised as a ``GanforgeError`` is a problem with the user's input (a path,
a value, a file) rather than a bug: the CLI prints its one-line message, which
names the problem and the fix, and exits with code 2 instead of a traceback.
"""


class GanforgeError(Exception):
    """Base class: a one-line, actionable message for the user."""


class ConfigError(GanforgeError):
    """Unknown recipe, unknown key, or a value of the wrong type or range."""


class DataError(GanforgeError):
    """Missing, empty, corrupt or inconsistent data."""


class CheckpointError(GanforgeError):
    """A checkpoint that is missing, truncated, foreign, or from a newer format."""


class DivergenceError(GanforgeError):
    """A loss or weight became NaN or infinite during training."""
