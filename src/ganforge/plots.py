"""Loss-curve plots from ``metrics.jsonl`` (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

from ganforge.checkpoint import atomic_write

matplotlib.use("Agg")  # never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """D and G loss, D(x) and D(G(z)), and any quality metric, against (fractional) epoch.

    Thin lines are the per-log-window values; markers are the per-epoch means, the
    curves the reference scripts drew.
    """
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    evals = [r for r in records if r.get("kind") == "eval"]
    panels = 3 if evals else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.8))
    # fixed margins: constrained_layout re-solves the layout on every draw, half of a 0.4 s save
    fig.subplots_adjust(left=0.17 / panels, right=0.985, bottom=0.13, top=0.86 if title else 0.92, wspace=0.22)

    def series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
        kept = [r for r in rows if r.get(key) is not None]
        return [r["epoch_progress"] for r in kept], [r[key] for r in kept]

    loss_ax, prob_ax = axes[0], axes[1]
    for key, label, color in (("d_loss", "D loss", "tab:blue"), ("g_loss", "G loss", "tab:orange")):
        loss_ax.plot(*series(steps, key), color=color, alpha=0.35, linewidth=0.8)
        loss_ax.plot(*series(epochs, key), "o-", color=color, label=label, markersize=3)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("losses")
    loss_ax.legend()
    for key, label, color in (("d_real", "D(x)", "tab:green"), ("d_fake", "D(G(z))", "tab:red")):
        prob_ax.plot(*series(steps, key), color=color, alpha=0.35, linewidth=0.8)
        prob_ax.plot(*series(epochs, key), "o-", color=color, label=label, markersize=3)
    prob_ax.set_ylim(-0.02, 1.02)
    prob_ax.set_xlabel("epoch")
    prob_ax.set_title("discriminator outputs (mean)")
    prob_ax.legend()
    if evals:
        _plot_quality(axes[2], evals, series)
    if title:
        fig.suptitle(title)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def _plot_quality(ax: Any, evals: list[dict[str, Any]], series: Any) -> None:
    """The metric that ranks checkpoints, with its best point marked (the others are in metrics.jsonl).

    Metrics of different scales (FD in the hundreds, precision in [0, 1]) on one axis would flatten all
    but the largest, so only the tracked one is drawn.
    """
    tracked = evals[-1].get("tracked")
    if tracked is None:  # records written before the key existed: the first FD-like number
        numeric = [k for k, v in evals[-1].items() if isinstance(v, float) and k != "epoch_progress"]
        tracked = next((k for k in numeric if k.startswith("fd")), numeric[0] if numeric else None)
    if tracked is None:
        return
    x, y = series(evals, tracked)
    ax.plot(x, y, "o-", color="tab:purple", label=tracked, markersize=3)
    lower_is_better = evals[-1].get("tracked_lower_is_better", tracked.startswith(("fd", "fid", "kid")))
    if y:
        best = min(range(len(y)), key=lambda i: y[i] if lower_is_better else -y[i])
        ax.plot([x[best]], [y[best]], "*", color="gold", markeredgecolor="black", markersize=12, label="best")
        ax.annotate(f"{y[best]:.3g}", (x[best], y[best]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if lower_is_better and y and min(y) > 0 and max(y) / min(y) > 20:
        ax.set_yscale("log")  # FD falls by orders of magnitude early on
    ax.set_xlabel("epoch")
    ax.set_title(f"sample quality ({'lower' if lower_is_better else 'higher'} is better)")
    ax.legend(fontsize=7)
