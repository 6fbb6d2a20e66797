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


class WriteError(GanforgeError):
    """A file could not be written: the disk is full, over quota, read-only or not ours.

    The message names the path and the free space; the file that was there before is unchanged
    and no temporary file is left (``ganforge.checkpoint.atomic_write``). ``errno`` is the OS's
    code and the original ``OSError`` is the ``__cause__``. Caches that are only a speed-up catch
    it and warn instead.
    """

    def __init__(self, message: str, path: str = "", errno: int | None = None, free_bytes: int | None = None) -> None:
        super().__init__(message)
        self.path, self.errno, self.free_bytes = path, errno, free_bytes


class RunInUseError(GanforgeError):
    """Another live process holds the run directory's lock (``ganforge.rundir.RunLock``)."""


class GanforgeWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI shows it as one line
    ``ganforge: warning: ...``."""


class CacheWarning(GanforgeWarning):
    """A cache (decoded datasets, real-set statistics) could not be used; only speed is lost."""


class ExportError(GanforgeError):
    """A model that cannot be exported (naming the layer), or an export extra that is not installed."""
