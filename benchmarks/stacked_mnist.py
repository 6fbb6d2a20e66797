"""Stacked MNIST (1,000 modes): how many modes each recipe keeps for the same training time.

Each recipe trains with ``ganforge train`` for the same wall-clock budget (its epoch limit lifted, so the
budget ends the run), stopping at training-time marks; at each mark ``ganforge evaluate RUN --metrics
modes,fd,coverage --num N`` counts the modes covered out of 1,000 and the KL divergence of the mode
histogram to uniform (the EMA generator where the recipe keeps one), and training resumes. Resume is
bit-exact, so the stops do not change the trajectory, and evaluation time is not training time.
The real-vs-real figures at the same N are measured first.

Writes into ``--out``: ``stacked_mnist.json``, ``stacked_mnist.png`` (modes and KL against training
time), ``grids.png`` (each recipe's final 10x10 grid, side by side) and prints a Markdown table.

Example (what docs/quality.md reports; 64 minutes on a 2-core Zen 3):
  python benchmarks/stacked_mnist.py --data-root ../shared/data/mnist --split test --minutes 30 --marks 10,20,30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from time_to_quality import _ganforge, train_to_marks

RECIPES = ["stacked-mnist-dcgan", "stacked-mnist-modern"]
SUFFIX = "_mnist-classifier-per-channel"
TARGET_MODES, TARGET_KL = 990, 0.1  # issue 13's target for the modern recipe


def _scores(path: Path) -> dict:
    results = json.loads(path.read_text())["results"]
    return {
        key: float(results[key + SUFFIX]) for key in ("modes", "modes_kl", "fd", "coverage") if key + SUFFIX in results
    }


def measure_recipe(recipe: str, marks: list[float], args: argparse.Namespace, out: Path) -> list[dict]:
    run, log = out / "runs" / recipe, out / f"{recipe}.log"
    data = ["--data-root", args.data_root, "--split", args.split]
    extra = [x for s in args.set for x in ("--set", s)]
    points = []
    for minutes, scores, seconds, step in train_to_marks(run, log, recipe, data + extra, marks, "modes,fd,coverage",
                                                          args.num, out):  # fmt: skip
        point = {"recipe": recipe, "mark_min": minutes, "train_s": seconds, "step": step, **_scores(scores)}
        points.append(point)
        print(f"  {recipe:22s} {seconds / 60:5.1f} min  step {step:6d}  modes {point['modes']:5.0f}  "
              f"KL {point['modes_kl']:.3f}  FD {point['fd']:.1f}", flush=True)  # fmt: skip
    _ganforge("generate", str(run), "--num", "100", "--nrow", "10", "--seed", "0",
              "--out", str(out / f"{recipe}-grid.png"), log=log)  # fmt: skip
    return points


def real_vs_real(args: argparse.Namespace, out: Path) -> dict:
    path = out / "real-vs-real.json"
    _ganforge("evaluate", "--real-vs-real", "--dataset", "stacked-mnist", "--data-root", args.data_root,
              "--split", args.split, "--metrics", "modes,fd,coverage", "--num", str(args.num), "--json", str(path),
              log=out / "real-vs-real.log")  # fmt: skip
    return _scores(path)


def plot_curves(points: list[dict], floor: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_modes, ax_kl) = plt.subplots(1, 2, figsize=(11, 4.2))
    for recipe in dict.fromkeys(p["recipe"] for p in points):
        rows = [p for p in points if p["recipe"] == recipe]
        minutes = [p["train_s"] / 60 for p in rows]
        ax_modes.plot(minutes, [p["modes"] for p in rows], marker="o", label=recipe)
        ax_kl.plot(minutes, [p["modes_kl"] for p in rows], marker="o", label=recipe)
    ax_modes.axhline(floor["modes"], color="grey", linestyle="--", label=f"real vs real ({floor['modes']:.0f})")
    ax_modes.axhline(TARGET_MODES, color="grey", linestyle=":", label=f"target ({TARGET_MODES})")
    ax_kl.axhline(floor["modes_kl"], color="grey", linestyle="--", label=f"real vs real ({floor['modes_kl']:.3f})")
    ax_kl.axhline(TARGET_KL, color="grey", linestyle=":", label=f"target ({TARGET_KL})")
    ax_modes.set(xlabel="training time (minutes)", ylabel="modes covered (of 1,000)", ylim=(0, 1050))
    ax_kl.set(xlabel="training time (minutes)", ylabel="KL(mode histogram || uniform), nats", yscale="log")
    for ax in (ax_modes, ax_kl):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Stacked MNIST, {os.cpu_count()} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def side_by_side(recipes: list[str], out: Path, last: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(1, len(recipes), figsize=(5 * len(recipes), 5.3))
    for ax, recipe in zip(axes if len(recipes) > 1 else [axes], recipes, strict=True):
        ax.imshow(Image.open(out / f"{recipe}-grid.png"))
        p = last[recipe]
        ax.set_title(
            f"{recipe}\n{p['train_s'] / 60:.0f} min, {p['modes']:.0f} modes, KL {p['modes_kl']:.2f}", fontsize=9
        )
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "grids.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per recipe")
    parser.add_argument("--marks", default="", help="comma-separated minutes to evaluate at (default: thirds)")
    parser.add_argument("--data-root", default="../shared/data/mnist")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=10_000, help="samples per evaluation (10 per mode)")
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every recipe")
    parser.add_argument("--out", type=Path, default=Path("stacked_mnist"))
    args = parser.parse_args(argv)

    marks = [float(m) for m in args.marks.split(",") if m] or [args.minutes / 3, 2 * args.minutes / 3, args.minutes]
    recipes = [r for r in args.recipes.split(",") if r]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load = os.getloadavg()[0]
    floor = real_vs_real(args, args.out)
    print(f"real vs real at {args.num}: {floor['modes']:.0f} modes, KL {floor['modes_kl']:.3f} (load {load:.2f})")
    points: list[dict] = []
    for recipe in recipes:
        points += measure_recipe(recipe, marks, args, args.out)
        payload = {"real_vs_real": floor, "num": args.num, "points": points, "argv": sys.argv, "load_start": load}
        (args.out / "stacked_mnist.json").write_text(json.dumps(payload, indent=1))
    plot_curves(points, floor, args.out / "stacked_mnist.png")
    last = {p["recipe"]: p for p in points}
    side_by_side(recipes, args.out, last)
    print("\n| recipe | minutes | steps | modes (of 1,000) | KL | FD | coverage |\n|---|---:|---:|---:|---:|---:|---:|")
    for p in points:
        print(f"| {p['recipe']} | {p['train_s'] / 60:.1f} | {p['step']} | {p['modes']:.0f} | {p['modes_kl']:.3f} | "
              f"{p['fd']:.1f} | {p['coverage']:.3f} |")  # fmt: skip
    f = floor
    print(f"| real vs real | | | {f['modes']:.0f} | {f['modes_kl']:.3f} | {f['fd']:.2f} | {f['coverage']:.3f} |")
    print(f"\n{time.time() - started:.0f} s in all, load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
