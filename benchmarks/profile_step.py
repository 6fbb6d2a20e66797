"""Where a training step's time goes: ``torch.profiler`` over a few steps of a recipe, on its device.

Issue 10 asks to profile before choosing a GPU speed-up (CUDA graphs, channels-last, TF32, cuDNN's
autotuner). This builds the run as ``ganforge train`` does (the same setup, with every kernel choice made
on this machine and printed), trains ``--warmup`` steps on the recipe's real batches, then profiles
``--steps`` more and reports:

- wall milliseconds per step (synchronised at both ends of the profiled window);
- on CUDA, the kernels' time per step (the sum of every kernel's own device time) and its share of the
  wall time: a step whose kernels fill a small share is bound by launches and host work, which a CUDA
  graph removes, and one near 100% is bound by the kernels themselves, which only faster kernels help;
- the operators with the most self time (device time on CUDA, CPU time on the CPU).

``--json`` writes those figures, ``--trace`` a Chrome trace (chrome://tracing, Perfetto).

  python benchmarks/profile_step.py anime-dcgan --data-root ../shared/data/anime-faces --device cuda
  python benchmarks/profile_step.py mnist-quick --data-root ../shared/data/mnist --split test --set train.precision=bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ganforge.config import apply_overrides
from ganforge.recipes import RECIPES, get_recipe
from ganforge.training.distributed import init_distributed
from ganforge.training.loop import Trainer
from ganforge.training.setup import cuda_kernel_switches


def _config(args: argparse.Namespace):
    cfg = get_recipe(args.recipe)
    overrides = [f"train.device={args.device}", "train.progress=false", "train.report=false", "eval.every=0"]
    overrides.append("train.max_time=0")
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.split:
        overrides.append(f"data.split={args.split}")
    apply_overrides(cfg, overrides + args.set)
    return cfg


def _batches(trainer: Trainer, count: int):
    """``count`` (batch, index, images) triples of the run's own loader, across epochs if it must."""
    out, epoch = [], 0
    while len(out) < count:
        for index, (x_real, y_real) in enumerate(trainer.loader.epoch(epoch)):
            n_global = min(
                trainer.cfg.train.batch_size, trainer.loader.num_images - index * trainer.cfg.train.batch_size
            )
            out.append((x_real, y_real, index, n_global))
            if len(out) == count:
                break
        epoch += 1
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _self_device_us(event) -> float:
    """An event's own device time in microseconds (the attribute's name changed across torch versions)."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


def _is_kernel(event) -> bool:
    """A device kernel's event, as opposed to the CPU operator that launched it (which carries its time too)."""
    return event.device_type != DeviceType.CPU


def profile_steps(trainer: Trainer, warmup: int, steps: int, trace: Path | None = None) -> dict:
    """Train ``warmup`` unprofiled steps, then profile ``steps``; the figures of the module docstring."""
    device = trainer.ctx.device
    batches = _batches(trainer, warmup + steps)
    for x_real, y_real, index, n in batches[:warmup]:
        trainer.step(x_real, y_real, index, n)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for x_real, y_real, index, n in batches[warmup:]:
            trainer.step(x_real, y_real, index, n)
        _sync(device)
        wall_s = time.perf_counter() - start
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    events = prof.key_averages()
    on_device = device.type == "cuda"
    key = _self_device_us if on_device else (lambda e: float(e.self_cpu_time_total))
    operators = [e for e in events if not _is_kernel(e)]  # on CUDA each carries the time of the kernels it launched
    top = sorted(operators, key=key, reverse=True)[:15]
    kernels_ms = sum(_self_device_us(e) for e in events if _is_kernel(e)) / 1e3 / steps if on_device else None
    wall_ms = wall_s * 1e3 / steps
    return {
        "recipe": trainer.cfg.recipe,
        "device": str(device),
        "runtime": trainer.runtime["summary"],
        "batch_size": trainer.cfg.train.batch_size,
        "steps": steps,
        "wall_ms_per_step": round(wall_ms, 3),
        "images_per_s": round(trainer.cfg.train.batch_size / wall_s * steps, 1),
        "kernel_ms_per_step": None if kernels_ms is None else round(kernels_ms, 3),
        "kernel_share": None if kernels_ms is None else round(kernels_ms / wall_ms, 3),
        "top": [{"op": e.key, "calls": e.count, "self_ms_per_step": round(key(e) / 1e3 / steps, 3)} for e in top],
    }


def _print(result: dict) -> None:
    print(result["runtime"])
    line = f"{result['recipe']} on {result['device']}: {result['wall_ms_per_step']:.2f} ms a step"
    line += f" ({result['images_per_s']:.0f} images/s at batch {result['batch_size']})"
    if result["kernel_ms_per_step"] is not None:
        line += (
            f"; kernels {result['kernel_ms_per_step']:.2f} ms a step = {result['kernel_share']:.0%} of the wall time"
        )
    print(line)
    print(f"{'operator':<48}{'calls':>8}{'self ms/step':>14}")
    for row in result["top"]:
        print(f"{row['op'][:47]:<48}{row['calls']:>8}{row['self_ms_per_step']:>14.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=RECIPES.names())
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    parser.add_argument("--data-root", default="")
    parser.add_argument("--split", default="")
    parser.add_argument("--warmup", type=int, default=10, help="unprofiled steps first (kernel choice, caches)")
    parser.add_argument("--steps", type=int, default=20, help="profiled steps")
    parser.add_argument("--set", action="append", default=[], help="config overrides (key=value)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--trace", type=Path, help="write a Chrome trace of the profiled steps here")
    args = parser.parse_args(argv)
    cfg = _config(args)
    with cuda_kernel_switches(cfg.train.deterministic), tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, init_distributed(cfg.train.device), Path(tmp) / "run")
        result = profile_steps(trainer, args.warmup, args.steps, args.trace)
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
