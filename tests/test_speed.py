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


def _quick_nets():
    from ganforge.models import build_models

    return build_models(get_recipe("mnist-quick").model)


def _never(counts):
    raise AssertionError("not probed")


@pytest.mark.parametrize(
    ("seconds", "chosen", "reason"),
    [
        ({1: 0.30, 2: 0.20, 4: 0.25}, 2, "1.50x one thread"),  # the fastest count, where it clears the margin
        ({1: 0.30, 2: 0.28, 4: 0.31}, 1, "2 threads 1.07x"),  # a small gain is not worth the risk under load
        ({1: 0.10, 2: 0.40, 4: 0.80}, 1, "2 threads 0.25x"),  # a busy machine: more threads far slower
    ],
)
def test_small_models_train_on_the_thread_count_their_probe_measures_fastest(monkeypatch, seconds, chosen, reason):
    monkeypatch.delenv(fastpath.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(fastpath, "baseline_cpu_threads", lambda: 4)
    asked = []

    def measure(counts):
        asked.append(counts)
        return {c: seconds[c] for c in counts}

    g, d = _quick_nets()
    choice = fastpath.choose_threads(g, d, 64, measure)
    assert asked == [(1, 2, 4)]
    assert choice.value == chosen and reason in choice.reason and "small model" in choice.reason


def test_thread_choices_that_need_no_probe(monkeypatch):
    """Large models keep torch's count, live-tuned ones start on one thread, a single core and the
    environment decide alone: none of them is probed."""
    monkeypatch.delenv(fastpath.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(fastpath, "baseline_cpu_threads", lambda: 4)
    g, d = _quick_nets()
    assert fastpath.choose_threads(g, d, 64, _never, tuned_live=lambda: True).value == 1
    monkeypatch.setattr(fastpath, "SMALL_STEP_FLOPS", 1.0)
    assert fastpath.choose_threads(g, d, 64, _never) == fastpath.Choice(4, "torch's default")
    monkeypatch.setattr(fastpath, "SMALL_STEP_FLOPS", 1e30)
    monkeypatch.setattr(fastpath, "baseline_cpu_threads", lambda: 1)
    assert fastpath.choose_threads(g, d, 64, _never).reason.endswith("one core")
    monkeypatch.setenv(fastpath.THREADS_ENV, "3")
    assert fastpath.choose_threads(g, d, 64, _never) == fastpath.Choice(3, "GANFORGE_CPU_THREADS=3")


def test_a_probe_variant_runs_at_its_own_thread_count_and_puts_the_count_back():
    from ganforge.training import probe

    seen = []

    class Step:
        step_count = 0

        def __call__(self, x, y, index, batch):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    x = torch.zeros(2, 1, 4, 4)
    for count in (1, 2):
        probe._run(Step(), probe.Variant(threads=count), x, None, 2, torch.device("cpu"))
        assert torch.get_num_threads() == before
    assert seen == [1, 1, 2, 2]


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
