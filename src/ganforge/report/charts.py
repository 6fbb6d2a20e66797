"""Plotly chart specifications (JSON) for a run's records, or several runs overlaid.

Each chart is ``{"id", "title", "section", "data", "layout", "x": {"step": [...], "epoch": [...]}}``: the traces are
plotly's own (built with ``plotly.graph_objects``, so a misspelt property fails here, not in the browser);
``x`` holds each trace's x values against both axes, and the page switches between them.
"""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

from ganforge.report.rundata import RunView

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
# (record key, legend name, colour) of the training curves
LOSSES = (("d_loss", "D loss", "#1f77b4"), ("g_loss", "G loss", "#ff7f0e"))
D_OUTPUTS = (
    ("d_real", "D(x)", "#2ca02c"),
    ("d_fake", "D(G(z)) in the D step", "#d62728"),
    ("d_fake_after", "D(G(z)) in the G step", "#9467bd"),
)
# which way the metrics of ganforge.metrics improve (MetricSpec.lower_is_better), by result-key prefix: a key is
# BASE_EXTRACTOR (fd_mnist-classifier); the tracked metric's direction comes from the eval record itself
LOWER_IS_BETTER = ("fd_", "fid", "kid_")
HIGHER_IS_BETTER = ("precision_", "recall_", "classifier_score_", "coverage_", "conditional_accuracy_")
NO_DIRECTION = ("kid_se_",)  # the standard error of kid: drawn as kid's error bars, not ranked


def _clean(value: Any) -> float | None:
    """JSON has no NaN or infinity: such points become gaps."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float | None], list[float | None]]:
    kept = [r for r in records if key in r and "step" in r]
    return [r["step"] for r in kept], [r.get("epoch_progress") for r in kept], [_clean(r[key]) for r in kept]


class Chart:
    """One chart being built: traces plus their x values against step and epoch."""

    def __init__(
        self,
        chart_id: str,
        title: str,
        y_title: str,
        y_range: tuple[float, float] | None = None,
        section: str = "training",
    ) -> None:
        self.chart_id, self.title, self.section = chart_id, title, section  # section: where the page shows it
        self.traces: list[dict[str, Any]] = []
        self.x: dict[str, list[list[Any]]] = {"step": [], "epoch": []}
        yaxis: dict[str, Any] = {"title": {"text": y_title}, "zeroline": False}
        if y_range is not None:
            yaxis["range"] = list(y_range)
        self.layout: dict[str, Any] = {
            "title": {"text": title, "x": 0.01, "font": {"size": 14}},
            "template": "plotly_white",
            "height": 340,
            "margin": {"l": 55, "r": 15, "t": 40, "b": 30},
            "hovermode": "x unified",
            "legend": {"orientation": "h", "y": -0.22, "yanchor": "top", "font": {"size": 11}},
            "xaxis": {"title": {"text": "step", "standoff": 4}},
            "modebar": {"orientation": "v"},
            "yaxis": yaxis,
        }

    def add(self, records: list[dict[str, Any]], key: str, **style: Any) -> None:
        steps, epochs, values = _series(records, key)
        if not any(v is not None for v in values):
            return
        trace = go.Scatter(x=steps, y=values, **style).to_plotly_json()
        self.traces.append(trace)
        self.x["step"].append(steps)
        self.x["epoch"].append(epochs)

    def mark(self, record: dict[str, Any], key: str, name: str) -> None:
        """A star on one point (the best evaluation)."""
        value = _clean(record.get(key))
        if value is None:
            return
        trace = go.Scatter(
            x=[record["step"]], y=[value], mode="markers", name=name,
            marker={"symbol": "star", "size": 16, "color": "gold", "line": {"color": "black", "width": 1}},
        ).to_plotly_json()  # fmt: skip
        self.traces.append(trace)
        self.x["step"].append([record["step"]])
        self.x["epoch"].append([record.get("epoch_progress")])

    def spec(self) -> dict[str, Any] | None:
        if not self.traces:
            return None
        return {"id": self.chart_id, "title": self.title, "section": self.section, "data": self.traces,
                "layout": self.layout, "x": self.x}  # fmt: skip


def lower_is_better(run: RunView, metric: str) -> bool | None:
    """Whether ``metric`` improves downwards: what the eval records say for the tracked one, else by name."""
    tracked, lower = run.tracked
    if metric == tracked:
        return lower
    if metric.startswith(NO_DIRECTION):
        return None
    if metric.startswith(LOWER_IS_BETTER):
        return True
    if metric.startswith(HIGHER_IS_BETTER):
        return False
    return None  # unknown: not marked


def run_charts(run: RunView) -> list[dict[str, Any]]:
    """The charts of one run: losses, D outputs, images/s and the tracked metric (section "training"), then one
    per other quality metric (section "quality")."""
    steps, epochs, evals = run.of_kind("step"), run.of_kind("epoch"), run.of_kind("eval")
    charts = []
    for chart_id, title, y_title, curves, y_range in (
        ("losses", "D and G loss (dots: epoch means)", "loss", LOSSES, None),
        ("d-outputs", "Mean D outputs (dots: epoch means)", "D", D_OUTPUTS, (-0.02, 1.02)),
    ):
        chart = Chart(chart_id, title, y_title, y_range)
        for key, name, color in curves:
            chart.add(steps, key, name=name, mode="lines", line={"color": color, "width": 1.2}, opacity=0.8,
                      legendgroup=key)  # fmt: skip
            chart.add(epochs, key, name=f"{name} (epoch mean)", mode="markers", marker={"color": color, "size": 6},
                      legendgroup=key, showlegend=False)  # fmt: skip
        charts.append(chart.spec())
    speed = Chart("speed", "Training speed", "images/s")
    speed.add(steps, "images_per_s", name="images/s", mode="lines", line={"color": "#17becf"})
    charts.append(speed.spec())
    tracked, _ = run.tracked
    names = run.metric_names
    for index, metric in sorted(enumerate(names), key=lambda item: item[1] != tracked):  # the tracked one first
        if metric.startswith(NO_DIRECTION) and metric.replace("_se_", "_", 1) in names:
            continue  # kid_se_X is drawn as the error bars of kid_X
        direction = lower_is_better(run, metric)
        hint = {True: "lower is better", False: "higher is better", None: ""}[direction]
        is_tracked = metric == tracked
        chart = Chart(f"metric-{index}", metric + (" (tracked)" if is_tracked else ""), hint,
                      section="training" if is_tracked else "quality")  # fmt: skip
        style: dict[str, Any] = {"mode": "lines+markers", "line": {"color": COLORS[4]}}
        error_key = metric.replace("_", "_se_", 1)
        if error_key in names:
            style["error_y"] = {"type": "data", "array": [_clean(r.get(error_key)) for r in evals if metric in r]}
        chart.add(evals, metric, name=metric, **style)
        best = _best(evals, metric, direction)
        if best is not None:
            chart.mark(best, metric, "best")
        if direction and _spans_decades(evals, metric):
            chart.layout["yaxis"]["type"] = "log"  # FD falls by orders of magnitude early on
        charts.append(chart.spec())
    return [c for c in charts if c is not None]


def _best(evals: list[dict[str, Any]], metric: str, lower: bool | None) -> dict[str, Any] | None:
    scored = [r for r in evals if _clean(r.get(metric)) is not None]
    if lower is None or not scored:
        return None
    return min(scored, key=lambda r: r[metric] if lower else -r[metric])


def _spans_decades(evals: list[dict[str, Any]], metric: str) -> bool:
    values = [v for v in (_clean(r.get(metric)) for r in evals) if v is not None]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 20


def compare_charts(runs: list[RunView]) -> list[dict[str, Any]]:
    """The same charts with the runs overlaid: one colour per run, D solid and G dashed."""
    charts = []
    groups = (
        ("losses", "D (solid) and G (dashed) loss", "loss", (("d_loss", "D", "solid"), ("g_loss", "G", "dash"))),
        ("d-outputs", "D(x) (solid) and D(G(z)) (dashed)", "D",
         (("d_real", "D(x)", "solid"), ("d_fake", "D(G(z))", "dash"))),
        ("speed", "Training speed (images/s)", "images/s", (("images_per_s", "images/s", "solid"),)),
    )  # fmt: skip
    for chart_id, title, y_title, curves in groups:
        chart = Chart(chart_id, title, y_title)
        for index, run in enumerate(runs):
            color = COLORS[index % len(COLORS)]
            for key, name, dash in curves:
                chart.add(run.of_kind("step"), key, name=f"{run.name}: {name}", mode="lines",
                          line={"color": color, "width": 1.3, "dash": dash}, legendgroup=run.name)  # fmt: skip
        charts.append(chart.spec())
    metrics: list[str] = []
    for run in runs:
        metrics += [m for m in run.metric_names if m not in metrics]
    for index, metric in enumerate(metrics):
        if metric.startswith(NO_DIRECTION) and metric.replace("_se_", "_", 1) in metrics:
            continue  # a standard error: the single-run report draws it as error bars
        having = [run for run in runs if metric in run.metric_names]
        direction = lower_is_better(having[0], metric)
        hint = {True: "lower is better", False: "higher is better", None: ""}[direction]
        chart = Chart(f"metric-{index}", metric, hint)
        for run_index, run in enumerate(runs):
            color = COLORS[run_index % len(COLORS)]
            chart.add(run.of_kind("eval"), metric, name=run.name, mode="lines+markers", line={"color": color})
        if direction and any(_spans_decades(run.of_kind("eval"), metric) for run in having):
            chart.layout["yaxis"]["type"] = "log"
        charts.append(chart.spec())
    return [c for c in charts if c is not None]
