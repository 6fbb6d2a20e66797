"""``write_report``: one run as a self-contained HTML page."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ganforge.report.charts import run_charts
from ganforge.report.images import ThumbnailCache, crop_rows, full_uri, native_side, relative_link, timeline_sources
from ganforge.report.page import render_page, write_page
from ganforge.report.rundata import FileInfo, Grid, RunView, format_duration, format_size, load_run

REPORT_NAME = "report.html"

BODY = """
{% macro files_table(files) %}{% if files %}<table><tr><th class="left">file</th><th>size</th><th>epoch</th>
<th>step</th><th class="left">kind</th><th class="left">note</th></tr>
{% for f in files %}<tr><td class="left">{{ f.name }}</td><td>{{ f.size }}</td><td>{{ f.epoch }}</td>{#
#}<td>{{ f.step }}</td>
<td class="left">{{ f.kind }}</td><td class="left">{{ f.note }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">None yet.</p>{% endif %}{% endmacro %}
<h1>{{ run.name }} <span class="status status-{{ run.status.split()[0] }}">{{ run.status }}</span></h1>
<p class="description"><b>{{ run.recipe }}</b>{% if run.description %}: {{ run.description }}{% endif %}</p>
<div class="card facts">
{% for label, value in facts %}<div><span>{{ label }}</span>{{ value }}</div>{% endfor %}
</div>
<p>Continue this run: </p><pre class="command">{{ run.resume_command }}</pre>

<h2>Training curves</h2>
{% if charts %}
<div class="axis-choice">x axis:
  <label><input type="radio" name="x-axis" value="step" checked> step</label>
  <label><input type="radio" name="x-axis" value="epoch"> epoch</label>
  <span class="muted">&nbsp;hover for values, drag to zoom, double-click to reset</span></div>
<div class="charts">{% for chart in charts if chart.section == "training" %}
<div class="chart" id="chart-{{ chart.id }}"></div>{% endfor %}</div>
{% else %}<p class="muted">No records yet.</p>{% endif %}

<h2>Samples over training</h2>
{% if timeline.positions %}
<div class="controls"><button id="timeline-play" type="button">Play</button>
  <input id="timeline-slider" type="range" min="0" max="{{ timeline.positions|length - 1 }}"
         value="{{ timeline.positions|length - 1 }}" step="1" aria-label="sample grid">
  <span id="timeline-label"></span></div>
<div class="timeline">
  <div class="panel"><img id="timeline-image-0" alt="sample grid" width="{{ timeline_width }}"
       src="{{ timeline.panels[0].frames[-1] }}"><div class="caption">generated (fixed noise)</div></div>
  {% if real_grid %}<div class="panel"><img alt="real images" width="{{ display_width }}" src="{{ real_grid }}">
       <div class="caption">real training images</div></div>{% endif %}
</div>
{% if embed_note %}<p class="muted">{{ embed_note }}</p>{% endif %}
{% else %}<p class="muted">No sample grids yet.</p>{% endif %}

{% if class_rows %}
<h2>Per class ({{ final_label }})</h2>
<div class="card classes">{% for name, src in class_rows %}
<span>{{ name }}</span><img alt="{{ name }}" src="{{ src }}" width="{{ display_width }}">{% endfor %}</div>
{% elif final_grid %}
<h2>Latest samples ({{ final_label }})</h2><div class="card"><img alt="latest grid" src="{{ final_grid }}"></div>
{% endif %}

<h2>Quality evaluations</h2>
{% if metric_rows %}
<div class="charts">{% for chart in charts if chart.section == "quality" %}
<div class="chart" id="chart-{{ chart.id }}"></div>{% endfor %}</div><br>
<table><tr><th>step</th><th>epoch</th>{% for name in metric_names %}<th>{{ name }}</th>{% endfor %}
<th class="left"></th></tr>
{% for row in metric_rows %}<tr{% if row.best %} class="best"{% endif %}><td>{{ row.step }}</td><td>{{ row.epoch }}</td>
{% for value in row.cells %}<td>{{ value }}</td>{% endfor %}
<td class="left">{% if row.best %}&#9733; best {{ tracked }}{% endif %}</td></tr>
{% endfor %}</table>
{% else %}<p class="muted">No evaluations (enable them with --set eval.every=N).</p>{% endif %}

<h2>Checkpoints</h2>
{{ files_table(checkpoints) }}
<h2>Exports</h2>
{{ files_table(exports) }}

<h2>Resolved config</h2>
<div class="side-by-side">{% for section, items in config_sections %}
<table><tr><th class="left" colspan="2">{{ section }}</th></tr>
{% for key, value in items %}
<tr><td class="left">{{ key }}</td><td class="left"><code>{{ value }}</code></td></tr>{% endfor %}
</table>{% endfor %}</div>
<p class="muted">Report written {{ generated }} by ganforge report.</p>
"""


def write_report(run_dir: Path, out: Path | None = None, embed: bool = True) -> Path:
    """Write the HTML report of ``run_dir`` to ``out`` (default ``RUN/report.html``) atomically; returns its path.

    ``embed``: the sample grids are inside the file as thumbnails (it can be mailed); otherwise they are
    relative links to the run's PNGs (full size, and the page stays small however long the run).
    """
    return ReportWriter(run_dir).write(out, embed)


class ReportWriter:
    """Writes one run's report, keeping the encoded thumbnails between writes (the training observer rewrites
    the report every minute; each grid is encoded once)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.cache = ThumbnailCache()

    def write(self, out: Path | None = None, embed: bool = True) -> Path:
        run = load_run(self.run_dir)
        out = Path(out) if out is not None else self.run_dir / REPORT_NAME
        write_page(out, self.render(run, out, embed))
        return out

    def render(self, run: RunView, out: Path, embed: bool) -> str:
        timeline, side, note = self._timeline(run, out, embed)
        final = run.grids[-1] if run.grids else None
        charts = run_charts(run)
        context: dict[str, Any] = {
            "run": run,
            "facts": header_facts(run),
            "charts": charts,
            "timeline": timeline,
            "display_width": display_width(run),
            # thumbnails are enlarged at most twice (more is only blur); links show the PNGs at the grids' size
            "timeline_width": min(display_width(run), max(2 * side, 300)) if side else display_width(run),
            "embed_note": note,
            "real_grid": _grid_source(run.real_grid, out, embed) if run.real_grid else "",
            "final_label": final.label if final else "",
            "final_grid": _grid_source(final.path, out, embed) if final else "",
            "class_rows": _class_rows(run, final) if final and embed else [],
            **metrics_table(run),
            "checkpoints": [_file_row(f) for f in run.checkpoints],
            "exports": [_file_row(f) for f in run.exports],
            "config_sections": config_sections(run.config),
            "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        data = {"charts": charts, "timeline": timeline}
        return render_page(f"{run.name}: ganforge report", BODY, context, data)

    def _timeline(self, run: RunView, out: Path, embed: bool) -> tuple[dict[str, Any], int, str]:
        """The slider's positions (one per grid) and frames: thumbnails (and their size), or links to the PNGs."""
        grids = run.grids
        if embed:
            frames, side = timeline_sources([g.path for g in grids], self.cache)
            note = f"{len(grids)} grids embedded as {side} px thumbnails; --no-embed links the full-size PNGs."
        else:
            frames, side, note = [relative_link(g.path, out) for g in grids], 0, ""
        panel = {"title": run.name, "frames": frames, "index": list(range(len(frames)))}
        return {"positions": [_position(g) for g in grids], "panels": [panel]}, side, note


def display_width(run: RunView) -> int:
    """How wide grids are shown: their own size, but tiny grids (8x8 digits) enlarged and huge ones reduced."""
    grid = run.grids[-1].path if run.grids else run.real_grid
    return min(max(native_side(grid), 420), 640) if grid else 420


def _position(grid: Grid) -> dict[str, Any]:
    return {"label": grid.label + (f", step {grid.step}" if grid.step and "step" not in grid.label else ""),
            "step": grid.step, "epoch": grid.epoch}  # fmt: skip


def _grid_source(path: Path, out: Path, embed: bool) -> str:
    return full_uri(path) if embed else relative_link(path, out)


def _class_rows(run: RunView, grid: Grid) -> list[tuple[str, str]]:
    """Conditional models: the latest grid split into its rows, row k = class k."""
    classes = run.config_value("model.num_classes", 0)
    if not isinstance(classes, int) or classes <= 0:
        return []
    return [(f"class {k}", src) for k, src in enumerate(crop_rows(grid.path, classes))]


def header_facts(run: RunView) -> list[tuple[str, str]]:
    planned = run.epochs_planned
    device = str(run.config_value("train.device", "?"))
    if run.device_used and run.device_used != device:
        device += f" (ran on {run.device_used})"
    if run.world_size > 1:
        device += f", {run.world_size} processes"
    best = run.best_eval
    tracked, _ = run.tracked
    facts = [
        ("status", f"{run.status}: {run.status_detail}" if run.status_detail != run.status else run.status),
        ("steps", str(run.steps)),
        ("epochs", f"{run.epochs_done} of {planned}" if planned else str(run.epochs_done)),
        ("training time", format_duration(run.time_s)),
        ("device", device),
        ("precision", str(run.config_value("train.precision", "?"))),
        ("batch size", str(run.config_value("train.batch_size", "?"))),
        ("run directory", str(run.path)),
    ]
    if best is not None and tracked:
        facts.insert(4, (f"best {tracked}", f"{_number(best[tracked])} at epoch {_number(best.get('epoch_progress'))}"))
    return facts


def metrics_table(run: RunView) -> dict[str, Any]:
    names = run.metric_names
    best = run.best_eval
    rows = [
        {
            "step": record.get("step"),
            "epoch": _number(record.get("epoch_progress")),
            "cells": [_number(record.get(name)) for name in names],
            "best": record is best,
        }
        for record in run.of_kind("eval")
    ]
    return {"metric_names": names, "metric_rows": rows, "tracked": run.tracked[0] or ""}


def config_sections(config: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    top = [(k, json.dumps(v)) for k, v in config.items() if not isinstance(v, dict)]
    sections = [("run", top)] if top else []
    sections += [(k, [(f, json.dumps(x)) for f, x in v.items()]) for k, v in config.items() if isinstance(v, dict)]
    return sections


def _file_row(info: FileInfo) -> dict[str, Any]:
    return {
        "name": info.path.name if info.path.parent.name != "exports" else f"exports/{info.path.name}",
        "size": format_size(info.size),
        "epoch": "" if info.epoch is None else info.epoch,
        "step": "" if info.step is None else info.step,
        "kind": info.kind,
        "note": info.note or (f"made on {info.device}" if info.device else ""),
    }


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.4e}"
    return str(value)
