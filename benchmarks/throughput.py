"""Images per second: ganforge's trainer against faithful plain-PyTorch reference loops.

For every recipe, in one invocation, interleaved and repeated, each in a fresh process:
  (a) the reference loop of ``benchmarks/reference.py`` (DataLoader of PIL images + torchvision
      transforms, as the original scripts do), always fp32 as the originals are;
  (b) ``ganforge.training.loop.train`` on the same recipe, batch size, device and number of steps,
      at ganforge's default precision and with ``--precision bf16`` (autocast, fp32 master weights).

Reported per run: images/s (median over the repeats), ganforge/reference ratio, the recipe's FLOPs per
image (``torch.utils.flop_counter.FlopCounterMode`` over one ganforge training step, averaged over a
d_every/g_every cycle), the fraction of the machine's measured matmul FLOP/s that images/s x FLOPs
reaches (fp32 matmul for fp32 runs, bf16 matmul for bf16 runs), and peak memory: the process's peak
RSS on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU.

Both sides time only training steps after a warm-up, with no epoch boundary inside the timed window
(per-epoch grids, checkpoints and plots are left out of both). ganforge's time is read from its own
metrics.jsonl windows (``log_every`` = the warm-up length), so it includes its loader, logging and
host reads exactly as a real run does.

End-to-end mode (``--end-to-end``): the whole process instead, as a user runs it: ``python -m ganforge
train RECIPE --max-steps N`` (start-up, data, setup and its probes, every epoch's grid, plot and checkpoint,
the final exports) against ``python benchmarks/reference.py RECIPE --steps N`` (the same reference loop as a
process of its own), wall-clock seconds of each, interleaved and repeated. One untimed ganforge run first
fills the dataset cache, as any earlier run on the machine would have.

CPU classes (``--emulate avx2``): ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2`` for every process, both sides, which makes an AVX-512 (and BF16) machine
compute like an AVX2 one. The first line names the CPU (lscpu's model name), ATen's capability and whether
bf16 is native, as the processes see them.

Example (what docs/performance.md reports):
  python benchmarks/throughput.py --mnist-root ../shared/data/mnist --anime-root ../shared/data/anime-faces
  python benchmarks/throughput.py --recipes mnist-mlp --steps 200 --repeats 5
  python benchmarks/throughput.py --end-to-end --recipes mnist-mlp --steps 3000 --precisions auto
  python benchmarks/throughput.py --emulate avx2 --recipes mnist-conv --precisions fp32,auto
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED_RECIPES = ["mnist-mlp", "mnist-conv", "mnist-cgan", "anime-dcgan", "mnist-mlp-bn"]
EXTRA_RECIPES = ["mnist-quick", "digits-quick"]  # ganforge only: no reference system
# (timed steps, warm-up steps) per recipe, sized so a 3-repeat run of everything stays near 10 minutes
# on a 2-core CPU; the timed steps are a multiple of the warm-up (ganforge logs once per warm-up length).
STEPS = {
    "mnist-mlp": (120, 20),
    "mnist-mlp-bn": (30, 5),
    "mnist-conv": (30, 5),
    "mnist-cgan": (3, 1),
    "anime-dcgan": (5, 5),
    "mnist-quick": (30, 5),
    "digits-quick": (60, 10),
}
GPU_STEPS_FACTOR = 10  # on a GPU the same budget runs ten times as many steps
# end-to-end: steps of a whole `ganforge train` process (mnist-mlp: 3,000 = 19 epochs of the 10k test images)
E2E_STEPS = {
    "mnist-mlp": 3000,
    "mnist-mlp-bn": 400,
    "mnist-conv": 300,
    "mnist-cgan": 10,
    "anime-dcgan": 10,
    "mnist-quick": 500,
    "digits-quick": 500,
}
EMULATE = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _data_args(recipe: str, args: argparse.Namespace) -> tuple[str, str]:
    if recipe == "anime-dcgan":
        return args.anime_root, "train"
    if recipe.startswith("digits"):
        return "data", args.split
    return args.mnist_root, args.split


def _setup_threads(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _rss_mib()


# ------------------------------------------------------------------------------------------------ workers
def worker_reference(args: argparse.Namespace) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from reference import build_reference

    _setup_threads(args)
    device = _device(args.device)
    torch.manual_seed(0)
    base = _rss_mib()
    root, split = _data_args(args.recipe, args)
    ref = build_reference(args.recipe, root, split, device)
    it = ref.batches()
    ref.run(args.warmup, it)
    _sync(device)
    start = time.perf_counter()
    ref.run(args.steps, it)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": args.steps * ref.batch_size / seconds,
        "peak_mib": _peak_memory(device),
        "base_mib": base,
        "batch_size": ref.batch_size,
        "threads": torch.get_num_threads(),
    }


def _ganforge_cfg(args: argparse.Namespace, max_steps: int, log_every: int):
    from ganforge.config import apply_overrides
    from ganforge.recipes import get_recipe

    cfg = get_recipe(args.recipe)
    root, split = _data_args(args.recipe, args)
    overrides = [
        f"data.split={split}",
        "train.progress=false",
        f"train.max_steps={max_steps}",
        f"train.log_every={log_every}",
        f"train.device={args.device}",
        "train.max_time=0",
        "eval.every=0",
    ]
    if cfg.data.dataset != "digits":
        overrides.append(f"data.root={root}")
    if args.precision:
        overrides.append(f"train.precision={args.precision}")
    apply_overrides(cfg, overrides + list(args.set or []))
    return cfg


def worker_ganforge(args: argparse.Namespace) -> dict:
    import torch

    from ganforge.training.loop import train

    _setup_threads(args)
    base = _rss_mib()
    cfg = _ganforge_cfg(args, args.warmup + args.steps, args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, out=Path(tmp) / "run", overwrite=True)
        records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if r["kind"] == "step"]
    # An epoch end inside the timed window (GPU runs on the 10k-image test split) is timed like any step: its
    # sample grid and checkpoint fall into the next window, as the reference's DataLoader restarts do in its time.
    epoch_ends = sum(1 for r in records if r["kind"] == "epoch" and args.warmup < r["step"] < args.warmup + args.steps)
    timed = [r for r in windows if r["step"] > args.warmup]
    images = args.steps * cfg.train.batch_size
    seconds = sum(args.warmup * cfg.train.batch_size / r["images_per_s"] for r in timed)
    device = _device(args.device)
    return {
        "images_per_s": images / seconds,
        "peak_mib": _peak_memory(device),
        "base_mib": base,
        "batch_size": cfg.train.batch_size,
        "threads": torch.get_num_threads(),
        "precision": cfg.train.precision,
        "channels_last": cfg.train.channels_last,
        "compile": cfg.train.compile,
        "epoch_ends_timed": epoch_ends,
    }


def worker_flops(args: argparse.Namespace) -> dict:
    """FLOPs per image of one ganforge training step (fp32, CPU; the count does not depend on either)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from ganforge.config import apply_overrides
    from ganforge.training.distributed import DistContext
    from ganforge.training.loop import Trainer

    _setup_threads(args)
    os.environ["GANFORGE_CPU_LINEAR"] = "blas"  # FlopCounterMode counts aten matmuls, not oneDNN's own op
    cfg = _ganforge_cfg(args, 0, 1)
    cfg = copy.deepcopy(cfg)
    batch = 8
    fixed = [f"train.batch_size={batch}", "train.precision=fp32", "train.compile=false", "train.device=cpu"]
    apply_overrides(cfg, fixed)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, DistContext(), Path(tmp) / "run")
        x, y = next(iter(trainer.loader.epoch(0)))
        cycle = max(cfg.train.d_every, cfg.train.g_every)
        total = 0
        for i in range(cycle):
            with FlopCounterMode(display=False) as counter:
                trainer.step(x, y, i, batch)
            total += counter.get_total_flops()
    return {"flops_per_image": total / batch / cycle}


def worker_peak(args: argparse.Namespace) -> dict:
    """The machine's matmul FLOP/s: the best square matmul at a few sizes, fp32 and bf16, through
    ``torch.mm`` and (on a CPU with oneDNN) oneDNN's matmul, which PyTorch uses for its convolutions and
    which on some CPUs is twice as fast as the BLAS behind ``torch.mm``."""
    import torch

    _setup_threads(args)
    device = _device(args.device)
    out: dict[str, float] = {}
    onednn = device.type == "cpu" and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for lib in ("mm", "onednn") if onednn else ("mm",):
            best = 0.0
            for n in (1024, 2048) if device.type == "cpu" else (4096, 8192):
                a = torch.randn(n, n, device=device, dtype=dtype)
                b = torch.randn(n, n, device=device, dtype=dtype)
                if lib == "mm":
                    fn = functools.partial(torch.mm, a, b)
                else:
                    fn = functools.partial(torch.ops.mkldnn._linear_pointwise, a, b, None, "none", [], "")
                try:
                    fn()
                except RuntimeError:  # oneDNN has no bf16 matmul for CPUs without AVX512_BF16/AMX (AVX2)
                    break
                reps = max(1, int(1e10 // (2 * n**3))) if device.type == "cpu" else 20
                for _ in range(3):
                    _sync(device)
                    start = time.perf_counter()
                    for _ in range(reps):
                        fn()
                    _sync(device)
                    best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
            if best > 0:
                out[f"{name}_{lib}"] = best
        out[name] = max(v for k, v in out.items() if k.startswith(name + "_"))
    return out


def worker_cpu(args: argparse.Namespace) -> dict:
    """The CPU class as this process sees it (after any emulation variables)."""
    import torch

    from ganforge.training.fastpath import cpu_name
    from ganforge.training.precision import bf16_native, emulation_env

    native, why = bf16_native(torch.device("cpu"))
    return {
        "cpu": cpu_name(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": native,
        "bf16": why,
        "emulated_by": emulation_env(),
        "cores": os.cpu_count(),
    }


WORKERS = {
    "reference": worker_reference,
    "ganforge": worker_ganforge,
    "flops": worker_flops,
    "peak": worker_peak,
    "cpu": worker_cpu,
}


# ------------------------------------------------------------------------------------------------ driver
def _run_worker(kind: str, args: argparse.Namespace, recipe: str = "", extra: list[str] = ()) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--device", args.device]
    cmd += ["--mnist-root", args.mnist_root, "--anime-root", args.anime_root, "--split", args.split]
    if recipe:
        cmd += ["--recipe", recipe]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += list(extra)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(args))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def _env(args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    env.update(EMULATE.get(args.emulate, {}))
    return env


def _steps(recipe: str, args: argparse.Namespace) -> tuple[int, int]:
    steps, warmup = STEPS[recipe]
    if args.device != "cpu" and _is_gpu(args):
        steps *= GPU_STEPS_FACTOR
    if args.steps:
        steps = max(warmup, args.steps // warmup * warmup)
    return steps, warmup


_GPU: bool | None = None


def _is_gpu(args: argparse.Namespace) -> bool:
    global _GPU
    if _GPU is None:
        import torch

        _GPU = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    return _GPU


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=",".join(SEED_RECIPES), help="comma-separated (default: the five seeds)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per run (default: per recipe)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,bf16", help="ganforge precisions to run (reference: fp32)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for both sides (0: torch's default)")
    parser.add_argument(
        "--omp-wait-policy", default="", help="OMP_WAIT_POLICY for both sides (PASSIVE helps on a busy machine)"
    )
    parser.add_argument("--mnist-root", default="../shared/data/mnist")
    parser.add_argument("--anime-root", default="../shared/data/anime-faces")
    parser.add_argument("--split", default="test", help="MNIST split (test: 10k images, enough for these windows)")
    parser.add_argument("--set", action="append", default=[], help="extra ganforge overrides (key=value)")
    parser.add_argument("--json", type=Path, help="write all measurements here")
    parser.add_argument("--end-to-end", action="store_true", help="whole processes, wall clock (module docstring)")
    parser.add_argument("--emulate", choices=sorted(EMULATE), default="", help="compute like this CPU class")
    # worker mode (internal)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)), flush=True)
        return 0

    recipes = [r for r in args.recipes.split(",") if r]
    precisions = [p for p in args.precisions.split(",") if p]
    sets = [x for s in args.set for x in ("--set", s)]
    cpu = _run_worker("cpu", args)
    print(
        f"CPU: {cpu['cpu']} ({cpu['cores']} CPUs), ATen capability {cpu['capability']}, bf16 "
        f"{'native' if cpu['bf16_native'] else 'not native'} ({cpu['bf16']}); "
        + (f"emulated: {cpu['emulated_by']}" if cpu["emulated_by"] else "measured natively"),
        flush=True,
    )
    if args.end_to_end:
        return end_to_end(args, recipes, precisions, cpu)
    started = time.time()
    peak = _run_worker("peak", args)
    detail = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peak.items() if "_" in k)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {os.cpu_count()} CPUs, matmul fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s ({detail}); threads={args.threads or 'default'}, "
        f"OMP_WAIT_POLICY={_env(args).get('OMP_WAIT_POLICY', 'unset')}; load average {load:.2f} at start",
        flush=True,
    )
    results = []
    for recipe in recipes:
        steps, warmup = _steps(recipe, args)
        common = ["--steps", str(steps), "--warmup", str(warmup)]
        flops = _run_worker("flops", args, recipe, sets)["flops_per_image"]
        # one untimed ganforge run fills the dataset cache (a real run decodes once too)
        _run_worker("ganforge", args, recipe, ["--steps", str(warmup), "--warmup", str(warmup), *sets])
        modes = ([("reference", "fp32")] if recipe in SEED_RECIPES else []) + [("ganforge", p) for p in precisions]
        runs: dict[tuple[str, str], list[dict]] = {m: [] for m in modes}
        for rep in range(args.repeats):
            for kind, precision in modes:
                extra = common + (["--precision", precision, *sets] if kind == "ganforge" else [])
                r = _run_worker(kind, args, recipe, extra)
                runs[(kind, precision)].append(r)
                print(
                    f"  {recipe:13s} {kind:9s} {precision:4s} rep {rep + 1}: {r['images_per_s']:8.1f} img/s  "
                    f"peak {r['peak_mib']:6.0f} MiB",
                    flush=True,
                )
        ref_runs = runs.get(("reference", "fp32"))
        ref_ips = statistics.median(r["images_per_s"] for r in ref_runs) if ref_runs else None
        for (kind, precision), rs in runs.items():
            ips = statistics.median(r["images_per_s"] for r in rs)
            results.append(
                {
                    "recipe": recipe,
                    "side": kind,
                    "precision": precision,
                    "batch_size": rs[0]["batch_size"],
                    "steps": steps,
                    "images_per_s": ips,
                    "all_images_per_s": [r["images_per_s"] for r in rs],
                    "ratio": ips / ref_ips if ref_ips else None,
                    "flops_per_image": flops,
                    "hardware_fraction": ips * flops / peak[precision],
                    "peak_mib": max(r["peak_mib"] for r in rs),
                    "threads": rs[0]["threads"],
                }
            )
    print()
    print(_table(results))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    took = time.time() - started
    print(f"\n{len(recipes)} recipes, {args.repeats} repeats, {took:.0f} s; load average {load:.2f} at end")
    if args.json:
        args.json.write_text(json.dumps({"peak_flops": peak, "results": results, "argv": sys.argv}, indent=1))
    return 0


def _e2e_command(kind: str, recipe: str, steps: int, precision: str, out: Path, args: argparse.Namespace) -> list:
    root, split = _data_args(recipe, args)
    if kind == "reference":
        command = [sys.executable, str(HERE / "reference.py"), recipe, "--steps", str(steps), "--data-root", root]
        return command + ["--split", split, "--device", args.device]
    command = [sys.executable, "-m", "ganforge", "train", recipe, "--max-steps", str(steps), "--out", str(out)]
    command += ["--overwrite", "--device", args.device, "--set", "train.progress=false", "--set", "train.max_time=0"]
    if not recipe.startswith("digits"):
        command += ["--data-root", root, "--split", split]
    return command + (["--precision", precision] if precision else []) + [x for s in args.set for x in ("--set", s)]


def _e2e_run(kind: str, recipe: str, steps: int, precision: str, args: argparse.Namespace) -> dict:
    """Wall-clock seconds of one whole process; for ganforge also its own training time (the loop's clock)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = _e2e_command(kind, recipe, steps, precision, out, args)
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=_env(args))
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        result = {"wall_s": wall, "load": os.getloadavg()[0]}
        if kind == "ganforge":
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            result["train_s"] = records[-1]["time_s"]
            setup = next(r for r in records if r["kind"] == "setup")["runtime"]
            result["precision"] = setup["precision"]["value"]
            result["summary"] = setup["summary"]
        return result


def end_to_end(args: argparse.Namespace, recipes: list[str], precisions: list[str], cpu: dict) -> int:
    results = []
    for recipe in recipes:
        steps = args.steps or E2E_STEPS[recipe]
        _e2e_run("ganforge", recipe, 2, "", args)  # fills the dataset cache, untimed
        modes = ([("reference", "fp32")] if recipe in SEED_RECIPES else []) + [("ganforge", p) for p in precisions]
        runs: dict[tuple[str, str], list[dict]] = {m: [] for m in modes}
        for rep in range(args.repeats):
            for kind, precision in modes:
                r = _e2e_run(kind, recipe, steps, precision if kind == "ganforge" else "", args)
                runs[(kind, precision)].append(r)
                inner = f" (loop {r['train_s']:.1f} s, trained in {r['precision']})" if kind == "ganforge" else ""
                print(f"  {recipe} {kind} {precision} rep {rep + 1}: {r['wall_s']:.1f} s{inner}; load {r['load']:.2f}")
        ref = runs.get(("reference", "fp32"))
        ref_s = statistics.median(r["wall_s"] for r in ref) if ref else None
        for (kind, precision), rs in runs.items():
            wall = statistics.median(r["wall_s"] for r in rs)
            results.append(
                {
                    "recipe": recipe,
                    "side": kind,
                    "precision": precision if kind == "reference" else f"{precision} -> {rs[0]['precision']}",
                    "steps": steps,
                    "wall_s": wall,
                    "all_wall_s": [r["wall_s"] for r in rs],
                    "train_s": statistics.median(r["train_s"] for r in rs) if kind == "ganforge" else None,
                    "ratio": ref_s / wall if ref_s else None,
                    "load": [r["load"] for r in rs],
                    "summary": rs[0].get("summary"),
                }
            )
    print()
    print(_e2e_table(results))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "end_to_end": results, "argv": sys.argv}, indent=1))
    return 0


def _e2e_table(results: list[dict]) -> str:
    head = (
        "| recipe | steps | side | precision | whole process s (median) | of which ganforge's loop s | ratio |\n"
        "|---|---:|---|---|---:|---:|---:|"
    )
    rows = []
    for r in results:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        loop = "" if r["train_s"] is None else f"{r['train_s']:.1f}"
        rows.append(
            f"| {r['recipe']} | {r['steps']} | {r['side']} | {r['precision']} | {r['wall_s']:.1f} | {loop} | {ratio} |"
        )
    return "\n".join([head, *rows])


def _table(results: list[dict]) -> str:
    head = (
        "| recipe | batch | side | precision | threads | images/s (median) | ratio | GFLOP/image "
        "| % of matmul peak | peak MiB |\n"
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"
    )
    rows = []
    for r in results:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        rows.append(
            f"| {r['recipe']} | {r['batch_size']} | {r['side']} | {r['precision']} | {r.get('threads', '')} "
            f"| {r['images_per_s']:.1f} | "
            f"{ratio} | {r['flops_per_image'] / 1e9:.4f} | {100 * r['hardware_fraction']:.1f}% | {r['peak_mib']:.0f} |"
        )
    return "\n".join([head, *rows])


if __name__ == "__main__":
    raise SystemExit(main())
