"""Starting a new run from given weights: --init-g / --init-d (ganforge files or an original script's
.pth), recorded with their hashes; FreezeD keeps D's first blocks as given."""

from __future__ import annotations

import hashlib
import json

import torch

from ganforge.checkpoint import load_tensors
from ganforge.cli import main

TINY = ["--set", "data.dataset=digits", "--set", "data.max_images=32", "--batch-size", "16"]
TINY += ["--set", "train.progress=false", "--device", "cpu"]


def test_a_new_run_starts_from_an_original_pth_and_a_ganforge_checkpoint(tmp_path):
    source = tmp_path / "source"
    assert main(["train", "mnist-mlp", *TINY, "--max-steps", "2", "--out", str(source)]) == 0
    pth = tmp_path / "G.pth"
    assert main(["export", str(source), "--format", "reference", "--out", str(pth)]) == 0
    checkpoint = source / "checkpoints" / "latest.safetensors"
    run = tmp_path / "run"
    args = ["train", "mnist-mlp", *TINY, "--max-steps", "1", "--out", str(run), "--set", "optim.lr_g=1e-30"]
    args += ["--set", "optim.lr_d=1e-30", "--init-g", str(pth), "--init-d", str(checkpoint)]
    assert main(args) == 0
    given, ours = load_tensors(checkpoint)[0], load_tensors(run / "checkpoints" / "latest.safetensors")[0]
    for key in ours:
        if key.startswith(("generator.", "discriminator.")):  # lr 1e-30: one step leaves the given weights
            torch.testing.assert_close(ours[key], given[key], rtol=0, atol=1e-20)
    assert not any(k.startswith("optim_g.state") and "step" in k and ours[k] > 1 for k in ours)  # fresh Adam
    runtime = json.loads((run / "config.json").read_text())["runtime"]
    assert runtime["init"]["g"]["sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest()
    assert runtime["init"]["d"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def test_weights_of_another_architecture_are_one_line(tmp_path, capsys):
    source = tmp_path / "source"
    assert main(["train", "mnist-mlp", *TINY, "--max-steps", "1", "--out", str(source)]) == 0
    code = main(["train", "digits-quick", *TINY, "--out", str(tmp_path / "run"), "--init-g", str(source)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "ganforge: error:" in err


def test_freeze_d_keeps_the_first_blocks_as_given(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "mnist-mlp", *TINY, "--max-steps", "1", "--out", str(run)]) == 0
    start = load_tensors(run / "checkpoints" / "latest.safetensors")[0]
    tuned = tmp_path / "tuned"
    checkpoint = run / "checkpoints" / "latest.safetensors"
    args = ["train", "mnist-mlp", *TINY, "--max-steps", "2", "--out", str(tuned), "--init-d", str(checkpoint)]
    assert main([*args, "--set", "train.freeze_d_layers=1"]) == 0
    after = load_tensors(tuned / "checkpoints" / "latest.safetensors")[0]
    first = "discriminator.net.0.weight"
    assert torch.equal(after[first], start[first])
    assert not torch.equal(after["discriminator.net.4.weight"], start["discriminator.net.4.weight"])
