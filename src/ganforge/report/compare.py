"""``write_compare``: several runs in one page, their curves overlaid and their grids side by side."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ganforge.errors import ConfigError
from ganforge.report.charts import COLORS, compare_charts
from ganforge.report.images import TIMELINE_BUDGET_BYTES, ThumbnailCache, full_uri, relative_link, timeline_sources
from ganforge.report.page import render_page, write_page
from ganforge.report.rundata import Grid, RunView, format_duration, load_run
from ganforge.report.runs import best_text

BODY = """
<h1>Comparing {{ runs|length }} runs</h1>
<table><tr><th class="left">run</th><th class="left">recipe</th><th class="left">status</th><th>steps</th>
<th>epochs</th><th>training time</th><th class="left">best metric</th><th class="left">path</th></tr>
{% for row in summary %}<tr><td class="left"><span style="color: {{ row.color }}">&#9679;</span> {{ row.name }}</td>
<td class="left">{{ row.recipe }}</td><td class="left">{{ row.status }}</td><td>{{ row.steps }}</td>
<td>{{ row.epochs }}</td>
<td>{{ row.time }}</td><td class="left">{{ row.best }}</td><td class="left">{{ row.path }}</td></tr>{% endfor %}
</table>

<h2>Config differences</h2>
{% if differences %}
<table><tr><th class="left">field</th>{% for run in runs %}<th class="left">{{ run.name }}</th>{% endfor %}</tr>
{% for key, values in differences %}<tr><td class="left">{{ key }}</td>
{% for value in values %}<td class="left"><code>{{ value }}</code></td>{% endfor %}</tr>{% endfor %}</table>
{% else %}<p class="muted">The resolved configs are identical.</p>{% endif %}

<h2>Training curves</h2>
<div class="axis-choice">x axis:
  <label><input type="radio" name="x-axis" value="step" checked> step</label>
  <label><input type="radio" name="x-axis" value="epoch"> epoch</label></div>
<div class="charts">{% for chart in charts %}<div class="chart" id="chart-{{ chart.id }}"></div>{% endfor %}</div>

<h2>Final samples</h2>
<div class="side-by-side">{% for panel in finals %}<div class="panel card"><b>{{ panel.name }}</b>
<div class="side-by-side">{% for caption, src in panel.images %}
<div class="panel"><img alt="{{ caption }}" src="{{ src }}">
<div class="caption">{{ caption }}</div></div>{% endfor %}</div>
{% if not panel.images %}<p class="muted">no grids</p>{% endif %}</div>{% endfor %}</div>

<h2>Samples over training</h2>
{% if timeline.positions %}
<div class="controls"><button id="timeline-play" type="button">Play</button>
  <input id="timeline-slider" type="range" min="0" max="{{ timeline.positions|length - 1 }}"
         value="{{ timeline.positions|length - 1 }}" step="1" aria-label="sample grids">
  <span id="timeline-label"></span></div>
<div class="timeline">{% for panel in timeline.panels %}<div class="panel"><img id="timeline-image-{{ loop.index0 }}"
  alt="{{ panel.title }}"{% if side %} width="{{ side }}"{% endif %}>
  <div class="caption">{{ panel.title }}</div></div>{% endfor %}</div>
{% else %}<p class="muted">No sample grids yet.</p>{% endif %}
<p class="muted">Written {{ generated }} by ganforge compare.</p>
"""


def write_compare(run_dirs: list[Path], out: Path, embed: bool = True) -> Path:
    """Write the comparison page of ``run_dirs`` (two or more) to ``out`` atomically; returns ``out``."""
    if len(run_dirs) < 2:
        raise ConfigError("compare needs at least two run directories")
    runs = [load_run(Path(p)) for p in run_dirs]
    out = Path(out)
    charts = compare_charts(runs)
    timeline, side = _timeline(runs, out, embed)
    context = {
        "runs": runs,
        "summary": [_summary(run, COLORS[i % len(COLORS)]) for i, run in enumerate(runs)],
        "differences": config_differences([run.config for run in runs]),
        "charts": charts,
        "finals": [_finals(run, out, embed) for run in runs],
        "timeline": timeline,
        "side": side,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    page = render_page(f"ganforge compare: {', '.join(r.name for r in runs)}", BODY, context,
                       {"charts": charts, "timeline": timeline})  # fmt: skip
    write_page(out, page)
    return out


def _summary(run: RunView, color: str) -> dict[str, Any]:
    planned = run.epochs_planned
    return {
        "color": color,
        "name": run.name,
        "recipe": run.recipe,
        "status": run.status if run.status in ("finished", "running") else f"{run.status}: {run.status_detail}",
        "steps": run.steps,
        "epochs": f"{run.epochs_done} of {planned}" if planned else run.epochs_done,
        "time": format_duration(run.time_s),
        "best": best_text(run) or "-",
        "path": str(run.path),
    }


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(configs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(field, each run's value as JSON) for the fields whose values are not all equal; a missing field is ''."""
    flats = [flatten(c) for c in configs]
    keys: list[str] = []
    for flat in flats:
        keys += [k for k in flat if k not in keys]
    missing = object()
    rows = []
    for key in keys:
        values = [flat.get(key, missing) for flat in flats]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, ["" if v is missing else json.dumps(v) for v in values]))
    return rows


def _finals(run: RunView, out: Path, embed: bool) -> dict[str, Any]:
    """The last grid, and the grid drawn at the best evaluation's epoch when there is one."""
    images = []
    if run.grids:
        last = run.grids[-1]
        images.append((f"last: {last.label}", _source(last, out, embed)))
        best = run.best_eval
        if best is not None:
            at_best = [g for g in run.grids if g.epoch is not None and g.epoch == best.get("epoch_progress")]
            if at_best and at_best[0] is not last:
                images.append((f"best: {at_best[0].label}", _source(at_best[0], out, embed)))
    return {"name": run.name, "images": images}


def _source(grid: Grid, out: Path, embed: bool) -> str:
    return full_uri(grid.path) if embed else relative_link(grid.path, out)


def _timeline(runs: list[RunView], out: Path, embed: bool) -> tuple[dict[str, Any], int]:
    """One slider over the union of the runs' grid epochs; each run shows its latest grid up to there."""
    epochs = sorted({g.epoch for run in runs for g in run.grids if g.epoch is not None})
    cache, side, panels = ThumbnailCache(), 0, []
    for run in runs:
        grids = [g for g in run.grids if g.epoch is not None]
        if embed:
            sources, run_side = timeline_sources([g.path for g in grids], cache, TIMELINE_BUDGET_BYTES // len(runs))
            side = max(side, run_side)
        else:
            sources = [relative_link(g.path, out) for g in grids]
        # per position the index of the frame shown (-1: none yet); each frame is stored once
        index = [max((i for i, g in enumerate(grids) if g.epoch <= epoch), default=-1) for epoch in epochs]
        panels.append({"title": run.name, "frames": sources, "index": index})
    positions = [{"label": f"epoch {e:g}", "step": None, "epoch": e} for e in epochs]
    return {"positions": positions, "panels": panels}, side
