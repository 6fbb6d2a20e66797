"""What the collapse and divergence alarms flag during a real run, against its FD curve.

Trains ``--recipe`` (default ``mnist-conv``, whose losses oscillate) for ``--minutes`` of training time with
quality evaluations every ``--eval-steps`` steps and both alarms at ``warn``, then draws from the run's
``metrics.jsonl``: the tracked metric at each evaluation (top), D(x) - D(G(z)) per log window (bottom), and
a vertical line at every alarm record, labelled with its guard and triggers. Prints the alarms.

Writes ``alarms.png`` and ``alarms.json`` (the evaluations and alarms) into ``--out``.

Example (what docs/quality.md reports; about 15 minutes on a 2-core CPU):
  python benchmarks/alarm_figure.py --recipe mnist-conv --data-root ../shared/data/mnist --split test --minutes 12
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from time_to_quality import _ganforge


def train(args: argparse.Namespace, run: Path) -> None:
    _ganforge("train", args.recipe, "--data-root", args.data_root, "--split", args.split,
              "--max-time", f"{args.minutes}", "--out", str(run), "--overwrite", "--set", "train.progress=false",
              "--set", "eval.every=0", "--set", f"eval.every_steps={args.eval_steps}",
              "--set", f"eval.num_samples={args.num}", "--set", "train.on_collapse=warn",
              "--set", "train.on_divergence=warn", *[x for s in args.set for x in ("--set", s)],
              log=args.out / "train.log")  # fmt: skip


def plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in records if r["kind"] == "eval"]
    steps = [r for r in records if r["kind"] == "step"]
    alarms = [r for r in records if r["kind"] == "alarm"]
    tracked = evals[0]["tracked"] if evals else "fd"
    fig, (ax_metric, ax_gap) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(3, 2))
    ax_metric.plot([r["step"] for r in evals], [r[tracked] for r in evals], marker="o", label=tracked)
    best = [min(r[tracked] for r in evals[: i + 1]) for i in range(len(evals))]
    ax_metric.plot([r["step"] for r in evals], best, color="grey", linestyle="--", label="best so far")
    ax_metric.set(ylabel=tracked, yscale="log", title=title)
    ax_gap.plot([r["step"] for r in steps], [r["d_real"] - r["d_fake"] for r in steps], lw=0.8, label="D(x) - D(G(z))")
    ax_gap.set(xlabel="step", ylabel="D(x) - D(G(z))", ylim=(-0.2, 1.05))
    for alarm in alarms:
        colour = "tab:red" if alarm["guard"] == "collapse" else "tab:purple"
        for ax in (ax_metric, ax_gap):
            ax.axvline(alarm["step"], color=colour, alpha=0.7, linestyle=":")
        label = f"{alarm['guard']}: {', '.join(alarm['triggers'])}"
        ax_metric.annotate(label, (alarm["step"], 1.0), xycoords=("data", "axes fraction"), rotation=90,
                           va="top", ha="right", fontsize=7, color=colour)  # fmt: skip
    for ax in (ax_metric, ax_gap):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="mnist-conv")
    parser.add_argument("--minutes", type=float, default=12.0, help="training time")
    parser.add_argument("--eval-steps", type=int, default=500, help="steps between evaluations")
    parser.add_argument("--num", type=int, default=2000, help="samples per evaluation")
    parser.add_argument("--data-root", default="../shared/data/mnist")
    parser.add_argument("--split", default="test")
    parser.add_argument("--set", action="append", default=[], help="extra overrides")
    parser.add_argument("--run", type=Path, help="plot this finished run instead of training one")
    parser.add_argument("--out", type=Path, default=Path("alarm_figure"))
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    run = args.run or args.out / "run"
    if args.run is None:
        train(args, run)
    records = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
    evals = [r for r in records if r["kind"] == "eval"]
    alarms = [r for r in records if r["kind"] == "alarm"]
    title = f"{args.recipe}: alarms against the tracked metric ({os.cpu_count()} CPUs)"
    plot(records, args.out / "alarms.png", title)
    tracked = evals[0]["tracked"] if evals else None
    summary = {"evaluations": [{"step": r["step"], tracked: r[tracked]} for r in evals], "alarms": alarms}
    (args.out / "alarms.json").write_text(json.dumps(summary, indent=1))
    for r in evals:
        print(f"  eval  step {r['step']:6d}  {tracked} {r[tracked]:.2f}")
    for a in alarms:
        print(f"  ALARM step {a['step']:6d}  {a['guard']}: {a['message']}")
    print(f"{len(evals)} evaluations, {len(alarms)} alarms; figure: {args.out / 'alarms.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
