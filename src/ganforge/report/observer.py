"""``ReportObserver``: keeps RUN/report.html current while a run trains (``train.report=true``).

The training loop (rank 0 only) calls ``on_record`` for every record it appends to metrics.jsonl,
``on_grid`` after each sample grid and ``close`` at the end. The report is rebuilt from the run directory
(what is on disk is the truth, including records from before a resume), at most every ``every_s`` seconds,
and written atomically, so a browser reloading it never sees half a page.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ganforge.report.single import REPORT_NAME, ReportWriter


class ReportObserver:
    def __init__(self, run_dir: Path, every_s: float) -> None:
        self.run_dir = Path(run_dir)
        self.every_s = float(every_s)
        self.path = self.run_dir / REPORT_NAME
        self.writer = ReportWriter(self.run_dir)
        self._last_write = -float("inf")
        self._pending = False  # something arrived since the last write
        self.writes = 0  # reports written so far (for tests and logs)

    def on_record(self, record: dict[str, Any]) -> None:
        """A record was appended to metrics.jsonl: rewrite the report if ``every_s`` has passed."""
        self._pending = True
        self._maybe_write()

    def on_grid(self, path: Path, step: int) -> None:
        """A sample grid PNG was just written (it is read from the run directory with the others)."""
        self._pending = True
        self._maybe_write()

    def close(self) -> None:
        """Training ended: the final report, whatever the time since the last one."""
        self._write()

    def _maybe_write(self) -> None:
        if self._pending and time.monotonic() - self._last_write >= self.every_s:
            self._write()

    def _write(self) -> None:
        self.writer.write(self.path, embed=True)
        self._last_write = time.monotonic()
        self._pending = False
        self.writes += 1
