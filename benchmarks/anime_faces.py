"""Anime faces at equal training time: anime-dcgan against anime-modern and its ablations (issue 15).

Each variant is a recipe plus overrides. It trains with ``ganforge train`` for the same wall-clock
budget (the epoch limit lifted, so the budget ends the run) and stops at training-time marks; at each
mark ``ganforge evaluate RUN --metrics fd,pr,coverage --num N`` scores it with the hair-colour evaluator
(the EMA generator where the variant keeps one) and training resumes. Resume is bit-exact, so the stops
do not change the trajectory, and evaluation time is not training time. The real-vs-real figures at the
same N come first.

Writes into ``--out``: ``anime_faces.json``, ``anime_faces.png`` (FD against training time, every
variant), ``grids.png`` (the final 8x8 grids side by side) and prints a Markdown table.

Each finished variant also writes ``<variant>-points.json`` (its marks, scores, the CPU it ran on and when
the invocation that measured it started); a table that merges invocations or CPUs says so under it.
``--reuse`` takes a variant from there instead of training it again when its marks and ``--num`` match, so
a run that was stopped part-way (the six default variants take longer than many sessions have) goes on
with the variants it has not finished; a variant stopped mid-way trains again from the start. The table
names the CPU of each variant, so variants measured on different machines cannot pass for one run.

Example (what docs/quality.md reports; 6 variants x 30 minutes plus evaluations, about 3 h 20 min on a
2-core CPU):
  python benchmarks/anime_faces.py --data-root ../shared/data/anime-faces --minutes 30 [--reuse]
  python benchmarks/anime_faces.py --variants anime-dcgan,anime-modern --minutes 1 --marks 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from time_to_quality import _ganforge, train_to_marks

# name -> (recipe, overrides). The ablations each take one piece out of anime-modern.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "anime-dcgan": ("anime-dcgan", []),
    "anime-modern": ("anime-modern", []),
    "no-augment": ("anime-modern", ["augment.policy="]),
    "no-spectral-norm": ("anime-modern", ["model.spectral_norm=false"]),  # the recipe's regulariser of D
    "no-ema": ("anime-modern", ["train.ema_decay=0", "train.ema_rampup=false"]),
    # anime-dcgan's networks (96 px, no spectral norm: its D has BatchNorm) with the modern objective,
    # augmentation and EMA
    "dcgan-nets": (
        "anime-modern",
        [
            "model.arch=dcgan96",
            "model.resolution=96",
            "model.spectral_norm=false",
            "model.g_width=64",
            "model.d_width=64",
        ],
    ),
    # R3GAN's objective in place of hinge + spectral norm: the relativistic pairing loss with R1 + R2 (lazy,
    # every 16 D steps, as stacked-mnist-modern measured best), and the same without the penalties
    "rpgan": (
        "anime-modern",
        ["loss.name=rpgan", "loss.r1_gamma=0.1", "loss.r2_gamma=0.1", "loss.reg_every=16", "model.spectral_norm=false"],
    ),
    # D at twice the width (G stays at 16): D's outputs stay at chance at width 16 (docs/quality.md)
    "wide-d": ("anime-modern", ["model.d_width=32"]),
    # the two time-scale update rule (SAGAN / BigGAN): D learns 4x faster than G
    "ttur": ("anime-modern", ["optim.lr_d=4e-4", "optim.lr_g=1e-4"]),
    "rpgan-no-r1": (
        "anime-modern",
        ["loss.name=rpgan", "loss.r1_gamma=0", "loss.r2_gamma=0", "model.spectral_norm=false"],
    ),
    # ADA's adaptive probability instead of DiffAugment's always-on ops: p starts at 0 and rises only once D
    # overfits (r_t above 0.6). At 30 CPU minutes no-augment kept more recall than the recipe (docs/quality.md)
    "ada": ("anime-modern", ["augment.adaptive=true"]),
}
DEFAULT = ["anime-dcgan", "anime-modern", "no-augment", "no-spectral-norm", "no-ema", "dcgan-nets"]
SUFFIX = "_anime-faces-classifier"
KEYS = ("fd", "precision", "recall", "coverage")


def _scores(path: Path) -> dict:
    results = json.loads(path.read_text())["results"]
    return {key: float(results[key + SUFFIX]) for key in KEYS if key + SUFFIX in results}


def measure_variant(name: str, marks: list[float], args: argparse.Namespace, out: Path) -> list[dict]:
    recipe, overrides = VARIANTS[name]
    run, log = out / "runs" / name, out / f"{name}.log"
    sets = [x for s in [*overrides, *args.set] for x in ("--set", s)]
    points = []
    data = ["--data-root", args.data_root]
    for minutes, scores, seconds, step in train_to_marks(run, log, recipe, data + sets, marks, "fd,pr,coverage",
                                                          args.num, out):  # fmt: skip
        point = {"variant": name, "mark_min": minutes, "train_s": seconds, "step": step, **_scores(scores)}
        points.append(point)
        print(f"  {name:18s} {seconds / 60:5.1f} min  step {step:6d}  FD {point['fd']:.1f}", flush=True)
    _ganforge("generate", str(run), "--num", "64", "--nrow", "8", "--seed", "0",
              "--out", str(out / f"{name}-grid.png"), log=log)  # fmt: skip
    return points


def cpu_label() -> str:
    """This machine's CPU as the tables name it: model name, torch's CPU capability, core count."""
    import torch

    from ganforge.training.fastpath import cpu_name

    return f"{cpu_name()}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} CPUs"


def finished_points(name: str, marks: list[float], num: int, out: Path) -> list[dict] | None:
    """A variant's points from an earlier run into ``out``, if it finished with these marks and ``num``."""
    path = out / f"{name}-points.json"
    if not path.exists() or not (out / f"{name}-grid.png").exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("marks") != marks or saved.get("num") != num:
        return None
    earlier = f"an earlier invocation ({saved.get('date', 'undated')})"  # points.json written before "run" was
    return [{"run": earlier, **p} for p in saved["points"]]


def save_points(name: str, marks: list[float], num: int, points: list[dict], out: Path) -> None:
    record = {"marks": marks, "num": num, "points": points, "cpu": cpu_label(), "date": time.strftime("%Y-%m-%d")}
    (out / f"{name}-points.json").write_text(json.dumps(record, indent=1))


def real_vs_real(args: argparse.Namespace, out: Path) -> dict:
    # the hair-colour evaluator of docs/metrics.md, trained once on the tagged faces (a cached one is kept)
    _ganforge("train-evaluator", "image-folder", "--data-root", args.data_root, "--set", "data.labels=csv",
              "--set", "data.label_csv=tags.csv", "--set", "data.label_column=hair", "--set", "data.hflip=true",
              log=out / "real-vs-real.log")  # fmt: skip
    path = out / "real-vs-real.json"
    _ganforge("evaluate", "--real-vs-real", "--dataset", "image-folder", "--data-root", args.data_root,
              "--metrics", "fd,pr,coverage", "--num", str(args.num), "--json", str(path),
              log=out / "real-vs-real.log")  # fmt: skip
    return _scores(path)


def plot_curves(
    points: list[dict], floor: dict, path: Path, title: str = "", xlabel: str = "training time (minutes)", target=15.0
) -> None:
    """FD against training time, one curve per ``variant``, with the real-vs-real floor (and ``target``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name in dict.fromkeys(p["variant"] for p in points):
        rows = [p for p in points if p["variant"] == name]
        ax.plot([p["train_s"] / 60 for p in rows], [p["fd"] for p in rows], marker="o", label=name)
    ax.axhline(floor["fd"], color="grey", linestyle="--", label=f"real vs real ({floor['fd']:.2f})")
    if target:
        ax.axhline(target, color="grey", linestyle=":", label=f"issue 15's target ({target:g})")
    ax.set(xlabel=xlabel, ylabel="FD, hair-colour evaluator (lower is better)", yscale="log")
    ax.set_title(title or f"Anime faces, equal training time, {os.cpu_count()} CPUs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def side_by_side(names: list[str], out: Path, last: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 4.0), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        ax.imshow(Image.open(out / f"{name}-grid.png"))
        p = last[name]
        ax.set_title(f"{name}\n{p['train_s'] / 60:.0f} min, {p['step']} steps, FD {p['fd']:.1f}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "grids.png", dpi=110)


def print_table(points: list[dict], floor: dict) -> None:
    print("\n| variant | minutes | steps | FD | precision | recall | coverage |\n|---|---:|---:|---:|---:|---:|---:|")
    for p in points:
        print(f"| {p['variant']} | {p['train_s'] / 60:.1f} | {p['step']} | {p['fd']:.1f} | {p.get('precision', 0):.3f} "
              f"| {p.get('recall', 0):.3f} | {p.get('coverage', 0):.3f} |")  # fmt: skip
    f = floor
    print(f"| real vs real | | | {f['fd']:.2f} | {f.get('precision', 0):.3f} | {f.get('recall', 0):.3f} "
          f"| {f.get('coverage', 0):.3f} |")  # fmt: skip
    cpus = {p["variant"]: p.get("cpu", "") for p in points}
    runs = {p["variant"]: p.get("run", "") for p in points}
    if len(set(cpus.values())) > 1 or len(set(runs.values())) > 1:
        what = "on different CPUs" if len(set(cpus.values())) > 1 else "by different invocations (--reuse)"
        print(f"\nNOT one run: the variants were measured {what}:")
        for name, cpu in cpus.items():
            print(f"  {name}: {cpu}, started {runs[name]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(DEFAULT), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per variant")
    parser.add_argument("--marks", default="", help="comma-separated minutes to evaluate at (default: every sixth)")
    parser.add_argument("--data-root", default="../shared/data/anime-faces")
    parser.add_argument("--num", type=int, default=1000, help="samples per evaluation (and real images)")
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every variant")
    parser.add_argument("--out", type=Path, default=Path("anime_faces"))
    parser.add_argument("--reuse", action="store_true", help="keep variants an earlier run into --out finished")
    args = parser.parse_args(argv)

    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    marks = [float(m) for m in args.marks.split(",") if m] or [args.minutes * k / 6 for k in range(1, 7)]
    args.out.mkdir(parents=True, exist_ok=True)
    started, load = time.time(), os.getloadavg()[0]
    floor = real_vs_real(args, args.out)
    print(f"real vs real at {args.num}: FD {floor['fd']:.2f} (load {load:.2f})", flush=True)
    points: list[dict] = []
    for name in names:
        kept = finished_points(name, marks, args.num, args.out) if args.reuse else None
        if kept is not None:
            print(f"  {name}: kept from {args.out / (name + '-points.json')}", flush=True)
        else:
            run = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
            kept = [{**p, "cpu": cpu_label(), "run": run} for p in measure_variant(name, marks, args, args.out)]
            save_points(name, marks, args.num, kept, args.out)
        points += kept
        payload = {"real_vs_real": floor, "num": args.num, "points": points, "argv": sys.argv, "load_start": load}
        (args.out / "anime_faces.json").write_text(json.dumps(payload, indent=1))
    plot_curves(points, floor, args.out / "anime_faces.png")
    side_by_side(names, args.out, {p["variant"]: p for p in points})
    print_table(points, floor)
    print(f"\n{time.time() - started:.0f} s in all, load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
