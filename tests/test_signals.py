"""Ctrl-C semantics: the first asks for a checkpoint, no later one can abort that save, a second one
after it stops at once, and a run interrupted before it saved anything leaves no run directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ganforge.checkpoint import load_tensors
from ganforge.cli import main
from ganforge.training.signals import StopFlag

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "data.max_images=64", "--batch-size", "16", "--set", "train.progress=false", "--device", "cpu"]

# Both Ctrl-Cs arrive while the first checkpoint is being written (sent from inside the save itself, so
# the timing is exact); the save must complete, and the run must then stop at once.
DOUBLE_SIGINT_DURING_SAVE = """
import os, signal, sys
from ganforge.cli import main
from ganforge.training import loop

save = loop.save_training_checkpoint
calls = []

def interrupted_save(*args, **kwargs):
    calls.append(1)
    if len(calls) == 1:
        os.kill(os.getpid(), signal.SIGINT)  # asks for a stop...
        os.kill(os.getpid(), signal.SIGINT)  # ...and a second, while this save runs
    return save(*args, **kwargs)

loop.save_training_checkpoint = interrupted_save
sys.exit(main(sys.argv[1:]))
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


def test_a_second_ctrl_c_during_the_save_waits_for_it(tmp_path):
    run = tmp_path / "run"
    result = run_python(DOUBLE_SIGINT_DURING_SAVE, "train", "digits-quick", "--epochs", "3", "--out", str(run), *TINY)
    assert result.returncode == 130, result.stderr
    tensors, meta, kind = load_tensors(run / "checkpoints" / "latest.safetensors")  # complete and loadable
    assert kind == "training" and meta["state"]["epoch"] == 1
    assert "interrupted at step 4; the last checkpoint is" in result.stdout
    assert not list(run.rglob("*.tmp"))
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0


def test_real_double_sigint_right_after_the_first_epoch_keeps_a_checkpoint(tmp_path):
    """The issue's case: SIGINT after the first epoch line, a second 50 ms later. Whatever the second one
    interrupts, a loadable checkpoint remains and the exit code is 130."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    args = ["train", "digits-quick", "--epochs", "200", "--out", str(run), *TINY]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganforge", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    for line in proc.stdout:
        if line.startswith("epoch 1/"):
            break
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    _, meta, kind = load_tensors(run / "checkpoints" / "latest.safetensors")
    assert kind == "training" and meta["state"]["step"] >= 4


def test_interrupt_before_the_first_checkpoint_leaves_no_run_directory(tmp_path, monkeypatch, capsys):
    from ganforge.training import step

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt  # a second Ctrl-C in the first step

    monkeypatch.setattr(step.TrainStep, "__call__", interrupted)
    run = tmp_path / "run"
    assert main(["train", "digits-quick", "--out", str(run), *TINY]) == 130
    assert "nothing saved yet" in capsys.readouterr().out
    assert not run.exists()


def test_nan_before_the_first_checkpoint_says_nothing_was_saved(tmp_path, capsys):
    code = main(["train", "digits-mlp", "--out", str(tmp_path / "run"), *TINY, "--set", "optim.lr_d=1e30",
                 "--set", "optim.lr_g=1e30", "--set", "train.log_every=1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "diverged" in err and "nothing was saved yet" in err
    assert len(err.strip().splitlines()) == 1


def sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # the handler has run by now


def test_a_second_signal_waits_for_the_requested_save_then_stops():
    with StopFlag() as flag:
        sigint()
        assert flag.signum == signal.SIGINT
        sigint()  # before the checkpoint the first one asked for: deferred
        with pytest.raises(KeyboardInterrupt):
            flag.saved()


def test_after_the_save_a_signal_stops_at_once_but_finishes_a_protected_write():
    with StopFlag() as flag:
        sigint()
        flag.saved()
        finished = []
        with pytest.raises(KeyboardInterrupt):
            with flag.protect():
                sigint()
                finished.append(True)
        assert finished == [True]
    with StopFlag() as flag:
        sigint()
        flag.saved()
        with pytest.raises(KeyboardInterrupt):
            sigint()


def test_a_third_signal_stops_even_a_save_that_never_ends():
    with StopFlag():
        sigint()
        sigint()  # deferred
        with pytest.raises(KeyboardInterrupt):
            sigint()
