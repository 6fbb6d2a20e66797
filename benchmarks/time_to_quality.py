"""Sample quality against training time: each MNIST recipe for the same wall-clock budget.

Each recipe trains with ``ganforge train`` (with the epoch limit lifted, so the budget ends the
run; ``--recipe-epochs`` keeps it) and stops at a series of training-time marks
(``--max-time``); at each mark ``ganforge evaluate RUN --json`` scores the run (the EMA generator
when the recipe keeps one) with the MNIST classifier evaluator, then training resumes to the next
mark. Resume is bit-exact, so the stops do not change the trajectory, and evaluation time is not
training time: the x axis is the trainer's own ``time_s`` (training seconds, per-epoch outputs
included). The real-vs-real floor for the same sample count is drawn as a line.

Writes ``time_to_quality.json`` and ``time_to_quality.png`` into ``--out`` and prints a table.

Example (what docs/performance.md reports; about 45 minutes on a 2-core CPU):
  python benchmarks/time_to_quality.py --data-root ../shared/data/mnist --split test --minutes 5
  python benchmarks/time_to_quality.py --recipes mnist-quick --minutes 5 --marks 0.5,1,2,3,4,5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

MNIST_RECIPES = ["mnist-quick", "mnist-mlp", "mnist-mlp-bn", "mnist-conv", "mnist-cgan"]


def _ganforge(*args: str, log: Path) -> None:
    cmd = [sys.executable, "-m", "ganforge", *args]
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")


def _fd(payload: dict) -> float:
    results = payload.get("results", payload)
    keys = [k for k in results if k.startswith("fd_") or k == "fid"]
    return float(results[keys[0]])


def _train_time(run: Path) -> tuple[float, int]:
    """(training seconds, step) at the run's last record."""
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    return float(last.get("time_s", 0.0)), int(last.get("step", 0))


def train_to_marks(
    run: Path, log: Path, recipe: str, extra: list[str], marks: list[float], metrics: str, num: int, scores_dir: Path
) -> Iterator[tuple[float, Path, float, int]]:
    """Train ``recipe`` (its epoch limit lifted, so the budget ends it) to each training-time mark in turn,
    resuming between marks, and evaluate at each; yields (mark, scores JSON, training seconds, step).
    ``extra``: more ``train`` arguments (data, ``--set``), after the fixed ones so they can override them."""
    for i, minutes in enumerate(marks):
        if i == 0:
            _ganforge("train", recipe, "--max-time", f"{minutes}", "--out", str(run), "--overwrite", "--epochs",
                      "1000000", "--set", "train.progress=false", "--set", "eval.every=0", *extra, log=log)  # fmt: skip
        else:
            _ganforge("train", "--resume", str(run), "--max-time", f"{minutes}", log=log)
        scores = scores_dir / f"{run.name}-{minutes:g}min.json"
        _ganforge("evaluate", str(run), "--metrics", metrics, "--num", str(num), "--json", str(scores), log=log)
        seconds, step = _train_time(run)
        yield minutes, scores, seconds, step


def measure_recipe(recipe: str, marks: list[float], args: argparse.Namespace, out: Path) -> list[dict]:
    run = out / "runs" / recipe
    log = out / f"{recipe}.log"
    data = ["--data-root", args.data_root, "--split", args.split]
    extra = [x for s in args.set for x in ("--set", s)]
    if not args.recipe_epochs:  # the budget, not the recipe's epoch count, ends the run
        extra += ["--epochs", "1000000"]
    points = []
    for i, minutes in enumerate(marks):
        if i == 0:
            _ganforge("train", recipe, *data, "--max-time", f"{minutes}", "--out", str(run), "--overwrite",
                      "--set", "train.progress=false", "--set", "eval.every=0", *extra, log=log)  # fmt: skip
        else:
            _ganforge("train", "--resume", str(run), "--max-time", f"{minutes}", log=log)
        scores = out / f"{recipe}-{minutes:g}min.json"
        _ganforge("evaluate", str(run), "--metrics", "fd", "--num", str(args.num), "--json", str(scores), log=log)
        seconds, step = _train_time(run)
        point = {"recipe": recipe, "mark_min": minutes, "train_s": seconds, "step": step}
        point["fd"] = _fd(json.loads(scores.read_text()))
        points.append(point)
        print(f"  {recipe:13s} {seconds / 60:5.2f} min  step {step:6d}  FD {point['fd']:.3f}", flush=True)
    return points


def real_floor(args: argparse.Namespace, out: Path) -> float:
    path = out / "real-vs-real.json"
    _ganforge("evaluate", "--real-vs-real", "--dataset", "mnist", "--data-root", args.data_root, "--split", args.split,
              "--metrics", "fd", "--num", str(args.num), "--json", str(path), log=out / "floor.log")  # fmt: skip
    return _fd(json.loads(path.read_text()))


def plot(points: list[dict], floor: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for recipe in dict.fromkeys(p["recipe"] for p in points):
        rows = [p for p in points if p["recipe"] == recipe]
        ax.plot([p["train_s"] / 60 for p in rows], [p["fd"] for p in rows], marker="o", label=recipe)
    ax.axhline(floor, color="grey", linestyle="--", label=f"real vs real ({floor:.2f})")
    ax.axhline(10 * floor, color="grey", linestyle=":", label=f"10x floor ({10 * floor:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("FD, MNIST classifier features (lower is better)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=",".join(MNIST_RECIPES))
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per recipe")
    parser.add_argument("--marks", default="", help="comma-separated minutes to evaluate at (default: a spread)")
    parser.add_argument("--data-root", default="../shared/data/mnist")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=5000, help="samples per evaluation (and real images)")
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every recipe")
    parser.add_argument("--out", type=Path, default=Path("time_to_quality"))
    parser.add_argument(
        "--recipe-epochs", action="store_true", help="stop at the recipe's epoch count if it comes before the budget"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the other recipes' points already in OUT/time_to_quality.json"
    )
    args = parser.parse_args(argv)

    marks = [float(m) for m in args.marks.split(",") if m] or [
        m for m in (0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30) if m < args.minutes
    ] + [args.minutes]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    floor = real_floor(args, args.out)
    print(f"real-vs-real FD at {args.num} images: {floor:.3f} (load average {load:.2f})", flush=True)
    recipes = [r for r in args.recipes.split(",") if r]
    points: list[dict] = []
    previous = args.out / "time_to_quality.json"
    if args.keep and previous.is_file():
        points = [p for p in json.loads(previous.read_text())["points"] if p["recipe"] not in recipes]
    for recipe in recipes:
        points += measure_recipe(recipe, marks, args, args.out)
        (args.out / "time_to_quality.json").write_text(
            json.dumps({"floor": floor, "num": args.num, "points": points, "argv": sys.argv}, indent=1)
        )
    plot(points, floor, args.out / "time_to_quality.png", f"MNIST ({args.split}), {os.cpu_count()} CPUs")
    print("\n| recipe | minutes | steps | FD | FD / floor |\n|---|---:|---:|---:|---:|")
    for p in points:
        print(f"| {p['recipe']} | {p['train_s'] / 60:.2f} | {p['step']} | {p['fd']:.3f} | {p['fd'] / floor:.1f}x |")
    print(f"\nfloor {floor:.3f}; {time.time() - started:.0f} s in all; plot: {args.out / 'time_to_quality.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
