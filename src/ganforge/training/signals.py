"""Ctrl-C and SIGTERM during training: the first asks for a checkpoint and a clean stop."""

from __future__ import annotations

import signal
import time
from typing import Any

from ganforge.training.distributed import launched_by_torchrun


class StopFlag:
    """Ctrl-C / SIGTERM set a flag that the loop checks between steps, so a checkpoint is saved."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._since = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. called from a worker): no handlers
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            # torchrun passes on the Ctrl-C / SIGTERM that the terminal or the scheduler already sent
            # to every process: that copy is not a second request
            if launched_by_torchrun() and time.monotonic() - self._since < 2.0:
                return
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        self.signum, self._since = signum, time.monotonic()

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
