"""Loss-curve plots from ``metrics.jsonl`` (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

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
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.8), constrained_layout=True)

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
        quality_ax = axes[2]
        keys = sorted({k for r in evals for k, v in r.items() if isinstance(v, float) and k != "epoch_progress"})
        for key in keys:
            quality_ax.plot(*series(evals, key), "o-", label=key, markersize=3)
        quality_ax.set_xlabel("epoch")
        quality_ax.set_title("sample quality (lower FD is better)")
        quality_ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
