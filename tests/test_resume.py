"""Exact resume, interrupts, kills at any instant, and the divergence guard."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ganforge.checkpoint import load_tensors
from ganforge.cli import main
from ganforge.errors import DivergenceError

TINY = [
    "--set",
    "data.dataset=digits",
    "--set",
    "data.max_images=48",
    "--batch-size",
    "16",
    "--set",
    "train.progress=false",
    "--set",
    "train.log_every=2",
    "--device",
    "cpu",  # bit-identity is a CPU promise; CUDA's needs train.deterministic (test below)
]
TINY_CGAN = [*TINY, "--set", "model.g_width=8", "--set", "model.d_width=8"]


def checkpoint_tensors(run: Path) -> dict[str, torch.Tensor]:
    tensors, meta, _ = load_tensors(run / "checkpoints" / "latest.safetensors")
    return tensors


def assert_identical_runs(a: Path, b: Path) -> None:
    """Weights, optimiser moments and RNG states all bit-identical."""
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ta.keys() == tb.keys()
    differing = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differing, differing[:5]


TINY_PACKED = [*TINY, "--set", "model.d_pack=2"]  # PacGAN: D scores pairs of images


@pytest.mark.parametrize("recipe,extra", [("mnist-mlp", TINY), ("mnist-cgan", TINY_CGAN), ("mnist-mlp", TINY_PACKED)])
def test_resume_at_epoch_boundary_is_bit_identical(tmp_path, recipe, extra):
    assert main(["train", recipe, "--epochs", "3", "--out", str(tmp_path / "straight"), *extra]) == 0
    assert main(["train", recipe, "--epochs", "1", "--out", str(tmp_path / "split"), *extra]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--epochs", "3"]) == 0
    assert_identical_runs(tmp_path / "straight", tmp_path / "split")


@pytest.mark.parametrize("recipe,extra", [("mnist-mlp-bn", TINY), ("mnist-cgan", TINY_CGAN)])
def test_resume_mid_epoch_is_bit_identical_and_logs_are_not_duplicated(tmp_path, recipe, extra):
    assert main(["train", recipe, "--epochs", "2", "--out", str(tmp_path / "straight"), *extra]) == 0
    # stop after 4 of 6 steps (inside epoch 2), then continue with the limit lifted (an override on resume)
    assert main(["train", recipe, "--epochs", "2", "--max-steps", "4", "--out", str(tmp_path / "split"), *extra]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--max-steps", "0"]) == 0
    assert_identical_runs(tmp_path / "straight", tmp_path / "split")
    records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == sorted(set(steps)) == [2, 4, 6]
    resumes = [r for r in records if r["kind"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["overrides"] == ["train.max_steps=0"]
    assert json.loads((tmp_path / "split" / "config.json").read_text())["train"]["max_steps"] == 0


def test_resume_is_bit_identical_with_mid_epoch_evaluations(tmp_path, monkeypatch):
    """Evaluations (and best.safetensors saves) inside epochs must not disturb the training trajectory."""
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))  # the digits evaluator is trained here
    extra = [*TINY, "--set", "eval.every_steps=2", "--set", "eval.num_samples=32"]
    assert main(["train", "mnist-mlp", "--epochs", "2", "--out", str(tmp_path / "straight"), *extra]) == 0
    assert (
        main(["train", "mnist-mlp", "--epochs", "2", "--max-steps", "3", "--out", str(tmp_path / "split"), *extra]) == 0
    )
    assert main(["train", "--resume", str(tmp_path / "split"), "--max-steps", "0"]) == 0
    assert_identical_runs(tmp_path / "straight", tmp_path / "split")
    assert (tmp_path / "split" / "checkpoints" / "best.safetensors").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_resume_mid_epoch_is_bit_identical_with_deterministic_kernels(tmp_path):
    """cuDNN's default conv kernels sum in a varying order; train.deterministic=true makes resume exact on CUDA."""
    extra = [*TINY_CGAN, "--device", "cuda", "--set", "train.deterministic=true"]
    assert main(["train", "mnist-cgan", "--epochs", "2", "--out", str(tmp_path / "straight"), *extra]) == 0
    split = ["train", "mnist-cgan", "--epochs", "2", "--max-steps", "4", "--out", str(tmp_path / "split")]
    assert main([*split, *extra]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--max-steps", "0"]) == 0
    assert_identical_runs(tmp_path / "straight", tmp_path / "split")


def test_deterministic_kernels_are_switched_back_after_training(tmp_path):
    """train.deterministic flips process-wide torch switches; a library call must not leave them flipped."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    run = tmp_path / "run"
    deterministic = ["--set", "train.deterministic=true"]
    assert main(["train", "mnist-mlp", "--max-steps", "2", "--out", str(run), *TINY, *deterministic]) == 0
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic) == before
    assert json.loads((run / "config.json").read_text())["train"]["deterministic"] is True


def _train_process(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ganforge", "train", "mnist-mlp", "--out", str(out), *TINY, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_sigint_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    process = _train_process(run, "--epochs", "100000")
    deadline = time.time() + 60
    while not (run / "checkpoints" / "latest.safetensors").exists() and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "stopped by SIGINT" in out and f"ganforge train --resume {run}" in out
    assert "Traceback" not in err
    _, meta, _ = load_tensors(run / "checkpoints" / "latest.safetensors")
    assert meta["state"]["step"] > 0
    # and it continues from there
    assert main(["train", "--resume", str(run), "--epochs", str(meta["state"]["epoch"] + 1)]) == 0


KILLS = 20  # issue 12: at least 20, half of them aimed inside checkpoint writes


def _wait_for_a_checkpoint_write(checkpoints: Path, process: subprocess.Popen, deadline: float) -> bool:
    """Poll until a temporary file of a checkpoint being written appears; False if none did in time."""
    while process.poll() is None and time.time() < deadline:
        if checkpoints.is_dir() and any(name.endswith(".tmp") for name in os.listdir(checkpoints)):
            return True
        time.sleep(0.0005)
    return False


def _wait_for_a_new_checkpoint(latest: Path, process: subprocess.Popen, deadline: float) -> None:
    seen = latest.stat().st_mtime_ns if latest.exists() else 0
    while process.poll() is None and time.time() < deadline:
        if latest.exists() and latest.stat().st_mtime_ns != seen:
            return
        time.sleep(0.01)


def test_twenty_sigkills_half_inside_checkpoint_writes_never_corrupt_latest(tmp_path):
    """SIGKILL training 20 times: every other kill the moment a checkpoint's temporary file appears (so
    it lands inside the write, before the rename), the others at a random instant after a checkpoint.
    Each time `latest` must load, and the next start removes the killed writer's temporary. The final
    weights equal those of an uninterrupted run."""
    # 64 steps an epoch: each killed process trains about an epoch (it is killed after its first checkpoint,
    # which the pacer writes at the first epoch end, or inside that write), so 40 epochs outlast 20 kills
    run_args = ["--epochs", "40", "--set", "data.max_images=1024", "--set", "train.sample_every=100000"]
    assert main(["train", "mnist-mlp", "--out", str(tmp_path / "straight"), *TINY, *run_args]) == 0
    run = tmp_path / "killed"
    checkpoints = run / "checkpoints"
    latest = checkpoints / "latest.safetensors"
    rng = random.Random(0)
    kills, inside_writes = 0, 0
    for attempt in range(KILLS):
        if latest.exists():
            command = [sys.executable, "-m", "ganforge", "train", "--resume", str(run)]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        else:
            process = _train_process(run, "--overwrite", *run_args)
        deadline = time.time() + 60
        if attempt % 2 == 0 and latest.exists():  # aimed: inside a write (the first run has none to keep)
            if not _wait_for_a_checkpoint_write(checkpoints, process, deadline):
                break
        else:
            _wait_for_a_new_checkpoint(latest, process, deadline)
            time.sleep(rng.uniform(0.0, 0.4))
        if process.poll() is not None:
            break  # it finished before we could kill it
        process.kill()
        process.wait()
        kills += 1
        inside_writes += any(name.endswith(".tmp") for name in os.listdir(checkpoints))
        load_tensors(latest)  # raises CheckpointError if the kill left it torn
    assert kills == KILLS, f"the run finished after {kills} kills: lengthen it"
    assert inside_writes >= KILLS // 4, f"only {inside_writes} kills landed inside a checkpoint write"
    assert main(["train", "--resume", str(run)]) == 0
    assert not [name for name in os.listdir(checkpoints) if name.endswith(".tmp")]  # cleaned on start
    assert_identical_runs(tmp_path / "straight", run)


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    from ganforge.config import apply_overrides
    from ganforge.objectives import LogitObjective
    from ganforge.recipes import get_recipe
    from ganforge.training.distributed import DistContext
    from ganforge.training.loop import Trainer

    cfg = get_recipe("mnist-mlp")
    apply_overrides(
        cfg,
        [
            "data.dataset=digits",
            "data.max_images=48",
            "train.batch_size=16",
            "train.progress=false",
            "train.log_every=1",
            "train.epochs=1",
        ],
    )
    trainer = Trainer(cfg, DistContext(), tmp_path / "run")
    trainer.run()
    good = checkpoint_tensors(tmp_path / "run")
    trainer.cfg.train.epochs = 2
    nan = float("nan")
    trainer.step.objective = LogitObjective(
        lambda r, f: (r.mean() + f.mean()) * nan, lambda f, _r: f.mean() * nan, "broken"
    )
    with pytest.raises(
        DivergenceError, match=r"d_loss, g_loss became nan by step 4 .*last good checkpoint is .*latest"
    ):
        trainer.run()
    after = checkpoint_tensors(tmp_path / "run")
    assert all(torch.equal(good[k], after[k]) for k in good)
    assert all(torch.isfinite(t).all() for k, t in after.items() if t.is_floating_point())
