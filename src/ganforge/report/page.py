"""The HTML page shared by ``report`` and ``compare``: one self-contained file, no server, no network.

Plotly's offline bundle is embedded gzip-compressed (4.8 MB of JavaScript becomes 1.9 MB of base64) and
unpacked by the browser's own ``DecompressionStream``; charts and the sample timeline are drawn from one
JSON block. The page sets ``data-ready="1"`` on ``<body>`` once every chart is drawn (tests wait on it).
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from ganforge.checkpoint import atomic_write_text
from ganforge.errors import GanforgeError

PAGE_SCRIPT = r"""
const DATA = JSON.parse(document.getElementById('report-data').textContent);
let xAxis = 'step';

async function loadPlotly() {
  const packed = document.getElementById('plotly-gzip').textContent.trim();
  const bytes = Uint8Array.from(atob(packed), c => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
  const script = document.createElement('script');
  script.textContent = await new Response(stream).text();
  document.head.appendChild(script);
  if (!window.Plotly) throw new Error('the embedded plotly bundle did not load');
}

function marker(position) {
  // a dotted vertical line where the timeline's grid was drawn
  const x = position ? position[xAxis] : null;
  if (x === null || x === undefined) return [];
  return [{type: 'line', x0: x, x1: x, yref: 'paper', y0: 0, y1: 1, line: {dash: 'dot', color: '#888', width: 1}}];
}

function setAxis(axis) {
  xAxis = axis;
  for (const chart of DATA.charts) {
    const div = document.getElementById('chart-' + chart.id);
    Plotly.restyle(div, {x: chart.x[axis]});
    Plotly.relayout(div, {'xaxis.title.text': axis, 'xaxis.autorange': true, shapes: marker(currentPosition())});
  }
}

async function drawCharts() {
  for (const chart of DATA.charts) {
    const div = document.getElementById('chart-' + chart.id);
    const options = {responsive: true, displaylogo: false, displayModeBar: 'hover'};
    await Plotly.newPlot(div, chart.data, chart.layout, options);
  }
  for (const input of document.querySelectorAll('input[name=x-axis]')) {
    input.addEventListener('change', () => setAxis(input.value));
  }
}

function currentPosition() {
  const slider = document.getElementById('timeline-slider');
  return slider && DATA.timeline ? DATA.timeline.positions[Number(slider.value)] : null;
}

function setupTimeline() {
  const timeline = DATA.timeline;
  const slider = document.getElementById('timeline-slider');
  if (!slider || !timeline || !timeline.positions.length) return;
  const label = document.getElementById('timeline-label');
  const images = timeline.panels.map((_, i) => document.getElementById('timeline-image-' + i));
  const show = () => {
    const index = Number(slider.value);
    const position = timeline.positions[index];
    label.textContent = position.label + ' (' + (index + 1) + ' of ' + timeline.positions.length + ')';
    timeline.panels.forEach((panel, i) => {
      const src = panel.index[index] >= 0 ? panel.frames[panel.index[index]] : null;
      images[i].style.visibility = src ? 'visible' : 'hidden';
      if (src) images[i].src = src;
    });
    if (window.Plotly) {
      for (const chart of DATA.charts) Plotly.relayout('chart-' + chart.id, {shapes: marker(position)});
    }
  };
  slider.addEventListener('input', show);
  const button = document.getElementById('timeline-play');
  let timer = null;
  const last = timeline.positions.length - 1;
  const stop = () => { clearInterval(timer); timer = null; button.textContent = 'Play'; };
  button.addEventListener('click', () => {
    if (timer !== null) { stop(); return; }
    if (Number(slider.value) === last) slider.value = 0;
    button.textContent = 'Pause';
    timer = setInterval(() => {
      slider.value = Math.min(Number(slider.value) + 1, last);
      show();
      if (Number(slider.value) === last) stop();
    }, 350);
  });
  show();
}

(async () => {
  setupTimeline();
  await loadPlotly();
  await drawCharts();
  const position = currentPosition();
  if (position) for (const chart of DATA.charts) Plotly.relayout('chart-' + chart.id, {shapes: marker(position)});
  document.body.dataset.ready = '1';
})().catch(error => { console.error('report: ' + error); document.body.dataset.ready = 'error'; });
"""

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0; color: #222; background: #f6f7f9; }
main { max-width: 1280px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; }
.description { color: #555; margin: 0 0 12px; }
.card { background: #fff; border: 1px solid #e2e4e8; border-radius: 8px; padding: 12px 16px; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 6px 18px; }
.facts div span { display: block; color: #777; font-size: 12px; }
.status { display: inline-block; padding: 1px 9px; border-radius: 10px; font-weight: 600; font-size: 13px; }
.status-finished { background: #d9f2df; color: #17612c; } .status-running { background: #dbe9fb; color: #174a8c; }
.status-stopped, .status-interrupted { background: #fdebd2; color: #8a4b08; } .status-not { background: #eee; }
pre, code { font: 12.5px ui-monospace, 'SFMono-Regular', Menlo, monospace; }
pre.command { background: #1f2430; color: #e6e6e6; padding: 8px 12px; border-radius: 6px; overflow-x: auto; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(290px, 1fr)); gap: 12px; }
.chart { background: #fff; border: 1px solid #e2e4e8; border-radius: 8px; min-height: 340px; }
.axis-choice { margin-bottom: 8px; }
.timeline { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.panel { text-align: center; } .panel img { max-width: 100%; border: 1px solid #ddd; }
.panel .caption { color: #555; font-size: 12px; }
.controls { display: flex; align-items: center; gap: 12px; margin: 10px 0; }
.controls input[type=range] { flex: 1; max-width: 640px; }
table { border-collapse: collapse; background: #fff; font-size: 13px; }
th, td { border: 1px solid #e2e4e8; padding: 3px 9px; text-align: right; } th { background: #f0f2f5; }
td.left, th.left { text-align: left; } tr.best td { background: #fff6d6; font-weight: 600; }
.classes { display: grid; grid-template-columns: auto auto; gap: 2px 8px; align-items: center; justify-content: start; }
.classes span { color: #555; font-size: 12px; text-align: right; }
.classes img { image-rendering: pixelated; display: block; }
.muted { color: #888; } details summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
.side-by-side { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ style }}</style>
</head>
<body>
<main>
{{ body }}
</main>
<script id="report-data" type="application/json">{{ data_json }}</script>
<script id="plotly-gzip" type="application/octet-stream">{{ plotly_gzip }}</script>
<script>{{ script }}</script>
</body></html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


@functools.lru_cache(maxsize=1)
def plotly_gzip_base64() -> str:
    """Plotly's offline bundle (the one the installed plotly package ships), gzipped and base64-encoded."""
    from plotly.offline import get_plotlyjs

    return base64.b64encode(gzip.compress(get_plotlyjs().encode("utf-8"), compresslevel=9, mtime=0)).decode("ascii")


def script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no ``</script>`` can close it early)."""
    return json.dumps(value, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")


def write_page(out: Path, page: str) -> None:
    """Write ``page`` to ``out`` atomically; an unwritable place is a one-line user error."""
    try:
        atomic_write_text(out, page)
    except OSError as exc:
        raise GanforgeError(f"cannot write {out} ({exc.strerror}); choose another --out") from None


@functools.lru_cache(maxsize=8)
def _template(source: str) -> jinja2.Template:
    return _ENV.from_string(source)  # compiled once per process (the training observer renders every minute)


def render_page(title: str, body_template: str, context: dict[str, Any], data: dict[str, Any]) -> str:
    """The whole page: ``body_template`` (jinja2, autoescaped) rendered with ``context``; ``data`` for the
    scripts (``charts`` and ``timeline``)."""
    body = _template(body_template).render(**context)
    return _template(TEMPLATE).render(
        title=title,
        style=Markup(STYLE),
        body=Markup(body),
        data_json=Markup(script_json(data)),
        plotly_gzip=plotly_gzip_base64(),
        script=Markup(PAGE_SCRIPT),
    )
