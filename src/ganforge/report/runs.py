"""``list_runs``: one summary line per run directory under a folder (``ganforge runs``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ganforge.errors import GanforgeError
from ganforge.report.rundata import RunView, format_duration, load_run

COLUMNS = ("recipe", "status", "steps", "time", "best", "path")


def find_runs(root: Path) -> list[Path]:
    """Run directories (holding metrics.jsonl or config.json beside checkpoints/) at or under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise GanforgeError(f"{root} is not a directory; pass the folder holding your runs (default runs/)")
    markers = {p.parent for name in ("metrics.jsonl", "config.json") for p in root.rglob(name)}
    runs = [p for p in markers if (p / "metrics.jsonl").is_file() or (p / "checkpoints").is_dir()]
    return sorted(runs)


def best_text(run: RunView) -> str:
    """``fd_mnist-classifier 2.64 (epoch 40)``, or '' without evaluations."""
    best = run.best_eval
    tracked, _ = run.tracked
    if best is None or tracked is None:
        return ""
    return f"{tracked} {best[tracked]:.4g} (epoch {best.get('epoch_progress', '?'):g})"


def summarize(run: RunView) -> dict[str, Any]:
    tracked, lower = run.tracked
    best = run.best_eval
    return {
        "recipe": run.recipe,
        "status": run.status,
        "status_detail": run.status_detail,
        "steps": run.steps,
        "epochs": run.epochs_done,
        "time_s": run.time_s,
        "time": format_duration(run.time_s),
        "best_metric": tracked if best is not None else None,
        "best_value": best[tracked] if best is not None and tracked else None,
        "best_epoch": best.get("epoch_progress") if best is not None else None,
        "lower_is_better": lower if best is not None else None,
        "best": best_text(run),
        "path": str(run.path),
    }


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Summaries (recipe, status, steps, time, best metric, path) of every run under ``root``."""
    return [summarize(load_run(path)) for path in find_runs(root)]


def _cell(row: dict[str, Any], column: str) -> str:
    if column == "status" and row["status"] in ("stopped", "interrupted"):
        return f"{row['status']} ({row['status_detail'].split(' (')[0].split(';')[0]})"
    return str(row[column]) if row[column] != "" else "-"


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no runs found"
    cells = [[_cell(row, c) for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)
