"""Training images/s with 1 and with N torchrun processes on this machine, and whether they agree.

Every configuration is launched the same way, ``python -m torch.distributed.run --nproc-per-node P
-m ganforge train RECIPE``, with the recipe's global batch and seed, so the runs differ only in how
the batch is split. Throughput is read from rank 0's metrics.jsonl windows (``log_every`` steps each:
global images / wall seconds, loader, DDP all-reduces and logging included); the first window is
warm-up and left out, each run counts the median of the rest (a window holding an epoch end, with
its grid and checkpoint, is an outlier the median ignores). Configurations are interleaved over the
repeats so that a change in the machine's load hits them alike; the best and the median run are
reported (on a shared machine the best is the one least disturbed by other work).

Threads: by default each process gets cores / P threads (OMP_NUM_THREADS), so every configuration
uses the whole machine. On a 2-core CPU two processes are not expected to be faster than one (the
same arithmetic, plus gradient all-reduces and two interpreters); what must hold is correctness,
which the last column checks: the largest difference between the 1-process and the P-process
weights after the same steps. Only the float summation order differs, but GAN training amplifies it:
each Adam step moves a weight by up to the learning rate whatever the size of its gradient, and a
freshly initialised DCGAN's discriminator turns float noise in its fakes into gradient changes some
hundred times larger (docs/distributed.md), so a few learning rates after some steps is expected.

Examples:
  python benchmarks/distributed_throughput.py                       # mnist-mlp, 1 vs 2 processes
  python benchmarks/distributed_throughput.py --recipes mnist-mlp mnist-cgan --procs 1 2 --repeats 3
  python benchmarks/distributed_throughput.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"
# (timed steps, steps per window) per recipe: the whole run fits in one epoch of MNIST's test split
# at the recipe's batch size where it can, so no epoch-end work falls into most windows.
STEPS = {
    "mnist-mlp": (140, 10),
    "mnist-mlp-bn": (30, 5),
    "mnist-conv": (60, 10),
    "mnist-cgan": (8, 2),
    "digits-mlp": (80, 10),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_args(recipe: str, args: argparse.Namespace) -> list[str]:
    if recipe.startswith("digits") or args.dataset == "digits":
        return ["--set", "data.dataset=digits"]
    return ["--data-root", str(args.mnist_root), "--split", args.split]


def launch(recipe: str, procs: int, threads: int, out: Path, args: argparse.Namespace) -> dict:
    steps, window = STEPS.get(recipe, (60, 10))
    steps = args.steps or steps
    window = args.window or window
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs)]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "ganforge", "train", recipe]
    cmd += data_args(recipe, args)
    cmd += ["--device", "cpu", "--max-steps", str(window + steps), "--epochs", "1000", "--out", str(out)]
    cmd += ["--set", f"train.log_every={window}", "--set", "train.progress=false"]
    cmd += ["--set", f"train.sync_batchnorm={str(args.sync_batchnorm).lower()}"]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    windows = [
        r["images_per_s"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "step" and r.get("images_per_s")
    ]
    return {"images_per_s": windows[1:], "wall_s": wall}


def max_weight_difference(run_a: Path, run_b: Path) -> float:
    from ganforge.checkpoint import load_tensors

    a, _, _ = load_tensors(run_a / "checkpoints" / "latest.safetensors")
    b, _, _ = load_tensors(run_b / "checkpoints" / "latest.safetensors")
    keys = [
        k
        for k in a
        if k.startswith(("generator.", "discriminator.")) and a[k].is_floating_point() and ".running_" not in k
    ]  # parameters only: BatchNorm's running variance has its own (larger) scale
    return max((a[k].double() - b[k].double()).abs().max().item() for k in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["mnist-mlp"])
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2], help="process counts (first = baseline)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, help="timed steps (default: per recipe)")
    parser.add_argument("--window", type=int, help="steps per metrics window (default: per recipe)")
    parser.add_argument("--batch-size", type=int, help="global batch (default: the recipe's)")
    parser.add_argument("--threads", type=int, help="threads per process (default: cores / processes)")
    parser.add_argument("--dataset", choices=["auto", "mnist", "digits"], default="auto")
    parser.add_argument("--mnist-root", type=Path, default=DEFAULT_MNIST)
    parser.add_argument("--split", default="test")
    parser.add_argument("--sync-batchnorm", action="store_true", help="train.sync_batchnorm=true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.dataset == "auto":
        args.dataset = "mnist" if args.mnist_root.exists() else "digits"
    cores = os.cpu_count() or 1

    results: dict[str, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="ganforge-dist-bench-") as tmp:
        for recipe in args.recipes:
            results[recipe] = {p: {"images_per_s": [], "wall_s": []} for p in args.procs}  # per run
            for repeat in range(args.repeats):
                for procs in args.procs:
                    threads = args.threads or max(1, cores // procs)
                    out = Path(tmp) / f"{recipe}-{procs}-{repeat}"
                    run = launch(recipe, procs, threads, out, args)
                    entry = results[recipe][procs]
                    entry["images_per_s"].append(statistics.median(run["images_per_s"]))
                    entry["wall_s"].append(run["wall_s"])
                    entry["threads"] = threads
                    if repeat == 0:
                        entry["run"] = out
                    print(
                        f"{recipe} x{procs} (threads {threads}) repeat {repeat + 1}: "
                        f"{statistics.median(run['images_per_s']):.0f} images/s",
                        file=sys.stderr,
                    )
            baseline = results[recipe][args.procs[0]]["run"]
            for entry in results[recipe].values():
                entry["median_images_per_s"] = statistics.median(entry["images_per_s"])
                entry["best_images_per_s"] = max(entry["images_per_s"])
                entry["max_weight_diff_vs_baseline"] = max_weight_difference(baseline, entry["run"])
            for entry in results[recipe].values():
                del entry["run"]

    steps_note = {r: args.steps or STEPS.get(r, (60, 10))[0] for r in args.recipes}
    print(f"\n{cores} CPU core(s), torch data-parallel over gloo, dataset {args.dataset}, {args.repeats} repeat(s)\n")
    header = f"{'recipe':<14}{'procs':>6}{'threads':>8}{'best img/s':>12}{'vs 1st':>8}{'median img/s':>14}"
    print(f"{header}{'launch s':>10}{'max |dW|':>11}")
    for recipe, per in results.items():
        base = per[args.procs[0]]["best_images_per_s"]
        for procs, entry in per.items():
            print(
                f"{recipe:<14}{procs:>6}{entry['threads']:>8}{entry['best_images_per_s']:>12.0f}"
                f"{entry['best_images_per_s'] / base:>8.2f}{entry['median_images_per_s']:>14.0f}"
                f"{statistics.median(entry['wall_s']):>10.1f}{entry['max_weight_diff_vs_baseline']:>11.2e}"
            )
    print(f"\nmax |dW|: largest weight difference from the first process count after the same steps {steps_note}")
    if args.json:
        payload = {
            "cores": cores,
            "dataset": args.dataset,
            "repeats": args.repeats,
            "steps": steps_note,
            "results": {r: {str(p): e for p, e in per.items()} for r, per in results.items()},
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
