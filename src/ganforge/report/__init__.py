"""See a run: a self-contained HTML report of one run, a comparison of several, a table of all.

``write_report(run_dir)`` writes RUN/report.html; ``write_compare([run, ...], out)`` overlays runs;
``list_runs(root)`` summarises every run under a folder; ``ReportObserver`` rewrites the report while
training runs. Nothing here imports the training layer: it reads what a run directory holds.
"""

from ganforge.report.compare import write_compare
from ganforge.report.observer import ReportObserver
from ganforge.report.rundata import RunView, load_run
from ganforge.report.runs import find_runs, list_runs
from ganforge.report.single import write_report

__all__ = ["ReportObserver", "RunView", "find_runs", "list_runs", "load_run", "write_compare", "write_report"]
