"""The CPU fast path's choices (oneDNN Linear backend, channels-last conv models), the quick recipes and the
reference loops. OneDNNLinear's maths against nn.Linear: test_fastpath.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ganforge.cli import main
from ganforge.config import apply_overrides
from ganforge.recipes import get_recipe
from ganforge.training import fastpath
from ganforge.training.distributed import DistContext
from ganforge.training.loop import Trainer

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def test_linear_backend_choice_follows_the_environment(monkeypatch):
    monkeypatch.setenv(fastpath.ENV, "blas")
    assert not fastpath.onednn_linear_wanted()
    monkeypatch.setenv(fastpath.ENV, "onednn")
    assert fastpath.onednn_linear_wanted() == fastpath._onednn_available()


def make_trainer(tmp_path, recipe: str, overrides: list[str] = ()) -> Trainer:
    cfg = get_recipe(recipe)
    apply_overrides(cfg, ["data.dataset=digits", "data.max_images=64", "train.progress=false", *overrides])
    return Trainer(cfg, DistContext(), tmp_path / "run")


def test_conv_models_train_channels_last_on_the_cpu(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, "mnist-quick")
    conv = next(m for m in trainer.nets.discriminator_core.modules() if isinstance(m, nn.Conv2d))
    assert trainer.setup.channels_last and conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not make_trainer(tmp_path / "mlp", "mnist-mlp").setup.channels_last
    monkeypatch.setenv("GANFORGE_CPU_CHANNELS_LAST", "0")
    assert not make_trainer(tmp_path / "off", "mnist-quick").setup.channels_last


@pytest.mark.parametrize("recipe", ["mnist-quick", "digits-quick"])
def test_quick_recipes_train(tmp_path, recipe):
    cfg = get_recipe(recipe)
    assert cfg.model.arch == "dcgan28" and cfg.train.ema_decay > 0
    if recipe == "mnist-quick":
        assert cfg.train.max_time == 5.0  # its default length: five minutes
    run = tmp_path / "run"
    args = ["train", recipe, "--out", str(run), "--max-steps", "2", "--batch-size", "16"]
    args += ["--set", "data.dataset=digits", "--set", "data.max_images=64", "--set", "train.progress=false"]
    assert main(args) == 0
    assert (run / "generator.safetensors").is_file()
    stop = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert stop["kind"] == "stop" and stop["step"] == 2


def test_max_time_stops_cleanly(tmp_path):
    """--max-time: stops between steps, saves a resumable checkpoint, says so."""
    run = tmp_path / "run"
    args = ["train", "digits-quick", "--out", str(run), "--max-time", "0.002", "--batch-size", "16"]
    assert main([*args, "--set", "data.max_images=64", "--set", "train.progress=false"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "stop" and records[-1]["reason"].startswith("reached --max-time")
    assert records[-1]["time_s"] >= 0.12 and records[-1]["step"] >= 1
    assert (run / "checkpoints" / "latest.safetensors").is_file()
    assert main(["train", "--resume", str(run), "--max-steps", str(records[-1]["step"] + 1)]) == 0


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (MNIST / "MNIST" / "raw").is_dir(), reason="no MNIST files at ../shared/data/mnist")
@pytest.mark.parametrize("name", ["mnist-mlp", "mnist-conv", "mnist-mlp-bn"])
def test_reference_loops_run(name):
    reference = _load("reference")
    torch.manual_seed(0)
    ref = reference.build_reference(name, str(MNIST), "test", torch.device("cpu"))
    ref.run(2, ref.batches())


def test_throughput_table_formats():
    throughput = _load("throughput")
    row = {
        "recipe": "mnist-mlp",
        "batch_size": 64,
        "side": "ganforge",
        "precision": "fp32",
        "images_per_s": 1000.0,
        "ratio": 2.5,
        "flops_per_image": 1e7,
        "hardware_fraction": 0.05,
        "peak_mib": 800.0,
        "threads": 1,
    }
    table = throughput._table([row])
    assert "| mnist-mlp | 64 | ganforge | fp32 | 1 | 1000.0 | 2.50x |" in table


def test_thread_tuner_keeps_the_faster_count(monkeypatch):
    """Probes each count for `probe` steps (after one settling step), then keeps the faster one."""
    clock = {"t": 0.0}
    monkeypatch.setattr(fastpath.time, "perf_counter", lambda: clock["t"])
    tuner = fastpath.ThreadTuner((1, 2), probe=3, period=50)
    before = torch.get_num_threads()
    try:
        for _ in range(20):
            tuner.tick()
            clock["t"] += 0.010 if torch.get_num_threads() == 1 else 0.050  # one thread is faster here
        assert tuner.chosen == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_mlp_results_do_not_depend_on_the_thread_count():
    cfg = get_recipe("mnist-mlp")
    from ganforge.models import build_models

    g, d = build_models(cfg.model)
    fastpath.use_onednn_linear(g, d)
    assert fastpath.same_results_at_any_thread_count(g, d, 64, (1, 2))
    g, d = build_models(get_recipe("mnist-quick").model)  # convolutions split their sums by thread: not checked
    assert not fastpath.same_results_at_any_thread_count(g, d, 64, (1, 2))


def test_time_to_quality_reads_scores_and_plots(tmp_path):
    ttq = _load("time_to_quality")
    assert ttq._fd({"results": {"kid_mnist-classifier": 0.1, "fd_mnist-classifier": 2.5}}) == 2.5
    points = [
        {"recipe": r, "mark_min": m, "train_s": 60.0 * m, "step": 100 * m, "fd": fd}
        for r, scale in (("mnist-quick", 1.0), ("mnist-mlp", 10.0))
        for m, fd in ((0.5, 40.0 * scale), (1, 8.0 * scale), (2, 2.0 * scale))
    ]
    ttq.plot(points, 0.26, tmp_path / "ttq.png", "test")
    assert (tmp_path / "ttq.png").stat().st_size > 1000
