"""How often a run pays for the side work of its epoch ends: the ``latest`` checkpoint and the loss plot.

Short epochs would otherwise spend a large share of their time writing (digits-quick has 45 steps per
epoch, mnist-mlp on the 10,000 test images 157): a 13 MB checkpoint with its fsyncs, or a matplotlib
figure that takes 0.3-1.3 s on a 2-core CPU. A ``Pacer`` lets such a task run when the time since it last
ended is at least ``(1 - share) / share`` times what it took last (so it costs at most ``share`` of the
wall time) and at least ``min_interval`` seconds; the first call is always due.

The loop writes both at the last epoch and at every stop (--max-steps, --max-time, Ctrl-C, SIGTERM)
whatever the pacer says, so a stop loses nothing, and a checkpoint, when it is written, is the one it
always was: resuming from it is exact. A hard kill loses at most the pacer's interval of progress.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

CHECKPOINT_SHARE = 0.03  # the latest checkpoint: at most 3% of the training time
PLOT_SHARE = 0.03
PLOT_MIN_INTERVAL_S = 10.0  # and the plot at most every 10 s (it is for a person watching)


class Pacer:
    """``due()``: whether a recurring task may run now; ``timed()``: run it, measuring what it costs."""

    def __init__(self, share: float, min_interval: float = 0.0, clock: Callable[[], float] = time.perf_counter):
        self.share, self.min_interval, self.clock = share, min_interval, clock
        self.cost = 0.0  # seconds the task took last time
        self.ended = -math.inf  # when it last ended

    def due(self) -> bool:
        wait = max(self.min_interval, self.cost * (1.0 - self.share) / self.share)
        return self.clock() - self.ended >= wait

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.ended = self.clock()
            self.cost = self.ended - start
