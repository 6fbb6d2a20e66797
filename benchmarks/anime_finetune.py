"""Fine-tuning on a small dataset against training it from scratch, at equal time (issue 15, item 6).

The shared 6,000 faces are split by sorted file name: the first 5,000 are the "large, related" dataset,
the other 1,000 the user's small one (two folders of symlinks under ``--out``, nothing copied).

1. ``anime-modern`` trains on the 5,000 for ``--pretrain-minutes``.
2. Each arm then trains ``anime-modern`` on the 1,000 for ``--minutes``, stopping at the marks to be
   scored (``train_to_marks``: resume is bit-exact, evaluation time is not training time):
   - ``scratch``: fresh weights;
   - ``fine-tune``: ``--init-g`` / ``--init-d`` from step 1's exports (its trained G, not the EMA, so G
     starts where the D it faces left it, and its D), with fresh optimisers;
   - ``fine-tune-freeze-d``: the same with ``train.freeze_d_layers`` (FreezeD), if ``--freeze-d`` > 0.

Every score is against the 1,000 small-set faces (``--num`` samples), in the features of the
hair-colour evaluator trained on the tagged faces of the whole folder (docs/metrics.md), so all arms
and the pretrained model before fine-tuning (mark 0) are read on one scale. The floor is two disjoint
draws of ``--num`` real faces from the whole folder.

Writes into ``--out``: ``anime_finetune.json``, ``anime_finetune.png`` (FD against fine-tuning time,
every arm), ``grids.png`` (the arms' final grids side by side), and prints a Markdown table.

Example (docs/quality.md): python benchmarks/anime_finetune.py --pretrain-minutes 10 --minutes 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from anime_faces import KEYS, _scores, plot_curves, side_by_side
from time_to_quality import _ganforge, train_to_marks

FREEZE_D = 2  # FreezeD arm: D's first (highest-resolution) blocks kept as pretrained
HAIR = ["--set", "data.labels=csv", "--set", "data.label_csv=tags.csv", "--set", "data.label_column=hair"]


def split_folder(root: Path, out: Path, large: int) -> tuple[Path, Path]:
    """Two folders of symlinks: the first ``large`` images (sorted by name) and the rest."""
    files = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if len(files) <= large:
        raise SystemExit(f"{root / 'images'} has {len(files)} images; --large {large} leaves none for the small set")
    parts = {"large": files[:large], "small": files[large:]}
    for name, chosen in parts.items():
        folder = out / "data" / name / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for path in chosen:
            link = folder / path.name
            if not link.is_symlink():
                link.symlink_to(path.resolve())
    return out / "data" / "large", out / "data" / "small"


def hair_evaluator(root: Path, log: Path) -> Path:
    """The hair-colour evaluator of the whole folder (trained once, then cached): its .safetensors path,
    from the ``stored:`` line ``train-evaluator`` prints."""
    _ganforge("train-evaluator", "image-folder", "--data-root", str(root), *HAIR, "--set", "data.hflip=true", log=log)
    stored = [line for line in log.read_text().splitlines() if line.startswith("stored: ")]
    return Path(stored[-1].removeprefix("stored: ").split(" (")[0])


def evaluate(run: Path, small: Path, extractor: Path, num: int, path: Path, log: Path) -> dict:
    _ganforge("evaluate", str(run), "--data-root", str(small), "--extractor", str(extractor),
              "--metrics", "fd,pr,coverage", "--num", str(num), "--json", str(path), log=log)  # fmt: skip
    return _scores(path)


def evaluate_real(root: Path, extractor: Path, num: int, out: Path) -> dict:
    """Two disjoint draws of ``num`` faces from the whole folder: the floor for this many samples."""
    path = out / "real-vs-real.json"
    _ganforge("evaluate", "--real-vs-real", "--dataset", "image-folder", "--data-root", str(root),
              "--extractor", str(extractor), "--metrics", "fd,pr,coverage", "--num", str(num), "--json", str(path),
              log=out / "real-vs-real.log")  # fmt: skip
    return _scores(path)


def run_arm(name: str, extra: list[str], marks: list[float], args: argparse.Namespace) -> list[dict]:
    out = args.out
    run, log = out / "runs" / name, out / f"{name}.log"
    points = []
    for minutes, scores, seconds, step in train_to_marks(run, log, "anime-modern", extra, marks, "fd,pr,coverage",
                                                          args.num, out):  # fmt: skip
        points.append({"variant": name, "mark_min": minutes, "train_s": seconds, "step": step, **_scores(scores)})
        print(f"  {name:20s} {seconds / 60:5.1f} min  step {step:6d}  FD {points[-1]['fd']:.1f}", flush=True)
    _ganforge("generate", str(run), "--num", "64", "--nrow", "8", "--seed", "0",
              "--out", str(out / f"{name}-grid.png"), log=log)  # fmt: skip
    return points


def print_table(points: list[dict], floor: dict) -> None:
    print("\n| arm | minutes | steps | FD | precision | recall | coverage |\n|---|---:|---:|---:|---:|---:|---:|")
    for p in [*points, {"variant": "real vs real", "train_s": float("nan"), "step": "", **floor}]:
        cells = " | ".join(f"{p.get(k, float('nan')):.3f}" for k in KEYS)
        print(f"| {p['variant']} | {p['train_s'] / 60:.1f} | {p['step']} | {cells} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/anime-faces"))
    parser.add_argument("--large", type=int, default=5000, help="images (sorted by name) in the large set")
    parser.add_argument("--pretrain-minutes", type=float, default=10.0)
    parser.add_argument("--minutes", type=float, default=8.0, help="training time of each arm on the small set")
    parser.add_argument("--marks", default="", help="comma-separated minutes to score at (default: every quarter)")
    parser.add_argument(
        "--freeze-d", type=int, default=FREEZE_D, help="FreezeD arm: D blocks kept frozen (0: no such arm)"
    )
    parser.add_argument("--num", type=int, default=1000, help="samples per evaluation (and real images)")
    parser.add_argument("--out", type=Path, default=Path("anime_finetune"))
    args = parser.parse_args(argv)
    marks = [float(m) for m in args.marks.split(",") if m] or [args.minutes * k / 4 for k in range(1, 5)]
    args.out.mkdir(parents=True, exist_ok=True)
    started, load = time.time(), os.getloadavg()[0]
    large, small = split_folder(args.data_root, args.out, args.large)
    extractor = hair_evaluator(args.data_root, args.out / "evaluator.log")
    floor = evaluate_real(args.data_root, extractor, args.num, args.out)
    print(f"real vs real at {args.num}: FD {floor['fd']:.2f} (load {load:.2f})", flush=True)
    scored = ["--set", f"eval.extractor={extractor}"]
    pre = args.out / "runs" / "pretrain"
    for _, _, seconds, step in train_to_marks(pre, args.out / "pretrain.log", "anime-modern",
                                              ["--data-root", str(large), *scored], [args.pretrain_minutes],
                                              "fd,pr,coverage", args.num, args.out):  # fmt: skip
        print(f"  pretrained on {args.large}: {seconds / 60:.1f} min, step {step}", flush=True)
    before = evaluate(pre, small, extractor, args.num, args.out / "pretrain-on-small.json", args.out / "pretrain.log")
    print(f"  the pretrained model against the small set: FD {before['fd']:.1f}", flush=True)
    start = {"train_s": 0.0, "step": 0, "mark_min": 0.0, **before}
    init = ["--init-g", str(pre / "generator.safetensors"), "--init-d", str(pre / "discriminator.safetensors")]
    arms = {"scratch": [], "fine-tune": init}
    if args.freeze_d:
        arms["fine-tune-freeze-d"] = [*init, "--set", f"train.freeze_d_layers={args.freeze_d}"]
    points: list[dict] = []
    for name, extra in arms.items():
        first = [{"variant": name, **start}] if extra else []
        points += first + run_arm(name, ["--data-root", str(small), *scored, *extra], marks, args)
        payload = {"real_vs_real": floor, "pretrain_minutes": args.pretrain_minutes, "num": args.num,
                   "points": points, "argv": sys.argv, "load_start": load}  # fmt: skip
        (args.out / "anime_finetune.json").write_text(json.dumps(payload, indent=1))
    title = f"1,000 faces: fine-tuned ({args.pretrain_minutes:g} min on {args.large:,} first) or from scratch"
    plot_curves(points, floor, args.out / "anime_finetune.png", title, "training time on the 1,000 faces (min)", None)
    side_by_side(list(arms), args.out, {p["variant"]: p for p in points})
    print_table(points, floor)
    print(f"\n{time.time() - started:.0f} s in all, load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
