"""Ctrl-C and SIGTERM during training.

The first asks for a checkpoint and a clean stop: the loop checks the flag between steps. A second one
before that checkpoint is written waits for it (the loop reports each save with ``saved()``), so no signal
can abort the save the first one asked for; once it is written, a second one stops at once, except inside
a ``protect()``ed block (any checkpoint being written), which is finished first. A third signal stops at
once whatever runs: the way out of a save that never ends (a hung disk).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

from ganforge.training.distributed import launched_by_torchrun


class StopFlag:
    """Installs SIGINT/SIGTERM handlers while entered; ``signum`` is the first signal received."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._since = 0.0
        self._previous: dict[int, Any] = {}
        self._protecting = 0  # depth of protect() blocks being run
        self._abort_pending = False  # a second signal came while a save had to finish first
        self._saved_since_request = False  # a checkpoint was written after the first signal

    def __enter__(self) -> StopFlag:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. called from a worker): no handlers
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self._since = signum, time.monotonic()
            return
        # torchrun passes on the Ctrl-C / SIGTERM that the terminal or the scheduler already sent to every
        # process: that copy is not a second request
        if launched_by_torchrun() and time.monotonic() - self._since < 2.0:
            return
        if (self._protecting or not self._saved_since_request) and not self._abort_pending:
            self._abort_pending = True  # stop right after the save
            return
        raise KeyboardInterrupt  # a second Ctrl-C after the save (or a third): stop at once

    def saved(self) -> None:
        """The loop wrote a checkpoint: a stop asked for before it may now happen at once."""
        if self.signum is None:
            return
        self._saved_since_request = True
        if self._abort_pending and not self._protecting:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def protect(self) -> Iterator[None]:
        """Run the block to its end whatever signals arrive; a second one received meanwhile then stops."""
        self._protecting += 1
        try:
            yield
        finally:
            self._protecting -= 1
        if self._protecting == 0 and self._abort_pending and self._saved_since_request:
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
